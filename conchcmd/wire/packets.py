"""SSH binary packet protection, one direction at a time, on the `cryptography` package's primitives.

Stock Conch has only encrypt-and-MAC with CBC/CTR. This adds what modern OpenSSH prefers:
chacha20-poly1305@openssh.com (PROTOCOL.chacha20poly1305), aes128/256-gcm@openssh.com
(RFC 5647 as OpenSSH does it: the length in clear as AAD, a 64-bit invocation counter) and
encrypt-then-MAC HMACs (PROTOCOL, section 1.5). No cryptographic primitive is written here.

A packet here is the plaintext `uint32 length || byte padding || payload || padding`.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass
from hashlib import sha256, sha512
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.poly1305 import Poly1305


class BadPacket(Exception):
    """A packet failed authentication or could not be decrypted."""


@dataclass(frozen=True)
class CipherSpec:
    kind: str  # "chacha", "gcm" or "ctr"
    key_size: int
    block_size: int

    @property
    def aead(self) -> bool:
        return self.kind in ("chacha", "gcm")


@dataclass(frozen=True)
class MacSpec:
    digest: Callable[..., Any]
    size: int
    etm: bool


CIPHERS: dict[bytes, CipherSpec] = {
    b"chacha20-poly1305@openssh.com": CipherSpec("chacha", 64, 8),
    b"aes256-gcm@openssh.com": CipherSpec("gcm", 32, 16),
    b"aes128-gcm@openssh.com": CipherSpec("gcm", 16, 16),
    b"aes256-ctr": CipherSpec("ctr", 32, 16),
    b"aes192-ctr": CipherSpec("ctr", 24, 16),
    b"aes128-ctr": CipherSpec("ctr", 16, 16),
}
MACS: dict[bytes, MacSpec] = {
    b"hmac-sha2-256-etm@openssh.com": MacSpec(sha256, 32, True),
    b"hmac-sha2-512-etm@openssh.com": MacSpec(sha512, 64, True),
    b"hmac-sha2-256": MacSpec(sha256, 32, False),
    b"hmac-sha2-512": MacSpec(sha512, 64, False),
}
NONE = b"none"


_BLOCK0 = bytes(64)
#: OpenSSH's ChaCha20 nonce is the 64-bit sequence number after a 64-bit block counter; cryptography
#: takes RFC 8439's 16 bytes (counter || nonce), the same bytes while the counter is below 2**32.
_COUNTER0 = bytes(8)


class ChaChaStream:
    """One ChaCha20 key's cipher context, re-keyed per packet with `reset_nonce`: building a new
    Cipher for each of the two keystreams of every packet cost ~2 µs of Python (key and nonce
    checks, ABC isinstance checks) against ~0.5 µs for a reset. A context costs ~0.9 KiB, four
    per connection: `release` drops it between bursts (an idle session keeps none)."""

    __slots__ = ("_ctx", "_key")

    def __init__(self, key: bytes):
        self._key = key
        self._ctx: Any = None

    def keystream_xor(self, data: bytes, seq: int) -> bytes:
        """`data` XORed with packet `seq`'s keystream from block 0."""
        ctx = self._ctx
        if ctx is None:
            # A stream cipher: decryptor() is the same keystream XOR as encryptor().
            ctx = self._ctx = Cipher(algorithms.ChaCha20(self._key, bytes(16)), mode=None).decryptor()
        ctx.reset_nonce(_COUNTER0 + seq.to_bytes(8, "big"))
        out: bytes = ctx.update(data)
        return out

    def release(self) -> None:
        self._ctx = None


class PacketCodec:
    """Seals and opens the packets of one direction with one negotiated cipher and MAC."""

    #: Padding aligns the packet to this; with `length_excluded`, without the length field.
    block_size = 8
    length_excluded = False
    tag_size = 0

    def seal(self, seq: int, packet: bytes) -> bytes:
        return packet

    def head_size(self) -> int:
        """Bytes needed before the packet length can be known."""
        return 4

    def packet_length(self, seq: int, head: bytes) -> int:
        return int(struct.unpack(">L", head[:4])[0])

    def open(self, seq: int, data: bytes) -> bytes:
        """`data` is the whole packet as received (length field to tag); returns the plaintext."""
        return data

    def release(self) -> None:
        """Drop what speeds up a burst of packets and can be rebuilt (the connection went quiet)."""


class _EncryptAndMac(PacketCodec):
    """CTR with a classic HMAC over the plaintext (RFC 4253), or with encrypt-then-MAC."""

    def __init__(self, spec: CipherSpec, key: bytes, iv: bytes, mac: MacSpec | None, mac_key: bytes, *, out: bool):
        cipher = Cipher(algorithms.AES(key[: spec.key_size]), modes.CTR(iv[:16]))
        self._crypt = (cipher.encryptor() if out else cipher.decryptor()).update
        self.block_size = spec.block_size
        self._mac = hmac.new(mac_key[: mac.size], digestmod=mac.digest) if mac else None
        self.tag_size = mac.size if mac else 0
        self.etm = bool(mac and mac.etm)
        self.length_excluded = self.etm
        self._first = b""

    def _tag(self, seq: int, data: bytes) -> bytes:
        assert self._mac is not None
        h = self._mac.copy()
        h.update(struct.pack(">L", seq))
        h.update(data)
        return h.digest()

    def seal(self, seq: int, packet: bytes) -> bytes:
        if self.etm:
            sealed = packet[:4] + self._crypt(packet[4:])
            return sealed + self._tag(seq, sealed)
        return self._crypt(packet) + (self._tag(seq, packet) if self._mac else b"")

    def head_size(self) -> int:
        return 4 if self.etm else self.block_size

    def packet_length(self, seq: int, head: bytes) -> int:
        if self.etm:
            return int(struct.unpack(">L", head[:4])[0])
        if not self._first:  # decrypt the first block once; the stream cipher moves on
            self._first = self._crypt(head[: self.block_size])
        return int(struct.unpack(">L", self._first[:4])[0])

    def open(self, seq: int, data: bytes) -> bytes:
        body, tag = data[: len(data) - self.tag_size], data[len(data) - self.tag_size :]
        if self.etm:
            if not hmac.compare_digest(self._tag(seq, body), tag):
                raise BadPacket("bad MAC")
            return body[:4] + self._crypt(body[4:])
        first, self._first = self._first, b""
        packet = first + self._crypt(body[len(first) :])
        if self._mac and not hmac.compare_digest(self._tag(seq, packet), tag):
            raise BadPacket("bad MAC")
        return packet


class _AesGcm(PacketCodec):
    """aes*-gcm@openssh.com: 12-byte IV = 4-byte fixed field + 8-byte invocation counter."""

    length_excluded = True
    tag_size = 16
    block_size = 16

    def __init__(self, spec: CipherSpec, key: bytes, iv: bytes):
        self._aead = AESGCM(key[: spec.key_size])
        self._fixed = iv[:4]
        self._counter = int.from_bytes(iv[4:12], "big")

    def _next_nonce(self) -> bytes:
        nonce = self._fixed + self._counter.to_bytes(8, "big")
        self._counter = (self._counter + 1) & 0xFFFFFFFFFFFFFFFF
        return nonce

    def seal(self, seq: int, packet: bytes) -> bytes:
        return packet[:4] + self._aead.encrypt(self._next_nonce(), packet[4:], packet[:4])

    def open(self, seq: int, data: bytes) -> bytes:
        try:
            return data[:4] + self._aead.decrypt(self._next_nonce(), data[4:], data[:4])
        except InvalidTag:
            raise BadPacket("bad GCM tag") from None


class _ChaCha20Poly1305(PacketCodec):
    """chacha20-poly1305@openssh.com: K_2 (first 32 bytes) seals the payload, K_1 the length."""

    length_excluded = True
    tag_size = 16

    def __init__(self, key: bytes):
        self._main, self._header = ChaChaStream(key[:32]), ChaChaStream(key[32:64])
        self._length: tuple[int, bytes] = (-1, b"")

    def release(self) -> None:
        self._main.release()
        self._header.release()

    def _main_stream(self, seq: int, data: bytes) -> tuple[bytes, bytes]:
        """One pass of K_2's keystream: block 0 gives the Poly1305 key, blocks 1.. encrypt data."""
        out = self._main.keystream_xor(_BLOCK0 + data, seq)
        return out[:32], out[64:]

    def seal(self, seq: int, packet: bytes) -> bytes:
        poly_key, body = self._main_stream(seq, packet[4:])
        sealed = self._header.keystream_xor(packet[:4], seq) + body
        return sealed + Poly1305.generate_tag(poly_key, sealed)

    def packet_length(self, seq: int, head: bytes) -> int:
        plain = self._header.keystream_xor(head[:4], seq)
        self._length = (seq, plain)  # open() needs it again for the same packet
        return int(struct.unpack(">L", plain)[0])

    def open(self, seq: int, data: bytes) -> bytes:
        sealed, tag = data[:-16], data[-16:]
        poly_key, body = self._main_stream(seq, sealed[4:])
        try:
            Poly1305.verify_tag(poly_key, sealed, tag)
        except InvalidSignature:
            raise BadPacket("bad Poly1305 tag") from None
        known_seq, length = self._length
        if known_seq != seq:
            length = self._header.keystream_xor(sealed[:4], seq)
        return length + body


def make_codec(cipher: bytes, mac: bytes, key: bytes, iv: bytes, mac_key: bytes, *, out: bool) -> PacketCodec:
    """The codec for one direction of a negotiated cipher and MAC (ignored for AEAD ciphers)."""
    if cipher == NONE:
        return PacketCodec()
    spec = CIPHERS[cipher]
    if spec.kind == "chacha":
        return _ChaCha20Poly1305(key)
    if spec.kind == "gcm":
        return _AesGcm(spec, key, iv)
    return _EncryptAndMac(spec, key, iv, MACS.get(mac), mac_key, out=out)


def pad(payload: bytes, codec: PacketCodec, random_bytes: Callable[[int], bytes]) -> bytes:
    """Frame a payload: at least 4 bytes of random padding, aligned as the codec requires."""
    block = max(codec.block_size, 8)
    covered = 1 + len(payload) if codec.length_excluded else 5 + len(payload)
    padding = block - covered % block
    if padding < 4:
        padding += block
    return struct.pack(">LB", 1 + len(payload) + padding, padding) + payload + random_bytes(padding)


class CipherSuite:
    """Both directions of one key exchange's outcome (what Conch calls SSHCiphers)."""

    def __init__(self, out_cipher: bytes, in_cipher: bytes, out_mac: bytes, in_mac: bytes):
        # Conch reads these names (isEncrypted, isVerified, logs). For AEAD the MAC is implicit.
        self.outCipType, self.inCipType = out_cipher, in_cipher
        self.outMACType = out_cipher if _is_aead(out_cipher) else out_mac
        self.inMACType = in_cipher if _is_aead(in_cipher) else in_mac
        self.outgoing: PacketCodec = PacketCodec()
        self.incoming: PacketCodec = PacketCodec()

    @classmethod
    def plain(cls) -> CipherSuite:
        return cls(NONE, NONE, NONE, NONE)

    @property
    def encBlockSize(self) -> int:
        """Conch's client tests this to know whether keys are set yet."""
        return self.outgoing.block_size if self.keyed else 0

    keyed = False

    def setKeys(self, outIV: bytes, outKey: bytes, inIV: bytes, inKey: bytes, outInteg: bytes, inInteg: bytes) -> None:
        self.keyed = True
        self.outgoing = make_codec(self.outCipType, self.outMACType, outKey, outIV, outInteg, out=True)
        self.incoming = make_codec(self.inCipType, self.inMACType, inKey, inIV, inInteg, out=False)


def _is_aead(cipher: bytes) -> bool:
    spec = CIPHERS.get(cipher)
    return bool(spec and spec.aead)


def implicit_mac(cipher: bytes | None) -> bytes | None:
    """An AEAD cipher authenticates itself: its MAC is implied (its own name), not negotiated."""
    return cipher if cipher is not None and _is_aead(cipher) else None
