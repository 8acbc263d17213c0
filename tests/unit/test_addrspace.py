"""Which addresses a `proxy_from` list admits, and whether any is public: every CIDR width,
wildcard and negation, not a few sample addresses (a /1 or /2 block once passed the doctor)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from conchcmd.core.addrspace import admitted, global_ranges
from conchcmd.core.config import parse_config
from conchcmd.core.hostmatch import addr_match_list
from conchcmd.edge.doctor import OK, PROBLEM, _proxies


@pytest.mark.parametrize(
    ("patterns", "first_public"),
    [
        (["128.0.0.0/1"], "128.0.0.0"),
        (["64.0.0.0/2"], "64.0.0.0"),
        (["0.0.0.0/0"], "1.0.0.0"),
        (["10.0.0.0/8", "100.0.0.0/8"], "100.0.0.0"),  # only 100.64/10 of it is carrier-grade NAT
        (["172.0.0.0/8"], "172.0.0.0"),  # 172.16/12 is private, not the rest
        (["*"], "1.0.0.0"),
        (["8.*"], "8.0.0.0"),
        (["1*"], "1.0.0.0"),  # 1.x, 10-19.x, 100-199.x
        (["11.*"], "11.0.0.0"),
        (["172.*"], "172.0.0.0"),
        (["::/0"], "::2"),
        (["2001:*"], "2001::"),
        (["2*"], "2.0.0.0"),  # also IPv6 text: 2001:4860:...
        (["0.0.0.0/0", "!0.0.0.0/1"], "128.0.0.0"),
        (["10.0.0.0/8", "!10.9.9.9", "2606:4700::/32"], "2606:4700::"),
    ],
)
def test_patterns_admitting_public_addresses_are_found(patterns: list[str], first_public: str) -> None:
    found = global_ranges(patterns)
    assert found and found[0].split("-")[0] == first_public, found
    # and the list does admit that address, as the server would decide
    assert addr_match_list(first_public, ",".join(patterns)) == 1


@pytest.mark.parametrize(
    "patterns",
    [
        ["127.0.0.1", "::1"],
        ["127.0.0.0/8"],
        ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"],
        ["10.*", "192.168.*", "172.16.*"],
        ["100.64.0.0/10", "169.254.0.0/16"],
        ["fd00::*", "fc00::/7", "fe80::/10"],
        ["0.0.0.0/0", "!0.0.0.0/1", "!128.0.0.0/1"],  # everything, then nothing again
        ["*", "!*"],
        ["10.0.0.0/8", "!10.9.9.9"],
        ["2001:db8::/32"],  # documentation
    ],
)
def test_loopback_and_private_lists_are_not_public(patterns: list[str]) -> None:
    assert global_ranges(patterns) == []


def test_negation_removes_exactly_its_block() -> None:
    ranges = admitted(["10.0.0.0/8", "!10.1.0.0/16"])[4]
    assert ranges == [
        (int(ipaddress.IPv4Address("10.0.0.0")), int(ipaddress.IPv4Address("10.0.255.255"))),
        (int(ipaddress.IPv4Address("10.2.0.0")), int(ipaddress.IPv4Address("10.255.255.255"))),
    ]
    assert admitted(["10.0.0.0/8", "!10.1.0.0/16"])[6] == []


@pytest.mark.parametrize("pattern", ["8.*", "1*", "1?.*", "10.1*", "2001:db8:*", "fd00::*", "2*", "*.1", "1.2.3.4?"])
def test_a_wildcard_never_admits_an_address_outside_its_estimate(pattern: str) -> None:
    """The estimate errs towards more: every address the matcher admits is inside it."""
    ranges = admitted([pattern])
    samples = [
        "1.2.3.4", "1.2.3.40", "8.8.8.8", "10.1.2.3", "10.200.0.1", "11.0.0.1", "19.9.9.9", "150.1.1.1",
        "2001:db8::1", "2001:db8:1::1", "2606:4700::1111", "fd00::1", "fd00:1::1", "203.0.113.1",
    ]  # fmt: skip
    for text in samples:
        if addr_match_list(text, pattern) == 1:
            address = ipaddress.ip_address(text)
            assert any(lo <= int(address) <= hi for lo, hi in ranges[address.version]), (pattern, text)


def test_doctor_reports_a_wide_proxy_from_and_names_the_public_part() -> None:
    def proxies(value: str):
        text = f'listen = ["haproxy:tcp:2222"]\nproxy_from = {value}'
        return list(_proxies(parse_config(text, base_dir=Path("/srv"), source=Path("/c.toml"))))

    for wide in ('["128.0.0.0/1"]', '["64.0.0.0/2"]', '["10.0.0.0/8", "1*"]'):
        (bad,) = proxies(wide)
        assert bad.level == PROBLEM and "claim any client address" in bad.message, wide
    (bad,) = proxies('["64.0.0.0/2"]')
    assert "trusts public addresses (64.0.0.0-100.63.255.255, 100.128.0.0-126.255.255.255)" in bad.message
    (ok,) = proxies('["127.0.0.0/8", "10.0.0.0/8", "fd00::/8"]')
    assert ok.level == OK
