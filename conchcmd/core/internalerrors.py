"""Bugs of ours that a client can hit: each place in the code gets its traceback logged once,
then one line each time, so a client that can provoke one cannot flood the log."""

from __future__ import annotations

from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from conchcmd.core.audit import error_kind, sanitise


class InternalErrors:
    """The places (exception type, file, line) where a client's packets, logins or sessions have
    hit a bug of ours: each gets its traceback logged once, then one line each time, so a client
    that can provoke one cannot flood the log. One per server (the factory's)."""

    LIMIT = 100  # places remembered; past this, no more tracebacks

    def __init__(self) -> None:
        self.seen: set[tuple[str, str, int]] = set()

    def first(self, failure: Failure) -> bool:
        # Failure.frames, not the exception's __traceback__: a Failure that went through a
        # Deferred chain has been cleaned (its exception's traceback dropped, its frames kept).
        frames = failure.frames
        where = (frames[-1][1], frames[-1][2]) if frames else ("", 0)
        place = (failure.type.__qualname__, *where)  # type: ignore[union-attr]
        if place in self.seen or len(self.seen) >= self.LIMIT:
            return False
        self.seen.add(place)
        return True

    def report(self, log: Logger, failure: Failure, doing: str, peer: str, then: str, described: str = "") -> None:
        """Log the bug `failure`, hit while `doing` something for `peer`; `then`: what became of
        the connection or request ("disconnecting", "bell"...); `described`: the one-line form
        (default: the exception's type and message)."""
        if self.first(failure):
            log.failure(
                "Internal error {doing} from {peer}; {then}",
                failure=failure,
                level=LogLevel.error,
                doing=doing,
                peer=peer,
                then=then,
            )
        else:  # the same bug again (maybe provoked on purpose): one line, not a traceback each time
            log.error(
                "Internal error {doing} from {peer} ({error}, traceback logged before); {then}",
                doing=doing,
                peer=peer,
                error=sanitise(described or f"{error_kind(failure.value)}: {failure.value}", 200),
                then=then,
            )
