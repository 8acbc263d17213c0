"""PROXY protocol headers as a load balancer writes them (v1 text, v2 binary), built by hand from
the specification so that the tests do not read them with the parser under test."""

from __future__ import annotations

import ipaddress
import struct

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(source: str, destination: str = "192.0.2.1", sport: int = 51000, dport: int = 2222) -> bytes:
    """`PROXY TCP4|TCP6 SRC DST SPORT DPORT\\r\\n`."""
    family = "TCP6" if ":" in source else "TCP4"
    if ":" in source and ":" not in destination:
        destination = "2001:db8::1"
    return f"PROXY {family} {source} {destination} {sport} {dport}\r\n".encode()


def v2(
    source: str,
    destination: str = "192.0.2.1",
    sport: int = 51000,
    dport: int = 2222,
    *,
    command: int = 0x21,
    family: int | None = None,
    tlvs: bytes = b"",
) -> bytes:
    """A v2 header: PROXY (0x21) or LOCAL (0x20), TCP over IPv4 (0x11) or IPv6 (0x21), with TLVs."""
    src = ipaddress.ip_address(source)
    if src.version == 6 and ipaddress.ip_address(destination).version == 4:
        destination = "2001:db8::1"
    dst = ipaddress.ip_address(destination)
    if family is None:
        family = 0x11 if src.version == 4 else 0x21
    body = src.packed + dst.packed + struct.pack("!HH", sport, dport) + tlvs
    return V2_SIGNATURE + bytes((command, family)) + struct.pack("!H", len(body)) + body


def v2_local() -> bytes:
    """What HAProxy sends on its health checks with `check-send-proxy`: LOCAL, no address."""
    return V2_SIGNATURE + b"\x20\x00\x00\x00"


def v2_claiming(length: int) -> bytes:
    """The 16 fixed bytes of a v2 header that claims `length` more."""
    return V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", length)
