"""`conchcmd deluser` against a running (in-memory) server: the removed key is refused at the
next login, without a reload, while the user's other keys still log in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.keys import ecdsa_key, ed25519_key, rsa_key
from support.serverfiles import toml_text
from support.world import World
from twisted.conch.ssh import userauth

from conchcmd.edge.cli import main
from conchcmd.policy.authorized_keys import fingerprint

SUCCESS, FAILURE = userauth.MSG_USERAUTH_SUCCESS, userauth.MSG_USERAUTH_FAILURE


@pytest.fixture(autouse=True)
def no_system_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """deluser logs to the machine's syslog: not from tests."""
    from conchcmd.edge import usercmds

    monkeypatch.setattr(usercmds.syslog, "syslog", lambda *a: None)


def write_config(world: World, tmp_path: Path) -> Path:
    path = tmp_path / "conchcmd.toml"
    audit = tmp_path / "audit.jsonl"
    path.write_text(toml_text({"authorized_keys": world.config.authorized_keys, "audit_log": str(audit)}))
    return path


def test_a_removed_key_is_refused_at_the_next_login(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert world.connect().login(b"admin", ed25519_key()) == SUCCESS  # the server has read (and cached) the file
    config = write_config(world, tmp_path)
    gone = fingerprint(ed25519_key().public().blob())
    assert main(["deluser", "--config", str(config), "admin", gone]) == 0
    assert world.connect().login(b"admin", ed25519_key()) == FAILURE
    assert world.connect().login(b"admin", rsa_key(), b"rsa-sha2-512") == SUCCESS
    assert world.connect().login(b"admin", ecdsa_key()) == SUCCESS
    [record] = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert (record["event"], record["user"], record["fingerprints"]) == ("deluser", "admin", [gone])
    capsys.readouterr()


def test_deleting_all_keys_locks_the_user_out(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert world.connect().login(b"admin", rsa_key(), b"rsa-sha2-512") == SUCCESS
    assert main(["deluser", "--config", str(write_config(world, tmp_path)), "admin"]) == 0
    assert world.connect().login(b"admin", rsa_key(), b"rsa-sha2-512") == FAILURE
    assert world.connect().login(b"admin", ed25519_key()) == FAILURE
    capsys.readouterr()
