"""max_sessions = 2 through an OpenSSH ControlMaster: the third session is refused, the
connection stays up and serves a new session once one ends."""

from __future__ import annotations

import subprocess

import pytest
from support.reliability import RssMonitor, client_messages, figure, kill_all, source_of_peer
from support.serverfiles import wait_for

pytestmark = pytest.mark.reliability


def test_max_sessions_through_a_control_master(make_server, data, tmp_path):
    server = make_server(settings={"max_sessions": 2})
    source = "127.0.0.30"
    control = tmp_path / "cm"
    mark, since = server.audit_mark(), server.log_mark()
    master = subprocess.Popen(
        server.ssh_argv(
            options=["-N", "-o", "ControlMaster=yes", "-o", f"ControlPath={control}"], source=source, log_level="INFO"
        ),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    mux = ["-o", "ControlMaster=no", "-o", f"ControlPath={control}"]
    procs: list[subprocess.Popen[bytes]] = [master]
    try:
        with RssMonitor(server.pid) as rss:
            wait_for(
                lambda: control.exists() and server.ssh(options=[*mux, "-O", "check"]).returncode == 0,
                10,
                "the ControlMaster socket",
            )
            # Two sessions through the master, each proven live by a command's output.
            shells = []
            for _ in range(2):
                shell = server.popen(options=[*mux, "-T"], stdin=subprocess.PIPE)
                procs.append(shell)
                assert shell.stdin is not None and shell.stdout is not None
                shell.stdin.write(b"lastlog -n 1\n")
                shell.stdin.flush()
                assert shell.stdout.readline().startswith(b"Nov 26 "), "the session did not answer"
                shells.append(shell)
            # The third is refused, with the reason; the master stays up.
            # (ProxyCommand=false: when the master refuses, OpenSSH would fall back to a new
            # direct connection; this makes the fallback fail instead of hiding the refusal.)
            third = server.ssh("exit 0", options=[*mux, "-o", "ProxyCommand=false"], log_level="INFO")
            assert third.returncode == 255
            assert b"Session open refused by peer" in third.stderr, third.stderr
            server.wait_log(r"Refused session channel for 127\.0\.0\.30:\d+: too many sessions \(max 2\)", since)
            assert master.poll() is None, "the master connection went down"
            assert server.ssh(options=[*mux, "-O", "check"]).returncode == 0
            # One session ends; a new one is served on the same connection.
            shells[0].communicate(b"exit 0\n", timeout=10)
            assert shells[0].returncode == 0
            r = server.ssh("exit 7", options=mux)
            assert r.returncode == 7, r.stderr
            shells[1].communicate(b"exit 0\n", timeout=10)
            assert shells[1].returncode == 0
            server.assert_alive()
            assert server.ssh(options=[*mux, "-O", "exit"]).returncode == 0
            _, master_err = master.communicate(timeout=5)
    finally:
        kill_all(procs)
    figure(
        "max_sessions",
        {
            "third_session_stderr": third.stderr.decode("utf-8", "replace").splitlines()[0],
            "master_stderr": client_messages(master_err),
        },
    )
    # The master logged why the peer refused: OpenSSH's "open failed: administratively prohibited".
    assert b"open failed: administratively prohibited: too many sessions (max 2)" in master_err, master_err
    wait_for(lambda: server.audit_since(mark, "disconnect"), 5, "the master connection's disconnect record")
    events = server.audit_since(mark)
    # One connection did it all: one connect, one login, one disconnect.
    assert len([e for e in events if e["event"] == "connect"]) == 1
    assert len([e for e in events if e["event"] == "auth"]) == 1
    assert [source_of_peer(e["peer"]) for e in events if e["event"] == "disconnect"] == [source]
    commands = sorted(" ".join(e["argv"]) for e in events if e["event"] == "command")
    assert commands == ["exit 0", "exit 0", "exit 7", "lastlog -n 1", "lastlog -n 1"], "the refused one never ran"
    assert rss.growth_mib < 16, rss.figures()
