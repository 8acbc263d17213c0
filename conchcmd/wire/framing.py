"""The transport's packet layer and key-exchange rules, replacing the parts of Conch that lack
AEAD ciphers, encrypt-then-MAC, strict KEX and server-initiated rekeying.

Overrides of `SSHServerTransport`, each because Conch's version cannot do the job:
- `sendPacket` / `getPacket`: frame packets through `packets.PacketCodec` (AEAD and EtM need the
  whole packet and the sequence number; Conch's SSHCiphers only encrypts blocks and MACs). The
  outgoing keys change right after our NEWKEYS, the incoming ones after the peer's (RFC 4253 7.3).
- `dataReceived`: Conch's version-line reading sees only the bytes up to the version line's end
  (it counted a KEXINIT in the same read against the line's 4 KiB limit), and a server refuses
  lines before a client's version line, however they arrive (RFC 4253 4.2, as sshd).
- `ssh_KEXINIT`: negotiation where an AEAD cipher implies its MAC, and detection of strict KEX.
- `dispatchMessage` / `ssh_NEWKEYS`: strict KEX (kex-strict-s-v00@openssh.com, the Terrapin
  counter-measure, CVE-2023-48795): during the first key exchange only key-exchange messages
  are allowed, KEXINIT must come first, and sequence numbers restart at 0 after every NEWKEYS.
- rekeying after 1 GiB or 1 hour (OpenSSH's RekeyLimit default), which Conch never starts; the
  hour is timed by the factory's `clock`, which a transport must have.
- (server) `dispatchMessage`: every incoming message goes through the dispatch policy
  (`conchcmd.wire.dispatch`, sshd's tables) first. Conch runs any message it has a method for, in any
  state: a KEX_ECDH_INIT with no key exchange in progress (a new host-key signature each time,
  and its keys switched mid-connection), a SERVICE_REQUEST after login. Nothing is dispatched
  after our DISCONNECT; no rekey before authentication; and a client that keeps starting key
  exchanges without sending data is disconnected (REKEY_BURST).
- (server) `ssh_KEX_DH_GEX_REQUEST_OLD`: curve25519-sha256 and mlkem768x25519-sha256 answered here
  (`curve25519_init`, `mlkem_init`, `set_up_keys`: what Conch's handlers and key set-up do, with
  ~85 Python calls fewer per key exchange, the INIT read as exactly one string as sshd reads it,
  and neither KEXINIT kept once the exchange hash is made); other methods by Conch.
"""

from __future__ import annotations

import os
import struct
from collections import deque
from hashlib import sha256
from typing import Any, ClassVar

from cryptography.exceptions import UnsupportedAlgorithm
from twisted.conch.ssh import transport
from twisted.conch.ssh.common import NS, ffs, getNS
from twisted.conch.ssh.keys import Key
from twisted.internet.interfaces import IReactorTime

try:
    from cryptography.hazmat.primitives.asymmetric import mlkem
except ImportError:  # cryptography < 48: no ML-KEM, and usable_key_exchanges() leaves it out
    mlkem = None  # type: ignore[assignment]

from conchcmd.keys.sodium import x25519_key_pair, x25519_shared
from conchcmd.wire.conchprivate import KexState, KeyDerivation, QuietTransportLog
from conchcmd.wire.dispatch import Action, Phase, Rulings, Verdict, phase_of
from conchcmd.wire.packets import BadPacket, CipherSuite, PacketCodec, implicit_mac, pad

STRICT_KEX_SERVER = b"kex-strict-s-v00@openssh.com"
STRICT_KEX_CLIENT = b"kex-strict-c-v00@openssh.com"
EXT_INFO_CLIENT = b"ext-info-c"
EXT_INFO_SERVER = b"ext-info-s"
MARKERS = (STRICT_KEX_SERVER, STRICT_KEX_CLIENT, EXT_INFO_CLIENT, EXT_INFO_SERVER)
REKEY_BYTES = 1 << 30
REKEY_SECONDS = 3600.0
MAX_PACKET = 256 * 1024 + 1024
#: RFC 4253 6.1: every implementation must take packets of 35000 bytes in all; no packet-size
#: limit (`max_packet_size`) is below this packet length, which therefore needs no look-up.
PACKET_LIMIT_FLOOR = 32768
#: A client may start at most REKEY_BURST key exchanges within REKEY_WINDOW seconds that follow
#: less than REKEY_FREE_BYTES of traffic since the previous one (rekeys a real client makes after
#: its RekeyLimit, 1 GiB or more by OpenSSH's default, are never counted); one more disconnects.
#: OpenSSH checks a small RekeyLimit as it sends, about once per window adjustment (1 MiB of
#: data with its 2 MiB window), so 1 MiB here made such a client's rekeys count or not by a hair.
REKEY_BURST = 10
REKEY_WINDOW = 60.0
REKEY_FREE_BYTES = 8 * 1024  # below any RekeyLimit a real client uses (OpenSSH: 16K already rare)


class RandomPool:
    """Random bytes from the OS, drawn `size` at a time and handed out once each: padding, KEXINIT
    cookies and connection ids. The server keeps one for all its connections (SERVER_POOL_SIZE:
    one getrandom system call per ~35 fresh connections, where one per connection was two, with
    the connection id's); a test client keeps one of its own (128 bytes, ~16 packets' padding)."""

    __slots__ = ("pool", "pos", "size")

    def __init__(self, size: int = 128):
        self.size = size
        self.pool = b""
        self.pos = 0

    def take(self, n: int) -> bytes:
        pos = self.pos
        end = pos + n
        if end > len(self.pool):
            self.pool = os.urandom(max(self.size, n))
            pos, end = 0, n
        self.pos = end
        return self.pool[pos:end]


#: The server's pool: what a fresh exec draws (a cookie, ~13 packets' padding, a connection id:
#: ~120 bytes) about 35 times per draw.
SERVER_POOL_SIZE = 4096


MLKEM_KEX = b"mlkem768x25519-sha256"
#: The key exchanges `ModernServerTransport.curve25519_init` answers itself (both SHA-256;
#: `mlkem_init` answers MLKEM_KEX).
CURVE25519_KEXES = frozenset((b"curve25519-sha256", b"curve25519-sha256@libssh.org"))
#: Host-key signature algorithms whose key the factory stores under another format (as Conch's
#: `_getHostKeys` maps them).
_RSA_SHA2 = frozenset((b"rsa-sha2-256", b"rsa-sha2-512"))
#: Public value sizes in mlkem768x25519-sha256's C_INIT (ML-KEM-768's, then X25519's).
_MLKEM768_PUBLIC = 1184
_X25519_PUBLIC = 32

_UINT32 = struct.Struct(">L").pack


def only_string(packet: bytes) -> bytes:
    """The one RFC 4251 `string` that makes up a key-exchange INIT's payload, exactly: sshd
    (sshpkt_getb_froms, then sshpkt_get_end) refuses a length past the packet's end and bytes after
    the string; Conch's getNS takes the bytes present and ignores the rest. Raises struct.error,
    which the transport reports as a protocol error, as it does for a payload too short for the
    length."""
    (length,) = struct.unpack(">L", packet[:4])
    if length != len(packet) - 4:
        raise struct.error(f"key-exchange INIT: {len(packet) - 4} bytes after the length, which says {length}")
    return packet[4:]


def ssh_strings(strings: list[bytes]) -> bytes:
    """RFC 4251 `string`s (uint32 length, then the bytes), concatenated: what a run of Conch's
    NS() gives, with two calls a string instead of four."""
    return b"".join([_UINT32(len(s)) + s for s in strings])


def mpint(unsigned: bytes) -> bytes:
    """RFC 4251 `mpint` of a big-endian unsigned number (Conch's MP(int.from_bytes(...)))."""
    digits = unsigned.lstrip(b"\0")
    if digits and digits[0] & 0x80:
        digits = b"\0" + digits
    return _UINT32(len(digits)) + digits


def usable_key_exchanges() -> list[bytes]:
    """Conch's key exchanges that work with the installed cryptography. Conch lists
    mlkem768x25519-sha256 whenever cryptography has its `hpke` module, which cryptography 47 has
    without an ML-KEM backend: a client choosing it would fail in the middle of the handshake."""
    names = list(transport.SSHTransportBase.supportedKeyExchanges)
    if MLKEM_KEX in names and not _mlkem_works():
        names.remove(MLKEM_KEX)
    return names


def _mlkem_works() -> bool:
    if mlkem is None:
        return False
    try:
        mlkem.MLKEM768PrivateKey.generate()
    except UnsupportedAlgorithm:
        return False
    return True


_KEXINIT_BYTE = bytes((transport.MSG_KEXINIT,))


#: RFC 4253 7.2's key letters: (sent server to client, which of key_sizes' IV/key/MAC sizes).
#: A dict, not `letter in b"BDF"`: a bytes-in-bytes test first tries the int form and builds a
#: TypeError on Python 3.11 (~1.8 k instructions each, 16 per exec).
_KEY_LETTERS = {b"A": (False, 0), b"B": (True, 0), b"C": (False, 1), b"D": (True, 1), b"E": (False, 2), b"F": (True, 2)}


def derive_key(
    hash_factory: Any, shared_secret: bytes, exchange_hash: bytes, letter: bytes, session_id: bytes, size: int
) -> bytes:
    """RFC 4253 7.2: K1 = HASH(K || H || letter || session_id), K2 = HASH(K || H || K1), ... until
    `size` bytes (`shared_secret` is K as an mpint); the first `size` bytes of Conch's 128."""
    if size <= 0:
        return b""
    prefix = shared_secret + exchange_hash
    key = hash_factory(prefix + letter + session_id).digest()
    while len(key) < size:
        key += hash_factory(prefix + key).digest()
    return key[:size]


KEX_MESSAGES = frozenset((transport.MSG_KEXINIT, transport.MSG_NEWKEYS, *range(30, 50)))


class ModernFraming(KexState, KeyDerivation):
    """Packet framing, negotiation and strict KEX shared by our server transport and the test
    client; mixed in before Conch's SSHServerTransport / SSHClientTransport."""

    # Our codecs know no compression; Conch's default list also offers zlib.
    supportedCompressions = [b"none"]

    nextEncryptions: Any  # a CipherSuite here, not Conch's SSHCiphers
    currentEncryptions: Any
    strict_kex = False
    offer_strict_kex = True
    kex_count = 0  # completed key exchanges, rekeys included
    bytes_sent = 0  # SSH bytes written to the peer (for the metrics)
    _first_kex_done = False
    _peer_kexinit = False  # the peer's KEXINIT of the key exchange under way has arrived
    _pending_length: int | None = None
    _dead = False
    _bytes_since_kex = 0
    _keyed_at = 0.0
    _sending_kexinit = False  # our KEXINIT is being written (the key exchange not yet requested)
    rekey_bytes = REKEY_BYTES
    rekey_seconds = REKEY_SECONDS

    # Provided by Conch's transport classes:
    isClient: bool
    transport: Any
    factory: Any  # has a `clock` (IReactorTime), which times the rekey after REKEY_SECONDS
    buf: bytes
    gotVersion: bool
    incomingPacketSequence: int
    outgoingPacketSequence: int
    supportedKeyExchanges: list[bytes]
    supportedPublicKeys: list[bytes]
    supportedCiphers: list[bytes]
    supportedMACs: list[bytes]
    ourVersionString: bytes
    sessionID: bytes | None

    clock: IReactorTime

    def now(self) -> float:
        return float(self.clock.seconds())

    def max_packet_size(self) -> int:
        """The largest packet length taken now (never below PACKET_LIMIT_FLOOR)."""
        return MAX_PACKET

    def connectionMade(self) -> None:
        # Conch's version installs its own SSHCiphers; ours start with the plain CipherSuite.
        clock = getattr(self.factory, "clock", None)
        if not IReactorTime.providedBy(clock):
            # Without a clock the rekey after REKEY_SECONDS would never happen.
            raise TypeError(f"{type(self.factory).__name__} has no clock (IReactorTime): rekeying by time needs one")
        self.clock = clock
        self.transport.write(self.ourVersionString + b"\r\n")
        self.currentEncryptions = CipherSuite.plain()
        self._padding = self.random_pool()
        self._out_codec: PacketCodec = self.currentEncryptions.outgoing
        self._in_codec: PacketCodec = self.currentEncryptions.incoming
        self._keyed_at = self.now()
        self.sendKexInit()

    def random_pool(self) -> RandomPool:
        """Where this connection's padding and KEXINIT cookies come from: a pool of its own, unless
        the side it serves shares one (the server's transport)."""
        return RandomPool()

    def kex_markers(self) -> list[bytes]:
        """Names appended to the first KEXINIT's kex list: extension info and strict KEX."""
        if self.isClient:
            return [EXT_INFO_CLIENT, *([STRICT_KEX_CLIENT] if self.offer_strict_kex else [])]
        return [EXT_INFO_SERVER, *([STRICT_KEX_SERVER] if self.offer_strict_kex else [])]

    def sendKexInit(self) -> None:
        if not self.kex_idle():
            raise RuntimeError(f"Cannot send KEXINIT while key exchange state is {self.kex_state()!r}")
        markers = () if self._first_kex_done else tuple(self.kex_markers())
        lists = (
            tuple(self.supportedKeyExchanges),
            tuple(self.supportedPublicKeys),
            tuple(self.supportedCiphers),
            tuple(self.supportedMACs),
            tuple(self.supportedCompressions),
            markers,
        )
        body = self._kexinit_bodies.get(lists)
        if body is None:
            body = self._kexinit_body(*lists)
        # the cookie: from the padding pool's OS random bytes
        self.ourKexInitPayload = _KEXINIT_BYTE + self._padding.take(16) + body
        # The state says idle until the KEXINIT is out: one that passes the traffic limit itself
        # must not start another (which started another, without end).
        self._sending_kexinit = True
        try:
            self.sendPacket(transport.MSG_KEXINIT, self.ourKexInitPayload[1:])
        finally:
            self._sending_kexinit = False
        self.kex_requested()

    #: KEXINIT payloads after the cookie, by the lists they are made of: every connection of a
    #: configuration sends the same (building one took ~50 calls). A few entries at most.
    _kexinit_bodies: ClassVar[dict[tuple[tuple[bytes, ...], ...], bytes]] = {}

    @classmethod
    def _kexinit_body(
        cls,
        kex: tuple[bytes, ...],
        keys: tuple[bytes, ...],
        ciphers: tuple[bytes, ...],
        macs: tuple[bytes, ...],
        compressions: tuple[bytes, ...],
        markers: tuple[bytes, ...],
    ) -> bytes:
        body = b"".join(
            [
                NS(b",".join([*kex, *markers])),
                NS(b",".join(keys)),
                NS(b",".join(ciphers)),
                NS(b",".join(ciphers)),
                NS(b",".join(macs)),
                NS(b",".join(macs)),
                NS(b",".join(compressions)),
                NS(b",".join(compressions)),
                NS(b""),
                NS(b""),
                b"\0\0\0\0\0",
            ]
        )
        if len(cls._kexinit_bodies) >= 16:  # configurations reloaded again and again
            cls._kexinit_bodies.clear()
        cls._kexinit_bodies[(kex, keys, ciphers, macs, compressions, markers)] = body
        return body

    # -- packets -------------------------------------------------------------------------------

    def sendPacket(self, messageType: int, payload: bytes) -> None:
        if self.held_by_kex(messageType):
            self.hold_for_kex(messageType, payload)
            return
        if self._dead:
            return
        codec = self._out_codec
        data = codec.seal(self.outgoingPacketSequence, pad(bytes((messageType,)) + payload, codec, self._padding.take))
        self.transport.write(data)
        size = len(data)
        self.bytes_sent += size
        self.outgoingPacketSequence = (self.outgoingPacketSequence + 1) & 0xFFFFFFFF
        if messageType == transport.MSG_NEWKEYS:
            self._out_codec = self.nextEncryptions.outgoing
            if self.strict_kex:
                self.outgoingPacketSequence = 0
        # _count(size), inline: this runs for every packet
        self._bytes_since_kex += size
        if self._first_kex_done and (
            self._bytes_since_kex > self.rekey_bytes or self.clock.seconds() - self._keyed_at > self.rekey_seconds
        ):
            self._rekey()

    def send_packets(self, messages: list[tuple[int, bytes]], during_kex: bool = False) -> None:
        """Send several packets, in order, with one write to the connection (a channel's EOF,
        exit status and close); any that a key exchange must hold go through sendPacket, unless
        `during_kex` says that they may go now (see send_after_newkeys)."""
        if self._dead or (not during_kex and any(self.held_by_kex(t) for t, _ in messages)):
            for t, payload in messages:
                self.sendPacket(t, payload)
            return
        codec, seq, sealed = self._out_codec, self.outgoingPacketSequence, []
        for t, payload in messages:
            sealed.append(codec.seal(seq, pad(bytes((t,)) + payload, codec, self._padding.take)))
            seq = (seq + 1) & 0xFFFFFFFF
        data = b"".join(sealed)
        self.transport.write(data)
        self.bytes_sent += len(data)
        self.outgoingPacketSequence = seq
        self._count(len(data))  # after the write: a rekey it starts must follow these packets

    def send_after_newkeys(self, messageType: int, payload: bytes) -> None:
        """Send a message that may follow our NEWKEYS before the peer's (RFC 8308 2.4: EXT_INFO as
        the next packet after the server's first NEWKEYS), with the new keys: Conch holds every
        such message until the peer's NEWKEYS, which costs the peer a flight and a wake-up."""
        assert self.nextEncryptions.keyed and self._out_codec is self.nextEncryptions.outgoing, "NEWKEYS not sent"
        self.send_packets([(messageType, payload)], during_kex=True)

    def getPacket(self) -> bytes | None:
        if self._dead:
            return None  # Conch's read loop would go on dispatching what the same read brought
        codec = self._in_codec
        buf = self.buf
        have = len(buf)
        length = self._pending_length
        if length is None:
            head = codec.head
            if have < head:
                return None
            length = codec.packet_length(self.incomingPacketSequence, buf[:head])
            aligned = length if codec.length_excluded else length + 4
            # A length within RFC 4253's minimum that every limit allows needs no look-up of it.
            if length > PACKET_LIMIT_FLOOR or length < 5 or aligned % codec.align:
                limit = self.max_packet_size()
                if length > limit or length < 5 or aligned % codec.align:
                    reason = f"packet larger than {limit} bytes" if length > limit else f"bad packet length {length}"
                    self.packet_error(reason)
                    return None
        total = 4 + length + codec.tag_size
        if have < total:
            self._pending_length = length
            return None
        data, self.buf = buf[:total], buf[total:]
        self._pending_length = None
        try:
            packet = codec.open(self.incomingPacketSequence, data)
        except BadPacket as e:
            self.sendDisconnect(transport.DISCONNECT_MAC_ERROR, str(e).encode())
            return None
        padding = packet[4]
        end = len(packet) - padding
        if padding < 4 or end < 6:
            self.packet_error(f"bad padding length {padding}")
            return None
        self.incomingPacketSequence = (self.incomingPacketSequence + 1) & 0xFFFFFFFF
        # _count(total), inline: this runs for every packet
        self._bytes_since_kex += total
        if self._first_kex_done and (
            self._bytes_since_kex > self.rekey_bytes or self.clock.seconds() - self._keyed_at > self.rekey_seconds
        ):
            self._rekey()
        return packet[5:end]

    def packet_error(self, reason: str) -> None:
        """A packet that cannot be framed: the connection ends."""
        self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, reason.encode())

    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        if self._dead:
            return
        super().sendDisconnect(reason, desc)  # type: ignore[misc]
        self._dead = True  # nothing more is read or sent on this connection

    def dataReceived(self, data: bytes) -> None:
        if self._dead:
            return
        if not self.gotVersion:
            # Conch looks for the version line in all that has been read and refuses more than
            # 4 KiB of it ("Peer version string longer than 4KB"): a peer whose version line
            # and a KEXINIT of over 4 KiB came in one read was refused. Conch is given the
            # bytes up to the end of the version line only; the packets after it are read here.
            pending = self.buf + data
            if not self.isClient and b"\n" in pending and not pending.startswith(b"SSH-"):
                # RFC 4253 4.2: only a server may send lines before its version line; sshd
                # refuses a client's ("invalid protocol identifier"). Conch took them when the
                # version line came in the same read, and read them as a packet otherwise.
                self.packet_error("a line before the version line")
                return
            end = pending.find(b"\n", pending.find(b"SSH-")) + 1 - len(self.buf)
            if not 0 < end < len(data):
                super().dataReceived(data)  # type: ignore[misc]
                return
            super().dataReceived(data[:end])  # type: ignore[misc]
            data = data[end:]
            if self._dead:
                return
            if not self.gotVersion:  # a line with "SSH-" inside, not at its start: Conch waits on
                super().dataReceived(data)  # type: ignore[misc]
                return
        # Conch's read loop, once the version line is in (Conch's dataReceived checks for it
        # on every read, and takes each message number with an ord() call).
        self.buf = self.buf + data
        packet = self.getPacket()
        while packet:
            self.dispatchMessage(packet[0], packet[1:])
            packet = self.getPacket()

    def _count(self, n: int) -> None:
        """`n` more bytes went through: a key exchange starts if a limit is reached (sendPacket
        and getPacket have this inline)."""
        self._bytes_since_kex += n
        # The limits first: they are rarely reached, and the phase and state checks cost calls.
        if self._first_kex_done and (
            self._bytes_since_kex > self.rekey_bytes or self.clock.seconds() - self._keyed_at > self.rekey_seconds
        ):
            self._rekey()

    def _rekey(self) -> None:
        """A traffic or time limit is reached: start a key exchange if this side may now."""
        if not self._dead and not self._sending_kexinit and self.may_rekey() and self.kex_idle():
            self._bytes_since_kex = 0
            self._keyed_at = self.now()
            self.sendKexInit()

    def may_rekey(self) -> bool:
        """Whether this side may start a key exchange now (its traffic or time limit is reached)."""
        return True

    # -- key exchange --------------------------------------------------------------------------

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        # (The client's rule; the server's is in conchcmd.wire.dispatch.) DISCONNECT is always
        # processed, as sshd's packet layer does.
        if self.strict_kex and not self._first_kex_done and messageNum not in KEX_MESSAGES | {transport.MSG_DISCONNECT}:
            self.sendDisconnect(
                transport.DISCONNECT_PROTOCOL_ERROR,
                b"strict KEX violation: message %d during the initial key exchange" % messageNum,
            )
            return
        if 30 <= messageNum < 50 and not self._peer_kexinit:
            # Conch would run the kex method of whatever kexAlg holds (none yet: an AttributeError).
            self.sendDisconnect(
                transport.DISCONNECT_PROTOCOL_ERROR, b"key exchange message %d before KEXINIT" % messageNum
            )
            return
        super().dispatchMessage(messageNum, payload)  # type: ignore[misc]

    def negotiate(self, packet: bytes) -> tuple[list[bytes], list[bytes], bytes] | None:
        """Conch's SSHTransportBase.ssh_KEXINIT, where an AEAD cipher implies its MAC and the
        peer's strict-KEX marker is noticed. Returns (kex, host key algorithms, rest) or None."""
        self.otherKexInitPayload = bytes((transport.MSG_KEXINIT,)) + packet
        *strings, rest = getNS(packet[16:], 10)
        kex, keys, enc_cs, enc_sc, mac_cs, mac_sc, comp_cs, comp_sc, _, _ = (s.split(b",") for s in strings)
        peer_strict = STRICT_KEX_SERVER if self.isClient else STRICT_KEX_CLIENT
        if not self._first_kex_done and self.offer_strict_kex and peer_strict in kex:
            self.strict_kex = True
            if self.incomingPacketSequence != 1:
                self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"strict KEX violation: KEXINIT was not first")
                return None

        def choose(ours: list[bytes], theirs: list[bytes]) -> bytes | None:
            name = ffs(ours, theirs) if self.isClient else ffs(theirs, ours)  # the client's order wins
            # Our list's bytes object, not the peer's copy: each session keeps several names.
            return None if name is None else ours[ours.index(name)]

        if self.isClient:
            enc_out, enc_in, mac_out, mac_in, comp_out, comp_in = enc_cs, enc_sc, mac_cs, mac_sc, comp_cs, comp_sc
        else:
            enc_out, enc_in, mac_out, mac_in, comp_out, comp_in = enc_sc, enc_cs, mac_sc, mac_cs, comp_sc, comp_cs
        self.kexAlg = choose(self.supportedKeyExchanges, kex)
        self.keyAlg = choose(self.supportedPublicKeys, keys)
        out_cipher = choose(self.supportedCiphers, enc_out)
        in_cipher = choose(self.supportedCiphers, enc_in)
        out_mac = implicit_mac(out_cipher) or choose(self.supportedMACs, mac_out)
        in_mac = implicit_mac(in_cipher) or choose(self.supportedMACs, mac_in)
        self.outgoingCompressionType = choose(self.supportedCompressions, comp_out)
        self.incomingCompressionType = choose(self.supportedCompressions, comp_in)
        chosen = (self.kexAlg, self.keyAlg, out_cipher, in_cipher, out_mac, in_mac)
        if None in chosen or None in (self.outgoingCompressionType, self.incomingCompressionType):
            self.sendDisconnect(transport.DISCONNECT_KEY_EXCHANGE_FAILED, b"couldn't match all kex parts")
            return None
        self.nextEncryptions = CipherSuite(out_cipher, in_cipher, out_mac, in_mac)  # type: ignore[arg-type]
        self._peer_kexinit = True
        if self.kex_peer_init((EXT_INFO_SERVER if self.isClient else EXT_INFO_CLIENT) in kex):
            self.sendKexInit()
        return kex, keys, rest

    def derive_key(self, letter: bytes, shared_secret: bytes, exchange_hash: bytes) -> bytes:
        # Only the bytes the negotiated codec reads: 4 hashes per key exchange with
        # chacha20-poly1305 instead of Conch's 24 (A/B IVs, C/D keys, E/F MAC keys; A, C, E
        # are the client's to the server).
        assert self.sessionID is not None, "the session ID is set before the keys"
        server_to_client, which = _KEY_LETTERS[letter]
        size = self.nextEncryptions.key_sizes(outgoing=server_to_client != self.isClient)[which]
        if not size:
            return b""
        return derive_key(self.kex_hash_factory(), shared_secret, exchange_hash, letter, self.sessionID, size)

    def take_new_keys(self) -> None:
        """The peer's NEWKEYS arrived: read with the new keys from now on."""
        self._in_codec = self.nextEncryptions.incoming
        if self.strict_kex:
            self.incomingPacketSequence = 0
        self._first_kex_done = True
        self._peer_kexinit = False
        self.kex_count += 1
        self._bytes_since_kex = 0
        self._keyed_at = self.now()
        self.conch_new_keys()


class ModernServerTransport(QuietTransportLog, ModernFraming, transport.SSHServerTransport):
    """SSHServerTransport with modern packet protection and key-exchange rules (see module doc)."""

    _cheap_rekeys: deque[float] | None = None
    #: The dispatch policy's rulings, shared by every connection (they depend on the key only).
    rulings: ClassVar[Rulings] = Rulings()

    def may_rekey(self) -> bool:
        # As sshd: no rekey before authentication (the client's KEXINIT then gets UNIMPLEMENTED).
        return self.dispatch_phase() is Phase.AUTHENTICATED

    def dispatch_phase(self) -> Phase:
        return phase_of(
            closed=self._dead,
            first_kex_done=self._first_kex_done,
            peer_kexinit=self._peer_kexinit,
            keys_sent=self._peer_kexinit and self.nextEncryptions.keyed,
            service=None if self.service is None else self.service.name,
        )

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        # Every message goes through the dispatch policy (conchcmd.wire.dispatch) before Conch sees
        # it: Conch acts on any message it has a method for, in any state. The ruling is looked up
        # by what dispatch_phase() reads and the message: one dict look-up per message.
        service = self.service
        peer_kexinit = self._peer_kexinit
        phase, verdict = self.rulings[
            (
                self._dead,
                self._first_kex_done,
                peer_kexinit,
                peer_kexinit and self.nextEncryptions.keyed,
                None if service is None else service.name,
                messageNum,
                self.strict_kex,
            )
        ]
        if verdict.action is Action.PROCESS:
            # Past ModernFraming's own strict-KEX check (the client's): the policy has decided.
            super(ModernFraming, self).dispatchMessage(messageNum, payload)
        elif verdict.action is Action.DISCONNECT:
            text = verdict.text % messageNum if "%d" in verdict.text else verdict.text
            self.sendDisconnect(verdict.reason, text.encode())
        elif verdict.action is Action.UNIMPLEMENTED:
            self.note_refused(messageNum, phase, verdict)
            seq = (self.incomingPacketSequence - 1) & 0xFFFFFFFF  # that of the packet just read
            self.sendPacket(transport.MSG_UNIMPLEMENTED, seq.to_bytes(4, "big"))
        elif phase is not Phase.CLOSED:
            self.note_refused(messageNum, phase, verdict)

    def note_refused(self, messageNum: int, phase: Phase, verdict: Verdict) -> None:
        """Hook: a message the policy refused (answered UNIMPLEMENTED, or ignored)."""

    def ssh_KEXINIT(self, packet: bytes) -> None:
        if self._first_kex_done and self.kex_idle() and not self._count_rekey():
            return
        negotiated = self.negotiate(packet)
        if negotiated is None:
            return
        kex, keys, rest = negotiated
        # SSHServerTransport's part: a wrongly guessed first kex packet must be ignored.
        guessed = rest[:1] not in (b"", b"\0")
        if guessed and (kex[0] != self.supportedKeyExchanges[0] or keys[0] != self.supportedPublicKeys[0]):
            self.ignoreNextPacket = True

    def ssh_KEX_DH_GEX_REQUEST_OLD(self, packet: bytes) -> None:
        # Message 30, the key-exchange method's INIT. curve25519-sha256 and
        # mlkem768x25519-sha256 are answered here (the same reply, refusals and keys as Conch's
        # handlers, with a third of their Python calls: tests/unit/test_kex_fastpath.py); other
        # methods, and a wrongly guessed INIT (dropped), by Conch. A malformed public value raised
        # out of Conch (a ValueError, reported as "protocol error"): it is KEY_EXCHANGE_FAILED.
        kex = self.kexAlg
        try:
            if self.ignoreNextPacket or (kex not in CURVE25519_KEXES and kex != MLKEM_KEX):
                super().ssh_KEX_DH_GEX_REQUEST_OLD(packet)
                # Conch's ECDH keeps its ephemeral public key (~0.4 KiB) for the connection's
                # life; only this reply used it.
                vars(self).pop("ecPub", None)
            elif kex == MLKEM_KEX:
                self.mlkem_init(packet)
            else:
                self.curve25519_init(packet)
        except ValueError as e:
            self.sendDisconnect(
                transport.DISCONNECT_KEY_EXCHANGE_FAILED, b"invalid key exchange value: %s" % str(e)[:100].encode()
            )

    def curve25519_init(self, packet: bytes) -> None:
        """KEX_ECDH_INIT of curve25519-sha256 (RFC 8731), as Conch's ECDH handler does it (copy
        recorded in tests/unit/test_conch_contract.py): the same checks, in the same order, the
        same reply and keys; the payload is read exactly (`only_string`), as sshd does."""
        client_public = only_string(packet)
        host_keys = self.host_key_pair()
        ours, our_public = x25519_key_pair()
        shared = mpint(x25519_shared(ours, client_public))
        self.reply_and_set_up_keys(host_keys, client_public, our_public, shared)

    def mlkem_init(self, packet: bytes) -> None:
        """KEX_HYBRID_INIT of mlkem768x25519-sha256 (draft-ietf-sshm-mlkem-hybrid-kex), as Conch's
        hybrid handler does it (copy recorded in the contract test): the same checks and
        disconnects, in the same order, the same reply and keys; the payload is read exactly
        (`only_string`)."""
        client_init = only_string(packet)
        if len(client_init) != _MLKEM768_PUBLIC + _X25519_PUBLIC:
            self.sendDisconnect(transport.DISCONNECT_KEY_EXCHANGE_FAILED, b"Invalid C_INIT length")
            return
        host_keys = self.host_key_pair()
        ours, our_public = x25519_key_pair()
        try:
            classical = x25519_shared(ours, client_init[_MLKEM768_PUBLIC:])
        except ValueError:
            self.sendDisconnect(transport.DISCONNECT_KEY_EXCHANGE_FAILED, b"Invalid peer X25519 public key")
            return
        try:
            their_kem = mlkem.MLKEM768PublicKey.from_public_bytes(client_init[:_MLKEM768_PUBLIC])
        except ValueError:
            self.sendDisconnect(transport.DISCONNECT_KEY_EXCHANGE_FAILED, b"Invalid peer ML-KEM public key")
            return
        post_quantum, ciphertext = their_kem.encapsulate()
        shared = ssh_strings([sha256(post_quantum + classical).digest()])  # K = HASH(K_PQ || K_CL)
        server_reply = ciphertext + our_public
        self.reply_and_set_up_keys(host_keys, client_init, server_reply, shared)

    def host_key_pair(self) -> tuple[Key, Key]:
        """The (public, private) host key of the negotiated signature algorithm: the factory keeps
        them by key format, ssh-rsa for rsa-sha2-* (as Conch maps them)."""
        key_alg = self.keyAlg
        host_format = b"ssh-rsa" if key_alg in _RSA_SHA2 else key_alg
        return self.factory.publicKeys[host_format], self.factory.privateKeys[host_format]

    def reply_and_set_up_keys(
        self, host_keys: tuple[Key, Key], client_value: bytes, server_value: bytes, shared_secret: bytes
    ) -> None:
        """The end both SHA-256 exchanges share: the exchange hash H (RFC 4253 8, RFC 8731 3.1),
        the reply (K_S, the server's value, the signature of H), then the keys and NEWKEYS."""
        host_public, host_private = host_keys
        host_blob = host_public.blob()
        exchange_hash = sha256(
            ssh_strings(
                [
                    self.otherVersionString,
                    self.ourVersionString,
                    self.otherKexInitPayload,
                    self.ourKexInitPayload,
                    host_blob,
                    client_value,
                    server_value,
                ]
            )
            + shared_secret
        ).digest()
        # Both KEXINITs served only H (a client's may be 64 KiB): not kept while the client's
        # NEWKEYS is awaited (tests/inmemory/test_kex_init_attacks.py, half-open key exchanges).
        self.ourKexInitPayload = self.otherKexInitPayload = b""
        signature = host_private.sign(exchange_hash, signatureType=self.keyAlg)
        self.sendPacket(transport.MSG_KEXDH_REPLY, ssh_strings([host_blob, server_value, signature]))
        self.set_up_keys(shared_secret, exchange_hash)

    def set_up_keys(self, shared_secret: bytes, exchange_hash: bytes) -> None:
        """Conch's server key set-up for a SHA-256 key exchange (copy recorded in the contract
        test), without its six look-ups of a key through the class: the next keys (`derive_key`,
        only the bytes the negotiated codecs read), NEWKEYS, then EXT_INFO after the first key
        exchange (RFC 8308 2.4)."""
        first = self.sessionID is None
        if not self.sessionID:
            self.sessionID = exchange_hash
        session_id = self.sessionID
        suite = self.nextEncryptions
        out_iv, out_key, out_mac = suite.key_sizes(outgoing=True)
        in_iv, in_key, in_mac = suite.key_sizes(outgoing=False)
        suite.setKeys(
            derive_key(sha256, shared_secret, exchange_hash, b"B", session_id, out_iv),
            derive_key(sha256, shared_secret, exchange_hash, b"D", session_id, out_key),
            derive_key(sha256, shared_secret, exchange_hash, b"A", session_id, in_iv),
            derive_key(sha256, shared_secret, exchange_hash, b"C", session_id, in_key),
            derive_key(sha256, shared_secret, exchange_hash, b"F", session_id, out_mac),
            derive_key(sha256, shared_secret, exchange_hash, b"E", session_id, in_mac),
        )
        self.sendPacket(transport.MSG_NEWKEYS, b"")
        if first:
            self.sendExtInfo([(b"server-sig-algs", b",".join(self.supportedPublicKeys))])

    def take_new_keys(self) -> None:
        # Both KEXINIT payloads served only this key exchange's hash, computed before our
        # NEWKEYS went out (a rekey brings new ones): Conch kept them for the connection's life,
        # 2-3 KiB of each idle session (a client's KEXINIT lists every algorithm it knows).
        # Dropped first: what the key exchange held back, sent now, may start the next one.
        self.ourKexInitPayload = self.otherKexInitPayload = b""
        super().take_new_keys()

    def ssh_NEWKEYS(self, packet: bytes) -> None:
        if packet != b"":
            self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"NEWKEYS takes no data")
            return
        # The dispatch policy lets NEWKEYS through only once our NEWKEYS is out: Conch would
        # switch to keys that do not exist yet (plaintext with no session ID).
        self.take_new_keys()

    def _count_rekey(self) -> bool:
        """A key exchange the client starts: False (and disconnected) if it is one too many."""
        if self._bytes_since_kex >= REKEY_FREE_BYTES:
            return True
        now = self.now()
        times = self._cheap_rekeys = self._cheap_rekeys if self._cheap_rekeys is not None else deque()
        times.append(now)
        while times and times[0] <= now - REKEY_WINDOW:
            times.popleft()
        if len(times) <= REKEY_BURST:
            return True
        self.sendDisconnect(
            transport.DISCONNECT_PROTOCOL_ERROR,
            b"too many key exchanges (more than %d in %d s)" % (REKEY_BURST, REKEY_WINDOW),
        )
        return False
