"""The fuzz harness's own guards fail when they must (or every target could pass vacuously)."""

from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.logger import Logger

from fuzz.guard import MEMORY_HEADROOM, Hang, LogWatch, bounded


def test_a_hang_that_swallows_the_alarm_still_fails() -> None:
    with pytest.raises(Hang), bounded(0.2, repeat=0.05):
        for _ in range(3):  # code under test that catches everything, as Twisted's catch-alls do
            try:
                while True:
                    pass
            except Exception:
                continue


def test_an_example_allocating_past_the_headroom_fails() -> None:
    with pytest.raises(Hang, match="allocated more than"), bounded():
        bytearray(2 * MEMORY_HEADROOM)


def test_a_logged_failure_fails_the_block(log_watch: LogWatch) -> None:
    with pytest.raises(AssertionError, match="logged at error level"), log_watch.clean():
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            Logger().failure("boom")


def test_a_deferred_failing_unseen_fails_the_block(log_watch: LogWatch) -> None:
    with pytest.raises(AssertionError, match="Unhandled error in Deferred"), log_watch.clean(collect=True):
        defer.fail(ValueError("nobody looked"))
