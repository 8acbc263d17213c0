"""Fuzz target: the PROXY header path of a `haproxy:` listener, on mutated v1/v2 headers and
random bytes, cut into random pieces: the reader alone, and the whole connection in front of the
real server built by make_world (over a StringTransport, the clock a MemoryReactorClock).

Checked after every piece: the reader holds at most MAX_V2_HEADER bytes, raises nothing but
ProxyHeaderError, and a header it returns names a canonical IP address or none; the connection
is either still reading (nothing built), closed (nothing built), or serving an SSH transport whose
peer is the header's source. At the end: nothing logged at error level, and the admission counts
and timers released once the connection is gone.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from support.proxyheaders import V2_SIGNATURE, v1, v2, v2_claiming, v2_local
from support.world import World, make_world
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from conchcmd.core.proxyheader import MAX_V2_HEADER, ProxyHeaderError, ProxyHeaderReader
from conchcmd.server.proxied import ProxyHeaderFactory, ProxySettings
from conchcmd.server.transport import ServerTransport
from fuzz.guard import LogWatch, bounded, fuzz

SEEDS = [
    v1("203.0.113.7"),
    v1("2001:db8::7"),
    v2("203.0.113.7"),
    v2("2001:db8::7"),
    v2("10.0.0.1", tlvs=b"\x04\x00\x02ab"),
    v2_local(),
    b"PROXY UNKNOWN\r\n",
    v2_claiming(65535),
    v1("::ffff:203.0.113.7"),
    v2("::ffff:203.0.113.7"),
    b"PROXY TCP6 fe80::7%eth0 2001:db8::1 51000 2222\r\n",  # a scope id: any text after the %
]


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """A header (valid, mutated, cut or padded) or bytes that start like one, then SSH bytes."""
    kind = draw(st.sampled_from(["seed", "mutated", "prefix-v1", "prefix-v2", "random"]))
    if kind == "random":
        head = draw(st.binary(max_size=200))
    elif kind == "prefix-v1":
        head = b"PROXY " + draw(st.binary(max_size=150))
    elif kind == "prefix-v2":
        head = V2_SIGNATURE + draw(st.binary(max_size=300))
    else:
        head = bytearray(draw(st.sampled_from(SEEDS)))
        if kind == "mutated":
            for _ in range(draw(st.integers(1, 4))):
                op = draw(st.sampled_from(["flip", "cut", "insert"]))
                at = draw(st.integers(0, max(0, len(head) - 1)))
                if op == "flip" and head:
                    head[at] = draw(st.integers(0, 255))
                elif op == "cut":
                    del head[at:]
                else:
                    head[at:at] = draw(st.binary(min_size=1, max_size=40))
        head = bytes(head)
    return head + draw(st.sampled_from([b"", b"SSH-2.0-fuzz\r\n", b"\0" * 2000]))


def pieces(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    i, n = 0, 0
    while i < len(data):
        size = sizes[n % len(sizes)] if sizes else len(data)
        yield data[i : i + size]
        i, n = i + size, n + 1


def check_address(address: object) -> None:
    assert isinstance(address, IPv4Address | IPv6Address)
    ip = ipaddress.ip_address(address.host)
    assert str(ip) == address.host  # canonical, an IP address
    assert "%" not in address.host  # no scope id (text of the header's choosing)
    assert not (isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped)  # an IPv4 client is IPv4Address
    assert 0 <= address.port <= 65535


@fuzz(300)
@given(streams(), st.lists(st.integers(1, 64), max_size=6))
@example(v2_claiming(65535) + b"\0" * 70000, [4096])
@example(b"PROXY " + b"9" * 5000, [1])
def test_the_reader_holds_a_bounded_buffer_and_returns_only_ip_addresses(data: bytes, sizes: list[int]) -> None:
    with bounded():
        reader = ProxyHeaderReader()
        fed = b""
        for piece in pieces(data, sizes):
            fed += piece
            try:
                done = reader.feed(piece)
            except ProxyHeaderError:
                return
            if done is None:
                assert len(reader.buffered) < MAX_V2_HEADER
                continue
            header, rest = done
            assert fed.endswith(rest) and len(fed) - len(rest) <= MAX_V2_HEADER
            if header.source is not None:
                check_address(header.source)
                check_address(header.destination)
            return


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("fuzz-proxy"))


@fuzz(150)
@given(streams(), st.lists(st.integers(1, 64), max_size=6))
@example(v2("203.0.113.7") + b"SSH-2.0-fuzz\r\n", [3])
def test_ssh_only_after_a_good_header_and_everything_released(
    world: World, log_watch: LogWatch, data: bytes, sizes: list[int]
) -> None:
    factory = ProxyHeaderFactory.serving(world.factory, ProxySettings())
    admissions = world.factory.admissions.sources
    with bounded(), log_watch.clean():
        conn = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert conn is not None
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        conn.makeConnection(transport)
        for piece in pieces(data, sizes):
            if transport.disconnecting or transport.disconnected:
                break
            conn.dataReceived(piece)
            ssh = conn.wrappedProtocol
            if ssh is not None:
                assert isinstance(ssh, ServerTransport)
                check_address(conn.getPeer())
                assert ssh.peer_address.host == conn.getPeer().host  # type: ignore[attr-defined]
            elif not (transport.disconnecting or transport.disconnected):
                assert conn._reader is not None and len(conn._reader.buffered) < MAX_V2_HEADER
        world.clock.advance(60)  # the header deadline, the login grace time
        conn.connectionLost(Failure(ConnectionError("gone")))
        world.clock.advance(0)
    assert admissions.total_startups == 0 and admissions.startups == {}
    assert not factory.protocols and factory.pending == 0
