"""End-to-end harness: what the end-to-end layer gives the shared test server (support/server.py)
and what its tests compare against.

Everything is made per test session under pytest's tmp dir: client keys (ssh-keygen), a syslog
file with long lines, a comphash root with awkward file names and a large sparse file. Each test
module starts its own server (port 0 on 127.0.0.1) and stops it with SIGTERM at teardown, where
the server's log is checked for the expected lines and for tracebacks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.server import public_line

SYSLOG_LINES = 12_000


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free on 127.0.0.1 now, for a tool that cannot be told to pick one and say which."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


BIG_SPARSE_SIZE = 16 << 30  # hashing 16 GiB of holes takes seconds: long enough to interrupt


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

    pub_line = staticmethod(public_line)

    @property
    def default(self) -> Path:
        return self.ed25519

    def authorized(self) -> dict[str, list[str]]:
        """alice with three keys, bob with one on a line with options."""
        return {
            "alice": [public_line(self.ed25519), public_line(self.rsa), public_line(self.ecdsa)],
            "bob": [f'command="lastlog" {public_line(self.optioned)}'],
        }

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
