"""Timers of an authenticated connection: idle timeout and server keepalives."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Liveness:
    """Closes a connection that is idle too long, or whose peer stopped answering keepalives.

    Idle means: no channel traffic from the client and no command running, for `idle_timeout`
    seconds (keepalive replies are not traffic). Keepalives (OpenSSH's ClientAliveInterval) go
    out after `keepalive_interval` seconds without any bytes from the client; after
    `keepalive_count_max` unanswered ones the peer is considered dead.
    """

    def __init__(
        self,
        clock: IReactorTime,
        *,
        idle_timeout: float,
        keepalive_interval: float,
        keepalive_count_max: int,
        busy: Callable[[], bool],
        send_keepalive: Callable[[], defer.Deferred[Any]],
        close: Callable[[str], None],
    ):
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.keepalive_interval = keepalive_interval
        self.keepalive_count_max = keepalive_count_max
        self.busy = busy
        self.send_keepalive = send_keepalive
        self.close = close
        now = clock.seconds()
        self.last_activity = now
        self.last_received = now
        self.unanswered = 0
        self._idle_call: IDelayedCall | None = None
        self._keepalive_call: IDelayedCall | None = None
        if idle_timeout > 0:
            self._idle_call = clock.callLater(idle_timeout, self._check_idle)
        if keepalive_interval > 0:
            self._keepalive_call = clock.callLater(keepalive_interval, self._check_keepalive)

    def activity(self) -> None:
        """Channel traffic from the client."""
        self.last_activity = self.clock.seconds()

    def received(self) -> None:
        """Any bytes from the client."""
        self.last_received = self.clock.seconds()

    def _check_idle(self) -> None:
        now = self.clock.seconds()
        if self.busy():
            self.last_activity = now
        quiet = now - self.last_activity
        if quiet >= self.idle_timeout:
            self._idle_call = None
            self.stop()
            self.close(f"idle timeout ({self.idle_timeout:g} s without activity)")
            return
        self._idle_call = self.clock.callLater(self.idle_timeout - quiet, self._check_idle)

    def _check_keepalive(self) -> None:
        now = self.clock.seconds()
        silent = now - self.last_received
        if silent < self.keepalive_interval:
            self._keepalive_call = self.clock.callLater(self.keepalive_interval - silent, self._check_keepalive)
            return
        if self.unanswered >= self.keepalive_count_max:
            self._keepalive_call = None
            self.stop()
            self.close(f"no answer to {self.unanswered} keepalives")
            return
        self.unanswered += 1
        self.send_keepalive().addBoth(self._answered)
        self._keepalive_call = self.clock.callLater(self.keepalive_interval, self._check_keepalive)

    def _answered(self, _: object) -> None:
        self.unanswered = 0  # a failure reply is an answer too: the peer is alive

    def stop(self) -> None:
        for call in (self._idle_call, self._keepalive_call):
            if call is not None and call.active():
                call.cancel()
        self._idle_call = self._keepalive_call = None
