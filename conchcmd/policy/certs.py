"""OpenSSH user certificates: trusted CAs, revocation, and what a valid certificate grants.

Conch has no certificate support; parsing and the CA signature check use the `cryptography`
package (`load_ssh_public_identity`, `verify_cert_signature`), and conchcmd.keys.sk for certificates
of security keys, which `cryptography` cannot read. An Ed25519 CA signature is checked with
libsodium instead (keys/sodium.py), like every other Ed25519 signature.
"""

from __future__ import annotations

import base64
import struct
from collections import OrderedDict
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import SSHCertificate, SSHCertificateType
from twisted.conch.ssh.common import getNS
from twisted.logger import Logger

from conchcmd.core.audit import sanitise
from conchcmd.core.filetrust import CheckedFile, FileTrust, ServerSideFailure, UntrustedFile, server_side
from conchcmd.core.hostmatch import addr_match_cidr_list, normalise_peer
from conchcmd.core.logtargets import LOG_NAMESPACE
from conchcmd.keys.keyfile import LINE_KEY_TYPES, KeyField, file_lines, read_key, skip_space
from conchcmd.keys.keyparse import (
    KeyParseError,
    PublicKey,
    ed25519_key_refusal,
    public_key_from_blob,
    public_key_from_line,
)
from conchcmd.keys.sk import SK_CERT_TYPES, SkCertificate, SkPublicKey, parse_sk_certificate, verify_ca_signature
from conchcmd.keys.sodium import ed25519_public_refusal
from conchcmd.policy.authorized_keys import CERT_SUFFIX, RefusedLine, fingerprint

log = Logger(namespace=LOG_NAMESPACE)

#: Certificate algorithms (as used in userauth) and the signature type of the certified key.
CERT_SIGNATURES: dict[bytes, bytes] = {
    b"ssh-ed25519-cert-v01@openssh.com": b"ssh-ed25519",
    b"ecdsa-sha2-nistp256-cert-v01@openssh.com": b"ecdsa-sha2-nistp256",
    b"ecdsa-sha2-nistp384-cert-v01@openssh.com": b"ecdsa-sha2-nistp384",
    b"ecdsa-sha2-nistp521-cert-v01@openssh.com": b"ecdsa-sha2-nistp521",
    b"rsa-sha2-256-cert-v01@openssh.com": b"rsa-sha2-256",
    b"rsa-sha2-512-cert-v01@openssh.com": b"rsa-sha2-512",
    **SK_CERT_TYPES,
}
#: How many strings the certified public key occupies in the certificate, by blob type.
_KEY_FIELDS = {
    b"ssh-ed25519-cert-v01@openssh.com": 1,
    b"ecdsa-sha2-nistp256-cert-v01@openssh.com": 2,
    b"ecdsa-sha2-nistp384-cert-v01@openssh.com": 2,
    b"ecdsa-sha2-nistp521-cert-v01@openssh.com": 2,
    b"ssh-rsa-cert-v01@openssh.com": 2,
    b"sk-ssh-ed25519-cert-v01@openssh.com": 2,  # the key, the application
    b"sk-ecdsa-sha2-nistp256-cert-v01@openssh.com": 3,  # curve, point, application
}
#: Extensions sshd knows; each must carry no data (sshd: "corrupt (extra data)").
KNOWN_EXTENSIONS = frozenset(
    {
        b"no-touch-required",
        b"permit-X11-forwarding",
        b"permit-agent-forwarding",
        b"permit-port-forwarding",
        b"permit-pty",
        b"permit-user-rc",
    }
)
MAX_PRINCIPALS = 256  # SSHKEY_CERT_MAX_PRINCIPALS
WEAK_CA_SIGNATURES = frozenset({b"ssh-rsa", b"ssh-dss"})


class CertificateRefused(Exception):
    """This certificate may not log in, for the stated reason."""


class RevokedKeysUnavailable(CertificateRefused, ServerSideFailure):
    """revoked_keys could not be read for a reason of the server's own: every key is refused
    (fail closed), as a server-side failure for login, as a refusal for `users` and `doctor`."""


@dataclass(frozen=True)
class CertificateGrant:
    """What a valid certificate allows, and what the audit log says about it."""

    key: PublicKey  # the certified public key, which signs the login (libsodium for Ed25519)
    key_id: str
    serial: int
    ca_fingerprint: str
    principals: tuple[str, ...]
    force_command: str | None
    source_address: tuple[str, ...] | None
    pty: bool
    no_touch_required: bool = False  # the no-touch-required extension (security keys)
    verify_required: bool = False  # the verify-required critical option (security keys)
    sk_key: SkPublicKey | None = None  # the certified key, when it is a security key


def is_certificate(blob: bytes) -> bool:
    try:
        kind, _ = getNS(blob)
    except (struct.error, IndexError):
        return False
    return kind.endswith(CERT_SUFFIX.encode())


def is_cstring(value: bytes) -> bool:
    """sshbuf_get_cstring() accepts a string with no NUL but, possibly, a last one."""
    return b"\0" not in value[:-1]


#: A certificate as read: `cryptography`'s, or conchcmd.keys.sk's for security keys (same attributes).
AnyCertificate = SSHCertificate | SkCertificate


#: Client certificate blobs a CertificateReadings keeps by default, and the longest it keeps.
READ_CERTIFICATES = 64
MAX_KEPT_CERTIFICATE = 8192


class CertificateReadings:
    """The readings (`load_certificate`) of the latest client certificate blobs, the least recently
    read dropped first, one per server like keyparse.ParsedKeys. A login read its certificate for
    its authorization, its audit record and its auth-log line: three CA signature checks
    (tests/inmemory/test_certificate_reads.py), one now, none at the next login with it. The
    reading depends on the bytes alone (validity, revocation and principals are checked at each
    use), so the same blob gets the same answer, refusals included. Blobs over
    MAX_KEPT_CERTIFICATE bytes are read each time: at most size x MAX_KEPT_CERTIFICATE bytes of
    client data are kept."""

    def __init__(self, size: int = READ_CERTIFICATES):
        self.size = size
        self._kept: OrderedDict[bytes, AnyCertificate | str] = OrderedDict()  # a refusal: its reason

    def read(self, blob: bytes) -> AnyCertificate:
        """`load_certificate(blob)`, read the first time only."""
        if len(blob) > MAX_KEPT_CERTIFICATE:
            return load_certificate(blob)
        outcome = self._kept.get(blob)
        if outcome is None:
            try:
                outcome = load_certificate(blob)
            except CertificateRefused as e:
                outcome = str(e)
            self._kept[blob] = outcome
            if len(self._kept) > self.size:
                self._kept.popitem(last=False)
        else:
            self._kept.move_to_end(blob)
        if isinstance(outcome, str):
            raise CertificateRefused(outcome)  # a new exception each time: a kept one would gather tracebacks
        return outcome


def load_certificate(blob: bytes) -> AnyCertificate:
    """A certificate (user or host) from its wire blob, as sshd's cert_parse accepts it: well
    formed, the key id and principals C strings, at most 256 principals, the CA signature valid.
    CertificateRefused otherwise."""
    # cryptography raises UnsupportedAlgorithm for a type it does not know (ssh-dss certificates
    # included) and NotImplementedError for a compressed EC point, besides ValueError.
    identity: object
    try:
        kind, _ = getNS(blob)
        if kind in SK_CERT_TYPES:
            identity = parse_sk_certificate(blob)
        else:
            identity = serialization.load_ssh_public_identity(kind + b" " + base64.b64encode(blob))
    except (ValueError, struct.error, IndexError, TypeError, UnsupportedAlgorithm, NotImplementedError) as e:
        raise CertificateRefused(f"malformed certificate ({e})") from None
    if not isinstance(identity, (SSHCertificate, SkCertificate)):
        raise CertificateRefused("not a certificate")
    if not is_cstring(identity.key_id) or not all(is_cstring(p) for p in identity.valid_principals):
        raise CertificateRefused("malformed certificate (NUL in the key id or a principal)")
    if len(identity.valid_principals) > MAX_PRINCIPALS:
        raise CertificateRefused(f"malformed certificate (more than {MAX_PRINCIPALS} principals)")
    verify_ca_signature_of(identity, blob)
    return identity


def verify_ca_signature_of(cert: AnyCertificate, blob: bytes) -> None:
    """The CA's signature over the certificate `blob`, or CertificateRefused. cryptography checks
    it with OpenSSL, except an Ed25519 one: OpenSSL accepts the signatures anyone can make for a
    CA key of small order (anyone could then mint certificates), libsodium refuses them."""
    try:  # also reads the CA key, which cryptography parses only now (ValueError if it is broken)
        ca_key = cert.signature_key()
        weak = (
            ed25519_public_refusal(ca_key.public_bytes_raw()) if isinstance(ca_key, ed25519.Ed25519PublicKey) else None
        )
        if weak is not None:  # libsodium refuses its signature: say why, not "not valid"
            raise CertificateRefused(f"certificate authority key: {weak}")
        if isinstance(cert, SSHCertificate) and isinstance(ca_key, ed25519.Ed25519PublicKey):
            signed_length, signature = _signature_part(blob)
            verify_ca_signature(public_blob(ca_key), ca_key, signature, blob[:signed_length])
        else:
            cert.verify_cert_signature()
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm, NotImplementedError, struct.error):
        raise CertificateRefused("certificate signature is not valid") from None


def parse_certificate(blob: bytes, readings: CertificateReadings | None = None) -> AnyCertificate:
    """A user certificate from its wire blob (through the server's `readings`, if given);
    CertificateRefused if it is not a sound one."""
    identity = readings.read(blob) if readings is not None else load_certificate(blob)
    if identity.type != SSHCertificateType.USER:
        raise CertificateRefused("a host certificate cannot log in")
    return identity


def _sections(blob: bytes) -> tuple[bytes, bytes, bytes]:
    """The raw critical options, extensions and CA signature of a certificate blob."""
    critical, extensions, _, signature = _fields(blob)
    return critical, extensions, signature


def _signature_part(blob: bytes) -> tuple[int, bytes]:
    """How many bytes of a certificate blob the CA signed, and its signature (the last field)."""
    _, _, signed_length, signature = _fields(blob)
    return signed_length, signature


def _fields(blob: bytes) -> tuple[bytes, bytes, int, bytes]:
    """A certificate blob's critical options, extensions, signed length and CA signature."""
    kind, rest = getNS(blob)
    _, rest = getNS(rest)  # nonce
    for _ in range(_KEY_FIELDS.get(kind, 1)):
        _, rest = getNS(rest)
    rest = rest[12:]  # serial, type
    for _ in range(2):  # key id, principals
        _, rest = getNS(rest)
    rest = rest[16:]  # valid after, valid before
    critical, rest = getNS(rest)
    extensions, rest = getNS(rest)
    for _ in range(2):  # reserved, signature key
        _, rest = getNS(rest)
    signature, _ = getNS(rest)
    return critical, extensions, len(blob) - len(rest), signature


def ca_signature_algorithm(blob: bytes) -> bytes:
    """The algorithm the CA signed with (the last field of the certificate)."""
    algorithm, _ = getNS(_sections(blob)[2])
    return algorithm


def _cstring(data: bytes, what: str) -> tuple[str, bytes]:
    """sshbuf_get_cstring(): a string without NUL bytes, and what follows it."""
    try:
        value, rest = getNS(data)
    except (struct.error, IndexError, ValueError):
        raise CertificateRefused(f"certificate option {what} cannot be parsed") from None
    if not is_cstring(value):
        raise CertificateRefused(f"certificate option {what} cannot be parsed")
    return value.removesuffix(b"\0").decode("utf-8", "surrogateescape"), rest


def certificate_options(blob: bytes) -> dict[str, str]:
    """sshauthopt_from_cert(): the critical options and extensions exactly as sshd reads them.

    Returns {"force-command": ..., "source-address": ..., "permit-pty": "", "verify-required": ""}
    for those present.
    CertificateRefused for an unknown critical option, a repeated force-command or
    source-address, a malformed source-address, or a known option carrying extra data."""
    try:
        critical, extensions, _ = _sections(blob)
    except (struct.error, IndexError, ValueError):
        raise CertificateRefused("malformed certificate") from None
    found: dict[str, str] = {}
    for section, is_critical in ((critical, True), (extensions, False)):
        rest = section
        while rest:
            name_text, rest = _cstring(rest, "name")
            try:
                data, rest = getNS(rest)
            except (struct.error, IndexError, ValueError):
                raise CertificateRefused("certificate options cannot be parsed") from None
            name = name_text.encode("utf-8", "surrogateescape")
            shown = sanitise(name_text)
            if (not is_critical and name in KNOWN_EXTENSIONS) or (is_critical and name == b"verify-required"):
                found[name_text], extra = "", data
            elif is_critical and name in (b"force-command", b"source-address"):
                if name_text in found:
                    raise CertificateRefused(f"certificate has multiple {shown} options")
                found[name_text], extra = _cstring(data, shown)
                if name == b"source-address" and addr_match_cidr_list(None, found[name_text]) == -1:
                    raise CertificateRefused("certificate source-address is malformed")
            elif is_critical:
                raise CertificateRefused(f"certificate has unknown critical option(s): {shown}")
            else:
                continue  # sshd ignores extensions it does not know
            if extra:
                raise CertificateRefused(f"certificate option {shown} is corrupt (extra data)")
    return found


def principals_allow(principals: tuple[str, ...], user: str, wanted: str | None) -> bool:
    """Whether a certificate's principals pass an authorized_keys `principals=` option, or,
    without the option, name `user`. As current sshd does (and Debian's 9.2 measurably): the
    option is split at commas up to the first empty item, and each item must equal a whole
    principal. (sshd 9.2 as released split the principals too, so a principal "x,admin"
    matched principals="admin".)"""
    if wanted is None:
        return user in principals
    for item in wanted.split(","):
        if not item:
            return False
        if item in principals:
            return True
    return False


def public_blob(key: object) -> bytes:
    """The SSH wire blob of a `cryptography` public key, or of an sk key."""
    if isinstance(key, SkPublicKey):
        return key.blob
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
        self._signature: tuple[int, ...] | None = None
        self.blobs: frozenset[bytes] = frozenset()
        self.serials: tuple[tuple[int, int], ...] = ()
        self.ids: frozenset[str] = frozenset()

    def load(self) -> None:
        """Read the list if it changed since last time. CertificateRefused when it cannot be relied
        on (untrusted, unreadable, a KRL, an unreadable line): every key is then refused."""
        if self.path is None:
            return
        # Checked on every attempt: a list anyone else could have edited cannot be relied on,
        # and an empty one would revoke nothing, so it refuses every key (fail closed).
        try:
            with CheckedFile(self.path, self.trust) as f:
                signature = f.version
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
        except OSError as e:
            if server_side(e):  # not the list's fault nor the client's: logged by the authorizer
                raise RevokedKeysUnavailable("revoked_keys", self.path, e) from None
            log.warn("revoked_keys {path} cannot be read: refusing every key until it can", path=self.path)
            raise CertificateRefused("revocation list unreadable") from None
        if data.startswith(b"SSHKRL\n\0"):
            log.warn("{path} is a binary OpenSSH KRL, which conchcmd does not read: refusing every key", path=self.path)
            raise CertificateRefused("revocation list in an unsupported format (KRL)")
        blobs, serials, ids = set(), [], set()
        for number, raw in file_lines(data):
            line = raw[skip_space(raw, 0) :]
            if not line or line.startswith("#"):
                continue
            try:
                if line.startswith("serial:"):
                    low, _, high = line[7:].split("#", 1)[0].strip().partition("-")
                    serials.append((int(low), int(high or low)))
                elif line.startswith("id:"):
                    ids.add(line[3:].split("#", 1)[0].strip())
                else:
                    field = read_key(line, 0)
                    if field is None:
                        raise ValueError("not a key")
                    blobs.add(_revoked_blob(field))
            except (KeyParseError, ValueError, IndexError, struct.error, TypeError):
                # Fail closed, as sshd does: a revocation that cannot be read must not be lost.
                log.warn("{path}:{n}: unreadable line: refusing every key until it is fixed", path=self.path, n=number)
                raise CertificateRefused("revocation list has an unreadable line") from None
        self.blobs, self.serials, self.ids = frozenset(blobs), tuple(serials), frozenset(ids)
        self._signature = signature

    def check_key(self, blob: bytes) -> None:
        """Refuse a revoked key. `blob` is the key as ssh-keygen writes it, as the list's keys are
        kept, so a key sent zero-padded (which sshd takes) is matched by value, as sshd does."""
        self.load()
        if blob in self.blobs:
            raise CertificateRefused(f"key {fingerprint(blob)} is revoked")

    def check_certificate(self, cert: AnyCertificate, key_blob: bytes, ca_blob: bytes) -> None:
        self.load()
        if ca_blob in self.blobs:
            raise CertificateRefused(f"certificate authority {fingerprint(ca_blob)} is revoked")
        self.check_key(key_blob)
        if any(low <= cert.serial <= high for low, high in self.serials):
            raise CertificateRefused(f"certificate serial {cert.serial} is revoked")
        key_id = cert.key_id.decode("utf-8", "replace")
        if key_id in self.ids:
            raise CertificateRefused(f"certificate id '{key_id}' is revoked")  # escaped by its writer


def _key_blob(field: KeyField) -> bytes:
    """The blob of a plain public key read from a line, checked against the type the line names."""
    return public_key_from_line(field).blob()


def _revoked_blob(field: KeyField) -> bytes:
    """The key a revoked_keys line names: a public key, or the key of a certificate line."""
    if field.key_type.endswith(CERT_SUFFIX):
        if getNS(field.blob)[0].decode(errors="replace") != LINE_KEY_TYPES[field.key_type]:
            raise ValueError("certificate type does not match the line")
        try:
            return public_blob(load_certificate(field.blob).public_key())
        except CertificateRefused as e:
            certified = _key_under_small_order_ca(field.blob)
            if certified is None:
                raise ValueError(str(e)) from None
            return certified
    return _key_blob(field)


def _key_under_small_order_ca(blob: bytes) -> bytes | None:
    """The certified key of a certificate whose CA key is an Ed25519 key of small order and whose
    CA signature sshd accepts (OpenSSL's check, as lax as sshd's), else None. Login refuses every
    certificate of such a CA; revoking one must still revoke its key, not make the whole list
    unreadable (which refuses every key)."""
    try:
        kind, _ = getNS(blob)
        cert = serialization.load_ssh_public_identity(kind + b" " + base64.b64encode(blob))
        if not isinstance(cert, SSHCertificate):
            return None
        ca_key = cert.signature_key()
        if not isinstance(ca_key, ed25519.Ed25519PublicKey):
            return None
        if ed25519_public_refusal(ca_key.public_bytes_raw()) is None:
            return None
        cert.verify_cert_signature()
        return public_blob(cert.public_key())
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm, NotImplementedError, struct.error):
        return None


class TrustedCAs:
    """`trusted_user_ca_keys`: CA public keys whose certificates log in as any listed principal."""

    def __init__(self, path: str | None, *, trust: FileTrust | None = None):
        self.path = path
        self.trust = trust or FileTrust()
        self._signature: tuple[int, ...] | None = None
        self.blobs: frozenset[bytes] = frozenset()
        self.unreadable_line: int | None = None  # where reading stopped, as sshd stops
        #: CA keys read but not trusted (sshd trusts them): (line, why), e.g. of small order.
        self.refused: tuple[RefusedLine, ...] = ()

    def any_trusted(self) -> bool:
        """Whether some CA is trusted (the file is set, trusted and lists a key)."""
        return bool(self.load())

    def contains(self, blob: bytes) -> bool:
        return blob in self.load()

    def load(self) -> frozenset[bytes]:
        """The trusted CA blobs as the file says now (re-read when it changed); `unreadable_line`
        says where reading stopped, if it did."""
        if self.path is None:
            return frozenset()
        try:
            with CheckedFile(self.path, self.trust) as f:
                signature = f.version
                if signature != self._signature:
                    self.blobs, self._signature = self._parse(f.read()), signature
        except UntrustedFile as e:
            log.warn("Ignoring {path}: {reason}: no CA is trusted", path=self.path, reason=e.problem.reason)
            self.blobs, self._signature, self.refused = frozenset(), None, ()
            return frozenset()
        except OSError as e:
            if server_side(e):  # "no CA trusted" would refuse, and call the user invalid
                raise ServerSideFailure("trusted_user_ca_keys", self.path, e) from None
            return frozenset()
        return self.blobs

    def _parse(self, data: bytes) -> frozenset[bytes]:
        blobs, self.unreadable_line = set(), None
        refused = []
        for number, raw in file_lines(data):
            line = raw[skip_space(raw, 0) :]
            if not line or line.startswith("#"):
                continue
            field = read_key(line, 0)
            try:
                if field is None:
                    raise ValueError("not a key")
                if field.key_type.endswith(CERT_SUFFIX):  # a certificate line is never a CA key
                    continue
                key = public_key_from_line(field)
            except (KeyParseError, ValueError):
                # sshd stops reading the file at such a line: no CA after it is trusted.
                log.warn("{path}:{n}: not a CA public key: no CA after it is trusted", path=self.path, n=number)
                self.unreadable_line = number
                break
            weak = ed25519_key_refusal(key)
            if weak is not None:  # a key sshd trusts, for which anyone could mint certificates
                log.warn("{path}:{n}: CA key refused: {why}", path=self.path, n=number, why=weak)
                refused.append(RefusedLine(number, weak))
                continue
            blobs.add(key.blob())
        self.refused = tuple(refused)
        return frozenset(blobs)


def validate_certificate(
    blob: bytes,
    *,
    user: str,
    peer_host: str | None,
    now: float,
    trusted: TrustedCAs,
    authorities: list[tuple[bytes, str | None]],
    revoked: RevokedKeys,
    readings: CertificateReadings | None = None,
) -> tuple[CertificateGrant, bytes]:
    """Check a user certificate completely; returns the grant and the CA's blob.

    `authorities` are (CA blob, principals= option) from the user's cert-authority lines; as in
    sshd, the certificate may pass through any of them, or else through a CA in `trusted`
    (which requires the user name among the certificate's principals). Read through the
    server's `readings`, if given.
    """
    cert = parse_certificate(blob, readings)
    ca_blob = public_blob(cert.signature_key())
    if ca_signature_algorithm(blob) in WEAK_CA_SIGNATURES:  # (parse_certificate checked the signature)
        raise CertificateRefused("certificate signed with SHA-1")
    key_blob = public_blob(cert.public_key())
    revoked.check_certificate(cert, key_blob, ca_blob)
    principals = tuple(p.removesuffix(b"\0").decode("utf-8", "surrogateescape") for p in cert.valid_principals)
    if not principals:  # sshd would let such a certificate in through a cert-authority line
        raise CertificateRefused("certificate has no principals")
    lines = [wanted for line_blob, wanted in authorities if line_blob == ca_blob]
    if not lines and not trusted.contains(ca_blob):
        raise CertificateRefused(f"certificate authority {fingerprint(ca_blob)} is not trusted")
    through_line = any(principals_allow(principals, user, wanted) for wanted in lines)
    if not through_line and not (user in principals and trusted.contains(ca_blob)):
        # The principals as they are: whoever writes the reason out escapes it (once).
        raise CertificateRefused(f"certificate principals {', '.join(principals)} do not include {user}")
    if now < cert.valid_after:
        raise CertificateRefused("certificate is not yet valid")
    if now >= cert.valid_before:
        raise CertificateRefused("certificate has expired")
    options = certificate_options(blob)
    source = options.get("source-address")
    if source is not None and (peer_host is None or addr_match_cidr_list(normalise_peer(peer_host), source) != 1):
        raise CertificateRefused(f"certificate source-address does not allow {peer_host}")
    force = options.get("force-command")
    try:  # a PublicKey, as for a plain key: its Ed25519 signatures are checked by libsodium
        key = public_key_from_blob(key_blob)
    except KeyParseError as e:
        raise CertificateRefused(f"certified key cannot be read ({e})") from None
    grant = CertificateGrant(
        key=key,
        key_id=cert.key_id.removesuffix(b"\0").decode("utf-8", "replace"),
        serial=cert.serial,
        ca_fingerprint=fingerprint(ca_blob),
        principals=principals,
        force_command=force,
        source_address=tuple(source.split(",")) if source is not None else None,
        pty="permit-pty" in options,
        no_touch_required="no-touch-required" in options,
        verify_required="verify-required" in options,
        sk_key=cert.key if isinstance(cert, SkCertificate) else None,
    )
    return grant, ca_blob
