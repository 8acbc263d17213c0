"""`lastlog`: the last lines of the system log, from a file's end or from the systemd journal."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from typing import IO, Any

from twisted.internet import defer, error
from twisted.internet.interfaces import IReactorProcess
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from conchcmd.commands import (
    BlockingRunner,
    Command,
    CommandError,
    ExitStatus,
    Invocation,
    Output,
    UsageError,
    parse_int,
    parse_options,
)
from conchcmd.config import LastlogConfig

JOURNAL = "journal"
SCAN_BLOCK = 64 * 1024
STREAM_CHUNK = 256 * 1024
# In a terminal, log lines must not be able to drive the operator's terminal: control bytes
# other than tab and newline are shown as '?'.
_TTY_SAFE = bytes(c if c in (9, 10) or 32 <= c < 127 or c >= 128 else ord("?") for c in range(256))


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

    def __init__(self, path: str, runner: BlockingRunner):
        self.path = path
        self.runner = runner

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

    async def tail(self, lines: int, out: Callable[[bytes], defer.Deferred[None]]) -> None:
        try:
            f, start, size = await self.runner.run(self._open, lines)
        except OSError as e:
            raise CommandError(f"{self.path}: {e.strerror}") from None
        try:
            remaining = size - start  # stop at the size seen at start: a growing log ends
            while remaining > 0:
                chunk = await self.runner.run(f.read, min(STREAM_CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                await out(chunk)
        finally:
            f.close()


class _JournalProtocol(ProcessProtocol):
    """Streams journalctl's stdout to the client, pausing the process when the client lags."""

    def __init__(self, out: Callable[[bytes], defer.Deferred[None]]):
        self.out = out
        self.errors = bytearray()
        self.ended: defer.Deferred[None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        d = self.out(data)
        if not d.called:
            process: Any = self.transport
            process.pauseProducing()
            d.addCallback(lambda _: process.resumeProducing())

    def errReceived(self, data: bytes) -> None:
        if len(self.errors) < 4096:
            self.errors += data[: 4096 - len(self.errors)]

    def processEnded(self, reason: Failure) -> None:
        if reason.check(error.ProcessDone):
            self.ended.callback(None)
        else:
            message = self.errors.decode("utf-8", "replace").strip() or str(reason.value)
            self.ended.errback(CommandError(f"journalctl: {message}"))


class JournalTail:
    """The systemd journal, read with `journalctl -n N --no-pager` in a child process."""

    def __init__(self, reactor: IReactorProcess, journalctl: str = "journalctl"):
        self.reactor = reactor
        self.journalctl = journalctl

    def describe(self) -> str:
        return "the systemd journal"

    def available(self) -> bool:
        return shutil.which(self.journalctl) is not None

    async def tail(self, lines: int, out: Callable[[bytes], defer.Deferred[None]]) -> None:
        executable = shutil.which(self.journalctl)
        if executable is None:
            raise CommandError("journalctl is not installed")
        protocol = _JournalProtocol(out)
        argv = [executable, "-n", str(lines), "--no-pager", "-q"]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SYSTEMD_COLORS": "0"}
        process = self.reactor.spawnProcess(protocol, executable, argv, env=env)

        def kill(_: Any) -> None:
            with contextlib.suppress(error.ProcessExitedAlready):
                process.signalProcess("TERM")

        waiting: defer.Deferred[None] = defer.Deferred(kill)
        protocol.ended.chainDeferred(waiting)
        await waiting


LogSource = FileTail | JournalTail


def build_sources(config: LastlogConfig, runner: BlockingRunner, reactor: IReactorProcess) -> list[LogSource]:
    return [JournalTail(reactor) if name == JOURNAL else FileTail(name, runner) for name in config.sources]


def make_lastlog(config: LastlogConfig, sources: list[LogSource]) -> Command:
    """Build the `lastlog` command over the configured log sources (first available wins)."""

    async def run(inv: Invocation) -> int:
        options, operands = parse_options(inv.args, "n:", ["lines="])
        if operands:
            raise UsageError(f"unexpected argument {operands[0]!r}")
        lines = config.lines
        for value in (options.get("-n"), options.get("--lines")):
            if value is not None:
                lines = parse_int(value, "-n", 1, config.max_lines)
        source = next((s for s in sources if s.available()), None)
        if source is None:
            tried = ", ".join(s.describe() for s in sources)
            raise CommandError(f"no system log available (tried {tried})")
        await source.tail(lines, _writer(inv.stdout, inv.interactive))
        return ExitStatus.OK

    return Command(
        name="lastlog",
        summary=f"show the last N lines of the system log (default {config.lines}, at most {config.max_lines})",
        usage="lastlog [-n N]",
        run=run,
    )


def _writer(out: Output, interactive: bool) -> Callable[[bytes], defer.Deferred[None]]:
    if not interactive:
        return out.write
    return lambda data: out.write(data.translate(_TTY_SAFE))
