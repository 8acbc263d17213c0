"""A client that repeats a refused message or request writes one log line, not one per refusal:
each kind is logged the first time (after authentication; before it, not at all) and its count
joins the line that logs the connection's end. Counted here as the operator sees it, in lines."""

from __future__ import annotations

import struct
from collections.abc import Callable

from support.keys import authorized_line, ed25519_key
from support.scripted import force_send
from support.sshclient import Connection, RecordingChannel, pty_request
from support.world import World, add_user
from twisted.conch.ssh import common, transport
from twisted.logger import capturedLogs, formatEvent

from conchcmd.core.logtargets import LOG_NAMESPACE

NS = common.NS
REPEATS = 1000


def lines_until_the_end(conn: Connection, send: Callable[[], None]) -> list[str]:
    """The server's log lines written while `send()` runs and the client then hangs up."""
    with capturedLogs() as events:
        send()
        conn.flush()
        conn.client.transport.loseConnection()
        conn.flush()
    return [formatEvent(e) for e in events if e.get("log_namespace") == LOG_NAMESPACE]


def test_a_message_refused_after_login_is_logged_once_with_its_count(world: World) -> None:
    conn = world.login()

    def send() -> None:
        for _ in range(REPEATS):
            force_send(conn.client, transport.MSG_SERVICE_REQUEST, NS(b"ssh-userauth"))

    lines = lines_until_the_end(conn, send)
    assert [line for line in lines if "Message 5" in line and not line.startswith("Lost")] == [
        "Message 5 after authentication from 10.0.0.1:40000: answered UNIMPLEMENTED"
    ]
    assert len(lines) == 2, lines
    assert lines[-1].startswith("Lost client connection 10.0.0.1:40000 (admin): ")
    assert lines[-1].endswith(f" (refused: Message 5 after authentication x{REPEATS})")


def test_before_login_refusals_have_no_line_of_their_own_only_the_count(world: World) -> None:
    conn = world.connect()
    conn.start_auth(b"admin")

    def send() -> None:
        for _ in range(REPEATS):
            force_send(conn.client, 90, NS(b"session") + struct.pack(">3L", 7, 65536, 32768))

    lines = lines_until_the_end(conn, send)
    assert len(lines) == 1, lines
    assert lines[0].startswith("Lost client connection 10.0.0.1:40000 (not authenticated): ")
    assert lines[0].endswith(f" (refused: Message 90 during authentication x{REPEATS})")


def test_refused_subsystem_requests_are_logged_once_with_a_count(world: World) -> None:
    """Before: one line per request, thousands a second from one user."""
    conn = world.login()
    chan = conn.open_session()

    def send() -> None:
        for _ in range(REPEATS):
            conn.conn.sendRequest(chan, b"subsystem", NS(b"sftp"), wantReply=1).addErrback(lambda _: None)

    lines = lines_until_the_end(conn, send)
    assert lines[0] == "Refused subsystem sftp for admin@10.0.0.1:40000"
    assert len(lines) == 2, lines
    assert lines[-1].startswith("Lost client connection 10.0.0.1:40000 (admin): ")
    assert lines[-1].endswith(f" (refused: Refused subsystem x{REPEATS})")


def test_refused_pty_and_malformed_requests_are_logged_once_each_with_a_count(world: World) -> None:
    add_user(world, "erin", authorized_line(ed25519_key(31), "no-pty"))
    conn = world.connect()
    assert conn.login(b"erin", ed25519_key(31)) == 52
    chan = conn.open_session()

    def send() -> None:
        for _ in range(REPEATS):
            conn.conn.sendRequest(chan, b"pty-req", pty_request(), wantReply=1).addErrback(lambda _: None)
            conn.conn.sendRequest(chan, b"window-change", b"\0", wantReply=1).addErrback(lambda _: None)
        for i in range(REPEATS):  # Conch cannot even name these: each its own kind would be no bound
            conn.conn.sendRequest(chan, b"\xff%d" % i, b"", wantReply=1).addErrback(lambda _: None)

    lines = lines_until_the_end(conn, send)
    assert lines[0].startswith("Refused pty for erin@10.0.0.1:40000: not permitted by authorized_keys ")
    assert lines[1] == "Malformed window-change request from erin@10.0.0.1:40000"
    assert len(lines) == 3, lines
    assert lines[-1].startswith("Lost client connection 10.0.0.1:40000 (erin): ")
    assert lines[-1].endswith(f" (refused: Refused pty x{REPEATS}; Malformed request x{2 * REPEATS})")


def test_channel_opens_of_ever_new_types_are_one_kind_of_refusal(world: World) -> None:
    """The channel type is the client's to choose: one kind per type name would be one line, and
    one more counter, per name (a line and some memory per packet)."""
    conn = world.login()

    def send() -> None:
        for i in range(REPEATS):
            chan = RecordingChannel(localWindow=65536, conn=conn.conn)
            chan.name = b"x-%d" % i
            chan.opened.addErrback(lambda _: None)
            conn.conn.openChannel(chan)

    lines = lines_until_the_end(conn, send)
    assert lines[0] == "Refused x-0 channel for 10.0.0.1:40000: only session channels are allowed"
    assert len(lines) == 2, lines
    assert lines[-1].endswith(f" (refused: Refused non-session channel (only session channels are allowed) x{REPEATS})")
    assert len(conn.server.refusals.counts) == 1


def test_forwarding_refusals_are_counted_on_the_connections_last_line(world: World) -> None:
    """The avatar notes refusals in its connection's log (the transport owns it), not one of its own."""
    conn = world.login()
    assert conn.server.avatar.refusals is conn.server.refusals
    with capturedLogs() as events:
        for _ in range(3):
            conn.conn.sendGlobalRequest(b"tcpip-forward", common.NS(b"127.0.0.1") + struct.pack(">L", 8080))
        conn.flush()
        conn.client.loseConnection()
        conn.flush()
    lines = [formatEvent(e) for e in events if e.get("log_namespace") == LOG_NAMESPACE]
    assert len([line for line in lines if "forwarding is disabled" in line]) == 1
    assert any("Refused tcpip-forward x3" in line for line in lines), lines


def test_a_disconnect_reason_that_quotes_the_client_is_logged_escaped(world: World) -> None:
    """Conch's answer to an unknown service quotes the client's name for it ("don't have service
    NAME"): that reason, as the line logging the connection's end gives it, must be as escaped as
    any other text from a client (it was the raw bytes: a terminal escape, a carriage return and
    64 KiB of them went into the operator's log before login)."""
    conn = world.connect()
    name = b"x\x1b[2J\r\x08forged" + b"A" * 5000

    def send() -> None:
        force_send(conn.client, transport.MSG_SERVICE_REQUEST, NS(name))

    lines = lines_until_the_end(conn, send)
    assert conn.factory.disconnect_reason == (transport.DISCONNECT_SERVICE_NOT_AVAILABLE, b"don't have service " + name)
    (line,) = [line for line in lines if line.startswith("Lost client connection")]
    quoted = "don't have service x\\x1b[2J\\x0d\\x08forged"
    assert line.startswith(f"Lost client connection 10.0.0.1:40000 (not authenticated): {quoted}AAA")
    assert line.isprintable() and len(line) < 400, line
    (record,) = world.audit.of("disconnect")
    assert record["reason"].startswith(quoted + "AAA")  # escaped once, not twice
