"""The file descriptor limit, on a real server process started with a low RLIMIT_NOFILE: serve
raises its soft limit to the hard one and says so; at the hard limit, new connections are closed
at accept (Twisted's EMFILE reserve) while the connections it has go on being served, and once
descriptors are free again it accepts and logs in as before."""

from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
from collections.abc import Callable

import pytest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("ssh") is None, reason="the OpenSSH client is not installed"),
]

HARD = 64  # descriptors: the server's own (about 16 idle, measured) and a few dozen connections


def nofile(soft: int, hard: int) -> Callable[[], None]:
    """A preexec_fn: the child's RLIMIT_NOFILE (as a systemd unit's LimitNOFILE= would set it)."""
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def limits_of(pid: int) -> tuple[int, int]:
    """The process's soft and hard "Max open files", from /proc/PID/limits."""
    with open(f"/proc/{pid}/limits") as f:
        row = next(line for line in f if line.startswith("Max open files"))
    soft, hard = row.split()[3:5]
    return int(soft), int(hard)


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_serve_raises_its_soft_limit_to_the_hard_one_and_logs_it(make_server):
    server = make_server(popen_extra={"preexec_fn": nofile(32, 256)})
    assert limits_of(server.pid) == (256, 256)
    server.wait_log(r"File descriptor limit 256 \(raised from 32; hard limit 256\)")
    assert "above the hard limit" not in server.log_text()  # 10 clients fit in 256
    r = server.ssh("exit 3")
    assert r.returncode == 3, r.stderr


def banner_or_closed(sock: socket.socket) -> bytes:
    """The first bytes the server sends (its SSH banner), or b"" if it closes at once."""
    try:
        return sock.recv(64)
    except ConnectionResetError:
        return b""


def fill(server, sockets: list[socket.socket]) -> int:
    """Open connections (raw sockets, appended to `sockets`) until five in a row are closed at
    accept: the server is out of descriptors. Returns how many it took."""
    refused = 0
    while refused < 5 and len(sockets) < 2 * HARD:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sockets.append(sock)
        if banner_or_closed(sock).startswith(b"SSH-2.0-"):
            refused = 0
        else:
            refused += 1
    assert refused == 5, f"{len(sockets)} connections, none closed at accept"
    return len(sockets) - refused


def test_at_the_hard_limit_it_keeps_serving_and_recovers(make_server, data):
    server = make_server(
        popen_extra={"preexec_fn": nofile(HARD, HARD)},
        settings={"max_startups": 500, "max_startups_per_source": 500, "login_grace_time": 120},
    )
    held = server.popen(options=["-T"], stdin=subprocess.PIPE)
    server.wait_for(lambda: any(e["event"] == "auth" and e["ok"] for e in server.audit()), 10, "the held login")
    idle = open_descriptors(server.pid)
    sockets: list[socket.socket] = []
    try:
        served = fill(server, sockets)
        assert served + idle >= HARD - 5, (served, idle)  # it used the descriptors it had
        server.assert_alive()
        # One warning for the five connections closed at accept (Twisted logs them at info only).
        server.wait_log(r"\[conchcmd\.log#warn\] Out of file descriptors \(limit 64\): new connections are closed")
        # The held connection is still served: a command that needs no descriptor answers, and one
        # that opens a file says why it cannot (not that the log is missing).
        held.stdin.write(b"help\nlastlog -n 1\n")
        held.stdin.flush()
        server.wait_for(lambda: sum(e["event"] == "command" for e in server.audit()) >= 2, 10, "both commands audited")
        commands = [e for e in server.audit() if e["event"] == "command"]
        assert commands[0]["exit_code"] == 0
    finally:
        for sock in sockets:
            sock.close()
    # Descriptors free again: new clients are accepted and served, the held one goes on.
    server.wait_for(lambda: open_descriptors(server.pid) <= idle + 2, 10, "the closed connections gone")
    r = server.ssh("lastlog -n 1")
    assert (r.returncode, r.stdout) == (0, server.tail(data.syslog, 1)), r.stderr
    out, err = held.communicate(b"exit 4\n", timeout=10)
    assert held.returncode == 4, err
    assert out.startswith(b"Commands:\n"), out  # help's answer, given at the limit
    # At the limit, lastlog could not open the log: it said so, and that was all (no "missing").
    assert commands[1]["exit_code"] == 1
    assert err == f"lastlog: {data.syslog}: Too many open files\n".encode(), err
    text = server.log_text()
    assert text.count("Out of file descriptors") == 1, text[-3000:]
    assert "Traceback" not in text


def test_a_login_that_gets_the_last_descriptor_fails_without_a_strike(make_server):
    """One descriptor free: the connection takes it, the user's authorized_keys cannot be opened
    (a real EMFILE). The login fails, but no "Invalid user"/"Failed" line, no penalty for the
    source after more failures than give one, and the same source logs in once descriptors are back."""
    server = make_server(
        popen_extra={"preexec_fn": nofile(HARD, HARD)},
        settings={"max_startups": 500, "max_startups_per_source": 500, "login_grace_time": 120},
    )
    source = "127.0.9.1"
    sockets: list[socket.socket] = []
    try:
        fill(server, sockets)
        full = HARD  # once Twisted has its EMFILE reserve back
        server.wait_for(lambda: open_descriptors(server.pid) == full, 10, "every descriptor in use")
        sockets.pop(0).close()  # one served connection leaves: one descriptor free
        server.wait_for(lambda: open_descriptors(server.pid) == full - 1, 10, "one descriptor free")
        mark = server.log_mark()
        for _ in range(4):  # more than the 3 failures in a row that get a source penalised
            r = server.ssh("exit 3", source=source)
            assert r.returncode == 255 and b"Permission denied" in r.stderr, r.stderr
            server.wait_for(lambda: open_descriptors(server.pid) == full - 1, 10, "the failed login gone")
    finally:
        for sock in sockets:
            sock.close()
    text = server.log_text()[mark:]
    assert "Too many open files" in text
    assert text.count("Logins cannot be decided: authorized_keys") == 1, text
    assert "Invalid user" not in text and "Failed publickey" not in text, text
    records = [e for e in server.audit() if e["event"] == "auth" and e["peer"].startswith(source + ":")]
    assert len(records) == 4 and all(e["server_side"] for e in records), records
    assert not [e for e in server.audit() if e["event"] == "penalty"]
    r = server.ssh("exit 3", source=source)
    assert r.returncode == 3, r.stderr
