"""Packet protection: published known-answer vectors, round trips, tampering, padding rules; the
Poly1305 tags (`conchcmd.wire.poly1305`: libsodium for short messages, cryptography's for long ones)."""

from __future__ import annotations

import ctypes.util
import os
import struct
from collections.abc import Iterator
from types import SimpleNamespace

import cryptography_vectors
import pytest
from cryptography.hazmat.primitives.poly1305 import Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from conchcmd.wire import poly1305
from conchcmd.wire.packets import (
    CIPHERS,
    MACS,
    BadPacket,
    _AesGcm,
    make_codec,
    pad,
)


def chacha20(key: bytes, data: bytes, seq: int, counter: int) -> bytes:
    """OpenSSH's ChaCha20 from a new cipher (the reference the codec is checked against): a 64-bit
    block counter and the 64-bit sequence number as the nonce. cryptography takes RFC 8439's
    16-byte counter||nonce; below 2**32 the counter as 8 bytes little-endian is the same bytes."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    nonce = counter.to_bytes(8, "little") + seq.to_bytes(8, "big")
    return Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor().update(data)


def nist_vectors(path: str) -> Iterator[dict[str, str]]:
    """Records of a NIST-style vector file, each with the section headers in force."""
    with cryptography_vectors.open_vector_file(path, "r") as f:
        section: dict[str, str] = {}
        record: dict[str, str] = {}
        for raw in f:
            line = raw.strip()
            if line.startswith("[") and line.endswith("]"):
                name, _, value = line[1:-1].partition(" = ")
                section[name] = value
            elif "=" in line and not line.startswith("#"):
                name, value = (part.strip() for part in line.split("=", 1))
                if name.upper() == "COUNT" and record:
                    yield {**section, **record}
                    record = {}
                record[name.upper() if name.upper() == "COUNT" else name] = value
            elif line == "FAIL":
                record["FAIL"] = "1"
        if record:
            yield {**section, **record}


CHACHA_VECTORS = list(nist_vectors("ciphers/ChaCha20/rfc7539.txt"))


@pytest.mark.parametrize("vector", CHACHA_VECTORS, ids=lambda v: f"rfc7539-{v['COUNT']}")
def test_chacha20_nonce_layout_matches_rfc7539(vector: dict[str, str]) -> None:
    """OpenSSH's 64-bit nonce (the sequence number) and 64-bit counter give RFC 7539's bytes."""
    nonce = bytes.fromhex(vector["NONCE"])
    assert nonce[:4] == bytes(4)  # the RFC nonce's first word is the upper half of our counter
    seq = int.from_bytes(nonce[4:], "big")
    out = chacha20(
        bytes.fromhex(vector["KEY"]), bytes.fromhex(vector["PLAINTEXT"]), seq, int(vector["INITIAL_BLOCK_COUNTER"])
    )
    assert out.hex() == vector["CIPHERTEXT"]


GCM_VECTORS = [
    v
    for size in (128, 256)
    for v in nist_vectors(f"ciphers/AES/GCM/gcmEncryptExtIV{size}.rsp")
    if v["IVlen"] == "96" and v["Taglen"] == "128" and int(v["COUNT"]) < 3
]


@pytest.mark.parametrize(
    "vector", GCM_VECTORS, ids=lambda v: f"k{v['Keylen']}-a{v['AADlen']}-p{v['PTlen']}-{v['COUNT']}"
)
def test_gcm_first_nonce_is_the_derived_iv_nist(vector: dict[str, str]) -> None:
    spec = CIPHERS[b"aes256-gcm@openssh.com" if vector["Keylen"] == "256" else b"aes128-gcm@openssh.com"]
    codec = _AesGcm(spec, bytes.fromhex(vector["Key"]), bytes.fromhex(vector["IV"]))
    sealed = codec._aead.encrypt(codec._next_nonce(), bytes.fromhex(vector["PT"]), bytes.fromhex(vector["AAD"]))
    assert sealed.hex() == vector["CT"] + vector["Tag"]


def test_gcm_invocation_counter_increments_and_wraps_in_64_bits() -> None:
    spec = CIPHERS[b"aes128-gcm@openssh.com"]
    codec = _AesGcm(spec, bytes(16), bytes.fromhex("01020304") + b"\xff" * 8)
    assert codec._next_nonce() == bytes.fromhex("01020304") + b"\xff" * 8
    assert codec._next_nonce() == bytes.fromhex("01020304") + bytes(8)  # the fixed field never changes
    assert codec._next_nonce() == bytes.fromhex("01020304") + bytes(7) + b"\x01"


def pairs() -> list[tuple[bytes, bytes]]:
    aead = [(c, b"") for c, s in CIPHERS.items() if s.aead]
    return aead + [(c, m) for c, s in CIPHERS.items() if not s.aead for m in MACS]


def codecs(cipher: bytes, mac: bytes) -> tuple[object, object]:
    key, iv, mac_key = os.urandom(64), os.urandom(16), os.urandom(64)
    return (make_codec(cipher, mac, key, iv, mac_key, out=True), make_codec(cipher, mac, key, iv, mac_key, out=False))


@pytest.mark.parametrize(("cipher", "mac"), pairs())
def test_round_trip_in_sequence(cipher: bytes, mac: bytes) -> None:
    sender, receiver = codecs(cipher, mac)
    for seq, payload in enumerate((b"\x05ssh-userauth", os.urandom(1000), b"", os.urandom(32768))):
        packet = pad(b"\x5e" + payload, sender, os.urandom)  # type: ignore[arg-type]
        aligned = len(packet) - 4 if sender.length_excluded else len(packet)  # type: ignore[attr-defined]
        assert aligned % max(sender.block_size, 8) == 0 and 4 <= packet[4] < 4 + 2 * sender.block_size + 8  # type: ignore[attr-defined]
        wire = sender.seal(seq, packet)  # type: ignore[attr-defined]
        head = wire[: receiver.head]  # type: ignore[attr-defined]
        assert receiver.packet_length(seq, head) == len(packet) - 4  # type: ignore[attr-defined]
        assert len(wire) == len(packet) + receiver.tag_size  # type: ignore[attr-defined]
        assert receiver.open(seq, wire) == packet  # type: ignore[attr-defined]


@pytest.mark.parametrize(("cipher", "mac"), pairs())
def test_any_flipped_bit_or_wrong_sequence_number_is_rejected(cipher: bytes, mac: bytes) -> None:
    for where in ("length", "body", "tag", "seq"):
        sender, receiver = codecs(cipher, mac)
        packet = pad(b"\x5e" + b"secret payload" * 10, sender, os.urandom)  # type: ignore[arg-type]
        wire = bytearray(sender.seal(7, packet))  # type: ignore[attr-defined]
        seq = 7
        if where == "length" and (sender.length_excluded or CIPHERS[cipher].aead):  # type: ignore[attr-defined]
            wire[3] ^= 0x01  # authenticated as AAD or under the MAC (EtM): tampering is caught
        elif where == "body":
            wire[20] ^= 0x01
        elif where == "tag":
            wire[-1] ^= 0x01
        elif where == "seq" and not cipher.startswith(b"aes"):
            seq = 8  # AES-GCM's nonce is its own invocation counter, not the sequence number
        else:
            continue
        length = len(packet) - 4
        receiver.packet_length(seq, bytes(wire[: receiver.head]))  # type: ignore[attr-defined]
        with pytest.raises(BadPacket):
            receiver.open(seq, bytes(wire[: 4 + length + receiver.tag_size]))  # type: ignore[attr-defined]


def test_chacha_hides_the_length_and_etm_shows_it() -> None:
    packet = struct.pack(">LB", 28, 10) + bytes(27)
    chacha, _ = codecs(b"chacha20-poly1305@openssh.com", b"")
    etm, _ = codecs(b"aes128-ctr", b"hmac-sha2-256-etm@openssh.com")
    assert chacha.seal(0, packet)[:4] != packet[:4]  # type: ignore[attr-defined]
    assert etm.seal(0, packet)[:4] == packet[:4]  # type: ignore[attr-defined]


def test_null_codec_is_plain_with_eight_byte_blocks() -> None:
    codec = make_codec(b"none", b"none", b"", b"", b"", out=True)
    packet = pad(b"\x14kexinit", codec, lambda n: b"\0" * n)
    assert len(packet) % 8 == 0 and codec.seal(3, packet) == packet
    assert not any(spec.aead for name, spec in CIPHERS.items() if b"gcm" not in name and b"chacha" not in name)


def test_chacha_reused_contexts_seal_each_packet_as_fresh_ones_would() -> None:
    """The codec keeps one ChaCha20 context per key and resets its nonce per packet: every packet,
    whatever the previous one's length left in the keystream, in any sequence-number order (the
    64-bit maximum too), is PROTOCOL.chacha20poly1305's
    construction computed from new ciphers (chacha20() is checked above)."""
    key = os.urandom(64)
    sender = make_codec(b"chacha20-poly1305@openssh.com", b"", key, b"", b"", out=True)
    receiver = make_codec(b"chacha20-poly1305@openssh.com", b"", key, b"", b"", out=False)
    for seq, size in ((0, 3), (1, 61), (7, 0), (2**32 + 5, 130), (3, 1000), (2**64 - 1, 17), (3, 1000)):
        packet = pad(b"\x5e" + os.urandom(size), sender, os.urandom)
        head = chacha20(key[32:], packet[:4], seq, 0)
        body = chacha20(key[:32], packet[4:], seq, 1)
        tag = Poly1305.generate_tag(chacha20(key[:32], bytes(32), seq, 0), head + body)
        assert sender.seal(seq, packet) == head + body + tag
        # open() without packet_length() first for this seq decrypts the length itself
        assert receiver.open(seq, head + body + tag) == packet
        assert receiver.packet_length(seq, head) == len(packet) - 4
        # and after it, with the length and nonce it kept for this seq (a changed tag still fails)
        assert receiver.open(seq, head + body + tag) == packet
        assert receiver.packet_length(seq, head) == len(packet) - 4
        with pytest.raises(BadPacket):
            receiver.open(seq, head + body + bytes(16))


POLY1305_VECTORS = list(nist_vectors("poly1305/rfc7539.txt"))
#: Both sides of the switch from libsodium to cryptography, and the sizes packets have.
POLY1305_SIZES = (0, 1, 15, 16, 17, 31, 32, 33, 100, 1000, poly1305.SODIUM_MAX - 1, poly1305.SODIUM_MAX)
POLY1305_SIZES += (poly1305.SODIUM_MAX + 1, 32768 + 64)


@pytest.mark.parametrize("vector", POLY1305_VECTORS, ids=lambda v: f"rfc7539-{v['COUNT']}")
def test_poly1305_rfc_8439_vectors(vector: dict[str, str]) -> None:
    key, message, expected = (bytes.fromhex(vector[name]) for name in ("KEY", "MSG", "TAG"))
    assert poly1305.tag(key, message) == expected
    assert poly1305.verify(key, message, expected)


@pytest.mark.parametrize("size", POLY1305_SIZES)
def test_poly1305_same_tags_as_cryptography_and_only_the_right_tag_verifies(size: int) -> None:
    for _ in range(4):
        key, message = os.urandom(32), os.urandom(size)
        expected = Poly1305.generate_tag(key, message)
        assert poly1305.tag(key, message) == expected
        assert poly1305.verify(key, message, expected)
        for i in (0, 7, 15):  # any changed bit of the tag
            wrong = bytearray(expected)
            wrong[i] ^= 1 << (i % 8)
            assert not poly1305.verify(key, message, bytes(wrong))
        if size:  # of the message
            changed = bytearray(message)
            changed[size // 2] ^= 0x80
            assert not poly1305.verify(key, bytes(changed), expected)
        assert not poly1305.verify(os.urandom(32), message, expected)  # another key
        assert not poly1305.verify(key, message, expected[:15])
        assert not poly1305.verify(key, message, expected + b"\0")
        assert not poly1305.verify(key, message + b"\0", expected)


def test_poly1305_key_of_the_wrong_size_is_refused_not_read_past() -> None:
    for key in (b"", bytes(31), bytes(33)):
        with pytest.raises(ValueError):
            poly1305.tag(key, b"message")
        with pytest.raises(ValueError):
            poly1305.verify(key, b"message", bytes(16))


_SIZES = st.one_of(
    st.integers(0, 64),
    st.integers(poly1305.SODIUM_MAX - 40, poly1305.SODIUM_MAX + 40),  # both sides of the switch
    st.integers(0, 70000),
)


@settings(max_examples=150, deadline=None)
@given(
    key=st.binary(min_size=64, max_size=64),
    seq=st.one_of(st.integers(0, 3), st.integers(2**32 - 2, 2**32 + 1), st.integers(0, 2**64 - 1)),
    size=_SIZES,
    flip=st.one_of(st.none(), st.tuples(st.integers(0, 2**32), st.integers(0, 7))),
    seq_off=st.sampled_from([0, 0, 0, 1, 2**32]),
    read_length_first=st.booleans(),
)
def test_chacha_codec_agrees_with_a_reference_from_cryptography_alone(
    key: bytes, seq: int, size: int, flip: tuple[int, int] | None, seq_off: int, read_length_first: bool
) -> None:
    """Fuzz of seal and open against PROTOCOL.chacha20poly1305 built from cryptography's ChaCha20 and
    Poly1305 only: the same sealed bytes at any size (either tag path) and sequence number, and open()
    takes exactly what the reference's tag check takes: any changed bit, or another sequence number,
    is a BadPacket, never an exception of another kind nor a packet."""
    sender = make_codec(b"chacha20-poly1305@openssh.com", b"", key, b"", b"", out=True)
    receiver = make_codec(b"chacha20-poly1305@openssh.com", b"", key, b"", b"", out=False)
    packet = pad(b"\x5e" + os.urandom(size), sender, os.urandom)
    head = chacha20(key[32:], packet[:4], seq, 0)
    body = chacha20(key[:32], packet[4:], seq, 1)
    sealed = head + body + Poly1305.generate_tag(chacha20(key[:32], bytes(32), seq, 0), head + body)
    assert sender.seal(seq, packet) == sealed
    wire = bytearray(sealed)
    if flip is not None:
        wire[flip[0] % len(wire)] ^= 1 << flip[1]
    at = (seq + seq_off) % 2**64
    reference_takes = bytes(wire) == sealed and at == seq
    if read_length_first:
        receiver.packet_length(at, bytes(wire[:4]))
    if reference_takes:
        assert receiver.open(at, bytes(wire)) == packet
    else:
        with pytest.raises(BadPacket):
            receiver.open(at, bytes(wire))


def test_poly1305_uses_libsodium_here_and_falls_back_to_cryptography_without_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PyNaCl's library exports libsodium's Poly1305 here (CI's and the floor's PyNaCl: the short
    packets' tags are libsodium's); a library without it leaves every tag to cryptography."""
    assert poly1305._SODIUM is not None and poly1305.SODIUM_MAX == 12 * 1024
    monkeypatch.setattr(poly1305, "_sodium", SimpleNamespace(__file__=ctypes.util.find_library("c") or "libc.so.6"))
    assert poly1305._sodium_functions() is None
