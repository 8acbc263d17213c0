"""The one test server of the end-to-end and reliability layers: the real `conchcmd serve` in a
subprocess on loopback, driven with the real OpenSSH client.

Each layer gives it its own client keys (which key logs in by default, which lines each user's
authorized_keys holds) and its own data (the syslog file lastlog reads, the comphash root); the
rest (config written with tomli-w, start, the port from the `listening on` line, ssh argv, the
process's liveness and log checks, SIGTERM at the end) is the same for both."""

from __future__ import annotations

import functools
import itertools
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest

from support.serverfiles import ServerFiles, hermetic_ssh, server_fleet, wait_for

SSH = shutil.which("ssh")
HAVE_OPENSSH = SSH is not None and shutil.which("ssh-keygen") is not None
LISTENING = re.compile(rb"conchcmd: listening on .* \(127\.0\.0\.1:(\d+)\)")
START_TIMEOUT = 15.0
SSH_TIMEOUT = 30.0


class ClientKeySet(Protocol):
    """A layer's client keys, as the server needs them."""

    @property
    def default(self) -> Path:
        """The private key a client logs in with unless a test names another."""
        ...

    def authorized(self) -> Mapping[str, Sequence[str]]:
        """The authorized_keys lines written for each user before the server starts."""
        ...


class ServedData(Protocol):
    """The files a layer's server reads for its commands."""

    @property
    def syslog(self) -> Path: ...

    @property
    def root(self) -> Path: ...


def public_line(key: Path) -> str:
    """The `TYPE BASE64 COMMENT` line of private key `key`'s `.pub` file."""
    return key.with_name(key.name + ".pub").read_text().strip()


def client_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for ssh: no agent, no DISPLAY, no askpass unless a test asks for one."""
    env = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "DISPLAY", "SSH_ASKPASS")}
    env.update(extra or {})
    return env


_sources = itertools.count()


def next_source() -> str:
    """A loopback address not used before in this test run (127.1.0.2, 127.1.0.3, ...).

    The scenarios that name their sources (127.0.0.2, 127.77.0.13, ...) use addresses outside
    this range, so nothing here collides with them."""
    n = next(_sources)
    return f"127.1.{n // 250}.{n % 250 + 2}"


@dataclass
class Server(ServerFiles):
    """One running `conchcmd serve` and helpers to talk to it with the OpenSSH client."""

    base: Path
    keys: ClientKeySet
    data: ServedData
    max_clients: int = 10
    lastlog_path: Path | str | list[str] | None = None  # default: the data's syslog file; "journal" works
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

    # -- files and start -------------------------------------------------------------------

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
        for user, lines in self.keys.authorized().items():
            self.authorize(user, *lines)
        self.spawn(self.command(self) if self.command is not None else None, self.env_extra, **(self.popen_extra or {}))
        self.port = self.wait_listening(LISTENING, START_TIMEOUT)
        if self.audit_to_file():
            # the server_start record follows the listening line: a mark taken before it would count it
            wait_for(lambda: any(e["event"] == "server_start" for e in self.audit()), START_TIMEOUT, "server_start")

    def audit_to_file(self) -> bool:
        """Whether this server's audit records go to its audit.jsonl (not syslog, journal or off)."""
        merged = {**self.default_settings(), **self.settings}
        if merged.get("audit_log") != "audit.jsonl":
            return False
        # a test may point it elsewhere first (a link to /dev/full reads without end)
        return not self.audit_path.is_symlink() and (not self.audit_path.exists() or self.audit_path.is_file())

    # -- the process -----------------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def assert_alive(self) -> None:
        assert self.alive(), f"the server died (rc {self.proc and self.proc.returncode}):\n{self.log_text()[-4000:]}"

    def wait_no_clients(self, timeout: float = 10.0) -> None:
        """Wait until no TCP connection to the server's port is established (the server has seen
        every client go: an ssh client may exit before the server reads its close)."""

        # The server's end of a connection: local port = the server's port, and not a client of
        # another test bound to another 127.x address that happened to get the same port number.
        # /proc/net/tcp writes 127.0.0.1 as 0100007F; tcp6 as its IPv4-mapped form.
        ours = (f"0100007F:{self.port:04X}", f"0000000000000000FFFF00000100007F:{self.port:04X}")

        def established() -> int:
            count = 0
            for table in ("/proc/net/tcp", "/proc/net/tcp6"):
                with open(table) as f:
                    for row in f.readlines()[1:]:
                        local, state = row.split()[1], row.split()[3]
                        count += state == "01" and local in ours
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
            key or self.keys.default,
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

    def popen(
        self,
        remote: str | None = None,
        *,
        stdin: Any = subprocess.DEVNULL,
        stdout: Any = subprocess.PIPE,
        **kwargs: Any,
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.ssh_argv(remote, **kwargs), stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, env=client_env()
        )

    def timed_login(self, source: str, remote: str = "exit 0") -> tuple[subprocess.CompletedProcess[bytes], float]:
        started = time.monotonic()
        r = self.ssh(remote, source=source)
        return r, round(time.monotonic() - started, 3)

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
        """No traceback, unhandled error or key material in the log; with `expect_activity`, the
        lines of a client that connected, ran a command and left."""
        text = self.log_text()
        assert "Traceback" not in text, f"traceback in the server log:\n{text[-6000:]}"
        assert "Unhandled" not in text, f"unhandled error in the server log:\n{text[-6000:]}"
        assert "PRIVATE KEY" not in text, "key material in the server log"
        if expect_activity:
            for needle in ("Client connection from", "Cmd received from", "Lost client connection"):
                assert needle in text, f"{needle!r} missing from the server log"


def stop_and_check(server: Server, *, expect_activity: bool = True) -> None:
    """SIGTERM, the expected exit status, then the log checks (see `Server.check_log`)."""
    server.stop()
    assert server.returncode == server.stop_status, (
        f"server exited with {server.returncode} after SIGTERM:\n{server.log_text()[-6000:]}"
    )
    server.check_log(expect_activity=expect_activity)


def module_servers(
    tmp_path_factory: pytest.TempPathFactory, keys: ClientKeySet, data: ServedData, *, expect_activity: bool = True
) -> Iterator[Callable[..., Server]]:
    """Body of a layer's module-scoped `make_server` fixture: yields `make_server(**fields)`, which
    starts a Server in a fresh directory; at teardown every one is stopped and checked
    (`stop_and_check`; `expect_activity` for the log lines of a served client)."""

    def make(**fields: Any) -> Server:
        return Server(tmp_path_factory.mktemp("server"), keys, data, **fields)

    yield from server_fleet(make, functools.partial(stop_and_check, expect_activity=expect_activity))
