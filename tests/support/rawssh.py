"""The project's test client (support.sshclient, Conch's client classes with our packet layer)
driven over a real loopback socket, without a reactor: for sending exact message sequences to a
real sshd, the oracle of the dispatch policy. `dial` returns the same `Connection` the in-memory
tests use, its `flush` reading until the server has been quiet for a moment."""

from __future__ import annotations

import contextlib
import select
import socket
import time
from typing import Any

from twisted.internet.address import IPv4Address

from support.sshclient import ClientFactory, Connection

QUIET = 0.1  # seconds without a byte from the server after which a flush ends
LIMIT = 10.0  # a flush never takes longer


class SocketTransport:
    """The ITransport the client protocol writes to: a blocking socket."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.disconnected = False
        self.disconnecting = False

    def write(self, data: bytes) -> None:
        if not self.disconnected:
            try:
                self.sock.sendall(data)
            except OSError:
                self.disconnected = True

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self.disconnecting = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def getPeer(self) -> IPv4Address:
        host, port = self.sock.getpeername()[:2]
        return IPv4Address("TCP", host, port)

    def getHost(self) -> IPv4Address:
        host, port = self.sock.getsockname()[:2]
        return IPv4Address("TCP", host, port)


class SocketPump:
    """Feeds what the server sends to the client protocol (iosim.IOPump's `flush`, for a socket)."""

    def __init__(self, sock: socket.socket, protocol: Any, transport: SocketTransport):
        self.sock = sock
        self.protocol = protocol
        self.transport = transport

    def flush(self, quiet: float = QUIET) -> None:
        deadline = time.monotonic() + LIMIT
        while not self.transport.disconnected and time.monotonic() < deadline:
            ready, _, _ = select.select([self.sock], [], [], quiet)
            if not ready:
                return
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                self.transport.disconnected = True
                self.sock.close()
                return
            self.protocol.dataReceived(data)


def dial(port: int, client_factory: ClientFactory | None = None, host: str = "127.0.0.1") -> Connection:
    """Connect the test client to a server on `port` and run until the first key exchange is
    over (or the server has gone quiet or away)."""
    client_factory = client_factory or ClientFactory()
    if client_factory.clock is None:
        from twisted.internet import reactor  # wall-clock time, for the client's hourly rekey

        client_factory.clock = reactor  # type: ignore[assignment]
    sock = socket.create_connection((host, port), timeout=LIMIT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client = client_factory.buildProtocol(None)
    client.factory = client_factory
    transport = SocketTransport(sock)
    pump = SocketPump(sock, client, transport)
    client.makeConnection(transport)
    pump.flush()
    return Connection(None, client, pump, client_factory)  # type: ignore[arg-type]
