"""Input flow control over the whole SSH stack: the window the server offers follows what the
channel holds, a client cannot push more, and nothing it sent is lost."""

from __future__ import annotations

from support.sshclient import Connection, pty_request
from support.world import World

from conchcmd.session.channel import CHANNEL_INPUT_LIMIT

LINE = b"nosuch " + b"x" * 993 + b"\n"  # 1000 bytes; each one a command (not found)
LINES = 600  # 600 KB: more than a channel may hold


def test_a_client_that_reads_nothing_finds_the_window_shut_and_loses_no_line(world: World) -> None:
    conn = world.login()
    conn.conn.held_windows.add(0)  # the client's first channel reads none of its output
    chan = conn.open_session(window=1024)
    conn.request(chan, b"shell")
    for _ in range(LINES):
        chan.write(LINE)  # Conch's client keeps what the window does not allow
    for _ in range(50):
        world.clock.advance(0)
        conn.flush()
    server_chan = conn.server.service.channels[0]
    commands = world.audit.of("command")
    assert 0 < len(commands) < LINES  # the output window filled up: later lines wait
    assert server_chan.input_held() + server_chan.localWindowLeft <= CHANNEL_INPUT_LIMIT
    assert chan.remoteWindowLeft == 0 and len(chan.buf) > 0  # the rest waits at the client
    held_by_server = server_chan.input_held()

    conn.conn.held_windows.clear()  # the client reads again
    conn.conn.adjustWindow(chan, 1 << 20)
    for _ in range(2000):
        world.clock.advance(0)
        conn.flush()
        if len(world.audit.of("command")) == LINES and not chan.buf:
            break
    commands = world.audit.of("command")
    assert len(commands) == LINES, (len(commands), held_by_server)
    assert all(c["argv"] == ["nosuch", "x" * 993] and c["exit_code"] == 127 for c in commands)
    assert bytes(chan.err) == b"nosuch: command not found\n" * LINES
    assert not conn.disconnected


def _pump(world: World, conn: Connection, rounds: int) -> None:
    for _ in range(rounds):
        world.clock.advance(0)
        conn.flush()


def test_a_pty_client_that_reads_nothing_cannot_make_line_redraws_pile_up(world: World) -> None:
    """Each Ctrl-L redraws the whole line: 3 bytes of a 16,000-character line per byte of input.
    Against a client that reads nothing, the editor holds input once its echo backs up, instead of
    queueing redraw after redraw (before: 48 KB queued per Ctrl-L, without bound)."""
    conn = world.login()
    conn.conn.held_windows.add(0)
    chan = conn.open_session(window=1)
    conn.request(chan, b"pty-req", pty_request())
    conn.request(chan, b"shell")
    server_chan = conn.server.service.channels[0]
    line = "\u20ac" * 16000
    chan.write(line.encode())
    _pump(world, conn, 20)
    redraws = 100  # 4.8 MB of redraws
    chan.write(b"\x0c" * redraws)
    _pump(world, conn, 50)
    assert server_chan._queued < 1024 * 1024
    assert not conn.disconnected

    conn.conn.held_windows.clear()  # the client reads again: every redraw arrives, in order
    chan.localWindowSize = 1 << 22
    conn.conn.adjustWindow(chan, 1 << 22)
    chan.write(b"\r")
    for _ in range(1000):
        _pump(world, conn, 1)
        if world.audit.of("command"):
            break
    redraw = line.encode() + b"\x1b[K"
    assert bytes(chan.out).count(redraw) == redraws
    (command,) = world.audit.of("command")
    assert command["argv"][0].startswith("\u20ac" * 100) and command["exit_code"] == 127  # (logged cut)
    assert not conn.disconnected
