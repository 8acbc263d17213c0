"""The auth lines that wait for a name to be decided (an unknown name's "Invalid user", left open
by the answer to `none`) are written when the server is stopped (SIGTERM) while they wait, in
order, before the connection's last line: none lost at shutdown (real server process)."""

from __future__ import annotations

import socket

import pytest
from support.rawssh import SocketTransport
from support.sshclient import AuthClient, ClientFactory
from twisted.conch.ssh import userauth

pytestmark = pytest.mark.reliability


def pump_until(sock: socket.socket, client: object, done: object) -> None:
    while not done():  # type: ignore[operator]
        data = sock.recv(65536)
        assert data, "the server closed the connection"
        client.dataReceived(data)  # type: ignore[attr-defined]


def test_lines_waiting_at_sigterm_are_written_in_order(make_server) -> None:
    from twisted.internet import reactor

    server = make_server()
    factory = ClientFactory()
    factory.clock = reactor  # type: ignore[assignment]
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10, source_address=("127.0.0.61", 0))
    try:
        client = factory.buildProtocol(None)
        client.factory = factory
        client.makeConnection(SocketTransport(sock))
        pump_until(sock, client, lambda: factory.secure.called)
        auth = AuthClient(b"nobody", None)  # type: ignore[arg-type]
        client.requestService(auth)
        pump_until(sock, client, lambda: client.service is auth)
        auth.send_request(b"none", b"")
        auth.send_request(b"none", b"")  # a counted failure: its line waits too
        pump_until(sock, client, lambda: len(auth.replies) == 2)
        assert [m for m, _ in auth.replies] == [userauth.MSG_USERAUTH_FAILURE] * 2
        server.stop()  # SIGTERM while the lines wait; fails unless it exits 0 in time
    finally:
        sock.close()
    lines = [line for line in server.log_text().splitlines() if "127.0.0.61" in line]
    auth_lines = [line.split("] ", 1)[1] for line in lines if "[conchcmd.auth#" in line]
    port = auth_lines[0].rsplit(" ", 1)[1]
    assert auth_lines == [
        f"Invalid user nobody from 127.0.0.61 port {port}",
        f"Failed none for invalid user nobody from 127.0.0.61 port {port} ssh2",
        f"Connection closed by invalid user nobody 127.0.0.61 port {port} [preauth]",
    ]
