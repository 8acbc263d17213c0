"""The audit log: one JSON object per line, flushed per event, untrusted text sanitised."""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import re
import sys
from collections import deque
from datetime import UTC, datetime
from typing import IO, Any, Protocol

from twisted.logger import Logger, LogLevel

MAX_TEXT = 1024
#: Namespace of conchcmd's human-readable log lines (the ones `serve` shows at info level).
LOG_NAMESPACE = "conchcmd.log"
#: Namespace of the authentication lines (sshd's words; syslog facility authpriv, fail2ban reads them).
AUTH_LOG_NAMESPACE = "conchcmd.auth"
log = Logger(namespace=LOG_NAMESPACE)


#: Non-ASCII characters a line-based reader may split at (U+0085 is C1, escaped anyway) or that
#: reorder the text around them when shown: escaped in log text and in every audit record.
_LOG_UNSAFE = frozenset("\u061c\u200e\u200f\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
#: In a JSON line: what str.splitlines() splits at beyond what json.dumps escapes already (the
#: ASCII controls), and lone surrogates, which a UTF-8 file cannot hold.
_JSON_UNSAFE = re.compile("[\x85\u2028\u2029\ud800-\udfff]")


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def sanitise(value: str | bytes, limit: int = MAX_TEXT) -> str:
    """Make untrusted text safe to log: control characters, undecodable bytes, line separators
    and bidi controls become escapes."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")
    out = []
    for ch in value[:limit]:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")  # so an escape we write is never confused with typed text
        elif code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        elif 0xD800 <= code < 0xE000:  # lone surrogates from surrogateescape
            out.append(f"\\x{code & 0xFF:02x}")
        elif ch in _LOG_UNSAFE:  # line separators, bidi controls
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    if len(value) > limit:
        out.append("...")
    return "".join(out)


#: What must not reach a terminal raw: C0 controls but tab and newline (ESC starts every control
#: sequence), DEL, C1 (CSI, OSC... as single characters), surrogates (undecodable bytes), the bidi
#: embedding/override/isolate marks that reorder what is shown (Trojan Source, CVE-2021-42574),
#: and the Unicode line and paragraph separators.
_TERMINAL_UNSAFE = "\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_UNSAFE_TEXT = re.compile(f"[{_TERMINAL_UNSAFE}]")
_UNSAFE_LINE = re.compile(f"[\t\n{_TERMINAL_UNSAFE}]")


def terminal_safe(text: str, *, single_line: bool = False) -> str:
    """The one sanitiser for client- or file-derived text bound for a terminal: each unsafe
    character becomes '?' (as `ls` shows them). `single_line` also replaces tab and newline, for
    text placed inside a line the server draws (a file name in the progress line, a listing)."""
    return (_UNSAFE_LINE if single_line else _UNSAFE_TEXT).sub("?", text)


class TerminalSafe:
    """terminal_safe over a byte stream fed in chunks: UTF-8 sequences split across chunks are
    kept whole, broken ones become '?'."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")

    def __call__(self, data: bytes) -> bytes:
        return terminal_safe(self._decoder.decode(data)).encode("utf-8")


class QuietLogger(Logger):
    """A Logger that drops debug and info events at once.

    Conch logs several info/debug lines per channel ("channel open", "sending close", ...);
    filtering them at the observer still costs their formatting and dispatch, ~25 us each.
    Warnings and errors pass as usual.
    """

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: Any) -> None:
        if level >= LogLevel.warn:
            super().emit(level, format, **kwargs)


class AuditSink(Protocol):
    """Anything that records audit events."""

    def record(self, event: str, **fields: Any) -> None: ...

    def failure(self) -> str | None:
        """Why records cannot be written now (after trying again), or None when they can."""
        ...


#: Records kept while the audit log cannot be written, to write when it can (oldest dropped first).
BACKLOG_RECORDS = 1000
BACKLOG_BYTES = 4 << 20  # and at most this much of them (a command record can be large)


class LineTarget(Protocol):
    """Where audit lines go: `write` stores one whole line or raises OSError."""

    name: str

    def write(self, line: bytes) -> None: ...

    def close(self) -> Any:
        """Close; may return a Deferred that fires once what was written has been delivered."""
        ...


class StreamTarget:
    """A text stream the caller owns (stdout, or one a test passes), flushed after each line."""

    def __init__(self, stream: IO[str]):
        self.stream = stream
        self.name = getattr(stream, "name", "stream")

    def write(self, line: bytes) -> None:
        self.stream.write(line.decode("utf-8"))
        self.stream.flush()

    def close(self) -> None:
        pass  # not ours to close


class AppendFile:
    """A file opened for appending, written a line per write(2) loop. A line that fails half-way
    is cut off again (the file stays valid JSON lines), and the file is reopened on the next write,
    so a full disk, a replaced file or a transient I/O error heal once the cause is gone."""

    def __init__(self, path: str):
        self.name = path
        self._fd: int | None = self._open()

    def _open(self) -> int:
        return os.open(self.name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)

    def write(self, line: bytes) -> None:
        if self._fd is None:
            self._fd = self._open()
        fd = self._fd
        start = os.fstat(fd).st_size
        view = memoryview(line)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError:
            if len(view) < len(line):
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)  # remove the partial line
            self.close()
            raise

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


class AuditLog:
    """Writes events as JSON lines, one write per event.

    When the target cannot be written (a full disk, a read-only or vanished file, an I/O error),
    nothing raises: the first failure is logged at error level, the records are kept (up to
    BACKLOG_RECORDS and BACKLOG_BYTES) and written, oldest first, as soon as a later write succeeds; `failure()`
    says why in the meantime, so the dispatcher can refuse commands that would go unaudited.
    """

    def __init__(self, target: LineTarget, clock: Any, *, failure_mode: str = "refuse"):
        self._target = target
        self._clock = clock
        self._failure_mode = failure_mode
        self._backlog: deque[bytes] = deque()
        self._backlog_bytes = 0
        self._lost = 0
        self._error: str | None = None
        self._failing_since = 0.0
        self._closed = False

    @classmethod
    def open(
        cls, target: str, clock: Any, *, failure_mode: str = "refuse", syslog_address: str | None = None
    ) -> AuditLog:
        """Open the audit log named by the `audit_log` setting ("-" is stdout; "syslog" goes to
        `[log] syslog_address`, "journal" to the journal). `clock` is the reactor for a stream syslog."""
        if target == "-":
            return cls(StreamTarget(sys.stdout), clock, failure_mode=failure_mode)
        if target in ("syslog", "journal"):
            from conchcmd.logtargets import JournalLineTarget, SyslogLineTarget, parse_syslog_address

            sink: LineTarget = (
                SyslogLineTarget(parse_syslog_address(syslog_address), clock)
                if target == "syslog"
                else JournalLineTarget(reactor=clock)
            )
            return cls(sink, clock, failure_mode=failure_mode)
        return cls(AppendFile(target), clock, failure_mode=failure_mode)

    def record(self, event: str, **fields: Any) -> None:
        if self._closed:
            raise ValueError("the audit log is closed")
        when = datetime.fromtimestamp(self._clock.seconds(), UTC)
        entry = {"ts": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"), "event": event}
        entry.update(fields)
        text = _JSON_UNSAFE.sub(_json_escape, json.dumps(entry, ensure_ascii=False))
        line = (text + "\n").encode("utf-8")  # one record per line for every line-based reader
        self._backlog.append(line)
        self._backlog_bytes += len(line)
        while len(self._backlog) > 1 and (len(self._backlog) > BACKLOG_RECORDS or self._backlog_bytes > BACKLOG_BYTES):
            self._backlog_bytes -= len(self._backlog.popleft())
            self._lost += 1
        self._drain()

    def failure(self) -> str | None:
        if self._error is not None and not self._closed:
            self._drain()
        return self._error

    def _drain(self) -> None:
        """Write what is waiting, oldest first; stop at the first error."""
        written = 0
        while self._backlog:
            try:
                self._target.write(self._backlog[0])
            except OSError as e:
                self._failed(e)
                return
            self._backlog_bytes -= len(self._backlog.popleft())
            written += 1
        if self._error is not None:
            log.warn(
                "Audit log {name} is writable again after {seconds:.0f} s: "
                "{late} delayed record(s) written, {lost} lost",
                name=self._target.name,
                seconds=self._clock.seconds() - self._failing_since,
                late=written,
                lost=self._lost,
            )
            self._error, self._lost = None, 0

    def _failed(self, e: OSError) -> None:
        spell_started = self._error is None
        self._error = e.strerror or str(e)  # the latest reason, for failure()
        if not spell_started:
            return  # one log line per failure spell
        self._failing_since = self._clock.seconds()
        consequence = (
            "new commands are refused until it can be written"
            if self._failure_mode == "refuse"
            else "commands run unaudited until it can be written"
        )
        log.error(
            "Audit log {name} cannot be written: {error}; {consequence} (audit_failure = {mode}); "
            "up to {keep} records are kept for then",
            name=self._target.name,
            error=self._error,
            consequence=consequence,
            mode=self._failure_mode,
            keep=BACKLOG_RECORDS,
        )

    def close(self) -> Any:
        """Write what waits if it can, then close the target; returns what the target's close does
        (a Deferred for a syslog over TCP, which shutdown waits for)."""
        if self._closed:
            return None
        if self._backlog:
            self._drain()
            if self._backlog:
                log.error(
                    "Audit log {name}: {count} record(s) could not be written before shutdown: {error}",
                    name=self._target.name,
                    count=len(self._backlog) + self._lost,
                    error=self._error,
                )
        self._closed = True
        return self._target.close()


class MemoryAuditLog:
    """Keeps events in a list: for tests and for dry runs."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def record(self, event: str, **fields: Any) -> None:
        self.events.append({"event": event, **fields})

    def failure(self) -> str | None:
        return None

    def of(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]
