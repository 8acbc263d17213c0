"""Pre-authentication floods: the flooder is capped, the operator keeps getting in, quickly.

Figures: flood connections held open vs refused, and the operator's login time during the flood.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from support.reliability import RssMonitor, classify, close_all, figure, raw_connect, send_quietly, source_of_peer
from support.serverfiles import wait_for

pytestmark = pytest.mark.reliability

FLOOD_SOURCE = "127.0.0.2"
OPERATOR = "127.0.0.3"
FLOOD_CONNECTIONS = 300
FLOOD_SECONDS = 1.5  # the 300 connections are spread over this long, so logins land mid-flood
OPERATOR_LOGINS = 3
LOGIN_BOUND = 3.0  # seconds: "the operator gets in within seconds"
RSS_BOUND_MIB = 16


def test_preauth_flood_from_one_source(make_server):
    server = make_server()  # defaults: max_startups 100, max_startups_per_source 10
    mark, since = server.audit_mark(), server.log_mark()
    socks: list[socket.socket] = []
    errors: list[BaseException] = []
    attempts = 0

    def flood() -> None:
        nonlocal attempts
        deadline = time.monotonic() + 10
        try:
            for i in range(FLOOD_CONNECTIONS):
                if time.monotonic() > deadline:
                    break
                sock = raw_connect(server.port, FLOOD_SOURCE, timeout=3)
                if i % 2:
                    send_quietly(sock, b"SSH-2.0-flood\r\n")  # half also send a version line, then nothing
                socks.append(sock)
                attempts += 1
                time.sleep(FLOOD_SECONDS / FLOOD_CONNECTIONS)
        except BaseException as e:  # reported by the test thread
            errors.append(e)

    login_times: list[float] = []
    with RssMonitor(server.pid) as rss:
        flooder = threading.Thread(target=flood, name="flood", daemon=True)
        flooder.start()
        try:
            wait_for(lambda: attempts >= 50 or errors, 10, "the flood to get going")
            for _ in range(OPERATOR_LOGINS):  # mid-flood: the flood is still connecting
                r, seconds = server.timed_login(OPERATOR)
                assert (r.returncode, r.stderr) == (0, b""), r.stderr
                login_times.append(seconds)
            mid_flood = attempts
            flooder.join(timeout=15)
            assert not flooder.is_alive(), "the flood thread did not finish"
            assert not errors, errors
            assert attempts == FLOOD_CONNECTIONS
            held, refused = classify(socks, timeout=5)
            # The operator once more, with the flood's connections all held open.
            r, seconds = server.timed_login(OPERATOR)
            assert (r.returncode, r.stderr) == (0, b""), r.stderr
            login_times.append(seconds)
            server.assert_alive()
        finally:
            close_all(socks)
    figure(
        "flood_one_source",
        {
            "connections": FLOOD_CONNECTIONS,
            "held": len(held),
            "refused": len(refused),
            "operator_logins_during_flood_s": login_times,
            "flood_connections_made_before_last_mid_flood_login": mid_flood,
            "rss": rss.figures(),
        },
    )
    assert len(held) == 10, f"held {len(held)}, expected max_startups_per_source (10)"
    assert len(refused) == FLOOD_CONNECTIONS - 10
    assert max(login_times) < LOGIN_BOUND, login_times
    assert rss.growth_mib < RSS_BOUND_MIB, rss.figures()

    # The audit: 10 flood connections admitted, refusals audited (rate-limited, with a count),
    # the operator's logins, no penalty for a flooder that only held connections open.
    wait_for(
        lambda: (
            len([e for e in server.audit_since(mark, "disconnect") if source_of_peer(e["peer"]) == FLOOD_SOURCE]) == 10
        ),
        10,
        "the held flood connections' disconnects",
    )
    events = server.audit_since(mark)
    connects = [e for e in events if e["event"] == "connect" and source_of_peer(e["peer"]) == FLOOD_SOURCE]
    assert len(connects) == 10
    refusals = [e for e in events if e["event"] == "refused" and e["source"] == FLOOD_SOURCE]
    assert refusals, "no refused event for the flooder"
    assert refusals[0]["reason"] == "too many unauthenticated connections from this source (10)"
    assert len(refusals) <= 1, "refusals are audited at most once per source every 10 s"
    logins = [e for e in events if e["event"] == "auth" and e["ok"] and source_of_peer(e["peer"]) == OPERATOR]
    assert len(logins) == OPERATOR_LOGINS + 1
    assert not [e for e in events if e["event"] == "penalty"]
    log = server.log_text()[since:]
    assert len([line for line in log.splitlines() if f"connection(s) from {FLOOD_SOURCE}" in line]) == 1

    # The flood's slots are free again: the same source gets in (a probe sees the banner).
    r = server.ssh("exit 0", source=FLOOD_SOURCE)
    assert r.returncode == 0, r.stderr
    server.assert_alive()


DISTRIBUTED_SOURCES = 20
PER_SOURCE = 10


def test_distributed_flood_trusted_operator_gets_in(make_server):
    """20 sources x 10 connections = 200, twice max_startups (100): the total cap holds, a source
    that authenticated before the flood still gets in (the reserve), a fresh source does not."""
    server = make_server()
    trusted, fresh = "127.0.0.5", "127.0.0.6"
    r = server.ssh("exit 0", source=trusted)  # authenticates before the flood: trusted from now on
    assert r.returncode == 0, r.stderr
    mark = server.audit_mark()
    socks: list[socket.socket] = []
    with RssMonitor(server.pid) as rss:
        try:
            for n in range(DISTRIBUTED_SOURCES):
                for i in range(PER_SOURCE):
                    sock = raw_connect(server.port, f"127.3.0.{n + 2}", timeout=3)
                    if i % 2:
                        send_quietly(sock, b"SSH-2.0-flood\r\n")
                    socks.append(sock)
            held, refused = classify(socks, timeout=5)
            r_trusted, trusted_seconds = server.timed_login(trusted)
            r_fresh = server.ssh("exit 0", source=fresh)
            server.assert_alive()
        finally:
            close_all(socks)
    figure(
        "flood_distributed",
        {
            "sources": DISTRIBUTED_SOURCES,
            "connections": DISTRIBUTED_SOURCES * PER_SOURCE,
            "held": len(held),
            "refused": len(refused),
            "trusted_operator_login_s": trusted_seconds,
            "trusted_operator_rc": r_trusted.returncode,
            "fresh_source_rc": r_fresh.returncode,
            "rss": rss.figures(),
        },
    )
    assert len(held) == 100, f"held {len(held)}, expected max_startups (100)"
    assert len(refused) == 100
    assert (r_trusted.returncode, r_trusted.stderr) == (0, b""), r_trusted.stderr
    assert trusted_seconds < LOGIN_BOUND
    assert r_fresh.returncode == 255, "a source that never authenticated is refused while the cap is full"
    assert b"Connection closed" in r_fresh.stderr or b"kex_exchange_identification" in r_fresh.stderr
    assert rss.growth_mib < RSS_BOUND_MIB, rss.figures()
    events = server.audit_since(mark)
    refused_events = [e for e in events if e["event"] == "refused"]
    assert {e["reason"] for e in refused_events} == {"too many unauthenticated connections (100)"}
    assert {e["source"] for e in refused_events} >= {fresh}
    assert [e for e in events if e["event"] == "auth" and e["ok"] and source_of_peer(e["peer"]) == trusted]
    # Once the flood is gone, the fresh source gets in too.
    wait_for(
        lambda: len([e for e in server.audit_since(mark, "disconnect") if e["user"] is None]) == 100,
        10,
        "the flood's disconnects",
    )
    r = server.ssh("exit 0", source=fresh)
    assert r.returncode == 0, r.stderr


def test_every_refusal_reaches_the_audit_log(make_server):
    """Refusals are audited at most once per source every 10 s, "with a count". A burst shorter
    than that is one line with count 1; the rest of the burst must still reach the audit log (at
    the latest when the server shuts down), or a flood of 40 reads as 1 refused connection."""
    server = make_server()
    socks: list[socket.socket] = []
    try:
        for _ in range(50):
            socks.append(raw_connect(server.port, FLOOD_SOURCE, timeout=3))
        held, refused = classify(socks, timeout=5)
    finally:
        close_all(socks)
    assert (len(held), len(refused)) == (10, 40)
    server.stop()  # SIGTERM: "finish the audit log"
    assert server.returncode == 0
    refusals = [e for e in server.audit() if e["event"] == "refused" and e["source"] == FLOOD_SOURCE]
    audited = sum(e["count"] for e in refusals)
    print(f"refused 40 connections; the audit log counts {audited} in {len(refusals)} event(s)")
    assert audited == 40, f"40 refused, the audit log counts {audited}: {refusals}"
