"""Timers, shortened in the config rather than waited out: login_grace_time = 2, idle_timeout = 2,
keepalive_interval = 1 with keepalive_count_max = 2."""

from __future__ import annotations

import signal
import struct
import subprocess
import threading
import time

import pytest
from support.reliability import (
    BANNER,
    RssMonitor,
    client_messages,
    figure,
    kill_all,
    raw_connect,
    read_until_closed,
    source_of_peer,
)
from support.serverfiles import wait_for

pytestmark = pytest.mark.reliability

GRACE = 2


def test_login_grace_time(make_server):
    """A socket that sends nothing, one that sends only a version line, and one that trickles a
    byte every 0.25 s are all closed when the grace time (from the first byte) runs out; three
    such connections in a row from one source earn it a penalty."""
    server = make_server(settings={"login_grace_time": GRACE, "penalty_seconds": 5})
    mark = server.audit_mark()
    silent_source, repeat_source = "127.0.0.20", "127.0.0.21"
    plan = {
        "silent": (silent_source, b""),
        "version only": ("127.0.0.22", b"SSH-2.0-lingering\r\n"),
        # A version line, then a packet (declared 1020 bytes long) one byte every 0.25 s.
        "trickle": ("127.0.0.23", struct.pack(">LB", 1020, 4) + b"a" * 40),
        # Three silent ones from one source, at the same time: three strikes.
        "repeat 1": (repeat_source, b""),
        "repeat 2": (repeat_source, b""),
        "repeat 3": (repeat_source, b""),
    }
    results: dict[str, tuple[bytes, bool, float]] = {}

    def run(name: str, source: str, payload: bytes) -> None:
        with raw_connect(server.port, source) as sock:
            started = time.monotonic()
            got = b""
            if name == "trickle":  # one byte at a time, each well within the grace time
                sock.sendall(b"SSH-2.0-trickle\r\n")
                for i in range(len(payload)):
                    try:
                        sock.sendall(payload[i : i + 1])
                    except OSError:
                        break
                    more, closed = read_until_closed(sock, 0.25)
                    got += more
                    if closed:
                        results[name] = (got, True, time.monotonic() - started)
                        return
            elif payload:
                sock.sendall(payload)
            more, closed = read_until_closed(sock, GRACE + 3)
            results[name] = (got + more, closed, time.monotonic() - started)

    with RssMonitor(server.pid) as rss:
        threads = [threading.Thread(target=run, args=(name, *args), daemon=True) for name, args in plan.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=GRACE + 6)
        server.assert_alive()
    assert sorted(results) == sorted(plan), "a client thread did not finish"
    figure("login_grace_time", {name: round(seconds, 2) for name, (_, _, seconds) in results.items()})
    for name, (got, closed, seconds) in results.items():
        assert closed, f"{name}: still open after {GRACE + 3} s"
        assert GRACE - 0.3 <= seconds <= GRACE + 1.0, f"{name}: closed after {seconds:.2f} s"
        assert got.startswith(BANNER), name
    # With a version line, the server says why (its DISCONNECT is still in clear text).
    assert b"login grace time exceeded" in results["version only"][0]
    assert b"login grace time exceeded" in results["trickle"][0]
    # (The client can see the close a moment before the server has written its audit record.)
    disconnects = wait_for(
        lambda: len(server.audit_since(mark, "disconnect")) >= len(plan) and server.audit_since(mark, "disconnect"),
        5,
        "every disconnect record",
    )
    assert len(disconnects) == len(plan)
    assert {e["reason"] for e in disconnects} == {"login grace time exceeded"}
    penalties = server.audit_since(mark, "penalty")
    assert [(e["source"], e["reason"]) for e in penalties] == [(repeat_source, "login grace time exceeded")]
    assert rss.growth_mib < 16, rss.figures()
    r = server.ssh("exit 0")
    assert r.returncode == 0, r.stderr


def test_idle_timeout(make_server, data, tmp_path):
    """An idle shell is disconnected with a message; a session whose command runs is not."""
    server = make_server(settings={"idle_timeout": 2})
    mark = server.audit_mark()
    idle_source, busy_source = "127.0.0.24", "127.0.0.25"
    err_path = tmp_path / "idle.err"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with RssMonitor(server.pid) as rss, open(err_path, "wb") as err:
            busy = server.popen(f"comphash {data.big}", source=busy_source)  # takes tens of seconds
            procs.append(busy)
            idle = subprocess.Popen(
                server.ssh_argv(options=["-T"], source=idle_source, log_level="INFO"),
                stdin=subprocess.PIPE,  # held open, nothing typed
                stdout=subprocess.PIPE,
                stderr=err,
            )
            procs.append(idle)
            login = server.wait_audit(
                lambda e: e["event"] == "auth" and e["ok"] and source_of_peer(e["peer"]) == idle_source,
                mark,
                5,
                "the idle shell's login",
            )
            logged_in = time.monotonic()
            rc = idle.wait(timeout=8)
            idle_for = round(time.monotonic() - logged_in, 2)
            # The hash has been running for longer than the idle timeout: still connected.
            assert busy.poll() is None, "the session running a command was cut"
            time.sleep(0.5)
            assert busy.poll() is None, "the session running a command was cut"
            server.assert_alive()
    finally:
        kill_all(procs)
    message = err_path.read_bytes()
    figure(
        "idle_timeout", {"disconnected_after_s": idle_for, "client_rc": rc, "client_stderr": client_messages(message)}
    )
    assert rc == 255
    assert b"idle timeout" in message, message
    assert 1.5 <= idle_for <= 4.0
    disconnect = server.wait_audit(
        lambda e: e["event"] == "disconnect" and e["peer"] == login["peer"], mark, 5, "the idle disconnect"
    )
    assert "idle timeout" in disconnect["reason"]
    busy_end = server.wait_audit(
        lambda e: e["event"] == "disconnect" and source_of_peer(e["peer"]) == busy_source, mark, 5, "the busy end"
    )
    assert "idle" not in busy_end["reason"], busy_end
    command = server.wait_audit(lambda e: e["event"] == "command", mark, 5, "the hash's record")
    assert command["exit_code"] == 130  # cancelled by the client's kill, not by the idle timer
    assert rss.growth_mib < 16, rss.figures()


def test_keepalive_detects_a_dead_peer(make_server, tmp_path):
    """A client that stops answering (SIGSTOP) is disconnected after 2 unanswered keepalives; a
    live idle client, answering them, stays connected."""
    server = make_server(settings={"keepalive_interval": 1, "keepalive_count_max": 2})
    mark = server.audit_mark()
    dead_source, live_source = "127.0.0.26", "127.0.0.27"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with RssMonitor(server.pid) as rss:
            for source in (dead_source, live_source):
                procs.append(server.popen(options=["-T"], source=source, stdin=subprocess.PIPE))
            wait_for(lambda: len([e for e in server.audit_since(mark, "auth") if e["ok"]]) == 2, 10, "two logins")
            time.sleep(1.5)  # a keepalive or so is answered by both first
            dead = procs[0]
            dead.send_signal(signal.SIGSTOP)
            stopped = time.monotonic()
            disconnect = server.wait_audit(
                lambda e: e["event"] == "disconnect" and source_of_peer(e["peer"]) == dead_source,
                mark,
                8,
                "the dead peer's disconnect",
            )
            detected_after = round(time.monotonic() - stopped, 2)
            assert procs[1].poll() is None, "the live client was disconnected"
            live_disconnects = [
                e for e in server.audit_since(mark, "disconnect") if source_of_peer(e["peer"]) == live_source
            ]
            assert not live_disconnects, live_disconnects
            procs[1].communicate(b"exit 4\n", timeout=10)
            assert procs[1].returncode == 4
            server.assert_alive()
    finally:
        kill_all(procs)  # SIGCONT + SIGKILL for the stopped one
    figure("keepalive", {"dead_peer_detected_after_s": detected_after, "reason": disconnect["reason"]})
    assert "keepalive" in disconnect["reason"], disconnect
    assert detected_after <= 5.0
    assert rss.growth_mib < 16, rss.figures()
