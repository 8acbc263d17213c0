"""`proxy_from` and `haproxy:` listeners in the configuration: strict parsing, a loopback-only
default, and the description conchcmd serves itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from conchcmd.core.config import ConfigError, parse_config
from conchcmd.core.endpoints import proxied_description, proxy_problem
from conchcmd.server.proxied import ProxySettings


def parse(text: str):
    return parse_config(text, base_dir=Path("/srv"), source=Path("/c.toml"))


def test_proxy_from_defaults_to_loopback_only() -> None:
    assert parse("").proxy_from == ("127.0.0.1", "::1")


def test_proxy_from_takes_address_patterns_and_is_printed_back() -> None:
    config = parse('listen = ["haproxy:tcp:2222"]\nproxy_from = ["10.0.0.0/8", "!10.9.9.9", "fd00::*"]\n')
    assert config.proxy_from == ("10.0.0.0/8", "!10.9.9.9", "fd00::*")
    assert 'proxy_from = ["10.0.0.0/8", "!10.9.9.9", "fd00::*"]\n' in config.describe()
    assert parse(config.describe()).proxy_from == config.proxy_from


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("[]", "must not be an empty list"),
        ('["lb.example.com"]', "lb.example.com"),  # a host name would need DNS: refused as from= does
        ('["10.0.0.1/8"]', "host bits set"),
        ('"127.0.0.1"', "must be a list of strings"),
    ],
)
def test_bad_proxy_from_is_an_error_naming_the_key(value: str, why: str) -> None:
    with pytest.raises(ConfigError, match=f"^/c.toml: proxy_from: .*{why}"):
        parse(f"proxy_from = {value}")


def test_haproxy_descriptions_unwrap_to_the_endpoint_served() -> None:
    assert proxied_description("haproxy:tcp:2222:interface=127.0.0.1") == "tcp:2222:interface=127.0.0.1"
    assert proxied_description("HAProxy:tcp6:2222:interface=\\:\\:1") == "tcp6:2222:interface=\\:\\:1"
    assert proxied_description("tcp:2222") is None
    assert proxied_description("systemd:domain=INET:index=0") is None
    assert proxy_problem("haproxy:systemd:domain=INET:index=0") is None


def test_a_haproxy_endpoint_inside_another_is_refused() -> None:
    assert proxy_problem("haproxy:haproxy:tcp:2222") is not None
    with pytest.raises(ConfigError, match="one PROXY header is read"):
        parse('listen = ["haproxy:haproxy:tcp:2222"]')


def test_doctor_refuses_a_proxy_from_that_trusts_the_internet() -> None:
    from conchcmd.edge.doctor import OK, PROBLEM, Invocation, _proxies, examine

    assert list(_proxies(parse(""))) == []  # no haproxy: listener, nothing to say
    (ok,) = _proxies(parse('listen = ["haproxy:tcp:2222"]\nproxy_from = ["10.0.0.0/8"]'))
    assert ok.level == OK and ok.message == "haproxy:tcp:2222: PROXY headers accepted from 10.0.0.0/8 only"
    for wide in ('["*"]', '["0.0.0.0/0", "::/0"]', '["10.0.0.0/8", "8.*"]'):
        (bad,) = _proxies(parse(f'listen = ["haproxy:tcp:2222"]\nproxy_from = {wide}'))
        assert bad.level == PROBLEM and "claim any client address" in bad.message, wide
    everything = examine(parse('listen = ["haproxy:tcp:2222"]\nproxy_from = ["*"]'), Invocation(1000, Path("/srv")))
    assert any(f.level == PROBLEM and "claim any client address" in f.message for f in everything)


def test_the_proxy_listener_takes_its_slice_of_the_configuration() -> None:
    """proxy_from, and max_startups as the cap on connections still waiting for their header."""
    settings = ProxySettings.from_config(parse('proxy_from = ["10.0.0.2"]\nmax_startups = 7\n'))
    assert (settings.trusted, settings.max_pending) == (("10.0.0.2",), 7)
    assert ProxySettings.from_config(parse("")).max_pending == 100
