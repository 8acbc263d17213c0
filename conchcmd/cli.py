"""The command-line edge: argparse subcommands; the only module that imports the global reactor."""

from __future__ import annotations

import argparse
import os
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from twisted.conch.ssh.keys import BadKeyError, EncryptedKeyError, Key
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from conchcmd import __version__
from conchcmd.audit import LOG_NAMESPACE
from conchcmd.authorized_keys import AuthorizedKeysFiles, fingerprint, valid_user_name
from conchcmd.config import Config, ConfigError, load_config
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
    sub = parser.add_subparsers(dest="command", required=True)

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
    created = ensure_host_keys(config.host_keys_dir, rsa_too=args.rsa)
    try:
        keys = load_host_keys(config.host_keys_dir)
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
    try:
        key = Key.fromString(line.encode())
    except EncryptedKeyError:
        raise CliError(f"{args.pubkey_file} is a PRIVATE key; give the .pub file", EXIT_USAGE) from None
    except (BadKeyError, ValueError, IndexError, struct.error):
        raise CliError(f"{args.pubkey_file} is not an OpenSSH public key", EXIT_USAGE) from None
    if not key.isPublic():
        raise CliError(f"{args.pubkey_file} is a PRIVATE key; give the .pub file", EXIT_USAGE)
    files = AuthorizedKeysFiles(config.authorized_keys)
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
    return EXIT_OK


def _no_users_hint(config: Config) -> str | None:
    """How to add a user, if the authorized_keys pattern's directory has no user files yet."""
    pattern = Path(config.authorized_keys)
    if "%u" not in pattern.name or "%u" in str(pattern.parent):
        return None
    directory = pattern.parent
    if directory.is_dir() and any(p.is_file() for p in directory.iterdir()):
        return None
    config_arg = f" --config {config.source}" if config.source else ""
    return (
        "No users are configured yet. Authorize a key, for example:\n"
        f"    conchcmd adduser{config_arg} admin ~/.ssh/id_ed25519.pub\n"
        "then connect with: ssh -p PORT admin@HOST"
    )


def cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    from twisted.internet import reactor as global_reactor
    from twisted.internet.endpoints import serverFromString
    from twisted.python.threadpool import ThreadPool

    from conchcmd.app import ThreadRunner, build_server
    from conchcmd.audit import AuditLog

    reactor: Any = global_reactor
    config = _load(args)
    listen = tuple(args.listen) if args.listen else config.listen
    _start_logging(out)
    for path in ensure_host_keys(config.host_keys_dir):
        out.write(f"conchcmd: created host key {path}\n")
    try:
        host_keys = load_host_keys(config.host_keys_dir)
    except HostKeyError as e:
        raise CliError(f"refusing to start: {e}") from None
    try:
        audit = AuditLog.open(config.audit_log, reactor)
    except OSError as e:
        raise CliError(f"cannot open audit log {config.audit_log}: {e.strerror}") from None
    pool = ThreadPool(minthreads=0, maxthreads=config.comphash.max_concurrent + 2, name="conchcmd")
    server = build_server(config, reactor, host_keys=host_keys, audit=audit, runner=ThreadRunner(reactor, pool))
    reactor.callWhenRunning(pool.start)
    reactor.addSystemEventTrigger("after", "shutdown", pool.stop)
    reactor.addSystemEventTrigger("after", "shutdown", audit.close)

    failures: list[str] = []
    ports: list[Any] = []

    def shutting_down() -> Any:
        """Stop accepting, tell every client why, and give connections a moment to close."""
        for port in ports:
            port.stopListening()
        return server.factory.close_all(b"server shutting down")

    reactor.addSystemEventTrigger("before", "shutdown", shutting_down)

    def listening(port: Any, description: str) -> None:
        ports.append(port)
        address = port.getHost()
        out.write(
            f"conchcmd: listening on {description} ({getattr(address, 'host', '')}:{getattr(address, 'port', '')})\n"
        )
        out.flush()

    def failed(failure: Any, description: str) -> None:
        failures.append(f"cannot listen on {description}: {failure.getErrorMessage()}")
        reactor.stop()

    def start() -> None:
        for description in listen:
            try:
                endpoint = serverFromString(reactor, description)
            except (ValueError, TypeError, KeyError) as e:
                failures.append(f"cannot listen on {description}: bad endpoint: {e}")
                reactor.stop()
                return
            d = endpoint.listen(server.factory)
            d.addCallback(listening, description)
            d.addErrback(failed, description)
        hint = _no_users_hint(config)
        if hint:
            out.write(hint + "\n")
            out.flush()

    reactor.callWhenRunning(start)
    reactor.run()
    if failures:
        raise CliError("; ".join(failures))
    return EXIT_OK


def _start_logging(out: TextIO) -> None:
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    predicate.setLogLevelForNamespace(LOG_NAMESPACE, LogLevel.info)
    observer = FilteringLogObserver(textFileLogObserver(out, timeFormat="%Y-%m-%d %H:%M:%S%z"), [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


COMMANDS = {
    "serve": cmd_serve,
    "keygen": cmd_keygen,
    "adduser": cmd_adduser,
    "check-config": cmd_check_config,
}


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args = _parser().parse_args(argv)
    out = out or sys.stdout
    try:
        return COMMANDS[args.command](args, out)
    except CliError as e:
        sys.stderr.write(f"conchcmd: {e}\n")
        return e.code
    except KeyboardInterrupt:
        return EXIT_OK


def run() -> None:
    sys.exit(main())
