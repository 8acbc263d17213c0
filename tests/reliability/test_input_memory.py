"""Bounded memory for what an authenticated client sends: every input path, `max_sessions`
channels on one connection, output never read (asyncssh client: tests/reliability/push_client.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support.reliability import RssMonitor, figure, kill_all, rss_kib, source_of_peer, wait_until_idle
from support.serverfiles import wait_for

pytestmark = pytest.mark.reliability

PUSH_CLIENT = Path(__file__).with_name("push_client.py")
CHANNELS = 10  # the default max_sessions
PUSH_BYTES = 1024 * 1024  # per channel: four times what a channel may hold
BOUND_MIB = 16
# The terminal shell handles input a byte at a time: 96 KiB per channel fill its 16 K-character
# line (two bytes each) three times over, in a few seconds.
PTY_PUSH_BYTES = 96 * 1024


@pytest.fixture(scope="module")
def server(make_server):
    return make_server(settings={"max_sessions": CHANNELS})


def push(server, pattern: str, source: str, connections: int = 1, push_bytes: int = PUSH_BYTES) -> dict:
    """Run `connections` pushing clients, from `source` and the next addresses; while they hold
    their connections, another client must still be served. Returns the figures; the caller
    asserts the bound."""
    pytest.importorskip("asyncssh")
    prefix, last = source.rsplit(".", 1)
    sources = [f"{prefix}.{int(last) + i}" for i in range(connections)]
    mark, log_mark = server.audit_mark(), server.log_mark()
    sizes = (str(CHANNELS), str(push_bytes))
    with RssMonitor(server.pid) as rss:
        procs = [
            subprocess.Popen(
                [sys.executable, str(PUSH_CLIENT), str(server.keys.good), str(server.port), src, pattern, *sizes],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for src in sources
        ]
        try:
            pushed = []
            for proc in procs:
                assert proc.stdout is not None
                line = proc.stdout.readline()
                if not line.startswith(b"{"):
                    proc.kill()
                    raise AssertionError(f"a pushing client failed: {line!r} {proc.communicate(timeout=10)}")
                pushed.append(json.loads(line))
            wait_until_idle(server.pid)  # what the clients sent may still sit in the sockets
            other = server.ssh("lastlog -n 1")  # someone else, while the abusers hold their channels
            held = rss.peak
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write(b"quit\n")
                proc.stdin.flush()
            for proc in procs:
                proc.wait(timeout=10)
        finally:
            kill_all(procs)
    wait_for(
        lambda: {source_of_peer(e["peer"]) for e in server.audit_since(mark, "disconnect")} >= set(sources),
        10,
        "the pushing clients' disconnects",
    )
    server.assert_alive()
    wait_until_idle(server.pid)
    left = rss_kib(server.pid)
    accepted = [n for p in pushed for n in p["accepted"]]
    commands = [c for c in server.audit_since(mark, "command") if source_of_peer(c["peer"]) in sources]
    figures = {
        "pattern": pattern,
        "connections": connections,
        "channels_each": CHANNELS,
        "accepted_bytes": sum(accepted),
        "commands_run": len(commands),
        "channels_open": sum(p["open"] for p in pushed),
        "rss_before_mib": round(rss.before / 1024, 2),
        "rss_peak_mib": round(held / 1024, 2),
        "rss_after_leaving_mib": round(left / 1024, 2),
        "peak_growth_mib": round((held - rss.before) / 1024, 2),
    }
    name = pattern if connections == 1 else f"{pattern}_x{connections}"
    figure(f"input_memory_{name}", figures)
    assert other.returncode == 0 and other.stdout, other.stderr
    return {**figures, "accepted": accepted, "mark": mark, "log_mark": log_mark}


# The server holds lines while their commands wait for output nobody reads: the window shuts.
STALLING = {"short", "binary", "pty"}
# Nothing waits (blank lines, over-long lines, exec stdin are consumed as they come): all goes in.
CONSUMED = {"blank", "long", "exec", "pty-long"}


@pytest.mark.parametrize("pattern", ["short", "blank", "long", "binary", "pty", "pty-long", "exec"])
def test_input_memory_is_bounded(server, pattern):
    """`max_sessions` channels on one connection push a fixed amount each and read no output:
    the server's RSS grows by less than 16 MiB, no channel is closed (input is held back by the
    window, not dropped), and another client is served meanwhile."""
    source = f"127.0.3.{2 + sorted(STALLING | CONSUMED).index(pattern)}"
    push_bytes = PTY_PUSH_BYTES if pattern == "pty-long" else PUSH_BYTES
    result = push(server, pattern, source, push_bytes=push_bytes)
    assert result["peak_growth_mib"] < BOUND_MIB, result
    assert result["channels_open"] == CHANNELS, result
    accepted = result["accepted"]
    if pattern in STALLING:
        assert all(n < push_bytes for n in accepted), accepted  # the window shut before the end
    else:
        assert accepted == [push_bytes] * CHANNELS, accepted
    mine = [c for c in server.audit_since(result["mark"], "command") if source_of_peer(c["peer"]) == source]
    dispatched = re.findall(rf"Cmd received from alice@{re.escape(source)}:", server.log_text()[result["log_mark"] :])
    if pattern == "blank":
        assert (mine, dispatched) == ([], [])  # blank lines are not commands
    if pattern in ("short", "pty"):
        assert mine and all((c["argv"], c["exit_code"]) == (["a"], 127) for c in mine), mine[:3]
        assert len(dispatched) == len(mine)


def test_three_connections_of_short_lines(server):
    """The report's case: three connections, each `max_sessions` channels of `a\\n`, reading
    nothing (on the old code: 1.9 GiB, kept after they left). Each is bounded by its own budget."""
    connections = 3
    result = push(server, "short", "127.0.4.2", connections)
    assert result["peak_growth_mib"] < BOUND_MIB * connections, result
    assert result["channels_open"] == CHANNELS * connections, result
    assert all(n < PUSH_BYTES for n in result["accepted"]), result["accepted"]
    # ... and given back (or kept for reuse) once they have left: not hundreds of MiB.
    assert result["rss_after_leaving_mib"] - result["rss_before_mib"] < BOUND_MIB, result
