"""FlushingReactor's timed calls (it drops cancelled calls from the top of Twisted's heap at cancel)
against Twisted's epoll reactor: the real reactors' heap code, driven by a clock of the test's own,
through random schedules of callLater (0 and equal-looking delays), cancel, reset, delay (both ways),
calls that cancel, reset, delay or schedule others while runUntilCurrent runs them, and bursts of
cancelled calls (Twisted's heap compaction); then FlushingReactor's real loop and clock with the
timers of 1,000 connections. What runs, when, and in which order is Twisted's; only the poll's
timeout may be later (a cancelled call no longer sets it), never later than the next live call."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.epollreactor import EPollReactor

from conchcmd.core.twistedprivate import FlushingReactor

STEPS = 250
GUARD = 20.0  # seconds: the real loop's run has failed if it has not stopped by then


def schedule(reactor_class: type[EPollReactor], seed: int) -> tuple[list[Any], list[float | None], list[int]]:
    """Run the seed's random schedule; returns (the calls run, with the clock's time, in order; each
    timeout(); the live calls left at the end)."""
    reactor = reactor_class()
    now = [1000.0]
    reactor.seconds = lambda: now[0]  # type: ignore[method-assign]
    rng = random.Random(seed)  # the schedule
    inner = random.Random(seed + 1)  # what the running calls do
    unique = [0.0]

    def later(delay: float) -> float:
        # Distinct times: the order of calls due at the same time is the heap's shape, not a
        # contract (Twisted's own heap does not keep them in the order they were made).
        unique[0] += 1e-6
        return max(delay + unique[0], 0.0)

    calls: list[Any] = []
    ran: list[Any] = []
    timeouts: list[float | None] = []

    def call(i: int, act: tuple[int, int] | None) -> None:
        ran.append((i, now[0]))
        if act is None:
            return
        kind, j = act
        if j < len(calls) and calls[j].active():
            if kind == 0:
                calls[j].cancel()
            elif kind == 1:
                calls[j].reset(later(inner.choice([0, 0.5, 1, 3])))
            else:
                calls[j].delay(inner.choice([-2, -0.5, 0.5, 2]) + 1e-7)
        elif kind == 3:
            calls.append(reactor.callLater(later(inner.choice([0, 0, 1, 2])), call, len(calls), None))

    try:
        for _ in range(STEPS):
            a, b, c, d = rng.random(), rng.random(), rng.random(), rng.randrange(10**6)
            live = [x for x in calls if x.active()]
            if a < 0.35:
                act = (int(c * 10) % 4, d % (len(calls) + 3)) if c < 0.4 else None
                calls.append(
                    reactor.callLater(later([0, 0, 0.5, 1, 1, 2, 5, 10, 60][int(b * 9)]), call, len(calls), act)
                )
            elif a < 0.55 and live:
                live[d % len(live)].cancel()
            elif a < 0.65 and live:
                live[d % len(live)].reset(later([0, 0.5, 1, 4][int(b * 4)]))
            elif a < 0.75 and live:
                live[d % len(live)].delay([-3, -1, 0.5, 2][int(b * 4)] + 1e-7)
            elif a < 0.80:  # a burst, most of it cancelled: Twisted compacts its heap
                burst = [reactor.callLater(later(1 + b * 5), call, -1, None) for _ in range(80)]
                for k, x in enumerate(burst):
                    if k % 5:
                        x.cancel()
            else:
                timeout = reactor.timeout()
                timeouts.append(timeout)
                pending = [x.getTime() for x in reactor.getDelayedCalls()]
                if reactor_class is FlushingReactor and pending:
                    assert timeout is not None and timeout <= max(0.0, min(pending) - now[0])
                now[0] += [0, 0.25, 0.5, 1, 2][int(b * 5)]
                reactor.runUntilCurrent()
            held = reactor._pendingTimedCalls + reactor._newTimedCalls
            assert not any(x.called for x in held)
            if reactor_class is FlushingReactor:  # its own accounting of what it dropped
                assert reactor._cancellations == sum(1 for x in held if x.cancelled)
        left = sorted(i for i, x in enumerate(calls) if x.active())
        while reactor.getDelayedCalls():
            now[0] += 1
            reactor.runUntilCurrent()
        return ran, timeouts, left
    finally:
        reactor.waker.connectionLost(None)  # type: ignore[union-attr]
        reactor._poller.close()


@pytest.mark.parametrize("seed", range(24))
def test_the_same_calls_run_at_the_same_times_in_the_same_order_as_in_twisted(seed: int) -> None:
    twisted_ran, twisted_timeouts, twisted_left = schedule(EPollReactor, seed)
    ran, timeouts, left = schedule(FlushingReactor, seed)
    assert ran == twisted_ran and left == twisted_left
    assert len(ran) > 20
    for theirs, ours in zip(twisted_timeouts, timeouts, strict=True):
        assert ours is None or (theirs is not None and ours >= theirs)  # the same or later


def test_the_timers_of_a_thousand_connections_fire_on_the_real_loop_and_clock() -> None:
    """Per connection a login grace timer (cancelled at 'login' by a call of its own), an idle
    timeout reset now and then, a keepalive cancelled and made again: on FlushingReactor's own
    loop, each live call runs once, never before its time, the cancelled never."""
    reactor = FlushingReactor()
    rng = random.Random(7)
    fired: dict[str, float] = {}
    due: dict[str, float] = {}
    cancelled: set[str] = set()

    def timer(name: str, delay: float, fn: Callable[[], object] | None = None) -> Any:
        due[name] = reactor.seconds() + delay

        def fire() -> None:
            assert name not in fired
            fired[name] = reactor.seconds()
            if fn is not None:
                fn()

        return reactor.callLater(delay, fire)

    def connection(n: int) -> None:
        grace = timer(f"grace{n}", 0.4 + rng.random() * 0.1)
        idle = timer(f"idle{n}", 0.2 + rng.random() * 0.2)
        keepalive = timer(f"keepalive{n}", rng.random() * 0.2)

        def login() -> None:
            grace.cancel()
            cancelled.add(f"grace{n}")
            idle.reset(0.05 + rng.random() * 0.05)  # activity: the idle timer goes on later...
            due[f"idle{n}"] = idle.getTime()
            if keepalive.active():
                keepalive.cancel()
                cancelled.add(f"keepalive{n}")
                timer(f"keepalive{n}'", rng.random() * 0.1)

        timer(f"login{n}", rng.random() * 0.3, login if n % 4 else None)

    for n in range(1000):
        connection(n)
    reactor.callLater(0, lambda: None)
    stop = reactor.callLater(1.0, reactor.stop)
    # The guard is a thread: a broken heap could drop a timed guard as well.
    guard = threading.Timer(GUARD, lambda: reactor.callFromThread(reactor.stop))
    guard.start()
    try:
        reactor.run(installSignalHandlers=False)
    finally:
        guard.cancel()
    assert stop.called, "stopped by the guard: the loop lost its stop call"
    assert not set(fired) & cancelled
    assert set(fired) | cancelled == set(due)
    late = [name for name, at in fired.items() if at < due[name]]
    assert late == []
    assert reactor.getDelayedCalls() == []
