"""The flow-control contracts between the session channels and the SSH transport, as Protocols
that mypy checks: what a channel needs of its connection and transport (a window to grant,
whether TCP takes more output), and what the transport needs of a channel (send what waits,
whether a command runs). No Conch class is named here, so tests can stand in for either side."""

from __future__ import annotations

from typing import Any, Protocol


class PausableTransport(Protocol):
    """The SSH transport as channels see it: whether output must wait (TCP's send buffer is full,
    or a key exchange holds enough already). The transport pumps the channels when it clears."""

    @property
    def tcp_paused(self) -> bool: ...


class FlowControlledChannel(Protocol):
    """A channel as the transport and the liveness timers see it."""

    @property
    def busy(self) -> bool:
        """A command runs on it (the connection is not idle)."""
        ...

    def pump(self) -> None:
        """Send queued output while the peer's window and the transport allow."""
        ...


class ChannelConnection(Protocol):
    """The connection as a session channel sees it (ConnectionService; a recording stand-in in
    tests): it carries the channel's output and grants the window the channel's account allows."""

    @property
    def transport(self) -> PausableTransport: ...

    def grant_window(self, channel: Any, bytes_to_add: int) -> None: ...
    def sendData(self, channel: Any, data: bytes) -> None: ...
    def sendExtendedData(self, channel: Any, dataType: int, data: bytes) -> None: ...
    def sendEOF(self, channel: Any) -> None: ...
    def sendRequest(self, channel: Any, requestType: bytes, data: bytes, wantReply: int = 0) -> Any: ...
    def send_exit(self, channel: Any, status: int) -> None:
        """EOF, the exit status and CLOSE, in that order (the channel's end)."""
        ...
