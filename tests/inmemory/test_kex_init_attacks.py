"""Attacks on the key-exchange INIT the wire layer answers itself (curve25519-sha256 and
mlkem768x25519-sha256: `ModernServerTransport.curve25519_init` / `mlkem_init`), over the whole
stack: malformed and hostile public values, a guessed first key-exchange packet (right and
wrong), rekeys that switch the method and the host key, and what many half-open key exchanges
cost in memory. What the client sees (the reply or the DISCONNECT), the audit record and the
log line are asserted; the server keeps serving a well-behaved client afterwards."""

from __future__ import annotations

import gc
import os
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from support.kexclients import guessing
from support.keys import ed25519_key
from support.scripted import ScriptedClient, scripted
from support.sshclient import ClientFactory, Connection, connect
from support.world import World, make_world
from twisted.conch.ssh import common, transport
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent

from conchcmd.wire.framing import MLKEM_KEX
from conchcmd.wire.hostkeys import ensure_host_keys
from conchcmd.wire.packets import PacketCodec, pad

NS = common.NS
CURVE = b"curve25519-sha256"
KEXINIT, INIT, REPLY, EXT_INFO = 20, 30, 31, 7
SUCCESS = 52


class MalformingClient(ScriptedClient):
    """Sends the INIT of its key exchange number `malform_at` (0: the first) through the factory's
    `malform` (the well-formed payload in, the payload to send out), and hashes the value it sent."""

    sent_value: bytes | None = None

    def sendPacket(self, messageType: int, payload: bytes) -> None:
        if messageType == INIT and self.kex_count == self.factory.malform_at:  # type: ignore[attr-defined]
            payload = self.factory.malform(payload)  # type: ignore[attr-defined]
            self.sent_value = self.c_init = payload[4:]
        super().sendPacket(messageType, payload)

    def _encodeECPublicKey(self, ecPub: object) -> bytes:
        if self.sent_value is not None and self.kex_count == self.factory.malform_at:  # type: ignore[attr-defined]
            return self.sent_value
        return bytes(super()._encodeECPublicKey(ecPub))


def malforming(kex: bytes, malform: Callable[[bytes], bytes], strict: bool = True, at: int = 0) -> ClientFactory:
    factory = scripted(strict)
    factory.protocol = MalformingClient  # type: ignore[assignment]
    factory.supportedKeyExchanges = [kex]
    factory.malform = staticmethod(malform)  # type: ignore[attr-defined]
    factory.malform_at = at  # type: ignore[attr-defined]
    return factory


def x25519_public() -> bytes:
    return x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()


def low_order(payload: bytes) -> bytes:
    """The INIT's X25519 value (the last 32 bytes of its one string) replaced by a point of order 8."""
    point = (325606250916557431795983626356110631294008115727848805560023387167927233504).to_bytes(32, "little")
    return payload[:-32] + point


#: INIT payloads the server must refuse, made from a well-formed one: name -> (change, how the
#: server ends the connection: reason code, the audit record's reason).
REFUSED: dict[str, tuple[Callable[[bytes], bytes], int, str]] = {
    "trailing-byte": (lambda p: p + b"\0", 2, "protocol error: struct.error: key-exchange INIT: "),
    "length-past-end": (
        lambda p: struct.pack(">L", len(p) - 4 + 16) + p[4:],
        2,
        "protocol error: struct.error: key-exchange INIT: ",
    ),
    "length-2**32-1": (lambda p: b"\xff\xff\xff\xff" + p[4:], 2, "protocol error: struct.error: key-exchange INIT: "),
    "no-string": (lambda p: b"", 2, "protocol error: struct.error: "),
    "all-zero-x25519": (lambda p: p[:-32] + bytes(32), 3, ""),
    "low-order-x25519": (low_order, 3, ""),
    # RFC 7748 5: the top bit is ignored, so this is the same point of order 8
    "low-order-x25519-top-bit": (lambda p: low_order(p)[:-1] + bytes((low_order(p)[-1] | 0x80,)), 3, ""),
}


def the_end(world: World) -> str:
    (bye,) = world.audit.of("disconnect")
    return str(bye["reason"])


def serves_others(world: World) -> None:
    conn = connect(world.factory, world.clock, peer="10.9.9.9")
    assert conn.login(b"admin", ed25519_key()) == SUCCESS


@pytest.mark.parametrize("kex", [CURVE, MLKEM_KEX])
@pytest.mark.parametrize("case", list(REFUSED))
def test_a_hostile_init_gets_no_reply_and_a_clean_disconnect(world: World, kex: bytes, case: str) -> None:
    """No KEXDH_REPLY (no host-key signature made for the attacker), a DISCONNECT with a reason,
    no traceback: a malformed payload is a protocol error (as sshd, which refuses a string longer
    than the packet or bytes after it: tests/differential/test_kex_init_differential.py), an all-zero X25519
    result (RFC 8731 3: it MUST abort) a failed key exchange."""
    malform, code, reason = REFUSED[case]
    with capturedLogs() as logs:
        conn = connect(world.factory, world.clock, client_factory=malforming(kex, malform))
    assert conn.disconnected
    received = [m for m, _ in conn.client.received]
    assert REPLY not in received and received[-1] == transport.MSG_DISCONNECT
    assert conn.client.factory.disconnect_reason[0] == code
    if code == 2:
        assert the_end(world).startswith(reason)
        assert any("Protocol error from 10.0.0.1:40000: struct.error: " in formatEvent(e) for e in logs)
    else:
        assert the_end(world) in (
            "invalid key exchange value: Error computing shared key.",
            "Invalid peer X25519 public key",
        )
    assert not any(e.get("log_failure") is not None or "internal error" in formatEvent(e) for e in logs)
    serves_others(world)


@pytest.mark.parametrize("kex", [CURVE, MLKEM_KEX])
@pytest.mark.parametrize("case", ["trailing-byte", "length-past-end", "all-zero-x25519", "low-order-x25519-top-bit"])
def test_a_hostile_init_in_a_rekey_ends_only_that_connection(world: World, kex: bytes, case: str) -> None:
    """The same refusals when a logged-in client's rekey carries the INIT: no reply, the
    connection ends with its reason, another client is served."""
    malform, code, reason = REFUSED[case]
    conn = connect(world.factory, world.clock, client_factory=malforming(kex, malform, at=1))
    assert conn.login(b"admin", ed25519_key()) == SUCCESS
    replies_before = [m for m, _ in conn.client.received].count(REPLY)
    with capturedLogs() as logs:
        conn.client.sendKexInit()
        conn.flush()
    assert conn.disconnected and [m for m, _ in conn.client.received].count(REPLY) == replies_before
    assert conn.client.factory.disconnect_reason[0] == code
    assert the_end(world).startswith(reason) if reason else the_end(world).startswith(("invalid key", "Invalid peer"))
    assert not any(e.get("log_failure") is not None or "internal error" in formatEvent(e) for e in logs)
    serves_others(world)


@pytest.mark.parametrize("kex", [CURVE, MLKEM_KEX])
def test_non_canonical_x25519_values_are_taken_as_rfc_7748_says(world: World, kex: bytes) -> None:
    """RFC 7748 5: the top bit of a u-coordinate is ignored (and values >= p are taken): a client
    whose value has its top bit set logs in. (sshd's reference X25519 reads all 256 bits instead:
    tests/differential/test_kex_init_differential.py.)"""

    def top_bit(payload: bytes) -> bytes:
        return payload[:-1] + bytes((payload[-1] | 0x80,))

    conn = connect(world.factory, world.clock, client_factory=malforming(kex, top_bit))
    assert conn.login(b"admin", ed25519_key()) == SUCCESS


# -- first_kex_packet_follows ------------------------------------------------------------------


def replies(conn: Connection) -> int:
    return [m for m, _ in conn.client.received].count(REPLY)


@pytest.mark.parametrize("strict", [True, False])
def test_a_right_guess_is_answered_once(world: World, strict: bool) -> None:
    """The client's first choices are the server's (mlkem768x25519-sha256, ssh-ed25519): its
    guessed INIT is the key exchange's, answered with the one reply."""
    conn = connect(
        world.factory, world.clock, client_factory=guessing([MLKEM_KEX, CURVE], [b"ssh-ed25519"], strict=strict)
    )
    assert conn.client.guessed_right is True  # type: ignore[attr-defined]
    assert conn.server.kexAlg == MLKEM_KEX and replies(conn) == 1
    assert conn.login(b"admin", ed25519_key()) == SUCCESS


@pytest.mark.parametrize(
    ("kexes", "host_keys"),
    [([CURVE, MLKEM_KEX], [b"ssh-ed25519"]), ([MLKEM_KEX], [b"rsa-sha2-512", b"ssh-ed25519"])],
    ids=["kex-differs", "host-key-differs"],
)
@pytest.mark.parametrize("guess", [None, NS(bytes(32)), b"\xff"], ids=["valid", "all-zero", "malformed"])
def test_a_wrong_guess_is_dropped_unread(
    world: World, kexes: list[bytes], host_keys: list[bytes], guess: bytes | None
) -> None:
    """The first choices differ (even though the kex negotiated may be the one guessed): the
    guessed packet is dropped without being parsed (a malformed or hostile one ends nothing) and
    the client's second INIT is answered, once."""
    conn = connect(world.factory, world.clock, client_factory=guessing(kexes, host_keys, guess))
    assert conn.client.guessed_right is False  # type: ignore[attr-defined]
    assert not conn.disconnected and replies(conn) == 1
    assert conn.login(b"admin", ed25519_key()) == SUCCESS
    assert world.audit.of("disconnect") == []


def test_a_right_guess_with_a_hostile_value_is_refused(world: World) -> None:
    guess = NS(bytes(1184) + bytes(32))  # the right length, an all-zero X25519 value
    conn = connect(world.factory, world.clock, client_factory=guessing([MLKEM_KEX], [b"ssh-ed25519"], guess))
    assert conn.disconnected and replies(conn) == 0
    assert the_end(world) == "Invalid peer X25519 public key"


# -- rekeys that switch method and host key --------------------------------------------------


def test_rekeys_switch_between_methods_and_host_keys(tmp_path: Path) -> None:
    """The client changes the key exchange and the host-key algorithm at every rekey (an OpenSSH
    client never does; an attacker may): each rekey is signed with the host key it chose, the
    session ID stays, EXT_INFO is sent once, and the session keeps working."""
    ensure_host_keys(tmp_path / "keys", rsa_too=True)
    world = make_world(tmp_path)
    factory = scripted(strict=True)
    factory.supportedKeyExchanges = [CURVE]
    conn = connect(world.factory, world.clock, client_factory=factory)
    assert conn.login(b"admin", ed25519_key()) == SUCCESS
    session_id = conn.server.sessionID
    client = conn.client
    steps = [
        (MLKEM_KEX, b"rsa-sha2-512", "ssh-rsa"),
        (b"curve25519-sha256@libssh.org", b"rsa-sha2-256", "ssh-rsa"),
        (CURVE, b"ssh-ed25519", "ssh-ed25519"),
        (MLKEM_KEX, b"ssh-ed25519", "ssh-ed25519"),
    ]
    for n, (kex, host_key, key_type) in enumerate(steps, start=2):
        client.supportedKeyExchanges, client.supportedPublicKeys = [kex], [host_key]
        client.sendKexInit()
        conn.flush()
        assert not conn.disconnected, world.audit.of("disconnect")
        assert conn.server.kex_count == client.kex_count == n
        assert (conn.server.kexAlg, conn.server.keyAlg) == (kex, host_key)
        assert factory.host_key.sshType().decode() == key_type  # the reply was verified with it
        assert conn.server.sessionID == session_id
        chan = conn.open_session()
        conn.exec(chan, b"lastlog -n 1")
        conn.flush()
        assert chan.exit_status == 0 and bytes(chan.out) == b"line 20\n"
    assert [m for m, _ in client.received].count(EXT_INFO) == 1


# -- memory of half-open key exchanges -------------------------------------------------------


class HalfOpenClient(ScriptedClient):
    """Sends a KEXINIT padded to `kexinit_size` bytes (unknown names the server skips) and its
    INIT, then never its NEWKEYS: the server's reply and keys wait for it."""

    def sendPacket(self, messageType: int, payload: bytes) -> None:
        if messageType == transport.MSG_NEWKEYS:
            return
        if messageType == KEXINIT and self.kex_count == 0:
            kex, rest = common.getNS(payload[16:])
            pad = self.factory.kexinit_size - len(payload)  # type: ignore[attr-defined]
            filler = b",x" * (pad // 2)
            payload = payload[:16] + NS(kex + filler) + rest
            self.ourKexInitPayload = bytes((KEXINIT,)) + payload
        super().sendPacket(messageType, payload)


def test_half_open_key_exchanges_hold_little_memory(world: World) -> None:
    """Clients that send a 60 KiB KEXINIT and the INIT, get the reply, and never send NEWKEYS:
    once the reply is out, neither KEXINIT is needed (the exchange hash is made), so each such
    connection holds a few KiB, not its client's KEXINIT (until the login grace time ends it)."""
    count = 40

    def half_open(peer: str) -> Connection:
        factory = scripted(strict=True)
        factory.protocol = HalfOpenClient  # type: ignore[assignment]
        factory.kexinit_size = 60 * 1024  # type: ignore[attr-defined]
        return connect(world.factory, world.clock, peer=peer, client_factory=factory)

    conns = [half_open(f"10.0.{n}.1") for n in range(2)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        conns += [half_open(f"10.1.{n}.1") for n in range(count)]
        for conn in conns:  # the test client's copies of both KEXINITs are not the server's
            conn.client.ourKexInitPayload = conn.client.otherKexInitPayload = b""
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    servers = [c.server for c in conns]
    assert all(s.nextEncryptions.keyed and not s._first_kex_done for s in servers)  # replied, no NEWKEYS
    per_connection = (after - before) / count
    assert per_connection < 24 * 1024, f"{per_connection:.0f} bytes per half-open key exchange"


# -- the first read ----------------------------------------------------------------------------


def first_read(world: World, data: bytes, cut: int | None = None) -> tuple[bytes, bool]:
    """What the server sends for `data` arriving as a connection's first bytes, in one read or in
    reads of `cut` bytes, and whether it closes the connection."""
    peer = IPv4Address("TCP", "10.5.5.5", 40000)
    server = world.factory.buildProtocol(peer)
    wire = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 2222), peerAddress=peer)
    server.makeConnection(wire)
    size = cut or len(data)
    for i in range(0, len(data), size):
        if not wire.disconnecting:
            server.dataReceived(data[i : i + size])
    return wire.value(), bool(wire.disconnecting)


def kexinit_packet(size: int) -> bytes:
    """A client's plaintext KEXINIT packet of about `size` bytes (its kex list padded with names
    the server does not know)."""
    kex = b"curve25519-sha256,ext-info-c" + b",unknown-kex@example.com" * (size // 24)
    lists = [kex, b"ssh-ed25519", b"aes128-ctr", b"aes128-ctr", b"hmac-sha2-256-etm@openssh.com"]
    payload = os.urandom(16) + b"".join(NS(x) for x in [*lists, lists[-1], b"none", b"none", b"", b""]) + bytes(5)
    return PacketCodec().seal(0, pad(bytes((KEXINIT,)) + payload, PacketCodec(), os.urandom))


def test_a_version_line_and_a_large_kexinit_in_one_read_are_taken(world: World) -> None:
    """Conch refused a first read of more than 4 KiB although its version line ended within the
    first bytes ("Peer version string longer than 4KB"): a client that sends its version line
    and a large KEXINIT at once (as this in-memory stack delivers them) was turned away."""
    sent, closed = first_read(world, b"SSH-2.0-OpenSSH_9.2\r\n" + kexinit_packet(6000))
    assert not closed
    after_version = sent.split(b"\r\n", 1)[1]
    (length,) = struct.unpack(">L", after_version[:4])
    assert after_version[5] == KEXINIT and len(after_version) == 4 + length  # our KEXINIT, no DISCONNECT


def test_a_version_line_of_more_than_4_kib_is_still_refused(world: World) -> None:
    for cut in (None, 1000):  # in one read, and in pieces
        data = b"SSH-2.0-" + b"x" * 4100 + b"\r\n" + kexinit_packet(100)
        sent, closed = first_read(world, data, cut)
        assert closed and b"Peer version string longer than 4KB. Preventing a denial of service attack." in sent


@pytest.mark.parametrize("cut", [None, 1, 7, 8], ids=["one-read", "bytewise", "after-the-line", "inside-version"])
@pytest.mark.parametrize("lines", [b"hello\r\n", b"\r\n", b"SSH\r\n", b"banner\r\n" * 600])
def test_lines_before_the_version_line_are_refused_however_they_arrive(
    world: World, lines: bytes, cut: int | None
) -> None:
    """RFC 4253 4.2 lets only a server send lines before its version line; sshd refuses a
    client's ("invalid protocol identifier": tests/differential/test_kex_init_differential.py).
    Conch took them when the version line came in the same read, and read them as a packet
    otherwise: the same bytes were a login or a protocol error by how TCP cut them."""
    with capturedLogs() as logs:
        sent, closed = first_read(world, lines + b"SSH-2.0-OpenSSH_9.2\r\n" + kexinit_packet(100), cut)
    assert closed and b"protocol error" in sent
    assert any("Protocol error from 10.5.5.5:40000: a line before the version line" in formatEvent(e) for e in logs)
