"""Drives the real server transport with fuzzed bytes and checks what must always hold.

`Wire` is one connection to the server built by `inmemory.conftest.make_world`, over a
StringTransport (pre-key-exchange bytes) or over the in-memory stack with a real client
(`support.sshclient`) when a target needs a keyed connection. After every feed it checks:
- the transport's input buffer stays within what one packet may take (derived from the code);
- a connection the server closes got a DISCONNECT message from it (unless the peer disconnected);
- nothing is dispatched after the server has sent DISCONNECT;
- the server sends at most a bounded multiple of what it received (no amplification).
"""

from __future__ import annotations

import itertools
import struct
from collections import Counter
from typing import Any

from support.sshclient import ClientFactory, Connection, connect
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from conchcmd.server import transport as server
from conchcmd.wire import framing

#: Conch keeps at most 4 KiB waiting for a version line; after it, one partial packet:
#: the length field, the largest packet allowed before authentication, and the largest tag.
VERSION_BUFFER = 4096
PACKET_BUFFER = 4 + server.PREAUTH_MAX_PACKET + 64
#: The server's first flight (version, KEXINIT, a kex reply with an ML-KEM ciphertext, EXT_INFO)
#: plus twice what it is sent: every reply is smaller than the message that asked for it,
#: except UNIMPLEMENTED (16 bytes) to a message of at least 16 bytes.
OUTPUT_ALLOWANCE = 8192
OUTPUT_FACTOR = 2

_peers = itertools.count(1)
#: Protocol errors the server reported, by kind (the part before the first ':'), for the report.
PROTOCOL_ERRORS: Counter[str] = Counter()


def next_peer() -> str:
    """A fresh source address per connection, so admission penalties never refuse a fuzz input."""
    n = next(_peers)
    return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def frame(message: int, payload: bytes, block: int = 8) -> bytes:
    """A cleartext binary packet (RFC 4253 6) with well-formed length and padding."""
    body = bytes((message,)) + payload
    padding = block - (5 + len(body)) % block
    if padding < 4:
        padding += block
    return struct.pack(">LB", 1 + len(body) + padding, padding) + body + bytes(padding)


class Spy:
    """Records the server transport's disconnects, peer disconnects and dispatched messages."""

    def __init__(self, proto: Any):
        self.proto = proto
        self.disconnects: list[tuple[int, bytes]] = []
        self.peer_disconnected = False
        self.dispatched_after_disconnect: list[int] = []
        self.dispatched: list[int] = []
        send_disconnect, receive_error = proto.sendDisconnect, proto.receiveError
        dispatch, protocol_error = proto.dispatchMessage, proto._protocol_error

        def on_disconnect(reason: int, desc: bytes) -> None:
            self.disconnects.append((reason, desc))
            send_disconnect(reason, desc)

        def on_receive_error(code: int, desc: bytes) -> None:
            self.peer_disconnected = True
            receive_error(code, desc)

        def on_dispatch(number: int, payload: bytes) -> None:
            if self.disconnects:
                self.dispatched_after_disconnect.append(number)
            self.dispatched.append(number)
            dispatch(number, payload)

        def on_protocol_error(error: str) -> None:
            PROTOCOL_ERRORS[error.split(":", 1)[0]] += 1
            protocol_error(error)

        proto.sendDisconnect = on_disconnect
        proto.receiveError = on_receive_error
        proto.dispatchMessage = on_dispatch
        proto._protocol_error = on_protocol_error


class Wire:
    """One fuzzed connection to `world`'s server over a StringTransport."""

    def __init__(self, world: Any):
        self.world = world
        peer = IPv4Address("TCP", next_peer(), 40000)
        self.proto = world.factory.buildProtocol(peer)
        assert self.proto is not None, "admission refused a fresh source"
        self.spy = Spy(self.proto)
        self.transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 2222), peerAddress=peer)
        self.proto.makeConnection(self.transport)
        self.received = 0

    @property
    def closing(self) -> bool:
        return bool(self.transport.disconnecting)

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        self.proto.dataReceived(data)
        self.check()

    def check(self) -> None:
        check_server(self.proto, self.spy, self.closing, len(self.transport.value()), self.received)

    def close(self) -> None:
        """The peer goes away; the server must let go of everything this connection held."""
        self.proto.connectionLost(Failure(ConnectionDone()))
        check_released(self.world, self.proto)


def check_server(proto: Any, spy: Spy, closing: bool, sent: int, received: int) -> None:
    limit = PACKET_BUFFER if proto.gotVersion else VERSION_BUFFER
    if not closing:  # a closing connection reads no more; its buffer goes with it
        assert len(proto.buf) <= limit, f"input buffer {len(proto.buf)} bytes > {limit}"
    assert not spy.dispatched_after_disconnect, f"dispatched {spy.dispatched_after_disconnect} after DISCONNECT"
    if closing:
        assert spy.disconnects or spy.peer_disconnected, "connection closed without a DISCONNECT message"
    if spy.disconnects:
        assert closing, "DISCONNECT sent but the connection stays open"
    bound = OUTPUT_ALLOWANCE + OUTPUT_FACTOR * received
    assert sent <= bound, f"sent {sent} bytes for {received} received"
    assert framing.MAX_PACKET >= server.PREAUTH_MAX_PACKET


def check_released(world: Any, proto: Any) -> None:
    factory = world.factory
    assert proto not in factory.transports
    assert factory.admissions.slots.used == 0
    assert factory.admissions.sources.total_startups == 0


class Keyed:
    """One connection over the in-memory stack with the test client, key exchange done."""

    def __init__(self, world: Any, client: ClientFactory | None = None):
        self.world = world
        self.conn: Connection = connect(world.factory, world.clock, next_peer(), 40000, client)
        self.spy = Spy(self.conn.server)
        self.conn.flush()
        assert self.conn.client.kex_count == 1, "key exchange did not complete"
        self.received = 0

    @property
    def server(self) -> Any:
        return self.conn.server

    @property
    def closing(self) -> bool:
        return bool(self.server.transport.disconnecting)

    def check(self) -> None:
        # The in-memory client's own bytes (kex) count as received; the server's output is
        # bounded by the same rule as over a StringTransport.
        check_server(self.server, self.spy, self.closing, 0, self.received)

    def raw(self, data: bytes) -> None:
        """Bytes straight into the server's transport, bypassing the client's packet layer."""
        self.received += len(data)
        self.server.dataReceived(data)
        self.check()

    def send(self, message: int, payload: bytes) -> None:
        """A message through the client's packet layer (encrypted and MACed with the session keys)."""
        if self.closing or self.conn.client._dead:
            return
        self.conn.client.sendPacket(message, payload)
        self.received += len(payload) + 64
        self.conn.flush()
        self.check()

    def close(self) -> None:
        if not self.server.transport.disconnected:
            self.server.connectionLost(Failure(ConnectionDone()))
        check_released(self.world, self.server)
