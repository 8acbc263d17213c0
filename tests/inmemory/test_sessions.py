"""Sessions over the whole in-memory SSH stack: exec, both shells, multiplexing, flow control."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest
from support.runners import ManualRunner
from support.sshclient import RecordingChannel, pty_request, result_of
from support.world import World, make_world
from twisted.conch.ssh import common, connection
from twisted.logger import capturedLogs, formatEvent

from conchcmd.session.channel import OUTPUT_HIGH_WATER, SessionChannel


def run_exec(world: World, command: bytes) -> RecordingChannel:
    """One `ssh host COMMAND`: like OpenSSH, leave once the channel has closed."""
    conn = world.login()
    chan = conn.open_session()
    conn.exec(chan, command)
    conn.flush()
    if chan.is_closed:
        conn.client.transport.loseConnection()
        conn.flush()
    return chan


def test_exec_success_orders_data_eof_status_close(world: World) -> None:
    chan = run_exec(world, b"comphash " + str(world.root / "hello.txt").encode())
    digest = hashlib.sha256(b"hello\n").hexdigest()
    assert bytes(chan.out) == f"{digest}  {world.root / 'hello.txt'}\n".encode()
    assert chan.err == b""
    assert chan.exit_status == 0
    assert chan.events == ["reply", "data", "eof", "exit-status", "close"]


def test_exec_reply_comes_before_output(world: World) -> None:
    conn = world.login()
    chan = conn.open_session()
    conn.exec(chan, b"exit 3")  # finishes at once: the reply must still come first
    conn.flush()
    assert chan.events == ["reply", "eof", "exit-status", "close"]


def test_a_command_that_writes_at_once_still_follows_the_reply(world: World) -> None:
    """The command starts in the turn its exec request arrives, right after the reply is queued:
    output written while starting (help writes synchronously) comes after the reply, then
    EOF, exit status and close."""
    conn = world.login()
    chan = conn.open_session()
    conn.exec(chan, b"help")
    conn.flush()
    assert chan.events == ["reply", "data", "eof", "exit-status", "close"]
    assert b"comphash" in chan.out and chan.exit_status == 0


def test_an_exec_without_want_reply_runs_and_gets_no_reply(world: World) -> None:
    conn = world.login()
    chan = conn.open_session()
    conn.request(chan, b"exec", common.NS(b"help"), want_reply=False)
    assert chan.events == ["data", "eof", "exit-status", "close"]
    assert chan.exit_status == 0


def test_a_request_that_fails_inside_the_server_is_refused_and_logged(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in a request handler: the client gets CHANNEL_FAILURE (as Conch answered an
    exception), the traceback is logged, and the channel and connection keep working."""

    def broken(self: SessionChannel, data: bytes) -> int:
        raise RuntimeError("bug")

    monkeypatch.setattr(SessionChannel, "request_env", broken, raising=False)
    conn = world.login()
    chan = conn.open_session()
    with capturedLogs() as events:
        refused = conn.request(chan, b"env", common.NS(b"LANG") + common.NS(b"C"))
    refused.addErrback(lambda f: None)
    assert chan.events == ["refused"]
    failures = [e for e in events if "log_failure" in e]
    assert [e["log_failure"].type for e in failures] == [RuntimeError]
    assert formatEvent(failures[0]).startswith("Internal error answering request env on channel 0 from admin@")
    conn.exec(chan, b"exit 4")
    assert chan.events == ["refused", "reply", "eof", "exit-status", "close"]
    assert chan.exit_status == 4 and not conn.disconnected


def test_exec_exit_statuses_and_stderr(world: World) -> None:
    cases = {
        b"nosuch": (127, b"nosuch: command not found\n"),
        b"lastlog -n 0": (2, b"lastlog: -n must be between 1 and 10000\nusage: lastlog [-n N] [-f] [--json]\n"),
        b"comphash /etc/hostname": (126, b"comphash: /etc/hostname: outside the allowed roots\n"),
        b"comphash " + str(world.root / "missing").encode(): (
            1,
            b"comphash: " + str(world.root / "missing").encode() + b": No such file or directory\n",
        ),
        b"exit 7": (7, b""),
        b"'unbalanced": (2, b"conchcmd: cannot parse the command line: No closing quotation\n"),
    }
    for command, (status, stderr) in cases.items():
        chan = run_exec(world, command)
        assert (chan.exit_status, bytes(chan.err), bytes(chan.out)) == (status, stderr, b""), command
    statuses = [e["exit_code"] for e in world.audit.of("command")]
    assert statuses == [127, 2, 126, 1, 7, 2]


def test_lastlog_prints_the_tail(world: World) -> None:
    chan = run_exec(world, b"lastlog -n 3")
    assert chan.out == b"line 18\nline 19\nline 20\n" and chan.exit_status == 0


def test_command_audit_record(world: World) -> None:
    run_exec(world, b"lastlog -n 2")
    (record,) = world.audit.of("command")
    assert record["user"] == "admin" and record["peer"] == "10.0.0.1:40000"
    assert record["argv"] == ["lastlog", "-n", "2"] and record["exit_code"] == 0
    assert record["fingerprint"].startswith("SHA256:") and "duration_ms" in record


def test_multiplexed_channels_keep_their_own_state(world: World) -> None:
    conn = world.login()
    channels = [conn.open_session() for _ in range(4)]
    commands = [b"exit 3", b"lastlog -n 1", b"nosuch", b"exit 0"]
    for chan, command in zip(channels, commands, strict=True):
        conn.exec(chan, command)
    conn.flush()
    assert [c.exit_status for c in channels] == [3, 0, 127, 0]
    assert channels[1].out == b"line 20\n"
    shell = conn.open_session()
    conn.request(shell, b"shell")
    conn.send(shell, b"lastlog -n 1\nexit 5\n")
    assert shell.out == b"line 20\n" and shell.exit_status == 5


def test_plain_shell_runs_lines_in_order_until_eof(world: World) -> None:
    conn = world.login()
    chan = conn.open_session()
    conn.request(chan, b"shell")
    conn.send(chan, b"lastlog -n 1\r\nnosuch\n")
    conn.send(chan, b"help lastlog\n")
    conn.send_eof(chan)
    assert chan.out == b"line 20\nusage: lastlog [-n N] [-f] [--json]\n" + _summary_of_lastlog(world) + b"\n"
    assert chan.err == b"nosuch: command not found\n"
    assert b"\x1b" not in chan.out
    assert chan.exit_status == 0  # the last command's status


def _summary_of_lastlog(world: World) -> bytes:
    command = world.server.dispatcher.table.get("lastlog")
    assert command is not None
    return command.summary.encode()


def test_plain_shell_eof_gives_last_status_and_bare_exit_too(world: World) -> None:
    conn = world.login()
    a = conn.open_session()
    conn.request(a, b"shell")
    conn.send(a, b"nosuch")  # no newline: still run at EOF
    conn.send_eof(a)
    assert a.exit_status == 127
    b = conn.open_session()
    conn.request(b, b"shell")
    conn.send(b, b"comphash /etc/hostname\nexit\nlastlog\n")
    assert b.exit_status == 126 and b.out == b""  # nothing after exit runs


def test_plain_shell_discards_an_overlong_line_and_continues(world: World) -> None:
    conn = world.login()
    chan = conn.open_session()
    conn.request(chan, b"shell")
    for _ in range(40):  # 40 x 50 KiB = 2 MiB without a newline, within the window
        conn.send(chan, b"x" * 50_000)
    conn.send(chan, b"\nlastlog -n 1\n")
    conn.send_eof(chan)
    assert chan.err == b"conchcmd: line too long (more than 16384 bytes), ignored\n"
    assert chan.out == b"line 20\n" and chan.exit_status == 0


def test_pty_shell_prompt_editing_and_exit(world: World) -> None:
    conn = world.login()
    chan = conn.open_session()
    result_of(conn.request(chan, b"pty-req", pty_request(columns=0, rows=0)))  # accepted
    conn.request(chan, b"shell")
    assert chan.out.startswith(b"conchcmd on testhost: type 'help' for commands")
    assert chan.out.endswith(b"admin@testhost> ")
    chan.out.clear()
    conn.send(chan, b"lastlog -n 2\r")
    assert chan.out == b"lastlog -n 2\r\nline 19\r\nline 20\r\nadmin@testhost> "
    chan.out.clear()
    conn.send(chan, b"junk\x03")  # Ctrl-C drops the line
    assert chan.out == b"junk^C\r\nadmin@testhost> "
    chan.out.clear()
    conn.send(chan, b"\x1b[A")  # Up: history recalls the last line
    assert chan.out.endswith(b"lastlog -n 2")
    conn.send(chan, b"\x03exit 4\r")
    assert chan.exit_status == 4
    assert chan.err == b""
    assert b"\x1bc" not in chan.out and b"\x1b[2J" not in chan.out and b"\x1b[4h" not in chan.out


def test_pty_shell_utf8_and_ctrl_d(world: World) -> None:
    conn = world.login()
    chan = conn.open_session()
    conn.request(chan, b"pty-req", pty_request())
    conn.request(chan, b"shell")
    chan.out.clear()
    conn.send(chan, "h\u00e9llo".encode()[:2])  # split inside the multi-byte character
    conn.send(chan, "h\u00e9llo".encode()[2:] + b"\r")
    assert "h\u00e9llo: command not found".encode() in chan.out
    conn.send(chan, b"exit 9")
    conn.send(chan, b"\x01\x04")  # Ctrl-D on a non-empty line does not end the session
    assert chan.exit_status is None
    conn.send(chan, b"\x03\x04")  # Ctrl-D on an empty line ends it with the last status
    assert chan.exit_status == 127


def test_pty_exec_uses_crlf_and_merges_stderr(world: World) -> None:
    conn = world.login()
    chan = conn.open_session()
    conn.request(chan, b"pty-req", pty_request())
    conn.exec(chan, b"nosuch")
    conn.flush()
    assert chan.out == b"nosuch: command not found\r\n" and chan.err == b"" and chan.exit_status == 127


def test_refused_channels_and_requests_keep_the_connection(world: World) -> None:
    conn = world.login()
    forward = RecordingChannel(name=b"direct-tcpip", conn=conn.conn)
    conn.conn.openChannel(forward, common.NS(b"127.0.0.1") + struct.pack(">L", 22) + common.NS(b"x") + b"\0\0\0\1")
    conn.flush()
    assert forward.open_failure is not None and forward.open_failure.data == connection.OPEN_ADMINISTRATIVELY_PROHIBITED
    conn.conn.sendGlobalRequest(b"tcpip-forward", common.NS(b"127.0.0.1") + struct.pack(">L", 8080), wantReply=1)
    conn.flush()
    chan = conn.open_session()
    for kind, data in (
        (b"subsystem", common.NS(b"sftp")),
        (b"env", common.NS(b"LANG") + common.NS(b"C")),
        (b"x11-req", b"\0" + common.NS(b"MIT") + common.NS(b"00") + b"\0\0\0\0"),
        (b"auth-agent-req@openssh.com", b""),
        (b"pty-req", b"\0\0"),
    ):
        d = conn.request(chan, kind, data)
        assert d.called and d.result is not None, kind  # a failure reply, not a hang
        d.addErrback(lambda f: None)
    conn.exec(chan, b"help")
    conn.flush()
    assert chan.exit_status == 0
    assert not conn.disconnected


def test_agent_x11_env_and_subsystem_requests_are_refused_and_the_channel_serves(world: World) -> None:
    """Each gets a failure reply (not a success that is then ignored); a pty on the same channel is
    granted, and the channel still runs its command."""
    conn = world.login()
    chan = conn.open_session()
    replies: dict[bytes, str] = {}
    for kind, data in (
        (b"auth-agent-req@openssh.com", b""),
        (b"x11-req", b"\0" + common.NS(b"MIT-MAGIC-COOKIE-1") + common.NS(b"00" * 16) + b"\0\0\0\0"),
        (b"env", common.NS(b"LANG") + common.NS(b"C")),
        (b"subsystem", common.NS(b"sftp")),
        (b"pty-req", pty_request()),
    ):
        d = conn.request(chan, kind, data)
        d.addCallbacks(
            lambda _, k=kind: replies.setdefault(k, "granted"), lambda _, k=kind: replies.setdefault(k, "refused")
        )
    assert replies == {
        b"auth-agent-req@openssh.com": "refused",
        b"x11-req": "refused",
        b"env": "refused",
        b"subsystem": "refused",
        b"pty-req": "granted",
    }
    conn.exec(chan, b"exit 3")
    conn.flush()
    assert chan.exit_status == 3 and not conn.disconnected


def test_second_exec_on_one_channel_refused(tmp_path: Path) -> None:
    runner = ManualRunner()
    w = make_world(tmp_path, runner=runner)
    conn = w.login()
    chan = conn.open_session()
    conn.exec(chan, b"lastlog -n 1")
    conn.exec(chan, b"exit 9").addErrback(lambda f: None)
    conn.request(chan, b"shell").addErrback(lambda f: None)
    while runner.jobs:
        runner.run_all()
        conn.flush()
    assert chan.events == ["reply", "refused", "data", "eof", "exit-status", "close"]
    assert chan.out == b"line 20\n" and chan.exit_status == 0


def test_messages_for_unknown_channels_are_ignored(world: World) -> None:
    conn = world.login()
    conn.client.sendPacket(connection.MSG_CHANNEL_REQUEST, struct.pack(">L", 77) + common.NS(b"exec") + b"\0")
    conn.client.sendPacket(connection.MSG_CHANNEL_DATA, struct.pack(">L", 78) + common.NS(b"x"))
    conn.flush()
    chan = conn.open_session()
    conn.exec(chan, b"exit 0")
    conn.flush()
    assert chan.exit_status == 0 and not conn.disconnected


def test_bulk_output_respects_the_client_window(tmp_path: Path) -> None:
    line = b"x" * 999 + b"\n"
    runner = ManualRunner()
    w = make_world(tmp_path, log_text=line * 12_000, runner=runner)
    conn = w.login()
    conn.conn.held_windows.add(0)  # the client's first channel: it reads nothing for now
    chan = conn.open_session(window=64 * 1024)
    conn.exec(chan, b"lastlog -n 10000")
    for _ in range(200):
        runner.run_all()
        conn.flush()
    server_chan = conn.server.service.channels[0]
    assert len(chan.out) == 64 * 1024  # exactly the window, no more
    assert server_chan._queued <= OUTPUT_HIGH_WATER + 256 * 1024  # writer paused: memory bounded
    conn.conn.held_windows.clear()
    conn.conn.adjustWindow(chan, 64 * 1024)
    for _ in range(2000):
        runner.run_all()
        conn.flush()
        if chan.exit_status is not None:
            break
    assert chan.exit_status == 0
    assert bytes(chan.out) == line * 10_000


def test_client_vanishing_cancels_the_command(tmp_path: Path) -> None:
    runner = ManualRunner()
    w = make_world(tmp_path, runner=runner)
    conn = w.login()
    chan = conn.open_session()
    conn.exec(chan, b"comphash " + str(w.root / "hello.txt").encode())
    conn.flush()
    assert runner.jobs  # the hash is waiting for its thread
    _, args, _ = runner.jobs[0]
    cancelled = args[3]
    conn.client.transport.loseConnection()
    conn.flush()
    assert cancelled.is_set()
    (record,) = w.audit.of("command")
    assert record["exit_code"] == 130
    assert w.audit.of("disconnect")[0]["user"] == "admin"
