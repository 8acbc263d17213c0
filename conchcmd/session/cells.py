"""Terminal cells: how wide text is on screen (wcwidth) and where an input line that wraps puts
each of its characters, so that the line editor moves the cursor to where a character really is.

Rows wrap the way xterm and tmux wrap them: a character that does not fit in what is left of a
row (a double-width one with one column left, or any after the last column) starts the next row;
the cell a double-width character leaves unused stays blank. Positions are (row, column) counted
from the first cell of the prompt.
"""

from __future__ import annotations

import re
from array import array

from wcwidth import wcwidth

Position = tuple[int, int]

# Escape sequences a prompt template may hold for colours: CSI, OSC (ended by BEL or ST), and
# two-byte escapes. They take no cells.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-_]")


def char_width(ch: str) -> int:
    """Cells one code point takes: 2 for CJK and most emoji, 0 for combining and zero-width ones."""
    width = wcwidth(ch)
    return 1 if width < 0 else width  # no control reaches the editor; anything unknown: one cell


def text_width(text: str) -> int:
    return sum(char_width(ch) for ch in text)


def cluster_width(cluster: bytes) -> int:
    """Cells of one editor element: a character and the zero-width ones that follow it."""
    return text_width(cluster.decode("utf-8", "replace"))


def split_clusters(text: str, limit: int) -> list[str]:
    """Each character with the zero-width ones after it (at most `limit` UTF-8 bytes in all), as
    the line editor keeps them: one element per cursor stop."""
    out: list[str] = []
    for ch in text:
        if char_width(ch) == 0:
            if out and len((out[-1] + ch).encode("utf-8")) <= limit:
                out[-1] += ch
            continue  # none before it: the editor drops it too
        out.append(ch)
    return out


def prompt_widths(prompt: bytes) -> list[int]:
    """The cells of each character the prompt shows, its escape sequences left out."""
    visible = _ESCAPES.sub("", prompt.decode("utf-8", "replace"))
    return [char_width(ch) for ch in visible]


def normal(position: Position, width: int) -> Position:
    """Where the cursor is after writing up to `position`: past the last column is the next row."""
    row, column = position
    return (row + 1, 0) if column >= width else position


class LineLayout:
    """The cells of a prompt and of the line after it, on a terminal `width` columns wide.

    Starts are computed once and kept: typing at the end of a long line costs the new
    character, not the line. Whoever changes element `i` of the line calls `changed(i)`.
    """

    def __init__(self, width: int, prompt: list[int]):
        self.width = max(1, width)
        self.prompt = prompt
        self.prompt_end = self._run((0, 0), prompt)
        # The position just after element i (raw: may be past the edge), as row * (width + 1) +
        # column: 8 bytes an element, not tuples (a 16 K-character line in each of ten channels
        # must not cost tens of megabytes). Where it starts follows: a character never spans rows.
        self._ends = array("q")

    def _advance(self, at: Position, cells: int) -> tuple[Position, Position]:
        row, column = at
        if cells > 0 and column + cells > self.width:  # does not fit: wraps before it
            row, column = row + 1, 0
        return (row, column), (row, column + cells)

    def _run(self, at: Position, widths: list[int]) -> Position:
        for cells in widths:
            _, at = self._advance(at, cells)
        return at

    def changed(self, index: int) -> None:
        """Element `index` (and so every one after it) changed or moved."""
        del self._ends[index:]

    def _pack(self, position: Position) -> int:
        return position[0] * (self.width + 1) + position[1]

    def _unpack(self, packed: int) -> Position:
        row, column = divmod(packed, self.width + 1)
        return row, column

    def _fill(self, line: list[bytes], upto: int) -> None:
        while len(self._ends) < min(upto + 1, len(line)):
            i = len(self._ends)
            at = self._unpack(self._ends[-1]) if self._ends else self.prompt_end
            _, end = self._advance(at, cluster_width(line[i]))
            self._ends.append(self._pack(end))

    def start(self, line: list[bytes], index: int) -> Position:
        """Raw start of element `index`; `len(line)` gives the end of the line."""
        if index >= len(line):
            return self.end_before(line, len(line))
        self._fill(line, index)
        row, _ = self._unpack(self._ends[index])
        before = self.end_before(line, index)
        return (row, before[1]) if before[0] == row else (row, 0)  # wrapped: from the row's start

    def end_before(self, line: list[bytes], index: int) -> Position:
        """Raw position just after element index - 1 (the prompt's end for 0)."""
        if index == 0:
            return self.prompt_end
        self._fill(line, index - 1)
        return self._unpack(self._ends[index - 1])

    def cursor(self, line: list[bytes], index: int) -> Position:
        """Where the cursor goes to stand before element `index` (after the line for len(line))."""
        return normal(self.start(line, index), self.width)
