"""Every use of a private name of Twisted's core (the counterpart, outside Conch, of
`conchcmd.wire.conchprivate`), behind public names of our own.

Twisted checks an endpoint description only by building the endpoint, which for `systemd:` looks the
inherited socket up, and keeps a TCP endpoint's port and interface unchecked until it listens; the
check of `listen` without listening (`conchcmd.core.endpoints`) therefore reads the description
parser, the `systemd:` parser, the haproxy unwrapping and the TCP endpoints' fields, all private.
It does so only here, so a new Twisted breaks here, where tests/unit/test_conch_contract.py names
what to re-synchronise, and nowhere else.

The PROXY protocol parsers (`twisted.protocols.haproxy._v1parser`, `._v2parser`) are in
private modules; its public `haproxy:` endpoint wraps the protocol in a way conchcmd cannot use
(see `conchcmd.server.proxied`). conchcmd reads headers with those parsers, here.

`FlushingReactor`, the reactor `conchcmd serve` runs, is Twisted's epoll reactor with its event
loop's private parts (`_doReadOrWrite`, `_writes`, the timed-call heap) used here; the
connections its ports accept are `ClosingServer`s (Twisted's TCP connection, closed with a system
call fewer once the peer has said goodbye: its private `_shouldShutdown`).
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import os
from select import EPOLLET, EPOLLIN, EPOLLOUT
from typing import Any

from twisted.internet import tcp
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, _parse, _SystemdParser
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.interfaces import IAddress, IStreamServerEndpoint
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._parser import unparseEndpoint
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.python import context, log

#: The first bytes of a v2 header (its "signature"), and of a v1 header.
PROXY_V2_SIGNATURE: bytes = V2Parser.PREFIX
PROXY_V1_SIGNATURE: bytes = V1Parser.PROXYSTR + b" "


class ProxyParseError(ValueError):
    """Twisted's parser refused the header (or raised on it: its v1 parser lets `int()` fail)."""


def parse_proxy_v1(line: bytes) -> tuple[IAddress | None, IAddress | None]:
    """The source and destination of a v1 header line (without its CRLF), as Twisted's
    `V1Parser.parse` reads them; (None, None) for `PROXY UNKNOWN`."""
    try:
        info = V1Parser.parse(line)
    except (InvalidProxyHeader, ValueError, UnicodeDecodeError) as e:
        raise ProxyParseError(type(e).__name__) from None
    return info.source, info.destination


def parse_proxy_v2(header: bytes) -> tuple[IAddress | None, IAddress | None]:
    """The source and destination of a whole v2 header (16 bytes and its length), as Twisted's
    `V2Parser.parse` reads them; (None, None) for LOCAL and for the UNSPEC family or protocol."""
    try:
        info = V2Parser.parse(header)
    except (InvalidProxyHeader, KeyError, ValueError, UnicodeDecodeError) as e:
        raise ProxyParseError(type(e).__name__) from None
    return info.source, info.destination


def split_description(description: str) -> tuple[list[str], dict[str, str]]:
    """An endpoint description's positional and keyword arguments, as `serverFromString` splits
    it (Twisted's `_parse`, which also undoes the `\\:` escapes)."""
    args, kwargs = _parse(description)
    return list(args), dict(kwargs)


def join_description(args: list[str], kwargs: dict[str, str]) -> str:
    """The description of those arguments again, escaped (the haproxy parser's `unparseEndpoint`,
    with which it unwraps `haproxy:DESCRIPTION`)."""
    return unparseEndpoint(tuple(args), kwargs)


class _EveryDescriptor:
    """Any index or name of an inherited descriptor, present (as -1)."""

    def __getitem__(self, key: object) -> int:
        return -1


class _AnyInheritedSockets:
    """Stands in for systemd's inherited sockets (twisted.python.systemd.ListenFDs): every index and
    name is there, so that the description itself is checked without the sockets."""

    def inheritedDescriptors(self) -> _EveryDescriptor:
        return _EveryDescriptor()

    def inheritedNamedDescriptors(self) -> _EveryDescriptor:
        return _EveryDescriptor()


class _SystemdDescriptionParser(_SystemdParser):
    """Twisted's `systemd:` parser, which looks the inherited socket up while parsing (in its
    private `_sddaemon`); with every socket present it checks the rest (domain, exactly one of
    index and name) as it would when serving, and adopts nothing."""

    _sddaemon = _AnyInheritedSockets()  # type: ignore[assignment]


def systemd_endpoint_unadopted(reactor: Any, args: list[str], kwargs: dict[str, str]) -> IStreamServerEndpoint:
    """The endpoint Twisted's `systemd:` parser makes of `systemd:ARGS` (without the `systemd`),
    as if systemd had passed every socket: it raises what the parser raises for a bad description."""
    return _SystemdDescriptionParser().parseStreamServer(reactor, *args, **kwargs)


def tcp_port_and_interface(endpoint: object) -> tuple[int, str] | None:
    """The port and interface a `tcp:` or `tcp6:` server endpoint will bind (as parsed, unchecked:
    Twisted's private `_port` and `_interface`); None for any other endpoint."""
    if isinstance(endpoint, TCP4ServerEndpoint | TCP6ServerEndpoint):
        return endpoint._port, endpoint._interface
    return None


def keep_port_logger(port: object) -> None:
    """Twisted's TCP port makes its logger (`_logger`, a descriptor of its class) anew twice for
    every connection it accepts; made once and kept on the port, it is the same logger (namespace,
    observer, the port as source)."""
    if isinstance(port, tcp.Port):
        port._logger = port._logger


class ClosingServer(tcp.Server):
    """Twisted's accepted TCP connection, closed without the `shutdown` Twisted makes before the
    `close` "just to be safe" (its comment) once the peer has said goodbye (`peer_left`): closing
    the socket, close-on-exec, then sends the same FIN. Until then the shutdown stays: a socket
    closed with input unread sends only a RST, where the shutdown's FIN goes before it, and a
    client reading to the end of what we sent reads an orderly end, not "connection reset"."""

    def peer_left(self) -> None:
        """The peer has said its last word (SSH: its DISCONNECT): the close needs no shutdown."""
        self._shouldShutdown = False


def peer_left(transport: object) -> None:
    """`ClosingServer.peer_left` if `transport` is one (not behind a PROXY header's wrapper, nor
    in tests' in-memory transports: their close is Twisted's own)."""
    if isinstance(transport, ClosingServer):
        transport.peer_left()


def accept_as_closing_servers(port: object) -> None:
    """Connections a TCP port accepts from now on are `ClosingServer`s (a port builds each with
    its class attribute `transport`, tcp.Server)."""
    if isinstance(port, tcp.Port) and port.transport is tcp.Server:
        port.transport = ClosingServer


class _EdgeWaker:
    """The reactor's waker (calls from threads wake its poll) as an eventfd that epoll watches
    edge-triggered, outside the reactor's selectables: each wakeUp's write is one event, and the
    poll that it ends has nothing to read (Twisted's pipe waker is also read, a system call per
    wake-up). The calls themselves run from the reactor's thread-call queue, as before."""

    def __init__(self, poller: Any) -> None:
        self.fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        poller.register(self.fd, EPOLLIN | EPOLLET)

    def wakeUp(self) -> None:
        with contextlib.suppress(BlockingIOError):  # the counter is full (2**64 - 2 wake-ups unread): awake anyway
            os.eventfd_write(self.fd, 1)

    def connectionLost(self, reason: object) -> None:
        os.close(self.fd)


class FlushingReactor(EPollReactor):
    """Twisted's epoll reactor, with two changes to its loop that leave every byte written, and
    every callback but the write's own (sooner), as they were.

    Writes to an accepted connection are sent once the events of the poll that made them have been
    handled (or, for writes made by timed calls and calls from threads, before the next poll), all
    of them in one `send`, as the EPOLLOUT event Twisted waits for would send them: when the
    socket takes them all, Twisted's two epoll_ctl calls and its extra turn of the loop per reply
    are saved. What the socket does not take waits for EPOLLOUT as before, so back-pressure (a
    paused producer, a full socket) is Twisted's own. A closing connection (loseConnection,
    loseWriteConnection) writes its last bytes and closes at the start of the next turn's poll,
    after the timed calls that run before it, where Twisted's EPOLLOUT event would come: what those
    calls write is still sent, and the poll, two epoll_ctl calls and a turn are saved.

    Each event runs under the log context `log.callWithLogger` gives it (the legacy log's
    `system`: the transport's logPrefix), pushed on the reactor thread's context stack directly,
    the same context for a dozen calls fewer per event.

    The waker is an eventfd that needs no read (`_EdgeWaker`).
    """

    def __init__(self) -> None:
        super().__init__()
        #: Accepted connections whose output waits for the end of this turn (a dict: in order).
        self._unflushed: dict[Any, None] = {}
        #: Accepted connections waiting for EPOLLOUT (their socket was full).
        self._epollout: set[Any] = set()
        #: Closing accepted connections: they write and close at the start of the next poll.
        self._closing: dict[Any, None] = {}
        #: Whether a class of writer is an accepted connection (tcp.Client uses EPOLLOUT to learn
        #: that it has connected: it keeps Twisted's way).
        self._flushable: dict[type, bool] = {}
        self._contexts: list[Any] | None = None  # the reactor thread's log context stack
        self._log_context: dict[str, Any] = {}  # the legacy log context the loop runs in

    def _cancelCallLater(self, call: Any) -> None:
        # Twisted leaves a cancelled timed call in its heap until it is due, and timeout() reads
        # the first call of the heap, cancelled or not: an exec's reply timer, cancelled when the
        # reply leaves, woke the loop for nothing 10 ms later, in the middle of the next
        # connection. Cancelled calls at the top of the heap are dropped now (runUntilCurrent
        # drops them the same way once due); those below wait their turn, as before.
        super()._cancelCallLater(call)
        calls = self._pendingTimedCalls
        while calls and (calls[0] is call or calls[0].cancelled):  # (`call` is marked cancelled after this)
            heapq.heappop(calls)
            self._cancellations -= 1

    def installWaker(self) -> None:
        if self.waker:
            return
        if hasattr(os, "eventfd"):
            self.waker = _EdgeWaker(self._poller)
        else:
            super().installWaker()

    def addWriter(self, writer: Any) -> None:
        try:
            flushable = self._flushable[writer.__class__]
        except KeyError:
            flushable = self._flushable[writer.__class__] = isinstance(writer, tcp.Server)
        if not flushable:
            super().addWriter(writer)
        elif writer not in self._epollout and writer not in self._closing:
            self._unflushed[writer] = None

    def removeWriter(self, writer: Any) -> None:
        if writer in self._unflushed:
            del self._unflushed[writer]
        elif writer in self._closing:
            del self._closing[writer]
        else:
            self._epollout.discard(writer)
            super().removeWriter(writer)

    def getWriters(self) -> list[Any]:
        return super().getWriters() + list(self._unflushed) + list(self._closing)

    def removeAll(self) -> list[Any]:
        unflushed = [*self._unflushed, *self._closing]
        self._unflushed.clear()
        self._closing.clear()
        self._epollout.clear()
        return list(set(super().removeAll()).union(unflushed))

    def _flush(self, closing: bool = False) -> None:
        """Each waiting connection writes, as on an EPOLLOUT event; what is still waiting then (a
        full socket, output added while flushing) waits for EPOLLOUT, as it would in Twisted.

        A closing connection (loseConnection, loseWriteConnection) is left for the next poll, as
        Twisted leaves it for the next EPOLLOUT event: what the timed calls run before that poll
        write to it is still sent. With `closing` (before a poll) those write and close, as on that
        event, and those closed by the timed calls just run too (Twisted's EPOLLOUT would come in
        this poll); one whose socket is then full waits for EPOLLOUT."""
        if closing and self._closing:
            self._unflushed = {**self._closing, **self._unflushed}
            self._closing = {}
        tried: set[Any] = set()  # a set: a shutdown closes thousands in one turn (a list was quadratic)
        for writer in list(self._unflushed):
            if writer in self._unflushed and (closing or not (writer.disconnecting or writer._writeDisconnecting)):
                tried.add(writer)
                self._event(writer, writer.fileno(), EPOLLOUT)
        while self._unflushed:
            writer, _ = self._unflushed.popitem()
            if (writer.disconnecting or writer._writeDisconnecting) and writer not in tried:
                self._closing[writer] = None
            else:
                self._epollout.add(writer)
                super().addWriter(writer)

    def _event(self, selectable: Any, fd: int, event: int) -> None:
        """`log.callWithLogger(selectable, self._doReadOrWrite, selectable, fd, event)`, inlined."""
        contexts = self._contexts
        if contexts is None:
            contexts = self._contexts = context.theContextTracker.currentContext().contexts
            self._log_context = context.get(log.ILogContext)
        try:
            system = selectable.logPrefix()
        except KeyboardInterrupt:
            raise
        except BaseException:
            system = "(buggy logPrefix method)"
            log.err(system=system)
        contexts.append({log.ILogContext: {**self._log_context, "system": system}})
        try:
            self._doReadOrWrite(selectable, fd, event)
        except KeyboardInterrupt:
            raise
        except BaseException:
            log.err(system=system)
        finally:
            contexts.pop()

    def doPoll(self, timeout: float | None) -> None:
        # EPollReactor.doPoll, with `_event` for log.callWithLogger, and the flushes.
        if self._unflushed or self._closing:  # written by the timed calls just run (or calls from threads)
            self._flush(closing=True)
            # whose callbacks may have scheduled calls: the poll must not wait past them
            due = self.timeout()
            if self._closing:  # closed by the pass's own callbacks: Twisted's EPOLLOUT would come in this poll
                due = 0
            if due is not None and (timeout is None or due < timeout):
                timeout = due
        try:
            # (+ 1: the waker, which is not among the selectables)
            events = self._poller.poll(-1 if timeout is None else timeout, len(self._selectables) + 1)
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        for fd, event in events:
            try:
                selectable = selectables[fd]
            except KeyError:
                continue
            self._event(selectable, fd, event)
        if self._unflushed:
            self._flush()

    doIteration = doPoll
