"""The same public key written otherwise than ssh-keygen writes it, each with OpenSSH 9.2's verdict.

Conch's blob parser takes every one of these; sshd's sshkey_from_blob refuses some (trailing
bytes, a curve name not the type's, a compressed point, a number with its top bit set and no
zero byte before it, an Ed25519 key of 33 bytes) and takes the others (numbers with extra
leading zero bytes, a NUL ending the type or curve name: sshbuf_get_cstring drops it).
The differential test (tests/differential/test_blob_encodings_differential.py) checks each
verdict against the real sshd; unit tests and the fuzz samples reuse the encodings.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    SSHCertificateBuilder,
    SSHCertificateType,
)


def ns(value: bytes) -> bytes:
    return struct.pack(">L", len(value)) + value


def fields(blob: bytes) -> list[bytes]:
    """The length-prefixed strings of a well-formed blob."""
    out, pos = [], 0
    while pos < len(blob):
        (size,) = struct.unpack(">L", blob[pos : pos + 4])
        out.append(blob[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return out


def _join(parts: list[bytes]) -> bytes:
    return b"".join(map(ns, parts))


def trailing(blob: bytes) -> bytes:
    return blob + b"\0"


def trailing_string(blob: bytes) -> bytes:
    return blob + ns(b"extra")


def type_nul(blob: bytes) -> bytes:
    parts = fields(blob)
    return _join([parts[0] + b"\0", *parts[1:]])


def zero_padded(blob: bytes, zeros: int = 2) -> bytes:
    """Each RSA number with `zeros` more leading zero bytes."""
    parts = fields(blob)
    return _join([parts[0], *(bytes(zeros) + p for p in parts[1:])])


def unsigned_modulus(blob: bytes) -> bytes:
    """The RSA modulus without the zero byte that keeps its top bit from reading as a sign."""
    name, e, n = fields(blob)
    assert n[0] == 0 and n[1] & 0x80
    return _join([name, e, n[1:]])


def other_curve(blob: bytes) -> bytes:
    """The key's curve name swapped: nistp256 <-> nistp384 (the type name left as it is)."""
    name, curve, point = fields(blob)
    swapped = b"nistp384" if curve == b"nistp256" else b"nistp256"
    return _join([name, swapped, point])


def curve_nul(blob: bytes) -> bytes:
    name, curve, point = fields(blob)
    return _join([name, curve + b"\0", point])


def compressed(blob: bytes) -> bytes:
    name, curve, point = fields(blob)
    curves = {b"nistp256": ec.SECP256R1(), b"nistp384": ec.SECP384R1(), b"nistp521": ec.SECP521R1()}
    key = ec.EllipticCurvePublicKey.from_encoded_point(curves[curve], point)
    return _join([name, curve, key.public_bytes(Encoding.X962, PublicFormat.CompressedPoint)])


def long_ed25519(blob: bytes) -> bytes:
    name, public = fields(blob)
    return _join([name, public + b"\0"])


@dataclass(frozen=True)
class OddEncoding:
    """One way of rewriting a blob: its name, the key kinds it applies to, and sshd's verdict."""

    name: str
    kinds: tuple[str, ...]
    rewrite: Callable[[bytes], bytes]
    sshd_accepts: bool


ENCODINGS = (
    OddEncoding("trailing byte", ("ed25519", "p256", "rsa"), trailing, False),
    OddEncoding("trailing string", ("ed25519", "p384"), trailing_string, False),
    OddEncoding("curve name of the other curve", ("p256", "p384"), other_curve, False),
    OddEncoding("compressed point", ("p256", "p384"), compressed, False),
    OddEncoding("modulus read as negative", ("rsa",), unsigned_modulus, False),
    OddEncoding("33-byte Ed25519 key", ("ed25519",), long_ed25519, False),
    OddEncoding("zero-padded numbers", ("rsa",), zero_padded, True),
    OddEncoding("NUL after the type name", ("ed25519", "rsa"), type_nul, True),
    OddEncoding("NUL after the curve name", ("p256",), curve_nul, True),
)

KINDS = ("ed25519", "p256", "p384", "rsa")


def private_key(kind: str) -> ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "rsa":
        return rsa.generate_private_key(65537, 2048)
    return ec.generate_private_key(ec.SECP256R1() if kind == "p256" else ec.SECP384R1())


def public_blob(key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    """The key's blob as ssh-keygen writes it."""
    return base64.b64decode(key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).split()[1])


def _mp(value: int) -> bytes:
    return ns(value.to_bytes((value.bit_length() + 8) // 8, "big"))


def _ca_signature(ca: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, data: bytes) -> bytes:
    if isinstance(ca, ed25519.Ed25519PrivateKey):
        return ns(b"ssh-ed25519") + ns(ca.sign(data))
    if isinstance(ca, rsa.RSAPrivateKey):
        return ns(b"rsa-sha2-512") + ns(ca.sign(data, padding.PKCS1v15(), hashes.SHA512()))
    wide = ca.curve.key_size > 256
    r, s = decode_dss_signature(ca.sign(data, ec.ECDSA(hashes.SHA384() if wide else hashes.SHA256())))
    return ns(b"ecdsa-sha2-nistp384" if wide else b"ecdsa-sha2-nistp256") + ns(_mp(r) + _mp(s))


def user_certificate(
    ca: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    user_key: ed25519.Ed25519PrivateKey,
    principal: str,
    rewrite: Callable[[bytes], bytes] | None = None,
) -> bytes:
    """A user certificate blob for `user_key` signed by `ca`, the CA key in it rewritten by
    `rewrite` (and signed over as rewritten, so only the encoding is at fault)."""
    cert = (
        SSHCertificateBuilder()
        .public_key(user_key.public_key())
        .serial(1)
        .type(SSHCertificateType.USER)
        .key_id(b"oddblobs")
        .valid_principals([principal.encode()])
        .valid_after(0)
        .valid_before((1 << 64) - 1)
        .sign(ca)
    )
    blob = base64.b64decode(cert.public_bytes().split()[1])
    ca_blob = public_blob(ca)
    body = blob[: blob.rindex(ns(ca_blob))]
    signed = body + ns(rewrite(ca_blob) if rewrite else ca_blob)
    return signed + ns(_ca_signature(ca, signed))
