"""A bug of ours in what a session's Deferreds set going (a command's end, output drained, the
exit status sent once output has left) is logged once per place with its traceback and ends the
session as a crashed command does (stderr "conchcmd: internal error", exit status 1). Before, the
failure sat in the Deferred until garbage-collected ("Unhandled error in Deferred") and the
client waited for an exit status that never came."""

from __future__ import annotations

import gc
from dataclasses import replace
from typing import Any

import pytest
from support.channels import Harness
from twisted.internet import defer
from twisted.logger import LogEvent, LogLevel, capturedLogs, formatEvent

from conchcmd.core.internalerrors import InternalErrors

CRASHED = [("stderr", b"conchcmd: internal error\n"), ("eof", None), ("exit-status", b"\0\0\0\x01"), ("close", None)]


def bugs(events: list[LogEvent]) -> list[LogEvent]:
    return [e for e in events if e.get("log_format", "").startswith("Internal error")]


def test_an_exec_whose_command_deferred_fails_ends_with_exit_status_1(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness()

    def failing_dispatch(*args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        return defer.fail(KeyError("simulated session bug"))

    monkeypatch.setattr(h.dispatcher, "dispatch", failing_dispatch)
    with capturedLogs() as events:
        h.exec(b"say hi")
        gc.collect()  # a failure left in a Deferred would be reported now
    assert h.conn.sent == CRASHED
    (bug,) = bugs(events)
    assert (
        formatEvent(bug)
        == "Internal error running a session (exec) from admin@10.0.0.1:40000; session ended, exit status 1"
    )
    assert bug["log_level"] == LogLevel.error and "simulated session bug" in bug["log_failure"].getTraceback()
    assert not [e for e in events if "Unhandled error" in (e.get("log_format") or "")]


@pytest.mark.parametrize("pty", [False, True], ids=["plain", "pty"])
def test_a_shell_whose_command_deferred_fails_ends_once_per_place_logged(
    monkeypatch: pytest.MonkeyPatch, pty: bool
) -> None:
    """Ten sessions hit the same bug: one traceback, nine lines; each session ends (exit 1)."""
    shared = InternalErrors()
    with capturedLogs() as events:
        for _ in range(10):
            h = Harness()
            pending: defer.Deferred[Any] = defer.Deferred()
            monkeypatch.setattr(h.dispatcher, "dispatch", lambda *a, d=pending, **k: d)
            h.chan.context = replace(h.context, internal_errors=shared)  # the server's: one for all
            h.shell(pty=pty)
            h.client_sends(b"say hi\r\n" if pty else b"say hi\n")
            h.settle()
            assert "exit-status" not in h.conn.kinds()  # the command runs
            pending.errback(KeyError("simulated session bug"))
            h.settle()
            assert h.conn.sent[-4:] == CRASHED
        gc.collect()
    found = bugs(events)
    assert len(found) == 10
    first, *again = found
    assert "simulated session bug" in first["log_failure"].getTraceback()
    assert all("log_failure" not in e and "traceback logged before" in e["log_format"] for e in again)
    assert not [e for e in events if "Unhandled error" in (e.get("log_format") or "")]


def test_a_bug_sending_the_exit_status_after_output_drained_is_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(window=4)
    h.exec(b"say hello world")  # more than the window: the exit status waits for the output
    assert "exit-status" not in h.conn.kinds()

    def broken_send_exit(chan: Any, status: int) -> None:
        raise KeyError("simulated session bug")

    monkeypatch.setattr(h.conn, "send_exit", broken_send_exit)
    with capturedLogs() as events:
        h.chan.addWindowBytes(1000)
        h.settle()
        gc.collect()
    (bug,) = bugs(events)
    assert formatEvent(bug) == "Internal error ending a session from admin@10.0.0.1:40000; exit status not sent"
    assert "broken_send_exit" in bug["log_failure"].getTraceback()
    assert not [e for e in events if "Unhandled error" in (e.get("log_format") or "")]
