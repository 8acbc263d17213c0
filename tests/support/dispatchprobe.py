"""Probing the dispatch policy (conchcmd.wire.dispatch) from the client side: a message of each range sent
as exact bytes in a chosen phase of a connection, and what came back. Shared by the in-memory
cell-by-cell test and the e2e oracle that runs the same probes against sshd and conchcmd."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable

from twisted.conch.ssh import common, transport

from conchcmd.wire.dispatch import Action, Phase, decide
from support.keys import ed25519_key
from support.scripted import ScriptedClient, force_send, scripted
from support.sshclient import ClientFactory, Connection, connect
from support.world import World

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
