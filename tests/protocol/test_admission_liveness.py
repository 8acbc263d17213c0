"""Admission control and connection timers, driven by task.Clock."""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address

from conchcmd.core.audit import MemoryAuditLog
from conchcmd.core.config import LimitsConfig
from conchcmd.server.admission import STRIKES_BEFORE_PENALTY, Admission, Admissions, source_of
from conchcmd.server.liveness import Liveness


def make(**limits: object) -> tuple[Admission, task.Clock, MemoryAuditLog]:
    clock = task.Clock()
    audit = MemoryAuditLog()
    return Admission(LimitsConfig(**limits), clock, audit), clock, audit  # type: ignore[arg-type]


def test_sources_are_addresses_and_ipv6_prefixes() -> None:
    assert source_of("10.1.2.3") == "10.1.2.3"
    assert source_of("2001:db8:1:2:aaaa::1") == source_of("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert source_of("::ffff:10.0.0.7") == "10.0.0.7"


def test_per_source_cap_spares_other_sources() -> None:
    adm, _, _ = make(max_startups_per_source=2)
    adm.started("a")
    adm.started("a")
    assert "from this source (2)" in (adm.refusal("a") or "")
    assert adm.refusal("b") is None
    adm.left_startup("a")
    assert adm.refusal("a") is None


def test_total_cap_lets_recently_authenticated_sources_in() -> None:
    adm, clock, _ = make(max_startups=3, max_startups_per_source=10)
    adm.authenticated("operator")
    for source in ("x", "y", "z"):
        adm.started(source)
    assert "(3)" in (adm.refusal("stranger") or "")
    assert adm.refusal("operator") is None  # known good: reserve above the cap
    for _ in range(3):
        adm.started("w")
    assert adm.refusal("operator") is not None  # the reserve itself is bounded (2x)
    for _ in range(3):
        adm.left_startup("w")
    assert adm.refusal("operator") is None
    clock.advance(24 * 3600 + 1)
    assert adm.refusal("operator") is not None  # trust expires


def test_penalty_after_repeated_strikes_doubles_and_is_capped() -> None:
    adm, clock, audit = make(penalty_seconds=30, penalty_max_seconds=100)
    for _ in range(STRIKES_BEFORE_PENALTY - 1):
        adm.strike("bad", "failed authentication")
    assert adm.refusal("bad") is None
    adm.strike("bad", "failed authentication")
    assert "penalised for 30 more seconds" in (adm.refusal("bad") or "")
    assert adm.refusal("good") is None
    clock.advance(30)
    assert adm.refusal("bad") is None
    adm.strike("bad", "failed authentication")  # one more failure: penalised again, twice as long
    assert "penalised for 60" in (adm.refusal("bad") or "")
    clock.advance(60)
    adm.strike("bad", "failed authentication")
    assert "penalised for 100" in (adm.refusal("bad") or "")  # capped
    assert [e["seconds"] for e in audit.of("penalty")] == [30, 60, 100]


def test_success_and_quiet_time_forgive() -> None:
    adm, clock, _ = make(penalty_seconds=10, penalty_max_seconds=50)
    for _ in range(STRIKES_BEFORE_PENALTY - 1):
        adm.strike("s", "x")
    adm.authenticated("s")
    adm.strike("s", "x")
    assert adm.refusal("s") is None  # the count started again after the success
    for _ in range(STRIKES_BEFORE_PENALTY):
        adm.strike("t", "x")
    clock.advance(10)
    clock.advance(51)  # quiet for longer than the cap: the level resets
    for _ in range(STRIKES_BEFORE_PENALTY):
        adm.strike("t", "x")
    assert "penalised for 10" in (adm.refusal("t") or "")


def test_penalties_off_with_zero_seconds() -> None:
    adm, _, _ = make(penalty_seconds=0)
    for _ in range(10):
        adm.strike("s", "x")
    assert adm.refusal("s") is None


def test_refusals_are_logged_at_most_every_ten_seconds_with_a_count() -> None:
    adm, clock, audit = make()
    for _ in range(5):
        adm.note_refused("s", "s:1", "because")
    assert [e["count"] for e in audit.of("refused")] == [1]
    clock.advance(10)  # the rest of the burst is reported when the window ends, not lost
    assert [e["count"] for e in audit.of("refused")] == [1, 4]
    adm.note_refused("s", "s:2", "because")
    adm.note_refused("s", "s:3", "because")
    adm.flush()  # shutdown reports what is pending
    assert [e["count"] for e in audit.of("refused")] == [1, 4, 2]
    assert clock.getDelayedCalls() == []


class Peer:
    def __init__(self) -> None:
        self.closed: list[str] = []
        self.keepalives: list[defer.Deferred[None]] = []
        self.busy = False

    def send(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self.keepalives.append(d)
        return d


def liveness(clock: task.Clock, peer: Peer, **kw: float) -> Liveness:
    settings = {"idle_timeout": 0.0, "keepalive_interval": 0.0, "keepalive_count_max": 3, **kw}
    return Liveness(
        clock,
        idle_timeout=settings["idle_timeout"],
        keepalive_interval=settings["keepalive_interval"],
        keepalive_count_max=int(settings["keepalive_count_max"]),
        busy=lambda: peer.busy,
        send_keepalive=peer.send,
        close=peer.closed.append,
    )


def make_admissions(max_clients: int = 3, per_user: int | None = 1) -> tuple[Admissions, MemoryAuditLog]:
    audit = MemoryAuditLog()
    limits = LimitsConfig(max_startups_per_source=5, penalty_seconds=30)
    return Admissions(limits, task.Clock(), audit, max_clients=max_clients, max_clients_per_user=per_user), audit


def test_a_ticket_counts_as_a_startup_until_admitted_then_holds_a_slot_until_released() -> None:
    adm, _ = make_admissions()
    ticket = adm.start("192.0.2.7", "192.0.2.7:4000", "c1")
    assert ticket.source == "192.0.2.7" and adm.sources.startups == {"192.0.2.7": 1}
    assert adm.admit(ticket, "admin") is None
    assert ticket.holds_slot and not ticket.in_startup and adm.sources.total_startups == 0
    assert adm.slots.by_user == {"admin": 1}
    adm.release(ticket, "failed authentication")  # an admitted connection's end is never a strike
    assert adm.slots.used == 0 and not ticket.holds_slot and ticket.user == "admin"
    adm.release(ticket)  # released twice (connectionLost after a cut): counted once
    assert adm.slots.used == 0 and adm.sources.total_startups == 0
    assert adm.sources.refusal(ticket.source, ticket.host) is None


def test_a_user_over_its_slots_is_turned_away_and_stays_a_startup() -> None:
    adm, _ = make_admissions(per_user=1)
    first, second = (adm.start("192.0.2.7", "p", f"c{n}") for n in (1, 2))
    assert adm.admit(first, "admin") is None
    assert adm.admit(second, "admin") == "Too many connections for user admin (max_clients_per_user 1)"
    assert second.in_startup and not second.holds_slot and adm.sources.total_startups == 1
    adm.release(second)
    adm.release(first)
    assert adm.slots.used == 0 and adm.sources.total_startups == 0


def test_strikes_reported_on_release_bring_a_penalty_that_refuses_new_connections() -> None:
    adm, audit = make_admissions()
    address = IPv4Address("TCP", "198.51.100.9", 5555)
    for n in range(STRIKES_BEFORE_PENALTY):
        assert not adm.refuse(address)
        adm.release(adm.start("198.51.100.9", "p", f"c{n}"), "protocol errors")
    assert adm.refuse(address)
    assert not adm.refuse(IPv4Address("TCP", "198.51.100.10", 5555))
    (penalty,) = audit.of("penalty")
    assert penalty["connection"] == f"c{STRIKES_BEFORE_PENALTY - 1}" and penalty["reason"] == "protocol errors"
    assert audit.of("refused")[0]["peer"] == "198.51.100.9:5555"


def test_idle_timeout_counts_from_the_last_activity() -> None:
    clock, peer = task.Clock(), Peer()
    live = liveness(clock, peer, idle_timeout=60)
    clock.advance(50)
    live.activity()
    clock.advance(59)
    assert peer.closed == []
    clock.advance(1)
    assert peer.closed == ["idle timeout (60 s without activity)"]
    assert clock.getDelayedCalls() == []


def test_a_running_command_is_not_idle() -> None:
    clock, peer = task.Clock(), Peer()
    liveness(clock, peer, idle_timeout=10)
    peer.busy = True
    clock.advance(100)
    assert peer.closed == []
    peer.busy = False
    clock.advance(10)
    assert peer.closed == ["idle timeout (10 s without activity)"]


def test_keepalives_only_when_silent_and_close_after_count_max() -> None:
    clock, peer = task.Clock(), Peer()
    live = liveness(clock, peer, keepalive_interval=15, keepalive_count_max=2)
    clock.advance(10)
    live.received()
    clock.advance(5)
    assert peer.keepalives == []  # the client spoke 5 s ago
    clock.advance(10)
    assert len(peer.keepalives) == 1
    peer.keepalives[0].errback(Exception("REQUEST_FAILURE is an answer too"))
    live.received()
    clock.advance(15)
    clock.advance(15)
    assert len(peer.keepalives) == 3 and peer.closed == []
    clock.advance(15)
    assert peer.closed == ["no answer to 2 keepalives"]


def test_off_by_default() -> None:
    clock, peer = task.Clock(), Peer()
    liveness(clock, peer)
    assert clock.getDelayedCalls() == []
