"""A software FIDO2 authenticator: the construction a security key performs, without hardware.

OpenSSH's PROTOCOL.u2f: an sk key is an ordinary Ed25519 or ECDSA P-256 key pair plus an
application string ("ssh:" by default). Its signature covers

    SHA256(application) || flags (1 byte) || counter (uint32) || SHA256(data)

and goes on the wire as  string key-type, string signature, byte flags, uint32 counter  (for
ECDSA the signature string holds mpint r, mpint s, as RFC 5656). Flags and counter are the
caller's to choose: UP (0x01, user present: the touch) and UV (0x04, user verified: PIN or
biometric), so tests and the sshd differential can produce every case a token can.

Use:
    token = SoftwareAuthenticator.generate("ed25519")            # or "ecdsa"
    line = token.public_line(options="verify-required")          # authorized_keys / .pub line
    sig = token.sign(data, flags=UP | UV, counter=7)             # an SSH signature blob
    conn.login(b"alice", token)                                  # support.sshclient accepts it
    certified = token.with_certificate(cert_blob)                # the same signer, cert blob
    cert_blob = ssh_keygen_certificate(token, ca_path, workdir, principals=["alice"])

`SoftwareAuthenticator` duck-types what support.sshclient.AuthClient asks of a Conch Key
(`sshType`, `public`, `blob`, `sign(data, signatureType=...)`), so every in-memory and loopback
login path takes it as it is.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twisted.conch.ssh.common import MP, NS

UP = 0x01  # user present (touch)
UV = 0x04  # user verified (PIN, biometric)
ED25519_SK = b"sk-ssh-ed25519@openssh.com"
ECDSA_SK = b"sk-ecdsa-sha2-nistp256@openssh.com"
KEY_TYPES = {"ed25519": ED25519_SK, "ecdsa": ECDSA_SK}


def signed_message(application: bytes, flags: int, counter: int, data: bytes) -> bytes:
    """What the token's key actually signs (PROTOCOL.u2f, no extensions)."""
    return hashlib.sha256(application).digest() + struct.pack(">BL", flags, counter) + hashlib.sha256(data).digest()


@dataclass(frozen=True)
class SoftwareAuthenticator:
    """One sk key pair on a pretend token. `flags` and `counter` are what `sign` reports unless
    the call says otherwise; the counter does not advance by itself (tests choose it)."""

    private: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
    application: bytes = b"ssh:"
    flags: int = UP
    counter: int = 1
    certificate: bytes | None = field(default=None, compare=False)  # presented instead of the key

    @classmethod
    def generate(cls, kind: str = "ed25519", application: bytes = b"ssh:", **kw: int) -> SoftwareAuthenticator:
        """A fresh key pair: kind "ed25519" (sk-ssh-ed25519) or "ecdsa" (sk-ecdsa-sha2-nistp256)."""
        private: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
        if kind == "ed25519":
            private = ed25519.Ed25519PrivateKey.generate()
        elif kind == "ecdsa":
            private = ec.generate_private_key(ec.SECP256R1())
        else:
            raise ValueError(f"unknown sk key kind {kind!r}")
        return cls(private, application, **kw)

    @property
    def key_type(self) -> bytes:
        return ED25519_SK if isinstance(self.private, ed25519.Ed25519PrivateKey) else ECDSA_SK

    def key_blob(self) -> bytes:
        """The public key blob (PROTOCOL.u2f "SSH U2F Key formats"), never the certificate."""
        if isinstance(self.private, ed25519.Ed25519PrivateKey):
            raw = self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            return NS(ED25519_SK) + NS(raw) + NS(self.application)
        point = self.private.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        return NS(ECDSA_SK) + NS(b"nistp256") + NS(point) + NS(self.application)

    def public_line(self, options: str = "", comment: str = "") -> str:
        """An OpenSSH public key line (authorized_keys with `options`, or a .pub file), newline-ended."""
        text = f"{self.sshType().decode()} {base64.b64encode(self.blob()).decode()}"
        return " ".join(p for p in (options, text, comment) if p) + "\n"

    def sign(
        self,
        data: bytes,
        signatureType: bytes | None = None,
        *,
        flags: int | None = None,
        counter: int | None = None,
        application: bytes | None = None,
    ) -> bytes:
        """An SSH signature of `data` as the token returns it; `application` overrides the key's
        (a token enrolled for another application), `signatureType` is ignored (one per key)."""
        flags = self.flags if flags is None else flags
        counter = self.counter if counter is None else counter
        message = signed_message(self.application if application is None else application, flags, counter, data)
        if isinstance(self.private, ed25519.Ed25519PrivateKey):
            raw = self.private.sign(message)
        else:
            r, s = decode_dss_signature(self.private.sign(message, ec.ECDSA(hashes.SHA256())))
            raw = MP(r) + MP(s)
        return NS(self.key_type) + NS(raw) + struct.pack(">BL", flags, counter)

    def with_certificate(self, certificate: bytes) -> SoftwareAuthenticator:
        """The same token presenting `certificate` (a wire blob) instead of its plain key."""
        return replace(self, certificate=certificate)

    def with_(self, **changes: object) -> SoftwareAuthenticator:
        """The same key pair with other defaults (flags, counter, application)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    # -- what support.sshclient asks of a Conch Key -----------------------------------------------------
    def sshType(self) -> bytes:
        if self.certificate is not None:
            return self.certificate[4 : 4 + struct.unpack(">L", self.certificate[:4])[0]]
        return self.key_type

    def blob(self) -> bytes:
        return self.certificate if self.certificate is not None else self.key_blob()

    def public(self) -> SoftwareAuthenticator:
        return self


def ssh_keygen_certificate(
    token: SoftwareAuthenticator,
    ca_private_key: Path,
    workdir: Path,
    *,
    principals: list[str],
    key_id: str = "sk-test",
    serial: int = 1,
    options: tuple[str, ...] = (),
    validity: str = "always:forever",
) -> bytes:
    """A certificate for the token's public key made by `ssh-keygen -s` with an ordinary CA key
    (no token needed: only the CA signs). `options` are ssh-keygen's -O values, e.g.
    "no-touch-required", "verify-required", "force-command=lastlog". Returns the wire blob."""
    workdir.mkdir(parents=True, exist_ok=True)
    pub = workdir / f"{key_id}.pub"
    pub.write_text(token.public_line(comment=key_id))
    args = ["ssh-keygen", "-q", "-s", str(ca_private_key), "-I", key_id, "-z", str(serial), "-V", validity]
    args += ["-n", ",".join(principals)]
    for option in options:
        args += ["-O", option]
    subprocess.run([*args, str(pub)], check=True, capture_output=True, timeout=30)
    cert_line = (workdir / f"{key_id}-cert.pub").read_text()
    return base64.b64decode(cert_line.split()[1])
