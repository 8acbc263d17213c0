"""The command-line edge: argparse subcommands; the only module that imports the global reactor."""

from __future__ import annotations

import argparse
import base64
import os
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from cryptography.exceptions import UnsupportedAlgorithm
from twisted.conch.ssh.keys import BadKeyError, Key
from twisted.logger import globalLogBeginner

from conchcmd import __version__
from conchcmd.authorized_keys import AuthorizedKeysFiles, fingerprint, valid_user_name
from conchcmd.config import COMMAND_NAMES, Config, ConfigError, load_config
from conchcmd.filetrust import FileTrust, path_problem
from conchcmd.hostkeys import HostKeyError, ensure_host_keys, load_host_keys

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
    return parser


def _load(args: argparse.Namespace) -> Config:
    try:
        return load_config(args.config, cwd=Path.cwd())
    except ConfigError as e:
        raise CliError(f"configuration error: {e}", EXIT_USAGE) from None


def cmd_check_config(args: argparse.Namespace, out: TextIO) -> int:
    out.write(_load(args).describe())
    return EXIT_OK


def cmd_keygen(args: argparse.Namespace, out: TextIO) -> int:
    config = _load(args)
    trust = FileTrust(strict=config.strict_modes)
    try:
        created = ensure_host_keys(config.host_keys_dir, rsa_too=args.rsa, trust=trust)
        keys = load_host_keys(config.host_keys_dir, trust=trust)
    except HostKeyError as e:
        raise CliError(str(e)) from None
    for path in keys.files:
        key = Key.fromFile(str(path))
        state = "created" if path in created else "exists"
        out.write(f"{state}: {path} {key.sshType().decode()} {fingerprint(key.public().blob())}\n")
    return EXIT_OK


def cmd_adduser(args: argparse.Namespace, out: TextIO) -> int:
    config = _load(args)
    if not valid_user_name(args.user):
        raise CliError(f"invalid user name {args.user!r}: use letters, digits, '.', '_' and '-'", EXIT_USAGE)
    try:
        line = args.pubkey_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise CliError(f"cannot read {args.pubkey_file}: {e}", EXIT_USAGE) from None
    if line.startswith("-----BEGIN ") and "PRIVATE KEY-----" in line.split("\n", 1)[0]:
        raise CliError(f"{args.pubkey_file} is a PRIVATE key; give the .pub file", EXIT_USAGE)
    try:
        # Only the OpenSSH public key format: Conch's format guessing sends text starting with
        # '(' or a blob starting with '{' to its LSH/SEXP parser, which fails with an AssertionError.
        key = Key.fromString(line.encode(), type="public_openssh")
        if key.sshType().decode() != line.split()[0]:
            raise ValueError("key type does not match the key")
    except (BadKeyError, ValueError, IndexError, struct.error, NotImplementedError, UnsupportedAlgorithm):
        # cryptography: NotImplementedError for a compressed EC point, UnsupportedAlgorithm for an unknown type
        raise CliError(f"{args.pubkey_file} is not an OpenSSH public key", EXIT_USAGE) from None
    files = AuthorizedKeysFiles(config.authorized_keys, trust=FileTrust(strict=config.strict_modes))
    path = Path(files.path_for(args.user) or "")
    blob = key.blob()
    if files.find(args.user, blob) is not None:
        out.write(f"{args.user}: key {fingerprint(blob)} is already in {path}\n")
        return EXIT_OK
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        if f.tell() and not path.read_bytes().endswith(b"\n"):
            f.write("\n")
        f.write(line.splitlines()[0] + "\n")
    out.write(f"{args.user}: added {key.sshType().decode()} key {fingerprint(blob)} to {path}\n")
    problem = path_problem(str(path), files.trust)
    if problem is not None:
        out.write(f"warning: {path} is ignored until this is fixed: {problem.reason}; fix: {problem.fix}\n")
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace, out: TextIO) -> int:
    from conchcmd.doctor import PROBLEM, examine

    try:
        config = load_config(args.config, cwd=Path.cwd())
    except ConfigError as e:
        out.write(f"problem  configuration: {e}\n         fix: edit the file; `conchcmd check-config` shows it\n")
        return EXIT_USAGE
    findings = examine(config)
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

    from conchcmd.auth import KeyAuthorizer, KeyRefused
    from conchcmd.certs import CERT_SIGNATURES
    from conchcmd.commands import UsageError, split_command_line

    config = _load(args)
    try:
        line = args.key.read_text(encoding="utf-8").split()
        kind = line[0].encode()
        blob = base64.b64decode(line[1], validate=True)
    except (OSError, UnicodeDecodeError, IndexError, ValueError) as e:
        raise CliError(f"cannot read a public key or certificate from {args.key}: {e}", EXIT_USAGE) from None
    algorithm = b"rsa-sha2-512" if kind == b"ssh-rsa" else kind
    if kind == b"ssh-rsa-cert-v01@openssh.com":
        algorithm = b"rsa-sha2-512-cert-v01@openssh.com"
    clock = Clock()
    clock.advance(time.time())
    authorizer = KeyAuthorizer.from_config(config, clock)
    try:
        identity = authorizer.authorize(args.user, algorithm, blob, args.peer).identity
    except KeyRefused as e:
        out.write(f"login: REFUSED: {e}\n")
        path = authorizer.keys.path_for(args.user)
        problem = path_problem(path, authorizer.keys.trust) if path else None
        if problem is not None:
            out.write(f"note: {path} is ignored: {problem.reason}; fix: {problem.fix}\n")
        return EXIT_FAILURE
    grant = identity.grant
    terms = [f"by {grant.source}"]
    if grant.forced_command is not None:
        terms.append(f"forced command {grant.forced_command!r}")
    terms.append("pty allowed" if grant.pty else "no pty")
    if algorithm in CERT_SIGNATURES and identity.certificate:
        terms.append(f"CA {identity.certificate['ca_fingerprint']}")
    out.write(f"login: allowed for {args.user} from {args.peer or 'any address'} ({'; '.join(terms)})\n")
    if args.command is None and grant.forced_command is None:
        return EXIT_OK
    policy = config.users.get(args.user)
    line_to_run = grant.forced_command if grant.forced_command is not None else args.command
    try:
        argv = split_command_line(line_to_run)
    except UsageError as e:
        out.write(f"command: REFUSED: {e.message}\n")
        return EXIT_FAILURE
    name = argv[0] if argv else ""
    if name not in COMMAND_NAMES:
        out.write(f"command: REFUSED: {name}: command not found (status 127)\n")
        return EXIT_FAILURE
    if policy is not None and not policy.permits(name):
        out.write(f"command: REFUSED: {name}: not permitted for {args.user} (status 126)\n")
        return EXIT_FAILURE
    forced = " (forced; the client's command is ignored)" if grant.forced_command is not None else ""
    out.write(f"command: allowed: {line_to_run}{forced}\n")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    import signal

    from twisted.internet import reactor as global_reactor

    from conchcmd.service import ConchcmdService, StartupError

    reactor: Any = global_reactor
    config = _load(args)
    observer = _start_logging(config, reactor, out)
    listen = tuple(args.listen) if args.listen else None
    service = ConchcmdService(config, reactor, out, listen=listen, config_path=config.source)
    try:
        service.prepare()
    except StartupError as e:
        raise CliError(str(e)) from None
    failures: list[str] = []
    service.ready.addErrback(lambda f: failures.append(f.getErrorMessage()))
    reactor.callWhenRunning(service.startService)
    reactor.addSystemEventTrigger("before", "shutdown", lambda: _stop(service, observer))
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(service.reload))
    reactor.run()
    if failures:
        raise CliError("; ".join(failures))
    return EXIT_OK


def _start_logging(config: Config, reactor: Any, out: TextIO) -> Any:
    """Send the log to `[log] target`; returns the observer (to close at shutdown)."""
    from conchcmd.logtargets import filtered, log_observer

    target = log_observer(config.log.target, config.log.syslog_address, reactor, out, sys.stderr)
    globalLogBeginner.beginLoggingTo([filtered(target)], redirectStandardIO=False)
    return target


def _stop(service: Any, observer: Any) -> Any:
    """Stop the service, then let the log target send the lines the stop wrote (the reactor
    drops unsent data when it shuts down)."""
    from twisted.internet import defer

    from conchcmd.logtargets import close_observer

    return defer.maybeDeferred(service.stopService).addBoth(lambda _: close_observer(observer))


COMMANDS = {
    "serve": cmd_serve,
    "keygen": cmd_keygen,
    "adduser": cmd_adduser,
    "check-config": cmd_check_config,
    "hash-password": cmd_hash_password,
    "check": cmd_check,
    "doctor": cmd_doctor,
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
