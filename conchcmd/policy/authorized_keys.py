"""OpenSSH authorized_keys files: a parser that keeps options, and a per-user key database.

Conch's own reader silently skips every line that starts with options; this one parses them,
so a line whose options conchcmd does not enforce is refused visibly instead (fail closed).
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import re
import socket
import time
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from conchcmd.core.config import valid_user_name
from conchcmd.core.filetrust import AttemptFiles, CheckedFile, FileTrust, ServerSideFailure, UntrustedFile, server_side
from conchcmd.core.hostmatch import PatternError, split_patterns
from conchcmd.core.logtargets import LOG_NAMESPACE
from conchcmd.keys.keyfile import CERT_SUFFIX, file_lines, read_key, skip_space
from conchcmd.keys.keyparse import (
    KeyParseError,
    KeyTypeMismatch,
    PublicKey,
    ed25519_key_refusal,
    public_key_from_line,
)

log = Logger(namespace=LOG_NAMESPACE)

#: sshd's flag options (auth-options.c): the ones marked True also take a "no-" prefix.
FLAGS: dict[str, bool] = {
    "restrict": False,
    "cert-authority": False,
    "port-forwarding": True,
    "agent-forwarding": True,
    "x11-forwarding": True,
    "touch-required": True,
    "verify-required": True,
    "pty": True,
    "user-rc": True,
}
#: sshd's options that take a quoted value.
VALUE_OPTIONS = ("command", "principals", "from", "expiry-time", "environment", "permitopen", "permitlisten", "tunnel")
SSH_TUNID_MAX = 0x7FFFFFFF - 2
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")  # strncasecmp's
_DECIMAL = re.compile(r"[ \t\n\v\f\r]*[+-]?[0-9]+")  # what strtonum() takes


class OptionError(ValueError):
    """An option this line cannot be honoured with: the line refuses to authorize."""


class OptionsSyntaxError(OptionError):
    """The options field of an authorized_keys line is malformed (sshd's parser rejects it)."""


def fingerprint(blob: bytes) -> str:
    """The OpenSSH SHA256 fingerprint of a public key blob: `SHA256:base64-without-padding`."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return "SHA256:" + digest


def advance_past_options(text: str, i: int = 0) -> int | None:
    """sshkey_advance_past_options(): the end of the options field (the first space or tab
    outside quotes, where \\" does not count as a quote); None for an unterminated quote."""
    quoted = False
    n = len(text)
    while i < n and (quoted or text[i] not in " \t"):
        if text[i] == "\\" and i + 1 < n and text[i + 1] == '"':
            i += 1
        elif text[i] == '"':
            quoted = not quoted
        i += 1
    return None if quoted and i >= n else i


def _dequote(text: str, i: int, name: str) -> tuple[str, int]:
    """opt_dequote(): a double-quoted value in which \\" stands for a quote."""
    if i >= len(text) or text[i] != '"':
        raise OptionsSyntaxError(f"option {name!r}: missing start quote")
    i += 1
    chars = []
    while i < len(text) and text[i] != '"':
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] == '"':
            i += 1
        chars.append(text[i])
        i += 1
    if i >= len(text):
        raise OptionsSyntaxError(f"option {name!r}: missing end quote")
    return "".join(chars), i + 1


def _match_flag(text: str, i: int) -> tuple[str, int] | None:
    """opt_flag(): a flag name is matched as a case-insensitive prefix, as sshd does."""
    for flag, negatable in FLAGS.items():
        j, prefix = i, ""
        if negatable and text[j : j + 3].translate(_ASCII_LOWER) == "no-":
            j, prefix = j + 3, "no-"
        if text[j : j + len(flag)].translate(_ASCII_LOWER) == flag:
            return prefix + flag, j + len(flag)
    return None


def _option_name(text: str, i: int) -> str:
    """The option sshd stopped at, for messages: from the last comma to the next , = space or tab."""
    start = text.rfind(",", 0, i) + 1
    end = start
    while end < len(text) and text[end] not in ",= \t":
        end += 1
    return _text(text[start:end]) or text[start:end]


def parse_options(text: str) -> tuple[list[tuple[str, str | None]], str]:
    """Split the leading options off an authorized_keys line exactly as sshd does
    (sshkey_advance_past_options, then sshauthopt_parse's syntax).

    Returns ([(name, value)], rest of line): names in lower case ("no-pty" for a negated flag),
    values unquoted. Empty items between commas are skipped, as sshd skips them.
    """
    end = advance_past_options(text)
    if end is None:
        raise OptionsSyntaxError("invalid key option string (unterminated quote)")
    options: list[tuple[str, str | None]] = []
    i = 0
    while i < len(text) and text[i] not in " \t":
        flag = _match_flag(text, i)
        if flag is not None:
            options.append((flag[0], None))
            i = flag[1]
        else:
            for name in VALUE_OPTIONS:  # opt_match(): NAME= in any case
                stop = i + len(name)
                if text[i:stop].translate(_ASCII_LOWER) == name and text[stop : stop + 1] == "=":
                    value, i = _dequote(text, stop + 1, name)
                    options.append((name, value))
                    break
        if i >= len(text) or text[i] in " \t":
            break
        if text[i] != ",":
            raise OptionsSyntaxError(f"unknown key option {_option_name(text, i)!r}")
        i += 1
        if i >= len(text):
            raise OptionsSyntaxError("unexpected end-of-options")
    return options, text[skip_space(text, end) :]


@dataclass(frozen=True)
class KeyOptions:
    """What an authorized_keys line's options mean to conchcmd (forwarding is always off)."""

    command: str | None = None
    from_patterns: tuple[str, ...] | None = None
    expiry: float | None = None  # seconds since the epoch; the key is refused after it
    pty: bool = True
    cert_authority: bool = False
    principals: str | None = None  # the principals= list as written (sshd's match_list splits it)
    environment: tuple[str, ...] = ()
    no_touch_required: bool = False  # security keys: a signature without the touch flag will do
    verify_required: bool = False  # security keys: the signature must carry the user-verified flag


def parse_expiry(value: str) -> float:
    """OpenSSH's parse_absolute_time: YYYYMMDD[HHMM[SS]] in local time, or UTC with a trailing
    Z or UTC (any case). Out-of-range days are normalised as mktime does (20300230 is 2 March)."""
    text, utc = value, False
    if len(text) > 1 and text[-1:].lower() == "z":
        text, utc = text[:-1], True
    elif len(text) > 3 and text[-3:].lower() == "utc":
        text, utc = text[:-3], True
    if len(text) not in (8, 12, 14) or not text.isascii() or not text.isdigit():
        raise OptionError(f"expiry-time {value!r} is not YYYYMMDD[HHMM[SS]][Z]")
    year, month, day = int(text[:4]), int(text[4:6]), int(text[6:8])
    hour, minute, second = int(text[8:10] or 0), int(text[10:12] or 0), int(text[12:14] or 0)
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour <= 23 and minute <= 59 and second <= 61):
        raise OptionError(f"expiry-time {value!r} is not a valid date")
    fields = (year, month, day, hour, minute, second)
    try:
        when = calendar.timegm(fields) if utc else time.mktime((*fields, 0, 0, 0))
    except (OverflowError, ValueError):
        raise OptionError(f"expiry-time {value!r} is out of range") from None
    if when <= 0:
        raise OptionError(f"expiry-time {value!r} is out of range")
    return float(when)


def _valid_permit(value: str, *, allow_bare_port: bool) -> bool:
    """handle_permit(): HOST:PORT (or [HOST]:PORT), PORT a number, a service name or `*`."""
    if allow_bare_port and ":" not in value:
        value = "*:" + value
    if value.startswith("["):
        close = value.find("]")
        if close < 0:
            return False
        host, rest = value[: close + 1], value[close + 1 :]
        if rest[:1] not in (":", "/"):
            return False
        port: str | None = rest[1:]
    else:
        cut = min((p for p in (value.find(":"), value.find("/")) if p >= 0), default=-1)
        host, port = (value, None) if cut < 0 else (value[:cut], value[cut + 1 :])
    if len(host.encode("utf-8", "surrogateescape")) >= 1025 or port is None:
        return False
    if port == "*":
        return True
    if _DECIMAL.fullmatch(port):
        return 0 < int(port) <= 65535
    try:
        return socket.getservbyname(port, "tcp") > 0
    except (OSError, UnicodeError, ValueError):
        return False


def _valid_tunnel(value: str) -> bool:
    """a2tun(): `any` or a device number."""
    return value.lower() == "any" or (bool(_DECIMAL.fullmatch(value)) and 0 <= int(value) <= SSH_TUNID_MAX)


def interpret_options(options: list[tuple[str, str | None]], *, permit_environment: bool = False) -> KeyOptions:
    """Apply options in order, as sshd does (`restrict,pty` allows a pty; `pty,restrict` does not),
    with sshd's checks of each value; OptionError when sshd would refuse the line too, or when
    the line needs something conchcmd does not do (environment= without permit_user_environment)."""
    fields: dict[str, Any] = {}
    environment: list[str] = []
    seen: set[str] = set()
    for name, value in options:
        if name in ("command", "principals", "from") and name in seen:
            raise OptionError(f'multiple "{name}" clauses')
        seen.add(name)
        if name == "command":
            fields["command"] = _text(value)
        elif name == "from":
            assert value is not None
            try:
                fields["from_patterns"] = tuple(split_patterns(value))
            except PatternError as e:
                raise OptionError(f"from=: {e}") from None
        elif name == "expiry-time":
            assert value is not None
            expiry = parse_expiry(value)
            fields["expiry"] = min(expiry, fields.get("expiry", expiry))  # sshd keeps the earliest
        elif name == "principals":
            fields["principals"] = value
        elif name == "environment":
            assert value is not None
            variable, equals, _ = value.partition("=")
            if not equals or not variable or not all(c.isascii() and (c.isalnum() or c == "_") for c in variable):
                raise OptionError(f"invalid environment string {_text(value)!r}")
            environment.append(_text(value) or "")
        elif name in ("permitopen", "permitlisten"):
            assert value is not None
            if not _valid_permit(value, allow_bare_port=name == "permitlisten"):
                raise OptionError(f"{name}={_text(value)!r} is not HOST:PORT")
        elif name == "tunnel":
            assert value is not None
            if not _valid_tunnel(value):
                raise OptionError(f"invalid tun device {_text(value)!r}")
        elif name in ("restrict", "no-pty"):
            fields["pty"] = False
        elif name == "pty":
            fields["pty"] = True
        elif name == "cert-authority":
            fields["cert_authority"] = True
        elif name in ("touch-required", "no-touch-required"):
            fields["no_touch_required"] = name == "no-touch-required"
        elif name in ("verify-required", "no-verify-required"):
            fields["verify_required"] = name == "verify-required"
    if environment and not permit_environment:
        raise OptionError("environment= is not permitted (permit_user_environment is off)")
    return KeyOptions(**fields, environment=tuple(environment))


def _text(value: str | None) -> str | None:
    """An option value as text: bytes that are not UTF-8 become U+FFFD."""
    if value is None:
        return None
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


@dataclass(frozen=True)
class AuthorizedKey:
    """One usable line of an authorized_keys file."""

    key: PublicKey
    blob: bytes
    options: tuple[tuple[str, str | None], ...]
    comment: str
    source: str  # "FILE:LINE", for log lines
    meaning: KeyOptions = KeyOptions()
    refused: str | None = None  # why this line cannot authorize, if it cannot
    line: int = 0  # the line number in its file


@dataclass(frozen=True)
class RefusedLine:
    """A line that holds no usable key line at all (so it is no AuthorizedKey), and why."""

    line: int
    reason: str


@dataclass(frozen=True)
class ParsedFile:
    entries: tuple[AuthorizedKey, ...]
    problems: tuple[str, ...]
    #: The lines refused before a key could be read from them (lines whose options are refused
    #: are entries with `refused` set).
    unreadable: tuple[RefusedLine, ...] = ()


def parse_authorized_keys(text: str | bytes, source: str, *, permit_environment: bool = False) -> ParsedFile:
    """Parse a whole authorized_keys file as sshd reads it; bad lines become problems, never
    exceptions. Lines end at \\n only; fields are separated by spaces and tabs only."""
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    entries = []
    problems = []
    unreadable = []

    def skip(number: int, reason: str) -> None:
        problems.append(f"{source}:{number}: line refused: {reason}")
        unreadable.append(RefusedLine(number, reason))

    for number, raw in file_lines(data):
        line = raw[skip_space(raw, 0) :]
        where = f"{source}:{number}"
        if not line or line.startswith("#"):
            continue
        options: list[tuple[str, str | None]] = []
        syntax_error = None
        field = read_key(line, 0)
        rest = line
        if field is None:  # sshd's order: a key first; failing that, options and then a key
            end = advance_past_options(line)
            if end is None:
                skip(number, "invalid key option string (unterminated quote)")
                continue
            rest = line[skip_space(line, end) :]
            field = read_key(rest, 0)
            if field is None:
                skip(number, "no key type and key")
                continue
            try:
                options, _ = parse_options(line)
            except OptionsSyntaxError as e:
                syntax_error = str(e)
        comment = _text(rest[field.comment_start :]) or ""
        if field.key_type.endswith(CERT_SUFFIX):
            skip(number, "certificates are not accepted here")
            continue
        try:
            key = public_key_from_line(field)
        except KeyTypeMismatch as e:
            skip(number, str(e))
            continue
        except KeyParseError as e:
            skip(number, f"bad key ({e})")
            continue
        try:
            if syntax_error is not None:
                raise OptionsSyntaxError(syntax_error)
            meaning = interpret_options(options, permit_environment=permit_environment)
            refused = None
        except OptionError as e:
            meaning, refused = KeyOptions(), str(e)
            problems.append(f"{where}: line refused: {refused}")
        if refused is None and (weak := ed25519_key_refusal(key)) is not None:
            # sshd (and OpenSSL) would accept signatures anyone can make; libsodium refuses them
            # all at login: the line is refused here, so the operator is told why.
            refused = f"CA key: {weak}" if meaning.cert_authority else weak
            problems.append(f"{where}: line refused: {refused}")
        if refused is None and meaning.principals is not None and not meaning.cert_authority:
            refused = "principals= on a line without cert-authority"  # sshd: "principals on non-CA key"
            problems.append(f"{where}: line refused: {refused}")
        # Matched on the key as ssh-keygen writes it (sshd compares keys by value).
        entries.append(AuthorizedKey(key, key.blob(), tuple(options), comment, where, meaning, refused, number))
    return ParsedFile(tuple(entries), tuple(problems), tuple(unreadable))


EMPTY = ParsedFile((), ())


def lines_for_key(entries: tuple[AuthorizedKey, ...], blob: bytes) -> list[AuthorizedKey]:
    """The lines of `entries` that authorize this key (cert-authority lines authorize only certificates)."""
    return [e for e in entries if e.blob == blob and not e.meaning.cert_authority]


@dataclass(frozen=True)
class KeyFileState:
    """One user's authorized_keys file as login reads it. A file that is `ignored` (it fails the
    `strict_modes` check: `fix` says what to do), `missing` or unreadable (`error`) authorizes nothing."""

    path: str | None
    parsed: ParsedFile
    missing: bool = False
    ignored: str | None = None
    fix: str | None = None
    error: str | None = None
    fresh: bool = False  # parsed now, not taken from the cache
    #: `error` is the server's own (out of descriptors, memory, I/O): it says nothing of the user.
    failure: ServerSideFailure | None = None


class AuthorizedKeysFiles:
    """Per-user authorized_keys files from a `%u` path pattern, read at authentication time.

    Every login checks the file's ownership and modes and those of the directories above it
    (`strict_modes`, see filetrust.py), so a loosened file is refused at the next login. Parsed
    files are cached by their `file_version`, so an unchanged file is not parsed again, and an
    edited file is picked up by the next login without a restart.
    """

    def __init__(self, pattern: str, *, permit_environment: bool = False, trust: FileTrust | None = None):
        self.pattern = pattern
        self.permit_environment = permit_environment
        self.trust = trust or FileTrust()
        self._cache: dict[str, tuple[tuple[int, ...], ParsedFile]] = {}

    def path_for(self, user: str) -> str | None:
        if not valid_user_name(user):
            return None
        return self.pattern.replace("%%", "\0").replace("%u", user).replace("\0", "%")

    def entries_for(self, user: str, attempt: AttemptFiles | None = None) -> tuple[AuthorizedKey, ...]:
        """The user's lines for login; ServerSideFailure when the file could not be read for a
        reason of the server's own (the caller logs it: not once per attempt)."""
        return self.parsed_for(user, attempt).entries

    def parsed_for(self, user: str, attempt: AttemptFiles | None = None) -> ParsedFile:
        """`entries_for`'s file as parsed: the same object for as long as the file keeps its
        version (what a decision taken from its lines may be remembered by)."""
        if attempt is not None and (path := self.path_for(user)) is not None:
            seen = attempt.get(path)
            if isinstance(seen, ParsedFile):
                return seen  # what `read` answers then (nothing to log), without its KeyFileState
            state = self._read_file(path, attempt)
        else:
            state = self.read(user, attempt)
        if state.failure is not None:
            raise state.failure
        if state.ignored is not None:
            log.warn("Ignoring {path}: {reason}", path=state.path, reason=state.ignored)
        elif state.error is not None:
            log.warn("Cannot read {path}: {error}", path=state.path, error=state.error)
        elif state.fresh:
            for problem in state.parsed.problems:
                log.warn("{problem}", problem=problem)
        return state.parsed

    def read(self, user: str, attempt: AttemptFiles | None = None) -> KeyFileState:
        """The user's file as login sees it: parsed, or why it is ignored, missing or unreadable.
        Logs nothing (`entries_for` logs for login; `conchcmd users` shows the same state). With
        `attempt`, a file this login attempt has read already and that is unchanged is not read
        and checked again (only a file that was read and trusted is taken from it)."""
        path = self.path_for(user)
        if path is None:
            return KeyFileState(None, EMPTY, missing=True)
        if attempt is not None:
            seen = attempt.get(path)
            if isinstance(seen, ParsedFile):
                return KeyFileState(path, seen)
        return self._read_file(path, attempt)

    def _read_file(self, path: str, attempt: AttemptFiles | None) -> KeyFileState:
        """`read` once `attempt` has nothing for the file: open, check, parse or take from the cache."""
        try:
            with CheckedFile(path, self.trust) as f:
                signature = f.version
                cached = self._cache.get(path)
                if cached and cached[0] == signature:
                    if attempt is not None:
                        attempt.put(path, signature, cached[1])
                    return KeyFileState(path, cached[1])
                data = f.read()
        except UntrustedFile as e:
            self._cache.pop(path, None)
            return KeyFileState(path, EMPTY, ignored=e.problem.reason, fix=e.problem.fix)
        except FileNotFoundError:
            self._cache.pop(path, None)
            return KeyFileState(path, EMPTY, missing=True)
        except OSError as e:
            if server_side(e):  # the cached parse may be stale: not used, but kept for later
                failure = ServerSideFailure("authorized_keys", path, e)
                return KeyFileState(path, EMPTY, error=failure.strerror, failure=failure)
            self._cache.pop(path, None)
            return KeyFileState(path, EMPTY, error=e.strerror or str(e))
        parsed = parse_authorized_keys(data, path, permit_environment=self.permit_environment)
        self._cache[path] = (signature, parsed)
        if attempt is not None:
            attempt.put(path, signature, parsed)
        return KeyFileState(path, parsed, fresh=True)

    def find_all(self, user: str, blob: bytes, attempt: AttemptFiles | None = None) -> list[AuthorizedKey]:
        """The user's lines for this key (cert-authority lines authorize only certificates)."""
        return lines_for_key(self.entries_for(user, attempt), blob)

    def find(self, user: str, blob: bytes) -> AuthorizedKey | None:
        """The user's first line for this key, if any."""
        lines = self.find_all(user, blob)
        return lines[0] if lines else None

    def authorities(self, user: str, attempt: AttemptFiles | None = None) -> list[AuthorizedKey]:
        """The user's cert-authority lines: CAs whose certificates may log in as this user."""
        return [e for e in self.entries_for(user, attempt) if e.meaning.cert_authority]
