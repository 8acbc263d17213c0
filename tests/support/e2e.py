"""End-to-end harness: the real `conchcmd serve` in a subprocess, the real OpenSSH client against it.

Everything is made per test session under pytest's tmp dir: client keys (ssh-keygen), a syslog
file with long lines, a comphash root with awkward file names and a large sparse file. Each test
module starts its own server (port 0 on 127.0.0.1) and stops it with SIGTERM at teardown, where
the server's log is checked for the expected lines and for tracebacks."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.serverfiles import ServerFiles, hermetic_ssh, wait_for

SSH = shutil.which("ssh")


HAVE_OPENSSH = SSH is not None and shutil.which("ssh-keygen") is not None


LISTENING = re.compile(rb"conchcmd: listening on .* \(127\.0\.0\.1:(\d+)\)")


SYSLOG_LINES = 12_000


BIG_SPARSE_SIZE = 16 << 30  # hashing 16 GiB of holes takes seconds: long enough to interrupt


START_TIMEOUT = 15.0


SSH_TIMEOUT = 30.0


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


def syslog_lines(count: int) -> Iterator[bytes]:
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


_sources = itertools.count()


def socket_activation(listener_fd: int, domain: str) -> dict[str, Any]:
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
