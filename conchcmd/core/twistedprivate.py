"""Every use of a private name of Twisted's core (the counterpart, outside Conch, of
`conchcmd.wire.conchprivate`), behind public names of our own.

Twisted checks an endpoint description only by building the endpoint, which for `systemd:` looks the
inherited socket up, and keeps a TCP endpoint's port and interface unchecked until it listens; the
check of `listen` without listening (`conchcmd.core.endpoints`) therefore reads the description
parser, the `systemd:` parser, the haproxy unwrapping and the TCP endpoints' fields, all private.
It does so only here, so a new Twisted breaks here, where tests/unit/test_conch_contract.py names
what to re-synchronise, and nowhere else.

The PROXY protocol parsers (`twisted.protocols.haproxy._v1parser`, `._v2parser`) are in
private modules; its public `haproxy:` endpoint wraps the protocol in a way conchcmd cannot use
(see `conchcmd.server.proxied`). conchcmd reads headers with those parsers, here.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, _parse, _SystemdParser
from twisted.internet.interfaces import IAddress, IStreamServerEndpoint
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._parser import unparseEndpoint
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser

#: The first bytes of a v2 header (its "signature"), and of a v1 header.
PROXY_V2_SIGNATURE: bytes = V2Parser.PREFIX
PROXY_V1_SIGNATURE: bytes = V1Parser.PROXYSTR + b" "


class ProxyParseError(ValueError):
    """Twisted's parser refused the header (or raised on it: its v1 parser lets `int()` fail)."""


def parse_proxy_v1(line: bytes) -> tuple[IAddress | None, IAddress | None]:
    """The source and destination of a v1 header line (without its CRLF), as Twisted's
    `V1Parser.parse` reads them; (None, None) for `PROXY UNKNOWN`."""
    try:
        info = V1Parser.parse(line)
    except (InvalidProxyHeader, ValueError, UnicodeDecodeError) as e:
        raise ProxyParseError(type(e).__name__) from None
    return info.source, info.destination


def parse_proxy_v2(header: bytes) -> tuple[IAddress | None, IAddress | None]:
    """The source and destination of a whole v2 header (16 bytes and its length), as Twisted's
    `V2Parser.parse` reads them; (None, None) for LOCAL and for the UNSPEC family or protocol."""
    try:
        info = V2Parser.parse(header)
    except (InvalidProxyHeader, KeyError, ValueError, UnicodeDecodeError) as e:
        raise ProxyParseError(type(e).__name__) from None
    return info.source, info.destination


def split_description(description: str) -> tuple[list[str], dict[str, str]]:
    """An endpoint description's positional and keyword arguments, as `serverFromString` splits
    it (Twisted's `_parse`, which also undoes the `\\:` escapes)."""
    args, kwargs = _parse(description)
    return list(args), dict(kwargs)


def join_description(args: list[str], kwargs: dict[str, str]) -> str:
    """The description of those arguments again, escaped (the haproxy parser's `unparseEndpoint`,
    with which it unwraps `haproxy:DESCRIPTION`)."""
    return unparseEndpoint(tuple(args), kwargs)


class _EveryDescriptor:
    """Any index or name of an inherited descriptor, present (as -1)."""

    def __getitem__(self, key: object) -> int:
        return -1


class _AnyInheritedSockets:
    """Stands in for systemd's inherited sockets (twisted.python.systemd.ListenFDs): every index and
    name is there, so that the description itself is checked without the sockets."""

    def inheritedDescriptors(self) -> _EveryDescriptor:
        return _EveryDescriptor()

    def inheritedNamedDescriptors(self) -> _EveryDescriptor:
        return _EveryDescriptor()


class _SystemdDescriptionParser(_SystemdParser):
    """Twisted's `systemd:` parser, which looks the inherited socket up while parsing (in its
    private `_sddaemon`); with every socket present it checks the rest (domain, exactly one of
    index and name) as it would when serving, and adopts nothing."""

    _sddaemon = _AnyInheritedSockets()  # type: ignore[assignment]


def systemd_endpoint_unadopted(reactor: Any, args: list[str], kwargs: dict[str, str]) -> IStreamServerEndpoint:
    """The endpoint Twisted's `systemd:` parser makes of `systemd:ARGS` (without the `systemd`),
    as if systemd had passed every socket: it raises what the parser raises for a bad description."""
    return _SystemdDescriptionParser().parseStreamServer(reactor, *args, **kwargs)


def tcp_port_and_interface(endpoint: object) -> tuple[int, str] | None:
    """The port and interface a `tcp:` or `tcp6:` server endpoint will bind (as parsed, unchecked:
    Twisted's private `_port` and `_interface`); None for any other endpoint."""
    if isinstance(endpoint, TCP4ServerEndpoint | TCP6ServerEndpoint):
        return endpoint._port, endpoint._interface
    return None
