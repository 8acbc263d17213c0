"""Admission control: unauthenticated caps and per-source penalties before key exchange, client
slots after authentication, both behind one object the factory owns (`Admissions`).

OpenSSH's MaxStartups drops connections at random once full, operators included. Here each
source has its own cap, sources that keep failing are refused outright for a doubling time,
and when the global cap is full, sources that recently authenticated still get in — so a
flood from elsewhere does not lock out the operators whose keys are good.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IAddress, IReactorTime

from conchcmd.core.audit import AuditSink, sanitise
from conchcmd.core.config import LimitsConfig, default_clients_per_user
from conchcmd.core.hostmatch import addr_match_list, normalise_peer
from conchcmd.core.logtargets import AUTH_LOG_NAMESPACE, LOG_NAMESPACE, FastLogger
from conchcmd.core.metrics import NO_METRICS, ConnectionMetrics
from conchcmd.core.peer import format_peer, host_and_port

log = FastLogger(namespace=LOG_NAMESPACE)
auth_log = FastLogger(namespace=AUTH_LOG_NAMESPACE)  # penalties are authentication lines (facility authpriv)

STRIKES_BEFORE_PENALTY = 3  # failed connections in a row before a source is refused
TRUSTED_SOURCES = 4096  # remembered sources that authenticated (LRU)
TRUSTED_FOR = 24 * 3600.0
TRACKED_SOURCES = 65536  # penalty records kept at most (oldest dropped first)
REFUSAL_LOG_EVERY = 10.0  # seconds between log lines about one source's refusals


def source_of(host: str) -> str:
    """The unit penalties and caps apply to: an IPv4 address, or an IPv6 /64."""
    host = normalise_peer(host)
    if ":" not in host:  # an IPv4 address (or not an address): its own unit, as below
        return host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    return host


@dataclass
class _Record:
    strikes: int = 0
    level: int = 0  # how many penalties so far: each one doubles the next
    until: float = 0.0  # penalised until this time
    last_strike: float = 0.0
    refused: int = 0  # refusals not yet logged
    last_logged: float = float("-inf")
    last_refusal: tuple[str, str] = ("", "")
    report: Any = None  # a pending call that reports the refusals counted since the last report


class Admission:
    """Decides, per new connection, whether it may start; learns from how connections end."""

    def __init__(self, limits: LimitsConfig, clock: IReactorTime, audit: AuditSink):
        self.limits = limits
        self.clock = clock
        self.audit = audit
        self.startups: dict[str, int] = {}
        self.total_startups = 0
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._trusted: OrderedDict[str, float] = OrderedDict()

    # -- decisions ---------------------------------------------------------------------------

    def exempt(self, host: str | None) -> bool:
        """Whether the client address `host` is in `penalty_exempt` (sshd's
        PerSourcePenaltyExemptList, matched as sshd matches it: addr_match_list on the address)."""
        patterns = self.limits.penalty_exempt
        return bool(patterns) and host is not None and addr_match_list(normalise_peer(host), ",".join(patterns)) == 1

    def refusal(self, source: str, host: str | None = None) -> str | None:
        """Why a new connection from `source` (client address `host`) must be refused now, or None
        to admit it. An exempt address is never refused for a penalty, not even one its IPv6 /64
        earned from other addresses."""
        now = self.clock.seconds()
        record = self._records.get(source)
        if record is not None and record.until > now and not self.exempt(host):
            return f"penalised for {record.until - now:.0f} more seconds after repeated failures"
        if self.startups.get(source, 0) >= self.limits.max_startups_per_source:
            return f"too many unauthenticated connections from this source ({self.limits.max_startups_per_source})"
        if self.total_startups >= self.limits.max_startups and not self._is_trusted(source, now):
            return f"too many unauthenticated connections ({self.limits.max_startups})"
        return None

    def penalised(self) -> int:
        """How many sources are refused now for a penalty."""
        now = self.clock.seconds()
        return sum(1 for record in self._records.values() if record.until > now)

    def note_refused(self, source: str, peer: str, reason: str) -> None:
        """Log and audit refusals: the first at once, then a count at most every few seconds."""
        now = self.clock.seconds()
        record = self._record(source)
        record.refused += 1
        record.last_refusal = (peer, reason)
        wait = record.last_logged + REFUSAL_LOG_EVERY - now
        if wait <= 0:
            self._report(source, record)
        elif record.report is None:
            record.report = self.clock.callLater(wait, self._report, source, record)

    def _report(self, source: str, record: _Record) -> None:
        if record.report is not None and record.report.active():
            record.report.cancel()
        record.report = None
        if not record.refused:
            return
        peer, reason = record.last_refusal
        count, record.refused, record.last_logged = record.refused, 0, self.clock.seconds()
        auth_log.info(
            "Refused {count} connection(s) from {source}: {reason}", count=count, source=source, reason=reason
        )
        self.audit.record("refused", peer=peer, source=source, count=count, reason=reason)

    def flush(self) -> None:
        """Report every refusal not yet reported (at shutdown)."""
        for source, record in list(self._records.items()):
            if record.refused:
                self._report(source, record)

    def _is_trusted(self, source: str, now: float) -> bool:
        seen = self._trusted.get(source)
        # Trusted sources may exceed the global cap, but only by the reserve of max_startups.
        return seen is not None and now - seen < TRUSTED_FOR and self.total_startups < 2 * self.limits.max_startups

    # -- connection life ---------------------------------------------------------------------

    def started(self, source: str) -> None:
        self.startups[source] = self.startups.get(source, 0) + 1
        self.total_startups += 1

    def left_startup(self, source: str) -> None:
        """The connection authenticated or ended: it no longer counts as a startup."""
        left = self.startups.get(source, 0) - 1
        if left > 0:
            self.startups[source] = left
        else:
            self.startups.pop(source, None)
        self.total_startups -= 1

    def authenticated(self, source: str) -> None:
        self._trusted[source] = self.clock.seconds()
        self._trusted.move_to_end(source)
        while len(self._trusted) > TRUSTED_SOURCES:
            self._trusted.popitem(last=False)
        record = self._records.get(source)
        if record is not None:
            record.strikes = 0
            record.level = 0

    def strike(self, source: str, why: str, host: str | None = None, *, connection: str | None = None) -> None:
        """A connection from `source` (client address `host`) ended badly (failed auth, garbage,
        timeout); an address in `penalty_exempt` is not counted. `connection` is its id, for the
        audit record of a penalty it brings."""
        if self.exempt(host):
            return
        now = self.clock.seconds()
        record = self._record(source)
        if now - record.last_strike > self.limits.penalty_max_seconds:
            record.level = record.strikes = 0  # a long quiet spell forgives the past
        record.strikes += 1
        record.last_strike = now
        if record.strikes < STRIKES_BEFORE_PENALTY or self.limits.penalty_seconds <= 0:
            return
        seconds = min(self.limits.penalty_seconds * 2**record.level, self.limits.penalty_max_seconds)
        record.level += 1
        record.strikes = STRIKES_BEFORE_PENALTY - 1  # one more failure after this penalty: the next
        record.until = now + seconds
        auth_log.info(
            "Penalising {source} for {seconds:g} s: {why}, {n} times in a row",
            source=source,
            seconds=seconds,
            why=why,
            n=STRIKES_BEFORE_PENALTY,
        )
        fields = {} if connection is None else {"connection": connection}
        self.audit.record("penalty", **fields, source=source, seconds=seconds, reason=why)

    def _record(self, source: str) -> _Record:
        record = self._records.get(source)
        if record is None:
            record = self._records[source] = _Record()
            while len(self._records) > TRACKED_SOURCES:
                self._records.popitem(last=False)
        else:
            self._records.move_to_end(source)
        return record


class ClientSlots:
    """Counts authenticated connections against `max_clients`, and each user's against
    `max_clients_per_user`, so that one key holder cannot take every slot."""

    def __init__(self, limit: int, per_user: int | None = None):
        self.limit = limit
        self.per_user = default_clients_per_user(limit, per_user)
        self.used = 0
        self.by_user: dict[str, int] = {}

    def acquire(self, user: str) -> str | None:
        """Take a slot for `user`; if none is free, the refusal naming the limit that was hit."""
        held = self.by_user.get(user, 0)
        if held >= self.per_user:
            return f"Too many connections for user {sanitise(user)} (max_clients_per_user {self.per_user})"
        if self.used >= self.limit:
            return f"Too many connections (max_clients {self.limit})"
        self.used += 1
        self.by_user[user] = held + 1
        return None

    def release(self, user: str) -> None:
        self.used -= 1
        left = self.by_user.get(user, 0) - 1
        if left > 0:
            self.by_user[user] = left
        else:
            self.by_user.pop(user, None)


@dataclass
class Ticket:
    """One connection's standing with admission control, from its first byte to its end."""

    source: str  # what caps and penalties count against (see source_of)
    host: str | None  # the client address, for `penalty_exempt`
    connection_id: str  # for the audit record of a penalty
    in_startup: bool = True  # counted as unauthenticated until admitted or gone
    user: str | None = None  # the user admitted (kept after the slot is released, for the last lines)
    holds_slot: bool = False


class Admissions:
    """Every admission decision and count of the server: which new connections may start (per
    source and in total, penalties), which authenticated users get a client slot, and what a
    connection's end teaches. A connection holds a `Ticket` and reports to this object only."""

    def __init__(
        self,
        limits: LimitsConfig,
        clock: IReactorTime,
        audit: AuditSink,
        *,
        max_clients: int,
        max_clients_per_user: int | None = None,
        metrics: ConnectionMetrics = NO_METRICS,
    ):
        self.metrics = metrics
        self.sources = Admission(limits, clock, audit)
        self.slots = ClientSlots(max_clients, max_clients_per_user)

    def refuse(self, address: IAddress) -> bool:
        """Whether a new connection from `address` must be closed before it starts (the refusal
        is logged and audited, counted per source)."""
        ip = host_and_port(address)
        if ip is None:
            return False
        host = ip[0]
        source = source_of(host)
        refusal = self.sources.refusal(source, host)
        if refusal is None:
            return False
        self.sources.note_refused(source, format_peer(address), refusal)
        self.metrics.connection_refused(refusal)
        return True

    def start(self, host: str | None, peer: str, connection_id: str) -> Ticket:
        """A connection has started (from client address `host`, else described as `peer`)."""
        ticket = Ticket(source=source_of(host or peer), host=host, connection_id=connection_id)
        self.sources.started(ticket.source)
        return ticket

    def admit(self, ticket: Ticket, user: str) -> str | None:
        """`user` has authenticated on `ticket`'s connection: take a client slot, or say which
        limit turns the client away (the connection then still counts as a startup)."""
        refusal = self.slots.acquire(user)
        if refusal is not None:
            return refusal
        ticket.holds_slot = True
        ticket.user = user
        self._leave_startup(ticket)
        self.sources.authenticated(ticket.source)
        return None

    def release(self, ticket: Ticket, strike: str | None = None) -> None:
        """The connection has ended: its slot or startup is freed. `strike` says how it misbehaved
        (failed authentication, protocol errors, ...), counted against its source if it never got
        in."""
        if ticket.holds_slot and ticket.user is not None:
            ticket.holds_slot = False
            self.slots.release(ticket.user)
        if ticket.in_startup:
            self._leave_startup(ticket)
            if strike is not None:
                self.sources.strike(ticket.source, strike, ticket.host, connection=ticket.connection_id)

    def flush(self) -> None:
        """Report every refusal not yet reported (at shutdown)."""
        self.sources.flush()

    def _leave_startup(self, ticket: Ticket) -> None:
        if ticket.in_startup:
            ticket.in_startup = False
            self.sources.left_startup(ticket.source)
