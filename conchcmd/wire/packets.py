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

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from conchcmd.wire import poly1305


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
_NONCE0 = bytes(16)  # a context's first nonce (reset for each packet): one object, not one per context


def chacha_context(key: bytes) -> Any:
    """A ChaCha20 keystream context for `key`, re-keyed per packet with `reset_nonce` (a stream
    cipher: decryptor() is the same keystream XOR as encryptor()). Building one costs ~25 Python
    calls (key and nonce checks, ABC isinstance checks) against 3 for a reset; a connection's four
    hold ~1.5 KiB (tests/bench/capacity.py: 13.3 -> 14.8 KiB per idle session)."""
    return Cipher(algorithms.ChaCha20(key, _NONCE0), mode=None).decryptor()


class PacketCodec:
    """Seals and opens the packets of one direction with one negotiated cipher and MAC."""

    __slots__ = ()  # the ChaCha20 codec has slots (kept by every idle session); the others a dict

    #: The cipher's block size; padding aligns the packet to `align` (the block size, at least 8),
    #: with `length_excluded` without the length field. `head`: bytes needed before the packet
    #: length can be known. (Attributes, not methods: they are read for every packet.)
    block_size = 8
    align = 8
    head = 4
    length_excluded = False
    tag_size = 0

    def seal(self, seq: int, packet: bytes) -> bytes:
        return packet

    def packet_length(self, seq: int, head: bytes) -> int:
        return int(struct.unpack(">L", head[:4])[0])

    def open(self, seq: int, data: bytes) -> bytes:
        """`data` is the whole packet as received (length field to tag); returns the plaintext."""
        return data


class _EncryptAndMac(PacketCodec):
    """CTR with a classic HMAC over the plaintext (RFC 4253), or with encrypt-then-MAC."""

    def __init__(self, spec: CipherSpec, key: bytes, iv: bytes, mac: MacSpec | None, mac_key: bytes, *, out: bool):
        cipher = Cipher(algorithms.AES(key[: spec.key_size]), modes.CTR(iv[:16]))
        self._crypt = (cipher.encryptor() if out else cipher.decryptor()).update
        self.block_size = spec.block_size
        self.align = max(spec.block_size, 8)
        self._mac = hmac.new(mac_key[: mac.size], digestmod=mac.digest) if mac else None
        self.tag_size = mac.size if mac else 0
        self.etm = bool(mac and mac.etm)
        self.length_excluded = self.etm
        self.head = 4 if self.etm else self.block_size
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
    align = 16

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


_NO_LENGTH: tuple[int, bytes, bytes] = (-1, b"", b"")


class _ChaCha20Poly1305(PacketCodec):
    """chacha20-poly1305@openssh.com: K_2 (first 32 bytes) seals the payload, K_1 the length.

    The two contexts live as long as the keys: rebuilding them per burst of packets, as an
    earlier version did to keep idle sessions small, cost ~25 calls per context, 30 contexts
    per fresh exec. The nonce of a packet is made once and serves both keys. Tags: `poly1305`
    (libsodium for all but long packets)."""

    length_excluded = True
    tag_size = 16
    head = 4
    __slots__ = ("_header", "_length", "_main")

    def __init__(self, key: bytes):
        self._main, self._header = chacha_context(key[:32]), chacha_context(key[32:64])
        #: (seq, plaintext length field, nonce) of the packet whose length was read last
        self._length = _NO_LENGTH

    def seal(self, seq: int, packet: bytes) -> bytes:
        nonce = _COUNTER0 + seq.to_bytes(8, "big")
        main = self._main
        main.reset_nonce(nonce)
        # One pass of K_2's keystream: block 0 gives the Poly1305 key, blocks 1.. encrypt the rest.
        out = main.update(_BLOCK0 + packet[4:])
        header = self._header
        header.reset_nonce(nonce)
        sealed = header.update(packet[:4]) + out[64:]
        return sealed + poly1305.tag(out[:32], sealed)

    def packet_length(self, seq: int, head: bytes) -> int:
        nonce = _COUNTER0 + seq.to_bytes(8, "big")
        header = self._header
        header.reset_nonce(nonce)
        plain = header.update(head[:4])
        self._length = (seq, plain, nonce)  # open() needs them again for the same packet
        return int.from_bytes(plain, "big")

    def open(self, seq: int, data: bytes) -> bytes:
        known_seq, length, nonce = self._length
        self._length = _NO_LENGTH  # an idle session keeps none
        if known_seq != seq:
            nonce = _COUNTER0 + seq.to_bytes(8, "big")
        main = self._main
        main.reset_nonce(nonce)
        out = main.update(_BLOCK0 + data[4:-16])
        if not poly1305.verify(out[:32], data[:-16], data[-16:]):
            raise BadPacket("bad Poly1305 tag")
        if known_seq != seq:
            header = self._header
            header.reset_nonce(nonce)
            length = header.update(data[:4])
        return length + out[64:]


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


_LENGTH_AND_PADDING = struct.Struct(">LB").pack


def pad(payload: bytes, codec: PacketCodec, random_bytes: Callable[[int], bytes]) -> bytes:
    """Frame a payload: at least 4 bytes of random padding, aligned as the codec requires."""
    block = codec.align
    size = len(payload)
    padding = block - (1 + size if codec.length_excluded else 5 + size) % block
    if padding < 4:
        padding += block
    return _LENGTH_AND_PADDING(1 + size + padding, padding) + payload + random_bytes(padding)


class CipherSuite:
    """Both directions of one key exchange's outcome (what Conch calls SSHCiphers); every
    session keeps one, hence the slots."""

    __slots__ = ("inCipType", "inMACType", "incoming", "keyed", "outCipType", "outMACType", "outgoing")

    def __init__(self, out_cipher: bytes, in_cipher: bytes, out_mac: bytes, in_mac: bytes):
        # Conch reads these names (isEncrypted, isVerified, logs). For AEAD the MAC is implicit.
        self.outCipType, self.inCipType = out_cipher, in_cipher
        self.outMACType = out_cipher if _is_aead(out_cipher) else out_mac
        self.inMACType = in_cipher if _is_aead(in_cipher) else in_mac
        self.outgoing: PacketCodec = PacketCodec()
        self.incoming: PacketCodec = PacketCodec()
        self.keyed = False

    @classmethod
    def plain(cls) -> CipherSuite:
        return cls(NONE, NONE, NONE, NONE)

    @property
    def encBlockSize(self) -> int:
        """Conch's client tests this to know whether keys are set yet."""
        return self.outgoing.block_size if self.keyed else 0

    def key_sizes(self, outgoing: bool) -> tuple[int, int, int]:
        """The (IV, cipher key, MAC key) sizes one direction's codec reads (see `key_sizes`)."""
        if outgoing:
            return key_sizes(self.outCipType, self.outMACType)
        return key_sizes(self.inCipType, self.inMACType)

    def setKeys(self, outIV: bytes, outKey: bytes, inIV: bytes, inKey: bytes, outInteg: bytes, inInteg: bytes) -> None:
        self.keyed = True
        self.outgoing = make_codec(self.outCipType, self.outMACType, outKey, outIV, outInteg, out=True)
        self.incoming = make_codec(self.inCipType, self.inMACType, inKey, inIV, inInteg, out=False)


def key_sizes(cipher: bytes, mac: bytes) -> tuple[int, int, int]:
    """The bytes of (IV, cipher key, MAC key) that `make_codec` reads for this cipher and MAC: the
    key derivation (RFC 4253 7.2) makes no more (an AEAD cipher needs no MAC key, ChaCha20 no IV)."""
    if cipher == NONE:
        return 0, 0, 0
    spec = CIPHERS[cipher]
    if spec.kind == "chacha":
        return 0, spec.key_size, 0
    if spec.kind == "gcm":
        return 12, spec.key_size, 0
    mac_spec = MACS.get(mac)
    return 16, spec.key_size, mac_spec.size if mac_spec else 0


def _is_aead(cipher: bytes) -> bool:
    spec = CIPHERS.get(cipher)
    return bool(spec and spec.aead)


def implicit_mac(cipher: bytes | None) -> bytes | None:
    """An AEAD cipher authenticates itself: its MAC is implied (its own name), not negotiated."""
    return cipher if cipher is not None and _is_aead(cipher) else None
