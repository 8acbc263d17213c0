"""The client's address through cred: the credentials carry it to the key checker (from=), the
login's mind carries it to the realm (the avatar's peer, in its logs and audit records)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from twisted.conch.error import ValidPublicKey
from twisted.conch.interfaces import IConchUser
from twisted.cred.credentials import SSHPrivateKey
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock

from conchcmd.commands.framework import CommandTable, Dispatcher
from conchcmd.core.audit import MemoryAuditLog
from conchcmd.core.peer import Peer, PeerSSHPrivateKey, format_peer
from conchcmd.policy.auth import Identity, KeyAuthorizer, KeyRefused, PublicKeyChecker
from conchcmd.policy.authorized_keys import AuthorizedKeysFiles
from conchcmd.policy.certs import RevokedKeys, TrustedCAs
from conchcmd.session.channel import ShellSettings
from conchcmd.session.realm import CommandRealm


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (IPv4Address("TCP", "192.0.2.7", 40000), Peer("192.0.2.7", "192.0.2.7:40000")),
        (IPv6Address("TCP", "2001:db8::1", 22), Peer("2001:db8::1", "[2001:db8::1]:22")),
        (UNIXAddress("/run/conchcmd.sock"), Peer(None, format_peer(UNIXAddress("/run/conchcmd.sock")))),
    ],
)
def test_peer_of_an_address(address: object, expected: Peer) -> None:
    assert Peer.of(address) == expected  # type: ignore[arg-type]


def _checker(tmp_path: Path, line: str) -> PublicKeyChecker:
    (tmp_path / "alice").write_text(line + "\n")
    (tmp_path / "alice").chmod(0o600)
    files = AuthorizedKeysFiles(f"{tmp_path}/%u")
    return PublicKeyChecker(KeyAuthorizer(files, TrustedCAs(None), RevokedKeys(None), Clock()))


def test_the_credentials_carry_the_peer_to_from(tmp_path: Path, ssh_key, sync) -> None:
    pair = ssh_key("ed25519")
    checker = _checker(tmp_path, 'from="10.0.0.0/8" ' + pair.public_line)
    blob = base64.b64decode(pair.public_line.split()[1])
    inside = PeerSSHPrivateKey(b"alice", b"ssh-ed25519", blob, None, None, Peer("10.1.2.3", "10.1.2.3:5"))
    outside = PeerSSHPrivateKey(b"alice", b"ssh-ed25519", blob, None, None, Peer("192.0.2.1", "192.0.2.1:5"))
    unknown = SSHPrivateKey(b"alice", b"ssh-ed25519", blob, None, None)  # no address: from= cannot match
    # A probe without signature: the key is acceptable (ValidPublicKey) or refused (KeyRefused).
    assert isinstance(sync.failure(checker.requestAvatarId(inside)).value, ValidPublicKey)
    refused = sync.failure(checker.requestAvatarId(outside)).value
    assert isinstance(refused, KeyRefused) and "from= does not allow 192.0.2.1" in str(refused)
    assert isinstance(sync.failure(checker.requestAvatarId(unknown)).value, KeyRefused)


def test_the_mind_carries_the_peer_to_the_avatar() -> None:
    clock = Clock()
    realm = CommandRealm(Dispatcher(CommandTable(), MemoryAuditLog(), clock), clock, ShellSettings("h"))
    identity = Identity("alice", "publickey", "ssh-ed25519", "SHA256:x")
    _, avatar, _ = realm.requestAvatar(identity, Peer("2001:db8::1", "[2001:db8::1]:22"), IConchUser)
    assert avatar.peer == "[2001:db8::1]:22"
    _, anonymous, _ = realm.requestAvatar(identity, None, IConchUser)
    assert anonymous.peer == "?"
