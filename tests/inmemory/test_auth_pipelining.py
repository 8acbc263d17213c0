"""Authentication under attack, over the whole in-memory SSH stack: pipelined requests are answered
one at a time and counted when decided, password checks have their own capped runner, and a name
without a password costs the same as one with.

Clients here send requests without waiting for answers (`AuthClient.send_request`), as an attacker
would; Conch alone started a check for each one as it arrived.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bcrypt
import pytest
from support.keys import ed25519_key
from support.runners import ManualRunner, RecordingRunner
from support.sshclient import AuthClient, Connection, password_data
from support.world import World, make_world
from twisted.conch.ssh import common, userauth
from twisted.internet.address import IPv4Address

from conchcmd.core.config import LimitsConfig, UserPolicy
from conchcmd.policy.auth import bcrypt_cost, verify_password
from conchcmd.server.userauth import MAX_WAITING_AUTH_REQUESTS

SUCCESS, FAILURE = userauth.MSG_USERAUTH_SUCCESS, userauth.MSG_USERAUTH_FAILURE
PASSWORD = b"correct horse battery staple"
CAROL_HASH = bcrypt.hashpw(PASSWORD, bcrypt.gensalt(rounds=5))
DAVE_HASH = bcrypt.hashpw(b"dave's", bcrypt.gensalt(rounds=4))
USERS = {"carol": UserPolicy(password_bcrypt=CAROL_HASH), "dave": UserPolicy(password_bcrypt=DAVE_HASH)}


def password_world(
    tmp_path: Path, *, password_runner: Any = None, runner: Any = None, max_clients: int = 10, **limits: Any
) -> World:
    return make_world(
        tmp_path,
        users=USERS,
        max_clients=max_clients,
        limits=LimitsConfig(**limits),
        password_runner=password_runner or RecordingRunner(),
        runner=runner,
    )


def start(world: World, user: bytes = b"carol", peer: str = "10.0.1.1") -> tuple[Connection, AuthClient]:
    conn = world.connect(peer)
    return conn, conn.start_auth(user)


def pipeline(conn: Connection, auth: AuthClient, *secrets: bytes) -> None:
    """Send password requests back to back, in one write."""
    for secret in secrets:
        auth.send_request(b"password", password_data(secret))
    conn.flush()


def answers(auth: AuthClient) -> list[int]:
    return [number for number, _ in auth.replies]


def tick(world: World, conn: Connection, seconds: float = 1.0) -> None:
    world.clock.advance(seconds)
    conn.flush()


def checked(runner: RecordingRunner) -> list[bytes]:
    """The passwords that reached bcrypt, in order."""
    assert all(fn is verify_password for fn, _ in runner.calls)
    return [args[0] for _, args in runner.calls]


def auth_records(world: World) -> list[tuple[bool, str]]:
    return [(r["ok"], r.get("reason", "")) for r in world.audit.of("auth")]


# -- one request at a time, counted when decided ----------------------------------------------------


def test_the_right_password_after_six_pipelined_wrong_ones_is_refused(tmp_path: Path) -> None:
    """The issue's attack: the right password as the 7th pipelined guess, max_auth_tries = 6. The
    client keeps as many requests in flight as the server lets it; the 6th failure ends it and the
    7th request never reaches bcrypt."""
    runner = RecordingRunner()
    world = password_world(tmp_path, password_runner=runner, max_auth_tries=6)
    conn, auth = start(world)
    wrong = [b"guess%d" % n for n in range(1, 7)]
    pipeline(conn, auth, *wrong[:5])  # one checked, four waiting: the most a connection may have
    assert checked(runner) == [b"guess1"] and answers(auth) == []
    tick(world, conn)
    pipeline(conn, auth, wrong[5])
    tick(world, conn)
    pipeline(conn, auth, PASSWORD)
    for _ in range(6):
        tick(world, conn)
    assert checked(runner) == wrong  # one check per second, in order, and nothing after the 6th failure
    assert answers(auth) == [FAILURE] * 5 and conn.disconnected
    assert auth_records(world) == [(False, "wrong password")] * 6
    (bye,) = world.audit.of("disconnect")
    assert bye["reason"] == "Too many authentication failures"


@pytest.mark.parametrize("count", [MAX_WAITING_AUTH_REQUESTS + 2, 200])
def test_a_burst_of_pipelined_requests_is_cut(tmp_path: Path, count: int) -> None:
    runner = RecordingRunner()
    world = password_world(tmp_path, password_runner=runner)
    conn, auth = start(world)
    pipeline(conn, auth, *[b"guess%d" % n for n in range(count)])
    assert conn.disconnected
    assert world.factory.transports == set()
    assert checked(runner) == [b"guess0"]  # only the first was ever checked
    (bye,) = world.audit.of("disconnect")
    assert bye["reason"] == "too many authentication requests pending"
    tick(world, conn, 5)
    assert auth_records(world) == [(False, "wrong password")]  # counted when decided, before the close


def test_requests_up_to_the_waiting_limit_are_all_answered_in_order(tmp_path: Path) -> None:
    runner = RecordingRunner()
    world = password_world(tmp_path, password_runner=runner, max_auth_tries=10)
    conn, auth = start(world)
    secrets = [b"a", b"b", b"c", b"d", PASSWORD]
    assert len(secrets) == MAX_WAITING_AUTH_REQUESTS + 1
    pipeline(conn, auth, *secrets)
    for n in range(1, 5):
        assert answers(auth) == [FAILURE] * (n - 1)
        assert checked(runner) == secrets[:n]  # the next waits for the answer to the last
        tick(world, conn)
    assert answers(auth) == [FAILURE] * 4 + [SUCCESS] and not conn.disconnected


def test_a_malformed_request_found_waiting_ends_the_connection_cleanly(tmp_path: Path) -> None:
    world = password_world(tmp_path)
    conn, auth = start(world)
    pipeline(conn, auth, b"wrong")
    auth.send_request(b"password", b"\x00\x00\x00")  # a truncated password string
    conn.flush()
    assert not conn.disconnected  # it waits behind the first, unparsed
    tick(world, conn)
    assert answers(auth) == [FAILURE] and conn.disconnected
    (bye,) = world.audit.of("disconnect")
    assert bye["reason"].startswith("protocol error: ") and "waiting authentication request" in bye["reason"]


def test_pipelined_keys_stop_at_the_limit_too(world: World) -> None:
    """Every method is serialised and nothing runs after the limit: a right key queued behind the
    sixth failure is not even looked at (before, it was accepted and audited on a dead connection)."""
    conn, auth = start(world, b"admin")
    for n in range(6):
        auth.send_request(b"publickey", auth.signed(ed25519_key(80 + n)))
    auth.send_request(b"publickey", auth.signed(ed25519_key()))  # admin's key
    conn.flush()
    assert conn.disconnected
    assert [ok for ok, _ in auth_records(world)] == [False] * 6
    assert world.factory.admissions.slots.used == 0


@pytest.mark.parametrize("service", [b"ssh-bogus", b"ssh-userauth", b""])
def test_a_request_for_another_service_ends_the_connection_before_any_check(world: World, service: bytes) -> None:
    """Even with the right key: before, each such success took a client slot that was never given
    back (one connection could take them all), and an unknown name raised a KeyError."""
    conn, auth = start(world, b"admin")
    auth.next_service = service
    for _ in range(3):
        auth.send_request(b"publickey", auth.signed(ed25519_key()))
    conn.flush()
    assert conn.disconnected and world.factory.admissions.slots.used == 0
    assert world.audit.of("auth") == []
    (bye,) = world.audit.of("disconnect")
    assert bye["reason"] == "no such service"


# -- the connection goes away ---------------------------------------------------------------------


def test_a_closed_connections_waiting_requests_never_reach_bcrypt(tmp_path: Path) -> None:
    runner = ManualRunner()
    world = password_world(tmp_path, password_runner=runner)
    conn, auth = start(world)
    pipeline(conn, auth, b"one", b"two", PASSWORD)
    assert runner.submitted == 1
    conn.client.transport.loseConnection()
    conn.flush()
    assert world.factory.transports == set()
    runner.run_all()
    tick(world, conn, 5)
    runner.run_all()
    assert runner.submitted == 1
    assert world.audit.of("auth") == []  # decided after the client left: nothing to answer


def test_a_right_password_decided_after_the_client_left_takes_no_slot(tmp_path: Path) -> None:
    runner = ManualRunner()
    world = password_world(tmp_path, password_runner=runner, max_clients=1)
    conn, auth = start(world)
    pipeline(conn, auth, PASSWORD)
    conn.client.transport.loseConnection()
    conn.flush()
    runner.run_all()
    assert world.factory.admissions.slots.used == 0 and world.audit.of("auth") == []
    assert world.login(peer="10.0.1.9") is not None  # the only slot is still free


def test_leaving_during_authentication_counts_against_the_source(tmp_path: Path) -> None:
    """Send a guess and hang up before the answer, three times: the source is penalised, as for
    three failed logins (otherwise the guesses would be free)."""
    runner = ManualRunner()
    world = password_world(tmp_path, password_runner=runner, penalty_seconds=30)
    for _ in range(3):
        conn, auth = start(world, peer="10.0.1.2")
        pipeline(conn, auth, b"guess")
        conn.client.transport.loseConnection()
        conn.flush()
        runner.run_all()
    (penalty,) = world.audit.of("penalty")
    assert penalty["source"] == "10.0.1.2"
    assert world.factory.buildProtocol(IPv4Address("TCP", "10.0.1.2", 5000)) is None


# -- the password runner and its global cap -------------------------------------------------------


def test_over_the_global_cap_an_attempt_fails_and_counts(tmp_path: Path) -> None:
    runner = ManualRunner()
    world = password_world(tmp_path, password_runner=runner, max_password_checks=2)
    held = [start(world, peer=f"10.0.2.{n}") for n in (1, 2)]
    for conn, auth in held:
        pipeline(conn, auth, b"slow")
    assert len(runner.jobs) == 2
    conn, auth = start(world, peer="10.0.2.3")
    pipeline(conn, auth, PASSWORD)  # even the right password: no check is started for it
    assert len(runner.jobs) == 2
    (record,) = world.audit.of("auth")
    assert record["ok"] is False and record["user"] == "carol"
    assert record["reason"] == "too many password checks in progress (max_password_checks = 2)"
    assert conn.server.auth_failures == 1
    tick(world, conn)
    assert answers(auth) == [FAILURE]  # after the same delay as any failed password
    runner.run_all()  # the two checks finish: there is room again
    pipeline(conn, auth, PASSWORD)
    runner.run_all()
    conn.flush()
    assert answers(auth) == [FAILURE, SUCCESS]


def test_authentication_never_uses_the_commands_runner(tmp_path: Path) -> None:
    commands = ManualRunner()
    passwords = RecordingRunner()
    world = password_world(tmp_path, password_runner=passwords, runner=commands)
    for user, secret in ((b"carol", b"wrong"), (b"nobody", b"x"), (b"admin", b"y"), (b"carol", PASSWORD)):
        conn, auth = start(world, user)
        pipeline(conn, auth, secret)
        tick(world, conn)
    conn, auth = start(world, b"admin")
    auth.send_request(b"publickey", auth.signed(ed25519_key()))
    conn.flush()
    assert answers(auth) == [SUCCESS]
    assert len(checked(passwords)) == 4
    assert commands.jobs == []


# -- no user enumeration --------------------------------------------------------------------------


def failure_methods(world: World, user: bytes) -> list[bytes]:
    conn, auth = start(world, user)
    auth.send_request(b"none", b"")
    conn.flush()
    ((number, packet),) = auth.replies
    assert number == FAILURE
    return sorted(common.getNS(packet)[0].split(b","))


@pytest.mark.parametrize("user", [b"carol", b"admin", b"nobody", b"\xff\xfe"])
def test_password_is_offered_to_every_name_when_some_user_has_one(tmp_path: Path, user: bytes) -> None:
    world = password_world(tmp_path)
    assert failure_methods(world, user) == [b"password", b"publickey"]


def test_password_is_offered_to_no_name_when_no_user_has_one(world: World) -> None:
    for user in (b"admin", b"nobody"):
        assert failure_methods(world, user) == [b"publickey"]


@pytest.mark.parametrize("user", [b"admin", b"nobody", b"dave"])
def test_a_name_without_the_password_costs_the_same_as_carol(tmp_path: Path, user: bytes) -> None:
    """admin (no password) and nobody (no such user) cost a bcrypt check at the highest configured
    cost (carol's, 5) and the same one-second delay as a wrong password for carol."""
    runner = RecordingRunner()
    world = password_world(tmp_path, password_runner=runner)
    timelines = {}
    for name in (b"carol", user):
        conn, auth = start(world, name, peer="10.0.3.1")
        pipeline(conn, auth, b"not it")
        tick(world, conn, 0.999)
        before = answers(auth)
        tick(world, conn, 0.001)
        timelines[name] = (before, answers(auth))
    assert timelines[user] == timelines[b"carol"] == ([], [FAILURE])
    (_, carol_args), (_, other_args) = runner.calls
    assert bcrypt_cost(carol_args[1]) == 5
    expected = 4 if user == b"dave" else 5  # dave's own hash, or the dummy at the highest cost
    assert bcrypt_cost(other_args[1]) == expected


def test_reload_follows_the_costs_and_the_cap(tmp_path: Path) -> None:
    world = password_world(tmp_path)
    passwords = world.server.passwords
    assert passwords.dummy is not None and bcrypt_cost(passwords.dummy) == 5
    costly = bcrypt.hashpw(b"x", bcrypt.gensalt(rounds=6))
    from dataclasses import replace

    world.server.reload(replace(world.config, users={"erin": UserPolicy(password_bcrypt=costly)}))
    assert passwords.dummy is not None and bcrypt_cost(passwords.dummy) == 6
    assert not verify_password(b"x", passwords.dummy, False)
    world.server.reload(replace(world.config, users={}, limits=LimitsConfig(max_password_checks=3)))
    assert passwords.dummy is None and passwords.max_checks == 3
    assert failure_methods(world, b"erin") == [b"publickey"]
