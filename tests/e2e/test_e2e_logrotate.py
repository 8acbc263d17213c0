"""The shipped logrotate snippet, run by the real `logrotate` on a live `conchcmd serve` while the
real OpenSSH client runs commands: each command's record is in exactly one file, those before the
rotation in the rotated file, those after the reopen (SIGHUP from postrotate) in the new one."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SNIPPET = REPO / "conchcmd" / "contrib" / "logrotate"
LOGROTATE = shutil.which("logrotate") or "/usr/sbin/logrotate"  # apt logrotate (in .ci/run's list)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("ssh") is None, reason="the OpenSSH client is not installed"),
    pytest.mark.skipif(not Path(LOGROTATE).exists(), reason="logrotate is not installed (apt install logrotate)"),
]
#: What the test rewrites in the shipped snippet: the audit file's path, and the signal command
#: (systemd's, for conchcmd.service) by a kill of the test's server.
SHIPPED_PATH = "/var/log/conchcmd/audit.jsonl"
SHIPPED_SIGNAL = (
    "if systemctl is-active --quiet conchcmd.service; "
    "then systemctl kill --kill-whom=main --signal=HUP conchcmd.service; fi"
)


#: The service user the snippet rotates as; the test's files are root's (there is no conchcmd user).
SHIPPED_SU = "su conchcmd conchcmd"


def as_tests_user(text: str) -> str:
    assert text.count(SHIPPED_SU) == 1, "the snippet rotates as the service user"
    return text.replace(SHIPPED_SU, "su root root")


def snippet_for(audit_path: Path, pid: int) -> str:
    text = SNIPPET.read_text()
    assert text.count(SHIPPED_PATH) == 1, "the snippet names the audit file once"
    assert text.count(SHIPPED_SIGNAL) == 1, "the snippet's postrotate sends SIGHUP through systemd"
    return as_tests_user(text.replace(SHIPPED_PATH, str(audit_path)).replace(SHIPPED_SIGNAL, f"kill -HUP {pid}"))


def logrotate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LOGROTATE, *args], capture_output=True, text=True, timeout=60)


def marks(lines: list[str]) -> list[str]:
    """The marker commands (argv[0] "mark-...") recorded in these audit lines."""
    records = [json.loads(line) for line in lines]
    return [r["argv"][0] for r in records if r["event"] == "command" and r["argv"][0].startswith("mark-")]


def test_the_shipped_snippet_parses_clean(tmp_path: Path) -> None:
    assert SNIPPET.read_text().startswith("# /etc/logrotate.d/conchcmd\n")
    # As installed (`conchcmd contrib logrotate > /etc/logrotate.d/conchcmd`): logrotate ignores a
    # group-writable snippet, which a checkout made under umask 002 would be.
    installed = tmp_path / "conchcmd"
    installed.write_text(as_tests_user(SNIPPET.read_text()))
    installed.chmod(0o644)
    r = logrotate("-d", "-s", str(tmp_path / "state"), str(installed))
    assert r.returncode == 0, r.stderr
    output = r.stdout + r.stderr
    assert "error" not in output.lower(), output
    assert f"rotating pattern: {SHIPPED_PATH}  after 1 days (90 rotations)" in output, output
    assert "log files >= 104857600 are rotated earlier" in output, output


def test_logrotate_on_a_live_server_loses_and_repeats_no_record(server: Any, tmp_path: Path) -> None:
    assert server.proc is not None
    config = tmp_path / "logrotate.conf"
    config.write_text(snippet_for(server.audit_path, server.proc.pid))
    state = tmp_path / "state"
    rotated = Path(f"{server.audit_path}.1")
    reopened = rf"Audit log {re.escape(str(server.audit_path))} reopened"

    def command(name: str) -> None:
        r = server.ssh(name)
        assert r.returncode == 127, r.stderr  # an unknown command: audited all the same, cheaply

    before = [f"mark-before-{i}" for i in range(5)]
    during = [f"mark-during-{i}" for i in range(12)]
    after = [f"mark-after-{i}" for i in range(5)]
    for name in before:
        command(name)

    errors: list[BaseException] = []

    def drive() -> None:
        try:
            for name in during:
                command(name)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    driver = threading.Thread(target=drive)
    driver.start()
    try:
        server.wait_for(lambda: "mark-during-1" in marks(server.audit_path.read_text().splitlines()), 30, "commands")
        since = server.log_mark()
        r = logrotate("-v", "-f", "-s", str(state), str(config))
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"creating new {server.audit_path} mode = 0600" in r.stdout + r.stderr
        server.wait_log(reopened, since)
    finally:
        driver.join(timeout=120)
    assert not errors, errors
    for name in after:
        command(name)

    old_lines = rotated.read_text().splitlines()
    new_lines = server.audit_path.read_text().splitlines()
    old, new = marks(old_lines), marks(new_lines)
    assert set(before) <= set(old) and not set(before) & set(new)
    assert set(after) <= set(new) and not set(after) & set(old)
    counts = Counter(old + new)
    assert sorted(counts) == sorted(before + during + after)
    assert set(counts.values()) == {1}, "a record written twice"
    assert {"mark-during-0", "mark-during-1"} <= set(old)  # recorded before logrotate started
    for line in old_lines + new_lines:
        json.loads(line)  # whole records only, in both files
    assert stat.S_IMODE(server.audit_path.stat().st_mode) == 0o600
    assert "looser" not in server.log_text()
    print(f"during the rotation: {len(set(old) & set(during))} in the old file, {len(set(new) & set(during))} new")

    # The next rotation compresses this one (delaycompress), the server moving on again.
    since = server.log_mark()
    r = logrotate("-f", "-s", str(state), str(config))
    assert r.returncode == 0, r.stdout + r.stderr
    server.wait_log(reopened, since)
    command("mark-last")
    with gzip.open(f"{server.audit_path}.2.gz", "rt") as f:
        assert f.read().splitlines() == old_lines
    # What the new file had, and what the server wrote there since (a disconnect may come late).
    assert rotated.read_text().splitlines()[: len(new_lines)] == new_lines
    assert marks(server.audit_path.read_text().splitlines()) == ["mark-last"]


def test_under_twistd_sighup_reopens_too(make_server: Any, tmp_path: Path) -> None:
    """twistd leaves SIGHUP at its default action (the end of the process): the plugin handles it."""
    twistd = Path(sys.executable).with_name("twistd")
    server = make_server(
        command=lambda s: [str(twistd), "-n", "--pidfile=", "conchcmd", "--config", str(s.config)],
        stop_status=-signal.SIGTERM,  # twistd ends by re-raising the signal that stopped it
    )
    assert server.ssh("mark-twistd-before").returncode == 127
    rotated = Path(f"{server.audit_path}.1")
    server.audit_path.rename(rotated)
    since = server.log_mark()
    server.proc.send_signal(signal.SIGHUP)
    server.wait_log(rf"Audit log {re.escape(str(server.audit_path))} reopened", since)
    assert server.ssh("mark-twistd-after").returncode == 127
    assert server.proc.poll() is None
    assert marks(rotated.read_text().splitlines()) == ["mark-twistd-before"]
    assert marks(server.audit_path.read_text().splitlines()) == ["mark-twistd-after"]
