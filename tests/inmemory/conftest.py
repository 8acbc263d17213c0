"""Fixtures for the in-memory layer: the real server object graph on a MemoryReactorClock
(support/world.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.world import World, make_world


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)
