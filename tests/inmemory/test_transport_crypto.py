"""Ciphers, MACs, strict KEX and rekeying over the whole in-memory SSH stack."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from support.keys import ed25519_key
from support.sshclient import ClientFactory, Connection, connect
from support.world import World, make_world
from twisted.conch.ssh import common, transport
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from conchcmd.core.config import CIPHERS, MACS, OPTIONAL_MACS, AlgorithmsConfig
from conchcmd.wire import framing
from conchcmd.wire.framing import MLKEM_KEX, ModernServerTransport, RandomPool
from conchcmd.wire.packets import CIPHERS as SPECS
from conchcmd.wire.packets import PacketCodec, pad

LINE = b"y" * 199 + b"\n"


def client(
    ciphers: list[bytes] | None = None, macs: list[bytes] | None = None, strict: bool | None = None
) -> ClientFactory:
    factory = ClientFactory()
    factory.supportedCiphers = ciphers
    factory.supportedMACs = macs
    factory.offer_strict_kex = strict
    return factory


def big_world(tmp_path: Path, **algorithms: tuple[str, ...]) -> World:
    return make_world(tmp_path, log_text=LINE * 6000, algorithms=AlgorithmsConfig(**algorithms))


def run(conn: Connection, command: bytes) -> bytes:
    assert conn.login(b"admin", ed25519_key()) == 52
    chan = conn.open_session()
    conn.exec(chan, command)
    for _ in range(50):
        conn.flush()
        if chan.exit_status is not None:
            break
    assert chan.exit_status == 0, chan.err
    return bytes(chan.out)


COMBINATIONS = [(c, None) for c in CIPHERS if SPECS[c.encode()].aead] + [
    (c, m) for c in CIPHERS if not SPECS[c.encode()].aead for m in MACS
]


@pytest.mark.parametrize(("cipher", "mac"), COMBINATIONS)
def test_each_cipher_and_mac_carries_bulk_output_across_rekeys(tmp_path: Path, cipher: str, mac: str | None) -> None:
    w = big_world(tmp_path)
    macs = [mac.encode()] if mac else None
    conn = connect(w.factory, w.clock, client_factory=client([cipher.encode()], macs))
    server = conn.server
    assert server.nextEncryptions.outCipType == cipher.encode()
    assert server.nextEncryptions.outMACType == (mac or cipher).encode()
    server.rekey_bytes = 256 * 1024  # rekey every 256 KiB instead of every GiB
    out = run(conn, b"lastlog -n 6000")
    assert out == LINE * 6000
    assert server.kex_count >= 4 and conn.client.kex_count == server.kex_count


@pytest.mark.parametrize("strict", [True, False])
def test_hybrid_kex_logs_in_and_rekeys_both_ways(tmp_path: Path, strict: bool) -> None:
    """mlkem768x25519-sha256 against a client written from the draft (support/sshclient's
    hybrid_init), not from the server's code: EXT_INFO, output across the server's own rekeys,
    then the client's."""
    w = big_world(tmp_path)
    factory = client(strict=strict)
    factory.supportedKeyExchanges = [MLKEM_KEX]
    conn = connect(w.factory, w.clock, client_factory=factory)
    server = conn.server
    assert conn.client.kexAlg == server.kexAlg == MLKEM_KEX
    assert server.strict_kex is conn.client.strict_kex is strict
    assert b"rsa-sha2-256" in conn.client.peerExtensions[b"server-sig-algs"].split(b",")
    server.rekey_bytes = 128 * 1024  # the server starts a rekey every 128 KiB
    assert run(conn, b"lastlog -n 3000") == LINE * 3000
    ours = server.kex_count
    assert ours >= 4 and conn.client.kex_count == ours
    server.rekey_bytes = 1 << 30
    conn.client.sendKexInit()
    conn.flush()
    assert server.kex_count == conn.client.kex_count == ours + 1 and not conn.disconnected
    chan = conn.open_session()
    conn.exec(chan, b"lastlog -n 2")
    conn.flush()
    assert chan.exit_status == 0 and bytes(chan.out) == LINE * 2


def test_encrypt_and_mac_is_off_by_default_but_can_be_named(tmp_path: Path) -> None:
    w = big_world(tmp_path)
    factory = client([b"aes128-ctr"], [b"hmac-sha2-256"])
    conn = connect(w.factory, w.clock, client_factory=factory)
    assert conn.disconnected  # no common MAC
    w2 = big_world(tmp_path / "2", macs=(*MACS, *OPTIONAL_MACS))
    conn = connect(w2.factory, w2.clock, client_factory=client([b"aes128-ctr"], [b"hmac-sha2-256"]))
    assert run(conn, b"lastlog -n 3") == LINE * 3


def test_configuration_narrows_what_is_offered(tmp_path: Path) -> None:
    w = big_world(tmp_path, ciphers=("aes256-gcm@openssh.com",))
    conn = connect(w.factory, w.clock)
    assert conn.server.supportedCiphers == [b"aes256-gcm@openssh.com"]
    assert conn.server.nextEncryptions.inCipType == b"aes256-gcm@openssh.com"
    refused = connect(w.factory, w.clock, client_factory=client([b"chacha20-poly1305@openssh.com"]))
    assert refused.disconnected


def test_client_initiated_and_time_based_rekeys(world: World) -> None:
    conn = world.connect()
    assert conn.login(b"admin", ed25519_key()) == 52
    conn.client.sendKexInit()
    conn.flush()
    assert conn.server.kex_count == 2
    world.clock.advance(3601)  # an hour later the server renews the keys on the next traffic
    chan = conn.open_session()
    conn.exec(chan, b"lastlog -n 2")
    conn.flush()
    assert conn.server.kex_count == 3 and chan.out == b"line 19\nline 20\n"


def test_a_transport_without_a_clock_does_not_start() -> None:
    """Rekeying by time needs a clock: a factory without one made the hourly rekey silently never happen."""
    factory = ClientFactory()  # no clock, and not connected through `connect`, which gives one
    client = factory.buildProtocol(None)
    client.factory = factory
    with pytest.raises(TypeError, match="ClientFactory has no clock"):
        client.makeConnection(StringTransport())


def test_the_client_side_of_the_framing_also_rekeys_after_an_hour(world: World) -> None:
    conn = world.connect()
    assert conn.login(b"admin", ed25519_key()) == 52
    world.clock.advance(3601)
    conn.server.rekey_seconds = 7200.0  # the server is not the one to start it this time
    conn.conn.sendGlobalRequest(b"keepalive@openssh.com", b"", wantReply=1)
    conn.flush()
    assert conn.client.kex_count == conn.server.kex_count == 2 and not conn.disconnected


def test_the_server_renews_the_keys_after_a_gib_or_an_hour_not_sooner(world: World) -> None:
    """OpenSSH's RekeyLimit default. A real GiB through the in-memory stack takes too long, so the
    count of bytes since the last exchange is set just short of it; the next traffic decides."""
    conn = world.login()
    server = conn.server

    def lastlog() -> None:
        chan = conn.open_session()
        conn.exec(chan, b"lastlog -n 2")
        conn.flush()
        assert chan.out == b"line 19\nline 20\n" and chan.exit_status == 0

    assert server.kex_count == 1
    server._bytes_since_kex = (1 << 30) - 64 * 1024  # 64 KiB short: a short command does not reach it
    lastlog()
    assert server.kex_count == 1
    server._bytes_since_kex = (1 << 30) - 16
    lastlog()
    assert server.kex_count == 2 and conn.client.kex_count == 2
    world.clock.advance(3590)
    lastlog()
    assert server.kex_count == 2
    world.clock.advance(11)
    lastlog()
    assert server.kex_count == 3 and conn.client.kex_count == 3


def test_strict_kex_restarts_sequence_numbers(world: World) -> None:
    strict = connect(world.factory, world.clock, client_factory=client(strict=True))
    assert strict.server.strict_kex and strict.client.strict_kex
    assert strict.server.incomingPacketSequence == 0  # reset at NEWKEYS
    legacy = connect(world.factory, world.clock, client_factory=client(strict=False))
    assert not legacy.server.strict_kex
    assert legacy.server.incomingPacketSequence == 3  # KEXINIT, ECDH_INIT, NEWKEYS
    for conn in (strict, legacy):
        assert conn.login(b"admin", ed25519_key()) == 52


def _inject_ignore_during_kex(world: World, strict: bool) -> Connection:
    factory = client(strict=strict)
    original = factory.buildProtocol

    def build(addr: object) -> transport.SSHClientTransport:
        proto = original(addr)
        made = proto.connectionMade

        def connection_made() -> None:
            made()  # sends KEXINIT
            proto.sendPacket(transport.MSG_IGNORE, common.NS(b"Terrapin-style extra message"))

        proto.connectionMade = connection_made  # type: ignore[method-assign]
        return proto

    factory.buildProtocol = build  # type: ignore[method-assign]
    return connect(world.factory, world.clock, client_factory=factory)


def test_strict_kex_refuses_an_unexpected_message_during_the_initial_kex(world: World) -> None:
    conn = _inject_ignore_during_kex(world, strict=True)
    assert conn.disconnected
    (bye,) = world.audit.of("disconnect")
    assert bye["reason"].startswith("strict KEX violation: message 2")


def test_without_strict_kex_an_ignore_message_is_harmless(world: World) -> None:
    conn = _inject_ignore_during_kex(world, strict=False)
    assert not conn.disconnected
    assert conn.login(b"admin", ed25519_key()) == 52


def test_a_forged_packet_ends_the_connection_with_a_mac_error(world: World) -> None:
    conn = world.connect()
    client_transport = conn.client
    packet = pad(b"\x05" + common.NS(b"ssh-userauth"), client_transport._out_codec, os.urandom)
    wire = bytearray(client_transport._out_codec.seal(client_transport.outgoingPacketSequence, packet))
    wire[-1] ^= 1
    client_transport.transport.write(bytes(wire))
    conn.flush()
    assert conn.disconnected
    assert conn.factory.disconnect_reason is not None
    assert conn.factory.disconnect_reason[0] == transport.DISCONNECT_MAC_ERROR


def test_newkeys_before_the_key_exchange_is_refused(world: World) -> None:
    """Conch would switch to keys that do not exist: plaintext, no session ID."""
    factory = client()
    original = factory.buildProtocol

    def build(addr: object) -> transport.SSHClientTransport:
        proto = original(addr)
        made = proto.connectionMade

        def connection_made() -> None:
            made()  # sends KEXINIT
            proto.transport.write(pad(bytes((transport.MSG_NEWKEYS,)), PacketCodec(), os.urandom))  # unencrypted

        proto.connectionMade = connection_made  # type: ignore[method-assign]
        return proto

    factory.buildProtocol = build  # type: ignore[method-assign]
    conn = connect(world.factory, world.clock, client_factory=factory)
    assert conn.disconnected
    (bye,) = world.audit.of("disconnect")
    assert bye["reason"] == "NEWKEYS before the key exchange"
    assert world.audit.of("auth") == []


def _send_length(conn: Connection, length: int) -> None:
    """A packet whose (encrypted) length field says `length`, followed by a little of its body."""
    client_transport = conn.client
    head = length.to_bytes(4, "big") + bytes(60)
    client_transport.transport.write(client_transport._out_codec.seal(client_transport.outgoingPacketSequence, head))
    conn.flush()


@pytest.mark.parametrize(
    ("logged_in", "length", "error"),
    [
        (False, 32768, None),  # RFC 4253's floor: no limit is looked up below it
        (False, 32776, None),
        (False, 65536, None),  # the limit before authentication
        (False, 65544, "packet larger than 65536 bytes"),
        (False, 2**32 - 8, "packet larger than 65536 bytes"),
        (False, 4, "bad packet length 4"),
        (False, 33, "bad packet length 33"),  # not a multiple of the block size
        (False, 40001, "bad packet length 40001"),
        (True, 65544, None),
        (True, 263168, None),  # MAX_PACKET, after authentication
        (True, 263176, "packet larger than 263168 bytes"),
        (True, 32767, "bad packet length 32767"),
    ],
)
def test_packet_lengths_around_the_floor_and_the_limits(
    world: World, logged_in: bool, length: int, error: str | None
) -> None:
    """What a length field gets, under, at and over each limit and the 32 KiB below which the
    limit is not looked up: a packet that fits is waited for; any other ends the connection with
    the error that names it."""
    conn = world.connect()
    if logged_in:
        assert conn.login(b"admin", ed25519_key()) == 52
    _send_length(conn, length)
    if error is None:
        assert not conn.disconnected
        assert conn.server._pending_length == length
        return
    assert conn.disconnected
    assert conn.factory.disconnect_reason == (transport.DISCONNECT_PROTOCOL_ERROR, b"protocol error")
    (bye,) = world.audit.of("disconnect")
    assert bye["reason"] == f"protocol error: {error}"


def test_connections_draw_cookies_padding_and_ids_from_the_server_s_one_pool(tmp_path: Path, monkeypatch: Any) -> None:
    """Connections' KEXINIT cookies, padding and connection ids come from the server's one pool
    of OS random bytes: a read of the OS random source (a getrandom system call) serves many
    connections, not one (two per connection before, with the id's own); no byte serves twice."""
    world = make_world(tmp_path)
    draws: list[bytes] = []

    def urandom(n: int) -> bytes:
        draws.append(os.urandom(n))
        return draws[-1]

    monkeypatch.setattr(framing, "os", SimpleNamespace(urandom=urandom))
    cookies, ids = [], []
    for port in (40000, 40001, 40002):
        server = world.factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", port))
        server.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.1", port)))
        written = server.transport.value()
        kexinit = written[written.index(b"\r\n") + 2 + 5 :]  # after the version line, length and padding length
        assert kexinit[0] == transport.MSG_KEXINIT
        cookies.append(kexinit[1:17])
        ids.append(bytes.fromhex(server.connection_id))
        server.connectionLost(None)
    assert [len(d) for d in draws] == [framing.SERVER_POOL_SIZE]
    (pool,) = draws
    # each connection's id, then its cookie (then its KEXINIT's padding), further on in the one draw
    at = 0
    for connection_id, cookie in zip(ids, cookies, strict=True):
        assert pool.index(connection_id, at) >= at and pool.index(cookie, at) == pool.index(connection_id, at) + 8
        at = pool.index(cookie, at) + 16
    assert len(set(cookies)) == 3


class RecordingPool(RandomPool):
    """The server's pool, noting where in which of its draws each take's bytes lie."""

    def __init__(self, size: int):
        super().__init__(size)
        self.draws: list[bytes] = []
        self.taken: list[tuple[int, int, int]] = []  # (draw, start, end)

    def take(self, n: int) -> bytes:
        out = super().take(n)
        if not self.draws or self.draws[-1] is not self.pool:
            self.draws.append(self.pool)
        self.taken.append((len(self.draws) - 1, self.pos - n, self.pos))
        return out


def test_every_kexinit_rekeys_included_has_a_cookie_of_fresh_bytes_no_other_use_had(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """Each KEXINIT the server sends, on two connections at once and in their rekeys (the
    server's, after traffic, and the client's), carries a cookie of 16 bytes of the pool that no
    other cookie, padding or connection id was given: no byte of a draw serves twice."""
    w = big_world(tmp_path)
    pool = w.factory.random = RecordingPool(512)  # small: the takes span several draws
    draws = pool.draws
    cookies: list[bytes] = []
    send_kexinit = ModernServerTransport.sendKexInit

    def sending(self: Any) -> None:
        send_kexinit(self)
        cookies.append(self.ourKexInitPayload[1:17])

    monkeypatch.setattr(ModernServerTransport, "sendKexInit", sending)
    conns = [connect(w.factory, w.clock, peer=f"10.0.0.{n}") for n in (1, 2)]
    for conn in conns:
        conn.server.rekey_bytes = 64 * 1024
    for conn in conns:  # interleaved: the connections take from the pool in turn
        assert run(conn, b"lastlog -n 1000") == LINE * 1000
        conn.client.sendKexInit()
    for conn in conns:
        conn.flush()
        assert not conn.disconnected
    assert len(cookies) == sum(conn.server.kex_count for conn in conns) >= 6
    assert len(draws) > 1 and all(len(c) == 16 for c in cookies)
    assert len(set(cookies)) == len(cookies)
    used = sorted(pool.taken)
    assert all(a[0] < b[0] or a[2] <= b[1] for a, b in itertools.pairwise(used))  # no overlap
    sixteen = {draws[d][start:end] for d, start, end in used if end - start == 16}
    assert set(cookies) <= sixteen


def test_a_pool_hands_each_byte_out_once_and_draws_again_when_short(monkeypatch: Any) -> None:
    """RandomPool: consecutive takes are consecutive bytes of one draw; a take the rest cannot
    serve draws anew (at least `size` bytes), and a take larger than `size` gets all it asks."""
    draws: list[bytes] = []

    def urandom(n: int) -> bytes:
        draws.append(os.urandom(n))
        return draws[-1]

    monkeypatch.setattr(framing, "os", SimpleNamespace(urandom=urandom))
    pool = RandomPool(32)
    taken = [pool.take(n) for n in (10, 12, 10)]
    assert b"".join(taken) == draws[0] and len(draws) == 1
    assert pool.take(1) == draws[1][:1]  # the 32 were used up
    big = pool.take(100)
    assert len(big) == 100 and big == draws[2]


def kexinit_lists(server: Any) -> list[bytes]:
    """The name-lists of the KEXINIT a server transport sent first."""
    written = server.transport.value()
    packet = written[written.index(b"\r\n") + 2 :]
    payload = packet[5 : 4 + int.from_bytes(packet[:4], "big") - packet[4]]
    return list(common.getNS(payload[17:], 10)[:-1])  # after the message number and the cookie


def test_every_kexinit_lists_the_algorithms_the_transport_has_now(tmp_path: Path) -> None:
    """KEXINIT bodies are built once per set of lists: a list changed (even in place) is sent as
    it is now, not as an earlier connection's KEXINIT had it."""
    world = make_world(tmp_path)

    def first_kexinit(port: int) -> list[bytes]:
        server = world.factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", port))
        server.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.1", port)))
        lists = kexinit_lists(server)
        server.connectionLost(None)
        return lists

    before = first_kexinit(40000)
    assert before == first_kexinit(40001)
    ciphers = world.factory.ciphers
    assert before[2] == before[3] == b",".join(ciphers)
    assert before[0].endswith(b",ext-info-s,kex-strict-s-v00@openssh.com")
    ciphers.reverse()  # the same list object, another order
    after = first_kexinit(40002)
    assert after[2] == after[3] == b",".join(ciphers) != before[2]
    assert after[:2] + after[4:] == before[:2] + before[4:]
