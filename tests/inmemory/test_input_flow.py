"""Input flow control over the whole SSH stack: the window the server offers follows what the
channel holds, a client cannot push more, and nothing it sent is lost."""

from __future__ import annotations

from conchcmd.session import CHANNEL_INPUT_LIMIT

from .conftest import World

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
