"""Fuzz targets: the authorized_keys parser, OpenSSH certificates, revoked_keys and trusted CA files.

Each may fail only in its documented way: parse_authorized_keys never raises (bad lines become
problems); certificate parsing and validation raise only CertificateRefused; the revocation list
raises only CertificateRefused and never loses a revoked key; TrustedCAs never raises.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, Encoding, PrivateFormat
from hypothesis import example, given
from hypothesis import strategies as st
from twisted.conch.ssh.common import NS
from twisted.conch.ssh.keys import EncryptedKeyError

from conchcmd.authorized_keys import parse_authorized_keys
from conchcmd.certs import (
    CertificateRefused,
    RevokedKeys,
    TrustedCAs,
    ca_signature_algorithm,
    is_certificate,
    parse_certificate,
    validate_certificate,
)
from fuzz.guard import CORPUS, bounded, corpus, fuzz

KEY_LINES = (CORPUS / "authorized_keys" / "openssh_keys.txt").read_text().splitlines()
CERT_LINES = [p.read_text().strip() for p in sorted((CORPUS / "certificates").glob("*-cert.txt"))]
CERT_BLOBS = [base64.b64decode(line.split()[1]) for line in CERT_LINES]
CA_LINE = (CORPUS / "certificates" / "ca.pub.txt").read_text().strip()
#: What str.splitlines() ends a line at besides \n and \r; OpenSSH files end lines at \n only.
OTHER_LINE_BREAKS = "\v\f\x1c\x1d\x1e\x85\u2028\u2029"

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
comments = st.text(max_size=30)
key_fields = st.one_of(
    st.sampled_from(KEY_LINES).map(lambda line: " ".join(line.split()[:2])),
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
)
files = st.tuples(st.lists(lines, max_size=6), st.sampled_from(["\n", "\r\n"])).map(lambda t: t[1].join(t[0]))


def conch_guess_trap(text: str) -> bool:
    """True if a word of `text`, or a line, is what Conch's key format guessing sends to its
    LSH/SEXP or private key parsers: base64 of data starting with '{', '(' or '-----BEGIN', or a
    line starting with '(' or '{'. Known defect: test_a_bad_key_line_is_a_problem_not_an_exception."""
    for line in {*text.split("\n"), *text.splitlines()}:  # the parsers split with splitlines (a defect)
        if line.split("#", 1)[0].strip()[:1] in ("(", "{"):
            return True
        for word in line.split():
            try:
                decoded = base64.b64decode(word, validate=True)
            except ValueError:
                continue
            if decoded[:1] in (b"{", b"(") or decoded.startswith(b"-----BEGIN"):
                return True
    return False


def check_authorized_keys(text: str, permit_environment: bool = False) -> None:
    with bounded():
        try:
            parsed = parse_authorized_keys(text, "fuzz", permit_environment=permit_environment)
        except (AssertionError, EncryptedKeyError):
            if conch_guess_trap(text):
                return  # the known defect, routed
            raise
    if any(c in text.replace("\r\n", "\n") for c in "\r" + OTHER_LINE_BREAKS):
        return  # see test_a_comment_cannot_start_a_new_line (a known defect, routed)
    numbered = text.split("\n")
    for entry in parsed.entries:
        number = int(entry.source.rsplit(":", 1)[1])
        assert base64.b64encode(entry.blob).decode() in numbered[number - 1], f"entry {entry.source} is not on its line"


@fuzz(300)
@given(text=files, permit_environment=st.booleans())
@example(text='restrict,command="x" ' + KEY_LINES[0] + " c\u2028" + KEY_LINES[1], permit_environment=False)
def test_authorized_keys_lines(text: str, permit_environment: bool) -> None:
    check_authorized_keys(text, permit_environment)


@pytest.mark.parametrize("data", corpus("authorized_keys"))
def test_authorized_keys_corpus(data: bytes) -> None:
    check_authorized_keys(data.decode("utf-8", "replace"), True)


@pytest.mark.xfail(
    strict=True,
    reason="authorized_keys.py splits lines with str.splitlines(): U+2028, U+0085, \\f or \\v in a comment "
    "(or a lone \\r) starts a new line, so text hidden in a comment becomes a second key line without the first one's "
    "options (OpenSSH ends lines at \\n only). Owner: authorized_keys.py",
)
@pytest.mark.parametrize(
    "name",
    ["regression_u2028_in_comment.txt", "regression_u0085_in_comment.txt", "regression_formfeed_in_comment.txt"],
)
def test_a_comment_cannot_start_a_new_line(name: str) -> None:
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


@pytest.mark.xfail(
    strict=True,
    raises=(AssertionError, EncryptedKeyError),
    reason="authorized_keys.parse_authorized_keys calls Key.fromString(blob) without type=: Conch guesses the "
    "format, and a blob starting with '{' or '(' goes to its SEXP/LSH parser (AssertionError 'this should not "
    "happen'), one starting with '-----BEGIN' to its private key parser (EncryptedKeyError). The exception "
    "escapes the whole file: every key of that user stops working, with a traceback at each login. "
    "Fix: Key.fromString(blob, type='blob'). Owner: authorized_keys.py",
)
@pytest.mark.parametrize("line", list(BAD_KEY_LINES.values()), ids=list(BAD_KEY_LINES))
def test_a_bad_key_line_is_a_problem_not_an_exception(line: str) -> None:
    parsed = parse_authorized_keys(f"{KEY_LINES[0]}\n{line}\n", "fuzz")
    assert len(parsed.entries) == 1 and len(parsed.problems) == 1


# -- certificates ---------------------------------------------------------------------------


@st.composite
def mangled_certificates(draw: st.DrawFn) -> tuple[bytes, bytes]:
    original = draw(st.sampled_from(CERT_BLOBS))
    out = bytearray(original)
    for _ in range(draw(st.integers(0, 3))):
        out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.one_of(st.none(), st.integers(0, len(out))))
    if cut is not None:
        out = out[:cut]
    out += draw(st.sampled_from([b"", b"\0", b"\0\0\0\x10extra"]))
    return original, bytes(out)


@pytest.fixture(scope="module")
def trusted(tmp_path_factory: pytest.TempPathFactory) -> TrustedCAs:
    path = tmp_path_factory.mktemp("ca") / "ca.pub"
    path.write_text(CA_LINE + "\n")
    return TrustedCAs(str(path))


#: Known defects, each with an xfail(strict=True) test below; the fuzzing goes on around them.
ROUTED: tuple[type[Exception], ...] = (UnsupportedAlgorithm, NotImplementedError, ValueError)


def hits_routed_defect(blob: bytes) -> bool:
    """True for a blob that hits a known certs.py defect: parse_certificate raising
    UnsupportedAlgorithm (test_a_certificate_of_an_unknown_type_is_refused), or a certificate
    that parses but whose signature key or certified key raises when read
    (test_a_certificate_with_a_broken_key_field_is_refused)."""
    try:
        cert = parse_certificate(blob)
    except (UnsupportedAlgorithm, NotImplementedError):
        return True
    except CertificateRefused:
        return False
    try:
        cert.signature_key()
        cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return True
    return False


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
        except ROUTED:
            if hits_routed_defect(blob):
                return False
            raise
    return True


BROKEN_SIGNATURE_KEY = (CORPUS / "certificates" / "regression_broken_signature_key_length.txt").read_text().split()


@pytest.mark.xfail(
    strict=True,
    raises=ValueError,
    reason="certs.validate_certificate reads cert.signature_key() (and public_key()) unguarded; cryptography "
    "parses them lazily, so a certificate with a bad length inside its signature key passes "
    "parse_certificate and then raises ValueError('Invalid data'): before authentication that is an "
    "'Error checking auth' traceback, and in server.UserAuthService._key_fields a request with no reply. "
    "Owner: certs.py",
)
def test_a_certificate_with_a_broken_key_field_is_refused(trusted: TrustedCAs) -> None:
    """Found by test_certificates (long run): one length byte changed in an ssh-keygen certificate."""
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


@pytest.mark.xfail(
    strict=True,
    raises=(UnsupportedAlgorithm, NotImplementedError),
    reason="certs.parse_certificate documents CertificateRefused but lets cryptography's UnsupportedAlgorithm "
    "escape for a key or certificate type it does not know, and NotImplementedError for a compressed EC "
    "point. Owner: certs.py",
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
    st.sampled_from(CERT_LINES),
    st.integers(-5, 2**70).map(lambda n: f"serial: {n}"),
    st.tuples(st.integers(0, 300), st.integers(0, 300)).map(lambda t: f"serial: {t[0]}-{t[1]}"),
    st.text(max_size=20).map(lambda t: f"id: {t}"),
    st.sampled_from(["", "# c", "serial:", "serial: x", "id:"]),
    st.text(max_size=40),
)


def check_revoked(path: Path, content: bytes, trusted_too: bool = True) -> None:
    path.write_bytes(content)
    if conch_guess_trap(content.decode("utf-8", "replace")):
        return  # the known defect: test_a_revocation_line_conch_cannot_guess_fails_closed_cleanly
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


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="certs.RevokedKeys and TrustedCAs parse lines with Key.fromString(line) without type=: a line "
    "starting with '(' or '{' reaches Conch's LSH/SEXP parser and its AssertionError escapes (RevokedKeys "
    "documents CertificateRefused; TrustedCAs ignores bad lines). Fix: type='public_openssh'. Owner: certs.py",
)
@pytest.mark.parametrize("which", ["revoked_keys", "trusted_user_ca_keys"])
def test_a_revocation_line_conch_cannot_guess_fails_closed_cleanly(tmp_path: Path, which: str) -> None:
    """Found by test_revoked_keys (long run): the line '('."""
    path = tmp_path / which
    path.write_text(f"{CA_LINE}\n(\n")
    if which == "revoked_keys":
        with pytest.raises(CertificateRefused, match="unreadable line"):
            RevokedKeys(str(path)).check_key(b"x")
    else:
        assert TrustedCAs(str(path)).contains(base64.b64decode(CA_LINE.split()[1]))
