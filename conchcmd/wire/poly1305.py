"""Poly1305 tags for chacha20-poly1305@openssh.com, small messages through libsodium.

cryptography's `Poly1305.generate_tag`/`verify_tag` build an OpenSSL EVP_PKEY for every tag
(~2 µs, ~23 k instructions, about 20 tags per fresh exec: 0.35 M of its 5.8 M instructions);
libsodium's `crypto_onetimeauth_poly1305` needs ~0.4 µs for a packet of a few hundred bytes. It
is called in the libsodium PyNaCl loads (its `_sodium` extension exports it; PyNaCl's bindings do
not wrap it). OpenSSL's vector code is faster on long messages (32 KiB: 4.4 against 7.2 µs), so
messages over SODIUM_MAX bytes keep cryptography's. Both give RFC 8439's tag (tests/unit/
test_packets.py checks both against each other and RFC 8439's vectors); both verify in constant
time.
"""

from __future__ import annotations

import ctypes
from typing import Any

import nacl.bindings  # noqa: F401  (imported first: it runs sodium_init)
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.poly1305 import Poly1305
from nacl import _sodium

KEY = 32
TAG = 16


def _sodium_functions() -> tuple[Any, Any] | None:
    """libsodium's tag and verify functions in PyNaCl's extension (a PyNaCl built against a system
    libsodium finds them through it too), or None: every tag is then cryptography's.

    PyDLL: the calls keep the GIL (a microsecond each). cffi and ctypes.CDLL release it around
    every call, and a worker thread waiting for it (a comphash job's end) then took it from the
    reactor in the middle of a reply: 7 -> 12 futex calls per fresh exec."""
    try:
        lib = ctypes.PyDLL(_sodium.__file__)
        tag, verify = lib.crypto_onetimeauth_poly1305, lib.crypto_onetimeauth_poly1305_verify
    except (OSError, AttributeError):
        return None
    args = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulonglong, ctypes.c_char_p)
    tag.argtypes, tag.restype = args, ctypes.c_int  # (out[16], in, inlen, key[32])
    verify.argtypes, verify.restype = args, ctypes.c_int  # (tag[16], in, inlen, key[32]): 0 if right
    return tag, verify


_SODIUM = _sodium_functions()
#: The longest message tagged by libsodium (where the two cost the same on AVX2/AVX-512 x86-64);
#: -1 (none) if PyNaCl's library does not export its Poly1305.
SODIUM_MAX = 12 * 1024 if _SODIUM is not None else -1
_sodium_tag: Any
_sodium_verify: Any
_sodium_tag, _sodium_verify = _SODIUM or (None, None)
_Tag = ctypes.c_char * TAG  # an output buffer (create_string_buffer's type checks cost a call more)
_crypto_tag = Poly1305.generate_tag
_crypto_verify = Poly1305.verify_tag


def tag(key: bytes, message: bytes) -> bytes:
    """The 16-byte Poly1305 tag of `message` under the one-time 32-byte `key`. `message` must be
    `bytes` (ctypes refuses a bytearray or memoryview: every caller in wire/packets.py slices
    bytes)."""
    if len(key) != KEY:
        raise ValueError("a Poly1305 key is 32 bytes")
    if len(message) > SODIUM_MAX:
        return _crypto_tag(key, message)
    out = _Tag()
    _sodium_tag(out, message, len(message), key)
    return out.raw


def verify(key: bytes, message: bytes, expected: bytes) -> bool:
    """Whether `expected` is `message`'s tag under `key` (compared in constant time); `bytes`
    only, as for `tag`."""
    if len(key) != KEY:
        raise ValueError("a Poly1305 key is 32 bytes")
    if len(expected) != TAG:
        return False
    if len(message) > SODIUM_MAX:
        try:
            _crypto_verify(key, message, expected)
        except InvalidSignature:
            return False
        return True
    return _sodium_verify(expected, message, len(message), key) == 0
