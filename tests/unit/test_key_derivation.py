"""Key derivation (RFC 4253 7.2): only the bytes each negotiated codec reads, the same bytes Conch's
`_getKey` derives, in the direction Conch's `_keySetup` hands them to."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
from support.sshclient import ClientTransport
from twisted.conch.ssh import transport

from conchcmd.wire.framing import ModernServerTransport, derive_key
from conchcmd.wire.packets import CIPHERS, MACS, CipherSuite, make_codec, pad

KEX = b"curve25519-sha256"
COMBINATIONS = [(c, c) for c, spec in CIPHERS.items() if spec.aead] + [
    (c, m) for c, spec in CIPHERS.items() if not spec.aead for m in MACS
]


def conch_key(letter: bytes, secret: bytes, exchange_hash: bytes, session_id: bytes) -> bytes:
    """Conch's own derivation (128 bytes, whatever the cipher), the reference."""
    return transport.SSHTransportBase._getKey(  # type: ignore[no-any-return]
        SimpleNamespace(kexAlg=KEX, sessionID=session_id), letter, secret, exchange_hash
    )


def keyed(cls: type, cipher: bytes, mac: bytes, session_id: bytes) -> object:
    side = cls()
    side.kexAlg = KEX
    side.sessionID = session_id
    side.nextEncryptions = CipherSuite(cipher, cipher, mac, mac)
    return side


@pytest.mark.parametrize(("cipher", "mac"), COMBINATIONS)
@pytest.mark.parametrize("cls", [ModernServerTransport, ClientTransport], ids=["server", "client"])
def test_each_key_is_the_prefix_of_conch_s_that_the_codec_reads(cls: type, cipher: bytes, mac: bytes) -> None:
    secret, exchange_hash, session_id = b"\0\0\0\x21\0" + os.urandom(32), os.urandom(32), os.urandom(32)
    side = keyed(cls, cipher, mac, session_id)
    spec = CIPHERS[cipher]
    for letter in b"ABCDEF":
        name = bytes((letter,))
        key = side._getKey(name, secret, exchange_hash)  # type: ignore[attr-defined]
        full = conch_key(name, secret, exchange_hash, session_id)
        assert full.startswith(key)
        if name in (b"A", b"B"):
            assert len(key) == {"chacha": 0, "gcm": 12, "ctr": 16}[spec.kind]
        elif name in (b"C", b"D"):
            assert len(key) == spec.key_size
        else:
            assert len(key) == (0 if spec.aead else MACS[mac].size)


@pytest.mark.parametrize(("cipher", "mac"), COMBINATIONS)
def test_a_codec_from_the_short_keys_seals_as_one_from_conch_s_keys(cipher: bytes, mac: bytes) -> None:
    secret, exchange_hash, session_id = b"\0\0\0\x20" + os.urandom(32), os.urandom(32), os.urandom(32)
    server = keyed(ModernServerTransport, cipher, mac, session_id)

    def codec(derive: object) -> object:
        iv, key, integ = (derive(x, secret, exchange_hash) for x in (b"B", b"D", b"F"))  # type: ignore[operator]
        return make_codec(cipher, mac, key, iv, integ, out=True)

    short = codec(server._getKey)  # type: ignore[attr-defined]
    full = codec(lambda x, k, h: conch_key(x, k, h, session_id))
    packet = pad(b"\x5e" + os.urandom(100), short, lambda n: bytes(n))  # type: ignore[arg-type]
    for seq in (3, 4):
        assert short.seal(seq, packet) == full.seal(seq, packet)  # type: ignore[attr-defined]


def test_chacha20_poly1305_derives_neither_ivs_nor_mac_keys() -> None:
    """4 digests per key exchange (two 64-byte keys) instead of Conch's 24."""
    chacha = b"chacha20-poly1305@openssh.com"
    server = keyed(ModernServerTransport, chacha, chacha, os.urandom(32))
    sizes = [len(server._getKey(bytes((x,)), b"\0\0\0\1\1", os.urandom(32))) for x in b"ABCDEF"]  # type: ignore[attr-defined]
    assert sizes == [0, 0, 64, 64, 0, 0]


@pytest.mark.parametrize("cls", [ModernServerTransport, ClientTransport], ids=["server", "client"])
def test_each_direction_gets_the_sizes_of_its_own_cipher(cls: type) -> None:
    """A, C, E key the client's packets to the server; B, D, F the server's (RFC 4253 7.2)."""
    side = cls()
    side.kexAlg, side.sessionID = KEX, os.urandom(32)
    ctr, chacha, hmac512 = b"aes128-ctr", b"chacha20-poly1305@openssh.com", b"hmac-sha2-512-etm@openssh.com"
    # the server sends with ChaCha20-Poly1305 and reads AES-CTR with HMAC-SHA-512; the client the reverse
    suite = CipherSuite(chacha, ctr, chacha, hmac512) if cls is ModernServerTransport else None
    side.nextEncryptions = suite or CipherSuite(ctr, chacha, hmac512, chacha)
    sizes = [len(side._getKey(bytes((x,)), b"\0\0\0\1\1", os.urandom(32))) for x in b"ABCDEF"]
    assert sizes == [16, 0, 16, 64, 64, 0]


def test_longer_keys_chain_every_digest_before_them_as_conch_does() -> None:
    secret, exchange_hash, session_id = b"\0\0\0\x20" + os.urandom(32), os.urandom(32), os.urandom(32)
    factory = ModernServerTransport.kex_hash_factory(SimpleNamespace(kexAlg=KEX))  # type: ignore[arg-type]
    for size in (1, 32, 33, 64, 100, 128):
        key = derive_key(factory, secret, exchange_hash, b"C", session_id, size)
        assert key == conch_key(b"C", secret, exchange_hash, session_id)[:size]
