"""The reactor `conchcmd serve` runs: `FlushingReactor` (Twisted's epoll reactor, which sends a
turn's writes at its end rather than on the next poll), installed as Twisted's global reactor."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, Protocol


def install_reactor() -> Any:
    """Install `FlushingReactor` as the global reactor and return it; if a reactor is installed
    already (twistd installs the one its --reactor names), that one."""
    if "twisted.internet.reactor" not in sys.modules:
        from twisted.internet.main import installReactor

        from conchcmd.core.twistedprivate import FlushingReactor

        installReactor(FlushingReactor())
    from twisted.internet import reactor

    return reactor


class AfterFlush(Protocol):
    """Calls once the output of the I/O event being handled is sent (`FlushingReactor`)."""

    def call_after_flush(self, f: Callable[..., Any], *args: Any) -> None: ...

    def run_after_flush_now(self, system: str = "-") -> None: ...


class AtOnce:
    """`AfterFlush` for any other reactor (Twisted's own under twistd, the tests' clocks): each
    call is made at once."""

    def call_after_flush(self, f: Callable[..., Any], *args: Any) -> None:
        f(*args)

    def run_after_flush_now(self, system: str = "-") -> None:
        pass


AT_ONCE = AtOnce()


def after_flush_of(reactor: Any) -> AfterFlush:
    """`reactor` itself if it is a `FlushingReactor`, else calls made at once (`AtOnce`)."""
    from conchcmd.core.twistedprivate import FlushingReactor

    return reactor if isinstance(reactor, FlushingReactor) else AT_ONCE
