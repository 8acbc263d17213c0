"""Which addresses an sshd-style address pattern list admits, as ranges, and which of them are
globally reachable: so that `doctor` can tell a `proxy_from` that lets the internet in from one
that names a site's own load balancers, whatever the width of its CIDR blocks or wildcards."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator

from conchcmd.core.hostmatch import addr_pton_cidr

#: An inclusive range of addresses of one family, as integers.
Range = tuple[int, int]

#: Address space that is not globally reachable (IANA special-purpose registries, plus multicast,
#: which no TCP peer has). Everything else, reserved space included, counts as global: strict.
_NOT_GLOBAL = {
    4: (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/29",
        "192.0.0.170/31",
        "192.0.2.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
    ),
    6: (
        "::/128",
        "::1/128",
        "::ffff:0:0/96",  # IPv4-mapped: matched as the IPv4 address they are
        "64:ff9b:1::/48",
        "100::/64",
        "2001:2::/48",
        "2001:db8::/32",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
    ),
}
_BITS = {4: 32, 6: 128}


def _network(text: str) -> Range:
    net = ipaddress.ip_network(text)
    return int(net.network_address), int(net.broadcast_address)


def _union(ranges: Iterable[Range]) -> list[Range]:
    merged: list[Range] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def _subtract(ranges: list[Range], removed: list[Range]) -> list[Range]:
    result = []
    for lo, hi in ranges:
        for rlo, rhi in removed:
            if rhi < lo or rlo > hi:
                continue
            if rlo > lo:
                result.append((lo, rlo - 1))
            lo = rhi + 1
            if lo > hi:
                break
        if lo <= hi:
            result.append((lo, hi))
    return result


def _prefix_ranges(version: int, groups: list[int], partial: list[int]) -> Iterator[Range]:
    """The addresses whose first fields are `groups`, then one of `partial` (fields of 8 or 16 bits)."""
    width = 8 if version == 4 else 16
    bits = _BITS[version]
    base = 0
    for g in groups:
        base = (base << width) | g
    for value in partial:
        used = width * (len(groups) + 1)
        lo = ((base << width) | value) << (bits - used)
        yield lo, lo + (1 << (bits - used)) - 1


def _wildcard_ranges(pattern: str) -> dict[int, list[Range]]:
    """Every address whose text (as matched: IPv4 dotted, IPv6 compressed, lower case) a `*`/`?`
    wildcard might match, over-estimated from its literal start: `10.*` -> 10.0.0.0/8, `1*` ->
    1/8, 10/8 to 19/8, 100/8 to 199/8 (and the IPv6 addresses written 1..., 1x..., ...)."""
    cut = min((i for i, c in enumerate(pattern) if c in "*?"), default=len(pattern))
    literal = pattern[:cut].lower()
    found: dict[int, list[Range]] = {4: [], 6: []}
    if set(literal) <= set("0123456789."):
        *complete, partial = literal.split(".")
        if len(complete) < 4 and all(f.isdigit() and str(int(f)) == f and int(f) < 256 for f in complete):
            octets = [v for v in range(256) if str(v).startswith(partial)]
            found[4] = list(_prefix_ranges(4, [int(f) for f in complete], octets))
    if set(literal) <= set("0123456789abcdef:"):
        if "::" in literal:  # zero fields compressed: only the fields before it are known
            literal = literal.split("::", 1)[0]
            literal = literal + ":" if literal else ""
        *complete, partial = literal.split(":")
        if complete == [""]:  # text starting with ":" (`::...`): the first field is 0
            complete, partial = [], "0"
        if len(complete) < 8 and all(0 < len(f) <= 4 for f in complete) and len(partial) <= 4:
            fields = [v for v in range(1 << 16) if format(v, "x").startswith(partial)] if partial else [-1]
            groups = [int(f, 16) for f in complete]
            if fields == [-1]:
                found[6] = [_network_of_prefix(6, groups)]
            else:
                found[6] = _union(_prefix_ranges(6, groups, fields))
    return found


def _network_of_prefix(version: int, groups: list[int]) -> Range:
    if not groups:
        return 0, (1 << _BITS[version]) - 1
    return next(_prefix_ranges(version, groups[:-1], groups[-1:]))


def admitted(patterns: Iterable[str]) -> dict[int, list[Range]]:
    """The addresses (by family: 4, 6) that addr_match_list admits under these patterns, at most:
    a wildcard counts for every address its start allows, and a negated wildcard (but `!*`) removes
    nothing, so that the answer errs towards admitting more, never less."""
    allowed: dict[int, list[Range]] = {4: [], 6: []}
    refused: dict[int, list[Range]] = {4: [], 6: []}
    for entry in patterns:
        negated = entry.startswith("!")
        body = entry[1:] if negated else entry
        network = addr_pton_cidr(body)
        if isinstance(network, tuple):
            address, masklen = network
            size = 1 << (address.max_prefixlen - masklen)
            (refused if negated else allowed)[address.version].append((int(address), int(address) + size - 1))
        elif negated and set(body) == {"*"}:  # `!*` refuses every address
            refused = {v: [(0, (1 << _BITS[v]) - 1)] for v in (4, 6)}
        elif not negated and ("*" in body or "?" in body):
            for family, ranges in _wildcard_ranges(body).items():
                allowed[family].extend(ranges)
    return {v: _subtract(_union(allowed[v]), _union(refused[v])) for v in (4, 6)}


def global_ranges(patterns: Iterable[str]) -> list[str]:
    """The globally reachable addresses the patterns may admit, as `FIRST-LAST` texts (empty:
    none)."""
    found = []
    for version, ranges in admitted(patterns).items():
        not_global = _union(_network(n) for n in _NOT_GLOBAL[version])
        for lo, hi in _subtract(ranges, not_global):
            kind = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
            first, last = kind(lo), kind(hi)
            found.append(str(first) if lo == hi else f"{first}-{last}")
    return found
