"""OpenSSH's address pattern lists (`from=` in authorized_keys, `source-address` in certificates)."""

from __future__ import annotations

import fnmatch
import ipaddress
import re

_IPV4_WILDCARD = re.compile(r"[0-9.*?]+")
_IPV6_WILDCARD = re.compile(r"[0-9A-Fa-f:.*?]*:[0-9A-Fa-f:.*?]*")  # a colon: not a host name


class PatternError(ValueError):
    """A pattern conchcmd will not match (such as a host name it would have to resolve)."""


def check_pattern(pattern: str, *, wildcards: bool = True) -> None:
    """Raise PatternError unless `pattern` is an address, a CIDR block, or an address wildcard."""
    body = pattern[1:] if pattern.startswith("!") else pattern
    if not body:
        raise PatternError("empty pattern")
    try:
        ipaddress.ip_network(body, strict=False)
        return
    except ValueError:
        pass
    if (
        wildcards
        and ("*" in body or "?" in body)
        and (_IPV4_WILDCARD.fullmatch(body) or _IPV6_WILDCARD.fullmatch(body))
    ):
        return
    raise PatternError(f"{pattern!r} is not an address, CIDR block or address wildcard (host names are not resolved)")


def _normalise(host: str) -> str:
    """An IPv4-mapped IPv6 peer (::ffff:a.b.c.d) is matched as the IPv4 address it is."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _matches(host: str, pattern: str) -> bool:
    try:
        network = ipaddress.ip_network(pattern, strict=False)
    except ValueError:
        return fnmatch.fnmatchcase(host.lower(), pattern.lower())
    try:
        return ipaddress.ip_address(host) in network
    except ValueError:
        return False


def match_address_list(host: str, patterns: list[str]) -> bool:
    """OpenSSH semantics: a matching negated pattern refuses outright; else any match admits."""
    host = _normalise(host)
    admitted = False
    for pattern in patterns:
        if pattern.startswith("!"):
            if _matches(host, pattern[1:]):
                return False
        elif _matches(host, pattern):
            admitted = True
    return admitted


def split_patterns(value: str, *, wildcards: bool = True) -> list[str]:
    """Split and validate a comma-separated pattern list."""
    patterns = [p.strip() for p in value.split(",")]
    for pattern in patterns:
        check_pattern(pattern, wildcards=wildcards)
    return patterns
