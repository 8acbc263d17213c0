"""The SSH server: factory, transport, userauth and connection services, each fixing stock Conch."""

from __future__ import annotations

import contextlib
import math
import socket
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import UnsupportedAlgorithm
from twisted.conch import error as conch_error
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import connection, transport, userauth
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.factory import SSHFactory
from twisted.conch.ssh.keys import BadKeyError
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IAddress, IConsumer, IPushProducer, IReactorTime, ISystemHandle, ITCPTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from conchcmd.core.audit import AuditSink, BoundAudit, new_connection_id, sanitise
from conchcmd.core.config import AlgorithmsConfig, Config, LimitsConfig, default_clients_per_user
from conchcmd.core.flow import ChannelConnection, FlowControlledChannel, PausableTransport
from conchcmd.core.hostmatch import normalise_peer
from conchcmd.core.logtargets import LOG_NAMESPACE
from conchcmd.core.peer import Peer, PeerSSHPrivateKey, PeerUsernamePassword, format_peer, host_and_port
from conchcmd.core.refusals import RepeatLog
from conchcmd.policy.auth import USER_SIGNATURE_ALGORITHMS, Identity, KeyRefused, PasswordChecker, SkRequirementNotMet
from conchcmd.policy.authorized_keys import fingerprint
from conchcmd.policy.certs import CertificateRefused, is_certificate, parse_certificate, public_blob
from conchcmd.server.admission import Admission, source_of
from conchcmd.server.authlog import AuthLog, Client, KeyInfo, log_word
from conchcmd.server.liveness import Liveness
from conchcmd.session.channel import SessionChannel
from conchcmd.session.realm import CommandUser
from conchcmd.wire.conchprivate import QuietConnection, UserAuthHooks
from conchcmd.wire.dispatch import KEX_ERROR, Action, Phase, Verdict
from conchcmd.wire.framing import ModernServerTransport, usable_key_exchanges
from conchcmd.wire.hostkeys import HostKeys

log = Logger(namespace=LOG_NAMESPACE)

TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)

SHA1_HOST_KEY_ALGORITHMS = (b"ssh-rsa", b"ssh-dss")
#: Disconnects we send because the peer broke the protocol (garbage, bad MACs, a 4 KB banner).
PROTOCOL_VIOLATIONS = frozenset(
    {
        transport.DISCONNECT_PROTOCOL_ERROR,
        transport.DISCONNECT_MAC_ERROR,
        transport.DISCONNECT_CONNECTION_LOST,
        transport.DISCONNECT_PROTOCOL_VERSION_NOT_SUPPORTED,
    }
)
ABORT_AFTER = 5.0  # seconds a closing connection may take to drain before it is cut
PREAUTH_MAX_PACKET = 64 * 1024  # kex and userauth packets are a few KiB
SHUTDOWN_GRACE = 3.0  # seconds to let connections close on shutdown
CUT_GRACE = 1.0  # then, seconds for the cut of those still open to take effect
#: A key exchange (ours or the client's) must finish within this time once it has started.
KEX_TIMEOUT = 60.0
#: Channel output queued behind a key exchange in progress, at most (then channels wait for the
#: NEWKEYS): OpenSSH's default session window, what one channel may have in flight anyway. sshd
#: stops at once; what is queued here is sent right after NEWKEYS and counts as the traffic
#: that makes a client's frequent rekeys legitimate (see framing.REKEY_FREE_BYTES).
KEX_OUTPUT_BUDGET = 2 * 1024 * 1024
#: Channel opens with a smaller maximum packet size are refused: 0 left the output loop with
#: nothing to send (it spun forever), 1 cost ~25 µs of CPU per byte. RFC 4254 sets no floor and
#: sshd none either (serverloop.c takes the client's value; channels.c stops at a 0 length);
#: real clients offer 16 KiB (PuTTY) to 32 KiB (OpenSSH's CHAN_SES_PACKET_DEFAULT).
MIN_CHANNEL_PACKET = 1024
MAX_WINDOW = 0xFFFFFFFF  # RFC 4254 5.2: a window may not grow past 2^32 - 1
#: Authentication requests a connection may have waiting behind the one being checked; one more
#: and it is disconnected. OpenSSH's client sends one and waits for the answer.
MAX_WAITING_AUTH_REQUESTS = 4


@dataclass(frozen=True)
class ServerSettings:
    """The server's slice of the configuration: authenticated-client caps, limits, timers."""

    max_clients: int = 10
    max_clients_per_user: int | None = None  # None: half of max_clients, at least 1
    tcp_keepalive: bool = True
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    algorithms: AlgorithmsConfig = field(default_factory=AlgorithmsConfig)

    @classmethod
    def from_config(cls, config: Config) -> ServerSettings:
        return cls(
            max_clients=config.max_clients,
            max_clients_per_user=config.max_clients_per_user,
            tcp_keepalive=config.tcp_keepalive,
            limits=config.limits,
            algorithms=config.algorithms,
        )


def auth_client(address: IAddress, peer: str) -> Client:
    """The client as the authentication lines name it: sshd's address text (no brackets; an
    IPv4-mapped IPv6 address as IPv4, as sshd's ipv64_normalise_mapped does) and port."""
    ip = host_and_port(address)
    if ip is None:
        return Client(host=peer, port=0, peer=peer)
    host, port = ip
    return Client(host=normalise_peer(host), port=port, peer=peer)


#: What malformed input raises while Conch or conchcmd parses it: short reads (struct.error,
#: IndexError), bad values (ValueError, UnicodeDecodeError among them), keys and errors that
#: Conch or cryptography raise by name.
PARSE_ERRORS: tuple[type[Exception], ...] = (
    struct.error,
    IndexError,
    ValueError,
    BadKeyError,
    conch_error.ConchError,
    UnsupportedAlgorithm,
)


def is_parse_error(e: Exception) -> bool:
    """Whether `e` comes from a peer's malformed packet rather than from a bug here."""
    if isinstance(e, PARSE_ERRORS):
        return True
    # Conch reads a packet's booleans with ord(packet[0:1]): a truncated packet raises TypeError.
    return isinstance(e, TypeError) and str(e).startswith("ord() expected") and _raised_in_conch(e)


def _raised_in_conch(e: BaseException) -> bool:
    tb = e.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", "")).startswith("twisted.conch.")


class InternalErrors:
    """The places (exception type, file, line) where packets have hit a bug: each gets its
    traceback logged once, so a client that can provoke one cannot flood the log."""

    LIMIT = 100  # places remembered; past this, no more tracebacks

    def __init__(self) -> None:
        self.seen: set[tuple[str, str, int]] = set()

    def first(self, e: BaseException) -> bool:
        tb = e.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        place = (type(e).__qualname__, tb.tb_frame.f_code.co_filename if tb else "", tb.tb_lineno if tb else 0)
        if place in self.seen or len(self.seen) >= self.LIMIT:
            return False
        self.seen.add(place)
        return True


class ClientSlots:
    """Counts authenticated connections against `max_clients`, and each user's against
    `max_clients_per_user`, so that one key holder cannot take every slot."""

    def __init__(self, limit: int, per_user: int | None = None):
        self.limit = limit
        self.per_user = default_clients_per_user(limit, per_user)
        self.used = 0
        self.by_user: dict[str, int] = {}

    def acquire(self, user: str) -> str | None:
        """Take a slot for `user`; if none is free, the refusal naming the limit that was hit."""
        held = self.by_user.get(user, 0)
        if held >= self.per_user:
            return f"Too many connections for user {user} (max_clients_per_user {self.per_user})"
        if self.used >= self.limit:
            return f"Too many connections (max_clients {self.limit})"
        self.used += 1
        self.by_user[user] = held + 1
        return None

    def release(self, user: str) -> None:
        self.used -= 1
        left = self.by_user.get(user, 0) - 1
        if left > 0:
            self.by_user[user] = left
        else:
            self.by_user.pop(user, None)


@implementer(IPushProducer)  # TCP pauses it when its send buffer is full
class ServerTransport(ModernServerTransport):
    """The SSH transport with a modern-only algorithm list and the fixes Conch lacks.

    Overrides: a version banner that does not reveal Twisted's version; `server-sig-algs`
    listing user-key algorithms (Conch lists host-key ones, so RSA user keys fail against an
    ed25519 host); a login grace timer from the first byte (Conch has none before userauth);
    TCP_QUICKACK re-armed after reads (avoids a 40 ms delayed-ACK stall during kex);
    packets capped at 64 KiB before authentication and 256 KiB after (Conch allows 1 MiB);
    malformed packets end this connection with one log line; idle and keepalive timers; TCP
    keepalive; client slots per user and in total; closing unregisters the TCP producer (see
    `_closing`); refusals of the dispatch policy logged once per kind (`note_refused`); a
    second SERVICE_REQUEST "ssh-userauth" answered without restarting userauth; a time limit
    on key exchanges and channel output held behind one (`output_held`).
    """

    factory: CommandServerFactory

    peer = "?"
    source = "?"
    user: str | None = None
    holds_slot = False
    refusal = ""  # why admit() turned the client away
    in_startup = False  # counted by admission control until authenticated or gone
    auth_failures = 0
    #: The user name the client last asked to authenticate as (raw), and whether it can log in.
    auth_user: bytes | None = None
    auth_user_valid = True
    liveness: Liveness | None = None
    connection_id = ""  # random, set on connectionMade
    audit: BoundAudit  # the factory's audit sink with this connection's id
    _grace: Any = None
    _failed = False

    def connectionMade(self) -> None:
        factory = self.factory
        limits = factory.settings.limits
        self.ourVersionString = b"SSH-2.0-" + limits.banner_version.encode("ascii")
        assert self.transport is not None
        address = self.transport.getPeer()
        self.peer_address = Peer.of(address)
        self.peer = self.peer_address.text
        self.auth_log = AuthLog(auth_client(address, self.peer))
        self.peer_host = self.peer_address.host
        self.source = source_of(self.peer_host or self.peer)
        self.started = factory.clock.seconds()
        self.end_reason = "closed"
        self.refusals = RepeatLog(log, self.peer)
        self.connection_id = new_connection_id(factory.connection_ids)
        self.audit = BoundAudit(factory.audit, connection=self.connection_id)  # joins this connection's records
        factory.transports.add(self)
        factory.admission.started(self.source)
        self.in_startup = True
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)
            if factory.settings.tcp_keepalive:
                # sshd's TCPKeepAlive: a vanished peer's connection (and slot) ends
                self.transport.setTcpKeepAlive(True)
        log.info("Client connection from {peer}", peer=self.peer)
        self.audit.record("connect", peer=self.peer)
        if IConsumer.providedBy(self.transport):
            # TCP tells us when its send buffer is full (see pauseProducing)
            self.transport.registerProducer(self, True)
            self._producing = True
        self._grace = factory.clock.callLater(limits.login_grace_time, self._grace_expired)
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        if TCP_QUICKACK is not None and ISystemHandle.providedBy(self.transport):
            sock = self.transport.getHandle()
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, TCP_QUICKACK, 1)
        if self._failed or self._broken:
            return
        if self.liveness is not None:
            self.liveness.received()
        try:
            super().dataReceived(data)
        except Exception as e:  # whatever it is, it ends only this connection
            self.packet_raised(e)

    def packet_raised(self, e: Exception, where: str = "") -> None:
        """A packet from this peer raised `e` (`where`: what was being handled, if not the packet
        just read). Malformed input is a protocol error, counted against the client's source;
        anything else is a bug of ours: logged with its traceback, the client not blamed."""
        kind = type(e).__name__ if type(e).__module__ == "builtins" else f"{type(e).__module__}.{type(e).__name__}"
        described = f"{kind}{where}: {e}"
        if is_parse_error(e):
            self._protocol_error(described)
            return
        self._broken = True  # nothing more from this peer is acted on
        self.end_reason = sanitise(f"internal error: {described}", 200)
        if self.factory.internal_errors.first(e):
            log.failure(
                "Internal error handling a packet from {peer}; disconnecting",
                failure=Failure(e, type(e), e.__traceback__),
                peer=self.peer,
            )
        else:  # the same bug again (maybe provoked on purpose): one line, not a traceback each time
            log.error(
                "Internal error handling a packet from {peer} ({error}, traceback logged before); disconnecting",
                peer=self.peer,
                error=sanitise(described, 200),
            )
        self.sendDisconnect(transport.DISCONNECT_BY_APPLICATION, b"internal error")

    def max_packet_size(self) -> int:
        return super().max_packet_size() if self.holds_slot else PREAUTH_MAX_PACKET

    @property
    def closing(self) -> bool:
        """A disconnect has been sent: nothing more from this peer is acted on."""
        return self._dead

    def packet_error(self, reason: str) -> None:
        self._protocol_error(reason)

    def _protocol_error(self, error: str) -> None:
        self._failed = True
        self.end_reason = sanitise(f"protocol error: {error}", 200)
        log.warn("Protocol error from {peer}: {error}; disconnecting", peer=self.peer, error=sanitise(error, 200))
        self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"protocol error")

    def sendDisconnect(self, reason: int, desc: bytes | str) -> None:
        if isinstance(desc, str):  # Conch's hybrid key exchange passes str reasons
            desc = desc.encode()
        if not self._dead:
            self._closing()
        if not self.holds_slot and reason in PROTOCOL_VIOLATIONS:
            self._failed = True  # counts against the source (see _maybe_strike)
        if self.end_reason == "closed":
            self.end_reason = desc.decode("utf-8", "replace")
        super().sendDisconnect(reason, desc)

    _client_disconnected = False
    auth_end_logged = False  # the authentication line that says how the connection ended

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        # Conch logs every client disconnect at error level; it is the normal way to leave.
        self.end_reason = f"client disconnected: {sanitise(description, 200)}"
        self._client_disconnected = True
        self._drop()

    def note_refused(self, messageNum: int, phase: Phase, verdict: Verdict) -> None:
        answer = "answered UNIMPLEMENTED" if verdict.action is Action.UNIMPLEMENTED else "ignored"
        if verdict is KEX_ERROR:
            kind = f"Key-exchange message {messageNum} out of order"
        else:
            kind = f"Message {messageNum} {phase.value}"
        # Before authentication the connection's one line is the one that says how it ended.
        self.refusals.note(
            kind, "{kind} from {peer}: {answer}", quiet=not phase.authenticated, kind=kind, answer=answer
        )

    def ssh_SERVICE_REQUEST(self, packet: bytes) -> None:
        # The dispatch policy passes SERVICE_REQUEST only before and during authentication. A
        # second "ssh-userauth" during authentication is accepted again, as sshd does
        # (auth2.c input_service_request); Conch would start a new userauth service.
        if isinstance(self.service, UserAuthService) and getNS(packet)[0] == b"ssh-userauth":
            self.sendPacket(transport.MSG_SERVICE_ACCEPT, NS(b"ssh-userauth"))
            return
        super().ssh_SERVICE_REQUEST(packet)

    _kex_timer: Any = None
    _broken = False  # a packet hit a bug here: the connection ends, not counted against the source

    def sendKexInit(self) -> None:
        # Every key exchange, ours or the client's, starts with our KEXINIT (sent in reply to
        # the client's): it must end within KEX_TIMEOUT. The initial one has the grace time.
        super().sendKexInit()
        if self._first_kex_done and self._kex_timer is None:
            self._kex_timer = self.factory.clock.callLater(KEX_TIMEOUT, self._kex_expired)

    def _kex_expired(self) -> None:
        self._kex_timer = None
        log.info("Key exchange with {peer} took longer than {t:g} s; disconnecting", peer=self.peer, t=KEX_TIMEOUT)
        self.close_with(b"key exchange timed out", transport.DISCONNECT_KEY_EXCHANGE_FAILED)

    def take_new_keys(self) -> None:
        super().take_new_keys()  # what the key exchange held back is sent now
        self._held_bytes = 0
        if self._kex_timer is not None:
            self._kex_timer.cancel()
            self._kex_timer = None
        self._pump_channels()

    @property
    def output_held(self) -> bool:
        """Channels produce no more output while TCP's send buffer is full, or while a key
        exchange runs once KEX_OUTPUT_BUDGET waits behind it (sshd: serverloop.c polls channel
        output only when not rekeying). Conch queued without limit behind a key exchange."""
        return self._tcp_paused or (
            not self.kex_idle() and self._held_bytes >= KEX_OUTPUT_BUDGET
        )

    _held_bytes = 0  # payload bytes queued behind the key exchange in progress

    def sendPacket(self, messageType: int, payload: bytes) -> None:
        if self.held_by_kex(messageType):
            self._held_bytes += len(payload)
        super().sendPacket(messageType, payload)

    def sendExtInfo(self, extensions: list[tuple[bytes, bytes]]) -> None:
        fixed = [
            (name, b",".join(USER_SIGNATURE_ALGORITHMS) if name == b"server-sig-algs" else value)
            for name, value in extensions
        ]
        super().sendExtInfo(fixed)

    def _grace_expired(self) -> None:
        self._grace = None
        log.info(
            "Login grace time ({seconds:g} s) exceeded by {peer}; disconnecting",
            seconds=self.factory.settings.limits.login_grace_time,
            peer=self.peer,
        )
        if self.gotVersion:
            self.sendDisconnect(transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE, b"login grace time exceeded")
        else:
            self.end_reason = "login grace time exceeded"
            self._drop()

    # A client may open a huge SSH window and then stop reading its socket; without this, the
    # channels would keep writing into Twisted's unbounded TCP buffer.
    _tcp_paused = False

    @property
    def tcp_paused(self) -> bool:
        """What channels check before sending (see `output_held`)."""
        return self.output_held

    def pauseProducing(self) -> None:
        """TCP's send buffer is full: channels stop sending, and the socket is no longer read, so
        that the answers to what the client keeps sending (failures, UNIMPLEMENTED, ...) cannot
        pile up in Twisted's unbounded write buffer either. A peer that never reads is ended by
        the grace time, idle timeout or keepalive, whose disconnect is cut after ABORT_AFTER."""
        self._tcp_paused = True
        if IPushProducer.providedBy(self.transport):
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._tcp_paused = False
        if IPushProducer.providedBy(self.transport):
            self.transport.resumeProducing()
        self._pump_channels()

    def _pump_channels(self) -> None:
        if self.output_held:
            return
        if isinstance(self.service, ConnectionService):
            for chan in self.service.flow_channels():
                chan.pump()

    def stopProducing(self) -> None:
        self._tcp_paused = True

    def _drop(self) -> None:
        if self.transport is not None:
            self._closing()
            self.transport.loseConnection()

    _producing = False

    def _closing(self) -> None:
        """This side closes: TCP may close once its buffer drains, and a peer that never takes
        the last bytes is cut after ABORT_AFTER. Twisted's loseConnection waits for a paused
        streaming producer to resume instead of closing, and nothing resumes a connection that
        sends no more: it stayed open for good, holding its client slot."""
        if self._producing:
            self._producing = False
            self.transport.unregisterProducer()
        if self._abort is None:
            self._abort = self.factory.clock.callLater(ABORT_AFTER, self._cut)

    def admit(self, avatar: CommandUser) -> bool:
        """Called on successful authentication: take a client slot or turn the client away."""
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        user = avatar.identity.user
        refusal = self.factory.slots.acquire(user)
        if refusal is not None:
            self.refusal = refusal
            self.auth_end_logged = True  # authenticated, then turned away: not an authentication failure
            log.info("{refusal}: turned away {user}@{peer}", refusal=refusal, user=user, peer=self.peer)
            self.sendDisconnect(transport.DISCONNECT_TOO_MANY_CONNECTIONS, refusal.encode())
            return False
        self.holds_slot = True
        self.user = user
        avatar.refusals = self.refusals
        avatar.audit = self.audit
        self._leave_startup()
        self.factory.admission.authenticated(self.source)
        return True

    def _maybe_strike(self) -> None:
        """An unauthenticated connection that failed, misbehaved or stalled counts against its source."""
        if self.auth_failures:
            why = "failed authentication"
        elif self._failed:
            why = "protocol errors"
        elif self.end_reason == "login grace time exceeded":
            why = "login grace time exceeded"
        elif isinstance(self.service, UserAuthService) and self.service.pending:
            why = "left during authentication"  # e.g. sent a password and closed before the answer
        else:
            return  # e.g. a scanner reading the banner: no strike
        self.factory.admission.strike(self.source, why, self.peer_host, connection=self.connection_id)

    def start_liveness(self, conn: ConnectionService) -> None:
        """Idle and keepalive timers, once the connection service runs."""
        limits = self.factory.settings.limits
        if limits.idle_timeout <= 0 and limits.keepalive_interval <= 0:
            return
        self.liveness = Liveness(
            self.factory.clock,
            idle_timeout=limits.idle_timeout,
            keepalive_interval=limits.keepalive_interval,
            keepalive_count_max=limits.keepalive_count_max,
            busy=conn.busy,
            send_keepalive=lambda: conn.sendGlobalRequest(b"keepalive@openssh.com", b"", wantReply=1),
            close=self._close_for,
        )

    def _close_for(self, why: str) -> None:
        log.info("Closing connection {peer} ({user}): {why}", peer=self.peer, user=self.user, why=why)
        self.close_with(why.encode())

    def close_with(self, why: bytes, reason: int = transport.DISCONNECT_BY_APPLICATION) -> None:
        """Disconnect with a reason; a peer too dead to take the last bytes is cut after a while."""
        self.sendDisconnect(reason, why)
        self._closing()  # already closing (a disconnect sent earlier): the cut still applies

    _abort: Any = None

    def cut(self) -> None:
        """Drop the connection now, whatever it has not sent yet."""
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        self._cut()

    def _cut(self) -> None:
        self._abort = None
        # ITCPTransport's, but Twisted's test transports (StringTransport) have it undeclared.
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()

    def _leave_startup(self) -> None:
        if self.in_startup:
            self.in_startup = False
            self.factory.admission.left_startup(self.source)

    _lost_waiters: list[defer.Deferred[None]] | None = None

    def when_lost(self) -> defer.Deferred[None]:
        """Fires once this connection is gone (the server's shutdown waits for it)."""
        d: defer.Deferred[None] = defer.Deferred()
        if self._lost_waiters is None:
            self._lost_waiters = []
        self._lost_waiters.append(d)
        return d

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        if self.holds_slot and self.user is not None:
            self.holds_slot = False
            self.factory.slots.release(self.user)
        if self.liveness is not None:
            self.liveness.stop()
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        if self._kex_timer is not None:
            self._kex_timer.cancel()
            self._kex_timer = None
        factory = self.factory
        if self.in_startup:
            self._leave_startup()
            self._maybe_strike()
        factory.transports.discard(self)
        duration = round(factory.clock.seconds() - self.started, 3)
        refused = self.refusals.summary()
        log.info(
            "Lost client connection {peer} ({user}): {reason}{refused}",
            peer=self.peer,
            user=self.user or "not authenticated",
            reason=self.end_reason,
            refused=f" (refused: {sanitise(refused, 1000)})" if refused else "",
        )
        if self.user is not None:
            self.auth_log.disconnected(self.user)
        elif self.auth_user is not None and not self.auth_end_logged:
            self.auth_log.closed_during_auth(
                self.auth_user, self.auth_user_valid, client_disconnected=self._client_disconnected
            )
        self.audit.record(
            "disconnect", peer=self.peer, user=self.user, reason=sanitise(self.end_reason), duration_s=duration
        )
        factory.connection_ids.discard(self.connection_id)
        try:
            super().connectionLost(reason)
        finally:  # after this connection's last record: the shutdown's own come after it
            waiters, self._lost_waiters = self._lost_waiters or [], None
            for d in waiters:
                if not d.called:  # not cancelled by the shutdown's grace time
                    d.callback(None)


class UserAuthService(UserAuthHooks):
    """ssh-userauth with the factory's clock and limits, and an audit record per real attempt.

    Overrides Conch's class-level global-reactor clock, its 10-hour login timeout and its 20
    attempts; answers requests one at a time (Conch checks every request as it arrives, so a
    pipelining client had hundreds of password checks running at once, counted late); counts a
    failure when it is decided, then holds the answer to a password failure back for
    `passwordDelay`; offers password auth to every name or to none; accepts OpenSSH certificates
    (Conch's auth_publickey refuses any blob its Key class cannot parse); and hands the checkers
    the peer address (for `from=` and `source-address`).
    """

    transport: ServerTransport
    _key: tuple[bytes, bytes] | None = None
    _methods: list[bytes] = []
    _listed = False  # Conch has filled in _methods
    _in_progress = False  # a request is being checked (or its failure answer held back)
    _stopped = False
    _delay: Any = None

    @property
    def supportedAuthentications(self) -> list[bytes]:
        passwords = self.transport.factory.passwords
        if not self._listed or (passwords is not None and passwords.offered):
            return self._methods  # Conch fills this list in serviceStarted
        return [m for m in self._methods if m != b"password"]

    @supportedAuthentications.setter
    def supportedAuthentications(self, methods: list[bytes]) -> None:
        self._methods = methods

    def serviceStarted(self) -> None:
        factory = self.transport.factory
        self.clock = factory.clock
        self.loginTimeout = math.ceil(factory.settings.limits.login_grace_time)
        self.max_auth_tries = factory.settings.limits.max_auth_tries
        # Conch's own counter (attemptsBeforeDisconnect = 20) would cut at 21 failures even when
        # max_auth_tries is higher; auth_failed counts and disconnects alone.
        self.attemptsBeforeDisconnect = self.max_auth_tries + 1
        self._requests = 0  # requests looked at (sshd's authctxt->attempt)
        self._waiting: deque[bytes] = deque()
        super().serviceStarted()
        self._listed = True

    def serviceStopped(self) -> None:
        """Authenticated or disconnected: what waits is dropped, a held-back answer is not sent."""
        self._stopped = True
        self._waiting.clear()
        if self._delay is not None and self._delay.active():
            self._delay.cancel()
        self._delay = None
        super().serviceStopped()

    @property
    def pending(self) -> bool:
        """Whether a request is being checked or waits (for the strike of a connection closed then)."""
        return self._in_progress or bool(self._waiting)

    def ssh_USERAUTH_REQUEST(self, packet: bytes) -> Any:
        # RFC 4252 section 5, as sshd does it: each request is answered before the next is looked at.
        if self._stopped or self.transport.closing:
            return None
        if self._in_progress:
            if len(self._waiting) >= MAX_WAITING_AUTH_REQUESTS:
                self._waiting.clear()
                log.info(
                    "More than {n} authentication requests waiting from {peer}; disconnecting",
                    n=MAX_WAITING_AUTH_REQUESTS,
                    peer=self.transport.peer,
                )
                self.transport.sendDisconnect(
                    transport.DISCONNECT_PROTOCOL_ERROR, b"too many authentication requests pending"
                )
            else:
                self._waiting.append(packet)
            return None
        if getNS(packet, 2)[1] != b"ssh-connection":
            # Conch would look the service up only after a successful check: an unknown one raised
            # there, `ssh-userauth` started a second round, and each success took another slot.
            self.transport.sendDisconnect(transport.DISCONNECT_SERVICE_NOT_AVAILABLE, b"no such service")
            return None
        self._in_progress = True
        self._requests += 1
        self._note_user(getNS(packet)[0])
        d = super().ssh_USERAUTH_REQUEST(packet)
        if d is None:  # Conch has answered already
            self._request_done(None)
            return None
        return d.addBoth(self._request_done)

    def _note_user(self, name: bytes) -> None:
        """A request for a user name not seen on this connection: whether it is one that can log
        in, and sshd's "Invalid user" line if not (sshd logs it once, as it allows no change of
        name; Conch allows one, so each new name gets its line)."""
        t = self.transport
        if name == t.auth_user:
            return
        try:
            valid = t.factory.known_user(name.decode("utf-8"))
        except UnicodeDecodeError:
            valid = False
        t.auth_user, t.auth_user_valid = name, valid
        if not valid:
            t.auth_log.invalid_user(name)

    def _request_done(self, result: Any) -> None:
        self._in_progress = False
        if isinstance(result, Failure):
            log.failure("Authentication request from {peer} failed", failure=result, peer=self.transport.peer)
        if self._waiting and not self._stopped and not self.transport.closing:
            try:
                self.ssh_USERAUTH_REQUEST(self._waiting.popleft())
            except Exception as e:  # malformed, found only now: as ServerTransport.dataReceived does
                self._waiting.clear()
                self.transport.packet_raised(e, " in a waiting authentication request")
        else:
            self._waiting.clear()

    def auth_publickey(self, packet: bytes) -> Any:
        has_signature = packet[0:1] != b"\0"
        algorithm, blob, rest = getNS(packet[1:], 2)
        user, service = self.user or b"", self.nextService or b""
        self._key = (algorithm, blob)
        signed = None
        signature = None
        if has_signature:
            signature = getNS(rest)[0]
            assert self.transport.sessionID is not None
            signed = (
                NS(self.transport.sessionID)
                + bytes((userauth.MSG_USERAUTH_REQUEST,))
                + NS(user)
                + NS(service)
                + NS(b"publickey")
                + b"\x01"
                + NS(algorithm)
                + NS(blob)
            )
        creds = PeerSSHPrivateKey(user, algorithm, blob, signed, signature, self.transport.peer_address)
        d = self.portal.login(creds, self.transport.peer_address, IConchUser)
        if not has_signature:
            d.addErrback(self.answer_key_probe, packet[1:])  # an authorized key's probe gets PK_OK
        return d

    def auth_password(self, packet: bytes) -> Any:
        password = getNS(packet[1:])[0]
        creds = PeerUsernamePassword(self.user or b"", password, self.transport.peer_address)
        return self.portal.login(creds, self.transport.peer_address, IConchUser)  # the failure delay: see auth_failed

    def _key_fields(self) -> dict[str, Any]:
        if self.method != b"publickey" or self._key is None:
            return {}
        algorithm, blob = self._key
        fields: dict[str, Any] = {"key_type": sanitise(algorithm, 64), "fingerprint": fingerprint(blob)}
        if is_certificate(blob):
            try:
                cert = parse_certificate(blob)
                fields.update(
                    fingerprint=fingerprint(public_blob(cert.public_key())),
                    cert_key_id=sanitise(cert.key_id),
                    cert_serial=cert.serial,
                    ca_fingerprint=fingerprint(public_blob(cert.signature_key())),
                )
            except CertificateRefused:
                pass
        return fields

    def _user_name(self) -> str:
        return sanitise(self.user or b"", 64)

    def auth_succeeded(self, result: Any) -> None:
        _, avatar, logout = result
        identity: Identity = avatar.identity
        if self._stopped or self.transport.closing:  # decided after the client left: no slot, no session
            logout()
            return
        if not self.transport.admit(avatar):
            self._audit_identity(identity, ok=False, reason=self.transport.refusal)
            logout()
            return
        key = KeyInfo.of(self._key[1]) if identity.method == "publickey" and self._key is not None else None
        self.transport.auth_log.accepted(identity.method, identity.user, key)
        log.info(
            "Authorized {user}@{peer} by {source}",
            user=identity.user,
            peer=self.transport.peer,
            source=identity.grant.source,
        )
        self._audit_identity(identity, ok=True)
        super().auth_succeeded(result)

    def _audit_identity(self, identity: Identity, **fields: Any) -> None:
        self.transport.audit.record(
            "auth", user=identity.user, peer=self.transport.peer, **identity.audit_fields(), **fields
        )

    def auth_failed(self, reason: Failure) -> Any:
        if self._stopped:
            return None  # decided after the client left (it was counted as abandoned)
        # As sshd (auth2.c userauth_finish): only a first request of method `none` is free; Conch
        # never counted `none`, so a client could send them without end.
        if not reason.check(conch_error.IgnoreAuthentication) and (self.method != b"none" or self._requests > 1):
            message = sanitise(reason.getErrorMessage(), 200)
            t = self.transport
            key = KeyInfo.of(self._key[1]) if self.method == b"publickey" and self._key is not None else None
            if isinstance(reason.value, SkRequirementNotMet):
                t.auth_log.sk_requirement_not_met(self.user or b"", t.auth_user_valid, key, reason.value.requirement)
            t.auth_log.failed(self.method or b"", self.user or b"", t.auth_user_valid, key)
            log.info(
                "Refused {method} for {user} from {peer}: {reason}",
                method=sanitise(self.method, 32),
                user=log_word(self.user or b""),
                peer=t.peer,
                reason=message,
            )
            self.transport.audit.record(
                "auth",
                ok=False,
                user=self._user_name(),
                peer=self.transport.peer,
                method=sanitise(self.method, 32),
                **self._key_fields(),
                **(reason.value.audit_fields() if isinstance(reason.value, KeyRefused) else {}),
                reason=message,
            )
            self.transport.auth_failures += 1
            if self.transport.auth_failures >= self.max_auth_tries:  # OpenSSH's MaxAuthTries
                self.transport.auth_log.too_many_failures(self.user or b"", self.transport.auth_user_valid)
                self.transport.auth_end_logged = True
                self.transport.sendDisconnect(
                    transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE, b"Too many authentication failures"
                )
                return None
            if self.method == b"password" and b"password" in self.supportedAuthentications:
                # Conch's passwordDelay, taken here (after counting) rather than in auth_password;
                # the next request waits for it too.
                held: defer.Deferred[None] = defer.Deferred()
                self._delay = self.clock.callLater(self.passwordDelay, held.callback, None)
                return held.addCallback(lambda _: self._answer_failure(reason))
        super().auth_failed(reason)
        return None

    def _answer_failure(self, reason: Failure) -> None:
        self._delay = None
        if not self._stopped and not self.transport.closing:
            super().auth_failed(reason)


class ConnectionService(QuietConnection):
    """ssh-connection that refuses non-session channels cleanly (Conch logs a traceback for
    each) and channels with a tiny maximum packet size, tolerates messages for unknown channels,
    holds back window adjustments for channels that hold as much input as they may (input flow
    control, see SessionChannel), and enforces sshd's channel rules Conch lacks: no answer to an
    open nobody made, no window past 2^32-1, every channel closed when the connection ends."""

    transport: ServerTransport

    def serviceStarted(self) -> None:
        super().serviceStarted()
        self.transport.start_liveness(self)

    def busy(self) -> bool:
        """True while a command runs on any channel (so the connection is not idle)."""
        return any(c.busy for c in self.flow_channels())

    def flow_channels(self) -> list[FlowControlledChannel]:
        """The open channels, as flow control sees them (the avatar opens session channels only)."""
        return [c for c in self.channels.values() if isinstance(c, SessionChannel)]

    def ssh_CHANNEL_OPEN(self, packet: bytes) -> None:
        channel_type, rest = getNS(packet)
        sender, _window, max_packet = struct.unpack(">3L", rest[:12])
        max_sessions = self.transport.factory.settings.limits.max_sessions
        if channel_type != b"session":
            self._refuse_channel(sender, channel_type, b"only session channels are allowed")
        elif max_packet < MIN_CHANNEL_PACKET:
            # Any window (a uint32) is fine: 0 is legal (opened later), and output waits for it.
            self._refuse_channel(
                sender,
                channel_type,
                b"maximum packet size %d is below %d" % (max_packet, MIN_CHANNEL_PACKET),
                kind="maximum packet size too small",
            )
        elif len(self.channels) >= max_sessions:
            self._refuse_channel(sender, channel_type, b"too many sessions (max %d)" % max_sessions)
        else:
            super().ssh_CHANNEL_OPEN(packet)

    def _refuse_channel(self, sender: int, channel_type: bytes, why: bytes, kind: str | None = None) -> None:
        name = sanitise(channel_type, 64)
        # The type is the client's to choose: keyed by it, each new name would be a line (and a
        # counter) of its own.
        group = "session" if channel_type == b"session" else "non-session"
        self.transport.refusals.note(
            f"Refused {group} channel ({kind or why.decode()})",
            "Refused {kind} channel for {peer}: {why}",
            kind=name,
            why=why.decode(),
        )
        self.transport.sendPacket(
            connection.MSG_CHANNEL_OPEN_FAILURE,
            struct.pack(">2L", sender, connection.OPEN_ADMINISTRATIVELY_PROHIBITED) + NS(why) + NS(b""),
        )

    def packetReceived(self, messageNum: int, packet: bytes) -> None:
        if 90 <= messageNum <= 100 and self.transport.liveness is not None:
            self.transport.liveness.activity()
        if 93 <= messageNum <= 98 and len(packet) >= 4:
            (local_id,) = struct.unpack(">L", packet[:4])
            if local_id not in self.channels:
                self.transport.refusals.note(
                    "Messages for unknown channels",
                    "Ignoring messages for unknown channel {id} from {peer}",
                    id=local_id,
                )
                return
        super().packetReceived(messageNum, packet)

    def _awaiting_confirmation(self, packet: bytes, what: bytes) -> bool:
        """Whether the channel a client's OPEN_CONFIRMATION / OPEN_FAILURE names is one this
        server opened and the client has not answered yet; if not, the connection ends (sshd,
        channels.c: "Received open failure for non-opening channel"). Conch would re-set an open
        channel's window and packet size, or delete it without closing it (its command kept
        running after the connection ended)."""
        (local_id,) = struct.unpack(">L", packet[:4])
        chan = self.channels.get(local_id)
        if chan is not None and chan not in self.channelsToRemoteChannel:
            return True
        self.transport.sendDisconnect(
            transport.DISCONNECT_PROTOCOL_ERROR, b"Received open %s for non-opening channel %d" % (what, local_id)
        )
        return False

    def ssh_CHANNEL_OPEN_CONFIRMATION(self, packet: bytes) -> None:
        if self._awaiting_confirmation(packet, b"confirmation"):
            super().ssh_CHANNEL_OPEN_CONFIRMATION(packet)

    def ssh_CHANNEL_OPEN_FAILURE(self, packet: bytes) -> None:
        if self._awaiting_confirmation(packet, b"failure"):
            super().ssh_CHANNEL_OPEN_FAILURE(packet)

    def ssh_REQUEST_SUCCESS(self, packet: bytes) -> None:
        # An answer to no global request of ours is ignored, as sshd does (serverloop.c
        # server_input_keep_alive); Conch raised IndexError (a "protocol error").
        if self.deferreds["global"]:
            super().ssh_REQUEST_SUCCESS(packet)

    def ssh_REQUEST_FAILURE(self, packet: bytes) -> None:
        if self.deferreds["global"]:
            super().ssh_REQUEST_FAILURE(packet)

    def ssh_CHANNEL_WINDOW_ADJUST(self, packet: bytes) -> None:
        local_id, add = struct.unpack(">2L", packet[:8])
        chan = self.channels[local_id]  # packetReceived has dropped unknown ones
        if chan.remoteWindowLeft + add > MAX_WINDOW:
            # RFC 4254 5.2; sshd: fatal "adjust %u overflows remote window %u" (channels.c)
            self.transport.sendDisconnect(
                transport.DISCONNECT_PROTOCOL_ERROR,
                b"window adjust %d overflows the window of channel %d (%d)" % (add, local_id, chan.remoteWindowLeft),
            )
            return
        super().ssh_CHANNEL_WINDOW_ADJUST(packet)

    def serviceStopped(self) -> None:
        """Every channel is closed (its command interrupted), even if closing another raised:
        Conch's loop stopped at the first exception and left the others running."""
        self._stopping = True  # closing channels free budget; grant_window then opens no window
        confirmed = list(self.channelsToRemoteChannel)
        pending = [c for c in self.channels.values() if c not in self.channelsToRemoteChannel]
        self.channels.clear()
        self.channelsToRemoteChannel.clear()
        self.localToRemoteChannel.clear()
        for chan in confirmed + pending:
            chan.localClosed = chan.remoteClosed = True
            for d in self.deferreds.pop(chan.id, []):
                d.addErrback(lambda _: None)
                d.errback(conch_error.ConchError("Channel closed."))
            try:
                if chan in confirmed:
                    chan.closed()
                else:
                    chan.openFailed(ConnectionLost())
            except Exception:
                log.failure("Closing channel {id} of {peer} failed", id=chan.id, peer=self.transport.peer)
        self.fail_global_requests()

    def adjustWindow(self, channel: Any, bytesToAdd: int) -> None:
        # Conch re-opens a channel's window whenever half of it is used, however much input the
        # channel still holds; session channels grant window from their byte account instead.
        if isinstance(channel, SessionChannel):
            return
        super().adjustWindow(channel, bytesToAdd)

    def grant_window(self, channel: SessionChannel, bytes_to_add: int) -> None:
        """Open a session channel's window by what its account can take (see update_window)."""
        if not self._stopping:  # closing channels free budget; the others need no window now
            super().adjustWindow(channel, bytes_to_add)

    _stopping = False


class CommandServerFactory(SSHFactory):
    """Builds a ServerTransport per connection, with the portal, audit log and limits."""

    protocol = ServerTransport
    noisy = False
    services = {b"ssh-userauth": UserAuthService, b"ssh-connection": ConnectionService}

    def __init__(
        self,
        *,
        host_keys: HostKeys,
        portal: Portal,
        audit: AuditSink,
        clock: IReactorTime,
        settings: ServerSettings,
        passwords: PasswordChecker | None = None,
        known_user: Callable[[str], bool] | None = None,
    ):
        self.publicKeys = dict(host_keys.public)
        self.privateKeys = dict(host_keys.private)
        self.primes = None  # no group-exchange kex: its SHA-1 and weak-group variants are out
        self.portal = portal
        self.audit = audit
        self.clock = clock
        self.settings = settings
        self.passwords = passwords
        #: Whether a user name is one that can log in (else the auth lines say "invalid user").
        self.known_user: Callable[[str], bool] = known_user or (lambda _name: True)
        self.slots = ClientSlots(settings.max_clients, settings.max_clients_per_user)
        self.admission = Admission(settings.limits, clock, audit)
        available = usable_key_exchanges()
        algorithms = settings.algorithms
        self.key_exchanges = [k.encode() for k in algorithms.kex_algorithms if k.encode() in available]
        self.ciphers = [c.encode() for c in algorithms.ciphers]
        self.macs = [m.encode() for m in algorithms.macs]
        self.transports: set[ServerTransport] = set()
        self.internal_errors = InternalErrors()
        self.connection_ids: set[str] = set()  # of the connections open now: a new one is none of them

    def buildProtocol(self, addr: Any) -> ServerTransport | None:  # type: ignore[override]
        ip = host_and_port(addr)
        if ip is not None:
            host = ip[0]
            source = source_of(host)
            refusal = self.admission.refusal(source, host)
            if refusal is not None:
                self.admission.note_refused(source, format_peer(addr), refusal)
                return None  # Twisted closes the socket at once: no banner, no kex, no CPU
        t = super().buildProtocol(addr)
        # Conch advertises SHA-1 `ssh-rsa` for RSA host keys, overwritten here after the fact.
        t.supportedPublicKeys = [a for a in t.supportedPublicKeys if a not in SHA1_HOST_KEY_ALGORITHMS]
        t.supportedKeyExchanges = self.key_exchanges
        t.supportedCiphers = self.ciphers
        t.supportedMACs = self.macs
        return t  # type: ignore[return-value]

    def close_all(self, why: bytes) -> defer.Deferred[None]:
        """Disconnect every client with a reason; fires when all are gone, or after a grace time."""
        self.admission.flush()
        open_now = list(self.transports)
        gone = [t.when_lost() for t in open_now]
        for t in open_now:
            t.close_with(why)
        everyone: defer.Deferred[Any] = defer.DeferredList(gone, consumeErrors=True)
        everyone.addTimeout(SHUTDOWN_GRACE, self.clock, onTimeoutCancel=lambda _result, _timeout: None)
        return everyone.addCallback(lambda _: self._cut_the_rest())

    def _cut_the_rest(self) -> defer.Deferred[None]:
        """Connections still open after the grace time (a client that reads nothing) are cut, so
        that their last records come before the server's (the reactor would end them after the
        audit log is closed); one that does not end even then is left to the process's end."""
        left = list(self.transports)
        gone = [t.when_lost() for t in left]
        for t in left:
            t.cut()
        rest: defer.Deferred[Any] = defer.DeferredList(gone, consumeErrors=True)
        rest.addTimeout(CUT_GRACE, self.clock, onTimeoutCancel=lambda _result, _timeout: None)
        return rest.addCallback(lambda _: None)


if TYPE_CHECKING:  # mypy holds the server's classes to the contracts the session channels rely on
    _connection_contract: type[ChannelConnection] = ConnectionService
    _transport_contract: type[PausableTransport] = ServerTransport
