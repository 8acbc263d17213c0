"""The SSH server's factory: one ServerTransport per connection, with the services, the algorithms,
the admissions (caps, penalties, client slots) and the shutdown; ServerSettings, its configuration."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.conch.ssh.factory import SSHFactory
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from conchcmd.core.audit import AuditSink
from conchcmd.core.config import AlgorithmsConfig, Config, LimitsConfig
from conchcmd.core.filetrust import AttemptFiles
from conchcmd.core.internalerrors import InternalErrors
from conchcmd.core.metrics import NO_METRICS, ConnectionMetrics
from conchcmd.policy.auth import PasswordChecker
from conchcmd.policy.certs import CertificateReadings
from conchcmd.server.admission import Admissions
from conchcmd.server.authlog import KeyInfos
from conchcmd.server.connection import ConnectionService
from conchcmd.server.transport import ServerTransport
from conchcmd.server.userauth import UserAuthService
from conchcmd.wire.framing import SERVER_POOL_SIZE, RandomPool, usable_key_exchanges
from conchcmd.wire.hostkeys import HostKeys

SHA1_HOST_KEY_ALGORITHMS = (b"ssh-rsa", b"ssh-dss")
SHUTDOWN_GRACE = 3.0  # seconds to let connections close on shutdown
CUT_GRACE = 1.0  # then, seconds for the cut of those still open to take effect


@dataclass(frozen=True)
class ServerSettings:
    """The server's slice of the configuration: authenticated-client caps, limits, timers."""

    max_clients: int = 10
    max_clients_per_user: int | None = None  # None: half of max_clients, at least 1
    tcp_keepalive: bool = True
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    algorithms: AlgorithmsConfig = field(default_factory=AlgorithmsConfig)

    @classmethod
    def from_config(cls, config: Config) -> ServerSettings:
        return cls(
            max_clients=config.max_clients,
            max_clients_per_user=config.max_clients_per_user,
            tcp_keepalive=config.tcp_keepalive,
            limits=config.limits,
            algorithms=config.algorithms,
        )


class CommandServerFactory(SSHFactory):
    """Builds a ServerTransport per connection, with the portal, audit log and limits."""

    protocol = ServerTransport
    noisy = False
    #: Every listening socket has TCP_NODELAY, and SO_KEEPALIVE as `settings.tcp_keepalive` says,
    #: which accepted connections inherit (see transport.set_listener_options): set by the service.
    listener_options = False
    services = {b"ssh-userauth": UserAuthService, b"ssh-connection": ConnectionService}

    def __init__(
        self,
        *,
        host_keys: HostKeys,
        portal: Portal,
        audit: AuditSink,
        clock: IReactorTime,
        settings: ServerSettings,
        passwords: PasswordChecker | None = None,
        known_user: Callable[[str, AttemptFiles], bool] | None = None,
        configured_user: Callable[[str], bool] | None = None,
        metrics: ConnectionMetrics = NO_METRICS,
        internal_errors: InternalErrors | None = None,
        certificates: CertificateReadings | None = None,
    ):
        self.publicKeys = dict(host_keys.public)
        self.privateKeys = dict(host_keys.private)
        self.primes = None  # no group-exchange kex: its SHA-1 and weak-group variants are out
        self.portal = portal
        self.audit = audit
        self.clock = clock
        self.settings = settings
        self.passwords = passwords
        #: Whether a user name is one that can log in (else the auth lines say "invalid user").
        self.known_user: Callable[[str, AttemptFiles], bool] = known_user or (lambda _name, _files: True)
        #: `known_user` as far as the configuration alone says (True: known whatever the files say;
        #: False: ask `known_user`), with the same work for every name: no file of the user's read.
        self.configured_user: Callable[[str], bool] = configured_user or (lambda _name: True)
        self.metrics = metrics
        #: The client certificates read: the authorizer's, for audit records and auth-log lines too.
        self.certificates = certificates or CertificateReadings()
        self.key_infos = KeyInfos(readings=self.certificates)  # the accepted keys' descriptions in the auth log
        self.admissions = Admissions(
            settings.limits,
            clock,
            audit,
            max_clients=settings.max_clients,
            max_clients_per_user=settings.max_clients_per_user,
            metrics=metrics,
        )
        available = usable_key_exchanges()
        algorithms = settings.algorithms
        self.key_exchanges = [k.encode() for k in algorithms.kex_algorithms if k.encode() in available]
        self.ciphers = [c.encode() for c in algorithms.ciphers]
        self.macs = [m.encode() for m in algorithms.macs]
        # Conch advertises SHA-1 `ssh-rsa` for RSA host keys: left out.
        self.host_key_algorithms = [
            algorithm
            for key in self.privateKeys.values()
            for algorithm in key.supportedSignatureAlgorithms()
            if algorithm not in SHA1_HOST_KEY_ALGORITHMS
        ]
        self.transports: set[ServerTransport] = set()
        self.internal_errors = internal_errors or InternalErrors()  # one per server: see InternalErrors
        self.connection_ids: set[str] = set()  # of the connections open now: a new one is none of them
        #: OS random bytes for every connection's padding, KEXINIT cookies and id (see RandomPool)
        self.random = RandomPool(SERVER_POOL_SIZE)

    def buildProtocol(self, addr: Any) -> ServerTransport | None:  # type: ignore[override]
        if self.admissions.refuse(addr):
            return None  # Twisted closes the socket at once: no banner, no kex, no CPU
        # Built as Factory does it, not through SSHFactory.buildProtocol: what that works out for
        # every connection (the host-key algorithms, a key-exchange list without group exchange, a
        # log line saying so) is the same for all of them, and set here from lists made once.
        t = self.protocol()
        t.factory = self
        t.supportedPublicKeys = self.host_key_algorithms
        t.supportedKeyExchanges = self.key_exchanges
        t.supportedCiphers = self.ciphers
        t.supportedMACs = self.macs
        return t

    def close_all(self, why: bytes) -> defer.Deferred[None]:
        """Disconnect every client with a reason; fires when all are gone, or after a grace time."""
        self.admissions.flush()
        open_now = list(self.transports)
        gone = [t.when_lost() for t in open_now]
        for t in open_now:
            t.close_with(why)
        everyone: defer.Deferred[Any] = defer.DeferredList(gone, consumeErrors=True)
        everyone.addTimeout(SHUTDOWN_GRACE, self.clock, onTimeoutCancel=lambda _result, _timeout: None)
        return everyone.addCallback(lambda _: self._cut_the_rest())

    def _cut_the_rest(self) -> defer.Deferred[None]:
        """Connections still open after the grace time (a client that reads nothing) are cut, so
        that their last records come before the server's (the reactor would end them after the
        audit log is closed); one that does not end even then is left to the process's end."""
        left = list(self.transports)
        gone = [t.when_lost() for t in left]
        for t in left:
            t.cut()
        rest: defer.Deferred[Any] = defer.DeferredList(gone, consumeErrors=True)
        rest.addTimeout(CUT_GRACE, self.clock, onTimeoutCancel=lambda _result, _timeout: None)
        return rest.addCallback(lambda _: None)
