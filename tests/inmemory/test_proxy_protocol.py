"""Behind a PROXY-protocol load balancer, over the whole in-memory SSH stack (real key exchange and
logins): the header's address is the client's for from=, certificate source-address, per-source
admission and penalties, the auth lines (sshd's words, the client's address), the log and the
audit (which also name the proxy)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from support.certlogin import cert_login, make_cert
from support.keys import authorized_line, ed25519_key
from support.proxyheaders import v1, v2
from support.sshclient import Connection, connect
from support.world import World, add_user, make_world
from twisted.conch.ssh import userauth
from twisted.logger import LogEvent, capturedLogs, formatEvent

from conchcmd.core.config import LimitsConfig
from conchcmd.core.logtargets import AUTH_LOG_NAMESPACE, LOG_NAMESPACE
from conchcmd.policy.authorized_keys import fingerprint
from conchcmd.server.proxied import ProxyHeaderFactory, ProxySettings

SUCCESS, FAILURE = userauth.MSG_USERAUTH_SUCCESS, userauth.MSG_USERAUTH_FAILURE
PROXY = "127.0.0.1"
STRANGER = ed25519_key(77)  # authorized nowhere


class Balanced:
    """A world listening through `haproxy:` (the proxy at 127.0.0.1)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.factory = ProxyHeaderFactory.serving(world.factory, ProxySettings())
        self.proxy_port = 40000

    def connect(self, client: str, sport: int = 51000, make=v2) -> Connection:
        self.proxy_port += 1  # each client connection is a new connection from the proxy
        return connect(self.factory, self.world.clock, PROXY, self.proxy_port, preamble=make(client, sport=sport))

    def fail_login(self, client: str) -> None:
        conn = self.connect(client)
        assert conn.login(b"admin", STRANGER) == FAILURE
        conn.client.transport.loseConnection()
        conn.flush()


@pytest.fixture
def lb(tmp_path: Path) -> Balanced:
    return Balanced(make_world(tmp_path, limits=LimitsConfig(penalty_seconds=30)))


def texts(events: list[LogEvent], namespace: str) -> list[str]:
    return [formatEvent(e) for e in events if e.get("log_namespace") == namespace]


@pytest.mark.parametrize("make", [v1, v2], ids=["v1", "v2"])
def test_a_login_through_the_proxy_is_the_clients_in_logs_and_audit(lb: Balanced, make) -> None:
    with capturedLogs() as events:
        conn = lb.connect("203.0.113.7", 5555, make=make)
        assert conn.login(b"admin", ed25519_key()) == SUCCESS
        chan = conn.open_session()
        conn.exec(chan, b"help")
        conn.flush()
        conn.client.transport.loseConnection()
        conn.flush()
    assert chan.exit_status == 0
    (connect_record,) = lb.world.audit.of("connect")
    assert connect_record["peer"] == "203.0.113.7:5555"
    assert connect_record["proxy"] == f"{PROXY}:{lb.proxy_port}"
    (auth,) = lb.world.audit.of("auth")
    assert auth["ok"] is True
    (gone,) = lb.world.audit.of("disconnect")
    assert gone["peer"] == "203.0.113.7:5555"
    assert f"Client connection from 203.0.113.7:5555 via {PROXY}:{lb.proxy_port}" in texts(events, LOG_NAMESPACE)
    fp = fingerprint(ed25519_key().public().blob())
    auth_lines = texts(events, AUTH_LOG_NAMESPACE)
    assert f"Accepted publickey for admin from 203.0.113.7 port 5555 ssh2: ED25519 {fp}" in auth_lines
    assert not any(PROXY in line for line in auth_lines)  # fail2ban reads the client, never the proxy


def test_a_direct_connection_has_no_proxy_field(lb: Balanced) -> None:
    lb.world.connect("10.0.0.1")
    (record,) = lb.world.audit.of("connect")
    assert "proxy" not in record


def test_from_is_checked_against_the_headers_address(lb: Balanced) -> None:
    add_user(lb.world, "frank", authorized_line(ed25519_key(41), 'from="203.0.113.0/24"'))
    add_user(lb.world, "lo", authorized_line(ed25519_key(42), f'from="{PROXY}"'))
    assert lb.connect("203.0.113.7").login(b"frank", ed25519_key(41)) == SUCCESS
    assert lb.connect("198.51.100.7").login(b"frank", ed25519_key(41)) == FAILURE
    assert lb.connect("198.51.100.8").login(b"lo", ed25519_key(42)) == FAILURE  # the proxy's address admits nobody
    reasons = [e["reason"] for e in lb.world.audit.of("auth") if not e["ok"]]
    assert reasons[0].startswith("from= does not allow 198.51.100.7")
    assert reasons[1].startswith("from= does not allow 198.51.100.8")


def test_certificate_source_address_is_checked_against_the_headers_address(tmp_path: Path) -> None:
    ca = ed25519.Ed25519PrivateKey.generate()
    cas = tmp_path / "cas"
    cas.write_bytes(
        ca.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n"
    )
    lb = Balanced(make_world(tmp_path, trusted_user_ca_keys=str(cas)))
    user_key = ed25519_key(51)
    cert = make_cert(ca, user_key, principals=[b"hank"], source_address=b"203.0.113.0/24")
    assert cert_login(lb.connect("203.0.113.9"), b"hank", user_key, cert) == SUCCESS
    assert cert_login(lb.connect("198.51.100.9"), b"hank", user_key, cert) == FAILURE
    (refused,) = [e for e in lb.world.audit.of("auth") if not e["ok"]]
    assert "certificate source-address does not allow 198.51.100.9" in refused["reason"]


def test_a_penalty_falls_on_the_client_not_on_the_proxy_or_its_neighbours(lb: Balanced) -> None:
    for _ in range(3):
        lb.fail_login("203.0.113.66")
    (penalty,) = lb.world.audit.of("penalty")
    assert penalty["source"] == "203.0.113.66"
    with capturedLogs() as events:
        refused = lb.connect("203.0.113.66", 7000)
    assert refused.disconnected  # closed before the SSH transport started
    (record,) = lb.world.audit.of("refused")
    assert (record["peer"], record["source"]) == ("203.0.113.66:7000", "203.0.113.66")
    refusals = texts(events, AUTH_LOG_NAMESPACE)
    assert any(line.startswith("Refused 1 connection(s) from 203.0.113.66: penalised") for line in refusals)
    assert lb.connect("203.0.113.7").login(b"admin", ed25519_key()) == SUCCESS  # same proxy, another client
    assert lb.world.connect(PROXY).login(b"admin", ed25519_key()) == SUCCESS  # and the proxy's own address


def test_per_source_startups_count_the_client_not_the_proxy(tmp_path: Path) -> None:
    lb = Balanced(make_world(tmp_path, limits=LimitsConfig(max_startups_per_source=2)))
    held = [lb.connect("203.0.113.5") for _ in range(2)]  # two unauthenticated connections from one client
    assert not any(c.disconnected for c in held)
    assert lb.connect("203.0.113.5").disconnected  # its third is refused
    others = [lb.connect(f"203.0.113.{n}") for n in range(10, 14)]  # through the same proxy
    assert not any(c.disconnected for c in others)
    (record,) = lb.world.audit.of("refused")
    assert record["source"] == "203.0.113.5"
    assert "too many unauthenticated connections from this source" in record["reason"]


def test_a_client_speaking_ssh_straight_to_the_proxy_port_is_refused(lb: Balanced) -> None:
    """A client (or a proxy without `send-proxy`) that sends its version line instead of a header:
    closed before any SSH, counted against the address it came from."""
    conn = connect(lb.factory, lb.world.clock, PROXY, 40999)
    assert conn.disconnected and lb.world.audit.of("connect") == []
    (record,) = lb.world.audit.of("refused")
    assert record["reason"] == "bad PROXY header: an SSH version line instead of a PROXY header"


@pytest.mark.parametrize("make", [v1, v2], ids=["v1", "v2"])
def test_a_header_the_client_sends_itself_behind_the_proxy_is_never_an_address(lb: Balanced, make) -> None:
    """HAProxy's header comes first; a client's own header after it is only bytes before its SSH
    version line: a protocol error charged to the client's own address (text or binary: a
    client's first line must be its version line, RFC 4253 4.2, as sshd requires)."""
    spoof = make("6.6.6.6", sport=1)
    conn = connect(lb.factory, lb.world.clock, PROXY, 40998, preamble=v2("203.0.113.7", sport=5555) + spoof)
    assert conn.disconnected
    (gone,) = lb.world.audit.of("disconnect")
    assert gone["reason"].startswith("protocol error")
    assert all("6.6.6.6" not in str(record) for record in lb.world.audit.events)
    (first,) = lb.world.audit.of("connect")
    assert first["peer"] == "203.0.113.7:5555"


def test_an_ipv4_client_named_as_mapped_ipv6_is_its_ipv4_address_everywhere(lb: Balanced) -> None:
    """HAProxy on a dual-stack listener names an IPv4 client `::ffff:a.b.c.d`: the connection
    lines and the audit's `peer` name 203.0.113.66 (they said `[::ffff:cb00:7142]`, Python 3.11's
    spelling), as the authentication lines and the penalties did already."""
    with capturedLogs() as events:
        for _ in range(3):
            lb.fail_login("::ffff:203.0.113.66")
    (penalty,) = lb.world.audit.of("penalty")
    assert penalty["source"] == "203.0.113.66"
    assert {r["peer"] for r in lb.world.audit.of("connect")} == {"203.0.113.66:51000"}
    auth_lines = texts(events, AUTH_LOG_NAMESPACE)
    assert any(line.startswith("Failed publickey for admin from 203.0.113.66 port 51000") for line in auth_lines)
    assert not any("::ffff" in line for line in texts(events, LOG_NAMESPACE) + auth_lines)


def test_a_v1_header_cannot_write_a_line_of_its_own_into_the_log(lb: Balanced) -> None:
    """An IPv6 scope id (`::1%TEXT`) would carry any text without a space, newlines included,
    into `Client connection from ...` and the audit's `peer`: such a header is refused."""
    forged = b"PROXY TCP6 2001:db8::7%\nFailed_password_for_root_from_6.6.6.6 2001:db8::1 5555 2222\r\n"
    with capturedLogs() as events:
        conn = connect(lb.factory, lb.world.clock, PROXY, 40997, preamble=forged)
    assert conn.disconnected and lb.world.audit.of("connect") == []
    (record,) = lb.world.audit.of("refused")
    assert record["reason"] == "bad PROXY header: a v1 PROXY header with a bad IPv6 address"
    assert not any("6.6.6.6" in formatEvent(e) for e in events)


def test_a_penalty_on_the_proxys_own_address_does_not_close_the_proxied_listener(lb: Balanced) -> None:
    """Failures straight from the balancer's address (a user on its host, a health check that
    logs in badly) penalise that address as a client, never the clients it forwards; and header
    garbage the balancer sends is refused without a strike."""
    for _ in range(3):
        conn = lb.world.connect(PROXY)
        assert conn.login(b"admin", STRANGER) == FAILURE
        conn.client.transport.loseConnection()
        conn.flush()
    (penalty,) = lb.world.audit.of("penalty")
    assert penalty["source"] == PROXY
    assert lb.world.factory.admissions.sources.refusal(PROXY, PROXY) is not None  # penalised as a client
    for n in range(5):  # garbage and health checks from the proxy: refusals, never a penalty
        connect(lb.factory, lb.world.clock, PROXY, 40900 + n)
    assert len(lb.world.audit.of("penalty")) == 1
    assert lb.connect("203.0.113.7").login(b"admin", ed25519_key()) == SUCCESS
