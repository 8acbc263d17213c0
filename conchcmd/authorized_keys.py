"""OpenSSH authorized_keys files: a parser that keeps options, and a per-user key database.

Conch's own reader silently skips every line that starts with options; this one parses them,
so a line whose options conchcmd does not enforce is refused visibly instead (fail closed).
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from twisted.conch.ssh.keys import BadKeyError, Key
from twisted.logger import Logger

from conchcmd.audit import LOG_NAMESPACE
from conchcmd.filetrust import CheckedFile, FileTrust, UntrustedFile
from conchcmd.hostmatch import PatternError, split_patterns

log = Logger(namespace=LOG_NAMESPACE)

KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "ssh-rsa",
        "ssh-dss",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
CERT_SUFFIX = "-cert-v01@openssh.com"

#: Options that take a value, and flags; names are compared in lower case, as sshd does.
VALUE_OPTIONS = frozenset(
    {"command", "from", "expiry-time", "principals", "environment", "permitopen", "permitlisten", "tunnel"}
)
FLAG_OPTIONS = frozenset(
    {
        "restrict",
        "pty",
        "no-pty",
        "cert-authority",
        "port-forwarding",
        "no-port-forwarding",
        "agent-forwarding",
        "no-agent-forwarding",
        "x11-forwarding",
        "no-x11-forwarding",
        "user-rc",
        "no-user-rc",
        "no-touch-required",
    }
)
#: Options this version enforces or safely accepts. Any other makes its line refuse to authorize.
SUPPORTED_OPTIONS: frozenset[str] = VALUE_OPTIONS | FLAG_OPTIONS
SINGLE_OPTIONS = frozenset({"command", "from", "expiry-time", "principals"})
_EXPIRY = re.compile(r"(\d{8})(\d{4}(\d{2})?)?(Z?)")

_USER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


class OptionsSyntaxError(ValueError):
    """The options field of an authorized_keys line is malformed."""


def fingerprint(blob: bytes) -> str:
    """The OpenSSH SHA256 fingerprint of a public key blob: `SHA256:base64-without-padding`."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return "SHA256:" + digest


def valid_user_name(name: str) -> bool:
    """True for names safe to put into a file path pattern (no slashes, no leading dot)."""
    return bool(_USER_NAME.fullmatch(name))


def _is_key_type(word: str) -> bool:
    return word in KEY_TYPES or word.endswith(CERT_SUFFIX)


def parse_options(text: str) -> tuple[list[tuple[str, str | None]], str]:
    """Split the leading options off an authorized_keys line, as sshd's auth-options.c does.

    Options are comma-separated `name` or `name="value"` items; values may contain commas and
    backslash-escaped quotes. Names are case-insensitive. Returns (options, rest of line).
    """
    options: list[tuple[str, str | None]] = []
    i, n = 0, len(text)
    while True:
        m = re.match(r"[A-Za-z0-9_-]+", text[i:])
        if not m:
            raise OptionsSyntaxError(f"bad option name at column {i + 1}")
        name = m.group(0).lower()
        i += m.end()
        value: str | None = None
        if i < n and text[i] == "=":
            i += 1
            if i >= n or text[i] != '"':
                raise OptionsSyntaxError(f"option {name!r}: value must be quoted")
            i += 1
            chars = []
            while True:
                if i >= n:
                    raise OptionsSyntaxError(f"option {name!r}: missing closing quote")
                ch = text[i]
                if ch == "\\" and i + 1 < n and text[i + 1] == '"':
                    chars.append('"')
                    i += 2
                    continue
                if ch == '"':
                    i += 1
                    break
                chars.append(ch)
                i += 1
            value = "".join(chars)
        options.append((name, value))
        if i < n and text[i] == ",":
            i += 1
            continue
        if i >= n or text[i] not in " \t":
            raise OptionsSyntaxError(f"unexpected character after option {name!r}")
        return options, text[i:].lstrip(" \t")


class OptionError(ValueError):
    """An option this line cannot be honoured with: the line refuses to authorize."""


@dataclass(frozen=True)
class KeyOptions:
    """What an authorized_keys line's options mean to conchcmd (forwarding is always off)."""

    command: str | None = None
    from_patterns: tuple[str, ...] | None = None
    expiry: float | None = None  # seconds since the epoch; the key is refused from then on
    pty: bool = True
    cert_authority: bool = False
    principals: tuple[str, ...] | None = None
    environment: tuple[str, ...] = ()


def parse_expiry(value: str) -> float:
    """OpenSSH's expiry-time: YYYYMMDD[HHMM[SS]], local time, or UTC with a trailing Z."""
    m = _EXPIRY.fullmatch(value)
    if not m:
        raise OptionError(f"expiry-time {value!r} is not YYYYMMDD[HHMM[SS]][Z]")
    digits = (m.group(1) + (m.group(2) or "0000")).ljust(14, "0")
    try:
        when = datetime.strptime(digits, "%Y%m%d%H%M%S")
    except ValueError:
        raise OptionError(f"expiry-time {value!r} is not a valid date") from None
    if m.group(4):
        return when.replace(tzinfo=UTC).timestamp()
    return time.mktime(when.timetuple())


def interpret_options(options: list[tuple[str, str | None]], *, permit_environment: bool = False) -> KeyOptions:
    """Apply options in order, as sshd does (`restrict,pty` allows a pty; `pty,restrict` does not)."""
    seen: set[str] = set()
    fields: dict[str, Any] = {}
    environment: list[str] = []
    for name, value in options:
        if name not in SUPPORTED_OPTIONS:
            raise OptionError(f"option {name!r} is not supported")
        if (name in VALUE_OPTIONS) != (value is not None):
            raise OptionError(f"option {name!r} {'needs' if name in VALUE_OPTIONS else 'takes no'} value")
        if name in SINGLE_OPTIONS and name in seen:
            raise OptionError(f"option {name!r} given twice")
        seen.add(name)
        if name == "command":
            fields["command"] = value
        elif name == "from":
            assert value is not None
            try:
                fields["from_patterns"] = tuple(split_patterns(value))
            except PatternError as e:
                raise OptionError(f"from=: {e}") from None
        elif name == "expiry-time":
            assert value is not None
            fields["expiry"] = parse_expiry(value)
        elif name == "principals":
            assert value is not None
            fields["principals"] = tuple(p.strip() for p in value.split(",") if p.strip())
        elif name == "environment":
            if not permit_environment:
                raise OptionError("environment= is not permitted (permit_user_environment is off)")
            assert value is not None
            environment.append(value)
        elif name in ("restrict", "no-pty"):
            fields["pty"] = False
        elif name == "pty":
            fields["pty"] = True
        elif name == "cert-authority":
            fields["cert_authority"] = True
    return KeyOptions(**fields, environment=tuple(environment))


@dataclass(frozen=True)
class AuthorizedKey:
    """One usable line of an authorized_keys file."""

    key: Key
    blob: bytes
    options: tuple[tuple[str, str | None], ...]
    comment: str
    source: str  # "FILE:LINE", for log lines
    meaning: KeyOptions = KeyOptions()
    refused: str | None = None  # why this line cannot authorize, if it cannot

    @property
    def unsupported_options(self) -> list[str]:
        return [name for name, _ in self.options if name not in SUPPORTED_OPTIONS]


@dataclass(frozen=True)
class ParsedFile:
    entries: tuple[AuthorizedKey, ...]
    problems: tuple[str, ...]


def parse_authorized_keys(text: str, source: str, *, permit_environment: bool = False) -> ParsedFile:
    """Parse a whole authorized_keys file; bad lines become problems, never exceptions."""
    entries = []
    problems = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        where = f"{source}:{number}"
        if not line or line.startswith("#"):
            continue
        options: list[tuple[str, str | None]] = []
        rest = line
        first = line.split(None, 1)[0]
        if not _is_key_type(first):
            try:
                options, rest = parse_options(line)
            except OptionsSyntaxError as e:
                problems.append(f"{where}: line refused: {e}")
                continue
        parts = rest.split(None, 2)
        if len(parts) < 2 or not _is_key_type(parts[0]):
            problems.append(f"{where}: line refused: no key type and key")
            continue
        key_type, b64 = parts[0], parts[1]
        comment = parts[2] if len(parts) > 2 else ""
        if key_type.endswith(CERT_SUFFIX):
            problems.append(f"{where}: line refused: certificates are not accepted here")
            continue
        try:
            blob = base64.b64decode(b64, validate=True)
            key = Key.fromString(blob)
        except (ValueError, BadKeyError, struct.error, IndexError) as e:
            problems.append(f"{where}: line refused: bad key ({type(e).__name__})")
            continue
        if key.sshType().decode() != key_type:
            problems.append(f"{where}: line refused: key type {key_type} does not match the key")
            continue
        try:
            meaning = interpret_options(options, permit_environment=permit_environment)
            refused = None
        except OptionError as e:
            meaning, refused = KeyOptions(), str(e)
            problems.append(f"{where}: line refused: {refused}")
        entries.append(AuthorizedKey(key, blob, tuple(options), comment, where, meaning, refused))
    return ParsedFile(tuple(entries), tuple(problems))


class AuthorizedKeysFiles:
    """Per-user authorized_keys files from a `%u` path pattern, read at authentication time.

    Every attempt checks the file's ownership and modes and those of the directories above it
    (`strict_modes`, see filetrust.py), so a loosened file is refused at the next login. Parsed
    files are cached by (inode, size, mtime), so an unchanged file is not read again, and an
    edited file is picked up by the next login without a restart.
    """

    def __init__(self, pattern: str, *, permit_environment: bool = False, trust: FileTrust | None = None):
        self.pattern = pattern
        self.permit_environment = permit_environment
        self.trust = trust or FileTrust()
        self._cache: dict[str, tuple[tuple[int, int, int], ParsedFile]] = {}

    def path_for(self, user: str) -> str | None:
        if not valid_user_name(user):
            return None
        return self.pattern.replace("%%", "\0").replace("%u", user).replace("\0", "%")

    def entries_for(self, user: str) -> tuple[AuthorizedKey, ...]:
        path = self.path_for(user)
        if path is None:
            return ()
        try:
            with CheckedFile(path, self.trust) as f:
                signature = (f.stat.st_ino, f.stat.st_size, f.stat.st_mtime_ns)
                cached = self._cache.get(path)
                if cached and cached[0] == signature:
                    return cached[1].entries
                text = f.read().decode("utf-8", errors="replace")
        except UntrustedFile as e:
            self._cache.pop(path, None)
            log.warn("Ignoring {path}: {reason}", path=path, reason=e.problem.reason)
            return ()
        except FileNotFoundError:
            self._cache.pop(path, None)
            return ()
        except OSError as e:
            self._cache.pop(path, None)
            log.warn("Cannot read {path}: {error}", path=path, error=e.strerror)
            return ()
        parsed = parse_authorized_keys(text, path, permit_environment=self.permit_environment)
        for problem in parsed.problems:
            log.warn("{problem}", problem=problem)
        self._cache[path] = (signature, parsed)
        return parsed.entries

    def find_all(self, user: str, blob: bytes) -> list[AuthorizedKey]:
        """The user's lines for this key (cert-authority lines authorize only certificates)."""
        return [e for e in self.entries_for(user) if e.blob == blob and not e.meaning.cert_authority]

    def find(self, user: str, blob: bytes) -> AuthorizedKey | None:
        """The user's first line for this key, if any."""
        lines = self.find_all(user, blob)
        return lines[0] if lines else None

    def authorities(self, user: str) -> list[AuthorizedKey]:
        """The user's cert-authority lines: CAs whose certificates may log in as this user."""
        return [e for e in self.entries_for(user) if e.meaning.cert_authority]
