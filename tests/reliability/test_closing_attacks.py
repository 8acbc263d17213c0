"""Clients that leave while the server still has output for them (a closing connection writes and
closes at the next poll: FlushingReactor's closing pass): whatever way they leave (a DISCONNECT
without reading, a RST, a half-close, a channel closed mid-output then no reading), the server
keeps no descriptor and no output for them past its abort timer, and serves everyone else
meanwhile (client: tests/reliability/closing_client.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from support.reliability import RssMonitor, figure, first_report, kill_all, rss_kib, start_client, wait_until_idle
from support.server import next_source

pytestmark = pytest.mark.reliability

CLOSING_CLIENT = Path(__file__).with_name("closing_client.py")
CONNECTIONS = 20
ABORT_BOUND = 15.0  # seconds: ABORT_AFTER (5 s) for a peer that takes nothing, with slack for a loaded machine
BOUND_MIB = 2 * CONNECTIONS + 8  # each may have a 2 MiB window of its 40 MB of output waiting (measured: 1.1 MiB each)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_fds(pid: int, at_most: int, timeout: float) -> tuple[int, float]:
    """Wait until the server holds at most `at_most` descriptors: (the count, seconds waited)."""
    started = time.monotonic()
    while True:
        count = open_fds(pid)
        waited = time.monotonic() - started
        if count <= at_most or waited > timeout:
            return count, round(waited, 2)
        time.sleep(0.1)


@pytest.fixture(scope="module")
def server(make_server):
    return make_server(
        settings={"max_sessions": 2, "max_clients": CONNECTIONS + 5, "max_clients_per_user": CONNECTIONS + 2}
    )


@pytest.mark.parametrize("mode", ["disconnect", "rst", "halfclose", "eof"])
def test_a_client_that_leaves_while_output_flows_leaves_nothing_behind(server, mode: str) -> None:
    pytest.importorskip("asyncssh")
    wait_until_idle(server.pid)
    before = open_fds(server.pid)
    with RssMonitor(server.pid) as rss:
        proc = start_client(
            CLOSING_CLIENT, str(server.keys.good), str(server.port), next_source(), mode, str(CONNECTIONS)
        )
        try:
            assert proc.stdin is not None
            left = first_report(proc)
            gone = time.monotonic()
            assert left["left"] == CONNECTIONS, left
            other = server.ssh("lastlog -n 1")  # someone else is served meanwhile
            if mode == "eof":  # the connection itself is still the client's: it ends when the client goes
                wait_until_idle(server.pid)
                held = open_fds(server.pid)
                proc.stdin.write(b"quit\n")
                proc.stdin.flush()
                proc.wait(timeout=10)
                gone = time.monotonic()
            else:  # the client holds its socket (or has reset it): the server must let go by itself
                held = -1
            after, _ = wait_fds(server.pid, before, ABORT_BOUND)
            waited = round(time.monotonic() - gone, 2)  # from the clients' leaving (or quitting, eof)
            if proc.poll() is None:
                proc.stdin.write(b"quit\n")
                proc.stdin.flush()
                proc.wait(timeout=10)
        finally:
            kill_all([proc])
    server.assert_alive()
    growth = (rss.peak - rss.before) / 1024
    figure(
        f"closing_{mode}",
        {
            "fds_before": before,
            "fds_held": held,
            "fds_after": after,
            "seconds_to_release": waited,
            "peak_growth_mib": round(growth, 2),
            "rss_after_mib": round(rss_kib(server.pid) / 1024, 2),
        },
    )
    assert other.returncode == 0 and other.stdout
    assert after <= before, f"{after - before} descriptors still held {waited} s after {CONNECTIONS} clients left"
    assert growth < BOUND_MIB
