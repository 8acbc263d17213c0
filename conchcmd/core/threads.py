"""Runners for blocking work: the contract the commands and the password checker share, and the
pool-backed and inline implementations. Each user of threads gets a runner of its own, so one kind
of work (e.g. password guesses) can never hold up another (an operator's `comphash`)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from twisted.internet import defer, threads
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")


class BlockingRunner(Protocol):
    """Runs a blocking function away from the reactor thread."""

    def run(self, fn: Callable[..., T], *args: Any) -> defer.Deferred[T]: ...


class InlineRunner:
    """Runs blocking functions right away, on the caller's thread: for tests and tools."""

    def run(self, fn: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        return defer.maybeDeferred(fn, *args)


class ThreadRunner:
    """Runs blocking work in a thread pool owned by the server.

    With `nice` > 0 the pool's threads run at that lower CPU priority (Linux schedules threads
    one by one), so that on a busy machine their work yields to the reactor and to other pools.
    """

    def __init__(self, reactor: Any, pool: ThreadPool, nice: int = 0):
        self.reactor = reactor
        self.pool = pool
        self.nice = nice

    def run(self, fn: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        if self.nice:
            return threads.deferToThreadPool(self.reactor, self.pool, _niced, self.nice, fn, *args)
        return threads.deferToThreadPool(self.reactor, self.pool, fn, *args)


class _Lowered(threading.local):
    """Per thread: whether its priority has been lowered already."""

    done = False


_lowered = _Lowered()


def _niced(nice: int, fn: Callable[..., T], *args: Any) -> T:
    """Run `fn` in a thread whose priority was lowered by `nice`, once, when it first ran here."""
    if not _lowered.done:
        _lowered.done = True
        with contextlib.suppress(OSError, AttributeError):
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    return fn(*args)


def abandonable(
    work: defer.Deferred[T],
    canceller: Callable[[defer.Deferred[T]], None] | None = None,
    late: Callable[[Any], None] | None = None,
) -> defer.Deferred[T]:
    """A Deferred with `work`'s outcome that the caller may cancel (`canceller` then asks the work
    to stop). A thread or a process cannot be stopped mid-way, so an outcome that arrives after the
    cancel is handed to `late` (to close what it opened), if given, and dropped, failures included."""
    result: defer.Deferred[T] = defer.Deferred(canceller)

    def arrived(outcome: Any) -> None:
        if result.called:
            if late is not None:
                late(outcome)
        elif isinstance(outcome, Failure):
            result.errback(outcome)
        else:
            result.callback(outcome)

    work.addBoth(arrived)
    return result
