"""conchcmd.core.metrics: names and labels by Prometheus's conventions, label values only from fixed
sets (never client text), one registry per server, and `metrics_listen` parsed like `listen`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock

from conchcmd.commands.framework import ExitStatus
from conchcmd.core.audit import MemoryAuditLog
from conchcmd.core.config import ConfigError, LimitsConfig, parse_config
from conchcmd.core.metrics import Metrics, refusal_kind
from conchcmd.server.admission import Admissions

COMMANDS = ("lastlog", "comphash", "help", "exit")


class Idle:
    """A LiveState with nothing open."""

    def connections_open(self) -> int:
        return 0

    clients_open = sessions_open = sources_penalised = bytes_sent = rekeys = connections_open


def metrics() -> Metrics:
    m = Metrics(version="9.9.9", statuses=ExitStatus, commands=COMMANDS)
    m.watch(Idle())
    return m


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(m.exposition().decode())
        for s in family.samples
    }


def command(m: Metrics, argv: list[str], status: int, **extra: Any) -> None:
    m.audit_sink(MemoryAuditLog()).record("command", argv=argv, exit_code=status, duration_ms=1.5, **extra)


def test_names_types_and_units_follow_prometheus_conventions() -> None:
    families = {f.name: f for f in text_string_to_metric_families(metrics().exposition().decode())}
    assert all(name.startswith("conchcmd_") for name in families)
    counters = {name for name, f in families.items() if f.type == "counter"}
    assert counters == {
        "conchcmd_connections_accepted",
        "conchcmd_connections_refused",
        "conchcmd_auth_attempts",
        "conchcmd_penalties",
        "conchcmd_commands",
        "conchcmd_hashed_bytes",
        "conchcmd_sent_bytes",
        "conchcmd_rekeys",
    }
    gauges = {name for name, f in families.items() if f.type == "gauge"}
    assert gauges == {
        "conchcmd_build_info",
        "conchcmd_connections_open",
        "conchcmd_clients_open",
        "conchcmd_sessions_open",
        "conchcmd_penalised_sources",
    }
    assert families["conchcmd_command_duration_seconds"].type == "histogram"
    text = metrics().exposition().decode()
    assert "conchcmd_sent_bytes_total 0.0" in text and "conchcmd_rekeys_total 0.0" in text
    assert 'conchcmd_build_info{version="9.9.9"} 1.0' in text
    assert all(f.documentation for f in families.values())
    assert "_created" not in text  # no creation-time series beside the counters


def test_every_server_has_its_own_registry_and_the_global_one_is_untouched() -> None:
    first, second = metrics(), metrics()
    command(first, ["help"], 0)
    assert samples(first)[("conchcmd_commands_total", (("command", "help"), ("status", "0")))] == 1
    assert ("conchcmd_commands_total", (("command", "help"), ("status", "0"))) not in samples(second)
    assert b"conchcmd_" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)


@pytest.mark.parametrize(
    ("argv", "extra", "status", "labels"),
    [
        (["help"], {}, 0, ("help", "0")),
        (["comphash", "/x"], {}, 126, ("comphash", "126")),
        (["rm", '-rf\n{x="'], {}, 127, ("other", "127")),
        (['rm -rf\\x0a{x="'], {}, 127, ("other", "127")),
        (["HELP"], {}, 127, ("other", "127")),
        (["help\\x00"], {}, 127, ("other", "127")),
        ([], {"line": "'rm -rf\\x0a{x=\""}, 2, ("other", "2")),
        (["help"], {"line": "help '"}, 2, ("other", "2")),  # unparsed: argv is not a command
        (["exit", "77"], {}, 77, ("exit", "other")),
        (["exit", "255"], {}, 255, ("exit", "other")),
        (["lastlog", "-f"], {}, 130, ("lastlog", "130")),
    ],
)
def test_command_labels_come_from_fixed_sets(
    argv: list[str], extra: dict[str, str], status: int, labels: tuple[str, str]
) -> None:
    m = metrics()
    command(m, argv, status, **extra)
    counted = {key: v for key, v in samples(m).items() if key[0] == "conchcmd_commands_total"}
    assert counted == {("conchcmd_commands_total", (("command", labels[0]), ("status", labels[1]))): 1}
    duration = samples(m)[("conchcmd_command_duration_seconds_sum", (("command", labels[0]),))]
    assert duration == 0.0015


@pytest.mark.parametrize(
    ("method", "label"),
    [
        ("publickey", "publickey"),
        ("password", "password"),
        ("keyboard-interactive", "keyboard-interactive"),
        ('publickey\\x0a{x="', "other"),
        ("PUBLICKEY", "other"),
        ("", "other"),
        (None, "other"),
    ],
)
def test_auth_method_labels_are_the_rfc_names_or_other(method: str | None, label: str) -> None:
    m = metrics()
    m.audit_sink(MemoryAuditLog()).record("auth", ok=False, user="x", method=method, reason="bad signature")
    key = ("conchcmd_auth_attempts_total", (("method", label), ("result", "failure")))
    assert samples(m)[key] == 1


def test_a_login_failed_for_a_server_side_reason_is_an_error_not_a_failure() -> None:
    """Out of descriptors, say: an alert on failed logins must not read it as an attack."""
    m = metrics()
    sink = m.audit_sink(MemoryAuditLog())
    reason = "authorized_keys /k/admin cannot be read: Too many open files (a server-side failure)"
    sink.record("auth", ok=False, user="admin", method="publickey", server_side=True, reason=reason)
    sink.record("auth", ok=False, user="admin", method="publickey", reason="key not in authorized_keys")
    found = samples(m)
    assert found[("conchcmd_auth_attempts_total", (("method", "publickey"), ("result", "error")))] == 1
    assert found[("conchcmd_auth_attempts_total", (("method", "publickey"), ("result", "failure")))] == 1


def test_records_pass_through_unchanged() -> None:
    log = MemoryAuditLog()
    sink = metrics().audit_sink(log)
    sink.record("command", argv=["help"], exit_code=0, duration_ms=1.0)
    sink.record("whatever", x=1)
    assert log.events == [
        {"event": "command", "argv": ["help"], "exit_code": 0, "duration_ms": 1.0},
        {"event": "whatever", "x": 1},
    ]
    assert sink.failure() is None


def test_every_refusal_text_of_the_admission_control_has_its_kind() -> None:
    """The kinds are read from the texts server/admission.py writes: each path is driven here, so
    a changed text fails this test instead of becoming "other"."""
    clock = Clock()
    limits = LimitsConfig(max_startups=2, max_startups_per_source=1, penalty_seconds=30)
    seen: list[str] = []

    class Recorder:
        def connection_refused(self, reason: str) -> None:
            seen.append(refusal_kind(reason))

        def connection_closed(self, bytes_sent: int, rekeys: int) -> None:
            pass

    admissions = Admissions(limits, clock, MemoryAuditLog(), max_clients=1, max_clients_per_user=1, metrics=Recorder())
    first = admissions.start("10.0.0.1", "10.0.0.1:1", "c1")
    assert admissions.refuse(IPv4Address("TCP", "10.0.0.1", 2))  # max_startups_per_source
    admissions.start("10.0.0.2", "10.0.0.2:1", "c2")
    assert admissions.refuse(IPv4Address("TCP", "10.0.0.3", 1))  # max_startups
    admissions.release(first)
    for n in range(3):
        admissions.release(admissions.start("10.0.0.4", "10.0.0.4:1", f"s{n}"), "failed authentication")
    assert admissions.refuse(IPv4Address("TCP", "10.0.0.4", 1))  # penalty
    assert seen == ["max_startups_per_source", "max_startups", "penalty"]
    ticket = admissions.start("10.0.0.5", "10.0.0.5:1", "c5")
    assert admissions.admit(ticket, "alice") is None
    per_user = admissions.admit(admissions.start("10.0.0.6", "10.0.0.6:1", "c6"), "alice")
    total = admissions.admit(admissions.start("10.0.0.7", "10.0.0.7:1", "c7"), "bob")
    assert per_user is not None and refusal_kind(per_user) == "max_clients_per_user"
    assert total is not None and refusal_kind(total) == "max_clients"
    assert refusal_kind("penalised") == "other"  # a prefix, not a guess


def test_bytes_and_rekeys_of_closed_connections_stay_counted() -> None:
    m = metrics()
    m.connection_closed(1000, 2)
    m.connection_closed(24, 0)
    m.file_hashed(4096)
    s = samples(m)
    assert s[("conchcmd_sent_bytes_total", ())] == 1024
    assert s[("conchcmd_rekeys_total", ())] == 2
    assert s[("conchcmd_hashed_bytes_total", ())] == 4096


# -- the configuration key ------------------------------------------------------------------------


def parse(text: str) -> Any:
    return parse_config(text, base_dir=Path("/srv"), source=Path("/srv/conchcmd.toml"))


def test_metrics_listen_is_unset_by_default_and_said_so() -> None:
    config = parse("")
    assert config.metrics_listen is None
    assert "# metrics_listen unset: no metrics are served\n" in config.describe()


def test_metrics_listen_is_kept_and_shown() -> None:
    config = parse('metrics_listen = "tcp:9122:interface=127.0.0.1"')
    assert config.metrics_listen == "tcp:9122:interface=127.0.0.1"
    assert 'metrics_listen = "tcp:9122:interface=127.0.0.1"\n' in config.describe()
    assert parse(config.describe().split("\n", 1)[1]).metrics_listen == config.metrics_listen


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('metrics_listen = "tcp:99999"', "'tcp:99999' is not an endpoint Twisted can listen on: port 99999"),
        ('metrics_listen = "bogus:1"', "'bogus:1' is not an endpoint Twisted can listen on: "),
        ('metrics_listen = "tcp:9122:interface=1.2.3"', "is not an endpoint Twisted can listen on: interface"),
        ('metrics_listen = "haproxy:tcp:9122"', "a PROXY header is for the SSH listeners, not for metrics"),
        ('metrics_listen = ""', "must not be empty"),
        ("metrics_listen = 9122", "must be a string, not int"),
        ('metrics_listen = ["tcp:9122"]', "must be a string, not list"),
    ],
)
def test_a_bad_metrics_listen_is_an_error_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    assert caught.value.key == "metrics_listen"
    assert message in str(caught.value)


def test_durations_fall_in_cumulative_le_buckets() -> None:
    m = metrics()
    sink = m.audit_sink(MemoryAuditLog())
    for ms in (0.5, 1.0, 1.01, 400.0, 10 * 60 * 1000.0):  # 1 ms is in le="0.001": buckets are <=
        sink.record("command", argv=["lastlog"], exit_code=0, duration_ms=ms)
    s = samples(m)

    def bucket(le: str) -> float:
        return s[("conchcmd_command_duration_seconds_bucket", (("command", "lastlog"), ("le", le)))]

    assert (bucket("0.001"), bucket("0.0025"), bucket("0.5"), bucket("300.0"), bucket("+Inf")) == (2, 3, 4, 4, 5)
    assert s[("conchcmd_command_duration_seconds_count", (("command", "lastlog"),))] == 5
    assert s[("conchcmd_command_duration_seconds_sum", (("command", "lastlog"),))] == pytest.approx(600.40251)


HOSTILE = st.one_of(
    st.text(max_size=20),
    st.sampled_from(
        ['x"} 1\n# TYPE y counter\ny 9', "\udcff\udcfe", "\\", "}", "\n", "\x00", "lastlog\n", "help ", "Help"]
    ),
)
RECORDS = st.lists(
    st.one_of(
        st.tuples(
            st.just("auth"),
            st.fixed_dictionaries({"ok": st.booleans(), "user": HOSTILE, "method": HOSTILE, "reason": HOSTILE}),
        ),
        st.tuples(
            st.just("command"),
            st.fixed_dictionaries(
                {"user": HOSTILE, "argv": st.lists(HOSTILE, max_size=3), "exit_code": st.integers(-(2**40), 2**40)}
            ),
        ),
        st.tuples(
            st.sampled_from(["connect", "penalty", "disconnect", "x\n}"]), st.fixed_dictionaries({"user": HOSTILE})
        ),
    ),
    max_size=30,
)
ALLOWED = {
    "command": {*COMMANDS, "other"},
    "status": {*(str(int(s)) for s in ExitStatus), "other"},
    "method": {"none", "publickey", "password", "keyboard-interactive", "hostbased", "gssapi-with-mic", "other"},
    "result": {"success", "failure", "refused"},
    "reason": {"penalty", "max_startups_per_source", "max_startups", "max_clients", "max_clients_per_user", "other"},
    "version": {"9.9.9"},
}


@settings(max_examples=200, deadline=None)
@given(RECORDS)
def test_no_audit_record_puts_client_text_in_the_exposition(records: list[tuple[str, dict[str, Any]]]) -> None:
    """Whatever a client makes the audit say (user names, commands, methods, reasons with quotes,
    newlines, `}` or lone surrogates from non-UTF-8 bytes), the scrape parses to series whose label
    values come from the fixed sets, a bounded number of them."""
    m = metrics()
    sink = m.audit_sink(MemoryAuditLog())
    for event, fields in records:
        sink.record(event, **fields)
    text = m.exposition().decode("ascii")  # nothing but ASCII
    found = samples(m)
    for _name, labels in found:
        for label, label_value in labels:
            assert label_value in ALLOWED.get(label, {label_value}) or label == "le", (label, label_value)
    assert {label for _name, labels in found for label, _ in labels} <= {*ALLOWED, "le"}
    count = sum(1 for event, _ in records if event == "command")
    assert sum(v for (name, _), v in found.items() if name == "conchcmd_commands_total") == count
    assert sum(v for (name, _), v in found.items() if name == "conchcmd_auth_attempts_total") == sum(
        1 for event, _ in records if event == "auth"
    )
    assert len(found) <= 5 * 7 + 7 * 3 + 6 + 5 * 19 + 20  # every label combination, at most
    assert text.count("\n# TYPE ") + text.startswith("# TYPE ") <= 14


def test_a_server_without_metrics_does_not_load_twisted_web() -> None:
    """twisted.web costs each process about 4 MiB of memory (a fleet runs one per host): the
    serving modules load it only for `metrics_listen`."""
    import subprocess
    import sys

    code = (
        "import sys, conchcmd.edge.cli, conchcmd.edge.service, conchcmd.app\n"
        "print(sorted(m for m in sys.modules if m == 'twisted.web' or m.startswith('twisted.web.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout
