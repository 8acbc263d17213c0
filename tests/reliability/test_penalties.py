"""Repeated failed logins: the failing source is refused before key exchange, others are not.

The server runs with penalty_seconds = 2 (short, so the test can wait it out) and
penalty_max_seconds = 60; a penalty doubles with each further failure.
"""

from __future__ import annotations

import time

import pytest
from support.reliability import RssMonitor, probe, source_of_peer
from support.serverfiles import wait_for

pytestmark = pytest.mark.reliability

PENALTY = 2.0
ATTACKER = "127.0.0.4"
OTHER = "127.0.0.7"
REPEATER = "127.0.0.8"
REFUSED_BEFORE_BANNER = (b"kex_exchange_identification", b"Connection closed")


@pytest.fixture(scope="module")
def server(make_server):
    return make_server(settings={"penalty_seconds": PENALTY, "penalty_max_seconds": 60})


def fail_logins(server, source: str, times: int) -> None:
    for _ in range(times):
        r = server.ssh("exit 0", source=source, key=server.keys.stranger)
        assert r.returncode == 255
        assert b"Permission denied (publickey)" in r.stderr, r.stderr


def penalties_for(server, source: str, mark: int) -> list[dict]:
    return [e for e in server.audit_since(mark, "penalty") if e["source"] == source]


def test_failed_logins_penalise_that_source_only(server):
    mark = server.audit_mark()
    with RssMonitor(server.pid) as rss:
        fail_logins(server, ATTACKER, 3)
        penalty = wait_for(lambda: penalties_for(server, ATTACKER, mark), 5, "the penalty event")[0]
        penalised_at = time.monotonic()
        assert penalty["seconds"] == PENALTY
        assert penalty["reason"] == "failed authentication"

        # The attacker's GOOD key is now refused, before the banner.
        r = server.ssh("exit 0", source=ATTACKER)
        refused_within = time.monotonic() - penalised_at
        assert refused_within < PENALTY, "too slow to observe the penalty; the check is inconclusive"
        assert r.returncode == 255
        assert any(text in r.stderr for text in REFUSED_BEFORE_BANNER), r.stderr
        # ... while another source's good key works.
        r = server.ssh("exit 0", source=OTHER)
        assert (r.returncode, r.stderr) == (0, b""), r.stderr

        # After the penalty the source gets back in (probes are refusals, not strikes).
        wait_for(lambda: probe(server.port, ATTACKER) == "banner", PENALTY + 3, "the penalty to expire")
        back_after = round(time.monotonic() - penalised_at, 2)
        r = server.ssh("exit 0", source=ATTACKER)
        assert (r.returncode, r.stderr) == (0, b""), r.stderr
        server.assert_alive()
    print(f"penalty {PENALTY:g} s: source back in after {back_after} s; rss {rss.figures()}")
    assert back_after >= PENALTY - 0.5
    assert rss.growth_mib < 16, rss.figures()

    events = server.audit_since(mark)
    from_attacker = [e for e in events if source_of_peer(e.get("peer", "")) == ATTACKER]
    failed = [e for e in from_attacker if e["event"] == "auth" and not e["ok"]]
    assert len(failed) == 3
    refused = [e for e in events if e["event"] == "refused" and e["source"] == ATTACKER]
    assert refused, "no refused event for the penalised source"
    assert refused[0]["reason"].startswith("penalised for ")
    assert refused[0]["count"] >= 1
    # The refused attempt never became a connection: 3 failures + 1 login after the penalty,
    # plus the probe that saw the banner.
    assert len([e for e in from_attacker if e["event"] == "connect"]) == 5
    assert [e["ok"] for e in from_attacker if e["event"] == "auth"] == [False, False, False, True]
    assert len([e for e in events if e["event"] == "penalty"]) == 1, "the other source was never penalised"


def test_penalty_doubles_on_the_next_failure(server):
    """After a penalty, a single further failure penalises again, for twice as long."""
    mark = server.audit_mark()
    fail_logins(server, REPEATER, 3)
    first = wait_for(lambda: penalties_for(server, REPEATER, mark), 5, "the first penalty")[0]
    assert first["seconds"] == PENALTY
    wait_for(lambda: probe(server.port, REPEATER) == "banner", PENALTY + 3, "the first penalty to expire")
    fail_logins(server, REPEATER, 1)
    second = wait_for(lambda: penalties_for(server, REPEATER, mark)[1:], 5, "the second penalty")[0]
    assert second["seconds"] == 2 * PENALTY
    assert probe(server.port, REPEATER) == "closed"
    r = server.ssh("exit 0", source=OTHER)
    assert r.returncode == 0, r.stderr
    server.assert_alive()
