"""The parsed-file caches (authorized_keys, revoked_keys, trusted_user_ca_keys) notice every
replacement, even one that keeps the old file's size and mtime (`cp -p`, `install -p`,
`rsync -t`): a revocation that the server never re-reads would fail open."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.keys import authorized_line, ed25519_key
from twisted.conch.ssh.keys import Key

from conchcmd.policy.authorized_keys import AuthorizedKeysFiles
from conchcmd.policy.certs import CertificateRefused, RevokedKeys, TrustedCAs


def replace_keeping_size_and_mtime(path: Path, text: str) -> None:
    """Write `text` (the same length as the file's) to a new file renamed over `path`, with the
    old file's atime and mtime, as `cp -p` or `rsync -t` would leave it."""
    old = path.stat()
    assert len(text.encode()) == old.st_size
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(text)
    fresh.chmod(0o600)
    os.utime(fresh, ns=(old.st_atime_ns, old.st_mtime_ns))
    fresh.rename(path)
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (old.st_size, old.st_mtime_ns)


def test_revoked_keys_re_read_after_a_same_size_same_mtime_replacement(tmp_path: Path) -> None:
    path = tmp_path / "revoked"
    path.write_text("serial: 12\n")
    path.chmod(0o600)
    revoked = RevokedKeys(str(path))
    revoked.check_key(b"x")  # loads the list
    assert revoked.serials == ((12, 12),)
    replace_keeping_size_and_mtime(path, "serial: 13\n")
    revoked.check_key(b"x")
    assert revoked.serials == ((13, 13),)


def test_a_rewrite_in_place_with_the_mtime_set_back_is_noticed(tmp_path: Path) -> None:
    path = tmp_path / "revoked"
    path.write_text("serial: 12\n")
    path.chmod(0o600)
    revoked = RevokedKeys(str(path))
    revoked.check_key(b"x")
    old = path.stat()
    path.write_text("serial: 14\n")  # same inode, same size
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
    revoked.check_key(b"x")
    assert revoked.serials == ((14, 14),)


def test_trusted_cas_re_read_after_a_same_size_same_mtime_replacement(tmp_path: Path) -> None:
    first, second = ed25519_key(1), ed25519_key(2)
    path = tmp_path / "cas"
    path.write_text(authorized_line(first))
    path.chmod(0o600)
    cas = TrustedCAs(str(path))
    assert cas.contains(Key.fromString(authorized_line(first).encode()).blob())
    replace_keeping_size_and_mtime(path, authorized_line(second))
    assert not cas.contains(Key.fromString(authorized_line(first).encode()).blob())
    assert cas.contains(Key.fromString(authorized_line(second).encode()).blob())


def test_authorized_keys_re_read_after_a_same_size_same_mtime_replacement(tmp_path: Path) -> None:
    first, second = ed25519_key(1), ed25519_key(2)
    users = tmp_path / "users"
    users.mkdir()
    path = users / "alice"
    path.write_text(authorized_line(first))
    path.chmod(0o600)
    files = AuthorizedKeysFiles(f"{users}/%u")
    [entry] = files.entries_for("alice")
    replace_keeping_size_and_mtime(path, authorized_line(second))
    [fresh] = files.entries_for("alice")
    assert fresh.blob != entry.blob


def test_a_revoked_serial_added_by_cp_p_refuses_at_once(tmp_path: Path) -> None:
    """The attack the cache key protects against, end to end at this layer: nothing revoked,
    then the operator installs a list revoking serial 7 with `cp -p`."""
    path = tmp_path / "revoked"
    path.write_text("serial: 99\n")
    path.chmod(0o600)
    revoked = RevokedKeys(str(path))
    revoked.check_key(b"x")
    replace_keeping_size_and_mtime(path, "serial: 07\n")
    revoked.check_key(b"x")
    assert any(low <= 7 <= high for low, high in revoked.serials)
    with pytest.raises(CertificateRefused):
        path.write_text("garbage line\n")  # and an unreadable list still fails closed
        revoked.check_key(b"x")
