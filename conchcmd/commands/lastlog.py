"""`lastlog`: the last lines of the system log, from a file's end or from the systemd journal;
with `-f`, followed like `tail -F` (rotation and truncation handled) or `journalctl -f`."""

from __future__ import annotations

import contextlib
import grp
import io
import json
import os
import pwd
import shutil
import subprocess
from collections.abc import Callable
from typing import IO, Any

from twisted.internet import defer, error, task
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from conchcmd.commands.framework import (
    BlockingRunner,
    Command,
    CommandError,
    ExitStatus,
    Invocation,
    Output,
    UsageError,
    parse_int,
    parse_options,
    usage_preflight,
)
from conchcmd.core.audit import TerminalSafe
from conchcmd.core.config import LastlogConfig
from conchcmd.core.threads import abandonable

JOURNAL = "journal"
SCAN_BLOCK = 64 * 1024
STREAM_CHUNK = 256 * 1024
FOLLOW_POLL = 0.5  # seconds between looks at a followed file

Writer = Callable[[bytes], defer.Deferred[None]]


def find_tail_start(f: IO[bytes], size: int, lines: int) -> int:
    """Offset where the last `lines` lines of the file begin, reading backwards from its end."""
    end = size
    if end:
        f.seek(end - 1)
        if f.read(1) == b"\n":
            end -= 1  # the final newline ends the last line; it does not start one
    needed = lines
    pos = end
    while pos > 0:
        step = min(SCAN_BLOCK, pos)
        pos -= step
        f.seek(pos)
        block = f.read(step)
        index = len(block)
        while True:
            index = block.rfind(b"\n", 0, index)
            if index < 0:
                break
            needed -= 1
            if needed == 0:
                return pos + index + 1
    return 0


class FileTail:
    """Streams the tail of a log file; cost depends on the lines asked for, not the file size."""

    def __init__(self, path: str, runner: BlockingRunner, clock: IReactorTime):
        self.path = path
        self.runner = runner
        self.clock = clock

    def describe(self) -> str:
        return self.path

    def available(self) -> bool:
        return os.path.isfile(self.path)

    def _open(self, lines: int) -> tuple[IO[bytes], int, int]:
        f = open(self.path, "rb")  # noqa: SIM115 - closed by tail()
        try:
            size = os.fstat(f.fileno()).st_size
            start = find_tail_start(f, size, lines)
            f.seek(start)
        except BaseException:
            f.close()
            raise
        return f, start, size

    def _owned(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        """Run fn in a thread; a file it opens after the caller gave up is closed, not leaked."""

        def close_opened(outcome: Any) -> None:
            for value in outcome if isinstance(outcome, tuple) else ():
                if isinstance(value, io.IOBase):  # a file the thread opened
                    value.close()

        return abandonable(self.runner.run(fn, *args), late=close_opened)

    async def tail(self, lines: int, out: Writer, *, follow: bool = False, stop: defer.Deferred[None]) -> None:
        try:
            f, start, size = await self._owned(self._open, lines)
        except PermissionError:
            raise CommandError(unreadable_file_message(self.path)) from None
        except OSError as e:
            raise CommandError(f"{self.path}: {e.strerror}") from None
        current = [f]  # the file being read; following may replace it
        try:
            await self._copy(f, size - start, out)  # up to the size seen at start: a growing log ends
            if follow:
                await self._follow(current, out, stop)
        finally:
            current[0].close()

    async def _copy(self, f: IO[bytes], remaining: int | None, out: Writer) -> None:
        """Copy `remaining` bytes (None: whatever is there now) from f's position to out."""
        while remaining is None or remaining > 0:
            want = STREAM_CHUNK if remaining is None else min(STREAM_CHUNK, remaining)
            chunk = await self.runner.run(f.read, want)
            if not chunk:
                return
            if remaining is not None:
                remaining -= len(chunk)
            await out(chunk)

    def _look(self, f: IO[bytes]) -> tuple[str, IO[bytes] | None]:
        """Compare the open file with the path: 'same', 'truncated' (rewound) or 'rotated'
        (with the new file, opened)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return "same", None  # rotated away and not recreated yet: keep reading the old one
        mine = os.fstat(f.fileno())
        if (st.st_ino, st.st_dev) != (mine.st_ino, mine.st_dev):
            return "rotated", open(self.path, "rb")
        if mine.st_size < f.tell():
            f.seek(0)
            return "truncated", None
        return "same", None

    async def _follow(self, current: list[IO[bytes]], out: Writer, stop: defer.Deferred[None]) -> None:
        """Like `tail -F`: new lines as they come, across rotation and truncation, until stopped.
        `current[0]` is always the open file, so the caller closes the right one."""
        while not stop.called:
            await task.deferLater(self.clock, FOLLOW_POLL, lambda: None)
            await self._copy(current[0], None, out)  # what the current file still has
            state, new = await self._owned(self._look, current[0])
            if new is not None:
                current[0].close()
                current[0] = new
            if state != "same":
                await self._copy(current[0], None, out)


class _JournalProtocol(ProcessProtocol):
    """Streams journalctl's stdout to the client, pausing the process when the client lags.

    Its methods and the callbacks they add run from the reactor, outside the command's own
    Deferred chain: a bug there (in the writer, say) went to the reactor's log as an unhandled
    error each time, and the command waited for ever. `bug` makes it the command's outcome
    instead, so the session reports it as a crash (traceback once per place, "conchcmd: internal
    error", exit status 1), and stops journalctl.
    """

    def __init__(self, out: Writer):
        self.out = out
        self.errors = bytearray()
        self.ended: defer.Deferred[None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        if self.ended.called:  # ended by a bug: what journalctl still sends goes nowhere
            return
        try:
            d = self.out(data)
            if not d.called:
                process: Any = self.transport
                process.pauseProducing()
                d.addCallback(lambda _: process.resumeProducing())
        except Exception:
            self.bug(Failure())
            return
        d.addErrback(self.bug)

    def errReceived(self, data: bytes) -> None:
        if len(self.errors) < 4096:
            self.errors += data[: 4096 - len(self.errors)]

    def processEnded(self, reason: Failure) -> None:
        if self.ended.called:  # ended by a bug already
            return
        try:
            if reason.check(error.ProcessDone):
                self.ended.callback(None)
            else:
                message = self.errors.decode("utf-8", "replace").strip() or str(reason.value)
                self.ended.errback(CommandError(f"journalctl: {message}"))
        except Exception:
            self.bug(Failure())

    def bug(self, failure: Failure) -> None:
        """A bug of ours while journalctl runs: the command ends with it, journalctl is stopped."""
        if not self.ended.called:
            self.ended.errback(failure)
        process: Any = self.transport
        if process is not None:
            with contextlib.suppress(error.ProcessExitedAlready):
                process.signalProcess("TERM")


def _journal_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SYSTEMD_COLORS": "0"}


def _this_user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


JOURNAL_GROUPS = ("systemd-journal", "adm")  # the groups journald lets read the system journal


def unreadable_file_message(path: str) -> str:
    """What to say when the log file exists but this user may not read it."""
    try:
        group = _group_name(os.stat(path).st_gid)
    except OSError:
        group = "its group"
    return f"{path}: permission denied for this user ({_this_user()}); add it to group {group} or set [lastlog] path"


def empty_journal_message(missing_files: list[str], *, advice: bool = True) -> str:
    """What to say when journalctl shows nothing: journald keeps boot messages at least, so an
    empty answer means this user may not read the system journal, or that nothing is collected."""
    before = f"no {' or '.join(missing_files)}, and " if missing_files else ""
    hint = ""
    if os.geteuid() != 0:
        groups = {_group_name(g) for g in (os.getegid(), *os.getgroups())}
        if not groups.intersection(JOURNAL_GROUPS):
            hint = f" ({_this_user()} is in neither the {' nor the '.join(JOURNAL_GROUPS)} group)"
    advise = "; set [lastlog] path" if advice else ""
    return f"{before}the journal has no entries readable by this user{hint}{advise}"


class JournalTail:
    """The systemd journal, read with `journalctl -n N [-f] --no-pager` in a child process."""

    def __init__(self, reactor: IReactorProcess, journalctl: str = "journalctl"):
        self.reactor = reactor
        self.journalctl = journalctl

    def describe(self) -> str:
        return "the systemd journal"

    def available(self) -> bool:
        return shutil.which(self.journalctl) is not None

    async def has_entries(self) -> bool:
        """Whether this user can read at least one entry. journalctl -f on a journal this user
        cannot read (or an empty one) waits for ever, printing nothing; -q hides its hint."""
        seen = bytearray()

        def keep(data: bytes) -> defer.Deferred[None]:
            seen.extend(data[:1])
            return defer.succeed(None)

        await self.tail(1, keep, stop=defer.Deferred())
        return bool(seen)

    def has_entries_blocking(self, timeout: float = 10.0) -> bool:
        """has_entries() for `doctor`, which has no reactor running."""
        executable = shutil.which(self.journalctl)
        if executable is None:
            return False
        try:
            done = subprocess.run(
                [executable, "-n", "1", "--no-pager", "-q"], capture_output=True, timeout=timeout, env=_journal_env()
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0 and bool(done.stdout.strip())

    async def tail(self, lines: int, out: Writer, *, follow: bool = False, stop: defer.Deferred[None]) -> None:
        executable = shutil.which(self.journalctl)
        if executable is None:
            raise CommandError("journalctl is not installed")
        protocol = _JournalProtocol(out)
        argv = [executable, "-n", str(lines), *(["-f"] if follow else []), "--no-pager", "-q"]
        running = [self.reactor.spawnProcess(protocol, executable, argv, env=_journal_env())]

        def kill(_: Any = None) -> None:
            for process in running:  # empty once this tail is over: nothing left to kill
                with contextlib.suppress(error.ProcessExitedAlready):
                    process.signalProcess("TERM")

        if follow:
            stop.addCallback(kill).addErrback(protocol.bug)  # end of input ends a follow
        # After a cancel, journalctl still ends (we killed it): nothing is waiting any more.
        waiting = abandonable(protocol.ended, kill)
        try:
            await waiting
        except CommandError:
            if not (follow and stop.called):  # a follow we ended because input ended: no error
                raise
        finally:
            running.clear()


LogSource = FileTail | JournalTail


def build_sources(
    config: LastlogConfig, runner: BlockingRunner, reactor: IReactorProcess, clock: IReactorTime
) -> list[LogSource]:
    return [JournalTail(reactor) if name == JOURNAL else FileTail(name, runner, clock) for name in config.sources]


class JsonLines:
    """Turns streamed log bytes into JSON: one object with all lines, or an object per line."""

    def __init__(self, out: Output, source: str, *, per_line: bool):
        self.out = out
        self.source = source
        self.per_line = per_line
        self.partial = b""
        self.count = 0
        self.started = False

    def _encode(self, line: bytes) -> bytes:
        text = line.decode("utf-8", "replace")
        if self.per_line:
            return json.dumps({"source": self.source, "line": text}).encode() + b"\n"
        prefix = b"" if self.count == 0 else b", "
        return prefix + json.dumps(text).encode()

    def _head(self) -> bytes:
        """The object's opening, written with the first line or at the end: an error before any
        line leaves stdout empty rather than half a document."""
        if self.per_line or self.started:
            return b""
        self.started = True
        return b'{"source": ' + json.dumps(self.source).encode() + b', "lines": ['

    def write(self, data: bytes) -> defer.Deferred[None]:
        *lines, self.partial = (self.partial + data).split(b"\n")
        encoded = b"".join(self._encode_counted(line) for line in lines)
        return self.out.write(self._head() + encoded) if encoded else defer.succeed(None)

    def _encode_counted(self, line: bytes) -> bytes:
        encoded = self._encode(line)
        self.count += 1
        return encoded

    def finish(self) -> defer.Deferred[None]:
        tail = self._encode_counted(self.partial) if self.partial else b""
        self.partial = b""
        return self.out.write(tail if self.per_line else self._head() + tail + b"]}\n")


def make_lastlog(config: LastlogConfig, sources: list[LogSource]) -> Command:
    """Build the `lastlog` command over the configured log sources (first available wins)."""

    def arguments(args: list[str]) -> tuple[int, bool, bool]:
        """(lines, follow, JSON output), or UsageError."""
        options, operands = parse_options(args, "n:fj", ["lines=", "follow", "json"])
        if operands:
            raise UsageError(f"unexpected argument {operands[0]!r}")
        lines = config.lines
        for value in (options.get("-n"), options.get("--lines")):
            if value is not None:
                lines = parse_int(value, "-n", 1, config.max_lines)
        return lines, "-f" in options or "--follow" in options, "-j" in options or "--json" in options

    async def run(inv: Invocation) -> int:
        lines, follow, as_json = arguments(inv.args)
        source = next((s for s in sources if s.available()), None)
        if source is None:
            tried = ", ".join(s.describe() for s in sources)
            raise CommandError(f"no system log available (tried {tried}); set [lastlog] path")
        missing = [s.path for s in sources[: sources.index(source)] if isinstance(s, FileTail)]
        if isinstance(source, JournalTail) and follow and not await source.has_entries():
            raise CommandError(empty_journal_message(missing))  # journalctl -f would wait in silence
        if as_json:
            name = JOURNAL if isinstance(source, JournalTail) else source.path
            encoder = JsonLines(inv.stdout, name, per_line=follow)
            out: Writer = encoder.write
        else:
            out = _writer(inv.stdout, inv.interactive)
        sent = [0]

        def counted(data: bytes) -> defer.Deferred[None]:
            sent[0] += len(data)
            return out(data)

        if isinstance(source, FileTail) and follow and _is_empty(source.path):
            await _say_empty(inv, source.path)  # now: the follow may last for days
        await source.tail(lines, counted, follow=follow, stop=inv.input_closed)
        if not sent[0] and not follow:
            if isinstance(source, JournalTail):
                raise CommandError(empty_journal_message(missing))
            await _say_empty(inv, source.path)
        if as_json:
            await encoder.finish()
        return ExitStatus.OK

    return Command(
        name="lastlog",
        summary=f"show the last N lines of the system log (default {config.lines}, at most {config.max_lines})",
        usage="lastlog [-n N] [-f] [--json]",
        run=run,
        options=("-n", "--lines", "-f", "--follow", "--json"),
        preflight=usage_preflight(arguments),
    )


def _is_empty(path: str) -> bool:
    try:
        return os.stat(path).st_size == 0
    except OSError:
        return False  # opening it says what is wrong


async def _say_empty(inv: Invocation, path: str) -> None:
    """An existing, readable, empty file (just rotated, say) is a valid answer, status 0, as with
    `tail`; stderr says why nothing was printed."""
    await inv.complain(f"lastlog: {path} is empty\n")


def _writer(out: Output, interactive: bool) -> Writer:
    """Raw bytes for scripts (like tail); on a terminal, nothing that could drive it."""
    if not interactive:
        return out.write
    safe = TerminalSafe()
    return lambda data: out.write(safe(data))
