"""OpenSSH's address pattern lists, ported from sshd (match.c, addrmatch.c) so that `from=` in
authorized_keys and `source-address` in certificates decide exactly as sshd (UseDNS no) does.

One deliberate difference: a `from=` pattern that is neither an address, a CIDR block nor an
address wildcard (a host name, say) makes conchcmd refuse the line (`check_pattern`), where sshd
would compare it, as a wildcard, with the client's address.
"""

from __future__ import annotations

import ipaddress
import re
import socket

_IPV4_WILDCARD = re.compile(r"[0-9.*?]+")
_IPV6_WILDCARD = re.compile(r"[0-9A-Fa-f:.*?]*:[0-9A-Fa-f:.*?]*")  # a colon: not a host name
_CIDR_CHARS = frozenset("0123456789abcdefABCDEF.:/")
_INET6_ADDRSTRLEN = 46
_ADDRBUF = 64  # addr_pton_cidr's buffer
_SUBPATTERN_MAX = 1024  # match_pattern_list's buffer

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
#: addr_pton_cidr's results besides (address, mask length).
INVALID, INCONSISTENT = -1, -2


class PatternError(ValueError):
    """A pattern conchcmd will not match (such as a host name it would have to resolve)."""


def addr_pton(text: str) -> Address | None:
    """getaddrinfo(AI_NUMERICHOST), as sshd parses addresses (so `127.1` is 127.0.0.1)."""
    if not text or "\0" in text:
        return None
    try:
        info = socket.getaddrinfo(text, None, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError, ValueError):
        return None
    if not info:
        return None
    return ipaddress.ip_address(str(info[0][4][0]).split("%", 1)[0])


def addr_pton_cidr(text: str) -> tuple[Address, int] | int:
    """ADDRESS[/MASKLEN] -> (address, mask length), INVALID, or INCONSISTENT (host bits set,
    mask too long for the family)."""
    if len(text.encode("utf-8", "surrogateescape")) >= _ADDRBUF:
        return INVALID
    address_text, slash, mask_text = text.partition("/")
    masklen = None
    if slash:
        if not (mask_text.isascii() and mask_text.isdigit()) or int(mask_text) > 128:
            return INVALID
        masklen = int(mask_text)
    address = addr_pton(address_text)
    if address is None:
        return INVALID
    bits = address.max_prefixlen
    if masklen is None:
        masklen = bits
    if masklen > bits:
        return INCONSISTENT
    if int(address) & ((1 << (bits - masklen)) - 1):
        return INCONSISTENT
    return address, masklen


def _in_network(address: Address, network: tuple[Address, int]) -> bool:
    base, masklen = network
    if address.version != base.version:
        return False
    shift = address.max_prefixlen - masklen
    return int(address) >> shift == int(base) >> shift


def match_pattern(string: str, pattern: str) -> bool:
    """match_pattern(): `*` is any run of characters, `?` any one; everything else is literal.

    The classic greedy matcher with one backtrack point (the last `*`): at most
    len(string) * len(pattern) steps, where a regex backtracks exponentially on `*1*1*1...`.
    """
    s = p = 0
    star = -1  # index in pattern just after the last `*` seen
    resume = 0  # where in string that `*` currently stops
    while s < len(string):
        if p < len(pattern) and pattern[p] == "*":
            star, resume = p + 1, s
            p += 1
        elif p < len(pattern) and (pattern[p] == "?" or pattern[p] == string[s]):
            s += 1
            p += 1
        elif star >= 0:
            resume += 1  # let the last `*` take one more character
            s, p = resume, star
        else:
            return False
    return all(c == "*" for c in pattern[p:])


def match_pattern_list(string: str, patterns: str, *, lower: bool) -> int:
    """match_pattern_list(): 1 for a match, -1 for a negated match, 0 for none."""
    got_positive = 0
    i, n = 0, len(patterns)
    while i < n:
        negated = patterns[i] == "!"
        if negated:
            i += 1
        end = patterns.find(",", i)
        end = n if end < 0 else end
        sub = patterns[i:end]
        if len(sub) >= _SUBPATTERN_MAX - 1:
            return 0
        i = end + 1 if end < n else end
        if lower:
            sub = "".join(c.lower() if "A" <= c <= "Z" else c for c in sub)
        if match_pattern(string, sub):
            if negated:
                return -1
            got_positive = 1
    return got_positive


def addr_match_list(address: str | None, patterns: str) -> int:
    """addr_match_list(): 1 match, 0 none, -1 negated match, -2 a malformed entry."""
    parsed = None
    if address is not None:
        parsed = addr_pton(address)
        if parsed is None:
            return 0
    result = 0
    for entry in patterns.split(","):
        negated = entry.startswith("!")
        if negated:
            entry = entry[1:]
        if not entry:
            return -2
        network = addr_pton_cidr(entry)
        if network == INCONSISTENT:
            return -2
        if isinstance(network, tuple):
            matched = parsed is not None and _in_network(parsed, network)
        else:  # not an address: compare as a wildcard with the address text
            matched = address is not None and match_pattern(address, entry)
        if matched:
            if negated:
                return -1
            result = 1
    return result


def match_host_and_ip(host: str, address: str, patterns: str) -> int:
    """match_host_and_ip(): 1 allowed, 0 not, -1 malformed list."""
    by_address = addr_match_list(address, patterns)
    if by_address == -2:
        return -1
    if by_address == -1:
        return 0
    by_name = match_pattern_list(host.lower(), patterns, lower=True)
    if by_name == -1 or (by_name == 0 and by_address == 0):
        return 0
    return 1


def addr_match_cidr_list(address: str | None, patterns: str) -> int:
    """addr_match_cidr_list() (certificate source-address): CIDR only, no wildcards, no
    negation. 1 match, 0 none (or a valid list when address is None), -1 malformed."""
    parsed = None
    if address is not None:
        parsed = addr_pton(address)
        if parsed is None:
            return 0
    result = 0
    for entry in patterns.split(","):
        if not entry or len(entry.encode("utf-8", "surrogateescape")) > _INET6_ADDRSTRLEN + 3:
            return -1
        if not set(entry) <= _CIDR_CHARS:
            result = -1
        network = addr_pton_cidr(entry)
        if not isinstance(network, tuple):
            return -1
        if parsed is not None and _in_network(parsed, network):
            result = 1
    return result


def normalise_peer(host: str) -> str:
    """An IPv4-mapped IPv6 peer (::ffff:a.b.c.d) is the IPv4 address it is, as sshd sees it."""
    if ":" not in host:
        # Not IPv6; an IPv4 address that parses is already in its canonical form (ipaddress
        # refuses leading zeros and non-ASCII digits), and one that does not is returned as is.
        return host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def check_pattern(pattern: str, *, wildcards: bool = True) -> None:
    """Raise PatternError unless `pattern` is an address, a CIDR block, or an address wildcard
    (conchcmd's deliberate difference: it does not look up or guess at host names)."""
    body = pattern[1:] if pattern.startswith("!") else pattern
    if not body:
        raise PatternError("empty pattern")
    if addr_pton_cidr(body) != INVALID:
        return
    if (
        wildcards
        and ("*" in body or "?" in body)
        and (_IPV4_WILDCARD.fullmatch(body) or _IPV6_WILDCARD.fullmatch(body))
    ):
        return
    raise PatternError(f"{pattern!r} is not an address, CIDR block or address wildcard (host names are not resolved)")


def split_patterns(value: str, *, wildcards: bool = True) -> list[str]:
    """Split a comma-separated pattern list as sshd does (no trimming) and check each entry."""
    patterns = value.split(",")
    for pattern in patterns:
        check_pattern(pattern, wildcards=wildcards)
    return patterns


def match_address_list(host: str, patterns: list[str]) -> bool:
    """Whether sshd (UseDNS no) lets `host` in under this `from=` list."""
    host = normalise_peer(host)
    return match_host_and_ip(host, host, ",".join(patterns)) == 1
