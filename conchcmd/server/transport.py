"""The SSH transport: Conch's server transport with conchcmd's packet layer and the fixes Conch
lacks; admission and slots are the factory's `Admissions`, asked through this connection's ticket."""

from __future__ import annotations

import functools
import socket
import struct
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import UnsupportedAlgorithm
from twisted.conch import error as conch_error
from twisted.conch.ssh import transport
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.keys import BadKeyError
from twisted.internet import defer
from twisted.internet.interfaces import IAddress, IConsumer, IPushProducer, ISystemHandle, ITCPTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from conchcmd.core.audit import BoundAudit, error_kind, new_connection_id, sanitise
from conchcmd.core.flow import PausableTransport
from conchcmd.core.logtargets import LOG_NAMESPACE, FastLogger
from conchcmd.core.peer import Peer, host_and_port
from conchcmd.core.refusals import RepeatLog
from conchcmd.core.twistedprivate import peer_left
from conchcmd.policy.auth import USER_SIGNATURE_ALGORITHMS
from conchcmd.server.admission import Ticket
from conchcmd.server.authlog import AuthLog, Client
from conchcmd.server.connection import ConnectionService
from conchcmd.server.liveness import Liveness
from conchcmd.server.proxied import proxy_of
from conchcmd.server.userauth import UserAuthService
from conchcmd.session.realm import CommandUser
from conchcmd.wire.dispatch import KEX_ERROR, Action, Phase, Verdict
from conchcmd.wire.framing import ModernServerTransport, RandomPool

if TYPE_CHECKING:
    from conchcmd.server.factory import CommandServerFactory

log = FastLogger(namespace=LOG_NAMESPACE)

TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)

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
#: A key exchange (ours or the client's) must finish within this time once it has started.
KEX_TIMEOUT = 60.0
#: Channel output queued behind a key exchange in progress, at most (then channels wait for the
#: NEWKEYS): OpenSSH's default session window, what one channel may have in flight anyway. sshd
#: stops at once; what is queued here is sent right after NEWKEYS and counts as the traffic
#: that makes a client's frequent rekeys legitimate (see framing.REKEY_FREE_BYTES).
KEX_OUTPUT_BUDGET = 2 * 1024 * 1024
#: EXT_INFO's server-sig-algs value: the user-key signature algorithms.
SERVER_SIG_ALGS = NS(b",".join(USER_SIGNATURE_ALGORITHMS))


def set_listener_options(port: object, *, keepalive: bool) -> bool:
    """Set TCP_NODELAY, and SO_KEEPALIVE with `keepalive`, on a TCP listening port's socket
    (Twisted's `tcp.Port.socket`): Linux copies both to every connection the socket accepts, which
    then needs no setsockopt of its own. True if set (a TCP port, on Linux); else each connection
    sets them itself."""
    sock = getattr(port, "socket", None)  # tcp.Port's (and an adopted systemd socket's); not IListeningPort's
    if (
        not sys.platform.startswith("linux")
        or not isinstance(sock, socket.socket)
        or sock.family not in (socket.AF_INET, socket.AF_INET6)
        or sock.type != socket.SOCK_STREAM
    ):
        return False
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if keepalive:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    return True


def auth_client(address: IAddress, peer: str) -> Client:
    """The client as the authentication lines name it: sshd's address text (no brackets; an
    IPv4-mapped IPv6 address as IPv4, as host_and_port gives it) and port."""
    return auth_client_of(host_and_port(address), peer)


def auth_client_of(ip: tuple[str, int] | None, peer: str) -> Client:
    """`auth_client`, the address's `host_and_port` known already."""
    if ip is None:
        return Client(host=peer, port=0, peer=peer)
    host, port = ip
    return Client(host=host, port=port, peer=peer)


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


@implementer(IPushProducer)  # TCP pauses it when its send buffer is full
class ServerTransport(ModernServerTransport):
    """The SSH transport with a modern-only algorithm list and the fixes Conch lacks.

    Overrides: a version banner that does not reveal Twisted's version; `server-sig-algs`
    listing user-key algorithms (Conch lists host-key ones, so RSA user keys fail against an
    ed25519 host); a login grace timer from the first byte (Conch has none before userauth);
    TCP_QUICKACK re-armed after reads no reply answers (avoids a 40 ms delayed-ACK stall);
    packets capped at 64 KiB before authentication and 256 KiB after (Conch allows 1 MiB);
    malformed packets end this connection with one log line; idle and keepalive timers; TCP
    keepalive; admission (caps, penalties, client slots) asked of the factory's `Admissions`
    through this connection's `ticket`; closing unregisters the TCP producer (see
    `_closing`); refusals of the dispatch policy logged once per kind (`note_refused`); a
    second SERVICE_REQUEST "ssh-userauth" answered without restarting userauth; a time limit
    on key exchanges and channel output held behind one (`output_held`).
    """

    factory: CommandServerFactory

    peer = "?"
    ticket: Ticket | None = None  # this connection's standing with the factory's admissions
    refusal = ""  # why admit() turned the client away
    auth_failures = 0
    #: The user name the client last asked to authenticate as (raw), and whether it can log in.
    auth_user: bytes | None = None
    auth_user_valid = True
    #: Decides what the userauth service left undecided about `auth_user` (whether it is an
    #: "invalid user": its authorized_keys read only once no answer can show the read) and
    #: writes the auth lines that waited for it; set by the service, run as the connection ends.
    settle_auth_user: Callable[[bool], None] | None = None
    #: Writes the line of the server's that goes with its disconnect as the connection ends, after
    #: the auth lines waiting for `settle_auth_user`; set by the service with it.
    after_auth_lines: Callable[[Callable[[], None]], None] | None = None
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
        address = self.transport.getPeer()  # behind a proxy: the client's, from the PROXY header
        proxy = proxy_of(self.transport)
        ip = host_and_port(address)
        self.peer_address = Peer.of_ip(address, ip)
        self.peer = self.peer_address.text
        self.auth_log = AuthLog(auth_client_of(ip, self.peer))
        self.started = factory.clock.seconds()
        self.end_reason = "closed"  # why it ended, escaped text (sanitise): logged and audited as it is
        self.refusals = RepeatLog(log, self.peer)
        self.connection_id = new_connection_id(factory.connection_ids, factory.random.take)
        self.audit = BoundAudit(factory.audit, connection=self.connection_id)  # joins this connection's records
        factory.transports.add(self)
        self.ticket = factory.admissions.start(self.peer_address.host, self.peer, self.connection_id)
        if TCP_QUICKACK is not None and ISystemHandle.providedBy(self.transport):
            sock = self.transport.getHandle()
            if isinstance(sock, socket.socket):
                self._quickack = functools.partial(sock.setsockopt, socket.IPPROTO_TCP, TCP_QUICKACK, 1)
        if not factory.listener_options and ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)
            if factory.settings.tcp_keepalive:
                # sshd's TCPKeepAlive: a vanished peer's connection (and slot) ends
                self.transport.setTcpKeepAlive(True)
        log.info("Client connection from {peer}{via}", peer=self.peer, via=f" via {proxy}" if proxy else "")
        self.audit.record("connect", peer=self.peer, **({"proxy": proxy} if proxy else {}))
        if IConsumer.providedBy(self.transport):
            # TCP tells us when its send buffer is full (see pauseProducing)
            self.transport.registerProducer(self, True)
            self._producing = True
        self._grace = factory.clock.callLater(limits.login_grace_time, self._grace_expired)
        super().connectionMade()

    def random_pool(self) -> RandomPool:
        return self.factory.random  # one pool for the server's connections (see RandomPool)

    _quickack: Callable[[], None] | None = None  # re-arms TCP_QUICKACK on this connection's socket

    def dataReceived(self, data: bytes) -> None:
        # TCP_QUICKACK (Linux) acknowledges what was read at once, and leaves delayed-ACK mode
        # until we next send soon after a read: a client's next small packet, held back by its
        # Nagle until that ACK, then goes out at once, not after the 40 ms delayed-ACK timer.
        # It is armed once a read has been handled, if nothing answered it in the same turn (a
        # command running, a version line or KEXINIT whose answer went out at connect, the
        # client's NEWKEYS): a reply carries the ACK itself (the key-exchange reply does).
        quickack = self._quickack
        if self._failed or self._broken:
            return
        if self.liveness is not None:
            self.liveness.received()
        sent = self.bytes_sent
        try:
            super().dataReceived(data)
        except Exception as e:  # whatever it is, it ends only this connection
            self.packet_raised(e)
        if quickack is not None and self.bytes_sent == sent and not self.transport.disconnecting:
            self._arm_quickack(quickack)

    @staticmethod
    def _arm_quickack(quickack: Callable[[], None]) -> None:
        try:  # noqa: SIM105 (contextlib.suppress is three Python calls more)
            quickack()
        except OSError:
            pass

    def packet_raised(self, e: Exception, where: str = "") -> None:
        """A packet from this peer raised `e` (`where`: what was being handled, if not the packet
        just read). Malformed input is a protocol error, counted against the client's source;
        anything else is a bug of ours: logged with its traceback, the client not blamed."""
        if is_parse_error(e):
            self._protocol_error(f"{error_kind(e)}{where}: {e}")
            return
        self.internal_error(Failure(e, type(e), e.__traceback__), "handling a packet", where)

    def internal_error(self, failure: Failure, doing: str, where: str = "", *, gone: bool = False) -> None:
        """A bug of ours, hit while `doing` something for this peer: logged with its traceback
        (once per place in the code, then one line each time), the connection ended with
        "internal error", the client not blamed (no strike). `gone`: the connection has been
        lost already (the bug is only logged)."""
        described = f"{error_kind(failure.value)}{where}: {failure.value}"
        self._broken = True  # nothing more from this peer is acted on
        ended = gone or self.closing
        if not ended:
            self.end_reason = sanitise(f"internal error: {described}", 200)
        then = "connection closed already" if ended else "disconnecting"
        self.factory.internal_errors.report(log, failure, doing, self.peer, then, described)
        if not ended:
            self.sendDisconnect(transport.DISCONNECT_BY_APPLICATION, b"internal error")

    @property
    def user(self) -> str | None:
        """The user admitted on this connection, if any (kept once the slot is released)."""
        return self.ticket.user if self.ticket is not None else None

    @property
    def shown_user(self) -> str | None:
        """`user` as log lines and audit records show it (sanitised), if any."""
        user = self.user
        return None if user is None else sanitise(user)

    @property
    def holds_slot(self) -> bool:
        """Authenticated and admitted: the connection holds a client slot."""
        return self.ticket is not None and self.ticket.holds_slot

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
        peer, shown = self.peer, sanitise(error, 200)
        self._after_auth_lines(
            lambda: log.warn("Protocol error from {peer}: {error}; disconnecting", peer=peer, error=shown)
        )
        self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"protocol error")

    def sendDisconnect(self, reason: int, desc: bytes | str) -> None:
        if isinstance(desc, str):  # Conch's hybrid key exchange passes str reasons
            desc = desc.encode()
        if not self._dead:
            self._closing()
        if not self.holds_slot and reason in PROTOCOL_VIOLATIONS:
            self._failed = True  # counts against the source (see _strike)
        if self.end_reason == "closed":  # escaped: Conch's reasons may quote the client ("don't have service NAME")
            self.end_reason = sanitise(desc, 200)
        super().sendDisconnect(reason, desc)

    _client_disconnected = False
    auth_end_logged = False  # the authentication line that says how the connection ended

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        # Conch logs every client disconnect at error level; it is the normal way to leave.
        self.end_reason = f"client disconnected: {sanitise(description, 200)}"
        self._client_disconnected = True
        peer_left(self.transport)  # its goodbye: the close needs no shutdown first (see ClosingServer)
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
        # This key exchange's timer and held bytes end first: the flush of what it held back
        # (in super()) may pass the traffic limit and start the next one, with its own.
        self._held_bytes = 0
        if self._kex_timer is not None:
            self._kex_timer.cancel()
            self._kex_timer = None
        super().take_new_keys()  # what the key exchange held back is sent now
        self._pump_channels()

    @property
    def output_held(self) -> bool:
        """Channels produce no more output while TCP's send buffer is full, or while a key
        exchange runs once KEX_OUTPUT_BUDGET waits behind it (sshd: serverloop.c polls channel
        output only when not rekeying). Conch queued without limit behind a key exchange."""
        return self._tcp_paused or (not self.kex_idle() and self._held_bytes >= KEX_OUTPUT_BUDGET)

    _held_bytes = 0  # payload bytes queued behind the key exchange in progress

    def hold_for_kex(self, messageType: int, payload: bytes) -> None:
        self._held_bytes += len(payload)
        super().hold_for_kex(messageType, payload)

    def sendExtInfo(self, extensions: list[tuple[bytes, bytes]]) -> None:
        # Conch's key set-up calls this right after our first NEWKEYS, and would hold EXT_INFO
        # until the client's NEWKEYS: it leaves now, in the flight of the key-exchange reply, as
        # sshd sends it (RFC 8308 2.4), which saves the client a wake-up. server-sig-algs lists
        # the user-key algorithms (Conch lists the host-key ones).
        if not self.peer_supports_extensions():
            return
        payload = b"".join(
            [
                len(extensions).to_bytes(4, "big"),
                *(
                    NS(name) + (SERVER_SIG_ALGS if name == b"server-sig-algs" else NS(value))
                    for name, value in extensions
                ),
            ]
        )
        if self.kex_idle() or not self.nextEncryptions.keyed:
            self.sendPacket(transport.MSG_EXT_INFO, payload)  # (not after our NEWKEYS: Conch's way)
        else:
            self.send_after_newkeys(transport.MSG_EXT_INFO, payload)

    def _grace_expired(self) -> None:
        self._grace = None
        seconds, peer = self.factory.settings.limits.login_grace_time, self.peer
        self._after_auth_lines(
            lambda: log.info(
                "Login grace time ({seconds:g} s) exceeded by {peer}; disconnecting", seconds=seconds, peer=peer
            )
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
        assert self.ticket is not None  # set on connectionMade
        refusal = self.factory.admissions.admit(self.ticket, user)
        if refusal is not None:
            self.refusal = refusal
            self.auth_end_logged = True  # authenticated, then turned away: not an authentication failure
            log.info("{refusal}: turned away {user}@{peer}", refusal=refusal, user=sanitise(user), peer=self.peer)
            self.sendDisconnect(transport.DISCONNECT_TOO_MANY_CONNECTIONS, refusal.encode())
            return False
        avatar.refusals = self.refusals
        avatar.audit = self.audit
        avatar.internal_errors = self.factory.internal_errors
        return True

    def _after_auth_lines(self, write: Callable[[], None]) -> None:
        """The line of the server's saying why it ends the connection: after the auth lines that
        wait for their name, as the connection ends (after the disconnect, for every name:
        deciding the name now would read its file before an answer), as it was before they waited."""
        if self.after_auth_lines is not None:
            self.after_auth_lines(write)
        else:
            write()

    def _strike(self) -> str | None:
        """How this connection failed, misbehaved or stalled, if it did: counted against its source
        if it never got in (see Admissions.release)."""
        if self.auth_failures:
            why = "failed authentication"
        elif self._failed:
            why = "protocol errors"
        elif self.end_reason == "login grace time exceeded":
            why = "login grace time exceeded"
        elif isinstance(self.service, UserAuthService) and self.service.pending:
            why = "left during authentication"  # e.g. sent a password and closed before the answer
        else:
            return None  # e.g. a scanner reading the banner: no strike
        return why

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
        log.info("Closing connection {peer} ({user}): {why}", peer=self.peer, user=self.shown_user, why=why)
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
        if self.liveness is not None:
            self.liveness.stop()
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        if self._kex_timer is not None:
            self._kex_timer.cancel()
            self._kex_timer = None
        if self.settle_auth_user is not None:  # before any line of the connection's end
            try:
                self.settle_auth_user(True)
            except Exception:  # a bug: logged, and the connection's end still released
                self.internal_error(Failure(), "deciding the user name of a connection", gone=True)
        factory = self.factory
        if self.ticket is not None:
            factory.admissions.release(self.ticket, self._strike())
        factory.transports.discard(self)
        factory.metrics.connection_closed(self.bytes_sent, max(self.kex_count - 1, 0))
        duration = round(factory.clock.seconds() - self.started, 3)
        refused = self.refusals.summary()
        user, shown_user = self.user, self.shown_user
        log.info(
            "Lost client connection {peer} ({user}): {reason}{refused}",
            peer=self.peer,
            user=shown_user or "not authenticated",
            reason=self.end_reason,
            refused=f" (refused: {sanitise(refused, 1000)})" if refused else "",
        )
        if user is not None:
            self.auth_log.disconnected(user)
        elif self.auth_user is not None and not self.auth_end_logged:
            self.auth_log.closed_during_auth(
                self.auth_user, self.auth_user_valid, client_disconnected=self._client_disconnected
            )
        self.audit.record(
            "disconnect",
            peer=self.peer,
            user=shown_user,
            reason=self.end_reason,
            duration_s=duration,  # escaped when set
        )
        factory.connection_ids.discard(self.connection_id)
        try:
            super().connectionLost(reason)
        finally:  # after this connection's last record: the shutdown's own come after it
            waiters, self._lost_waiters = self._lost_waiters or [], None
            for d in waiters:
                if not d.called:  # not cancelled by the shutdown's grace time
                    d.callback(None)
            self._break_cycles()

    def _break_cycles(self) -> None:
        """Conch leaves a closed connection as reference cycles (transport <-> connection service,
        and transport -> avatar -> service -> transport): cut the edges down from the transport so
        that reference counting frees it at once, not Python's cyclic collector (its full
        collections scan every object the process holds). The service and avatar keep their own
        references up, for work that ends after the connection (commands, audit records)."""
        self.service = None
        avatar = getattr(self, "avatar", None)  # set at login only
        if avatar is not None:
            avatar.conn = None


if TYPE_CHECKING:  # mypy holds the transport to the contract the session channels rely on
    _transport_contract: type[PausableTransport] = ServerTransport
