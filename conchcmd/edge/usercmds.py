"""`conchcmd users` and `conchcmd deluser`, and the public-key file reader `adduser` and `check`
share. Key files are read by the functions login uses (authorized_keys.py, auth.py), so what
`users` says is what login does.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import json
import os
import pwd
import re
import socket
import stat
import syslog
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conchcmd.core.audit import AUDIT_FILE_MODE, AUDIT_GROUP_FILE_MODE, AuditLog, sanitise, terminal_safe
from conchcmd.core.config import Config, audit_group_id, valid_user_name
from conchcmd.core.filetrust import FileTrust, file_version, path_problem, symlink_followable
from conchcmd.core.realpaths import RootsChanged, realpath_retried
from conchcmd.keys.keyfile import CERT_SUFFIX, file_lines, read_key, skip_space
from conchcmd.keys.keyparse import KeyParseError, public_key_from_line
from conchcmd.keys.sk import SK_KEY_TYPES, PubkeyAuthOptions, SkRequirements, parse_sk_public_key
from conchcmd.policy.auth import key_refusal
from conchcmd.policy.authorized_keys import (
    AuthorizedKey,
    AuthorizedKeysFiles,
    KeyFileState,
    fingerprint,
    parse_authorized_keys,
)
from conchcmd.policy.certs import CertificateRefused, RevokedKeys

#: The version of `conchcmd users --json`'s output (README: "conchcmd users").
USERS_SCHEMA = 1


class UserCommandError(Exception):
    """A failure to report as `conchcmd: message`; `usage` for bad input (exit 2), else exit 1."""

    def __init__(self, message: str, *, usage: bool = False):
        super().__init__(message)
        self.usage = usage


# -- reading a public key file (adduser, check) ------------------------------------------------------


@dataclass(frozen=True)
class PublicKeyText:
    """The first line of a .pub file, read as sshd reads an authorized_keys key."""

    line: str  # as it goes into authorized_keys
    key_type: str  # the type the line names
    blob: bytes
    certificate: bool


def read_public_key_file(path: Path, *, certificates: bool = False) -> PublicKeyText:
    """A public key (or, with `certificates`, an OpenSSH certificate) from a .pub file, or
    UserCommandError(usage) saying what the file is instead (a private key, not a key...)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise UserCommandError(f"cannot read {path}: {e.strerror}", usage=True) from None
    except UnicodeDecodeError:
        raise UserCommandError(f"{path} is not an OpenSSH public key (not UTF-8 text)", usage=True) from None
    lines = [line for _, line in file_lines(text.encode()) if line.strip(" \t\r")]
    first = lines[0].strip(" \t\r") if lines else ""
    if (first.startswith("-----BEGIN ") and "PRIVATE KEY-----" in first) or first.startswith("PuTTY-User-Key-File"):
        raise UserCommandError(f"{path} is a PRIVATE key; give the .pub file", usage=True)
    field = read_key(first + " ", skip_space(first, 0))  # read_key wants a separator after the key
    if field is None:
        raise UserCommandError(f"{path} is not an OpenSSH public key", usage=True)
    if field.key_type.endswith(CERT_SUFFIX):
        if not certificates:
            raise UserCommandError(
                f"{path} is a certificate; authorize its CA instead (trusted_user_ca_keys or a cert-authority line)",
                usage=True,
            )
        return PublicKeyText(first, field.key_type, field.blob, True)
    try:
        public_key_from_line(field)  # read as login reads it
    except KeyParseError as e:
        raise UserCommandError(f"{path} is not an OpenSSH public key ({e})", usage=True) from None
    return PublicKeyText(first, field.key_type, field.blob, False)


# -- conchcmd users ------------------------------------------------------------------------------------


def _pattern_parts(pattern: str) -> list[str]:
    """The authorized_keys pattern as literal pieces and "%u" (with "%%" a literal "%")."""
    return re.split(r"(%u)", pattern.replace("%%", "\0"))


def users_with_key_files(pattern: str) -> list[str]:
    """The user names whose authorized_keys file exists under the `%u` pattern (names login
    would accept only, and only where `path_for(name)` gives that very file)."""
    parts = _pattern_parts(pattern)
    if "%u" not in parts:
        return []  # one file for every name: no user names to find
    globbed = "".join("*" if p == "%u" else glob.escape(p.replace("\0", "%")) for p in parts)
    regex, seen = "", False
    for p in parts:
        if p == "%u":
            regex += "(?P=user)" if seen else "(?P<user>[^/]+)"
            seen = True
        else:
            regex += re.escape(p.replace("\0", "%"))
    files = AuthorizedKeysFiles(pattern)
    names = set()
    for path in glob.glob(globbed):
        match = re.fullmatch(regex, path)
        if match and valid_user_name(match["user"]) and files.path_for(match["user"]) == path:
            names.add(match["user"])
    return sorted(names)


def _option_text(name: str, value: str | None) -> str:
    if value is None:
        return name
    text = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return f'{name}="{text.replace(chr(34), chr(92) + chr(34))}"'


#: The CA key types whose certificates login verifies (with cryptography, and conchcmd.keys.sk for sk
#: certificates): no ssh-dss (SHA-1 signatures), no CA on a security key (README: `sk-ca`).
CA_KEY_TYPES = frozenset(
    {b"ssh-ed25519", b"ecdsa-sha2-nistp256", b"ecdsa-sha2-nistp384", b"ecdsa-sha2-nistp521", b"ssh-rsa"}
)


def ca_key_refusal(key_type: bytes) -> str | None:
    """Why login refuses every certificate a CA key of this type signs, or None."""
    if key_type in CA_KEY_TYPES:
        return None
    return f"{sanitise(key_type)} CA keys are not accepted (login refuses the certificates they sign)"


def line_refusal(entry: AuthorizedKey, revoked: RevokedKeys, now: float) -> str | None:
    """Why login refuses every login through this authorized_keys line, or None. A user key's
    type and size are judged by login's own rule (`auth.key_refusal`), a cert-authority line's
    CA key by the CA types login verifies. `users` and `doctor` both ask here."""
    refused = entry.refused
    if refused is None:
        refused = ca_key_refusal(entry.key.sshType()) if entry.meaning.cert_authority else key_refusal(entry.key)
    if refused is None:
        try:
            revoked.check_key(entry.blob)
        except CertificateRefused as e:
            refused = str(e)
    if refused is None and entry.meaning.expiry is not None and int(now) > entry.meaning.expiry:
        refused = "key expired (expiry-time)"
    return refused


def _security_key(entry: AuthorizedKey, options: PubkeyAuthOptions) -> dict[str, Any] | None:
    """An sk user key's application and what each of its logins must show, from its line's
    options and `pubkey_auth_options` (the rule login applies); None for any other line."""
    if entry.meaning.cert_authority or entry.key.sshType() not in SK_KEY_TYPES:
        return None
    application = parse_sk_public_key(entry.blob).application  # the reader kept only readable ones
    needs = options.requirements(
        no_touch_required=entry.meaning.no_touch_required, verify_required=entry.meaning.verify_required, where="line"
    )
    return {
        "application": application.decode("utf-8", "replace"),
        "touch_required": needs.touch,
        "verify_required": needs.verify,
    }


def _key_record(entry: AuthorizedKey, revoked: RevokedKeys, now: float, options: PubkeyAuthOptions) -> dict[str, Any]:
    refused = line_refusal(entry, revoked, now)
    return {
        "line": entry.line,
        "type": entry.key.sshType().decode("ascii"),
        "fingerprint": fingerprint(entry.blob),
        "options": [_option_text(name, value) for name, value in entry.options],
        "comment": entry.comment,
        "cert_authority": entry.meaning.cert_authority,
        "usable": refused is None,
        "refused": refused,
        "security_key": _security_key(entry, options),
    }


def _file_record(state: KeyFileState) -> dict[str, Any]:
    if state.missing:
        status, problem = "missing", None
    elif state.ignored is not None:
        status, problem = "ignored", f"{state.ignored}; fix: {state.fix}"
    elif state.error is not None:
        status, problem = "unreadable", state.error
    else:
        status, problem = "ok", None
    return {"file": state.path, "file_status": status, "file_problem": problem}


#: How much of an ignored authorized_keys file `users` reads to show what it holds.
MAX_IGNORED_BYTES = 1 << 20


def _read_ignored(path: str) -> bytes:
    """The start of a file login ignores, to show its keys: someone else may have made it, so
    a FIFO or device (not a regular file) raises OSError instead of blocking or never ending,
    and at most MAX_IGNORED_BYTES are read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        chunks, left = [], MAX_IGNORED_BYTES
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 16))):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def describe_users(config: Config, now: float) -> dict[str, Any]:
    """Every user, with each key and refused line as login sees them: `conchcmd users --json`."""
    trust = FileTrust(strict=config.strict_modes)
    files = AuthorizedKeysFiles(config.authorized_keys, permit_environment=config.permit_user_environment, trust=trust)
    revoked = RevokedKeys(config.revoked_keys, trust=trust)
    options = PubkeyAuthOptions.from_names(config.pubkey_auth_options)
    names = sorted(set(users_with_key_files(config.authorized_keys)) | set(config.users))
    users = []
    for name in names:
        state = files.read(name)
        policy = config.users.get(name)
        keys = [_key_record(e, revoked, now, options) for e in state.parsed.entries]
        refused_lines = [{"line": r.line, "reason": r.reason} for r in state.parsed.unreadable]
        if state.ignored is not None and state.path is not None:
            # Login reads nothing from it; show what it holds, each key refused with the reason.
            with contextlib.suppress(OSError):
                parsed = parse_authorized_keys(
                    _read_ignored(state.path), state.path, permit_environment=config.permit_user_environment
                )
                ignored = {"usable": False, "refused": f"file ignored: {state.ignored}"}
                keys = [{**_key_record(e, revoked, now, options), **ignored} for e in parsed.entries]
                refused_lines = [{"line": r.line, "reason": r.reason} for r in parsed.unreadable]
        users.append(
            {
                "user": name,
                **_file_record(state),
                "password": bool(policy and policy.password_bcrypt),
                "commands": sorted(policy.commands) if policy and policy.commands is not None else None,
                "comphash_roots": list(policy.comphash_roots) if policy and policy.comphash_roots is not None else None,
                "keys": keys,
                "refused_lines": refused_lines,
            }
        )
    return {
        "schema": USERS_SCHEMA,
        "config": str(config.source) if config.source else None,
        "authorized_keys": config.authorized_keys,
        "users": users,
    }


def format_users(report: dict[str, Any]) -> str:
    """`conchcmd users` for people: a block per user, a line per key or refused line."""

    def safe(text: str) -> str:
        return terminal_safe(text, single_line=True)

    out = []
    for user in report["users"]:
        terms = []
        if user["password"]:
            terms.append("password")
        if user["commands"] is not None:
            terms.append("commands: " + (", ".join(user["commands"]) or "help, exit only"))
        if user["comphash_roots"] is not None:
            terms.append("comphash_roots: " + ", ".join(user["comphash_roots"]))
        out.append(f"{user['user']}" + (f" ({'; '.join(terms)})" if terms else ""))
        where = safe(user["file"] or "")
        if user["file_status"] == "missing":
            out.append(f"  {where}: no such file (no keys)")
        elif user["file_status"] != "ok":
            out.append(f"  {where}: {user['file_status'].upper()}, no key in it is used: {safe(user['file_problem'])}")
        else:
            out.append(f"  {where}:")
        rows = [(k["line"], k) for k in user["keys"]] + [(r["line"], r) for r in user["refused_lines"]]
        for line, row in sorted(rows, key=lambda r: r[0]):
            if "fingerprint" not in row:
                out.append(f"    line {line}: REFUSED: {safe(row['reason'])}")
                continue
            text = f"    line {line}: {row['type']} {row['fingerprint']}"
            if row["options"]:
                text += " options " + safe(",".join(row["options"]))
            if row["comment"]:
                text += f" ({safe(row['comment'])})"
            sk = row["security_key"]
            if sk is not None:
                needs = SkRequirements(touch=sk["touch_required"], verify=sk["verify_required"]).describe()
                text += f" [security key ({safe(sk['application'])}): {needs}]"
            if not row["usable"]:
                text += f": REFUSED: {safe(row['refused'])}"
            out.append(text)
    if not report["users"]:
        out.append(f"no users (no file matches {report['authorized_keys']}, no [users.*] table)")
    return "\n".join(out) + "\n"


# -- conchcmd deluser ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Removed:
    """What deluser took out of a user's file."""

    path: str
    keys: list[tuple[int, str, str]]  # (line, key type, fingerprint)
    whole_file: bool


def _fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: str, data: bytes, original: os.stat_result) -> None:
    """Atomically replace `path` with `data`: a temporary file in the same directory with the
    original's mode and owner, fsync'd, renamed over it, the directory fsync'd. Refuses (and
    changes nothing) if the file changed since `original` was taken."""
    directory = os.path.dirname(path) or "."
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if (original.st_uid, original.st_gid) != (os.geteuid(), os.getegid()):
            os.fchown(fd, original.st_uid, original.st_gid)
        os.fchmod(fd, stat.S_IMODE(original.st_mode))
        os.fsync(fd)
        if file_version(os.stat(path)) != file_version(original):
            raise UserCommandError(f"{path} changed while it was being edited; nothing removed, try again")
        os.rename(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    finally:
        os.close(fd)
    _fsync_directory(directory)


def remove_keys(config: Config, user: str, fingerprints: list[str]) -> Removed:
    """Remove the user's keys named by fingerprint (every line holding one), or with none named
    the user's whole authorized_keys file. Nothing changes on any error."""
    if not valid_user_name(user):
        raise UserCommandError(f"invalid user name {user!r}", usage=True)
    for fp in fingerprints:
        if not re.fullmatch(r"SHA256:[A-Za-z0-9+/]{43}", fp):
            raise UserCommandError(f"{fp!r} is not a SHA256 fingerprint (SHA256: and 43 base64 characters)", usage=True)
    files = AuthorizedKeysFiles(config.authorized_keys, permit_environment=config.permit_user_environment)
    configured = files.path_for(user)
    assert configured is not None
    try:
        path = realpath_retried(configured)  # edit the file a symlink leads to, keep the symlink
    except RootsChanged:
        raise UserCommandError(
            f"{configured} kept changing while it was read (a symlink being swapped); nothing removed; try again"
        ) from None
    if path != os.path.abspath(configured) and os.path.exists(path):
        # Only where login would read it: a symlink planted by someone who can write the users'
        # directory must not point an operator's deluser at another file.
        problem = path_problem(configured, FileTrust(strict=config.strict_modes))
        if problem is not None:
            raise UserCommandError(
                f"{configured} leads to {path}, which login ignores: {problem.reason}; nothing removed"
            )
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UserCommandError(f"{user} has no authorized_keys file ({configured}); nothing removed") from None
    except OSError as e:
        raise UserCommandError(f"cannot read {configured}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # adduser appends under the same lock (open_for_append)
        original = os.fstat(f.fileno())
        if not stat.S_ISREG(original.st_mode):
            raise UserCommandError(f"{configured} is not a regular file; nothing removed")
        data = f.read()
        parsed = parse_authorized_keys(data, configured, permit_environment=config.permit_user_environment)
        present = {fingerprint(e.blob) for e in parsed.entries}
        unknown = [fp for fp in fingerprints if fp not in present]
        if unknown:
            raise UserCommandError(f"{user} has no key {', '.join(unknown)} in {configured}; nothing removed")
        wanted = set(fingerprints)
        taken = [e for e in parsed.entries if not wanted or fingerprint(e.blob) in wanted]
        keys = [(e.line, e.key.sshType().decode("ascii"), fingerprint(e.blob)) for e in taken]
        if not fingerprints:
            if file_version(os.stat(path)) != file_version(original):
                raise UserCommandError(f"{configured} changed while it was being read; nothing removed, try again")
            os.unlink(configured)  # what login reads: a symlink goes, not the file it leads to
            _fsync_directory(os.path.dirname(configured) or ".")
            return Removed(configured, keys, True)
        gone = {line for line, _, _ in keys}
        pieces = data.split(b"\n")
        kept = [piece for number, piece in enumerate(pieces, 1) if number not in gone]
        replace_file(path, b"\n".join(kept), original)
        return Removed(configured, keys, False)


def open_for_append(path: str) -> int:
    """A descriptor appending to `path` (created 0600), holding the lock deluser takes, on the
    file now at `path` (deluser may have renamed a new one over the one first opened)."""
    # Whoever else can write its directory may have put a symlink (to root's OpenSSH
    # authorized_keys, say) or a FIFO there: the first is not followed, the second refused.
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
    if not symlink_followable(path):
        flags |= os.O_NOFOLLOW
    while True:
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as e:
            if e.errno == errno.ELOOP:
                why = "it is a symlink in a directory others can write; not followed"
                raise OSError(errno.ELOOP, why, path) from None
            if e.errno == errno.ENXIO:
                raise OSError(errno.ENXIO, "not a regular file", path) from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, "not a regular file", path)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except FileNotFoundError:
            pass  # deleted by deluser meanwhile: create it again
        os.close(fd)


def operator_name() -> str:
    """Who ran the command, for the audit record: the effective user, and the sudo caller."""
    try:
        name = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        name = str(os.geteuid())
    caller = os.environ.get("SUDO_USER")
    return f"{name} (sudo by {caller})" if caller and caller != name else name


def deluser_report(removed: Removed, user: str, config: Config) -> list[str]:
    """What deluser prints: each key removed and where, and what still lets the user in."""
    lines = [f"{user}: removed {kind} key {fp} (line {line}) from {removed.path}" for line, kind, fp in removed.keys]
    if removed.whole_file:
        lines.append(f"{user}: deleted {removed.path}")
    policy = config.users.get(user)
    if policy is not None and policy.password_bcrypt is not None:
        where = config.source or "the configuration"
        lines.append(f"note: {user} can still log in with a password (password_bcrypt in [users.{user}] of {where})")
    if config.trusted_user_ca_keys:
        lines.append(f"note: certificates for {user} signed by a CA in {config.trusted_user_ca_keys} still log in")
    if not removed.whole_file and removed.keys:
        problem = path_problem(removed.path, FileTrust(strict=config.strict_modes))
        if problem is not None:
            lines.append(f"warning: {removed.path} is ignored by login: {problem.reason}; fix: {problem.fix}")
    return lines


def log_deluser(removed: Removed, user: str) -> None:
    """One system log line per key removed, as userdel logs: to syslog (/dev/log, facility
    authpriv), where the server's authentication lines go too. Nothing happens without a syslog."""
    syslog.openlog("conchcmd", syslog.LOG_PID, syslog.LOG_AUTHPRIV)
    try:
        for line, kind, fp in removed.keys:
            syslog.syslog(
                syslog.LOG_NOTICE,
                f"deluser: removed {kind} key {fp} of user {user} from {removed.path} line {line} by {operator_name()}",
            )
        if removed.whole_file:
            syslog.syslog(syslog.LOG_NOTICE, f"deluser: deleted {removed.path} of user {user} by {operator_name()}")
    finally:
        syslog.closelog()


class OperatorAuditFile:
    """The audit file as root appends to it from the command line when its directory belongs to
    the server's user (systemd's LogsDirectory): the name is never followed as a symlink (that
    user could point it at any file root may write), and a file root creates is given to the
    directory's owner with the mode and group the server would create it with, or the server could
    no longer write its own audit log."""

    def __init__(self, path: str, directory: os.stat_result, group: int | None):
        self.name = path
        flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            self._fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, AUDIT_FILE_MODE)
        except FileExistsError:
            self._fd = os.open(path, flags)  # ELOOP for a symlink
        else:
            try:
                os.fchown(self._fd, directory.st_uid, directory.st_gid if group is None else group)
                os.fchmod(self._fd, AUDIT_FILE_MODE if group is None else AUDIT_GROUP_FILE_MODE)
            except OSError:
                os.close(self._fd)
                raise
        if not stat.S_ISREG(os.fstat(self._fd).st_mode):
            os.close(self._fd)
            raise OSError(errno.EINVAL, "not a regular file", path)

    def write(self, line: bytes) -> None:
        view = memoryview(line)
        while view:
            view = view[os.write(self._fd, view) :]

    def reopen(self) -> None:
        """One record, then closed: nothing to reopen."""

    def close(self) -> None:
        os.close(self._fd)


def open_operator_audit(config: Config, clock: Any) -> AuditLog:
    """The audit log an operator's command (deluser) writes to, set up as `serve` sets it up: the
    same host name, audit_group and syslog_address. Raises OSError, or UserCommandError for an
    audit_group that does not exist."""
    group = audit_group_id(config.audit_group) if config.audit_group else None
    if config.audit_group and group is None:
        raise UserCommandError(f"audit_group {config.audit_group!r}: no such group")
    host = socket.gethostname()
    path = config.audit_log
    if path == "syslog" and config.log.syslog_address is not None:
        from conchcmd.core.logtargets import parse_syslog_address

        if parse_syslog_address(config.log.syslog_address).kind == "stream":
            # A stream connects on a running reactor; a one-shot command has none, and the record
            # would be dropped unsent.
            raise UserCommandError(
                f"deluser cannot send its audit record to a stream syslog_address "
                f"({config.log.syslog_address}); use udp: or unix:"
            )
    if path not in ("-", "syslog", "journal") and os.geteuid() == 0:
        directory = os.stat(os.path.dirname(path) or ".")
        if directory.st_uid != 0:
            target = OperatorAuditFile(path, directory, group)
            return AuditLog(target, clock, failure_mode=config.audit_failure, host=host)
    return AuditLog.open(
        path,
        clock,
        failure_mode=config.audit_failure,
        host=host,
        group=group,
        syslog_address=config.log.syslog_address,
        one_shot=True,  # each record sent at once or failed: deluser has no running reactor
    )


def audit_deluser(record: Callable[..., None], removed: Removed, user: str) -> None:
    record(
        "deluser",
        user=user,
        fingerprints=[fp for _, _, fp in removed.keys],
        lines=[line for line, _, _ in removed.keys],
        file=removed.path,
        whole_file=removed.whole_file,
        operator=operator_name(),
    )


def users_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2) + "\n"
