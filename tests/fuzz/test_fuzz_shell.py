"""Fuzz targets: the command-line parser and the commands' argv handling (exec), the terminal
line editor (keystrokes with a pty) and the plain shell (piped input), over the recording
connection of tests/protocol with the real lastlog, comphash, help and exit.

Each session must end with an exit status from the documented set once the client sends EOF;
no command crashes ("internal error"); nothing is logged at error level; with a pty, the line
and the history stay within their caps and the terminal receives no escape sequence beyond the
editor's own cursor movements, whatever was typed.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from support.channels import Harness, RecordingConnection
from support.terminal import Term
from twisted.conch.ssh import common

from conchcmd.commands.framework import ExitStatus
from fuzz.guard import LogWatch, bounded, corpus, fuzz

STATUSES = {int(s) for s in ExitStatus}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("fuzz-shell")
    Term(path)  # creates the tree: srv/root/{hello.txt,help.md,with space.txt,sub/deep.txt}, syslog
    yield path


def finish(term: Term, *, exec_: bool = False) -> int:
    """Close the input like a client at the end of its script; the session must end (an exec
    that follows a log reads no input: EOF does not end it, a signal does, with 130)."""
    term.clock.advance(0)
    term.chan.eofReceived()
    for _ in range(5):
        term.clock.advance(1)
    if exec_ and term.exit_status() is None:
        assert term.audit.of("command") == [], "a command ended but its channel did not"
        assert term.chan.requestReceived(b"signal", common.NS(b"INT")) == 1
        term.clock.advance(0)
        assert term.exit_status() == 130
        assert term.audit.of("command")[0]["argv"][0] == "lastlog", "only a follow outlives EOF"
    status = term.exit_status()
    assert status is not None, f"no exit status after EOF; sent: {term.conn.kinds()[-5:]}"
    assert 0 <= status <= 255, status  # `exit N` may end with any N; the others with STATUSES
    assert b"internal error" not in term.conn.data("stderr")
    return status


# -- command lines (exec) --------------------------------------------------------------------

words = st.one_of(
    st.sampled_from(
        [
            "lastlog", "comphash", "help", "exit", "nosuch", "-n", "--lines", "--lines=", "-f", "--follow", "-j",
            "--json", "-a", "--algorithm=md5", "-asha1", "-nj", "-n-1", "--", "-", "--bogus", "-x",
            "0", "1", "5", "10000", "10001", "255", "256", "-1", "99999999999999999999", "1_0", " 7 ", "\u0661\u0662",
            "0x10", "1e3", "sha256", "blake2b", "sha3_256", "hello.txt", "sub/deep.txt", "sub/../hello.txt",
            "/etc/hostname", "/", ".", "..", "~", "*", "with space.txt", "a\0b", "a\u2028b", "\x1b]0;x\x07",
            "x" * 5000, "ROOT/hello.txt", "ROOT/sub", "ROOT/../notes.txt", "ROOT/with space.txt", "ROOT/nosuch",
        ]
    ),
    st.text(max_size=12),
)  # fmt: skip


def quoted(word: str, how: int) -> str:
    if how == 1:
        return "'" + word.replace("'", "'\\''") + "'"
    if how == 2:
        return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if how == 3:
        return "".join("\\" + c for c in word)
    return word


command_lines = st.lists(st.tuples(words, st.integers(0, 3)), max_size=6).flatmap(
    lambda parts: st.sampled_from(["", "'", '"', "\\", " #x", ";ls", "|cat"]).map(
        lambda tail: " ".join(quoted(w, how) for w, how in parts) + tail
    )
)


def check_exec(base: Path, log_watch: LogWatch, line: str) -> None:
    with bounded(), log_watch.clean():
        line = line.replace("ROOT", str(base / "srv" / "root"))
        term = Term(base, pty=False, exec_line=line)
        finish(term, exec_=True)
        if line.strip():
            [record] = term.audit.of("command")
            assert record["exit_code"] == term.exit_status()
            if record["argv"][:1] != ["exit"]:
                assert record["exit_code"] in STATUSES


@fuzz(300)
@given(line=command_lines)
@example(line="comphash -a '' hello.txt")
@example(line="lastlog -n \u0661\u0662")
@example(line="lastlog -f")
@example(line="exit 256")
@example(line="help --json nosuch extra")
@example(line="comphash ROOT/hello.txt ROOT/nosuch ROOT/sub 'ROOT/with space.txt' /etc/hostname")
def test_command_lines(base: Path, log_watch: LogWatch, line: str) -> None:
    check_exec(base, log_watch, line)


@pytest.mark.parametrize("data", corpus("command_line"))
def test_command_line_corpus(base: Path, log_watch: LogWatch, data: bytes) -> None:
    for line in data.decode("utf-8", "replace").split("\n"):
        check_exec(base, log_watch, line)


# -- the terminal line editor ------------------------------------------------------------------

KEYS = [
    b"\x1b[A", b"\x1b[B", b"\x1b[C", b"\x1b[D", b"\x1b[H", b"\x1b[F", b"\x1bOH", b"\x1bOF", b"\x1b[3~", b"\x1b[2~",
    b"\x1b[5~", b"\x1b[1;5C", b"\x1b[200~", b"\x1b[201~", b"\x1b]0;title\x07", b"\x1b]52;c;aGk=\x1b\\",
    b"\x1bP1$q\x1b\\", b"\x1b", b"\x1b[", b"\x1b[99999999999999999999A", b"\x1b[?1049h", b"\x9b2J", b"\x7f", b"\x08",
    b"\t", b"\r", b"\n", b"\r\n", b"\x01", b"\x05", b"\x0b", b"\x0c", b"\x15", b"\x17", b"\x03", b"\x00", b"\x1c",
    b"\x1a", "é".encode(), "€".encode(), "😀".encode(), "\u2028".encode(), "\u009b".encode(), b"\xc3", b"\xff",
    b"\xe2\x82", b"lastlog", b"comphash ", b"help", b"exit 3", b"hel", b"srv/", b" ", b"a", b"'", b"\\",
]  # fmt: skip
typing = st.lists(st.one_of(st.sampled_from(KEYS), st.binary(max_size=6)), max_size=40).map(b"".join)
#: What the editor itself sends: CSI cursor movement, erase, delete and insert; nothing else with an ESC.
EDITOR_CSI = re.compile(rb"\x1b\[[0-9]*[ABCDKP@]")
C0_ALLOWED = set(b"\r\n\x07\t")
ESC = b"\x1b"


def c1_controls(screen: bytes) -> list[str]:
    return [c for c in screen.decode("utf-8", "replace") if 0x80 <= ord(c) <= 0x9F]


def check_screen(screen: bytes) -> None:
    rest = EDITOR_CSI.sub(b"", screen)
    escape = rest.find(ESC)
    assert escape < 0, f"escape sequence on the terminal: {rest[escape : escape + 20]!r}"
    controls = {b for b in rest if b < 0x20 or b == 0x7F} - C0_ALLOWED
    assert not controls, f"control bytes on the terminal: {sorted(controls)}"
    assert not c1_controls(screen), f"C1 controls on the terminal: {c1_controls(screen)}"


def test_the_insert_key_sends_no_mode_change(base: Path) -> None:
    """Found by test_terminal_keystrokes: RecvLine.handle_INSERT toggled the terminal's insert mode
    (ESC[4h / ESC[4l), which garbled the editor's own insert emulation and outlived the session."""
    term = Term(base, pty=True)
    term.keys(b"abc\x1b[D\x1b[D")
    assert term.keys(b"\x1b[2~") + term.keys(b"\x1b[2~") == b""
    term.keys(b"Z")  # still inserting: the characters after the cursor move right
    assert term.chan.handler.editor.lineBuffer == [b"a", b"Z", b"b", b"c"]  # type: ignore[union-attr]


def test_typed_c1_controls_are_not_echoed(base: Path) -> None:
    """Found by test_terminal_keystrokes: C1 controls (U+0080-U+009F) typed as UTF-8 were echoed, kept
    in the line and history, and printed raw by 'command not found' (U+009B is CSI for terminals
    that honour C1)."""
    term = Term(base, pty=True)
    term.keys("x\u009b2J\u0085y\r".encode())
    term.keys(b"\x1b[A")
    assert c1_controls(term.screen) == []
    assert term.chan.handler.editor.lineBuffer == [b"x", b"2", b"J", b"y"]  # type: ignore[union-attr]


def check_terminal(base: Path, log_watch: LogWatch, data: bytes, sizes: list[int]) -> None:
    with bounded(), log_watch.clean():
        term = Term(base, pty=True, history_size=5)
        editor = term.chan.handler.editor  # type: ignore[union-attr]
        i = 0
        for n, size in enumerate(sizes or [len(data) or 1]):
            piece = data[i : i + size] if n < len(sizes) - 1 or not sizes else data[i:]
            i += size
            term.chan.dataReceived(piece)
            term.clock.advance(0)
            assert len(editor.lineBuffer) <= editor.max_line
            assert len(editor.historyLines) <= 5
        check_screen(term.screen)
        if term.exit_status() is None:
            finish(term)


@fuzz(250)
@given(data=typing, sizes=st.lists(st.integers(1, 50), max_size=5))
@example(data=b"say \x1b]0;pwned\x07x\r", sizes=[])
@example(data=b"a" * (16 * 1024 + 10) + b"\r", sizes=[])
@example(data=b"\x1b[A" * 3 + b"help\r" * 7 + b"\x1b[A" * 9 + b"\r", sizes=[3, 1])
def test_terminal_keystrokes(base: Path, log_watch: LogWatch, data: bytes, sizes: list[int]) -> None:
    check_terminal(base, log_watch, data, sizes)


@pytest.mark.parametrize("data", corpus("line_editor"))
def test_terminal_corpus(base: Path, log_watch: LogWatch, data: bytes) -> None:
    check_terminal(base, log_watch, data, [])
    check_terminal(base, log_watch, data, [1] * len(data))


# -- the plain shell (no pty) --------------------------------------------------------------------


@fuzz(150)
@given(
    data=st.lists(st.one_of(command_lines.map(str.encode), st.binary(max_size=40)), max_size=6),
    end=st.sampled_from([b"\n", b"\r\n", b""]),
)
def test_plain_shell_input(base: Path, log_watch: LogWatch, data: list[bytes], end: bytes) -> None:
    with bounded(), log_watch.clean():
        term = Term(base, pty=False)
        script = end.join(line.replace(b"ROOT", str(base / "srv" / "root").encode()) for line in data) + end
        term.keys(script)
        finish(term)
        assert len(term.audit.of("command")) <= script.count(b"\n") + 1
        assert b"\x1b[" not in term.screen or b"\x1b[" in script  # no escape codes of its own


# -- found by test_fuzz_keyed.test_generated_connection_messages_after_login ---------------------


class CountingConnection(RecordingConnection):
    """Closes the channel after `limit` sends, ending a send loop that would otherwise spin (and
    grow) forever, as a client hanging up would."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def sendData(self, chan: Any, data: bytes) -> None:
        super().sendData(chan, data)
        if len(self.sent) == self.limit:
            chan.closed()

    def sendExtendedData(self, chan: Any, kind: int, data: bytes) -> None:
        super().sendExtendedData(chan, kind, data)
        if len(self.sent) == self.limit:
            chan.closed()


def test_a_channel_with_maximum_packet_size_zero_does_not_spin(log_watch: LogWatch) -> None:
    with bounded(), log_watch.clean():
        h = Harness(max_packet=0)
        h.conn = CountingConnection(limit=1000)
        h.chan.conn = h.conn  # type: ignore[assignment]
        h.exec(b"say hello")
        assert len(h.conn.sent) < 100, f"{len(h.conn.sent)} sends for one line of output"


# -- what untrusted text becomes on a terminal and in the logs ----------------------------------


@fuzz(300)
@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=6))
@example(data="ok \x1b[2J \u009b7m \u0085 é\t|\n".encode() + b"\xff\xc3", cuts=[5, 6])
def test_terminal_safe_output_in_any_chunking(data: bytes, cuts: list[int]) -> None:
    from conchcmd.core.audit import TerminalSafe

    whole = TerminalSafe()(data)
    safe = TerminalSafe()
    points = sorted({c for c in cuts if c <= len(data)} | {0, len(data)})
    chunked = b"".join(safe(data[a:b]) for a, b in itertools.pairwise(points))
    assert chunked == whole
    text = whole.decode("utf-8")  # always valid UTF-8
    assert not [c for c in text if (ord(c) < 0x20 and c not in "\t\n") or 0x7F <= ord(c) <= 0x9F]


@fuzz(300)
@given(value=st.one_of(st.text(max_size=80), st.binary(max_size=80)), limit=st.integers(0, 100))
def test_sanitised_log_text(value: str | bytes, limit: int) -> None:
    from conchcmd.core.audit import sanitise

    out = sanitise(value, limit)
    assert len(out) <= 10 * limit + 3  # \UNNNNNNNN at most per character, and "..."
    assert not [c for c in out if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or 0xD800 <= ord(c) < 0xE000]
    assert out.isprintable()  # nothing invisible, format, private-use or unassigned left raw
    assert len(out.splitlines()) <= 1


def test_sanitised_text_has_no_line_separators() -> None:
    """Found by test_sanitised_log_text: U+2028/U+2029 passed into log lines, so a command line or
    user name carrying one showed as two lines in viewers that honour them."""
    from conchcmd.core.audit import sanitise

    assert len(sanitise("lastlog\u2028Accepted publickey for root").splitlines()) == 1
