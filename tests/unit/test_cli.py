"""conchcmd.edge.cli.main: check-config, adduser and keygen, run in a temporary working directory."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from conchcmd.core.config import load_config
from conchcmd.edge.cli import main
from conchcmd.policy.authorized_keys import AuthorizedKeysFiles


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def no_config(workdir: Path) -> str:
    """The line keygen and adduser start with when they run on the built-in defaults."""
    return f"config: none (no --config FILE, no conchcmd.toml here): built-in defaults relative to {workdir}\n"


# --- check-config --------------------------------------------------------------------------


def test_check_config_without_file_prints_the_defaults(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out == load_config(None, cwd=workdir).describe()
    assert out.startswith("# effective configuration (built-in defaults)\n")
    assert f'host_keys_dir = "{workdir}/keys"' in out


def test_check_config_reads_conchcmd_toml_from_cwd(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "conchcmd.toml").write_text("max_clients = 3\n[comphash]\nalgorithm = 'sha512'\n")
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"# effective configuration ({workdir}/conchcmd.toml)"
    assert "max_clients = 3\n" in out
    assert 'algorithm = "sha512"\n' in out


def test_check_config_with_config_option(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "etc").mkdir()
    (workdir / "etc" / "c.toml").write_text('audit_log = "audit.jsonl"\n')
    assert main(["check-config", "--config", "etc/c.toml"]) == 0
    assert f'audit_log = "{workdir}/etc/audit.jsonl"\n' in capsys.readouterr().out


def test_check_config_bad_config_exits_2_naming_the_key(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "conchcmd.toml").write_text('[lastlog]\nmax_lines = "lots"\n')
    assert main(["check-config"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"conchcmd: configuration error: {workdir}/conchcmd.toml: lastlog.max_lines: must be an integer, not str\n"
    )


def test_check_config_missing_named_file_exits_2(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", "absent.toml"]) == 2
    assert "absent.toml: cannot read: No such file or directory" in capsys.readouterr().err


# --- adduser -------------------------------------------------------------------------------


def test_adduser_creates_the_users_file_0600_with_the_key_line(
    workdir: Path, ssh_key, capsys: pytest.CaptureFixture[str]
) -> None:
    pair = ssh_key("ed25519")
    assert main(["adduser", "alice", str(pair.public)]) == 0
    path = workdir / "keys" / "authorized_keys" / "alice"
    assert path.read_text() == pair.public_line + "\n"
    assert mode(path) == 0o600
    out, err = capsys.readouterr()
    assert err == ""
    assert out == no_config(workdir) + f"alice: added ssh-ed25519 key {pair.fingerprint} to {path}\n"
    # ... and the server's reader accepts the file it made.
    assert AuthorizedKeysFiles(f"{workdir}/keys/authorized_keys/%u").entries_for("alice")


def test_adduser_is_idempotent(workdir: Path, ssh_key, capsys: pytest.CaptureFixture[str]) -> None:
    pair = ssh_key("ed25519")
    assert main(["adduser", "alice", str(pair.public)]) == 0
    capsys.readouterr()
    assert main(["adduser", "alice", str(pair.public)]) == 0
    path = workdir / "keys" / "authorized_keys" / "alice"
    assert path.read_text() == pair.public_line + "\n"
    assert capsys.readouterr().out == no_config(workdir) + f"alice: key {pair.fingerprint} is already in {path}\n"


def test_adduser_appends_a_second_key(workdir: Path, ssh_key) -> None:
    first, second = ssh_key("ed25519"), ssh_key("rsa")
    path = workdir / "keys" / "authorized_keys" / "alice"
    path.parent.mkdir(parents=True)
    path.write_text(first.public_line)  # no final newline
    path.chmod(0o600)
    assert main(["adduser", "alice", str(second.public)]) == 0
    assert path.read_text() == f"{first.public_line}\n{second.public_line}\n"


def test_adduser_uses_the_configured_pattern(workdir: Path, ssh_key) -> None:
    (workdir / "conchcmd.toml").write_text('authorized_keys = "users/%u.keys"\n')
    pair = ssh_key("ecdsa256")
    assert main(["adduser", "bob", str(pair.public)]) == 0
    assert (workdir / "users" / "bob.keys").read_text() == pair.public_line + "\n"


def test_adduser_refuses_a_private_key(workdir: Path, ssh_key, capsys: pytest.CaptureFixture[str]) -> None:
    pair = ssh_key("ed25519")
    assert main(["adduser", "alice", str(pair.private)]) == 2
    assert capsys.readouterr().err == f"conchcmd: {pair.private} is a PRIVATE key; give the .pub file\n"
    assert not (workdir / "keys").exists()


def test_adduser_refuses_a_passphrase_protected_private_key(
    workdir: Path, ssh_key, capsys: pytest.CaptureFixture[str]
) -> None:
    pair = ssh_key("ed25519-encrypted")
    assert main(["adduser", "alice", str(pair.private)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("conchcmd: ")
    assert "private" in err.lower()
    assert not (workdir / "keys").exists()


@pytest.mark.parametrize("user", ["../x", "a/b", ".hidden", "", "x" * 65])
def test_adduser_refuses_an_invalid_user_name(workdir: Path, ssh_key, capsys: pytest.CaptureFixture[str], user) -> None:
    assert main(["adduser", user, str(ssh_key("ed25519").public)]) == 2
    assert capsys.readouterr().err.startswith(f"conchcmd: invalid user name {user!r}")
    assert sorted(p.name for p in workdir.iterdir()) == []


def test_adduser_refuses_a_file_that_is_not_a_key(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "notes.txt").write_text("hello\n")
    assert main(["adduser", "alice", "notes.txt"]) == 2
    assert capsys.readouterr().err == "conchcmd: notes.txt is not an OpenSSH public key\n"
    assert not (workdir / "keys").exists()


def test_adduser_missing_key_file(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["adduser", "alice", "absent.pub"]) == 2
    assert capsys.readouterr().err.startswith("conchcmd: cannot read absent.pub: ")


# --- keygen --------------------------------------------------------------------------------


def test_keygen_creates_the_host_key_and_prints_its_fingerprint(
    workdir: Path, capsys: pytest.CaptureFixture[str], keygen_fingerprint
) -> None:
    assert main(["keygen"]) == 0
    private = workdir / "keys" / "ssh_host_ed25519_key"
    fp = keygen_fingerprint(private.with_name("ssh_host_ed25519_key.pub"))
    assert capsys.readouterr().out == no_config(workdir) + f"created: {private} ssh-ed25519 {fp}\n"
    assert mode(private) == 0o600


def test_keygen_again_reports_the_existing_key(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen"]) == 0
    first = capsys.readouterr().out
    assert main(["keygen"]) == 0
    assert capsys.readouterr().out == first.replace("created: ", "exists: ")


def test_keygen_refuses_a_readable_private_key(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen"]) == 0
    private = workdir / "keys" / "ssh_host_ed25519_key"
    private.chmod(0o644)
    capsys.readouterr()
    assert main(["keygen"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("conchcmd: host key ")
    assert f"chmod 600 {private}" in err


def test_keygen_rsa_creates_both_keys(workdir: Path, capsys: pytest.CaptureFixture[str], keygen_fingerprint) -> None:
    assert main(["keygen", "--rsa"]) == 0
    keys = workdir / "keys"
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        no_config(workdir).rstrip("\n"),
        f"created: {keys}/ssh_host_ed25519_key ssh-ed25519 {keygen_fingerprint(keys / 'ssh_host_ed25519_key.pub')}",
        f"created: {keys}/ssh_host_rsa_key ssh-rsa {keygen_fingerprint(keys / 'ssh_host_rsa_key.pub')}",
    ]
    assert mode(keys / "ssh_host_rsa_key") == 0o600
