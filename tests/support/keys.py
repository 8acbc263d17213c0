"""Client keys made in memory with `cryptography` (fast; nothing written to the repository)."""

from __future__ import annotations

import functools
from pathlib import Path

from cryptography.hazmat.primitives import serialization
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


def write_encrypted_key(path: Path, *, pem: bool = False) -> Path:
    """A private key protected by the passphrase "secret", 0600 in a 0700 directory, as
    `ssh-keygen -N secret` writes it (OpenSSH format) or, with `pem`, a traditional PEM RSA key."""
    private: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
    if pem:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        encoding = serialization.PrivateFormat.TraditionalOpenSSL
    else:
        private = ed25519.Ed25519PrivateKey.generate()
        encoding = serialization.PrivateFormat.OpenSSH
    data = private.private_bytes(serialization.Encoding.PEM, encoding, serialization.BestAvailableEncryption(b"secret"))
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o600)
    return path
