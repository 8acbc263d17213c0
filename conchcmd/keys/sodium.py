"""Ed25519 and X25519 through libsodium (PyNaCl), for the three curve operations of every login.

cryptography's wheels build OpenSSL's portable Ed25519 code (32-bit limbs): verifying a client's
signature cost 1.46 M instructions, a quarter of a fresh exec's server CPU; libsodium's 64-bit
code needs 0.68 M. Signing with the host key 0.46 -> 0.26 M, an X25519 key pair and secret
1.00 -> 0.60 M (tests/bench/profile_exec.py --instructions; tests/unit/test_sodium.py checks every
function against cryptography's). Verification is at least as strict as OpenSSL's: libsodium
also refuses public keys and R values of small order (anyone can sign for such a key) and
non-canonical encodings, which no honest signer produces.
"""

from __future__ import annotations

import os

from nacl.bindings import (
    crypto_scalarmult,
    crypto_scalarmult_base,
    crypto_sign,
    crypto_sign_open,
    crypto_sign_seed_keypair,
)
from nacl.exceptions import BadSignatureError
from nacl.exceptions import RuntimeError as SodiumRuntimeError

ED25519_SIGNATURE = 64
ED25519_PUBLIC = 32
X25519_SIZE = 32

_P = 2**255 - 19
#: libsodium's ge25519_has_small_order blocklist (ed25519_ref10.c), as the y coordinates it
#: compares (the sign bit of x is ignored): the eight points of order 1, 2, 4 and 8 have y = 0,
#: 1, -1 and the two below, and p and p + 1 are non-canonical encodings of 0 and 1.
_SMALL_ORDER_Y = frozenset(
    {
        0,  # order 4
        1,  # the identity (order 1)
        2707385501144840649318225287225658788936804267575313519463743609750303402022,  # order 8
        55188659117513257062467267217118295137698188065244968500265048394206261417927,  # order 8
        _P - 1,  # order 2
        _P,  # 0, not canonical
        _P + 1,  # 1, not canonical
    }
)
SMALL_ORDER = "Ed25519 key of small order: anyone can sign for it"
NOT_CANONICAL = "Ed25519 key not canonically encoded (y >= p): no signature for it is accepted"


def ed25519_verify(public: bytes, signature: bytes, message: bytes) -> bool:
    """Whether `signature` (64 bytes) is `public`'s Ed25519 signature of `message` (RFC 8032)."""
    if len(signature) != ED25519_SIGNATURE or len(public) != ED25519_PUBLIC:
        return False
    try:
        crypto_sign_open(signature + message, public)
    except BadSignatureError:
        return False
    return True


def ed25519_public_refusal(public: bytes) -> str | None:
    """Why `ed25519_verify` refuses every signature for this 32-byte public key, as libsodium's
    verify decides before any curve arithmetic: a key of small order (ge25519_has_small_order),
    for which OpenSSL and sshd accept signatures anyone can make, or an encoding with y >= p
    (ge25519_is_canonical); None otherwise. Data, not crypto: a key line can be refused when it
    is read. (Bytes that are no point at all are refused by verify later, and not here.)"""
    y = int.from_bytes(public, "little") & ((1 << 255) - 1)
    if y in _SMALL_ORDER_Y:
        return SMALL_ORDER
    if y >= _P:
        return NOT_CANONICAL
    return None


class Ed25519Signer:
    """Signs with one Ed25519 private key (a host key): the 64-byte secret libsodium signs with
    (seed, then public key) is made once, the public key from the seed: libsodium hashes the
    public half it is given into each signature, and two signatures of one message under two
    public keys give the private scalar away."""

    __slots__ = ("_secret", "public")

    def __init__(self, seed: bytes):
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        self.public, self._secret = crypto_sign_seed_keypair(seed)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte signature (deterministic: the same bytes as OpenSSL's)."""
        return crypto_sign(message, self._secret)[:ED25519_SIGNATURE]


def x25519_key_pair() -> tuple[bytes, bytes]:
    """A new ephemeral (private, public) X25519 pair (RFC 7748: the scalar is clamped when used)."""
    private = os.urandom(X25519_SIZE)
    return private, x25519_public(private)


def x25519_public(private: bytes) -> bytes:
    """The public value of a 32-byte X25519 private key (ValueError for another size)."""
    _check_private(private)
    return crypto_scalarmult_base(private)


def _check_private(private: bytes) -> None:
    # PyNaCl (1.6) passes the buffer to libsodium unchecked, which reads 32 bytes from it.
    if len(private) != X25519_SIZE:
        raise ValueError("An X25519 private key is 32 bytes long")


def x25519_shared(private: bytes, peer_public: bytes) -> bytes:
    """The X25519 shared secret with a peer's public value; ValueError, with cryptography's
    messages, for a value (or private key) of the wrong size or one of small order (an all-zero
    secret)."""
    _check_private(private)
    if len(peer_public) != X25519_SIZE:
        raise ValueError("An X25519 public key is 32 bytes long")
    try:
        return crypto_scalarmult(private, peer_public)
    except SodiumRuntimeError:
        raise ValueError("Error computing shared key.") from None
