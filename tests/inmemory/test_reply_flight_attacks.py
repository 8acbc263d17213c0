"""Attacks on the held exec reply (REPLY_HOLD): a rekey, a zero window, the client's EOF, many
channels; whatever the client does while the reply is held, the channel's packets arrive in the
order they were made, the command's answer is whole, and no timer is left behind."""

from __future__ import annotations

from pathlib import Path

from support.runners import ManualRunner
from support.sshclient import Connection
from support.world import World, make_world

from conchcmd.server.connection import REPLY_HOLD

DONE = ["reply", "data", "eof", "exit-status", "close"]


def hash_hello(world: World) -> bytes:
    return b"comphash " + str(world.root / "hello.txt").encode()


def held_world(tmp_path: Path) -> tuple[World, ManualRunner, Connection]:
    runner = ManualRunner()
    world = make_world(tmp_path, runner=runner)
    return world, runner, world.login()


def test_a_rekey_while_the_reply_is_held_keeps_the_answer_whole_and_in_order(tmp_path: Path) -> None:
    world, runner, conn = held_world(tmp_path)
    kexes = conn.client.kex_count
    chan = conn.open_session()
    conn.exec(chan, hash_hello(world))
    conn.client.sendKexInit()  # the client rekeys while the reply waits for the command
    runner.run_all()  # the answer is made during the key exchange: it must wait for the new keys
    conn.flush()
    assert conn.client.kex_count == kexes + 1 and not conn.disconnected
    assert chan.events == DONE and chan.exit_status == 0
    assert bytes(chan.out).endswith(b"/root/hello.txt\n")


def test_a_rekey_when_the_hold_ends_sends_the_reply_after_the_new_keys(tmp_path: Path) -> None:
    world, runner, conn = held_world(tmp_path)
    chan = conn.open_session()
    replied = conn.exec(chan, hash_hello(world))
    conn.client.sendKexInit()
    world.clock.advance(REPLY_HOLD)  # the timer releases the reply in the middle of the exchange
    conn.flush()
    assert replied.called and chan.events == ["reply"] and not conn.disconnected
    runner.run_all()
    conn.flush()
    assert chan.events == DONE and chan.exit_status == 0


def test_a_zero_window_holds_the_output_not_the_reply(tmp_path: Path) -> None:
    world, runner, conn = held_world(tmp_path)
    chan = conn.open_session(window=1)  # a peer that takes one byte (Conch's client reads 0 as its default)
    replied = conn.exec(chan, hash_hello(world))
    runner.run_all()
    conn.flush()
    assert not replied.called  # held with the output to come (at most REPLY_HOLD)
    world.clock.advance(REPLY_HOLD)
    conn.flush()
    assert replied.called and chan.events == ["reply", "data"] and len(chan.out) == 1  # the rest waits
    conn.conn.adjustWindow(chan, 1 << 20)
    conn.flush()
    assert chan.events == ["reply", *DONE[1:]] and chan.exit_status == 0
    assert bytes(chan.out).endswith(b"/root/hello.txt\n")
    assert not world.clock.getDelayedCalls() or min(c.getTime() for c in world.clock.getDelayedCalls()) > (
        world.clock.seconds() + REPLY_HOLD
    )


def test_the_client_s_eof_while_held_changes_nothing(tmp_path: Path) -> None:
    world, runner, conn = held_world(tmp_path)
    chan = conn.open_session()
    conn.exec(chan, hash_hello(world))
    conn.send_eof(chan)
    conn.send(chan, b"")  # and nothing more
    runner.run_all()
    conn.flush()
    assert chan.events == DONE and chan.exit_status == 0


def test_many_channels_closed_by_the_client_while_held_leave_no_timer(tmp_path: Path) -> None:
    world, runner, conn = held_world(tmp_path)
    before = len(world.clock.getDelayedCalls())
    for _ in range(50):
        chan = conn.open_session()
        conn.exec(chan, hash_hello(world))
        conn.conn.sendClose(chan)
        conn.flush()
        assert chan.events == ["reply", "close"]
    runner.run_all()
    conn.flush()
    assert len(world.clock.getDelayedCalls()) <= before  # every hold's timer cancelled
    assert not conn.disconnected
