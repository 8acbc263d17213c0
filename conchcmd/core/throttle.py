"""Rate-limited log lines: the first of a cause at once, then at most one per interval with the
count of those left out since (a failure that repeats per connection must not write a line each)."""

from __future__ import annotations

from collections.abc import Hashable


class LineThrottle:
    """Decides, per cause, whether a line is due now (`interval` seconds since the last one)."""

    def __init__(self, interval: float):
        self.interval = interval
        self._last: dict[Hashable, tuple[float, int]] = {}  # cause: (logged at, left out since)

    def due(self, cause: Hashable, now: float) -> int | None:
        """None if the line for `cause` is to be left out; else how many were left out since the
        last line (0 for the first), and the line is counted as written now."""
        last = self._last.get(cause)
        if last is not None and now - last[0] < self.interval:
            self._last[cause] = (last[0], last[1] + 1)
            return None
        self._last[cause] = (now, 0)
        return last[1] if last is not None else 0
