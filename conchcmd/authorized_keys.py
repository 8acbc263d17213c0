"""OpenSSH authorized_keys files: a parser that keeps options, and a per-user key database.

Conch's own reader silently skips every line that starts with options; this one parses them,
so a line whose options conchcmd does not enforce is refused visibly instead (fail closed).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from twisted.conch.ssh.keys import BadKeyError, Key
from twisted.logger import Logger

from conchcmd.audit import LOG_NAMESPACE

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

#: Options this version enforces. Any other option makes its line refuse to authorize.
SUPPORTED_OPTIONS: frozenset[str] = frozenset()

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


@dataclass(frozen=True)
class AuthorizedKey:
    """One usable line of an authorized_keys file."""

    key: Key
    blob: bytes
    options: tuple[tuple[str, str | None], ...]
    comment: str
    source: str  # "FILE:LINE", for log lines

    @property
    def unsupported_options(self) -> list[str]:
        return [name for name, _ in self.options if name not in SUPPORTED_OPTIONS]


@dataclass(frozen=True)
class ParsedFile:
    entries: tuple[AuthorizedKey, ...]
    problems: tuple[str, ...]


def parse_authorized_keys(text: str, source: str) -> ParsedFile:
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
        entry = AuthorizedKey(key, blob, tuple(options), comment, where)
        if entry.unsupported_options:
            names = ", ".join(entry.unsupported_options)
            problems.append(f"{where}: line refused: option(s) not supported: {names}")
        entries.append(entry)
    return ParsedFile(tuple(entries), tuple(problems))


class AuthorizedKeysFiles:
    """Per-user authorized_keys files from a `%u` path pattern, read at authentication time.

    Parsed files are cached by (inode, size, mtime), so each login costs a stat, and an edited
    file is picked up by the next login without a restart.
    """

    def __init__(self, pattern: str, *, stat_file: Callable[[str], os.stat_result] = os.stat):
        self.pattern = pattern
        self._stat = stat_file
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
            st = self._stat(path)
        except OSError:
            self._cache.pop(path, None)
            return ()
        if stat.S_IMODE(st.st_mode) & 0o022:
            log.warn(
                "Ignoring {path}: writable by group or others; chmod 600 it",
                path=path,
            )
            return ()
        signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._cache.get(path)
        if cached and cached[0] == signature:
            return cached[1].entries
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            log.warn("Cannot read {path}: {error}", path=path, error=e.strerror)
            return ()
        parsed = parse_authorized_keys(text, path)
        for problem in parsed.problems:
            log.warn("{problem}", problem=problem)
        self._cache[path] = (signature, parsed)
        return parsed.entries

    def find(self, user: str, blob: bytes) -> AuthorizedKey | None:
        for entry in self.entries_for(user):
            if entry.blob == blob:
                return entry
        return None
