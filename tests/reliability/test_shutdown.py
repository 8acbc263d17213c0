"""SIGTERM with live sessions: stop listening, tell every client why, cancel the running hash,
finish the audit log, exit 0 within 5 s."""

from __future__ import annotations

import re
import socket
import struct
import subprocess
import time

import pytest
from support.reliability import (
    RssMonitor,
    client_messages,
    close_all,
    figure,
    kill_all,
    raw_connect,
    read_until_closed,
    send_quietly,
    source_of_peer,
)
from support.serverfiles import wait_for

pytestmark = pytest.mark.reliability

SHUTDOWN_BOUND = 5.0


def test_sigterm_with_live_sessions(make_server, data, tmp_path):
    server = make_server()
    shells = {"127.0.0.11": None, "127.0.0.12": None}
    hasher_source = "127.0.0.13"
    procs: list[subprocess.Popen[bytes]] = []
    errs = {}
    mark, since = server.audit_mark(), server.log_mark()
    try:
        with RssMonitor(server.pid) as rss:
            for source in shells:
                errs[source] = open(tmp_path / f"{source}.err", "wb")  # noqa: SIM115 - closed below
                shells[source] = proc = subprocess.Popen(
                    server.ssh_argv(options=["-T"], source=source, log_level="INFO"),
                    stdin=subprocess.PIPE,  # held open: an idle interactive session
                    stdout=subprocess.PIPE,
                    stderr=errs[source],
                )
                procs.append(proc)
            errs[hasher_source] = open(tmp_path / "hasher.err", "wb")  # noqa: SIM115 - closed below
            hasher = subprocess.Popen(
                server.ssh_argv(f"comphash {data.big}", source=hasher_source, log_level="INFO"),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errs[hasher_source],
            )
            procs.append(hasher)
            server.wait_log(rf"Cmd received from alice@{hasher_source}:\d+ : comphash \S*big\.sparse", since)
            wait_for(lambda: len([e for e in server.audit_since(mark, "auth") if e["ok"]]) == 3, 10, "three logins")
            time.sleep(0.3)  # let the hash get going in its thread
            assert all(p.poll() is None for p in procs), "a client ended before the shutdown"
            server.assert_alive()
        term_mark = server.audit_mark()
        started = time.monotonic()
        server.stop()  # SIGTERM; fails if the server takes more than 5 s
        took = round(time.monotonic() - started, 3)
        assert server.returncode == 0, server.log_text()[-3000:]
        client_rcs = {}
        for source, proc in [*shells.items(), (hasher_source, hasher)]:
            client_rcs[source] = proc.wait(timeout=5)
    finally:
        kill_all(procs)
        for f in errs.values():
            f.close()
    stderr = {
        source: (tmp_path / (f"{source}.err" if source in shells else "hasher.err")).read_bytes() for source in errs
    }
    figure(
        "sigterm",
        {
            "exit_s": took,
            "client_rcs": client_rcs,
            "client_stderr": {s: client_messages(e) for s, e in stderr.items()},
            "rss_before_sigterm": rss.figures(),
        },
    )
    assert took < SHUTDOWN_BOUND
    # The clients saw the disconnect and its reason (OpenSSH prints it at LogLevel INFO).
    for source, err in stderr.items():
        assert client_rcs[source] == 255, (source, err)
        assert b"server shutting down" in err, (source, err)
    # The listening socket is gone.
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", server.port), timeout=2):
        pass

    # The audit log ends with one disconnect per client ("server shutting down"), the hash's
    # command record (cancelled: 130) and server_stop; nothing else happened after the SIGTERM.
    tail = server.audit()[term_mark:]
    disconnects = {source_of_peer(e["peer"]): e for e in tail if e["event"] == "disconnect"}
    assert sorted(disconnects) == sorted([*shells, hasher_source]), tail
    assert all(e["reason"] == "server shutting down" for e in disconnects.values()), tail
    assert all(e["user"] == "alice" for e in disconnects.values())
    commands = [e for e in tail if e["event"] == "command"]
    assert len(commands) == 1, tail
    assert commands[0]["argv"] == ["comphash", str(data.big)]
    assert commands[0]["exit_code"] == 130
    assert source_of_peer(commands[0]["peer"]) == hasher_source
    assert len(tail) == 5, tail
    assert (tail[-1]["event"], tail[-1]["reason"]) == ("server_stop", "signal SIGTERM"), tail
    assert rss.growth_mib < 16, rss.figures()
    log = server.log_text()[since:]
    assert log.count("server shutting down") >= 3


def test_sigterm_with_unauthenticated_connections(make_server):
    """SIGTERM while 30 unauthenticated connections hang (silent, version line only, half a
    packet): each is closed, the ones past the version line are told why, exit 0 within 5 s."""
    server = make_server()
    payloads = [b"", b"SSH-2.0-waiting\r\n", b"SSH-2.0-waiting\r\n" + struct.pack(">LB", 1020, 4) + b"a" * 10]
    socks: list[socket.socket] = []
    mark = server.audit_mark()
    try:
        for i in range(30):
            sock = raw_connect(server.port, f"127.6.0.{i // 3 + 2}", timeout=3)
            send_quietly(sock, payloads[i % 3])
            socks.append(sock)
        wait_for(lambda: len(server.audit_since(mark, "connect")) == 30, 10, "30 connections")
        started = time.monotonic()
        server.stop()
        took = round(time.monotonic() - started, 3)
        answers = [read_until_closed(sock, 3) for sock in socks]
    finally:
        close_all(socks)
    print(f"SIGTERM with 30 unauthenticated connections: exit 0 after {took} s")
    assert server.returncode == 0
    assert took < SHUTDOWN_BOUND
    assert all(closed for _, closed in answers), "a connection outlived the server"
    told = [b"server shutting down" in got for got, _ in answers]
    assert all(told[i] for i in range(30) if i % 3), "a client past its version line was not told why"
    disconnects = server.audit_since(mark, "disconnect")
    assert len(disconnects) == 30
    assert {e["reason"] for e in disconnects} == {"server shutting down"}
    assert not server.audit_since(mark, "penalty"), "a shutdown is no strike against anyone"


def test_sigterm_under_20_concurrent_hashes(make_server, data):
    """SIGTERM while 20 comphash jobs hash at once (more than the machine has cores, a thread
    each in the bulk pool): the server exits (0, within the harness's stop bound: its threads are
    given back, none waits for a job or a LINGER for good), each hash cancelled (130)."""
    comphash = {"roots": [str(data.root)], "max_concurrent": 20, "max_concurrent_per_user": 20}
    server = make_server(max_clients=30, settings={"max_clients_per_user": 30, "comphash": comphash})
    mark, since = server.audit_mark(), server.log_mark()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(20):
            procs.append(
                subprocess.Popen(
                    server.ssh_argv(f"comphash {data.big}", source=f"127.0.20.{i % 4 + 1}"),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        wait_for(
            lambda: len(re.findall(r"Cmd received from alice@\S+ : comphash", server.log_text()[since:])) == 20,
            30,
            "20 hashes under way",
        )
        assert all(p.poll() is None for p in procs), "a client ended before the shutdown"
        server.stop()  # SIGTERM: raises if the server does not exit
        assert server.returncode == 0, server.log_text()[-3000:]
        rcs = [p.wait(timeout=10) for p in procs]
    finally:
        kill_all(procs)
    assert rcs == [255] * 20
    commands = server.audit_since(mark, "command")
    assert [e["exit_code"] for e in commands] == [130] * 20, commands
    assert server.audit()[-1]["event"] == "server_stop"
