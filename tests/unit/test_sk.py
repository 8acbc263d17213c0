"""conchcmd.keys.sk: security-key public keys, certificates and signatures checked as sshd checks them.

Known answers come from OpenSSH's own regression data (regress/unittests/sshsig/testdata and
regress/unittests/sshkey/testdata in openssh-portable): signatures a token made, certificates
ssh-keygen made. The rest are made by the software authenticator and then broken one field at a
time, the way an attacker would."""

from __future__ import annotations

import base64
import hashlib
import struct

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import SSHCertificateType
from support.skauth import UP, UV, SoftwareAuthenticator
from twisted.conch.ssh.common import MP, NS

from conchcmd.keys.sk import (
    SK_ECDSA,
    SK_ED25519,
    PubkeyAuthOptions,
    SkError,
    SkSignature,
    parse_sk_certificate,
    parse_sk_public_key,
    parse_sk_signature,
)
from conchcmd.policy.authorized_keys import fingerprint
from conchcmd.policy.certs import CertificateRefused, load_certificate, parse_certificate

# -- OpenSSH's vectors ----------------------------------------------------------------------------------------

SIGNED_DATA = b"This is a test, this is only a test"
NAMESPACE = b"unittest"
OPENSSH_KEYS = {
    "ed25519": ("AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIJsaDYXQYruc6bilCYDIK4YSOeG+zmrRO2M9t03//7LHAAAABHNzaDo="),
    "ecdsa": (
        "AAAAInNrLWVjZHNhLXNoYTItbmlzdHAyNTZAb3BlbnNzaC5jb20AAAAIbmlzdHAyNTYAAABBBKDVa5jRcT5V7E6ysmwVi7HJWh7p"
        "5D+hebLPakQcpnD2ajJZ6G/4WzuhlYWnclWY63JspDp299Rlhq5AT86/g8AAAAAEc3NoOg=="
    ),
}
OPENSSH_SIGNATURES = {  # ssh-keygen -Y sign output (armour removed)
    "ed25519": (
        "U1NIU0lHAAAAAQAAAEoAAAAac2stc3NoLWVkMjU1MTlAb3BlbnNzaC5jb20AAAAgmxoNhdBiu5zpuKUJgMgrhhI54b7OatE7Yz23"
        "Tf//sscAAAAEc3NoOgAAAAh1bml0dGVzdAAAAAAAAAAGc2hhNTEyAAAAZwAAABpzay1zc2gtZWQyNTUxOUBvcGVuc3NoLmNvbQAA"
        "AEAi+7eTjW/+LQ2M+sCD+KFtH1n7VFFJon/SZFsxODyV8cWTlFKj617Ys1Ur5TV6uaEXQhck8rBA2oQIHTPANLIPARI0Vng="
    ),
    "ecdsa": (
        "U1NIU0lHAAAAAQAAAH8AAAAic2stZWNkc2Etc2hhMi1uaXN0cDI1NkBvcGVuc3NoLmNvbQAAAAhuaXN0cDI1NgAAAEEEoNVrmNFx"
        "PlXsTrKybBWLsclaHunkP6F5ss9qRBymcPZqMlnob/hbO6GVhadyVZjrcmykOnb31GWGrkBPzr+DwAAAAARzc2g6AAAACHVuaXR0"
        "ZXN0AAAAAAAAAAZzaGE1MTIAAAB3AAAAInNrLWVjZHNhLXNoYTItbmlzdHAyNTZAb3BlbnNzaC5jb20AAABIAAAAIHohGwyy8iKT"
        "3zwd1TYA9V/Ioo7h/3zCJUtyq/Qigt/HAAAAIGzidTwq7D/kFa7Xjcp/KkdbIs4MfQpfAW/0OciajlpzARI0Vng="
    ),
}
OPENSSH_CERTS = {  # host certificates (principals host1, host2), CA ed25519 and ecdsa-sha2-nistp256
    "ed25519": (
        "AAAAI3NrLXNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29tAAAAIJr7CuMntQKvHoUshx374fJLFEkyxKsEOBA1H6hk5sco"
        "AAAAICFo/k5LU8863u66YC9eUO2170QduohPURkQnbLa/dczAAAABHNzaDoAAAAAAAAACAAAAAIAAAAGanVsaXVzAAAAEgAAAAVo"
        "b3N0MQAAAAVob3N0MgAAAAA2i4NgAAAAAE0d4eAAAAAAAAAAAAAAAAAAAAAzAAAAC3NzaC1lZDI1NTE5AAAAIOo/0xneV3iM2qWE"
        "o5RUwvUYa2bjff292T5vvuXRomGQAAAAUwAAAAtzc2gtZWQyNTUxOQAAAECgsRGLDh1SI3m66MRp9D2iLP4wabQ0OrDgGidk7LsV"
        "n2XZHV5jBZN1RtNfe6PBMeVzfRtGUzOg18sO7H7uU+EC"
    ),
    "ecdsa": (
        "AAAAK3NrLWVjZHNhLXNoYTItbmlzdHAyNTYtY2VydC12MDFAb3BlbnNzaC5jb20AAAAgE012YoSBE9hEC2FRzblcSx784JNo2A4g"
        "611A7I75YMMAAAAIbmlzdHAyNTYAAABBBGdVPkKOLUMZ7b6rZfS8BOHotic4NX4MmuyEmiuvkaeKlbb1F+5oNezRYHpcF6P104tr"
        "NVEONCu1XX1CA7px+QUAAAAEc3NoOgAAAAAAAAAHAAAAAgAAAAZqdWxpdXMAAAASAAAABWhvc3QxAAAABWhvc3QyAAAAADaLg2AA"
        "AAAATR3h4AAAAAAAAAAAAAAAAAAAAGgAAAATZWNkc2Etc2hhMi1uaXN0cDI1NgAAAAhuaXN0cDI1NgAAAEEEAlTtPiWUHubBeCys"
        "4Xp0QF91dYARpkyqtCnzg10HRS+ZDgkMrSUvPPG+Ge8iqtnB951MBxDq9FqDFIkhQBYXDAAAAGQAAAATZWNkc2Etc2hhMi1uaXN0"
        "cDI1NgAAAEkAAAAhALY+eXRJjVGnMk38Sm5S+H5CloNq757ypsoxt+WYoadtAAAAIA42/mAhUfLij1GY7wl+OFrI+icB/t4tGiEU"
        "Zmhx6Foo"
    ),
}
#: regress/unittests/sshkey/testdata/ed25519_sk1-cert.fp: the certified key's fingerprint.
ED25519_SK1_FP = "SHA256:6WZVJ44bqhAWLVP4Ns0TDkoSQSsZo/h2K+mEvOaNFbw"


def sshsig_parts(armoured_b64: str) -> tuple[bytes, bytes, bytes]:
    """(public key blob, the data the key signed, the SSH signature) of an SSHSIG blob."""
    blob = base64.b64decode(armoured_b64)
    assert blob[:6] == b"SSHSIG" and blob[6:10] == struct.pack(">L", 1)
    rest = blob[10:]
    fields = []
    for _ in range(5):
        (n,) = struct.unpack(">L", rest[:4])
        fields.append(rest[4 : 4 + n])
        rest = rest[4 + n :]
    key, namespace, reserved, hash_alg, signature = fields
    assert namespace == NAMESPACE and hash_alg == b"sha512" and not rest
    signed = b"SSHSIG" + NS(namespace) + NS(reserved) + NS(hash_alg) + NS(hashlib.sha512(SIGNED_DATA).digest())
    return key, signed, signature


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa"])
def test_openssh_token_signatures_verify(kind: str) -> None:
    key_blob, signed, signature = sshsig_parts(OPENSSH_SIGNATURES[kind])
    assert key_blob == base64.b64decode(OPENSSH_KEYS[kind])
    key = parse_sk_public_key(key_blob)
    assert key.application == b"ssh:" and key.key_type == (SK_ED25519 if kind == "ed25519" else SK_ECDSA)
    reported = key.verify(signature, signed)
    assert reported == SkSignature(flags=UP, counter=0x12345678)  # the test middleware's answers
    with pytest.raises(SkError, match="bad signature"):
        key.verify(signature, signed + b"x")


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa"])
def test_openssh_sk_certificates_are_read_and_their_ca_signature_checked(kind: str) -> None:
    blob = base64.b64decode(OPENSSH_CERTS[kind])
    cert = parse_sk_certificate(blob)
    cert.verify_cert_signature()
    assert cert.type == SSHCertificateType.HOST and cert.key_id == b"julius"
    assert cert.valid_principals == [b"host1", b"host2"] and cert.serial == (8 if kind == "ed25519" else 7)
    assert cert.key.application == b"ssh:"
    if kind == "ed25519":
        assert fingerprint(cert.key.blob) == ED25519_SK1_FP
    assert load_certificate(blob).key_id == b"julius"  # the certs.py entry point reads it too
    with pytest.raises(CertificateRefused, match="host certificate"):
        parse_certificate(blob)
    tampered = blob.replace(b"host1", b"host9")
    with pytest.raises(InvalidSignature):
        parse_sk_certificate(tampered).verify_cert_signature()
    with pytest.raises(CertificateRefused, match="signature is not valid"):
        load_certificate(tampered)


# -- signatures from the software authenticator, broken one field at a time ----------------------------------

DATA = b"\x00\x00\x00\x20session-id-and-userauth-request"
TOKENS = {kind: SoftwareAuthenticator.generate(kind) for kind in ("ed25519", "ecdsa")}


@pytest.fixture(params=sorted(TOKENS))
def token(request: pytest.FixtureRequest) -> SoftwareAuthenticator:
    return TOKENS[request.param]


def key_of(token: SoftwareAuthenticator):  # type: ignore[no-untyped-def]
    return parse_sk_public_key(token.key_blob())


@pytest.mark.parametrize(("flags", "counter"), [(0, 0), (UP, 1), (UP | UV, 2**32 - 1), (0xFF, 12345)])
def test_good_signatures_report_flags_and_counter(token: SoftwareAuthenticator, flags: int, counter: int) -> None:
    reported = key_of(token).verify(token.sign(DATA, flags=flags, counter=counter), DATA)
    assert (reported.flags, reported.counter) == (flags, counter)
    assert reported.user_present == bool(flags & UP) and reported.user_verified == bool(flags & UV)


def test_flags_or_counter_changed_after_signing_are_a_bad_signature(token: SoftwareAuthenticator) -> None:
    signature = token.sign(DATA, flags=0, counter=5)
    touched = signature[:-5] + bytes([UP]) + signature[-4:]  # the flags an attacker would like to have
    with pytest.raises(SkError, match=r"^bad signature$"):
        key_of(token).verify(touched, DATA)
    recounted = signature[:-4] + struct.pack(">L", 6)
    with pytest.raises(SkError, match=r"^bad signature$"):
        key_of(token).verify(recounted, DATA)


def test_wrong_application_and_wrong_data_are_a_bad_signature(token: SoftwareAuthenticator) -> None:
    with pytest.raises(SkError, match=r"^bad signature$"):
        key_of(token).verify(token.sign(DATA, application=b"https://example.com"), DATA)
    with pytest.raises(SkError, match=r"^bad signature$"):
        key_of(token).verify(token.sign(DATA), DATA + b"\x00")
    other = SoftwareAuthenticator.generate("ed25519" if token.key_type == SK_ED25519 else "ecdsa")
    with pytest.raises(SkError, match=r"^bad signature$"):
        key_of(token).verify(other.sign(DATA), DATA)


def test_signature_type_must_be_the_keys_plain_sk_type() -> None:
    ed, ecdsa = TOKENS["ed25519"], TOKENS["ecdsa"]
    with pytest.raises(SkError, match="is not sk-ssh-ed25519"):
        key_of(ed).verify(ecdsa.sign(DATA), DATA)
    good = ecdsa.sign(DATA)
    for wrong in (
        b"webauthn-sk-ecdsa-sha2-nistp256@openssh.com",
        b"ecdsa-sha2-nistp256",
        b"sk-ecdsa-sha2-nistp256-cert-v01@openssh.com",
    ):
        with pytest.raises(SkError, match="is not sk-ecdsa"):
            key_of(ecdsa).verify(NS(wrong) + good[4 + len(SK_ECDSA) :], DATA)


def test_trailing_bytes_are_refused(token: SoftwareAuthenticator) -> None:
    with pytest.raises(SkError, match="trailing data after the counter"):
        key_of(token).verify(token.sign(DATA) + b"\x00", DATA)
    with pytest.raises(SkError, match="trailing data after the key"):
        parse_sk_public_key(token.key_blob() + b"\x00")


def test_ecdsa_signature_numbers() -> None:
    token = TOKENS["ecdsa"]
    key = key_of(token)
    good = token.sign(DATA, flags=UP, counter=3)
    inner = parse_sk_signature(SK_ECDSA, good)
    assert inner.flags == UP

    def wrap(body: bytes) -> bytes:
        return NS(SK_ECDSA) + NS(body) + struct.pack(">BL", UP, 3)

    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    with pytest.raises(SkError, match="negative"):
        key.verify(wrap(NS(b"\x80" + b"\x01" * 31) + MP(1)), DATA)
    with pytest.raises(SkError, match="trailing data after the ECDSA signature"):
        key.verify(wrap(MP(1) + MP(1) + b"\x00"), DATA)
    with pytest.raises(SkError, match="too large"):
        key.verify(wrap(NS(b"\x01" * 2049) + MP(1)), DATA)
    for r, s in ((0, 1), (1, 0), (order, 1), (1, order), (order + 1, 1)):
        with pytest.raises(SkError, match=r"^bad signature$"):
            key.verify(wrap(MP(r) + MP(s)), DATA)


def test_ed25519_signature_length() -> None:
    token = TOKENS["ed25519"]
    good = token.sign(DATA)
    (n,) = struct.unpack(">L", good[4 + len(SK_ED25519) : 8 + len(SK_ED25519)])
    raw = good[8 + len(SK_ED25519) : 8 + len(SK_ED25519) + n]
    tail = good[-5:]
    with pytest.raises(SkError, match="longer than 64"):
        key_of(token).verify(NS(SK_ED25519) + NS(raw + b"\x00") + tail, DATA)
    with pytest.raises(SkError, match=r"^bad signature$"):
        key_of(token).verify(NS(SK_ED25519) + NS(raw[:63]) + tail, DATA)


def test_every_truncation_is_a_clean_refusal(token: SoftwareAuthenticator) -> None:
    signature, blob = token.sign(DATA), token.key_blob()
    for n in range(len(signature)):
        with pytest.raises(SkError):
            key_of(token).verify(signature[:n], DATA)
    for n in range(len(blob)):
        with pytest.raises(SkError):
            parse_sk_public_key(blob[:n])


# -- public keys ----------------------------------------------------------------------------------------------


def ecdsa_blob(curve: bytes, point: bytes, application: bytes = b"ssh:") -> bytes:
    return NS(SK_ECDSA) + NS(curve) + NS(point) + NS(application)


def test_bad_ecdsa_points_and_curves_are_refused() -> None:
    good = ec.generate_private_key(ec.SECP256R1()).public_key()
    nums = good.public_numbers()
    uncompressed = b"\x04" + nums.x.to_bytes(32, "big") + nums.y.to_bytes(32, "big")
    assert parse_sk_public_key(ecdsa_blob(b"nistp256", uncompressed)).public.public_numbers() == nums
    off_curve = b"\x04" + nums.x.to_bytes(32, "big") + ((nums.y + 1) % 2**256).to_bytes(32, "big")
    compressed = bytes([2 + (nums.y & 1)]) + nums.x.to_bytes(32, "big")
    for curve, point, why in (
        (b"nistp256", off_curve, "not on the curve"),
        (b"nistp256", compressed, "uncompressed"),
        (b"nistp256", b"\x00", "uncompressed"),  # the point at infinity
        (b"nistp256", b"\x04" + b"\x00" * 64, "not on the curve"),
        (b"nistp384", uncompressed, "not nistp256"),
    ):
        with pytest.raises(SkError, match=why):
            parse_sk_public_key(ecdsa_blob(curve, point))


def test_ed25519_public_key_length_and_application_strings() -> None:
    for raw in (b"\x01" * 31, b"\x01" * 33):
        with pytest.raises(SkError, match="32 bytes"):
            parse_sk_public_key(NS(SK_ED25519) + NS(raw) + NS(b"ssh:"))
    with pytest.raises(SkError, match="NUL"):
        parse_sk_public_key(NS(SK_ED25519) + NS(b"\x01" * 32) + NS(b"ssh:\x00x"))
    key = parse_sk_public_key(NS(SK_ED25519) + NS(b"\x01" * 32) + NS(b"ssh:\x00"))
    assert key.application == b"ssh:"  # sshd drops a final NUL, and hashes what is left
    with pytest.raises(SkError, match="not an sk key"):
        parse_sk_public_key(NS(b"ssh-ed25519") + NS(b"\x01" * 32))


# -- policy ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "no_touch", "verify", "touch_needed", "verify_needed"),
    [
        ((), False, False, True, False),
        ((), True, False, False, False),
        (("touch-required",), True, False, True, False),  # the server insists whatever the key says
        ((), False, True, True, True),
        (("verify-required",), True, False, False, True),
        (("touch-required", "verify-required"), True, False, True, True),
    ],
)
def test_requirements_combine_as_sshds(
    server: tuple[str, ...], no_touch: bool, verify: bool, touch_needed: bool, verify_needed: bool
) -> None:
    reqs = PubkeyAuthOptions.from_names(server).requirements(
        no_touch_required=no_touch, verify_required=verify, where="line"
    )
    assert (reqs.touch, reqs.verify) == (touch_needed, verify_needed)
    for flags in range(8):
        refusal = reqs.refusal(SkSignature(flags, 0))
        expected_ok = (not touch_needed or flags & UP) and (not verify_needed or flags & UV)
        assert (refusal is None) == bool(expected_ok)


# -- the checker: algorithm and key confusion ------------------------------------------------------------------


@pytest.fixture
def checker(tmp_path):  # type: ignore[no-untyped-def]
    from twisted.internet.task import Clock

    from conchcmd.policy.auth import KeyAuthorizer, PublicKeyChecker
    from conchcmd.policy.authorized_keys import AuthorizedKeysFiles
    from conchcmd.policy.certs import RevokedKeys, TrustedCAs

    (tmp_path / "alice").write_text(TOKENS["ed25519"].public_line() + TOKENS["ecdsa"].public_line())
    (tmp_path / "alice").chmod(0o600)
    authorizer = KeyAuthorizer(AuthorizedKeysFiles(f"{tmp_path}/%u"), TrustedCAs(None), RevokedKeys(None), Clock())
    return PublicKeyChecker(authorizer)


def refusal(checker, algorithm: bytes, blob: bytes, signature: bytes) -> str:  # type: ignore[no-untyped-def]
    from twisted.cred.credentials import SSHPrivateKey

    from conchcmd.policy.auth import KeyRefused

    with pytest.raises(KeyRefused) as e:
        checker.check(SSHPrivateKey(b"alice", algorithm, blob, DATA, signature))
    return str(e.value)


def test_the_same_key_pair_signing_as_a_plain_key_is_refused(checker) -> None:  # type: ignore[no-untyped-def]
    """The token's private key is an ordinary Ed25519/P-256 key: a plain signature by it (what a
    stolen key could make without the token's envelope) must not pass as an sk signature."""
    from twisted.conch.ssh.keys import Key

    for token in TOKENS.values():
        plain = Key(token.private)
        plain_type = plain.sshType()
        signature = plain.sign(DATA)
        assert refusal(checker, token.key_type, token.key_blob(), signature) == (
            "signature type does not match the algorithm"
        )
        relabelled = NS(token.key_type) + signature[4 + len(plain_type) :] + struct.pack(">BL", UP, 1)
        assert refusal(checker, token.key_type, token.key_blob(), relabelled) == "bad signature"
        assert refusal(checker, plain_type, token.key_blob(), signature).startswith("signature algorithm")
        assert refusal(checker, plain_type, plain.public().blob(), signature) == "key not in authorized_keys"


def test_a_good_sk_signature_logs_in_through_the_checker(checker) -> None:  # type: ignore[no-untyped-def]
    from twisted.cred.credentials import SSHPrivateKey

    token = TOKENS["ecdsa"]
    identity = checker.check(SSHPrivateKey(b"alice", SK_ECDSA, token.key_blob(), DATA, token.sign(DATA, counter=3)))
    assert identity.sk == SkSignature(UP, 3) and identity.audit_fields()["sk_counter"] == 3
    ed = TOKENS["ed25519"]  # a signature by the other authorized token, for this token's key
    assert refusal(checker, SK_ECDSA, token.key_blob(), ed.sign(DATA)) == "signature type does not match the algorithm"
    forged = NS(SK_ECDSA) + ed.sign(DATA)[4 + len(SK_ED25519) :]  # its 64 bytes are no pair of mpints
    assert refusal(checker, SK_ECDSA, token.key_blob(), forged).startswith("malformed signature")
