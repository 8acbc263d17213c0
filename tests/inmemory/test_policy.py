"""Access policy over the whole in-memory SSH stack: per-user commands and roots, forced commands,
refused ptys, certificates, and bcrypt passwords (offered to every name once some user has one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bcrypt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from support.certlogin import cert_login, make_cert
from support.keys import authorized_line, ed25519_key
from support.sshclient import Connection, RecordingChannel, pty_request, result_of
from support.world import World, add_user, make_world
from twisted.conch.ssh import common, userauth
from twisted.conch.ssh.keys import Key

from conchcmd.core.config import LimitsConfig, UserPolicy
from conchcmd.policy.authorized_keys import fingerprint
from conchcmd.policy.certs import public_blob

SUCCESS, FAILURE = userauth.MSG_USERAUTH_SUCCESS, userauth.MSG_USERAUTH_FAILURE
PASSWORD = b"correct horse battery staple"
HASHED = bcrypt.hashpw(PASSWORD, bcrypt.gensalt(rounds=4))
ALICE_KEY = 11
CAROL_KEY = 12


def policy_world(tmp_path: Path, **changes: Any) -> World:
    """admin: everything; alice: lastlog only; carol: comphash below root/sub only, with a password."""
    users = {
        "alice": UserPolicy(commands=frozenset({"lastlog"})),
        "carol": UserPolicy(comphash_roots=(str(tmp_path / "root" / "sub"),), password_bcrypt=HASHED),
    }
    world = make_world(tmp_path, users=users, **changes)
    (world.root / "sub").mkdir()
    (world.root / "sub" / "inner.txt").write_bytes(b"inner\n")
    add_user(world, "alice", authorized_line(ed25519_key(ALICE_KEY)))
    add_user(world, "carol", authorized_line(ed25519_key(CAROL_KEY)))
    return world


@pytest.fixture
def pw(tmp_path: Path) -> World:
    return policy_world(tmp_path)


def login(world: World, user: bytes, key: Key, peer: str = "10.0.0.1") -> Connection:
    conn = world.connect(peer)
    assert conn.login(user, key) == SUCCESS
    return conn


def run(conn: Connection, command: bytes) -> RecordingChannel:
    chan = conn.open_session()
    conn.exec(chan, command)
    conn.flush()
    return chan


def plain_shell(conn: Connection, text: bytes) -> RecordingChannel:
    chan = conn.open_session()
    conn.request(chan, b"shell")
    conn.send(chan, text)
    conn.send_eof(chan)
    conn.flush()
    return chan


# -- per-user commands -----------------------------------------------------------------------------------


def test_command_outside_the_users_list_is_126_in_exec(pw: World) -> None:
    conn = login(pw, b"alice", ed25519_key(ALICE_KEY))
    chan = run(conn, b"comphash " + str(pw.root / "hello.txt").encode())
    assert (chan.exit_status, bytes(chan.err), bytes(chan.out)) == (126, b"comphash: not permitted\n", b"")
    chan = run(conn, b"lastlog -n 1")
    assert (chan.exit_status, bytes(chan.out), bytes(chan.err)) == (0, b"line 20\n", b"")
    records = pw.audit.of("command")
    assert [(r["user"], r["argv"][0], r["exit_code"]) for r in records] == [
        ("alice", "comphash", 126),
        ("alice", "lastlog", 0),
    ]


def test_command_outside_the_users_list_is_126_in_the_plain_shell(pw: World) -> None:
    conn = login(pw, b"alice", ed25519_key(ALICE_KEY))
    chan = plain_shell(conn, b"comphash /etc/hosts\nlastlog -n 1\ncomphash /etc/hosts\n")
    assert bytes(chan.err) == b"comphash: not permitted\ncomphash: not permitted\n"
    assert bytes(chan.out) == b"line 20\n"
    assert chan.exit_status == 126  # the last line's status


def test_command_outside_the_users_list_is_126_in_the_terminal_shell(pw: World) -> None:
    conn = login(pw, b"alice", ed25519_key(ALICE_KEY))
    chan = conn.open_session()
    result_of(conn.request(chan, b"pty-req", pty_request()))
    conn.request(chan, b"shell")
    chan.out.clear()
    conn.send(chan, b"comphash /etc/hosts\r")
    assert b"comphash: not permitted\r\n" in chan.out
    conn.send(chan, b"exit\r")
    assert chan.exit_status == 126


def test_unknown_commands_are_still_127_for_a_restricted_user(pw: World) -> None:
    conn = login(pw, b"alice", ed25519_key(ALICE_KEY))
    chan = run(conn, b"rm -rf /")
    assert (chan.exit_status, bytes(chan.err)) == (127, b"rm: command not found\n")


def test_help_lists_only_permitted_commands(pw: World) -> None:
    conn = login(pw, b"alice", ed25519_key(ALICE_KEY))
    chan = run(conn, b"help")
    assert chan.exit_status == 0
    listed = [line.split()[0] for line in bytes(chan.out).decode().split("Exit statuses:")[0].splitlines()[1:] if line]
    assert listed == ["lastlog", "help", "exit"]
    chan = run(conn, b"help comphash")
    assert chan.exit_status == 2 and b"no such command: comphash" in chan.err
    chan = run(conn, b"help lastlog")
    assert chan.exit_status == 0 and chan.out.startswith(b"usage: lastlog")


def test_help_lists_everything_for_an_unrestricted_user(pw: World) -> None:
    conn = login(pw, b"admin", ed25519_key())
    chan = run(conn, b"help")
    assert b"comphash" in chan.out and b"lastlog" in chan.out


def test_exit_is_always_permitted(pw: World) -> None:
    conn = login(pw, b"alice", ed25519_key(ALICE_KEY))
    assert run(conn, b"exit 9").exit_status == 9
    chan = plain_shell(conn, b"comphash /x\nexit\n")
    assert chan.exit_status == 126  # a bare exit keeps the last status


def test_comphash_roots_narrow_the_global_roots(pw: World) -> None:
    conn = login(pw, b"carol", ed25519_key(CAROL_KEY))
    inside_global = pw.root / "hello.txt"
    chan = run(conn, b"comphash " + str(inside_global).encode())
    assert chan.exit_status == 126
    assert bytes(chan.err) == f"comphash: {inside_global}: outside the allowed roots\n".encode()
    chan = run(conn, b"comphash " + str(pw.root / "sub" / "inner.txt").encode())
    assert chan.exit_status == 0 and chan.out.endswith(b"/sub/inner.txt\n")
    chan = run(conn, b"comphash /etc/hostname")
    assert chan.exit_status == 126


def test_comphash_roots_do_not_narrow_other_users(pw: World) -> None:
    conn = login(pw, b"admin", ed25519_key())
    assert run(conn, b"comphash " + str(pw.root / "hello.txt").encode()).exit_status == 0


def test_symlink_out_of_the_users_root_is_refused(pw: World) -> None:
    (pw.root / "sub" / "escape").symlink_to(pw.root / "hello.txt")
    conn = login(pw, b"carol", ed25519_key(CAROL_KEY))
    chan = run(conn, b"comphash " + str(pw.root / "sub" / "escape").encode())
    assert chan.exit_status == 126


def terminal(conn: Connection, user: bytes) -> RecordingChannel:
    chan = conn.open_session()
    result_of(conn.request(chan, b"pty-req", pty_request()))
    conn.request(chan, b"shell")
    assert chan.out.endswith(user + b"@testhost> ")
    chan.out.clear()
    return chan


def test_completion_offers_only_permitted_commands(pw: World) -> None:
    conn = login(pw, b"alice", ed25519_key(ALICE_KEY))
    chan = terminal(conn, b"alice")
    conn.send(chan, b"c\t")
    assert chan.out == b"c\x07"  # comphash is not hers: nothing to complete
    chan.out.clear()
    conn.send(chan, b"\x03l\t")
    assert chan.out.endswith(b"lastlog ")
    chan.out.clear()
    conn.send(chan, b"\x03help \t")
    assert b"lastlog" in chan.out and b"exit" in chan.out and b"comphash" not in chan.out
    conn.send(chan, b"\x03comphash /\t\r")
    assert b"comphash: not permitted" in chan.out


def test_completion_offers_comphash_to_an_unrestricted_user(pw: World) -> None:
    conn = login(pw, b"admin", ed25519_key())
    chan = terminal(conn, b"admin")
    conn.send(chan, b"comp\t")
    assert chan.out == b"comphash "


def test_path_completion_stays_inside_the_users_roots(pw: World) -> None:
    conn = login(pw, b"carol", ed25519_key(CAROL_KEY))
    chan = terminal(conn, b"carol")
    conn.send(chan, f"comphash {pw.root}/".encode() + b"\t")
    assert chan.out.endswith(f"{pw.root}/sub/".encode())  # hello.txt is outside carol's root
    chan.out.clear()
    conn.send(chan, b"\t")
    assert chan.out.endswith(b"inner.txt ")


# -- forced commands -----------------------------------------------------------------------------------


@pytest.fixture
def forced(tmp_path: Path) -> World:
    world = policy_world(tmp_path)
    add_user(world, "dave", authorized_line(ed25519_key(21), 'command="lastlog -n 2"'))
    add_user(world, "alice", authorized_line(ed25519_key(ALICE_KEY), 'command="comphash /etc/hosts"'))
    return world


def test_forced_command_runs_instead_of_the_exec(forced: World) -> None:
    conn = login(forced, b"dave", ed25519_key(21))
    chan = run(conn, b"comphash /etc/passwd")
    assert (chan.exit_status, bytes(chan.out), bytes(chan.err)) == (0, b"line 19\nline 20\n", b"")
    (record,) = forced.audit.of("command")
    assert record["argv"] == ["lastlog", "-n", "2"]
    assert record["original_command"] == "comphash /etc/passwd"
    assert record["exit_code"] == 0


def test_forced_command_runs_for_a_shell_request(forced: World) -> None:
    conn = login(forced, b"dave", ed25519_key(21))
    chan = conn.open_session()
    conn.request(chan, b"shell")
    conn.send(chan, b"comphash /etc/passwd\n")
    conn.flush()
    assert (chan.exit_status, bytes(chan.out)) == (0, b"line 19\nline 20\n")
    (record,) = forced.audit.of("command")
    assert record["argv"] == ["lastlog", "-n", "2"] and record["original_command"] == ""


def test_forced_command_runs_for_a_shell_with_a_pty(forced: World) -> None:
    conn = login(forced, b"dave", ed25519_key(21))
    chan = conn.open_session()
    result_of(conn.request(chan, b"pty-req", pty_request()))
    conn.request(chan, b"shell")
    conn.flush()
    assert (chan.exit_status, bytes(chan.out)) == (0, b"line 19\r\nline 20\r\n")
    assert b"dave@testhost>" not in chan.out


def test_forced_command_original_command_is_sanitised(forced: World) -> None:
    conn = login(forced, b"dave", ed25519_key(21))
    run(conn, b"evil \x1b[2J\x07")
    (record,) = forced.audit.of("command")
    assert record["original_command"] == "evil \\x1b[2J\\x07"


def test_forced_command_the_user_may_not_run_is_126(forced: World) -> None:
    conn = login(forced, b"alice", ed25519_key(ALICE_KEY))
    chan = run(conn, b"lastlog")
    assert (chan.exit_status, bytes(chan.err)) == (126, b"comphash: not permitted\n")
    (record,) = forced.audit.of("command")
    assert record["original_command"] == "lastlog" and record["exit_code"] == 126


def test_auth_record_names_the_terms(forced: World) -> None:
    login(forced, b"dave", ed25519_key(21))
    (auth,) = [e for e in forced.audit.of("auth") if e["ok"]]
    assert auth["user"] == "dave" and auth["method"] == "publickey"
    assert auth["fingerprint"] == fingerprint(ed25519_key(21).public().blob())


# -- no-pty ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", ["no-pty", "restrict", "pty,restrict", "NO-PTY"])
def test_pty_request_is_refused_for_a_no_pty_key_and_the_shell_is_plain(tmp_path: Path, options: str) -> None:
    world = policy_world(tmp_path)
    add_user(world, "erin", authorized_line(ed25519_key(31), options))
    conn = login(world, b"erin", ed25519_key(31))
    chan = conn.open_session()
    reply = conn.request(chan, b"pty-req", pty_request())
    assert chan.events == ["refused"]
    assert reply.called and hasattr(reply.result, "check")
    reply.addErrback(lambda _: None)
    conn.request(chan, b"shell")
    conn.send(chan, b"lastlog -n 1\n")
    conn.send_eof(chan)
    assert bytes(chan.out) == b"line 20\n"  # no banner, no prompt, no CRLF: the plain shell
    assert chan.exit_status == 0


def test_restrict_then_pty_allows_a_pty(tmp_path: Path) -> None:
    world = policy_world(tmp_path)
    add_user(world, "erin", authorized_line(ed25519_key(31), "restrict,pty"))
    conn = login(world, b"erin", ed25519_key(31))
    chan = conn.open_session()
    result_of(conn.request(chan, b"pty-req", pty_request()))
    conn.request(chan, b"shell")
    assert chan.out.endswith(b"erin@testhost> ")


def test_no_pty_exec_still_runs(tmp_path: Path) -> None:
    world = policy_world(tmp_path)
    add_user(world, "erin", authorized_line(ed25519_key(31), "no-pty"))
    conn = login(world, b"erin", ed25519_key(31))
    chan = conn.open_session()
    conn.request(chan, b"pty-req", pty_request()).addErrback(lambda _: None)
    conn.exec(chan, b"nosuch")
    conn.flush()
    assert (chan.exit_status, bytes(chan.err), bytes(chan.out)) == (127, b"nosuch: command not found\n", b"")


# -- from= and expiry-time in the stack -------------------------------------------------------------------


def test_from_is_checked_against_the_connection_peer(tmp_path: Path) -> None:
    world = policy_world(tmp_path)
    add_user(world, "frank", authorized_line(ed25519_key(41), 'from="10.0.0.*,!10.0.0.66"'))
    assert world.connect("10.0.0.7").login(b"frank", ed25519_key(41)) == SUCCESS
    assert world.connect("10.0.0.66").login(b"frank", ed25519_key(41)) == FAILURE
    assert world.connect("10.0.1.7").login(b"frank", ed25519_key(41)) == FAILURE
    refused = [e for e in world.audit.of("auth") if not e["ok"]]
    assert [e["reason"] for e in refused][-1].startswith("from= does not allow 10.0.1.7")


def test_expiry_time_follows_the_server_clock(tmp_path: Path) -> None:
    world = policy_world(tmp_path)
    add_user(world, "gina", authorized_line(ed25519_key(42), 'expiry-time="19700102Z"'))  # 86400 s after 0
    world.clock.advance(86400 - 10)
    assert world.connect("10.0.0.8").login(b"gina", ed25519_key(42)) == SUCCESS
    world.clock.advance(20)
    assert world.connect("10.0.0.9").login(b"gina", ed25519_key(42)) == FAILURE


# -- a certificate login in memory -----------------------------------------------------------------------


def test_certificate_login_with_force_command_and_no_pty(tmp_path: Path) -> None:
    ca = ed25519.Ed25519PrivateKey.generate()
    cas = tmp_path / "cas"
    from cryptography.hazmat.primitives import serialization

    cas.write_bytes(
        ca.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n"
    )
    world = policy_world(tmp_path, trusted_user_ca_keys=str(cas))
    user_key = ed25519_key(51)
    cert = make_cert(ca, user_key, principals=[b"hank"], force_command=b"lastlog -n 1")
    conn = world.connect("10.0.0.3")
    assert cert_login(conn, b"hank", user_key, cert) == SUCCESS
    (auth,) = [e for e in world.audit.of("auth") if e["ok"]]
    assert auth["cert_key_id"] == "memory-cert" and auth["cert_serial"] == 314
    assert auth["ca_fingerprint"] == fingerprint(public_blob(ca.public_key()))
    assert auth["fingerprint"] == fingerprint(user_key.public().blob())
    assert auth["key_type"] == "ssh-ed25519-cert-v01@openssh.com"
    chan = conn.open_session()
    conn.request(chan, b"pty-req", pty_request()).addErrback(lambda _: None)
    assert chan.events == ["refused"]  # no permit-pty extension
    conn.exec(chan, b"help")
    conn.flush()
    assert (chan.exit_status, bytes(chan.out)) == (0, b"line 20\n")
    (record,) = world.audit.of("command")
    assert record["original_command"] == "help"


def test_refused_certificate_is_audited_with_its_details(tmp_path: Path) -> None:
    ca = ed25519.Ed25519PrivateKey.generate()  # not trusted anywhere
    world = policy_world(tmp_path)
    user_key = ed25519_key(52)
    conn = world.connect("10.0.0.4")
    assert cert_login(conn, b"hank", user_key, make_cert(ca, user_key, principals=[b"hank"])) == FAILURE
    (auth,) = world.audit.of("auth")
    assert auth["ok"] is False and "is not trusted" in auth["reason"]
    assert auth["cert_key_id"] == "memory-cert" and auth["cert_serial"] == 314
    assert auth["ca_fingerprint"] == fingerprint(public_blob(ca.public_key()))


def test_refused_certificate_principals_are_escaped_once_in_the_audit_record(tmp_path: Path) -> None:
    ca = ed25519.Ed25519PrivateKey.generate()
    cas = tmp_path / "cas"
    from cryptography.hazmat.primitives import serialization

    cas.write_bytes(
        ca.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n"
    )
    world = policy_world(tmp_path, trusted_user_ca_keys=str(cas))
    user_key = ed25519_key(53)
    cert = make_cert(ca, user_key, principals=[b"b\\ob", "\u200broot".encode()])
    assert cert_login(world.connect("10.0.0.5"), b"hank", user_key, cert) == FAILURE
    (auth,) = world.audit.of("auth")
    assert auth["reason"] == "certificate principals b\\\\ob, \\u200broot do not include hank"


# -- passwords ------------------------------------------------------------------------------------------


def failure_methods(packet: bytes) -> tuple[list[bytes], bool]:
    methods, rest = common.getNS(packet)
    assert len(rest) == 1
    return methods.split(b","), rest != b"\x00"


def try_none(conn: Connection, user: bytes) -> tuple[int, bytes]:
    auth = conn.start_auth(user)
    d = auth._request(b"none", b"")
    conn.flush()
    return result_of(d)


def password_attempt(world: World, conn: Connection, user: bytes, secret: bytes) -> int:
    auth = conn.auth or conn.start_auth(user)
    d = auth.password(secret)
    conn.flush()
    world.clock.advance(2)  # Conch holds back a password failure for a second
    conn.flush()
    return result_of(d)[0] if d.called else 0


def test_password_login_with_the_right_password(pw: World) -> None:
    conn = pw.connect("10.0.0.20")
    assert password_attempt(pw, conn, b"carol", PASSWORD) == SUCCESS
    (auth,) = pw.audit.of("auth")
    (connect,) = pw.audit.of("connect")
    assert auth == {
        "event": "auth",
        "connection": connect["connection"],
        "user": "carol",
        "peer": "10.0.0.20:40000",
        "method": "password",
        "ok": True,
    }
    chan = run(conn, b"comphash " + str(pw.root / "sub" / "inner.txt").encode())
    assert chan.exit_status == 0  # carol's own policy applies to a password login too
    assert run(conn, b"comphash " + str(pw.root / "hello.txt").encode()).exit_status == 126


def test_wrong_password_fails_and_is_audited(pw: World) -> None:
    conn = pw.connect("10.0.0.21")
    assert password_attempt(pw, conn, b"carol", b"wrong") == FAILURE
    assert password_attempt(pw, conn, b"carol", PASSWORD + b" ") == FAILURE
    assert password_attempt(pw, conn, b"carol", b"") == FAILURE
    assert password_attempt(pw, conn, b"carol", PASSWORD) == SUCCESS
    records = pw.audit.of("auth")
    assert [(r["ok"], r["method"]) for r in records] == [(False, "password")] * 3 + [(True, "password")]
    assert records[0]["reason"] == "wrong password"


def test_wrong_passwords_count_toward_max_auth_tries(tmp_path: Path) -> None:
    world = policy_world(tmp_path, limits=LimitsConfig(max_auth_tries=3))
    conn = world.connect("10.0.0.22")
    results = [password_attempt(world, conn, b"carol", b"guess%d" % n) for n in range(2)]
    assert results == [FAILURE, FAILURE] and not conn.disconnected
    password_attempt(world, conn, b"carol", b"guess3")
    assert conn.disconnected
    (bye,) = world.audit.of("disconnect")
    assert bye["reason"] == "Too many authentication failures"


def test_password_and_key_failures_count_together(tmp_path: Path) -> None:
    world = policy_world(tmp_path, limits=LimitsConfig(max_auth_tries=2))
    conn = world.connect("10.0.0.23")
    auth = conn.start_auth(b"carol")
    auth.login(ed25519_key(99))
    conn.flush()
    assert not conn.disconnected
    password_attempt(world, conn, b"carol", b"nope")
    assert conn.disconnected


def test_password_is_offered_to_users_with_and_without_one(pw: World) -> None:
    for user in (b"carol", b"admin", b"alice"):  # the answer does not tell who has a password
        number, packet = try_none(pw.connect("10.0.0.31"), user)
        assert number == FAILURE
        methods, partial = failure_methods(packet)
        assert sorted(methods) == [b"password", b"publickey"] and partial is False, user


def test_unknown_user_gets_the_same_failure_as_a_user_without_password(pw: World) -> None:
    _, known = try_none(pw.connect("10.0.0.32"), b"admin")
    _, unknown = try_none(pw.connect("10.0.0.33"), b"nobody")
    assert unknown == known


def test_failed_key_attempt_lists_methods_per_user(pw: World) -> None:
    conn = pw.connect("10.0.0.34")
    auth = conn.start_auth(b"carol")
    d = auth.login(ed25519_key(98))
    conn.flush()
    number, packet = result_of(d)
    assert number == FAILURE and sorted(failure_methods(packet)[0]) == [b"password", b"publickey"]


def test_password_for_a_user_without_one_fails(pw: World) -> None:
    conn = pw.connect("10.0.0.35")
    assert password_attempt(pw, conn, b"admin", b"anything") == FAILURE
    conn = pw.connect("10.0.0.36")
    assert password_attempt(pw, conn, b"nobody", PASSWORD) == FAILURE
    assert [e["ok"] for e in pw.audit.of("auth")] == [False, False]


def test_no_password_auth_at_all_without_password_users(world: World) -> None:
    number, packet = try_none(world.connect("10.0.0.37"), b"admin")
    assert (number, failure_methods(packet)) == (FAILURE, ([b"publickey"], False))
    conn = world.connect("10.0.0.38")
    assert password_attempt(world, conn, b"admin", b"x") == FAILURE


def test_key_login_still_works_for_a_password_user(pw: World) -> None:
    conn = login(pw, b"carol", ed25519_key(CAROL_KEY), peer="10.0.0.39")
    (auth,) = pw.audit.of("auth")
    assert auth["method"] == "publickey" and auth["user"] == "carol"
    assert run(conn, b"exit 0").exit_status == 0
