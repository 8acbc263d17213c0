"""One log line per kind of refusal per connection, and the count at the end, so a client that
repeats a refused request thousands of times a second writes two lines, not thousands."""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger


class RepeatLog:
    """Logs the first refusal of each kind on a connection and counts the others; `flush` logs
    how many there were in all, for the kinds that repeated."""

    def __init__(self, log: Logger, peer: str):
        self.log = log
        self.peer = peer
        self.counts: dict[str, int] = {}

    def note(self, key: str, format: str, **fields: Any) -> bool:
        """Count one refusal of kind `key`; log `format` if it is the first. True if it was logged."""
        n = self.counts.get(key, 0) + 1
        self.counts[key] = n
        if n == 1:
            self.log.info(format, peer=self.peer, **fields)
        return n == 1

    def flush(self) -> None:
        for kind, n in self.counts.items():
            if n > 1:
                self.log.info("{kind} from {peer}: {n} times in all", kind=kind, peer=self.peer, n=n)
        self.counts.clear()
