"""The authentication lines the whole server writes (in-memory SSH stack, real crypto), word for
word as sshd writes them, and what the REAL fail2ban-regex makes of them with the shipped filter:
every failure counted against the client's own address, no success counted, and no user name
(spaces, line breaks, Unicode spaces, look-alike text) ever yielding another address."""

from __future__ import annotations

import io
import json
from pathlib import Path

import bcrypt
import pytest
from support.fail2ban import Failure, fail2ban_available, failures, install_filter
from support.keys import ed25519_key
from support.sshclient import Connection
from support.world import World, make_world
from twisted.conch.ssh import userauth
from twisted.internet.task import Clock
from twisted.logger import LogEvent, capturedLogs, formatEvent, textFileLogObserver

from conchcmd.core.audit import AuditLog, StreamTarget
from conchcmd.core.config import UserPolicy
from conchcmd.core.logtargets import AUTH_LOG_NAMESPACE, LOG_NAMESPACE
from conchcmd.policy.authorized_keys import fingerprint

SUCCESS, FAILURE = userauth.MSG_USERAUTH_SUCCESS, userauth.MSG_USERAUTH_FAILURE
PASSWORD = b"the right one"
USERS = {"carol": UserPolicy(password_bcrypt=bcrypt.hashpw(PASSWORD, bcrypt.gensalt(rounds=4)))}
STRANGER = ed25519_key(9)  # authorized nowhere
ADMIN_FP = fingerprint(ed25519_key().public().blob())
STRANGER_FP = fingerprint(STRANGER.public().blob())
#: Names a client may send to try to forge a line or an address fail2ban would ban.
HOSTILE_NAMES = [
    "x from 6.6.6.6 port 1 ssh2",
    "x from 6.6.6.6",
    "invalid user x from 6.6.6.6 port 1 ssh2",
    "root from 6.6.6.6 port 1 ssh2\nFailed password for root from 6.6.6.6 port 1 ssh2",
    "r\rFailed password for root from 6.6.6.6 port 1 ssh2",
    "t\tfrom\t6.6.6.6\tport\t1\tssh2",
    "nbsp\u00a0from\u00a06.6.6.6\u00a0port\u00a01\u00a0ssh2",
    "ideo\u3000from\u30006.6.6.6\u3000port\u30001\u3000ssh2",
    "ls\u2028Failed password for root from 6.6.6.6 port 1 ssh2",
    "ro\u200bot\u202e from 6.6.6.6 port 1 ssh2",
    "r\u043e\u043et\u2066\u00adx\ufeff",
    "6.6.6.6",
    "[conchcmd.auth#info] Failed password for root from 6.6.6.6 port 1 ssh2",
    "",
]


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path, users=USERS)


def auth_lines(events: list[LogEvent]) -> list[str]:
    return [formatEvent(e) for e in events if e.get("log_namespace") == AUTH_LOG_NAMESPACE]


def leave(conn: Connection) -> None:
    conn.client.transport.loseConnection()
    conn.flush()


def try_password(world: World, conn: Connection, user: bytes, secret: bytes) -> int:
    auth = conn.auth or conn.start_auth(user)
    d = auth.password(secret)
    conn.flush()
    world.clock.advance(1)  # the failure delay
    conn.flush()
    return d.result[0] if d.called else 0


def test_each_kind_of_login_writes_sshds_line(world: World) -> None:
    with capturedLogs() as events:
        conn = world.connect("10.0.0.1")
        assert conn.login(b"admin", STRANGER) == FAILURE
        leave(conn)
        conn = world.connect("10.0.0.2")
        assert conn.login(b"root", ed25519_key()) == FAILURE
        leave(conn)
        conn = world.connect("10.0.0.3")
        assert try_password(world, conn, b"carol", b"wrong") == FAILURE
        assert try_password(world, conn, b"carol", PASSWORD) == SUCCESS
        leave(conn)
        conn = world.connect("2001:db8::5", port=40001)
        assert conn.login(b"admin", ed25519_key()) == SUCCESS
        leave(conn)
    assert auth_lines(events) == [
        f"Failed publickey for admin from 10.0.0.1 port 40000 ssh2: ED25519 {STRANGER_FP}",
        "Connection closed by authenticating user admin 10.0.0.1 port 40000 [preauth]",
        "Invalid user root from 10.0.0.2 port 40000",
        f"Failed publickey for invalid user root from 10.0.0.2 port 40000 ssh2: ED25519 {ADMIN_FP}",
        "Connection closed by invalid user root 10.0.0.2 port 40000 [preauth]",
        "Failed password for carol from 10.0.0.3 port 40000 ssh2",
        "Accepted password for carol from 10.0.0.3 port 40000 ssh2",
        "Disconnected from user carol 10.0.0.3 port 40000",
        f"Accepted publickey for admin from 2001:db8::5 port 40001 ssh2: ED25519 {ADMIN_FP}",
        "Disconnected from user admin 2001:db8::5 port 40001",
    ]
    accepted = next(e for e in events if formatEvent(e).startswith("Accepted publickey"))
    assert (accepted["user"], accepted["host"], accepted["port"], accepted["peer"]) == (
        "admin",
        "2001:db8::5",
        40001,
        "[2001:db8::5]:40001",
    )
    assert (accepted["method"], accepted["key_type"], accepted["fingerprint"]) == ("publickey", "ED25519", ADMIN_FP)


def test_the_reason_follows_on_a_conchcmd_log_line(world: World) -> None:
    with capturedLogs() as events:
        conn = world.connect("10.0.0.7")
        assert conn.login(b"admin", STRANGER) == FAILURE
    assert [formatEvent(e) for e in events if e.get("log_namespace") == LOG_NAMESPACE][-1] == (
        "Refused publickey for admin from 10.0.0.7:40000: key not in authorized_keys"
    )


def test_with_trusted_user_ca_keys_no_name_is_invalid(tmp_path: Path) -> None:
    """Any name may log in with a certificate from a trusted CA: none is an "invalid user"."""
    ca = tmp_path / "ca.pub"
    ca.write_text(ed25519_key(40).public().toString("openssh").decode() + "\n")
    ca.chmod(0o600)
    world = make_world(tmp_path, users=USERS, trusted_user_ca_keys=str(ca))
    with capturedLogs() as events:
        conn = world.connect("10.0.0.6")
        assert conn.login(b"root", STRANGER) == FAILURE
    assert auth_lines(events) == [f"Failed publickey for root from 10.0.0.6 port 40000 ssh2: ED25519 {STRANGER_FP}"]


def test_max_auth_tries_writes_sshds_two_lines_and_nothing_after(world: World) -> None:
    with capturedLogs() as events:
        conn = world.connect("10.0.0.9")
        for n in range(6):
            conn.login(b"admin", ed25519_key(20 + n))
        leave(conn)
    lines = auth_lines(events)
    assert len(lines) == 8, lines
    assert all(
        line.startswith("Failed publickey for admin from 10.0.0.9 port 40000 ssh2: ED25519 ") for line in lines[:6]
    )
    assert lines[6:] == [
        "maximum authentication attempts exceeded for admin from 10.0.0.9 port 40000 ssh2",
        "Disconnecting authenticating user admin 10.0.0.9 port 40000: Too many authentication failures [preauth]",
    ]


def test_a_new_user_name_on_the_same_connection_is_named_again(world: World) -> None:
    with capturedLogs() as events:
        conn = world.connect("10.0.0.8")
        auth = conn.start_auth(b"root")
        for user in (b"root", b"nobody", b"nobody", b"admin"):
            auth.user = user
            d = auth.login(STRANGER)
            conn.flush()
            assert d.result[0] == FAILURE
    assert [line for line in auth_lines(events) if line.startswith("Invalid")] == [
        "Invalid user root from 10.0.0.8 port 40000",
        "Invalid user nobody from 10.0.0.8 port 40000",
    ]
    assert auth_lines(events)[-1].startswith("Failed publickey for admin from 10.0.0.8 ")


def test_invisible_and_bidi_characters_in_a_user_name_are_escaped_in_lines_and_records(world: World) -> None:
    """A name with a zero-width space (reads as "root") and a right-to-left override (reverses
    what follows when shown): escaped in the auth-log lines, the conchcmd.log line and the audit
    record (the same text as in the auth log), whose JSON line holds no invisible character."""
    name = "ro\u200bot\u202egnp.exe"
    with capturedLogs() as events:
        conn = world.connect("10.0.0.5")
        assert conn.login(name.encode(), STRANGER) == FAILURE
        leave(conn)
    assert auth_lines(events) == [
        "Invalid user ro\\u200bot\\u202egnp.exe from 10.0.0.5 port 40000",
        "Failed publickey for invalid user ro\\u200bot\\u202egnp.exe from 10.0.0.5 port 40000 ssh2: "
        f"ED25519 {STRANGER_FP}",
        "Connection closed by invalid user ro\\u200bot\\u202egnp.exe 10.0.0.5 port 40000 [preauth]",
    ]
    main = [formatEvent(e) for e in events if e.get("log_namespace") == LOG_NAMESPACE]
    assert any("ro\\u200bot\\u202egnp.exe" in line for line in main), main
    assert not any(ch in line for line in main for ch in "\u200b\u202e")
    [record] = [r for r in world.audit.of("auth") if r.get("peer") == "10.0.0.5:40000"]
    assert record["user"] == "ro\\u200bot\\u202egnp.exe"
    stream = io.StringIO()
    AuditLog(StreamTarget(stream), Clock()).record(**record)
    line = stream.getvalue()
    assert line.isascii() and '"user": "ro\\\\u200bot\\\\u202egnp.exe"' in line
    assert json.loads(line)["user"] == record["user"]


# -- fail2ban ---------------------------------------------------------------------------------------

needs_fail2ban = pytest.mark.skipif(not fail2ban_available(), reason="fail2ban (fail2ban-regex) is not installed")


def stdout_text(events: list[LogEvent]) -> str:
    """The lines as `conchcmd serve` writes them to stdout (its observer, its namespaces)."""
    out = io.StringIO()
    observer = textFileLogObserver(out, timeFormat="%Y-%m-%d %H:%M:%S%z")
    for event in events:
        if event.get("log_namespace") in (LOG_NAMESPACE, AUTH_LOG_NAMESPACE):
            observer(event)
    return out.getvalue()


def as_syslog(text: str) -> str:
    """The same messages as syslog writes them: "Nov 29 21:00:00 host conchcmd[PID]: MESSAGE"."""
    return "".join(f"Nov 29 21:00:00 myhost conchcmd[4242]: {line.split('] ', 1)[1]}\n" for line in text.splitlines())


def hostile_session(world: World) -> dict[str, str]:
    """Logins under every hostile name, by password and by key, each from its own address; and a
    user who runs a command that reads like a failure line. Returns peer host -> what it did."""
    peers: dict[str, str] = {}
    for n, name in enumerate(HOSTILE_NAMES):
        for i, method in enumerate(("password", "publickey", "hostile method")):
            host = f"10.1.{n}.{i + 1}"
            peers[host] = f"{method} as {name!r}"
            conn = world.connect(host)
            if method == "password":
                assert try_password(world, conn, name.encode(), b"guess") == FAILURE
            elif method == "publickey":
                assert conn.login(name.encode(), STRANGER) == FAILURE
            else:  # the method name is the client's to choose too
                auth = conn.start_auth(b"root")
                auth.send_request(name.encode(), b"")
                conn.flush()
                assert [number for number, _ in auth.replies] == [FAILURE]
            leave(conn)
    conn = world.login(peer="10.2.0.1")
    chan = conn.open_session()
    conn.exec(chan, b"comphash Failed password for root from 6.6.6.6 port 1 ssh2")
    leave(conn)
    return peers


def check_failures(found: list[Failure], peers: dict[str, str], expected: int) -> None:
    assert len(found) == expected, "\n".join(f.line for f in found)
    for failure in found:
        assert failure.host in peers, f"{failure.host} from {failure.line!r}"
        assert f" {failure.host} port 40000" in failure.line, failure  # the line's own client
        assert "Accepted" not in failure.line


@needs_fail2ban
def test_fail2ban_counts_only_the_clients_own_address(world: World, tmp_path: Path) -> None:
    with capturedLogs() as events:
        peers = hostile_session(world)
    filter_path = install_filter(tmp_path / "fail2ban")
    stdout = stdout_text(events)
    assert "Cmd received from admin@10.2.0.1:40000 : comphash Failed password for root from 6.6.6.6" in stdout
    # Per hostile name: password -> Invalid user + Failed password; key -> Invalid user + Failed
    # publickey for invalid user; method -> Invalid user root + Failed METHOD for invalid user root.
    # "Connection closed ... [preauth]" counts only in aggressive mode.
    # stdout under systemd, forwarded from the journal to syslog: the prefix, then the whole line
    journal = "".join(f"Nov 29 21:00:00 myhost conchcmd[4242]: {line}\n" for line in stdout.splitlines())
    logs = {"stdout": stdout, "syslog": as_syslog(stdout), "journal": journal}
    for kind, text in logs.items():
        log = tmp_path / f"{kind}.log"
        log.write_text(text)
        check_failures(failures(log, filter_path), peers, 6 * len(HOSTILE_NAMES))
        if kind != "journal":
            check_failures(failures(log, filter_path, "mode=aggressive"), peers, 9 * len(HOSTILE_NAMES))
    found = failures(tmp_path / "stdout.log", filter_path)
    hosts = [f.host for f in found]
    assert sorted(set(hosts)) == sorted(peers)
    assert all(hosts.count(h) == 2 for h in peers)


@needs_fail2ban
def test_fail2ban_counts_failed_keys_of_known_users_only_when_asked(world: World, tmp_path: Path) -> None:
    """A client offers each of its keys in turn: by default a known user's "Failed publickey" is
    not counted (as in fail2ban's sshd filter); hitting max_auth_tries is."""
    with capturedLogs() as events:
        conn = world.connect("10.3.0.1")
        assert conn.login(b"admin", STRANGER) == FAILURE
        assert conn.login(b"admin", ed25519_key()) == SUCCESS
        leave(conn)
        conn = world.connect("10.3.0.2")
        for n in range(6):
            conn.login(b"admin", ed25519_key(30 + n))
        leave(conn)
    log = tmp_path / "stdout.log"
    log.write_text(stdout_text(events))
    filter_path = install_filter(tmp_path / "fail2ban")
    strict = failures(log, filter_path)
    assert [(f.host, f.line.split("] ", 1)[1].split(" from")[0]) for f in strict] == [
        ("10.3.0.2", "maximum authentication attempts exceeded for admin"),
        (
            "10.3.0.2",
            "Disconnecting authenticating user admin 10.3.0.2 port 40000: Too many authentication failures [preauth]",
        ),
    ]
    every = failures(log, filter_path, "publickey=any")
    assert [f.host for f in every] == ["10.3.0.1"] + ["10.3.0.2"] * 8
