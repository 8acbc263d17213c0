"""The command-line edge: argparse subcommands; `serve` installs the global reactor (core/reactor.py) and runs it."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from twisted.logger import globalLogBeginner

from conchcmd import __version__
from conchcmd.core.config import Config, ConfigError, load_config, valid_user_name
from conchcmd.core.endpoints import endpoint_problem
from conchcmd.core.fdlimit import limit_warning
from conchcmd.core.filetrust import FileTrust, path_problem
from conchcmd.edge.usercmds import (
    PublicKeyText,
    UserCommandError,
    audit_deluser,
    deluser_report,
    describe_users,
    format_users,
    log_deluser,
    open_for_append,
    open_operator_audit,
    read_public_key_file,
    remove_keys,
    users_json,
)
from conchcmd.keys.keyparse import ed25519_key_refusal, public_key_from_blob
from conchcmd.policy.auth import key_refusal
from conchcmd.policy.authorized_keys import AuthorizedKeysFiles, fingerprint
from conchcmd.wire.hostkeys import HostKeyError, ensure_host_keys, load_host_keys

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """A failure to report as `conchcmd: message` with an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILURE):
        super().__init__(message)
        self.code = code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conchcmd", description="A hardened SSH server for ops commands.")
    parser.add_argument("--version", action="version", version=f"conchcmd {__version__}")
    sub = parser.add_subparsers(dest="subcommand", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", type=Path, help="config file (default: ./conchcmd.toml if present)")
        return p

    serve = with_config(sub.add_parser("serve", help="run the SSH server"))
    serve.add_argument(
        "--listen", action="append", metavar="ENDPOINT", help="Twisted endpoint string (repeatable; replaces `listen`)"
    )
    keygen = with_config(sub.add_parser("keygen", help="create missing host keys in the keys directory"))
    keygen.add_argument("--rsa", action="store_true", help="also create an RSA (3072-bit) host key")
    adduser = with_config(sub.add_parser("adduser", help="authorize a public key for a user"))
    adduser.add_argument("user")
    adduser.add_argument("pubkey_file", type=Path)
    with_config(sub.add_parser("check-config", help="validate and print the effective configuration"))
    with_config(sub.add_parser("doctor", help="check the configuration and its files; say what to fix"))
    hash_password = sub.add_parser("hash-password", help="read a password from stdin, print its bcrypt hash")
    hash_password.add_argument("--rounds", type=int, default=12, help="bcrypt cost (default 12)")
    check = with_config(sub.add_parser("check", help="would this login and command be allowed? (a dry run)"))
    check.add_argument("--user", required=True)
    check.add_argument("--key", required=True, type=Path, help="public key or certificate file (.pub)")
    check.add_argument("--from", dest="peer", metavar="ADDR", help="client address (for from= and source-address)")
    check.add_argument("--command", help='the command line, e.g. "comphash /etc/hosts"')
    users = with_config(sub.add_parser("users", help="list every user, their keys and refused key lines"))
    users.add_argument("--json", action="store_true", help="JSON output (schema in the README)")
    deluser = with_config(sub.add_parser("deluser", help="remove a user's keys (all, or those named)"))
    deluser.add_argument("user")
    deluser.add_argument("fingerprints", nargs="*", metavar="FINGERPRINT", help="SHA256:... (default: all keys)")
    contrib = sub.add_parser("contrib", help="list the shipped service files, or print one")
    contrib.add_argument("name", nargs="?", help="the file to print (e.g. conchcmd.service)")
    return parser


def _load(args: argparse.Namespace) -> Config:
    try:
        return load_config(args.config, cwd=Path.cwd())
    except ConfigError as e:
        raise CliError(f"configuration error: {e}", EXIT_USAGE) from None


def _say_config(config: Config, out: TextIO) -> None:
    """Which configuration a command that writes files used: without a file, the defaults are
    relative to the working directory, and a second host key or user file would go unnoticed."""
    if config.source is not None:
        out.write(f"config: {config.source}\n")
    else:
        cwd = Path.cwd()
        out.write(f"config: none (no --config FILE, no conchcmd.toml here): built-in defaults relative to {cwd}\n")


def cmd_check_config(args: argparse.Namespace, out: TextIO) -> int:
    config = _load(args)
    out.write(config.describe())
    warning = limit_warning(config)
    if warning is not None:  # a TOML comment: the output stays a valid configuration
        out.write(f"# warning: {warning} (LimitNOFILE=, ulimit -Hn)\n")
    return EXIT_OK


def cmd_keygen(args: argparse.Namespace, out: TextIO) -> int:
    config = _load(args)
    _say_config(config, out)
    trust = FileTrust(strict=config.strict_modes)
    try:
        created = ensure_host_keys(config.host_keys_dir, rsa_too=args.rsa, trust=trust)
        keys = load_host_keys(config.host_keys_dir, trust=trust)
    except HostKeyError as e:
        raise CliError(str(e)) from None
    for path, key in zip(keys.files, keys.private.values(), strict=True):
        state = "created" if path in created else "exists"
        out.write(f"{state}: {path} {key.sshType().decode()} {fingerprint(key.public().blob())}\n")
    return EXIT_OK


def cmd_adduser(args: argparse.Namespace, out: TextIO) -> int:
    config = _load(args)
    if not valid_user_name(args.user):
        raise CliError(f"invalid user name {args.user!r}: use letters, digits, '.', '_' and '-'", EXIT_USAGE)
    pub = _read_public_key(args.pubkey_file, certificates=False)
    key = public_key_from_blob(pub.blob)  # _read_public_key has read it already
    files = AuthorizedKeysFiles(config.authorized_keys, trust=FileTrust(strict=config.strict_modes))
    path = Path(files.path_for(args.user) or "")
    _say_config(config, out)
    blob = key.blob()
    if files.find(args.user, blob) is not None:
        out.write(f"{args.user}: key {fingerprint(blob)} is already in {path}\n")
        return EXIT_OK
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = open_for_append(str(path))
    except OSError as e:
        raise CliError(f"cannot write {path}: {e.strerror}; nothing added") from None
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        if f.tell() and not path.read_bytes().endswith(b"\n"):
            f.write("\n")
        f.write(pub.line + "\n")
    out.write(f"{args.user}: added {key.sshType().decode()} key {fingerprint(blob)} to {path}\n")
    refusal = key_refusal(key) or ed25519_key_refusal(key)  # the second: the line is refused when read
    if refusal is not None:
        out.write(f"warning: login refuses this key: {refusal}\n")
    problem = path_problem(str(path), files.trust)
    if problem is not None:
        out.write(f"warning: {path} is ignored until this is fixed: {problem.reason}; fix: {problem.fix}\n")
    return EXIT_OK


def _read_public_key(path: Path, *, certificates: bool) -> PublicKeyText:
    """adduser's and check's one reader of a .pub file (the same messages for both)."""
    try:
        return read_public_key_file(path, certificates=certificates)
    except UserCommandError as e:
        raise CliError(str(e), EXIT_USAGE if e.usage else EXIT_FAILURE) from None


def cmd_users(args: argparse.Namespace, out: TextIO) -> int:
    report = describe_users(_load(args), time.time())
    out.write(users_json(report) if args.json else format_users(report))
    return EXIT_OK


def cmd_deluser(args: argparse.Namespace, out: TextIO) -> int:
    from twisted.internet.task import Clock

    from conchcmd.core.audit import AuditLog

    config = _load(args)
    clock = Clock()
    clock.advance(time.time())
    try:
        audit: AuditLog | None = open_operator_audit(config, clock)
    except (OSError, UserCommandError) as e:
        reason = e.strerror if isinstance(e, OSError) else str(e)
        if config.audit_failure == "refuse":
            raise CliError(f"cannot write the audit log {config.audit_log}: {reason}; nothing removed") from None
        sys.stderr.write(f"conchcmd: warning: cannot write the audit log {config.audit_log}: {reason}\n")
        audit = None
    try:
        removed = remove_keys(config, args.user, args.fingerprints)
    except (UserCommandError, OSError) as e:
        if audit is not None:
            audit.close()
        if isinstance(e, OSError):
            raise CliError(f"cannot edit {e.filename or 'the file'}: {e.strerror}; nothing removed") from None
        raise CliError(str(e), EXIT_USAGE if e.usage else EXIT_FAILURE) from None
    for line in deluser_report(removed, args.user, config):
        out.write(line + "\n")
    log_deluser(removed, args.user)
    if audit is not None:
        audit_deluser(audit.record, removed, args.user)
        failure = audit.failure()
        audit.close()
        if failure is not None:
            raise CliError(f"removed, but the audit record could not be written: {failure}")
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace, out: TextIO) -> int:
    from conchcmd.edge.doctor import PROBLEM, Invocation, examine

    try:
        config = load_config(args.config, cwd=Path.cwd())
    except ConfigError as e:
        config_arg = f" --config {shlex.quote(str(e.source))}" if e.source else ""
        out.write(f"problem  configuration: {e}\n")
        out.write(f"         fix: edit the file; `conchcmd check-config{config_arg}` shows it\n")
        return EXIT_USAGE
    findings = examine(config, Invocation.current())
    for finding in findings:
        out.write(finding.line() + "\n")
    problems = sum(f.level == PROBLEM for f in findings)
    out.write(f"{problems} problem(s)\n" if problems else "all well\n")
    return EXIT_FAILURE if problems else EXIT_OK


def cmd_hash_password(args: argparse.Namespace, out: TextIO) -> int:
    import getpass

    import bcrypt

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise CliError("the passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        raise CliError("empty password", EXIT_USAGE)
    if not 4 <= args.rounds <= 31:
        raise CliError("--rounds must be between 4 and 31", EXIT_USAGE)
    out.write(bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=args.rounds)).decode() + "\n")
    return EXIT_OK


def cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    from twisted.internet.task import Clock

    from conchcmd.commands.builtin import build_command_table
    from conchcmd.commands.framework import ExitStatus, InlineRunner, dry_run
    from conchcmd.core.audit import terminal_safe
    from conchcmd.core.config import UserPolicy
    from conchcmd.keys.keyfile import LINE_KEY_TYPES
    from conchcmd.policy.auth import KeyAuthorizer, KeyRefused
    from conchcmd.policy.certs import CERT_SIGNATURES

    config = _load(args)
    pub = _read_public_key(args.key, certificates=True)
    kind, blob = LINE_KEY_TYPES[pub.key_type].encode(), pub.blob  # the blob's type ("rsa-sha2-256" is ssh-rsa)
    algorithm = b"rsa-sha2-512" if kind == b"ssh-rsa" else kind
    if kind == b"ssh-rsa-cert-v01@openssh.com":
        algorithm = b"rsa-sha2-512-cert-v01@openssh.com"
    clock = Clock()
    clock.advance(time.time())
    authorizer = KeyAuthorizer.from_config(config, clock)
    try:
        authorized = authorizer.authorize(args.user, algorithm, blob, args.peer)
    except KeyRefused as e:
        out.write(f"login: REFUSED: {terminal_safe(str(e), single_line=True)}\n")  # the reason may quote a certificate
        path = authorizer.keys.path_for(args.user)
        problem = path_problem(path, authorizer.keys.trust) if path else None
        if problem is not None:
            out.write(f"note: {path} is ignored: {problem.reason}; fix: {problem.fix}\n")
        return EXIT_FAILURE
    identity, grant = authorized.identity, authorized.identity.grant
    terms = [f"by {grant.source}"]
    if grant.forced_command is not None:
        terms.append(f"forced command {grant.forced_command!r}")
    terms.append("pty allowed" if grant.pty else "no pty")
    if algorithm in CERT_SIGNATURES and identity.certificate:
        terms.append(f"CA {identity.certificate['ca_fingerprint']}")
    if authorized.sk is not None:  # what the token's signature must show
        terms.append(f"security key: {authorized.requirements.describe()}")
    out.write(f"login: allowed for {args.user} from {args.peer or 'any address'} ({'; '.join(terms)})\n")
    if args.command is None and grant.forced_command is None:
        return EXIT_OK
    policy = config.users.get(args.user) or UserPolicy()
    line_to_run = grant.forced_command if grant.forced_command is not None else args.command
    assert line_to_run is not None
    # The server's own table and decisions (commands.dry_run: parse, look up, policy, then the
    # command's preflight: comphash opens each path inside the roots as the server would).
    table = build_command_table(config, InlineRunner(), clock)
    verdict = dry_run(table, line_to_run, policy)
    if verdict.status is not None:
        for refusal in verdict.refusals:
            verdict_word = "would fail" if refusal.status == ExitStatus.FAILED else "REFUSED"
            reason = terminal_safe(refusal.message, single_line=True)
            out.write(f"command: {verdict_word}: {reason} (status {refusal.status})\n")
        return EXIT_FAILURE
    forced = " (forced; the client's command is ignored)" if grant.forced_command is not None else ""
    unchecked = "" if verdict.checked_arguments else " (its arguments are checked only when it runs)"
    out.write(f"command: allowed: {terminal_safe(line_to_run, single_line=True)}{forced}{unchecked}\n")
    return EXIT_OK


def cmd_contrib(args: argparse.Namespace, out: TextIO) -> int:
    from conchcmd.edge.shipped import find, shipped_files

    files = shipped_files()
    if args.name is None:
        width = max(len(f.name) for f in files)
        for f in files:
            where = f" (install as {f.install_as})" if f.install_as else ""
            out.write(f"{f.name:<{width}}  {f.description}{where}\n")
        out.write("Print one with: conchcmd contrib NAME\n")
        return EXIT_OK
    shipped = find(args.name)
    if shipped is None:
        names = ", ".join(f.name for f in files)
        raise CliError(f"no shipped file {args.name!r}; the files are: {names}", EXIT_USAGE)
    out.write(shipped.text())
    return EXIT_OK


def cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    import signal

    from conchcmd.core.reactor import install_reactor

    reactor: Any = install_reactor()  # first: Conch's userauth imports the global reactor

    from conchcmd.edge.service import ConchcmdService, StartupError

    config = _load(args)
    listen = tuple(args.listen) if args.listen else None
    for description in listen or ():
        problem = endpoint_problem(description)
        if problem is not None:
            raise CliError(f"--listen: {description!r} is not an endpoint Twisted can listen on: {problem}", EXIT_USAGE)
    observer = _start_logging(config, reactor, out)
    service = ConchcmdService(config, reactor, out, listen=listen, config_path=config.source)
    try:
        service.prepare()
    except StartupError as e:
        raise CliError(str(e)) from None
    failures: list[str] = []
    service.ready.addCallbacks(_freeze_startup_objects, lambda f: failures.append(f.getErrorMessage()))
    reactor.callWhenRunning(service.startService)
    reactor.callWhenRunning(_note_stop_signals, service)
    reactor.addSystemEventTrigger("before", "shutdown", lambda: _stop(service, observer))
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(service.reload))
    reactor.run()
    if failures:
        raise CliError("; ".join(failures))
    return EXIT_OK


def _freeze_startup_objects(_: object) -> None:
    """Once listening: what startup built (modules, config, keys, the service) lives as long as the
    process, so Python's full collections stop scanning it (gc.freeze: ~27 ms -> ~1 ms each)."""
    import gc

    gc.freeze()


def _note_stop_signals(service: Any) -> None:
    """Wrap the reactor's SIGTERM and SIGINT handlers (installed once it runs) so that the stop
    line and `server_stop` name the signal."""
    import signal

    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)
        if not callable(previous):
            continue

        def handler(number: int, frame: Any, previous: Any = previous) -> None:
            service.stop_reason = f"signal {signal.Signals(number).name}"
            _ignore_stop_signals()
            previous(number, frame)

        signal.signal(signum, handler)


def _ignore_stop_signals() -> None:
    """Once shutdown has begun, a second SIGTERM or SIGINT changes nothing (as with sshd): the
    shutdown goes on, writes its records and exits 0. Twisted's handler would call reactor.stop
    again (an error), and Python's finalisation restores SIG_DFL for handlers it installed, so a
    signal in its last moments killed the process (status -15); an ignored signal stays ignored."""
    import signal

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)


def _start_logging(config: Config, reactor: Any, out: TextIO) -> Any:
    """Send the log to `[log] target`; returns the observer (to close at shutdown)."""
    from conchcmd.core.logtargets import filtered, log_observer

    target = log_observer(config.log.target, config.log.syslog_address, reactor, out, sys.stderr)
    globalLogBeginner.beginLoggingTo([filtered(target)], redirectStandardIO=False)
    return target


def _stop(service: Any, observer: Any) -> Any:
    """Stop the service, then let the log target send the lines the stop wrote (the reactor
    drops unsent data when it shuts down)."""
    from twisted.internet import defer

    from conchcmd.core.logtargets import close_observer

    _ignore_stop_signals()  # whatever began the shutdown
    return defer.maybeDeferred(service.stopService).addBoth(lambda _: close_observer(observer))


COMMANDS = {
    "serve": cmd_serve,
    "keygen": cmd_keygen,
    "adduser": cmd_adduser,
    "check-config": cmd_check_config,
    "hash-password": cmd_hash_password,
    "check": cmd_check,
    "doctor": cmd_doctor,
    "users": cmd_users,
    "deluser": cmd_deluser,
    "contrib": cmd_contrib,
}


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args = _parser().parse_args(argv)
    out = out or sys.stdout
    try:
        return COMMANDS[args.subcommand](args, out)
    except CliError as e:
        sys.stderr.write(f"conchcmd: {e}\n")
        return e.code
    except KeyboardInterrupt:
        return EXIT_OK


def run() -> None:
    sys.exit(main())
