"""`penalty_exempt` (OpenSSH's PerSourcePenaltyExemptList) in admission control, on a task.Clock:
an exempt address is never penalised however often it fails; every other address still is."""

from __future__ import annotations

import pytest
from twisted.internet import task

from conchcmd.core.audit import MemoryAuditLog
from conchcmd.core.config import LimitsConfig
from conchcmd.server.admission import STRIKES_BEFORE_PENALTY, Admission, source_of


def make(*patterns: str) -> tuple[Admission, task.Clock, MemoryAuditLog]:
    clock = task.Clock()
    audit = MemoryAuditLog()
    limits = LimitsConfig(penalty_seconds=30, penalty_max_seconds=600, penalty_exempt=patterns)
    return Admission(limits, clock, audit), clock, audit


def fail(adm: Admission, host: str, times: int) -> None:
    """`times` connections from `host` that failed authentication."""
    for _ in range(times):
        adm.strike(source_of(host), "failed authentication", host)


def test_an_exempt_address_that_keeps_failing_is_never_refused() -> None:
    adm, clock, audit = make("192.0.2.0/24")
    for _ in range(20):  # past every doubling, up to the cap, for a non-exempt source
        fail(adm, "192.0.2.7", STRIKES_BEFORE_PENALTY)
        assert adm.refusal(source_of("192.0.2.7"), "192.0.2.7") is None
        clock.advance(1)
    assert audit.of("penalty") == []


def test_a_non_exempt_address_is_still_penalised_beside_an_exempt_one() -> None:
    adm, _, audit = make("192.0.2.0/24")
    fail(adm, "198.51.100.9", STRIKES_BEFORE_PENALTY)
    assert "penalised for 30 more seconds" in (adm.refusal("198.51.100.9", "198.51.100.9") or "")
    assert adm.refusal("192.0.2.7", "192.0.2.7") is None
    assert [e["source"] for e in audit.of("penalty")] == ["198.51.100.9"]


@pytest.mark.parametrize(
    ("patterns", "host", "exempt"),
    [
        (("192.0.2.0/24",), "192.0.2.255", True),
        (("192.0.2.0/24",), "192.0.3.1", False),
        (("192.0.2.1",), "192.0.2.1", True),
        (("192.0.2.1",), "192.0.2.10", False),  # an address is the whole address, not a prefix
        (("192.0.2.1",), "192.0.2.100", False),
        (("192.0.2.*",), "192.0.2.44", True),
        (("192.0.2.*",), "192.0.20.1", False),
        (("10.?.0.1",), "10.5.0.1", True),
        (("10.?.0.1",), "10.55.0.1", False),
        (("192.0.2.0/24", "!192.0.2.66"), "192.0.2.66", False),  # a negated match wins, in any order
        (("!192.0.2.66", "192.0.2.0/24"), "192.0.2.66", False),
        (("!192.0.2.66", "192.0.2.0/24"), "192.0.2.65", True),
        (("!192.0.2.66",), "198.51.100.1", False),  # a negation alone exempts nobody
        (("192.0.2.5",), "::ffff:192.0.2.5", True),  # an IPv4-mapped peer is its IPv4 address
        (("2001:db8::/32",), "2001:db8:1::5", True),
        (("2001:db8::/32",), "2001:db9::5", False),
        (("2001:db8::5",), "2001:0db8:0:0:0:0:0:5", True),  # compared as addresses, not as text
        (("0.0.0.0/0",), "203.0.113.1", True),
        (("0.0.0.0/0",), "2001:db8::1", False),  # families do not mix
        (("192.0.2.0/24",), "not-an-address", False),
        ((), "127.0.0.1", False),  # loopback is not exempt by default
        (("127.0.0.0/8", "::1"), "127.0.0.1", True),
        (("127.0.0.0/8", "::1"), "::1", True),
    ],
)
def test_patterns_match_as_sshd_matches_them(patterns: tuple[str, ...], host: str, exempt: bool) -> None:
    adm, _, audit = make(*patterns)
    assert adm.exempt(host) is exempt
    fail(adm, host, STRIKES_BEFORE_PENALTY)
    assert (adm.refusal(source_of(host), host) is None) is exempt
    assert len(audit.of("penalty")) == (0 if exempt else 1)


def test_without_the_address_nobody_is_exempt() -> None:
    """A peer without an IP address (a Unix socket) cannot match, so it is penalised as before."""
    adm, _, _ = make("0.0.0.0/0", "::/0")
    fail_source = "?"
    for _ in range(STRIKES_BEFORE_PENALTY):
        adm.strike(fail_source, "failed authentication", None)
    assert adm.refusal(fail_source, None) is not None


def test_an_exempt_address_gets_in_while_its_ipv6_prefix_is_penalised() -> None:
    """Penalties apply to an IPv6 /64; a neighbour's failures do not lock out an exempt address in it."""
    adm, _, _ = make("2001:db8:0:1::10")
    fail(adm, "2001:db8:0:1::99", STRIKES_BEFORE_PENALTY)
    source = source_of("2001:db8:0:1::10")
    assert source == source_of("2001:db8:0:1::99")
    assert adm.refusal(source, "2001:db8:0:1::99") is not None
    assert adm.refusal(source, "2001:db8:0:1::10") is None


def test_exemption_does_not_lift_the_connection_caps() -> None:
    """As in sshd, the list exempts from penalties only: PerSourceMaxStartups still applies."""
    clock = task.Clock()
    adm = Admission(LimitsConfig(max_startups_per_source=2, penalty_exempt=("192.0.2.0/24",)), clock, MemoryAuditLog())
    adm.started("192.0.2.7")
    adm.started("192.0.2.7")
    assert "from this source (2)" in (adm.refusal("192.0.2.7", "192.0.2.7") or "")
