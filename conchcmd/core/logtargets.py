"""Where log lines go (`[log] target`): stdout, syslog or the systemd journal.

Plain Twisted log observers; the formats are small enough not to need a library. stdout under
systemd gets sd-daemon priority prefixes; syslog gets RFC 3164 datagrams on a local socket
(/dev/log, as glibc's syslog(3) writes them) or RFC 5424 messages over UDP or a stream endpoint
(octet-counted, RFC 6587); the journal gets its native protocol with structured fields. Nothing
here blocks the reactor: a target that is down drops lines, counted, with a warning on stderr.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import fcntl
import io
import ipaddress
import json
import os
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FunctionType, MethodType
from typing import IO, Any, Protocol, TextIO, cast

from twisted.internet import defer
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import Factory
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    eventAsText,
    formatEventAsClassicLogText,
    formatTime,
)
from twisted.python.compat import ioType
from zope.interface import implementer

from conchcmd.core.fdlimit import AcceptFailures

#: Namespace of conchcmd's human-readable log lines (the ones `serve` shows at info level).
LOG_NAMESPACE = "conchcmd.log"
#: Namespace of the authentication lines (sshd's words; syslog facility authpriv, fail2ban reads them).
AUTH_LOG_NAMESPACE = "conchcmd.auth"


class FastLogger(Logger):
    """twisted.logger.Logger with the same events, less the check of the level against
    LogLevel.iterconstants() on every emit (a generator, a sort and a lambda per level: 8 calls
    of ~40 per line); a level that is not a LogLevel still gets Twisted's own handling. `info`
    (six lines per connection) goes to `_publish` directly rather than through Logger.info and emit."""

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:
        if level not in _LEVEL_RANK:
            super().emit(level, format, **kwargs)
            return
        self._publish(level, format, kwargs)

    def info(self, format: str | None = None, **kwargs: object) -> None:
        self._publish(LogLevel.info, format, kwargs)

    def _publish(self, level: LogLevel, format: str | None, event: dict[str, object]) -> None:
        # Logger.emit's event.update(...), as item assignments: update(**) builds a dict of its
        # own arguments first, then merges it (same keys, same order, same values).
        event["log_logger"] = self
        event["log_level"] = level
        event["log_namespace"] = self.namespace
        event["log_source"] = self.source
        event["log_format"] = format
        event["log_time"] = time.time()
        if "log_trace" in event:
            event["log_trace"].append((self, self.observer))  # type: ignore[attr-defined]
        # Through its __call__ method: an object called as such goes through C and a new
        # interpreter frame loop; its method is called inline (CPython 3.11's bound-method call).
        self.observer.__call__(event)


#: Twisted's levels in order, as ints (NamedConstant comparisons are Python calls).
_LEVEL_RANK = {level: rank for rank, level in enumerate(LogLevel.iterconstants())}
_log = FastLogger(namespace=LOG_NAMESPACE)

#: Syslog severities (RFC 5424 6.2.1) of Twisted's levels; also sd-daemon(3)'s and the journal's PRIORITY.
SEVERITY = {LogLevel.critical: 2, LogLevel.error: 3, LogLevel.warn: 4, LogLevel.info: 6, LogLevel.debug: 7}
SEVERITY_INFO = 6
FACILITY_DAEMON = 3
FACILITY_AUTHPRIV = 10
DEV_LOG = "/dev/log"
JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "conchcmd"
#: Event fields the journal target sends as CONCHCMD_<NAME> (the names the log calls use).
JOURNAL_FIELDS = ("user", "peer", "host", "port", "fingerprint", "method", "key_type", "source", "connection")
#: Longest syslog datagram or frame sent (rsyslog's default maxMessageSize is 8 KiB); longer ones are cut.
MAX_SYSLOG_BYTES = 8192
#: Longest journal field value sent (a value is cut there; the entry itself may exceed a datagram).
MAX_JOURNAL_VALUE = 64 * 1024
#: Frames kept for a stream syslog while it is unreachable or not reading (oldest dropped first).
STREAM_QUEUE = 1000
RECONNECT_FIRST, RECONNECT_MAX = 1.0, 30.0
#: How long shutdown waits for a syslog to take what was written.
DRAIN_SECONDS = 2.0
#: How soon a datagram refused by a full receiver is tried again.
RETRY_SECONDS = 0.02
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S%z"


def severity(event: LogEvent) -> int:
    return SEVERITY.get(event.get("log_level", LogLevel.info), SEVERITY_INFO)


def facility(event: LogEvent) -> int:
    """authpriv for the authentication lines (as sshd logs them), daemon for the rest."""
    return FACILITY_AUTHPRIV if event.get("log_namespace") == AUTH_LOG_NAMESPACE else FACILITY_DAEMON


def _plain_text(event: LogEvent) -> str | None:
    """What Twisted's formatEvent makes of an ordinary event (a str format, no traceback), by
    str.format_map: the same text for a fraction of the CPU (Twisted's string.Formatter is pure
    Python). None when the event needs Twisted's own path: a traceback, a flattened event, a
    format that is not str, or one that fails here (Twisted's `{f()}` call syntax, a missing
    field: Twisted then says "Unable to format event")."""
    if "log_failure" in event or "log_flattened" in event:
        return None
    format = event.get("log_format")
    if format is None:
        return ""
    if type(format) is not str:
        return None
    try:
        return format.format_map(event)
    except Exception:
        return None


def message(event: LogEvent) -> str:
    """The event's text without timestamp or system (the target records both), traceback included."""
    text = _plain_text(event)
    if text is None:
        text = eventAsText(event, includeTraceback=True, includeTimestamp=False, includeSystem=False)
    return text.rstrip("\n")  # a traceback ends with one


class ClassicLines:
    """textFileLogObserver's line format, byte for byte, at a fraction of its CPU per line (six
    lines per connection): the timestamp made once per second, the text by `_plain_text`; an
    event `_plain_text` declines, or one with a `log_system`, goes through Twisted's formatter."""

    def __init__(self, time_format: str):
        self._time_format = time_format
        self._second = -1
        self._stamp = ""

    def _time(self, when: float | None) -> str:
        # fromtimestamp rounds to the microsecond: near the end of a second, ask Twisted.
        if when is None or when < 0 or when - int(when) >= 0.999999:
            return formatTime(when, self._time_format)
        second = int(when)
        if second != self._second:
            self._second, self._stamp = second, formatTime(second, self._time_format)
        return self._stamp

    def __call__(self, event: LogEvent) -> str | None:
        text = _plain_text(event)
        if text is None or "log_system" in event:
            return formatEventAsClassicLogText(event, formatTime=self._time)
        if not text:
            return None
        level = event.get("log_level")
        system = f"{event.get('log_namespace', '-')}#{'-' if level is None else level.name}"
        return f"{self._time(event.get('log_time'))} [{system}] {text}".replace("\n", "\n\t") + "\n"


class ClassicFileObserver(FileLogObserver):
    """FileLogObserver(out, ClassicLines(time_format)) with the usual event (a str format that
    formats, a level, a namespace, a time within a second already stamped, no traceback or
    system) written in one step: six lines per connection went through three observers' calls
    and a dozen lookups each. Any other event takes the general path."""

    def __init__(self, out: TextIO, time_format: str):
        self._lines = ClassicLines(time_format)
        super().__init__(out, self._lines)
        self._out = out
        self._bytes_out = ioType(out) is not str  # FileLogObserver's own path encodes for such a file
        self._binary = _binary_layer(out)

    def __call__(self, event: LogEvent) -> None:
        try:
            format = event["log_format"]
            when = event["log_time"]
            second = int(when)
            system = f"{event['log_namespace']}#{event['log_level'].name}"
        except Exception:
            format = None
        lines = self._lines
        if (
            type(format) is not str
            or second != lines._second
            or when - second >= 0.999999
            or when < 0
            or "log_failure" in event
            or "log_flattened" in event
            or "log_system" in event
            or self._bytes_out
        ):
            super().__call__(event)
            return
        try:
            text = format.format_map(event)
        except Exception:
            super().__call__(event)  # Twisted's formatter decides what such an event shows
            return
        if not text:
            return
        line = f"{lines._stamp} [{system}] {text}\n"
        if "\n" in text or "\n" in system:
            line = line[:-1].replace("\n", "\n\t") + "\n"
        binary = self._binary
        if binary is None:
            self._out.write(line)
            self._out.flush()
        else:  # the text layer's work for this line (its encoder, its pending list), done here
            buffer, encoding, errors = binary
            buffer.write(line.encode(encoding, errors))
            buffer.flush()


#: Encodings a line can be encoded in by itself, as the text layer would (no state, no BOM).
_STATELESS = frozenset({"utf-8", "ascii", "iso8859-1"})


def _binary_layer(out: TextIO) -> tuple[IO[bytes], str, str] | None:
    """Where ClassicFileObserver may write a line's bytes past `out`'s text layer: the process's
    own stdout (made by Python on POSIX with newline "\n": nothing to translate), in a stateless
    encoding, switched to write_through so that whatever anyone writes to it reaches the binary
    buffer at once (the buffer still gathers it until a flush): a line written to the buffer then
    comes after everything written before it, by any writer. None for any other stream."""
    if os.name != "posix" or type(out) is not io.TextIOWrapper or out is not sys.__stdout__:
        return None
    try:
        if codecs.lookup(out.encoding).name not in _STATELESS:
            return None
        out.reconfigure(write_through=True)  # flushes what the text layer holds now
    except (LookupError, OSError, ValueError):  # an odd encoding, a closed stream
        return None
    return out.buffer, out.encoding, out.errors or "strict"


# -- stdout -------------------------------------------------------------------------------------


def journal_stream_matches(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """Whether `stream` is the journal stream systemd connected (JOURNAL_STREAM is its "dev:ino")."""
    expected = environ.get("JOURNAL_STREAM")
    if not expected:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False  # a closed stream, or one without a file descriptor (a test's StringIO)
    return f"{st.st_dev}:{st.st_ino}" == expected


#: Starts every line of a message but the first (a traceback's, say) under JOURNAL_STREAM: journald
#: makes each line an entry of its own, and a continuation must not read as a line of its own
#: (text from a client inside an exception could otherwise forge "Failed password ... from X").
CONTINUATION = "| "


def sd_daemon_lines(event: LogEvent) -> str:
    """The event as journald reads a stream: each line prefixed `<severity>` (sd-daemon(3)), no
    timestamp, lines after the first marked as continuations."""
    prefix = f"<{severity(event)}>"
    first, *rest = message(event).split("\n")
    return prefix + first + "\n" + "".join(f"{prefix}{CONTINUATION}{line}\n" for line in rest)


def stdout_observer(out: TextIO, environ: Mapping[str, str]) -> ILogObserver:
    """Twisted's text lines with a timestamp; under systemd, sd-daemon prefixed lines instead."""
    if journal_stream_matches(out, environ):
        return FileLogObserver(out, sd_daemon_lines)
    return ClassicFileObserver(out, _TIME_FORMAT)


# -- formats ------------------------------------------------------------------------------------


def pri(facility: int, severity: int) -> int:
    return facility * 8 + severity


def _cut(data: bytes, limit: int) -> bytes:
    if len(data) <= limit:
        return data
    return data[:limit].decode("utf-8", "ignore").encode("utf-8")  # no half character at the end


def rfc3164(priority: int, when: float, pid: int, text: str, tag: str = IDENTIFIER) -> bytes:
    """`<PRI>Mmm dd hh:mm:ss tag[pid]: text`, as glibc's syslog(3) writes to /dev/log (local time)."""
    t = time.localtime(when)
    stamp = f"{_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    return _cut(f"<{priority}>{stamp} {tag}[{pid}]: {text}".encode("utf-8", "surrogateescape"), MAX_SYSLOG_BYTES)


def _header_token(value: str, limit: int) -> str:
    """An RFC 5424 header field: printable ASCII without spaces, or "-" (the nil value)."""
    token = "".join(c for c in value if "!" <= c <= "~")[:limit]
    return token or "-"


def rfc5424(
    priority: int, when: float, hostname: str, pid: int, text: str, msgid: str = "-", app: str = IDENTIFIER
) -> bytes:
    """`<PRI>1 TIMESTAMP HOSTNAME APP PROCID MSGID - MSG` (RFC 5424, UTC, no structured data)."""
    stamp = datetime.fromtimestamp(when, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    header = f"<{priority}>1 {stamp} {_header_token(hostname, 255)} {_header_token(app, 48)} {pid} "
    header += f"{_header_token(msgid, 32)} - "
    return _cut(header.encode("ascii") + text.encode("utf-8", "surrogateescape"), MAX_SYSLOG_BYTES)


def octet_counted(frame: bytes) -> bytes:
    """RFC 6587 3.4.1 framing for a stream: `LEN SP MSG`, so a message may hold newlines."""
    return b"%d %s" % (len(frame), frame)


def journal_field(name: str, value: str | bytes) -> bytes:
    """One field of the journal's native protocol: `NAME=value\\n`, or for a value holding a
    newline `NAME\\n` + its length as 64-bit little-endian + value + `\\n`."""
    data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    data = _cut(data, MAX_JOURNAL_VALUE)
    if b"\n" in data:
        return name.encode("ascii") + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return name.encode("ascii") + b"=" + data + b"\n"


def journal_entry(fields: Mapping[str, str | bytes]) -> bytes:
    return b"".join(journal_field(name, value) for name, value in fields.items())


def journal_fields(event: LogEvent) -> dict[str, str | bytes]:
    """MESSAGE, PRIORITY, SYSLOG_FACILITY, SYSLOG_IDENTIFIER and CONCHCMD_<FIELD> for the fields it has."""
    fields: dict[str, str | bytes] = {
        "MESSAGE": message(event),
        "PRIORITY": str(severity(event)),
        "SYSLOG_FACILITY": str(facility(event)),
        "SYSLOG_IDENTIFIER": IDENTIFIER,
    }
    for name in JOURNAL_FIELDS:
        value = event.get(name)
        if value is not None and value != "":
            fields["CONCHCMD_" + name.upper()] = value if isinstance(value, str | bytes) else str(value)
    return fields


def parse_journal_entry(data: bytes) -> dict[str, bytes]:
    """The fields of one native-protocol entry (what journald does with it): for tests and tools."""
    fields: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        end = data.index(b"\n", pos)
        line = data[pos:end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            pos = end + 1
        else:
            name = line
            (size,) = struct.unpack("<Q", data[end + 1 : end + 9])
            value = data[end + 9 : end + 9 + size]
            if data[end + 9 + size : end + 10 + size] != b"\n":
                raise ValueError(f"field {name!r}: no newline after {size} bytes")
            pos = end + 10 + size
        fields[name.decode("ascii")] = value
    return fields


# -- delivery -----------------------------------------------------------------------------------


class Drops:
    """Counts lines a target could not take; says so on stderr once when a failure spell starts
    and once, with the count, when the target takes lines again (not through the log: it is down)."""

    def __init__(self, name: str, err: TextIO):
        self.name = name
        self.err = err
        self.dropped = 0  # in the current spell
        self.total = 0

    def failed(self, reason: str) -> None:
        if not self.dropped:
            self._say(f"conchcmd: log target {self.name}: {reason}; dropping log lines until it works again")
        self.dropped += 1
        self.total += 1

    def delivered(self) -> None:
        if self.dropped:
            self._say(f"conchcmd: log target {self.name} works again; {self.dropped} log line(s) were dropped")
            self.dropped = 0

    def _say(self, line: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.err.write(line + "\n")
            self.err.flush()


class Sender(Protocol):
    """Sends one whole message or raises OSError."""

    name: str

    def send(self, data: bytes) -> None: ...

    def full(self) -> bool:
        """Whether a message sent now would push a waiting one out of the queue."""
        ...

    def waiting(self) -> int:
        """How many messages are queued, not yet taken by the receiver (after close: abandoned)."""
        ...

    def close(self) -> defer.Deferred[None] | None: ...


class DatagramSender:
    """One datagram per message on a non-blocking socket, addressed on every send (so a syslog
    daemon restarted behind /dev/log is found again). A receiver whose queue is full (Linux keeps
    only net.unix.max_dgram_qlen datagrams, 10 by default, for a local socket) refuses with EAGAIN:
    with a reactor, messages then wait (up to STREAM_QUEUE, the oldest dropped) and are retried
    every RETRY_SECONDS; nothing ever waits for the receiver."""

    def __init__(self, family: int, address: Any, name: str, reactor: Any = None):
        self.name = name
        self.address = address
        self.reactor = reactor
        self.sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        self.pending: deque[bytes] = deque()
        self._thread = threading.get_ident()  # the reactor's
        self._retry: Any = None
        self._deadline: float | None = None  # while closing: give up on what waits then
        self._drained: list[defer.Deferred[None]] = []

    def _sendto(self, data: bytes) -> None:
        self.sock.sendto(data, self.address)

    def send(self, data: bytes) -> None:
        if self.reactor is None:
            self._sendto(data)
            return
        if threading.get_ident() != self._thread:  # a log line from a worker thread
            self.reactor.callFromThread(_suppressed(self.send), data)
            return
        if self._deadline is not None:
            raise OSError(errno.ESHUTDOWN, "closed at shutdown")
        if not self.pending:
            try:
                self._sendto(data)
                return
            except BlockingIOError:
                pass
        self.pending.append(data)
        if self._retry is None:
            self._retry = self.reactor.callLater(RETRY_SECONDS, self._send_pending)
        if len(self.pending) > STREAM_QUEUE:
            self.pending.popleft()
            raise OSError(errno.ENOBUFS, "the receiver is not reading; queue full")

    def full(self) -> bool:
        return len(self.pending) >= STREAM_QUEUE

    def waiting(self) -> int:
        return len(self.pending)

    def _send_pending(self) -> None:
        self._retry = None
        delay = RETRY_SECONDS
        while self.pending:
            try:
                self._sendto(self.pending[0])
            except BlockingIOError:
                break
            except OSError:
                # Gone meanwhile (a syslog restarting): what waits, audit records among them,
                # is kept for when it is back; tried again less often meanwhile.
                delay = RECONNECT_FIRST
                break
            self.pending.popleft()
        if self.pending and (self._deadline is None or self.reactor.seconds() < self._deadline):
            self._retry = self.reactor.callLater(delay, self._send_pending)
        elif self._deadline is not None:
            self._finish()

    def _finish(self) -> None:
        self.sock.close()
        while self._drained:
            self._drained.pop().callback(None)

    def close(self) -> defer.Deferred[None] | None:
        """Close once what waits has been sent (or DRAIN_SECONDS have passed)."""
        if self.reactor is None or not self.pending:
            self.sock.close()
            return None
        self._deadline = self.reactor.seconds() + DRAIN_SECONDS
        done: defer.Deferred[None] = defer.Deferred()
        self._drained.append(done)
        return done


def _suppressed(send: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """`send` for callFromThread: a line that cannot be sent from there is dropped."""

    def call(data: bytes) -> None:
        with contextlib.suppress(OSError):
            send(data)

    return call


class JournalSender(DatagramSender):
    """The journal socket; an entry too big for a datagram goes in a sealed memfd (SCM_RIGHTS),
    as sd_journal_send does."""

    def __init__(self, path: str = JOURNAL_SOCKET, reactor: Any = None):
        super().__init__(socket.AF_UNIX, path, f"journal {path}", reactor)

    def _sendto(self, data: bytes) -> None:
        try:
            super()._sendto(data)
        except OSError as e:
            if e.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            self._send_memfd(data)

    def _send_memfd(self, data: bytes) -> None:
        fd = os.memfd_create("conchcmd-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            self.sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))], 0, self.address)
        finally:
            os.close(fd)


class _FrameProtocol(TwistedProtocol):
    def __init__(self, sender: StreamSender):
        self.sender = sender

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self.sender._connected(self)

    def pauseProducing(self) -> None:
        self.sender.paused = True

    def resumeProducing(self) -> None:
        self.sender.paused = False
        self.sender._flush()

    def stopProducing(self) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        pass  # a syslog server says nothing

    def connectionLost(self, reason: Any = None) -> None:
        self.sender._lost(self, reason.getErrorMessage() if reason is not None else "connection lost")


class StreamSender:
    """Octet-counted frames over a Twisted client endpoint (`tcp:HOST:PORT`, ...), reconnecting
    with backoff. While disconnected or while the peer does not read, frames wait in a bounded
    queue; `send` raises OSError only when that queue is full (the oldest frame is dropped)."""

    def __init__(self, reactor: Any, description: str, *, queue: int = STREAM_QUEUE):
        self.name = f"syslog {description}"
        self.reactor = reactor
        self._thread = threading.get_ident()  # the reactor's: transports are not thread-safe
        self.endpoint = clientFromString(reactor, description)
        self.queue: deque[bytes] = deque()
        self.limit = queue
        self.protocol: _FrameProtocol | None = None
        self.paused = False
        self.closed = False
        self.delay = RECONNECT_FIRST
        self.error = "not connected yet"
        self._retry: Any = None
        self._drained: list[defer.Deferred[None]] = []
        self._connect()

    def _connect(self) -> None:
        self._retry = None
        if self.closed:
            return
        d = self.endpoint.connect(Factory.forProtocol(lambda: _FrameProtocol(self)))
        d.addErrback(lambda failure: self._schedule(failure.getErrorMessage()))

    def _schedule(self, error: str) -> None:
        self.error = error
        if self.closed or self._retry is not None:
            return
        self._retry = self.reactor.callLater(self.delay, self._connect)
        self.delay = min(self.delay * 2, RECONNECT_MAX)

    def _connected(self, protocol: _FrameProtocol) -> None:
        self.protocol, self.paused, self.delay = protocol, False, RECONNECT_FIRST
        self._flush()

    def _lost(self, protocol: _FrameProtocol, error: str) -> None:
        if self.protocol is protocol:
            self.protocol = None
            self._schedule(error)
        while self._drained:
            self._drained.pop().callback(None)

    def _flush(self) -> None:
        while self.queue and self.protocol is not None and not self.paused:
            self.protocol.transport.write(self.queue.popleft())  # type: ignore[union-attr]

    def send(self, data: bytes) -> None:
        if threading.get_ident() != self._thread:  # a log line from a worker thread
            self.reactor.callFromThread(_suppressed(self.send), data)
            return
        if self.closed:
            raise OSError(errno.ESHUTDOWN, "closed at shutdown")
        self.queue.append(octet_counted(data))
        self._flush()
        if len(self.queue) > self.limit:
            self.queue.popleft()
            raise OSError(errno.ENOBUFS, f"{self.error}; queue full")

    def full(self) -> bool:
        return len(self.queue) >= self.limit

    def waiting(self) -> int:
        return len(self.queue)

    @property
    def connected(self) -> bool:
        return self.protocol is not None

    def close(self) -> defer.Deferred[None]:
        """Stop reconnecting and close once what is written has been sent: the Deferred fires
        then, or after DRAIN_SECONDS (the connection is then aborted). Later lines are dropped."""
        self.closed = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        protocol = self.protocol
        if protocol is None:
            return defer.succeed(None)
        self.paused = False  # the transport buffers what the peer has not read yet; closing sends it
        self._flush()
        done: defer.Deferred[None] = defer.Deferred()
        self._drained.append(done)
        timer = self.reactor.callLater(DRAIN_SECONDS, protocol.transport.abortConnection)  # type: ignore[union-attr]
        done.addBoth(lambda result: timer.cancel() if timer.active() else None)
        protocol.transport.loseConnection()  # type: ignore[union-attr]
        return done


# -- addresses ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyslogAddress:
    """A parsed `syslog_address`: "unix" (a datagram socket path), "udp" or "stream" (a Twisted endpoint)."""

    kind: str
    path: str = ""
    host: str = ""
    port: int = 0
    description: str = ""


def parse_syslog_address(value: str | None) -> SyslogAddress:
    """`unix:PATH` (datagrams, like /dev/log), `udp:HOST:PORT` (HOST an IP address), or any
    Twisted client endpoint string (`tcp:HOST:PORT`, ...). Raises ValueError saying what is wrong."""
    if value is None:
        return SyslogAddress("unix", path=DEV_LOG)
    kind, sep, rest = value.partition(":")
    if not sep or not rest:
        raise ValueError(f"{value!r} is not unix:PATH, udp:HOST:PORT or a Twisted endpoint like tcp:HOST:PORT")
    if kind == "unix":
        if not rest.startswith("/"):
            raise ValueError(f"{rest!r} must be an absolute path")
        return SyslogAddress("unix", path=rest)
    if kind == "udp":
        host, sep, port_text = rest.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        try:
            ipaddress.ip_address(host)
            port = int(port_text)
        except ValueError:
            raise ValueError(f"{value!r} is not udp:IP-ADDRESS:PORT") from None
        if not sep or not 0 < port < 65536:
            raise ValueError(f"{value!r} is not udp:IP-ADDRESS:PORT")
        return SyslogAddress("udp", host=host, port=port)
    try:
        clientFromString(object(), value)  # parses only: the reactor is not used until connect()
    except Exception as e:
        raise ValueError(f"{value!r} is not a Twisted client endpoint: {e}") from None
    return SyslogAddress("stream", description=value)


# -- observers and line targets -----------------------------------------------------------------


def syslog_sender(address: SyslogAddress, reactor: Any) -> tuple[Sender, Callable[..., bytes]]:
    """The sender for an address and the format it takes: RFC 3164 locally, RFC 5424 over the network."""
    pid, hostname = os.getpid(), socket.gethostname()
    if address.kind == "unix":
        return DatagramSender(socket.AF_UNIX, address.path, f"syslog {address.path}", reactor), (
            lambda p, when, text, msgid: rfc3164(p, when, pid, text)
        )
    sender: Sender
    if address.kind == "udp":
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        name = f"syslog udp:{address.host}:{address.port}"
        sender = DatagramSender(family, (address.host, address.port), name, reactor)
    else:
        sender = StreamSender(reactor, address.description)
    return sender, lambda p, when, text, msgid: rfc5424(p, when, hostname, pid, text, msgid)


@implementer(ILogObserver)
class SenderObserver:
    """Formats each event and hands it to a sender; a failed send drops the line (counted)."""

    def __init__(self, sender: Sender, format: Callable[[LogEvent], bytes], err: TextIO):
        self.sender = sender
        self.format = format
        self.drops = Drops(sender.name, err)

    def __call__(self, event: LogEvent) -> None:
        try:
            self.sender.send(self.format(event))
        except OSError as e:
            self.drops.failed(e.strerror or str(e))
        else:
            self.drops.delivered()

    def close(self) -> defer.Deferred[None]:
        """At shutdown: the Deferred fires once what was logged has been sent (see StreamSender)."""
        closing = self.sender.close()
        return closing if closing is not None else defer.succeed(None)


def syslog_observer(address: SyslogAddress, reactor: Any, err: TextIO) -> SenderObserver:
    sender, fmt = syslog_sender(address, reactor)

    def format(event: LogEvent) -> bytes:
        p = pri(facility(event), severity(event))
        return fmt(p, event.get("log_time") or time.time(), message(event), event.get("log_namespace", "-"))

    return SenderObserver(sender, format, err)


def journal_observer(err: TextIO, path: str = JOURNAL_SOCKET, reactor: Any = None) -> SenderObserver:
    return SenderObserver(JournalSender(path, reactor), lambda event: journal_entry(journal_fields(event)), err)


def direct_call(observer: ILogObserver) -> ILogObserver:
    """What calls `observer` fastest from Python: an object's bound __call__ (CPython 3.11 calls
    a bound Python method inline; the object itself goes through C and a nested frame loop,
    ~1.5 k instructions a call, four calls per log line), else the observer itself."""
    try:
        call = type(observer).__call__
    except AttributeError:
        return observer
    if isinstance(call, FunctionType):
        return cast(ILogObserver, MethodType(call, observer))  # called as the observer is
    return observer


@implementer(ILogObserver)
class LevelFilter:
    """Passes an event on when its level is at least its namespace's: the level of the longest
    dotted prefix configured, else the default (LogLevelFilterPredicate's rule; events without a
    level or namespace are dropped, as there). Each namespace's level is looked up once, not on
    every event as FilteringLogObserver does."""

    def __init__(self, observer: ILogObserver, default: LogLevel, levels: Mapping[str, LogLevel]):
        self._observer = observer
        self._forward = direct_call(observer)
        self._levels = {namespace: _LEVEL_RANK[level] for namespace, level in levels.items()}
        self._default = self._levels.pop("", _LEVEL_RANK[default])  # as there, "" is the default
        self._minimum: dict[str, int] = {}

    def _minimum_for(self, namespace: str) -> int:
        found = self._minimum.get(namespace)
        if found is None:
            found = self._default
            parts = namespace.split(".")
            for end in range(len(parts), 0, -1):
                prefix = ".".join(parts[:end])
                if prefix in self._levels:
                    found = self._levels[prefix]
                    break
            if len(self._minimum) < 4096:  # namespaces come from code; bounded all the same
                self._minimum[namespace] = found
        return found

    def __call__(self, event: LogEvent) -> None:
        try:  # the usual event: a level, and a namespace seen before
            if _LEVEL_RANK[event["log_level"]] < self._minimum[event["log_namespace"]]:
                return
        except (KeyError, TypeError):
            rank = _LEVEL_RANK.get(event.get("log_level"))
            namespace = event.get("log_namespace")
            if rank is None or not namespace or rank < self._minimum_for(namespace):
                return
        if "log_trace" in event:
            event["log_trace"].append((self, self._observer))
        self._forward(event)


def filtered(observer: ILogObserver) -> ILogObserver:
    """What `serve` shows: conchcmd's own lines from info up, everything else (Conch's chatter) from
    warn up, and a warning of its own when connections are closed at accept (out of descriptors)."""
    levels = LevelFilter(observer, LogLevel.warn, {LOG_NAMESPACE: LogLevel.info, AUTH_LOG_NAMESPACE: LogLevel.info})
    return direct_call(AcceptFailures(direct_call(levels), LOG_NAMESPACE))


def log_observer(target: str, syslog_address: str | None, reactor: Any, out: TextIO, err: TextIO) -> ILogObserver:
    """The observer for `[log] target` (stdout, syslog or journal)."""
    if target == "syslog":
        return syslog_observer(parse_syslog_address(syslog_address), reactor, err)
    if target == "journal":
        return journal_observer(err, reactor=reactor)
    return stdout_observer(out, os.environ)


def close_observer(observer: ILogObserver) -> defer.Deferred[None]:
    """At shutdown, after the last lines: fires when the observer has sent them (a stream syslog
    needs the reactor for that; the other targets have nothing pending)."""
    return observer.close() if isinstance(observer, SenderObserver) else defer.succeed(None)


#: Room left in a syslog message for the record after its header (generous: hostnames vary).
_SYSLOG_HEADER_ROOM = 400


def fit_record(text: str, limit: int) -> str:
    """A JSON audit record in at most `limit` UTF-8 bytes, still one valid JSON object: the
    biggest field is shrunk until it fits (a list loses its last items and gets `NAME_count`,
    the number it had; a string is cut, ending "..."), and `"truncated": true` says so. A
    message cut blindly at the limit was half an object, and what came after the cut vanished.
    A shrunk record is ASCII (\\u escapes): no line separator or lone surrogate can come back."""
    if len(text.encode("utf-8")) <= limit:
        return text
    record = json.loads(text)
    record["truncated"] = True
    while True:
        text = json.dumps(record)
        size = len(text.encode("utf-8"))
        if size <= limit:
            return text
        name = max(
            (k for k, v in record.items() if isinstance(v, str | list) and k not in ("event", "ts")),
            key=lambda k: len(json.dumps(record[k]).encode("utf-8")),
            default=None,
        )
        if name is None:
            return json.dumps({k: record[k] for k in ("ts", "event", "host", "truncated") if k in record})
        value = record[name]
        if isinstance(value, list) and value:
            record.setdefault(f"{name}_count", len(value))
            record[name] = value[: len(value) // 2] if len(value) > 1 else []
        elif isinstance(value, str) and len(value) > 3:
            record[name] = value[: max(len(value) - (size - limit) - 3, len(value) // 2)] + "..."
        else:
            record.pop(name)


def _refuse_if_full(sender: Sender) -> None:
    """For audit records: OSError while the sender's queue is full, so the audit log keeps the
    record (and says records wait) rather than the sender dropping an older one it took."""
    if sender.full():
        raise OSError(errno.ENOBUFS, f"{sender.name}: the receiver is not taking records; queue full")


def _close_reporting(sender: Sender) -> defer.Deferred[None] | None:
    """Close an audit sender; records it still held when it gave up waiting are logged as lost."""

    def report(result: object) -> object:
        if sender.waiting():
            _log.error(
                "Audit log {name}: {count} audit record(s) never delivered before shutdown",
                name=sender.name,
                count=sender.waiting(),
            )
        return result

    closing = sender.close()
    if closing is None:
        return None
    return closing.addBoth(report)


class SyslogLineTarget:
    """An audit LineTarget: each JSON record one syslog message, facility authpriv, severity info."""

    def __init__(self, address: SyslogAddress, reactor: Any):
        """`reactor` None (a one-shot command such as deluser): each record is sent at once or
        write raises, so nothing waits on a reactor that will never run; a stream address
        then cannot be used (OSError)."""
        if reactor is None and address.kind == "stream":
            raise OSError(errno.EOPNOTSUPP, f"{address.description} is a stream: only the server sends there")
        self.sender, self._format = syslog_sender(address, reactor)
        self.name = self.sender.name

    def write(self, line: bytes) -> None:
        # A record counts as written once queued (STREAM_QUEUE of them while the syslog is
        # unreachable or not reading); past that, write raises and the audit log keeps records and
        # refuses commands. A queued record is never pushed out (the sender's log-line policy).
        _refuse_if_full(self.sender)
        text = fit_record(line.decode("utf-8").rstrip("\n"), MAX_SYSLOG_BYTES - _SYSLOG_HEADER_ROOM)
        self.sender.send(self._format(pri(FACILITY_AUTHPRIV, SEVERITY_INFO), time.time(), text, "audit"))

    def reopen(self) -> None:
        """Nothing to reopen after a log rotation: each record is a message of its own."""

    def close(self) -> defer.Deferred[None] | None:
        return _close_reporting(self.sender)


class JournalLineTarget:
    """An audit LineTarget: MESSAGE is the JSON record, CONCHCMD_EVENT its event name."""

    def __init__(self, path: str = JOURNAL_SOCKET, reactor: Any = None):
        self.sender = JournalSender(path, reactor)
        self.name = self.sender.name

    def write(self, line: bytes) -> None:
        _refuse_if_full(self.sender)  # as SyslogLineTarget: queued records are never dropped
        text = fit_record(line.decode("utf-8").rstrip("\n"), MAX_JOURNAL_VALUE)
        fields: dict[str, str | bytes] = {
            "MESSAGE": text,
            "PRIORITY": str(SEVERITY_INFO),
            "SYSLOG_FACILITY": str(FACILITY_AUTHPRIV),
            "SYSLOG_IDENTIFIER": IDENTIFIER,
            "CONCHCMD_EVENT": str(json.loads(text).get("event", "")),
        }
        self.sender.send(journal_entry(fields))

    def reopen(self) -> None:
        """Nothing to reopen after a log rotation: each record is a message of its own."""

    def close(self) -> defer.Deferred[None] | None:
        return _close_reporting(self.sender)
