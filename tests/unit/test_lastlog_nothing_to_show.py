"""`lastlog` when there is nothing to print: it says why on stderr, and fails (status 1) unless
the answer is a real one (an existing, readable, empty file, as after a rotation: status 0).

Out of the box on a machine without syslog files, `journalctl -n 10 -q` run by a user who may not
read the system journal (or on one that collects nothing) prints nothing and exits 0: measured
with systemd 252 (Debian 12) as root with no journal files and as `nobody`. lastlog used to pass
that on: no output, status 0.
"""

from __future__ import annotations

import contextlib
import grp
import io
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import error
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from conchcmd.commands.framework import InlineRunner
from conchcmd.commands.lastlog import FOLLOW_POLL, FileTail, JournalTail, empty_journal_message, make_lastlog
from conchcmd.core.config import LastlogConfig
from conchcmd.edge import cli

DONE = Failure(error.ProcessDone(0))


class Spawned:
    def __init__(self, protocol: Any, argv: list[str]):
        self.protocol = protocol
        self.argv = argv
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def finish(self, output: bytes = b"") -> None:
        """What journalctl does with nothing to show (or with entries, given output): exit 0."""
        if output:
            self.protocol.outReceived(output)
        self.protocol.processEnded(DONE)


class ProcessReactor:
    def __init__(self) -> None:
        self.spawned: list[Spawned] = []

    def spawnProcess(self, protocol: Any, executable: str, argv: list[str], env: dict[str, str]) -> Spawned:
        process = Spawned(protocol, argv)
        self.spawned.append(process)
        protocol.makeConnection(process)
        return process


@pytest.fixture
def journal(harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """journal(*missing_files) -> a Harness whose lastlog tries those files, then the journal."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "journalctl"
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))

    def make(*missing: Path) -> Any:
        reactor = ProcessReactor()
        runner = InlineRunner()
        sources: list[Any] = [FileTail(str(p), runner, Clock()) for p in missing]
        sources.append(JournalTail(reactor))
        config = LastlogConfig(sources=(*(str(p) for p in missing), "journal"))
        h = harness([make_lastlog(config, sources)])
        h.reactor = reactor
        return h

    return make


def started(h: Any, line: str) -> tuple[list[Any], Any, Any]:
    d, out, err = h.start(line)
    results: list[Any] = []
    d.addBoth(results.append)
    return results, out, err


@pytest.mark.parametrize("line", ["lastlog", "lastlog -n 50", "lastlog --json"])
def test_an_empty_journal_is_an_error_that_says_what_to_do(journal, tmp_path: Path, line: str) -> None:
    missing = [tmp_path / "syslog", tmp_path / "messages"]
    h = journal(*missing)
    results, out, err = started(h, line)
    h.reactor.spawned[-1].finish()
    assert results[0].status == 1
    assert out.data == b"", "not even half a JSON document"
    assert err.text == f"lastlog: {empty_journal_message([str(p) for p in missing])}\n"
    assert err.text.startswith(f"lastlog: no {missing[0]} or {missing[1]}, and the journal has no entries readable")
    assert err.text.endswith("; set [lastlog] path\n")
    assert h.audit.of("command")[0]["exit_code"] == 1


def test_a_journal_with_entries_is_printed_as_before(journal) -> None:
    h = journal()
    results, out, err = started(h, "lastlog -n 2")
    h.reactor.spawned[-1].finish(b"entry 1\nentry 2\n")
    assert (results[0].status, out.data, err.data) == (0, b"entry 1\nentry 2\n", b"")


@pytest.mark.parametrize("line", ["lastlog -f", "lastlog -f --json"])
def test_following_an_empty_journal_fails_at_once_instead_of_waiting_in_silence(journal, line: str) -> None:
    h = journal()
    results, out, err = started(h, line)
    (probe,) = h.reactor.spawned
    assert probe.argv[1:] == ["-n", "1", "--no-pager", "-q"]
    probe.finish()
    assert results[0].status == 1
    assert [p.argv for p in h.reactor.spawned] == [probe.argv], "journalctl -f never started"
    assert out.data == b""
    assert err.text == f"lastlog: {empty_journal_message([])}\n"


def test_following_a_readable_journal_starts_journalctl_f_after_the_probe(journal) -> None:
    h = journal()
    results, out, _ = started(h, "lastlog -f -n 3")
    h.reactor.spawned[0].finish(b"an entry\n")
    follow = h.reactor.spawned[1]
    assert follow.argv[1:] == ["-n", "3", "-f", "--no-pager", "-q"]
    follow.protocol.outReceived(b"entry a\n")
    assert out.data == b"entry a\n", "the probe's output is not shown"
    assert not results


def test_json_error_from_journalctl_leaves_stdout_empty(journal) -> None:
    h = journal()
    results, out, err = started(h, "lastlog --json")
    spawned = h.reactor.spawned[-1]
    spawned.protocol.errReceived(b"Failed to open journal\n")
    spawned.protocol.processEnded(Failure(error.ProcessTerminated(exitCode=1)))
    assert results[0].status == 1
    assert out.data == b"", 'used to be half a document: {"source": "journal", "lines": ['
    assert err.text == "lastlog: journalctl: Failed to open journal\n"


def test_empty_journal_message_names_the_groups_for_a_user_outside_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 65534)
    monkeypatch.setattr(os, "getegid", lambda: 65534)
    monkeypatch.setattr(os, "getgroups", lambda: [65534])
    message = empty_journal_message([])
    assert message.startswith("the journal has no entries readable by this user (")
    assert "is in neither the systemd-journal nor the adm group); set [lastlog] path" in message


@pytest.fixture
def lastlog_harness(harness):
    """lastlog_harness(path) -> a Harness whose lastlog reads that file (follow polls on its clock)."""

    def make(path: Path) -> Any:
        h = harness([])
        h.table.add(make_lastlog(LastlogConfig(sources=(str(path),)), [FileTail(str(path), InlineRunner(), h.clock)]))
        return h

    return make


# -- files ------------------------------------------------------------------------------------------


@pytest.fixture
def empty_log(tmp_path: Path) -> Path:
    path = tmp_path / "syslog"
    path.write_bytes(b"")
    return path


def test_an_empty_file_is_a_valid_answer_with_a_note_on_stderr(lastlog_harness, empty_log: Path) -> None:
    run = lastlog_harness(empty_log).run("lastlog")
    assert (run.status, run.stdout) == (0, b"")
    assert run.err == f"lastlog: {empty_log} is empty\n"


def test_an_empty_file_in_json_is_an_empty_list_and_the_note(lastlog_harness, empty_log: Path) -> None:
    run = lastlog_harness(empty_log).run("lastlog --json")
    assert run.status == 0
    assert json.loads(run.stdout) == {"source": str(empty_log), "lines": []}
    assert run.err == f"lastlog: {empty_log} is empty\n"


def test_a_file_with_lines_prints_no_note(lastlog_harness, tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    log.write_bytes(b"\n")  # one empty line is a line
    run = lastlog_harness(log).run("lastlog")
    assert (run.status, run.stdout, run.stderr) == (0, b"\n", b"")


def test_following_an_empty_file_notes_it_then_follows(lastlog_harness, empty_log: Path) -> None:
    h = lastlog_harness(empty_log)
    d, out, err = h.start("lastlog -f")
    assert err.text == f"lastlog: {empty_log} is empty\n"
    empty_log.write_bytes(b"first\n")
    h.clock.advance(FOLLOW_POLL)
    assert out.data == b"first\n", "an empty file is followed like tail -F does"
    d.cancel()


# -- a file this user may not read (needs a user other than root: forked, then setuid nobody) ---------


@contextlib.contextmanager
def traversable_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="conchcmd-unreadable-", dir="/tmp"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path)


def as_unprivileged(fn: Callable[[], Any]) -> Any:
    """fn() run as `nobody` when the tests run as root (root reads every file), else as is."""
    if os.geteuid() != 0:
        return fn()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(write_end, pickle.dumps(fn()))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    assert data, "the unprivileged child failed"
    return pickle.loads(data)


def test_an_unreadable_file_says_whose_permission_is_missing(lastlog_harness) -> None:
    with traversable_dir() as directory:
        log = directory / "syslog"
        log.write_bytes(b"secret\n")
        log.chmod(0o640)
        h = lastlog_harness(log)

        if os.geteuid() != 0:
            log.chmod(0)  # unreadable by its owner too
        group = grp.getgrgid(log.stat().st_gid).gr_name

        def run() -> tuple[int, bytes, bytes]:
            r = h.run("lastlog")
            return int(r.status), r.stdout, r.stderr

        status, stdout, stderr = as_unprivileged(run)
    assert (status, stdout) == (1, b"")
    assert stderr.decode().startswith(f"lastlog: {log}: permission denied for this user (")
    assert stderr.decode().endswith(f"); add it to group {group} or set [lastlog] path\n")


# -- doctor -------------------------------------------------------------------------------------------


def doctor(tmp_path: Path, log_path: str) -> tuple[int, str]:
    config = tmp_path / "conchcmd.toml"
    config.write_text(f'audit_log = "-"\n[lastlog]\npath = {json.dumps(log_path)}\n')
    out = io.StringIO()
    status = cli.main(["doctor", "--config", str(config)], out=out)
    return status, out.getvalue()


def test_doctor_warns_about_an_empty_log_file(tmp_path: Path, empty_log: Path) -> None:
    _, report = doctor(tmp_path, str(empty_log))
    assert f"warning  lastlog reads {empty_log}, which is empty: it prints nothing until something is logged" in report


@pytest.mark.parametrize(
    ("script", "warned"),
    [
        ("#!/bin/sh\nexit 0\n", True),  # what journalctl -q prints for a journal this user cannot read
        ("#!/bin/sh\necho 'No journal files were found.' >&2\nexit 1\n", True),
        ("#!/bin/sh\necho 'Nov 29 21:00:00 host systemd[1]: Started.'\n", False),
    ],
)
def test_doctor_warns_when_the_journal_shows_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str, warned: bool
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "journalctl").write_text(script)
    (bin_dir / "journalctl").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    _, report = doctor(tmp_path, "journal")
    line = next(line for line in report.splitlines() if "lastlog reads the systemd journal" in line)
    if warned:
        assert line.startswith("warning  lastlog reads the systemd journal, but the journal has no entries readable")
        assert line.endswith(": lastlog fails (status 1)")
        assert "fix: run doctor as the server's user" in report
    else:
        assert line == "ok       lastlog reads the systemd journal"
