"""conchcmd.wire.hostkeys: creating host keys on first start, and refusing private keys others can read."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from twisted.conch.ssh.keys import Key

from conchcmd.wire.hostkeys import HostKeyError, ensure_host_keys, load_host_keys


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ensure_creates_an_ed25519_key_0600_with_its_pub(tmp_path: Path, keygen_fingerprint) -> None:
    keys = tmp_path / "keys"
    created = ensure_host_keys(keys)
    private, public = keys / "ssh_host_ed25519_key", keys / "ssh_host_ed25519_key.pub"
    assert created == [private]
    assert mode(private) == 0o600
    assert public.exists()
    assert private.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert Key.fromFile(str(public)) == Key.fromFile(str(private)).public()
    # OpenSSH can read both files, and they are the same key.
    assert keygen_fingerprint(private) == keygen_fingerprint(public)


def test_ensure_is_idempotent(tmp_path: Path) -> None:
    ensure_host_keys(tmp_path)
    before = (tmp_path / "ssh_host_ed25519_key").read_bytes()
    assert ensure_host_keys(tmp_path) == []
    assert (tmp_path / "ssh_host_ed25519_key").read_bytes() == before


def test_ensure_ignores_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        ensure_host_keys(tmp_path)
    finally:
        os.umask(old)
    assert mode(tmp_path / "ssh_host_ed25519_key") == 0o600


def test_load_returns_the_ed25519_key(tmp_path: Path) -> None:
    ensure_host_keys(tmp_path)
    loaded = load_host_keys(tmp_path)
    assert list(loaded.private) == [b"ssh-ed25519"]
    assert loaded.public[b"ssh-ed25519"] == Key.fromFile(str(tmp_path / "ssh_host_ed25519_key.pub"))
    assert loaded.files == (tmp_path / "ssh_host_ed25519_key",)
    assert not loaded.private[b"ssh-ed25519"].isPublic()


@pytest.mark.parametrize("bad_mode", [0o644, 0o640, 0o604, 0o660, 0o700 | 0o004, 0o620, 0o602])  # read or write
def test_load_refuses_a_private_key_others_can_access(tmp_path: Path, bad_mode: int) -> None:
    ensure_host_keys(tmp_path)
    private = tmp_path / "ssh_host_ed25519_key"
    private.chmod(bad_mode)
    with pytest.raises(HostKeyError) as info:
        load_host_keys(tmp_path)
    message = str(info.value)
    assert f"chmod 600 {private}" in message
    assert f"{bad_mode:04o}" in message


def test_load_accepts_0400(tmp_path: Path) -> None:
    ensure_host_keys(tmp_path)
    (tmp_path / "ssh_host_ed25519_key").chmod(0o400)
    assert list(load_host_keys(tmp_path).private) == [b"ssh-ed25519"]


def test_load_without_keys_says_how_to_make_them(tmp_path: Path) -> None:
    with pytest.raises(HostKeyError, match=r"no host key in .*; run `conchcmd keygen`"):
        load_host_keys(tmp_path)


def test_load_refuses_a_corrupt_key_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "ssh_host_ed25519_key"
    path.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\ngarbage\n-----END OPENSSH PRIVATE KEY-----\n")
    path.chmod(0o600)
    with pytest.raises(HostKeyError, match=f"cannot load host key {path}"):
        load_host_keys(tmp_path)


def test_rsa_too_creates_an_rsa_key_and_load_returns_both(tmp_path: Path) -> None:
    created = ensure_host_keys(tmp_path, rsa_too=True)
    assert created == [tmp_path / "ssh_host_ed25519_key", tmp_path / "ssh_host_rsa_key"]
    assert mode(tmp_path / "ssh_host_rsa_key") == 0o600
    loaded = load_host_keys(tmp_path)
    assert sorted(loaded.private) == [b"ssh-ed25519", b"ssh-rsa"]
    assert loaded.private[b"ssh-rsa"].size() >= 3072
    assert loaded.public[b"ssh-rsa"] == Key.fromFile(str(tmp_path / "ssh_host_rsa_key.pub"))
