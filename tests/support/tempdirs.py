"""Where test and benchmark files go: a place `strict_modes` trusts.

/tmp is writable by everyone (1777), so the server rightly ignores key files under it. This parent,
~/.cache/conchcmd-tests (or under $XDG_CACHE_HOME), belongs to the user running the tests.
"""

from __future__ import annotations

import os
from pathlib import Path

from conchcmd.core.filetrust import FileTrust, directory_problem


class UntrustedTempParent(Exception):
    """The parent directory cannot hold files that strict_modes trusts."""


def trusted_temp_parent() -> Path:
    """The parent for per-run temporary directories, created 0700 if missing and checked."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    parent = Path(cache) / "conchcmd-tests"
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    problem = directory_problem(str(parent), FileTrust())
    if problem is not None:
        raise UntrustedTempParent(
            f"{parent} cannot hold files that strict_modes trusts: {problem.reason} "
            f"(fix: {problem.fix}; or set XDG_CACHE_HOME)"
        )
    return parent
