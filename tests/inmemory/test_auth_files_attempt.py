"""One connection's authentication reads authorized_keys once while the file is unchanged
(AttemptFiles): a file changed between the key probe and the signature is read and checked again,
and every new connection checks ownership and modes again."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from support.keys import authorized_line, ed25519_key
from support.sshclient import result_of
from support.world import World
from twisted.conch.ssh import userauth

SUCCESS, FAILURE, PK_OK = userauth.MSG_USERAUTH_SUCCESS, userauth.MSG_USERAUTH_FAILURE, 60


def admin_file(world: World) -> Path:
    return Path(world.config.authorized_keys.replace("%u", "admin"))


def loosen(path: Path) -> None:
    os.chmod(path, 0o620)


def drop_the_key(path: Path) -> None:
    path.write_text(authorized_line(ed25519_key(41)))  # same inode, another key


def swap_keeping_size_and_mtime(path: Path) -> None:
    """Another key of the same line length, the old mtime put back (as `cp -p` would): only the
    ctime tells the file changed."""
    st = path.stat()
    old = path.read_text()
    new = authorized_line(ed25519_key(42)).rstrip("\n")
    path.write_text(new + " " * (len(old) - len(new) - 1) + "\n")
    assert path.stat().st_size == st.st_size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def replace_by_rename(path: Path) -> None:
    fresh = path.with_name("admin.new")
    fresh.write_text(authorized_line(ed25519_key(43)))
    os.chmod(fresh, 0o600)
    os.replace(fresh, path)


@pytest.mark.parametrize("change", [loosen, drop_the_key, swap_keeping_size_and_mtime, replace_by_rename])
def test_a_file_changed_after_the_key_probe_is_read_again_for_the_signature(
    world: World, change: Callable[[Path], None]
) -> None:
    conn = world.connect()
    auth = conn.start_auth(b"admin")
    probe = auth.probe(ed25519_key())
    conn.flush()
    assert result_of(probe)[0] == PK_OK
    change(admin_file(world))
    assert conn.login(b"admin", ed25519_key()) == FAILURE
    refusal = [e for e in world.audit.of("auth") if not e["ok"]][-1]
    assert refusal["reason"] == "key not in authorized_keys"


def test_an_unchanged_file_logs_in_after_the_probe(world: World) -> None:
    conn = world.connect()
    auth = conn.start_auth(b"admin")
    probe = auth.probe(ed25519_key())
    conn.flush()
    assert result_of(probe)[0] == PK_OK
    assert conn.login(b"admin", ed25519_key()) == SUCCESS


def test_each_connection_checks_the_directories_again(world: World) -> None:
    """The file itself unchanged, its directory made group-writable: the next connection's
    login is refused (the check of the directory chain is not carried from one connection to
    the next)."""
    assert world.connect().login(b"admin", ed25519_key()) == SUCCESS
    directory = admin_file(world).parent
    os.chmod(directory, 0o775)
    try:
        assert world.connect().login(b"admin", ed25519_key()) == FAILURE
    finally:
        os.chmod(directory, 0o755)
    assert world.connect().login(b"admin", ed25519_key()) == SUCCESS
