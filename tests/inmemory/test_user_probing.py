"""Which names have keys cannot be told from the answers to `none` (in-memory SSH stack, real
config and real authorized_keys files): OpenSSH's client opens every login with it, and sshd
answers it from its account database, the same work for every name. The server reads no file
before any `none` answer, whether the name has keys, is configured without a file, or is
unknown; sshd's lines stay as they were, each in its place among the others."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from support.keys import ed25519_key
from support.sshclient import Connection
from support.world import World, make_world
from twisted.conch.ssh import userauth
from twisted.logger import LogEvent, capturedLogs, formatEvent

from conchcmd.core.config import UserPolicy
from conchcmd.core.logtargets import AUTH_LOG_NAMESPACE, LOG_NAMESPACE

FAILURE = userauth.MSG_USERAUTH_FAILURE
#: The file-system calls reading a user's authorized_keys makes (open, fstat, the realpath walk).
FILE_CALLS = ("open", "stat", "lstat", "fstat", "readlink", "listdir", "scandir", "access")
#: A name with an authorized_keys file, one configured ([users.bob]) without one, unknown names.
NAMES = [b"admin", b"bob", b"nobody", b"no\xffutf8", b"../admin"]
STRANGER = ed25519_key(9)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path, users={"bob": UserPolicy(commands=frozenset({"help"}))})


def trace(monkeypatch: pytest.MonkeyPatch, conn: Connection) -> list[tuple[str, Any]]:
    """From now on: every file-system call of the process and every packet the server sends."""
    events: list[tuple[str, Any]] = []
    for name in FILE_CALLS:
        real = getattr(os, name)

        def traced(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            events.append(("fs", _name))
            return _real(*args, **kwargs)

        monkeypatch.setattr(os, name, traced)
    send = conn.server.sendPacket

    def sending(message: int, payload: bytes) -> None:
        events.append(("send", message))
        send(message, payload)

    monkeypatch.setattr(conn.server, "sendPacket", sending)
    return events


def auth_lines(events: list[LogEvent]) -> list[str]:
    return [formatEvent(e) for e in events if e.get("log_namespace") == AUTH_LOG_NAMESPACE]


def leave(conn: Connection) -> None:
    conn.client.transport.loseConnection()
    conn.flush()


@pytest.mark.parametrize("then", [None, b"bob", b"root"], ids=["same-name", "then-configured", "then-unknown"])
@pytest.mark.parametrize("user", NAMES)
def test_no_file_is_read_before_a_none_answer(
    world: World, monkeypatch: pytest.MonkeyPatch, user: bytes, then: bytes | None
) -> None:
    """OpenSSH's opening `none`, and a second one pipelined behind it (a counted failure), for
    the same name or another: both answered with no file read before them, for every kind of
    name (the look-up of a name with keys read its authorized_keys first: ~0.1 ms more, seen
    over loopback; another name must not decide the first one's either)."""
    conn = world.connect()
    auth = conn.start_auth(user)
    events = trace(monkeypatch, conn)
    auth.send_request(b"none", b"")
    auth.user = then or user
    auth.send_request(b"none", b"")
    conn.flush()
    assert [m for m, _ in auth.replies] == [FAILURE, FAILURE]
    assert events[: events.index(("send", FAILURE), events.index(("send", FAILURE)) + 1) + 1] == [
        ("send", FAILURE),
        ("send", FAILURE),
    ]


def test_a_publickey_request_reads_the_file_as_sshds_does(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not claimed beyond `none`: a publickey request reads the user's authorized_keys before its
    answer (sshd's does too), so its timing still depends on the name, as sshd's."""
    conn = world.connect()
    auth = conn.start_auth(b"admin")
    events = trace(monkeypatch, conn)
    auth.probe(STRANGER)
    conn.flush()
    assert ("fs", "open") in events[: events.index(("send", FAILURE))]


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        (
            [(b"nobody", b"none"), (b"nobody", b"none")],
            [
                "Invalid user nobody from 10.0.0.1 port 40000",
                "Failed none for invalid user nobody from 10.0.0.1 port 40000 ssh2",
                "Connection closed by invalid user nobody 10.0.0.1 port 40000 [preauth]",
            ],
        ),
        (
            [(b"admin", b"none"), (b"admin", b"none")],
            [
                "Failed none for admin from 10.0.0.1 port 40000 ssh2",
                "Connection closed by authenticating user admin 10.0.0.1 port 40000 [preauth]",
            ],
        ),
        (
            [(b"bob", b"none"), (b"bob", b"keyboard-interactive")],
            [
                "Failed keyboard-interactive for bob from 10.0.0.1 port 40000 ssh2",
                "Connection closed by authenticating user bob 10.0.0.1 port 40000 [preauth]",
            ],
        ),
        (
            [(b"nobody", b"none"), (b"nobody", b"publickey"), (b"nobody", b"none")],
            [
                "Invalid user nobody from 10.0.0.1 port 40000",
                "Failed publickey for invalid user nobody from 10.0.0.1 port 40000 ssh2: ED25519 {fp}",
                "Failed none for invalid user nobody from 10.0.0.1 port 40000 ssh2",
                "Connection closed by invalid user nobody 10.0.0.1 port 40000 [preauth]",
            ],
        ),
        (
            [(b"nobody", b"none"), (b"admin", b"none"), (b"root", b"none"), (b"nobody", b"none")],
            [
                "Invalid user nobody from 10.0.0.1 port 40000",
                "Failed none for admin from 10.0.0.1 port 40000 ssh2",
                "Invalid user root from 10.0.0.1 port 40000",
                "Failed none for invalid user root from 10.0.0.1 port 40000 ssh2",
                "Invalid user nobody from 10.0.0.1 port 40000",
                "Failed none for invalid user nobody from 10.0.0.1 port 40000 ssh2",
                "Connection closed by invalid user nobody 10.0.0.1 port 40000 [preauth]",
            ],
        ),
        (
            [(b"nobody", b"none")] * 7,
            [
                "Invalid user nobody from 10.0.0.1 port 40000",
                *["Failed none for invalid user nobody from 10.0.0.1 port 40000 ssh2"] * 6,
                "maximum authentication attempts exceeded for invalid user nobody from 10.0.0.1 port 40000 ssh2",
                "Disconnecting invalid user nobody 10.0.0.1 port 40000: Too many authentication failures [preauth]",
            ],
        ),
    ],
    ids=["unknown", "keys", "configured-other-method", "unknown-then-key", "names-change", "max-tries"],
)
def test_sshds_lines_are_those_of_before_each_in_its_place(
    world: World, steps: list[tuple[bytes, bytes]], expected: list[str]
) -> None:
    """An unknown name's "Invalid user" line comes once the name is decided (at a publickey
    request, another name, or the connection's end) and before every line that needs it."""
    from conchcmd.policy.authorized_keys import fingerprint

    with capturedLogs() as events:
        conn = world.connect()
        for user, method in steps:
            assert not conn.disconnected
            if conn.auth is None:
                conn.start_auth(user)
            assert conn.auth is not None
            conn.auth.user = user
            if method == b"publickey":
                conn.auth.probe(STRANGER)
            else:
                conn.auth.send_request(method, b"")
            conn.flush()
        leave(conn)
    fp = fingerprint(STRANGER.public().blob())
    assert auth_lines(events) == [line.format(fp=fp) for line in expected]


def test_with_a_trusted_ca_every_name_reads_the_same_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With `trusted_user_ca_keys` every well-formed name may log in: the CA file is read for
    every name (configured or not) before the answer, the same calls whatever the name."""
    ca = tmp_path / "ca.pub"
    ca.write_text(ed25519_key(40).public().toString("openssh").decode() + "\n")
    ca.chmod(0o600)
    world = make_world(tmp_path, users={"bob": UserPolicy()}, trusted_user_ca_keys=str(ca))
    traces = []
    for user in NAMES:
        conn = world.connect()
        auth = conn.start_auth(user)
        with monkeypatch.context() as patch:
            events = trace(patch, conn)
            auth.send_request(b"none", b"")
            conn.flush()
        traces.append(events[: events.index(("send", FAILURE)) + 1])
    assert ("fs", "open") in traces[0]
    assert all(t == traces[0] for t in traces), traces


def test_the_reason_still_follows_the_line_it_explains(world: World) -> None:
    """A failure's conchcmd.log line (its reason) follows its sshd-worded line, also when that
    line waited for the name to be decided (a second `none` from an unknown name)."""
    with capturedLogs() as events:
        conn = world.connect()
        auth = conn.start_auth(b"nobody")
        auth.send_request(b"none", b"")
        auth.send_request(b"none", b"")
        conn.flush()
        leave(conn)
    lines = [formatEvent(e) for e in events if e.get("log_namespace") in (AUTH_LOG_NAMESPACE, LOG_NAMESPACE)]
    failed = lines.index("Failed none for invalid user nobody from 10.0.0.1 port 40000 ssh2")
    assert lines[failed - 1] == "Invalid user nobody from 10.0.0.1 port 40000"
    assert lines[failed + 1].startswith("Refused none for nobody from 10.0.0.1:40000: ")


def test_a_bug_deciding_the_name_at_the_end_still_ends_the_connection(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name decided as the connection ends: a bug there is logged with its traceback, and
    the rest of the end (slot released, the disconnect record) still happens."""

    def broken(_name: str, _files: Any) -> bool:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(world.factory, "known_user", broken)
    with capturedLogs() as events:
        conn = world.connect()
        conn.start_auth(b"nobody").send_request(b"none", b"")
        conn.flush()
        leave(conn)
    (error,) = [e["log_failure"].value for e in events if e.get("log_failure")]
    assert isinstance(error, RuntimeError) and str(error) == "simulated bug"
    assert len(world.audit.of("disconnect")) == 1
    assert not world.factory.transports
    assert world.factory.admissions.sources.total_startups == 0


@pytest.mark.parametrize("user", [b"admin", b"nobody"])
def test_a_failed_password_is_answered_its_delay_after_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, user: bytes
) -> None:
    """A name left open at `none` is decided at its failed password (for "Failed password for
    invalid user"), reading its authorized_keys: the answer still comes passwordDelay (1 s) after
    the check, not after the read (the read made slow here: 0.3 s of the server's clock)."""
    import bcrypt
    from support.sshclient import password_data

    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=4))
    world = make_world(tmp_path, users={"carol": UserPolicy(password_bcrypt=hashed)})
    known_user = world.factory.known_user

    def slow(name: str, files: Any) -> bool:
        world.clock.advance(0.3)
        return known_user(name, files)

    monkeypatch.setattr(world.factory, "known_user", slow)
    conn = world.connect()
    auth = conn.start_auth(user)
    auth.send_request(b"none", b"")
    auth.send_request(b"password", password_data(b"wrong"))
    conn.flush()
    checked = world.clock.seconds() - 0.3  # the read advanced the clock: the check was before it
    world.clock.advance(checked + 0.999 - world.clock.seconds())
    conn.flush()
    assert [m for m, _ in auth.replies] == [FAILURE]
    world.clock.advance(0.001)
    conn.flush()
    assert [m for m, _ in auth.replies] == [FAILURE, FAILURE]
