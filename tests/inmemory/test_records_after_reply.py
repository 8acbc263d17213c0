"""The records of a connection's start and of an accepted login are made once the reply they
follow has been written (under FlushingReactor: sent), not before it: our version and KEXINIT,
USERAUTH_SUCCESS leave without waiting for the log lines and audit records. Each record keeps
its content and its place among the connection's records: when the same read brought another
packet, the login's records are made before that packet is handled."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support.keys import ed25519_key
from support.sshclient import Connection, connect
from support.world import World, make_world
from twisted.conch.ssh import common, transport, userauth
from twisted.internet.error import ConnectionLost
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from conchcmd.server import transport as server_transport
from conchcmd.server.transport import ServerTransport

Timeline = list[tuple[str, str]]


class Pending:
    """FlushingReactor's calls after the flush, made at the end of the server's read (or accept)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def call_after_flush(self, f: Callable[..., Any], *args: Any) -> None:
        self.calls.append((f, args))

    def run_after_flush_now(self, system: str = "-") -> None:
        while self.calls:
            f, args = self.calls.pop(0)
            f(*args)


def recorded(world: World, monkeypatch: pytest.MonkeyPatch, *, deferred: bool) -> Iterator[Timeline]:
    """What the server sends (message numbers), its audit records and its log lines, in order;
    with `deferred`, calls after the flush wait for the end of the read (or accept) being
    handled, as under FlushingReactor."""
    timeline: Timeline = []
    pending = Pending()
    if deferred:
        monkeypatch.setattr(server_transport, "after_flush_of", lambda clock: pending)

    def at_event_end(method: Callable[..., Any]) -> Callable[..., Any]:
        def handled(self: ServerTransport, *args: Any) -> Any:
            try:
                return method(self, *args)
            finally:
                timeline.append(("flush", ""))
                pending.run_after_flush_now()

        return handled

    monkeypatch.setattr(ServerTransport, "dataReceived", at_event_end(ServerTransport.dataReceived))
    monkeypatch.setattr(ServerTransport, "connectionMade", at_event_end(ServerTransport.connectionMade))
    send = ServerTransport.sendPacket

    def sending(self: ServerTransport, messageType: int, payload: bytes) -> None:
        timeline.append(("send", str(messageType)))
        send(self, messageType, payload)

    monkeypatch.setattr(ServerTransport, "sendPacket", sending)
    record = world.audit.record

    def auditing(event: str, **fields: Any) -> None:
        timeline.append(("audit", event))
        record(event, **fields)

    monkeypatch.setattr(world.audit, "record", auditing)

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_namespace", "").startswith("conchcmd") and event.get("log_format"):
            timeline.append(("log", event["log_format"].split(" {")[0]))

    globalLogPublisher.addObserver(observer)
    try:
        yield timeline
    finally:
        globalLogPublisher.removeObserver(observer)


@pytest.fixture
def deferred(world: World, monkeypatch: pytest.MonkeyPatch) -> Iterator[Timeline]:
    yield from recorded(world, monkeypatch, deferred=True)


def test_a_connection_s_first_records_follow_its_version_and_kexinit(world: World, deferred: Timeline) -> None:
    connect(world.factory, world.clock)
    first = deferred[: deferred.index(("flush", "")) + 1]
    assert first == [("send", "20"), ("flush", "")]  # KEXINIT (the version line is a write of its own)
    assert deferred[len(first) : len(first) + 2] == [("log", "Client connection from"), ("audit", "connect")]


def test_an_accepted_login_s_records_follow_userauth_success(world: World, deferred: Timeline) -> None:
    world.login()
    success = deferred.index(("send", str(userauth.MSG_USERAUTH_SUCCESS)))
    assert deferred[success : success + 5] == [
        ("send", str(userauth.MSG_USERAUTH_SUCCESS)),
        ("flush", ""),  # the end of the read that brought the request: the reply is sent
        ("log", "Accepted"),
        ("log", "Authorized"),
        ("audit", "auth"),
    ]


def without_sends(timeline: Timeline) -> Timeline:
    return [e for e in timeline if e[0] in ("audit", "log")]


def test_the_records_and_their_order_are_those_made_at_once(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = []
    for deferred in (False, True):
        world = make_world(tmp_path / str(deferred))
        with monkeypatch.context() as m:
            timeline = recorded(world, m, deferred=deferred)
            events = next(timeline)
            conn = world.login()
            chan = conn.open_session()
            conn.exec(chan, b"exit 3")
            conn.flush()
            conn.client.sendDisconnect(transport.DISCONNECT_BY_APPLICATION, b"bye")
            conn.flush()
            runs.append(
                (
                    without_sends(events),
                    [{k: v for k, v in r.items() if k not in ("ts", "connection")} for r in world.audit.events],
                )
            )
            timeline.close()
    assert runs[0] == runs[1]
    assert [e[1] for e in runs[0][0] if e[0] == "audit"] == ["connect", "auth", "command", "disconnect"]


def test_a_packet_in_the_same_read_is_handled_after_the_login_s_records(world: World, deferred: Timeline) -> None:
    conn: Connection = connect(world.factory, world.clock)
    auth = conn.start_auth(b"admin")
    auth.login(ed25519_key())  # sent, not yet delivered: the next packet goes in the same read
    conn.client.sendPacket(transport.MSG_SERVICE_REQUEST, common.NS(b"ssh-userauth"))  # refused after login
    conn.flush()
    records = without_sends(deferred)
    assert records.index(("audit", "auth")) < records.index(("log", "{kind} from"))


@pytest.mark.parametrize("user", [b"admin", b"nobody"])
def test_the_first_none_request_is_answered_before_the_user_is_looked_up(
    world: World, deferred: Timeline, monkeypatch: pytest.MonkeyPatch, user: bytes
) -> None:
    """The answer to OpenSSH's first question does not depend on the user: it leaves before the
    name is looked up (its authorized_keys read), so its timing says nothing about the name."""
    known_user = world.factory.known_user

    def looking_up(name: str, files: Any) -> bool:
        deferred.append(("lookup", name))
        return known_user(name, files)

    monkeypatch.setattr(world.factory, "known_user", looking_up)
    conn = connect(world.factory, world.clock)
    auth = conn.start_auth(user)
    auth.send_request(b"none", b"")
    conn.flush()
    failure = deferred.index(("send", str(userauth.MSG_USERAUTH_FAILURE)))
    after = [("send", "51"), ("flush", ""), ("lookup", user.decode())]
    assert deferred[failure : failure + 3] == after
    assert (("log", "Invalid user") in deferred[failure:]) is (user == b"nobody")
    assert conn.login(user, ed25519_key()) == (52 if user == b"admin" else 51)
    assert deferred.count(("lookup", user.decode())) == 1  # once per connection, as before


def test_a_connection_lost_while_its_reply_is_sent_keeps_its_records_first(
    world: World, deferred: Timeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reset that ends the connection as USERAUTH_SUCCESS is sent (its send fails, and Twisted
    calls connectionLost then): the login's records still come before the disconnect's."""
    send = ServerTransport.sendPacket

    def reset_on_success(self: ServerTransport, messageType: int, payload: bytes) -> None:
        send(self, messageType, payload)
        if messageType == userauth.MSG_USERAUTH_SUCCESS:
            self.connectionLost(Failure(ConnectionLost("reset")))

    monkeypatch.setattr(ServerTransport, "sendPacket", reset_on_success)
    conn = connect(world.factory, world.clock)
    conn.login(b"admin", ed25519_key())
    events = [e["event"] for e in world.audit.events]
    assert events == ["connect", "auth", "disconnect"]
    records = without_sends(deferred)
    assert records.index(("log", "Accepted")) < records.index(("log", "Lost client connection"))
