"""A full, unwritable or vanished audit log: nothing crashes, nothing runs unaudited by default,
and it heals (with the records kept meanwhile) once the cause is gone."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest
from support.outputs import RecordingOutput
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent

from conchcmd.commands.builtin import make_exit
from conchcmd.commands.framework import Command, CommandTable, Dispatcher, Invocation, Outcome
from conchcmd.core.audit import BACKLOG_BYTES, BACKLOG_RECORDS, AppendFile, AuditLog

FULL = "/dev/full"  # every write fails with ENOSPC: a full disk


def events(path: Path) -> list[str]:
    return [json.loads(line)["event"] for line in path.read_text().splitlines()]


def errors(captured: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(e) for e in captured if e["log_level"] >= LogLevel.error]


@pytest.fixture
def full_disk(tmp_path: Path) -> Path:
    """audit.jsonl, a symlink to /dev/full: opening works, every write fails with ENOSPC."""
    path = tmp_path / "audit.jsonl"
    path.symlink_to(FULL)
    return path


def heal(path: Path) -> None:
    """Room on the disk again: the path is an ordinary (new) file."""
    path.unlink()


def test_a_full_disk_is_logged_once_and_the_records_are_written_when_there_is_room(full_disk: Path) -> None:
    clock = Clock()
    audit = AuditLog.open(str(full_disk), clock)
    with capturedLogs() as captured:
        for n in range(3):
            audit.record("connect", peer=f"p{n}")  # never raises
            clock.advance(10)
        assert audit.failure() == "No space left on device"
    [line] = errors(captured)  # one line for the whole spell, not one per record
    assert line == (
        f"Audit log {full_disk} cannot be written: No space left on device; new commands are refused until"
        f" it can be written (audit_failure = refuse); up to {BACKLOG_RECORDS} records are kept for then"
    )
    heal(full_disk)
    with capturedLogs() as captured:
        assert audit.failure() is None  # retried: it works again
        audit.record("disconnect", peer="p0")
    assert [formatEvent(e) for e in captured] == [
        f"Audit log {full_disk} is writable again after 30 s: 3 delayed record(s) written, 0 lost"
    ]
    assert events(full_disk) == ["connect"] * 3 + ["disconnect"]
    assert [json.loads(x)["peer"] for x in full_disk.read_text().splitlines()][:3] == ["p0", "p1", "p2"]
    assert json.loads(full_disk.read_text().splitlines()[0])["ts"] == "1970-01-01T00:00:00.000Z"  # when it happened
    audit.close()


def test_an_unwritable_path_is_retried_until_it_can_be_opened(full_disk: Path) -> None:
    """A directory where the file should be (EISDIR) is the same failure spell; no second line."""
    audit = AuditLog.open(str(full_disk), Clock())
    with capturedLogs() as captured:
        audit.record("connect", peer="a")
        full_disk.unlink()
        full_disk.mkdir()
        assert audit.failure() == "Is a directory"
        audit.record("connect", peer="b")
    assert len(errors(captured)) == 1
    full_disk.rmdir()
    assert audit.failure() is None
    assert events(full_disk) == ["connect", "connect"]


def test_the_backlog_is_bounded_and_what_was_dropped_is_counted(full_disk: Path) -> None:
    audit = AuditLog.open(str(full_disk), Clock())
    for n in range(BACKLOG_RECORDS + 5):
        audit.record("command", n=n)
    heal(full_disk)
    with capturedLogs() as captured:
        assert audit.failure() is None
    assert "1000 delayed record(s) written, 5 lost" in formatEvent(captured[0])
    kept = [json.loads(line)["n"] for line in full_disk.read_text().splitlines()]
    assert kept == list(range(5, BACKLOG_RECORDS + 5))  # the oldest went first


def test_the_backlog_is_bounded_in_bytes_too(full_disk: Path) -> None:
    """Large records (a command line of 100 KB) cannot make a full disk cost the server memory."""
    audit = AuditLog.open(str(full_disk), Clock())
    for n in range(60):
        audit.record("command", n=n, argv=["x" * 100_000])
    heal(full_disk)
    with capturedLogs():
        assert audit.failure() is None
    kept = [json.loads(line)["n"] for line in full_disk.read_text().splitlines()]
    assert kept == list(range(60 - len(kept), 60)) and len(kept) * 100_000 <= BACKLOG_BYTES < (len(kept) + 1) * 100_100


def test_a_line_cut_short_by_a_full_disk_is_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """write(2) may store part of a line before ENOSPC: the file must stay valid JSON lines."""
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(AppendFile(str(path)), Clock())
    audit.record("connect", peer="first")
    real_write = os.write
    calls = []

    def half_then_full(fd: int, data: Any) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", half_then_full)
    with capturedLogs():
        audit.record("auth", user="alice")
    monkeypatch.undo()
    assert events(path) == ["connect"]  # no half line
    assert audit.failure() is None
    assert events(path) == ["connect", "auth"]


def test_closing_while_failing_says_how_many_records_were_lost(full_disk: Path) -> None:
    audit = AuditLog.open(str(full_disk), Clock())
    with capturedLogs() as captured:
        audit.record("connect", peer="a")
        audit.record("disconnect", peer="a")
        audit.close()
    assert errors(captured)[-1] == (
        f"Audit log {full_disk}: 2 record(s) could not be written before shutdown: No space left on device"
    )


# -- what the dispatcher does about it ---------------------------------------------------------


class World:
    """A Dispatcher with a real audit log, and a command that notes when it runs."""

    def __init__(self, path: Path, mode: str):
        self.clock = Clock()
        self.audit = AuditLog.open(str(path), self.clock, failure_mode=mode)
        self.ran: list[list[str]] = []

        async def work(inv: Invocation) -> int:
            self.ran.append(inv.argv)
            await inv.say("done\n")
            return 0

        table = CommandTable([Command("work", "does work", "work", work), make_exit()])
        self.dispatcher = Dispatcher(table, self.audit, self.clock, audit_failure=mode)

    def run(self, line: str) -> tuple[Outcome, bytes, bytes]:
        out, err = RecordingOutput(), RecordingOutput()
        d = self.dispatcher.dispatch(line, stdout=out, stderr=err, user="alice", peer="p", fingerprint="SHA256:x")
        results: list[Any] = []
        d.addBoth(results.append)
        (outcome,) = results  # every command here finishes at once
        assert isinstance(outcome, Outcome), outcome
        return outcome, out.data, err.data


REFUSED = b"conchcmd: refused: the audit log cannot be written (No space left on device)\n"


def test_refuse_by_default_no_command_runs_unaudited_and_it_recovers(full_disk: Path) -> None:
    w = World(full_disk, "refuse")
    with capturedLogs() as captured:
        w.audit.record("auth", user="alice", ok=True)  # the login's record fails: the spell starts
        assert w.run("work") == (Outcome(126), b"", REFUSED)
        assert w.run("work --again") == (Outcome(126), b"", REFUSED)
        assert w.run("nosuchcommand") == (Outcome(126), b"", REFUSED)
        assert w.run("exit 3") == (Outcome(3, end_session=True), b"", b"")  # leaving always works
    assert w.ran == []
    assert len(errors(captured)) == 1  # one line per failure spell, not per command
    heal(full_disk)  # room again: the next command retries, and runs
    assert w.run("work") == (Outcome(0), b"done\n", b"")
    assert w.ran == [["work"]]
    records = [json.loads(line) for line in full_disk.read_text().splitlines()]
    assert [(r["event"], r.get("argv"), r.get("exit_code")) for r in records] == [
        ("auth", None, None),
        ("command", ["work"], 126),  # the refusals themselves are audited, late
        ("command", ["work", "--again"], 126),
        ("command", ["nosuchcommand"], 126),
        ("command", ["exit", "3"], 3),
        ("command", ["work"], 0),
    ]


def test_continue_runs_commands_and_logs_the_failure(full_disk: Path) -> None:
    w = World(full_disk, "continue")
    with capturedLogs() as captured:
        assert w.run("work") == (Outcome(0), b"done\n", b"")
        assert w.run("work") == (Outcome(0), b"done\n", b"")
    assert w.ran == [["work"], ["work"]]
    [line] = errors(captured)
    assert "commands run unaudited until it can be written (audit_failure = continue)" in line
    heal(full_disk)
    assert w.run("work")[0] == Outcome(0)
    assert events(full_disk) == ["command"] * 3


def test_a_healthy_audit_log_is_not_in_the_way(tmp_path: Path) -> None:
    w = World(tmp_path / "audit.jsonl", "refuse")
    assert w.run("work") == (Outcome(0), b"done\n", b"")
    assert events(tmp_path / "audit.jsonl") == ["command"]
