"""Prometheus metrics over the whole in-memory SSH stack: after known traffic (commands with known
exit statuses, failed logins, refusals, a penalty, a hash, a rekey) the exposition, parsed with
prometheus_client's own parser, holds exactly those counts; client text never becomes a label."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.keys import ed25519_key
from support.sshclient import Connection, RecordingChannel
from support.world import World, make_world
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

from conchcmd import __version__
from conchcmd.core.config import LimitsConfig, load_config
from conchcmd.edge import metricsweb
from conchcmd.edge.service import ConchcmdService

SUCCESS, FAILURE = 52, 51
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(world: World) -> Samples:
    """Every sample of the exposition, by name and labels."""
    metrics = world.server.metrics
    assert metrics is not None
    text = metrics.exposition().decode("utf-8")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def exec_on(conn: Connection, command: bytes) -> RecordingChannel:
    chan = conn.open_session()
    conn.exec(chan, command)
    conn.flush()
    return chan


def leave(conn: Connection) -> None:
    conn.client.transport.loseConnection()
    conn.flush()


def metered(tmp_path: Path, **changes: object) -> World:
    return make_world(tmp_path, metrics_listen="tcp:0:interface=127.0.0.1", **changes)  # type: ignore[arg-type]


def test_no_metrics_without_metrics_listen(world: World) -> None:
    assert world.server.metrics is None
    leave(world.login())  # and the server works as before


def test_counts_after_known_traffic(tmp_path: Path) -> None:
    w = metered(tmp_path, limits=LimitsConfig(penalty_seconds=30, max_startups_per_source=2))
    conn = w.login(peer="10.0.0.1")
    statuses = [exec_on(conn, line).exit_status for line in (b"help", b"help", b"nosuch", b"comphash relative")]
    assert statuses == [0, 0, 127, 2]
    hello = w.root / "hello.txt"
    assert exec_on(conn, b"comphash " + str(hello).encode()).exit_status == 0
    for _ in range(3):  # three failed logins from one source: a penalty
        bad = w.connect(peer="10.0.0.5")
        assert bad.login(b"admin", ed25519_key(77)) == FAILURE
        leave(bad)
    assert w.factory.buildProtocol(IPv4Address("TCP", "10.0.0.5", 5000)) is None  # penalised
    held = [w.connect(peer="10.0.0.8", port=41000 + n) for n in range(2)]
    assert w.factory.buildProtocol(IPv4Address("TCP", "10.0.0.8", 41010)) is None  # max_startups_per_source

    s = scrape(w)
    assert value(s, "conchcmd_build_info", version=__version__) == 1
    assert value(s, "conchcmd_connections_accepted_total") == 1 + 3 + 2
    assert value(s, "conchcmd_connections_refused_total", reason="penalty") == 1
    assert value(s, "conchcmd_connections_refused_total", reason="max_startups_per_source") == 1
    assert value(s, "conchcmd_auth_attempts_total", method="publickey", result="success") == 1
    assert value(s, "conchcmd_auth_attempts_total", method="publickey", result="failure") == 3
    assert value(s, "conchcmd_penalties_total") == 1
    assert value(s, "conchcmd_penalised_sources") == 1
    assert value(s, "conchcmd_commands_total", command="help", status="0") == 2
    assert value(s, "conchcmd_commands_total", command="other", status="127") == 1
    assert value(s, "conchcmd_commands_total", command="comphash", status="2") == 1
    assert value(s, "conchcmd_commands_total", command="comphash", status="0") == 1
    assert value(s, "conchcmd_command_duration_seconds_count", command="help") == 2
    assert value(s, "conchcmd_command_duration_seconds_count", command="comphash") == 2
    assert value(s, "conchcmd_hashed_bytes_total") == hello.stat().st_size
    assert value(s, "conchcmd_connections_open") == 1 + 2  # the logged-in one and the two held
    assert value(s, "conchcmd_clients_open") == 1
    assert value(s, "conchcmd_sessions_open") == 0  # each exec channel closed with its command
    sent = value(s, "conchcmd_sent_bytes_total")
    assert sent == sum(t.bytes_sent for t in w.factory.transports) + w.server.metrics.closed_bytes_sent
    assert sent > 0

    w.clock.advance(30)  # the penalty ends
    for c in (conn, *held):
        leave(c)
    s = scrape(w)
    assert value(s, "conchcmd_penalised_sources") == 0
    assert value(s, "conchcmd_connections_open") == 0
    assert value(s, "conchcmd_clients_open") == 0
    assert value(s, "conchcmd_sent_bytes_total") >= sent  # a counter: the closed connections' bytes stay


def test_sessions_open_counts_channels_and_rekeys_are_counted(tmp_path: Path) -> None:
    w = metered(tmp_path)
    conn = w.login()
    channels = [conn.open_session() for _ in range(3)]
    assert value(scrape(w), "conchcmd_sessions_open") == 3
    conn.conn.sendClose(channels[0])
    conn.flush()
    assert value(scrape(w), "conchcmd_sessions_open") == 2
    conn.client.sendKexInit()  # the client starts a rekey
    conn.flush()
    assert conn.server.kex_count == 2
    assert value(scrape(w), "conchcmd_rekeys_total") == 1
    leave(conn)
    assert value(scrape(w), "conchcmd_rekeys_total") == 1  # kept once the connection is gone


def test_client_text_never_becomes_a_label(tmp_path: Path) -> None:
    w = metered(tmp_path)
    conn = w.login()
    hostile = [b'rm -rf\n{x="', b"'rm -rf\n{x=\"'", b"exit 77", b"HELP", b"help\x00", b"\xff\xfe", b"'unterminated"]
    for line in hostile:
        exec_on(conn, line)
    text = w.server.metrics.exposition().decode()  # type: ignore[union-attr]
    commands = {
        (s.labels["command"], s.labels["status"])
        for family in text_string_to_metric_families(text)
        if family.name == "conchcmd_commands"
        for s in family.samples
        if s.name == "conchcmd_commands_total"
    }
    assert {name for name, _ in commands} == {"other", "exit"}
    assert {status for _, status in commands} <= {"0", "1", "2", "126", "127", "130", "other"}
    assert ("exit", "other") in commands  # `exit 77`: a status the client chose
    assert "rm -rf" not in text and "x=" not in text and "77" not in text


def test_a_client_turned_away_by_max_clients_is_a_refusal_not_a_failure(tmp_path: Path) -> None:
    w = metered(tmp_path, max_clients=1)
    first = w.login(peer="10.0.0.1")
    second = w.connect(peer="10.0.0.2")
    assert second.login(b"admin", ed25519_key()) != SUCCESS
    s = scrape(w)
    assert value(s, "conchcmd_auth_attempts_total", method="publickey", result="success") == 1
    assert value(s, "conchcmd_auth_attempts_total", method="publickey", result="refused") == 1
    assert value(s, "conchcmd_auth_attempts_total", method="publickey", result="failure") == 0
    assert value(s, "conchcmd_connections_refused_total", reason="max_clients_per_user") == 1
    leave(first)


# -- the HTTP endpoint, as the service serves it -------------------------------------------------

SERVICE_CONFIG = """\
listen = ["tcp:2222"]
metrics_listen = "tcp:9122:interface=127.0.0.1"
host_keys_dir = "keys"
authorized_keys = "keys/authorized_keys/%u"
audit_log = "audit.jsonl"
"""


class Reactor(MemoryReactorClock):
    """Remembers which ports were stopped (MemoryReactor's fake ports do not)."""

    def __init__(self) -> None:
        super().__init__()
        self.stopped: list[int] = []

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        listening = super().listenTCP(port, factory, backlog, interface)
        listening.stopListening = lambda: self.stopped.append(port)
        return listening


def started_service(base: Path) -> tuple[ConchcmdService, Reactor, io.StringIO]:
    (base / "conchcmd.toml").write_text(SERVICE_CONFIG)
    reactor = Reactor()
    out = io.StringIO()
    service = ConchcmdService(load_config(base / "conchcmd.toml", cwd=base), reactor, out)
    service.startService()
    assert service.ready.called
    return service, reactor, out


def http(reactor: MemoryReactorClock, request: bytes) -> bytes:
    """Send one raw request to the metrics port; what the server answers."""
    (site,) = [factory for port, factory, _backlog, interface in reactor.tcpServers if port == 9122]
    proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    sock = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
    proto.makeConnection(sock)
    proto.dataReceived(request)
    return sock.value()


def test_the_service_serves_get_metrics_on_metrics_listen_only(tmp_path: Path) -> None:
    service, reactor, out = started_service(tmp_path)
    ports = sorted((port, interface) for port, _f, _b, interface in reactor.tcpServers)
    assert ports == [(2222, ""), (9122, "127.0.0.1")]
    assert "conchcmd: serving metrics on tcp:9122:interface=127.0.0.1 (" in out.getvalue()
    answer = http(reactor, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nserver: conchcmd\r\n" in head.lower()  # not Twisted's version
    assert b"content-type: text/plain; version=0.0.4; charset=utf-8" in head.lower()
    families = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {"conchcmd_build_info", "conchcmd_connections_accepted", "conchcmd_connections_open"} <= families
    assert http(reactor, b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 200 ")
    for request in (
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /metrics/ HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /metricsx HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET //metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /metrics/../metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
        b"DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    ):
        answer = http(reactor, request)
        assert answer.startswith(b"HTTP/1.1 404 "), (request, answer)
        assert b"conchcmd_" not in answer
    assert reactor.stopped == []
    service.stopService()
    assert sorted(reactor.stopped) == [2222, 9122]  # stopped with the SSH port


def test_a_request_body_is_never_kept(tmp_path: Path) -> None:
    """Twisted keeps a body in memory, or writes one of 100 kB or more to a temporary file."""
    _service, reactor, _out = started_service(tmp_path)
    (site,) = [factory for port, factory, _backlog, interface in reactor.tcpServers if port == 9122]
    channel = HTTPChannel()
    channel.site = site
    channel.makeConnection(StringTransport())
    request = site.requestFactory(channel)
    request.gotLength(1_000_000_000)
    for _ in range(10):
        request.handleContentChunk(b"x" * 100_000)
    assert request.content.getvalue() == b""


def test_a_metrics_endpoint_that_cannot_listen_stops_the_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As for `listen`: a systemd: endpoint parses at load time but needs systemd's socket."""
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    monkeypatch.delenv("LISTEN_FDNAMES", raising=False)
    (tmp_path / "conchcmd.toml").write_text(
        SERVICE_CONFIG.replace("tcp:9122:interface=127.0.0.1", "systemd:domain=INET:index=0")
    )
    reactor = Reactor()
    service = ConchcmdService(load_config(tmp_path / "conchcmd.toml", cwd=tmp_path), reactor, io.StringIO())
    service.startService()
    failures: list[Any] = []
    service.ready.addErrback(failures.append)
    assert failures, "the server started without its metrics endpoint"
    assert service.stop_reason.startswith("startup failed: cannot serve metrics on systemd:domain=INET:index=0")
    assert "serving metrics" not in service.out.getvalue()  # type: ignore[attr-defined]


# -- the metrics port under attack: whatever it receives, the server keeps serving -----------------


def metrics_site(reactor: MemoryReactorClock) -> Any:
    (site,) = [factory for port, factory, _backlog, interface in reactor.tcpServers if port == 9122]
    return site


def http_connection(site: Any) -> tuple[Any, StringTransport]:
    """A connection accepted on the metrics port."""
    proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    assert proto is not None, "the connection was refused at accept"
    sock = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
    proto.makeConnection(sock)
    return proto, sock


def closed(proto: Any, sock: StringTransport) -> bool:
    """Whether the server closed the connection; if so the channel is told, as TCP would."""
    if sock.disconnecting and sock.connected:
        sock.connected = False
        proto.connectionLost(Failure(ConnectionDone()))
    return not sock.connected


GET = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    "requests",
    [GET * 1000, b"GET /metrics HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" * 10, GET + b"GET /nothing HTTP/1.1\r\n"],
    ids=["pipelined HTTP/1.1", "HTTP/1.0 keep-alive", "a second request started"],
)
def test_one_answer_per_connection_whatever_is_pipelined(tmp_path: Path, requests: bytes) -> None:
    """Twisted answers every pipelined request in full, read or not: 1000 requests of 35 bytes held
    1000 expositions in the send buffer."""
    _service, reactor, _out = started_service(tmp_path)
    proto, sock = http_connection(metrics_site(reactor))
    proto.dataReceived(requests)
    answer = sock.value()
    assert answer.count(b"HTTP/1.") == 1 and answer.split(b" ", 2)[1] == b"200"
    assert b"\r\nconnection: close\r\n" in answer.lower()
    assert closed(proto, sock)  # after its one answer
    assert metrics_site(reactor).channels == set()


@pytest.mark.parametrize(
    "dribble",
    [
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 100,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 999999\r\n\r\n" + b"b" * 100,
    ],
    ids=["slowloris head", "slow body"],
)
def test_a_connection_ends_at_its_deadline_however_it_dribbles(tmp_path: Path, dribble: bytes) -> None:
    """Twisted's idle timeout restarts at every byte: one byte each 5 s held a connection forever."""
    _service, reactor, _out = started_service(tmp_path)
    site = metrics_site(reactor)
    proto, sock = http_connection(site)
    for i in range(len(dribble)):
        if closed(proto, sock):
            break
        proto.dataReceived(dribble[i : i + 1])
        reactor.advance(5)
    assert closed(proto, sock) and sock.disconnected  # aborted
    assert reactor.seconds() == metricsweb.DEADLINE
    assert sock.value() == b""
    assert site.channels == set()


def test_connections_beyond_the_cap_are_closed_at_accept(tmp_path: Path) -> None:
    """Idle connections must not use up the file descriptors the SSH listener needs (a real server
    with a low RLIMIT_NOFILE: tests/e2e/test_e2e_metrics.py)."""
    _service, reactor, _out = started_service(tmp_path)
    site = metrics_site(reactor)
    held = [http_connection(site) for _ in range(metricsweb.MAX_CONNECTIONS)]
    for _ in range(3):
        assert site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50001)) is None
    held[0][1].loseConnection()
    assert closed(*held[0])
    proto, sock = http_connection(site)  # a slot is free again
    proto.dataReceived(GET)
    assert sock.value().startswith(b"HTTP/1.1 200 ") and closed(proto, sock)
    reactor.advance(metricsweb.DEADLINE)  # the idle ones end at their deadline
    assert all(closed(*connection) for connection in held[1:])
    assert site.channels == set()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n", b""),  # a line too long: closed
        (b"GET /metrics HTTP/1.1\r\n" + b"X: a\r\n" * 600 + b"\r\n", b"400"),  # too many headers
        (b"GET /metrics HTTP/1.1\r\n" + b"X-" + b"a" * 3000 + b": b\r\n" * 6 + b"\r\n", b"400"),  # head too big
        (b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", b"400"),  # bad chunk size
        (b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1\r\nx\r\n" * 500 + b"0\r\n\r\n", b"200"),
        (b"GET http://x/metrics HTTP/1.1\r\n\r\n", b"404"),  # absolute-form: answered, not followed
        (b"GET /%6detrics HTTP/1.1\r\n\r\n", b"404"),  # percent-encoding is not decoded
        (b"GET /metrics%3F HTTP/1.1\r\n\r\n", b"404"),
        (b"GET /metrics?\r\n\x00 HTTP/1.1\r\n\r\n", b"400"),
        (b"GET /metrics?%0a%22%7d=1 HTTP/1.1\r\n\r\n", b"200"),  # a query string is ignored
        (b"\xff\xfe GET /metrics HTTP/1.1\r\n\r\n", b"400"),
    ],
)
def test_odd_requests_get_a_plain_answer_and_close(tmp_path: Path, request_bytes: bytes, status: bytes) -> None:
    _service, reactor, _out = started_service(tmp_path)
    site = metrics_site(reactor)
    proto, sock = http_connection(site)
    proto.dataReceived(request_bytes)
    answer = sock.value()
    assert answer.split(b" ", 2)[1:2] == ([status] if status else []), answer[:200]
    assert answer.count(b"HTTP/1.1 ") == (1 if status else 0)
    assert (b"conchcmd_build_info" in answer) == (status == b"200")
    assert b"a" * 100 not in answer and b"Twisted" not in answer
    assert closed(proto, sock)


# -- counts under churn ------------------------------------------------------------------------------


def test_commands_ended_by_a_disconnect_are_counted_once_and_the_gauges_return_to_zero(tmp_path: Path) -> None:
    w = metered(tmp_path)
    conns = [w.login(peer=f"10.0.1.{n}") for n in range(3)]
    followers = []
    for conn in conns:
        followers.append(exec_on(conn, b"lastlog -f"))  # runs until its client goes
        for _ in range(2):
            conn.open_session()  # sessions that run nothing
    s = scrape(w)
    assert value(s, "conchcmd_sessions_open") == 9
    assert value(s, "conchcmd_connections_open") == value(s, "conchcmd_clients_open") == 3
    assert sum(v for (name, _), v in s.items() if name == "conchcmd_commands_total") == 0  # none has ended
    conns[0].conn.sendClose(followers[0])  # one ended by closing its channel
    conns[0].flush()
    for conn in conns:
        leave(conn)
    w.clock.advance(5)  # any follow poll after the close
    s = scrape(w)
    assert [r["argv"] for r in w.audit.of("command")] == [["lastlog", "-f"]] * 3
    assert sum(v for (name, _), v in s.items() if name == "conchcmd_commands_total") == 3
    assert value(s, "conchcmd_command_duration_seconds_count", command="lastlog") == 3
    for gauge in ("conchcmd_sessions_open", "conchcmd_connections_open", "conchcmd_clients_open"):
        assert value(s, gauge) == 0, gauge


def test_no_counter_decreases_under_random_churn(tmp_path: Path) -> None:
    """Logins, failed logins, commands, idle sessions, rekeys and disconnects in a random order
    (seeded), scraped after every step: each counter only grows; at the end every gauge is 0."""
    rng = random.Random(1226)
    w = metered(tmp_path, limits=LimitsConfig(penalty_seconds=30))
    open_conns: list[Connection] = []
    previous: Samples = {}
    failures = 0  # each source fails three times (a penalty), then the next one is used
    for step in range(60):
        action = rng.choice(["login", "bad", "command", "session", "rekey", "leave", "leave", "tick"])
        if action == "login" or (not open_conns and action in ("command", "session", "rekey", "leave")):
            open_conns.append(w.login(peer=f"10.0.2.{rng.randrange(4)}"))
        elif action == "bad":
            bad = w.connect(peer=f"10.0.3.{failures // 3}")
            failures += 1
            assert bad.login(b"admin", ed25519_key(77)) == FAILURE
            leave(bad)
        elif action == "command":
            exec_on(rng.choice(open_conns), rng.choice([b"help", b"nosuch", b"exit 3", b"lastlog -f"]))
        elif action == "session":
            rng.choice(open_conns).open_session()
        elif action == "rekey":
            conn = rng.choice(open_conns)
            conn.client.sendKexInit()
            conn.flush()
        elif action == "leave":
            leave(open_conns.pop(rng.randrange(len(open_conns))))
        else:
            w.clock.advance(rng.choice([1, 10, 31]))
        now = scrape(w)
        for key, before in previous.items():
            if key[0].endswith(("_total", "_count", "_sum", "_bucket")):
                assert now.get(key, 0.0) >= before, (step, action, key)
        previous = now
    for conn in open_conns:
        leave(conn)
    w.clock.advance(31)  # every penalty over
    s = scrape(w)
    for gauge in (
        "conchcmd_sessions_open",
        "conchcmd_connections_open",
        "conchcmd_clients_open",
        "conchcmd_penalised_sources",
    ):
        assert value(s, gauge) == 0, gauge
    assert value(s, "conchcmd_penalties_total") >= 1  # the churn did earn a penalty
    assert sum(v for (name, _), v in s.items() if name == "conchcmd_commands_total") == len(w.audit.of("command"))
