"""End-to-end harness: the real `conchcmd serve` in a subprocess, the real OpenSSH client against it.

Everything is made per test session under pytest's tmp dir: client keys (ssh-keygen), a syslog
file with long lines, a comphash root with awkward file names and a large sparse file. Each test
module starts its own server (port 0 on 127.0.0.1) and stops it with SIGTERM at teardown, where
the server's log is checked for the expected lines and for tracebacks.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.serverfiles import ServerFiles, hermetic_ssh, server_fleet, wait_for

SSH = shutil.which("ssh")
HAVE_OPENSSH = SSH is not None and shutil.which("ssh-keygen") is not None
LISTENING = re.compile(rb"conchcmd: listening on .* \(127\.0\.0\.1:(\d+)\)")
SYSLOG_LINES = 12_000
BIG_SPARSE_SIZE = 16 << 30  # hashing 16 GiB of holes takes seconds: long enough to interrupt
START_TIMEOUT = 15.0
SSH_TIMEOUT = 30.0


# -- client keys -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientKeys:
    """Private key paths (the public key is PATH.pub)."""

    ed25519: Path
    rsa: Path
    ecdsa: Path
    stranger: Path  # never authorized anywhere
    optioned: Path  # authorized only on a line with options
    spare: Path  # authorized at run time by the tests (adduser, file mode changes)

    @staticmethod
    def pub(key: Path) -> Path:
        return key.with_name(key.name + ".pub")

    @staticmethod
    def pub_line(key: Path) -> str:
        return ClientKeys.pub(key).read_text().strip()

    @staticmethod
    def fingerprint(key: Path) -> str:
        """The SHA256 fingerprint as `ssh-keygen -lf` prints it."""
        out = subprocess.run(
            ["ssh-keygen", "-lf", str(ClientKeys.pub(key))], capture_output=True, check=True, timeout=10
        ).stdout.decode()
        return out.split()[1]


@pytest.fixture(scope="session")
def askpass(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], dict[str, str]]:
    """askpass(secret) -> the environment for ssh to answer its password prompt with `secret`."""
    directory = tmp_path_factory.mktemp("askpass")
    scripts = itertools.count()

    def make(secret: str) -> dict[str, str]:
        script = directory / f"askpass{next(scripts)}.sh"
        secret_file = directory / f"{script.name}.secret"
        secret_file.write_text(secret + "\n")
        script.write_text(f'#!/bin/sh\ncat "{secret_file}"\n')
        script.chmod(0o700)
        return {"SSH_ASKPASS": str(script), "SSH_ASKPASS_REQUIRE": "force"}

    return make


@pytest.fixture(scope="session")
def client_keys(tmp_path_factory: pytest.TempPathFactory) -> ClientKeys:
    if not HAVE_OPENSSH:
        pytest.skip("the OpenSSH client (ssh, ssh-keygen) is not installed")
    directory = tmp_path_factory.mktemp("client-keys")
    specs = {
        "ed25519": ["-t", "ed25519"],
        "rsa": ["-t", "rsa", "-b", "3072"],
        "ecdsa": ["-t", "ecdsa", "-b", "256"],
        "stranger": ["-t", "ed25519"],
        "optioned": ["-t", "ed25519"],
        "spare": ["-t", "ed25519"],
    }
    procs = []
    for name, args in specs.items():
        path = directory / f"id_{name}"
        procs.append(
            subprocess.Popen(
                ["ssh-keygen", "-q", *args, "-N", "", "-C", f"e2e-{name}", "-f", str(path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        )
    for proc in procs:
        assert proc.wait(timeout=60) == 0, "ssh-keygen failed"
    paths = {name: directory / f"id_{name}" for name in specs}
    for path in paths.values():
        path.chmod(0o600)
    return ClientKeys(**paths)


# -- data the commands work on ---------------------------------------------------------------


@dataclass(frozen=True)
class Data:
    syslog: Path
    root: Path
    outside: Path
    small: Path
    medium: Path
    empty: Path
    space: Path
    backslash: Path
    newline: Path
    carriage: Path
    utf8: Path
    not_utf8: Path
    directory: Path
    fifo: Path
    link_in: Path
    link_out: Path
    big: Path
    esc_line_index: int  # index (from the end, 1-based) of the syslog line that holds an ESC


def _syslog_lines(count: int) -> Iterator[bytes]:
    """Deterministic log lines of 900..2100 bytes (10000 of them are about 15 MB)."""
    alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789 ABCDEFGHIJKLMNOPQRSTUVWXYZ.,:;-_=+()[]"
    filler = alphabet * 40
    for i in range(count):
        prefix = f"Nov 26 12:{(i // 60) % 60:02d}:{i % 60:02d} e2ehost app[{1000 + i}]: event {i}".encode()
        length = 900 + (i * 7919) % 1200
        start = (i * 31) % len(alphabet)
        body = filler[start : start + length]
        if i % 7 == 0:
            body += b"\ttabbed caf\xc3\xa9"
        yield prefix + b" " + body + b"\n"


@pytest.fixture(scope="session")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    base = tmp_path_factory.mktemp("data")
    syslog = base / "syslog"
    lines = list(_syslog_lines(SYSLOG_LINES))
    esc_index = 5
    lines[-esc_index] = lines[-esc_index].rstrip(b"\n") + b" \x1b[31mred alert\x1b[0m\n"
    syslog.write_bytes(b"".join(lines))

    root = base / "root"
    root.mkdir()
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"not for you\n")

    small = root / "small.txt"
    small.write_bytes(b"hello, conchcmd\n")
    medium = root / "medium.bin"
    medium.write_bytes(random.Random(1).randbytes(3 * 1024 * 1024 + 17))  # several read chunks
    empty = root / "empty"
    empty.write_bytes(b"")
    space = root / "with space.txt"
    space.write_bytes(b"spaced out\n")
    backslash = root / "back\\slash.txt"
    backslash.write_bytes(b"escaped\n")
    newline = root / "new\nline.txt"
    newline.write_bytes(b"two\nlines\n")
    carriage = root / "car\rriage.txt"
    carriage.write_bytes(b"return\n")
    utf8 = root / "\u00fcnic\u00f6de.txt"
    utf8.write_bytes("gr\u00fc\u00dfe\n".encode())
    not_utf8 = root / os.fsdecode(b"caf\xe9-latin1.bin")  # a name that is not UTF-8
    not_utf8.write_bytes(b"bytes\n")
    directory = root / "sub"
    directory.mkdir()
    fifo = root / "fifo"
    os.mkfifo(fifo)
    link_in = root / "link-in"
    link_in.symlink_to("small.txt")
    link_out = root / "link-out"
    link_out.symlink_to(outside / "secret.txt")
    big = root / "big.sparse"
    with open(big, "wb") as f:
        f.truncate(BIG_SPARSE_SIZE)
    return Data(
        syslog=syslog,
        root=root,
        outside=outside / "secret.txt",
        small=small,
        medium=medium,
        empty=empty,
        space=space,
        backslash=backslash,
        newline=newline,
        carriage=carriage,
        utf8=utf8,
        not_utf8=not_utf8,
        directory=directory,
        fifo=fifo,
        link_in=link_in,
        link_out=link_out,
        big=big,
        esc_line_index=esc_index,
    )


# -- the server ------------------------------------------------------------------------------


_sources = itertools.count()


@pytest.fixture(scope="session")
def socket_activated() -> Callable[[int, str], dict[str, Any]]:
    """socket_activated(fd, domain) -> make_server/Server arguments for a server started as systemd
    starts a socket-activated unit: the socket `fd` as fd 3, LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES
    set, `listen` its endpoint (`domain` INET or INET6)."""
    return _socket_activated


def _socket_activated(listener_fd: int, domain: str) -> dict[str, Any]:
    return {
        "listen": f"systemd:domain={domain}:index=0",
        "command": lambda s: [
            "sh",
            "-c",
            'LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=conchcmd.socket exec "$0" -m conchcmd serve --config "$1"',
            sys.executable,
            str(s.config),
        ],
        # The inherited socket must be fd 3 in the child; every other fd of ours is CLOEXEC.
        "popen_extra": {"preexec_fn": lambda: os.dup2(listener_fd, 3), "close_fds": False},
    }


def next_source() -> str:
    """A loopback address not used before in this test run (127.1.0.2, 127.1.0.3, ...)."""
    n = next(_sources)
    return f"127.1.{n // 250}.{n % 250 + 2}"


@dataclass
class Server(ServerFiles):
    """One running `conchcmd serve` and helpers to talk to it with the OpenSSH client."""

    base: Path
    keys: ClientKeys
    data: Data
    max_clients: int = 10
    lastlog_path: Path | str | list[str] | None = None  # default: the session's syslog file; "journal" works
    env_extra: dict[str, str] | None = None  # extra environment for the server process
    #: Configuration laid over the defaults (tables merge), e.g. {"users": {"carol": {...}}}.
    settings: dict[str, Any] = field(default_factory=dict)
    listen: str = "tcp:0:interface=127.0.0.1"  # the config's endpoint (e.g. "systemd:domain=INET:index=0")
    #: The server command, given the Server (default: `python -m conchcmd serve --config CONFIG`).
    command: Callable[[Server], Sequence[str]] | None = None
    popen_extra: dict[str, Any] | None = None  # extra subprocess.Popen arguments (pass_fds, preexec_fn)
    stop_status: int = 0  # the exit status expected after SIGTERM (twistd re-raises it: -15)
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    returncode: int | None = None
    _log_file: Any = field(default=None, repr=False)

    @property
    def host_keys_dir(self) -> Path:
        return self.base / "keys"

    def authorized_keys(self, user: str) -> Path:
        return self.base / "keys" / "authorized_keys" / user

    def authorize(self, user: str, *lines: str, mode: int = 0o600) -> Path:
        path = self.authorized_keys(user)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(line + "\n" for line in lines))
        path.chmod(mode)
        return path

    def default_settings(self) -> dict[str, Any]:
        """The configuration every test server starts from."""
        lastlog = self.lastlog_path or self.data.syslog
        return {
            "listen": [self.listen],
            "host_keys_dir": "keys",
            "authorized_keys": "keys/authorized_keys/%u",
            "max_clients": self.max_clients,
            "audit_log": "audit.jsonl",
            "lastlog": {
                "path": lastlog if isinstance(lastlog, list) else str(lastlog),
                "lines": 10,
                "max_lines": 10000,
            },
            "comphash": {"roots": [str(self.data.root)]},
        }

    def write_config(self) -> None:
        self.write_settings(self.default_settings(), self.settings)

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.write_config()
        keys = self.keys
        self.authorize("alice", keys.pub_line(keys.ed25519), keys.pub_line(keys.rsa), keys.pub_line(keys.ecdsa))
        self.authorize("bob", f'command="lastlog" {keys.pub_line(keys.optioned)}')
        self.spawn(self.command(self) if self.command is not None else None, self.env_extra, **(self.popen_extra or {}))
        self.port = self.wait_listening(LISTENING, START_TIMEOUT)

    # -- logs ------------------------------------------------------------------------------

    def wait_no_clients(self, timeout: float = 10.0) -> None:
        """Wait until no TCP connection to the server's port is established (the server has seen
        every client go: an ssh client may exit before the server reads its close)."""

        def established() -> int:
            count = 0
            for table in ("/proc/net/tcp", "/proc/net/tcp6"):
                with open(table) as f:
                    for row in f.readlines()[1:]:
                        local, state = row.split()[1], row.split()[3]
                        count += state == "01" and int(local.rsplit(":", 1)[1], 16) == self.port
            return count

        wait_for(lambda: established() == 0, timeout, f"no client connected to port {self.port}")

    # -- the OpenSSH client ------------------------------------------------------------------

    def ssh_argv(
        self,
        remote: str | None = None,
        *,
        key: Path | None = None,
        user: str = "alice",
        options: Sequence[str] = (),
        log_level: str = "ERROR",
        source: str | None = None,
    ) -> list[str]:
        """ssh argv; `options` come first, since for ssh the first value given for an option wins.

        Each call comes from its own loopback address unless `source` is given: the server
        penalises a source after repeated failures, and tests must not penalise each other.
        """
        return hermetic_ssh(
            self.port,
            key or self.keys.ed25519,
            user,
            source or next_source(),
            remote=remote,
            options=options,
            log_level=log_level,
            ssh=SSH or "ssh",
        )

    def ssh(
        self,
        remote: str | None = None,
        *,
        input: bytes | None = None,
        timeout: float = SSH_TIMEOUT,
        env: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            self.ssh_argv(remote, **kwargs),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            env=client_env(env),
        )

    def popen(self, remote: str | None = None, *, stdin: Any = subprocess.DEVNULL, **kwargs: Any) -> subprocess.Popen:
        return subprocess.Popen(
            self.ssh_argv(remote, **kwargs),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=client_env(None),
        )

    # -- references and polling, for the tests ----------------------------------------------

    @staticmethod
    def tail(path: Path, lines: int) -> bytes:
        """What `tail -n LINES PATH` prints."""
        return subprocess.run(["tail", "-n", str(lines), str(path)], capture_output=True, check=True, timeout=30).stdout

    @staticmethod
    def coreutils(tool: str, *paths: Path) -> bytes:
        """What a coreutils checksum tool (sha256sum, b2sum, ...) prints for the paths."""
        return subprocess.run([tool, *map(str, paths)], capture_output=True, check=True, timeout=60).stdout

    wait_for = staticmethod(wait_for)

    # -- checks at teardown ------------------------------------------------------------------

    def check_log(self, *, expect_activity: bool = True) -> None:
        text = self.log_text()
        assert "Traceback" not in text, f"traceback in the server log:\n{text}"
        assert "Unhandled" not in text, f"unhandled error in the server log:\n{text}"
        assert "PRIVATE KEY" not in text, "key material in the server log"
        if expect_activity:
            for needle in ("Client connection from", "Cmd received from", "Lost client connection"):
                assert needle in text, f"{needle!r} missing from the server log"


def client_env(extra: dict[str, str] | None) -> dict[str, str]:
    """The environment for ssh: no agent, no DISPLAY unless a test asks for one."""
    env = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "DISPLAY", "SSH_ASKPASS")}
    env.update(extra or {})
    return env


def stop_and_check(server: Server, *, expect_activity: bool = True) -> None:
    server.stop()
    assert server.returncode == server.stop_status, (
        f"server exited with {server.returncode} after SIGTERM:\n{server.log_text()}"
    )
    server.check_log(expect_activity=expect_activity)


@pytest.fixture(scope="module")
def make_server(
    tmp_path_factory: pytest.TempPathFactory, client_keys: ClientKeys, data: Data
) -> Iterator[Callable[..., Server]]:
    """Start servers for this module; all are stopped and their logs checked at module teardown."""

    def make(**settings: Any) -> Server:
        return Server(tmp_path_factory.mktemp("server"), client_keys, data, **settings)

    yield from server_fleet(make, stop_and_check)


@pytest.fixture(scope="module")
def server(make_server: Callable[..., Server]) -> Server:
    """The module's server: max_clients 10, users alice (3 keys) and bob (an options line)."""
    return make_server()


@pytest.fixture(scope="session")
def server_class() -> type[Server]:
    """The Server class, for tests that start and stop a server themselves (and check its log)."""
    return Server
