"""The session channel and both shells over a recording connection, time driven by task.Clock."""

from __future__ import annotations

from typing import Any

import pytest
from support.channels import Harness, RecordingConnection, winsize
from twisted.conch.ssh import common

from conchcmd.commands.framework import ExitStatus
from conchcmd.session.channel import (
    OUTPUT_HIGH_WATER,
    OUTPUT_LOW_WATER,
    WINDOW_FLOOR,
    ConnectionBudget,
    SessionChannel,
)
from conchcmd.session.realm import make_handler


def test_exec_starts_on_the_next_reactor_turn() -> None:
    h = Harness()
    assert h.chan.requestReceived(b"exec", common.NS(b"say hi")) == 1
    assert h.conn.sent == []  # the reply to the request must go out first
    h.clock.advance(0)
    assert h.conn.sent == [("data", b"hi\n"), ("eof", None), ("exit-status", b"\0\0\0\0"), ("close", None)]


def test_output_never_exceeds_the_window_and_packets_fit() -> None:
    h = Harness(window=10, max_packet=4)
    h.exec(b"say abcdefghijklmnop")
    assert h.conn.data() == b"abcdefghij"
    assert all(len(v) <= 4 for k, v in h.conn.sent if k == "data")
    assert "eof" not in h.conn.kinds()  # the exit status waits for the output
    h.chan.addWindowBytes(100)
    assert h.conn.data() == b"abcdefghijklmnop\n"
    assert h.conn.kinds()[-3:] == ["eof", "exit-status", "close"]


def test_a_maximum_packet_size_of_0_stops_the_output_loop_instead_of_spinning() -> None:
    """server/connection.py refuses such opens, but the pump must not depend on it: min(len, window, 0) is 0,
    and the loop sent empty packets for ever (the whole reactor stopped)."""
    h = Harness(window=1 << 20, max_packet=0)
    calls = 0
    record = h.conn.sendData

    def send_data(chan: Any, data: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls >= 1000:
            h.chan._gone = True  # stop a spinning loop so that the test fails instead of hanging
        record(chan, data)

    h.conn.sendData = send_data  # type: ignore[method-assign]
    h.exec(b"say hello")
    h.chan.addWindowBytes(1000)
    h.clock.advance(1)
    assert calls == 0 and h.conn.sent == []  # nothing can be sent: no packet at all, empty or not
    assert h.chan._queued == len(b"hello\n")  # the output waits, whole


def test_a_maximum_packet_size_of_1_sends_everything_one_byte_a_packet() -> None:
    h = Harness(window=1 << 20, max_packet=1)
    h.exec(b"say hello")
    assert [v for k, v in h.conn.sent if k == "data"] == [bytes([c]) for c in b"hello\n"]
    assert h.conn.kinds()[-3:] == ["eof", "exit-status", "close"]


def test_writers_wait_above_the_high_water_mark() -> None:
    h = Harness(window=0)
    h.exec(b"flood 5000000")
    assert h.chan._queued <= OUTPUT_HIGH_WATER + 100_000  # the command paused, memory bounded
    for _ in range(200):
        h.chan.addWindowBytes(64 * 1024)
    assert len(h.conn.data()) == 5_000_000
    assert h.conn.kinds()[-3:] == ["eof", "exit-status", "close"]


def test_a_command_waits_once_512_kib_of_output_is_queued() -> None:
    """The figure README states; `flood` writes 100 000 bytes at a time and none leaves (window 0)."""
    h = Harness(window=0)
    h.exec(b"flood 5000000")
    assert 512 * 1024 < h.chan._queued <= 512 * 1024 + 100_000


def test_client_closing_cancels_the_command_and_drops_output() -> None:
    h = Harness(window=0)
    h.exec(b"block")
    h.chan.closed()
    assert h.gate is not None and h.gate.called  # cancelled
    (record,) = h.audit.of("command")
    assert record["exit_code"] == ExitStatus.INTERRUPTED
    assert "exit-status" not in h.conn.kinds()


def test_signal_request_interrupts() -> None:
    h = Harness()
    h.exec(b"block")
    assert h.chan.requestReceived(b"signal", common.NS(b"INT")) == 1
    assert h.conn.sent[-2:] == [("exit-status", b"\0\0\0\x82"), ("close", None)]


def test_malformed_requests_are_refused_not_raised() -> None:
    h = Harness()
    assert h.chan.requestReceived(b"pty-req", b"\0") == 0
    assert h.chan.requestReceived(b"window-change", b"") == 0
    assert h.chan.requestReceived(b"exec", b"\0\0") == 0


def test_plain_shell_input_before_start_is_kept() -> None:
    h = Harness()
    h.chan.requestReceived(b"shell", b"")
    h.chan.dataReceived(b"say one\nsay two\n")
    h.chan.eofReceived()
    h.clock.advance(0)
    assert h.conn.data() == b"one\ntwo\n"
    assert h.conn.sent[-2:] == [("exit-status", b"\0\0\0\0"), ("close", None)]


SAY_LINE = b"say " + b"x" * 250 + b"\n"


def test_plain_shell_window_follows_what_it_holds() -> None:
    """While a command runs, waiting lines fill the channel's account: the window shuts at
    `input_limit`, and no line is lost: all run, in order, once the command ends."""
    h = Harness()
    h.shell()
    h.client_sends(b"block\n")
    sent = h.fill_window(SAY_LINE)
    assert h.chan.localWindowLeft == 0
    assert h.chan.input_held() == sent  # everything sent since `block` waits
    assert h.chan.input_held() <= h.chan.input_limit  # shut at the limit, not beyond
    assert h.conn.data() == b""
    assert h.gate is not None
    h.gate.callback(None)
    h.settle()
    assert h.chan.input_held() == sent % len(SAY_LINE)  # only the partial line the window cut
    assert h.conn.data() == SAY_LINE[4:] * (sent // len(SAY_LINE))
    assert h.chan.localWindowLeft > h.chan.input_limit // 2  # the window opened again
    assert h.conn.granted() > 0


def test_plain_shell_runs_the_next_line_once_the_output_has_left() -> None:
    """Like `sh` writing to a pipe nobody reads: the second command waits for the first one's
    output to go out, so a client that reads nothing cannot make the server run line after line."""
    h = Harness(window=0)
    h.shell()
    h.client_sends(b"say one\nsay two\n")
    assert [c["argv"] for c in h.audit.of("command")] == [["say", "one"]]
    assert h.chan.input_held() == len(b"say two\n")
    h.chan.addWindowBytes(1000)
    assert [c["argv"] for c in h.audit.of("command")] == [["say", "one"], ["say", "two"]]
    assert h.conn.data() == b"one\ntwo\n"


def test_a_connection_holds_at_most_four_mib() -> None:
    """Sixteen channels holding 256 KiB each use the default budget up: a seventeenth is offered
    only the small window that lets a Ctrl-C through."""
    h = Harness()
    assert h.chan.input_limit == 256 * 1024
    channels = [h.chan]
    for _ in range(16):
        chan = SessionChannel(h.context, make_handler, remoteWindow=1 << 20, remoteMaxPacket=32768)
        chan.conn = h.conn  # type: ignore[assignment]
        channels.append(chan)
    for chan in channels:
        assert chan.requestReceived(b"shell", b"") == 1
    h.clock.advance(0)
    for chan in channels:
        h.client_sends(b"block\n", chan)
        h.fill_window(SAY_LINE, chan)
    assert h.budget.limit == 4 * 1024 * 1024
    assert h.budget.committed() <= h.budget.limit + WINDOW_FLOOR
    assert all(256 * 1024 - 6 <= c.input_held() <= 256 * 1024 for c in channels[:16])  # less `block`
    assert channels[16].input_held() <= WINDOW_FLOOR


def test_blank_lines_are_not_commands() -> None:
    """Blank lines (empty, spaces, CR) are skipped: no dispatch, no log line, no audit record;
    they do not stop the window from reopening either."""
    from twisted.logger import globalLogPublisher

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        h = Harness()
        h.shell()
        sent = h.fill_window(b"\n \r\n\t\n", total=4 * h.chan.input_limit)
        assert sent == 4 * h.chan.input_limit  # consumed as fast as it came: the window stayed open
        h.client_sends(b"\n\nsay done\n   \n")
        h.chan.eofReceived()
        h.clock.advance(0)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [e["argv"] for e in h.audit.of("command")] == [["say", "done"]]
    received = [e for e in events if "Cmd received" in str(e.get("log_format", ""))]
    assert [e["line"] for e in received] == ["say done"]
    assert h.conn.data() == b"done\n"
    assert h.conn.sent[-2:] == [("exit-status", b"\0\0\0\0"), ("close", None)]


def test_channels_of_a_connection_share_one_budget() -> None:
    """Two channels whose commands stall: together they hold no more than the connection's
    budget, and the second one's window opens once the first lets go."""
    budget = ConnectionBudget(limit=300_000)
    h = Harness(budget=budget)
    h.shell()
    h.client_sends(b"block\n")
    first = h.fill_window(SAY_LINE)
    second = SessionChannel(h.context, make_handler, remoteWindow=1 << 20, remoteMaxPacket=32768)
    second.conn = h.conn  # type: ignore[assignment]
    assert second.requestReceived(b"shell", b"") == 1
    h.clock.advance(0)
    assert second.localWindowLeft == 300_000 - first  # what the budget has left
    gate = h.gate
    assert gate is not None
    h.client_sends(b"block\n", second)
    h.fill_window(SAY_LINE, second)
    assert budget.committed() <= budget.limit
    assert second.localWindowLeft == 0
    gate.callback(None)  # the first channel's lines run: its bytes are free again
    h.settle()
    assert second.localWindowLeft > 0  # ... and the starved channel was offered them
    assert budget.committed() <= budget.limit
    held = second.input_held()
    assert held > 0
    handler = second.handler  # the channel lets go of it on close
    second.closed()  # its buffers go at once, not when the garbage collector gets to the channel
    assert second.input_held() == 0 and handler._input == bytearray()  # type: ignore[union-attr]
    assert second.handler is None
    h.chan.closed()
    assert budget.channels == {}


def test_output_waits_sooner_when_the_connection_is_over_budget() -> None:
    """Two floods to clients that read nothing: each writer waits at the low-water mark once the
    connection is over its budget, not at the (per-channel) high-water mark."""
    h = Harness(window=0, budget=ConnectionBudget(limit=256 * 1024))
    second = SessionChannel(h.context, make_handler, remoteWindow=0, remoteMaxPacket=32768)
    second.conn = h.conn  # type: ignore[assignment]
    h.exec(b"flood 5000000")
    assert second.requestReceived(b"exec", common.NS(b"flood 5000000")) == 1
    h.clock.advance(0)
    assert h.chan.busy and second.busy
    chunk = 100_000  # what `flood` writes at a time
    assert h.chan._queued + second._queued <= 2 * (OUTPUT_LOW_WATER + chunk)
    assert OUTPUT_LOW_WATER + chunk < OUTPUT_HIGH_WATER  # i.e. less than either could queue alone


def test_ctrl_c_gets_through_while_output_fills_the_budget() -> None:
    """A channel whose queued output uses the whole budget still offers a small window, so a
    pty user can interrupt the command with Ctrl-C."""
    h = Harness(window=0, budget=ConnectionBudget(limit=64 * 1024))
    h.shell(pty=True)
    h.client_sends(b"flood 5000000\r")
    assert h.chan.busy
    assert h.chan.committed() > 64 * 1024  # output alone is over budget
    assert h.chan.localWindowLeft > 0
    h.client_sends(b"\x03")
    h.clock.advance(0)
    assert not h.chan.busy


def test_pty_echo_is_one_packet_per_batch() -> None:
    h = Harness()
    h.shell(pty=True)
    before = len(h.conn.sent)
    h.chan.dataReceived(b"a" * 10_000)
    assert len(h.conn.sent) - before == 1  # one write for the whole keystroke batch
    assert h.conn.sent[-1] == ("data", b"a" * 10_000)


def test_pty_line_too_long_is_refused_and_the_shell_goes_on() -> None:
    h = Harness()
    h.shell(pty=True)
    h.chan.dataReceived(b"x" * 20_000)
    assert h.conn.sent[-1][1].endswith(b"\x07")  # bell once at the cap
    h.chan.dataReceived(b"\r")
    assert h.conn.data().endswith(b"\r\nadmin@testhost> ")
    h.chan.dataReceived(b"say ok\r")
    assert h.conn.data().endswith(b"ok\r\nadmin@testhost> ")
    assert b"line too long" in h.conn.data()


def test_pty_window_change_does_not_clear_the_screen() -> None:
    h = Harness()
    h.shell(pty=True)
    before = h.conn.data()
    assert h.chan.requestReceived(b"window-change", winsize(120, 40)) == 1
    assert h.conn.data() == before


def test_pty_ctrl_c_interrupts_a_running_command_and_flushes_typeahead() -> None:
    h = Harness()
    h.shell(pty=True)
    h.chan.dataReceived(b"block\r")
    h.chan.dataReceived(b"say typed-ahead\r")
    h.chan.dataReceived(b"\x03")
    out = h.conn.data()
    assert out.endswith(b"^C\r\nadmin@testhost> ")
    assert b"typed-ahead\r\n" not in out.split(b"^C")[-1]
    (record,) = h.audit.of("command")
    assert record["argv"] == ["block"] and record["exit_code"] == 130


def test_pty_typeahead_runs_after_the_command() -> None:
    h = Harness()
    h.shell(pty=True)
    h.chan.dataReceived(b"block\r")
    h.chan.dataReceived(b"say later\rsay again\r")
    assert b"later" not in h.conn.data()
    assert h.gate is not None
    h.gate.callback(None)
    tail = h.conn.data().split(b"block\r\n", 1)[1]
    assert tail == (b"admin@testhost> say later\r\nlater\r\nadmin@testhost> say again\r\nagain\r\nadmin@testhost> ")


def test_pty_eof_ends_after_pending_input() -> None:
    h = Harness()
    h.shell(pty=True)
    h.chan.dataReceived(b"block\r")
    h.chan.dataReceived(b"say x\r")
    h.chan.eofReceived()
    assert "exit-status" not in h.conn.kinds()
    assert h.gate is not None
    h.gate.callback(None)
    assert h.conn.data().endswith(b"say x\r\nx\r\n")  # no prompt after the last line
    assert h.conn.sent[-3:] == [("eof", None), ("exit-status", b"\0\0\0\0"), ("close", None)]


@pytest.mark.parametrize("key", [b"\x1b[D", b"\x1b[H", b"\x1b[F", b"\x7f"])
def test_pty_editing_keys_edit_in_place(key: bytes) -> None:
    h = Harness()
    h.shell(pty=True)
    h.chan.dataReceived(b"say ab" + key + b"c\r")
    out = h.conn.data().split(b"\r\n")
    expected = {b"\x1b[D": b"acb", b"\x1b[H": b"csay ab", b"\x1b[F": b"abc", b"\x7f": b"ac"}[key]
    if key == b"\x1b[H":
        assert b"csay: command not found" in h.conn.data()
    else:
        assert expected in out[-2], out


def test_pty_ctrl_c_pasted_with_the_command_interrupts_it() -> None:
    h = Harness()
    h.shell(pty=True)
    h.chan.dataReceived(b"block\r\x03")
    assert h.conn.data().endswith(b"block\r\n^C\r\nadmin@testhost> ")
    (record,) = h.audit.of("command")
    assert record["exit_code"] == 130


def test_a_release_costs_one_pass_over_the_connections_channels(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exec's output and close re-offer window to the connection's starved channels: that
    looks at each channel's account a few times, not once per pair of channels (with 64
    multiplexed execs each release summed every account once per channel: ~12,000 look-ups
    per exec instead of a few hundred)."""
    h = Harness()
    others = []
    for _ in range(63):
        chan = SessionChannel(h.context, make_handler, remoteWindow=1 << 20, remoteMaxPacket=32768)
        chan.conn = h.conn  # type: ignore[assignment]
        assert chan.requestReceived(b"exec", common.NS(b"block")) == 1
        others.append(chan)
    h.clock.advance(0)
    assert all(c.busy for c in others)
    looked_up = 0
    account = SessionChannel.committed

    def counted(chan: SessionChannel) -> int:
        nonlocal looked_up
        looked_up += 1
        return account(chan)

    monkeypatch.setattr(SessionChannel, "committed", counted)
    h.exec(b"say hi")
    h.chan.closed()
    assert h.conn.data() == b"hi\n"
    assert h.budget.committed() <= h.budget.limit + 64 * WINDOW_FLOOR  # the accounts still add up
    assert looked_up <= 16 * 64, looked_up  # a handful of passes (758 now)


class ClosingConnection(RecordingConnection):
    """As ConnectionService.send_exit: with the client's side closed already, the channel closes."""

    def send_exit(self, chan: Any, status: int) -> None:
        super().send_exit(chan, status)
        chan.localClosed = True
        if chan.remoteClosed:
            chan.closed()


def test_a_command_that_closes_its_channel_at_start_raises_nothing_over_its_early_input() -> None:
    h = Harness()
    h.conn = ClosingConnection()
    h.chan.conn = h.conn  # type: ignore[assignment]
    h.client_sends(b"early\n")
    h.chan.eofReceived()
    h.chan.remoteClosed = True
    replies: list[tuple[bool, bool]] = []
    h.chan.answer_request(b"exec", common.NS(b"say hi"), lambda ok, begins: replies.append((ok, begins)))
    h.settle()
    assert replies == [(True, True)]
    assert h.conn.data() == b"hi\n" and h.conn.kinds()[-3:] == ["eof", "exit-status", "close"]
