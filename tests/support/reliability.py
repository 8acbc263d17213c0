"""Reliability harness: the shared test server (support/server.py, the one the end-to-end layer
uses) abused on loopback only. (Its fixtures are in tests/reliability/conftest.py.)

Each module starts its own server with the limits it needs in `settings`; the OpenSSH client binds
`-o BindAddress=127.x.y.z`, so every client has its own loopback source address (the server's caps
and penalties are per source). Raw sockets (for floods and garbage) bind their source the same way;
memory is watched with RssMonitor.

Everything here is bounded: every wait has a deadline, every loop a count. Figures for the note are
collected with `figure()` and written as JSON to FIGURES_PATH when the session ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.server import public_line

FIGURES_PATH = Path("/tmp/reliability-figures.json")
BIG_LOG_LINES = 10_000  # lastlog's max_lines
BIG_LOG_LINE = 4_000  # bytes per line: 10000 lines are about 40 MB
BIG_SPARSE_SIZE = 16 << 30  # hashing 16 GiB of holes takes several seconds: long enough to interrupt
BANNER = b"SSH-2.0-conchcmd"

FIGURES: dict[str, Any] = {}


def figure(name: str, value: Any) -> None:
    """Record a figure for the lead engineer's note: printed now, written to JSON at the end."""
    FIGURES[name] = value
    print(f"[figure] {name} = {json.dumps(value)}")


# -- sources ---------------------------------------------------------------------------------


def source_of_peer(peer: str) -> str:
    return peer.rsplit(":", 1)[0]


# -- memory ----------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """The process's resident set size (VmRSS) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


class RssMonitor:
    """Samples a process's RSS every few ms in a thread: `before`, `peak`, `after` (KiB).

    Use as a context manager around a scenario; `growth_mib` is peak minus before.
    """

    def __init__(self, pid: int, interval: float = 0.02):
        self.pid = pid
        self.interval = interval
        self.before = self.peak = self.after = rss_kib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-monitor", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(OSError, AssertionError):
                self.peak = max(self.peak, rss_kib(self.pid))

    def __enter__(self) -> RssMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(OSError, AssertionError):
            self.after = rss_kib(self.pid)
            self.peak = max(self.peak, self.after)

    @property
    def growth_mib(self) -> float:
        return round((self.peak - self.before) / 1024, 2)

    def figures(self) -> dict[str, float]:
        return {
            "before_mib": round(self.before / 1024, 2),
            "peak_mib": round(self.peak / 1024, 2),
            "after_mib": round(self.after / 1024, 2),
            "peak_growth_mib": self.growth_mib,
        }


# -- raw sockets -----------------------------------------------------------------------------


def raw_connect(port: int, source: str, timeout: float = 5.0) -> socket.socket:
    """A TCP connection to the server from `source` (a 127.x address)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.settimeout(timeout)
    try:
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


def read_until_closed(sock: socket.socket, timeout: float, limit: int = 1 << 20) -> tuple[bytes, bool]:
    """Read what the server sends until it closes (True) or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    got = bytearray()
    while len(got) < limit:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(got), False
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return bytes(got), False
        except ConnectionResetError:
            return bytes(got), True
        if not chunk:
            return bytes(got), True
        got += chunk
    return bytes(got), False


def probe(port: int, source: str, timeout: float = 3.0) -> str:
    """Connect from `source` and classify: "banner" (admitted) or "closed" (refused before the
    banner). The probe then closes without sending anything, which is no strike against it."""
    with raw_connect(port, source, timeout) as sock:
        got, closed = b"", False
        deadline = time.monotonic() + timeout
        while b"\n" not in got and not closed and time.monotonic() < deadline:
            more, closed = read_until_closed(sock, min(0.2, max(0.01, deadline - time.monotonic())), 256)
            got += more
        if got.startswith(BANNER):
            return "banner"
        if closed and not got:
            return "closed"
        raise AssertionError(f"unexpected answer from the server: {got!r} (closed={closed})")


# -- client keys and data --------------------------------------------------------------------


@dataclass(frozen=True)
class ClientKeys:
    good: Path  # authorized for alice
    stranger: Path  # never authorized

    @property
    def default(self) -> Path:
        return self.good

    def authorized(self) -> dict[str, list[str]]:
        return {"alice": [public_line(self.good)]}


@dataclass(frozen=True)
class Data:
    syslog: Path  # 10000 lines of 4000 bytes: about 40 MB
    root: Path  # comphash root
    small: Path
    big: Path  # sparse, BIG_SPARSE_SIZE


def kill_all(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """Kill client processes this test started (by their own handles) and reap them."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)  # a stopped process must run to die cleanly
                proc.kill()
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def start_client(script: Path, *args: str) -> subprocess.Popen[bytes]:
    """Run a client script of tests/reliability with this interpreter, its streams piped: it reports
    on stdout and waits for `quit` on stdin."""
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def first_report(proc: subprocess.Popen[bytes]) -> Any:
    """The JSON line a client script prints once it has done its part (what else it printed, and
    its stderr, in the failure if that line is not JSON)."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith(b"{"), (line, proc.communicate(timeout=10))
    return json.loads(line)


def classify(socks: Sequence[socket.socket], timeout: float = 5.0) -> tuple[list[socket.socket], list[socket.socket]]:
    """Split connections into (held, refused): held ones got the server's banner, refused ones were
    closed before any byte. Fails if any is still undecided after `timeout` seconds."""
    held: list[socket.socket] = []
    refused: list[socket.socket] = []
    got: dict[socket.socket, bytes] = {}
    with selectors.DefaultSelector() as sel:
        for sock in socks:
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ)
            got[sock] = b""
        deadline = time.monotonic() + timeout
        while got and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.1):
                sock = key.fileobj  # type: ignore[assignment]
                try:
                    chunk = sock.recv(4096)
                except (ConnectionResetError, BlockingIOError):
                    chunk = b""
                data = got[sock] + chunk
                if data.startswith(BANNER):
                    held.append(sock)
                elif not chunk and not data:
                    refused.append(sock)
                elif chunk:
                    got[sock] = data
                    continue
                else:
                    raise AssertionError(f"connection closed after partial data {data!r}")
                sel.unregister(sock)
                del got[sock]
    assert not got, f"{len(got)} connections neither got a banner nor were closed within {timeout:g} s"
    return held, refused


def close_all(socks: Sequence[socket.socket]) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.close()


def send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send, ignoring a connection the server has already closed (a refused one)."""
    with contextlib.suppress(OSError):
        sock.sendall(data)


def client_messages(stderr: bytes) -> list[str]:
    """What the OpenSSH client said, minus the known-hosts notice (our known_hosts is /dev/null)."""
    lines = stderr.decode("utf-8", "replace").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("Warning: Permanently added")]


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process `pid` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until_idle(pid: int, timeout: float = 20.0) -> None:
    """Wait until the server has stopped working (used < 20 ms CPU in 250 ms)."""
    deadline = time.monotonic() + timeout
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = cpu_seconds(pid)
        if now - last < 0.02:
            return
        last = now
    raise AssertionError(f"the server was still busy after {timeout:g} s")
