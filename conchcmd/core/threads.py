"""Runners for blocking work: the contract the commands and the password checker share, and the
pool-backed and inline implementations. Each user of threads gets a runner of its own, so one kind
of work (e.g. password guesses) can never hold up another (an operator's `comphash`)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")
_log = Logger()


class RunnerStopped(RuntimeError):
    """A job given to a runner whose thread pool has stopped (the server is shutting down): it
    was not run. A command then ends as on a bug ("conchcmd: internal error", exit status 1)."""


class BlockingRunner(Protocol):
    """Runs a blocking function away from the reactor thread."""

    def run(self, fn: Callable[..., T], *args: Any) -> defer.Deferred[T]: ...


class InlineRunner:
    """Runs blocking functions right away, on the caller's thread: for tests and tools."""

    def run(self, fn: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        return defer.maybeDeferred(fn, *args)


class ThreadRunner:
    """Runs blocking work in the threads of a pool owned by the server.

    A job costs the reactor thread a deque entry: the pool's threads run worker loops that take
    jobs from this runner's deque and stay a moment (LINGER) for the next one, instead of each job
    going through the pool's own hand-over (its context, team and lock bookkeeping, ~30 calls on
    the reactor thread per job). The pool still owns the threads: at most `pool.max` loops run, a
    loop gives its thread back once idle for LINGER (at once after `stop`), and a stopped pool
    runs nothing new, as before. A waiting loop sleeps until a job comes, LINGER is up or `stop`
    wakes it: an idle server's threads do not wake up to look (they polled every 50 ms).

    With `nice` > 0 the threads run at that lower CPU priority (Linux schedules threads one by
    one), so that on a busy machine their work yields to the reactor and to other pools.
    """

    LINGER = 0.5  # seconds a worker waits for another job before giving its thread back

    def __init__(self, reactor: Any, pool: ThreadPool, nice: int = 0):
        self.reactor = reactor
        self.pool = pool
        self.nice = nice
        # Jobs wait in a deque (the reactor's append and a worker's popleft are single C calls);
        # a worker with nothing to do sleeps on a lock of its own, listed in _sleepers, which
        # whoever gives a job (or `stop`) releases: no Queue and Condition (~15 Python calls a
        # job between the two threads), and a timed wait that is always the worker's own (CPython
        # 3.11's SimpleQueue.get(timeout) waited for ever when woken for a job another worker took
        # after its time was up: pool.stop(), the server's SIGTERM, then waited for it for good).
        # (fn, args, what takes its value, what takes its Failure) on the reactor thread
        self._jobs: deque[tuple[Callable[..., Any], tuple[Any, ...], Callable[[Any], object], Callable[[Any], object]]]
        self._jobs = deque()
        self._sleepers: list[threading.Lock] = []
        self._stopped = False
        self._lock = threading.Lock()
        self._pending = 0  # jobs given and not yet taken
        self._idle = 0  # workers waiting for a job (or just taking one)
        self._workers = 0  # worker loops started and not ended

    def run(self, fn: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        if self.pool.joined or self._stopped:  # a stopped pool runs nothing: said at once, not never
            return defer.fail(_not_run(fn))
        d: defer.Deferred[T] = defer.Deferred()
        with self._lock:
            self._jobs.append((fn, args, d.callback, d.errback))
            self._pending += 1
            if self._sleepers:  # one asleep: it takes this job
                self._sleepers.pop().release()
                return d
            start = self._pending > self._idle and self._workers < self.pool.max
            if start:
                self._workers += 1
        if start:
            self.pool.callInThread(self._work)
        return d

    def _work(self) -> None:
        """A worker loop, in one of the pool's threads: run jobs until none came for LINGER."""
        if self.nice:
            _lower_priority(self.nice)
        jobs, lock, deliver = self._jobs, self._lock, self.reactor.callFromThread
        wake = threading.Lock()
        wake.acquire()  # held: the worker's sleep (acquire again) lasts until someone releases it
        idle = False  # counted in _idle
        left = False  # counted out of _idle and _workers on the way out
        done: tuple[Callable[[Any], object], Any] | None = None  # the last job's outcome, to deliver
        try:
            while True:
                with lock:
                    self._idle += 1
                    idle = True
                    if done is not None and not jobs and wake not in self._sleepers:
                        # Listed as asleep before the outcome goes: delivering wakes the reactor,
                        # which then wants the GIL; this thread goes straight to sleep after it
                        # instead of holding the GIL for its bookkeeping.
                        self._sleepers.append(wake)
                if done is not None:
                    deliver(*done)
                    done = None
                until = time.monotonic() + self.LINGER
                while True:
                    with lock:
                        if jobs:
                            fn, args, ok, failed = jobs.popleft()
                            self._idle -= 1
                            idle = False
                            self._pending -= 1
                            if wake in self._sleepers:  # listed, but took the job itself
                                self._sleepers.remove(wake)
                            elif not wake.locked():  # woken for the job it took itself
                                wake.acquire()
                            break
                        if self._stopped or self.pool.joined or time.monotonic() >= until:
                            self._idle -= 1
                            self._workers -= 1
                            left = True
                            if wake in self._sleepers:
                                self._sleepers.remove(wake)
                            return
                        if wake not in self._sleepers:
                            if not wake.locked():  # released for a job another worker took first
                                wake.acquire()
                            self._sleepers.append(wake)
                    # Asleep until a job or `stop` wakes it, or LINGER is up.
                    if not wake.acquire(timeout=max(until - time.monotonic(), 0.0)):
                        with lock:
                            if wake in self._sleepers:
                                self._sleepers.remove(wake)
                            else:  # woken just as its time was up: armed again at once
                                wake.acquire()
                try:
                    done = (ok, fn(*args))
                except BaseException:
                    done = (failed, Failure())
                del fn, args, ok, failed  # nothing of the job kept while waiting for the next
        finally:
            if not left:  # something raised (deliver, say): the pool logs it; the counts stay right
                with lock:
                    if wake in self._sleepers:  # a job must never wake a worker that has gone
                        self._sleepers.remove(wake)
                self._ended(idle)

    def stop(self) -> None:
        """The pool is stopping: run nothing new, and wake every waiting worker so that it gives
        its thread back now, not LINGER later (pool.stop() waits for them). Jobs given before
        still run."""
        with self._lock:
            self._stopped = True
            for sleeper in self._sleepers:
                sleeper.release()
            self._sleepers.clear()

    def _ended(self, idle: bool) -> None:
        """A worker loop ended by an exception: counted out, and replaced if jobs wait for it."""
        with self._lock:
            self._workers -= 1
            if idle:
                self._idle -= 1
            stopped = self.pool.joined or self._stopped
            again = self._pending > self._idle and self._workers < self.pool.max and not stopped
            if again:
                self._workers += 1
        if again:
            self.pool.callInThread(self._work)


def _not_run(fn: Callable[..., Any]) -> RunnerStopped:
    name = getattr(fn, "__qualname__", None) or repr(fn)
    return RunnerStopped(f"the thread pool has stopped (server shutting down): {name} not run")


class _Lowered(threading.local):
    """Per thread: whether its priority has been lowered already."""

    done = False


_lowered = _Lowered()


def _lower_priority(nice: int) -> None:
    """Lower the calling thread's priority by `nice`, once per thread."""
    if not _lowered.done:
        _lowered.done = True
        with contextlib.suppress(OSError, AttributeError):
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))


def abandonable(
    work: defer.Deferred[T],
    canceller: Callable[[defer.Deferred[T]], None] | None = None,
    late: Callable[[Any], None] | None = None,
) -> defer.Deferred[T]:
    """A Deferred with `work`'s outcome that the caller may cancel (`canceller` then asks the work
    to stop). A thread or a process cannot be stopped mid-way, so an outcome that arrives after the
    cancel is handed to `late` (to close what it opened), if given, and dropped, failures included;
    a bug in `late` is logged at once (left on `work`'s chain it would show only when collected)."""
    result: defer.Deferred[T] = defer.Deferred(canceller)

    def arrived(outcome: Any) -> None:
        if not result.called:
            if isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(outcome)
        elif late is not None:
            try:
                late(outcome)
            except Exception:
                _log.failure("Cleaning up after abandoned work failed")

    work.addBoth(arrived)
    return result
