"""The service under twistd and at shutdown, on a MemoryReactorClock: the endpoints are bound in
privilegedStartService (before `twistd --uid` drops privileges), readiness waits for
startService; a shutdown ends as soon as the last client has gone, or after the grace time."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from conchcmd.core.config import load_config
from conchcmd.edge.service import ConchcmdService
from conchcmd.server.factory import CUT_GRACE, SHUTDOWN_GRACE

CONFIG = """\
listen = ["tcp:2222", "tcp6:2223:interface=\\\\:\\\\:1"]
host_keys_dir = "keys"
authorized_keys = "keys/authorized_keys/%u"
audit_log = "audit.jsonl"
"""


def make_service(base: Path) -> tuple[ConchcmdService, MemoryReactorClock]:
    (base / "conchcmd.toml").write_text(CONFIG)
    reactor = MemoryReactorClock()
    config = load_config(base / "conchcmd.toml", cwd=base)
    service = ConchcmdService(config, reactor, io.StringIO(), config_path=base / "conchcmd.toml")
    service.prepare()
    return service, reactor


def audit_events(base: Path) -> list[str]:
    return [json.loads(line)["event"] for line in (base / "audit.jsonl").read_text().splitlines()]


def bound_ports(reactor: MemoryReactorClock) -> list[tuple[int, str]]:
    return [(port, interface) for port, _factory, _backlog, interface in reactor.tcpServers]


def test_privileged_start_binds_every_endpoint_and_start_does_not_bind_again(tmp_path: Path) -> None:
    service, reactor = make_service(tmp_path)
    service.privilegedStartService()  # as root, before twistd's --uid
    assert bound_ports(reactor) == [(2222, ""), (2223, "::1")]
    assert not service.ready.called  # ready (sd_notify, server_start) only once started
    assert "server_start" not in audit_events(tmp_path)
    service.startService()  # after the privileges are gone
    assert service.ready.called
    assert bound_ports(reactor) == [(2222, ""), (2223, "::1")]  # the same ports, not bound twice
    assert [str(p.getHost().port) for p in service.ports] == ["2222", "2223"]
    assert audit_events(tmp_path).count("server_start") == 1


def test_start_alone_still_binds(tmp_path: Path) -> None:
    """`conchcmd serve` calls startService only."""
    service, reactor = make_service(tmp_path)
    service.startService()
    assert service.ready.called and bound_ports(reactor) == [(2222, ""), (2223, "::1")]


def connect(service: ConchcmdService, host: str) -> tuple[Any, StringTransport]:
    assert service.server is not None
    proto = service.server.factory.buildProtocol(IPv4Address("TCP", host, 40000))
    tcp = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
    proto.makeConnection(tcp)
    return proto, tcp


def test_shutdown_ends_when_the_last_client_has_gone(tmp_path: Path) -> None:
    service, _reactor = make_service(tmp_path)
    service.startService()
    first, first_tcp = connect(service, "10.0.0.1")
    second, second_tcp = connect(service, "10.0.0.2")
    stopped: list[object] = []
    service.stopService().addBoth(stopped.append)
    assert first_tcp.disconnecting and second_tcp.disconnecting  # both told to go
    first.connectionLost(Failure(ConnectionDone()))
    assert not stopped  # the second client is still there
    second.connectionLost(Failure(ConnectionDone()))
    assert stopped == [None]  # at once: no polling, no clock advanced
    events = audit_events(tmp_path)
    assert events[-3:] == ["disconnect", "disconnect", "server_stop"]  # the stop record comes last


class TCPLikeTransport(StringTransport):
    """A StringTransport whose abortConnection ends the connection on the next reactor turn,
    as Twisted's TCP transport does."""

    def __init__(self, reactor: MemoryReactorClock, **kwargs: Any):
        super().__init__(**kwargs)
        self.reactor = reactor
        self.ends: Any = None  # the protocol

    def abortConnection(self) -> None:
        super().abortConnection()
        self.reactor.callLater(0, self.ends.connectionLost, Failure(ConnectionAborted()))


def test_shutdown_cuts_a_client_that_stays_and_records_its_end_before_the_stop(tmp_path: Path) -> None:
    """A client that reads nothing keeps its DISCONNECT unsent: after the grace time it is cut,
    and its disconnect record still comes before server_stop (the reactor would otherwise end it
    after the audit log has closed)."""
    service, reactor = make_service(tmp_path)
    service.startService()
    assert service.server is not None
    proto = service.server.factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", 40000))
    tcp = TCPLikeTransport(reactor, peerAddress=IPv4Address("TCP", "10.0.0.1", 40000))
    tcp.ends = proto
    proto.makeConnection(tcp)
    stopped: list[object] = []
    service.stopService().addBoth(stopped.append)
    reactor.advance(SHUTDOWN_GRACE * 0.99)
    assert not stopped and not tcp.disconnected
    reactor.advance(SHUTDOWN_GRACE * 0.02)
    assert tcp.disconnected  # cut
    reactor.advance(0)
    assert stopped == [None]
    assert audit_events(tmp_path)[-2:] == ["disconnect", "server_stop"]
    assert proto not in service.server.factory.transports


def test_shutdown_gives_up_on_a_connection_that_does_not_end_even_when_cut(tmp_path: Path) -> None:
    service, reactor = make_service(tmp_path)
    service.startService()
    proto, _tcp = connect(service, "10.0.0.1")  # its abortConnection ends nothing
    assert service.server is not None
    stopped: list[object] = []
    service.stopService().addBoth(stopped.append)
    reactor.advance(SHUTDOWN_GRACE)  # the grace time is over: it is cut
    reactor.advance(CUT_GRACE * 0.99)
    assert not stopped
    reactor.advance(CUT_GRACE * 0.02)
    assert stopped == [None]
    assert audit_events(tmp_path)[-1] == "server_stop"
    assert proto in service.server.factory.transports  # still there: it ends with the process
