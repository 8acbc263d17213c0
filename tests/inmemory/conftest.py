"""Fixtures for the in-memory layer: the real server object graph on a MemoryReactorClock
(support/world.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.flights import Flights, record_flights
from support.world import World, make_world


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


@pytest.fixture
def flights(monkeypatch: pytest.MonkeyPatch) -> Flights:
    """Per server read: the client messages it brought and the server's answer (support/flights.py)."""
    return record_flights(monkeypatch)
