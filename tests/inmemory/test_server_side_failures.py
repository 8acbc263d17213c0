"""A file the login depends on that cannot be read for a reason of the server's own (out of file
descriptors: EMFILE, simulated at os.open) over the whole in-memory SSH stack: the login fails,
but no strike or penalty, no sshd-worded line fail2ban would count, one error line per cause (not
one per attempt), and an audit record that says why. Once descriptors are back, the same key logs
in (nothing stale was cached)."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from support.certlogin import cert_login, make_cert
from support.fail2ban import fail2ban_available, failures, install_filter
from support.keys import authorized_line, ed25519_key
from support.world import World, make_world
from twisted.internet.address import IPv4Address
from twisted.logger import LogEvent, LogLevel, capturedLogs, formatEvent

from conchcmd.core.logtargets import AUTH_LOG_NAMESPACE, LOG_NAMESPACE

FAILURE, SUCCESS = 51, 52
REAL_OPEN = os.open


@pytest.fixture
def out_of_descriptors(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str | None], None]]:
    """`fail(path)`: from now on, opening `path` fails with EMFILE; `fail(None)`: it opens again."""
    failing: list[str] = []

    def fake_open(path: str, flags: int, *args: int, **kwargs: int) -> int:
        if failing and os.fspath(path) == failing[0]:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE), path)
        return REAL_OPEN(path, flags, *args, **kwargs)

    def fail(path: str | None) -> None:
        failing[:] = [path] if path is not None else []

    monkeypatch.setattr(os, "open", fake_open)
    yield fail


def admitted(w: World, peer: str) -> bool:
    return w.factory.buildProtocol(IPv4Address("TCP", peer, 5000)) is not None


def errors(events: list[LogEvent]) -> list[str]:
    return [
        formatEvent(e)
        for e in events
        if e.get("log_namespace") == LOG_NAMESPACE and e.get("log_level") == LogLevel.error
    ]


def auth_lines(events: list[LogEvent]) -> list[str]:
    return [formatEvent(e) for e in events if e.get("log_namespace") == AUTH_LOG_NAMESPACE]


def attempt(w: World, peer: str, login: Callable[..., int]) -> int:
    conn = w.connect(peer)
    answer = login(conn)
    conn.client.transport.loseConnection()
    conn.flush()
    return answer


def test_an_unopenable_authorized_keys_file_is_no_strike_nor_invalid_user(
    tmp_path: Path, out_of_descriptors: Callable[[str | None], None]
) -> None:
    w = make_world(tmp_path)
    path = w.config.authorized_keys.replace("%u", "admin")
    assert w.login(peer="10.0.0.9") is not None  # parsed and cached while all is well
    out_of_descriptors(path)
    with capturedLogs() as events:
        for _ in range(6):  # twice what gets any source penalised for failed logins
            assert attempt(w, "10.0.0.5", lambda c: c.login(b"admin", ed25519_key())) == FAILURE
            assert admitted(w, "10.0.0.5")
    assert not w.audit.of("penalty")
    lines = auth_lines(events)
    assert not [line for line in lines if "Invalid user" in line or line.startswith("Failed")], lines
    assert not [line for line in lines if "[preauth]" in line], lines
    (error,) = errors(events)  # one line for six failed logins
    assert path in error and "Too many open files" in error and "server-side" in error
    records = [r for r in w.audit.of("auth") if r["peer"].startswith("10.0.0.5")]
    assert len(records) == 6
    assert all(r["ok"] is False and r["server_side"] is True for r in records)
    assert all(f"authorized_keys {path} cannot be read: Too many open files" in r["reason"] for r in records)
    out_of_descriptors(None)
    assert w.login(peer="10.0.0.5") is not None  # the same key, once the file opens again


def test_the_error_line_comes_back_after_the_interval_with_a_count(
    tmp_path: Path, out_of_descriptors: Callable[[str | None], None]
) -> None:
    w = make_world(tmp_path)
    path = w.config.authorized_keys.replace("%u", "admin")
    out_of_descriptors(path)
    with capturedLogs() as events:
        for _ in range(3):
            attempt(w, "10.0.0.5", lambda c: c.login(b"admin", ed25519_key()))
        w.clock.advance(61)
        attempt(w, "10.0.0.5", lambda c: c.login(b"admin", ed25519_key()))
    first, second = errors(events)
    assert "more since" not in first
    more = re.search(r"(\d+) more failed reads since the last line", second)
    assert more is not None and int(more[1]) >= 2, second  # the other two logins at least


def test_a_client_that_keeps_trying_is_closed_without_a_strike(
    tmp_path: Path, out_of_descriptors: Callable[[str | None], None]
) -> None:
    w = make_world(tmp_path)
    out_of_descriptors(w.config.authorized_keys.replace("%u", "admin"))
    conn = w.connect("10.0.0.6")
    answers = [conn.login(b"admin", ed25519_key(n)) for n in range(w.config.limits.max_auth_tries)]
    assert answers == [FAILURE] * (len(answers) - 1) + [0]  # the last one: disconnected
    assert conn.factory.disconnect_reason == (7, b"temporary server-side failure; try again later")
    assert not w.audit.of("penalty")
    for _ in range(3):
        conn = w.connect("10.0.0.6")
        for n in range(w.config.limits.max_auth_tries):
            conn.login(b"admin", ed25519_key(n))
        conn.flush()
    assert admitted(w, "10.0.0.6")


def test_an_unopenable_revoked_keys_file_refuses_without_a_strike(
    tmp_path: Path, out_of_descriptors: Callable[[str | None], None]
) -> None:
    revoked = tmp_path / "revoked_keys"
    revoked.write_text("# nothing revoked\n")
    w = make_world(tmp_path, revoked_keys=str(revoked))
    out_of_descriptors(str(revoked))
    with capturedLogs() as events:
        for _ in range(4):
            assert attempt(w, "10.0.0.7", lambda c: c.login(b"admin", ed25519_key())) == FAILURE
    assert admitted(w, "10.0.0.7") and not w.audit.of("penalty")
    (error,) = errors(events)
    assert f"revoked_keys {revoked}" in error and "Too many open files" in error
    assert not [line for line in auth_lines(events) if "Failed" in line or "Invalid" in line]
    out_of_descriptors(None)
    assert w.login(peer="10.0.0.7") is not None


def test_an_unopenable_ca_file_is_no_invalid_user_and_no_strike(
    tmp_path: Path, out_of_descriptors: Callable[[str | None], None]
) -> None:
    ca = ed25519.Ed25519PrivateKey.generate()
    cas = tmp_path / "cas"
    cas.write_bytes(ca.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    w = make_world(tmp_path, trusted_user_ca_keys=str(cas))
    user_key = ed25519_key(51)
    cert = make_cert(ca, user_key, principals=[b"hank"])
    out_of_descriptors(str(cas))
    with capturedLogs() as events:
        for _ in range(4):
            assert attempt(w, "10.0.0.8", lambda c: cert_login(c, b"hank", user_key, cert)) == FAILURE
    assert admitted(w, "10.0.0.8") and not w.audit.of("penalty")
    lines = auth_lines(events)
    assert not [line for line in lines if "Invalid user" in line or "Failed" in line], lines
    assert [r["server_side"] for r in w.audit.of("auth")] == [True] * 4
    out_of_descriptors(None)
    assert attempt(w, "10.0.0.8", lambda c: cert_login(c, b"hank", user_key, cert)) == SUCCESS


def test_a_missing_file_is_still_an_invalid_user(
    tmp_path: Path, out_of_descriptors: Callable[[str | None], None]
) -> None:
    """The other side of the rule: a file that is not there is the client's failure, as before."""
    w = make_world(tmp_path)
    out_of_descriptors(w.config.authorized_keys.replace("%u", "admin"))  # someone else's trouble
    with capturedLogs() as events:
        assert attempt(w, "10.0.0.4", lambda c: c.login(b"nobody", ed25519_key())) == FAILURE
    assert any(line.startswith("Invalid user nobody from 10.0.0.4") for line in auth_lines(events))
    assert "server_side" not in w.audit.of("auth")[-1]


@pytest.mark.skipif(not fail2ban_available(), reason="fail2ban (fail2ban-regex) is not installed")
def test_fail2ban_counts_nothing_of_a_server_side_failure(
    tmp_path: Path, out_of_descriptors: Callable[[str | None], None]
) -> None:
    w = make_world(tmp_path)
    w.login(peer="10.0.0.9")
    (tmp_path / "keys" / "authorized_keys" / "bench").write_text(authorized_line(ed25519_key(3)))
    os.chmod(tmp_path / "keys" / "authorized_keys" / "bench", 0o600)
    out_of_descriptors(w.config.authorized_keys.replace("%u", "bench"))
    with capturedLogs() as events:
        for n in range(8):
            attempt(w, "10.0.3.1", lambda c, n=n: c.login(b"bench", ed25519_key(n)))
    text = "".join(
        f"Nov 29 21:00:00 myhost conchcmd[4242]: {formatEvent(e)}\n"
        for e in events
        if e.get("log_namespace") in (LOG_NAMESPACE, AUTH_LOG_NAMESPACE)
    )
    log = tmp_path / "auth.log"
    log.write_text(text)
    filter_path = install_filter(tmp_path / "fail2ban")
    for options in ("", "mode=aggressive", "publickey=any"):
        assert failures(log, filter_path, options) == [], options
