"""The session channel: exec and shell requests, output within the peer's window, exit status.

This replaces Conch's `SSHSession` rather than configuring it: SSHSession shares one buffer
between early input and held-back output (losing output past the client's window), sends no
EOF, may finish before the exec reply, and calls `connectionLost` twice. Here output is queued
per channel, written only as the window allows, and writers wait (a Deferred) above a high-water
mark, so a client that stops reading costs a bounded amount of memory.

Input is bounded the same way, by SSH's own flow control: each channel keeps a byte account
(input not yet processed, including lines waiting for a command, plus queued output), and the
window it offers the client is what that account, and its connection's shared budget, can still
take. A client that sends faster than its commands run simply finds the window shut.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.conch.ssh import connection
from twisted.conch.ssh.common import getNS
from twisted.conch.ssh.session import parseRequest_pty_req, parseRequest_window_change
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from conchcmd.commands.framework import Dispatcher, ExitStatus
from conchcmd.core.audit import AuditSink, BoundAudit, sanitise
from conchcmd.core.config import UserPolicy
from conchcmd.core.flow import ChannelConnection
from conchcmd.core.internalerrors import InternalErrors
from conchcmd.core.logtargets import LOG_NAMESPACE
from conchcmd.core.refusals import RepeatLog
from conchcmd.policy.auth import Identity
from conchcmd.wire.conchprivate import QuietChannel

log = Logger(namespace=LOG_NAMESPACE)

OUTPUT_HIGH_WATER = 512 * 1024  # queued output above which writers wait
OUTPUT_LOW_WATER = 128 * 1024  # ... until it drains below this (and above it, if over budget)
OUTPUT_COALESCE = 64 * 1024  # small writes are appended to one buffer up to this size
CHANNEL_INPUT_LIMIT = 256 * 1024  # input a channel holds plus the window it offers, at most
CONNECTION_BUDGET = 4 * 1024 * 1024  # what all channels of a connection hold and offer, at most
WINDOW_FLOOR = 4 * 1024  # window a channel keeps while its input is consumed (Ctrl-C must get through)


@dataclass(frozen=True)
class ShellSettings:
    """What the shells need to know besides the dispatcher."""

    hostname: str
    prompt: str = "{user}@{host}> "
    max_line: int = 16 * 1024
    history_size: int = 500
    completer: Any = None  # completion.Completer; None: Tab does nothing


class ConnectionBudget:
    """The bytes one connection may hold or promise (open windows) for all its session channels.

    Channels join it when opened; a channel limited by the budget is marked starved, and when any
    channel's account goes down the starved ones get another chance to open their windows.
    """

    def __init__(self, limit: int = CONNECTION_BUDGET):
        self.limit = limit
        self.channels: dict[SessionChannel, None] = {}  # insertion-ordered set
        self.starved: dict[SessionChannel, None] = {}  # those whose last window the budget limited

    def committed(self, excluding: SessionChannel | None = None) -> int:
        return sum(c.committed() for c in self.channels if c is not excluding)

    def exceeded(self) -> bool:
        """True when the channels hold and offer more than the budget: writers wait sooner."""
        return self.committed() > self.limit

    def released(self, by: SessionChannel) -> None:
        """`by` holds less than before: let starved channels open their windows again.

        Only the starved channels are looked at (a channel the budget did not limit gains
        nothing), and the total is taken once and kept up to date, so a release costs one pass
        over the accounts: with many multiplexed execs each one's output and close came here.
        """
        if not self.starved or (len(self.starved) == 1 and by in self.starved):
            return
        starved, self.starved = self.starved, {}
        total = self.committed()
        for chan in starved:
            if chan is by:
                self.starved[chan] = None  # its own update_window judges it
            elif chan in self.channels:
                mine = chan.committed()
                chan.update_window(others=total - mine)
                total += chan.committed() - mine


@dataclass(frozen=True)
class SessionContext:
    """Everything a session channel needs: the server's pieces and who is connected."""

    dispatcher: Dispatcher
    clock: IReactorTime
    identity: Identity
    peer: str
    shell: ShellSettings
    policy: UserPolicy = field(default_factory=UserPolicy)
    budget: ConnectionBudget = field(default_factory=ConnectionBudget)  # one per connection
    refusals: RepeatLog | None = None  # the connection's; None: the channel keeps its own
    audit: AuditSink | None = None  # the connection's (with its id); None: the dispatcher's
    internal_errors: InternalErrors = field(default_factory=InternalErrors)  # the server's

    def internal_error(self, failure: Failure, doing: str, then: str) -> None:
        """A bug of ours hit while `doing` something in this session: its traceback logged once
        per place in the code (the server's InternalErrors, shared with the transport), then one
        line each time; `then`: what the user got instead."""
        self.internal_errors.report(log, failure, doing, f"{sanitise(self.identity.user)}@{self.peer}", then)

    def channel_audit(self, channel: int | None, kind: str) -> BoundAudit:
        """The audit sink of one channel: the connection's, with the channel number and kind."""
        return BoundAudit(self.audit or self.dispatcher.audit, channel=channel, kind=kind)

    def dispatch(
        self,
        line: str,
        stdout: Any,
        stderr: Any,
        *,
        interactive: bool,
        last_status: int = 0,
        original_command: str | None = None,
        input_closed: defer.Deferred[None] | None = None,
        audit: AuditSink | None = None,
    ) -> Any:
        return self.dispatcher.dispatch(
            line,
            stdout=stdout,
            stderr=stderr,
            user=self.identity.user,
            peer=self.peer,
            fingerprint=self.identity.fingerprint,
            interactive=interactive,
            last_status=last_status,
            policy=self.policy,
            original_command=original_command,
            input_closed=input_closed,
            audit=audit,
        )


@dataclass
class Terminal:
    """The pty the client asked for (we emulate it; no kernel pty is allocated)."""

    term: str
    columns: int
    rows: int


class ChannelHandler(Protocol):
    """What runs on a session channel: an exec'd command or one of the shells."""

    #: For the audit: "exec", "shell" (no pty) or "pty-shell".
    kind: str
    #: The command running now, if any (the channel is busy: the connection is not idle).
    running: defer.Deferred[Any] | None

    def start(self) -> None: ...
    def data_received(self, data: bytes) -> None: ...
    def eof_received(self) -> None: ...
    def window_changed(self, columns: int, rows: int) -> None: ...
    def interrupt(self) -> None: ...
    def connection_lost(self) -> None: ...
    def input_held(self) -> int:
        """Bytes of input received and not yet processed (partial and waiting lines)."""
        ...


#: Builds the handler for a channel: an exec of the given command line, or a shell for None.
HandlerFactory = Callable[["SessionChannel", "str | None"], ChannelHandler]


class ChannelStream:
    """A writable stream onto the channel (stdout or stderr), optionally translating newlines."""

    def __init__(self, chan: SessionChannel, *, stderr: bool = False, crlf: bool = False):
        self.chan = chan
        self.stderr = stderr
        self.crlf = crlf

    def write(self, data: bytes) -> defer.Deferred[None]:
        if self.crlf:
            data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        return self.chan.send(data, stderr=self.stderr)


class SessionChannel(QuietChannel):
    """One `session` channel: at most one exec or shell, its own state and exit status."""

    name = b"session"
    #: The packets the connection holds for this channel (the reply to its exec or shell request,
    #: then the command's first output) until the exit status or REPLY_HOLD (server.connection).
    held_flight: list[tuple[int, bytes]] | None = None
    held_bytes = 0  # output in held_flight
    reply_timer: Any = None  # the IDelayedCall that sends held_flight at the latest

    def __init__(self, context: SessionContext, make_handler: HandlerFactory, **kwargs: Any):
        budget = context.budget
        # Room for one whole line (and its CR LF) at least, or a plain shell could wait forever.
        self.input_limit = max(CHANNEL_INPUT_LIMIT, context.shell.max_line + 2)
        initial = min(self.input_limit, max(budget.limit - budget.committed(), WINDOW_FLOOR))
        super().__init__(localWindow=initial, **kwargs)
        self.context = context
        # Repeated refusals are logged once per kind, their counts on the connection's last line.
        self.refusals = context.refusals or RepeatLog(log, context.peer)
        self.make_handler = make_handler
        self.terminal: Terminal | None = None
        self.handler: ChannelHandler | None = None
        self.audit: AuditSink = self.context.audit or self.context.dispatcher.audit  # + channel, kind: _begin
        self._started = False
        self._early_input: list[bytes] = []
        self._early_bytes = 0
        self._early_eof = False
        self._queue: deque[tuple[bool, bytearray | memoryview]] = deque()
        self._queued = 0
        self._drain_waiters: list[defer.Deferred[None]] = []
        self._empty_waiters: list[defer.Deferred[None]] = []
        self._finishing = False
        self._gone = False
        self._answering = False  # inside answer_request: the handler starts once the reply is queued
        self._start_pending = False
        budget.channels[self] = None
        if initial < self.input_limit:
            budget.starved[self] = None  # opened short of window: a release may open it further

    # -- requests from the client ------------------------------------------------------------

    def request_pty_req(self, data: bytes) -> int:
        if self.handler is not None:
            return 0
        if not self.context.identity.grant.pty:
            self.refusals.note(
                "Refused pty",
                "Refused pty for {user}@{peer}: not permitted by {source}",
                user=sanitise(self.context.identity.user),
                source=self.context.identity.grant.source,
            )
            return 0
        term, (rows, columns, _, _), _ = parseRequest_pty_req(data)
        # `ssh -tt` with piped stdin asks for a 0x0 terminal; assume a classic size.
        self.terminal = Terminal(sanitise(term, 64), columns or 80, rows or 24)
        return 1

    def request_window_change(self, data: bytes) -> int:
        rows, columns, _, _ = parseRequest_window_change(data)
        if self.terminal is not None:
            self.terminal.columns, self.terminal.rows = columns or 80, rows or 24
            if self.handler is not None and self._started:
                self.handler.window_changed(self.terminal.columns, self.terminal.rows)
        return 1

    def request_shell(self, data: bytes) -> int:
        return self._begin(None)

    def request_exec(self, data: bytes) -> int:
        command, _ = getNS(data)
        return self._begin(command.decode("utf-8", "surrogateescape"))

    def request_subsystem(self, data: bytes) -> int:
        name, _ = getNS(data)
        self.refusals.note(
            "Refused subsystem",  # one kind whatever the name: each name its own line would be no bound
            "Refused subsystem {name} for {user}@{peer}",
            name=sanitise(name, 200),
            user=sanitise(self.context.identity.user),
        )
        return 0

    def request_signal(self, data: bytes) -> int:
        name, _ = getNS(data)
        if name in (b"INT", b"TERM", b"KILL", b"HUP") and self.handler is not None and self._started:
            self.handler.interrupt()
            return 1
        return 0

    def requestReceived(self, requestType: bytes, data: bytes) -> int:
        # Refusals (env, x11-req, auth-agent-req@openssh.com, ...) are normal; Conch would log
        # each one. Malformed request data ends up here too: refuse it, don't crash.
        try:
            return int(super().requestReceived(requestType, data))
        except (struct.error, ValueError, IndexError):
            # One kind whatever the type: a type that is not ASCII gets here too (Conch decodes it).
            self.refusals.note(
                "Malformed request",
                "Malformed {kind} request from {user}@{peer}",
                kind=sanitise(requestType, 64),
                user=sanitise(self.context.identity.user),
            )
            return 0

    def answer_request(self, requestType: bytes, data: bytes, reply: Callable[[bool, bool], None]) -> None:
        """Handle a request and answer it with `reply(ok, begins)` (which queues the reply
        packet, if the client wants one; `begins`: an exec starts, the connection may hold the
        reply for the command's first packets); the command starts right after, in the same
        turn, so its output and exit status follow the reply on the wire."""
        self._answering = True
        try:
            ok = self.requestReceived(requestType, data)
        finally:
            self._answering = False
        # Only an exec's reply is held for its first output: a shell without a pty writes nothing
        # until the user types, so holding its reply would only delay it by REPLY_HOLD.
        reply(bool(ok), self._start_pending and requestType == b"exec")
        if self._start_pending:
            self._start_pending = False
            self._start_handler()

    def _begin(self, command: str | None) -> int:
        if self.handler is not None:
            return 0
        self.handler = self.make_handler(self, command)
        self.audit = self.context.channel_audit(self.id, self.handler.kind)
        if self._answering:
            self._start_pending = True  # answer_request starts it once the reply is queued
        else:
            # Called directly: start on the next reactor turn, so the caller's reply to this
            # request goes out before any output or exit status.
            self.context.clock.callLater(0, self._start_handler)
        return 1

    def _start_handler(self) -> None:
        handler = self.handler
        if self._gone or handler is None:
            return
        self._started = True
        handler.start()
        # The handler's own reference: a command that ends at once can close the channel in
        # start() (the client had closed its side), and closed() lets go of self.handler.
        early, self._early_input, self._early_bytes = self._early_input, [], 0
        for data in early:
            handler.data_received(data)
        if self._early_eof:
            handler.eof_received()
        self.input_consumed()

    # -- input -------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.handler is not None and self._started:
            self.handler.data_received(data)
        else:
            self._early_input.append(data)
            self._early_bytes += len(data)
        self.update_window()

    def extReceived(self, dataType: int, data: bytes) -> None:
        self.update_window()  # clients have no business sending stderr; ignore it

    def eofReceived(self) -> None:
        if self.handler is not None and self._started:
            self.handler.eof_received()
        else:
            self._early_eof = True

    @property
    def _connection(self) -> ChannelConnection:
        """The connection, as flow control sees it: Conch types `conn` as its SSHConnection, the
        channel relies on ChannelConnection (ConnectionService implements it, mypy checks that
        in server.py)."""
        return self.conn  # type: ignore[return-value]  # (typing.cast is a call per use)

    @property
    def busy(self) -> bool:
        """True while a command runs on this channel."""
        return self.handler is not None and self.handler.running is not None

    # -- the byte account and the window ------------------------------------------------------

    def input_held(self) -> int:
        """Input received and not yet processed: early input, partial and waiting lines."""
        held = self._early_bytes
        if self.handler is not None and self._started:
            held += self.handler.input_held()
        return held

    def committed(self) -> int:
        """What this channel holds (input and queued output) plus the window it has offered."""
        return self.input_held() + self._queued + max(self.localWindowLeft, 0)

    def input_consumed(self) -> None:
        """The handler processed input: the window may open again, for this channel or others."""
        self.update_window()
        self.context.budget.released(self)

    def update_window(self, others: int | None = None) -> None:
        """Offer the client the window the account can still take.

        A channel may hold `input_limit` bytes of input (held plus offered); the connection's
        channels together `budget.limit` bytes, output included. A channel whose input has been
        consumed keeps a small window regardless, so that a Ctrl-C can reach a running command.
        Adjustments are batched: the window is topped up once half of it is used. `others`:
        what the other channels commit, if the caller knows it already (see `released`).
        """
        if self._gone or self.localClosed:
            return
        held_input = self.input_held()
        room = self.input_limit - held_input
        if self.localWindowLeft > room // 2:
            # No budget can raise the target past `room`: nothing to grant, and no pass over the
            # connection's accounts (an exec's channel, which reads no input, always ends here).
            return
        budget = self.context.budget
        if others is None:
            others = budget.committed(excluding=self)
        free = budget.limit - others - held_input - self._queued
        target = max(min(room, free), WINDOW_FLOOR - held_input)
        if free < room:
            budget.starved[self] = None
        else:
            budget.starved.pop(self, None)
        increase = target - self.localWindowLeft
        if increase > 0 and self.localWindowLeft <= target // 2:
            self._connection.grant_window(self, increase)

    # -- output ------------------------------------------------------------------------------

    def stream(self, *, stderr: bool = False) -> ChannelStream:
        """A stream for command output; with a pty, stderr joins stdout, newlines become CRLF."""
        if self.terminal is not None:
            return ChannelStream(self, crlf=True)
        return ChannelStream(self, stderr=stderr)

    def send(self, data: bytes, *, stderr: bool = False) -> defer.Deferred[None]:
        """Queue output; the Deferred fires when the caller may send more."""
        if self._gone:
            return defer.succeed(None)
        if data:
            last = self._queue[-1] if self._queue else None
            if (
                last is not None
                and last[0] == stderr
                and isinstance(last[1], bytearray)
                and len(last[1]) < OUTPUT_COALESCE
            ):
                last[1].extend(data)  # many small writes (one per line) as one buffer, not one object each
            elif len(data) < OUTPUT_COALESCE:
                self._queue.append((stderr, bytearray(data)))
            else:
                self._queue.append((stderr, memoryview(data)))  # a big write is kept, not copied
            self._queued += len(data)
            self._pump()
        if self._queued <= OUTPUT_LOW_WATER:
            return defer.succeed(None)
        if self._queued <= OUTPUT_HIGH_WATER and not self.context.budget.exceeded():
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._drain_waiters.append(waiter)
        return waiter

    def pump(self) -> None:
        """Send queued output while the client's window and the TCP send buffer allow."""
        self._pump()

    def _pump(self) -> None:
        transport = self._connection.transport
        sent = False
        while self._queue and not self._gone:
            if transport.tcp_paused:
                break  # resumed by the transport when its socket drains
            is_stderr, buf = self._queue[0]
            n = min(len(buf), self.remoteWindowLeft, self.remoteMaxPacket)
            if n <= 0:
                # No window, or a maximum packet size of 0 (server.py refuses such opens, but this
                # loop must not depend on it): an n of 0 would send empty packets for ever.
                break
            chunk = bytes(buf[:n])
            if n == len(buf):
                self._queue.popleft()
            elif isinstance(buf, bytearray):
                del buf[:n]  # cheap: CPython's bytearray drops a prefix by moving its start
            else:
                self._queue[0] = (is_stderr, buf[n:])
            sent = True
            self.remoteWindowLeft -= n
            self._queued -= n
            if is_stderr:
                self._connection.sendExtendedData(self, connection.EXTENDED_DATA_STDERR, chunk)
            else:
                self._connection.sendData(self, chunk)
        if self._queued <= OUTPUT_LOW_WATER and self._drain_waiters:
            self._fire(self._drain_waiters)
        if not self._queue and self._empty_waiters:
            self._fire(self._empty_waiters)
        if sent:
            self.input_consumed()  # output gone: the account has room again

    @staticmethod
    def _fire(waiters: list[defer.Deferred[None]]) -> None:
        ready = waiters[:]
        waiters.clear()
        for d in ready:
            if not d.called:
                d.callback(None)

    def addWindowBytes(self, data: int) -> None:
        # Conch's version flushes its own unbounded buffer; we pump our queue instead.
        self.remoteWindowLeft += data
        self._pump()

    def flushed(self) -> defer.Deferred[None]:
        """Fires once all queued output has gone out (into the client's window)."""
        if not self._queue or self._gone:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._empty_waiters.append(waiter)
        return waiter

    def finish(self, status: int) -> None:
        """Send the exit status and close, once all queued output has gone out."""
        if self._finishing or self._gone:
            return
        self._finishing = True
        if not self._queue:
            self._send_exit(status)
            return
        waiter: defer.Deferred[None] = defer.Deferred()
        waiter.addCallback(lambda _: self._send_exit(status)).addErrback(self._exit_failed)
        self._empty_waiters.append(waiter)

    def _exit_failed(self, failure: Failure) -> None:
        """A bug in sending the exit status once the output drained: logged once per place."""
        self.context.internal_error(failure, "ending a session", "exit status not sent")

    def _send_exit(self, status: int) -> None:
        if self._gone:
            return
        self._connection.send_exit(self, status)

    # -- end ---------------------------------------------------------------------------------

    def closed(self) -> None:
        """Both sides closed (or the connection is gone): stop any work, drop queued output."""
        if self._gone:
            return
        self._gone = True
        self.held_flight = None  # nothing more is sent on a closed channel
        timer, self.reply_timer = self.reply_timer, None
        if timer is not None:
            timer.cancel()
        self._queue.clear()
        self._queued = 0
        self._early_input.clear()
        self._early_bytes = 0
        self._drain_waiters.clear()
        self._empty_waiters.clear()
        handler, self.handler = self.handler, None  # handler.chan points back: no cycle left behind
        if handler is not None:
            handler.connection_lost()
        budget = self.context.budget
        budget.channels.pop(self, None)
        budget.starved.pop(self, None)
        budget.released(self)  # what this channel held and offered is free for the starved ones


class CommandHandler:
    """What exec and both shells share: at most one running command, interruptible."""

    kind: str

    def __init__(self, chan: SessionChannel, context: SessionContext):
        self.chan = chan
        self.context = context
        self.running: defer.Deferred[Any] | None = None
        self.input_closed: defer.Deferred[None] = defer.Deferred()

    def end_of_input(self) -> None:
        """The client sent EOF to a shell: a command following a log stops."""
        if not self.input_closed.called:
            self.input_closed.callback(None)

    def window_changed(self, columns: int, rows: int) -> None:
        pass

    def input_held(self) -> int:
        return 0

    def interrupt(self) -> None:
        if self.running is not None:
            self.running.cancel()

    def connection_lost(self) -> None:
        self.interrupt()

    def end(self, status: int) -> None:
        self.chan.finish(status)

    def crashed(self, failure: Failure) -> None:
        """Errback of the session's own Deferreds (a command's end, output drained): a bug of
        ours there sat in the Deferred until garbage-collected ("Unhandled error in Deferred")
        and the session waited for ever. Logged once per place; the session ends as a crashed
        command does (stderr "conchcmd: internal error", exit status 1)."""
        self.context.internal_error(failure, f"running a session ({self.kind})", "session ended, exit status 1")
        self.chan.send(b"conchcmd: internal error\n", stderr=True)
        self.end(ExitStatus.FAILED)
        self.interrupt()  # a command still running is stopped (after end: a shell runs nothing more)


class ExecHandler(CommandHandler):
    """`ssh host CMD ARGS`: run one command line, then send its exit status."""

    kind = "exec"

    def __init__(self, chan: SessionChannel, context: SessionContext, line: str, original: str | None = None):
        super().__init__(chan, context)
        self.line = line
        self.original = original  # what the client asked for, when `line` is a forced command

    def start(self) -> None:
        running = self.context.dispatch(
            self.line,
            self.chan.stream(),
            self.chan.stream(stderr=True),
            interactive=self.chan.terminal is not None,
            original_command=self.original,
            input_closed=self.input_closed,
            audit=self.chan.audit,
        )
        self.running = running

        def done(outcome: Any) -> None:
            self.running = None  # no longer busy (idle timeout) once the command has ended
            self.chan.finish(outcome.status)

        running.addCallback(done).addErrback(self.crashed)

    def data_received(self, data: bytes) -> None:
        # Commands read no stdin; but with a pty the client's raw terminal sends Ctrl-C as a byte.
        if self.chan.terminal is not None and b"\x03" in data and self.running is not None:
            self.chan.send(b"^C\r\n")
            self.interrupt()

    def eof_received(self) -> None:
        """Nothing: an exec'd command reads no input, so its end ends nothing (`ssh -n host
        lastlog -f`, as under cron, follows like `tail -F` under sshd until a signal or the
        channel's close). Only the shells treat the end of input as the end of a follow."""
