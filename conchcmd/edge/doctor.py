"""`conchcmd doctor`: look over a configuration and its files, and say what to fix."""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from twisted.conch.ssh.common import getNS

from conchcmd.commands.framework import InlineRunner
from conchcmd.commands.lastlog import FileTail, JournalTail, build_sources, empty_journal_message
from conchcmd.core.addrspace import global_ranges
from conchcmd.core.config import Config
from conchcmd.core.endpoints import proxied_description
from conchcmd.core.fdlimit import descriptors_needed, limit_warning
from conchcmd.core.filetrust import FileTrust, UntrustedFile, directory_problem, path_problem, read_trusted
from conchcmd.core.logtargets import JOURNAL_SOCKET, parse_syslog_address
from conchcmd.core.realpaths import RootsChanged, realpath_retried
from conchcmd.edge.usercmds import ca_key_refusal, line_refusal
from conchcmd.policy.auth import bcrypt_cost
from conchcmd.policy.authorized_keys import fingerprint, parse_authorized_keys
from conchcmd.policy.certs import CertificateRefused, RevokedKeys, TrustedCAs
from conchcmd.wire.framing import usable_key_exchanges
from conchcmd.wire.hostkeys import (
    HOST_KEY_FILES,
    EncryptedHostKey,
    HostKeyError,
    check_private_mode,
    directory_untrusted,
    load_host_keys,
)

OK, WARNING, PROBLEM = "ok", "warning", "problem"


@dataclass(frozen=True)
class Finding:
    level: str
    message: str
    fix: str = ""

    def line(self) -> str:
        return f"{self.level:8} {self.message}" + (f"\n         fix: {self.fix}" if self.fix else "")


@dataclass(frozen=True)
class Invocation:
    """Who runs the doctor, where and when: the fixes it suggests must work from there, and a key
    past its expiry-time is refused from then on."""

    euid: int
    cwd: Path
    now: float = field(default_factory=time.time)

    @classmethod
    def current(cls) -> Invocation:
        return cls(euid=os.geteuid(), cwd=Path.cwd())


def command_hint(config: Config, invocation: Invocation, command: str, arguments: str = "", *, runner: str = "") -> str:
    """`conchcmd COMMAND ...` acting on this configuration: with its `--config FILE`, or without a
    file in the directory the built-in defaults were resolved against (they are relative to it).
    `runner` goes before `conchcmd` (e.g. `setpriv --reuid=USER ... `)."""
    tail = f" {arguments}" if arguments else ""
    if config.source is not None:
        return f"`{runner}conchcmd {command} --config {shlex.quote(str(config.source))}{tail}`"
    return f"`cd {shlex.quote(str(invocation.cwd))} && {runner}conchcmd {command}{tail}`"


def examine(config: Config, invocation: Invocation | None = None) -> list[Finding]:
    """Every finding, in the order an operator would go through them."""
    invocation = invocation or Invocation.current()
    return [
        *_privileges(config, invocation),
        *_host_keys(config, invocation),
        *_authorized_keys(config, invocation),
        *_log_source(config),
        *_roots(config),
        *_certificates(config),
        *_passwords(config),
        *_algorithms(config),
        *_audit_log(config),
        *_proxies(config),
        *_descriptors(config),
    ]


def _descriptors(config: Config) -> Iterator[Finding]:
    """The hard RLIMIT_NOFILE (serve raises the soft one to it) against what the limits may need.
    It is this process's: a systemd unit sets its own (LimitNOFILE=)."""
    warning = limit_warning(config)
    if warning is not None:
        yield Finding(
            WARNING,
            warning,
            "LimitNOFILE= in the systemd unit (the shipped one sets 65536), `ulimit -Hn` where serve starts, "
            "or lower max_clients / max_startups",
        )
    else:
        yield Finding(OK, f"file descriptors: the limits may need {descriptors_needed(config)}, within the hard limit")


def _privileges(config: Config, invocation: Invocation) -> Iterator[Finding]:
    if invocation.euid == 0:
        as_service = "setpriv --reuid=conchcmd --regid=conchcmd --groups=adm,systemd-journal "  # the unit's groups
        doctor = command_hint(config, invocation, "doctor", runner=as_service)
        yield Finding(
            WARNING,
            "running as root: serve should not (a flaw in conchcmd or Twisted would then give root, and "
            "comphash could hash any file); these checks also see what root sees, not the server's user",
            "create a system user (`useradd --system --no-create-home conchcmd`), give it the key files, "
            f"and run serve and doctor as it (`User=conchcmd` in the unit; {doctor})",
        )


def _host_keys(config: Config, invocation: Invocation) -> Iterator[Finding]:
    directory = config.host_keys_dir
    trust = FileTrust(strict=config.strict_modes)
    unsafe = directory_untrusted(directory, trust)
    if unsafe is not None:
        yield Finding(PROBLEM, f"host key directory {directory}: {unsafe.reason}: serve refuses to start", unsafe.fix)
        return
    present = [directory / name for name in HOST_KEY_FILES if (directory / name).exists()]
    if not present:
        keygen = command_hint(config, invocation, "keygen")
        yield Finding(WARNING, f"no host key in {directory} yet", f"{keygen} (serve also creates one)")
        return
    mode_problems = False
    for path in present:
        try:
            check_private_mode(path)
        except HostKeyError as e:
            mode_problems = True
            yield Finding(PROBLEM, str(e), f"chmod 600 {path}")
            continue
        problem = path_problem(str(path), trust)
        if problem is not None:
            mode_problems = True
            yield Finding(PROBLEM, f"host key {path}: {problem.reason}: serve refuses to start", problem.fix)
    if mode_problems:
        return  # loading would fail on the same modes
    try:
        keys = load_host_keys(directory, trust=trust)
    except EncryptedHostKey as e:
        yield Finding(
            PROBLEM,
            f"host key {e.path} is encrypted with a passphrase: serve refuses to start "
            "(conchcmd needs an unencrypted host key: nobody is there to type the passphrase)",
            e.fix,
        )
        return
    except HostKeyError as e:
        yield Finding(PROBLEM, str(e), f"move the file away, then {command_hint(config, invocation, 'keygen')}")
        return
    names = ", ".join(k.decode() for k in keys.private)
    yield Finding(OK, f"host keys: {names}")


def _authorized_keys(config: Config, invocation: Invocation) -> Iterator[Finding]:
    pattern = Path(config.authorized_keys)
    if "%u" not in pattern.name or "%u" in str(pattern.parent):
        yield Finding(OK, f"authorized_keys pattern {pattern} (not a single directory: files not listed)")
        return
    directory = pattern.parent
    trust = FileTrust(strict=config.strict_modes)
    unsafe = directory_problem(str(directory), trust) if directory.is_dir() else None
    if unsafe is not None:
        yield Finding(PROBLEM, f"authorized_keys in {directory}: {unsafe.reason}: every file is ignored", unsafe.fix)
        return
    files = sorted(p for p in directory.iterdir() if p.is_file()) if directory.is_dir() else []
    if not files:
        yield Finding(
            WARNING,
            f"no users: {directory} has no authorized_keys files",
            command_hint(config, invocation, "adduser", "USER KEY.pub"),
        )
        return
    revoked = RevokedKeys(config.revoked_keys, trust=trust)
    try:
        revoked.load()
    except CertificateRefused:
        revoked = RevokedKeys(None)  # a list that refuses every key is reported once, under revoked_keys
    for path in files:
        try:
            data = read_trusted(str(path), trust)
        except UntrustedFile as e:
            yield Finding(PROBLEM, f"{path}: {e.problem.reason}: it is ignored", e.problem.fix)
            continue
        except OSError as e:
            yield Finding(PROBLEM, f"cannot read {path}: {e.strerror}", "make it readable by the server's user")
            continue
        parsed = parse_authorized_keys(data, str(path), permit_environment=config.permit_user_environment)
        for problem in parsed.problems:
            yield Finding(PROBLEM, problem, "fix or remove that line (see the README's option list)")
        usable = []
        for entry in parsed.entries:
            refused = line_refusal(entry, revoked, invocation.now)
            if refused is None:
                usable.append(entry)
            elif entry.refused is None:  # refused options are among parsed.problems already
                fp = fingerprint(entry.blob)
                yield Finding(
                    PROBLEM,
                    f"{entry.source}: key {fp} is refused at login: {refused}",
                    "replace it (an ed25519 or hardware key: `ssh-keygen -t ed25519-sk`), then "
                    + command_hint(config, invocation, "deluser", f"{path.name} {fp}"),
                )
        yield Finding(OK if usable else WARNING, f"user {path.name}: {len(usable)} usable key line(s)")


def _log_source(config: Config) -> Iterator[Finding]:
    # The same sources and the same test `lastlog` uses; nothing is read, so no runner or reactor.
    skipped: list[str] = []
    for source in build_sources(config.lastlog, InlineRunner(), reactor=None, clock=None):  # type: ignore[arg-type]
        if not source.available():
            if isinstance(source, FileTail):
                skipped.append(source.path)
            continue
        if isinstance(source, FileTail) and not os.access(source.path, os.R_OK):
            yield Finding(PROBLEM, f"{source.path} is not readable by this user", "run as a user in the log's group")
        else:
            yield _log_has_lines(source, skipped)
        return
    tried = ", ".join(config.lastlog.sources)
    yield Finding(PROBLEM, f"no system log found (tried {tried})", "set [lastlog] path to the log file")


def _log_has_lines(source: FileTail | JournalTail, missing: list[str]) -> Finding:
    """Where `lastlog` would print nothing: an empty file (status 0, a note) or a journal with no
    entries this user may read (status 1). Checked as the user running doctor."""
    if isinstance(source, FileTail):
        with contextlib.suppress(OSError):
            if os.stat(source.path).st_size == 0:
                return Finding(
                    WARNING,
                    f"lastlog reads {source.path}, which is empty: it prints nothing until something is logged",
                    "check that the system logger writes there, or set [lastlog] path",
                )
    elif not source.has_entries_blocking():
        return Finding(
            WARNING,
            f"lastlog reads the systemd journal, but {empty_journal_message(missing, advice=False)}: "
            "lastlog fails (status 1)",
            "run doctor as the server's user; add that user to the systemd-journal group, or set [lastlog] path",
        )
    return Finding(OK, f"lastlog reads {source.describe()}")


def _root_changing(root: str, where: str) -> Finding:
    return Finding(
        WARNING,
        f"{where}comphash root {root} kept changing while doctor resolved it (a symlink being swapped)",
        "run doctor again once the deploy that swaps it is done",
    )


def _is_everything(root: str) -> bool | None:
    """Whether a comphash root resolves to "/", or None when it kept changing while resolved (a
    symlink swapped for a directory between realpath's lstat and readlink, ROOT_RETRIES times)."""
    try:
        return realpath_retried(root) == "/"
    except RootsChanged:
        return None


def _roots(config: Config) -> Iterator[Finding]:
    for root in config.comphash.roots:
        everything = _is_everything(root)
        if everything is None:
            yield _root_changing(root, "")
        elif everything:
            yield Finding(
                WARNING,
                f"comphash roots include {root}: any file the server's user can read may be hashed "
                "(a hash of a short secret, or of a known file, tells its content)",
                'list only the directories operators need in [comphash] roots, e.g. ["/etc/ssh", "/srv/releases"]',
            )
        elif not Path(root).is_dir():
            yield Finding(PROBLEM, f"comphash root {root} is not a directory", "fix [comphash] roots")
    for name, policy in config.users.items():
        for root in policy.comphash_roots or ():
            everything = _is_everything(root)
            if everything is None:
                yield _root_changing(root, f"users.{name}: ")
            elif everything:
                yield Finding(
                    WARNING,
                    f"users.{name}: comphash_roots include {root}: {name} may hash any file the server's user can read",
                    f"list only the directories {name} needs in [users.{name}] comphash_roots",
                )
            elif not Path(root).is_dir():
                yield Finding(
                    PROBLEM,
                    f"users.{name}: comphash root {root} is not a directory",
                    f"fix [users.{name}] comphash_roots",
                )
    yield Finding(OK, f"comphash roots: {', '.join(config.comphash.roots)}")


def _certificates(config: Config) -> Iterator[Finding]:
    trust = FileTrust(strict=config.strict_modes)
    if config.trusted_user_ca_keys:
        path = Path(config.trusted_user_ca_keys)
        unsafe = path_problem(str(path), trust)
        if not path.exists():
            yield Finding(PROBLEM, f"trusted_user_ca_keys {path} does not exist", "create it or remove the setting")
        elif unsafe is not None:
            yield Finding(PROBLEM, f"trusted_user_ca_keys {path}: {unsafe.reason}: no CA is trusted", unsafe.fix)
        else:
            trusted = TrustedCAs(str(path), trust=trust)
            trusted.load()
            if trusted.unreadable_line is not None:
                yield Finding(
                    PROBLEM,
                    f"trusted_user_ca_keys {path}:{trusted.unreadable_line} is not a CA public key: "
                    "no CA after it is trusted (sshd stops there too)",
                    "fix or remove that line",
                )
            for weak in trusted.refused:
                yield Finding(
                    PROBLEM,
                    f"trusted_user_ca_keys {path}:{weak.line}: CA key refused: {weak.reason}",
                    "remove that line (sshd would trust it: anyone could mint certificates under it)",
                )
            level = OK if trusted.blobs else WARNING
            yield Finding(level, f"trusted_user_ca_keys: {len(trusted.blobs)} CA key(s)")
            for blob in sorted(trusted.blobs):
                refused = ca_key_refusal(getNS(blob)[0])
                if refused is not None:
                    yield Finding(
                        PROBLEM,
                        f"trusted_user_ca_keys: CA {fingerprint(blob)}: {refused}",
                        "sign user certificates with an ed25519, ECDSA or RSA CA key kept offline",
                    )
    if config.revoked_keys:
        unsafe = path_problem(config.revoked_keys, trust)
        if unsafe is not None:
            yield Finding(
                PROBLEM, f"revoked_keys {config.revoked_keys}: {unsafe.reason}: every key is refused", unsafe.fix
            )
            return
        revoked = RevokedKeys(config.revoked_keys, trust=trust)
        try:
            revoked.load()  # a list that cannot be read refuses every key
        except CertificateRefused as e:
            yield Finding(
                PROBLEM,
                f"revoked_keys: {e}: every key is refused",
                f"fix {config.revoked_keys} (a public key, `serial:` or `id:` per line)",
            )
            return
        yield Finding(OK, f"revoked_keys: {len(revoked.blobs)} key(s), {len(revoked.serials)} serial range(s)")


def _passwords(config: Config) -> Iterator[Finding]:
    """Failures cost the same for every name only if every password hash has the same cost: a
    cheaper hash answers sooner, which tells that name has a password."""
    costs = {name: bcrypt_cost(p.password_bcrypt) for name, p in config.users.items() if p.password_bcrypt}
    if len(set(costs.values())) > 1:
        cheaper = sorted(name for name, cost in costs.items() if cost < max(costs.values()))
        yield Finding(
            WARNING,
            f"password hashes of different bcrypt costs ({', '.join(map(str, sorted(set(costs.values()))))}): "
            f"a wrong password for {', '.join(cheaper)} is answered sooner than for other names",
            "make every hash with the same cost: `conchcmd hash-password` for those users",
        )


def _algorithms(config: Config) -> Iterator[Finding]:
    available = usable_key_exchanges()
    kex = [k for k in config.algorithms.kex_algorithms if k.encode() in available]
    missing = [k for k in config.algorithms.kex_algorithms if k.encode() not in available]
    if missing:
        yield Finding(
            WARNING,
            f"key exchange not available in this build: {', '.join(missing)}",
            "upgrade the cryptography package (ML-KEM needs cryptography 48+ with OpenSSL 3.5+)",
        )
    if not kex:
        yield Finding(PROBLEM, "no key exchange algorithm left", "allow curve25519-sha256 in kex_algorithms")
        return
    yield Finding(OK, f"offering kex {', '.join(kex)}; ciphers {', '.join(config.algorithms.ciphers)}")


def _audit_log(config: Config) -> Iterator[Finding]:
    if config.audit_log == "-":
        yield Finding(OK, "audit log: stdout")
        return
    if config.audit_log in ("syslog", "journal"):
        yield from _audit_socket(config)
        return
    directory = Path(config.audit_log).parent
    unwritable = _audit_file_unwritable(config)
    if not os.access(directory, os.W_OK):
        yield Finding(PROBLEM, f"audit log directory {directory} is not writable", "create it or fix its owner")
    elif unwritable is not None:
        yield unwritable
    else:
        yield Finding(OK, f"audit log: {config.audit_log}")
    yield from _audit_file_mode(config)


def _audit_file_unwritable(config: Config) -> Finding | None:
    """An existing audit file this user cannot append to (e.g. created by root): serve, run as
    this user, could audit nothing. A writable directory does not help: the file is reopened by name."""
    path = config.audit_log
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or os.access(path, os.W_OK, effective_ids=True):
        return None
    owner, me = _user_name(st.st_uid), _user_name(os.geteuid())
    consequence = "every command is refused" if config.audit_failure == "refuse" else "commands run unaudited"
    return Finding(
        PROBLEM,
        f"audit log {path} is owned by {owner} with mode {stat.S_IMODE(st.st_mode):04o}: this user ({me}) "
        f"cannot write it, so serve would audit nothing ({consequence})",
        f"chown {me} {path}",
    )


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _audit_socket(config: Config) -> Iterator[Finding]:
    """`audit_log = "syslog"` or `"journal"`: the local socket the records go to must exist."""
    # The address was checked when the configuration loaded; only a Unix socket can be looked at
    # (a network address has nothing to check without sending).
    address = parse_syslog_address(config.log.syslog_address)
    socket_path = JOURNAL_SOCKET if config.audit_log == "journal" else address.path or None
    if socket_path is None:
        yield Finding(OK, f"audit log: syslog at {config.log.syslog_address}")
    elif not Path(socket_path).exists():
        yield Finding(
            PROBLEM,
            f"audit log: {config.audit_log}, but {socket_path} does not exist: every command would be refused",
            "start the syslog daemon (or journald), or set audit_log to a file",
        )
    else:
        yield Finding(OK, f"audit log: {config.audit_log} ({socket_path})")


def _audit_file_mode(config: Config) -> Iterator[Finding]:
    """An existing audit file must not be readable or writable by others (serve creates it 0600,
    or 0640 with `audit_group`, but leaves an existing file's mode alone)."""
    path = config.audit_log
    try:
        st = os.stat(path)
    except OSError:
        return  # not there yet: serve creates it with the right mode
    if not stat.S_ISREG(st.st_mode):
        return
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o007:
        yield Finding(
            PROBLEM,
            f"audit log {path} has mode {mode:04o}: others can {_access(mode & 0o007)} it",
            f"chmod o-rwx {path}",
        )
    if mode & 0o070 and not config.audit_group:
        yield Finding(
            WARNING,
            f"audit log {path} has mode {mode:04o}: its group can {_access((mode >> 3) & 0o007)} it "
            "and no audit_group is set",
            f"chmod g-rwx {path}, or set audit_group to the group that may read it",
        )


def _access(bits: int) -> str:
    """What rwx bits (0-7) allow, in words: "read and write"."""
    words = [word for bit, word in ((4, "read"), (2, "write"), (1, "execute")) if bits & bit]
    return " and ".join(words)


def _proxies(config: Config) -> Iterator[Finding]:
    """`haproxy:` listeners take the client's address from whoever `proxy_from` trusts: a list
    that matches public addresses lets anyone there claim any address (and pass from=)."""
    proxied = [d for d in config.listen if proxied_description(d) is not None]
    if not proxied:
        return
    public = global_ranges(config.proxy_from)
    if public:
        shown = ", ".join(public[:2]) + (", ..." if len(public) > 2 else "")
        yield Finding(
            PROBLEM,
            f"proxy_from {list(config.proxy_from)} trusts public addresses ({shown}): anyone there "
            "can connect to the PROXY listener and claim any client address",
            "list only your load balancers' addresses in proxy_from",
        )
        return
    yield Finding(OK, f"{', '.join(proxied)}: PROXY headers accepted from {', '.join(config.proxy_from)} only")
