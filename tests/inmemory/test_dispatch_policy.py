"""The dispatch policy (conchcmd.wire.dispatch), cell by cell: in each phase of a connection, each kind
of message is sent as exact bytes by a client, and what comes back (a disconnect with its reason
code and text, UNIMPLEMENTED naming that packet, or no refusal) must be what the table says.

The table itself was written from sshd's dispatch tables (see conchcmd/wire/dispatch.py); cells where
conchcmd deliberately differs from sshd are listed in DIFFERS_FROM_SSHD with the reason.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from support.dispatchprobe import NS, PROBES, REPLIES, SUCCESS, Probe, in_memory, run
from support.keys import ed25519_key
from support.scripted import force_send
from support.sshclient import ClientFactory, ClientTransport, connect
from support.world import World
from twisted.conch.ssh import transport
from twisted.logger import capturedLogs, formatEvent

from conchcmd.server.transport import ServerTransport
from conchcmd.wire.dispatch import POLICY, Action, Phase, decide


def cells() -> list[Any]:
    out = []
    for phase in Phase:
        if phase is Phase.CLOSED:
            continue
        for message in PROBES:
            for strict in (False, True) if phase in (Phase.KEX_METHOD, Phase.KEX_NEWKEYS) else (False,):
                if decide(phase, message, strict).action is Action.PROCESS and message in (20, 21, 30):
                    continue  # the key exchange itself: every connection runs these cells
                name = f"{phase.name}-{message}-{'strict' if strict else 'plain'}"
                out.append(pytest.param(phase, message, strict, id=name))
    return out


@pytest.fixture
def phases_seen(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, Phase]]:
    """(sequence number, phase) of every message the server dispatched."""
    seen: list[tuple[int, Phase]] = []
    original = ServerTransport.dispatchMessage

    def recording(self: ServerTransport, messageNum: int, payload: bytes) -> None:
        seen.append(((self.incomingPacketSequence - 1) & 0xFFFFFFFF, self.dispatch_phase()))
        original(self, messageNum, payload)

    monkeypatch.setattr(ServerTransport, "dispatchMessage", recording)
    return seen


@pytest.mark.parametrize(("phase", "message", "strict"), cells())
def test_each_cell_gets_what_the_policy_says(
    world: World, phases_seen: list[tuple[int, Phase]], phase: Phase, message: int, strict: bool
) -> None:
    with capturedLogs():
        conn, sent = run(in_memory(world), phase, message, strict)
    assert sent.seq is not None
    assert (sent.seq, phase) in phases_seen, "the probe did not arrive in the phase under test"
    verdict = decide(phase, message, strict)
    client = conn.client
    assert isinstance(client, Probe)
    unimplemented = (transport.MSG_UNIMPLEMENTED, struct.pack(">L", sent.seq)) in client.received
    bye = conn.factory.disconnect_reason
    if verdict.action is Action.DISCONNECT:
        expected = verdict.text % message if "%d" in verdict.text else verdict.text
        assert bye == (verdict.reason, expected.encode())
        assert not unimplemented
    elif verdict.action is Action.UNIMPLEMENTED:
        assert unimplemented and bye is None
    else:
        assert not unimplemented and bye is None
        if verdict.action is Action.PROCESS and message in REPLIES:
            assert REPLIES[message] in [m for m, _ in client.received]


def test_the_table_covers_every_phase_and_says_where_sshd_does_the_same() -> None:
    assert set(POLICY) == set(Phase)
    for phase in Phase:
        for message in range(256):
            verdict = decide(phase, message)
            assert verdict.source or verdict.action is Action.PROCESS, (phase, message)


def test_only_the_connection_protocol_runs_after_authentication() -> None:
    """Finding 5's rule as data: no SERVICE_REQUEST, no USERAUTH_REQUEST once logged in."""
    for phase in (Phase.AUTHENTICATED, Phase.REKEY_METHOD, Phase.REKEY_NEWKEYS):
        assert decide(phase, 5).action is Action.UNIMPLEMENTED
        assert decide(phase, 50).action is Action.UNIMPLEMENTED
    processed = {m for m in range(50, 256) if decide(Phase.AUTHENTICATED, m).action is Action.PROCESS}
    assert processed == {80, 81, 82, *range(90, 101)}


# -- nothing after DISCONNECT (finding 7) ----------------------------------------------------


def test_messages_buffered_behind_a_disconnect_are_not_dispatched(world: World) -> None:
    """One read carries a packet that ends the connection and, behind it, a channel open and an
    exec: before, the command ran after the server had said goodbye."""
    conn = world.login()
    client = conn.client
    service = conn.server.service  # the transport lets go of it once the connection is lost
    force_send(client, 0)  # invalid type 0: disconnect
    force_send(client, 90, NS(b"session") + struct.pack(">3L", 0, 65536, 32768))
    force_send(client, 98, struct.pack(">L", 0) + NS(b"exec") + b"\x01" + NS(b"lastlog -n 1"))
    with capturedLogs() as events:
        conn.flush()
    assert conn.factory.disconnect_reason == (transport.DISCONNECT_PROTOCOL_ERROR, b"invalid packet type 0")
    assert world.audit.of("exec") == [] and world.audit.of("command") == []
    assert service.channels == {}
    assert not any("lastlog" in formatEvent(e) for e in events)


# -- before any key exchange (finding 7) -----------------------------------------------------


def test_service_and_userauth_requests_before_the_key_exchange_are_refused(world: World, phases_seen: Any) -> None:
    conn, sent = run(in_memory(world), Phase.BEFORE_KEX, 5, strict=False)
    assert (transport.MSG_UNIMPLEMENTED, struct.pack(">L", sent.seq)) in conn.client.received  # type: ignore[attr-defined]
    assert transport.MSG_SERVICE_ACCEPT not in [m for m, _ in conn.client.received]  # type: ignore[attr-defined]
    assert conn.login(b"admin", ed25519_key()) == SUCCESS  # and the connection goes on, as with sshd
    conn, _ = run(in_memory(world), Phase.BEFORE_KEX, 50, strict=False)
    assert conn.disconnected
    assert conn.factory.disconnect_reason == (transport.DISCONNECT_PROTOCOL_ERROR, b"protocol error: rcvd type 50")


# -- malformed key-exchange values (finding 7) -----------------------------------------------


class BadInit(ClientTransport):
    """Answers the server's KEXINIT with a method INIT carrying `blob` as its public value."""

    blob = b""

    def ssh_KEXINIT(self, packet: bytes) -> None:
        if self.negotiate(packet) is not None:
            self.sendPacket(30, NS(self.blob))


@pytest.mark.parametrize(
    ("kex", "blob", "why"),
    [
        (b"mlkem768x25519-sha256", b"", b"Invalid C_INIT length"),
        (b"mlkem768x25519-sha256", b"\0" * 40, b"Invalid C_INIT length"),
        (b"curve25519-sha256", b"", b"invalid key exchange value: "),
        (b"curve25519-sha256", b"\0" * 32, b"invalid key exchange value: "),  # a low-order point
    ],
)
def test_a_malformed_key_exchange_value_is_key_exchange_failed(
    world: World, kex: bytes, blob: bytes, why: bytes
) -> None:
    """Before: an AttributeError inside the server ("protocol error"), Conch passing a str reason."""
    factory = ClientFactory()
    factory.protocol = BadInit  # type: ignore[assignment]
    factory.supportedKeyExchanges = [kex]
    BadInit.blob = blob
    with capturedLogs():
        conn = connect(world.factory, world.clock, client_factory=factory)
    assert conn.factory.disconnect_reason is not None
    code, text = conn.factory.disconnect_reason
    assert code == transport.DISCONNECT_KEY_EXCHANGE_FAILED and text.startswith(why)


def test_the_server_starts_no_rekey_before_login(world: World) -> None:
    """Its limits reached during authentication, the server waits for the login to rekey (sshd
    has no rekey before authentication, and refuses a client's)."""
    conn = connect(world.factory, world.clock)
    conn.server.rekey_seconds = 0.0  # every packet is past the time limit
    auth = conn.start_auth(b"admin")
    world.clock.advance(1)
    auth.probe(ed25519_key())
    conn.flush()
    assert conn.server.kex_count == 1
    assert conn.login(b"admin", ed25519_key()) == SUCCESS
    conn.flush()
    conn.conn.sendGlobalRequest(b"keepalive@openssh.com", b"", wantReply=1)
    conn.flush()
    assert conn.server.kex_count >= 2 and not conn.disconnected
