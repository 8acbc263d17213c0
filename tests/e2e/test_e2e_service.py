"""The server as systemd runs it, end to end: the start, reload and stop lines and audit records
of a real process (SIGHUP, SIGTERM), the unit's MemoryDenyWriteExecute (the kernel's equivalent,
PR_SET_MDWE), and the socket unit's dual-stack socket handed over as `systemd:domain=INET6`."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import conchcmd

pytestmark = pytest.mark.e2e


def ssh_keygen_fingerprint(pub: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, check=True, timeout=10).stdout
    return out.decode().split()[1]


def check_config_digest(config: Path) -> str:
    """`conchcmd check-config --config FILE | tail -n +2 | sha256sum`, as an operator runs it."""
    out = subprocess.run(
        [sys.executable, "-m", "conchcmd", "check-config", "--config", str(config)],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    return hashlib.sha256(out.split(b"\n", 1)[1]).hexdigest()


@pytest.fixture
def notify_socket() -> Iterator[socket.socket]:
    directory = tempfile.mkdtemp(prefix="sd")  # short: AF_UNIX paths are limited to 107 bytes
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(os.path.join(directory, "notify"))
    sock.settimeout(10)
    try:
        yield sock
    finally:
        sock.close()
        shutil.rmtree(directory, ignore_errors=True)


def test_start_sighup_and_sigterm_lines_and_records(
    make_server: Callable[..., Any], data, notify_socket: socket.socket
) -> None:
    server = make_server(env_extra={"NOTIFY_SOCKET": notify_socket.getsockname()})
    assert notify_socket.recv(4096).startswith(b"READY=1\n")
    fp = ssh_keygen_fingerprint(server.host_keys_dir / "ssh_host_ed25519_key.pub")
    server.wait_log(
        re.escape(
            f"Server started: conchcmd {conchcmd.__version__} listening on 127.0.0.1:{server.port}; "
            f"host keys ssh-ed25519 {fp}"
        )
    )
    start = server.wait_audit(lambda e: e["event"] == "server_start", what="server_start")
    assert start["listen"] == [f"127.0.0.1:{server.port}"]
    assert start["host_keys"] == [f"ssh-ed25519 {fp}"]
    assert start["config_digest"] == check_config_digest(server.config)
    assert server.ssh("exit 0").returncode == 0

    since, mark = server.log_mark(), server.audit_mark()
    (server.base / "revoked").write_text("")  # empty: nothing revoked (a missing file refuses every key)
    server.settings = {"max_sessions": 3, "revoked_keys": "revoked", "users": {"alice": {"commands": ["lastlog"]}}}
    server.write_config()
    server.proc.send_signal(signal.SIGHUP)
    server.wait_log(
        re.escape(
            f"Reloaded users, keys and policy from {server.config}: took effect: revoked_keys, users.alice; "
            "need a restart: max_sessions"
        ),
        since,
    )
    reloading = notify_socket.recv(4096).split(b"\n")
    assert reloading[0] == b"RELOADING=1" and re.fullmatch(rb"MONOTONIC_USEC=\d+", reloading[1]), reloading
    assert notify_socket.recv(4096).startswith(b"READY=1\n"), "systemd is told the reload is done"
    reload = server.wait_audit(lambda e: e["event"] == "reload", mark, what="reload")
    assert reload["changed"] == ["max_sessions", "revoked_keys", "users.alice"]
    assert reload["restart_needed"] == ["max_sessions"]
    assert reload["config_digest"] == check_config_digest(server.config) != start["config_digest"]
    r = server.ssh(shlex.join(["comphash", str(data.small)]))
    assert (r.returncode, r.stderr) == (126, b"comphash: not permitted\n"), "the reload did take effect"

    server.stop()
    assert server.returncode == 0
    assert notify_socket.recv(4096) == b"STOPPING=1"
    match = re.search(r"Server stopping \(signal SIGTERM\) after (\d+) s\n", server.log_text())
    assert match, server.log_text()
    (stop,) = [e for e in server.audit() if e["event"] == "server_stop"]
    assert stop["reason"] == "signal SIGTERM" and 0 < stop["uptime"] < 600
    assert server.audit()[-1] == stop, "the last record written"


MDWE_WRAPPER = """
import ctypes, mmap, runpy, sys
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit(f"prctl(PR_SET_MDWE) failed: errno {ctypes.get_errno()}")
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except PermissionError:
    print("MDWE on: writable and executable memory is refused", flush=True)
else:
    sys.exit("MDWE is not enforced")
import bcrypt
assert bcrypt.checkpw(b"pw", bcrypt.hashpw(b"pw", bcrypt.gensalt(4)))
sys.argv = ["conchcmd", *sys.argv[1:]]
runpy.run_module("conchcmd", run_name="__main__")
"""


def test_the_server_works_without_writable_executable_memory(make_server: Callable[..., Any], data) -> None:
    """The unit's MemoryDenyWriteExecute=yes: systemd 252 enforces it with seccomp, Linux 6.3+
    with PR_SET_MDWE, which refuses the same mappings; kex, ciphers, hashing and bcrypt run."""
    server = make_server(
        command=lambda s: [sys.executable, "-c", MDWE_WRAPPER, "serve", "--config", str(s.config)],
    )
    assert "MDWE on: writable and executable memory is refused" in server.log_text()
    for cipher in ("chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com", "aes256-ctr"):
        r = server.ssh(shlex.join(["comphash", str(data.small)]), options=["-c", cipher])
        assert (r.returncode, r.stderr) == (0, b""), cipher
        assert r.stdout == server.coreutils("sha256sum", data.small)
    r = server.ssh("lastlog -n 3")
    assert (r.returncode, r.stdout) == (0, server.tail(data.syslog, 3))


def test_socket_unit_dual_stack_socket_as_systemd_passes_it(
    server_class: type, tmp_path: Path, client_keys, data, socket_activated
) -> None:
    """conchcmd.socket's `ListenStream=2222`: one AF_INET6 socket taking IPv4 too, which the
    config names `systemd:domain=INET6:index=0`."""
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    listener.bind(("::", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    fd = listener.fileno()

    server = server_class(
        tmp_path / "server",
        client_keys,
        data,
        **socket_activated(fd, "INET6"),
    )
    server.base.mkdir()
    server.write_config()
    server.authorize("alice", client_keys.pub_line(client_keys.ed25519))
    try:
        server.spawn(server.command(server), None, **server.popen_extra)
    finally:
        listener.close()
    try:
        server.wait_log(rf"conchcmd: listening on systemd:domain=INET6:index=0 \(:::{port}\)")
        server.port = port
        for source in ("127.0.0.1", "::1"):
            argv = server.ssh_argv("exit 7", source=source)
            argv[argv.index("alice@127.0.0.1")] = f"alice@{source}"
            assert subprocess.run(argv, capture_output=True, timeout=30).returncode == 7, source
        server.wait_log(rf"listening on 0\.0\.0\.0:{port}|listening on \[::\]:{port}")
        start = server.wait_audit(lambda e: e["event"] == "server_start")
        assert start["listen"] == [f"[::]:{port}"]
    finally:
        server.stop()
    assert server.returncode == 0
    assert json.dumps(server.audit()).count('"server_stop"') == 1
