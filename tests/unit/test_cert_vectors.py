"""Known answers for the CA signature check, from cryptography_vectors' OpenSSH certificates: an RSA CA
signed an ECDSA P-256 user key with SHA-1 (`ssh-rsa`), with SHA-256 and with SHA-512.

cryptography verifies all three signatures as valid, so refusing SHA-1 is conchcmd's own check
(`WEAK_CA_SIGNATURES`), which the ssh-keygen tests in test_certs.py exercise only with certificates
ssh-keygen made.
"""

from __future__ import annotations

import base64
import os
import re
from typing import Any

import cryptography_vectors
import pytest
from cryptography.hazmat.primitives.serialization import load_ssh_public_identity

from conchcmd.policy.certs import (
    WEAK_CA_SIGNATURES,
    CertificateRefused,
    RevokedKeys,
    TrustedCAs,
    _sections,
    ca_signature_algorithm,
    public_blob,
    validate_certificate,
)

VECTORS = {
    "p256-rsa-sha1.pub": b"ssh-rsa",
    "p256-rsa-sha256.pub": b"rsa-sha2-256",
    "p256-rsa-sha512.pub": b"rsa-sha2-512",
}
#: Inside the vectors' validity interval is impossible (valid_before is earlier than valid_after), and
#: they name no principal: a certificate that passes the signature check is refused for that next.
NO_PRINCIPALS = "certificate has no principals"


def exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


def vector(name: str) -> bytes:
    """The certificate blob of one vector file."""
    path = os.path.join("asymmetric", "OpenSSH", "certs", name)
    with cryptography_vectors.open_vector_file(path, "rb") as f:
        return base64.b64decode(f.read().split()[1])


def identity(blob: bytes) -> Any:
    """cryptography's certificate object for a blob."""
    return load_ssh_public_identity(b"ecdsa-sha2-nistp256-cert-v01@openssh.com " + base64.b64encode(blob))


def validate(blob: bytes) -> None:
    ca_blob = public_blob(identity(blob).signature_key())
    validate_certificate(
        blob,
        user="test",
        peer_host="127.0.0.1",
        now=1680000000.0,
        trusted=TrustedCAs(None),
        authorities=[(ca_blob, None)],  # a cert-authority line for the vectors' CA
        revoked=RevokedKeys(None),
    )


def tampered(blob: bytes) -> bytes:
    """The certificate with one bit of its signature's last byte flipped."""
    return blob[:-1] + bytes([blob[-1] ^ 1])


def test_the_vectors_carry_the_signature_algorithm_they_are_named_for() -> None:
    blobs = {name: vector(name) for name in VECTORS}
    identities = [identity(b) for b in blobs.values()]
    for name, blob in blobs.items():
        assert ca_signature_algorithm(blob) == VECTORS[name]
    for c in identities:
        c.verify_cert_signature()  # cryptography takes SHA-1 too: the refusal below is conchcmd's


def test_a_sha1_ca_signature_is_refused_though_it_verifies() -> None:
    assert b"ssh-rsa" in WEAK_CA_SIGNATURES
    with pytest.raises(CertificateRefused, match=exactly("certificate signed with SHA-1")):
        validate(vector("p256-rsa-sha1.pub"))
    # As sshd's cert_parse, the signature is checked when the certificate is read; the algorithm after.
    with pytest.raises(CertificateRefused, match=exactly("certificate signature is not valid")):
        validate(tampered(vector("p256-rsa-sha1.pub")))


@pytest.mark.parametrize("name", ["p256-rsa-sha256.pub", "p256-rsa-sha512.pub"])
def test_a_sha2_ca_signature_passes_the_signature_check(name: str) -> None:
    with pytest.raises(CertificateRefused, match=exactly(NO_PRINCIPALS)):
        validate(vector(name))
    with pytest.raises(CertificateRefused, match=exactly("certificate signature is not valid")):
        validate(tampered(vector(name)))


def test_a_sha1_signature_relabelled_as_sha2_does_not_verify() -> None:
    """An attacker who renames `ssh-rsa` to `rsa-sha2-256` in the signature gets a signature check
    over SHA-256, which the SHA-1 signature cannot pass."""
    blob = vector("p256-rsa-sha1.pub")
    relabelled = relabel(blob, b"ssh-rsa", b"rsa-sha2-256")
    assert ca_signature_algorithm(relabelled) == b"rsa-sha2-256"
    with pytest.raises(CertificateRefused, match=exactly("certificate signature is not valid")):
        validate(relabelled)


def relabel(blob: bytes, old: bytes, new: bytes) -> bytes:
    """The certificate with its signature's algorithm name replaced (the lengths fixed up)."""
    signature = _sections(blob)[2]  # the last field of the certificate
    head = blob[: -len(signature) - 4]
    name_length = int.from_bytes(signature[:4], "big")
    assert signature[4 : 4 + name_length] == old
    rest = signature[4 + name_length :]
    new_signature = len(new).to_bytes(4, "big") + new + rest
    return head + len(new_signature).to_bytes(4, "big") + new_signature
