"""The reply to an exec waits for the command's first packets and leaves with them (REPLY_HOLD):
a quick command's whole answer (reply, output, EOF, exit status, close) is one write, in the order
the packets were made; a slow command's reply leaves after REPLY_HOLD; nothing of the channel ever
overtakes it (a later request's reply, a close), and a connection that ends drops it quietly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from support.runners import ManualRunner
from support.sshclient import Connection
from support.world import World, make_world
from twisted.conch.ssh import common

from conchcmd.server.connection import HOLD_BYTES, REPLY_HOLD


def writes_of(conn: Connection) -> list[bytes]:
    """Record what the server writes to its (in-memory) socket from now on, write by write."""
    writes: list[bytes] = []
    io = conn.server.transport
    write = io.write

    def recording(data: bytes) -> None:
        writes.append(data)
        write(data)

    io.write = recording
    return writes


def hash_hello(world: World) -> bytes:
    return b"comphash " + str(world.root / "hello.txt").encode()


def held_world(tmp_path: Path) -> tuple[World, ManualRunner, Connection]:
    runner = ManualRunner()  # the command's file work waits, as in a thread, until the test runs it
    world = make_world(tmp_path, runner=runner)
    return world, runner, world.login()


def test_a_quick_command_s_whole_answer_is_one_write_in_order(tmp_path: Path) -> None:
    world, runner, conn = held_world(tmp_path)
    chan = conn.open_session()
    writes = writes_of(conn)
    replied = conn.exec(chan, hash_hello(world))
    assert (writes, chan.events, replied.called) == ([], [], False)  # held: the command is in its "thread"
    runner.run_all()
    conn.flush()
    assert replied.called
    assert chan.events == ["reply", "data", "eof", "exit-status", "close"]
    assert bytes(chan.out).endswith(b"/root/hello.txt\n") and chan.exit_status == 0
    assert len(writes) == 1  # reply, data, EOF, exit-status and CLOSE: one flight
    assert not world.clock.getDelayedCalls() or all(c.getTime() > world.clock.seconds() + REPLY_HOLD
                                                    for c in world.clock.getDelayedCalls())  # fmt: skip


def test_a_command_that_fails_at_once_answers_in_one_write_too(tmp_path: Path) -> None:
    _world, _runner, conn = held_world(tmp_path)
    chan = conn.open_session()
    writes = writes_of(conn)
    conn.exec(chan, b"nosuchcommand")
    assert chan.events == ["reply", "data", "eof", "exit-status", "close"] and chan.exit_status == 127
    assert len(writes) == 1


def test_a_slow_command_s_reply_leaves_after_reply_hold(tmp_path: Path) -> None:
    world, runner, conn = held_world(tmp_path)
    chan = conn.open_session()
    replied = conn.exec(chan, hash_hello(world))
    world.clock.advance(REPLY_HOLD * 0.9)
    conn.flush()
    assert chan.events == [] and not replied.called
    world.clock.advance(REPLY_HOLD * 0.1)
    conn.flush()
    assert chan.events == ["reply"] and replied.called
    runner.run_all()
    conn.flush()
    assert chan.events == ["reply", "data", "eof", "exit-status", "close"] and chan.exit_status == 0


def test_a_later_request_s_reply_never_overtakes_the_held_one(tmp_path: Path) -> None:
    world, runner, conn = held_world(tmp_path)
    chan = conn.open_session()
    order: list[str] = []
    conn.exec(chan, hash_hello(world)).addCallback(lambda _: order.append("exec"))
    # a request the channel refuses, wanting a reply: FAILURE, after the exec's SUCCESS
    conn.request(chan, b"subsystem", common.NS(b"sftp")).addErrback(lambda _: order.append("subsystem refused"))
    assert order == ["exec", "subsystem refused"]
    runner.run_all()
    conn.flush()
    assert chan.exit_status == 0 and chan.is_closed


def test_a_client_close_sends_the_held_reply_first_and_a_lost_connection_drops_it(tmp_path: Path) -> None:
    world, runner, conn = held_world(tmp_path)
    chan = conn.open_session()
    replied = conn.exec(chan, hash_hello(world))
    conn.conn.sendClose(chan)
    conn.flush()
    assert replied.called and chan.events == ["reply", "close"]
    runner.run_all()  # the command's result arrives for a channel that is gone: nothing is sent
    conn.flush()
    assert chan.events == ["reply", "close"]

    chan2 = conn.open_session()
    outcome: list[Any] = []
    conn.exec(chan2, hash_hello(world)).addBoth(outcome.append)
    calls = len(world.clock.getDelayedCalls())
    conn.server.transport.loseConnection()
    conn.flush()
    assert len(world.clock.getDelayedCalls()) < calls  # the hold's timer went with the connection
    world.clock.advance(REPLY_HOLD)
    assert [type(o.value).__name__ for o in outcome] == ["ConchError"]  # the client's "channel closed": no reply


def test_output_past_hold_bytes_is_not_held(tmp_path: Path) -> None:
    big = b"x" * (HOLD_BYTES * 3)
    world, runner, conn = held_world(tmp_path)
    server_conn: Any = conn.server.service
    chan = conn.open_session()
    replied = conn.exec(chan, hash_hello(world))
    server_chan = server_conn.channels[conn.conn.localToRemoteChannel[chan.id]]
    server_chan.send(big)  # a command's output while the reply is held: at HOLD_BYTES it all goes
    conn.flush()
    assert replied.called and chan.events == ["reply", "data"] and bytes(chan.out) == big
    runner.run_all()
    conn.flush()
    assert chan.events == ["reply", "data", "eof", "exit-status", "close"]


def test_a_shell_s_reply_is_not_held(tmp_path: Path) -> None:
    """A shell without a pty writes nothing until the user types: its reply leaves at once, not
    after REPLY_HOLD (held, every `ssh -T` session would start 10 ms later)."""
    _world, _runner, conn = held_world(tmp_path)
    chan = conn.open_session()
    replied = conn.request(chan, b"shell")
    assert replied.called and chan.events == ["reply"]
