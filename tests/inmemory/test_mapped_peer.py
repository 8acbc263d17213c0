"""A `tcp6` listener sees an IPv4 client as an IPv4-mapped IPv6 address (::ffff:10.0.0.1): every
log line and audit record names it as the IPv4 address it is, as sshd does (the auth lines always
did; the connection line and the audit's `peer` had said [::ffff:10.0.0.1]:port)."""

from __future__ import annotations

from pathlib import Path

from support.keys import ed25519_key
from support.sshclient import Connection
from support.world import make_world
from twisted.logger import capturedLogs, formatEvent


def leave(conn: Connection) -> None:
    conn.client.transport.loseConnection()
    conn.flush()


def test_an_ipv4_mapped_client_is_named_by_its_ipv4_address_everywhere(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    with capturedLogs() as events:
        conn = world.connect("::ffff:10.0.0.1", 40001)
        assert conn.login(b"admin", ed25519_key()) == 52
        chan = conn.open_session()
        conn.exec(chan, b"help")
        conn.flush()
        leave(conn)
        stranger = world.connect("::ffff:10.0.0.2", 40002)
        assert stranger.login(b"admin", ed25519_key(b"\x07" * 32)) != 52  # a key nobody authorized
        leave(stranger)
        world.clock.advance(60)
    lines = [formatEvent(e) for e in events]
    text = "\n".join(lines)
    assert "ffff" not in text, text
    assert "Client connection from 10.0.0.1:40001" in lines
    assert "Client connection from 10.0.0.2:40002" in lines
    assert any(line.startswith("Accepted publickey for admin from 10.0.0.1 port 40001 ssh2") for line in lines), text
    assert any("for admin from 10.0.0.2 port 40002 ssh2" in line for line in lines), text
    records = world.audit.events
    assert not [r for r in records if "ffff" in str(r)], records
    peers = {(r["event"], r["peer"]) for r in records if "peer" in r}
    assert {("connect", "10.0.0.1:40001"), ("auth", "10.0.0.1:40001"), ("disconnect", "10.0.0.1:40001")} <= peers
    assert {("connect", "10.0.0.2:40002"), ("disconnect", "10.0.0.2:40002")} <= peers
    assert [r for r in records if r["event"] == "command"]  # the command ran, audited without ffff
