"""The file descriptor limit (RLIMIT_NOFILE): raised at start from the soft limit to the hard one,
and compared by `doctor` and `check-config` with what the configured limits may hold open.

Every connection is a descriptor. Under systemd the soft limit is 1024 (the hard one 524288), so
a server that keeps the soft limit cannot hold max_clients = 1000, and its accept then fails
with EMFILE; sshd is spared only by forking. Raising the soft limit to the hard one needs no
privilege.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from typing import Any

from twisted.logger import ILogObserver, LogEvent, Logger
from zope.interface import implementer

from conchcmd.core.config import Config
from conchcmd.core.throttle import LineThrottle

#: Descriptors the server holds whatever its load, and a margin: stdin/out/err, the reactor's
#: epoll and waker, the audit and log files or sockets, /dev/urandom, the thread pools' files,
#: metrics scrapes, a `lastlog -f` or two. An idle server measured 16 (see tests/e2e/test_e2e_fdlimit.py).
BASE_DESCRIPTORS = 64
#: select()'s FD_SETSIZE: a select-based reactor cannot watch a descriptor at or above it.
FD_SETSIZE = 1024
#: Where Linux says how far RLIMIT_NOFILE may go when the hard limit is "unlimited".
NR_OPEN = "/proc/sys/fs/nr_open"


@dataclass(frozen=True)
class DescriptorLimit:
    """The soft and hard limits after `raise_soft_limit`, and the soft one before."""

    soft: int
    hard: int
    before: int

    def describe(self) -> str:
        hard = "unlimited" if self.hard == resource.RLIM_INFINITY else str(self.hard)
        if self.soft != self.before:
            return f"{self.soft} (raised from {self.before}; hard limit {hard})"
        return f"{self.soft} (hard limit {hard})"


def _ceiling(hard: int) -> int:
    """How high the soft limit can go: the hard limit, or the kernel's nr_open for "unlimited"."""
    if hard != resource.RLIM_INFINITY:
        return hard
    try:
        with open(NR_OPEN, encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20  # Linux's default nr_open


def raise_soft_limit(cap: int | None = None) -> DescriptorLimit:
    """Raise the soft RLIMIT_NOFILE to the hard limit (at most `cap`: FD_SETSIZE for a select
    reactor); never lowers it. A refusal (a sandbox) leaves it as it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _ceiling(hard)
    if cap is not None:
        target = min(target, cap)
    if soft != resource.RLIM_INFINITY and target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            target = soft
        return DescriptorLimit(target, hard, soft)
    return DescriptorLimit(soft, hard, soft)


def descriptors_needed(config: Config) -> int:
    """What the configured limits may hold open at once: a descriptor per authenticated client
    (max_clients) and per connection still authenticating (max_startups), one per listener, one
    per running hash (comphash max_concurrent), and BASE_DESCRIPTORS."""
    listeners = len(config.listen) + (1 if config.metrics_listen else 0)
    return (
        BASE_DESCRIPTORS + listeners + config.max_clients + config.limits.max_startups + config.comphash.max_concurrent
    )


def limit_warning(config: Config, hard: int | None = None) -> str | None:
    """A warning when the hard RLIMIT_NOFILE (this process's, or `hard`) is below what the
    configuration may need; None when it is enough."""
    if hard is None:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return None
    needed = descriptors_needed(config)
    if needed <= hard:
        return None
    return (
        f"max_clients = {config.max_clients} with max_startups = {config.limits.max_startups} may need "
        f"{needed} file descriptors, above the hard limit of {hard}: connections beyond it are not accepted"
    )


#: Twisted's lines (twisted.internet.tcp, at info: `serve` shows none of them) for a connection
#: closed at accept because the process is out of descriptors, or not accepted at all.
_ACCEPT_FAILURES = (
    "EMFILE recovery: Closed socket from {address}",
    "Could not accept new connection ({acceptError})",
)
#: At most one warning about connections closed at accept in this many seconds.
ACCEPT_WARNING_INTERVAL = 60.0


@implementer(ILogObserver)
class AcceptFailures:
    """Turns Twisted's accept failures (out of descriptors: the connection is closed as soon as
    it is accepted) into a warning of conchcmd's own, at most one per ACCEPT_WARNING_INTERVAL
    with the count since, instead of nothing (Twisted logs them at info) or a line per connection;
    every event then goes on to `observer` unchanged."""

    def __init__(self, observer: ILogObserver, namespace: str, interval: float = ACCEPT_WARNING_INTERVAL):
        self._observer = observer
        self._log = Logger(namespace=namespace, observer=observer)
        self._interval = interval
        self._throttle = LineThrottle(interval)

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_format") in _ACCEPT_FAILURES:
            self._note(event)
        self._observer(event)

    def _note(self, event: dict[str, Any]) -> None:
        left_out = self._throttle.due("accept", float(event.get("log_time") or 0.0))
        if left_out is None:
            return
        more = f"; {left_out} more since the last line" if left_out else ""
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._log.warn(
            "Out of file descriptors (limit {limit}): new connections are closed at accept, the open "
            "ones go on (logged at most every {interval:g} s{more})",
            limit=soft,
            interval=self._interval,
            more=more,
        )
