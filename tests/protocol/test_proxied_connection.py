"""conchcmd.server.proxied over StringTransport and task.Clock: only trusted proxies connect, the
wrapped protocol is built only once the header is in and with the header's address, and a late,
oversized or missing header is refused, counted and logged against the proxy."""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest
from support.proxyheaders import v1, v2, v2_claiming, v2_local
from twisted.internet import task
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, capturedLogs, formatEvent

from conchcmd.core.audit import MemoryAuditLog
from conchcmd.core.config import LimitsConfig
from conchcmd.server.admission import Admissions
from conchcmd.server.proxied import HEADER_TIMEOUT, ProxiedConnection, ProxyHeaderFactory, ProxySettings, proxy_of

PROXY = IPv4Address("TCP", "127.0.0.1", 40001)
LISTENING = IPv4Address("TCP", "127.0.0.1", 2222)  # the haproxy: listener's own address


class Recorder(Protocol):
    """What the wrapped (SSH) protocol sees: the peer at connectionMade, and the bytes."""

    def __init__(self) -> None:
        self.peer: IAddress | None = None
        self.via: str | None = None
        self.data = b""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.peer = self.transport.getPeer()
        self.via = proxy_of(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.data += data


class Wrapped(Factory):
    """The SSH factory's part: buildProtocol with the client's address, which it may refuse."""

    def __init__(self, refuse: set[str] | None = None) -> None:
        self.built: list[IAddress] = []
        self.protocols: list[Recorder] = []
        self.refuse = refuse or set()

    def buildProtocol(self, addr: Any) -> Recorder | None:
        self.built.append(addr)
        if addr.host in self.refuse:
            return None
        p = Recorder()
        self.protocols.append(p)
        return p


class Rig:
    def __init__(
        self, trusted: tuple[str, ...] = ("127.0.0.1", "::1"), refuse: set[str] | None = None, max_pending: int = 100
    ) -> None:
        self.clock = task.Clock()
        self.audit = MemoryAuditLog()
        self.admissions = Admissions(LimitsConfig(), self.clock, self.audit, max_clients=10)
        self.wrapped = Wrapped(refuse)
        settings = ProxySettings(trusted=trusted, max_pending=max_pending)
        self.factory = ProxyHeaderFactory(self.wrapped, admissions=self.admissions, clock=self.clock, settings=settings)

    def accept(self, proxy: IAddress = PROXY) -> tuple[ProxiedConnection | None, StringTransport]:
        conn = self.factory.buildProtocol(proxy)
        transport = StringTransport(peerAddress=proxy, hostAddress=LISTENING)
        if conn is not None:
            conn.makeConnection(transport)
        return conn, transport


def lines(events: list[LogEvent]) -> list[str]:
    return [formatEvent(e) for e in events]


@pytest.mark.parametrize("make", [v1, v2], ids=["v1", "v2"])
def test_the_ssh_protocol_starts_after_the_header_with_the_clients_address(make) -> None:
    rig = Rig()
    conn, transport = rig.accept()
    assert conn is not None
    data = make("203.0.113.7", sport=5555) + b"SSH-2.0-client\r\n"
    conn.dataReceived(data[:10])
    assert rig.wrapped.built == []  # nothing decided on the proxy's address
    conn.dataReceived(data[10:])
    (ssh,) = rig.wrapped.protocols
    assert rig.wrapped.built == [IPv4Address("TCP", "203.0.113.7", 5555)]
    assert ssh.peer == IPv4Address("TCP", "203.0.113.7", 5555) == conn.getPeer()
    assert ssh.via == "127.0.0.1:40001"
    assert ssh.data == b"SSH-2.0-client\r\n"
    conn.dataReceived(b"more")
    assert ssh.data.endswith(b"more") and not transport.disconnecting


def test_an_ipv6_proxy_and_client() -> None:
    rig = Rig()
    conn, _ = rig.accept(IPv6Address("TCP", "::1", 40002))
    assert conn is not None
    conn.dataReceived(v2("2001:db8::7", sport=6000))
    (ssh,) = rig.wrapped.protocols
    assert ssh.peer == IPv6Address("TCP", "2001:db8::7", 6000) and ssh.via == "[::1]:40002"


def test_a_connection_from_an_untrusted_address_is_refused_counted_and_logged() -> None:
    rig = Rig()
    with capturedLogs() as events:
        conn, _ = rig.accept(IPv4Address("TCP", "198.51.100.66", 1234))
    assert conn is None  # Twisted closes the socket: not one byte is read from it
    (refused,) = rig.audit.of("refused")
    assert refused["peer"] == "198.51.100.66:1234" and refused["source"] == "198.51.100.66"
    assert refused["reason"] == "not a trusted proxy (proxy_from)"
    assert "Refused 1 connection(s) from 198.51.100.66: not a trusted proxy (proxy_from)" in lines(events)


def test_proxy_from_patterns_decide_as_from_does() -> None:
    settings = ProxySettings(trusted=("10.1.0.0/16", "!10.1.2.3", "::ffff:192.0.2.1"))
    assert settings.trusts(IPv4Address("TCP", "10.1.9.9", 1))
    assert not settings.trusts(IPv4Address("TCP", "10.1.2.3", 1))
    assert not settings.trusts(IPv4Address("TCP", "10.2.0.1", 1))
    assert settings.trusts(IPv6Address("TCP", "::ffff:10.1.0.1", 1))  # IPv4-mapped: as IPv4
    assert not ProxySettings().trusts(IPv4Address("TCP", "192.0.2.1", 1))  # the default: loopback only
    assert ProxySettings().trusts(IPv6Address("TCP", "::1", 1))
    assert ProxySettings().trusts(UNIXAddress(b"/run/conchcmd/proxy.sock"))  # its file mode decides


def test_a_proxy_on_a_unix_socket_passes_its_clients_address() -> None:
    rig = Rig()
    conn, _ = rig.accept(UNIXAddress(b"/run/conchcmd/proxy.sock"))
    assert conn is not None
    conn.dataReceived(v2("203.0.113.7", sport=5555))
    (ssh,) = rig.wrapped.protocols
    assert ssh.peer == IPv4Address("TCP", "203.0.113.7", 5555) and ssh.via is not None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n", "bad PROXY header: an SSH version line instead of a PROXY header"),
        (b"\x16\x03\x01\x02\x00", "bad PROXY header: 5 bytes of something else instead of a PROXY header"),
        (v2_claiming(65535), "bad PROXY header: a v2 PROXY header of 65551 bytes (at most 1024)"),
        (b"PROXY TCP4 6.6.6.6 192.0.2.1 1 99999\r\n", "bad PROXY header: a v1 PROXY header with a bad port"),
    ],
    ids=["ssh", "tls", "oversized", "bad-port"],
)
def test_a_bad_header_closes_the_connection_and_is_counted_against_the_proxy(data: bytes, reason: str) -> None:
    rig = Rig()
    conn, transport = rig.accept()
    assert conn is not None
    with capturedLogs() as events:
        conn.dataReceived(data)
    assert transport.disconnected  # aborted: nothing to answer
    assert rig.wrapped.built == []
    (refused,) = rig.audit.of("refused")
    assert (refused["peer"], refused["reason"]) == ("127.0.0.1:40001", reason)
    assert f"Refused 1 connection(s) from 127.0.0.1: {reason}" in lines(events)
    conn.dataReceived(v1("203.0.113.7"))  # too late: nothing more is read
    assert rig.wrapped.built == []


def test_a_header_not_complete_within_the_deadline_is_refused() -> None:
    rig = Rig()
    conn, transport = rig.accept()
    assert conn is not None
    conn.dataReceived(v1("203.0.113.7")[:12])
    rig.clock.advance(HEADER_TIMEOUT - 0.1)
    assert not transport.disconnected
    rig.clock.advance(0.2)
    assert transport.disconnected
    (refused,) = rig.audit.of("refused")
    assert refused["reason"] == f"no PROXY header within {HEADER_TIMEOUT:g} s"
    assert rig.clock.getDelayedCalls() == [] or all(not c.active() for c in rig.clock.getDelayedCalls())


def test_the_deadline_ends_with_the_header() -> None:
    rig = Rig()
    conn, transport = rig.accept()
    assert conn is not None
    conn.dataReceived(v1("203.0.113.7"))
    rig.clock.advance(HEADER_TIMEOUT * 10)
    assert not transport.disconnected and rig.audit.of("refused") == []


@pytest.mark.parametrize("data", [v2_local(), b"PROXY UNKNOWN\r\n"], ids=["v2-local", "v1-unknown"])
def test_a_health_check_header_is_closed_without_a_client_or_a_refusal(data: bytes) -> None:
    rig = Rig()
    conn, transport = rig.accept()
    assert conn is not None
    with capturedLogs() as events:
        conn.dataReceived(data + b"SSH-2.0-x\r\n")
    assert transport.disconnecting and rig.wrapped.built == []
    assert rig.audit.events == []
    said = "naming no client (LOCAL/UNKNOWN: a health check) from 127.0.0.1:40001"
    assert sum(said in line for line in lines(events)) == 1
    with capturedLogs() as again:  # HAProxy checks every 2 s: the next ones are not logged
        for port in range(40002, 40012):
            conn, transport = rig.accept(IPv4Address("TCP", "127.0.0.1", port))
            assert conn is not None
            conn.dataReceived(data)
            assert transport.disconnecting
    assert lines(again) == [] and rig.audit.events == []


def test_admission_decides_on_the_clients_address() -> None:
    rig = Rig(refuse={"203.0.113.66"})
    conn, transport = rig.accept()
    assert conn is not None
    conn.dataReceived(v1("203.0.113.66") + b"SSH-2.0-x\r\n")
    assert rig.wrapped.built == [IPv4Address("TCP", "203.0.113.66", 51000)] and rig.wrapped.protocols == []
    assert transport.disconnecting
    other, other_transport = rig.accept()
    assert other is not None
    other.dataReceived(v1("203.0.113.7"))
    assert len(rig.wrapped.protocols) == 1 and not other_transport.disconnecting


def test_pending_connections_are_closed_at_shutdown() -> None:
    rig = Rig()
    waiting, waiting_transport = rig.accept()
    served, served_transport = rig.accept()
    assert waiting is not None and served is not None
    served.dataReceived(v1("203.0.113.7"))
    rig.factory.close_pending()
    assert waiting_transport.disconnected and not served_transport.disconnected


def test_connections_waiting_for_their_header_are_capped_at_max_startups() -> None:
    """Each holds a socket and up to 1 KiB for 5 s, and is counted nowhere else (its client is not
    known yet): a peer in proxy_from (by default any local user) opening them faster than they
    expire would run the server out of descriptors. Beyond max_startups waiting, the one that has
    waited longest is closed (a real proxy sends its header at once), so idle connections held
    by another user on the proxy's address do not turn the proxy's clients away."""
    rig = Rig(max_pending=3)
    idle = [rig.accept(IPv4Address("TCP", "127.0.0.1", 41000 + n)) for n in range(3)]
    assert all(conn is not None and not t.disconnecting for conn, t in idle)
    with capturedLogs() as events:
        conn, transport = rig.accept(IPv4Address("TCP", "127.0.0.1", 41003))
    assert conn is not None and rig.factory.pending == 3
    assert [t.disconnected for _, t in idle] == [True, False, False]  # the oldest made room
    (refused,) = rig.audit.of("refused")
    reason = "waited longest for its PROXY header with max_startups (3) waiting"
    assert (refused["peer"], refused["reason"]) == ("127.0.0.1:41000", reason)
    assert f"Refused 1 connection(s) from 127.0.0.1: {reason}" in lines(events)
    conn.dataReceived(v1("203.0.113.7"))  # the proxy's client, served
    assert not transport.disconnecting and len(rig.wrapped.protocols) == 1 and rig.factory.pending == 2
    for n in range(10):  # a flood of idle ones: never more than 3 wait, each new one served
        rig.accept(IPv4Address("TCP", "127.0.0.1", 42000 + n))
        assert rig.factory.pending == 3
        served, served_transport = rig.accept(IPv4Address("TCP", "127.0.0.1", 43000 + n))
        assert served is not None
        served.dataReceived(v2(f"203.0.113.{10 + n}"))
        assert not served_transport.disconnecting
    assert len(rig.wrapped.protocols) == 11
    rig.clock.advance(HEADER_TIMEOUT + 1)  # the deadline of those still waiting
    assert rig.factory.pending == 0


def test_a_header_sent_a_byte_at_a_time_is_cut_at_the_deadline_from_the_connection() -> None:
    """The deadline runs from the accept, not from the last byte (a slow-loris header)."""
    rig = Rig()
    conn, transport = rig.accept()
    assert conn is not None
    for byte in v1("203.0.113.7")[:20]:
        conn.dataReceived(bytes([byte]))
        rig.clock.advance(HEADER_TIMEOUT / 10)
        if transport.disconnected:
            break
    assert transport.disconnected and rig.wrapped.built == []


def test_memory_held_by_a_waiting_connection_is_bounded() -> None:
    """What a connection costs while it waits for its header: at most 1 KiB of it and the objects
    (measured with tracemalloc: 500 connections each holding 1023 bytes of a v2 header)."""
    rig = Rig(max_pending=1000)
    partial = v2_claiming(1008) + b"\0" * (1023 - 16)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        held = []
        for n in range(500):
            conn, transport = rig.accept(IPv4Address("TCP", "127.0.0.1", 20000 + n))
            assert conn is not None
            for i in range(0, len(partial), 64):  # in pieces, as TCP may deliver them
                conn.dataReceived(partial[i : i + 64])
            held.append((conn, transport))
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    assert all(not t.disconnecting for _, t in held)
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    print(f"{grown / 500:.0f} bytes per waiting connection")
    assert grown / 500 < 8 * 1024  # bytes per waiting connection, the StringTransport included


def test_a_v1_header_naming_the_proxys_own_connection_is_a_health_check() -> None:
    """HAProxy 2.6's `check` with `send-proxy` (v1 has no LOCAL) sends `PROXY TCP4` naming the
    check's own connection (measured: `PROXY TCP4 127.0.0.1 127.0.0.1 40246 2222`), every 2 s:
    no client, so no `Client connection` line and no connect/disconnect records each time. A
    client's header names its connection to the balancer's front end, never this one."""
    rig = Rig()
    itself = v1("127.0.0.1", "127.0.0.1", sport=PROXY.port, dport=LISTENING.port)
    with capturedLogs() as events:
        for port in (PROXY.port, PROXY.port + 1):
            conn, transport = rig.accept(IPv4Address("TCP", "127.0.0.1", port))
            assert conn is not None
            conn.dataReceived(v1("127.0.0.1", "127.0.0.1", sport=port, dport=LISTENING.port))
            assert transport.disconnecting and rig.wrapped.built == []
    assert rig.audit.events == []
    said = "naming no client (LOCAL/UNKNOWN: a health check) from 127.0.0.1:40001"
    assert sum(said in line for line in lines(events)) == 1
    for header in (  # the same ends but one: a client
        v1("127.0.0.1", "127.0.0.1", sport=PROXY.port, dport=22),
        v1("127.0.0.1", "127.0.0.1", sport=PROXY.port + 7, dport=LISTENING.port),
        v1("127.0.0.2", "127.0.0.1", sport=PROXY.port, dport=LISTENING.port),
    ):
        conn, transport = rig.accept()
        assert conn is not None and itself != header
        conn.dataReceived(header)
        assert not transport.disconnecting
    assert len(rig.wrapped.protocols) == 3
