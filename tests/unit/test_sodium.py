"""keys/sodium.py against cryptography (OpenSSL), the library it replaces on the login path: the
same X25519 values and secrets, the same Ed25519 signatures, the same verdicts on signatures, and
a refusal where OpenSSL accepts a signature that anyone could have made (a key of small order)."""

from __future__ import annotations

import os

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa, x25519
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_scalarmult_ed25519_base_noclamp
from twisted.conch.ssh.common import NS
from twisted.conch.ssh.keys import Key

from conchcmd.keys import sodium
from conchcmd.keys.keyparse import public_key_from_blob
from conchcmd.wire.hostkeys import HostKey

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
#: X25519 values of small order (RFC 7748 section 7; libsodium's list): each gives an all-zero secret.
LOW_ORDER = [
    0,
    1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
    P - 1,
    P,
    P + 1,
]

bytes32 = st.binary(min_size=32, max_size=32)


def openssl_shared(private: bytes, peer: bytes) -> bytes:
    return x25519.X25519PrivateKey.from_private_bytes(private).exchange(x25519.X25519PublicKey.from_public_bytes(peer))


@settings(max_examples=300, deadline=None)
@given(private=bytes32, peer=bytes32)
def test_x25519_gives_openssls_public_values_and_secrets(private: bytes, peer: bytes) -> None:
    public = x25519.X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()
    assert sodium.x25519_public(private) == public
    try:
        expected: bytes | None = openssl_shared(private, peer)
    except ValueError:
        expected = None
    if expected is None:
        with pytest.raises(ValueError, match="Error computing shared key"):
            sodium.x25519_shared(private, peer)
    else:
        assert sodium.x25519_shared(private, peer) == expected


@pytest.mark.parametrize("value", LOW_ORDER)
@pytest.mark.parametrize("top_bit", [0, 1 << 255])
def test_x25519_refuses_values_of_small_order_as_openssl_does(value: int, top_bit: int) -> None:
    peer = ((value % 2**255) | top_bit).to_bytes(32, "little")
    private = os.urandom(32)
    with pytest.raises(ValueError, match="Error computing shared key"):
        openssl_shared(private, peer)
    with pytest.raises(ValueError, match="Error computing shared key"):
        sodium.x25519_shared(private, peer)


@pytest.mark.parametrize("value", [P + 2, P + 3, P + 9, P + 18, 2**255 - 1, 2, 9, P - 2])
@pytest.mark.parametrize("top_bit", [0, 1 << 255])
def test_x25519_takes_non_canonical_values_as_openssl_does(value: int, top_bit: int) -> None:
    """u >= p (only p + 2 .. 2**255 - 1 fit) is taken mod p and the top bit ignored (RFC 7748 5),
    by both, with the same secret as the canonical value, where it is not of small order."""
    peer = (value | top_bit).to_bytes(32, "little")
    private = os.urandom(32)
    canonical = (value % P).to_bytes(32, "little")
    assert sodium.x25519_shared(private, peer) == openssl_shared(private, peer) == openssl_shared(private, canonical)


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_x25519_refuses_a_public_value_of_the_wrong_size_with_openssls_words(size: int) -> None:
    with pytest.raises(ValueError, match="An X25519 public key is 32 bytes long"):
        sodium.x25519_shared(os.urandom(32), os.urandom(size))


@pytest.mark.parametrize("size", [0, 5, 31, 33])
def test_x25519_refuses_a_private_key_of_the_wrong_size(size: int) -> None:
    """PyNaCl hands libsodium the buffer unchecked: a short one was read past its end (a result
    from bytes after it), a long one cut short, with no error."""
    with pytest.raises(ValueError, match="An X25519 private key is 32 bytes long"):
        sodium.x25519_public(os.urandom(size))
    with pytest.raises(ValueError, match="An X25519 private key is 32 bytes long"):
        sodium.x25519_shared(os.urandom(size), sodium.x25519_key_pair()[1])


def test_x25519_key_pairs_are_fresh_and_consistent() -> None:
    pairs = {sodium.x25519_key_pair() for _ in range(50)}
    assert len(pairs) == 50
    for private, public in pairs:
        assert x25519.X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw() == public


def host_key(private: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey) -> HostKey:
    return HostKey(private)


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=300))
def test_an_ed25519_host_key_signs_the_bytes_conch_signs(data: bytes) -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    ours, conchs = host_key(private), Key(private)
    assert ours.sign(data) == conchs.sign(data) == ours.sign(data, signatureType=b"ssh-ed25519")
    assert ours._signer is not None  # libsodium signed it


@pytest.mark.parametrize("algorithm", [b"rsa-sha2-256", b"rsa-sha2-512", b"ssh-rsa"])
def test_an_rsa_host_key_is_still_signed_by_conch(algorithm: bytes) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ours = host_key(private)
    signature = ours.sign(b"exchange hash", signatureType=algorithm)
    assert Key(private).public().verify(signature, b"exchange hash")
    assert ours._signer is None


def ssh_signature(raw: bytes, name: bytes = b"ssh-ed25519") -> bytes:
    return NS(name) + NS(raw)


def public_of(private: ed25519.Ed25519PrivateKey) -> tuple[bytes, Key]:
    raw = private.public_key().public_bytes_raw()
    blob = NS(b"ssh-ed25519") + NS(raw)
    return raw, public_key_from_blob(blob)


def openssl_verdict(raw_public: bytes, signature: bytes, data: bytes) -> bool:
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(raw_public).verify(signature, data)
    except InvalidSignature:
        return False
    return True


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=200), flip=st.integers(min_value=-1, max_value=64 * 8 - 1))
def test_a_client_signature_gets_openssls_verdict(data: bytes, flip: int) -> None:
    """Valid signatures, and each with one bit flipped (R, or s: above L or not)."""
    private = ed25519.Ed25519PrivateKey.generate()
    raw, key = public_of(private)
    signature = bytearray(private.sign(data))
    if flip >= 0:
        signature[flip // 8] ^= 1 << (flip % 8)
    assert key.verify(ssh_signature(bytes(signature)), data) is openssl_verdict(raw, bytes(signature), data)
    assert key.verify(ssh_signature(bytes(signature)), data) is (flip < 0)


@settings(max_examples=150, deadline=None)
@given(signature=st.binary(min_size=64, max_size=64), data=st.binary(max_size=64))
def test_random_signatures_are_refused_by_both(signature: bytes, data: bytes) -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    raw, key = public_of(private)
    assert not openssl_verdict(raw, signature, data)
    assert not key.verify(ssh_signature(signature), data)


def test_s_at_or_above_the_group_order_is_refused() -> None:
    """The malleable twin of a valid signature (s + L), which sshd's ref10 code accepts while
    s < 2**253: refused by OpenSSL and libsodium alike."""
    private = ed25519.Ed25519PrivateKey.generate()
    raw, key = public_of(private)
    good = private.sign(b"m")
    s = int.from_bytes(good[32:], "little")
    twin = good[:32] + (s + L).to_bytes(32, "little")
    assert key.verify(ssh_signature(good), b"m")
    assert not openssl_verdict(raw, twin, b"m")
    assert not key.verify(ssh_signature(twin), b"m")


@pytest.mark.parametrize(
    "signature",
    [
        b"",
        NS(b"ssh-ed25519"),  # no signature string
        NS(b"ssh-ed25519") + NS(b"\x00" * 63),  # too short
        NS(b"ssh-ed25519") + NS(b"\x00" * 65),  # too long
        NS(b"ssh-ed25519") + b"\x00\x00\x00\x40",  # a length and no bytes
        b"\x00" * 40,  # Conch's unpadded DSA special case
    ],
)
def test_malformed_signatures_are_refused_not_raised(signature: bytes) -> None:
    _, key = public_of(ed25519.Ed25519PrivateKey.generate())
    assert key.verify(signature, b"data") is False


def test_a_signature_under_another_algorithm_name_is_refused() -> None:
    """Conch's own verify takes any algorithm name for an Ed25519 key (its hash table answers
    SHA-512 for all); the login path checks the name first, and so does this."""
    private = ed25519.Ed25519PrivateKey.generate()
    _, key = public_of(private)
    good = private.sign(b"m")
    assert Key(private).public().verify(ssh_signature(good, b"ssh-rsa"), b"m")
    assert not key.verify(ssh_signature(good, b"ssh-rsa"), b"m")
    assert key.verify(ssh_signature(good), b"m")


def test_a_key_of_small_order_cannot_be_signed_for_by_anyone() -> None:
    """The identity point as a public key: s*B = R + h*A holds for R = s*B whatever the message,
    so anyone can make a signature. OpenSSL (and so Conch's verify) accepts it; we refuse."""
    identity = (1).to_bytes(32, "little")
    s = (int.from_bytes(os.urandom(32), "little") % L).to_bytes(32, "little")
    forged = crypto_scalarmult_ed25519_base_noclamp(s) + s
    key = public_key_from_blob(NS(b"ssh-ed25519") + NS(identity))
    assert openssl_verdict(identity, forged, b"let me in")
    assert Key.verify(key, ssh_signature(forged), b"let me in")  # Conch's verify, through OpenSSL
    assert not key.verify(ssh_signature(forged), b"let me in")
    assert not sodium.ed25519_verify(identity, forged, b"let me in")


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_the_signer_refuses_a_seed_of_the_wrong_size(size: int) -> None:
    with pytest.raises(ValueError):
        sodium.Ed25519Signer(b"\x00" * size)


def test_the_signer_takes_its_public_key_from_the_seed() -> None:
    """libsodium signs with the public half of the secret it is given: were it taken from the
    caller, a wrong one would make signatures that, with a right one of the same message, give
    the private scalar away. The signer derives it, and signs as cryptography does."""
    private = ed25519.Ed25519PrivateKey.generate()
    signer = sodium.Ed25519Signer(private.private_bytes_raw())
    assert signer.public == private.public_key().public_bytes_raw()
    assert signer.sign(b"m") == private.sign(b"m")


@settings(max_examples=200, deadline=None)
@given(public=bytes32, signature=st.binary(max_size=120), data=st.binary(max_size=64))
def test_any_key_and_signature_bytes_get_a_verdict_not_an_exception(
    public: bytes, signature: bytes, data: bytes
) -> None:
    """Whatever 32 bytes a key line holds (not a point, small order, non-canonical) and whatever
    the client sends as its signature: False (or, for a real key, OpenSSL's verdict), never an
    exception out of PyNaCl; the raw signature inside one well-formed string too."""
    key = public_key_from_blob(NS(b"ssh-ed25519") + NS(public))
    assert key.verify(signature, data) is False
    for raw in (signature, signature[:64].ljust(64, b"\0")):
        verdict = key.verify(ssh_signature(raw), data)
        assert verdict is sodium.ed25519_verify(public, raw, data)
        assert verdict is False or openssl_verdict(public, raw, data)
