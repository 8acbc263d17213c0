"""The dispatch policy (conchcmd.dispatch), cell by cell: in each phase of a connection, each kind
of message is sent as exact bytes by a client, and what comes back (a disconnect with its reason
code and text, UNIMPLEMENTED naming that packet, or no refusal) must be what the table says.

The table itself was written from sshd's dispatch tables (see conchcmd/dispatch.py); cells where
conchcmd deliberately differs from sshd are listed in DIFFERS_FROM_SSHD with the reason.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from typing import Any

import pytest
from support.keys import ed25519_key
from support.sshclient import ClientFactory, ClientTransport, Connection, connect
from twisted.conch.ssh import common, transport
from twisted.logger import capturedLogs, formatEvent

from conchcmd.dispatch import POLICY, Action, Phase, decide
from conchcmd.server import ServerTransport

from .conftest import World
from .test_kex_order import ScriptedClient, force_send, scripted

NS = common.NS
SUCCESS = 52

#: Representative messages of every range, with payloads a handler can take.
PROBES: dict[int, Callable[[ScriptedClient], bytes]] = {
    0: lambda c: b"",
    2: lambda c: NS(b"x"),  # IGNORE
    3: lambda c: struct.pack(">L", 0),  # UNIMPLEMENTED
    4: lambda c: b"\0" + NS(b"m") + NS(b""),  # DEBUG
    5: lambda c: NS(b"ssh-userauth"),  # SERVICE_REQUEST
    6: lambda c: NS(b"ssh-userauth"),  # SERVICE_ACCEPT
    7: lambda c: struct.pack(">L", 0),  # EXT_INFO
    9: lambda c: b"",
    20: lambda c: c.ourKexInitPayload[1:],  # KEXINIT
    21: lambda c: b"",  # NEWKEYS
    25: lambda c: b"",
    30: lambda c: NS(bytes(range(32))),  # KEX_ECDH_INIT (only ever sent out of step here)
    31: lambda c: b"",
    49: lambda c: b"",
    50: lambda c: NS(b"admin") + NS(b"ssh-connection") + NS(b"none"),  # USERAUTH_REQUEST
    60: lambda c: b"",
    80: lambda c: NS(b"probe@example.com") + b"\x01",  # GLOBAL_REQUEST
    81: lambda c: b"",  # REQUEST_SUCCESS, answering nothing
    85: lambda c: b"",
    90: lambda c: NS(b"session") + struct.pack(">3L", 7, 65536, 32768),  # CHANNEL_OPEN
    93: lambda c: struct.pack(">2L", 999, 1),  # WINDOW_ADJUST, unknown channel
    110: lambda c: b"",
    192: lambda c: NS(b"ping"),  # OpenSSH's PING
    255: lambda c: b"",
}
#: What a processed message visibly gets back.
REPLIES = {5: transport.MSG_SERVICE_ACCEPT, 50: 51, 80: 82, 90: 91}

#: Cells (phase, message, strict) where conchcmd's outcome differs from sshd's, and why.
DIFFERS_FROM_SSHD = {
    (phase, 21, False): "NEWKEYS out of step: sshd answers UNIMPLEMENTED (kex_protocol_error), and the "
    "connection then fails on the next MAC (the client has switched keys); conchcmd says so at once, "
    "with a disconnect"
    for phase in Phase
    if phase not in (Phase.KEX_NEWKEYS, Phase.REKEY_NEWKEYS, Phase.CLOSED)
}
#: Messages whose handling depends on sshd's version, left out of the comparison: PING (192) and
#: the rest of the local-extension range (192-255) disconnect before OpenSSH 9.8 ("Invalid ssh2
#: packet type", packet.c) and get PONG / UNIMPLEMENTED since; a client's EXT_INFO before
#: SERVICE_REQUEST gets UNIMPLEMENTED before 9.6 and is taken since. conchcmd: UNIMPLEMENTED for
#: 192-255 (it does not advertise ping@openssh.com), EXT_INFO taken.
SSHD_VERSION_DEPENDENT = {(phase, m) for phase in Phase for m in (192, 255)} | {(Phase.UNSERVICED, 7)}


class Probe(ScriptedClient):
    """Records everything; survives replies it did not ask for (the probes provoke some)."""

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        with contextlib.suppress(Exception):  # e.g. an OPEN_CONFIRMATION for a channel it never opened
            super().dispatchMessage(messageNum, payload)


def client(strict: bool, **hooks: Callable[[ScriptedClient], None] | None) -> ClientFactory:
    factory = scripted(strict, **hooks)
    factory.protocol = Probe  # type: ignore[assignment]
    return factory


class Sent:
    """The probe, once sent: its sequence number."""

    seq: int | None = None


def sender(message: int, sent: Sent) -> Callable[[ScriptedClient], None]:
    def send(c: ScriptedClient) -> None:
        if sent.seq is None:
            sent.seq = c.outgoingPacketSequence
            force_send(c, message, PROBES[message](c))

    return send


class BeforeKexProbe(Probe):
    """Sends the probe before its KEXINIT."""

    probe: Callable[[ScriptedClient], None] | None = None

    def sendKexInit(self) -> None:
        if self.kex_count == 0 and self.probe is not None:
            self.probe(self)
        super().sendKexInit()


Dial = Callable[[ClientFactory], Connection]


def in_memory(world: World) -> Dial:
    return lambda factory: connect(world.factory, world.clock, client_factory=factory)


def run(dial: Dial, phase: Phase, message: int, strict: bool, user: bytes = b"admin") -> tuple[Connection, Sent]:
    """A connection that sent `message` (exact bytes) when the server was in `phase`."""
    sent = Sent()
    probe = sender(message, sent)
    if phase is Phase.BEFORE_KEX:
        factory = client(strict)
        factory.protocol = BeforeKexProbe  # type: ignore[assignment]
        BeforeKexProbe.probe = staticmethod(probe)  # type: ignore[assignment]
        try:
            return dial(factory), sent
        finally:
            BeforeKexProbe.probe = None
    if phase is Phase.KEX_METHOD:
        return dial(client(strict, after_kexinit=probe)), sent
    if phase is Phase.KEX_NEWKEYS:
        return dial(client(strict, before_newkeys=probe)), sent
    conn = dial(client(strict))
    if phase is Phase.AUTHENTICATING:
        conn.start_auth(user)
    elif phase is not Phase.UNSERVICED:
        assert conn.login(user, ed25519_key()) == SUCCESS
    c = conn.client
    assert isinstance(c, Probe)
    if phase is Phase.REKEY_METHOD:
        c.after_kexinit = probe
        c.sendKexInit()
    elif phase is Phase.REKEY_NEWKEYS:
        c.before_newkeys = probe
        c.sendKexInit()
    else:
        probe(c)
    conn.flush()
    return conn, sent


def outcome(conn: Connection, sent: Sent) -> tuple[Action, int]:
    """What the client saw: (DISCONNECT, reason code, 0 for a close without DISCONNECT),
    (UNIMPLEMENTED, 0) naming the probe, or (PROCESS, 0) for neither (no refusal)."""
    client = conn.client
    assert isinstance(client, Probe) and sent.seq is not None
    bye = conn.factory.disconnect_reason
    if bye is not None:
        return Action.DISCONNECT, bye[0]
    if conn.disconnected:
        return Action.DISCONNECT, 0
    if (transport.MSG_UNIMPLEMENTED, struct.pack(">L", sent.seq)) in client.received:
        return Action.UNIMPLEMENTED, 0
    return Action.PROCESS, 0


def expected_outcome(phase: Phase, message: int, strict: bool) -> tuple[Action, int]:
    verdict = decide(phase, message, strict)
    if verdict.action is Action.IGNORE:
        return Action.PROCESS, 0
    return verdict.action, verdict.reason


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
    force_send(client, 0)  # invalid type 0: disconnect
    force_send(client, 90, NS(b"session") + struct.pack(">3L", 0, 65536, 32768))
    force_send(client, 98, struct.pack(">L", 0) + NS(b"exec") + b"\x01" + NS(b"lastlog -n 1"))
    with capturedLogs() as events:
        conn.flush()
    assert conn.factory.disconnect_reason == (transport.DISCONNECT_PROTOCOL_ERROR, b"invalid packet type 0")
    assert world.audit.of("exec") == [] and world.audit.of("command") == []
    assert conn.server.service.channels == {}
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
