"""The PROXY protocol header (v1 text, v2 binary) a load balancer sends before the client's bytes,
read incrementally and within bounds: `ProxyHeaderReader`.

Twisted's parsers (through `conchcmd.core.twistedprivate`) read the fields; this module decides
how much may be buffered and what is an address. Twisted's v1 parser takes any text as a host
and any `int()` as a port, its v2 parser reads whatever length the header claims (up to 64 KiB),
and both need the whole signature in the first read: here a header may arrive in any number of
pieces, v2 claiming more than MAX_V2_HEADER is refused at its 16th byte, and addresses and
ports are checked as the specification writes them.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress

from conchcmd.core.twistedprivate import (
    PROXY_V1_SIGNATURE,
    PROXY_V2_SIGNATURE,
    ProxyParseError,
    parse_proxy_v1,
    parse_proxy_v2,
)

#: The longest v1 header, CRLF included (the specification's 107 bytes).
MAX_V1_HEADER = 107
#: The longest v2 header accepted: 16 bytes, the addresses (216 for UNIX sockets), and room for
#: the TLVs cloud load balancers add (AWS's VPC endpoint id, ...); a header may claim 64 KiB.
MAX_V2_HEADER = 1024
_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")
_V2_PROXY_COMMAND = 0x21  # version 2, PROXY (0x20 is LOCAL)
_V2_TCP = (0x11, 0x21)  # TCP over IPv4, TCP over IPv6


class ProxyHeaderError(ValueError):
    """The bytes are not an acceptable PROXY header; the message says why, for the log."""


@dataclass(frozen=True)
class ProxyHeader:
    """A complete header: the client's address (None for a LOCAL or UNKNOWN header: the
    proxy's own connection, a health check), the address it connected to, and the version."""

    version: int
    source: IPv4Address | IPv6Address | None
    destination: IPv4Address | IPv6Address | None


class ProxyHeaderReader:
    """Feed it the connection's bytes until it returns the header and what followed it."""

    def __init__(self) -> None:
        self.buffered = b""

    def feed(self, data: bytes) -> tuple[ProxyHeader, bytes] | None:
        """The header and the bytes after it once complete; None while more is needed (at most
        MAX_V2_HEADER bytes are then held). Raises ProxyHeaderError for anything else."""
        buf = self.buffered + data
        if buf[:1] == PROXY_V2_SIGNATURE[:1]:
            result = self._v2(buf)
        elif buf[:1] == PROXY_V1_SIGNATURE[:1]:
            result = self._v1(buf)
        else:
            raise ProxyHeaderError(f"{_described(buf)} instead of a PROXY header")
        if result is None:
            self.buffered = buf
            return None
        self.buffered = b""
        return result

    def _v1(self, buf: bytes) -> tuple[ProxyHeader, bytes] | None:
        signature = PROXY_V1_SIGNATURE
        if buf[: len(signature)] != signature[: len(buf)]:
            raise ProxyHeaderError(f"{_described(buf)} instead of a PROXY header")
        end = buf.find(b"\r\n", 0, MAX_V1_HEADER)
        if end < 0:
            if len(buf) >= MAX_V1_HEADER:
                raise ProxyHeaderError(f"a v1 PROXY header longer than {MAX_V1_HEADER} bytes")
            if b"\n" in buf or b"\0" in buf:
                raise ProxyHeaderError("a v1 PROXY header with a stray line feed or NUL")
            return None
        line = buf[:end]
        return _v1_header(line), buf[end + 2 :]

    def _v2(self, buf: bytes) -> tuple[ProxyHeader, bytes] | None:
        signature = PROXY_V2_SIGNATURE
        if buf[: len(signature)] != signature[: len(buf)]:
            raise ProxyHeaderError(f"{_described(buf)} instead of a PROXY header")
        if len(buf) < 16:
            return None
        if buf[12] >> 4 != 2:
            raise ProxyHeaderError(f"PROXY protocol version {buf[12] >> 4} (only 1 and 2 exist)")
        size = 16 + int.from_bytes(buf[14:16], "big")
        if size > MAX_V2_HEADER:
            raise ProxyHeaderError(f"a v2 PROXY header of {size} bytes (at most {MAX_V2_HEADER})")
        if len(buf) < size:
            return None
        return _v2_header(buf[:size]), buf[size:]


def _v1_header(line: bytes) -> ProxyHeader:
    fields = line.split(b" ")
    if fields[1:2] == [b"UNKNOWN"]:
        return ProxyHeader(1, None, None)  # whatever follows is to be ignored (the specification)
    if len(fields) != 6 or fields[1] not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError("a malformed v1 PROXY header")
    try:
        source, destination = parse_proxy_v1(line)
    except ProxyParseError as e:
        raise ProxyHeaderError(f"a malformed v1 PROXY header ({e})") from None
    # Twisted's parser takes any text as a host and int() of any text as a port.
    version = 4 if fields[1] == b"TCP4" else 6
    for host, port in ((fields[2], fields[4]), (fields[3], fields[5])):
        if not _PORT.fullmatch(port) or int(port) > 65535:
            raise ProxyHeaderError("a v1 PROXY header with a bad port")
        if _ip(host, version) is None:
            raise ProxyHeaderError(f"a v1 PROXY header with a bad IPv{version} address")
    return ProxyHeader(1, _ip_address(source), _ip_address(destination))


def _v2_header(header: bytes) -> ProxyHeader:
    command, family = header[12], header[13]
    if command != _V2_PROXY_COMMAND:
        if command == 0x20:
            return ProxyHeader(2, None, None)  # LOCAL: the proxy's own connection
        raise ProxyHeaderError(f"a v2 PROXY header with unknown command {command & 0x0F}")
    if family == 0x00:
        return ProxyHeader(2, None, None)  # UNSPEC: the specification says to ignore the addresses
    if family not in _V2_TCP:
        raise ProxyHeaderError(f"a v2 PROXY header for a non-TCP connection (family/protocol {family:#04x})")
    try:
        source, destination = parse_proxy_v2(header)
    except ProxyParseError as e:
        raise ProxyHeaderError(f"a malformed v2 PROXY header ({e})") from None
    return ProxyHeader(2, _ip_address(source), _ip_address(destination))


def _ip(text: bytes, version: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """`text` as an address of IP `version`, written as the specification writes it: without
    an IPv6 scope id (`ADDR%TEXT`, which ipaddress takes with any text after the `%`, newlines
    included, and writes back: it would reach the log lines and the audit)."""
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        return None
    return address if address.version == version else None


def _ip_address(address: IAddress | None) -> IPv4Address | IPv6Address:
    """Twisted's address with its host written canonically (its v2 parser writes IPv6 hosts
    uncompressed, `0:0:0:0:0:0:0:1`), as the socket's addresses are. An IPv4-mapped IPv6
    address (HAProxy's name for an IPv4 client on a dual-stack listener) is that IPv4 address,
    as sshd writes it: Python 3.11 would write `::ffff:cb00:7107` for 203.0.113.7."""
    if isinstance(address, IPv4Address | IPv6Address):
        try:
            ip = ipaddress.ip_address(address.host)
        except ValueError:
            raise ProxyHeaderError("a PROXY header with a bad address") from None
        if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
            raise ProxyHeaderError("a PROXY header with a bad address")
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return IPv4Address("TCP", str(ip.ipv4_mapped), address.port)
        return type(address)("TCP", str(ip), address.port)
    raise ProxyHeaderError("a PROXY header without a TCP address")


def _described(buf: bytes) -> str:
    """What a connection sent instead of a header, for the log line (no client text in it)."""
    if buf.startswith(b"SSH-"):
        return "an SSH version line"
    return f"{len(buf)} bytes of something else"
