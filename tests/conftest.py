"""Every test's temporary files live where `strict_modes` trusts them.

pytest's default base directory is under /tmp, which anyone can write (mode 1777), so the server's
StrictModes rule (the default) would rightly ignore every key file a test puts there. Each pytest
process instead gets its own base directory under ~/.cache/conchcmd-tests (owned by this user, not
writable by group or others); processes running at the same time never touch each other's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from support.tempdirs import UntrustedTempParent, trusted_temp_parent

#: Base directories of runs whose process is gone are removed once they are this old.
STALE_SECONDS = 3600.0
_BASE = pytest.StashKey[str]()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(parent: Path) -> None:
    """Remove base directories left by runs that were killed (named run-PID-...)."""
    for entry in parent.glob("run-*-*"):
        try:
            pid = int(entry.name.split("-")[1])
            old = time.time() - entry.lstat().st_mtime > STALE_SECONDS
        except (ValueError, OSError):
            continue
        if old and pid != os.getpid() and not _process_alive(pid):
            shutil.rmtree(entry, ignore_errors=True)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if config.option.basetemp is not None:
        return  # the caller chose one (it must be a trusted place, or key-file tests fail)
    try:
        parent = trusted_temp_parent()
    except UntrustedTempParent as e:
        raise pytest.UsageError(f"{e}, or pass --basetemp") from None
    _remove_stale(parent)
    base = tempfile.mkdtemp(prefix=f"run-{os.getpid()}-", dir=parent)
    config.option.basetemp = base
    config.stash[_BASE] = base


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove this run's files if everything passed; a failed run's stay for an hour to look at."""
    base = session.config.stash.get(_BASE, None)
    if base is not None and exitstatus == 0:
        shutil.rmtree(base, ignore_errors=True)


#: Skips that are not a missing tool: CI may take them (it runs as root, which reads mode-000 files).
SKIPS_ALLOWED_IN_CI = ("root can read a mode-000 file",)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """Under CI=true a skipped test fails: CI installs every tool the suite uses, so a skip there
    means an install step is missing, not that the test may be left out."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") != "true" or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if not any(allowed in reason for allowed in SKIPS_ALLOWED_IN_CI):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true (a tool CI must install is missing?): {reason}"
