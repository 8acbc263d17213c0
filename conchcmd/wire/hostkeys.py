"""Host keys: OpenSSH-format files in the keys directory, created on first start, never exposed."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from twisted.conch.ssh.common import NS
from twisted.conch.ssh.keys import Key

from conchcmd.core.filetrust import FileTrust, Untrusted, UntrustedFile, directory_problem, read_trusted
from conchcmd.keys.keyparse import EncryptedKeyFile, KeyParseError, PublicKey, private_key_from_file
from conchcmd.keys.sodium import Ed25519Signer

#: File names we look for, in preference order; ed25519 is the one we create.
HOST_KEY_FILES = ("ssh_host_ed25519_key", "ssh_host_ecdsa_key", "ssh_host_rsa_key")


class HostKeyError(Exception):
    """A host key is missing, unreadable, malformed or not private enough."""


class EncryptedHostKey(HostKeyError):
    """A host key file has a passphrase: serve cannot use it (nobody is there to type it)."""

    def __init__(self, path: Path, fix: str):
        self.path = path
        self.fix = fix
        super().__init__(f"host key {path} is encrypted with a passphrase; conchcmd needs an unencrypted key: {fix}")


class HostKey(PublicKey):
    """Conch's Key for a loaded host key, with what Conch asks of it in every key exchange (its
    type, SSH type name and public blob) worked out once, as PublicKey does: a loaded host key
    does not change."""

    _signer: Ed25519Signer | None = None

    def sign(self, data: bytes, signatureType: bytes | None = None) -> bytes:
        # Conch signs with cryptography's OpenSSL build: 0.46 M instructions an Ed25519 key
        # exchange, libsodium 0.26 M for the same bytes (Ed25519 is deterministic; keys/sodium.py).
        if signatureType in (None, b"ssh-ed25519") and self.type() == "Ed25519" and not self.isPublic():
            if self._signer is None:
                self._signer = Ed25519Signer(self.data()["k"])  # the 32-byte seed
            return NS(b"ssh-ed25519") + NS(self._signer.sign(data))
        return bytes(super().sign(data, signatureType))


@dataclass(frozen=True)
class HostKeys:
    """Loaded host keys, keyed by SSH key type (b"ssh-ed25519", ...)."""

    private: dict[bytes, Key]
    public: dict[bytes, Key]
    files: tuple[Path, ...]


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # the umask may have narrowed it; make it exact


def generate_host_key(path: Path, kind: str = "ed25519") -> None:
    """Create a new private key file (0600) and its .pub beside it."""
    private_key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
    if kind == "ed25519":
        private_key = ed25519.Ed25519PrivateKey.generate()
    elif kind == "rsa":
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    else:
        raise ValueError(f"unsupported host key type {kind}")
    private_bytes = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public_bytes = private_key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_new(path, private_bytes, 0o600)
    pub = path.with_name(path.name + ".pub")
    if pub.exists():
        pub.unlink()
    _write_new(pub, public_bytes + b" conchcmd-host\n", 0o644)


def directory_untrusted(directory: Path, trust: FileTrust) -> Untrusted | None:
    """Why anyone but root or the server's user could write into the host key directory, if so.

    A directory not made yet is judged by its nearest existing ancestor, where it would be made.
    """
    existing = directory
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    return directory_problem(str(existing), trust)


def check_directory(directory: Path, trust: FileTrust) -> None:
    problem = directory_untrusted(directory, trust)
    if problem is not None:
        raise HostKeyError(f"host key directory {directory}: {problem.reason}; fix: {problem.fix}")


def ensure_host_keys(directory: Path, *, rsa_too: bool = False, trust: FileTrust | None = None) -> list[Path]:
    """Create the ed25519 host key (and RSA if asked) when missing; return what was created.

    Nothing is created in a directory that fails `strict_modes` (HostKeyError).
    """
    check_directory(directory, trust or FileTrust())
    created = []
    wanted = [("ssh_host_ed25519_key", "ed25519")]
    if rsa_too:
        wanted.append(("ssh_host_rsa_key", "rsa"))
    for name, kind in wanted:
        path = directory / name
        if not path.exists():
            generate_host_key(path, kind)
            created.append(path)
    return created


def check_private_mode(path: Path) -> None:
    """Refuse a private key that anyone but its owner can read or write, like OpenSSH does."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise HostKeyError(
            f"host key {path} is accessible by others (mode {mode:04o}); it must be private: chmod 600 {path}"
        )


def load_host_keys(directory: Path, *, trust: FileTrust | None = None) -> HostKeys:
    """Load every host key present in directory, checking permissions first.

    The 0600 rule always holds (as in sshd); `trust` adds ownership and the directories above.
    """
    trust = trust or FileTrust()
    check_directory(directory, trust)
    private: dict[bytes, Key] = {}
    public: dict[bytes, Key] = {}
    files = []
    for name in HOST_KEY_FILES:
        path = directory / name
        if not path.exists():
            continue
        check_private_mode(path)
        try:
            key = private_key_from_file(read_trusted(str(path), trust), str(path), kind=HostKey)
        except UntrustedFile as e:
            raise HostKeyError(f"host key {path}: {e.problem.reason}; fix: {e.problem.fix}") from None
        except EncryptedKeyFile as e:
            raise EncryptedHostKey(path, e.fix) from None
        except (KeyParseError, OSError) as e:
            raise HostKeyError(f"cannot load host key {path}: {e}") from None
        if not key.isPublic():
            private[key.sshType()] = key
            public[key.sshType()] = HostKey.fromString(key.public().blob(), type="blob")
            files.append(path)
    if not private:
        raise HostKeyError(f"no host key in {directory}; run `conchcmd keygen`")
    return HostKeys(private=private, public=public, files=tuple(files))
