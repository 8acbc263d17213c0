"""Client keys made in memory with `cryptography` (fast; nothing written to the repository)."""

from __future__ import annotations

import functools

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.conch.ssh.keys import Key


@functools.cache
def ed25519_key(n: int = 0) -> Key:
    return Key(ed25519.Ed25519PrivateKey.generate())


@functools.cache
def ecdsa_key(n: int = 0) -> Key:
    return Key(ec.generate_private_key(ec.SECP256R1()))


@functools.cache
def rsa_key(n: int = 0) -> Key:
    return Key(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def authorized_line(key: Key, options: str = "") -> str:
    line = key.public().toString("openssh").decode()
    return f"{options} {line}".strip() + "\n"
