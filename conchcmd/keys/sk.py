"""FIDO2 security keys (OpenSSH's `sk-` keys, PROTOCOL.u2f): their public keys, certificates and
signatures, checked exactly as sshd checks them, and sshd's user presence / verification policy.

Conch reads sk public keys loosely (it ignores the curve name and trailing bytes) and cannot verify
their signatures; `cryptography` has no sk certificates. Everything here is parsed by hand, as
sshd's sshbuf readers do, and verified with `cryptography`'s ECDSA and RSA primitives and
libsodium's Ed25519 (keys/sodium.py: OpenSSL's accepts signatures anyone can make for a key of
small order).
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import SSHCertificateType

from conchcmd.keys.sodium import ed25519_verify

#: The flag bits a token reports (sk-api.h): the user touched it, the user was verified (PIN,
#: biometric).
USER_PRESENT = 0x01
USER_VERIFIED = 0x04
SK_ED25519 = b"sk-ssh-ed25519@openssh.com"
SK_ECDSA = b"sk-ecdsa-sha2-nistp256@openssh.com"
SK_KEY_TYPES = (SK_ED25519, SK_ECDSA)
#: sk certificate types and the plain type of the key they certify (and of its signatures).
SK_CERT_TYPES = {
    b"sk-ssh-ed25519-cert-v01@openssh.com": SK_ED25519,
    b"sk-ecdsa-sha2-nistp256-cert-v01@openssh.com": SK_ECDSA,
}
_MAX_BIGNUM = 16384 // 8  # SSHBUF_MAX_BIGNUM
_MAX_PRINCIPALS = 256  # SSHKEY_CERT_MAX_PRINCIPALS
#: CA key types whose signatures conchcmd verifies on an sk certificate, and the hash of each
#: ECDSA curve (sshd also takes sk CAs; conchcmd does not).
_EC_CA_CURVES: dict[bytes, tuple[ec.EllipticCurve, hashes.HashAlgorithm]] = {
    b"ecdsa-sha2-nistp256": (ec.SECP256R1(), hashes.SHA256()),
    b"ecdsa-sha2-nistp384": (ec.SECP384R1(), hashes.SHA384()),
    b"ecdsa-sha2-nistp521": (ec.SECP521R1(), hashes.SHA512()),
}
_RSA_HASHES: dict[bytes, hashes.HashAlgorithm] = {
    b"rsa-sha2-256": hashes.SHA256(),
    b"rsa-sha2-512": hashes.SHA512(),
    b"ssh-rsa": hashes.SHA1(),  # verified as sshd does; callers refuse SHA-1 CA signatures
}


class SkError(ValueError):
    """An sk key, certificate or signature that sshd would not accept; the message says why."""


class SkBadSignature(SkError):
    """A well-formed signature that does not verify."""

    def __init__(self) -> None:
        super().__init__("bad signature")


class WireReader:
    """sshbuf's readers over one buffer: every read checks the length; `end` refuses trailing bytes."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise SkError("truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self._take(1)[0]

    def u32(self) -> int:
        value: int = struct.unpack(">L", self._take(4))[0]
        return value

    def u64(self) -> int:
        value: int = struct.unpack(">Q", self._take(8))[0]
        return value

    def string(self) -> bytes:
        return self._take(self.u32())

    def cstring(self) -> bytes:
        """sshbuf_get_cstring(): no NUL inside; one at the very end is dropped."""
        value = self.string()
        if b"\0" in value[:-1]:
            raise SkError("NUL inside a string")
        return value.removesuffix(b"\0")

    def mpint(self) -> int:
        """sshbuf_get_bignum2(): a non-negative mpint of at most 16384 bits (leading zeros allowed)."""
        value = self.string()
        if value and value[0] & 0x80:
            raise SkError("negative number")
        if len(value) > _MAX_BIGNUM + 1 or (len(value) == _MAX_BIGNUM + 1 and value[0] != 0):
            raise SkError("number too large")
        return int.from_bytes(value, "big")

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def end(self, what: str = "") -> None:
        if self.remaining:
            raise SkError(f"trailing data{' after ' + what if what else ''}")


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@dataclass(frozen=True)
class SkSignature:
    """What a token reported with a valid signature: its flags and its signature counter."""

    flags: int
    counter: int

    @property
    def user_present(self) -> bool:
        return bool(self.flags & USER_PRESENT)

    @property
    def user_verified(self) -> bool:
        return bool(self.flags & USER_VERIFIED)

    def audit_fields(self) -> dict[str, int]:
        return {"sk_flags": self.flags, "sk_counter": self.counter}


@dataclass(frozen=True)
class ParsedSkSignature:
    """An sk signature blob taken apart (PROTOCOL.u2f "SSH U2F signatures"), not yet verified."""

    key_type: bytes
    raw: bytes  # Ed25519: the 64-byte signature; ECDSA: DER of (r, s)
    flags: int
    counter: int


def parse_sk_signature(key_type: bytes, signature: bytes) -> ParsedSkSignature:
    """ssh_ed25519_sk_verify / ssh_ecdsa_sk_verify's parsing: the type must be the key's plain sk
    type (webauthn signatures are not accepted), nothing may follow the counter, an ECDSA
    signature is two non-negative mpints and nothing else, an Ed25519 one at most 64 bytes."""
    reader = WireReader(signature)
    sig_type = reader.cstring()
    if sig_type != key_type:
        raise SkError(f"signature type {sig_type[:64]!r} is not {key_type.decode()}")
    body = reader.string()
    flags, counter = reader.u8(), reader.u32()
    reader.end("the counter")
    if key_type == SK_ED25519:
        if len(body) > 64:
            raise SkError("Ed25519 signature longer than 64 bytes")
        return ParsedSkSignature(key_type, body, flags, counter)
    inner = WireReader(body)
    r, s = inner.mpint(), inner.mpint()
    inner.end("the ECDSA signature")
    return ParsedSkSignature(key_type, encode_dss_signature(r, s), flags, counter)


@dataclass(frozen=True)
class SkPublicKey:
    """An sk public key: the Ed25519 or P-256 key, the application it was enrolled for, the blob."""

    key_type: bytes
    public: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
    application: bytes
    blob: bytes  # the plain key's wire blob (also for a certified key)

    def verify(self, signature: bytes, data: bytes) -> SkSignature:
        """Check an SSH signature of `data` as sshd does; the token's flags and counter if it is
        good, SkError (the message says what is wrong) if not."""
        parsed = parse_sk_signature(self.key_type, signature)
        message = _sha256(self.application) + struct.pack(">BL", parsed.flags, parsed.counter) + _sha256(data)
        try:
            if isinstance(self.public, ed25519.Ed25519PublicKey):
                if not ed25519_verify(self.public.public_bytes_raw(), parsed.raw, message):
                    raise InvalidSignature()
            else:
                self.public.verify(parsed.raw, message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise SkBadSignature() from None
        return SkSignature(parsed.flags, parsed.counter)


SkKeyMaterial = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


def _read_key_fields(reader: WireReader, key_type: bytes) -> tuple[SkKeyMaterial, bytes]:
    """The key material and application of an sk key (plain or certified), as sshd reads them."""
    public: SkKeyMaterial
    if key_type == SK_ED25519:
        raw = reader.string()
        if len(raw) != 32:
            raise SkError("Ed25519 public key is not 32 bytes")
        public = ed25519.Ed25519PublicKey.from_public_bytes(raw)
    else:
        if reader.cstring() != b"nistp256":
            raise SkError("curve is not nistp256")
        point = reader.string()
        if len(point) != 65 or point[0] != 0x04:  # sshbuf_get_ec: uncompressed points only
            raise SkError("EC point is not an uncompressed P-256 point")
        try:
            public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        except ValueError:
            raise SkError("EC point is not on the curve") from None
    return public, reader.cstring()


def parse_sk_public_key(blob: bytes) -> SkPublicKey:
    """A plain sk public key from its wire blob (sshkey_from_blob); SkError if sshd would refuse it."""
    reader = WireReader(blob)
    key_type = reader.cstring()
    if key_type not in SK_KEY_TYPES:
        raise SkError("not an sk key")
    public, application = _read_key_fields(reader, key_type)
    reader.end("the key")
    return SkPublicKey(key_type, public, application, blob)


def _plain_blob(key_type: bytes, public: Any, application: bytes) -> bytes:
    def ns(value: bytes) -> bytes:
        return struct.pack(">L", len(value)) + value

    if key_type == SK_ED25519:
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return ns(key_type) + ns(raw) + ns(application)
    point = public.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return ns(key_type) + ns(b"nistp256") + ns(point) + ns(application)


@dataclass(frozen=True)
class SkCertificate:
    """An OpenSSH certificate of an sk key, with the attributes of `cryptography`'s
    SSHCertificate that conchcmd's certificate checks use (cryptography cannot read these)."""

    blob: bytes
    key: SkPublicKey
    serial: int
    type: SSHCertificateType
    key_id: bytes
    valid_principals: list[bytes]
    valid_after: int
    valid_before: int
    ca_blob: bytes
    signature: bytes  # the CA's signature blob
    signed_length: int  # the bytes of `blob` the CA signed

    def public_key(self) -> SkPublicKey:
        return self.key

    def signature_key(self) -> Any:
        """The CA's public key, as a `cryptography` key (ValueError if it is not one conchcmd verifies)."""
        ca_type = WireReader(self.ca_blob).cstring()
        if ca_type not in (b"ssh-ed25519", b"ssh-rsa", *_EC_CA_CURVES):
            raise ValueError(f"CA key type {ca_type[:64]!r} is not accepted for sk certificates")
        try:
            return serialization.load_ssh_public_key(ca_type + b" " + base64.b64encode(self.ca_blob))
        except (UnsupportedAlgorithm, NotImplementedError) as e:
            raise ValueError(str(e)) from None

    def verify_cert_signature(self) -> None:
        """The CA signature over the certificate (InvalidSignature or ValueError if it is not good)."""
        verify_ca_signature(self.ca_blob, self.signature_key(), self.signature, self.blob[: self.signed_length])


def verify_ca_signature(ca_blob: bytes, ca_key: Any, signature: bytes, data: bytes) -> None:
    """An ordinary SSH signature by a CA key (sshkey_verify with no expected algorithm):
    InvalidSignature if it does not verify, ValueError if it cannot be parsed."""
    ca_type = WireReader(ca_blob).cstring()
    try:
        reader = WireReader(signature)
        sig_type = reader.cstring()
        body = reader.string()
        reader.end("the signature")
        if isinstance(ca_key, ed25519.Ed25519PublicKey):
            if sig_type != b"ssh-ed25519" or len(body) > 64:
                raise ValueError("not an Ed25519 signature")
            if not ed25519_verify(ca_key.public_bytes_raw(), body, data):
                raise InvalidSignature()
        elif isinstance(ca_key, ec.EllipticCurvePublicKey):
            if sig_type != ca_type:
                raise ValueError("signature type does not match the CA key")
            inner = WireReader(body)
            r, s = inner.mpint(), inner.mpint()
            inner.end()
            ca_key.verify(encode_dss_signature(r, s), data, ec.ECDSA(_EC_CA_CURVES[ca_type][1]))
        elif isinstance(ca_key, rsa.RSAPublicKey):
            size = (ca_key.key_size + 7) // 8
            if sig_type not in _RSA_HASHES or len(body) > size:
                raise ValueError("not an RSA signature of this key")
            ca_key.verify(body.rjust(size, b"\0"), data, padding.PKCS1v15(), _RSA_HASHES[sig_type])
        else:
            raise ValueError("CA key type not accepted")
    except SkError as e:
        raise ValueError(str(e)) from None


def parse_sk_certificate(blob: bytes) -> SkCertificate:
    """An sk certificate from its wire blob, as sshd's cert_parse reads it (the CA signature is
    checked by `verify_cert_signature`). SkError when sshd would refuse to read it."""
    reader = WireReader(blob)
    cert_type = reader.cstring()
    key_type = SK_CERT_TYPES.get(cert_type)
    if key_type is None:
        raise SkError("not an sk certificate")
    reader.string()  # nonce
    public, application = _read_key_fields(reader, key_type)
    serial, kind = reader.u64(), reader.u32()
    key_id = reader.cstring()
    principals_data = reader.string()
    valid_after, valid_before = reader.u64(), reader.u64()
    for section in (reader.string(), reader.string()):  # critical options, extensions: pairs of strings
        pairs = WireReader(section)
        while pairs.remaining:
            pairs.string()
            pairs.string()
    reader.string()  # reserved
    ca_blob = reader.string()
    signed_length = reader.pos
    signature = reader.string()
    reader.end("the certificate")
    if kind not in (SSHCertificateType.USER.value, SSHCertificateType.HOST.value):
        raise SkError(f"unknown certificate type {kind}")
    principals: list[bytes] = []
    names = WireReader(principals_data)
    while names.remaining:
        if len(principals) >= _MAX_PRINCIPALS:
            raise SkError(f"more than {_MAX_PRINCIPALS} principals")
        principals.append(names.cstring())
    key = SkPublicKey(key_type, public, application, _plain_blob(key_type, public, application))
    return SkCertificate(
        blob=blob,
        key=key,
        serial=serial,
        type=SSHCertificateType(kind),
        key_id=key_id,
        valid_principals=principals,
        valid_after=valid_after,
        valid_before=valid_before,
        ca_blob=ca_blob,
        signature=signature,
        signed_length=signed_length,
    )


@dataclass(frozen=True)
class SkRequirements:
    """What an sk signature must show to log in (sshd's req_presence and req_verify), and what
    asked for each, for the refusal's reason."""

    touch: bool = True
    verify: bool = False
    touch_because: str = ""
    verify_because: str = ""

    def describe(self) -> str:
        """What a signature must show, in words (`conchcmd check`)."""
        needs = [name for name, on in (("touch", self.touch), ("user verification", self.verify)) if on]
        return " and ".join(needs) + " required" if needs else "no touch required"

    def refusal(self, signature: SkSignature) -> tuple[str, str] | None:
        """sshd's words for the first requirement the signature does not meet and what set it, or None."""
        if self.touch and not signature.user_present:
            return "user presence (authenticator touch) requirement not met", self.touch_because
        if self.verify and not signature.user_verified:
            return "user verification requirement not met", self.verify_because
        return None


@dataclass(frozen=True)
class PubkeyAuthOptions:
    """The server-wide `pubkey_auth_options` (sshd's PubkeyAuthOptions): each one applies to
    every sk key whatever its authorized_keys line or certificate says."""

    touch_required: bool = False
    verify_required: bool = False

    @classmethod
    def from_names(cls, names: tuple[str, ...]) -> PubkeyAuthOptions:
        return cls(touch_required="touch-required" in names, verify_required="verify-required" in names)

    def requirements(self, *, no_touch_required: bool, verify_required: bool, where: str) -> SkRequirements:
        """sshd's rule: touch unless the key's options (`where`: the authorized_keys line, the
        certificate) waive it and the server does not insist; verification if the key's options
        or the server ask for it."""
        return SkRequirements(
            touch=self.touch_required or not no_touch_required,
            verify=self.verify_required or verify_required,
            touch_because="pubkey_auth_options has touch-required"
            if self.touch_required
            else f"no no-touch-required on the {where}",
            verify_because=f"verify-required on the {where}"
            if verify_required
            else "pubkey_auth_options has verify-required",
        )
