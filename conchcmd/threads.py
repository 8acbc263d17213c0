"""Runners for blocking work: the contract the commands and the password checker share, and the
pool-backed and inline implementations. Each user of threads gets a runner of its own, so one kind
of work (e.g. password guesses) can never hold up another (an operator's `comphash`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from twisted.internet import defer, threads
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
    """Runs blocking work in a thread pool owned by the server."""

    def __init__(self, reactor: Any, pool: ThreadPool):
        self.reactor = reactor
        self.pool = pool

    def run(self, fn: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        return threads.deferToThreadPool(self.reactor, self.pool, fn, *args)
