"""A `haproxy:` listener in the running service (MemoryReactorClock): a SIGHUP while connections
wait for their header leaves them waiting and served once it comes; a shutdown closes those still
waiting and records its stop after every client's end."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from support.proxyheaders import v1
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from conchcmd.core.config import load_config
from conchcmd.edge.service import ConchcmdService
from conchcmd.server.proxied import HEADER_TIMEOUT, ProxiedConnection, ProxyHeaderFactory

CONFIG = """\
listen = ["haproxy:tcp:2222:interface=127.0.0.1"]
host_keys_dir = "keys"
authorized_keys = "keys/authorized_keys/%u"
audit_log = "audit.jsonl"
"""


class Socket(StringTransport):
    """Twisted's TCP transport as far as ending goes: an abort ends the connection on the next
    reactor turn, a lose once the protocol is told."""

    def __init__(self, reactor: MemoryReactorClock, port: int) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        self.reactor = reactor
        self.protocol: Any = None

    def abortConnection(self) -> None:
        self.aborted = True
        self._end(Failure(ConnectionAborted()))

    def loseConnection(self) -> None:
        self._end(Failure(ConnectionDone()))

    def _end(self, why: Failure) -> None:
        if not self.disconnecting:  # the first of lose and abort ends it, once
            self.reactor.callLater(0, self.protocol.connectionLost, why)
        super().loseConnection()


def start(base: Path) -> tuple[ConchcmdService, MemoryReactorClock, ProxyHeaderFactory]:
    (base / "conchcmd.toml").write_text(CONFIG)
    reactor = MemoryReactorClock()
    service = ConchcmdService(
        load_config(base / "conchcmd.toml", cwd=base), reactor, io.StringIO(), config_path=base / "conchcmd.toml"
    )
    service.startService()
    ((_port, factory, _backlog, _interface),) = reactor.tcpServers
    assert isinstance(factory, ProxyHeaderFactory)
    return service, reactor, factory


def accept(reactor: MemoryReactorClock, factory: ProxyHeaderFactory, port: int) -> tuple[ProxiedConnection, Socket]:
    conn = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
    assert conn is not None
    sock = Socket(reactor, port)
    sock.protocol = conn
    conn.makeConnection(sock)
    return conn, sock


def audit(base: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (base / "audit.jsonl").read_text().splitlines()]


def test_a_reload_leaves_waiting_connections_waiting_and_a_stop_closes_them(tmp_path: Path) -> None:
    service, reactor, factory = start(tmp_path)
    waiting, waiting_sock = accept(reactor, factory, 41000)
    waiting.dataReceived(v1("203.0.113.7")[:9])
    (tmp_path / "conchcmd.toml").write_text(CONFIG + 'proxy_from = ["127.0.0.1"]\n')
    assert service.reload()
    (reload,) = [r for r in audit(tmp_path) if r["event"] == "reload"]
    assert reload["restart_needed"] == ["proxy_from"]
    waiting.dataReceived(v1("203.0.113.7")[9:] + b"SSH-2.0-client\r\n")
    assert waiting.wrappedProtocol is not None and not waiting_sock.disconnecting
    assert waiting_sock.value().startswith(b"SSH-2.0-")  # served: the banner
    _late, late_sock = accept(reactor, factory, 41001)
    stopped: list[object] = []
    service.stopService().addBoth(stopped.append)
    assert late_sock.aborted  # aborted: it never named a client
    assert waiting_sock.disconnecting  # told why, as every client is
    reactor.advance(0)
    assert stopped == [None] and factory.pending == 0
    events = [r["event"] for r in audit(tmp_path)]
    assert events[-2:] == ["disconnect", "server_stop"]
    reactor.advance(HEADER_TIMEOUT * 2)  # no deadline left to fire on a closed connection
    assert [r for r in audit(tmp_path) if r["event"] == "refused"] == []
