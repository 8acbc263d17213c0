"""Bounded memory: a client that stops reading a 40 MB `lastlog`, and a 2 MiB shell line."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from support.reliability import BIG_LOG_LINES, RssMonitor, figure, kill_all, source_of_peer
from support.serverfiles import wait_for

pytestmark = pytest.mark.reliability

STALL_SECONDS = 3.0
SLOW_READER_BOUND_MIB = 16
LONG_LINE = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def server(make_server):
    return make_server()


def test_client_that_stops_reading(server, data):
    """`lastlog -n 10000` of a ~40 MB log, the client's stdout never read: the server may hold
    a window's worth and its output queue, not the log."""
    assert data.syslog.stat().st_size > 39_000_000
    mark, since = server.audit_mark(), server.log_mark()
    source = "127.0.0.10"
    with RssMonitor(server.pid) as rss:
        # stdout is a pipe nobody reads: it fills (64 KiB), ssh stops reading the socket once its
        # own channel window is used up, and the server's window to the client closes.
        proc = server.popen(f"lastlog -n {BIG_LOG_LINES}", source=source)
        try:
            server.wait_log(rf"Cmd received from alice@{source}:\d+ : lastlog -n {BIG_LOG_LINES}", since)
            time.sleep(STALL_SECONDS)  # the stall itself is what is measured: nothing to poll for
            assert proc.poll() is None, "the client finished: the output cannot have been held back"
            assert not server.audit_since(mark, "command"), "the command finished while the client read nothing"
            stalled = rss.peak
            proc.kill()
            proc.wait(timeout=5)
            killed = time.monotonic()
            record = server.wait_audit(
                lambda e: e["event"] == "command" and e["argv"] == ["lastlog", "-n", str(BIG_LOG_LINES)],
                mark,
                timeout=5,
                what="the lastlog command record",
            )
            cancelled_within = round(time.monotonic() - killed, 2)
        finally:
            kill_all([proc])
        server.assert_alive()
    figure(
        "slow_reader",
        {
            "log_bytes": data.syslog.stat().st_size,
            "stalled_for_s": STALL_SECONDS,
            "rss_peak_while_stalled_mib": round(stalled / 1024, 2),
            "command_record_within_s_of_kill": cancelled_within,
            "rss": rss.figures(),
        },
    )
    assert record["exit_code"] == 130
    assert source_of_peer(record["peer"]) == source
    assert rss.growth_mib < SLOW_READER_BOUND_MIB, rss.figures()
    disconnect = server.wait_audit(
        lambda e: e["event"] == "disconnect" and source_of_peer(e["peer"]) == source, mark, 5, "the disconnect"
    )
    assert disconnect["user"] == "alice"
    # The server still serves, the same command included, for a client that reads.
    r = server.ssh("lastlog -n 2")
    assert (r.returncode, r.stdout) == (0, b"".join(data.syslog.read_bytes().splitlines(keepends=True)[-2:]))


def test_two_mib_shell_line(server):
    """A 2 MiB line in a plain (no pty) shell: 'line too long', discarded, the session goes on."""
    mark = server.audit_mark()
    with RssMonitor(server.pid) as rss:
        r = server.ssh(options=["-T"], input=b"x" * LONG_LINE + b"\nexit 3\n")
        server.assert_alive()
    figure("long_shell_line", {"line_bytes": LONG_LINE, "rc": r.returncode, "rss": rss.figures()})
    assert r.returncode == 3, r.stderr
    assert b"line too long" in r.stderr, r.stderr
    assert r.stdout == b""
    assert len(r.stderr) < 1024, "the line was not echoed back"
    assert rss.growth_mib < 16, rss.figures()
    commands = server.audit_since(mark, "command")
    assert [(c["argv"], c["exit_code"]) for c in commands] == [(["exit", "3"], 3)], "the long line never ran"
    wait_for(lambda: server.audit_since(mark, "disconnect"), 5, "the shell's disconnect")


def test_the_same_command_completes_for_a_reading_client(server):
    """Guard for the test above: with a reading client the same command completes quickly, so the
    stall really came from the client not reading."""
    started = time.monotonic()
    proc = server.popen(f"lastlog -n {BIG_LOG_LINES}")
    try:
        out, _ = proc.communicate(timeout=30)
    finally:
        kill_all([proc])
    assert proc.returncode == 0
    assert len(out) > 39_000_000
    print(f"lastlog -n {BIG_LOG_LINES} read in full: {len(out)} bytes in {time.monotonic() - started:.2f} s")


# A client that opens a session with a 2 GiB window, then stops reading its socket. OpenSSH's
# client never does this (its window is 2 MiB), so this one is asyncssh, in a subprocess.
GREEDY_CLIENT = """
import asyncio, sys
import asyncssh

key, port, source, command = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]

class Session(asyncssh.SSHClientSession):
    def data_received(self, data, datatype):
        pass

async def main():
    conn = await asyncssh.connect(
        "127.0.0.1", port, username="alice", client_keys=[key], known_hosts=None,
        local_addr=(source, 0), agent_path=None, connect_timeout=10,
    )
    await conn.create_session(Session, command, window=2**31, encoding=None)
    conn._transport.pause_reading()  # the socket is no longer read; the SSH window stays open
    print("stalled", flush=True)
    await asyncio.sleep(30)  # bounded; the test kills it long before

asyncio.run(main())
"""


def test_client_with_a_huge_window_that_stops_reading_its_socket(server, data, tmp_path):
    """The SSH window is not the only limit: a client may advertise gigabytes and then stop reading
    TCP. The server must stop queueing output when its socket backs up (as sshd does), not push
    the whole 40 MB into its write buffer."""
    pytest.importorskip("asyncssh")
    script = tmp_path / "greedy_client.py"
    script.write_text(GREEDY_CLIENT)
    source = "127.0.0.14"
    mark = server.audit_mark()
    with RssMonitor(server.pid) as rss:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(server.keys.good), str(server.port), source, "lastlog -n 10000"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # "stalled" once the exec request is answered
            if line != b"stalled\n":
                proc.wait(timeout=10)
                raise AssertionError(f"the greedy client failed: {line + proc.stdout.read()!r}")
            time.sleep(STALL_SECONDS)  # the stall itself is what is measured
            finished = server.audit_since(mark, "command")
            server.assert_alive()
        finally:
            kill_all([proc])
    figure(
        "huge_window_socket_not_read",
        {
            "rss": rss.figures(),
            "command_finished_while_client_read_nothing": bool(finished),
            "command_record": finished[0] if finished else None,
        },
    )
    assert rss.growth_mib < SLOW_READER_BOUND_MIB, (
        f"server RSS grew {rss.growth_mib} MiB while a client read nothing ({rss.figures()}); "
        f"lastlog finished meanwhile: {finished}"
    )
    r = server.ssh("exit 0")
    assert r.returncode == 0, r.stderr
