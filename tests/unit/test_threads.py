"""conchcmd.core.threads and the server's two pools: password checks never run in the commands' threads,
and their threads run at a lower CPU priority."""

from __future__ import annotations

import contextlib
import io
import os
import queue
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.logger import capturedLogs
from twisted.python.threadpool import ThreadPool

from conchcmd.core.config import Config, LimitsConfig
from conchcmd.core.threads import RunnerStopped, ThreadRunner, abandonable
from conchcmd.edge.service import PASSWORD_THREADS_NICE, ConchcmdService


class ThreadedReactor:
    """Just enough reactor for deferToThreadPool: results are delivered on the worker thread."""

    def callFromThread(self, f: Any, *args: Any) -> None:
        f(*args)


def run_in(runner: ThreadRunner, fn: Any) -> Any:
    done = threading.Event()
    results: list[Any] = []
    runner.run(fn).addBoth(lambda r: (results.append(r), done.set()))
    assert done.wait(10)
    return results[0]


def thread_priority() -> tuple[str, int]:
    return threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_a_niced_runner_lowers_its_threads_priority_once() -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    pool = ThreadPool(minthreads=1, maxthreads=1, name="niced")
    pool.start()
    try:
        runner = ThreadRunner(ThreadedReactor(), pool, nice=3)
        first = run_in(runner, thread_priority)
        again = run_in(runner, thread_priority)  # the same thread: lowered once, not twice
        assert first[1] == again[1] == min(19, base + 3)
        plain = run_in(ThreadRunner(ThreadedReactor(), pool), thread_priority)
        assert plain == first  # the pool's thread keeps its priority; a plain runner changes nothing
    finally:
        pool.stop()
    assert os.getpriority(os.PRIO_PROCESS, 0) == base  # the calling thread is untouched


def test_the_server_checks_passwords_in_a_pool_of_their_own(tmp_path: Path) -> None:
    config = Config(
        host_keys_dir=tmp_path / "keys",
        authorized_keys=str(tmp_path / "users" / "%u"),
        audit_log=str(tmp_path / "audit.jsonl"),
        limits=LimitsConfig(max_password_checks=3),
    )
    service = ConchcmdService(config, reactor=ThreadedReactor(), out=io.StringIO())
    service.prepare()
    try:
        assert service.server is not None
        runner = service.server.passwords.runner
        assert isinstance(runner, ThreadRunner)
        assert runner.pool is service.password_pool is not service.pool
        assert runner.nice == PASSWORD_THREADS_NICE > 0
        assert (service.password_pool.max, service.server.passwords.max_checks) == (3, 3)
    finally:
        service.audit.close()


def test_abandonable_passes_the_outcome_until_cancelled() -> None:
    work: defer.Deferred[str] = defer.Deferred()
    result = abandonable(work)
    work.callback("done")
    assert result.result == "done"
    failing: defer.Deferred[str] = defer.Deferred()
    refused = abandonable(failing)
    failing.errback(ValueError("no"))
    assert refused.result.check(ValueError)
    refused.addErrback(lambda _: None)


def test_abandonable_hands_a_late_outcome_to_late_and_drops_it() -> None:
    asked: list[str] = []
    late: list[Any] = []
    work: defer.Deferred[str] = defer.Deferred()
    result = abandonable(work, lambda _: asked.append("stop"), late.append)
    result.cancel()
    assert asked == ["stop"]
    assert isinstance(result.result.value, defer.CancelledError)
    result.addErrback(lambda _: None)
    work.callback("opened file")
    assert late == ["opened file"]
    assert work.result is None  # nothing left on the work's chain to be logged as unhandled
    failing: defer.Deferred[str] = defer.Deferred()
    gone = abandonable(failing)
    gone.cancel()
    gone.addErrback(lambda _: None)
    failing.errback(ValueError("late failure"))
    assert failing.result is None  # dropped, not an unhandled error in the log


def test_jobs_run_at_once_up_to_the_pool_s_size_and_their_outcomes_arrive() -> None:
    pool = ThreadPool(minthreads=0, maxthreads=3, name="lean")
    pool.start()
    try:
        runner = ThreadRunner(ThreadedReactor(), pool)
        gate = threading.Event()
        started = threading.Semaphore(0)

        def held(n: int) -> int:
            started.release()
            assert gate.wait(10)
            return n

        outcomes: list[Any] = []
        for n in range(5):
            runner.run(held, n).addBoth(outcomes.append)
        for _ in range(3):  # three at once: the pool's size ...
            assert started.acquire(timeout=10)
        assert not started.acquire(timeout=0.2)  # ... and no more (the other two wait their turn)
        gate.set()
        for _ in range(2):
            assert started.acquire(timeout=10)
        failed: list[Any] = []
        done = threading.Event()
        runner.run(lambda: 1 // 0).addErrback(lambda f: (failed.append(f), done.set()))
        assert done.wait(10)
        assert failed[0].check(ZeroDivisionError)
        for _ in range(100):
            if len(outcomes) == 5:
                break
            threading.Event().wait(0.05)
        assert sorted(outcomes) == [0, 1, 2, 3, 4]
    finally:
        pool.stop()


def test_an_idle_worker_gives_its_thread_back_and_a_stopped_pool_runs_nothing() -> None:
    pool = ThreadPool(minthreads=0, maxthreads=1, name="linger")
    pool.start()
    try:
        first = ThreadRunner(ThreadedReactor(), pool)
        first.LINGER = 0.1  # type: ignore[misc]
        assert run_in(first, lambda: "a") == "a"
        # The only thread is first's worker until it has waited LINGER: then the other runner's
        # job gets it (it would wait for ever if the worker kept the thread).
        assert run_in(ThreadRunner(ThreadedReactor(), pool), lambda: "b") == "b"
        assert run_in(first, lambda: "c") == "c"
    finally:
        pool.stop()  # returns: a waiting worker gives its thread back once LINGER is up
    ran: list[str] = []
    late = first.run(lambda: ran.append("ran"))
    threading.Event().wait(0.2)
    assert isinstance(failure_of(late).value, RunnerStopped) and ran == []


def test_a_waiting_worker_woken_late_for_a_job_another_took_still_leaves_when_the_pool_stops() -> None:
    """A worker waiting for a job is woken by one, but another worker takes it, and the woken one
    runs only after its wait was due (a busy machine). It must still see the pool stopped and
    give its thread back: with CPython 3.11's SimpleQueue, its get(timeout) then waited for ever
    (the time left went negative: "no timeout"), and the server's SIGTERM hung in pool.stop()."""
    pool = ThreadPool(minthreads=0, maxthreads=1, name="late")
    pool.start()
    runner = ThreadRunner(ThreadedReactor(), pool)
    assert run_in(runner, lambda: "first") == "first"  # the one worker now waits for the next job
    threading.Event().wait(0.05)  # (in its wait for a job)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(5.0)  # this thread keeps the GIL: the woken worker runs only later
    try:
        runner.run(lambda: None)
        with runner._lock:  # another worker (here: this thread) takes the job first
            taken = runner._jobs.popleft()
            runner._pending -= 1  # and counts it taken, as a worker does
        due = time.monotonic() + 0.3  # past the woken worker's wait, without giving up the GIL
        while time.monotonic() < due:
            pass
    finally:
        sys.setswitchinterval(interval)
    stopping = threading.Thread(target=pool.stop, daemon=True)
    stopping.start()
    stopping.join(10)  # the worker sees the pool stopped once LINGER is up: far less than this
    hung = stopping.is_alive()
    if hung:  # wake the stuck worker, so that the test itself ends
        runner.stop()
        stopping.join(10)
    del taken
    assert not hung, "pool.stop() waited for a worker that never left its wait"


class FailingOnceReactor(ThreadedReactor):
    """callFromThread raises the first time (as a wake-up of a reactor going down might)."""

    def __init__(self) -> None:
        self.failed = False

    def callFromThread(self, f: Any, *args: Any) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("simulated callFromThread failure")
        f(*args)


def test_a_worker_ended_by_an_exception_leaves_the_counts_right_and_jobs_still_run() -> None:
    """deliver (the reactor's callFromThread) raising ended the worker with it still counted in
    `_workers`: with a pool of one thread, no worker was ever started again and every later job
    waited for good."""
    pool = ThreadPool(minthreads=0, maxthreads=1, name="raising")
    pool.start()
    try:
        reactor = FailingOnceReactor()
        runner = ThreadRunner(reactor, pool)
        gate = threading.Event()
        lost = runner.run(lambda: gate.wait(10))  # its outcome is the one callFromThread fails to deliver
        queued: list[Any] = []
        done = threading.Event()
        runner.run(lambda: "queued").addBoth(lambda r: (queued.append(r), done.set()))  # waits behind it
        gate.set()
        assert done.wait(10), "the job queued behind the failed delivery never ran"
        assert reactor.failed and not lost.called and queued == ["queued"]
        assert run_in(runner, lambda: "next") == "next"  # and a job given afterwards runs too
    finally:
        pool.stop()
    assert (runner._workers, runner._idle, runner._pending) == (0, 0, 0)


def test_a_worker_is_asleep_by_the_time_its_outcome_is_delivered() -> None:
    """A worker counts itself idle and lists itself asleep before it delivers a job's outcome: the
    delivery wakes the reactor, which then wants the GIL, and the worker goes straight to sleep
    instead of holding the GIL through its bookkeeping (the reactor waited for it: a context
    switch more per comphash). So a job given as the outcome arrives goes to that same worker,
    woken from the list, and no second worker is started for it."""
    pool = ThreadPool(minthreads=0, maxthreads=2, name="listed")
    pool.start()
    try:
        runner = ThreadRunner(ThreadedReactor(), pool)  # outcomes delivered on the worker's thread
        at_delivery: list[Any] = []
        threads: list[Any] = []
        done = threading.Event()

        def arrived(thread: Any) -> None:
            threads.append(thread)
            at_delivery.append((runner._workers, runner._idle, len(runner._sleepers)))
            runner.run(threading.current_thread).addCallback(lambda t: (threads.append(t), done.set()))

        runner.run(threading.current_thread).addCallback(arrived)
        assert done.wait(10)
        assert at_delivery == [(1, 1, 1)]  # one worker, idle and listed asleep while delivering
        assert threads[0] is threads[1]  # the second job woke it: no second worker
    finally:
        runner.stop()
        pool.stop()
    assert (runner._workers, runner._idle, runner._pending) == (0, 0, 0)


class CountingSleepers(list):  # type: ignore[type-arg]
    """The runner's list of sleeping workers, counting the times one went to sleep."""

    sleeps = 0

    def append(self, item: Any) -> None:
        self.sleeps += 1
        super().append(item)


def test_a_waiting_worker_sleeps_until_a_job_comes_without_polling() -> None:
    pool = ThreadPool(minthreads=0, maxthreads=1, name="sleeper")
    pool.start()
    runner = ThreadRunner(ThreadedReactor(), pool)
    runner.LINGER = 30  # type: ignore[misc]
    runner._sleepers = sleepers = CountingSleepers()
    try:
        assert run_in(runner, lambda: "a") == "a"
        threading.Event().wait(0.4)  # the worker waits for the next job (it polled every 50 ms)
        assert sleepers.sleeps == 1  # the one wait still going on ("a" came before the worker)
        assert run_in(runner, lambda: "b") == "b"  # woken by the job itself
        assert sleepers.sleeps in (1, 2)  # (the worker may not yet be back in its wait)
    finally:
        runner.stop()
        stopping = threading.Thread(target=pool.stop, daemon=True)
        stopping.start()
        stopping.join(10)  # runner.stop() woke it: it does not wait out LINGER (30 s)
    assert not stopping.is_alive(), "pool.stop() waited for a worker runner.stop() should have woken"
    assert (runner._workers, runner._idle, runner._pending) == (0, 0, 0)
    late = runner.run(lambda: "never")
    assert isinstance(failure_of(late).value, RunnerStopped)


@pytest.mark.parametrize("wake", [True, False])
def test_many_stops_interleaved_with_jobs_never_hang_nor_lose_a_job(wake: bool) -> None:
    """Stops (runner.stop() first, or pool.stop() alone: the workers then leave after LINGER)
    at every moment of the workers' lives: taking a job, running it, waiting, leaving. Every
    stop returns, every job given before it ran, and the counts end at zero."""
    rng = random.Random(14)
    for round_ in range(30):
        pool = ThreadPool(minthreads=0, maxthreads=3, name=f"stress-{round_}")
        pool.start()
        runner = ThreadRunner(ThreadedReactor(), pool)
        runner.LINGER = 30 if wake else rng.choice((0.0, 0.001, 0.01))  # type: ignore[misc]
        given = []
        for _ in range(rng.randrange(1, 12)):  # on this thread, as the reactor gives them
            given.append(runner.run(time.sleep, rng.choice((0.0, 0.0, 0.0005, 0.002))))
            if rng.random() < 0.3:
                time.sleep(rng.choice((0.0, 0.001, 0.003)))
        time.sleep(rng.choice((0.0, 0.0, 0.001, 0.005, 0.02)))
        if wake:
            runner.stop()
        stopping = threading.Thread(target=pool.stop, daemon=True)
        stopping.start()
        stopping.join(10)
        assert not stopping.is_alive(), f"pool.stop() hung in round {round_}"
        assert all(d.called for d in given), f"a job given before the stop did not run in round {round_}"
        assert (runner._workers, runner._idle, runner._pending) == (0, 0, 0)


def failure_of(d: defer.Deferred[Any]) -> Any:
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert failures, "the Deferred has not failed"
    return failures[0]


@pytest.mark.parametrize("stopped", ["runner", "pool", "both"])
def test_a_job_given_to_a_stopped_runner_fails_at_once_and_does_not_run(stopped: str) -> None:
    """It got a Deferred that never fired: its caller (a command, a password check, a Tab
    completion) waited for ever. Now it fails at once with RunnerStopped, saying what was not run."""
    pool = ThreadPool(minthreads=0, maxthreads=1, name="stopped")
    pool.start()
    runner = ThreadRunner(ThreadedReactor(), pool)
    assert run_in(runner, lambda: "before") == "before"
    if stopped in ("runner", "both"):
        runner.stop()
    if stopped in ("pool", "both"):
        pool.stop()
    ran: list[str] = []

    def job() -> None:
        ran.append("ran")

    failure = failure_of(runner.run(job))
    assert isinstance(failure.value, RunnerStopped)
    assert str(failure.value) == (
        "the thread pool has stopped (server shutting down): "
        "test_a_job_given_to_a_stopped_runner_fails_at_once_and_does_not_run.<locals>.job not run"
    )
    if stopped == "runner":
        pool.stop()
    assert ran == [] and (runner._workers, runner._pending) == (0, 0)


@pytest.mark.parametrize("line", ["comphash {root}/f", "lastlog"])
def test_a_command_whose_runner_has_stopped_ends_as_on_a_bug(harness, tmp_path: Path, line: str) -> None:
    """What the commands do with it: "conchcmd: internal error", exit status 1, audited."""
    from conchcmd.commands.builtin import build_command_table
    from conchcmd.core.config import parse_config

    (tmp_path / "f").write_bytes(b"data")
    (tmp_path / "syslog").write_text("one\n")
    config = parse_config(
        f'[lastlog]\npath = "{tmp_path}/syslog"\n[comphash]\nroots = ["{tmp_path}"]\n', base_dir=tmp_path, source=None
    )
    pool = ThreadPool(minthreads=0, maxthreads=1, name="stopped")
    pool.start()
    runner = ThreadRunner(ThreadedReactor(), pool)
    runner.stop()
    pool.stop()
    h = harness([])
    h.table = h.dispatcher.table = build_command_table(config, runner, reactor=h.clock)
    run = h.run(line.format(root=tmp_path))
    assert (run.outcome.status, run.out, run.err) == (1, "", "conchcmd: internal error\n")
    [record] = h.audit.of("command")
    assert record["exit_code"] == 1


def test_a_thread_runner_delivers_values_and_failures_and_refuses_once_stopped() -> None:
    pool = ThreadPool(minthreads=0, maxthreads=1, name="deliver")
    pool.start()
    runner = ThreadRunner(ThreadedReactor(), pool)
    try:
        done = threading.Event()
        got: list[Any] = []
        ended = runner.run(lambda n: n * 2, 21)
        ended.addBoth(lambda r: (got.append(r), done.set()))
        assert done.wait(10) and got == [42]
        done.clear()
        failed = runner.run(lambda: 1 // 0)
        failed.addErrback(lambda f: (got.append(f), done.set()))
        assert done.wait(10) and got[1].check(ZeroDivisionError)
        runner.stop()
        stopped = runner.run(print)
        assert isinstance(stopped.result.value, RunnerStopped)  # at once
        stopped.addErrback(lambda _: None)
    finally:
        pool.stop()


def test_a_bug_cleaning_up_after_abandoned_work_is_logged_at_once() -> None:
    """`late` raising (closing what the abandoned work opened failed) is one logged failure right
    away, and nothing is left on the work's chain to surface later as an unhandled error."""

    def late(_: object) -> None:
        raise OSError("close failed")

    work: defer.Deferred[str] = defer.Deferred()
    result = abandonable(work, late=late)
    result.cancel()
    result.addErrback(lambda _: None)
    with capturedLogs() as events:
        work.callback("opened file")
    (logged,) = [e for e in events if e.get("log_failure")]
    assert isinstance(logged["log_failure"].value, OSError)
    assert logged["log_format"] == "Cleaning up after abandoned work failed"
    assert work.result is None


class QueueReactor:
    """Outcomes queued for a 'reactor' loop of the test's own (the real reactor's callFromThread:
    the worker goes on while the outcome waits), which gives the next jobs from that loop."""

    def __init__(self) -> None:
        self.calls: queue.SimpleQueue[tuple[Any, tuple[Any, ...]]] = queue.SimpleQueue()

    def callFromThread(self, f: Any, *args: Any) -> None:
        self.calls.put((f, args))

    def turn(self, timeout: float) -> None:
        with contextlib.suppress(queue.Empty):
            f, args = self.calls.get(timeout=timeout) if timeout else self.calls.get_nowait()
            f(*args)


@pytest.mark.parametrize("seed", range(6))
def test_jobs_given_while_outcomes_are_on_their_way_each_run_once_within_the_pool_s_max(seed: int) -> None:
    """Workers list themselves asleep before their outcome goes: jobs given in that window (from
    the reactor, woken by the outcome, or while outcomes wait in its queue), LINGER ending in it,
    jobs that raise, a stop among them. Each job given before the stop runs once and its outcome
    (value or failure) arrives once; never more jobs at once than the pool's max; the counts end
    at zero and pool.stop() returns."""
    rng = random.Random(seed)
    pool = ThreadPool(minthreads=0, maxthreads=rng.choice((1, 2, 3)), name=f"window-{seed}")
    pool.start()
    reactor = QueueReactor()
    runner = ThreadRunner(reactor, pool)
    runner.LINGER = rng.choice((0.0005, 0.002, 0.5))  # type: ignore[misc]
    busy, most, guard = [0], [0], threading.Lock()
    outcomes: dict[int, list[object]] = {}

    def job(i: int, raises: bool) -> int:
        with guard:
            busy[0] += 1
            most[0] = max(most[0], busy[0])
        time.sleep(rng.choice((0.0, 0.0, 0.0003)))
        with guard:
            busy[0] -= 1
        if raises:
            raise ValueError(i)
        return i

    jobs, stop_at = 300, rng.randrange(150, 300)
    for i in range(stop_at):
        d = runner.run(job, i, i % 7 == 3)
        d.addCallbacks(outcomes.setdefault(i, []).append, lambda f: outcomes[f.value.args[0]].append("failed"))
        if rng.random() < 0.6:
            reactor.turn(rng.choice((0.0, 0.0002, 0.002)))
    runner.stop()
    refused = [runner.run(job, i, False) for i in range(stop_at, jobs)]
    deadline = time.monotonic() + 20
    while any(not o for o in outcomes.values()) and time.monotonic() < deadline:
        reactor.turn(0.05)
    stopping = threading.Thread(target=pool.stop, daemon=True)
    stopping.start()
    stopping.join(10)
    assert not stopping.is_alive(), "pool.stop() hung"
    reactor.turn(0)
    assert {i: o for i, o in outcomes.items() if o != (["failed"] if i % 7 == 3 else [i])} == {}
    assert all(isinstance(failure_of(d).value, RunnerStopped) for d in refused)
    assert 1 <= most[0] <= pool.max
    assert (runner._workers, runner._idle, runner._pending, runner._sleepers) == (0, 0, 0, [])
