"""Ed25519 keys no signature can pass (libsodium's verify refuses them before any curve arithmetic)
are refused when a key line is read: `sodium.ed25519_public_refusal` makes libsodium's decision
(its small-order blocklist and canonical check) as data, and every reader of key lines asks it.
Here: that it agrees with `sodium.ed25519_verify` on every key of small order in every encoding
and on random keys, and that authorized_keys, trusted_user_ca_keys and revoked_keys act on it."""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_core_ed25519_is_valid_point, crypto_scalarmult_ed25519_base_noclamp
from support import edwards
from support.certlogin import raw_certificate
from support.edwards import ED25519, SK_ED25519, SmallOrderKey
from support.skauth import UP, signed_message
from twisted.conch.ssh.common import NS

from conchcmd.keys import sodium
from conchcmd.keys.keyparse import public_key_from_blob
from conchcmd.keys.sk import SkBadSignature, parse_sk_public_key, verify_ca_signature
from conchcmd.policy.authorized_keys import parse_authorized_keys
from conchcmd.policy.certs import CertificateRefused, RevokedKeys, TrustedCAs

P, L = edwards.P, edwards.L
TORSION = edwards.torsion_points()
SMALL = sodium.SMALL_ORDER
WHY = "Ed25519 key of small order: anyone can sign for it"


def lenient_point(encoded: bytes) -> edwards.Point | None:
    """The point libsodium reads from 32 bytes: y taken mod p, x = 0 whatever the sign bit."""
    value = int.from_bytes(encoded, "little")
    y, sign = (value & ((1 << 255) - 1)) % P, value >> 255
    x = edwards.recover_x(y, sign)
    if x is None:
        x = edwards.recover_x(y, 0)  # "negative zero": libsodium takes x = 0
        if x != 0:
            return None
    return (x, y, 1, x * y % P)


def encodings(point: edwards.Point) -> list[bytes]:
    """Every 32-byte string that names this point (the sign bit flipped only where x = 0, and
    y + p where it fits in 255 bits)."""
    canonical = edwards.encode(point)
    y, sign = int.from_bytes(canonical, "little") & ((1 << 255) - 1), canonical[31] >> 7
    found = [canonical]
    if point[0] % P == 0:
        found.append((y | ((1 - sign) << 255)).to_bytes(32, "little"))
    if y + P < 1 << 255:
        found += [((y + P) | (bit << 255)).to_bytes(32, "little") for bit in (0, 1)]
    return found


def openssl_accepts(public: bytes, signature: bytes, message: bytes) -> bool:
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


@pytest.mark.parametrize("index", range(8))
def test_every_encoding_of_every_point_of_small_order_is_refused_as_verify_refuses_it(index: int) -> None:
    """The forged signature passes the RFC 8032 equation (OpenSSL takes it for a canonical key);
    libsodium refuses it, and the data check names the key of small order."""
    point = TORSION[index]
    for encoded in encodings(point):
        message = os.urandom(16)
        forged = edwards.forge(encoded, lenient_point(encoded), message)  # type: ignore[arg-type]
        assert sodium.ed25519_public_refusal(encoded) == SMALL
        assert not sodium.ed25519_verify(encoded, forged, message)
        if encoded == edwards.encode(point):
            assert openssl_accepts(encoded, forged, message)


def sign_mixed(secret: int, torsion: edwards.Point, message: bytes) -> tuple[bytes, bytes]:
    """(key, signature) for A = [secret]B + T: R = [r]B for random r until [h]T is the identity,
    so s = r + h * secret passes [s]B = R + [h]A. An honest signature when T is the identity; a
    forged one when secret = 0 (mod L)."""
    a = edwards.encode(edwards.add(edwards.multiply(secret % L, edwards.BASE), torsion))
    n = edwards.order(torsion)
    while True:
        r = int.from_bytes(os.urandom(64), "little") % L
        big_r = crypto_scalarmult_ed25519_base_noclamp(r.to_bytes(32, "little"))
        h = int.from_bytes(hashlib.sha512(big_r + a + message).digest(), "little") % L
        if h % n == 0:
            return a, big_r + ((r + h * secret) % L).to_bytes(32, "little")


@settings(max_examples=100, deadline=None)
@given(
    secret=st.one_of(st.integers(min_value=1, max_value=2**256), st.sampled_from([0, L, 2 * L, 7 * L])),
    index=st.integers(min_value=0, max_value=7),
    message=st.binary(max_size=64),
)
def test_random_keys_of_any_order_are_refused_exactly_when_verify_refuses_them(
    secret: int, index: int, message: bytes
) -> None:
    """Keys [a]B + T (T any of the eight points: mixed order included) with a signature that
    passes the equation (OpenSSL accepts it): libsodium accepts it iff the data check does not
    refuse the key, which it does only for a of 0 mod L (a key of small order)."""
    public, signature = sign_mixed(secret, TORSION[index], message)
    assert openssl_accepts(public, signature, message)
    refusal = sodium.ed25519_public_refusal(public)
    assert sodium.ed25519_verify(public, signature, message) is (refusal is None)
    assert (refusal == SMALL) is (secret % L == 0)


NEAR = sorted({0, 1, 2, 3, 4, 9, P - 2, P - 1, *range(P, 1 << 255)} | sodium._SMALL_ORDER_Y)


@settings(max_examples=300, deadline=None)
@given(
    y=st.one_of(st.integers(min_value=0, max_value=(1 << 255) - 1), st.sampled_from(NEAR)),
    sign=st.integers(min_value=0, max_value=1),
)
def test_random_bytes_get_libsodiums_own_verdict(y: int, sign: int) -> None:
    """Any 32 bytes: a point libsodium calls valid (canonical, not of small order, in the prime
    subgroup) is never refused; a refused one is never valid to it; a refused point of small
    order has a forged signature that verify refuses; y >= p is the non-canonical reason."""
    public = (y | (sign << 255)).to_bytes(32, "little")
    refusal = sodium.ed25519_public_refusal(public)
    if crypto_core_ed25519_is_valid_point(public):
        assert refusal is None
    if refusal is None:
        assert y < P
        return
    assert not crypto_core_ed25519_is_valid_point(public)
    point = lenient_point(public)
    if refusal == SMALL:
        assert point is not None
        message = os.urandom(8)
        assert not sodium.ed25519_verify(public, edwards.forge(public, point, message), message)
    else:
        assert refusal == sodium.NOT_CANONICAL and y >= P
        if point is not None:  # a point named the long way (y + p), not one of small order
            assert not edwards.equal(edwards.multiply(8, point), edwards.IDENTITY)


def test_a_real_key_is_never_refused() -> None:
    for _ in range(50):
        private = ed25519.Ed25519PrivateKey.generate()
        public = private.public_key().public_bytes_raw()
        assert sodium.ed25519_public_refusal(public) is None
        assert sodium.ed25519_verify(public, private.sign(b"m"), b"m")


# -- the readers of key lines --------------------------------------------------------------------------


def key_line(blob: bytes, options: str = "", comment: str = "") -> str:
    kind = blob[4 : 4 + struct.unpack(">L", blob[:4])[0]].decode()
    return " ".join(x for x in (options, kind, base64.b64encode(blob).decode(), comment) if x) + "\n"


def weak_blob(index: int = 0, key_type: bytes = ED25519) -> bytes:
    point = TORSION[index]
    return SmallOrderKey(edwards.encode(point), point, key_type=key_type).key_blob()


@pytest.mark.parametrize("key_type", [ED25519, SK_ED25519])
@pytest.mark.parametrize("index", [0, 1, 2, 4])
def test_an_authorized_keys_line_of_small_order_is_refused_when_read(key_type: bytes, index: int) -> None:
    """Kept as an entry (so `users` shows its fingerprint and `deluser` can remove it), refused
    with the reason, among the file's problems; the honest line after it is untouched."""
    honest = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    text = key_line(weak_blob(index, key_type), comment="forged") + key_line(NS(ED25519) + NS(honest))
    parsed = parse_authorized_keys(text, "ak")
    weak, good = parsed.entries
    assert (weak.refused, weak.comment, weak.line) == (WHY, "forged", 1)
    assert good.refused is None
    assert parsed.problems == (f"ak:1: line refused: {WHY}",)


def test_a_cert_authority_line_of_small_order_is_refused_when_read() -> None:
    parsed = parse_authorized_keys(key_line(weak_blob(3), 'cert-authority,principals="ops"'), "ak")
    (entry,) = parsed.entries
    assert entry.refused == f"CA key: {WHY}"
    assert parsed.problems == (f"ak:1: line refused: CA key: {WHY}",)


def test_a_non_canonical_key_line_is_refused_with_its_own_reason() -> None:
    """y + p for a point that is not of small order (y = 3 is on the curve): nobody can sign
    for it, and libsodium refuses every signature: not "anyone can sign"."""
    public = (3 + P).to_bytes(32, "little")
    parsed = parse_authorized_keys(key_line(NS(ED25519) + NS(public)), "ak")
    assert parsed.entries[0].refused == sodium.NOT_CANONICAL


def test_an_option_refusal_is_kept_over_the_key_reason() -> None:
    parsed = parse_authorized_keys(key_line(weak_blob(), "frobnicate"), "ak")
    assert parsed.entries[0].refused == "unknown key option 'frobnicate'"
    assert len(parsed.problems) == 1


def test_trusted_user_ca_keys_skips_a_ca_of_small_order_and_reads_on(tmp_path: Path) -> None:
    """sshd trusts such a CA (and stops at no line): it is left out with the reason, the lines
    after it are read."""
    honest = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    path = tmp_path / "trusted"
    path.write_text("# CAs\n" + key_line(weak_blob(5)) + key_line(NS(ED25519) + NS(honest)))
    os.chmod(path, 0o600)
    trusted = TrustedCAs(str(path))
    assert trusted.load() == frozenset({NS(ED25519) + NS(honest)})
    assert [(r.line, r.reason) for r in trusted.refused] == [(2, WHY)]
    assert trusted.unreadable_line is None
    path.write_text(key_line(NS(ED25519) + NS(honest)))
    assert trusted.load() == frozenset({NS(ED25519) + NS(honest)}) and trusted.refused == ()


def test_revoked_keys_still_lists_a_key_of_small_order(tmp_path: Path) -> None:
    """Revoking such a key is harmless and must not make the list unreadable (which refuses every key)."""
    path = tmp_path / "revoked"
    path.write_text(key_line(weak_blob(0)) + key_line(weak_blob(0, SK_ED25519)))
    os.chmod(path, 0o600)
    revoked = RevokedKeys(str(path))
    revoked.load()
    assert revoked.blobs == {weak_blob(0), weak_blob(0, SK_ED25519)}


def forged_certificate(ca_index: int, user_key: bytes, *, valid: bool = True) -> bytes:
    """A certificate for `user_key` (32 bytes) under the CA key of small order TORSION[ca_index],
    its CA signature forged (`valid`) or garbage."""
    point = TORSION[ca_index]
    ca_raw = edwards.encode(point)

    def sign(data: bytes) -> bytes:
        return edwards.forge(ca_raw, point, data) if valid else os.urandom(64)

    return raw_certificate(
        b"ssh-ed25519-cert-v01@openssh.com", NS(user_key), NS(ED25519) + NS(ca_raw), sign, principals=[b"carol"]
    )


def test_revoked_keys_revokes_the_key_of_a_certificate_under_a_ca_of_small_order(tmp_path: Path) -> None:
    """Such a certificate cannot log in (its CA is refused), but listing it must revoke its key as
    sshd reads it, not make the list unreadable; a certificate whose CA signature does not hold
    even for sshd still makes it unreadable (fail closed)."""
    user_key = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    path = tmp_path / "revoked"
    path.write_text(key_line(forged_certificate(2, user_key)))
    os.chmod(path, 0o600)
    revoked = RevokedKeys(str(path))
    revoked.load()
    assert revoked.blobs == {NS(ED25519) + NS(user_key)}
    with pytest.raises(CertificateRefused, match="revoked"):
        revoked.check_key(NS(ED25519) + NS(user_key))
    path.write_text(key_line(forged_certificate(2, user_key, valid=False)))
    with pytest.raises(CertificateRefused, match="revocation list has an unreadable line"):
        revoked.load()


# Behind the refusal at read: each Ed25519 check itself refuses what anyone can forge for a key of
# small order (OpenSSL accepts it). The refusal of the line hides these checks from the login
# tests; here each is called directly, so one put back on OpenSSL fails.


@pytest.mark.parametrize("index", range(8))
def test_verify_refuses_a_signature_forged_for_a_plain_key_of_small_order(index: int) -> None:
    point = TORSION[index]
    raw = edwards.encode(point)
    forged = edwards.forge(raw, point, b"session")
    ed25519.Ed25519PublicKey.from_public_bytes(raw).verify(forged, b"session")  # OpenSSL: accepted
    key = public_key_from_blob(NS(ED25519) + NS(raw))
    assert not key.verify(NS(ED25519) + NS(forged), b"session")


@pytest.mark.parametrize("index", range(8))
def test_verify_refuses_a_signature_forged_for_a_security_key_of_small_order(index: int) -> None:
    point = TORSION[index]
    raw = edwards.encode(point)
    message = signed_message(edwards.APPLICATION, UP, 1, b"session")
    forged = edwards.forge(raw, point, message)
    ed25519.Ed25519PublicKey.from_public_bytes(raw).verify(forged, message)  # OpenSSL: accepted
    key = parse_sk_public_key(SmallOrderKey(raw, point, SK_ED25519).key_blob())
    with pytest.raises(SkBadSignature):
        key.verify(NS(SK_ED25519) + NS(forged) + struct.pack(">BL", UP, 1), b"session")


@pytest.mark.parametrize("index", range(8))
def test_a_ca_signature_forged_for_a_ca_key_of_small_order_is_refused(index: int) -> None:
    """sk.verify_ca_signature, which checks the CA signature of every Ed25519-signed certificate
    (plain and sk) once certs has let the CA key through."""
    point = TORSION[index]
    raw = edwards.encode(point)
    forged = edwards.forge(raw, point, b"certificate")
    ca_key = ed25519.Ed25519PublicKey.from_public_bytes(raw)
    ca_key.verify(forged, b"certificate")  # OpenSSL: accepted
    with pytest.raises(InvalidSignature):
        verify_ca_signature(NS(ED25519) + NS(raw), ca_key, NS(ED25519) + NS(forged), b"certificate")
