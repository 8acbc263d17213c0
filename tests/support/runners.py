"""Blocking-work runners for tests that hold a command mid-way."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

Job = tuple[Any, tuple[Any, ...], "defer.Deferred[Any]"]


class ManualRunner:
    """A BlockingRunner whose jobs wait until the test runs them.

    `calls` keeps every job ever given, in order (indices stay valid for `complete`); `jobs` holds
    the ones not run yet.
    """

    def __init__(self) -> None:
        self.calls: list[Job] = []
        self.jobs: list[Job] = []

    @property
    def submitted(self) -> int:
        """How many jobs were ever given, run or not."""
        return len(self.calls)

    def run(self, fn: Any, *args: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.calls.append((fn, args, d))
        self.jobs.append(self.calls[-1])
        return d

    def complete(self, index: int) -> None:
        """Run the job given `index`-th (counting every job ever given) and fire its Deferred."""
        job = self.calls[index]
        self.jobs.remove(job)
        self._finish(job)

    def run_all(self) -> None:
        """Run every waiting job in the order given, including jobs given meanwhile."""
        while self.jobs:
            self._finish(self.jobs.pop(0))

    @staticmethod
    def _finish(job: Job) -> None:
        fn, args, d = job
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
