"""The server's dispatch policy: for each phase of a connection, which message types are acted on,
and what every other one gets. One table, read by the transport before Conch sees a message.

Conch dispatches any message it has a method for, in any state: a SERVICE_REQUEST before the
key exchange, a KEX_ECDH_INIT with no KEXINIT, a SERVICE_REQUEST "ssh-userauth" after login
(a second login, a second client slot). sshd instead swaps dispatch tables as the connection
moves on; the table below is sshd's, cell by cell, with the source beside each rule
(openssh-portable at 0ef0f5a, 2026-08). Where conchcmd deliberately differs, the rule says why.

sshd's outcomes, by the handler a message type has in the table in force:
- no handler (NULL): `ssh_dispatch_run` disconnects, "protocol error: rcvd type N" (dispatch.c);
- `dispatch_protocol_error`: UNIMPLEMENTED with the packet's sequence number (dispatch.c);
- `kex_protocol_error`: UNIMPLEMENTED, or in a strict initial key exchange a disconnect
  "strict KEX violation" (kex.c);
- `dispatch_protocol_ignore`: nothing (dispatch.c);
- IGNORE, DEBUG, UNIMPLEMENTED are consumed by the packet layer in every phase, except during a
  strict initial key exchange, where they go through the table like any other (packet.c,
  ssh_packet_read_poll_seqnr); DISCONNECT is always processed; type 0 disconnects (packet.c).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

# RFC 4253 / 4252 / 4254 message numbers used here.
DISCONNECT, IGNORE, UNIMPLEMENTED, DEBUG = 1, 2, 3, 4
SERVICE_REQUEST, SERVICE_ACCEPT, EXT_INFO = 5, 6, 7
KEXINIT, NEWKEYS = 20, 21
KEX_METHOD_INIT = 30  # KEX_ECDH_INIT, KEXDH_INIT, KEX_HYBRID_INIT: the only method message a server takes
USERAUTH_REQUEST = 50
#: What sshd's server_init_dispatch (serverloop.c) handles: GLOBAL_REQUEST, REQUEST_SUCCESS/FAILURE,
#: and CHANNEL_OPEN .. CHANNEL_FAILURE.
CONNECTION = frozenset((80, 81, 82, *range(90, 101)))
NOISE = frozenset((IGNORE, UNIMPLEMENTED, DEBUG))

PROTOCOL_ERROR = 2  # SSH_DISCONNECT_PROTOCOL_ERROR, the reason code sshpkt_disconnect always sends


class Phase(Enum):
    """Where a connection is, as far as incoming messages are concerned."""

    BEFORE_KEX = "before the client's first KEXINIT"
    KEX_METHOD = "in the initial key exchange, before the client's method message (KEX_ECDH_INIT)"
    KEX_NEWKEYS = "in the initial key exchange, before the client's NEWKEYS"
    UNSERVICED = "before SERVICE_REQUEST"
    AUTHENTICATING = "during authentication"
    AUTHENTICATED = "after authentication"
    REKEY_METHOD = "in a rekey, before the client's method message"
    REKEY_NEWKEYS = "in a rekey, before the client's NEWKEYS"
    CLOSED = "after our DISCONNECT"

    @property
    def initial_kex(self) -> bool:
        return self in (Phase.BEFORE_KEX, Phase.KEX_METHOD, Phase.KEX_NEWKEYS)

    @property
    def authenticated(self) -> bool:
        return self in (Phase.AUTHENTICATED, Phase.REKEY_METHOD, Phase.REKEY_NEWKEYS)


class Action(Enum):
    PROCESS = "processed"
    IGNORE = "ignored"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    DISCONNECT = "disconnect"


@dataclass(frozen=True)
class Verdict:
    """What a message gets. `text` is the disconnect description (`%d`: the message number);
    `strict`, if set, is the disconnect description used instead during a strict initial key
    exchange (kex-strict-s-v00@openssh.com), where sshd tolerates nothing unexpected."""

    action: Action
    reason: int = 0
    text: str = ""
    strict: str = ""
    source: str = ""  # where sshd does the same, or why conchcmd differs


STRICT_DURING = "strict KEX violation: message %d during the initial key exchange"
STRICT_ORDER = "strict KEX violation: message %d out of order in the initial key exchange"

PROCESS = Verdict(Action.PROCESS)
#: IGNORE / DEBUG / UNIMPLEMENTED, consumed by sshd's packet layer; fatal in a strict initial kex.
NOISE_OK = Verdict(Action.PROCESS, strict=STRICT_DURING, source="packet.c ssh_packet_read_poll_seqnr")
#: sshd's kex_protocol_error for a transport message (1-49) out of its step.
KEX_ERROR = Verdict(Action.UNIMPLEMENTED, strict=STRICT_ORDER, source="kex.c kex_protocol_error")
KEX_ERROR_OTHER = Verdict(Action.UNIMPLEMENTED, strict=STRICT_DURING, source="kex.c kex_protocol_error")
#: No handler during the initial key exchange (sshd's table has only kex messages then).
NO_HANDLER = Verdict(
    Action.DISCONNECT,
    PROTOCOL_ERROR,
    "protocol error: rcvd type %d",
    strict=STRICT_DURING,
    source="dispatch.c ssh_dispatch_run (no handler)",
)
UNIMPL = Verdict(Action.UNIMPLEMENTED, source="dispatch.c dispatch_protocol_error")
#: A NEWKEYS out of its step: sshd answers UNIMPLEMENTED (kex_protocol_error) and the connection
#: then dies on the first MAC, since the peer has switched keys and we have not. We say so at once.
BAD_NEWKEYS = Verdict(
    Action.DISCONNECT, PROTOCOL_ERROR, "NEWKEYS before the key exchange", source="differs: sshd UNIMPLEMENTED"
)
TYPE_ZERO = Verdict(
    Action.DISCONNECT, PROTOCOL_ERROR, "invalid packet type %d", source="packet.c: Invalid ssh2 packet type"
)
SILENT = Verdict(Action.IGNORE, source="RFC 4253 11.1: nothing after DISCONNECT")

Messages = Iterable[int]
Rule = tuple[frozenset[int], Verdict]


def rule(messages: Messages, verdict: Verdict) -> Rule:
    return frozenset(messages), verdict


TRANSPORT = range(1, 50)
ALWAYS: tuple[Rule, ...] = (
    rule([0], TYPE_ZERO),
    rule([DISCONNECT], PROCESS),  # packet.c: "Always process disconnect messages"
)

#: Phase -> rules, first match wins, then the phase's default.
POLICY: dict[Phase, tuple[tuple[Rule, ...], Verdict]] = {
    # kex.c kex_ready: kex_reset_dispatch (1-49 -> kex_protocol_error), KEXINIT -> kex_input_kexinit;
    # nothing else has a handler. Strict KEX is not known before the client's KEXINIT.
    Phase.BEFORE_KEX: (
        (
            rule(NOISE, PROCESS),
            rule([KEXINIT], PROCESS),
            rule([NEWKEYS], BAD_NEWKEYS),
            rule(TRANSPORT, KEX_ERROR_OTHER),  # SERVICE_REQUEST included: no service before keys
        ),
        NO_HANDLER,  # USERAUTH_REQUEST, CHANNEL_OPEN, ...: disconnect
    ),
    # kex.c kex_input_kexinit: KEXINIT -> kex_protocol_error; the method (kexecdh.c
    # kex_ecdh_server / kexgen.c kex_gen_server) sets its INIT message only.
    Phase.KEX_METHOD: (
        (
            rule(NOISE, NOISE_OK),
            rule([KEX_METHOD_INIT], PROCESS),
            rule([NEWKEYS], BAD_NEWKEYS),
            rule(range(KEXINIT, 50), KEX_ERROR),
            rule(TRANSPORT, KEX_ERROR_OTHER),
        ),
        NO_HANDLER,
    ),
    # kex.c kex_send_newkeys: kex_reset_dispatch, then NEWKEYS -> kex_input_newkeys.
    Phase.KEX_NEWKEYS: (
        (
            rule(NOISE, NOISE_OK),
            rule([NEWKEYS], PROCESS),
            rule(range(KEXINIT, 50), KEX_ERROR),
            rule(TRANSPORT, KEX_ERROR_OTHER),
        ),
        NO_HANDLER,
    ),
    # auth2.c do_authentication2: ssh_dispatch_init(dispatch_protocol_error), SERVICE_REQUEST ->
    # input_service_request, EXT_INFO -> kex_input_ext_info. A client KEXINIT is UNIMPLEMENTED
    # too: sshd does not rekey before authentication (nor does conchcmd start one then).
    Phase.UNSERVICED: (
        (
            rule(NOISE, PROCESS),
            rule([SERVICE_REQUEST, EXT_INFO], PROCESS),
            rule([NEWKEYS], BAD_NEWKEYS),
        ),
        UNIMPL,  # USERAUTH_REQUEST before SERVICE_REQUEST included
    ),
    # auth2.c input_service_request: USERAUTH_REQUEST -> input_userauth_request, EXT_INFO ->
    # dispatch_protocol_error; a second SERVICE_REQUEST "ssh-userauth" is accepted again.
    Phase.AUTHENTICATING: (
        (
            rule(NOISE, PROCESS),
            rule([SERVICE_REQUEST, USERAUTH_REQUEST], PROCESS),
            rule([NEWKEYS], BAD_NEWKEYS),
        ),
        UNIMPL,
    ),
    # serverloop.c server_init_dispatch: dispatch_protocol_error by default, the connection
    # protocol's messages and KEXINIT handled. SERVICE_REQUEST and USERAUTH_REQUEST get
    # UNIMPLEMENTED: no second userauth, no second slot (RFC 4252 5.1).
    Phase.AUTHENTICATED: (
        (
            rule(NOISE, PROCESS),
            rule([KEXINIT], PROCESS),
            rule([NEWKEYS], BAD_NEWKEYS),
            rule(range(KEXINIT + 1, 50), KEX_ERROR),  # kex_input_newkeys left 21, 30-49 to kex_protocol_error
            rule(CONNECTION, PROCESS),
        ),
        UNIMPL,
    ),
    # A rekey: kex_reset_dispatch covers 1-49 only, so the connection protocol stays in place.
    Phase.REKEY_METHOD: (
        (
            rule(NOISE, PROCESS),
            rule([KEX_METHOD_INIT], PROCESS),
            rule([NEWKEYS], BAD_NEWKEYS),
            rule(range(KEXINIT, 50), KEX_ERROR),
            rule(CONNECTION, PROCESS),
        ),
        UNIMPL,
    ),
    Phase.REKEY_NEWKEYS: (
        (
            rule(NOISE, PROCESS),
            rule([NEWKEYS], PROCESS),
            rule(range(KEXINIT, 50), KEX_ERROR),
            rule(CONNECTION, PROCESS),
        ),
        UNIMPL,
    ),
    Phase.CLOSED: ((), SILENT),
}


def decide(phase: Phase, message: int, strict_kex: bool = False) -> Verdict:
    """What `message` gets in `phase`; `strict_kex`: strict KEX was negotiated."""
    if phase is Phase.CLOSED:
        return SILENT
    rules, default = POLICY[phase]
    verdict = default
    for messages, v in (*ALWAYS, *rules):
        if message in messages:
            verdict = v
            break
    if strict_kex and phase.initial_kex and verdict.strict:
        return Verdict(Action.DISCONNECT, PROTOCOL_ERROR, verdict.strict, source="kex.c: strict KEX violation")
    return verdict


def phase_of(
    *,
    closed: bool,
    first_kex_done: bool,
    peer_kexinit: bool,
    keys_sent: bool,
    service: bytes | None,
) -> Phase:
    """The phase of a server connection. `peer_kexinit`: the client's KEXINIT for the key
    exchange in progress is in; `keys_sent`: our NEWKEYS for it is out; `service`: the name of
    the running service (None before SERVICE_REQUEST)."""
    if closed:
        return Phase.CLOSED
    if peer_kexinit:
        if first_kex_done:
            return Phase.REKEY_NEWKEYS if keys_sent else Phase.REKEY_METHOD
        return Phase.KEX_NEWKEYS if keys_sent else Phase.KEX_METHOD
    if not first_kex_done:
        return Phase.BEFORE_KEX
    if service is None:
        return Phase.UNSERVICED
    if service == b"ssh-userauth":
        return Phase.AUTHENTICATING
    return Phase.AUTHENTICATED


#: phase_of()'s inputs (closed, first_kex_done, peer_kexinit, keys_sent, service), the message
#: number and strict KEX.
RulingKey = tuple[bool, bool, bool, bool, bytes | None, int, bool]


class Rulings(dict[RulingKey, tuple[Phase, Verdict]]):
    """(phase, verdict) for each RulingKey, worked out on first use and kept: the transport looks
    every message up here, one dict look-up. Pure functions of the key, a few thousand keys at
    most (four flags, three service names, 256 message numbers)."""

    def __missing__(self, key: RulingKey) -> tuple[Phase, Verdict]:
        closed, first_kex_done, peer_kexinit, keys_sent, service, message, strict_kex = key
        phase = phase_of(
            closed=closed,
            first_kex_done=first_kex_done,
            peer_kexinit=peer_kexinit,
            keys_sent=keys_sent,
            service=service,
        )
        ruling = self[key] = (phase, decide(phase, message, strict_kex))
        return ruling
