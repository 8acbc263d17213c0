"""The line editor with double-width (CJK, emoji) and zero-width (combining) characters, and lines
that wrap at the terminal's edge: the exact bytes the terminal receives, and, through a small
terminal model (autowrap as xterm and tmux do it), that the screen shows what will run.

Before: the cursor moved one column per character, so after `中` Left landed in the middle of
the character, an insert there was drawn one column off, and the line that ran was not the line
on the screen; and moves never crossed a wrapped row.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.channels import winsize
from support.terminal import CTRL_A, CTRL_E, CTRL_K, CTRL_U, CTRL_W, DOWN, LEFT, RIGHT, UP, Term
from wcwidth import wcwidth

from conchcmd.core.audit import sanitise
from conchcmd.session.cells import LineLayout, split_clusters

BACKSPACE, DELETE = b"\x7f", b"\x1b[3~"
WIDE, WIDER = "中".encode(), "文".encode()


def narrow(term: Term, columns: int) -> None:
    assert term.chan.requestReceived(b"window-change", winsize(columns, 24)) == 1


@pytest.fixture
def term(tmp_path: Path) -> Term:
    return Term(tmp_path, prompt="> ")


# -- exact bytes ------------------------------------------------------------------------------------


def test_left_and_right_move_two_columns_over_a_wide_character(term: Term) -> None:
    assert term.keys("say 中文".encode()) == "say 中文".encode()
    assert term.keys(LEFT) == b"\x1b[2D"
    assert term.keys(LEFT) == b"\x1b[2D"
    assert term.keys(LEFT) == b"\x1b[1D"  # the space
    assert term.keys(RIGHT) == b"\x1b[1C"
    assert term.keys(RIGHT) == b"\x1b[2C"


def test_insert_in_the_middle_of_wide_characters(term: Term) -> None:
    term.keys("say 中文".encode() + LEFT)
    assert term.keys(b"x") == b"x" + WIDER + b"\x1b[2D"  # the rest redrawn, the cursor back over 文
    term.keys(b"\r")
    assert term.ran() == [["say", "中x文"]]


def test_backspace_and_delete_next_to_wide_characters(term: Term) -> None:
    term.keys("say 中x文".encode() + LEFT * 3)  # before 中
    assert term.keys(BACKSPACE) == b"\x1b[1D" + "中x文".encode() + b"\x1b[K\x1b[5D"
    assert term.keys(RIGHT) == b"\x1b[2C"
    assert term.keys(DELETE) == WIDER + b"\x1b[K\x1b[2D"  # x gone, 文 moves left one cell
    term.keys(b" ok\r")
    assert term.ran() == [["say中", "ok文"]]


def test_a_combining_accent_joins_the_character_before_it(term: Term) -> None:
    term.keys(b"say cafe")
    assert term.keys("\u0301".encode()) == b"\x1b[1D" + "e\u0301".encode()  # redrawn with its accent
    assert term.keys(LEFT) == b"\x1b[1D"  # one cell back: the accented e is one character on screen
    assert term.keys(BACKSPACE) == b"\x1b[1D" + "e\u0301".encode() + b"\x1b[K\x1b[1D"
    term.keys(CTRL_E + b"s\r")
    assert term.ran() == [["say", "cae\u0301s"]]


def test_emoji_are_two_columns(term: Term) -> None:
    term.keys("say 🐍🐍".encode())
    assert term.keys(CTRL_A) == b"\x1b[8D"  # "say " + 2 x 2 cells
    assert term.keys(CTRL_E) == b"\x1b[8C"


def test_a_wide_character_that_does_not_fit_wraps_and_the_cursor_follows(term: Term) -> None:
    narrow(term, 10)  # "> " + 7 narrow characters leave one column: 中 goes to the next row
    term.keys(b"abcdefg")
    assert term.keys(WIDE) == b"\x1b[K" + WIDE  # the unused last cell is blanked, the terminal wraps
    assert term.keys(LEFT) == b"\x1b[2D"  # to the start of the second row
    assert term.keys(LEFT) == b"\x1b[1A\x1b[8C"  # up to g, in the first row's column 8
    assert term.keys(b"X") == b"Xg" + WIDE + b"\x1b[1A\x1b[7C"
    term.keys(b"\r")
    assert term.ran() == [["abcdefXg中"]]


def test_an_insert_pushes_a_wide_character_at_the_edge_to_the_next_row(term: Term) -> None:
    narrow(term, 10)
    assert term.keys(b"abcdef" + WIDE) == b"abcdef" + WIDE  # fills the row exactly
    # The terminal holds its cursor on the last column: a space and CR put it where the editor
    # counts it (the next row) before any move.
    assert term.keys(CTRL_A) == b" \r\x1b[1A\x1b[2C"
    assert term.keys(b"Y") == b"Yabcdef\x1b[K" + WIDE + b"\x1b[1A\x1b[1C"
    assert term.keys(BACKSPACE) == b"\x1b[1D" + b"abcdef" + WIDE + b" \r\x1b[K\x1b[1A\x1b[2C"
    term.keys(b"\r")
    assert term.ran() == [["abcdef中"]]


def test_return_in_the_middle_of_a_wrapped_line_leaves_below_it(term: Term) -> None:
    narrow(term, 10)
    term.keys(b"say abcdefghij" + CTRL_A)
    out = term.keys(b"\r")
    assert out.startswith(b"\x1b[1B\r\n"), "down to the last row first: the output must not overwrite the line"
    assert term.ran() == [["say", "abcdefghij"]]


def test_ctrl_u_on_a_wrapped_line_erases_the_rows_below(term: Term) -> None:
    narrow(term, 10)
    term.keys(b"0123456789abc")
    assert term.keys(CTRL_U) == b"\x1b[1A\r> \x1b[J"


def test_a_long_line_typed_at_the_end_are_echoed_as_they_are(term: Term) -> None:
    """Typing at the end costs the new character, not the line (the layout is kept), and sends
    nothing but the characters, across every wrap."""
    narrow(term, 50)  # "> " and 24 wide characters fill the first row, 25 each further row
    text = "中" * 10000
    assert term.keys(text.encode()) == text.encode()


# -- what the screen shows is what runs --------------------------------------------------------------


class Screen:
    """Just enough of a VT100 for the editor: printing with autowrap (the cursor held on the last
    column until the next character; a wide character that does not fit wraps), CR, LF, cursor
    moves, EL and ED, and combining characters joining the cell before."""

    CSI = re.compile(r"\x1b\[([0-9]*)([ABCDKJ~])")

    def __init__(self, width: int):
        self.width = width
        self.cells: dict[tuple[int, int], str] = {}
        self.row = self.col = 0
        self.pending = False
        self.last: tuple[int, int] | None = None

    def feed(self, text: str) -> None:
        i = 0
        while i < len(text):
            m = self.CSI.match(text, i)
            if m:
                self._csi(int(m.group(1) or 1), m.group(2))
                i = m.end()
                continue
            ch = text[i]
            i += 1
            if ch == "\r":
                self.col, self.pending = 0, False
            elif ch == "\n":
                self.row, self.pending = self.row + 1, False
            elif ch == "\x07":
                pass
            else:
                self._print(ch)

    def _print(self, ch: str) -> None:
        w = wcwidth(ch)
        if w == 0:
            if self.last is not None:
                self.cells[self.last] += ch
            return
        if self.pending or self.col + w > self.width:
            self.row, self.col, self.pending = self.row + 1, 0, False
        self.cells[(self.row, self.col)] = ch
        if w == 2:
            self.cells[(self.row, self.col + 1)] = ""
        self.last = (self.row, self.col)
        self.col += w
        if self.col >= self.width:
            self.col, self.pending = self.width - 1, True

    def _csi(self, n: int, final: str) -> None:
        self.pending = False
        if final == "A":
            self.row = max(0, self.row - n)
        elif final == "B":
            self.row += n
        elif final == "C":
            self.col = min(self.width - 1, self.col + n)
        elif final == "D":
            self.col = max(0, self.col - n)
        elif final in "KJ":
            for key in list(self.cells):
                if (key[0] == self.row and key[1] >= self.col) or (final == "J" and key[0] > self.row):
                    del self.cells[key]

    def text(self, from_row: int) -> str:
        rows = {r for r, _ in self.cells if r >= from_row}
        return "".join(
            "".join(self.cells.get((r, c), "") for c in range(self.width)) for r in range(from_row, max(rows) + 1)
        )


TYPED = [b"a", b"b", b" ", WIDE, WIDER, "🐍".encode(), "é".encode(), "\u0301".encode(), "\u200b".encode()]
KEYS = st.sampled_from([*TYPED, LEFT, RIGHT, CTRL_A, CTRL_E, BACKSPACE, DELETE, CTRL_K, CTRL_U, CTRL_W])


@settings(max_examples=60, deadline=None)
@given(columns=st.integers(4, 14), keys=st.lists(KEYS, max_size=40))
def test_the_screen_always_shows_the_line_and_the_cursor_where_the_editor_thinks(
    tmp_path_factory: pytest.TempPathFactory, columns: int, keys: list[bytes]
) -> None:
    term = Term(tmp_path_factory.mktemp("wide"), prompt="> ")
    narrow(term, columns)
    screen = Screen(columns)
    screen.feed("> ")  # the prompt, drawn already
    start = len(term.screen)
    for key in keys:
        term.keys(key)
    term.keys("\u2592".encode())  # a marker typed where the cursor is: drawn where the screen's cursor is
    screen.feed(term.screen[start:].decode())
    editor = term.chan.handler.editor  # type: ignore[union-attr]
    line = b"".join(editor.lineBuffer).decode()
    shown = screen.text(0).rstrip(" ")  # blanks past the end (and the editor's " \r") are not seen
    assert shown == ("> " + line).rstrip(" "), "the screen shows another line than the one that runs"
    term.keys(b"\r")
    assert term.ran() == [[sanitise(word) for word in line.split(" ") if word]]  # (U+200B audited escaped)


def test_layout_positions_by_hand() -> None:
    line = [c.encode() for c in split_clusters("ab中e\u0301", 32)]
    layout = LineLayout(5, [1, 1])  # "> " on 5 columns
    assert [layout.start(line, i) for i in range(len(line) + 1)] == [(0, 2), (0, 3), (1, 0), (1, 2), (1, 3)]
    assert layout.cursor(line, 2) == (1, 0)


def test_history_replaces_a_wrapped_line_and_erases_its_rows(term: Term) -> None:
    narrow(term, 10)
    term.keys(b"say abcdefghij\r")  # 14 characters after "> ": two rows
    assert term.keys(UP) == b"\x1b[Ksay abcdefghij"
    assert term.keys(DOWN) == b"\x1b[1A\x1b[4D\x1b[J"  # back to the prompt's row; both rows erased
    assert term.keys("中".encode() + UP) == "中".encode() + b"\x1b[2D\x1b[K" + b"say abcdefghij"  # the draft kept
