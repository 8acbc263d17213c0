"""`lastlog` from the systemd journal: journalctl run as a child process through the reactor."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

FAILING_JOURNALCTL = """#!/bin/sh
echo "No journal files were found." >&2
exit 1
"""
FAKE_JOURNALCTL = """#!/bin/sh
echo "args: $*"
i=1
while [ $i -le 3 ]; do echo "Nov 26 15:02:0$i lab unit[$i]: journal entry $i"; i=$((i+1)); done
"""


def _fake_bin(tmp: Path, script: str = FAKE_JOURNALCTL) -> Path:
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "journalctl"
    tool.write_text(script)
    tool.chmod(0o755)
    return bin_dir


def test_lastlog_reads_the_journal(make_server: Callable[..., Any], tmp_path: Path) -> None:
    path = f"{_fake_bin(tmp_path)}{os.pathsep}{os.environ.get('PATH', '')}"
    server = make_server(lastlog_path="journal", env_extra={"PATH": path})
    result = server.ssh("lastlog -n 3")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        b"args: -n 3 --no-pager -q\n"
        + b"".join(b"Nov 26 15:02:0%d lab unit[%d]: journal entry %d\n" % (i, i, i) for i in (1, 2, 3))
    )


def test_a_failing_journalctl_is_a_clear_error(make_server: Callable[..., Any], tmp_path: Path) -> None:
    path = f"{_fake_bin(tmp_path, FAILING_JOURNALCTL)}{os.pathsep}{os.environ.get('PATH', '')}"
    server = make_server(lastlog_path="journal", env_extra={"PATH": path})
    result = server.ssh("lastlog")
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr == b"lastlog: journalctl: No journal files were found.\n"


# What systemd 252's `journalctl -n N -q` does for a user who may not read the system journal, or on a
# machine whose journal is empty: nothing on stdout, status 0 (measured as root and as nobody).
SILENT_JOURNALCTL = "#!/bin/sh\nexit 0\n"


def test_an_empty_journal_out_of_the_box_is_status_1_with_the_reason(
    make_server: Callable[..., Any], tmp_path: Path
) -> None:
    """The defaults on a machine without syslog files: used to print nothing and exit 0."""
    path = f"{_fake_bin(tmp_path, SILENT_JOURNALCTL)}{os.pathsep}{os.environ.get('PATH', '')}"
    missing = [tmp_path / "syslog", tmp_path / "messages"]
    server = make_server(lastlog_path=[*map(str, missing), "journal"], env_extra={"PATH": path})
    for command in ("lastlog", "lastlog --json", "lastlog -f"):  # -f would otherwise wait in silence for ever
        result = server.ssh(command)
        assert (result.returncode, result.stdout) == (1, b""), command
        stderr = result.stderr.decode()
        assert stderr.startswith(f"lastlog: no {missing[0]} or {missing[1]}, and the journal has no entries readable")
        assert stderr.endswith("; set [lastlog] path\n")
