"""The audit log: one JSON object per line, flushed per event, untrusted text sanitised."""

from __future__ import annotations

import codecs
import contextlib
import errno
import functools
import json
import os
import re
import stat
import sys
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import IO, Any, Protocol

from twisted.logger import Logger, LogLevel

from conchcmd.core.filetrust import symlink_followable
from conchcmd.core.logtargets import LOG_NAMESPACE, JournalLineTarget, SyslogLineTarget, parse_syslog_address

MAX_TEXT = 1024
log = Logger(namespace=LOG_NAMESPACE)


#: Characters str.isprintable() accepts that still show nothing (Unicode's
#: Default_Ignorable_Code_Point property, which unicodedata does not expose: combining grapheme
#: joiner, Hangul fillers, variation selectors, Mongolian selectors...; the Cf ones among them are
#: non-printable anyway) and U+2800 BRAILLE PATTERN BLANK, a blank that is a symbol.
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u2800\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)
#: What the JSON encoder writes raw beyond printable ASCII: DEL and every non-ASCII character.
_NON_ASCII = re.compile("[^\x00-\x7e]")


_ENCODER = json.JSONEncoder(ensure_ascii=False)


def _encode(entry: dict[str, Any]) -> str:
    """json.dumps(entry, ensure_ascii=False), without the encoder object and the Python layers
    dumps builds for each call (the C encoder it ends in, called directly, if there is one)."""
    if c_make_encoder is None:
        return _ENCODER.encode(entry)
    e = _ENCODER
    make = c_make_encoder({}, e.default, encode_basestring, None, e.key_separator, e.item_separator, False, False, True)
    return "".join(make(entry, 0))


_NOT_PLAIN = object()
_INF = float("inf")


def _plain_value(value: Any) -> Any:
    """json.dumps(value, ensure_ascii=False) for a value other than a str that records hold (an
    int or IntEnum, a finite float, a bool, None, a list or tuple of str), by the same rules as
    json's encoder (int.__repr__, float.__repr__); _NOT_PLAIN for anything else."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if value != value or value == _INF or value == -_INF:
            return _NOT_PLAIN  # NaN, Infinity: json's words for them
        return float.__repr__(value)
    if type(value) is list or type(value) is tuple:
        try:
            return "[" + ", ".join(map(encode_basestring, value)) + "]"
        except TypeError:  # not all str
            return _NOT_PLAIN
    return _NOT_PLAIN


@functools.lru_cache(maxsize=256)
def _key_member(key: str) -> str:
    """`, "key": ` as json.dumps writes a member's start (keys are the code's field names: few)."""
    return ", " + encode_basestring(key) + ": "


def _members(fields: dict[str, Any]) -> str | None:
    """`, "key": value` for each field, exactly as json.dumps(fields, ensure_ascii=False) writes
    its members, when every value is plain (a str or `_plain_value`); else None. A record's line
    built this way is built once, not as a merged dict and then again by the encoder (which
    lists the dict's items, and a str object per key, value and separator)."""
    out = ""
    for key, value in fields.items():
        out += _key_member(key)  # (+= on a str nothing else holds grows it in place)
        kind = type(value)
        if kind is str:
            out += encode_basestring(value)
        elif kind is int:  # the usual values inline, as _plain_value writes them
            out += repr(value)
        elif value is None:
            out += "null"
        else:
            text = _plain_value(value)
            if text is _NOT_PLAIN:
                return None
            out += text
    return out


#: Fields a record's line starts with; a field of one of these names takes the general path
#: (`event` cannot be one: it is record's own argument).
_HEAD = frozenset(("ts", "event", "host"))
#: `.NNNZ`, the milliseconds ending a record's `ts`.
_MILLISECONDS = tuple(f".{n:03d}Z" for n in range(1000))


def _iso_milliseconds(when: float) -> str:
    """An audit record's `ts`: UTC, to the millisecond, "Z"."""
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _hidden(ch: str) -> bool:
    """Whether a non-ASCII character is one a reader cannot see as itself: not printable (Unicode
    categories Cc, Cf, Cs, Co, Cn, Zl, Zp and every space but U+0020: zero-width characters, bidi
    controls, soft hyphen, BOM, private-use, unassigned, surrogates, separators) or invisible
    although printable. Printable characters of any script stay as they are ("José")."""
    return not ch.isprintable() or _INVISIBLE.match(ch) is not None


def _json_escape(match: re.Match[str]) -> str:
    ch = match.group()
    code = ord(ch)
    if not _hidden(ch):
        return ch
    if code > 0xFFFF:  # JSON's \u holds 16 bits: a surrogate pair, as json.dumps writes it
        code -= 0x10000
        return f"\\u{0xD800 | code >> 10:04x}\\u{0xDC00 | code & 0x3FF:04x}"
    return f"\\u{code:04x}"


def _json_safe(text: str) -> str:
    """A record's JSON text with every hidden character (`_hidden`: line and paragraph separators,
    U+0085, lone surrogates, bidi controls, zero-width...) written as a JSON escape: the value a
    JSON reader gets is unchanged; what a line-based reader splits at and what a person reading
    the file cannot see are not in its bytes."""
    if text.isprintable() and _INVISIBLE.search(text) is None:
        return text
    return _NON_ASCII.sub(_json_escape, text)


def escape_char(ch: str) -> str:
    """sanitise's escape of one character: \\xNN below U+0100 (and for an undecodable byte, kept
    by surrogateescape as U+DC80-U+DCFF), else \\uNNNN, or \\UNNNNNNNN beyond 16 bits."""
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code & 0xFF:02x}"
    if code > 0xFFFF:
        return f"\\U{code:08x}"
    return f"\\u{code:04x}"


def sanitise(value: str | bytes, limit: int = MAX_TEXT) -> str:
    """Make untrusted text safe to log: control characters, undecodable bytes, and every
    character a reader cannot see as itself (`_hidden`: separators, bidi controls, zero-width,
    format, private-use, unassigned characters) become escapes; a backslash is doubled."""
    if type(value) is not str and isinstance(value, bytes):  # (type() is no call for a profiler)
        value = value.decode("utf-8", "surrogateescape")
    head = value[:limit]
    # The usual text needs no escape: two C scans (isprintable is false for every control and
    # for the hidden characters but the few in _INVISIBLE), no loop.
    if head.isprintable() and "\\" not in head and (head.isascii() or _INVISIBLE.search(head) is None):
        if head is value:  # CPython's slice of a whole str is the str itself: no len() needed
            return head
        return head + "..." if len(value) > limit else head
    out = []
    for ch in head:
        if ch == "\\":
            out.append("\\\\")  # so an escape we write is never confused with typed text
        elif " " <= ch <= "~" or not _hidden(ch):
            out.append(ch)
        else:
            out.append(escape_char(ch))
    if len(value) > limit:
        out.append("...")
    return "".join(out)


def error_kind(e: object) -> str:
    """An exception's type as log lines and audit reasons name it (builtins without a module)."""
    kind = type(e)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"


#: Runs of what may need replacing on a terminal: everything but printable ASCII, with (for
#: text that keeps its lines) or without tab and newline.
_TERMINAL_CANDIDATES = re.compile("[^\t\n -~]+")
_LINE_CANDIDATES = re.compile("[^ -~]+")
_ASCII_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f]")
_ASCII_LINE_UNSAFE = re.compile("[\x00-\x1f\x7f]")


def _terminal_run(match: re.Match[str]) -> str:
    run = match.group()
    if run.isprintable() and _INVISIBLE.search(run) is None:
        return run  # letters of any script, symbols, emoji: shown as they are
    return "".join("?" if _hidden(ch) else ch for ch in run)


def terminal_safe(text: str, *, single_line: bool = False) -> str:
    """The one sanitiser for client- or file-derived text bound for a terminal: each character
    sanitise escapes (`_hidden`: C0 and C1 controls, ESC starting every control sequence, DEL,
    undecodable bytes, separators, bidi controls, zero-width and other invisible characters)
    becomes '?' (as `ls` shows them), but tab and newline. `single_line` also replaces those, for
    text placed inside a line the server draws (a file name in the progress line, a listing)."""
    if text.isascii():  # only C0 and DEL to replace: one C scan
        return (_ASCII_LINE_UNSAFE if single_line else _ASCII_UNSAFE).sub("?", text)
    shown = text if single_line else text.replace("\n", "").replace("\t", "")
    if shown.isprintable() and _INVISIBLE.search(shown) is None:
        return text  # the usual non-ASCII text: C scans, no callback per run of it
    return (_LINE_CANDIDATES if single_line else _TERMINAL_CANDIDATES).sub(_terminal_run, text)


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
    Warnings and errors pass as usual, with the namespace and source Twisted's descriptor gives.
    """

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        # Twisted's __get__ builds a Logger on every `self._log` (Conch reads it for each debug
        # line): a tuple here, and the Logger only for what is not dropped.
        return _QuietView((self, instance, owner))

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: Any) -> None:
        if level >= LogLevel.warn:
            super().emit(level, format, **kwargs)


class _QuietView(tuple[QuietLogger, object, "type | None"]):
    """A QuietLogger as seen through one object: debug and info do nothing; anything else goes
    to the Logger Twisted's descriptor would have given (namespace of the class, that source)."""

    __slots__ = ()

    def debug(self, format: str | None = None, **kwargs: Any) -> None:
        pass

    def info(self, format: str | None = None, **kwargs: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(Logger.__get__(self[0], self[1], self[2]), name)


class AuditSink(Protocol):
    """Anything that records audit events."""

    def record(self, event: str, **fields: Any) -> None: ...

    def failure(self) -> str | None:
        """Why records cannot be written now (after trying again), or None when they can."""
        ...


class BoundAudit:
    """An AuditSink that adds fixed fields to every record it passes on: a connection's id, a
    channel's number and kind. Binding again adds to the fields already bound."""

    sink: AuditSink
    fields: dict[str, Any]

    def __init__(self, sink: AuditSink, **fields: Any):
        if isinstance(sink, BoundAudit):  # bound once: one merge per record, not one per level
            fields, sink = {**sink.fields, **fields, **sink.fields}, sink.sink  # the inner fields win, first
        self.sink = sink
        self.fields = fields
        # Straight to an AuditLog, the bound fields' part of the line is written once, here.
        log = sink if type(sink) is AuditLog and _HEAD.isdisjoint(fields) else None
        members = _members(fields) if log is not None else None
        self._log: AuditLog | None = log if members is not None else None
        self._members = members or ""

    def record(self, event: str, **fields: Any) -> None:
        # The bound fields come first and win: what joins records up is never overwritten.
        log = self._log
        if log is None:
            self.sink.record(event, **{**self.fields, **fields, **self.fields})
            return
        bound = self.fields
        if not bound.keys().isdisjoint(fields):
            fields = {k: v for k, v in fields.items() if k not in bound}
        log.record_bound(event, bound, self._members, fields)

    def failure(self) -> str | None:
        return self.sink.failure()

    def bind(self, **fields: Any) -> BoundAudit:
        return BoundAudit(self.sink, **{**self.fields, **fields})


def new_connection_id(in_use: set[str], random_bytes: Callable[[int], bytes] | None = None) -> str:
    """A random connection id (16 hex digits) not among `in_use`, which it is added to; its bytes
    from `random_bytes` (the server's pool of OS random bytes), else from os.urandom."""
    draw = os.urandom if random_bytes is None else random_bytes
    while True:
        connection_id = draw(8).hex()
        if connection_id not in in_use:
            in_use.add(connection_id)
            return connection_id


#: Records kept while the audit log cannot be written, to write when it can (oldest dropped first).
BACKLOG_RECORDS = 1000
BACKLOG_BYTES = 4 << 20  # and at most this much of them (a command record can be large)


class LineTarget(Protocol):
    """Where audit lines go: `write` stores one whole line or raises OSError."""

    name: str

    def write(self, line: bytes) -> None: ...

    def reopen(self) -> None:
        """Start writing to the target's name afresh (after log rotation); may raise OSError."""
        ...

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

    def reopen(self) -> None:
        pass  # a stream has no name to open again

    def close(self) -> None:
        pass  # not ours to close


#: Mode of an audit file conchcmd creates, without and with `audit_group`: never readable by others.
AUDIT_FILE_MODE = 0o600
AUDIT_GROUP_FILE_MODE = 0o640


class AppendFile:
    """A file opened for appending, written a line per write(2) loop. A line that fails half-way
    is cut off again (the file stays valid JSON lines), and the file is reopened on the next write,
    so a full disk, a replaced file or a transient I/O error heal once the cause is gone.

    A file it creates gets exactly AUDIT_FILE_MODE (AUDIT_GROUP_FILE_MODE and group `group` when
    given), whatever the umask; an existing file keeps its mode, with a warning if it is looser.
    Against whoever else can write its directory: a symlink there is not followed, a file or FIFO
    they own is refused, and a FIFO nobody reads fails instead of blocking (OSError each time).
    """

    def __init__(self, path: str, *, group: int | None = None):
        self.name = path
        self.group = group
        self.mode = AUDIT_FILE_MODE if group is None else AUDIT_GROUP_FILE_MODE
        self._fd: int | None = self._open()

    def _open(self) -> int:
        # O_NONBLOCK: a FIFO nobody reads fails at once (ENXIO) instead of freezing the reactor
        # (cleared once open: a collector's FIFO is written whole lines, as before).
        flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NONBLOCK
        if not symlink_followable(self.name):
            flags |= os.O_NOFOLLOW  # a link someone else planted there is not followed
        try:
            # Created owner-only: nobody else can open it before its mode and group are set.
            fd = os.open(self.name, flags | os.O_CREAT | os.O_EXCL, AUDIT_FILE_MODE)
        except FileExistsError:
            try:
                try:
                    fd = os.open(self.name, flags)
                except FileNotFoundError:
                    # Moved away in between, or a dangling symlink (O_EXCL does not follow it):
                    # created as before this change, owner-only at most.
                    fd = os.open(self.name, flags | os.O_CREAT, AUDIT_FILE_MODE)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    why = "it is a symlink in a directory others can write; not followed"
                    raise OSError(errno.ELOOP, why) from None
                raise
            self._check_existing(fd)
            os.set_blocking(fd, True)
            return fd
        self._set_owner_and_mode(fd)
        os.set_blocking(fd, True)
        return fd

    def _set_owner_and_mode(self, fd: int) -> None:
        try:
            if self.group is not None:
                os.fchown(fd, -1, self.group)
            os.fchmod(fd, self.mode)  # the exact mode: the umask may have taken bits away
        except OSError as e:
            log.warn(
                "Audit log {name}: cannot give it group {gid} and mode {mode:04o} ({error}); it stays owner-only",
                name=self.name,
                gid=self.group,
                mode=self.mode,
                error=e.strerror,
            )

    def _check_existing(self, fd: int) -> None:
        st = os.fstat(fd)
        if st.st_uid not in (0, os.geteuid()):
            # Its owner could read every record, chmod it or empty it (or, for a FIFO, stop
            # reading and freeze the server): not an audit log.
            os.close(fd)
            raise OSError(errno.EPERM, f"it is owned by uid {st.st_uid}, not by root or the server's user")
        if not stat.S_ISREG(st.st_mode):
            return  # a device or a pipe (/dev/stdout, a FIFO a collector reads): not ours to judge
        mode = stat.S_IMODE(st.st_mode)
        looser = mode & ~self.mode & 0o777
        other_group = self.group is not None and st.st_gid != self.group and mode & 0o070
        if looser or other_group:
            log.warn(
                "Audit log {name} has mode {mode:04o} and group {gid}, looser than the {expected:04o} it would be "
                "created with; left as it is: chmod {expected:o} {name}",
                name=self.name,
                mode=mode,
                gid=st.st_gid,
                expected=self.mode,
            )

    def write(self, line: bytes) -> None:
        if self._fd is None:
            self._fd = self._open()
        fd = self._fd
        try:
            written = os.write(fd, line)  # the usual case: all of it at once, no view to slice
        except OSError:
            self.close()
            raise
        if written == len(line):
            return
        view = memoryview(line)[written:]
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError:
            if len(view) < len(line):
                with contextlib.suppress(OSError):  # remove the partial line (what was written of it)
                    os.ftruncate(fd, os.fstat(fd).st_size - (len(line) - len(view)))
            self.close()
            raise

    def reopen(self) -> None:
        self.close()
        self._fd = self._open()

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

    def __init__(self, target: LineTarget, clock: Any, *, failure_mode: str = "refuse", host: str | None = None):
        self._target = target
        self._host = host  # the server's host name, in every record when given
        self._host_member = "" if host is None else ', "host": ' + encode_basestring(host)
        self._clock = clock
        self._failure_mode = failure_mode
        self._backlog: deque[bytes] = deque()
        self._backlog_bytes = 0
        self._lost = 0
        self._error: str | None = None
        self._failing_since = 0.0
        self._closed = False
        self._second = -1  # the second whose date and time `_prefix` is
        self._prefix = ""

    @classmethod
    def open(
        cls,
        target: str,
        clock: Any,
        *,
        failure_mode: str = "refuse",
        host: str | None = None,
        group: int | None = None,
        syslog_address: str | None = None,
        one_shot: bool = False,
    ) -> AuditLog:
        """Open the audit log named by the `audit_log` setting ("-" is stdout; "syslog" goes to
        `[log] syslog_address`, "journal" to the journal; `clock` is then the reactor, unless
        `one_shot`: a command that sends each record at once or fails); a file is created with
        `group` (a gid) and mode 0640 when given, else 0600."""
        if target == "-":
            return cls(StreamTarget(sys.stdout), clock, failure_mode=failure_mode, host=host)
        if target in ("syslog", "journal"):
            reactor = None if one_shot else clock
            sink: LineTarget = (
                SyslogLineTarget(parse_syslog_address(syslog_address), reactor)
                if target == "syslog"
                else JournalLineTarget(reactor=reactor)
            )
            return cls(sink, clock, failure_mode=failure_mode, host=host)
        return cls(AppendFile(target, group=group), clock, failure_mode=failure_mode, host=host)

    def record(self, event: str, **fields: Any) -> None:
        self.record_bound(event, {}, "", fields)

    def record_bound(self, event: str, bound: dict[str, Any], members: str, fields: dict[str, Any]) -> None:
        """One record: `bound` (for a BoundAudit: fields none of `fields` names, already written
        as `members` by `_members`) then `fields`, as one JSON line after ts, event and host."""
        if self._closed:
            raise ValueError("the audit log is closed")
        ts = self._stamp(self._clock.seconds())
        more = _members(fields) if type(event) is str and "ts" not in fields and "host" not in fields else None
        if more is not None:
            head = '{"ts": "' + ts + '", "event": ' + encode_basestring(event) + self._host_member
            text = head + members + more + "}"
        else:  # json's encoder decides what such a record looks like
            if self._host is not None:
                entry = {"ts": ts, "event": event, "host": self._host, **bound, **fields}
            else:
                entry = {"ts": ts, "event": event, **bound, **fields}
            text = _encode(entry)
        if not text.isascii() or "\x7f" in text:  # (isascii: a flag CPython keeps, no scan)
            text = _json_safe(text)
        line = (text + "\n").encode("utf-8")  # one record per line for every line-based reader
        if not self._backlog and self._error is None:
            try:  # the usual case: nothing waiting, write this one (the loop below, without the queue)
                self._target.write(line)
                return
            except OSError as e:
                self._backlog.append(line)
                self._backlog_bytes += len(line)
                self._failed(e)
                return
        self._backlog.append(line)
        self._backlog_bytes += len(line)
        while len(self._backlog) > 1 and (len(self._backlog) > BACKLOG_RECORDS or self._backlog_bytes > BACKLOG_BYTES):
            self._backlog_bytes -= len(self._backlog.popleft())
            self._lost += 1
        self._drain()

    def _stamp(self, when: float) -> str:
        """`ts`: datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds") with "Z",
        the date and time of day made once per second (datetime's formatting is a printf)."""
        if when < 0:
            return _iso_milliseconds(when)
        second = int(when)
        micro = round((when - second) * 1e6)  # fromtimestamp's rounding: modf, half-even
        if micro >= 1_000_000:
            second, micro = second + 1, micro - 1_000_000
        if second != self._second:
            self._second = second
            self._prefix = _iso_milliseconds(second)[:-5]  # without ".000Z"
        return self._prefix + _MILLISECONDS[micro // 1000]

    def failure(self) -> str | None:
        if self._error is not None and not self._closed:
            self._drain()
        return self._error

    def reopen(self) -> None:
        """Close the target and open it again by its name (SIGHUP after a log rotation): what
        comes next goes to the file now at that path, created if it was moved away. Each record
        goes to exactly one file: those not yet written (the backlog) go to the new one."""
        if self._closed:
            return
        try:
            self._target.reopen()
        except OSError as e:
            self._failed(e)
            return
        log.info("Audit log {name} reopened", name=self._target.name)
        self._drain()

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
