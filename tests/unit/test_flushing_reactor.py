"""FlushingReactor (conchcmd.core.twistedprivate), the reactor `serve` runs, against Twisted's epoll
reactor on loopback: the same bytes, the same callbacks in the same order, the same legacy log
context, with the replies sent without waiting for EPOLLOUT; back-pressure unchanged when the
socket is full; a flush whose callbacks schedule a call does not make the poll wait past it."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import protocol
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.interfaces import IPushProducer
from twisted.logger import globalLogPublisher
from twisted.python import log as legacy_log
from zope.interface import implementer

from conchcmd.core.twistedprivate import FlushingReactor, accept_as_closing_servers, peer_left

REPO = Path(__file__).resolve().parents[2]
GUARD = 30.0  # seconds: a run that has not ended by then failed (its reactor is stopped)


class CountingPoller:
    """An epoll object that counts the registrations asking for EPOLLOUT."""

    def __init__(self, poller: Any, run: Run):
        self.poller, self.run = poller, run

    def register(self, fd: int, flags: int) -> None:
        self.run.epoll_writers += bool(flags & select.EPOLLOUT)
        self.poller.register(fd, flags)

    def modify(self, fd: int, flags: int) -> None:
        self.run.epoll_writers += bool(flags & select.EPOLLOUT)
        self.poller.modify(fd, flags)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.poller, name)


class Run:
    """One reactor serving `make_protocol` on 127.0.0.1, and a blocking client in a thread."""

    def __init__(self, reactor_class: type[EPollReactor], make_protocol: Callable[[Run], protocol.Protocol]):
        self.reactor = reactor_class()
        self.events: list[str] = []
        self.epoll_writers = 0  # accepted connections registered for EPOLLOUT
        self.guard_fired = False
        factory = protocol.Factory.forProtocol(lambda: make_protocol(self))
        self.port = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        self._count_epoll_writers()

    def _count_epoll_writers(self) -> None:
        """Counts the requests to epoll for EPOLLOUT (only accepted connections write here: Twisted
        asks for each reply, FlushingReactor only for what the socket did not take)."""
        self.reactor._poller = CountingPoller(self.reactor._poller, self)

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port.getHost().port)

    def stop(self) -> None:
        if self.reactor.running:
            self.reactor.stop()

    def run(self, client: Callable[[socket.socket], Any]) -> Any:
        """Run the reactor until something stops it (or GUARD passes); returns what `client`
        returned, having run it in a thread against the server."""
        result: list[Any] = []
        failure: list[BaseException] = []

        def in_thread() -> None:
            try:
                with socket.socket() as s:
                    s.settimeout(GUARD)
                    # a fixed receive buffer (no autotuning): bulk output fills it, and the socket
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
                    s.connect(self.address)
                    result.append(client(s))
            except BaseException as e:
                failure.append(e)
            finally:
                self.reactor.callFromThread(self.stop)

        def guard() -> None:
            self.guard_fired = True
            self.stop()

        self.reactor.callLater(GUARD, guard)
        thread = threading.Thread(target=in_thread)
        self.reactor.callWhenRunning(thread.start)
        self.reactor.run(installSignalHandlers=False)
        thread.join(GUARD)
        self.port.stopListening()
        self.reactor._poller.close()  # (the CountingPoller passes it on)
        if failure:
            raise failure[0]
        assert not self.guard_fired
        return result[0]


def read_all(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def read_exactly(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        assert chunk, data
        data += chunk
    return data


class Replies(protocol.Protocol):
    """Several writes per message (one from a timed call), legacy log lines, and a close that
    waits for the buffer to drain."""

    def __init__(self, run: Run):
        self.run = run

    def connectionMade(self) -> None:
        self.run.events.append("made")
        self.transport.write(b"hello\n")  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.run.events.append(f"data {data!r}")
        legacy_log.msg(f"received {data!r}")
        write = self.transport.write  # type: ignore[union-attr]
        for line in data.split(b"\n"):
            if line == b"bye":
                write(b"bye\n" * 3)
                self.transport.loseConnection()  # type: ignore[union-attr]
            elif line:
                write(b"<" + line)
                write(b">\n")
                self.run.reactor.callLater(0, self.later, line)

    def later(self, line: bytes) -> None:
        self.run.events.append(f"later {line!r}")
        self.transport.write(b"later " + line + b"\n")  # type: ignore[union-attr]

    def connectionLost(self, reason: Any) -> None:
        legacy_log.msg("lost")
        self.run.events.append(f"lost {reason.type.__name__}")


def exchange(s: socket.socket) -> bytes:
    got = read_exactly(s, len(b"hello\n"))
    for word in (b"one", b"two", b"three"):
        s.sendall(word + b"\n")
        got += read_exactly(s, len(b"<%s>\nlater %s\n" % (word, word)))
    s.sendall(b"four\nbye\n")
    return got + read_all(s)


def logged_systems(run_it: Callable[[], Any]) -> tuple[Any, list[tuple[str, str]]]:
    """What run_it returns, and (text, system) of the legacy log lines written meanwhile."""
    seen: list[tuple[str, str]] = []

    def observer(event: dict[str, Any]) -> None:
        if "log_system" in event and event.get("message") and event["message"][0].startswith(("received", "lost")):
            seen.append((" ".join(event["message"]), event["log_system"]))

    globalLogPublisher.addObserver(observer)
    try:
        return run_it(), seen
    finally:
        globalLogPublisher.removeObserver(observer)


def test_the_same_bytes_callbacks_and_log_context_as_twisteds_reactor_without_epollout() -> None:
    outcomes = {}
    for reactor_class in (EPollReactor, FlushingReactor):
        run = Run(reactor_class, Replies)
        received, logged = logged_systems(lambda run=run: run.run(exchange))  # type: ignore[misc]
        outcomes[reactor_class.__name__] = (received, run.events, logged, run.epoll_writers)
    twisted, flushing = outcomes["EPollReactor"], outcomes["FlushingReactor"]
    # "later four": written by a timed call after loseConnection, sent before the close as Twisted does
    expected = b"hello\n<one>\nlater one\n<two>\nlater two\n<three>\nlater three\n<four>\nbye\nbye\nbye\nlater four\n"
    assert twisted[0] == flushing[0] == expected
    assert flushing[1] == twisted[1]
    assert flushing[1][0] == "made" and flushing[1][-1] == "lost ConnectionDone"
    # the legacy log lines carry the connection's logPrefix as their system, as under Twisted's
    assert flushing[2] == twisted[2]
    assert [system for _, system in flushing[2]] == ["Replies,0,127.0.0.1"] * len(flushing[2])
    assert ("lost", "Replies,0,127.0.0.1") in flushing[2]
    # Twisted waits for EPOLLOUT for each reply and for the close; the flushing reactor for neither
    assert twisted[3] >= 5
    assert flushing[3] == 0


TOTAL = 16 * 1024 * 1024  # more than loopback's socket buffers hold: the socket fills
CHUNK = 64 * 1024


def chunk(offset: int) -> bytes:
    """Chunks that differ (a lost, repeated or reordered one shows)."""
    return (offset // CHUNK).to_bytes(8, "big") * (CHUNK // 8)


@implementer(IPushProducer)
class Bulk(protocol.Protocol):
    """Writes TOTAL bytes as a streaming producer: stops when TCP pauses it, goes on when it
    resumes, as ServerTransport does with its channels. `full` is set once the socket has refused
    bytes, and says whether the connection then waited for EPOLLOUT."""

    def __init__(self, run: Run):
        self.run = run
        self.sent = 0
        self.paused = False
        self.pauses = 0
        self.full: threading.Event = run.full  # type: ignore[attr-defined]
        self.waiting_for_epollout = False

    def connectionMade(self) -> None:
        self.run.bulk = self  # type: ignore[attr-defined]
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)  # type: ignore[union-attr]
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.produce()

    def produce(self) -> None:
        while not self.paused and self.sent < TOTAL:
            self.transport.write(chunk(self.sent))  # type: ignore[union-attr]
            self.sent += CHUNK
        if self.sent >= TOTAL and not self.paused:
            self.transport.unregisterProducer()  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1
        if self.pauses == 1:
            self.check_full()

    def check_full(self) -> None:
        """Between turns of the loop, until the socket has refused bytes (which stay in Twisted's buffer)."""
        t: Any = self.transport
        if len(t.dataBuffer) > t.offset:
            self.waiting_for_epollout = t.fileno() in self.run.reactor._writes
            self.full.set()
        else:
            self.run.reactor.callLater(0.01, self.check_full)

    def resumeProducing(self) -> None:
        self.paused = False
        self.produce()

    def stopProducing(self) -> None:
        self.paused = True


@pytest.mark.parametrize("reactor_class", [EPollReactor, FlushingReactor])
def test_a_full_socket_pauses_the_producer_and_every_byte_arrives_in_order(reactor_class: type[EPollReactor]) -> None:
    run = Run(reactor_class, Bulk)
    run.full = threading.Event()  # type: ignore[attr-defined]

    def slow_reader(s: socket.socket) -> bytes:
        s.sendall(b"go")
        assert run.full.wait(GUARD)  # type: ignore[attr-defined]
        return read_all(s)

    received = run.run(slow_reader)
    bulk: Bulk = run.bulk  # type: ignore[attr-defined]
    assert bulk.pauses >= 1
    assert bulk.waiting_for_epollout  # what the socket could not take waited for EPOLLOUT
    assert len(received) == TOTAL
    assert received == b"".join(chunk(offset) for offset in range(0, TOTAL, CHUNK))


class CloseAfterBulk(protocol.Protocol):
    """Writes more than the socket takes and closes in the same turn: the close must wait for
    EPOLLOUT until every byte is out."""

    def __init__(self, run: Run):
        self.run = run

    def connectionMade(self) -> None:
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        for offset in range(0, TOTAL, CHUNK):
            self.transport.write(chunk(offset))  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]
        self.run.reactor.callLater(0, self.transport.write, b"after")  # type: ignore[union-attr]

    def connectionLost(self, reason: Any) -> None:
        self.run.events.append(f"lost {reason.type.__name__}")


@pytest.mark.parametrize("reactor_class", [EPollReactor, FlushingReactor])
def test_a_close_behind_more_than_the_socket_takes_sends_every_byte(reactor_class: type[EPollReactor]) -> None:
    run = Run(reactor_class, CloseAfterBulk)

    def slow_reader(s: socket.socket) -> bytes:
        s.sendall(b"go")
        return read_all(s)

    received = run.run(slow_reader)
    assert received == b"".join(chunk(offset) for offset in range(0, TOTAL, CHUNK)) + b"after"
    assert run.events == ["lost ConnectionDone"]
    assert run.epoll_writers >= 1  # the full socket's rest waited for EPOLLOUT


@implementer(IPushProducer)
class ResumeFromTimedCall(protocol.Protocol):
    """A timed call writes enough to pause itself as a producer; the flush before the poll sends
    it all and resumes it, and the resumed producer schedules a call, which must run at once, not
    when the poll would otherwise have timed out."""

    def __init__(self, run: Run):
        self.run = run

    def dataReceived(self, data: bytes) -> None:
        self.run.reactor.callLater(0, self.answer)

    def answer(self) -> None:
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self.transport.write(b"a" * CHUNK)  # type: ignore[union-attr]
        self.transport.write(b"b" * CHUNK)  # type: ignore[union-attr]

    def pauseProducing(self) -> None:
        self.run.events.append("paused")

    def resumeProducing(self) -> None:
        self.run.events.append("resumed")
        self.run.reactor.callLater(0, self.after_resume)

    def stopProducing(self) -> None:
        pass

    def after_resume(self) -> None:
        self.run.events.append("after resume")
        self.run.stop()


@pytest.mark.parametrize("reactor_class", [EPollReactor, FlushingReactor])
def test_a_call_scheduled_by_a_flush_runs_without_waiting_for_the_poll(reactor_class: type[EPollReactor]) -> None:
    run = Run(reactor_class, ResumeFromTimedCall)
    release = threading.Event()

    def client(s: socket.socket) -> bytes:
        s.sendall(b"?")
        got = read_exactly(s, 2 * CHUNK)
        release.wait(GUARD)  # the client thread's own stop comes only after the reactor stopped
        return got

    run.reactor.addSystemEventTrigger("after", "shutdown", release.set)
    assert run.run(client) == b"a" * CHUNK + b"b" * CHUNK
    assert run.events == ["paused", "resumed", "after resume"]


def test_serve_installs_the_flushing_reactor_before_conch_imports_the_global_one() -> None:
    """Conch's userauth imports Twisted's global reactor: `serve` must install its own first."""
    script = (
        "import sys\n"
        "from conchcmd.core.reactor import install_reactor\n"
        "reactor = install_reactor()\n"
        "import conchcmd.edge.service\n"
        "from twisted.internet import reactor as installed\n"
        "print(type(reactor).__name__, installed is reactor)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO, timeout=60
    ).stdout
    assert out.split() == ["FlushingReactor", "True"]
    source = (REPO / "conchcmd" / "edge" / "cli.py").read_text()
    serve = source[source.index("def cmd_serve") :]
    assert serve.index("install_reactor()") < serve.index("from conchcmd.edge.service import")


def test_nothing_serve_imports_first_installs_twisted_s_reactor() -> None:
    """install_reactor quietly keeps a reactor that is already installed (twistd's): if importing
    the command line ever imported Twisted's global reactor, serve would run the plain epoll one."""
    script = "import sys, conchcmd.edge.cli\nprint('twisted.internet.reactor' in sys.modules)\n"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO, timeout=60
    ).stdout
    assert out.split() == ["False"]


class StuckCloser:
    """A closing accepted connection whose socket takes nothing (a peer that stopped reading),
    counting how often the reactor compares it with another connection."""

    compared = 0
    disconnecting = True
    _writeDisconnecting = False

    def __init__(self, fd: int):
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "stuck"

    def doWrite(self) -> None:
        return None  # nothing sent: it waits for EPOLLOUT

    def __eq__(self, other: object) -> bool:
        StuckCloser.compared += 1
        return self is other

    __hash__ = object.__hash__


def test_the_closing_pass_does_work_linear_in_the_closing_connections() -> None:
    """A shutdown (or a burst of timeouts) closes every connection in one turn; those whose peer
    stopped reading stay waiting. The closing pass looked each of them up in a list of all the
    connections it had tried: quadratic (measured: 10,000 such connections held the reactor 0.7 s,
    20,000 for 2.9 s, serving no one)."""
    count = 400
    pairs = [socket.socketpair() for _ in range(count)]
    reactor = FlushingReactor()
    reactor._flushable[StuckCloser] = True  # as an accepted connection (tcp.Server) is
    try:
        writers = [StuckCloser(a.fileno()) for a, _ in pairs]
        for writer in writers:
            reactor.addWriter(writer)
        StuckCloser.compared = 0
        reactor.doPoll(0)  # the closing pass: each writes (nothing), then waits for EPOLLOUT
        assert StuckCloser.compared < count, f"{StuckCloser.compared} comparisons for {count} connections"
        assert set(reactor.getWriters()) == set(writers)  # every one still waits to write and close
    finally:
        for writer in writers:
            reactor.removeWriter(writer)
        reactor._poller.close()
        for a, b in pairs:
            a.close()
            b.close()


class Chained(protocol.Protocol):
    """Two connections: the first's end closes the second (as a connection's end may close
    another: a shutdown's last step, a master's muxed clients)."""

    def __init__(self, run: Run):
        self.run = run

    def connectionMade(self) -> None:
        self.run.connections.append(self)  # type: ignore[attr-defined]
        self.transport.write(b"hi")  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Any) -> None:
        others = [c for c in self.run.connections if c is not self]  # type: ignore[attr-defined]
        if others and others[0].transport.connected and not others[0].transport.disconnecting:
            others[0].transport.write(b"bye")
            others[0].transport.loseConnection()


@pytest.mark.parametrize("reactor_class", [EPollReactor, FlushingReactor])
def test_a_connection_closed_while_another_closes_is_closed_at_once(reactor_class: type[EPollReactor]) -> None:
    """The closing pass closes the first connection; its end closes the second. Twisted's reactor
    closes that one on the EPOLLOUT event of the same poll; FlushingReactor left it for the next
    poll, which then waited for an event that never came (here until the guard's timer)."""
    run = Run(reactor_class, Chained)
    run.connections = []  # type: ignore[attr-defined]

    def client(first: socket.socket) -> bytes:
        with socket.create_connection(run.address) as second:
            second.settimeout(GUARD / 3)  # far more than a reactor turn: a hang, not a delay
            assert read_exactly(first, 2) == b"hi" and read_exactly(second, 2) == b"hi"
            first.sendall(b"go")
            assert read_all(first) == b""
            return read_all(second)

    assert run.run(client) == b"bye"


class ClosePathPoller(CountingPoller):
    """Also records the epoll_ctl DELs (unregister)."""

    def unregister(self, fd: int) -> None:
        self.run.unregistered.append(fd)  # type: ignore[attr-defined]
        self.poller.unregister(fd)


class AnswerThenClose(Replies):
    """Answers each line; "quit" closes with nothing to write, as a server does when its client
    says goodbye (its last bytes went out on earlier turns), and says so (`peer_left`)."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.run.fd = self.transport.fileno()  # type: ignore[attr-defined,union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.run.events.append(f"data {data!r}")
        if data == b"quit\n":
            peer_left(self.transport)
            self.transport.loseConnection()  # type: ignore[union-attr]
        else:
            self.transport.write(b"<" + data)  # type: ignore[union-attr]


def answer_then_quit(s: socket.socket) -> bytes:
    got = read_exactly(s, len(b"hello\n"))
    s.sendall(b"one\n")
    got += read_exactly(s, len(b"<one\n"))
    s.sendall(b"quit\n")
    return got + read_all(s)


def test_a_closing_connection_closes_without_a_shutdown(monkeypatch: Any) -> None:
    """The close path without Twisted's `shutdown` before the close (ClosingServer, once its peer
    has said goodbye); the epoll_ctl DEL before the close stays (a socket duplicated into a child
    between fork and exec would keep a closed descriptor's registration), and the bytes, callbacks
    and orderly close (the client reads to a FIN) are Twisted's."""
    shutdowns: list[int] = []
    real_shutdown = socket.socket.shutdown

    def shutdown(self: socket.socket, how: int) -> None:
        shutdowns.append(self.fileno())
        real_shutdown(self, how)

    monkeypatch.setattr(socket.socket, "shutdown", shutdown)
    outcomes = {}
    for name, reactor_class, closing_servers in (
        ("twisted", EPollReactor, False),
        ("flushing, tcp.Server", FlushingReactor, False),
        ("flushing, ClosingServer", FlushingReactor, True),
    ):
        run = Run(reactor_class, AnswerThenClose)
        run.unregistered = []  # type: ignore[attr-defined]
        run.reactor._poller = ClosePathPoller(run.reactor._poller.poller, run)
        if closing_servers:
            accept_as_closing_servers(run.port)
        del shutdowns[:]
        received = run.run(answer_then_quit)  # read to its end: a FIN, not a reset (which raises)
        # the DELs of the connection's descriptor (the port's own comes after the run)
        outcomes[name] = (received, run.events, run.unregistered.count(run.fd), shutdowns.count(run.fd))  # type: ignore[attr-defined]
    twisted, plain, flushing = outcomes.values()
    assert flushing[0] == plain[0] == twisted[0] and flushing[1] == plain[1] == twisted[1]
    assert flushing[1][-1] == "lost ConnectionDone"
    assert twisted[2] >= plain[2] == flushing[2] >= 1  # a DEL before the close (Twisted: also its writer's)
    assert twisted[3] == plain[3] == 1  # tcp.Server shuts the connection down before closing it
    assert flushing[3] == 0


class PauseUntilToldTo(protocol.Protocol):
    """Stops reading on "pause" until a call from the client's thread resumes it; "both" pauses
    and resumes in the same turn."""

    def __init__(self, run: Run):
        self.run = run

    def connectionMade(self) -> None:
        self.run.server = self  # type: ignore[attr-defined]
        self.run.fd = self.transport.fileno()  # type: ignore[attr-defined,union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.run.events.append(f"data {data!r}")
        if data == b"both\n":
            self.transport.pauseProducing()  # type: ignore[union-attr]
            self.transport.resumeProducing()  # type: ignore[union-attr]
            self.transport.write(b"ok\n")  # type: ignore[union-attr]
        elif data == b"pause\n":
            self.transport.pauseProducing()  # type: ignore[union-attr]
            self.transport.write(b"paused\n")  # type: ignore[union-attr]
        elif data == b"more\n":
            self.transport.write(b"done\n")  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]

    def resume(self) -> None:
        self.run.events.append("resumed")
        self.transport.resumeProducing()  # type: ignore[union-attr]


def test_a_connection_that_stops_reading_leaves_epoll_and_comes_back() -> None:
    """A paused connection (stopReading) is out of epoll for as long as it is paused: what the
    client sends meanwhile is read only once it resumes (no event for it reaches the reactor); one
    paused and resumed within a turn reads on."""
    run = Run(FlushingReactor, PauseUntilToldTo)
    run.unregistered = []  # type: ignore[attr-defined]
    run.reactor._poller = ClosePathPoller(run.reactor._poller.poller, run)
    accept_as_closing_servers(run.port)

    def client(s: socket.socket) -> bytes:
        s.sendall(b"both\n")
        got = read_exactly(s, 3)
        s.sendall(b"pause\n")
        got += read_exactly(s, 7)
        s.sendall(b"more\n")
        run.reactor.callFromThread(lambda: run.reactor.callLater(0, run.server.resume))  # type: ignore[attr-defined]
        return got + read_all(s)

    assert run.run(client) == b"ok\npaused\ndone\n"
    assert run.events == ["data b'both\\n'", "data b'pause\\n'", "resumed", "data b'more\\n'"]
    # it left epoll for each pause and before its close, as in Twisted's reactor
    assert run.unregistered.count(run.fd) == 3  # type: ignore[attr-defined]


def test_calls_from_threads_wake_the_poll_through_an_eventfd_never_read() -> None:
    """callFromThread wakes a reactor that has nothing else to do (its poll would wait for the
    guard's 30 s); the waker is an edge-triggered eventfd that the reactor never reads: its counter
    holds every wake-up (Twisted's pipe waker is read once per wake-up, a system call)."""
    reactor = FlushingReactor()
    ran: list[int] = []
    done = threading.Event()

    def calls() -> None:
        for i in range(3):
            reactor.callFromThread(ran.append, i)
            reactor.callFromThread(done.set)
            assert done.wait(GUARD)
            done.clear()
        reactor.callFromThread(reactor.stop)

    reactor.callLater(GUARD, reactor.stop)
    reactor.callWhenRunning(threading.Thread(target=calls).start)
    reactor.run(installSignalHandlers=False)
    assert ran == [0, 1, 2]
    assert os.eventfd_read(reactor.waker.fd) >= 7  # every wake-up, none read
    reactor.waker.connectionLost(None)
    reactor._poller.close()


HALF_CLOSE_BULK = 300_000  # more than the client's 64 KiB receive buffer takes: the rest waits for EPOLLOUT


class Ending(protocol.Protocol):
    """Ends the connection the way the client's line asks: "bye" (everything read), "pause" then
    a close once the client's next bytes wait unread, "abort" (abortConnection), "half" (bulk
    output, then loseWriteConnection; the connection still reads: "after" closes it)."""

    def __init__(self, run: Run):
        self.run = run

    def dataReceived(self, data: bytes) -> None:
        self.run.events.append(f"data {data!r}")
        t: Any = self.transport
        if data == b"bye\n":
            t.write(b"bye\n")
            t.loseConnection()
        elif data == b"pause\n":
            t.pauseProducing()
            t.write(b"paused\n")
        elif data == b"abort\n":
            t.write(b"never sent\n")
            t.abortConnection()
        elif data == b"half\n":
            t.write(b"h" * HALF_CLOSE_BULK)
            t.loseWriteConnection()
        elif data == b"after\n":
            t.loseConnection()
            self.run.after.set()  # type: ignore[attr-defined]

    def close_once_input_waits(self) -> None:
        """Closes once the client's bytes have reached the (paused) socket, unread."""
        t: Any = self.transport
        try:
            t.getHandle().recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            self.run.reactor.callLater(0.005, self.close_once_input_waits)
            return
        t.write(b"closing\n")
        t.loseConnection()

    def connectionMade(self) -> None:
        self.run.server = self  # type: ignore[attr-defined]

    def connectionLost(self, reason: Any) -> None:
        self.run.events.append(f"lost {reason.type.__name__}")


def read_to_the_end(s: socket.socket) -> tuple[bytes, str]:
    """What the client reads, and how the connection ended for it: a FIN, or a reset."""
    chunks = []
    try:
        while chunk := s.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        return b"".join(chunks), "reset"
    return b"".join(chunks), "FIN"


def end_by(mode: str, run: Run) -> Callable[[socket.socket], tuple[bytes, str]]:
    def client(s: socket.socket) -> tuple[bytes, str]:
        if mode == "unread":
            s.sendall(b"pause\n")
            got = read_exactly(s, len(b"paused\n"))
            s.sendall(b"left unread\n")
            run.reactor.callFromThread(run.server.close_once_input_waits)  # type: ignore[attr-defined]
            rest, how = read_to_the_end(s)
            return got + rest, how
        s.sendall(mode.encode() + b"\n")
        got = read_to_the_end(s)
        if mode == "half":
            s.sendall(b"after\n")
            assert run.after.wait(GUARD)  # type: ignore[attr-defined]
        return got

    return client


@pytest.mark.parametrize("mode", ["bye", "unread", "abort", "half"])
def test_every_way_a_connection_ends_looks_the_same_to_the_client_as_with_twisted(mode: str) -> None:
    """Closes the server makes, as the client sees them, are Twisted's (ClosingServer leaves out
    the `shutdown` only once the peer has said goodbye): closed with everything read, a FIN;
    closed with the client's input unread, a FIN too, ahead of the close's RST, so the client
    reads an orderly end (the close alone would send only the RST: "connection reset");
    abortConnection, a RST; after loseWriteConnection every byte and a FIN, and the connection
    still reads. The same bytes and callbacks as with Twisted's reactor."""
    outcomes = []
    for reactor_class, closing_servers in ((EPollReactor, False), (FlushingReactor, True)):
        run = Run(reactor_class, Ending)
        run.after = threading.Event()  # type: ignore[attr-defined]
        if closing_servers:
            accept_as_closing_servers(run.port)
        received, how = run.run(end_by(mode, run))
        outcomes.append((received, how, run.events))
    twisted, ours = outcomes
    assert ours == twisted
    received, how, events = ours
    expected = {
        "bye": (b"bye\n", "FIN", "ConnectionDone"),
        "unread": (b"paused\nclosing\n", "FIN", "ConnectionDone"),
        "abort": (b"", "reset", "ConnectionAborted"),
        "half": (b"h" * HALF_CLOSE_BULK, "FIN", "ConnectionDone"),
    }[mode]
    assert (received, how, events[-1]) == (*expected[:2], f"lost {expected[2]}")
    if mode == "half":
        assert events[-2] == "data b'after\\n'"


def test_calls_from_many_threads_at_once_are_never_lost() -> None:
    """Threads that each wait for their call to have run before making the next (the loop is idle
    in between, as when comphash jobs finish one by one), all at once: every call runs; a stop
    asked for among a storm of calls from threads ends the run."""
    reactor = FlushingReactor()
    threads, rounds = 16, 200
    ran = [0] * threads
    lost: list[int] = []

    def calls(n: int) -> None:
        done = threading.Event()

        def one() -> None:
            ran[n] += 1
            done.set()

        for _ in range(rounds):
            done.clear()
            reactor.callFromThread(one)
            if not done.wait(GUARD):
                lost.append(n)
                return

    storm = threading.Event()

    def storm_then_stop() -> None:
        workers = [threading.Thread(target=calls, args=(n,)) for n in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        stormers = [
            threading.Thread(target=lambda: [reactor.callFromThread(len, ()) for _ in range(2000)]) for _ in range(4)
        ]
        for s in stormers:
            s.start()
        reactor.callFromThread(reactor.stop)
        for s in stormers:
            s.join()
        storm.set()

    guard = reactor.callLater(GUARD, reactor.stop)
    reactor.callWhenRunning(threading.Thread(target=storm_then_stop).start)
    reactor.run(installSignalHandlers=False)
    assert storm.wait(GUARD)
    assert guard.active()  # stopped by the threads' stop, not by the guard
    assert lost == [] and ran == [rounds] * threads
    reactor.waker.connectionLost(None)
    reactor._poller.close()


def test_a_cancelled_timed_call_no_longer_sets_the_polls_timeout() -> None:
    """Twisted keeps a cancelled call in its heap until it is due, and its timeout() (how long the
    poll may wait) reads the heap's first call, cancelled or not: an exec's reply timer, cancelled
    when the reply left, woke the loop 10 ms later for nothing. FlushingReactor drops cancelled
    calls from the top of the heap; what is left runs as before, and the cancelled never run."""
    ran: list[str] = []
    for reactor_class in (EPollReactor, FlushingReactor):
        reactor = reactor_class()
        try:
            soon = reactor.callLater(0.5, ran.append, "soon")
            later = reactor.callLater(60, ran.append, "later")
            hidden = reactor.callLater(90, ran.append, "hidden")  # cancelled below the top of the heap
            assert reactor.timeout() is not None and reactor.timeout() <= 0.5  # type: ignore[operator]
            hidden.cancel()
            soon.cancel()
            never = reactor.callLater(0.2, ran.append, "never")  # cancelled before it reaches the heap
            never.cancel()
            timeout = reactor.timeout()
            assert timeout is not None
            if reactor_class is EPollReactor:
                assert timeout <= 0.5  # Twisted's: the poll would end at the cancelled call's time
            else:
                assert 59 < timeout <= 60, timeout
                assert reactor._cancellations == 1  # hidden's, dropped when it reaches the top
                later.cancel()  # hidden surfaces, and goes too: nothing left to wait for
                assert reactor.timeout() is None and reactor._cancellations == 0
                assert reactor.getDelayedCalls() == []
            reactor.runUntilCurrent()
            assert ran == []
        finally:
            for call in reactor.getDelayedCalls():
                call.cancel()
            reactor.waker.connectionLost(None)  # type: ignore[union-attr]
