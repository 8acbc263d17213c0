"""`conchcmd doctor`'s own warnings (running as root, `/` among the roots) and its fixes: a fix that
names a conchcmd command acts on the same configuration wherever it is run, and `keygen`/`adduser`
say which configuration they used and where they wrote."""

from __future__ import annotations

import io
import os
import shlex
from pathlib import Path

import pytest
from support.keys import authorized_line, ed25519_key

from conchcmd.core.config import load_config
from conchcmd.edge import cli
from conchcmd.edge.doctor import OK, PROBLEM, WARNING, Finding, Invocation, examine


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A configuration directory, with a space in its name, holding a usable setup except what a
    test leaves out (no host key, no users: the doctor's hints then name conchcmd commands)."""
    base = tmp_path / "conch site"
    (base / "root").mkdir(parents=True)
    (base / "syslog").write_text("a log line\n")
    write_config(base)
    return base


def write_config(base: Path, roots: str = "", tables: str = "") -> Path:
    config = base / "conchcmd.toml"
    roots = roots or f'["{base / "root"}"]'
    config.write_text(f'[lastlog]\npath = "{base / "syslog"}"\n[comphash]\nroots = {roots}\n{tables}')
    return config


def doctor(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    status = cli.main(["doctor", *args], out=out)
    return status, out.getvalue()


def findings(base: Path, *, euid: int = 1000, cwd: Path | None = None, config: Path | None = None) -> list[Finding]:
    loaded = load_config(config or base / "conchcmd.toml", cwd=cwd or base)
    return examine(loaded, Invocation(euid=euid, cwd=cwd or base))


def fix_for(found: list[Finding], words: str) -> str:
    (finding,) = [f for f in found if words in f.message]
    return finding.fix


def hinted_command(fix: str) -> list[str]:
    """The conchcmd command line quoted in a fix (between backticks), as a shell would split it."""
    command = fix.split("`")[1]
    return shlex.split(command)


# -- running as root --------------------------------------------------------------------------------


def test_root_gets_a_warning_with_a_fix_an_unprivileged_user_does_not(site: Path) -> None:
    as_root = [f for f in findings(site, euid=0) if "running as root" in f.message]
    assert [f.level for f in as_root] == [WARNING]
    assert "serve should not" in as_root[0].message
    assert "useradd --system" in as_root[0].fix and "User=" in as_root[0].fix
    config = shlex.quote(str(site / "conchcmd.toml"))
    assert (
        f"`setpriv --reuid=conchcmd --regid=conchcmd --groups=adm,systemd-journal conchcmd doctor --config {config}`"
        in as_root[0].fix
    )
    assert not [f for f in findings(site, euid=1000) if "running as" in f.message]


@pytest.mark.skipif(os.geteuid() != 0, reason="shows what root sees; the examine() tests cover other users")
def test_doctor_run_as_root_warns_but_still_says_all_well_without_problems(site: Path) -> None:
    (site / "keys" / "authorized_keys").mkdir(parents=True, mode=0o700)
    cli.main(["keygen", "--config", str(site / "conchcmd.toml")], out=io.StringIO())
    user = site / "keys" / "authorized_keys" / "alice"
    user.write_text(authorized_line(ed25519_key()))
    user.chmod(0o600)
    status, report = doctor("--config", str(site / "conchcmd.toml"))
    assert status == 0 and report.endswith("all well\n"), report
    assert "warning  running as root: serve should not" in report


# -- / among the roots ----------------------------------------------------------------------------


@pytest.mark.parametrize("root", ["/", "//", "/.", "/etc/.."])
def test_the_whole_filesystem_as_a_root_is_a_warning(site: Path, root: str) -> None:
    write_config(site, roots=f'["{root}"]')
    found = findings(site)
    (warning,) = [f for f in found if "comphash roots include" in f.message]
    assert warning.level == WARNING
    assert warning.message.startswith(f"comphash roots include {root}: any file the server's user can read")
    assert "[comphash] roots" in warning.fix
    assert PROBLEM not in {f.level for f in found if "root" in f.message}


def test_a_root_that_is_a_symlink_to_slash_is_the_whole_filesystem(site: Path) -> None:
    (site / "everything").symlink_to("/")
    write_config(site, roots=f'["{site / "everything"}"]')
    assert [f.level for f in findings(site) if "comphash roots include" in f.message] == [WARNING]


def test_the_default_roots_warn(tmp_path: Path) -> None:
    """Built-in defaults: roots = ["/"]; the doctor says so."""
    found = examine(load_config(None, cwd=tmp_path), Invocation(euid=1000, cwd=tmp_path))
    assert any(f.level == WARNING and f.message.startswith("comphash roots include /:") for f in found)


def test_narrow_roots_do_not_warn(site: Path) -> None:
    write_config(site, roots='["/etc", "/usr/share"]')
    assert not [f for f in findings(site) if "include" in f.message]


def test_a_users_comphash_roots_with_slash_warn_naming_the_user(site: Path) -> None:
    write_config(
        site, roots='["/"]', tables='[users.deploy]\ncomphash_roots = ["/"]\n[users.ops]\ncomphash_roots = ["/etc"]\n'
    )
    found = findings(site)
    (warning,) = [f for f in found if f.message.startswith("users.")]
    assert warning.level == WARNING
    assert warning.message.startswith("users.deploy: comphash_roots include /: deploy may hash any file")
    assert warning.fix == "list only the directories deploy needs in [users.deploy] comphash_roots"


# -- fixes that keep the configuration -------------------------------------------------------------


def test_hints_repeat_the_config_file_and_work_from_anywhere(site: Path, tmp_path: Path, monkeypatch) -> None:
    config = site / "conchcmd.toml"
    report = doctor("--config", str(config))[1]
    keygen = f"`conchcmd keygen --config {shlex.quote(str(config))}`"
    adduser = f"`conchcmd adduser --config {shlex.quote(str(config))} USER KEY.pub`"
    assert f"fix: {keygen} (serve also creates one)" in report
    assert f"fix: {adduser}" in report
    # Run the hinted keygen somewhere else: the key lands beside the config, not in that directory.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = io.StringIO()
    assert cli.main(hinted_command(keygen)[1:], out=out) == 0
    assert out.getvalue().startswith(f"config: {config}\ncreated: {site}/keys/ssh_host_ed25519_key ssh-ed25519 ")
    assert list(elsewhere.iterdir()) == []
    assert "no host key" not in doctor("--config", str(config))[1]


def test_a_config_found_in_the_working_directory_is_named_in_hints(site: Path, monkeypatch) -> None:
    monkeypatch.chdir(site)
    report = doctor()[1]
    assert f"fix: `conchcmd keygen --config {shlex.quote(str(site / 'conchcmd.toml'))}`" in report


def test_without_a_config_file_hints_run_where_the_defaults_point(tmp_path: Path, monkeypatch) -> None:
    """Built-in defaults are relative to the working directory: the hint goes there first."""
    bare = tmp_path / "bare dir"
    bare.mkdir()
    monkeypatch.chdir(bare)
    report = doctor()[1]
    hint = f"`cd {shlex.quote(str(bare))} && conchcmd keygen`"
    assert f"fix: {hint} (serve also creates one)" in report
    assert f"fix: `cd {shlex.quote(str(bare))} && conchcmd adduser USER KEY.pub`" in report


def test_a_bad_config_hint_names_the_file(site: Path) -> None:
    config = write_config(site, tables="max_clients = 0\n")
    config.write_text("max_clients = 0\n" + config.read_text())
    status, report = doctor("--config", str(config))
    assert status == 2
    assert report.endswith(
        f"fix: edit the file; `conchcmd check-config --config {shlex.quote(str(config))}` shows it\n"
    )


# -- keygen and adduser say what they used and where they wrote ------------------------------------


def test_adduser_with_a_config_says_which_and_writes_beside_it(
    site: Path, tmp_path: Path, ssh_key, monkeypatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = site / "conchcmd.toml"
    pair = ssh_key("ed25519")
    out = io.StringIO()
    assert cli.main(["adduser", "--config", "../conch site/conchcmd.toml", "alice", str(pair.public)], out=out) == 0
    path = site / "keys" / "authorized_keys" / "alice"
    assert out.getvalue() == f"config: {config}\nalice: added ssh-ed25519 key {pair.fingerprint} to {path}\n"
    assert path.read_text() == pair.public_line + "\n"
    assert list(elsewhere.iterdir()) == []
    assert [f.level for f in findings(site) if "user alice" in f.message] == [OK]
