"""A bug of ours hit by a logged-in user's channel open or channel request ends that request, not
the connection: the client gets OPEN_FAILURE / CHANNEL_FAILURE as before (or, for a command whose
success was already sent, stderr "conchcmd: internal error" and exit status 1), and the traceback
is logged once per place in the code, then one line each time: a user who can trigger the bug
cannot flood the log with a traceback per request (it was one at critical level each time)."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from support.sshclient import RecordingChannel, still_works
from support.world import World
from twisted.conch.ssh import connection
from twisted.logger import LogEvent, LogLevel, capturedLogs, formatEvent

from conchcmd.session.channel import ExecHandler, SessionChannel
from conchcmd.session.realm import CommandUser

PEER = "10.0.0.7"
REPEATS = 50


def simulated_channel_bug(*args: Any) -> Any:
    raise KeyError("simulated channel bug")


def assert_logged_once(events: list[LogEvent], first_line: str) -> None:
    """REPEATS internal-error lines: the first with its traceback, the others one line each."""
    bugs = [e for e in events if e.get("log_format", "").startswith("Internal error")]
    assert len(bugs) == REPEATS
    first, *again = bugs
    assert first["log_level"] == LogLevel.error
    assert "simulated_channel_bug" in first["log_failure"].getTraceback()
    assert formatEvent(first) == first_line
    assert all(e["log_level"] == LogLevel.error for e in again)
    assert all("traceback logged before" in e["log_format"] and "log_failure" not in e for e in again)
    then = first_line.rsplit("; ", 1)[1]
    ending = f" (KeyError: 'simulated channel bug', traceback logged before); {then}"
    assert all(formatEvent(e).endswith(ending) for e in again)
    assert [e for e in events if "log_failure" in e] == [first]  # one traceback in all
    assert not [e for e in events if e.get("log_level") == LogLevel.critical]


def test_a_bug_opening_a_channel_refuses_the_channel_and_is_logged_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    bystander = world.login(peer="10.0.0.99")
    conn = world.login(peer=PEER)
    monkeypatch.setattr(CommandUser, "lookupChannel", simulated_channel_bug)
    with capturedLogs() as events:
        refused: list[RecordingChannel] = []
        for _ in range(REPEATS):
            chan = conn.open_session()
            chan.opened.addErrback(lambda _: None)
            refused.append(chan)
    assert all(c.open_failure is not None for c in refused)
    assert {(c.open_failure.data, c.open_failure.value) for c in refused} == {
        (connection.OPEN_CONNECT_FAILED, b"unknown failure")
    }
    assert_logged_once(events, f"Internal error opening a session channel from admin@{PEER}:40000; channel refused")
    assert world.audit.of("disconnect") == []
    monkeypatch.undo()
    still_works(conn, bystander)


def test_a_bug_answering_a_channel_request_refuses_it_and_is_logged_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    bystander = world.login(peer="10.0.0.99")
    conn = world.login(peer=PEER)
    chan = conn.open_session()
    monkeypatch.setattr(SessionChannel, "request_window_change", simulated_channel_bug)
    with capturedLogs() as events:
        answers: list[str] = []
        for _ in range(REPEATS):
            d = conn.request(chan, b"window-change", struct.pack(">4L", 100, 30, 0, 0))
            d.addCallbacks(lambda _: answers.append("ok"), lambda _: answers.append("refused"))
    assert answers == ["refused"] * REPEATS
    assert_logged_once(
        events, f"Internal error answering request window-change on channel 0 from admin@{PEER}:40000; request refused"
    )
    assert world.audit.of("command") == []  # a window-change leaves no record
    monkeypatch.undo()
    conn.exec(chan, b"help")  # the same channel still serves
    conn.flush()
    assert chan.exit_status == 0 and b"comphash" in chan.out
    still_works(conn, bystander)


def test_a_bug_refusing_an_exec_is_audited_as_the_server_s_failure(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = world.login(peer=PEER)
    chan = conn.open_session()
    monkeypatch.setattr(SessionChannel, "request_exec", simulated_channel_bug)
    with capturedLogs() as events:
        answers: list[str] = []
        for _ in range(REPEATS):
            d = conn.exec(chan, b"lastlog -n 3")
            d.addCallbacks(lambda _: answers.append("ok"), lambda _: answers.append("refused"))
    assert answers == ["refused"] * REPEATS and chan.exit_status is None and not chan.is_closed
    assert_logged_once(
        events, f"Internal error answering request exec on channel 0 from admin@{PEER}:40000; request refused"
    )
    records = world.audit.of("command")
    assert len(records) == REPEATS
    assert {(r["kind"], r["channel"], r["user"], r["line"], r["server_side"], r["reason"]) for r in records} == {
        ("exec", 0, "admin", "lastlog -n 3", True, "internal error: KeyError: 'simulated channel bug'")
    }
    assert all("exit_code" not in r for r in records)  # no exit status was sent
    monkeypatch.undo()
    still_works(conn)


def test_a_bug_starting_a_command_ends_it_like_a_crash(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The exec's success is queued before its command starts: a bug in starting it must end the
    channel, or the client waits for an exit status that never comes."""
    bystander = world.login(peer="10.0.0.99")
    conn = world.login(peer=PEER)
    monkeypatch.setattr(ExecHandler, "start", simulated_channel_bug)
    with capturedLogs() as events:
        for _ in range(REPEATS):
            chan = conn.open_session()
            conn.exec(chan, b"help")
            conn.flush()
            assert chan.events == ["reply", "data", "eof", "exit-status", "close"]
            assert (chan.err, chan.out, chan.exit_status) == (b"conchcmd: internal error\n", b"", 1)
    assert_logged_once(
        events,
        f"Internal error answering request exec on channel 0 from admin@{PEER}:40000; command ended, exit status 1",
    )
    monkeypatch.undo()
    still_works(conn, bystander)


def test_the_transport_sessions_and_commands_share_one_set_of_logged_places(world: World) -> None:
    # One traceback per place for the whole server: a command's crash and a packet's bug are
    # counted in the same InternalErrors, so its LIMIT bounds them together.
    conn = world.login(peer=PEER)
    avatar = conn.server.avatar
    assert isinstance(avatar, CommandUser)
    assert world.server.dispatcher.internal_errors is world.factory.internal_errors
    assert avatar.internal_errors is world.factory.internal_errors
