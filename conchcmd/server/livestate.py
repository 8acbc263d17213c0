"""The server's live state as the metrics read it at each scrape (core/metrics.py's LiveState):
what the factory, its admissions and its connections hold now."""

from __future__ import annotations

from typing import TYPE_CHECKING

from conchcmd.server.connection import ConnectionService

if TYPE_CHECKING:
    from conchcmd.core.metrics import LiveState
    from conchcmd.server.factory import CommandServerFactory


class FactoryState:
    """LiveState over one CommandServerFactory."""

    def __init__(self, factory: CommandServerFactory):
        self.factory = factory

    def connections_open(self) -> int:
        return len(self.factory.transports)

    def clients_open(self) -> int:
        return self.factory.admissions.slots.used

    def sessions_open(self) -> int:
        return sum(
            len(t.service.flow_channels()) for t in self.factory.transports if isinstance(t.service, ConnectionService)
        )

    def sources_penalised(self) -> int:
        return self.factory.admissions.sources.penalised()

    def bytes_sent(self) -> int:
        return sum(t.bytes_sent for t in self.factory.transports)

    def rekeys(self) -> int:
        return sum(max(t.kex_count - 1, 0) for t in self.factory.transports)


if TYPE_CHECKING:  # mypy holds FactoryState to the contract the metrics read
    _state_contract: type[LiveState] = FactoryState
