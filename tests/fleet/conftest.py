"""The fleet layer: a hundred hosts on loopback driven by Ansible. The full run takes minutes, so
tests marked `fleet` are deselected unless CONCHCMD_FLEET=1 or `-m fleet` asks for them (deselected,
not skipped: under CI=true a skip fails); the small fleet runs by default."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("CONCHCMD_FLEET") == "1" or "fleet" in (config.option.markexpr or ""):
        return
    deselected = [item for item in items if item.get_closest_marker("fleet")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("fleet")]
