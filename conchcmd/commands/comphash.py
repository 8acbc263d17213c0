"""`comphash`: hash files off the reactor thread, inside the configured roots, in sha256sum format."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from conchcmd.commands.framework import (
    BlockingRunner,
    Command,
    CommandError,
    ExitStatus,
    Invocation,
    UsageError,
    parse_options,
)
from conchcmd.commands.safepath import (
    NotAFile,
    Opened,
    OutsideRoots,
    RootsChanged,
    open_in_roots,
)
from conchcmd.core.audit import terminal_safe
from conchcmd.core.config import HASH_ALGORITHMS, ComphashConfig, UserPolicy
from conchcmd.core.threads import RunnerStopped, abandonable

READ_SIZE = 1 << 20  # large reads: hashlib releases the GIL while it digests them
MIB = 1 << 20
PROGRESS_AFTER = 1.0  # seconds before a progress line appears (small files show none)
PROGRESS_EVERY = 0.5


#: What a user is told when a root kept changing while the path was opened (nothing was read).
ROOTS_CHANGED = "a root changed while the path was being opened; try again"


class PathRefused(Exception):
    """One path could not be hashed; `status` is the exit status it implies."""

    def __init__(self, reason: str, status: int):
        super().__init__(reason)
        self.reason = reason
        self.status = status


class HashCancelled(Exception):
    """The hash was abandoned because its command was interrupted."""


class Cancellation(Protocol):
    """What the hashing thread looks at between reads: whether its command was interrupted."""

    def is_set(self) -> bool: ...


class CancelFlag:
    """A Cancellation the reactor sets and the hashing thread reads: a bool. threading.Event's
    Condition and Lock are for waiting, which nobody does here, and cost ~20 k instructions to make
    per hash (an attribute's store and load are atomic under the GIL)."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


@dataclass(frozen=True)
class HashResult:
    digest: str
    size: int
    opened: str  # the symlink-free path of the file actually hashed


def open_within_roots(path: str, roots: tuple[str, ...], user_roots: tuple[str, ...] | None) -> Opened:
    """Open a client-given path if it is a regular file inside the roots (the user's narrowing
    the global ones); PathRefused with its exit status otherwise. Blocking. `hash_file` and
    `conchcmd check` both decide here."""
    if not os.path.isabs(path):
        raise PathRefused("path must be absolute", ExitStatus.USAGE)
    if "\0" in path:
        raise PathRefused("path contains a NUL byte", ExitStatus.USAGE)
    try:
        return open_in_roots(path, roots, user_roots)
    except OutsideRoots:
        raise PathRefused("outside the allowed roots", ExitStatus.NOT_PERMITTED) from None
    except RootsChanged:
        raise PathRefused(ROOTS_CHANGED, ExitStatus.FAILED) from None
    except NotAFile as e:
        raise PathRefused(str(e), ExitStatus.FAILED) from None
    except OSError as e:
        raise PathRefused(e.strerror or "cannot open", ExitStatus.FAILED) from None


def hash_file(
    path: str,
    roots: tuple[str, ...],
    algorithm: str,
    cancelled: Cancellation,
    user_roots: tuple[str, ...] | None = None,
    progress: list[int] | None = None,
) -> HashResult:
    """Resolve, check and hash one file. Blocking: run it in a thread.

    The roots (and the user's, which narrow them) are resolved on every call, so a root that is
    a symlink follows the operator's current target. The file is opened by safepath's race-free
    walk. `progress`, if given, is kept as [bytes done, file size] for a progress display.
    """
    opened = open_path(path, roots, algorithm, cancelled, user_roots)
    if isinstance(opened, HashResult):
        return opened
    return hash_opened(opened, algorithm, cancelled, progress)


def open_path(
    path: str,
    roots: tuple[str, ...],
    algorithm: str,
    cancelled: Cancellation,
    user_roots: tuple[str, ...] | None = None,
) -> HashResult | Opened:
    """hash_file's first half: resolve, check and open the file; a small one (less than one
    read) is hashed at once, a bigger one is returned open, for hash_opened. Blocking."""
    opened = open_within_roots(path, roots, user_roots)
    if 0 <= opened.size < READ_SIZE:
        return _hash_small(opened, algorithm, cancelled)
    return opened


def hash_opened(
    opened: Opened, algorithm: str, cancelled: Cancellation, progress: list[int] | None = None
) -> HashResult:
    """hash_file's second half: hash an opened file to its end, and close it. Blocking."""
    fd = opened.fd
    with open(fd, "rb", buffering=0) as f:
        if progress is not None:
            progress[1] = os.fstat(fd).st_size
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        digest = hashlib.new(algorithm)
        buffer = bytearray(READ_SIZE)
        view = memoryview(buffer)
        size = 0
        while True:
            if cancelled.is_set():
                raise HashCancelled()
            try:
                n = f.readinto(buffer)
            except OSError as e:
                raise PathRefused(e.strerror or "read error", ExitStatus.FAILED) from None
            if not n:
                break
            digest.update(view[:n])
            size += n
            if progress is not None:
                progress[0] = size
    return HashResult(digest.hexdigest(), size, opened.path)


def _hash_small(opened: Opened, algorithm: str, cancelled: Cancellation) -> HashResult:
    """A file smaller than one read, as it was when opened: read in one go (a short read of a
    regular file is its end), without the big buffer, read-ahead advice and file object that a
    big file's loop needs (three system calls fewer, each a GIL hand-over in this thread). One
    that has grown meanwhile is read on to its end."""
    fd = opened.fd
    try:
        if cancelled.is_set():
            raise HashCancelled()
        digest = hashlib.new(algorithm)
        want = opened.size + 1
        size = 0
        while True:
            try:
                data = os.read(fd, want)
            except OSError as e:
                raise PathRefused(e.strerror or "read error", ExitStatus.FAILED) from None
            digest.update(data)
            size += len(data)
            if len(data) < want:
                break
            if cancelled.is_set():
                raise HashCancelled()
            want = READ_SIZE
    finally:
        os.close(fd)
    return HashResult(digest.hexdigest(), size, opened.path)


class Hasher:
    """Hashes files in threads, at most `max_concurrent` at once and at most
    `max_concurrent_per_user` for any one user (so one user cannot take every slot); a hash over
    either limit waits for a slot. Cancellation stops the thread.

    A file is opened in `runner`'s thread, and hashed there too if it is small; a bigger one is
    hashed in `bulk_runner`'s (the server gives it threads of a lower CPU priority): two hashes
    of big files kept both CPUs of a small machine busy, and every short command's trips
    through the reactor and the threads waited for a CPU (12 ms for a `lastlog`, 1 ms idle).
    """

    def __init__(
        self,
        config: ComphashConfig,
        runner: BlockingRunner,
        on_hashed: Callable[[int], None] | None = None,
        bulk_runner: BlockingRunner | None = None,
    ):
        self.roots = config.roots  # resolved on each hash: see hash_file
        self.on_hashed = on_hashed  # told each file's size once it is hashed to the end (the metrics)
        self.runner = runner
        self.bulk_runner = bulk_runner or runner
        self.semaphore = defer.DeferredSemaphore(config.max_concurrent)
        self.per_user_limit = config.per_user_limit
        self.user_slots: dict[str, defer.DeferredSemaphore] = {}

    def _slots_of(self, user: str) -> defer.DeferredSemaphore:
        slots = self.user_slots.get(user)
        if slots is None:
            slots = self.user_slots[user] = defer.DeferredSemaphore(self.per_user_limit)
        return slots

    def _release(self, user: str, slots: defer.DeferredSemaphore) -> None:
        slots.release()
        self._forget_if_idle(user, slots)

    def _forget_if_idle(self, user: str, slots: defer.DeferredSemaphore) -> None:
        if slots.tokens == slots.limit and not slots.waiting:
            del self.user_slots[user]  # keep no entry per user who ever hashed

    async def hash(
        self,
        path: str,
        algorithm: str,
        user_roots: tuple[str, ...] | None = None,
        progress: list[int] | None = None,
        *,
        user: str = "",
    ) -> HashResult:
        # The user's own slot first: a user at their limit waits there, not in the shared queue.
        # A free token is taken at once (no waiter can be queued while tokens are left): awaiting
        # acquire()'s Deferred costs a Deferred and its await for each of the two.
        slots = self._slots_of(user)
        if slots.tokens:
            slots.tokens -= 1
        else:
            try:
                await slots.acquire()
            except BaseException:  # cancelled while waiting for the user's slot
                self._forget_if_idle(user, slots)
                raise
        if self.semaphore.tokens:
            self.semaphore.tokens -= 1
        else:
            try:
                await self.semaphore.acquire()
            except BaseException:
                self._release(user, slots)
                raise
        cancelled = CancelFlag()
        work: defer.Deferred[HashResult]
        if self.bulk_runner is self.runner:
            work = self.runner.run(hash_file, path, self.roots, algorithm, cancelled, user_roots, progress)
        else:

            def big(outcome: HashResult | Opened) -> Any:
                if isinstance(outcome, Opened):  # hash_opened closes it, even if cancelled meanwhile
                    bulk = self.bulk_runner.run(hash_opened, outcome, algorithm, cancelled, progress)
                    return bulk.addErrback(_close_unhashed, outcome)
                return outcome

            work = self.runner.run(open_path, path, self.roots, algorithm, cancelled, user_roots).addCallback(big)

        def finished(outcome: Any) -> Any:
            self.semaphore.release()  # only now: the thread is really done
            self._release(user, slots)
            if self.on_hashed is not None and isinstance(outcome, HashResult):
                self.on_hashed(outcome.size)
            return outcome

        return await abandonable(work.addBoth(finished), lambda _: cancelled.set())


def _close_unhashed(failure: Failure, opened: Opened) -> Failure:
    """The bulk runner refused the hash (RunnerStopped): hash_opened never ran to close the file."""
    if failure.check(RunnerStopped):
        os.close(opened.fd)
    return failure


def format_line(digest: str, path: str) -> str:
    """One line of sha256sum output; a name with a backslash, CR or LF is escaped and flagged."""
    if "\\" in path or "\n" in path or "\r" in path:
        escaped = path.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        return f"\\{digest}  {escaped}\n"
    return f"{digest}  {path}\n"


class ProgressLine:
    """On a terminal only: a line showing bytes hashed and the rate, redrawn every half second
    once a hash has taken more than a second, erased when it ends."""

    def __init__(self, inv: Invocation, clock: IReactorTime, name: str):
        self.inv = inv
        self.clock = clock
        self.name = terminal_safe(name, single_line=True)  # drawn inside the line, on a terminal
        self.progress = [0, 0]
        self.started = clock.seconds()
        self.shown = False
        self.loop: task.LoopingCall | None = None  # only on a terminal

    def __enter__(self) -> list[int] | None:
        if not self.inv.interactive:
            return None
        self.loop = task.LoopingCall(self._draw)
        self.loop.clock = self.clock
        self.loop.start(PROGRESS_EVERY, now=False)
        return self.progress

    def _draw(self) -> None:
        elapsed = self.clock.seconds() - self.started
        if elapsed < PROGRESS_AFTER:
            return
        done, total = self.progress
        percent = f" {100 * done // total}%" if total else ""
        line = (
            f"\r{self.name}: {done / MIB:,.0f}/{total / MIB:,.0f} MiB{percent} {done / MIB / elapsed:,.0f} MiB/s\x1b[K"
        )
        self.shown = True
        self.inv.stdout.write(line.encode("utf-8", "surrogateescape"))

    def __exit__(self, *exc: object) -> None:
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        if self.shown:
            self.inv.stdout.write(b"\r\x1b[K")


def make_comphash(config: ComphashConfig, hasher: Hasher, clock: IReactorTime) -> Command:
    """Build the `comphash` command."""

    def arguments(args: list[str]) -> tuple[str, bool, list[str]]:
        """(algorithm, JSON output, paths), or UsageError."""
        options, paths = parse_options(args, "a:j", ["algorithm=", "json"])
        algorithm = options.get("-a", options.get("--algorithm", config.algorithm))
        if algorithm not in HASH_ALGORITHMS:
            raise UsageError(f"unknown algorithm {algorithm!r} (choose from {', '.join(HASH_ALGORITHMS)})")
        if not paths:
            raise UsageError("no file given")
        return algorithm, "-j" in options or "--json" in options, paths

    def preflight(argv: list[str], policy: UserPolicy) -> list[CommandError]:
        try:
            _, _, paths = arguments(argv[1:])
        except UsageError as e:
            return [e]
        refusals = []
        for path in paths:
            try:
                os.close(open_within_roots(path, config.roots, policy.comphash_roots).fd)
            except PathRefused as e:
                refusals.append(CommandError(f"{path}: {e.reason}", e.status))
        return refusals

    async def run(inv: Invocation) -> int:
        algorithm, as_json, paths = arguments(inv.args)
        status: int = ExitStatus.OK
        for path in paths:
            try:
                with ProgressLine(inv, clock, path) as progress:
                    result = await hasher.hash(path, algorithm, inv.policy.comphash_roots, progress, user=inv.user)
            except PathRefused as e:
                if e.status == ExitStatus.NOT_PERMITTED:
                    inv.refuse(f"outside roots: {path}")
                status = max(status, e.status)
                if as_json:
                    await inv.say(json.dumps({"path": path, "error": e.reason}) + "\n")
                else:
                    await inv.complain(f"comphash: {path}: {e.reason}\n")
                continue
            if as_json:
                record = {
                    "path": path,
                    "algorithm": algorithm,
                    "digest": result.digest,
                    "bytes": result.size,
                    "opened": result.opened,
                }
                await inv.say(json.dumps(record) + "\n")
            elif inv.interactive:  # on a terminal a file name must not send control sequences
                await inv.say(terminal_safe(format_line(result.digest, path)[:-1]) + "\n")
            else:
                await inv.say(format_line(result.digest, path))
        return status

    return Command(
        name="comphash",
        summary=f"print the hash of each file ({', '.join(HASH_ALGORITHMS)}; default {config.algorithm})",
        usage="comphash [-a ALGORITHM] [--json] PATH...",
        run=run,
        options=("-a", "--algorithm", "--json"),
        preflight=preflight,
    )
