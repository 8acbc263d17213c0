"""`listen` endpoint descriptions are checked with Twisted's parser at configuration load, without
listening: a description `serve` would reject fails `check-config`, `doctor` and `serve` alike,
naming the key; `systemd:` descriptions pass without the sockets systemd passes at start."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor

from conchcmd.core.config import ConfigError, parse_config
from conchcmd.core.endpoints import endpoint_problem

GOOD = [
    "tcp:2222",
    "tcp:0:interface=127.0.0.1",
    "tcp:65535:backlog=5",
    "tcp6:2222",
    "tcp6:2201:interface=\\:\\:1",
    "unix:/run/conchcmd.sock",
    "unix:/run/conchcmd.sock:mode=660:lockfile=0",
    "haproxy:tcp:2222:interface=127.0.0.1",
    "systemd:domain=INET:index=0",
    "systemd:domain=INET6:index=1",
    "systemd:domain=UNIX:name=conchcmd",
    "haproxy:systemd:domain=INET:index=0",
    "tcp:2222:interface=localhost",  # a host name: bind() resolves it
    "tcp:2222:interface=\\:\\:1",  # Twisted's tcp: takes an IPv6 address too
    "tcp6:2222:interface=fe80\\:\\:1%lo",
]
#: description -> what the error says about it
BAD = {
    "tcp:abc": "invalid literal for int()",
    "tcp:": "invalid literal for int()",
    "tcp": "missing 1 required positional argument: 'port'",
    "tcp:70000": "port 70000 is not between 0 and 65535",
    "tcp:-1": "port -1 is not between 0 and 65535",
    "haproxy:tcp:99999": "port 99999 is not between 0 and 65535",
    "tcp:2222:interfce=127.0.0.1": "unexpected keyword argument 'interfce'",
    "tcp:2222:backlog=many": "invalid literal for int()",
    "TCP:2222": "Unknown endpoint type",
    "tpc:2222": "Unknown endpoint type: 'tpc'",
    "2222": "Unknown endpoint type: '2222'",
    "unix:/run/x.sock:mode=999": "invalid literal for int() with base 8",
    "haproxy:": "Unknown endpoint type: ''",
    "haproxy:tcp:x": "invalid literal for int()",
    "systemd:domain=INET": "Specify exactly one of descriptor index or name",
    "systemd:domain=INET:index=0:name=x": "Specify exactly one of descriptor index or name",
    "systemd:domain=INET:index=first": "invalid literal for int()",
    "systemd:domain=INTERNET:index=0": "AF_INTERNET",
    "systemd:index=0": "missing 1 required positional argument: 'domain'",
    "tcp:2222\\": "StopIteration",  # a trailing escape
    "tcp:2223:interface=300.1.1.1": "interface '300.1.1.1' is not an IP address",
    "tcp6:2223:interface=\\:\\:1\\:\\:2\\:\\:3": "is not an IP address",
}


@pytest.mark.parametrize("description", GOOD)
def test_good_descriptions_pass(description: str) -> None:
    assert endpoint_problem(description) is None
    config = parse_config(f"listen = [{_toml(description)}]", base_dir=Path("/srv"))
    assert config.listen == (description,)


@pytest.mark.parametrize("description", [d for d in GOOD if "systemd" not in d])
def test_what_passes_listens_with_twisted_itself(description: str) -> None:
    """The check agrees with Twisted's own parser and listen() (on a reactor that records only)."""
    reactor = MemoryReactor()
    serverFromString(reactor, description).listen(Factory.forProtocol(Protocol))
    assert len(reactor.tcpServers) + len(reactor.unixServers) == 1


@pytest.mark.parametrize(("description", "says"), BAD.items())
def test_bad_descriptions_are_configuration_errors_naming_the_key(description: str, says: str) -> None:
    problem = endpoint_problem(description)
    assert problem is not None and says in problem
    with pytest.raises(ConfigError) as e:
        parse_config(f'listen = ["tcp:2222", {_toml(description)}]', base_dir=Path("/srv"), source=Path("/c.toml"))
    assert str(e.value) == f"/c.toml: listen: {description!r} is not an endpoint Twisted can listen on: {problem}"


def test_systemd_needs_no_inherited_socket_to_be_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside systemd there is no LISTEN_FDS: the description is still checked, and accepted."""
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    assert endpoint_problem("systemd:domain=INET:index=3") is None
    assert endpoint_problem("systemd:domain=INET:name=none-such") is None


def _toml(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def test_paths_in_endpoint_strings_are_left_to_twisted() -> None:
    """Unlike the file keys, a relative `unix:` path is not resolved against the config's directory:
    Twisted opens it relative to the server's working directory (as the README says)."""
    config = parse_config('listen = ["unix:conchcmd.sock"]\nhost_keys_dir = "k"', base_dir=Path("/srv/conf"))
    assert config.listen == ("unix:conchcmd.sock",)
    assert config.host_keys_dir == Path("/srv/conf/k")
