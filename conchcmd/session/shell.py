"""The two shells: a terminal shell with line editing for people, a plain line shell for pipes."""

from __future__ import annotations

import codecs
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from twisted.conch.insults import insults
from twisted.conch.recvline import HistoricRecvLine
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from conchcmd.commands.framework import ExitStatus, Outcome
from conchcmd.core.audit import terminal_safe
from conchcmd.session.cells import LineLayout, Position, cluster_width, normal, prompt_widths, split_clusters
from conchcmd.session.channel import CommandHandler, SessionChannel, SessionContext, Terminal
from conchcmd.session.completion import Completion, last_word, quote_word

CTRL_C = b"\x03"
CTRL_D = b"\x04"
BELL = b"\x07"
BATCH_LIMIT = 64 * 1024  # echo and redraw collected in one input batch before they are queued
ERASE_LINE, ERASE_BELOW = b"\x1b[K", b"\x1b[J"


class _ShellBase(CommandHandler):
    """Runs lines one at a time through the dispatcher and ends the channel like a shell does."""

    def __init__(self, chan: SessionChannel, context: SessionContext):
        super().__init__(chan, context)
        self.last_status = 0
        self.ended = False

    def run_line(self, line: bytes, *, interactive: bool) -> defer.Deferred[Outcome]:
        running = self.context.dispatch(
            line.decode("utf-8", "surrogateescape"),
            self.chan.stream(),
            self.chan.stream(stderr=True),
            interactive=interactive,
            last_status=self.last_status,
            input_closed=self.input_closed,
            audit=self.chan.audit,
        )
        self.running = running

        def done(outcome: Outcome) -> Outcome:
            self.running = None
            self.last_status = outcome.status
            if outcome.end_session:
                self.end(outcome.status)
            return outcome

        return running.addCallback(done)

    def report_line_too_long(self) -> None:
        self.chan.stream(stderr=True).write(
            f"conchcmd: line too long (more than {self.context.shell.max_line} bytes), ignored\n".encode()
        )
        self.last_status = ExitStatus.USAGE

    def end(self, status: int) -> None:
        if not self.ended:
            self.ended = True
            self.chan.finish(status)

    def connection_lost(self) -> None:
        self.ended = True
        self.interrupt()


# A run of blank lines (only spaces, tabs, CRs): skipped at once, never dispatched.
BLANK_LINES = re.compile(rb"[ \t\r\x0b\x0c\n]*\n")
MAX_CLUSTER = 32  # bytes of one character and the combining ones after it (Unicode's stream-safe
# format allows 30 of those): each element then has a bound, and the line's element cap bounds it
HISTORY_BYTES = 64 * 1024  # a session's history, at most (500 lines of 16 K would be 8 MB)
MAX_CONTROL_SEQUENCE = 32  # bytes of `ESC [` parameters kept; real keys send a few
LINES_PER_TURN = 64  # commands that finish at once, run before yielding the reactor


class PlainShell(_ShellBase):
    """No pty: one command per input line, no prompt, no escape codes; ends at `exit` or EOF.

    Input stays in one buffer until its line's turn comes (no object per line: a flood of short
    lines costs its size, and the channel's account, hence the client's window, sees all of it).
    Blank lines are not commands: skipped without dispatch, log line or audit record.
    """

    kind = "shell"

    def __init__(self, chan: SessionChannel, context: SessionContext):
        super().__init__(chan, context)
        self._input = bytearray()  # unprocessed input: waiting lines and the start of the next
        self._discarding = False  # the line at the front is too long: dropped up to its newline
        self._eof = False
        self._resume: IDelayedCall | defer.Deferred[None] | None = None  # what continues the lines

    def start(self) -> None:
        pass

    def input_held(self) -> int:
        return len(self._input)

    def data_received(self, data: bytes) -> None:
        if self.ended:
            return
        self._input += data
        self._next()

    def eof_received(self) -> None:
        self._eof = True
        self.end_of_input()
        self._next()

    def _next(self) -> None:
        self._resume = None
        held = len(self._input)
        try:
            self._run_waiting_lines()
        finally:
            if len(self._input) < held:
                self.chan.input_consumed()

    def _run_waiting_lines(self) -> None:
        limit = self.context.shell.max_line
        buf = self._input
        budget = LINES_PER_TURN
        while not self.ended and self.running is None and self._resume is None:
            if self._discarding:
                index = buf.find(b"\n")
                if index < 0 and not self._eof:
                    buf.clear()
                    return
                del buf[: index + 1 if index >= 0 else len(buf)]
                self._discarding = False
                self.report_line_too_long()
                continue
            flushed = self.chan.flushed()
            if not flushed.called:  # like a shell blocked on its stdout: the next command
                self._resume = flushed  # waits until the last one's output has left
                flushed.addCallback(lambda _: self._next()).addErrback(self.crashed)
                return
            blank = BLANK_LINES.match(buf)
            if blank is not None:
                del buf[: blank.end()]
            index = buf.find(b"\n")
            if index < 0:
                if len(buf) > limit + 1:  # no room left for a newline: too long already
                    buf.clear()
                    self._discarding = True
                    continue
                if not self._eof:
                    return
                if not buf.strip():
                    buf.clear()
                    self.end(self.last_status)
                    return
                index = len(buf)  # a last line without newline
            line = bytes(buf[:index]).rstrip(b"\r")
            del buf[: index + 1]
            if len(line) > limit:
                self.report_line_too_long()
                continue
            if not line.strip():
                continue
            d = self.run_line(line, interactive=False)
            if self.running is not None:  # still going: continue when it finishes
                d.addCallback(lambda _: self._next()).addErrback(self.crashed)
                return
            budget -= 1
            if budget == 0:  # let other connections have the reactor, then go on
                self._resume = self.context.clock.callLater(0, self._next)

    def connection_lost(self) -> None:
        resume, self._resume = self._resume, None
        if isinstance(resume, IDelayedCall) and resume.active():
            resume.cancel()  # (a Deferred waiting for output is dropped by the channel)
        self._input = bytearray()  # now, not when the garbage collector breaks the channel's cycles
        super().connection_lost()


class _TerminalProtocol(insults.ServerProtocol):
    """insults' terminal parser, minus the full terminal reset it sends when the session ends,
    and with a cap on control sequences (insults collects `ESC [` parameters without bound)."""

    def loseConnection(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self.state == b"bracket-escaped" and len(self.escBuf) > MAX_CONTROL_SEQUENCE:
            del self.escBuf  # no key sends this: junk, dropped like a broken sequence
            self.state = b"data"


class _CoalescingTransport:
    """Gives the terminal protocol a transport whose writes during one input batch become one
    SSH packet, instead of one packet per echoed character.

    It also honours the channel's backpressure, which echo and redraw would otherwise ignore:
    once the channel asks its writers to wait, `blocked` is true (the shell then holds input)
    until the queued output drains, when `on_drained` is called.
    """

    def __init__(self, chan: SessionChannel, on_drained: Callable[[], None], on_bug: Callable[[Failure], None]):
        self.chan = chan
        self.on_drained = on_drained
        self.on_bug = on_bug  # a bug in what the drain set going (the shell's crashed)
        self.blocked = False
        self._batch: list[bytes] | None = None
        self._batch_bytes = 0

    def write(self, data: bytes) -> None:
        if self._batch is not None:
            self._batch.append(data)
            self._batch_bytes += len(data)
            if self._batch_bytes >= BATCH_LIMIT:  # a batch must not grow past the channel's limits
                self.flush()
        else:
            self._send(data)

    def _send(self, data: bytes) -> None:
        waiter = self.chan.send(data)
        if not waiter.called and not self.blocked:
            self.blocked = True
            waiter.addCallback(self._drained).addErrback(self.on_bug)

    def _drained(self, _: object) -> None:
        self.blocked = False
        self.on_drained()

    def writeSequence(self, data: list[bytes]) -> None:
        for chunk in data:
            self.write(chunk)

    @contextmanager
    def batch(self) -> Iterator[None]:
        if self._batch is not None:  # already inside a batch: it flushes at its end
            yield
            return
        self._batch = []
        try:
            yield
        finally:
            batch, self._batch = self._batch, None
            self._batch_bytes = 0
            if batch:
                self._send(b"".join(batch))

    def flush(self) -> None:
        """Send what the current batch holds now (before command output, to keep the order)."""
        if self._batch:
            data = b"".join(self._batch)
            self._batch.clear()
            self._batch_bytes = 0
            self._send(data)

    def loseConnection(self) -> None:
        pass

    def getPeer(self) -> Any:
        return self.chan.getPeer()

    def getHost(self) -> Any:
        return self.chan.getHost()


class LineEditor(HistoricRecvLine):
    """HistoricRecvLine with its defects fixed for a remote operator's terminal.

    Stock RecvLine resets the terminal on connect, clears the screen on every resize, switches
    the terminal into insert mode (at connect and at the Insert key; left on after logout),
    ignores Ctrl-C and Ctrl-D, drops non-ASCII input byte by byte, has no cap on line length
    or history, and moves the cursor one column per character: a double-width character (CJK,
    emoji), a combining one, or a line that wraps at the terminal's edge put what the screen
    shows out of step with what runs. Here each element of `lineBuffer` is one character with
    the zero-width ones that follow it, and the cursor goes to the cell `cells.LineLayout`
    computes for it, across rows.
    """

    def __init__(self, shell: TerminalShell, prompt: bytes, max_line: int, history_size: int, columns: int = 80):
        self.shell = shell
        self.ps = (prompt, prompt)
        self.max_line = max_line
        self.history_size = history_size
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._overflow = False
        self._completing = False
        self.width = columns
        self._prompt_cells = prompt_widths(prompt)
        self._layout = LineLayout(columns, self._prompt_cells)
        self._at: Position = (0, 0)  # the terminal's cursor, from the prompt's first cell (never past the edge)
        self._pending = False  # the terminal holds its cursor on the last column, see _settle
        self._line: list[bytes] = []

    @property
    def lineBuffer(self) -> list[bytes]:
        return self._line

    @lineBuffer.setter
    def lineBuffer(self, value: list[bytes]) -> None:
        # RecvLine and HistoricRecvLine replace the list in several places: the layout follows.
        self._line = value
        self._layout.changed(0)

    def initializeScreen(self) -> None:
        self.mode = "insert"  # emulated by redrawing; no IRM escape sent to the terminal
        self.terminal.write(self.shell.banner())
        self.drawInputLine()

    def terminalSize(self, width: int, height: int) -> None:
        self.height = height
        if width != self.width:  # the terminal re-wraps by itself; the cursor is where it wraps to
            self.width = width
            self._layout = LineLayout(width, self._prompt_cells)
            self._at = self._layout.cursor(self.lineBuffer, self.lineBufferIndex)

    # -- where the cursor is, and drawing ------------------------------------------------------

    def _end(self) -> Position:
        return self._layout.cursor(self.lineBuffer, len(self.lineBuffer))

    def _settle(self) -> None:
        """After a character in a row's last column, terminals keep the cursor on it until the
        next character comes (then wrap): the layout already counts it on the next row. Before
        moving or erasing, a space and CR put it there (the space lies past the line's end)."""
        if self._pending:
            self._pending = False
            self.terminal.write(b" \r")

    def _move_to(self, target: Position) -> None:
        if target == self._at:
            return
        self._settle()
        (row, column), (to_row, to_column) = self._at, target
        if to_row < row:
            self.terminal.cursorUp(row - to_row)
        elif to_row > row:
            self.terminal.cursorDown(to_row - row)
        if to_column < column:
            self.terminal.cursorBackward(column - to_column)
        elif to_column > column:
            self.terminal.cursorForward(to_column - column)
        self._at = target

    def _paint(self, start: int, old_end: Position | None, *, erase: bool = False) -> None:
        """Write the line from element `start` to its end, clear what it showed beyond that
        before the change (up to `old_end`), and put the cursor before element lineBufferIndex."""
        line, layout, width = self.lineBuffer, self._layout, self._layout.width
        self._move_to(normal(layout.end_before(line, start), width))
        row, column = self._at
        parts: list[bytes] = []
        for i in range(start, len(line)):
            if layout.start(line, i)[0] > row and column < width:
                parts.append(ERASE_LINE)  # the cell a double-width character could not use: blank
            parts.append(line[i])
            row, column = layout.end_before(line, i + 1)
        if parts:
            self.terminal.write(b"".join(parts))
            self._pending = column >= width
        self._at = normal((row, column), width)
        if erase or (old_end is not None and old_end > self._at):
            self._settle()
            self.terminal.write(ERASE_BELOW if old_end is not None and old_end[0] > self._at[0] else ERASE_LINE)
        self._move_to(layout.cursor(line, self.lineBufferIndex))

    def _leave_line(self) -> None:
        """Before a newline: down to the line's last row, so nothing after it overwrites the line."""
        below = self._end()[0] - self._at[0]
        if below > 0:
            self._settle()
            self.terminal.cursorDown(below)
        # A held cursor needs nothing: the newline that follows starts the next row either way.
        self._pending = False
        self._at = (0, 0)

    def drawInputLine(self) -> None:
        """The prompt and the line, at the start of a fresh row."""
        self._at, self._pending = (0, 0), False
        self.terminal.write(self.ps[self.pn])
        self._after_prompt()
        self._paint(0, None)

    def _after_prompt(self) -> None:
        end = self._layout.prompt_end
        self._pending = end[1] >= self._layout.width  # the prompt filled its last row
        self._at = normal(end, self._layout.width)

    def _redraw(self, old_end: Position | None = None) -> None:
        """Rewrite the prompt and the input, leaving the cursor where lineBufferIndex says."""
        self._settle()
        if self._at[0]:
            self.terminal.cursorUp(self._at[0])
        self._at = (0, 0)
        self.terminal.write(b"\r" + self.ps[self.pn])
        self._after_prompt()
        self._paint(0, old_end, erase=True)

    # -- keys --------------------------------------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        self.keyHandlers.update(
            {
                CTRL_C: self.handle_CTRL_C,
                CTRL_D: self.handle_CTRL_D,
                b"\x01": self.handle_HOME,  # Ctrl-A
                b"\x05": self.handle_END,  # Ctrl-E
                b"\x08": self.handle_BACKSPACE,  # Ctrl-H
                b"\x0b": self.handle_CTRL_K,
                b"\x0c": self.handle_CTRL_L,
                b"\x15": self.handle_CTRL_U,
                b"\x17": self.handle_CTRL_W,
            }
        )

    def keystrokeReceived(self, keyID: Any, modifier: Any) -> None:
        if modifier is not None:
            return  # Alt-combinations: not bound
        handler = self.keyHandlers.get(keyID)
        if handler is not None:
            handler()
        elif isinstance(keyID, bytes) and (0x20 <= keyID[0] < 0x7F or keyID[0] >= 0x80):
            try:
                text = self._decoder.decode(keyID)
            except UnicodeDecodeError:
                self._decoder.reset()  # drop the broken sequence, keep this byte if it starts anew
                try:
                    text = self._decoder.decode(keyID)
                except UnicodeDecodeError:
                    self._decoder.reset()
                    return
            text = "".join(c for c in text if not 0x80 <= ord(c) <= 0x9F)  # C1 controls, like C0 ones
            if text:
                self.characterReceived(text.encode("utf-8"), False)

    def handle_INSERT(self) -> None:
        """Nothing: RecvLine toggles the terminal's insert mode (IRM, ESC[4h / ESC[4l), which the
        editor's own insert emulation then garbles and which outlives the session."""

    def characterReceived(self, ch: bytes, moreCharactersComing: bool) -> None:
        index = self.lineBufferIndex
        if cluster_width(ch) == 0:
            # Combining or zero-width: part of the character before it, on the same cells (with
            # none before it, it would join the prompt's last cell: dropped).
            if index == 0 or len(self.lineBuffer[index - 1]) + len(ch) > MAX_CLUSTER:
                self.terminal.write(BELL)
                return
            old_end = self._end()
            self.lineBuffer[index - 1] += ch
            self._layout.changed(index - 1)
            self._paint(index - 1, old_end)
            return
        if len(self.lineBuffer) >= self.max_line:
            if not self._overflow:
                self._overflow = True
                self.terminal.write(BELL)
            return
        if index == len(self.lineBuffer):  # typing at the end (and pastes): the short way
            self.lineBuffer.append(ch)
            self.lineBufferIndex += 1
            width = self._layout.width
            end = self._layout.end_before(self.lineBuffer, index + 1)
            pad = end[0] > self._at[0] and not self._pending  # a wide character that did not fit
            self.terminal.write(ERASE_LINE + ch if pad else ch)
            self._pending = end[1] >= width
            self._at = normal(end, width)
            return
        old_end = self._end()
        self.lineBuffer.insert(index, ch)
        self.lineBufferIndex += 1
        self._layout.changed(index)
        self._paint(index, old_end)

    def handle_LEFT(self) -> None:
        if self.lineBufferIndex > 0:
            self.lineBufferIndex -= 1
            self._move_to(self._layout.cursor(self.lineBuffer, self.lineBufferIndex))

    def handle_RIGHT(self) -> None:
        if self.lineBufferIndex < len(self.lineBuffer):
            self.lineBufferIndex += 1
            self._move_to(self._layout.cursor(self.lineBuffer, self.lineBufferIndex))

    def handle_HOME(self) -> None:
        self.lineBufferIndex = 0
        self._move_to(self._layout.cursor(self.lineBuffer, 0))

    def handle_END(self) -> None:
        self.lineBufferIndex = len(self.lineBuffer)
        self._move_to(self._end())

    def handle_BACKSPACE(self) -> None:
        if self.lineBufferIndex > 0:
            old_end = self._end()
            self.lineBufferIndex -= 1
            del self.lineBuffer[self.lineBufferIndex]
            self._layout.changed(self.lineBufferIndex)
            self._paint(self.lineBufferIndex, old_end)

    def handle_DELETE(self) -> None:
        if self.lineBufferIndex < len(self.lineBuffer):
            old_end = self._end()
            del self.lineBuffer[self.lineBufferIndex]
            self._layout.changed(self.lineBufferIndex)
            self._paint(self.lineBufferIndex, old_end)

    def handle_CTRL_U(self) -> None:
        old_end = self._end()
        del self.lineBuffer[: self.lineBufferIndex]
        self._layout.changed(0)
        self.lineBufferIndex = 0
        self._redraw(old_end)

    def handle_CTRL_K(self) -> None:
        old_end = self._end()
        del self.lineBuffer[self.lineBufferIndex :]
        self._layout.changed(self.lineBufferIndex)
        self._paint(self.lineBufferIndex, old_end, erase=True)

    def handle_CTRL_W(self) -> None:
        old_end = self._end()
        start = self.lineBufferIndex
        while start > 0 and self.lineBuffer[start - 1] == b" ":
            start -= 1
        while start > 0 and self.lineBuffer[start - 1] != b" ":
            start -= 1
        del self.lineBuffer[start : self.lineBufferIndex]
        self._layout.changed(start)
        self.lineBufferIndex = start
        self._redraw(old_end)

    def handle_CTRL_L(self) -> None:
        self._leave_line()
        self.terminal.write(b"\n")  # a fresh line; the server never clears the screen
        self._redraw()

    def handle_TAB(self) -> None:
        if self._completing:
            return  # one listing at a time: a flood of Tabs must not fill the commands' pool
        before = b"".join(self.lineBuffer[: self.lineBufferIndex]).decode("utf-8", "replace")
        snapshot = (list(self.lineBuffer), self.lineBufferIndex)
        self._completing = True
        d = defer.maybeDeferred(self.shell.complete, before)
        d.addBoth(self._completion_done)
        d.addCallback(self._complete, before, snapshot)
        d.addErrback(self._completion_failed)

    def _completion_done(self, result: Any) -> Any:
        self._completing = False
        return result

    def _completion_failed(self, failure: Failure) -> None:
        """A bug in completing (the completer, or showing what it found): the bell, as for no
        match, and the traceback logged once per place (it was only "Unhandled error in
        Deferred" when the garbage collector got to it, and the user got nothing)."""
        self.shell.context.internal_error(failure, "completing a word", "bell")
        if not self.shell.ended:
            self.terminal.write(BELL)

    def _complete(self, found: Completion, before: str, snapshot: tuple[list[bytes], int]) -> None:
        if (self.lineBuffer, self.lineBufferIndex) != snapshot or self.shell.running is not None:
            return  # the line changed while the directory was being listed
        candidates = found.candidates
        word = last_word(before)
        common = os.path.commonprefix(candidates) if candidates else ""  # noqa: RUF071 - strings, not paths
        if len(common) > len(word) and found.complete:  # a cut listing may hide other matches
            addition = quote_word(common[len(word) :])
            if len(candidates) == 1 and not common.endswith("/"):
                addition += " "
            for ch in addition:
                self.characterReceived(ch.encode("utf-8"), True)
        elif len(candidates) > 1:
            names = [c.rstrip("/").rsplit("/", 1)[-1] + ("/" if c.endswith("/") else "") for c in candidates]
            self._leave_line()
            self.terminal.write(b"\n" + terminal_safe("  ".join(names)).encode("utf-8", "replace") + b"\n")
            self._redraw()
        else:
            self.terminal.write(BELL)

    def handle_CTRL_C(self) -> None:
        self.handle_END()  # like readline: the line stays visible, ^C goes after it
        self.terminal.write(b"^C\n")
        self.lineBuffer = []
        self.lineBufferIndex = 0
        self._overflow = False
        self.historyPosition = len(self.historyLines)
        self.drawInputLine()

    def handle_CTRL_D(self) -> None:
        if self.lineBuffer:
            self.handle_DELETE()
        else:
            self.terminal.write(b"\n")
            self.shell.end(self.shell.last_status)

    def handle_RETURN(self) -> None:
        self._leave_line()
        overflow, self._overflow = self._overflow, False
        if overflow:
            self.lineBuffer = []
            self.lineBufferIndex = 0
            self.terminal.nextLine()
            self.shell.report_line_too_long()
            self.drawInputLine()
            return
        super().handle_RETURN()
        self._trim_history()

    def handle_UP(self) -> None:
        if self.lineBuffer and self.historyPosition == len(self.historyLines):
            self.historyLines.append(b"".join(self.lineBuffer))  # the line being typed, as a draft
        if self.historyPosition > 0:
            self._show_history(self.historyPosition - 1)
        self._trim_history()

    def handle_DOWN(self) -> None:
        self._show_history(min(self.historyPosition + 1, len(self.historyLines)))

    def _show_history(self, position: int) -> None:
        """Replace the line with history line `position` (an empty line past the newest)."""
        old_end = self._end()
        self._move_to(self._layout.cursor(self.lineBuffer, 0))
        self._settle()
        self.terminal.write(ERASE_BELOW if old_end[0] > self._at[0] else ERASE_LINE)
        self.historyPosition = position
        text = self.historyLines[position] if position < len(self.historyLines) else b""
        self.lineBuffer = [c.encode("utf-8") for c in split_clusters(text.decode("utf-8", "replace"), MAX_CLUSTER)]
        self.lineBufferIndex = len(self.lineBuffer)
        self._paint(0, None)

    def _trim_history(self) -> None:
        excess = max(0, len(self.historyLines) - self.history_size)
        total = sum(len(line) for line in self.historyLines[excess:])
        while total > HISTORY_BYTES and excess < len(self.historyLines) - 1:  # keep the last line
            total -= len(self.historyLines[excess])
            excess += 1
        if excess > 0:
            del self.historyLines[:excess]
            self.historyPosition = max(0, self.historyPosition - excess)

    def lineReceived(self, line: bytes) -> None:
        self.shell.line_entered(line)


class TerminalShell(_ShellBase):
    """With a pty: a prompt, line editing and history; Ctrl-C interrupts, Ctrl-D leaves."""

    kind = "pty-shell"

    def __init__(self, chan: SessionChannel, context: SessionContext, terminal: Terminal):
        super().__init__(chan, context)
        self.terminal = terminal
        self.transport = _CoalescingTransport(chan, self._output_drained, self.crashed)
        self.protocol = _TerminalProtocol()
        self._typeahead = bytearray()
        self._waiting_output = False
        self._eof = False
        settings = context.shell
        # The names are sanitised, the operator's prompt template is not (it may hold colours).
        user, host = (terminal_safe(v, single_line=True) for v in (context.identity.user, settings.hostname))
        prompt = settings.prompt.format(user=user, host=host).encode("utf-8", "replace")
        self.editor = LineEditor(self, prompt, settings.max_line, settings.history_size, terminal.columns)

    def complete(self, before_cursor: str) -> defer.Deferred[Completion]:
        completer = self.context.shell.completer
        if completer is None:
            return defer.succeed(Completion([]))
        return completer.complete(before_cursor, self.context.policy)

    def banner(self) -> bytes:
        return f"conchcmd on {self.context.shell.hostname}: type 'help' for commands, 'exit' to leave.\n".encode()

    def start(self) -> None:
        with self.transport.batch():
            self.protocol.makeConnection(self.transport)
            self.protocol.terminalProtocol = self.editor
            self.editor.makeConnection(self.protocol)
            self.editor.terminalSize(self.terminal.columns, self.terminal.rows)

    @property
    def _busy(self) -> bool:
        """A command runs, or its output (or the editor's echo) has not left yet: input waits as
        typeahead, so a client that reads nothing cannot make the editor queue output for ever."""
        return self.running is not None or self._waiting_output or self.transport.blocked

    def _output_drained(self) -> None:
        """The echo queued while the client was not reading has drained: take the typeahead."""
        if self.ended or self._busy:
            return  # a running command's own completion takes the typeahead
        self._take_typeahead()

    def data_received(self, data: bytes) -> None:
        if self.ended:
            return
        if self._busy:
            if CTRL_C in data:
                self._interrupt_running()
                return
            self._typeahead += data  # the channel's account counts it: the window shuts when full
            return
        self._feed(data)

    def input_held(self) -> int:
        return len(self._typeahead)

    def _interrupt_running(self) -> None:
        """Like a tty's INTR: interrupt the command and flush the typeahead."""
        self._typeahead.clear()
        if self.running is None and not self._waiting_output:
            # Only the echo is waiting for the client to read: the editor takes this Ctrl-C
            # (clearing the line, drawing the prompt) once it has drained.
            self._typeahead += CTRL_C
            self.chan.input_consumed()
            return
        self.chan.input_consumed()
        self.transport.flush()
        if not self.transport.blocked:  # a flood of Ctrl-C must not queue "^C" without bound
            self.transport.write(b"^C\r\n")
            self.transport.flush()  # now, ahead of whatever the interrupted command still writes
        self.interrupt()

    def report_line_too_long(self) -> None:
        self.transport.flush()  # the echoed line goes first
        super().report_line_too_long()

    def _feed(self, data: bytes) -> None:
        with self.transport.batch():
            for i in range(len(data)):
                if self.ended:
                    return
                if self._busy:  # a command started: the rest waits for it
                    rest = data[i:]
                    if CTRL_C in rest:
                        self._interrupt_running()
                    else:
                        self._typeahead[:0] = rest
                    return
                self.protocol.dataReceived(data[i : i + 1])

    def line_entered(self, line: bytes) -> None:
        if not line.strip():
            self.editor.drawInputLine()
            return
        self.transport.flush()
        self.run_line(line, interactive=True).addCallback(self._command_done).addErrback(self.crashed)

    def _command_done(self, outcome: Outcome) -> None:
        if self.ended:
            return
        flushed = self.chan.flushed()
        if not flushed.called:  # like a shell blocked on its terminal: the prompt and the next
            self._waiting_output = True  # command wait until the output has left
            flushed.addCallback(lambda _: self._command_done(outcome)).addErrback(self.crashed)
            return
        self._waiting_output = False
        if self._eof and not self._typeahead:
            self.end(self.last_status)
            return
        self.editor.drawInputLine()
        self._take_typeahead()

    def _take_typeahead(self) -> None:
        typeahead = bytes(self._typeahead)
        self._typeahead.clear()
        if typeahead:
            self._feed(typeahead)
        self.chan.input_consumed()
        if self._eof and not self._busy:
            self.end(self.last_status)

    def end(self, status: int) -> None:
        self.transport.flush()  # what the terminal wrote so far goes before the exit status
        super().end(status)

    def eof_received(self) -> None:
        self._eof = True
        self.end_of_input()
        if not self._busy:
            self.end(self.last_status)

    def window_changed(self, columns: int, rows: int) -> None:
        self.editor.terminalSize(columns, rows)

    def connection_lost(self) -> None:
        # What the session held goes now, not when the garbage collector breaks its cycles.
        self._typeahead = bytearray()
        self.editor.historyLines = []
        self.editor.lineBuffer = []
        super().connection_lost()
