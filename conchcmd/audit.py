"""The audit log: one JSON object per line, flushed per event, untrusted text sanitised."""

from __future__ import annotations

import codecs
import json
import re
import sys
from datetime import UTC, datetime
from typing import IO, Any, Protocol

from twisted.logger import Logger, LogLevel

MAX_TEXT = 1024
#: Namespace of conchcmd's human-readable log lines (the ones `serve` shows at info level).
LOG_NAMESPACE = "conchcmd.log"


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


class AuditLog:
    """Writes events as JSON lines to a file object, flushing each one."""

    def __init__(self, stream: IO[str], clock: Any, *, owns_stream: bool = False):
        self._stream = stream
        self._clock = clock
        self._owns_stream = owns_stream

    @classmethod
    def open(cls, target: str, clock: Any) -> AuditLog:
        """Open the audit log named by the `audit_log` setting ("-" is stdout)."""
        if target == "-":
            return cls(sys.stdout, clock)
        stream = open(target, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        return cls(stream, clock, owns_stream=True)

    def record(self, event: str, **fields: Any) -> None:
        when = datetime.fromtimestamp(self._clock.seconds(), UTC)
        entry = {"ts": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"), "event": event}
        entry.update(fields)
        line = _JSON_UNSAFE.sub(_json_escape, json.dumps(entry, ensure_ascii=False))
        self._stream.write(line + "\n")  # one record per line for every line-based reader
        self._stream.flush()

    def close(self) -> None:
        if self._owns_stream:
            self._stream.close()


class MemoryAuditLog:
    """Keeps events in a list: for tests and for dry runs."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def record(self, event: str, **fields: Any) -> None:
        self.events.append({"event": event, **fields})

    def of(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]
