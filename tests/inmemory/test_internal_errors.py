"""The transport's catch-all over the whole in-memory stack: a packet that hits a bug of ours is
logged with its traceback (once per place) and ends only that connection, without counting
against the client's source; a malformed packet is still a protocol error that does count. A
login whose checker or realm hits a bug is the same: not a refused login (no USERAUTH_FAILURE, no
"Failed" line for fail2ban), but the connection ended with "internal error" and the traceback."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from support.keys import ed25519_key
from support.runners import ManualRunner
from support.sshclient import Connection, still_works
from support.world import World, make_world
from twisted.conch.ssh import transport, userauth
from twisted.cred.credentials import ISSHPrivateKey, IUsernamePassword
from twisted.logger import LogEvent, LogLevel, capturedLogs, formatEvent

from conchcmd.core.config import UserPolicy
from conchcmd.core.logtargets import AUTH_LOG_NAMESPACE
from conchcmd.server.admission import STRIKES_BEFORE_PENALTY, source_of
from conchcmd.server.authlog import AuthLog
from conchcmd.server.transport import ServerTransport, is_parse_error

PEER = "10.0.0.7"


def simulated_bug(self: ServerTransport, packet: bytes) -> None:
    raise KeyError("simulated bug")


def test_a_bug_is_logged_once_with_its_traceback_and_not_held_against_the_client(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ServerTransport, "ssh_SERVICE_REQUEST", simulated_bug)
    with capturedLogs() as events:
        for _ in range(STRIKES_BEFORE_PENALTY + 2):
            conn = world.connect(peer=PEER)
            conn.start_auth(b"admin")  # SERVICE_REQUEST
            assert conn.disconnected
            assert conn.factory.disconnect_reason == (transport.DISCONNECT_BY_APPLICATION, b"internal error")
    bugs = [e for e in events if "Internal error" in e.get("log_format", "")]
    assert len(bugs) == STRIKES_BEFORE_PENALTY + 2
    first, *again = bugs
    assert first["log_level"] == LogLevel.error  # log.failure at error level: with the traceback
    assert "simulated_bug" in first["log_failure"].getTraceback()
    assert all("traceback logged before" in e["log_format"] and "log_failure" not in e for e in again)
    reasons = [r["reason"] for r in world.audit.of("disconnect")]
    assert reasons == ["internal error: KeyError: 'simulated bug'"] * (STRIKES_BEFORE_PENALTY + 2)
    assert world.audit.of("penalty") == []  # our bug, not the client's doing
    assert world.factory.admissions.sources.refusal(source_of(PEER), PEER) is None


def test_a_truncated_packet_is_a_protocol_error_that_counts(world: World) -> None:
    """Conch reads DEBUG's `always_display` with ord(packet[0:1]): an empty DEBUG raises TypeError
    in Conch, which is the client's malformed packet, not a bug."""
    with capturedLogs() as events:
        for _ in range(STRIKES_BEFORE_PENALTY):
            conn = world.connect(peer=PEER)
            conn.client.sendPacket(transport.MSG_DEBUG, b"")
            conn.flush()
            assert conn.disconnected
            assert conn.factory.disconnect_reason == (transport.DISCONNECT_PROTOCOL_ERROR, b"protocol error")
    assert not [e for e in events if "log_failure" in e]  # no traceback for the client's garbage
    reasons = [r["reason"] for r in world.audit.of("disconnect")]
    assert all(r.startswith("protocol error: TypeError: ord() expected") for r in reasons), reasons
    assert [p["source"] for p in world.audit.of("penalty")] == [PEER]
    assert world.factory.admissions.sources.refusal(source_of(PEER), PEER) is not None


def test_parse_errors_and_bugs_are_told_apart() -> None:
    def raised(fn: object) -> Exception:
        try:
            fn()  # type: ignore[operator]
        except Exception as e:
            return e
        raise AssertionError("did not raise")

    assert is_parse_error(raised(lambda: struct.unpack(">L", b"\0")))
    assert is_parse_error(raised(lambda: b"\xff".decode()))
    assert not is_parse_error(raised(lambda: {}["x"]))
    assert not is_parse_error(raised(lambda: None.attribute))  # type: ignore[attr-defined]
    assert not is_parse_error(raised(lambda: ord(b"")))  # ord() of nothing, but not in Conch: ours


PASSWORD = b"carol's password"
USERS = {"carol": UserPolicy(password_bcrypt=bcrypt.hashpw(PASSWORD, bcrypt.gensalt(rounds=4)))}


def key_login(world: World, conn: Connection) -> int:
    return conn.login(b"admin", ed25519_key())


def password_login(world: World, conn: Connection) -> int:
    d = conn.start_auth(b"carol").password(PASSWORD)
    conn.flush()
    world.clock.advance(1)  # a refusal's delay, were it one
    conn.flush()
    return d.result[0] if d.called else 0


def bug_in_key_checker(world: World, mp: pytest.MonkeyPatch, bug: Callable[..., Any]) -> None:
    mp.setattr(world.factory.portal.checkers[ISSHPrivateKey], "check", bug)


def bug_in_password_checker(world: World, mp: pytest.MonkeyPatch, bug: Callable[..., Any]) -> None:
    mp.setattr(world.factory.portal.checkers[IUsernamePassword], "requestAvatarId", bug)


def bug_in_realm(world: World, mp: pytest.MonkeyPatch, bug: Callable[..., Any]) -> None:
    mp.setattr(world.server.realm, "requestAvatar", bug)


def bug_in_admission(world: World, mp: pytest.MonkeyPatch, bug: Callable[..., Any]) -> None:
    mp.setattr(ServerTransport, "admit", bug)  # the success path, after the check


def simulated_login_bug(*args: Any) -> Any:
    raise KeyError("simulated login bug")


def auth_lines(events: list[LogEvent]) -> list[str]:
    return [formatEvent(e) for e in events if e.get("log_namespace") == AUTH_LOG_NAMESPACE]


@pytest.mark.parametrize(
    ("inject", "login", "method"),
    [
        (bug_in_key_checker, key_login, "publickey"),
        (bug_in_realm, key_login, "publickey"),
        (bug_in_password_checker, password_login, "password"),
        (bug_in_realm, password_login, "password"),
        (bug_in_admission, key_login, "publickey"),
        (bug_in_admission, password_login, "password"),
    ],
    ids=["key-checker", "key-realm", "password-checker", "password-realm", "key-admit", "password-admit"],
)
def test_a_bug_in_a_login_check_is_an_internal_error_not_a_refused_login(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    inject: Callable[[World, pytest.MonkeyPatch, Callable[..., Any]], None],
    login: Callable[[World, Connection], int],
    method: str,
) -> None:
    world = make_world(tmp_path, users=USERS)
    user = "admin" if method == "publickey" else "carol"
    bystander = world.login(peer="10.0.0.99")  # logged in before: unaffected
    inject(world, monkeypatch, simulated_login_bug)
    tries = STRIKES_BEFORE_PENALTY + 1  # what a client that retried its failed logins would do
    with capturedLogs() as events:
        for _ in range(tries):
            conn = world.connect(peer=PEER)
            assert login(world, conn) == 0  # no answer: neither SUCCESS nor FAILURE
            assert conn.disconnected
            assert conn.factory.disconnect_reason == (transport.DISCONNECT_BY_APPLICATION, b"internal error")
    bugs = [e for e in events if e.get("log_format", "").startswith("Internal error")]
    assert len(bugs) == tries
    first, *again = bugs
    assert first["log_level"] == LogLevel.error
    assert first["peer"] == f"{PEER}:40000"
    assert "simulated_login_bug" in first["log_failure"].getTraceback()
    assert formatEvent(first) == f"Internal error checking an authentication request from {PEER}:40000; disconnecting"
    assert all("traceback logged before" in e["log_format"] and "log_failure" not in e for e in again)
    assert not [e for e in events if "log_failure" in e and e is not first]  # no other traceback
    assert auth_lines(events) == []  # nothing fail2ban counts: no "Failed ...", no "[preauth]"
    records = [r for r in world.audit.of("auth") if r["peer"].startswith(PEER)]
    assert [(r["ok"], r["server_side"], r["user"], r["method"]) for r in records] == [
        (False, True, user, method)
    ] * tries
    assert all(r["reason"] == "internal error: KeyError: 'simulated login bug'" for r in records)
    ends = [r["reason"] for r in world.audit.of("disconnect") if r["peer"].startswith(PEER)]
    assert ends == ["internal error: KeyError: 'simulated login bug'"] * tries
    assert world.audit.of("penalty") == []  # our bug, not the client's doing
    assert world.factory.admissions.sources.refusal(source_of(PEER), PEER) is None
    monkeypatch.undo()  # the bug fixed: the same client logs in, the bystander still works
    assert login(world, world.connect(peer=PEER)) == userauth.MSG_USERAUTH_SUCCESS
    still_works(bystander)


def test_a_bug_in_answering_a_refusal_ends_the_connection_with_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong password whose answer hits a bug (here: writing the auth-log line): the client is
    not left waiting for an answer until the login grace time; the connection ends at once."""
    world = make_world(tmp_path, users=USERS)
    monkeypatch.setattr(AuthLog, "failed", simulated_login_bug)
    with capturedLogs() as events:
        conn = world.connect(peer=PEER)
        d = conn.start_auth(b"carol").password(b"wrong")
        conn.flush()
        world.clock.advance(1)
        conn.flush()
        assert not d.called and conn.disconnected
        assert conn.factory.disconnect_reason == (transport.DISCONNECT_BY_APPLICATION, b"internal error")
    (bug,) = [e for e in events if "log_failure" in e]
    assert bug["log_level"] == LogLevel.error
    assert formatEvent(bug) == f"Internal error answering an authentication request from {PEER}:40000; disconnecting"
    assert "simulated_login_bug" in bug["log_failure"].getTraceback()
    assert [r["reason"] for r in world.audit.of("disconnect")] == ["internal error: KeyError: 'simulated login bug'"]


def test_a_password_hash_bcrypt_cannot_use_is_the_server_s_failure_not_a_wrong_password(tmp_path: Path) -> None:
    """A hash bcrypt refuses ("Invalid salt": here a character outside its alphabet; the config
    refuses such hashes, and costs outside 04-31, which once got through) made every password
    "wrong": the operator locked out, a "Failed password" line per try for fail2ban."""
    hashed = bcrypt.hashpw(PASSWORD, bcrypt.gensalt(rounds=4))
    world = make_world(tmp_path, users={"carol": UserPolicy(password_bcrypt=hashed[:7] + b"!" + hashed[8:])})
    with capturedLogs() as events:
        conn = world.connect(peer=PEER)
        assert password_login(world, conn) == 0
        assert conn.factory.disconnect_reason == (transport.DISCONNECT_BY_APPLICATION, b"internal error")
    (bug,) = [e for e in events if "log_failure" in e]
    assert "Invalid salt" in bug["log_failure"].getTraceback()
    assert auth_lines(events) == []
    (record,) = world.audit.of("auth")
    assert record["server_side"] is True and record["reason"] == "internal error: ValueError: Invalid salt"


def test_a_bug_found_after_the_client_left_is_still_logged(tmp_path: Path) -> None:
    """The password check hits its bug after the client has closed the connection: nothing is
    answered, but the traceback is logged (it was dropped with the answer)."""
    runner = ManualRunner()
    hashed = bcrypt.hashpw(PASSWORD, bcrypt.gensalt(rounds=4))
    unusable = {"carol": UserPolicy(password_bcrypt=hashed[:7] + b"!" + hashed[8:])}
    world = make_world(tmp_path, users=unusable, password_runner=runner)
    with capturedLogs() as events:
        conn = world.connect(peer=PEER)
        conn.start_auth(b"carol").password(PASSWORD)
        conn.flush()
        conn.client.transport.loseConnection()
        conn.flush()
        assert len(runner.jobs) == 1 and world.audit.of("disconnect")  # the check waits; the client is gone
        timers = set(world.clock.getDelayedCalls())
        runner.run_all()
    (bug,) = [e for e in events if "log_failure" in e]
    assert formatEvent(bug) == (
        f"Internal error checking an authentication request from {PEER}:40000; connection closed already"
    )
    assert "Invalid salt" in bug["log_failure"].getTraceback()
    assert [r["reason"] for r in world.audit.of("disconnect")] == ["closed"]  # as it ended
    assert set(world.clock.getDelayedCalls()) <= timers  # no disconnect (nor its abort timer) on a lost connection


def test_a_refused_login_is_still_a_failure(world: World) -> None:
    """The control: a key that is not authorized is an ordinary refusal, counted and logged."""
    with capturedLogs() as events:
        conn = world.connect(peer=PEER)
        assert conn.login(b"admin", ed25519_key(9)) == userauth.MSG_USERAUTH_FAILURE
        assert not conn.disconnected
    assert [line.split(" from ")[0] for line in auth_lines(events)] == ["Failed publickey for admin"]
    assert not [e for e in events if "log_failure" in e]
    (record,) = world.audit.of("auth")
    assert record["ok"] is False and "server_side" not in record
