"""Fuzz targets: the authorized_keys parser, OpenSSH certificates, revoked_keys and trusted CA files.

Each may fail only in its documented way: parse_authorized_keys never raises (bad lines become
problems); certificate parsing and validation raise only CertificateRefused; the revocation list
raises only CertificateRefused and never loses a revoked key; TrustedCAs never raises.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, Encoding, PrivateFormat
from hypothesis import example, given
from hypothesis import strategies as st
from twisted.conch.ssh.common import NS

from conchcmd.keys.keyparse import KeyParseError, public_key_from_blob
from conchcmd.policy.authorized_keys import parse_authorized_keys
from conchcmd.policy.certs import (
    CertificateRefused,
    RevokedKeys,
    TrustedCAs,
    ca_signature_algorithm,
    is_certificate,
    parse_certificate,
    validate_certificate,
)
from fuzz.guard import CORPUS, bounded, corpus, fuzz
from fuzz.samples import (
    BROKEN_SIGNATURE_KEY,
    CA_LINE,
    CERT_BLOBS,
    CERT_LINES,
    KEY_LINES,
    ODD_KEY_LINES,
    OTHER_LINE_BREAKS,
    mangled,
)

option_items = st.one_of(
    st.sampled_from(
        [
            "restrict",
            "pty",
            "no-pty",
            "cert-authority",
            'command="lastlog -n 5"',
            'command="a\\"b"',
            'from="10.0.0.0/8,!10.1.*,::1"',
            'from="*"',
            'from="10.0.0.0/33"',
            'expiry-time="20991231Z"',
            'expiry-time="19700101"',
            'expiry-time="99999999"',
            'principals="admin,ops"',
            'environment="A=B"',
            "unknown",
            'permitopen="x:1"',
            "Restrict",
            '=""',
            ",",
        ]
    ),
    st.text(max_size=12),
)
options = st.lists(option_items, max_size=4).map(",".join)
comments = st.one_of(st.text(max_size=30), st.text(alphabet=OTHER_LINE_BREAKS + "\r #ab", max_size=8))
key_fields = st.one_of(
    st.sampled_from(KEY_LINES).map(lambda line: " ".join(line.split()[:2])),
    st.sampled_from(ODD_KEY_LINES).map(lambda line: " ".join(line.split()[:2])),
    st.sampled_from(CERT_LINES).map(lambda line: " ".join(line.split()[:2])),
    st.tuples(
        st.sampled_from(["ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "sk-ssh-ed25519@openssh.com"]),
        st.binary(max_size=120).map(lambda b: base64.b64encode(b).decode()),
    ).map(" ".join),
)
lines = st.one_of(
    st.tuples(options, key_fields, comments).map(lambda t: f"{t[0]} {t[1]} {t[2]}".strip()),
    st.tuples(key_fields, comments).map(" ".join),
    st.sampled_from(["", "#", "# comment", " \t "]),
    st.text(max_size=60),
    st.sampled_from(["(", "{", "ssh-ed25519 ew==", "ssh-ed25519 KA=="]),  # Conch's format guessing
)
files = st.tuples(st.lists(lines, max_size=6), st.sampled_from(["\n", "\r\n"])).map(lambda t: t[1].join(t[0]))


def check_authorized_keys(text: str, permit_environment: bool = False) -> None:
    with bounded():
        parsed = parse_authorized_keys(text, "fuzz", permit_environment=permit_environment)
    numbered = text.split("\n")
    for entry in parsed.entries:
        number = int(entry.source.rsplit(":", 1)[1])
        # The entry holds its line's key as ssh-keygen writes it (the line may pad its numbers).
        assert entry.blob in _keys_on(numbered[number - 1]), f"entry {entry.source} is not on its line"


def _keys_on(line: str) -> set[bytes]:
    """The blobs, as ssh-keygen writes them, of the words of `line` that are keys."""
    found = set()
    for word in line.split():
        try:
            found.add(public_key_from_blob(base64.b64decode(word, validate=True)).blob())
        except (ValueError, KeyParseError):
            continue
    return found


@fuzz(300)
@given(text=files, permit_environment=st.booleans())
@example(text='restrict,command="x" ' + KEY_LINES[0] + " c\u2028" + KEY_LINES[1], permit_environment=False)
def test_authorized_keys_lines(text: str, permit_environment: bool) -> None:
    check_authorized_keys(text, permit_environment)


@pytest.mark.parametrize("data", corpus("authorized_keys"))
def test_authorized_keys_corpus(data: bytes) -> None:
    check_authorized_keys(data.decode("utf-8", "replace"), True)


@pytest.mark.parametrize(
    "name",
    ["regression_u2028_in_comment.txt", "regression_u0085_in_comment.txt", "regression_formfeed_in_comment.txt"],
)
def test_a_comment_cannot_start_a_new_line(name: str) -> None:
    """Found by test_authorized_keys_lines: str.splitlines() made U+2028, U+0085 or \\f in a comment
    start a second key line, without the first one's options (OpenSSH ends lines at \\n only)."""
    text = (CORPUS / "authorized_keys" / name).read_text()
    parsed = parse_authorized_keys(text, "fuzz")
    assert len(parsed.entries) == 1, [e.comment for e in parsed.entries]


ENCRYPTED_PRIVATE_KEY = Ed25519PrivateKey.generate().private_bytes(
    Encoding.PEM, PrivateFormat.OpenSSH, BestAvailableEncryption(b"passphrase")
)
BAD_KEY_LINES = {
    "sexp-brace": "ssh-ed25519 ew==",  # found by test_authorized_keys_lines (long run): '{'
    "lsh-paren": "ssh-ed25519 KA==",  # '('
    "encrypted-private-key": "ssh-ed25519 " + base64.b64encode(ENCRYPTED_PRIVATE_KEY).decode(),
}


@pytest.mark.parametrize("line", list(BAD_KEY_LINES.values()), ids=list(BAD_KEY_LINES))
def test_a_bad_key_line_is_a_problem_not_an_exception(line: str) -> None:
    """Found by test_authorized_keys_lines: Key.fromString(blob) without type= guessed the format and
    sent a blob starting with '{' or '(' to Conch's SEXP/LSH parser (AssertionError), one starting
    with '-----BEGIN' to its private key parser (EncryptedKeyError): the exception escaped the whole
    file, and every key of that user stopped working."""
    parsed = parse_authorized_keys(f"{KEY_LINES[0]}\n{line}\n", "fuzz")
    assert len(parsed.entries) == 1 and len(parsed.problems) == 1


# -- certificates ---------------------------------------------------------------------------


@st.composite
def mangled_certificates(draw: st.DrawFn) -> tuple[bytes, bytes]:
    original = draw(st.sampled_from(CERT_BLOBS))
    return original, draw(mangled(original))


@pytest.fixture(scope="module")
def trusted(tmp_path_factory: pytest.TempPathFactory) -> TrustedCAs:
    path = tmp_path_factory.mktemp("ca") / "ca.pub"
    path.write_text(CA_LINE + "\n")
    return TrustedCAs(str(path))


def check_certificate(blob: bytes, trusted: TrustedCAs, user: str = "admin") -> bool:
    """True if the certificate logs in as `user`; any other outcome must be CertificateRefused."""
    with bounded():
        is_certificate(blob)
        try:
            parse_certificate(blob)
            ca_signature_algorithm(blob)
            validate_certificate(
                blob,
                user=user,
                peer_host="10.0.0.1",
                now=1_800_000_000.0,
                trusted=trusted,
                authorities=[],
                revoked=RevokedKeys(None),
            )
        except CertificateRefused:
            return False
    return True


def test_a_certificate_with_a_broken_key_field_is_refused(trusted: TrustedCAs) -> None:
    """Found by test_certificates (long run): one length byte changed in an ssh-keygen certificate.
    cryptography parses the CA key lazily, so signature_key() raised ValueError('Invalid data')
    after the certificate had parsed."""
    with pytest.raises(CertificateRefused):
        validate_certificate(
            base64.b64decode(BROKEN_SIGNATURE_KEY[1]),
            user="admin",
            peer_host="10.0.0.1",
            now=1_800_000_000.0,
            trusted=trusted,
            authorities=[],
            revoked=RevokedKeys(None),
        )


@pytest.mark.parametrize(
    "blob",
    [
        NS(b"ssh-dss-cert-v01@openssh.com") + NS(bytes(32)),
        b"\0\0\0(\0",  # found by test_certificates: a length prefix longer than what follows
        base64.b64decode(  # found by test_adduser (long run)
            (CORPUS / "certificates" / "regression_compressed_ec_point.txt").read_text().split()[1]
        ),
    ],
    ids=["ssh-dss-cert", "short-type-string", "compressed-ec-point"],
)
def test_a_certificate_of_an_unknown_type_is_refused(blob: bytes) -> None:
    """parse_certificate raises only CertificateRefused: cryptography's UnsupportedAlgorithm (a type it
    does not know) and NotImplementedError (a compressed EC point) escaped it."""
    with pytest.raises(CertificateRefused):
        parse_certificate(blob)


@fuzz(300)
@given(pair=mangled_certificates(), user=st.sampled_from(["admin", "alice", "root", ""]))
def test_certificates(trusted: TrustedCAs, pair: tuple[bytes, bytes], user: str) -> None:
    original, blob = pair
    if check_certificate(blob, trusted, user):
        assert blob == original, "a changed certificate still logs in"


@fuzz(100)
@given(blob=st.binary(max_size=400))
def test_certificates_random_bytes(trusted: TrustedCAs, blob: bytes) -> None:
    assert not check_certificate(b"\0\0\0\x20ssh-ed25519-cert-v01@openssh.com" + blob, trusted)


@pytest.mark.parametrize("data", corpus("certificates"))
def test_certificates_corpus(trusted: TrustedCAs, data: bytes, request: pytest.FixtureRequest) -> None:
    name = request.node.callspec.id
    blob = base64.b64decode(data.split()[1])
    # Made by ssh-keygen 9.2 (2026-11-29): ed25519 for admin,alice valid 52 weeks; ecdsa-256 for
    # admin with force-command and source-address 10.0.0.0/8; rsa a host certificate; ecdsa-384
    # with an unknown critical option.
    expected = {"id_ed25519-cert.txt": True, "id_ecdsab256-cert.txt": True}
    assert check_certificate(blob, trusted) == expected.get(name, False)
    assert not check_certificate(blob, trusted, user="root")


# -- revoked_keys and trusted CA files ------------------------------------------------------

revoked_lines = st.one_of(
    st.sampled_from(KEY_LINES),
    st.sampled_from(ODD_KEY_LINES),
    st.sampled_from(CERT_LINES),
    st.integers(-5, 2**70).map(lambda n: f"serial: {n}"),
    st.tuples(st.integers(0, 300), st.integers(0, 300)).map(lambda t: f"serial: {t[0]}-{t[1]}"),
    st.text(max_size=20).map(lambda t: f"id: {t}"),
    st.sampled_from(["", "# c", "serial:", "serial: x", "id:"]),
    st.text(max_size=40),
)


def check_revoked(path: Path, content: bytes, trusted_too: bool = True) -> None:
    path.write_bytes(content)
    with bounded():
        for line in KEY_LINES:
            blob = base64.b64decode(line.split()[1])
            revoked = RevokedKeys(str(path))
            try:
                revoked.check_key(blob)
            except CertificateRefused:
                continue
            text = content.decode("utf-8", "replace")
            assert line not in text.split("\n"), "a revoked key was let through"
        if trusted_too:
            TrustedCAs(str(path)).contains(b"x")


@fuzz(150)
@given(chosen=st.lists(revoked_lines, max_size=6))
def test_revoked_keys(tmp_path_factory: pytest.TempPathFactory, chosen: list[str]) -> None:
    check_revoked(tmp_path_factory.getbasetemp() / "revoked_keys", "\n".join(chosen).encode("utf-8", "surrogatepass"))


@pytest.mark.parametrize("data", corpus("revoked_keys"))
def test_revoked_keys_corpus(tmp_path: Path, data: bytes) -> None:
    check_revoked(tmp_path / "revoked_keys", data)


@pytest.mark.parametrize("which", ["revoked_keys", "trusted_user_ca_keys"])
@pytest.mark.parametrize("line", ["(", *list(BAD_KEY_LINES.values())], ids=["paren-line", *BAD_KEY_LINES])
def test_a_revocation_line_conch_cannot_guess_fails_closed_cleanly(tmp_path: Path, which: str, line: str) -> None:
    """Found by test_revoked_keys (long run): the line '(' reached Conch's LSH parser through its
    format guessing, as does a key whose blob starts with '{' or '(' (AssertionError), or is a
    private key (EncryptedKeyError)."""
    path = tmp_path / which
    path.write_text(f"{CA_LINE}\n{line}\n")
    if which == "revoked_keys":
        with pytest.raises(CertificateRefused, match="unreadable line"):
            RevokedKeys(str(path)).check_key(b"x")
    else:
        assert TrustedCAs(str(path)).contains(base64.b64decode(CA_LINE.split()[1]))
