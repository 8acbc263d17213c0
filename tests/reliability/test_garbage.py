"""Garbage on the wire: seeded random bytes before and after the version line, truncated and
oversized packet headers. Each garbage connection ends only itself, logged once, no tracebacks;
the server keeps serving and its memory stays flat. A source that keeps sending garbage is
penalised like one that keeps failing authentication.

The server runs with login_grace_time = 2 (garbage that never completes a packet waits for it)
and max_startups = 200 (all 120 garbage connections are open at once, each from its own source).
"""

from __future__ import annotations

import random
import re
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable

import pytest
from support.reliability import (
    BANNER,
    RssMonitor,
    close_all,
    figure,
    probe,
    raw_connect,
    read_until_closed,
    send_quietly,
)
from support.serverfiles import wait_for

pytestmark = pytest.mark.reliability

GRACE = 2
GARBAGE_CONNECTIONS = 120
SEED = 1234
VERSION = b"SSH-2.0-x\r\n"
RSS_BOUND_MIB = 16


@pytest.fixture(scope="module")
def server(make_server):
    return make_server(settings={"login_grace_time": GRACE, "max_startups": 200})


def _no_version(data: bytes) -> bytes:
    return data.replace(b"SSH-", b"ssh_")


def _packet(payload: bytes, rng: random.Random) -> bytes:
    """A cleartext binary packet (RFC 4253 6) with a well-formed length and padding."""
    padding = 8 - (len(payload) + 5) % 8
    padding += 8 if padding < 4 else 0
    return struct.pack(">LB", len(payload) + padding + 1, padding) + payload + rng.randbytes(padding)


GARBAGE_KINDS: dict[str, Callable[[random.Random], bytes]] = {
    # Before any version line.
    "random, no newline": lambda rng: _no_version(rng.randbytes(rng.randint(1, 2000))).replace(b"\n", b""),
    "random lines": lambda rng: _no_version(rng.randbytes(rng.randint(1, 3000))) + b"\n",
    "random over 4 KiB": lambda rng: _no_version(rng.randbytes(rng.randint(4100, 12000))),
    "bad version": lambda rng: b"SSH-" + rng.choice([b"1.5", b"3.0", rng.randbytes(4).hex().encode()]) + b"-x\r\n",
    # After a valid version line.
    "version + random": lambda rng: VERSION + rng.randbytes(rng.randint(1, 3000)),
    "version + truncated header": lambda rng: VERSION + rng.randbytes(rng.randint(1, 4)),
    "version + oversized header": lambda rng: (
        VERSION + struct.pack(">L", rng.randint(65 * 1024, 0xFFFFFFFF)) + rng.randbytes(rng.randint(1, 2000))
    ),
    "version + truncated packet": lambda rng: VERSION + struct.pack(">LB", 1020, 4) + rng.randbytes(100),
    "version + random message": lambda rng: VERSION + _packet(bytes([rng.randint(0, 255)]) + rng.randbytes(40), rng),
    "version + garbage KEXINIT": lambda rng: VERSION + _packet(b"\x14" + rng.randbytes(rng.randint(0, 300)), rng),
    "junk lines + version + random": lambda rng: (
        b"hello\r\n" + _no_version(rng.randbytes(50)).replace(b"\n", b"") + b"\r\n" + VERSION + rng.randbytes(200)
    ),
}


def test_garbage_connections(server):
    rng = random.Random(SEED)
    kinds = list(GARBAGE_KINDS)
    mark, since = server.audit_mark(), server.log_mark()
    socks: list[socket.socket] = []
    plan: dict[str, str] = {}  # peer -> kind
    with RssMonitor(server.pid) as rss:
        try:
            for i in range(GARBAGE_CONNECTIONS):
                kind = kinds[i % len(kinds)]
                sock = raw_connect(server.port, f"127.4.{i // 250}.{i % 250 + 2}", timeout=3)
                host, port = sock.getsockname()
                plan[f"{host}:{port}"] = kind
                send_quietly(sock, GARBAGE_KINDS[kind](rng))
                socks.append(sock)
            started = time.monotonic()
            for sock in socks:  # every one is closed by the server, at the latest by the grace time
                got, closed = read_until_closed(sock, max(0.1, started + GRACE + 3 - time.monotonic()))
                assert closed, f"a garbage connection is still open after {GRACE + 3} s"
                assert got.startswith(BANNER)
            ended_within = round(time.monotonic() - started, 2)
        finally:
            close_all(socks)
        wait_for(
            lambda: len(server.audit_since(mark, "disconnect")) >= GARBAGE_CONNECTIONS, 10, "every garbage disconnect"
        )
        server.assert_alive()

    # The audit: one connect and one disconnect (with its reason) per garbage connection.
    events = server.audit_since(mark)
    assert sorted(e["peer"] for e in events if e["event"] == "connect") == sorted(plan)
    disconnects = {e["peer"]: e["reason"] for e in events if e["event"] == "disconnect"}
    durations = [e["duration_s"] for e in events if e["event"] == "disconnect"]
    outcomes = {
        "ended_at_once": len([d for d in durations if d < GRACE / 2]),
        "ended_by_login_grace_time": len([d for d in durations if d >= GRACE / 2]),
    }
    assert max(durations) < GRACE + 1
    assert sorted(disconnects) == sorted(plan)
    assert all(disconnects.values())
    assert not [e for e in events if e["event"] in ("auth", "command", "refused")]

    # The log: no tracebacks; per connection exactly one "Client connection from" and one "Lost
    # client connection" line (every connection has them), and at most ONE line about what went
    # wrong; no line that is about none of them (no spam from Twisted's own loggers).
    log = server.log_text()[since:]
    assert "Traceback" not in log and "Unhandled" not in log, log
    lines: dict[str, Counter[str]] = {peer: Counter() for peer in plan}
    stray = []
    for line in log.splitlines():
        peers = set(re.findall(r"127\.4\.\d+\.\d+:\d+", line))
        if len(peers) != 1 or not peers <= plan.keys():
            stray.append(line)
            continue
        peer = peers.pop()
        if f"Client connection from {peer}" in line:
            lines[peer]["connect"] += 1
        elif f"Lost client connection {peer} " in line:
            lines[peer]["lost"] += 1
        else:
            lines[peer]["error"] += 1
    assert not stray, "log lines about no garbage connection:\n" + "\n".join(stray)
    assert all(c["connect"] == 1 and c["lost"] == 1 for c in lines.values()), lines
    chatty = {peer: (plan[peer], c["error"]) for peer, c in lines.items() if c["error"] > 1}
    assert not chatty, f"garbage connections logged more than once: {chatty}"
    error_lines = sum(c["error"] for c in lines.values())

    reasons = Counter(re.sub(r"\d+", "N", reason) for reason in disconnects.values())
    figure(
        "garbage",
        {
            "connections": GARBAGE_CONNECTIONS,
            "all_closed_by_server_within_s": ended_within,
            "outcomes": outcomes,
            "disconnect_reasons": dict(reasons),
            "error_log_lines": error_lines,
            "error_log_lines_per_connection_max": max(c["error"] for c in lines.values()),
            "rss": rss.figures(),
        },
    )
    assert rss.growth_mib < RSS_BOUND_MIB, rss.figures()

    # And the server still serves a good login.
    r = server.ssh("exit 0")
    assert (r.returncode, r.stderr) == (0, b""), r.stderr


STRIKE_KINDS = [
    "bad version",
    "version + oversized header",
    "version + random",
    "random over 4 KiB",
    "version + garbage KEXINIT",
]


@pytest.mark.parametrize("kind", STRIKE_KINDS)
def test_repeated_garbage_penalises_the_source(server, kind):
    """README: a source whose connections end badly 3 times in a row (failed authentication,
    garbage, grace time exceeded) is refused at once. Garbage of every kind must count."""
    rng = random.Random(f"{SEED}-{kind}")
    source = f"127.5.0.{STRIKE_KINDS.index(kind) + 2}"
    mark = server.audit_mark()
    for _ in range(3):
        with raw_connect(server.port, source, timeout=3) as sock:
            send_quietly(sock, GARBAGE_KINDS[kind](rng))
            _, closed = read_until_closed(sock, 3)
            assert closed, f"{kind}: the server did not end the connection"

    # Other tests' connections may end in the same window: count this source's disconnects only.
    def disconnects() -> list[dict]:
        return [e for e in server.audit_since(mark, "disconnect") if e["peer"].startswith(f"{source}:")]

    wait_for(lambda: len(disconnects()) >= 3, 5, "three disconnects")
    reasons = [e["reason"] for e in disconnects()]
    penalties = [e for e in server.audit_since(mark, "penalty") if e["source"] == source]
    assert penalties, f"{kind}: 3 garbage connections in a row, but no penalty (disconnect reasons: {reasons})"
    assert probe(server.port, source) == "closed"
    server.assert_alive()
