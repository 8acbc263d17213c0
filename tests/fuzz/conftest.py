"""Hypothesis profiles and log capture for the fuzz targets.

Default run: derandomized (the same inputs every run, no example database), a small bounded
number of examples per target. `CONCHCMD_FUZZ=long` multiplies every budget by 200 and lets
Hypothesis randomize and keep its database; `CONCHCMD_FUZZ_EXAMPLES=N` sets N examples per target.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings
from support.sshclient import ClientTransport

from fuzz.guard import PROFILE, LogWatch

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much, HealthCheck.large_base_example]
_LONG = os.environ.get("CONCHCMD_FUZZ", "") == "long"

settings.register_profile(
    PROFILE,
    derandomize=not _LONG,
    database=None if not _LONG else settings.default.database,
    deadline=None,  # time is bounded per example by fuzz.guard.bounded instead (a hang fails)
    suppress_health_check=_QUIET,
    print_blob=True,
)


@pytest.fixture(scope="session")
def log_watch() -> Iterator[LogWatch]:
    """Every error, critical or failure event logged while the fuzz targets run."""
    watch = LogWatch(ignore_sources=(ClientTransport,))
    watch.start()
    yield watch
    watch.stop()


@pytest.fixture(autouse=True, scope="module")
def no_late_tracebacks(log_watch: LogWatch) -> Iterator[None]:
    """After each module: a Deferred that failed unseen is logged when collected; that fails too."""
    with log_watch.clean(collect=True):
        yield
