"""Metrics of a real `conchcmd serve` after known traffic from the real OpenSSH client: 3 commands
with known exit statuses, 2 failed logins, 1 connection refused (max_startups_per_source). Scraped
over HTTP and parsed with prometheus_client's parser, then scraped by a REAL Prometheus server
(Debian's `prometheus`, started here on loopback), whose query API must return the same counts."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.prometheus import PROMETHEUS, Prometheus, http_get
from support.reliability import rss_kib
from support.server import Server, next_source

from conchcmd.edge.metricsweb import MAX_CONNECTIONS

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(shutil.which("ssh") is None, reason="no OpenSSH client")]

METRICS_LINE = re.compile(rb"conchcmd: serving metrics on .* \(127\.0\.0\.1:(\d+)\)")


@dataclass(frozen=True)
class Metered:
    server: Server
    metrics_port: int
    hashed: int  # bytes of the file hashed

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


def refused_once(server: Server) -> None:
    """One connection refused at accept: a second one from a source that holds its only startup."""
    source = next_source()
    with socket.create_connection(("127.0.0.1", server.port), source_address=(source, 0), timeout=10) as held:
        assert held.recv(64).startswith(b"SSH-2.0-")  # admitted: the banner
        with socket.create_connection(("127.0.0.1", server.port), source_address=(source, 0), timeout=10) as refused:
            assert refused.recv(64) == b""  # closed at once, no banner


@pytest.fixture(scope="module")
def metered(make_server: Callable[..., Server]) -> Iterator[Metered]:
    server = make_server(settings={"metrics_listen": "tcp:0:interface=127.0.0.1", "max_startups_per_source": 1})
    port = server.wait_listening(METRICS_LINE, 10)
    small = server.data.small
    for remote, status in (("help", 0), (f"comphash {small}", 0), ("comphash relative", 2)):
        assert server.ssh(remote).returncode == status
    for _ in range(2):
        assert server.ssh("help", key=server.keys.stranger).returncode == 255  # Permission denied
    refused_once(server)
    metered = Metered(server, port, small.stat().st_size)
    # Every connection has ended on the server's side (an ssh client may exit before that).
    server.wait_for(lambda: len(server.audit_since(0, "disconnect")) == 6, 20, "the six disconnect records")
    yield metered


EXPECTED = {
    ("conchcmd_connections_accepted_total", ()): 3 + 2 + 1,
    ("conchcmd_connections_refused_total", (("reason", "max_startups_per_source"),)): 1,
    ("conchcmd_auth_attempts_total", (("method", "publickey"), ("result", "success"))): 3,
    ("conchcmd_auth_attempts_total", (("method", "publickey"), ("result", "failure"))): 2,
    ("conchcmd_commands_total", (("command", "help"), ("status", "0"))): 1,
    ("conchcmd_commands_total", (("command", "comphash"), ("status", "0"))): 1,
    ("conchcmd_commands_total", (("command", "comphash"), ("status", "2"))): 1,
    ("conchcmd_command_duration_seconds_count", (("command", "comphash"),)): 2,
    ("conchcmd_connections_open", ()): 0,
    ("conchcmd_sessions_open", ()): 0,
    ("conchcmd_clients_open", ()): 0,
}


def test_metrics_after_known_traffic(metered: Metered) -> None:
    status, body = http_get(metered.url)
    assert status == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    assert {key: samples.get(key) for key in EXPECTED} == EXPECTED
    assert samples[("conchcmd_hashed_bytes_total", ())] == metered.hashed
    assert sum(v for (name, _), v in samples.items() if name == "conchcmd_commands_total") == 3
    assert samples[("conchcmd_sent_bytes_total", ())] > 0
    # The same counts as the audit log's records.
    events = [record["event"] for record in metered.server.audit()]
    assert events.count("connect") == EXPECTED[("conchcmd_connections_accepted_total", ())]
    assert events.count("command") == 3


def test_only_get_metrics_is_served(metered: Metered) -> None:
    base = f"http://127.0.0.1:{metered.metrics_port}"
    for path in ("/", "/metrics/", "/metricsx", "/favicon.ico", "/api/v1/query"):
        status, body = http_get(base + path)
        assert (status, b"conchcmd_" in body) == (404, False), path


def scraped(metered: Metered) -> dict[tuple[str, tuple[tuple[str, str], ...]], tuple[str, float]]:
    status, body = http_get(metered.url)
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): (family.type, s.value)
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def test_counters_survive_a_sighup_reload(metered: Metered) -> None:
    """SIGHUP re-reads the configuration: the counts go on (a counter that decreased would read as a
    restart to Prometheus's rate())."""
    server = metered.server
    before = scraped(metered)
    mark = server.audit_mark()
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for(lambda: server.audit_since(mark, "reload"), 10, "the reload record")
    after = scraped(metered)
    assert after.keys() == before.keys()
    for key, (kind, value) in before.items():
        if kind in ("counter", "histogram"):
            assert after[key][1] >= value, key
    assert after[("conchcmd_connections_accepted_total", ())] == before[("conchcmd_connections_accepted_total", ())]
    assert after[("conchcmd_connections_accepted_total", ())][1] == 6


@pytest.fixture
def prometheus(tmp_path: Path, metered: Metered) -> Iterator[Prometheus]:
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (Debian package prometheus)")
    server = Prometheus(tmp_path / "prometheus", [f"127.0.0.1:{metered.metrics_port}"])
    try:
        server.start()
        yield server
    finally:
        server.stop()


def test_a_real_prometheus_scrapes_the_expected_counts(prometheus: Prometheus, metered: Metered) -> None:
    # Wait (bounded) for a successful scrape: Prometheus scrapes every second.
    assert prometheus.wait_value('up{job="conchcmd"}', 1.0) == 1.0, prometheus.log_text()
    queries = {
        "sum(conchcmd_commands_total)": 3,
        'conchcmd_commands_total{command="help",status="0"}': 1,
        'conchcmd_commands_total{command="comphash",status="0"}': 1,
        'conchcmd_commands_total{command="comphash",status="2"}': 1,
        'conchcmd_auth_attempts_total{method="publickey",result="failure"}': 2,
        'conchcmd_auth_attempts_total{method="publickey",result="success"}': 3,
        'conchcmd_connections_refused_total{reason="max_startups_per_source"}': 1,
        "conchcmd_connections_accepted_total": 6,
        "conchcmd_hashed_bytes_total": metered.hashed,
        'conchcmd_command_duration_seconds_count{command="help"}': 1,
        "conchcmd_connections_open": 0,
        'conchcmd_build_info{job="conchcmd"}': 1,
    }
    returned = {expression: prometheus.value(expression) for expression in queries}
    assert returned == queries


#: The server's file descriptor limit in the flood test: low, so that a flood of twice as many
#: connections would use them all up.
FD_LIMIT = 128


def limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_flood_of_the_metrics_port_leaves_ssh_serving(make_server: Callable[..., Server]) -> None:
    """Pipelined requests never read, then idle connections twice the server's RLIMIT_NOFILE: the
    server's memory and descriptors stay bounded and SSH logins go on (without the cap the SSH
    listener's accept() failed with EMFILE; every pipelined request was answered into memory)."""
    server = make_server(
        settings={"metrics_listen": "tcp:0:interface=127.0.0.1"}, popen_extra={"preexec_fn": limit_fds}
    )
    port = server.wait_listening(METRICS_LINE, 10)
    assert server.ssh("help").returncode == 0
    rss_before, fds_before = rss_kib(server.pid), open_fds(server.pid)
    pipelined = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 1800  # 63 kB: one read
    held: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            held[-1].sendall(pipelined)  # and never read what comes back
        assert server.ssh("help").returncode == 0  # the server has read and answered them
        grown_mib = (rss_kib(server.pid) - rss_before) / 1024
        assert grown_mib < 16, f"the server grew by {grown_mib:.0f} MiB"
        for _ in range(2 * FD_LIMIT):
            with contextlib.suppress(OSError):  # not accepted (the listen backlog is full)
                held.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        for _ in range(3):
            assert server.ssh("help").returncode == 0
        assert open_fds(server.pid) <= fds_before + MAX_CONNECTIONS + 2
    finally:
        for sock in held:
            sock.close()
    server.wait_for(lambda: open_fds(server.pid) <= fds_before, 20, "the metrics connections to close")
    assert http_get(f"http://127.0.0.1:{port}/metrics")[0] == 200
