"""Public-key authentication: the cred checker and the identity it yields.

Corrects three stock-Conch behaviours: `SSHPublicKeyChecker` answers PK_OK for any parseable
key (we look the key up first), accepts SHA-1 `ssh-rsa` signatures (refused here), and skips
authorized_keys lines with options (see authorized_keys.py).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from twisted.conch.error import ValidPublicKey
from twisted.conch.ssh.common import getNS
from twisted.conch.ssh.keys import BadKeyError, Key
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ISSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from conchcmd.audit import LOG_NAMESPACE, sanitise
from conchcmd.authorized_keys import AuthorizedKeysFiles, fingerprint

log = Logger(namespace=LOG_NAMESPACE)

#: Signature algorithms accepted per key type. No SHA-1 (`ssh-rsa`), no DSA.
SIGNATURE_ALGORITHMS: dict[bytes, tuple[bytes, ...]] = {
    b"ssh-ed25519": (b"ssh-ed25519",),
    b"ecdsa-sha2-nistp256": (b"ecdsa-sha2-nistp256",),
    b"ecdsa-sha2-nistp384": (b"ecdsa-sha2-nistp384",),
    b"ecdsa-sha2-nistp521": (b"ecdsa-sha2-nistp521",),
    b"ssh-rsa": (b"rsa-sha2-512", b"rsa-sha2-256"),
}
#: What `server-sig-algs` advertises: the user-key algorithms above, best first.
USER_SIGNATURE_ALGORITHMS: tuple[bytes, ...] = (
    b"ssh-ed25519",
    b"ecdsa-sha2-nistp256",
    b"ecdsa-sha2-nistp384",
    b"ecdsa-sha2-nistp521",
    b"rsa-sha2-512",
    b"rsa-sha2-256",
)
MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class Identity:
    """Who logged in and with which key: the avatar ID the realm receives."""

    user: str
    method: str
    key_type: str
    fingerprint: str


class KeyRefused(UnauthorizedLogin):
    """Authentication failed for a stated reason (kept for logs and the audit record)."""


@implementer(ICredentialsChecker)
class PublicKeyChecker:
    """Checks an SSH public-key login against the user's authorized_keys file."""

    credentialInterfaces = (ISSHPrivateKey,)

    def __init__(self, keys: AuthorizedKeysFiles):
        self.keys = keys

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:
        return defer.maybeDeferred(self._check, credentials)

    def _check(self, credentials: Any) -> Identity:
        try:
            user = credentials.username.decode("utf-8")
        except UnicodeDecodeError:
            raise KeyRefused("user name is not UTF-8") from None
        try:
            key = Key.fromString(credentials.blob)
        except (BadKeyError, ValueError, struct.error, IndexError):
            raise KeyRefused("malformed public key") from None
        key_type = key.sshType()
        allowed = SIGNATURE_ALGORITHMS.get(key_type, ())
        if credentials.algName not in allowed:
            raise KeyRefused(f"signature algorithm {sanitise(credentials.algName)} not accepted")
        if key.type() == "RSA" and key.size() < MIN_RSA_BITS:
            raise KeyRefused(f"RSA key of {key.size()} bits is too small")
        entry = self.keys.find(user, credentials.blob)
        if entry is None:
            raise KeyRefused("key not in authorized_keys")
        if entry.unsupported_options:
            names = ", ".join(entry.unsupported_options)
            log.warn(
                "Refusing key {fp} for {user}: {source} has option(s) not supported: {names}",
                fp=fingerprint(credentials.blob),
                user=user,
                source=entry.source,
                names=names,
            )
            raise KeyRefused(f"authorized_keys option(s) not supported: {names}")
        if credentials.signature is None:
            raise ValidPublicKey()  # the key may be used: Conch answers PK_OK
        try:
            sig_type, _ = getNS(credentials.signature)
            if sig_type != credentials.algName:
                raise KeyRefused("signature type does not match the algorithm")
            verified = key.verify(credentials.signature, credentials.sigData)
        except (struct.error, ValueError, IndexError):
            raise KeyRefused("malformed signature") from None
        if not verified:
            raise KeyRefused("bad signature")
        return Identity(
            user=user,
            method="publickey",
            key_type=key_type.decode("ascii"),
            fingerprint=fingerprint(credentials.blob),
        )
