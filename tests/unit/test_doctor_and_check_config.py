"""`conchcmd doctor` and `conchcmd check-config` through cli.main: each finding names the file and
says how to fix it; the exit status tells a script whether all is well."""

from __future__ import annotations

import errno
import io
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import mlkem
from support.keys import authorized_line, ed25519_key
from support.races import exchange, swap_at_readlink

from conchcmd.commands.safepath import ROOT_RETRIES
from conchcmd.edge import cli
from conchcmd.wire.hostkeys import ensure_host_keys


@dataclass
class Setup:
    base: Path
    config: Path
    host_key: Path
    alice: Path
    log: Path
    root: Path

    def write_config(self, extra: str = "", *, log: Path | None = None, tables: str = "") -> None:
        self.config.write_text(
            "\n".join(
                [
                    'listen = ["tcp:0:interface=127.0.0.1"]',
                    'host_keys_dir = "keys"',
                    'authorized_keys = "keys/authorized_keys/%u"',
                    'audit_log = "audit.jsonl"',
                    extra,
                    "[lastlog]",
                    f'path = "{log or self.log}"',
                    "[comphash]",
                    f'roots = ["{self.root}"]',
                    tables,
                    "",
                ]
            )
        )

    def doctor(self) -> tuple[int, str]:
        out = io.StringIO()
        status = cli.main(["doctor", "--config", str(self.config)], out=out)
        return status, out.getvalue()


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    keys = tmp_path / "keys"
    (host_key,) = ensure_host_keys(keys)
    users = keys / "authorized_keys"
    users.mkdir(mode=0o700)
    alice = users / "alice"
    alice.write_text(authorized_line(ed25519_key()))
    alice.chmod(0o600)
    log = tmp_path / "syslog"
    log.write_text("a log line\n")
    root = tmp_path / "root"
    root.mkdir()
    s = Setup(tmp_path, tmp_path / "conchcmd.toml", host_key, alice, log, root)
    s.write_config()
    return s


def problems(report: str) -> list[str]:
    """Each problem with its fix line."""
    lines = report.splitlines()
    found = []
    for i, line in enumerate(lines):
        if line.startswith("problem "):
            fix = lines[i + 1] if i + 1 < len(lines) and lines[i + 1].lstrip().startswith("fix:") else ""
            found.append(line + "\n" + fix)
    return found


def test_doctor_on_a_good_setup_says_all_well(setup: Setup) -> None:
    status, report = setup.doctor()
    assert status == 0, report
    assert report.endswith("all well\n")
    assert problems(report) == []
    assert "ok       host keys: ssh-ed25519" in report
    assert "ok       user alice: 1 usable key line(s)" in report
    assert f"ok       lastlog reads {setup.log}" in report
    assert "\x1b" not in report


def test_doctor_host_key_readable_by_others(setup: Setup) -> None:
    setup.host_key.chmod(0o644)
    status, report = setup.doctor()
    assert status == 1
    (problem,) = problems(report)  # one problem, reported once, with the fix that solves it
    assert problem.startswith("problem ")
    assert f"fix: chmod 600 {setup.host_key}" in problem
    assert report.endswith("problem(s)\n") and "all well" not in report


def test_doctor_names_an_unknown_authorized_keys_option(setup: Setup) -> None:
    setup.alice.write_text(authorized_line(ed25519_key(), "frobnicate,no-pty"))
    status, report = setup.doctor()
    assert status == 1
    (problem,) = problems(report)
    assert "frobnicate" in problem and str(setup.alice) in problem
    assert "fix:" in problem


def test_doctor_names_the_trusted_ca_line_where_reading_stops(setup: Setup) -> None:
    """sshd stops reading TrustedUserCAKeys at a line that is not a key; so does conchcmd, and the
    doctor says where."""
    cas = setup.base / "trusted_cas"
    cas.write_text("ssh-ed25519 not-base64\n" + authorized_line(ed25519_key(7)))
    setup.write_config(f'trusted_user_ca_keys = "{cas}"')
    status, report = setup.doctor()
    assert status == 1
    (problem,) = problems(report)
    assert f"{cas}:1 is not a CA public key" in problem and "fix:" in problem
    assert "trusted_user_ca_keys: 0 CA key(s)" in report


def test_doctor_authorized_keys_file_writable_by_others(setup: Setup) -> None:
    setup.alice.chmod(0o666)
    status, report = setup.doctor()
    assert status == 1
    (problem,) = problems(report)
    assert str(setup.alice) in problem and f"fix: chmod 600 {setup.alice}" in problem


def test_doctor_a_missing_log_is_a_problem(setup: Setup) -> None:
    missing = setup.base / "no-such-log"
    setup.write_config(log=missing)
    status, report = setup.doctor()
    assert status == 1
    (problem,) = problems(report)
    assert str(missing) in problem and "fix:" in problem


def test_doctor_a_missing_root_is_a_problem(setup: Setup) -> None:
    setup.root.rmdir()
    status, report = setup.doctor()
    assert status == 1
    (problem,) = problems(report)
    assert str(setup.root) in problem and "fix:" in problem


def test_doctor_counts_every_problem(setup: Setup) -> None:
    setup.alice.write_text(authorized_line(ed25519_key(), "frobnicate"))
    setup.root.rmdir()
    setup.write_config(log=setup.base / "gone")
    status, report = setup.doctor()
    assert status == 1
    assert len(problems(report)) == 3
    assert report.endswith("3 problem(s)\n")


def test_doctor_with_a_bad_config_names_file_and_key(setup: Setup) -> None:
    setup.write_config("max_clients = 0")
    status, report = setup.doctor()
    assert status == 2
    assert f"{setup.config}: max_clients: must be at least 1" in report


def test_check_config_names_the_bad_key_and_the_file(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    setup.write_config(tables='algoritm = "sha256"')  # lands in [comphash]: a typo
    status = cli.main(["check-config", "--config", str(setup.config)])
    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    assert captured.err == f"conchcmd: configuration error: {setup.config}: comphash.algoritm: unknown key\n"


@pytest.mark.parametrize(
    ("tables", "key"),
    [
        ('[shell]\nprompt = "{user}@{nope}> "', "shell.prompt"),
        ('[shell]\ncolour = "red"', "shell.colour"),
        ('[users.carol]\ncommands = ["rm"]', "users.carol.commands"),
    ],
)
def test_check_config_errors_in_tables(setup: Setup, capsys: pytest.CaptureFixture[str], tables: str, key: str) -> None:
    setup.write_config(tables=tables)
    assert cli.main(["check-config", "--config", str(setup.config)]) == 2
    assert f"{setup.config}: {key}: " in capsys.readouterr().err


def test_check_config_prints_the_effective_settings_with_the_prompt(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    setup.write_config(tables='[shell]\nprompt = "[{host}] {user}$ "')
    out = io.StringIO()
    assert cli.main(["check-config", "--config", str(setup.config)], out=out) == 0
    text = out.getvalue()
    assert text.startswith(f"# effective configuration ({setup.config})\n")
    assert '[shell]\nprompt = "[{host}] {user}$ "\n' in text
    assert f'[lastlog]\npath = ["{setup.log}"]' in text


def test_doctor_runs_from_the_config_directory_by_default(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(setup.base)
    out = io.StringIO()
    assert cli.main(["doctor"], out=out) == 0, out.getvalue()  # finds ./conchcmd.toml
    assert f"lastlog reads {setup.log}" in out.getvalue()


def test_doctor_warns_when_password_hashes_differ_in_cost(setup: Setup) -> None:
    """A cheaper hash answers a wrong password sooner than the dummy every other name is checked
    against, so the timing tells that name has a password."""
    salt = "C6UzMDM.H6dfI/f/IKxGhu4kN/4Kg8HO0gAYbHk5NUqL7Gy5fPg2S"

    def users(admin_cost: str, deploy_cost: str) -> str:
        return (
            f'[users.admin]\npassword_bcrypt = "$2b${admin_cost}${salt}"\n'
            f'[users.deploy]\npassword_bcrypt = "$2b${deploy_cost}${salt}"\n'
        )

    setup.write_config(tables=users("12", "08"))
    report = setup.doctor()[1]
    assert (
        "warning  password hashes of different bcrypt costs (8, 12): "
        "a wrong password for deploy is answered sooner" in report
    )
    assert "fix: make every hash with the same cost" in report
    setup.write_config(tables=users("12", "12"))
    assert "bcrypt costs" not in setup.doctor()[1]


def test_doctor_names_ml_kem_missing_from_the_cryptography_backend(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cryptography 47: Conch lists mlkem768x25519-sha256, the OpenSSL backend lacks ML-KEM."""

    def generate() -> mlkem.MLKEM768PrivateKey:
        raise UnsupportedAlgorithm("ML-KEM-768 is not supported by this backend.")

    monkeypatch.setattr(mlkem.MLKEM768PrivateKey, "generate", staticmethod(generate))
    _, report = setup.doctor()
    assert "key exchange not available in this build: mlkem768x25519-sha256" in report


def test_doctor_resolves_a_root_swapped_for_a_directory_inside_realpath_again(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The root, a symlink, exchanged with a directory between realpath's lstat and readlink:
    readlink's EINVAL, which Python's realpath passes on, stopped doctor before; now the root is
    resolved again. Swapped at every look, it is a warning that says so."""
    link = setup.base / "current"
    link.symlink_to(setup.root)
    (setup.base / "dir_release").mkdir()
    setup.root = link
    setup.write_config()
    plain_readlink = os.readlink
    errors = swap_at_readlink(monkeypatch, link, setup.base / "dir_release", back=False)
    status, report = setup.doctor()
    assert errors == [errno.EINVAL]  # the race really happened, once
    assert (status, report.endswith("all well\n")) == (0, True), report
    assert "Invalid argument" not in report

    monkeypatch.setattr(os, "readlink", plain_readlink)
    exchange(link, setup.base / "dir_release")  # the symlink back in its place
    errors = swap_at_readlink(monkeypatch, link, setup.base / "dir_release", back=True)
    status, report = setup.doctor()
    assert errors == [errno.EINVAL] * ROOT_RETRIES
    assert f"warning  comphash root {link} kept changing while doctor resolved it" in report, report
    assert status == 0 and "Invalid argument" not in report
