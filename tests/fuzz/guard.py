"""What every fuzz target shares: its budget, a per-example time bound, the log check, the corpus.

A target fails on an exception it does not document, a hang (an example running longer than
HANG_SECONDS), a traceback or error in the Twisted log, or a buffer growing past its bound.
"""

from __future__ import annotations

import gc
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import settings
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

PROFILE = "conchcmd-fuzz"
CORPUS = Path(__file__).parent / "corpus"
#: Far above what any one example needs (milliseconds); only a hang, or a machine stalled for
#: this long, reaches it.
HANG_SECONDS = 10.0
LONG_FACTOR = 200

F = TypeVar("F", bound=Callable[..., Any])


def budget(default: int) -> int:
    """Examples for a target whose default run takes `default` examples."""
    explicit = os.environ.get("CONCHCMD_FUZZ_EXAMPLES")
    if explicit:
        return int(explicit)
    if os.environ.get("CONCHCMD_FUZZ", "") == "long":
        return default * LONG_FACTOR
    return default


def fuzz(default_examples: int) -> Callable[[F], F]:
    """The fuzz profile with this target's example budget, as a test decorator."""
    return settings(settings.get_profile(PROFILE), max_examples=budget(default_examples))


class Hang(Exception):
    """An example ran longer than HANG_SECONDS, or grew memory by more than MEMORY_HEADROOM."""


#: Address space an example may add before its allocations fail (RLIMIT_AS, Linux).
MEMORY_HEADROOM = 1 << 30
#: After the first alarm, Hang is raised again this often (code under test may swallow one:
#: Deferreds and the transport's catch-all do), and the process is ended after GIVE_UP more.
REPEAT_SECONDS = 1.0
GIVE_UP = 10


def _address_space() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@contextmanager
def bounded(seconds: float = HANG_SECONDS, repeat: float = REPEAT_SECONDS) -> Iterator[None]:
    """Fail the block if it runs longer than `seconds` (SIGALRM raises Hang in it, again every
    second until it leaves; the process ends if it never does) or if it allocates more than
    MEMORY_HEADROOM (its allocations fail, MemoryError)."""
    alarms = 0

    def expired(signum: int, frame: Any) -> None:
        nonlocal alarms
        alarms += 1
        if alarms > GIVE_UP:
            import faulthandler
            import sys

            sys.stderr.write(f"fuzz: example still running {seconds + GIVE_UP * repeat:g} s in; giving up\n")
            faulthandler.dump_traceback()
            os._exit(70)
        raise Hang(f"example still running after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds, repeat)
    limits = None
    size = _address_space()
    if size is not None:
        import resource

        limits = resource.getrlimit(resource.RLIMIT_AS)
        if limits[0] == resource.RLIM_INFINITY:
            resource.setrlimit(resource.RLIMIT_AS, (size + MEMORY_HEADROOM, limits[1]))
        else:
            limits = None
    try:
        yield
    except MemoryError:
        raise Hang(f"example allocated more than {MEMORY_HEADROOM >> 20} MiB") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if limits is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, limits)
    if alarms:
        raise Hang(f"example ran longer than {seconds:g} s (the code under test swallowed the alarm)")


class LogWatch:
    """Collects Twisted log events at error level and above, and any carrying a Failure."""

    def __init__(self, ignore_sources: tuple[type, ...] = ()) -> None:
        self.bad: list[dict[str, Any]] = []
        self.ignore_sources = ignore_sources  # the test client's own complaints are not the server's

    def __call__(self, event: dict[str, Any]) -> None:
        if isinstance(event.get("log_source"), self.ignore_sources):
            return
        level = event.get("log_level")
        if "log_failure" in event or level in (LogLevel.error, LogLevel.critical) or event.get("isError"):
            self.bad.append(event)

    def start(self) -> None:
        globalLogPublisher.addObserver(self)

    def stop(self) -> None:
        globalLogPublisher.removeObserver(self)

    @contextmanager
    def clean(self, *, collect: bool = False) -> Iterator[None]:
        """Fail if this block (or, with `collect`, a Deferred it dropped) logs an error or traceback."""
        before = len(self.bad)
        try:
            yield
        finally:
            new = self.bad[before:]
            del self.bad[before:]  # reported here, and only here
            if collect:
                described = self.describe(new)  # drop the Failures' frames, which hold Deferreds
                new.clear()
                gc.collect()  # "Unhandled error in Deferred" is logged when the Deferred is collected
                described += self.describe(self.bad[before:])
                del self.bad[before:]
            else:
                described = self.describe(new)
        if described:
            raise AssertionError("logged at error level:\n" + "\n---\n".join(described))

    @staticmethod
    def describe(events: list[dict[str, Any]]) -> list[str]:
        described = []
        for event in events:
            text = formatEvent(event)
            failure = event.get("log_failure")
            if failure is not None:
                text += "\n" + failure.getTraceback()
            described.append(text)
        return described


def corpus(target: str) -> list[Any]:
    """The saved inputs of a target, as pytest params named by file."""
    import pytest

    folder = CORPUS / target
    files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    return [pytest.param(p.read_bytes(), id=p.name) for p in files]
