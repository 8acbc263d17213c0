"""The real server with an audit log it cannot write (a full disk: the path is a symlink to
/dev/full): logins and disconnects do not crash it, commands are refused with a clear message and
status 126 (`audit_failure = "refuse"`, the default), one error line is logged, and it recovers
with the records kept meanwhile once there is room."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("ssh") is None, reason="the OpenSSH client is not installed"),
]

REFUSED = b"conchcmd: refused: the audit log cannot be written (No space left on device)\n"


def test_a_full_audit_log_refuses_commands_until_there_is_room(server_class, tmp_path: Path, client_keys, data):
    base = tmp_path / "server"
    base.mkdir()
    audit = base / "audit.jsonl"
    audit.symlink_to("/dev/full")
    server = server_class(base, client_keys, data)
    try:
        server.start()
        r = server.ssh("lastlog -n 1")
        assert (r.returncode, r.stdout, r.stderr) == (126, b"", REFUSED)
        r = server.ssh("help")
        assert (r.returncode, r.stdout, r.stderr) == (126, b"", REFUSED)
        r = server.ssh(options=["-T"], input=b"lastlog -n 1\nexit 5\n")
        assert (r.returncode, r.stdout, r.stderr) == (5, b"", REFUSED)  # the shell stays usable; exit works
        failures = server.log_text().count("[conchcmd.log#error] Audit log")
        assert failures == 1, server.log_text()
        assert f"Audit log {audit} cannot be written: No space left on device; new commands are refused" in (
            server.log_text()
        )

        audit.unlink()  # room again: the next command retries, and runs
        r = server.ssh("lastlog -n 1")
        assert (r.returncode, r.stdout, r.stderr) == (0, server.tail(data.syslog, 1), b"")
        server.wait_log(r"Audit log \S+ is writable again after \d+ s: \d+ delayed record\(s\) written, 0 lost")
        server.wait_for(lambda: len(server.audit_since(0, "disconnect")) == 4, 10, "four disconnect records")
        records = server.audit()
        assert [e["event"] for e in records].count("connect") == 4  # nothing was lost
        commands = [(e["argv"], e["exit_code"]) for e in records if e["event"] == "command"]
        assert commands == [
            (["lastlog", "-n", "1"], 126),
            (["help"], 126),
            (["lastlog", "-n", "1"], 126),
            (["exit", "5"], 5),
            (["lastlog", "-n", "1"], 0),
        ]
    finally:
        server.stop()
    assert server.returncode == 0
    server.check_log()
