"""The shipped fail2ban filter and jail: each says where it is installed, and the REAL
fail2ban-client accepts them installed into a copy of the system's fail2ban configuration."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest
from support.fail2ban import FILTER, JAIL, fail2ban_available, failures, install_filter
from twisted.logger import Logger, LogLevel

from conchcmd.core.logtargets import AUTH_LOG_NAMESPACE, stdout_observer

FAIL2BAN_CONFIG = Path("/etc/fail2ban")


def test_each_file_says_where_it_is_installed() -> None:
    assert FILTER.read_text().splitlines()[0].startswith("# Installed as /etc/fail2ban/filter.d/conchcmd.conf")
    assert JAIL.read_text().splitlines()[0].startswith("# Installed as /etc/fail2ban/jail.d/conchcmd.conf")


@pytest.mark.skipif(not fail2ban_available(), reason="fail2ban is not installed")
def test_fail2ban_client_loads_the_jail_with_its_filter(tmp_path: Path) -> None:
    config = tmp_path / "fail2ban"
    shutil.copytree(FAIL2BAN_CONFIG, config)
    for old in (config / "jail.d").iterdir():  # the distribution's own jails (sshd) are not ours to test
        old.unlink()
    shutil.copy(FILTER, config / "filter.d" / "conchcmd.conf")
    shutil.copy(JAIL, config / "jail.d" / "conchcmd.conf")
    log = tmp_path / "auth.log"
    log.write_text("")
    (config / "jail.d" / "test.local").write_text(f"[conchcmd]\nlogpath = {log}\nbackend = polling\n")
    check = subprocess.run(["fail2ban-client", "-c", str(config), "-t"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    dump = subprocess.run(["fail2ban-client", "-c", str(config), "-d"], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0, dump.stderr
    assert "['add', 'conchcmd', 'polling']" in dump.stdout
    assert "['set', 'conchcmd', 'maxretry', 5]" in dump.stdout
    assert "^Invalid user <F-USER>" in dump.stdout and "['start', 'conchcmd']" in dump.stdout


@pytest.mark.skipif(not fail2ban_available(), reason="fail2ban is not installed")
def test_on_stdout_only_the_auth_namespace_counts_whatever_other_lines_say(tmp_path: Path) -> None:
    """The stdout target writes every namespace (Twisted's own from warn up, and legacy lines as
    `[-]` or `[SYSTEM]`); a line of any of them that reads like a failure must not ban the
    address it names. conchcmd's own authentication line still counts, with its host."""
    out = io.StringIO()
    observer = stdout_observer(out, {})
    hostile = "Failed password for root from 6.6.6.{n} port 22 ssh2"
    for n, (namespace, system) in enumerate(
        [
            ("twisted.conch.ssh.transport.SSHServerTransport", None),
            ("log_legacy", "-"),
            ("log_legacy", "SSHServerTransport,7,198.51.100.9"),
            ("conchcmd.log", None),
            ("conchcmd.authx", None),
        ]
    ):
        e: dict[str, object] = {
            "log_format": hostile.format(n=n),
            "log_level": LogLevel.error,
            "log_namespace": namespace,
            "log_time": 1_764_453_045.0,
        }
        if system is not None:
            e["log_system"] = system
        observer(e)
    Logger(namespace=AUTH_LOG_NAMESPACE, observer=observer).info(
        "Failed password for {user} from {host} port {port} ssh2", user="admin", host="203.0.113.7", port=4
    )
    log = tmp_path / "conchcmd.log"
    log.write_text(out.getvalue())
    found = failures(log, install_filter(tmp_path))
    assert [(f.host, f.user) for f in found] == [("203.0.113.7", "admin")], out.getvalue()
