"""Prometheus metrics of one server, in a registry of its own (never prometheus_client's global one:
tests run many servers in one process).

Most counters are derived from the audit records, by a sink placed in front of the audit log
(`Metrics.audit_sink`): connections, authentication attempts, penalties, commands and their
duration. The gauges, the bytes sent and the rekeys are read from the server's live state when
scraped (`LiveState`), so recording them costs the hot path nothing. No client-controlled text
becomes a label value: each label has a fixed set of values, and anything else is "other".
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.utils import floatToGoString

from conchcmd.core.audit import AuditSink

OTHER = "other"
#: SSH authentication method names (RFC 4252, 4256, 4462): any other name a client sends is "other".
AUTH_METHODS = frozenset({"none", "publickey", "password", "keyboard-interactive", "hostbased", "gssapi-with-mic"})
#: Why a connection is refused, by the start of the server's own refusal text (server/admission.py):
#: at accept (no banner sent) or after authentication (the client slots).
REFUSAL_KINDS = (
    ("penalised for ", "penalty"),
    ("too many unauthenticated connections from this source ", "max_startups_per_source"),
    ("too many unauthenticated connections (", "max_startups"),
    ("Too many connections for user ", "max_clients_per_user"),
    ("Too many connections (max_clients ", "max_clients"),
)
SLOT_REFUSALS = frozenset({"max_clients", "max_clients_per_user"})
#: Command durations, in seconds: from a `help` (well under a millisecond) to a long `lastlog -f`.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
#: What `generate_latest` writes: the classic text format (all our names are plain ASCII).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def refusal_kind(reason: str) -> str:
    """The label value for a refusal text of the server's admission control."""
    for prefix, kind in REFUSAL_KINDS:
        if reason.startswith(prefix):
            return kind
    return OTHER


class LiveState(Protocol):
    """What the server has open now, read at each scrape."""

    def connections_open(self) -> int: ...

    def clients_open(self) -> int:
        """Authenticated connections holding a client slot (`max_clients`)."""
        ...

    def sessions_open(self) -> int:
        """Session channels open (several per connection with multiplexing)."""
        ...

    def sources_penalised(self) -> int: ...

    def bytes_sent(self) -> int:
        """SSH bytes sent so far by the connections open now."""
        ...

    def rekeys(self) -> int:
        """Key exchanges after the first, so far, of the connections open now."""
        ...


class ConnectionMetrics(Protocol):
    """What the server's connections report that the audit records do not say."""

    def connection_refused(self, reason: str) -> None:
        """A new connection was closed at accept, for the admission control's `reason`."""
        ...

    def connection_closed(self, bytes_sent: int, rekeys: int) -> None:
        """A connection ended: what it sent and its rekeys move from the live state to the totals."""
        ...


class NoMetrics:
    """ConnectionMetrics of a server without `metrics_listen`: nothing is counted."""

    def connection_refused(self, reason: str) -> None:
        pass

    def connection_closed(self, bytes_sent: int, rekeys: int) -> None:
        pass


NO_METRICS = NoMetrics()


class Metrics:
    """The metrics of one server and the registry they are exposed from.

    Counts are plain integers kept on the reactor thread and turned into metric families at each
    scrape: no lock and no label lookup on the hot path (prometheus_client's Counter takes a lock
    per increment), and no `_created` series beside each counter."""

    def __init__(self, *, version: str, statuses: Iterable[int], commands: Iterable[str] = ()):
        self.version = version
        #: The command names a label may hold (others are "other"); the exit statuses likewise.
        self.commands = frozenset(commands)
        self.statuses = {int(status): str(int(status)) for status in statuses}
        self.accepted = 0
        self.refused: dict[str, int] = {}  # by reason
        self.auth: dict[tuple[str, str], int] = {}  # by (method, result)
        self.penalties = 0
        self.command_runs: dict[tuple[str, str], int] = {}  # by (command, status)
        self.durations: dict[str, _Histogram] = {}  # by command
        self.hashed_bytes = 0
        self.closed_bytes_sent = 0  # by connections that have ended (the open ones: LiveState)
        self.closed_rekeys = 0
        self.state: LiveState | None = None
        self._observers: dict[str, Callable[[dict[str, Any]], None]] = {
            "connect": self._connect,
            "auth": self._auth,
            "penalty": self._penalty,
            "command": self._command,
        }
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self))

    # -- recording -----------------------------------------------------------------------------

    def observe(self, event: str, fields: dict[str, Any]) -> None:
        """Count what an audit record says (see `audit_sink`)."""
        observer = self._observers.get(event)
        if observer is not None:
            observer(fields)

    def _connect(self, fields: dict[str, Any]) -> None:
        self.accepted += 1

    def _auth(self, fields: dict[str, Any]) -> None:
        method = fields.get("method")
        method = method if method in AUTH_METHODS else OTHER
        if fields.get("ok") is True:
            result = "success"
        else:
            kind = refusal_kind(str(fields.get("reason", "")))
            result = "refused" if kind in SLOT_REFUSALS else "error" if fields.get("server_side") else "failure"
            if result == "refused":
                self.refused[kind] = self.refused.get(kind, 0) + 1
        key = (method, result)
        self.auth[key] = self.auth.get(key, 0) + 1

    def _penalty(self, fields: dict[str, Any]) -> None:
        self.penalties += 1

    def _command(self, fields: dict[str, Any]) -> None:
        argv = fields.get("argv")
        name = argv[0] if argv and "line" not in fields and argv[0] in self.commands else OTHER
        key = (name, self.statuses.get(fields.get("exit_code"), OTHER))  # type: ignore[arg-type]
        self.command_runs[key] = self.command_runs.get(key, 0) + 1
        duration = fields.get("duration_ms")
        if isinstance(duration, int | float):
            histogram = self.durations.get(name)
            if histogram is None:
                histogram = self.durations[name] = _Histogram(DURATION_BUCKETS)
            histogram.observe(duration / 1000)

    def connection_refused(self, reason: str) -> None:
        kind = refusal_kind(reason)
        self.refused[kind] = self.refused.get(kind, 0) + 1

    def connection_closed(self, bytes_sent: int, rekeys: int) -> None:
        self.closed_bytes_sent += bytes_sent
        self.closed_rekeys += rekeys

    def file_hashed(self, size: int) -> None:
        self.hashed_bytes += size

    def audit_sink(self, sink: AuditSink) -> AuditSink:
        """`sink` with these metrics counting what passes through it."""
        return MetricsAudit(sink, self)

    def watch(self, state: LiveState) -> None:
        """Expose the gauges, bytes sent and rekeys of `state` (the server's live state)."""
        self.state = state

    # -- exposition ----------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The metrics in the Prometheus text format (CONTENT_TYPE): on the reactor thread, where
        the counts are kept and the live state changes."""
        return generate_latest(self.registry)


class _Histogram:
    """Counts per bucket (not cumulative) and the sum, as a Prometheus histogram exposes them."""

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        cumulative, out = 0, []
        for bound, count in zip((*map(floatToGoString, self.bounds), "+Inf"), self.counts, strict=True):
            cumulative += count
            out.append((bound, float(cumulative)))
        return out


class MetricsAudit:
    """An AuditSink that passes every record on, then counts it in the metrics."""

    def __init__(self, sink: AuditSink, metrics: Metrics):
        self.sink = sink
        self.metrics = metrics

    def record(self, event: str, **fields: Any) -> None:
        self.sink.record(event, **fields)
        self.metrics.observe(event, fields)

    def failure(self) -> str | None:
        return self.sink.failure()


class _Collector:
    """Turns the counts and the live state into metric families at each scrape."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        info = GaugeMetricFamily("conchcmd_build_info", "The running conchcmd's version", labels=["version"])
        info.add_metric([m.version], 1)
        yield info
        yield CounterMetricFamily(
            "conchcmd_connections_accepted", "Connections accepted (the SSH banner sent)", m.accepted
        )
        yield _labelled(
            CounterMetricFamily(
                "conchcmd_connections_refused",
                "Connections refused: at accept (penalty, max_startups_per_source, max_startups; no banner "
                "sent) or after authentication (max_clients, max_clients_per_user)",
                labels=["reason"],
            ),
            {(reason,): n for reason, n in m.refused.items()},
        )
        yield _labelled(
            CounterMetricFamily(
                "conchcmd_auth_attempts",
                "Authentication attempts as audited (not a key probe answered PK_OK, not a first `none`) by "
                "method and result (success, failure, refused: authenticated but turned away by max_clients, "
                "error: not decided for a server-side reason such as running out of file descriptors)",
                labels=["method", "result"],
            ),
            m.auth,
        )
        yield CounterMetricFamily("conchcmd_penalties", "Penalties given to sources for repeated failures", m.penalties)
        yield _labelled(
            CounterMetricFamily(
                "conchcmd_commands",
                "Commands run, by command (or other) and exit status (or other)",
                labels=["command", "status"],
            ),
            m.command_runs,
        )
        durations = HistogramMetricFamily(
            "conchcmd_command_duration_seconds", "How long commands ran, by command", labels=["command"]
        )
        for name, histogram in sorted(m.durations.items()):
            durations.add_metric([name], histogram.buckets(), histogram.sum)
        yield durations
        yield CounterMetricFamily(
            "conchcmd_hashed_bytes", "Bytes of the files comphash hashed to the end", m.hashed_bytes
        )
        state = m.state
        if state is None:
            return
        yield CounterMetricFamily(
            "conchcmd_sent_bytes",
            "SSH bytes sent to clients (packets as on the wire)",
            m.closed_bytes_sent + state.bytes_sent(),
        )
        yield CounterMetricFamily(
            "conchcmd_rekeys", "Key exchanges after a connection's first", m.closed_rekeys + state.rekeys()
        )
        yield GaugeMetricFamily(
            "conchcmd_connections_open", "Connections open (authenticated or not)", state.connections_open()
        )
        yield GaugeMetricFamily(
            "conchcmd_clients_open", "Authenticated connections holding a client slot", state.clients_open()
        )
        yield GaugeMetricFamily("conchcmd_sessions_open", "Session channels open", state.sessions_open())
        yield GaugeMetricFamily(
            "conchcmd_penalised_sources", "Sources refused now for repeated failures", state.sources_penalised()
        )


def _labelled(family: Any, counts: dict[Any, int]) -> Any:
    for labels, n in sorted(counts.items()):
        family.add_metric(list(labels), n)
    return family
