"""Every use of a private name of Twisted's core (the counterpart, outside Conch, of
`conchcmd.wire.conchprivate`), behind public names of our own.

Twisted's PROXY protocol parsers (`twisted.protocols.haproxy._v1parser`, `._v2parser`) are in
private modules; its public `haproxy:` endpoint wraps the protocol in a way conchcmd cannot use
(see `conchcmd.server.proxied`). conchcmd reads headers with the parsers, through this module
only, so a new Twisted breaks here, where tests/unit/test_conch_contract.py names what to
re-synchronise, and nowhere else.
"""

from __future__ import annotations

from twisted.internet.interfaces import IAddress
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
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
