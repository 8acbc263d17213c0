"""The client's address reaches the checkers in the credentials (cred's own channel, rather than an
attribute set on Conch's credentials). The connection reaching the realm as the login's mind is
what the in-memory audit tests see: each command's record has the connection's id and peer."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from twisted.conch.ssh.keys import Key
from twisted.cred.credentials import SSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.task import Clock

from conchcmd.auth import KeyAuthorizer, PublicKeyChecker
from conchcmd.authorized_keys import AuthorizedKeysFiles
from conchcmd.certs import RevokedKeys, TrustedCAs
from conchcmd.peercreds import PeerSSHPrivateKey, PeerUsernamePassword, peer_host_of

SIGNED = b"\x00\x00\x00\x04sess-and-request"


@pytest.fixture
def checker(tmp_path: Path, ssh_key) -> tuple[PublicKeyChecker, object]:
    """alice may log in with her key from 10.0.0.0/8 only."""
    pair = ssh_key("ed25519")
    (tmp_path / "alice").write_text(f'from="10.0.0.0/8" {pair.public_line}\n')
    (tmp_path / "alice").chmod(0o600)
    authorizer = KeyAuthorizer(AuthorizedKeysFiles(f"{tmp_path}/%u"), TrustedCAs(None), RevokedKeys(None), Clock())
    return PublicKeyChecker(authorizer), pair


def signed(pair, peer_host: str | None, cls=PeerSSHPrivateKey):
    blob = base64.b64decode(pair.public_line.split()[1])
    signature = Key.fromFile(str(pair.private)).sign(SIGNED, signatureType=b"ssh-ed25519")
    args = (b"alice", b"ssh-ed25519", blob, SIGNED, signature)
    return cls(*args, peer_host) if cls is PeerSSHPrivateKey else cls(*args)


def test_the_address_in_the_credentials_decides_from(checker, sync) -> None:
    check, pair = checker
    assert sync.success(check.requestAvatarId(signed(pair, "10.1.2.3"))).user == "alice"
    refused = sync.failure(check.requestAvatarId(signed(pair, "192.0.2.7")))
    assert refused.check(UnauthorizedLogin) and "from= does not allow 192.0.2.7" in refused.getErrorMessage()


def test_credentials_without_an_address_do_not_pass_from(checker, sync) -> None:
    """Conch's own SSHPrivateKey carries no address: a from= line cannot be satisfied by it."""
    check, pair = checker
    refused = sync.failure(check.requestAvatarId(signed(pair, None, cls=SSHPrivateKey)))
    assert "from= does not allow None" in refused.getErrorMessage()
    assert peer_host_of(signed(pair, None, cls=SSHPrivateKey)) is None
    assert peer_host_of(PeerUsernamePassword(b"alice", b"pw", "::1")) == "::1"

