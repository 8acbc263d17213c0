"""One log line per kind of refusal per connection, and the counts when it ends, so a client that
repeats a refused request thousands of times a second writes one line, not thousands."""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger


class RepeatLog:
    """Logs the first refusal of each kind on a connection and counts the others; `summary` names
    the kinds whose count the log does not show (repeated ones, and quiet ones, which are counted
    without a line of their own: before authentication a connection gets one line about what
    went wrong, the one that says how it ended)."""

    def __init__(self, log: Logger, peer: str):
        self.log = log
        self.peer = peer
        self.counts: dict[str, int] = {}
        self.quiet: set[str] = set()

    def note(self, key: str, format: str, *, quiet: bool = False, **fields: Any) -> bool:
        """Count one refusal of kind `key`; log `format` if it is the first (and not `quiet`).
        True if it was logged."""
        n = self.counts.get(key, 0) + 1
        self.counts[key] = n
        if quiet:
            self.quiet.add(key)
        elif n == 1 and key not in self.quiet:
            self.log.info(format, peer=self.peer, **fields)
            return True
        return False

    def summary(self) -> str:
        """E.g. "Refused session channel (...) x200; Message 5 before SERVICE_REQUEST x1", or ""."""
        return "; ".join(f"{key} x{n}" for key, n in self.counts.items() if n > 1 or key in self.quiet)
