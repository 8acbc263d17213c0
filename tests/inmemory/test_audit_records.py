"""Audit records over the whole in-memory SSH stack: a connection id joins each connection's
records (and differs between connections), commands carry their channel number and kind, and a
126 the rule that refused it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from support.keys import ed25519_key
from support.sshclient import Connection, RecordingChannel, pty_request
from support.world import World, make_world
from twisted.internet.address import IPv4Address

from conchcmd.core.config import LimitsConfig, UserPolicy

CONNECTION_ID = re.compile(r"[0-9a-f]{16}")


def leave(conn: Connection) -> None:
    conn.client.transport.loseConnection()
    conn.flush()


def exec_on(conn: Connection, command: bytes, *, pty: bool = False) -> RecordingChannel:
    chan = conn.open_session()
    if pty:
        conn.request(chan, b"pty-req", pty_request())
    conn.exec(chan, command)
    conn.flush()
    return chan


def shell_on(conn: Connection, text: bytes, *, pty: bool = False) -> RecordingChannel:
    chan = conn.open_session()
    if pty:
        conn.request(chan, b"pty-req", pty_request())
    conn.request(chan, b"shell")
    conn.send(chan, text)
    if not pty:
        conn.send_eof(chan)
    conn.flush()
    return chan


def of_connection(world: World, connection: str) -> list[dict[str, Any]]:
    return [e for e in world.audit.events if e.get("connection") == connection]


def test_a_connection_id_joins_its_records_and_differs_between_connections(world: World) -> None:
    first = world.login(peer="10.0.0.1")
    second = world.login(peer="10.0.0.2")
    exec_on(first, b"help")
    exec_on(second, b"nosuch")
    exec_on(first, b"exit 3")
    failed = world.connect("10.0.0.3")
    assert failed.login(b"admin", ed25519_key(b"\x07" * 32)) != 52  # a key nobody authorized
    for conn in (first, second, failed):
        leave(conn)

    connects = world.audit.of("connect")
    ids = [c["connection"] for c in connects]
    assert len(ids) == 3 and len(set(ids)) == 3
    assert all(CONNECTION_ID.fullmatch(i) for i in ids)
    # Every record of this run belongs to exactly one connection, in its own order.
    assert all(e.get("connection") in ids for e in world.audit.events)
    by_peer = {c["peer"].split(":")[0]: c["connection"] for c in connects}
    assert [(e["event"], e.get("argv")) for e in of_connection(world, by_peer["10.0.0.1"])] == [
        ("connect", None),
        ("auth", None),
        ("command", ["help"]),
        ("command", ["exit", "3"]),
        ("disconnect", None),
    ]
    assert [(e["event"], e.get("argv")) for e in of_connection(world, by_peer["10.0.0.2"])] == [
        ("connect", None),
        ("auth", None),
        ("command", ["nosuch"]),
        ("disconnect", None),
    ]
    assert [(e["event"], e.get("ok")) for e in of_connection(world, by_peer["10.0.0.3"])] == [
        ("connect", None),
        ("auth", False),
        ("disconnect", None),
    ]
    assert world.factory.connection_ids == set()  # forgotten once closed


def test_commands_carry_their_channel_number(world: World) -> None:
    conn = world.login()
    channels = [conn.open_session() for _ in range(3)]
    # The server's number for each channel, as the client learnt it from the open confirmation.
    expected = [conn.conn.channelsToRemoteChannel[chan] for chan in channels]
    for chan, command in zip(channels, [b"exit 0", b"exit 1", b"exit 2"], strict=True):
        conn.exec(chan, command)
    conn.flush()
    records = {e["argv"][1]: e for e in world.audit.of("command")}
    assert [records[str(n)]["channel"] for n in range(3)] == expected
    assert len(set(expected)) == 3


def test_command_kind_is_exec_shell_or_pty_shell(world: World) -> None:
    conn = world.login()
    exec_on(conn, b"exit 0")
    exec_on(conn, b"exit 1", pty=True)  # an exec with a pty is still an exec
    shell_on(conn, b"exit 2\n")
    shell_on(conn, b"exit 3\r", pty=True)
    kinds = {e["argv"][1]: e["kind"] for e in world.audit.of("command")}
    assert kinds == {"0": "exec", "1": "exec", "2": "shell", "3": "pty-shell"}


def test_a_126_names_the_rule_that_refused_it(tmp_path: Path) -> None:
    world = make_world(tmp_path, users={"admin": UserPolicy(commands=frozenset({"comphash", "help"}))})
    conn = world.login()
    inside = str(world.root / "hello.txt")
    assert exec_on(conn, b"lastlog").exit_status == 126
    assert exec_on(conn, b"comphash /etc/hostname").exit_status == 126
    assert exec_on(conn, f"comphash {inside} /etc/passwd /etc/hostname".encode()).exit_status == 126
    assert exec_on(conn, f"comphash {inside}".encode()).exit_status == 0
    assert exec_on(conn, b"nosuch").exit_status == 127
    world.audit.failure = lambda: "No space left on device"  # type: ignore[method-assign]
    assert exec_on(conn, b"help").exit_status == 126
    rules = [(e["argv"][0], e["exit_code"], e.get("rule")) for e in world.audit.of("command")]
    assert rules == [
        ("lastlog", 126, "command not permitted"),
        ("comphash", 126, "outside roots: /etc/hostname"),
        ("comphash", 126, "outside roots: /etc/passwd"),  # the first path refused
        ("comphash", 0, None),
        ("nosuch", 127, None),
        ("help", 126, "audit log cannot be written"),
    ]


def test_the_rule_is_sanitised_like_every_audited_text(world: World) -> None:
    conn = world.login()
    assert exec_on(conn, b"comphash '/etc/\x1b[2Jx'").exit_status == 126
    (record,) = world.audit.of("command")
    assert record["rule"] == "outside roots: /etc/\\x1b[2Jx"


def test_a_penalty_names_the_connection_that_brought_it_and_a_refusal_none(tmp_path: Path) -> None:
    world = make_world(tmp_path, limits=LimitsConfig(penalty_seconds=30))
    for _ in range(3):
        conn = world.connect(peer="10.0.0.5")
        assert conn.login(b"admin", ed25519_key(77)) != 52
        leave(conn)
    assert world.factory.buildProtocol(IPv4Address("TCP", "10.0.0.5", 5000)) is None  # refused before kex
    last = world.audit.of("disconnect")[-1]
    (penalty,) = world.audit.of("penalty")
    assert penalty["connection"] == last["connection"]
    (refused,) = world.audit.of("refused")
    assert "connection" not in refused  # turned away before there was a connection
