"""Channel and session rules of the protocol-engine review (issue 15), each with the bound it
protects: the reactor keeps turning (finding 1), CPU per byte (6), open files after a connection
ends (3), client slots and timers (5), log lines (7), output queued behind a key exchange (2)."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from support.keys import ed25519_key
from support.scripted import KexHolding, force_send, scripted
from support.sshclient import Connection, RecordingChannel
from support.world import World, make_world
from twisted.conch.ssh import common, connection, transport
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from zope.interface import alsoProvides

from conchcmd.commands.lastlog import FOLLOW_POLL
from conchcmd.core.config import LimitsConfig
from conchcmd.server.connection import MIN_CHANNEL_PACKET
from conchcmd.server.transport import ABORT_AFTER, KEX_OUTPUT_BUDGET, KEX_TIMEOUT, ServerTransport

NS = common.NS
SUCCESS = 52


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def refused_open(conn: Connection, max_packet: int) -> RecordingChannel:
    chan = RecordingChannel(localWindow=65536, conn=conn.conn)
    chan.localMaxPacket = max_packet  # (Conch's constructor takes 0 for "the default")
    chan.opened.addErrback(lambda _: None)
    conn.conn.openChannel(chan)
    conn.flush()
    return chan


def works(conn: Connection) -> bool:
    chan = conn.open_session()
    conn.exec(chan, b"lastlog -n 1")
    conn.flush()
    return (chan.exit_status, bytes(chan.out)) == (0, b"line 20\n")


def server_channel(conn: Connection, chan: RecordingChannel) -> Any:
    return conn.server.service.channels[conn.conn.localToRemoteChannel[chan.id]]


# -- findings 1 and 6: maximum packet size ---------------------------------------------------


@pytest.mark.parametrize("max_packet", [0, 1, MIN_CHANNEL_PACKET - 1])
def test_a_channel_with_a_tiny_maximum_packet_size_is_refused(world: World, max_packet: int) -> None:
    """0 made the output loop spin for ever (with a rekey pending, the whole server stopped); 1
    cost ~25 µs of CPU per byte of output. Refused at open: nothing runs, nothing spins."""
    conn = world.login()
    conn.server.sendKexInit()  # a rekey under way at the same time, as in the finding
    with capturedLogs():
        chan = refused_open(conn, max_packet)
    assert chan.open_failure is not None
    assert chan.open_failure.args == (
        b"maximum packet size %d is below %d" % (max_packet, MIN_CHANNEL_PACKET),
        connection.OPEN_ADMINISTRATIVELY_PROHIBITED,
    )
    assert conn.server.service.channels == {} and not conn.disconnected
    assert works(conn) and works(world.login(peer="10.0.0.2"))


def test_the_floor_itself_is_accepted_and_output_arrives_whole(tmp_path: Path) -> None:
    w = make_world(tmp_path, log_text=b"".join(b"%05d %s\n" % (i, b"x" * 200) for i in range(200)))
    conn = w.login()
    chan = conn.open_session(max_packet=MIN_CHANNEL_PACKET)
    conn.exec(chan, b"lastlog -n 200")
    conn.flush()
    assert chan.exit_status == 0 and bytes(chan.out) == w.log_file.read_bytes()


def test_refused_opens_are_logged_once_with_a_count(world: World) -> None:
    """Finding 7: 9,000 log lines a second from one user. Now one line, and the count at the end."""
    conn = world.login()
    with capturedLogs() as events:
        for _ in range(200):
            refused_open(conn, 0)
        for _ in range(50):
            conn.conn.sendGlobalRequest(b"tcpip-forward", NS(b"") + struct.pack(">L", 80))
        conn.flush()
        conn.client.transport.loseConnection()
        conn.flush()
    lines = [formatEvent(e) for e in events]
    refusals = [line for line in lines if "Refused" in line]
    assert refusals[:2] == [
        "Refused session channel for 10.0.0.1:40000: maximum packet size 0 is below 1024",
        "Refused tcpip-forward for admin@10.0.0.1:40000: forwarding is disabled",
    ]
    assert len(refusals) == 3 and refusals[2].startswith("Lost client connection 10.0.0.1:40000 (admin): ")
    assert refusals[2].endswith(
        " (refused: Refused session channel (maximum packet size too small) x200; Refused tcpip-forward x50)"
    )


# -- finding 3: OPEN_CONFIRMATION / OPEN_FAILURE for a channel not opening ------------------


def follows(conn: Connection, n: int) -> list[RecordingChannel]:
    chans = []
    for _ in range(n):
        chan = conn.open_session()
        conn.exec(chan, b"lastlog -f")
        chans.append(chan)
    conn.flush()
    return chans


@pytest.mark.parametrize("message", [connection.MSG_CHANNEL_OPEN_FAILURE, connection.MSG_CHANNEL_OPEN_CONFIRMATION])
def test_an_answer_to_an_open_nobody_made_ends_the_connection_and_every_command(world: World, message: int) -> None:
    """Before: OPEN_FAILURE deleted the channel without closing it; 1,000 `lastlog -f` kept
    running (1,000 open files) after the client left, and closing the others raised KeyError."""
    before = open_files()
    conn = world.login()
    chans = follows(conn, 3)
    assert open_files() >= before + 3
    target = server_channel(conn, chans[0])
    window, max_packet = target.remoteWindowLeft, target.remoteMaxPacket
    if message == connection.MSG_CHANNEL_OPEN_FAILURE:
        payload = struct.pack(">2L", target.id, 2) + NS(b"no") + NS(b"")
        what = b"failure"
    else:
        payload = struct.pack(">4L", target.id, 77, 0xFFFFFFFF, 0)
        what = b"confirmation"
    force_send(conn.client, message, payload)
    with capturedLogs() as events:
        conn.flush()
        world.clock.advance(2 * FOLLOW_POLL)
    assert conn.factory.disconnect_reason == (
        transport.DISCONNECT_PROTOCOL_ERROR,
        b"Received open %s for non-opening channel %d" % (what, target.id),
    )
    assert (target.remoteWindowLeft, target.remoteMaxPacket) == (window, max_packet)  # not re-set
    assert open_files() == before  # every follow ended, its file closed
    assert not any(e.get("log_failure") for e in events)


def test_closing_a_connection_closes_every_channel_even_if_one_close_raises(world: World) -> None:
    before = open_files()
    conn = world.login()
    chans = follows(conn, 3)
    broken = server_channel(conn, chans[1])
    really_close = broken.closed

    def fails() -> None:
        raise KeyError("boom")

    broken.closed = fails
    with capturedLogs() as events:
        conn.client.transport.loseConnection()
        conn.flush()
        world.clock.advance(2 * FOLLOW_POLL)
    failures = [e for e in events if e.get("log_failure")]
    assert [formatEvent(e) for e in failures] == [f"Closing channel {broken.id} of 10.0.0.1:40000 failed"]
    assert open_files() == before + 1  # only the broken channel's follow still runs
    really_close()
    world.clock.advance(2 * FOLLOW_POLL)
    assert open_files() == before


# -- finding 7: window overflow ------------------------------------------------------------


def test_a_window_adjust_past_2_32_minus_1_ends_the_connection(world: World) -> None:
    conn = world.login()
    chan = conn.open_session()
    target = server_channel(conn, chan)
    room = 0xFFFFFFFF - target.remoteWindowLeft
    force_send(conn.client, connection.MSG_CHANNEL_WINDOW_ADJUST, struct.pack(">2L", target.id, room))
    conn.flush()
    assert not conn.disconnected and target.remoteWindowLeft == 0xFFFFFFFF
    force_send(conn.client, connection.MSG_CHANNEL_WINDOW_ADJUST, struct.pack(">2L", target.id, 1))
    conn.flush()
    assert conn.factory.disconnect_reason == (
        transport.DISCONNECT_PROTOCOL_ERROR,
        b"window adjust 1 overflows the window of channel %d (4294967295)" % target.id,
    )


# -- finding 5: a second login on one connection --------------------------------------------


def test_a_second_service_request_after_login_takes_no_slot_and_no_timer(tmp_path: Path) -> None:
    w = make_world(tmp_path, max_clients=3, limits=replace(LimitsConfig(), keepalive_interval=15.0))
    conn = w.connect(client=scripted())
    assert conn.login(b"admin", ed25519_key()) == SUCCESS
    server = conn.server
    liveness = server.liveness
    assert w.factory.admissions.slots.used == 1 and liveness is not None
    client = conn.client
    with capturedLogs():
        for _ in range(3):
            seq = client.outgoingPacketSequence
            force_send(client, transport.MSG_SERVICE_REQUEST, NS(b"ssh-userauth"))
            conn.flush()
            assert conn.auth is not None
            conn.auth.send_request(b"publickey", conn.auth.signed(ed25519_key()))
            conn.flush()
    assert (transport.MSG_UNIMPLEMENTED, struct.pack(">L", seq)) in client.received  # type: ignore[attr-defined]
    assert transport.MSG_SERVICE_ACCEPT not in [m for m, _ in client.received[-6:]]  # type: ignore[attr-defined]
    assert w.factory.admissions.slots.used == 1 and server.liveness is liveness
    assert works(conn)
    conn.client.transport.loseConnection()
    conn.flush()
    assert w.factory.admissions.slots.used == 0


# -- finding 2: output while keys change, and a time limit on a key exchange ----------------


def stalling(w: World) -> tuple[Connection, KexHolding]:
    factory = scripted()
    factory.protocol = KexHolding  # type: ignore[assignment]
    conn = w.connect(client=factory)
    assert conn.login(b"admin", ed25519_key()) == SUCCESS
    client = conn.client
    assert isinstance(client, KexHolding)
    client.held = []
    return conn, client


def queued(server: ServerTransport) -> int:
    return sum(len(payload) for _, payload in server.held_messages())


def test_no_channel_output_is_produced_while_keys_change(tmp_path: Path) -> None:
    """Before: everything the client's window allowed was queued behind the key exchange (120 MB
    a round in the finding). Now channels wait once KEX_OUTPUT_BUDGET is queued; output resumes
    after NEWKEYS, whole."""
    text = b"".join(b"%06d %s\n" % (i, b"y" * 1000) for i in range(4000))  # ~4 MB
    w = make_world(tmp_path, log_text=text)
    conn, client = stalling(w)
    chan = conn.open_session(window=64 * 1024 * 1024)
    client.hold = True
    conn.server.sendKexInit()  # the server renews its keys; the client does not answer (yet)
    conn.flush()
    conn.exec(chan, b"lastlog -n 4000")
    conn.flush()
    assert KEX_OUTPUT_BUDGET <= queued(conn.server) < KEX_OUTPUT_BUDGET + 40 * 1024  # one packet more at most
    assert bytes(chan.out) == b""
    client.release()
    conn.flush()
    assert conn.server.kex_count == 2
    assert chan.exit_status == 0 and bytes(chan.out) == text


@pytest.mark.parametrize("who", ["server", "client"])
def test_a_key_exchange_that_never_ends_is_cut_after_the_time_limit(tmp_path: Path, who: str) -> None:
    w = make_world(tmp_path)
    conn, client = stalling(w)
    client.hold = True
    start: Callable[[], None] = conn.server.sendKexInit if who == "server" else client.sendKexInit
    start()
    conn.flush()
    with capturedLogs() as events:
        w.clock.advance(KEX_TIMEOUT - 1)
        conn.flush()
        assert not conn.disconnected
        w.clock.advance(1)
        conn.flush()
    assert conn.factory.disconnect_reason == (transport.DISCONNECT_KEY_EXCHANGE_FAILED, b"key exchange timed out")
    assert any("took longer than 60 s" in formatEvent(e) for e in events)
    assert w.factory.admissions.slots.used == 0


def test_a_completed_rekey_leaves_no_timer(world: World) -> None:
    conn = world.login()
    conn.client.sendKexInit()
    conn.flush()
    assert conn.server.kex_count == 2 and conn.server._kex_timer is None
    world.clock.advance(KEX_TIMEOUT + 1)
    assert not conn.disconnected and works(conn)


# -- finding 7: a peer that never reads is cut after the grace time ---------------------------


def test_after_the_grace_time_a_peer_that_never_reads_loses_its_connection(world: World) -> None:
    server = world.factory.buildProtocol(IPv4Address("TCP", "10.0.0.9", 5555))
    tcp = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.9", 5555))
    server.makeConnection(tcp)
    with capturedLogs():
        server.dataReceived(b"SSH-2.0-never-reads\r\n")
        server.pauseProducing()  # its receive window is full: TCP tells us to stop
        world.clock.advance(world.config.limits.login_grace_time)
        assert tcp.disconnecting and not tcp.disconnected  # the DISCONNECT waits in the buffer
        world.clock.advance(ABORT_AFTER)
    assert tcp.disconnected  # aborted: the socket and what waited in it are gone
    assert tcp.producerState == "paused"  # and the socket was not read meanwhile


# -- a client that sends and never reads: its answers must not pile up -----------------------


def test_a_full_send_buffer_stops_reading_the_socket_too(world: World) -> None:
    """Without this, the answers to what such a client sends (100,000 want-reply global requests:
    2.8 MB) queued in Twisted's write buffer without limit; channel output alone was held."""
    server = world.factory.buildProtocol(IPv4Address("TCP", "10.0.0.9", 5555))
    tcp = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.9", 5555))
    server.makeConnection(tcp)
    server.dataReceived(b"SSH-2.0-never-reads\r\n")
    assert tcp.producerState == "producing"
    server.pauseProducing()  # what TCP calls when its send buffer is full
    assert tcp.producerState == "paused"
    server.resumeProducing()  # ... and once the buffer has drained
    assert tcp.producerState == "producing"
    server.pauseProducing()
    server.resumeProducing()
    assert tcp.producerState == "producing" and not tcp.disconnecting


def test_a_logged_in_peer_that_never_reads_is_still_cut_by_the_idle_timeout(tmp_path: Path) -> None:
    w = make_world(tmp_path, limits=LimitsConfig(idle_timeout=60))
    conn = w.login()
    tcp = conn.server.transport
    calls: list[str] = []
    alsoProvides(tcp, IPushProducer)  # iosim's transport is no producer; TCP's is
    tcp.pauseProducing = lambda: calls.append("pause")
    tcp.resumeProducing = lambda: calls.append("resume")
    tcp.abortConnection = lambda: calls.append("abort")
    conn.server.pauseProducing()
    assert calls == ["pause"]
    with capturedLogs():
        w.clock.advance(60)
        assert tcp.disconnecting and calls == ["pause"]  # the DISCONNECT waits in the full buffer
        w.clock.advance(ABORT_AFTER)
    assert calls == ["pause", "abort"]
    assert w.factory.admissions.slots.used == 1  # until TCP reports the connection lost
    conn.server.connectionLost(Failure(ConnectionDone()))
    assert w.factory.admissions.slots.used == 0


def test_a_channel_that_ends_while_keys_change_ends_after_them_in_order(tmp_path: Path) -> None:
    """The reply, output, EOF, exit status and close of a command that finishes at once are
    held by a key exchange under way and sent after NEWKEYS, in that order."""
    w = make_world(tmp_path)
    conn, client = stalling(w)
    chan = conn.open_session()
    client.hold = True
    conn.server.sendKexInit()
    conn.flush()
    conn.exec(chan, b"help")
    conn.flush()
    assert chan.events == [] and queued(conn.server) > 0
    client.release()
    conn.flush()
    assert conn.server.kex_count == 2
    assert chan.events == ["reply", "data", "eof", "exit-status", "close"] and chan.exit_status == 0


def test_a_rekey_started_by_a_channels_last_packets_follows_them(world: World) -> None:
    """EOF, exit status and close go out in one write; when they cross the rekey limit, the
    KEXINIT they trigger comes after all three (were it written first, it would overtake packets
    sealed before it, and the client would reject them)."""
    conn = world.login()
    chan = conn.open_session()
    server = conn.server
    batch = server.send_packets

    def crossing(messages: list[tuple[int, bytes]]) -> None:
        # These packets cross the limit; the KEXINIT they start (counted from 0) stays below it.
        limit, server.rekey_bytes = server.rekey_bytes, server._bytes_since_kex + 4096
        server._bytes_since_kex += 4096
        batch(messages)
        server.rekey_bytes = limit
        del server.send_packets  # once

    server.send_packets = crossing  # type: ignore[method-assign]
    conn.exec(chan, b"exit 5")
    conn.flush()
    assert chan.events == ["reply", "eof", "exit-status", "close"] and chan.exit_status == 5
    assert server.kex_count == 2 and not conn.disconnected
    again = conn.open_session()  # the new keys work
    conn.exec(again, b"exit 6")
    conn.flush()
    assert again.exit_status == 6


def test_a_session_open_that_fails_inside_the_server_is_refused_and_logged(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug while making the channel: the client gets OPEN_FAILURE (as Conch answered), the
    traceback is logged, the channel number is not used up, and the connection keeps working."""
    from conchcmd.session.realm import CommandUser

    conn = world.login()
    real = CommandUser.lookupChannel

    def broken(self: CommandUser, *args: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(CommandUser, "lookupChannel", broken)
    with capturedLogs() as events:
        chan = refused_open(conn, 32768)
    assert chan.open_failure is not None
    assert chan.open_failure.args == (b"unknown failure", connection.OPEN_CONNECT_FAILED)
    failures = [e for e in events if "log_failure" in e]
    assert [e["log_failure"].type for e in failures] == [RuntimeError]
    line = "Internal error opening a session channel from admin@10.0.0.1:40000; channel refused"
    assert formatEvent(failures[0]) == line
    monkeypatch.setattr(CommandUser, "lookupChannel", real)
    assert conn.server.service.channels == {}
    assert works(conn)
