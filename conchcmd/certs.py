"""OpenSSH user certificates: trusted CAs, revocation, and what a valid certificate grants.

Conch has no certificate support; parsing and the CA signature check use the `cryptography`
package (`load_ssh_public_identity`, `verify_cert_signature`).
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import SSHCertificate, SSHCertificateType
from twisted.conch.ssh.common import getNS
from twisted.conch.ssh.keys import BadKeyError, Key
from twisted.logger import Logger

from conchcmd.audit import LOG_NAMESPACE, sanitise
from conchcmd.authorized_keys import CERT_SUFFIX, fingerprint
from conchcmd.filetrust import CheckedFile, FileTrust, UntrustedFile
from conchcmd.hostmatch import PatternError, match_address_list, split_patterns

log = Logger(namespace=LOG_NAMESPACE)

#: Certificate algorithms (as used in userauth) and the signature type of the certified key.
CERT_SIGNATURES: dict[bytes, bytes] = {
    b"ssh-ed25519-cert-v01@openssh.com": b"ssh-ed25519",
    b"ecdsa-sha2-nistp256-cert-v01@openssh.com": b"ecdsa-sha2-nistp256",
    b"ecdsa-sha2-nistp384-cert-v01@openssh.com": b"ecdsa-sha2-nistp384",
    b"ecdsa-sha2-nistp521-cert-v01@openssh.com": b"ecdsa-sha2-nistp521",
    b"rsa-sha2-256-cert-v01@openssh.com": b"rsa-sha2-256",
    b"rsa-sha2-512-cert-v01@openssh.com": b"rsa-sha2-512",
}
#: How many strings the certified public key occupies in the certificate, by blob type.
_KEY_FIELDS = {
    b"ssh-ed25519-cert-v01@openssh.com": 1,
    b"ecdsa-sha2-nistp256-cert-v01@openssh.com": 2,
    b"ecdsa-sha2-nistp384-cert-v01@openssh.com": 2,
    b"ecdsa-sha2-nistp521-cert-v01@openssh.com": 2,
    b"ssh-rsa-cert-v01@openssh.com": 2,
}
KNOWN_CRITICAL_OPTIONS = frozenset({b"force-command", b"source-address"})
WEAK_CA_SIGNATURES = frozenset({b"ssh-rsa", b"ssh-dss"})


class CertificateRefused(Exception):
    """This certificate may not log in, for the stated reason."""


@dataclass(frozen=True)
class CertificateGrant:
    """What a valid certificate allows, and what the audit log says about it."""

    key: Key  # the certified public key, which signs the login
    key_id: str
    serial: int
    ca_fingerprint: str
    principals: tuple[str, ...]
    force_command: str | None
    source_address: tuple[str, ...] | None
    pty: bool


def is_certificate(blob: bytes) -> bool:
    try:
        kind, _ = getNS(blob)
    except (struct.error, IndexError):
        return False
    return kind.endswith(CERT_SUFFIX.encode())


def parse_certificate(blob: bytes) -> SSHCertificate:
    """A user certificate from its wire blob; CertificateRefused if it is not a sound one."""
    try:
        kind, _ = getNS(blob)
        identity = serialization.load_ssh_public_identity(kind + b" " + base64.b64encode(blob))
    except (ValueError, struct.error, IndexError, TypeError) as e:
        raise CertificateRefused(f"malformed certificate ({e})") from None
    if not isinstance(identity, SSHCertificate):
        raise CertificateRefused("not a certificate")
    if identity.type != SSHCertificateType.USER:
        raise CertificateRefused("a host certificate cannot log in")
    return identity


def ca_signature_algorithm(blob: bytes) -> bytes:
    """The algorithm the CA signed with (the last field of the certificate)."""
    kind, rest = getNS(blob)
    _, rest = getNS(rest)  # nonce
    for _ in range(_KEY_FIELDS.get(kind, 1)):
        _, rest = getNS(rest)
    rest = rest[12:]  # serial, type
    for _ in range(2):  # key id, principals
        _, rest = getNS(rest)
    rest = rest[16:]  # valid after, valid before
    for _ in range(4):  # critical options, extensions, reserved, signature key
        _, rest = getNS(rest)
    signature, _ = getNS(rest)
    algorithm, _ = getNS(signature)
    return algorithm


def public_blob(key: object) -> bytes:
    """The SSH wire blob of a `cryptography` public key."""
    text = key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return base64.b64decode(text.split()[1])


class RevokedKeys:
    """conchcmd's `revoked_keys` file: public keys (plain or CA) and `serial:` / `id:` lines.

    Each line is one of: an OpenSSH public key line (revokes that key, certificates of it, and
    every certificate it signed as a CA); `serial: N` or `serial: N-M` (certificate serials);
    `id: KEY_ID` (certificates with that key id). `#` starts a comment. The file is re-read when
    it changes.
    """

    def __init__(self, path: str | None, *, trust: FileTrust | None = None):
        self.path = path
        self.trust = trust or FileTrust()
        self._signature: tuple[int, int] | None = None
        self.blobs: frozenset[bytes] = frozenset()
        self.serials: tuple[tuple[int, int], ...] = ()
        self.ids: frozenset[str] = frozenset()

    def _load(self) -> None:
        if self.path is None:
            return
        # Checked on every attempt: a list anyone else could have edited cannot be relied on,
        # and an empty one would revoke nothing, so it refuses every key (fail closed).
        try:
            with CheckedFile(self.path, self.trust) as f:
                signature = (f.stat.st_mtime_ns, f.stat.st_size)
                if signature == self._signature:
                    return
                data = f.read()
        except UntrustedFile as e:
            self._signature = None  # read it afresh once it is fixed
            log.warn(
                "revoked_keys {path} is not trusted ({reason}): refusing every key until it is fixed",
                path=self.path,
                reason=e.problem.reason,
            )
            raise CertificateRefused(f"revocation list not trusted: {e.problem.reason}") from None
        except OSError:
            log.warn("revoked_keys {path} cannot be read: refusing every key until it can", path=self.path)
            raise CertificateRefused("revocation list unreadable") from None
        if data.startswith(b"SSHKRL\n\0"):
            log.warn("{path} is a binary OpenSSH KRL, which conchcmd does not read: refusing every key", path=self.path)
            raise CertificateRefused("revocation list in an unsupported format (KRL)")
        blobs, serials, ids = set(), [], set()
        for number, raw in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                if line.startswith("serial:"):
                    low, _, high = line[7:].strip().partition("-")
                    serials.append((int(low), int(high or low)))
                elif line.startswith("id:"):
                    ids.add(line[3:].strip())
                else:
                    blobs.add(_revoked_blob(line))
            except (BadKeyError, ValueError, IndexError, struct.error, TypeError):
                # Fail closed, as sshd does: a revocation that cannot be read must not be lost.
                log.warn("{path}:{n}: unreadable line: refusing every key until it is fixed", path=self.path, n=number)
                raise CertificateRefused("revocation list has an unreadable line") from None
        self.blobs, self.serials, self.ids = frozenset(blobs), tuple(serials), frozenset(ids)
        self._signature = signature

    def check_key(self, blob: bytes) -> None:
        self._load()
        if blob in self.blobs:
            raise CertificateRefused(f"key {fingerprint(blob)} is revoked")

    def check_certificate(self, cert: SSHCertificate, key_blob: bytes, ca_blob: bytes) -> None:
        self._load()
        if ca_blob in self.blobs:
            raise CertificateRefused(f"certificate authority {fingerprint(ca_blob)} is revoked")
        self.check_key(key_blob)
        if any(low <= cert.serial <= high for low, high in self.serials):
            raise CertificateRefused(f"certificate serial {cert.serial} is revoked")
        key_id = cert.key_id.decode("utf-8", "replace")
        if key_id in self.ids:
            raise CertificateRefused(f"certificate id {sanitise(key_id)!r} is revoked")


def _revoked_blob(line: str) -> bytes:
    """The key a revoked_keys line names: a public key, or the key of a certificate line."""
    kind = line.split(None, 1)[0]
    if kind.endswith(CERT_SUFFIX):
        identity = serialization.load_ssh_public_identity(line.encode())
        if not isinstance(identity, SSHCertificate):
            raise ValueError("not a certificate")
        return public_blob(identity.public_key())
    return Key.fromString(line.encode()).blob()


class TrustedCAs:
    """`trusted_user_ca_keys`: CA public keys whose certificates log in as any listed principal."""

    def __init__(self, path: str | None, *, trust: FileTrust | None = None):
        self.path = path
        self.trust = trust or FileTrust()
        self._signature: tuple[int, int] | None = None
        self.blobs: frozenset[bytes] = frozenset()

    def contains(self, blob: bytes) -> bool:
        if self.path is None:
            return False
        try:
            with CheckedFile(self.path, self.trust) as f:
                signature = (f.stat.st_mtime_ns, f.stat.st_size)
                if signature != self._signature:
                    self.blobs, self._signature = self._parse(f.read()), signature
        except UntrustedFile as e:
            log.warn("Ignoring {path}: {reason}: no CA is trusted", path=self.path, reason=e.problem.reason)
            self.blobs, self._signature = frozenset(), None
            return False
        except OSError:
            return False
        return blob in self.blobs

    def _parse(self, data: bytes) -> frozenset[bytes]:
        blobs = set()
        for raw in data.decode("utf-8", "replace").splitlines():
            line = raw.strip()
            if line and not line.startswith("#"):
                try:
                    blobs.add(Key.fromString(line.encode()).blob())
                except (BadKeyError, ValueError, IndexError, struct.error):
                    log.warn("{path}: a line that is not a CA public key is ignored", path=self.path)
        return frozenset(blobs)


def validate_certificate(
    blob: bytes,
    *,
    user: str,
    peer_host: str | None,
    now: float,
    trusted: TrustedCAs,
    authorities: list[tuple[bytes, tuple[str, ...] | None]],
    revoked: RevokedKeys,
) -> tuple[CertificateGrant, bytes]:
    """Check a user certificate completely; returns the grant and the CA's blob.

    `authorities` are (CA blob, principals= option) from the user's cert-authority lines; a CA
    from `trusted` instead requires the user name among the certificate's principals.
    """
    cert = parse_certificate(blob)
    ca_blob = public_blob(cert.signature_key())
    if ca_signature_algorithm(blob) in WEAK_CA_SIGNATURES:
        raise CertificateRefused("certificate signed with SHA-1")
    try:
        cert.verify_cert_signature()
    except (InvalidSignature, ValueError, TypeError):
        raise CertificateRefused("certificate signature is not valid") from None
    principals = tuple(p.decode("utf-8", "replace") for p in cert.valid_principals)
    if not principals:
        raise CertificateRefused("certificate has no principals")
    lines = [wanted for line_blob, wanted in authorities if line_blob == ca_blob]
    if lines:  # each cert-authority line of this CA is judged on its own by the caller
        allowed_sets = [set(wanted) if wanted is not None else {user} for wanted in lines]
    elif trusted.contains(ca_blob):
        allowed_sets = [{user}]
    else:
        raise CertificateRefused(f"certificate authority {fingerprint(ca_blob)} is not trusted")
    if not any(allowed.intersection(principals) for allowed in allowed_sets):
        raise CertificateRefused(f"certificate principals {', '.join(map(sanitise, principals))} do not include {user}")
    if now < cert.valid_after:
        raise CertificateRefused("certificate is not yet valid")
    if now >= cert.valid_before:
        raise CertificateRefused("certificate has expired")
    unknown = set(cert.critical_options) - KNOWN_CRITICAL_OPTIONS
    if unknown:
        names = ", ".join(sanitise(n) for n in sorted(unknown))
        raise CertificateRefused(f"certificate has unknown critical option(s): {names}")
    source = cert.critical_options.get(b"source-address")
    source_patterns = None
    if source is not None:
        try:
            source_patterns = tuple(split_patterns(source.decode(), wildcards=False))
        except (PatternError, UnicodeDecodeError):
            raise CertificateRefused("certificate source-address is malformed") from None
        if peer_host is None or not match_address_list(peer_host, list(source_patterns)):
            raise CertificateRefused(f"certificate source-address does not allow {peer_host}")
    key_blob = public_blob(cert.public_key())
    revoked.check_certificate(cert, key_blob, ca_blob)
    force = cert.critical_options.get(b"force-command")
    grant = CertificateGrant(
        key=Key(cert.public_key()),
        key_id=cert.key_id.decode("utf-8", "replace"),
        serial=cert.serial,
        ca_fingerprint=fingerprint(ca_blob),
        principals=principals,
        force_command=force.decode("utf-8", "surrogateescape") if force is not None else None,
        source_address=source_patterns,
        pty=b"permit-pty" in cert.extensions,
    )
    return grant, ca_blob
