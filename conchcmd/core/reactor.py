"""The reactor `conchcmd serve` runs: `FlushingReactor` (Twisted's epoll reactor, which sends a
turn's writes at its end rather than on the next poll), installed as Twisted's global reactor."""

from __future__ import annotations

import sys
from collections.abc import Callable
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


def _at_once(f: Callable[..., Any], *args: Any) -> None:
    f(*args)


def after_flush_of(reactor: Any) -> Callable[..., None]:
    """`reactor`'s way to make a call once the output of the I/O event being handled is sent
    (`FlushingReactor.call_after_flush`); with any other reactor (Twisted's own under twistd, the
    tests' clocks) the call is made at once."""
    from conchcmd.core.twistedprivate import FlushingReactor

    if isinstance(reactor, FlushingReactor):
        return reactor.call_after_flush
    return _at_once
