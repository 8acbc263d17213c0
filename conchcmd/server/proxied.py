"""Listening behind a load balancer that sends the PROXY protocol (`listen = ["haproxy:tcp:2222"]`):
the client's address comes from the header, before anything looks at an address.

Twisted's own `haproxy:` wrapper starts the wrapped protocol when the socket is accepted, before
the header is read, and the factory's `buildProtocol` gets the proxy's address: admission,
penalties, `from=`, `source-address`, the logs and the audit would all see the proxy. Here
`ProxiedConnection` holds the socket alone until the header is complete, and only then asks
the SSH factory for a transport with the header's source address (per-source admission runs
there), which it then serves as that transport's transport, `getPeer()` answering the client.

Only proxies in `proxy_from` may connect: a PROXY listener that anyone reaches lets anyone name
any source address. A header that is late, too long, malformed, or not there (SSH bytes
instead) closes the connection, counted and logged as the admission's other refusals. A LOCAL
or UNKNOWN header, or one naming this very connection (the proxy's own health check) names no
client: the connection is closed, with no refusal counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

from conchcmd.core.config import Config, LimitsConfig
from conchcmd.core.hostmatch import addr_match_list
from conchcmd.core.logtargets import LOG_NAMESPACE
from conchcmd.core.peer import format_peer, host_and_port
from conchcmd.core.proxyheader import ProxyHeaderError, ProxyHeaderReader
from conchcmd.server.admission import Admissions, source_of

if TYPE_CHECKING:
    from conchcmd.server.factory import CommandServerFactory

log = Logger(namespace=LOG_NAMESPACE)

#: Seconds a proxy has to send the header once connected (HAProxy sends it with the connection).
HEADER_TIMEOUT = 5.0
#: Proxies whose first health check is logged, at most.
MAX_PROXIES_REMEMBERED = 256


@dataclass(frozen=True)
class ProxySettings:
    """The PROXY listener's slice of the configuration: who may send headers, how fast."""

    trusted: tuple[str, ...] = Config.proxy_from
    header_timeout: float = HEADER_TIMEOUT
    #: Connections waiting for their header at once (`max_startups`): each holds a socket and up
    #: to MAX_V2_HEADER bytes, and counts nowhere else until its header names the client. Beyond
    #: it the one that has waited longest is closed: a real proxy sends its header at once.
    max_pending: int = LimitsConfig.max_startups

    @classmethod
    def from_config(cls, config: Config) -> ProxySettings:
        return cls(trusted=config.proxy_from, max_pending=config.limits.max_startups)

    def trusts(self, address: IAddress) -> bool:
        """Whether `address` is a proxy in `proxy_from` (sshd's address-list matching); on a
        `haproxy:unix:PATH` listener every peer is, the socket file's mode deciding who connects."""
        if isinstance(address, UNIXAddress):
            return True
        ip = host_and_port(address)
        return ip is not None and addr_match_list(ip[0], ",".join(self.trusted)) == 1


class ProxyHeaderFactory(WrappingFactory):
    """Wraps the SSH factory for a `haproxy:` listener: each accepted connection is a
    `ProxiedConnection` until its header names the client. Twisted's WrappingFactory builds the
    wrapped protocol at accept; `buildProtocol` here does not."""

    def __init__(self, wrapped: Any, *, admissions: Admissions, clock: IReactorTime, settings: ProxySettings) -> None:
        super().__init__(wrapped)
        self.admissions = admissions
        self.clock = clock
        self.settings = settings
        self._checking: set[str] = set()  # proxies whose health checks were logged
        self.waiting: dict[ProxiedConnection, None] = {}  # for their header, oldest first

    @classmethod
    def serving(cls, ssh: CommandServerFactory, settings: ProxySettings) -> ProxyHeaderFactory:
        """The PROXY listener's factory in front of the SSH server's."""
        return cls(ssh, admissions=ssh.admissions, clock=ssh.clock, settings=settings)

    def buildProtocol(self, addr: IAddress) -> ProxiedConnection | None:  # type: ignore[override]
        if not self.settings.trusts(addr):
            self.refused(addr, "not a trusted proxy (proxy_from)")
            return None  # Twisted closes the socket at once
        most = self.settings.max_pending
        while len(self.waiting) >= most:
            next(iter(self.waiting)).refuse(f"waited longest for its PROXY header with max_startups ({most}) waiting")
        return ProxiedConnection(self, addr)

    @property
    def pending(self) -> int:
        """How many connections wait for their header."""
        return len(self.waiting)

    def refused(self, proxy: IAddress, reason: str) -> None:
        """Count and log a connection refused before it had a client address, against the
        address it came from (the log line and `refused` record the admission writes)."""
        ip = host_and_port(proxy)
        peer = format_peer(proxy)
        self.admissions.sources.note_refused(source_of(ip[0] if ip else peer), peer, reason)

    def health_check(self, proxy: IAddress, version: int) -> None:
        """A LOCAL/UNKNOWN header, or one naming the proxy's own connection: logged the first
        time a proxy sends one, not each time (HAProxy's `check` sends one every 2 s)."""
        host = format_peer(proxy).rsplit(":", 1)[0]
        if host in self._checking or len(self._checking) >= MAX_PROXIES_REMEMBERED:
            return
        self._checking.add(host)
        log.info(
            "PROXY v{version} header naming no client (LOCAL/UNKNOWN: a health check) from {proxy}; "
            "closed, as its next ones will be without a log line",
            version=version,
            proxy=format_peer(proxy),
        )

    def close_pending(self) -> None:
        """Close the connections still waiting for their header (at shutdown)."""
        for connection in list(self.waiting):
            connection.abortConnection()


class ProxiedConnection(ProtocolWrapper):
    """One connection from a trusted proxy: reads the PROXY header, then is the SSH transport's
    transport with the header's source as the peer. Twisted's ProtocolWrapper relays the
    transport's methods (and interfaces: TCP, producer, handle); its wrapped protocol is built
    here only once the header is in."""

    factory: ProxyHeaderFactory
    wrappedProtocol: Any  # None until the header is in
    transport: Any  # the accepted socket's (ITCPTransport, with abortConnection)

    def __init__(self, factory: ProxyHeaderFactory, proxy: IAddress) -> None:
        super().__init__(factory, None)  # type: ignore[arg-type]
        self.proxy = proxy
        self.client: IPv4Address | IPv6Address | None = None
        self._reader: ProxyHeaderReader | None = ProxyHeaderReader()
        self._deadline: Any = None

    @property
    def proxy_text(self) -> str:
        """The proxy's address as the logs and the audit write it."""
        return format_peer(self.proxy)

    def makeConnection(self, transport: Any) -> None:
        # ProtocolWrapper's, without connecting the wrapped protocol: there is none yet.
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        self.factory.waiting[self] = None
        self._deadline = self.factory.clock.callLater(self.factory.settings.header_timeout, self._too_late)

    def dataReceived(self, data: bytes) -> None:
        if self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._reader is None:
            return  # refused, closing
        try:
            done = self._reader.feed(data)
        except ProxyHeaderError as e:
            self.refuse(f"bad PROXY header: {e}")
            return
        if done is None:
            return
        header, rest = done
        self._stop_deadline()
        self._reader = None
        if header.source is None or self._names_itself(header.source, header.destination):
            self.factory.health_check(self.proxy, header.version)
            self.transport.loseConnection()
            return
        self.client = header.source
        ssh = self.factory.wrappedFactory.buildProtocol(header.source)  # per-source admission: the client's
        if ssh is None:
            self.transport.loseConnection()  # refused: logged and counted by the admission
            return
        self.wrappedProtocol = ssh
        ssh.makeConnection(self)
        if rest:
            self.dataReceived(rest)

    def _names_itself(self, source: IAddress, destination: IAddress | None) -> bool:
        """Whether the header names this very connection, the proxy as its own client: HAProxy's
        health checks with `send-proxy` (v1, which has no LOCAL) send that. A client's header
        names its connection to the proxy's front end, which is not this listener."""
        return (
            destination is not None
            and _same_end(source, self.proxy)
            and _same_end(destination, self.transport.getHost())
        )

    def refuse(self, reason: str) -> None:
        """Close the connection before its header named a client, counted against the proxy."""
        self._reader = None
        self._stop_deadline()
        self.factory.refused(self.proxy, reason)
        self.transport.abortConnection()  # nothing to say to a peer that sent no header

    def _too_late(self) -> None:
        self._deadline = None
        self.refuse(f"no PROXY header within {self.factory.settings.header_timeout:g} s")

    def _stop_deadline(self) -> None:
        """The connection no longer waits for its header (it came, was refused, or the
        connection ended): its deadline and its place among the waiting ones are released."""
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        self.factory.waiting.pop(self, None)

    def getPeer(self) -> IAddress:
        """The client's address from the header once read (the proxy's until then)."""
        return self.client if self.client is not None else self.transport.getPeer()

    def logPrefix(self) -> str:
        return "ProxiedConnection"

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_deadline()
        self._reader = None
        if self.wrappedProtocol is not None:
            super().connectionLost(reason)
        else:
            self.factory.unregisterProtocol(self)


def _same_end(a: IAddress, b: IAddress) -> bool:
    """Whether two addresses are the same IP end (an IPv4-mapped address as its IPv4 one)."""
    x, y = host_and_port(a), host_and_port(b)
    return x is not None and y is not None and x == y


def proxy_of(transport: object) -> str | None:
    """The address of the proxy a connection came through (as logs write it), or None for a
    connection straight from its client."""
    return transport.proxy_text if isinstance(transport, ProxiedConnection) else None
