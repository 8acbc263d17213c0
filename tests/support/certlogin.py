"""Logging in with an OpenSSH user certificate over the in-memory test client."""

from __future__ import annotations

import base64
import os
import struct
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import SSHCertificateBuilder, SSHCertificateType
from twisted.conch.ssh.common import NS
from twisted.conch.ssh.keys import Key

from support.sshclient import Connection, result_of


def cert_login(conn: Connection, user: bytes, user_key: Key, cert_b64: bytes) -> int:
    """Sign in as `user` with the certificate (base64 blob) of `user_key`; the USERAUTH reply number
    (0 if none came yet)."""
    blob = base64.b64decode(cert_b64)
    algorithm = b"ssh-ed25519-cert-v01@openssh.com"
    auth = conn.start_auth(user)
    d = auth._request(b"publickey", auth.signed(user_key, algorithm, blob, signature_type=b"ssh-ed25519"))
    conn.flush()
    return result_of(d)[0] if d.called else 0


def make_cert(ca: ed25519.Ed25519PrivateKey, user_key: Key, *, principals: list[bytes], **options: bytes) -> bytes:
    """A user certificate of `user_key` signed by `ca` (serial 314, key id "memory-cert", valid
    from the epoch into 2001: the in-memory clock starts at 0), as the base64 blob of its line."""
    builder = (
        SSHCertificateBuilder()
        .public_key(user_key.public()._keyObject)
        .serial(314)
        .type(SSHCertificateType.USER)
        .key_id(b"memory-cert")
        .valid_principals(principals)
        .valid_after(0)
        .valid_before(10**9)
    )
    for name, value in options.items():
        builder = builder.add_critical_option(name.replace("_", "-").encode(), value)
    cert = builder.sign(ca)
    return cert.public_bytes().split()[1]


def raw_certificate(
    cert_type: bytes,
    key_fields: bytes,
    ca_blob: bytes,
    ca_sign: Callable[[bytes], bytes],
    *,
    principals: list[bytes],
    valid: tuple[int, int] = (0, 2**64 - 1),
) -> bytes:
    """A user certificate blob (PROTOCOL.certkeys) written field by field, for CA keys and
    signatures no builder makes: `key_fields` the certified key's fields as on the wire,
    `ca_sign` the raw Ed25519 signature of the signed part by the CA `ca_blob`."""
    signed = (
        NS(cert_type)
        + NS(os.urandom(32))
        + key_fields
        + struct.pack(">QL", 1, 1)  # serial, SSH_CERT_TYPE_USER
        + NS(b"raw-cert")
        + NS(b"".join(NS(p) for p in principals))
        + struct.pack(">QQ", *valid)
        + NS(b"")
        + NS(b"")
        + NS(b"")
        + NS(ca_blob)
    )
    return signed + NS(NS(b"ssh-ed25519") + NS(ca_sign(signed)))
