"""Blocking-work runners for tests that hold a command mid-way."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer


class ManualRunner:
    """A BlockingRunner whose jobs wait until the test runs them."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Any, tuple[Any, ...], defer.Deferred[Any]]] = []
        self.submitted = 0  # jobs ever given, run or not

    def run(self, fn: Any, *args: Any) -> defer.Deferred[Any]:
        self.submitted += 1
        d: defer.Deferred[Any] = defer.Deferred()
        self.jobs.append((fn, args, d))
        return d

    def run_all(self) -> None:
        while self.jobs:
            fn, args, d = self.jobs.pop(0)
            try:
                result = fn(*args)
            except Exception as e:
                d.errback(e)
            else:
                d.callback(result)


class RecordingRunner:
    """A BlockingRunner that runs each job at once, on the caller's thread, and remembers it."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, tuple[Any, ...]]] = []

    def run(self, fn: Any, *args: Any) -> defer.Deferred[Any]:
        self.calls.append((fn, args))
        return defer.maybeDeferred(fn, *args)
