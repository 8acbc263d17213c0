"""`max_clients` and `max_clients_per_user`: one key holder cannot lock every operator out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.keys import authorized_line, ed25519_key
from support.sshclient import Connection
from support.world import World, make_world
from twisted.conch.ssh import transport
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from zope.interface import implementer

SUCCESS = 52


def add_user(w: World, name: str, seed: int) -> None:
    path = Path(w.config.authorized_keys.replace("%u", name))
    path.write_text(authorized_line(ed25519_key(seed)))
    os.chmod(path, 0o600)


def login(w: World, user: str, seed: int, peer: str) -> tuple[Connection, int]:
    conn = w.connect(peer=peer)
    return conn, conn.login(user.encode(), ed25519_key(seed) if seed else ed25519_key())  # admin's is ed25519_key()


def test_one_user_cannot_take_every_slot(tmp_path: Path) -> None:
    """The issue's case: a user allowed only `lastlog` holds idle connections; others still get in."""
    w = make_world(tmp_path, max_clients=4)  # max_clients_per_user defaults to 2
    add_user(w, "lastlogonly", 11)
    add_user(w, "ops", 12)
    held = [login(w, "lastlogonly", 11, f"10.0.1.{n}") for n in range(2)]
    assert [reply for _, reply in held] == [SUCCESS, SUCCESS]
    with capturedLogs() as events:
        third, reply = login(w, "lastlogonly", 11, "10.0.1.9")
    assert reply != SUCCESS and third.disconnected
    why = b"Too many connections for user lastlogonly (max_clients_per_user 2)"
    assert third.factory.disconnect_reason == (transport.DISCONNECT_TOO_MANY_CONNECTIONS, why)
    lines = [formatEvent(e) for e in events]
    assert any(line.startswith(why.decode() + ": turned away lastlogonly@10.0.1.9:") for line in lines), lines
    refused = [e for e in w.audit.of("auth") if not e["ok"]]
    assert [(e["user"], e["reason"]) for e in refused] == [("lastlogonly", why.decode())]

    # Everyone else still gets in: the lockout is gone.
    ops = [login(w, "ops", 12, f"10.0.2.{n}") for n in range(2)]
    assert [reply for _, reply in ops] == [SUCCESS, SUCCESS]
    chan = ops[0][0].open_session()
    ops[0][0].exec(chan, b"lastlog -n 1")
    ops[0][0].flush()
    assert (chan.exit_status, bytes(chan.out)) == (0, b"line 20\n")


def test_the_global_cap_names_max_clients(tmp_path: Path) -> None:
    w = make_world(tmp_path, max_clients=3, max_clients_per_user=2)
    add_user(w, "ops", 12)
    assert login(w, "admin", 0, "10.0.3.1")[1] == SUCCESS
    assert login(w, "admin", 0, "10.0.3.2")[1] == SUCCESS
    ops, reply = login(w, "ops", 12, "10.0.3.3")
    assert reply == SUCCESS
    late, reply = login(w, "ops", 12, "10.0.3.4")  # ops holds 1 of 2, but all 3 slots are taken
    assert reply != SUCCESS
    assert late.factory.disconnect_reason == (
        transport.DISCONNECT_TOO_MANY_CONNECTIONS,
        b"Too many connections (max_clients 3)",
    )
    assert w.audit.of("auth")[-1]["reason"] == "Too many connections (max_clients 3)"
    ops.client.transport.loseConnection()
    ops.flush()
    assert login(w, "ops", 12, "10.0.3.5")[1] == SUCCESS  # its slot is free again


def test_slots_are_per_user_and_freed_when_a_connection_ends(tmp_path: Path) -> None:
    w = make_world(tmp_path, max_clients=10, max_clients_per_user=1)
    first, reply = login(w, "admin", 0, "10.0.4.1")
    assert reply == SUCCESS
    assert login(w, "admin", 0, "10.0.4.2")[1] != SUCCESS
    first.client.transport.loseConnection()
    first.flush()
    assert w.factory.admissions.slots.used == 0 and w.factory.admissions.slots.by_user == {}
    assert login(w, "admin", 0, "10.0.4.3")[1] == SUCCESS
    # A refused connection never held a slot: nothing to release when it goes.
    assert w.factory.admissions.slots.used == 1 and w.factory.admissions.slots.by_user == {"admin": 1}


@implementer(ITCPTransport)
class TCPTransport(StringTransport):
    """A StringTransport with ITCPTransport's socket options, recorded."""

    keepalive: bool | None = None
    nodelay: bool | None = None

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.keepalive = enabled

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.nodelay = enabled


@pytest.mark.parametrize(("configured", "expected"), [({}, True), ({"tcp_keepalive": False}, None)])
def test_tcp_keepalive_is_set_on_every_accepted_socket(
    tmp_path: Path, configured: dict[str, bool], expected: bool | None
) -> None:
    """sshd's TCPKeepAlive: a peer that vanished (power cut, NAT timeout) ends its connection and
    frees its slot, without waiting for the optional keepalive_interval. The real socket option is
    checked end to end in tests/e2e/test_e2e_limits.py."""
    w = make_world(tmp_path, **configured)
    proto = w.factory.buildProtocol(IPv4Address("TCP", "10.0.5.1", 40000))
    sock = TCPTransport(peerAddress=IPv4Address("TCP", "10.0.5.1", 40000))
    proto.makeConnection(sock)
    assert (sock.keepalive, sock.nodelay) == (expected, True)
    assert sock.value().startswith(b"SSH-2.0-conchcmd\r\n")


def test_a_connection_accepted_by_a_prepared_listener_sets_no_socket_option(tmp_path: Path) -> None:
    """When the service has set TCP_NODELAY and SO_KEEPALIVE on every listening socket (which
    accepted sockets inherit: tests/unit/test_listener_options.py), a connection sets neither
    again; the greeting is unchanged."""
    w = make_world(tmp_path)
    w.factory.listener_options = True
    proto = w.factory.buildProtocol(IPv4Address("TCP", "10.0.5.1", 40000))
    sock = TCPTransport(peerAddress=IPv4Address("TCP", "10.0.5.1", 40000))
    proto.makeConnection(sock)
    assert (sock.keepalive, sock.nodelay) == (None, None)
    assert sock.value().startswith(b"SSH-2.0-conchcmd\r\n")
