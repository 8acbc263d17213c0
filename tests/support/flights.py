"""What the server sends in answer to each of its reads ("flights"), by message number: to show
which packets leave together (EXT_INFO with the key-exchange reply, a rekey's held output after the
client's NEWKEYS)."""

from __future__ import annotations

from typing import Any

import pytest

from conchcmd.server.transport import ServerTransport
from conchcmd.wire import framing

#: Per read of a server: the client messages it brought, and the messages sent while handling it.
Flights = list[tuple[list[int], list[int]]]


def record_flights(monkeypatch: pytest.MonkeyPatch) -> Flights:
    """Record every server's flights from now on (until `monkeypatch` undoes it)."""
    recorded: Flights = []
    current: list[list[int]] = []  # the flight of the read being handled, if any
    seal = framing.pad
    dispatch = ServerTransport.dispatchMessage
    received = ServerTransport.dataReceived

    def sealing(payload: bytes, codec: Any, take: Any) -> bytes:
        if current:
            current[0].append(payload[0])
        return seal(payload, codec, take)

    def dispatching(self: ServerTransport, messageNum: int, payload: bytes) -> None:
        if recorded:
            recorded[-1][0].append(messageNum)
        dispatch(self, messageNum, payload)

    def reading(self: ServerTransport, data: bytes) -> None:
        recorded.append(([], []))
        current.append(recorded[-1][1])
        try:
            received(self, data)
        finally:
            current.pop()

    monkeypatch.setattr(framing, "pad", sealing)
    monkeypatch.setattr(ServerTransport, "dispatchMessage", dispatching)
    monkeypatch.setattr(ServerTransport, "dataReceived", reading)
    return recorded


def answer_to(flights: Flights, message: int) -> list[int]:
    """The flight of the one read that brought `message`."""
    (sent,) = [sent for got, sent in flights if message in got]
    return sent
