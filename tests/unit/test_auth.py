"""conchcmd.policy.auth.PublicKeyChecker with real keys from ssh-keygen and real signatures."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from twisted.conch.error import ValidPublicKey
from twisted.conch.ssh.common import NS
from twisted.conch.ssh.keys import Key
from twisted.cred.credentials import SSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.task import Clock

from conchcmd.core.audit import sanitise
from conchcmd.policy.auth import Identity, KeyAuthorizer, PublicKeyChecker
from conchcmd.policy.authorized_keys import AuthorizedKeysFiles
from conchcmd.policy.certs import RevokedKeys, TrustedCAs

SIG_DATA = b"\x00\x00\x00\x20session-identifier-and-userauth-request"


@pytest.fixture
def users(tmp_path: Path):
    """users(name, *lines) writes that user's authorized_keys file; returns the checker."""
    directory = tmp_path / "authorized_keys"
    directory.mkdir()
    authorizer = KeyAuthorizer(AuthorizedKeysFiles(f"{directory}/%u"), TrustedCAs(None), RevokedKeys(None), Clock())
    checker = PublicKeyChecker(authorizer)

    def write(name: str, *lines: str) -> PublicKeyChecker:
        path = directory / name
        path.write_text("".join(line + "\n" for line in lines))
        path.chmod(0o600)
        return checker

    return write


def blob_of(pair) -> bytes:
    return base64.b64decode(pair.public_line.split()[1])


def credentials(pair, alg: bytes, *, user: bytes = b"alice", data: bytes = SIG_DATA, signature=..., sign_as=None):
    """SSHPrivateKey credentials for `pair`; signature=... means 'sign data properly as alg'."""
    if signature is ...:
        signature = Key.fromFile(str(pair.private)).sign(data, signatureType=sign_as or alg)
    return SSHPrivateKey(user, alg, blob_of(pair), SIG_DATA, signature)


@pytest.mark.parametrize(
    ("kind", "alg", "key_type"),
    [
        ("ed25519", b"ssh-ed25519", "ssh-ed25519"),
        ("ecdsa256", b"ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256"),
        ("ecdsa384", b"ecdsa-sha2-nistp384", "ecdsa-sha2-nistp384"),
        ("ecdsa521", b"ecdsa-sha2-nistp521", "ecdsa-sha2-nistp521"),
        ("rsa", b"rsa-sha2-256", "ssh-rsa"),
        ("rsa", b"rsa-sha2-512", "ssh-rsa"),
    ],
)
def test_valid_signature_logs_in_with_openssh_fingerprint(users, ssh_key, sync, kind, alg, key_type) -> None:
    pair = ssh_key(kind)
    checker = users("alice", pair.public_line)
    identity = sync.success(checker.requestAvatarId(credentials(pair, alg)))
    assert identity == Identity(user="alice", method="publickey", key_type=key_type, fingerprint=pair.fingerprint)


def test_key_among_several_lines_is_found(users, ssh_key, sync) -> None:
    pair = ssh_key("rsa")
    checker = users("alice", "# admin keys", ssh_key("ed25519").public_line, "", pair.public_line)
    identity = sync.success(checker.requestAvatarId(credentials(pair, b"rsa-sha2-512")))
    assert identity.fingerprint == pair.fingerprint


def test_sha1_ssh_rsa_is_refused_even_with_a_valid_signature(users, ssh_key, sync) -> None:
    pair = ssh_key("rsa")
    checker = users("alice", pair.public_line)
    creds = credentials(pair, b"ssh-rsa")
    assert Key.fromFile(str(pair.public)).verify(creds.signature, creds.sigData)  # the signature itself is fine
    failure = sync.failure(checker.requestAvatarId(creds))
    assert failure.check(UnauthorizedLogin)
    assert "ssh-rsa" in failure.getErrorMessage()


def test_sha1_ssh_rsa_probe_gets_no_pk_ok(users, ssh_key, sync) -> None:
    pair = ssh_key("rsa")
    checker = users("alice", pair.public_line)
    failure = sync.failure(checker.requestAvatarId(credentials(pair, b"ssh-rsa", signature=None)))
    assert failure.check(UnauthorizedLogin)
    assert not failure.check(ValidPublicKey)


def test_a_refused_signature_algorithm_is_quoted_as_sent_and_escaped_once(users, ssh_key, sync) -> None:
    """The algorithm went into the reason escaped, and the reason was escaped again by whoever
    wrote it (log line, audit record): a backslash showed as four, U+200B as \\\\u200b."""
    pair = ssh_key("rsa")
    checker = users("alice", pair.public_line)
    algorithm = "rsa-sha2-256\\\u200b".encode() + b"\xff"  # and a byte that is no UTF-8
    failure = sync.failure(checker.requestAvatarId(credentials(pair, algorithm, signature=None)))
    assert failure.getErrorMessage() == "signature algorithm rsa-sha2-256\\\u200b\udcff not accepted"
    assert sanitise(failure.getErrorMessage()) == "signature algorithm rsa-sha2-256\\\\\\u200b\\xff not accepted"


def test_ssh_dss_is_refused(users, ssh_key, sync) -> None:
    pair = ssh_key("dsa")
    checker = users("alice", pair.public_line)
    failure = sync.failure(checker.requestAvatarId(credentials(pair, b"ssh-dss")))
    assert failure.check(UnauthorizedLogin)


def test_small_rsa_key_is_refused(users, ssh_key, sync) -> None:
    pair = ssh_key("rsa1024")
    checker = users("alice", pair.public_line)
    failure = sync.failure(checker.requestAvatarId(credentials(pair, b"rsa-sha2-256")))
    assert failure.check(UnauthorizedLogin)
    assert "1024 bits is too small" in failure.getErrorMessage()


def test_probe_for_authorized_key_gets_pk_ok(users, ssh_key, sync) -> None:
    pair = ssh_key("ed25519")
    checker = users("alice", pair.public_line)
    failure = sync.failure(checker.requestAvatarId(credentials(pair, b"ssh-ed25519", signature=None)))
    assert failure.check(ValidPublicKey)


def test_probe_for_unknown_key_gets_no_pk_ok(users, ssh_key, sync) -> None:
    checker = users("alice", ssh_key("ed25519").public_line)
    failure = sync.failure(
        checker.requestAvatarId(credentials(ssh_key("ecdsa256"), b"ecdsa-sha2-nistp256", signature=None))
    )
    assert failure.check(UnauthorizedLogin)
    assert not failure.check(ValidPublicKey)


@pytest.mark.parametrize("user", [b"bob", b"../authorized_keys/alice", b"\xff\xfe"])
def test_probe_for_other_or_bad_user_gets_no_pk_ok(users, ssh_key, sync, user: bytes) -> None:
    pair = ssh_key("ed25519")
    checker = users("alice", pair.public_line)
    failure = sync.failure(checker.requestAvatarId(credentials(pair, b"ssh-ed25519", user=user, signature=None)))
    assert failure.check(UnauthorizedLogin)
    assert not failure.check(ValidPublicKey)


def test_unknown_key_with_valid_signature_is_refused(users, ssh_key, sync) -> None:
    checker = users("alice", ssh_key("ed25519").public_line)
    failure = sync.failure(checker.requestAvatarId(credentials(ssh_key("ed25519-other"), b"ssh-ed25519")))
    assert failure.check(UnauthorizedLogin)
    assert failure.getErrorMessage() == "key not in authorized_keys"


@pytest.mark.parametrize(("kind", "alg"), [("ed25519", b"ssh-ed25519"), ("rsa", b"rsa-sha2-256")])
def test_signature_over_other_data_is_refused(users, ssh_key, sync, kind: str, alg: bytes) -> None:
    pair = ssh_key(kind)
    checker = users("alice", pair.public_line)
    failure = sync.failure(checker.requestAvatarId(credentials(pair, alg, data=b"some other session")))
    assert failure.check(UnauthorizedLogin)
    assert failure.getErrorMessage() == "bad signature"


def test_signature_by_another_key_is_refused(users, ssh_key, sync) -> None:
    pair, other = ssh_key("ed25519"), ssh_key("ed25519-other")
    checker = users("alice", pair.public_line)
    forged = Key.fromFile(str(other.private)).sign(SIG_DATA)
    failure = sync.failure(checker.requestAvatarId(credentials(pair, b"ssh-ed25519", signature=forged)))
    assert failure.check(UnauthorizedLogin)


def test_signature_type_not_matching_alg_name_is_refused(users, ssh_key, sync) -> None:
    pair = ssh_key("rsa")
    checker = users("alice", pair.public_line)
    creds = credentials(pair, b"rsa-sha2-512", sign_as=b"rsa-sha2-256")
    failure = sync.failure(checker.requestAvatarId(creds))
    assert failure.check(UnauthorizedLogin)
    assert failure.getErrorMessage() == "signature type does not match the algorithm"


def test_sha1_signature_under_rsa_sha2_name_is_refused(users, ssh_key, sync) -> None:
    pair = ssh_key("rsa")
    checker = users("alice", pair.public_line)
    failure = sync.failure(checker.requestAvatarId(credentials(pair, b"rsa-sha2-256", sign_as=b"ssh-rsa")))
    assert failure.check(UnauthorizedLogin)


@pytest.mark.parametrize(
    "signature",
    [b"", b"\x00", NS(b"ssh-ed25519"), NS(b"ssh-ed25519") + b"\x00\x00\x00\x40short"],
    ids=["empty", "one-byte", "type-only", "truncated-body"],
)
def test_malformed_signature_is_refused_as_unauthorized(users, ssh_key, sync, signature: bytes) -> None:
    pair = ssh_key("ed25519")
    checker = users("alice", pair.public_line)
    failure = sync.failure(checker.requestAvatarId(credentials(pair, b"ssh-ed25519", signature=signature)))
    assert failure.check(UnauthorizedLogin), failure.getTraceback()


def test_key_on_a_line_with_an_unknown_option_is_refused(users, ssh_key, sync) -> None:
    pair = ssh_key("ed25519")
    checker = users("alice", f'no-pty,tunnel-device="tun0" {pair.public_line}')
    failure = sync.failure(checker.requestAvatarId(credentials(pair, b"ssh-ed25519")))
    assert failure.check(UnauthorizedLogin)
    assert failure.getErrorMessage() == "authorized_keys line refused: unknown key option 'tunnel-device'"


def test_key_on_a_line_with_enforced_options_logs_in_on_those_terms(users, ssh_key, sync) -> None:
    pair = ssh_key("ed25519")
    checker = users("alice", f'command="lastlog -n 5",no-pty {pair.public_line}')
    identity = sync.success(checker.requestAvatarId(credentials(pair, b"ssh-ed25519")))
    assert identity.grant.forced_command == "lastlog -n 5" and identity.grant.pty is False


def test_key_on_a_refused_line_gets_no_pk_ok(users, ssh_key, sync) -> None:
    pair = ssh_key("ed25519")
    checker = users("alice", f'environment="A=b" {pair.public_line}')
    failure = sync.failure(checker.requestAvatarId(credentials(pair, b"ssh-ed25519", signature=None)))
    assert failure.check(UnauthorizedLogin)
    assert not failure.check(ValidPublicKey)


def test_corrupt_line_does_not_lock_out_the_good_key(users, ssh_key, sync) -> None:
    pair = ssh_key("ed25519")
    corrupt = "ssh-rsa " + base64.b64encode(NS(b"ssh-rsa") + b"\x00\x00").decode()
    checker = users("alice", corrupt, pair.public_line)
    identity = sync.success(checker.requestAvatarId(credentials(pair, b"ssh-ed25519")))
    assert identity.fingerprint == pair.fingerprint


def test_malformed_public_key_blob_is_refused(users, ssh_key, sync) -> None:
    checker = users("alice", ssh_key("ed25519").public_line)
    creds = SSHPrivateKey(b"alice", b"ssh-ed25519", b"not a key blob", SIG_DATA, None)
    failure = sync.failure(checker.requestAvatarId(creds))
    assert failure.check(UnauthorizedLogin)
    assert failure.getErrorMessage().startswith("malformed public key (")


# A decision remembered from an earlier call (the key probe, an earlier login) for the same parse
# of the file: used again only with the revocation list, expiry-time and the peer checked again.


def _authorizer(tmp_path: Path, *lines: str, revoked: str | None = None) -> tuple[KeyAuthorizer, Path, Clock]:
    directory = tmp_path / "keys"
    directory.mkdir(exist_ok=True)
    path = directory / "alice"
    path.write_text("".join(line + "\n" for line in lines))
    path.chmod(0o600)
    clock = Clock()
    authorizer = KeyAuthorizer(AuthorizedKeysFiles(f"{directory}/%u"), TrustedCAs(None), RevokedKeys(revoked), clock)
    return authorizer, path, clock


def test_an_unchanged_file_gives_the_same_decision_without_deciding_again(tmp_path: Path, ssh_key) -> None:
    pair = ssh_key("ed25519")
    authorizer, _, _ = _authorizer(tmp_path, pair.public_line)
    first = authorizer.authorize("alice", b"ssh-ed25519", blob_of(pair), "10.0.0.1")
    assert authorizer.authorize("alice", b"ssh-ed25519", blob_of(pair), "10.0.0.1") is first


def test_a_key_that_expires_between_two_calls_is_refused_at_the_second(tmp_path: Path, ssh_key) -> None:
    pair = ssh_key("ed25519")
    authorizer, _, clock = _authorizer(tmp_path, f'expiry-time="197001010001Z" {pair.public_line}')
    authorizer.authorize("alice", b"ssh-ed25519", blob_of(pair), "10.0.0.1")
    clock.advance(61)
    with pytest.raises(UnauthorizedLogin, match="key expired"):
        authorizer.authorize("alice", b"ssh-ed25519", blob_of(pair), "10.0.0.1")


def test_after_an_expired_first_line_the_next_line_for_the_key_decides(tmp_path: Path, ssh_key) -> None:
    pair = ssh_key("ed25519")
    authorizer, _, clock = _authorizer(
        tmp_path, f'expiry-time="197001010001Z" {pair.public_line}', f'command="lastlog" {pair.public_line}'
    )
    assert authorizer.authorize("alice", b"ssh-ed25519", blob_of(pair), None).identity.grant.forced_command is None
    clock.advance(61)
    later = authorizer.authorize("alice", b"ssh-ed25519", blob_of(pair), None)
    assert later.identity.grant.forced_command == "lastlog"


def test_a_decision_for_one_address_is_not_another_address_s(tmp_path: Path, ssh_key) -> None:
    pair = ssh_key("ed25519")
    authorizer, _, _ = _authorizer(tmp_path, f'from="10.0.0.1" {pair.public_line}')
    authorizer.authorize("alice", b"ssh-ed25519", blob_of(pair), "10.0.0.1")
    with pytest.raises(UnauthorizedLogin, match=r"from= does not allow 10\.0\.0\.2"):
        authorizer.authorize("alice", b"ssh-ed25519", blob_of(pair), "10.0.0.2")


def test_a_key_revoked_between_two_calls_is_refused_at_the_second(tmp_path: Path, ssh_key) -> None:
    pair = ssh_key("ed25519")
    revoked = tmp_path / "revoked"
    revoked.write_text("")
    revoked.chmod(0o600)
    authorizer, _, _ = _authorizer(tmp_path, pair.public_line, revoked=str(revoked))
    authorizer.authorize("alice", b"ssh-ed25519", blob_of(pair), None)
    revoked.write_text(pair.public_line + "\n")
    with pytest.raises(UnauthorizedLogin, match="revoked"):
        authorizer.authorize("alice", b"ssh-ed25519", blob_of(pair), None)


def test_an_edited_file_is_decided_again(tmp_path: Path, ssh_key) -> None:
    pair = ssh_key("ed25519")
    authorizer, path, _ = _authorizer(tmp_path, pair.public_line)
    assert authorizer.authorize("alice", b"ssh-ed25519", blob_of(pair), None).identity.grant.forced_command is None
    path.write_text(f'command="lastlog" {pair.public_line}\n')
    later = authorizer.authorize("alice", b"ssh-ed25519", blob_of(pair), None)
    assert later.identity.grant.forced_command == "lastlog"
    path.write_text(ssh_key("rsa").public_line + "\n")
    with pytest.raises(UnauthorizedLogin, match="key not in authorized_keys"):
        authorizer.authorize("alice", b"ssh-ed25519", blob_of(pair), None)
