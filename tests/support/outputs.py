"""A recording command Output."""

from __future__ import annotations

from twisted.internet import defer


class RecordingOutput:
    """An Output that keeps every write; each write is acknowledged at once."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> defer.Deferred[None]:
        self.writes.append(bytes(data))
        return defer.succeed(None)

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "surrogateescape")
