"""Abuse resistance over the whole in-memory SSH stack: caps, penalties, timers, shutdown."""

from __future__ import annotations

import struct
from pathlib import Path

from support.keys import ed25519_key
from support.runners import ManualRunner
from support.sshclient import RecordingChannel, result_of
from support.world import World, make_world
from twisted.conch.ssh import connection, transport
from twisted.internet.address import IPv4Address

from conchcmd.core.config import LimitsConfig

SUCCESS, FAILURE = 52, 51


def limited(tmp_path: Path, runner: object = None, **limits: object) -> World:
    return make_world(tmp_path, runner=runner, limits=LimitsConfig(**limits))  # type: ignore[arg-type]


def fail_login(w: World, peer: str) -> None:
    conn = w.connect(peer=peer)
    assert conn.login(b"admin", ed25519_key(77)) == FAILURE
    conn.client.transport.loseConnection()
    conn.flush()


def test_repeated_failures_penalise_only_that_source(tmp_path: Path) -> None:
    w = limited(tmp_path, penalty_seconds=30)
    for _ in range(3):
        fail_login(w, "10.0.0.5")
    assert w.factory.buildProtocol(IPv4Address("TCP", "10.0.0.5", 5000)) is None  # refused before kex
    assert w.login(peer="10.0.0.6") is not None  # another source is unaffected
    (penalty,) = w.audit.of("penalty")
    assert penalty["source"] == "10.0.0.5" and penalty["seconds"] == 30
    (refused,) = w.audit.of("refused")
    assert refused["source"] == "10.0.0.5" and "penalised" in refused["reason"]
    w.clock.advance(30)
    assert w.login(peer="10.0.0.5") is not None  # the penalty has expired


def test_a_client_that_tries_many_keys_then_succeeds_is_not_penalised(world: World) -> None:
    for _ in range(5):
        conn = world.connect(peer="10.0.0.7")
        auth = conn.start_auth(b"admin")
        for n in range(4):
            auth.probe(ed25519_key(60 + n))
            conn.flush()
        assert conn.login(b"admin", ed25519_key()) == SUCCESS
        conn.client.transport.loseConnection()
        conn.flush()
    assert world.audit.of("penalty") == []


def test_the_sixth_failure_disconnects_with_the_reason(world: World) -> None:
    conn = world.connect()
    auth = conn.start_auth(b"admin")
    for n in range(5):
        auth.probe(ed25519_key(80 + n))  # probes of unknown keys count, as in OpenSSH
        conn.flush()
    assert not conn.disconnected
    assert conn.login(b"admin", ed25519_key()) == SUCCESS  # the sixth try still gets its chance


def test_startup_cap_per_source(tmp_path: Path) -> None:
    w = limited(tmp_path, max_startups_per_source=3)
    held = [w.connect(peer="10.0.0.8", port=41000 + n) for n in range(3)]
    assert all(not c.disconnected for c in held)
    assert w.factory.buildProtocol(IPv4Address("TCP", "10.0.0.8", 41010)) is None
    assert w.factory.buildProtocol(IPv4Address("TCP", "10.0.0.9", 41010)) is not None
    assert held[0].login(b"admin", ed25519_key()) == SUCCESS  # authenticated: no longer a startup
    assert w.factory.buildProtocol(IPv4Address("TCP", "10.0.0.8", 41011)) is not None


def test_global_cap_admits_known_operators(tmp_path: Path) -> None:
    w = limited(tmp_path, max_startups=4, max_startups_per_source=2)
    w.login(peer="10.9.9.9").client.transport.loseConnection()
    flood = [w.connect(peer=f"10.1.0.{n}") for n in range(4)]
    assert all(not c.disconnected for c in flood)
    assert w.factory.buildProtocol(IPv4Address("TCP", "10.1.0.99", 1)) is None
    assert w.login(peer="10.9.9.9") is not None


def test_max_sessions_refuses_extra_channels_and_keeps_the_connection(tmp_path: Path) -> None:
    w = limited(tmp_path, runner=ManualRunner(), max_sessions=2)
    conn = w.login()
    first, second = conn.open_session(), conn.open_session()
    third = conn.open_session()
    assert third.open_failure is not None
    assert third.open_failure.data == connection.OPEN_ADMINISTRATIVELY_PROHIBITED
    assert third.open_failure.args[0] == b"too many sessions (max 2)"
    conn.exec(first, b"exit 1")
    conn.flush()
    assert first.is_closed
    fourth = conn.open_session()
    conn.exec(fourth, b"exit 4")
    conn.flush()
    assert fourth.exit_status == 4 and not second.is_closed


def test_idle_timeout_disconnects_with_a_message(tmp_path: Path) -> None:
    w = limited(tmp_path, idle_timeout=60)
    conn = w.login()
    chan = conn.open_session()
    conn.request(chan, b"shell")
    w.clock.advance(59)
    conn.send(chan, b"lastlog -n 1\n")
    w.clock.advance(59)
    conn.flush()
    assert not conn.disconnected
    w.clock.advance(1)
    conn.flush()
    assert conn.disconnected
    assert conn.factory.disconnect_reason == (
        transport.DISCONNECT_BY_APPLICATION,
        b"idle timeout (60 s without activity)",
    )
    assert w.audit.of("disconnect")[-1]["reason"] == "idle timeout (60 s without activity)"


def test_a_long_command_is_not_idle(tmp_path: Path) -> None:
    runner = ManualRunner()
    w = limited(tmp_path, runner=runner, idle_timeout=10)
    conn = w.login()
    chan = conn.open_session()
    conn.exec(chan, b"comphash " + str(w.root / "hello.txt").encode())
    conn.flush()
    w.clock.advance(100)
    conn.flush()
    assert not conn.disconnected
    runner.run_all()
    conn.flush()
    assert chan.exit_status == 0


def test_keepalives_detect_a_dead_peer(tmp_path: Path) -> None:
    w = limited(tmp_path, keepalive_interval=15, keepalive_count_max=3)
    alive = w.login(peer="10.0.0.1")
    dead = w.login(peer="10.0.0.2")
    for _ in range(4):
        w.clock.advance(15)
        alive.flush()  # answers; `dead` is not pumped: it never sees the keepalives
    assert not alive.disconnected
    assert dead.server.transport.disconnecting  # the server gave up on it
    dead.flush()
    (bye,) = w.audit.of("disconnect")
    assert bye["peer"].startswith("10.0.0.2:") and bye["reason"] == "no answer to 3 keepalives"


def test_a_peer_that_takes_no_more_bytes_is_cut_five_seconds_after_the_close(tmp_path: Path) -> None:
    """A close waits for the last bytes to leave; a peer that never takes them (its connection, and
    its client slot, would stay for good) is cut 5 s later, one that does is never cut."""
    w = limited(tmp_path, keepalive_interval=15, keepalive_count_max=3)
    dead = w.login(peer="10.0.0.2")
    gone = w.login(peer="10.0.0.3")
    cuts: list[tuple[str, float]] = []
    for name, conn in (("dead", dead), ("gone", gone)):
        conn.server.transport.abortConnection = lambda name=name: cuts.append((name, w.clock.seconds()))
    gone.server.close_with(b"shutting down")
    gone.flush()  # this peer takes the last bytes: the connection ends normally
    for _ in range(4):
        w.clock.advance(15)  # `dead` never reads: keepalives go unanswered and the server closes
    assert dead.server.transport.disconnecting and cuts == []
    closed_at = w.clock.seconds()
    w.clock.advance(4.9)
    assert cuts == []
    w.clock.advance(0.1)
    assert cuts == [("dead", closed_at + 5)]
    w.clock.advance(60)
    assert cuts == [("dead", closed_at + 5)]


def test_oversized_preauth_packet_ends_the_connection(world: World) -> None:
    conn = world.connect()
    sent_before = len(world.audit.of("disconnect"))
    conn.client.sendPacket(50, b"\0" * 100)  # a small packet is fine
    client = conn.client
    big = struct.pack(">LB", 100_000, 4) + bytes(11)  # a header announcing 100 kB, sent encrypted
    client.transport.write(client._out_codec.seal(client.outgoingPacketSequence, big)[:16])
    conn.flush()
    assert conn.disconnected and len(world.audit.of("disconnect")) == sent_before + 1
    assert "larger than 65536" in world.audit.of("disconnect")[-1]["reason"]


def test_banner_version_is_configurable(tmp_path: Path) -> None:
    w = limited(tmp_path, banner_version="ops_gateway")
    assert w.connect().client.otherVersionString == b"SSH-2.0-ops_gateway"


def test_shutdown_tells_clients_and_cancels_commands(tmp_path: Path) -> None:
    runner = ManualRunner()
    w = make_world(tmp_path, runner=runner)
    conn = w.login()
    chan: RecordingChannel = conn.open_session()
    conn.exec(chan, b"comphash " + str(w.root / "hello.txt").encode())
    conn.flush()
    pending = w.connect(peer="10.0.0.3")
    done = w.factory.close_all(b"server shutting down")
    conn.flush()
    pending.flush()
    w.clock.advance(0.1)
    result_of(done)
    assert conn.factory.disconnect_reason == (transport.DISCONNECT_BY_APPLICATION, b"server shutting down")
    assert not w.factory.transports
    (record,) = w.audit.of("command")
    assert record["exit_code"] == 130
    assert runner.jobs[0][1][3].is_set()  # the hash thread was told to stop
    assert len(w.audit.of("disconnect")) == 2
