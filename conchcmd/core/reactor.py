"""The reactor `conchcmd serve` runs: `FlushingReactor` (Twisted's epoll reactor, which sends a
turn's writes at its end rather than on the next poll), installed as Twisted's global reactor."""

from __future__ import annotations

import sys
from typing import Any


def install_reactor() -> Any:
    """Install `FlushingReactor` as the global reactor and return it; if a reactor is installed
    already (twistd installs the one its --reactor names), that one."""
    if "twisted.internet.reactor" not in sys.modules:
        from twisted.internet.main import installReactor

        from conchcmd.core.twistedprivate import FlushingReactor

        installReactor(FlushingReactor())
    from twisted.internet import reactor

    return reactor
