"""A scriptable SSH client on Conch's client classes, for in-memory tests of the whole stack.

It drives exactly what a test asks for (a key probe, a login with a chosen signature algorithm,
channels with chosen windows, raw channel requests) and records every byte the server sends.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any

from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from twisted.conch.ssh import channel, common, connection, service, transport, userauth
from twisted.conch.ssh.keys import Key
from twisted.internet import defer, protocol
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IReactorTime
from twisted.test import iosim

from conchcmd.core.config import CIPHERS, MACS, OPTIONAL_MACS
from conchcmd.server.factory import CommandServerFactory
from conchcmd.wire.framing import MLKEM_KEX, ModernFraming


class ClientTransport(ModernFraming, transport.SSHClientTransport):
    """Conch's client with our packet layer, so it speaks every cipher and MAC the server offers.

    Tests pick what it offers by setting `supportedCiphers` / `supportedMACs` on the factory.
    """

    factory: ClientFactory
    supportedCiphers = [c.encode() for c in CIPHERS]
    supportedMACs = [m.encode() for m in (*MACS, *OPTIONAL_MACS)]
    _gotNewKeys = 0

    def connectionMade(self) -> None:
        for name in ("supportedCiphers", "supportedMACs", "supportedKeyExchanges", "offer_strict_kex"):
            value = getattr(self.factory, name, None)
            if value is not None:
                setattr(self, name, value)
        super().connectionMade()

    def ssh_KEXINIT(self, packet: bytes) -> None:
        # SSHClientTransport.ssh_KEXINIT with our negotiation; curve25519/ECDH, or
        # mlkem768x25519-sha256 when a test offers it (Conch's client has no hybrid exchange).
        if self.negotiate(packet) is None:
            return
        if self.kexAlg == MLKEM_KEX:
            self.hybrid_init()
            return
        self.ecPriv = self._generateECPrivateKey()
        self.ecPub = self.ecPriv.public_key()
        self.sendPacket(transport.MSG_KEX_DH_GEX_REQUEST_OLD, common.NS(self._encodeECPublicKey(self.ecPub)))

    def hybrid_init(self) -> None:
        """KEX_HYBRID_INIT of mlkem768x25519-sha256, written from draft-ietf-sshm-mlkem-hybrid-kex
        alone (not from the server's code): C_INIT is the ML-KEM-768 public key, then X25519's."""
        self.kem_private = mlkem.MLKEM768PrivateKey.generate()
        self.x25519_private = x25519.X25519PrivateKey.generate()
        self.c_init = (
            self.kem_private.public_key().public_bytes_raw() + self.x25519_private.public_key().public_bytes_raw()
        )
        self.sendPacket(transport.MSG_KEX_DH_GEX_REQUEST_OLD, common.NS(self.c_init))

    def ssh_KEX_DH_GEX_GROUP(self, packet: bytes) -> Any:
        if self.kexAlg != MLKEM_KEX:
            return super().ssh_KEX_DH_GEX_GROUP(packet)
        # KEX_HYBRID_REPLY: K_S, S_REPLY (the ML-KEM ciphertext, then the server's X25519 key), the
        # signature of H. K = HASH(K_PQ || K_CL) as a string; H over the usual fields, C_INIT, S_REPLY, K.
        host_key, s_reply, signature, _ = common.getNS(packet, 3)
        ciphertext, server_x25519 = s_reply[:-32], s_reply[-32:]
        k_pq = self.kem_private.decapsulate(ciphertext)
        k_cl = self.x25519_private.exchange(x25519.X25519PublicKey.from_public_bytes(server_x25519))
        shared = common.NS(sha256(k_pq + k_cl).digest())
        exchange_hash = sha256(
            b"".join(
                common.NS(s)
                for s in (
                    self.ourVersionString,
                    self.otherVersionString,
                    self.ourKexInitPayload,
                    self.otherKexInitPayload,
                    host_key,
                    self.c_init,
                    s_reply,
                )
            )
            + shared
        ).digest()

        def verified(_: object) -> None:
            if not Key.fromString(host_key).verify(signature, exchange_hash):
                self.sendDisconnect(transport.DISCONNECT_KEY_EXCHANGE_FAILED, b"bad signature")
            else:
                self._keySetup(shared, exchange_hash)

        return self.verifyHostKey(host_key, b"").addCallback(verified)

    def ssh_NEWKEYS(self, packet: bytes) -> None:
        if not self.nextEncryptions.keyed:
            self._gotNewKeys = 1  # the host key check is still running; _keySetup comes back
            return
        self.take_new_keys()
        if self.kex_count == 1:  # rekeys renew the keys of a connection already secure
            self.connectionSecure()

    def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> defer.Deferred[bool]:
        self.factory.host_key = Key.fromString(hostKey)
        return defer.succeed(True)

    def connectionSecure(self) -> None:
        self.factory.secure.callback(self)

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        self.factory.disconnect_reason = (reasonCode, description)
        super().receiveError(reasonCode, description)


class AuthClient(service.SSHService):
    """ssh-userauth, client side, one explicit step at a time."""

    name = b"ssh-userauth"
    next_service = b"ssh-connection"  # what the requests ask for

    def __init__(self, user: bytes, conn: ClientConnection):
        self.user = user
        self.conn = conn
        self.replies: list[tuple[int, bytes]] = []
        self.waiting: defer.Deferred[tuple[int, bytes]] | None = None

    def packetReceived(self, messageNum: int, packet: bytes) -> None:
        if messageNum == userauth.MSG_USERAUTH_SUCCESS:
            self.transport.setService(self.conn)
        if messageNum == userauth.MSG_USERAUTH_BANNER:
            return
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting.callback((messageNum, packet))
        else:
            self.replies.append((messageNum, packet))

    def _request(self, method: bytes, data: bytes) -> defer.Deferred[tuple[int, bytes]]:
        self.waiting = defer.Deferred()
        self.send_request(method, data)
        return self.waiting

    def send_request(self, method: bytes, data: bytes) -> None:
        """Send a request without waiting for the answer (answers collect in `replies`): pipelining."""
        self.transport.sendPacket(
            userauth.MSG_USERAUTH_REQUEST,
            common.NS(self.user) + common.NS(self.next_service) + common.NS(method) + data,
        )

    def probe(self, key: Key, algorithm: bytes | None = None) -> defer.Deferred[tuple[int, bytes]]:
        algorithm = algorithm or key.sshType()
        return self._request(b"publickey", b"\x00" + common.NS(algorithm) + common.NS(key.blob()))

    def signed(
        self, key: Key, algorithm: bytes | None = None, blob: bytes | None = None, signature_type: bytes | None = None
    ) -> bytes:
        """The data of a signed publickey request with `key`: offering `blob` (default: the key's
        own, as ssh-keygen writes it; a certificate or an oddly written key otherwise) under
        `algorithm`, signed with `signature_type` (default: `algorithm`)."""
        algorithm = algorithm or key.sshType()
        blob = key.public().blob() if blob is None else blob
        signed = (
            common.NS(self.transport.sessionID)
            + bytes((userauth.MSG_USERAUTH_REQUEST,))
            + common.NS(self.user)
            + common.NS(self.next_service)
            + common.NS(b"publickey")
            + b"\x01"
            + common.NS(algorithm)
            + common.NS(blob)
        )
        signature = key.sign(signed, signatureType=signature_type or algorithm)
        return b"\x01" + common.NS(algorithm) + common.NS(blob) + common.NS(signature)

    def login(
        self, key: Key, algorithm: bytes | None = None, blob: bytes | None = None
    ) -> defer.Deferred[tuple[int, bytes]]:
        return self._request(b"publickey", self.signed(key, algorithm, blob))

    def password(self, secret: bytes) -> defer.Deferred[tuple[int, bytes]]:
        return self._request(b"password", password_data(secret))


def password_data(secret: bytes) -> bytes:
    """The data of a password request."""
    return b"\x00" + common.NS(secret)


class ClientConnection(connection.SSHConnection):
    def __init__(self) -> None:
        super().__init__()
        self.started: defer.Deferred[ClientConnection] = defer.Deferred()
        self.global_replies: list[int] = []
        self.held_windows: set[int] = set()

    def serviceStarted(self) -> None:
        super().serviceStarted()
        self.started.callback(self)

    def adjustWindow(self, chan: Any, bytesToAdd: int) -> None:
        if chan.id in self.held_windows:
            return  # a "slow reader": the channel's window stays shut
        super().adjustWindow(chan, bytesToAdd)

    def ssh_CHANNEL_SUCCESS(self, packet: bytes) -> None:
        (local_id,) = struct.unpack(">L", packet[:4])
        self.channels[local_id]._event("reply")
        super().ssh_CHANNEL_SUCCESS(packet)

    def ssh_CHANNEL_FAILURE(self, packet: bytes) -> None:
        (local_id,) = struct.unpack(">L", packet[:4])
        self.channels[local_id]._event("refused")
        super().ssh_CHANNEL_FAILURE(packet)

    def ssh_REQUEST_SUCCESS(self, packet: bytes) -> None:
        self.global_replies.append(connection.MSG_REQUEST_SUCCESS)

    def ssh_REQUEST_FAILURE(self, packet: bytes) -> None:
        self.global_replies.append(connection.MSG_REQUEST_FAILURE)


class RecordingChannel(channel.SSHChannel):
    """A client channel that records stdout, stderr, requests, EOF and close."""

    def __init__(self, name: bytes = b"session", **kwargs: Any):
        super().__init__(**kwargs)
        self.name = name
        self.out = bytearray()
        self.err = bytearray()
        self.requests: list[tuple[bytes, bytes]] = []
        self.exit_status: int | None = None
        self.got_eof = False
        self.is_closed = False
        self.opened: defer.Deferred[RecordingChannel] = defer.Deferred()
        self.open_failure: Any = None
        self.events: list[str] = []  # "data", "eof", "exit-status", "close", in arrival order

    def _event(self, name: str) -> None:
        if not self.events or self.events[-1] != name:
            self.events.append(name)

    def channelOpen(self, specificData: bytes) -> None:
        self.opened.callback(self)

    def openFailed(self, reason: Any) -> None:
        self.open_failure = reason
        self.opened.errback(reason)

    def dataReceived(self, data: bytes) -> None:
        self._event("data")
        self.out += data

    def extReceived(self, dataType: int, data: bytes) -> None:
        self._event("data")
        self.err += data

    def requestReceived(self, requestType: bytes, data: bytes) -> int:
        self._event(requestType.decode())
        self.requests.append((requestType, data))
        if requestType == b"exit-status":
            self.exit_status = struct.unpack(">L", data)[0]
        return 1

    def eofReceived(self) -> None:
        self._event("eof")
        self.got_eof = True

    def closed(self) -> None:
        self._event("close")
        self.is_closed = True


class ClientFactory(protocol.ClientFactory):
    protocol = ClientTransport

    def __init__(self, clock: IReactorTime | None = None) -> None:
        #: Times the client's rekey after an hour; `connect` gives it the server's clock if None.
        self.clock = clock
        self.secure: defer.Deferred[ClientTransport] = defer.Deferred()
        self.supportedCiphers: list[bytes] | None = None
        self.supportedMACs: list[bytes] | None = None
        self.supportedKeyExchanges: list[bytes] | None = None
        self.offer_strict_kex: bool | None = None
        self.host_key: Key | None = None
        self.disconnect_reason: tuple[int, bytes] | None = None


def pty_request(term: bytes = b"xterm", columns: int = 80, rows: int = 24) -> bytes:
    return common.NS(term) + struct.pack(">4L", columns, rows, 0, 0) + common.NS(b"")


@dataclass
class Connection:
    """One in-memory client connection to the server, with helpers to drive it."""

    server: Any
    client: ClientTransport
    pump: iosim.IOPump
    factory: ClientFactory
    conn: ClientConnection = field(default_factory=ClientConnection)
    auth: AuthClient | None = None

    def flush(self) -> None:
        self.pump.flush()

    def start_auth(self, user: bytes) -> AuthClient:
        self.auth = AuthClient(user, self.conn)
        self.client.requestService(self.auth)
        self.flush()
        return self.auth

    def login(self, user: bytes, key: Key, algorithm: bytes | None = None) -> int:
        """Authenticate; returns the reply message number (52 success, 51 failure, 0 disconnected)."""
        auth = self.auth or self.start_auth(user)
        d = auth.login(key, algorithm)
        self.flush()
        return result_of(d)[0] if d.called else 0

    def open_session(self, window: int = 2 * 1024 * 1024, max_packet: int = 32768) -> RecordingChannel:
        chan = RecordingChannel(localWindow=window, localMaxPacket=max_packet, conn=self.conn)
        self.conn.openChannel(chan)
        self.flush()
        return chan

    def request(self, chan: RecordingChannel, kind: bytes, data: bytes = b"", want_reply: bool = True) -> Any:
        d = self.conn.sendRequest(chan, kind, data, wantReply=want_reply)
        self.flush()
        return d

    def exec(self, chan: RecordingChannel, command: bytes) -> Any:
        return self.request(chan, b"exec", common.NS(command))

    def send(self, chan: RecordingChannel, data: bytes) -> None:
        chan.write(data)
        self.flush()

    def send_eof(self, chan: RecordingChannel) -> None:
        self.conn.sendEOF(chan)
        self.flush()

    @property
    def disconnected(self) -> bool:
        return bool(self.client.transport.disconnected)  # type: ignore[union-attr]


def result_of(d: defer.Deferred[Any]) -> Any:
    """The result of an already-fired Deferred (raising its failure)."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "Deferred has not fired"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def connect(
    factory: CommandServerFactory,
    clock: Any,
    peer: str = "10.0.0.1",
    port: int = 40000,
    client_factory: ClientFactory | None = None,
    *,
    preamble: bytes = b"",
) -> Connection:
    """Open an in-memory connection from `peer` to the server and complete key exchange;
    `preamble` (a PROXY header) is sent before the client's first byte."""
    client_factory = client_factory or ClientFactory()
    if client_factory.clock is None:
        client_factory.clock = clock
    client = client_factory.buildProtocol(None)
    client.factory = client_factory
    address = IPv6Address if ":" in peer else IPv4Address  # an IPv6 peer talks to ::1
    local = "::1" if ":" in peer else "127.0.0.1"
    server = factory.buildProtocol(address("TCP", peer, port))  # Twisted passes the peer
    server_io = iosim.FakeTransport(
        server,
        isServer=True,
        hostAddress=address("TCP", local, 2222),
        peerAddress=address("TCP", peer, port),
    )
    client_io = iosim.FakeTransport(
        client,
        isServer=False,
        hostAddress=address("TCP", peer, port),
        peerAddress=address("TCP", local, 2222),
    )
    if preamble:
        client_io.write(preamble)
    pump = iosim.connect(server, server_io, client, client_io, clock=clock)
    return Connection(server, client, pump, client_factory)


def still_works(*conns: Connection) -> None:
    """Each connection is open and runs a command on a new channel."""
    for conn in conns:
        assert not conn.disconnected
        chan = conn.open_session()
        conn.exec(chan, b"help")
        conn.flush()
        assert chan.exit_status == 0 and b"comphash" in chan.out
