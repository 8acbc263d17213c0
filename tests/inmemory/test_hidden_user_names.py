"""A certificate principal with invisible characters (in memory, real crypto). As a login name it
is refused (user names are letters, digits, '.', '_', '-'), and the refusal names it escaped; as
another principal of a certificate that logs in, no line or record of the whole session (login,
command, a second connection turned away, idle close, disconnect) holds it raw. The main log and
audit records escape with sanitise, the auth log with log_word."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from support.certlogin import cert_login, make_cert
from support.keys import ed25519_key
from support.world import World, make_world
from twisted.logger import capturedLogs, formatEvent

from conchcmd.core.config import LimitsConfig
from conchcmd.core.logtargets import AUTH_LOG_NAMESPACE, LOG_NAMESPACE

SUCCESS, FAILURE = 52, 51
NAME = "op\u200bx\u202egnp.exe"  # reads as "opxexe.png" where shown raw
SHOWN = "op\\u200bx\\u202egnp.exe"


def ca_world(tmp_path: Path) -> tuple[World, ed25519.Ed25519PrivateKey]:
    ca = ed25519.Ed25519PrivateKey.generate()
    cas = tmp_path / "cas"
    cas.write_bytes(
        ca.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n"
    )
    cas.chmod(0o600)
    world = make_world(
        tmp_path, trusted_user_ca_keys=str(cas), max_clients_per_user=1, limits=LimitsConfig(idle_timeout=60)
    )
    return world, ca


def no_hidden_character(lines: list[str], records: list[dict[str, Any]]) -> None:
    for text in [*lines, *(json.dumps(r, ensure_ascii=False) for r in records)]:
        assert "\u200b" not in text and "\u202e" not in text, text


def test_a_hidden_principal_as_login_name_is_refused_and_escaped(tmp_path: Path) -> None:
    w, ca = ca_world(tmp_path)
    user_key = ed25519_key(51)
    with capturedLogs() as events:
        conn = w.connect("10.0.0.3")
        assert cert_login(conn, NAME.encode(), user_key, make_cert(ca, user_key, principals=[NAME.encode()])) == FAILURE
        conn.client.transport.loseConnection()
        conn.flush()
    main = [formatEvent(e) for e in events if e.get("log_namespace") == LOG_NAMESPACE]
    auth = [formatEvent(e) for e in events if e.get("log_namespace") == AUTH_LOG_NAMESPACE]
    assert f"Refused publickey for {SHOWN} from 10.0.0.3:40000: invalid user name" in main, main
    assert auth[0] == f"Invalid user {SHOWN} from 10.0.0.3 port 40000", auth
    assert auth[1].startswith(f"Failed publickey for invalid user {SHOWN} from 10.0.0.3 port 40000 ssh2: ")
    [record] = w.audit.of("auth")
    assert (record["ok"], record["user"], record["reason"]) == (False, SHOWN, "invalid user name")
    no_hidden_character(main + auth, w.audit.events)


def test_a_hidden_principal_beside_the_name_reaches_nothing_raw(tmp_path: Path) -> None:
    w, ca = ca_world(tmp_path)
    user_key = ed25519_key(51)
    cert = make_cert(ca, user_key, principals=[NAME.encode(), b"opx"])
    with capturedLogs() as events:
        conn = w.connect("10.0.0.3")
        assert cert_login(conn, b"opx", user_key, cert) == SUCCESS
        chan = conn.open_session()
        conn.exec(chan, b"lastlog -n 1")
        conn.flush()
        assert (chan.exit_status, bytes(chan.out)) == (0, b"line 20\n")
        second = w.connect("10.0.0.4")
        assert cert_login(second, b"opx", user_key, cert) != SUCCESS  # max_clients_per_user 1
        second.flush()
        w.clock.advance(61)  # idle: the server closes the first connection
        conn.flush()
        assert conn.disconnected
    main = [formatEvent(e) for e in events if e.get("log_namespace") == LOG_NAMESPACE]
    auth = [formatEvent(e) for e in events if e.get("log_namespace") == AUTH_LOG_NAMESPACE]
    for expected in (
        "Authorized opx@10.0.0.3:40000 by certificate 'memory-cert' serial 314 via trusted_user_ca_keys",
        "Cmd received from opx@10.0.0.3:40000 : lastlog -n 1",
        "Too many connections for user opx (max_clients_per_user 1): turned away opx@10.0.0.4:40000",
        "Closing connection 10.0.0.3:40000 (opx): idle timeout (60 s without activity)",
        "Lost client connection 10.0.0.3:40000 (opx): ",
    ):
        assert any(line.startswith(expected) for line in main), (expected, main)
    named = [(r["event"], r.get("ok"), r["user"]) for r in w.audit.events if "user" in r]
    assert named == [
        ("auth", True, "opx"),
        ("command", None, "opx"),
        ("auth", False, "opx"),
        ("disconnect", None, None),  # the turned-away connection held no slot
        ("disconnect", None, "opx"),
    ], named
    no_hidden_character(main + auth, w.audit.events)
