"""`twistd --uid`: the server binds a privileged port as root (privilegedStartService), then
serves as the unprivileged user."""

from __future__ import annotations

import os
import random
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TWISTD = Path(sys.executable).with_name("twistd")
NOBODY = 65534


def free_privileged_port() -> int:
    # In random order: engineers' runs on one machine should not all race for the same port.
    for port in random.sample(range(600, 1024), 424):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below 1024 on 127.0.0.1")


def read_until(proc: subprocess.Popen[bytes], marker: bytes, seen: bytearray, timeout: float = 30) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            raise AssertionError(f"no {marker!r} from twistd; it wrote:\n{seen.decode(errors='replace')}")
        if select.select([proc.stdout], [], [], left)[0]:
            seen += os.read(proc.stdout.fileno(), 65536)


def test_twistd_uid_binds_port_below_1024_then_serves_as_nobody(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("binding a port below 1024 and switching users needs root")
    base = tmp_path
    port = free_privileged_port()
    config = base / "conchcmd.toml"
    config.write_text(
        f'listen = ["tcp:{port}:interface=127.0.0.1"]\nhost_keys_dir = "{base}/keys"\n'
        f'authorized_keys = "{base}/keys/authorized_keys/%u"\naudit_log = "{base}/audit.jsonl"\n'
    )
    argv = [str(TWISTD), "-n", "--pidfile=", "--uid=nobody", "--gid=nogroup", "conchcmd", "--config", str(config)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(argv, cwd=base, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen = bytearray()
    try:
        read_until(proc, b"Server started", seen)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            assert sock.recv(64).startswith(b"SSH-2.0-conchcmd")
        status = Path(f"/proc/{proc.pid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert uids == [str(NOBODY)] * 4, status  # real, effective, saved and filesystem
        assert f"listening on tcp:{port}:interface=127.0.0.1 (127.0.0.1:{port})".encode() in seen
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        seen += out
    assert proc.returncode == -signal.SIGTERM, seen.decode(errors="replace")
    assert b"Traceback" not in seen, seen.decode(errors="replace")
