"""`conchcmd doctor` on the audit file's mode: readable or writable by others is a problem (with
the chmod that fixes it), group access without `audit_group` a warning."""

from __future__ import annotations

import grp
import io
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from conchcmd.core.config import Config
from conchcmd.edge import cli
from conchcmd.edge.doctor import OK, PROBLEM, WARNING, Finding, examine


def audit_findings(config: Config) -> list[Finding]:
    return [f for f in examine(config) if f.message.startswith(f"audit log {config.audit_log} ")]


def audit_file(tmp_path: Path, mode: int) -> Path:
    path = tmp_path / "audit.jsonl"
    path.write_text("")
    path.chmod(mode)
    return path


@pytest.mark.parametrize(
    ("mode", "access"),
    [(0o604, "read"), (0o602, "write"), (0o606, "read and write"), (0o666, "read and write"), (0o777, "read")],
)
def test_a_file_others_can_read_or_write_is_a_problem_with_its_fix(tmp_path: Path, mode: int, access: str) -> None:
    path = audit_file(tmp_path, mode)
    findings = audit_findings(Config(audit_log=str(path), audit_group="root"))
    (problem,) = [f for f in findings if f.level == PROBLEM]
    assert problem.message.startswith(f"audit log {path} has mode {mode:04o}: others can {access}")
    assert problem.fix == f"chmod o-rwx {path}"
    os.chmod(path, mode & ~0o007)  # the fix, applied
    assert [f for f in audit_findings(Config(audit_log=str(path), audit_group="root")) if f.level == PROBLEM] == []


def test_a_group_readable_file_without_audit_group_is_a_warning(tmp_path: Path) -> None:
    path = audit_file(tmp_path, 0o640)
    (warning,) = audit_findings(Config(audit_log=str(path)))
    assert warning.level == WARNING
    assert "its group can read it and no audit_group is set" in warning.message
    assert warning.fix.startswith(f"chmod g-rwx {path}")
    group = grp.getgrgid(os.getegid()).gr_name
    assert audit_findings(Config(audit_log=str(path), audit_group=group)) == []


def test_an_owner_only_file_and_a_missing_one_are_fine(tmp_path: Path) -> None:
    path = audit_file(tmp_path, 0o600)
    assert audit_findings(Config(audit_log=str(path))) == []
    path.unlink()
    assert audit_findings(Config(audit_log=str(path))) == []
    assert [f.level for f in examine(Config(audit_log=str(path))) if f.message == f"audit log: {path}"] == [OK]


def test_doctor_prints_the_problem_and_fails(tmp_path: Path) -> None:
    path = audit_file(tmp_path, 0o644)
    config = tmp_path / "conchcmd.toml"
    config.write_text('audit_log = "audit.jsonl"\n')
    out = io.StringIO()
    status = cli.main(["doctor", "--config", str(config)], out=out)
    assert status != 0
    report = out.getvalue()
    assert f"problem  audit log {path} has mode 0644: others can read it\n         fix: chmod o-rwx {path}" in report
    assert f"warning  audit log {path} has mode 0644: its group can read it" in report


@pytest.mark.parametrize("target", ["syslog", "journal"])
def test_audit_to_a_socket_that_does_not_exist_is_a_problem(tmp_path: Path, target: str) -> None:
    """`audit_log = "syslog"` is not a file in the working directory: doctor checks the socket."""
    from conchcmd.core.config import LogConfig

    missing = tmp_path / "no-such-socket"
    config = Config(audit_log=target, log=LogConfig(syslog_address=f"unix:{missing}"))
    findings = [f for f in examine(config) if f.message.startswith("audit log")]
    if target == "syslog":
        (finding,) = findings
        assert finding.level == PROBLEM
        assert str(missing) in finding.message and "every command would be refused" in finding.message
    else:
        assert all(target in f.message for f in findings)
        assert not any("directory" in f.message for f in findings)
    present = tmp_path / "log.sock"
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(present))
        config = Config(audit_log="syslog", log=LogConfig(syslog_address=f"unix:{present}"))
        (finding,) = [f for f in examine(config) if f.message.startswith("audit log")]
        assert finding.level == OK and str(present) in finding.message


NOBODY = 65534


@pytest.mark.skipif(os.geteuid() != 0, reason="checks as another user: needs root")
def test_a_file_the_user_cannot_write_is_a_problem_even_in_a_writable_directory() -> None:
    # Found installing by the README: a root-owned 0600 audit.jsonl (left by `sudo conchcmd
    # deluser`) in the service user's directory; doctor, as that user, said "ok" while serve
    # refused every command ("the audit log cannot be written (Permission denied)").
    base = Path(tempfile.mkdtemp(prefix="doctor-audit-"))
    try:
        base.chmod(0o755)
        log_dir = base / "log"
        log_dir.mkdir()
        os.chown(log_dir, NOBODY, NOBODY)
        path = log_dir / "audit.jsonl"
        path.write_text("")
        path.chmod(0o600)  # root's
        config = Config(audit_log=str(path))
        os.seteuid(NOBODY)  # doctor is run as the server's user; seteuid so that root can come back
        try:
            findings = audit_findings(config)
            ok = [f for f in examine(config) if f.message == f"audit log: {path}"]
        finally:
            os.seteuid(0)
        (problem,) = findings
        assert problem.level == PROBLEM
        assert problem.message.startswith(f"audit log {path} is owned by root with mode 0600: this user (")
        assert "cannot write it, so serve would audit nothing (every command is refused)" in problem.message
        assert problem.fix.startswith("chown ") and problem.fix.endswith(f" {path}") and ok == []
        os.chown(path, NOBODY, NOBODY)  # the fix, applied
        os.seteuid(NOBODY)
        try:
            assert audit_findings(config) == []
        finally:
            os.seteuid(0)
    finally:
        shutil.rmtree(base)
