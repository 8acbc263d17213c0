"""Listen endpoint descriptions (`listen`, `serve --listen`), checked with Twisted's own parser
without listening, so that a description `serve` would reject is a configuration error at load,
the same in `serve`, `check-config` and `doctor`."""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.endpoints import serverFromString

from conchcmd.core.twistedprivate import (
    join_description,
    split_description,
    systemd_endpoint_unadopted,
    tcp_port_and_interface,
)


class _ParsingOnly:
    """The reactor the parsed endpoints are given: they only keep it, since nothing here listens."""


def endpoint_problem(description: str) -> str | None:
    """Why Twisted cannot make a server endpoint of `description`, or None if it can.

    `systemd:` endpoints are checked without the sockets systemd passes: those are needed only to
    listen. `haproxy:` wraps another description, which is checked the same way.
    """
    reactor: Any = _ParsingOnly()
    try:
        args, kwargs = split_description(description)
        while args and args[0].lower() == "haproxy":  # as Twisted's haproxy parser unwraps it
            description = join_description(args[1:], kwargs)
            args, kwargs = split_description(description)
        if args and args[0].lower() == "systemd":
            endpoint = systemd_endpoint_unadopted(reactor, args[1:], kwargs)
        else:
            endpoint = serverFromString(reactor, description)
    except Exception as e:  # Twisted's parsers raise whatever their arguments cause
        return str(e) or type(e).__name__
    tcp = tcp_port_and_interface(endpoint)
    if tcp is not None:
        # Twisted parses both as given; bind() refuses them only when serving.
        port, interface = tcp
        if not 0 <= port <= 65535:
            return f"port {port} is not between 0 and 65535"
        if interface and _looks_numeric(interface):
            try:
                ipaddress.ip_address(interface.split("%", 1)[0])
            except ValueError:
                return f"interface {interface!r} is not an IP address"
    return None


def _looks_numeric(interface: str) -> bool:
    """An address written as numbers (dots, colons, hex digits): a host name it cannot be."""
    return all(c in "0123456789abcdefABCDEF.:" for c in interface.split("%", 1)[0]) and any(
        c in ".:" for c in interface
    )


def proxied_description(description: str) -> str | None:
    """The endpoint a `haproxy:DESCRIPTION` wraps (the text after `haproxy:`, escapes and all:
    Twisted's parser unwraps it to the same), or None for a description that is not `haproxy:`.
    conchcmd listens on it itself, reading the PROXY header with `conchcmd.server.proxied`."""
    kind, colon, inner = description.partition(":")
    return inner if colon and kind.lower() == "haproxy" else None


def proxy_problem(description: str) -> str | None:
    """Why conchcmd will not serve a `haproxy:` description Twisted accepts: one wrapped in
    another (two PROXY headers, the first of them from anyone)."""
    inner = proxied_description(description)
    if inner is not None and proxied_description(inner) is not None:
        return "a haproxy: endpoint inside another: one PROXY header is read"
    return None
