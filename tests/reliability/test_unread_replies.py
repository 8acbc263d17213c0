"""A logged-in client that sends want-reply requests and never reads: the answers must not pile up
in the server (client: tests/reliability/request_flood_client.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.reliability import RssMonitor, figure, first_report, kill_all, rss_kib, start_client, wait_until_idle
from support.server import next_source

pytestmark = pytest.mark.reliability

FLOOD_CLIENT = Path(__file__).with_name("request_flood_client.py")
REQUESTS = 300_000  # about 15 MB of answers: more than the kernel's buffers take
BOUND_MIB = 8  # measured: 0.5 MiB; 17 MiB when the server went on reading


def test_answers_to_a_client_that_never_reads_do_not_pile_up(make_server) -> None:
    pytest.importorskip("asyncssh")
    server = make_server()
    wait_until_idle(server.pid)
    with RssMonitor(server.pid) as rss:
        proc = start_client(FLOOD_CLIENT, str(server.keys.good), str(server.port), next_source(), str(REQUESTS))
        try:
            assert proc.stdin is not None
            flood = first_report(proc)
            wait_until_idle(server.pid)
            held = rss.peak
            other = server.ssh("lastlog -n 1")  # someone else is served meanwhile
            proc.stdin.write(b"quit\n")
            proc.stdin.flush()
            proc.wait(timeout=10)
        finally:
            kill_all([proc])
    server.assert_alive()
    growth = (held - rss.before) / 1024
    figure(
        "unread_replies",
        {**flood, "peak_growth_mib": round(growth, 2), "rss_after_mib": round(rss_kib(server.pid) / 1024, 2)},
    )
    assert other.returncode == 0
    # Every request reached the socket, or the client's own buffer backed up (the server stopped
    # reading): either way the server was offered more answers than the kernel's buffers hold.
    assert flood["sent"] == REQUESTS or flood["unsent_bytes"] > 0, flood
    assert growth < BOUND_MIB
