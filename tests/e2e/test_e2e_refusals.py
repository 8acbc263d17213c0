"""What the server refuses (forwarding, subsystems) without harm, and clients that vanish mid-command."""

from __future__ import annotations

import shlex
import shutil
import socket
import subprocess
import time

import pytest
from support.e2e import free_port

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("ssh") is None, reason="the OpenSSH client is not installed"),
]


def q(*words: object) -> str:
    return " ".join(shlex.quote(str(w)) for w in words)


def test_stdio_forwarding_is_refused_and_the_server_keeps_serving(server):
    since = server.log_mark()
    r = server.ssh(options=["-W", "127.0.0.1:22"], log_level="INFO")
    assert r.returncode == 255
    assert b"administratively prohibited" in r.stderr, r.stderr
    server.wait_log(r"Refused direct-tcpip channel", since)
    r = server.ssh("exit 0")
    assert r.returncode == 0


def test_refused_local_forward_keeps_the_connection_up(server, tmp_path_factory):
    """A -L forward opens a direct-tcpip channel per use: refused, while the same connection
    (a ControlMaster) goes on serving sessions."""
    control = tmp_path_factory.mktemp("cm") / "cm"
    lport = free_port()
    master = subprocess.Popen(
        server.ssh_argv(
            options=[
                "-o",
                "ControlMaster=yes",
                "-o",
                f"ControlPath={control}",
                "-o",
                "ExitOnForwardFailure=no",
                "-N",
                "-L",
                f"127.0.0.1:{lport}:127.0.0.1:{server.port}",
            ]
        ),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    mux = ["-o", "ControlMaster=no", "-S", str(control)]
    try:
        server.wait_for(
            lambda: control.exists() and server.ssh(options=[*mux, "-O", "check"]).returncode == 0,
            10,
            "the ControlMaster socket",
        )
        mark, since = server.audit_mark(), server.log_mark()
        with socket.create_connection(("127.0.0.1", lport), timeout=5) as sock:
            assert sock.recv(100) == b"", "a refused forward must close the local socket"
        server.wait_log(r"Refused direct-tcpip channel", since)
        r = server.ssh("exit 6", options=mux)
        assert r.returncode == 6
        assert server.audit_since(mark, "connect") == []
        assert server.audit_since(mark, "disconnect") == []
        r = server.ssh(options=[*mux, "-O", "exit"])
        assert r.returncode == 0
        master.wait(timeout=5)
    finally:
        if master.poll() is None:
            master.kill()
            master.wait(timeout=5)


def test_remote_forward_is_refused_and_the_command_still_runs(server):
    r = server.ssh("exit 5", options=["-R", f"127.0.0.1:{free_port()}:127.0.0.1:9"], log_level="INFO")
    assert r.returncode == 5
    assert b"remote port forwarding failed" in r.stderr, r.stderr
    server.wait_log(r"Refused tcpip-forward for alice@")


def test_sftp_subsystem_is_refused(server):
    r = server.ssh("sftp", options=["-s"])
    assert r.returncode == 255
    assert b"subsystem request failed" in r.stderr
    server.wait_log(r"Refused subsystem sftp")


def test_agent_forwarding_request_is_refused_and_the_command_runs(server, data, tmp_path_factory):
    if shutil.which("ssh-agent") is None:
        pytest.skip("ssh-agent is not installed")
    sock = tmp_path_factory.mktemp("agent") / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        server.wait_for(sock.exists, 10, "the ssh-agent socket")
        r = server.ssh(q("comphash", data.small), options=["-A"], log_level="DEBUG1", env={"SSH_AUTH_SOCK": str(sock)})
    finally:
        agent.terminate()
        agent.wait(timeout=5)
    assert r.returncode == 0, r.stderr
    assert r.stdout == server.coreutils("sha256sum", data.small)
    assert b"Requesting authentication agent forwarding" in r.stderr


def test_x11_forwarding_request_is_refused_and_the_command_runs(server):
    r = server.ssh("exit 2", options=["-X"], log_level="INFO", env={"DISPLAY": ":97"})
    assert r.returncode == 2
    assert b"X11 forwarding request failed" in r.stderr, r.stderr


def test_pty_and_env_requests_with_exec(server, data):
    r = server.ssh(
        "lastlog -n 1", options=["-tt", "-o", "SetEnv=FOO=bar", "-o", "SendEnv=LANG"], env={"LANG": "C.UTF-8"}
    )
    assert r.returncode == 0
    assert r.stdout == server.tail(data.syslog, 1).replace(b"\n", b"\r\n")


def test_keepalive_requests_are_answered(server, tmp_path):
    """OpenSSH's ServerAliveInterval sends keepalive@openssh.com global requests wanting a reply;
    unanswered, the client gives up ("Timeout, server not responding")."""
    err_path = tmp_path / "ssh.err"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            server.ssh_argv(
                options=["-T", "-o", "ServerAliveInterval=1", "-o", "ServerAliveCountMax=1"], log_level="DEBUG3"
            ),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
        )
        try:
            server.wait_for(
                lambda: err_path.read_bytes().count(b"receive packet: type 82") >= 2,  # SSH_MSG_REQUEST_FAILURE
                10,
                "two keepalive replies",
            )
            proc.communicate(b"exit 0\n", timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
    assert proc.returncode == 0
    assert b"Timeout, server" not in err_path.read_bytes()


# -- clients that vanish -------------------------------------------------------------------------


def test_client_vanishing_mid_hash_cancels_the_work(server, data):
    mark, since = server.audit_mark(), server.log_mark()
    proc = server.popen(q("comphash", data.big))
    try:
        server.wait_log(r"Cmd received from alice@\S+ : comphash \S*big\.sparse", since)
        time.sleep(0.3)  # let the hash get going in its thread (the brief's ~0.3 s)
        proc.kill()
        proc.wait(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    killed = time.monotonic()
    record = server.wait_audit(
        lambda e: e["event"] == "command" and e["argv"] == ["comphash", str(data.big)], mark, timeout=5, what="command"
    )
    assert time.monotonic() - killed < 3
    assert record["exit_code"] == 130
    assert record["duration_ms"] < 5000
    r = server.ssh(q("comphash", data.small), timeout=10)
    assert (r.returncode, r.stdout) == (0, server.coreutils("sha256sum", data.small))


def test_client_vanishing_while_output_is_blocked(server, data):
    """A client that stops reading, then dies: the command waiting on the window is cancelled."""
    mark, since = server.audit_mark(), server.log_mark()
    proc = server.popen("lastlog -n 10000")  # nobody reads its stdout: the window closes
    try:
        server.wait_log(r"Cmd received from alice@\S+ : lastlog -n 10000", since)
        time.sleep(0.3)
        proc.kill()
        proc.wait(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    record = server.wait_audit(
        lambda e: e["event"] == "command" and e["argv"] == ["lastlog", "-n", "10000"], mark, timeout=5, what="command"
    )
    assert record["exit_code"] == 130
    r = server.ssh("lastlog -n 2", timeout=10)
    assert (r.returncode, r.stdout) == (0, server.tail(data.syslog, 2))


def test_hash_slots_are_released_after_cancellations(server, data):
    """Cancel more hashes than `max_concurrent` (4); hashing must still work afterwards."""
    mark = server.audit_mark()
    seen = server.log_text().count(f"comphash {data.big}")
    procs = [server.popen(q("comphash", data.big)) for _ in range(5)]
    try:
        server.wait_for(
            lambda: server.log_text().count(f"comphash {data.big}") == seen + 5, 10, "five comphash commands"
        )
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait(timeout=5)
    server.wait_for(lambda: len(server.audit_since(mark, "command")) == 5, 10, "five command records")
    assert [e["exit_code"] for e in server.audit_since(mark, "command")] == [130] * 5
    r = server.ssh(q("comphash", data.small), timeout=10)
    assert (r.returncode, r.stdout) == (0, server.coreutils("sha256sum", data.small))
