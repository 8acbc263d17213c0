"""conchcmd.core.proxyheader: the PROXY header read in any number of pieces, the client's address
taken only from a well-formed TCP header, and everything else refused within a bounded buffer."""

from __future__ import annotations

import pytest
from support.proxyheaders import V2_SIGNATURE, v1, v2, v2_claiming, v2_local
from twisted.internet.address import IPv4Address, IPv6Address

from conchcmd.core.proxyheader import (
    MAX_V1_HEADER,
    MAX_V2_HEADER,
    ProxyHeader,
    ProxyHeaderError,
    ProxyHeaderReader,
)


def read(data: bytes, *, piece: int | None = None) -> tuple[ProxyHeader, bytes]:
    reader = ProxyHeaderReader()
    pieces = [data] if piece is None else [data[i : i + piece] for i in range(0, len(data), piece)]
    for n, chunk in enumerate(pieces):
        done = reader.feed(chunk)
        if done is not None:
            rest = done[1] + b"".join(pieces[n + 1 :])
            return done[0], rest
    raise AssertionError("the header never completed")


@pytest.mark.parametrize("piece", [None, 1, 3, 7])
@pytest.mark.parametrize("make", [v1, v2], ids=["v1", "v2"])
def test_ipv4_header_in_any_pieces_gives_the_client_and_the_bytes_after(make, piece) -> None:
    header, rest = read(make("203.0.113.7", "192.0.2.1", 51000, 2222) + b"SSH-2.0-x\r\n", piece=piece)
    assert header.source == IPv4Address("TCP", "203.0.113.7", 51000)
    assert header.destination == IPv4Address("TCP", "192.0.2.1", 2222)
    assert rest == b"SSH-2.0-x\r\n"


@pytest.mark.parametrize("make", [v1, v2], ids=["v1", "v2"])
def test_ipv6_header_gives_the_address_written_canonically(make) -> None:
    header, _ = read(make("2001:db8:0:0:0:0:0:7", sport=4000))
    assert header.source == IPv6Address("TCP", "2001:db8::7", 4000)


@pytest.mark.parametrize(
    "data",
    [v2_local(), b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", V2_SIGNATURE + b"\x21\x00\x00\x00"],
    ids=["v2-local", "v1-unknown", "v1-unknown-with-addresses", "v2-unspec"],
)
def test_local_and_unknown_headers_name_no_client(data: bytes) -> None:
    header, rest = read(data + b"after")
    assert (header.source, header.destination, rest) == (None, None, b"after")


def test_v2_tlvs_after_the_addresses_are_skipped() -> None:
    tlvs = b"\x04\x00\x03abc" + b"\x05\x00\x10" + b"u" * 16  # NOOP, UNIQUE_ID
    header, rest = read(v2("198.51.100.9", tlvs=tlvs) + b"SSH-")
    assert header.source == IPv4Address("TCP", "198.51.100.9", 51000) and rest == b"SSH-"


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n", "an SSH version line instead of a PROXY header"),
        (b"GET / HTTP/1.0\r\n", "instead of a PROXY header"),
        (b"PROXZ TCP4", "instead of a PROXY header"),
        (b"\r\n\r\n\x00\r\nQUIX\n", "instead of a PROXY header"),
        (b"\x00", "instead of a PROXY header"),
        (b"PROXY TCP4 evil.example 192.0.2.1 1 2\r\n", "bad IPv4 address"),
        (b"PROXY TCP4 010.0.0.1 192.0.2.1 1 2\r\n", "bad IPv4 address"),  # octal-looking: ambiguous
        (b"PROXY TCP4 2001:db8::1 192.0.2.1 1 2\r\n", "bad IPv4 address"),
        (b"PROXY TCP6 10.0.0.1 2001:db8::1 1 2\r\n", "bad IPv6 address"),
        (b"PROXY TCP4 10.0.0.1 192.0.2.1 +1 2\r\n", "bad port"),
        (b"PROXY TCP4 10.0.0.1 192.0.2.1 1_0 2\r\n", "bad port"),
        (b"PROXY TCP4 10.0.0.1 192.0.2.1 65536 2\r\n", "bad port"),
        (b"PROXY TCP4 10.0.0.1 192.0.2.1 01 2\r\n", "bad port"),
        (b"PROXY TCP4 10.0.0.1 192.0.2.1 1 2 extra\r\n", "malformed v1"),
        (b"PROXY TCP4 10.0.0.1 192.0.2.1 1\r\n", "malformed v1"),
        (b"PROXY UDP4 10.0.0.1 192.0.2.1 1 2\r\n", "malformed v1"),
        (b"PROXY TCP4 10.0.0.1\n", "stray line feed"),
        (b"proxy TCP4 10.0.0.1 192.0.2.1 1 2\r\n", "instead of a PROXY header"),  # lowercase
        (b"PROXY tcp4 10.0.0.1 192.0.2.1 1 2\r\n", "malformed v1"),
        (b"PROXY  TCP4 10.0.0.1 192.0.2.1 1 2\r\n", "malformed v1"),  # two spaces
        (b"PROXY TCP4 10.0.0.1  192.0.2.1 1 2\r\n", "malformed v1"),
        (b"PROXY TCP4 10.0.0.1 192.0.2.1 1 2 \r\n", "malformed v1"),  # a trailing space
        (b"PROXY TCP4 10.0.0.1 192.0.2.1 1 2\rSSH-2.0-x\r\n", "malformed v1"),  # a lone CR
        (b"PROXY TCP4 10.0.0.1 192.0.2.1 1 2\x00\r\n", "malformed v1"),
        (b"PROXY TCP4 010.000.000.001 192.0.2.1 1 2\r\n", "bad IPv4 address"),  # leading zeros
        (b"PROXY TCP6 ::ffff:10.0.0.1 10.0.0.2 1 2\r\n", "bad IPv6 address"),  # one end IPv4
        (b"PROXY TCP4 10.0.0.1 192.0.2.1 1 " + b"2" * 74 + b"\r\n", f"longer than {MAX_V1_HEADER}"),  # 108
        (b"PROXY " + b"1" * (MAX_V1_HEADER - 6), f"longer than {MAX_V1_HEADER} bytes"),
        (v2("10.0.0.1", command=0x22), "unknown command 2"),
        (V2_SIGNATURE + b"\x11\x11\x00\x0c", "version 1"),
        (v2("10.0.0.1", family=0x12), "non-TCP"),  # UDP
        (V2_SIGNATURE + b"\x21\x31\x00\xd8" + b"/tmp/sock".ljust(216, b"\0"), "non-TCP"),  # UNIX
        (V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\x0a\x00\x00\x01", "malformed v2"),  # too short
        (V2_SIGNATURE + b"\x21\x21\x00\x0c" + bytes(12), "malformed v2"),  # IPv6 in 12 bytes
    ],
)
def test_anything_but_a_good_header_is_refused_with_a_reason(data: bytes, why: str) -> None:
    with pytest.raises(ProxyHeaderError, match=why.replace("+", r"\+")):
        read(data, piece=None)


def test_an_oversized_v2_header_is_refused_at_its_16th_byte() -> None:
    reader = ProxyHeaderReader()
    claim = v2_claiming(65535)
    assert reader.feed(claim[:15]) is None
    with pytest.raises(ProxyHeaderError, match=f"of {65535 + 16} bytes \\(at most {MAX_V2_HEADER}\\)"):
        reader.feed(claim[15:16])


def test_the_largest_v2_header_accepted_is_max_v2_header() -> None:
    tlvs = b"\x04" + (MAX_V2_HEADER - 16 - 12 - 3).to_bytes(2, "big")
    tlvs += b"\0" * (MAX_V2_HEADER - 16 - 12 - 3)
    data = v2("10.0.0.1", tlvs=tlvs)
    assert len(data) == MAX_V2_HEADER
    assert read(data)[0].source == IPv4Address("TCP", "10.0.0.1", 51000)
    with pytest.raises(ProxyHeaderError, match="at most"):
        read(v2("10.0.0.1", tlvs=tlvs + b"\0"))


def test_an_incomplete_header_is_held_and_never_more_than_the_bound() -> None:
    reader = ProxyHeaderReader()
    data = v2_claiming(MAX_V2_HEADER - 16) + b"\0" * (MAX_V2_HEADER - 17)
    for i in range(len(data)):
        assert reader.feed(data[i : i + 1]) is None
    assert len(reader.buffered) == MAX_V2_HEADER - 1


@pytest.mark.parametrize(
    "source",
    [
        b"::1%a\nFailed_password_for_root_from_6.6.6.6",  # a log line of its own
        b"fe80::1%eth0",
        b"2001:db8::7%\x1b[31m",  # a terminal escape
        b"::1%6.6.6.6",  # another address after the client's
    ],
    ids=["newline", "interface", "escape", "address"],
)
def test_a_v1_ipv6_address_with_a_scope_id_is_refused(source: bytes) -> None:
    """Python's ipaddress (3.9+) takes `ADDR%ANYTHING` as an IPv6 address with a scope id, and
    writes it back with the scope: the text would reach the log lines and the audit."""
    with pytest.raises(ProxyHeaderError, match="bad IPv6 address"):
        read(b"PROXY TCP6 " + source + b" 2001:db8::1 51000 2222\r\n")
    with pytest.raises(ProxyHeaderError, match="bad IPv6 address"):
        read(b"PROXY TCP6 2001:db8::7 " + source + b" 51000 2222\r\n")


@pytest.mark.parametrize("make", [v1, v2], ids=["v1", "v2"])
def test_an_ipv4_mapped_source_is_the_ipv4_client(make) -> None:
    """HAProxy on a dual-stack `bind :::22` names an IPv4 client `::ffff:a.b.c.d` (TCP6); the
    client is the IPv4 address, as sshd and the socket of a direct connection name it (Python
    3.11 writes it `::ffff:cb00:7107`, an address no log reader would take for 203.0.113.7)."""
    header, _ = read(make("::ffff:203.0.113.7", "::ffff:192.0.2.1", sport=4000))
    assert header.source == IPv4Address("TCP", "203.0.113.7", 4000)
    assert header.destination == IPv4Address("TCP", "192.0.2.1", 2222)
