"""The hint `serve` prints at startup when nobody can log in yet ("No users are configured yet")."""

from __future__ import annotations

from pathlib import Path

from conchcmd.core.config import parse_config
from conchcmd.edge.service import no_users_hint


def test_without_user_files_the_hint_says_how_to_add_one(tmp_path: Path) -> None:
    hint = no_users_hint(parse_config("", base_dir=tmp_path), 2222)
    assert hint is not None and hint.startswith("No users are configured yet.")
    assert "ssh -p 2222 admin@localhost" in hint


def test_a_user_file_ends_the_hint(tmp_path: Path) -> None:
    (tmp_path / "keys" / "authorized_keys").mkdir(parents=True)
    (tmp_path / "keys" / "authorized_keys" / "admin").write_text("")
    assert no_users_hint(parse_config("", base_dir=tmp_path), 2222) is None


def test_with_a_trusted_user_ca_there_is_no_hint(tmp_path: Path) -> None:
    """A fleet host that trusts a CA has users (whoever holds a certificate) and no key files."""
    config = parse_config('trusted_user_ca_keys = "user_ca.pub"', base_dir=tmp_path)
    assert no_users_hint(config, 2222) is None
