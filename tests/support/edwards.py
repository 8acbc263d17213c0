"""Edwards25519 arithmetic in pure Python (RFC 8032, section 5.1), for building the Ed25519
public keys and signatures no honest signer makes: points of small order, non-canonical
encodings, s outside [0, L), and the signatures anyone can make for a key of small order.
Slow and variable-time: test data only."""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass

from twisted.conch.ssh.common import NS

from support.skauth import UP, signed_message

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)

ED25519 = b"ssh-ed25519"
SK_ED25519 = b"sk-ssh-ed25519@openssh.com"
APPLICATION = b"ssh:"

Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T), x = X/Z, y = Y/Z, xy = T/Z
IDENTITY: Point = (0, 1, 1, 0)


def add(a: Point, b: Point) -> Point:
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    aa = (y1 - x1) * (y2 - x2) % P
    bb = (y1 + x1) * (y2 + x2) % P
    cc = 2 * t1 * t2 * D % P
    dd = 2 * z1 * z2 % P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def multiply(k: int, point: Point) -> Point:
    result = IDENTITY
    while k > 0:
        if k & 1:
            result = add(result, point)
        point = add(point, point)
        k >>= 1
    return result


def negate(point: Point) -> Point:
    x, y, z, t = point
    return (-x % P, y, z, -t % P)


def equal(a: Point, b: Point) -> bool:
    return (a[0] * b[2] - b[0] * a[2]) % P == 0 and (a[1] * b[2] - b[1] * a[2]) % P == 0


def recover_x(y: int, sign: int) -> int | None:
    """The x with this parity for y (y < p), None if y is not on the curve."""
    xx = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    if xx == 0:
        return None if sign else 0
    x = pow(xx, (P + 3) // 8, P)
    if (x * x - xx) % P:
        x = x * SQRT_M1 % P
    if (x * x - xx) % P:
        return None
    return P - x if (x & 1) != sign else x


def decode(encoded: bytes) -> Point | None:
    """A canonical encoding's point (RFC 8032 5.1.3: y < p; no "negative zero")."""
    value = int.from_bytes(encoded, "little")
    y, sign = value & ((1 << 255) - 1), value >> 255
    if y >= P:
        return None
    x = recover_x(y, sign)
    return None if x is None else (x, y, 1, x * y % P)


def encode(point: Point) -> bytes:
    x, y, z, _ = point
    zi = pow(z, P - 2, P)
    x, y = x * zi % P, y * zi % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


BASE: Point = decode((4 * pow(5, P - 2, P) % P).to_bytes(32, "little"))  # type: ignore[assignment]


def order(point: Point) -> int:
    """The order of a point of the torsion subgroup (1, 2, 4 or 8)."""
    for n in (1, 2, 4, 8):
        if equal(multiply(n, point), IDENTITY):
            return n
    raise ValueError("not a point of small order")


def torsion_points() -> list[Point]:
    """The eight points of order dividing 8, found as [L]Q for random points Q."""
    while True:
        q = decode(os.urandom(32))
        if q is None:
            continue
        t = multiply(L, q)
        if order(t) == 8:
            return [multiply(k, t) for k in range(8)]


def challenge(r: bytes, a: bytes, message: bytes) -> int:
    return int.from_bytes(hashlib.sha512(r + a + message).digest(), "little") % L


def forge(a: bytes, point: Point, message: bytes) -> bytes:
    """A signature of `message` that verifies (cofactorless: [s]B = R + [h]A) for the public key
    encoded as `a`, whose point is `point` and of small order, without any private key: R = [r]B
    for random r until [h]A is the identity (h a multiple of A's order: one try in eight at worst)."""
    n = order(point)
    while True:
        r = int.from_bytes(os.urandom(64), "little") % L
        big_r = encode(multiply(r, BASE))
        if challenge(big_r, a, message) % n == 0:
            return big_r + r.to_bytes(32, "little")


def sign(secret: int, message: bytes, nonce: int | None = None) -> tuple[bytes, bytes]:
    """(public key, signature) for scalar `secret` (no clamping, no hashing of a seed: any scalar,
    including ones whose key is not canonical), R = [nonce]B."""
    a = encode(multiply(secret, BASE))
    nonce = int.from_bytes(os.urandom(64), "little") % L if nonce is None else nonce
    big_r = encode(multiply(nonce, BASE))
    s = (nonce + challenge(big_r, a, message) * secret) % L
    return a, big_r + s.to_bytes(32, "little")


@dataclass(frozen=True)
class SmallOrderKey:
    """A client key of small order (plain or sk-ssh-ed25519, or the certificate of one), with
    what support.sshclient asks of a key: its signatures are forged (`forge`)."""

    raw: bytes
    point: Point
    key_type: bytes = ED25519
    certificate: bytes | None = None

    def key_blob(self) -> bytes:
        return NS(self.key_type) + NS(self.raw) + (NS(APPLICATION) if self.key_type == SK_ED25519 else b"")

    def sshType(self) -> bytes:
        return self.key_type

    def blob(self) -> bytes:
        return self.certificate if self.certificate is not None else self.key_blob()

    def public(self) -> SmallOrderKey:
        return self

    def sign(self, data: bytes, signatureType: bytes | None = None) -> bytes:
        if self.key_type == SK_ED25519:
            tail = struct.pack(">BL", UP, 1)
            return NS(SK_ED25519) + NS(forge(self.raw, self.point, signed_message(APPLICATION, UP, 1, data))) + tail
        return NS(ED25519) + NS(forge(self.raw, self.point, data))
