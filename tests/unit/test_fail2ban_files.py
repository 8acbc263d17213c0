"""The shipped fail2ban filter and jail: each says where it is installed, and the REAL
fail2ban-client accepts them installed into a copy of the system's fail2ban configuration."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from support.fail2ban import FILTER, JAIL, fail2ban_available

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
