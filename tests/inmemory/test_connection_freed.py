"""A closed connection leaves no reference cycles: reference counting frees its transport, connection
service, avatar and channels at once, without Python's cyclic garbage collector (whose full
collections scan every object the server holds, a pause of tens of ms that falls on some exec)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
from support.world import World


@pytest.fixture
def no_cyclic_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()  # only reference counting frees what the test looks at
    try:
        yield
    finally:
        gc.enable()


def close_after(world: World, command: bytes, client_closes_first: bool = False) -> list[weakref.ref[object]]:
    """One `ssh host COMMAND` in memory; weak references to the server's objects of that connection."""
    conn = world.login()
    chan = conn.open_session()
    server = conn.server
    service, avatar = server.service, server.avatar
    (channel,) = service.channels.values()
    refs: list[weakref.ref[object]] = [weakref.ref(o) for o in (server, service, avatar, channel)]
    if client_closes_first:  # the client leaves while the command runs (or before it starts)
        conn.exec(chan, command)
        conn.client.transport.loseConnection()
        conn.flush()
    else:
        conn.exec(chan, command)
        conn.flush()
        assert chan.is_closed and chan.exit_status is not None
        conn.client.transport.loseConnection()
        conn.flush()
    assert server.transport.disconnected
    # Twisted's TCP transport drops its protocol and producer when the connection is lost
    # (tcp.Connection.connectionLost, FileDescriptor.connectionLost); iosim's keeps them: drop them.
    server.transport.protocol = server.transport.producer = None
    return refs


@pytest.mark.usefixtures("no_cyclic_gc")
@pytest.mark.parametrize("command", [b"comphash {hello}", b"lastlog", b"help", b"exit 3", b"nosuchcommand"])
def test_a_closed_connection_is_freed_by_reference_counting(world: World, command: bytes) -> None:
    refs = close_after(world, command.replace(b"{hello}", str(world.root / "hello.txt").encode()))
    alive = [type(r()).__name__ for r in refs if r() is not None]
    assert alive == [], f"still referenced after the connection closed: {alive}"
    assert world.factory.transports == set()


@pytest.mark.usefixtures("no_cyclic_gc")
def test_a_connection_the_client_drops_mid_command_is_freed_too(world: World) -> None:
    refs = close_after(world, b"comphash " + str(world.root / "hello.txt").encode(), client_closes_first=True)
    alive = [type(r()).__name__ for r in refs if r() is not None]
    assert alive == [], f"still referenced after the connection closed: {alive}"
