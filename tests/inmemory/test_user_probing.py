"""Which names have keys cannot be told from the answers to `none` (in-memory SSH stack, real
config and real authorized_keys files): OpenSSH's client opens every login with it, and sshd
answers it from its account database, the same work for every name. The server reads no file
before any `none` answer, whether the name has keys, is configured without a file, or is
unknown; sshd's lines stay as they were, each in its place among the others."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from support.keys import ed25519_key
from support.sshclient import Connection, password_data
from support.world import World, make_world
from twisted.conch.ssh import transport, userauth
from twisted.conch.ssh.common import NS
from twisted.logger import LogEvent, capturedLogs, formatEvent, globalLogPublisher

from conchcmd.core.config import UserPolicy
from conchcmd.core.logtargets import AUTH_LOG_NAMESPACE, LOG_NAMESPACE
from conchcmd.server.userauth import UserAuthService

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


def unknown_name_waiting(world: World) -> tuple[Any, Any]:
    """A connection whose unknown name's lines wait: two `none` requests for "nobody", answered."""
    conn = world.connect()
    auth = conn.start_auth(b"nobody")
    auth.send_request(b"none", b"")
    auth.send_request(b"none", b"")
    conn.flush()
    return conn, auth


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
        conn, _ = unknown_name_waiting(world)
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


# Attacks on the queue of auth-log lines that wait for their name to be decided: no file of the
# user's read before an answer that no fixed delay hides, the queue bounded whatever the client
# sends, no line lost to a bug while deciding, and the lines in the order they had before the
# queue, among conchcmd.log's (both go to stdout by default).

PEER = "from 10.0.0.1 port 40000"


def all_lines(events: list[LogEvent]) -> list[str]:
    """sshd's lines and conchcmd.log's, in the order written (both go to stdout by default)."""
    return [formatEvent(e) for e in events if e.get("log_namespace") in (AUTH_LOG_NAMESPACE, LOG_NAMESPACE)]


def with_password(tmp_path: Path) -> World:
    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=4))
    return make_world(tmp_path, users={"carol": UserPolicy(password_bcrypt=hashed)})


@pytest.mark.parametrize("user", [b"admin", b"nobody"])
def test_a_password_request_where_passwords_are_not_offered_reads_no_file_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, user: bytes
) -> None:
    """Without password logins a password request is refused at once (no passwordDelay): its
    answer must not wait for the name's authorized_keys, or timing it tells which names have
    keys as the opening `none` did. The lines still come, at the connection's end."""
    world = make_world(tmp_path)
    conn = world.connect()
    auth = conn.start_auth(user)
    with capturedLogs() as events:
        auth.send_request(b"none", b"")
        conn.flush()
        traced = trace(monkeypatch, conn)
        auth.send_request(b"password", password_data(b"guess"))
        conn.flush()
        assert [m for m, _ in auth.replies] == [FAILURE, FAILURE]
        assert traced[: traced.index(("send", FAILURE)) + 1] == [("send", FAILURE)]
        monkeypatch.undo()
        leave(conn)
    invalid = "" if user == b"admin" else "invalid user "
    expected = [] if user == b"admin" else [f"Invalid user nobody {PEER}"]
    expected.append(f"Failed password for {invalid}{user.decode()} {PEER} ssh2")
    assert [line for line in all_lines(events) if not line.startswith(("Refused", "Lost"))][:-1] == expected


def test_the_last_failure_allowed_reads_no_file_before_the_disconnect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed password that reaches max_auth_tries is answered by the disconnect at once (no
    passwordDelay): no file of the name's read before it either."""
    world = with_password(tmp_path)
    conn = world.connect()
    auth = conn.start_auth(b"admin")
    with capturedLogs() as events:
        for _ in range(6):
            auth.send_request(b"none", b"")
        conn.flush()
        traced = trace(monkeypatch, conn)
        auth.send_request(b"password", password_data(b"guess"))
        conn.flush()
        monkeypatch.undo()
    sent = ("send", transport.MSG_DISCONNECT)
    assert traced[: traced.index(sent) + 1] == [sent]
    written = all_lines(events)
    maximum = written.index(f"maximum authentication attempts exceeded for admin {PEER} ssh2")
    assert written[maximum - 2 : maximum + 2] == [
        f"Failed password for admin {PEER} ssh2",
        "Refused password for admin from 10.0.0.1:40000: wrong password",
        f"maximum authentication attempts exceeded for admin {PEER} ssh2",
        "Disconnecting authenticating user admin 10.0.0.1 port 40000: Too many authentication failures [preauth]",
    ]


def test_the_queue_stays_bounded_however_long_names_alternate(tmp_path: Path) -> None:
    """An unknown name left open at `none`, then key probes (PK_OK, never counted as failures)
    alternating between two names that accept the client's key: each change of name must not
    add to the queue for ever (it grew by one entry per probe until the connection's end)."""
    world = make_world(tmp_path)
    keys = Path(world.config.authorized_keys.replace("%u", ""))
    shutil.copy(keys / "admin", keys / "ops")
    conn = world.connect()
    auth = conn.start_auth(b"nobody")
    with capturedLogs() as events:
        auth.send_request(b"none", b"")
        conn.flush()
        for i in range(400):
            auth.user = (b"admin", b"ops")[i % 2]
            auth.send_request(b"publickey", b"\x00" + _key_data(ed25519_key()))
            conn.flush()
        service = conn.server.service
        assert isinstance(service, UserAuthService)
        assert len(service._waiting_lines) <= 3  # the first sight of each name
        leave(conn)
    assert [m for m, _ in auth.replies][1:] == [userauth.MSG_USERAUTH_PK_OK] * 400
    assert [line for line in all_lines(events) if "conchcmd" not in line][:1] == [f"Invalid user nobody {PEER}"]
    assert sum("Invalid user" in line for line in all_lines(events)) == 1


def _key_data(key: Any) -> bytes:
    return NS(key.sshType()) + NS(key.public().blob())


def test_a_bug_deciding_one_name_loses_no_line_of_the_others(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug while deciding one name (at the connection's end) is logged; the lines of the other
    names, and of this one, are still written (fail2ban counts them), with the name taken as
    valid as a file that cannot be read is (not called invalid)."""
    known_user = world.factory.known_user

    def broken(name: str, files: Any) -> bool:
        if name == "admin":
            raise RuntimeError("simulated bug")
        return known_user(name, files)

    monkeypatch.setattr(world.factory, "known_user", broken)
    with capturedLogs() as events:
        conn = world.connect()
        auth = conn.start_auth(b"nobody")
        auth.send_request(b"none", b"")
        auth.send_request(b"none", b"")
        auth.user = b"admin"
        auth.send_request(b"none", b"")
        conn.flush()
        leave(conn)
    (error,) = [e["log_failure"].value for e in events if e.get("log_failure")]
    assert str(error) == "simulated bug"
    auth_lines = [formatEvent(e) for e in events if e.get("log_namespace") == AUTH_LOG_NAMESPACE]
    assert auth_lines == [
        f"Invalid user nobody {PEER}",
        f"Failed none for invalid user nobody {PEER} ssh2",
        f"Failed none for admin {PEER} ssh2",
        "Connection closed by authenticating user admin 10.0.0.1 port 40000 [preauth]",
    ]
    assert len(world.audit.of("disconnect")) == 1


def test_a_login_after_an_open_name_keeps_the_order_of_its_lines(world: World) -> None:
    """An unknown name left open, then a login under another: "Invalid user", "Accepted" and
    conchcmd.log's "Authorized" line in that order, as before the queue (Authorized came first)."""
    with capturedLogs() as events:
        conn = world.connect()
        auth = conn.start_auth(b"nobody")
        auth.send_request(b"none", b"")
        conn.flush()
        auth.user = b"admin"
        auth.send_request(b"publickey", auth.signed(ed25519_key()))
        conn.flush()
        assert auth.replies[-1][0] == userauth.MSG_USERAUTH_SUCCESS
    written = [line for line in all_lines(events) if not line.startswith("Client connection")]
    assert written[0] == f"Invalid user nobody {PEER}"
    assert written[1].startswith(f"Accepted publickey for admin {PEER} ssh2: ED25519 SHA256:")
    assert written[2].startswith("Authorized admin@10.0.0.1:40000 by authorized_keys ")


def test_the_login_grace_line_follows_the_lines_of_before(tmp_path: Path) -> None:
    """Lines waiting for an open name when the login grace time runs out are written before
    conchcmd.log's "Login grace time ... exceeded" line, as they were before the queue."""
    world = make_world(tmp_path)
    with capturedLogs() as events:
        conn, _ = unknown_name_waiting(world)
        world.clock.advance(world.config.limits.login_grace_time)
        conn.flush()
    written = all_lines(events)
    grace = next(i for i, line in enumerate(written) if line.startswith("Login grace time"))
    assert f"Failed none for invalid user nobody {PEER} ssh2" in written[:grace]
    assert f"Invalid user nobody {PEER}" in written[:grace]


def test_a_failed_password_writes_the_lines_of_every_name_behind_its_delay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unknown name left open at `none`, then password guesses under another name: their
    "Failed password" lines (what fail2ban counts) come at each guess, not only as the connection
    ends (up to the login grace time later); the open name is decided too, the answer hidden by
    passwordDelay all the same."""
    world = with_password(tmp_path)
    conn = world.connect()
    auth = conn.start_auth(b"nobody")
    with capturedLogs() as events:
        auth.send_request(b"none", b"")
        conn.flush()
        auth.user = b"root"
        auth.send_request(b"password", password_data(b"guess"))
        conn.flush()
        assert [line for line in all_lines(events) if not line.startswith("Refused")] == [
            f"Invalid user nobody {PEER}",
            f"Invalid user root {PEER}",
            f"Failed password for invalid user root {PEER} ssh2",
        ]
    assert [m for m, _ in auth.replies] == [FAILURE]
    world.clock.advance(1)
    conn.flush()
    assert [m for m, _ in auth.replies] == [FAILURE, FAILURE]


@pytest.mark.parametrize("method", [b"none", b"keyboard-interactive"])
def test_an_answer_sent_at_once_costs_the_same_for_every_kind_of_name(
    world: World, monkeypatch: pytest.MonkeyPatch, method: bytes
) -> None:
    """A counted failure answered at once (a second `none`, a method not offered): nothing is
    written before its answer, whether the name was decided at `none` (`[users.bob]`: its lines
    could be written at once) or not (its lines wait). Writing a configured name's lines first
    made its answer ~20 µs slower over loopback (`none_timing.py --then none`): an oracle for
    configured names. The decided name's lines come on the reactor's next turn."""
    seen: dict[bytes, list[tuple[str, Any]]] = {}
    for user in (b"admin", b"bob", b"nobody"):
        conn = world.connect()
        auth = conn.start_auth(user)
        auth.send_request(b"none", b"")
        conn.flush()
        with monkeypatch.context() as patch, capturedLogs() as logged:
            events = trace(patch, conn)

            def observer(e: LogEvent, _events: list[tuple[str, Any]] = events) -> None:
                _events.append(("log", formatEvent(e)))

            globalLogPublisher.addObserver(observer)
            try:
                auth.send_request(method, b"")
                conn.flush()
            finally:
                globalLogPublisher.removeObserver(observer)
            seen[user] = events[: events.index(("send", FAILURE)) + 1]
            world.clock.advance(0)
            later = auth_lines(logged)
        assert [m for m, _ in auth.replies] == [FAILURE, FAILURE]
        if user == b"bob":
            assert later == [f"Failed {method.decode()} for bob {PEER} ssh2"]
        leave(conn)
    assert seen[b"admin"] == seen[b"bob"] == seen[b"nobody"] == [("send", FAILURE)]


def test_a_bug_writing_a_waiting_line_duplicates_none_of_the_others(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in writing one waiting line (here the first "Failed none"): the lines written
    before it are not written again when the queue is written later (the connection's end)."""
    from conchcmd.server.authlog import AuthLog

    failed = AuthLog.failed
    calls = []

    def broken(self: AuthLog, *args: Any, **kwargs: Any) -> None:
        calls.append(args)
        if len(calls) == 1:
            raise RuntimeError("simulated bug")
        failed(self, *args, **kwargs)

    monkeypatch.setattr(AuthLog, "failed", broken)
    with capturedLogs() as events:
        conn, auth = unknown_name_waiting(world)
        auth.probe(STRANGER)
        conn.flush()
        world.clock.advance(0)
        leave(conn)
    written = auth_lines(events)
    assert written.count(f"Invalid user nobody {PEER}") == 1, written
    assert written[-1] == "Connection closed by invalid user nobody 10.0.0.1 port 40000 [preauth]"


def test_the_protocol_error_line_follows_the_lines_of_before(world: World) -> None:
    """A malformed request ending the connection while lines wait for an open name: they are
    written before conchcmd.log's "Protocol error" line, as before the queue, and only once the
    disconnect has gone (no file of the name's read before it)."""
    with capturedLogs() as events:
        conn, auth = unknown_name_waiting(world)
        auth.transport.sendPacket(userauth.MSG_USERAUTH_REQUEST, b"\x00\x00\x00\x09nobo")  # cut short
        conn.flush()
    written = all_lines(events)
    error = next(i for i, line in enumerate(written) if line.startswith("Protocol error from"))
    assert written[error - 3 : error] == [
        f"Invalid user nobody {PEER}",
        f"Failed none for invalid user nobody {PEER} ssh2",
        "Refused none for nobody from 10.0.0.1:40000: ('unsupported authentication, failing', None)",
    ]


def test_the_too_many_waiting_line_follows_the_lines_of_before(tmp_path: Path) -> None:
    """Requests pipelined behind a password check still running, past the limit, while lines
    wait for an open name: they come before conchcmd.log's "More than 4 ... waiting" line."""
    from support.runners import ManualRunner

    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=4))
    checks = ManualRunner()
    world = make_world(tmp_path, password_runner=checks, users={"carol": UserPolicy(password_bcrypt=hashed)})
    with capturedLogs() as events:
        conn = world.connect()
        auth = conn.start_auth(b"nobody")
        auth.send_request(b"none", b"")
        auth.send_request(b"none", b"")
        auth.send_request(b"password", password_data(b"guess"))  # checked on a thread: waits
        for _ in range(5):
            auth.send_request(b"none", b"")
        conn.flush()
        assert checks.submitted == 1
        leave(conn)
    written = all_lines(events)
    more = next(i for i, line in enumerate(written) if line.startswith("More than 4 authentication requests"))
    assert f"Invalid user nobody {PEER}" in written[:more]
    assert f"Failed none for invalid user nobody {PEER} ssh2" in written[:more]


@pytest.mark.parametrize("user", [b"admin", b"carol", b"nobody"])
def test_a_name_decided_earlier_costs_its_none_answer_nothing_either(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, user: bytes
) -> None:
    """A failed password decides every open name (its delay hides the reads); a `none` for one
    of them again afterwards is answered at once: nothing may be written before that answer
    for a name decided invalid either ("Invalid user" was written first, ~20 µs over loopback:
    a name with keys or configured told from an unknown one). The line still comes, next turn."""
    world = with_password(tmp_path)
    conn = world.connect()
    auth = conn.start_auth(user)
    auth.send_request(b"none", b"")
    auth.user = b"root"
    auth.send_request(b"password", password_data(b"guess"))  # decides `user` and root
    conn.flush()
    world.clock.advance(1)
    conn.flush()
    assert [m for m, _ in auth.replies] == [FAILURE, FAILURE]
    auth.user = user
    with monkeypatch.context() as patch, capturedLogs() as logged:
        events = trace(patch, conn)

        def observer(e: LogEvent) -> None:
            events.append(("log", formatEvent(e)))

        globalLogPublisher.addObserver(observer)
        try:
            auth.send_request(b"none", b"")
            conn.flush()
        finally:
            globalLogPublisher.removeObserver(observer)
        before = events[: events.index(("send", FAILURE)) + 1]
        world.clock.advance(0)
        later = auth_lines(logged)
    assert [m for m, _ in auth.replies] == [FAILURE] * 3
    assert before == [("send", FAILURE)]
    invalid = "invalid user " if user == b"nobody" else ""
    expected = [f"Invalid user nobody {PEER}"] if user == b"nobody" else []
    assert later == [*expected, f"Failed none for {invalid}{user.decode()} {PEER} ssh2"]
    leave(conn)


def answers_and_lines(conn: Connection, *namespaces: str) -> tuple[list[str], Callable[[LogEvent], None]]:
    """One list of what reaches the client ("answer" for each delivery of its bytes) and, once the
    observer returned is added, the lines logged in the namespaces given, in the order they came."""
    order: list[str] = []
    receive = conn.client.dataReceived

    def received(data: bytes) -> None:
        order.append("answer")
        receive(data)

    conn.client.dataReceived = received  # type: ignore[method-assign]

    def observer(e: LogEvent) -> None:
        if e.get("log_namespace") in namespaces:
            order.append(formatEvent(e))

    return order, observer


@pytest.mark.parametrize("user", [b"admin", b"bob", b"nobody"])
def test_the_last_failures_disconnect_leaves_before_any_line_of_any_name(world: World, user: bytes) -> None:
    """The failure that reaches max_auth_tries is answered by the disconnect, whose bytes leave
    after the reactor's next turn (a closing connection is written by the next poll, after the
    timed calls). A configured name's held lines, written on that turn, came before it: ~20 µs
    that told `[users.bob]` from the others. They come as the connection ends, as the others'."""
    conn = world.connect()
    auth = conn.start_auth(user)
    order, observer = answers_and_lines(conn, AUTH_LOG_NAMESPACE)
    for _ in range(6):  # the first is free: five failures
        auth.send_request(b"none", b"")
    conn.flush()
    world.clock.advance(0)
    order.clear()
    globalLogPublisher.addObserver(observer)
    try:
        auth.send_request(b"none", b"")  # the sixth
        conn.flush()
    finally:
        globalLogPublisher.removeObserver(observer)
    assert order[0] == "answer", order
    who = f"invalid user {user.decode()}" if user == b"nobody" else user.decode()
    assert f"maximum authentication attempts exceeded for {who} {PEER} ssh2" in order


@pytest.mark.parametrize("user", [b"admin", b"bob", b"nobody"])
def test_a_malformed_requests_disconnect_leaves_before_any_line_of_any_name(world: World, user: bytes) -> None:
    """A request cut short after its name (no method) ends the connection as a protocol error,
    answered by the disconnect at once: "Protocol error" (conchcmd.log) was written before it for
    a configured name (decided at once: nothing waits) and after it for the others (behind their
    waiting lines), ~20 µs that told `[users.bob]` from them. Now after it for every name."""
    conn = world.connect()
    auth = conn.start_auth(user)
    order, observer = answers_and_lines(conn, AUTH_LOG_NAMESPACE, LOG_NAMESPACE)
    globalLogPublisher.addObserver(observer)
    try:
        auth.transport.sendPacket(userauth.MSG_USERAUTH_REQUEST, NS(user) + NS(b"ssh-connection"))
        conn.flush()
    finally:
        globalLogPublisher.removeObserver(observer)
    assert order[0] == "answer", order
    assert any(line.startswith("Protocol error from") for line in order)
