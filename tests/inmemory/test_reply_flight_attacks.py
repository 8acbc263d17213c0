"""Attacks on the held exec reply (REPLY_HOLD): a rekey, a zero window, the client's EOF, many
channels; whatever the client does while the reply is held, the channel's packets arrive in the
order they were made, the command's answer is whole, and no timer is left behind."""

from __future__ import annotations

import random
import struct
from pathlib import Path
from typing import Any

import pytest
from support.runners import ManualRunner
from support.sshclient import Connection, pty_request
from support.world import World, make_world
from twisted.conch.ssh import common
from twisted.internet import defer
from twisted.python.failure import Failure

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


def _quiet(d: Any) -> None:
    if isinstance(d, defer.Deferred):
        d.addErrback(lambda _: None)  # a refused request: the client's Deferred fails, expectedly


def _random_session_traffic(tmp_path: Path, seed: int) -> None:
    """One connection, up to 8 channels, 5-40 random client actions (execs quick and slow, shells,
    EOF, close, window adjusts, signals, window changes, rekeys, time passing, the commands'
    thread work finishing), then everything let finish."""
    rnd = random.Random(seed)
    runner = ManualRunner()
    world = make_world(tmp_path / str(seed), runner=runner)
    conn = world.login()
    chans: list[Any] = []
    first_replies: dict[Any, list[Any]] = {}  # a channel's first exec/shell wanting a reply: its outcome
    began: set[Any] = set()  # channels with an exec or shell sent
    slow = b"comphash " + str(world.root / "hello.txt").encode()
    for _ in range(rnd.randint(5, 40)):
        live = [c for c in chans if not c.is_closed and not c.localClosed]
        op = rnd.choice(["open", "exec", "shell", "eof", "close", "adjust", "signal", "winch", "rekey", "tick", "run"])
        if op == "open" and len(live) < 8:
            chan = conn.open_session(window=rnd.choice([1, 100, 32768, 1 << 21]), max_packet=rnd.choice([1024, 32768]))
            if rnd.random() < 0.3:
                _quiet(conn.request(chan, b"pty-req", pty_request()))
            chans.append(chan)
        elif op in ("exec", "shell") and live:
            chan = rnd.choice(live)
            command = rnd.choice([slow, slow, b"help", b"nosuchcommand", b"lastlog -n 15", b"exit 3"])
            kind, data = (b"exec", common.NS(command)) if op == "exec" else (b"shell", b"")
            d = conn.request(chan, kind, data, want_reply=rnd.random() < 0.8)
            if isinstance(d, defer.Deferred) and chan not in began:
                first_replies[chan] = outcome = []  # the channel's first command: it starts, SUCCESS
                d.addBoth(outcome.append)
            began.add(chan)
            _quiet(d)
        elif op == "eof" and live:
            conn.send_eof(rnd.choice(live))
        elif op == "close" and live:
            conn.conn.sendClose(rnd.choice(live))
        elif op == "adjust" and live:
            conn.conn.adjustWindow(rnd.choice(live), rnd.choice([1, 50, 100_000]))
        elif op == "signal" and live:
            conn.request(rnd.choice(live), b"signal", common.NS(b"INT"), want_reply=False)
        elif op == "winch" and live:
            conn.request(rnd.choice(live), b"window-change", struct.pack(">4L", 80, 24, 0, 0), want_reply=False)
        elif op == "rekey" and conn.client.kex_idle():
            conn.client.sendKexInit()
        elif op == "tick":
            world.clock.advance(rnd.choice([0.001, 0.005, REPLY_HOLD, 0.1]))
        elif op == "run":
            runner.run_all()
        if rnd.random() < 0.7:
            conn.flush()
    for chan in chans:
        if not chan.is_closed:
            conn.conn.adjustWindow(chan, 1 << 24)
    for _ in range(3):
        runner.run_all()
        world.clock.advance(1)
        conn.flush()
    assert not conn.disconnected
    for chan in chans:
        seen = [ORDER.index(e) for e in chan.events if e in ORDER]
        assert seen == sorted(seen), chan.events  # nothing overtook the reply, nor the exit status
        if "exit-status" in chan.events:
            assert chan.events[-1] == "close" or "close" not in chan.events
    for outcome in first_replies.values():  # answered, even if the client closed right after
        assert outcome and not isinstance(outcome[0], Failure), outcome
    for chan in chans:
        if not chan.is_closed:
            conn.conn.sendClose(chan)
    conn.flush()
    runner.run_all()
    conn.flush()
    assert not [c for c in world.clock.getDelayedCalls() if "flight" in repr(c.func)]  # no hold timer left


ORDER = ["reply", "data", "eof", "exit-status", "close"]


@pytest.mark.parametrize("seeds", [range(0, 20), range(20, 40)])
def test_random_client_traffic_never_reorders_a_channel_or_leaves_a_timer(tmp_path: Path, seeds: range) -> None:
    for seed in seeds:
        _random_session_traffic(tmp_path, seed)
