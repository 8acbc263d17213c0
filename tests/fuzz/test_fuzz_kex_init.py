"""Fuzz target: the key-exchange INIT that the wire layer answers itself (curve25519-sha256 and
mlkem768x25519-sha256), after a well-formed KEXINIT, over a StringTransport with the real server
built by make_world (fuzz.wire's checks after every read).

Beyond "no traceback": each payload is judged by a model written from the specifications and
cryptography's own key checks, and the server must do what the model says: a KEXDH_REPLY exactly
when the payload is one SSH string (RFC 4251, nothing after it) holding a value the method takes
(X25519: 32 bytes whose result is not all-zero, RFC 8731 3; mlkem768x25519: 1184 + 32 bytes, an
ML-KEM-768 encapsulation key that passes its check and such an X25519 value); otherwise no reply
and a DISCONNECT, PROTOCOL_ERROR for a payload that is not one string, KEY_EXCHANGE_FAILED for a
value refused.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from hypothesis import event, example, given
from hypothesis import strategies as st
from support.world import World, make_world
from twisted.conch.ssh import transport
from twisted.conch.ssh.common import NS

from conchcmd.core.config import MACS
from conchcmd.wire.framing import MLKEM_KEX
from fuzz.guard import LogWatch, bounded, fuzz
from fuzz.wire import Wire, frame

VERSION = b"SSH-2.0-OpenSSH_9.9\r\n"
CURVE = b"curve25519-sha256"
KEXINIT, NEWKEYS, INIT, REPLY = 20, 21, 30, 31
MLKEM_PUBLIC = 1184
P = 2**255 - 19
ORDER_8 = 325606250916557431795983626356110631294008115727848805560023387167927233504
#: u-coordinates of small order (RFC 7748 / cr.yp.to/ecdh.html), some non-canonical.
LOW_ORDER = [
    u.to_bytes(32, "little")
    for u in (
        0,
        1,
        ORDER_8,
        39382357235489614581723060781553021112529911719440698176882885853963445705823,
        P - 1,
        P,
        P + 1,
    )
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield make_world(tmp_path_factory.mktemp("fuzz-kex-init"))


def kexinit(kex: bytes, padding: int = 0) -> bytes:
    """A client's KEXINIT payload offering `kex`, its kex list padded by about `padding` bytes of
    names the server does not know."""
    kexes = kex + b",ext-info-c,kex-strict-c-v00@openssh.com" + b",x@example.com" * (padding // 14)
    lists = [kexes, b"ssh-ed25519", b"aes128-ctr", b"aes128-ctr"]
    lists += [MACS[0].encode(), MACS[0].encode(), b"none", b"none", b"", b""]
    return bytes(16) + b"".join(NS(x) for x in lists) + bytes(5)


def x25519_value() -> st.SearchStrategy[bytes]:
    fresh = st.builds(lambda: x25519.X25519PrivateKey.generate().public_key().public_bytes_raw())
    low = st.sampled_from(LOW_ORDER)
    top_bit = st.tuples(low, st.booleans()).map(lambda t: t[0][:31] + bytes((t[0][31] | (0x80 * t[1]),)))
    return st.one_of(fresh, fresh, low, top_bit, st.binary(min_size=32, max_size=32))


def mlkem_key() -> st.SearchStrategy[bytes]:
    fresh = st.builds(lambda: mlkem.MLKEM768PrivateKey.generate().public_key().public_bytes_raw())
    # a coefficient >= q (3329) breaks the encapsulation key check (FIPS 203 7.2)
    spoiled = st.tuples(fresh, st.integers(0, MLKEM_PUBLIC - 33)).map(
        lambda t: t[0][: t[1]] + b"\xff\xff" + t[0][t[1] + 2 :]
    )
    return st.one_of(fresh, fresh, spoiled, st.binary(min_size=MLKEM_PUBLIC, max_size=MLKEM_PUBLIC))


@st.composite
def init_payloads(draw: st.DrawFn, kex: bytes) -> bytes:
    if kex == MLKEM_KEX:
        pair = st.tuples(mlkem_key(), x25519_value()).map(b"".join)
        value = draw(st.one_of(pair, pair, pair, st.binary(max_size=1300)))
    else:
        value = draw(st.one_of(x25519_value(), st.binary(max_size=40)))
    if draw(st.sampled_from([False] * 4 + [True])):  # a value of the wrong size, now and then
        cut = draw(st.integers(0, len(value)))
        value = value[:cut] if draw(st.booleans()) else value[cut:]
    # Most payloads one well-formed string, so that the values themselves are judged too.
    shape = draw(st.sampled_from(["string"] * 5 + ["length", "tail", "short"]))
    if shape == "length":
        length = draw(st.one_of(st.integers(0, len(value) + 8), st.integers(0, 2**32 - 1)))
        return struct.pack(">L", length) + value
    if shape == "tail":
        return NS(value) + draw(st.binary(min_size=1, max_size=8))
    if shape == "short":
        return NS(value)[: draw(st.integers(0, 3))]
    return NS(value)


def x25519_taken(value: bytes) -> bool:
    try:
        x25519.X25519PrivateKey.generate().exchange(x25519.X25519PublicKey.from_public_bytes(value))
    except ValueError:
        return False
    return True


def mlkem_taken(value: bytes) -> bool:
    try:
        mlkem.MLKEM768PublicKey.from_public_bytes(value)
    except ValueError:
        return False
    return True


def expected(kex: bytes, payload: bytes) -> int:
    """What the model says: REPLY, or the DISCONNECT reason code."""
    if len(payload) < 4 or struct.unpack(">L", payload[:4])[0] != len(payload) - 4:
        return transport.DISCONNECT_PROTOCOL_ERROR
    value = payload[4:]
    if kex == MLKEM_KEX:
        good = (
            len(value) == MLKEM_PUBLIC + 32 and x25519_taken(value[MLKEM_PUBLIC:]) and mlkem_taken(value[:MLKEM_PUBLIC])
        )
    else:
        good = len(value) == 32 and x25519_taken(value)
    return REPLY if good else transport.DISCONNECT_KEY_EXCHANGE_FAILED


def plaintext_messages(sent: bytes) -> list[int]:
    """Message numbers of the server's packets after its version line, up to its NEWKEYS (what
    follows is encrypted)."""
    data = sent[sent.index(b"\r\n") + 2 :]
    out: list[int] = []
    while len(data) > 5 and NEWKEYS not in out:
        (length,) = struct.unpack(">L", data[:4])
        out.append(data[5])
        data = data[4 + length :]
    return out


def check(world: World, log_watch: LogWatch, kex: bytes, payload: bytes) -> None:
    want = expected(kex, payload)
    event({REPLY: "reply", 2: "PROTOCOL_ERROR", 3: "KEY_EXCHANGE_FAILED"}[want])
    with bounded(), log_watch.clean():
        wire = Wire(world)
        try:
            wire.feed(VERSION + frame(KEXINIT, kexinit(kex)) + frame(INIT, payload))
            world.clock.advance(0)
            got = plaintext_messages(wire.transport.value())
            if want == REPLY:
                assert got[1:3] == [REPLY, NEWKEYS] and wire.spy.disconnects == [], (got, wire.spy.disconnects)
            else:
                assert REPLY not in got
                assert [code for code, _ in wire.spy.disconnects] == [want], wire.spy.disconnects
                assert wire.closing
        finally:
            wire.close()


@fuzz(120)
@given(payload=init_payloads(CURVE))
@example(payload=NS(bytes(32)) + b"\0")
@example(payload=struct.pack(">L", 33) + LOW_ORDER[2][:32])
def test_curve25519_init(world: World, log_watch: LogWatch, payload: bytes) -> None:
    check(world, log_watch, CURVE, payload)


def valid_mlkem_init() -> bytes:
    kem = mlkem.MLKEM768PrivateKey.generate().public_key().public_bytes_raw()
    return kem + x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()


@fuzz(80)
@given(payload=init_payloads(MLKEM_KEX))
@example(payload=NS(valid_mlkem_init()))
@example(payload=NS(valid_mlkem_init()) + b"\0")
@example(payload=struct.pack(">L", 1216 + 32) + valid_mlkem_init())
def test_mlkem768x25519_init(world: World, log_watch: LogWatch, payload: bytes) -> None:
    check(world, log_watch, MLKEM_KEX, payload)


def outcome(world: World, log_watch: LogWatch, data: bytes, sizes: list[int]) -> tuple[list[int], list[int]]:
    """The messages the server dispatched and the DISCONNECT reason codes it sent, for `data` read
    in pieces of `sizes` (cycled; [] for one read)."""
    with bounded(), log_watch.clean():
        wire = Wire(world)
        try:
            i = n = 0
            while i < len(data) and not wire.closing:
                size = sizes[n % len(sizes)] if sizes else len(data)
                wire.feed(data[i : i + size])
                i, n = i + size, n + 1
            return list(wire.spy.dispatched), [code for code, _ in wire.spy.disconnects]
        finally:
            wire.close()


@fuzz(60)
@given(
    banner=st.lists(st.sampled_from([b"hello\r\n", b"\n", b"x" * 300 + b"\r\n", b"SSH\n"]), max_size=2).map(b"".join),
    version=st.sampled_from([VERSION, b"SSH-2.0-x\n", b"SSH-1.5-old\r\n", b"SSH-2.0-" + b"v" * 5000 + b"\r\n"]),
    padding=st.integers(0, 8000),
    kex=st.sampled_from([CURVE, MLKEM_KEX]),
    sizes=st.lists(st.integers(1, 3000), min_size=1, max_size=4),
)
@example(banner=b"", version=VERSION, padding=6000, kex=CURVE, sizes=[1])
@example(banner=b"hello\r\n", version=VERSION, padding=0, kex=CURVE, sizes=[1])
def test_the_first_flight_is_read_the_same_however_it_is_cut(
    world: World, log_watch: LogWatch, banner: bytes, version: bytes, padding: int, kex: bytes, sizes: list[int]
) -> None:
    """Lines a client may not send (RFC 4253 4.2), the version line, a KEXINIT (its kex list padded
    with unknown names) and the INIT: whether they come in one read or in pieces, the server
    dispatches the same messages and sends the same DISCONNECTs. (In one read, a KEXINIT of over
    4 KiB after the version line was refused as "Peer version string longer than 4KB", and lines
    before the version line were taken; in pieces, those lines were read as a packet.)"""
    x25519_public = x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()
    init = NS(valid_mlkem_init() if kex == MLKEM_KEX else x25519_public)
    data = banner + version + frame(KEXINIT, kexinit(kex, padding)) + frame(INIT, init)
    assert outcome(world, log_watch, data, []) == outcome(world, log_watch, data, sizes)
