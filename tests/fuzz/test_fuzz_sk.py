"""Fuzz targets: security-key public keys, signatures and certificates (conchcmd.keys.sk).

Each may fail only in its documented way: a public key, signature or sk certificate parser raises
only SkError; verification raises only SkError, and a mangled signature never verifies unless it
says exactly what the token signed; certs.load_certificate raises only CertificateRefused.
"""

from __future__ import annotations

import contextlib
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from support.skauth import UP, SoftwareAuthenticator, ssh_keygen_certificate
from twisted.conch.ssh.common import NS

from conchcmd.keys.sk import (
    SK_ECDSA,
    SK_ED25519,
    SkError,
    parse_sk_certificate,
    parse_sk_public_key,
    parse_sk_signature,
)
from conchcmd.policy.certs import CertificateRefused, load_certificate
from fuzz.guard import bounded, fuzz
from fuzz.samples import mangled

DATA = b"\x00\x00\x00\x20session-id-and-userauth-request"
TOKENS = [SoftwareAuthenticator.generate(kind, counter=9) for kind in ("ed25519", "ecdsa")]
SIGNATURES = [(token, token.sign(DATA)) for token in TOKENS]


signatures = st.integers(0, len(SIGNATURES) - 1).flatmap(
    lambda i: st.tuples(st.just(i), st.one_of(mangled(SIGNATURES[i][1]), st.binary(max_size=200)))
)


@fuzz(300)
@given(case=signatures)
@example(case=(0, NS(SK_ED25519) + NS(b"\x00" * 64) + b"\x01\x00\x00\x00\x09"))
@example(case=(1, NS(SK_ECDSA) + NS(NS(b"\x7f" * 2049) + NS(b"")) + b"\x01\x00\x00\x00\x09"))
def test_sk_signatures(case: tuple[int, bytes]) -> None:
    index, signature = case
    token, good = SIGNATURES[index]
    key = parse_sk_public_key(token.key_blob())
    with bounded():
        try:
            parse_sk_signature(token.key_type, signature)
            reported = key.verify(signature, DATA)
        except SkError:
            return
    # Accepted: then it says what the token signed (ECDSA signatures are not unique: an mpint may
    # gain leading zeros, which sshd takes too; flags and counter cannot change).
    assert (reported.flags, reported.counter) == (UP, 9)
    assert signature[-5:] == good[-5:]


@fuzz(300)
@given(blob=st.one_of(*(mangled(t.key_blob()) for t in TOKENS), st.binary(max_size=150)))
def test_sk_public_keys(blob: bytes) -> None:
    with bounded():
        try:
            key = parse_sk_public_key(blob)
        except SkError:
            return
    assert key.key_type in (SK_ED25519, SK_ECDSA) and key.blob == blob


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    work = tmp_path_factory.mktemp("skcerts")
    ca = work / "ca"
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", str(ca)], check=True, timeout=30)
    return [
        ssh_keygen_certificate(t, ca, Path(work / str(i)), principals=["alice", "bob"], options=("no-touch-required",))
        for i, t in enumerate(TOKENS)
    ]


@fuzz(200)
@given(data=st.data())
def test_sk_certificates(certificates: list[bytes], data: st.DataObject) -> None:
    original = data.draw(st.sampled_from(certificates))
    blob = data.draw(mangled(original))
    with bounded():
        with contextlib.suppress(SkError):
            parse_sk_certificate(blob)
        try:
            cert = load_certificate(blob)
        except CertificateRefused:
            return
    # What still carries a good CA signature is the certificate the CA signed (trailing bytes
    # after the signature are refused, the signature covers everything before it).
    assert blob == original and cert.key_id == b"sk-test"


def test_a_truncated_signature_counter_is_refused() -> None:
    token, good = SIGNATURES[0]
    with pytest.raises(SkError, match="truncated"):
        parse_sk_signature(token.key_type, good[:-1])
    assert struct.unpack(">L", good[-4:]) == (9,)
