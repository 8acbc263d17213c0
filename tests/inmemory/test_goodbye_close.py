"""Which closes leave out Twisted's `shutdown` before the close (ClosingServer.peer_left): only
those after the client's DISCONNECT, its goodbye. A close the server starts (its shutdown, the
grace time, a protocol error) keeps it: a client still sending then reads an orderly end (the
shutdown's FIN) ahead of the RST for its unread input (tests/unit/test_flushing_reactor.py)."""

from __future__ import annotations

from typing import Any

import pytest
from support.world import World
from twisted.conch.ssh import transport

from conchcmd.server import transport as server_transport


@pytest.fixture
def told(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The transports the server said the peer left on."""
    seen: list[Any] = []
    monkeypatch.setattr(server_transport, "peer_left", seen.append)
    return seen


def test_the_client_s_disconnect_lets_the_close_leave_out_the_shutdown(world: World, told: list[Any]) -> None:
    conn = world.login()
    tcp = conn.server.transport
    conn.client.sendDisconnect(transport.DISCONNECT_BY_APPLICATION, b"disconnected by user")
    conn.flush()
    assert told == [tcp] and tcp.disconnecting


def test_closes_the_server_starts_keep_the_shutdown(world: World, told: list[Any]) -> None:
    shut = world.login(peer="10.0.0.2")
    shut.server.close_with(b"server shutting down")
    late = world.connect(peer="10.0.0.3")  # never logs in
    world.clock.advance(world.factory.settings.limits.login_grace_time + 1)
    broken = world.login(peer="10.0.0.4")
    broken.server.dataReceived(b"\0\0\0\x0c\x0a" + b"\0" * 11)  # a packet that does not decrypt
    for conn in (shut, late, broken):
        conn.flush()
        assert conn.server.transport.disconnecting
    assert told == []
