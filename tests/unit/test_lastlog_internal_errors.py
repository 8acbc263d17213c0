"""A bug of ours in `lastlog`'s reading path ends the command as a crashed command does: stderr
"conchcmd: internal error", exit status 1, the traceback logged once per place in the code and one
line each time after. journalctl's output reaches lastlog from the reactor, outside the command's
own Deferred chain: a bug there went to the reactor's log as an unhandled error each time, and the
command waited for ever (its journalctl kept running)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, error
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure

from conchcmd.commands import lastlog
from conchcmd.commands.framework import InlineRunner
from conchcmd.commands.lastlog import FileTail, JournalTail, LogSource, make_lastlog
from conchcmd.core.config import LastlogConfig

reactor_log = Logger(namespace="twisted.internet.process")


class ReactorProcess:
    """journalctl as Twisted's reactor runs it: its output and its end handed to the protocol;
    what the protocol raises is logged as an unhandled error and goes no further."""

    def __init__(self, protocol: Any):
        self.protocol = protocol
        self.signals: list[str] = []
        protocol.makeConnection(self)

    def deliver(self, method: str, *args: Any) -> None:
        try:
            getattr(self.protocol, method)(*args)
        except Exception:
            reactor_log.failure("Unhandled Error")

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass


class ProcessReactor:
    def __init__(self) -> None:
        self.spawned: list[ReactorProcess] = []

    def spawnProcess(self, protocol: Any, executable: str, argv: list[str], env: dict[str, str]) -> ReactorProcess:
        self.spawned.append(ReactorProcess(protocol))
        return self.spawned[-1]


def journalctl_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PATH holds only a journalctl (one that exits at once): JournalTail looks it up there, and the
    ProcessReactor runs it in its place."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "journalctl").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "journalctl").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))


def simulated_bug(*args: Any) -> Any:
    raise KeyError("simulated lastlog bug")


@pytest.mark.parametrize("kind", ["file", "journal"])
def test_a_bug_in_the_reading_path_ends_the_command_as_a_crash_logged_once(
    harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    log = tmp_path / "syslog"
    log.write_bytes(b"one\ntwo\n")
    journalctl_on_path(tmp_path, monkeypatch)
    reactor = ProcessReactor()
    source: LogSource = FileTail(str(log), InlineRunner(), Clock()) if kind == "file" else JournalTail(reactor)
    h = harness([make_lastlog(LastlogConfig(sources=(str(log) if kind == "file" else "journal",)), [source])])
    monkeypatch.setattr(lastlog.JsonLines, "_encode", simulated_bug)  # each line read goes through it
    with capturedLogs() as events:
        for _ in range(2):
            d, out, err = h.start("lastlog --json")
            results: list[Any] = []
            d.addBoth(results.append)
            if kind == "journal":
                journalctl = reactor.spawned[-1]
                journalctl.deliver("outReceived", b"entry 1\nentry 2\n")
                assert journalctl.signals == ["TERM"]  # stopped: nothing more is read
                journalctl.deliver("processEnded", Failure(error.ProcessTerminated(signal=15)))
            assert [r.status for r in results] == [1]
            assert (out.data, err.data) == (b"", b"conchcmd: internal error\n")
    bugs = [e for e in events if e.get("log_format", "").startswith("Internal error")]
    assert [formatEvent(e) for e in bugs] == [
        "Internal error running lastlog from alice@192.0.2.7:50022; exit status 1",
        "Internal error running lastlog from alice@192.0.2.7:50022 "
        "(KeyError: 'simulated lastlog bug', traceback logged before); exit status 1",
    ]
    assert [e for e in events if "log_failure" in e] == bugs[:1]  # one traceback in all
    assert "simulated_bug" in bugs[0]["log_failure"].getTraceback()
    assert all(e["log_level"] == LogLevel.error for e in bugs)
    assert [r["exit_code"] for r in h.audit.of("command")] == [1, 1]


class HeldOutput:
    """An Output whose writes wait until the test lets them go (a client that lags)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.waiting: list[defer.Deferred[None]] = []

    def write(self, data: bytes) -> defer.Deferred[None]:
        self.writes.append(data)
        self.waiting.append(defer.Deferred())
        return self.waiting[-1]


def test_a_bug_once_the_client_has_taken_the_output_ends_the_command_as_a_crash(
    harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """journalctl is paused while the client lags and resumed when its output has been taken,
    later, from the session's Deferred: a bug there (in resuming it) ends the command the same way."""
    journalctl_on_path(tmp_path, monkeypatch)
    reactor = ProcessReactor()
    h = harness([make_lastlog(LastlogConfig(sources=("journal",)), [JournalTail(reactor)])])
    monkeypatch.setattr(ReactorProcess, "resumeProducing", simulated_bug)
    with capturedLogs() as events:
        for _ in range(2):
            out, err = HeldOutput(), HeldOutput()
            d = h.dispatcher.dispatch(
                "lastlog", stdout=out, stderr=err, user="alice", peer="192.0.2.7:50022", fingerprint="SHA256:x"
            )
            results: list[Any] = []
            d.addBoth(results.append)
            journalctl = reactor.spawned[-1]
            journalctl.deliver("outReceived", b"entry 1\n")
            assert out.writes == [b"entry 1\n"] and not results
            out.waiting.pop().callback(None)  # the client took it: journalctl resumed
            assert journalctl.signals == ["TERM"]
            err.waiting.pop().callback(None)  # the crash's stderr line taken
            journalctl.deliver("processEnded", Failure(error.ProcessTerminated(signal=15)))
            assert [r.status for r in results] == [1]
            assert err.writes == [b"conchcmd: internal error\n"]
    bugs = [e for e in events if e.get("log_format", "").startswith("Internal error")]
    assert len(bugs) == 2 and [e for e in events if "log_failure" in e] == bugs[:1]
    assert "simulated_bug" in bugs[0]["log_failure"].getTraceback()
