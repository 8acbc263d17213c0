"""`lastlog -f` over the whole SSH stack: in exec the end of the client's input (`ssh -n`, cron)
does not end a follow, a signal or the channel's close does; in the shells EOF still ends it."""

from __future__ import annotations

from pathlib import Path

from support.sshclient import Connection, RecordingChannel
from support.world import World
from twisted.conch.ssh import common

from conchcmd.commands.lastlog import FOLLOW_POLL


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def poll(world: World, conn: Connection, times: int = 1) -> None:
    for _ in range(times):
        world.clock.advance(FOLLOW_POLL)
        conn.flush()


def follow_with_input_closed(world: World) -> tuple[Connection, RecordingChannel]:
    """`ssh -n host lastlog -f -n 1`: the exec request, then EOF at once."""
    conn = world.login()
    chan = conn.open_session()
    conn.exec(chan, b"lastlog -f -n 1")
    conn.send_eof(chan)
    poll(world, conn)
    assert bytes(chan.out) == b"line 20\n"
    return conn, chan


def test_exec_follow_outlives_eof_and_streams_what_is_appended(world: World) -> None:
    conn, chan = follow_with_input_closed(world)
    for n in (21, 22, 23):
        append(world.log_file, b"line %d\n" % n)
        poll(world, conn, 3)
    assert bytes(chan.out) == b"line 20\nline 21\nline 22\nline 23\n"
    assert chan.exit_status is None and not chan.is_closed
    assert world.audit.of("command") == []  # still running


def test_exec_follow_ends_with_130_at_a_signal(world: World) -> None:
    conn, chan = follow_with_input_closed(world)
    append(world.log_file, b"line 21\n")
    poll(world, conn)
    conn.request(chan, b"signal", common.NS(b"INT"), want_reply=False)
    assert chan.exit_status == 130
    assert chan.events[-3:] == ["eof", "exit-status", "close"]
    assert bytes(chan.out) == b"line 20\nline 21\n"
    (record,) = world.audit.of("command")
    assert (record["argv"], record["exit_code"]) == (["lastlog", "-f", "-n", "1"], 130)
    append(world.log_file, b"line 22\n")
    poll(world, conn, 2)
    assert bytes(chan.out) == b"line 20\nline 21\n"


def test_exec_follow_ends_when_the_client_closes_the_channel(world: World) -> None:
    conn, chan = follow_with_input_closed(world)
    conn.conn.sendClose(chan)
    conn.flush()
    assert chan.is_closed and chan.exit_status is None  # no one left to tell
    (record,) = world.audit.of("command")
    assert record["exit_code"] == 130
    assert not conn.disconnected  # the connection (and any other channel) carries on
    other = conn.open_session()
    conn.exec(other, b"lastlog -n 1")
    assert other.exit_status == 0 and bytes(other.out) == b"line 20\n"


def test_plain_shell_follow_still_ends_at_eof_with_0(world: World) -> None:
    conn = world.login()
    chan = conn.open_session()
    conn.request(chan, b"shell")
    conn.send(chan, b"lastlog -f -n 1\n")
    poll(world, conn)
    append(world.log_file, b"line 21\n")
    poll(world, conn)
    assert chan.exit_status is None
    conn.send_eof(chan)
    poll(world, conn)
    assert bytes(chan.out) == b"line 20\nline 21\n"
    assert chan.exit_status == 0
    assert world.audit.of("command")[0]["exit_code"] == 0
