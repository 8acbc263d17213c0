"""The server's own curve25519-sha256 and mlkem768x25519-sha256 exchanges (`curve25519_init`,
`mlkem_init`, with `set_up_keys`) give what Conch's ECDH and hybrid handlers, key set-up and key
derivation (`_getKey`, unchanged) give for the same inputs: the same KEXDH_REPLY, NEWKEYS and
EXT_INFO bytes, session ID and keys (shown by the packets each codec seals), the same refusals
and disconnect texts for bad client values, through the transport's INIT handler."""

from __future__ import annotations

import itertools
import os
import struct
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, mlkem, rsa, x25519
from twisted.conch.ssh import transport
from twisted.conch.ssh.common import MP, NS, getNS
from twisted.conch.ssh.keys import Key

from conchcmd.keys import sodium
from conchcmd.wire import framing
from conchcmd.wire.framing import CURVE25519_KEXES, MLKEM_KEX, ModernServerTransport, mpint, ssh_strings
from conchcmd.wire.packets import CIPHERS, MACS, CipherSuite

KEXES = sorted(CURVE25519_KEXES)


class Recording(ModernServerTransport):
    """The key-exchange state of a server transport, its packets and disconnects recorded."""

    def __init__(self, host: Key, key_alg: bytes, kex: bytes, cipher: bytes, mac: bytes) -> None:
        self.sent: list[tuple[int, bytes]] = []
        self.factory = SimpleNamespace(publicKeys={host.sshType(): host.public()}, privateKeys={host.sshType(): host})
        self.kexAlg, self.keyAlg = kex, key_alg
        self.supportedPublicKeys = [key_alg]
        self.otherVersionString, self.ourVersionString = b"SSH-2.0-OpenSSH_9.2", b"SSH-2.0-conchcmd"
        self.otherKexInitPayload, self.ourKexInitPayload = b"\x14" + os.urandom(300), b"\x14" + os.urandom(200)
        self.nextEncryptions = CipherSuite(cipher, cipher, mac, mac)
        self._peerSupportsExtensions = True

    def sendPacket(self, messageType: int, payload: bytes) -> None:
        self.sent.append((messageType, payload))

    def sendDisconnect(self, reason: int, desc: bytes | str) -> None:
        self.sent.append((-reason, desc.encode() if isinstance(desc, str) else desc))


class ConchPath(Recording):
    """The same transport answering with Conch's own handlers, key set-up and derivation."""

    curve25519_init = transport.SSHServerTransport._ssh_KEX_ECDH_INIT
    mlkem_init = transport.SSHServerTransport._ssh_KEX_HYBRID_INIT
    _getKey = transport.SSHTransportBase._getKey  # 128 bytes a key; the codecs read their prefix


def fixed_ephemeral(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both paths draw the same server ephemeral key: Conch's through cryptography (OpenSSL), ours
    through libsodium (keys/sodium.py), so the same reply shows the two X25519s agree."""
    secret = x25519.X25519PrivateKey.generate().private_bytes_raw()
    monkeypatch.setattr(
        x25519.X25519PrivateKey, "generate", staticmethod(lambda: x25519.X25519PrivateKey.from_private_bytes(secret))
    )
    monkeypatch.setattr(framing, "x25519_key_pair", lambda: (secret, sodium.x25519_public(secret)))


def pair(host: Key, key_alg: bytes, kex: bytes, cipher: bytes, mac: bytes) -> tuple[Recording, Recording]:
    ours = Recording(host, key_alg, kex, cipher, mac)
    conch = ConchPath(host, key_alg, kex, cipher, mac)
    new_kexinits(ours, conch)
    return ours, conch


def new_kexinits(ours: Recording, conch: Recording) -> None:
    """Both transports get the same new pair of KEXINITs (as a rekey brings)."""
    ours.otherKexInitPayload, ours.ourKexInitPayload = b"\x14" + os.urandom(300), b"\x14" + os.urandom(200)
    conch.otherKexInitPayload, conch.ourKexInitPayload = ours.otherKexInitPayload, ours.ourKexInitPayload


def sealed(suite: CipherSuite) -> tuple[bytes, bytes]:
    packet = b"\x00\x00\x00\x1c\x0a" + bytes(range(23)) + bytes(10)
    return suite.outgoing.seal(5, packet), suite.incoming.seal(5, packet)


def client_x25519() -> bytes:
    return NS(x25519.X25519PrivateKey.generate().public_key().public_bytes_raw())


ED25519 = Key(ed25519.Ed25519PrivateKey.generate())


def test_conchs_handlers_are_not_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both key exchanges are answered by our code: Conch's handlers and key set-up never run."""

    def conch(*args: Any) -> None:
        raise AssertionError("Conch's handler ran")

    for name in ("_ssh_KEX_ECDH_INIT", "_ssh_KEX_HYBRID_INIT", "_keySetup", "_getKey"):
        monkeypatch.setattr(transport.SSHServerTransport, name, conch)
    for kex, init in ((KEXES[0], client_x25519()), (MLKEM_KEX, None)):
        t = Recording(ED25519, b"ssh-ed25519", kex, b"chacha20-poly1305@openssh.com", b"")
        t.ssh_KEX_DH_GEX_REQUEST_OLD(init or mlkem_client_init())
        assert [m for m, _ in t.sent] == [transport.MSG_KEXDH_REPLY, transport.MSG_NEWKEYS, transport.MSG_EXT_INFO]


@pytest.mark.parametrize(("cipher", "mac"), [*itertools.product(CIPHERS, MACS)])
@pytest.mark.parametrize("kex", KEXES)
def test_same_reply_keys_and_ext_info_as_conch(
    monkeypatch: pytest.MonkeyPatch, kex: bytes, cipher: bytes, mac: bytes
) -> None:
    fixed_ephemeral(monkeypatch)
    ours, conch = pair(ED25519, b"ssh-ed25519", kex, cipher, mac)
    for _ in range(2):  # the first key exchange (EXT_INFO, session ID) and a rekey (neither)
        new_kexinits(ours, conch)
        client = client_x25519()
        ours.ssh_KEX_DH_GEX_REQUEST_OLD(client)
        conch.ssh_KEX_DH_GEX_REQUEST_OLD(client)
        assert ours.sent == conch.sent
        assert ours.ourKexInitPayload == ours.otherKexInitPayload == b""  # not kept after the reply
        assert ours.sessionID == conch.sessionID
        assert sealed(ours.nextEncryptions) == sealed(conch.nextEncryptions)
        ours.sent.clear()
        conch.sent.clear()


def test_rsa_host_key_signs_with_the_negotiated_sha2_algorithm(monkeypatch: pytest.MonkeyPatch) -> None:
    fixed_ephemeral(monkeypatch)
    host = Key(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    for key_alg in (b"rsa-sha2-256", b"rsa-sha2-512"):
        ours, conch = pair(host, key_alg, KEXES[0], b"aes128-ctr", b"hmac-sha2-256")
        client = client_x25519()
        ours.ssh_KEX_DH_GEX_REQUEST_OLD(client)
        conch.ssh_KEX_DH_GEX_REQUEST_OLD(client)
        assert ours.sent == conch.sent
        assert getNS(getNS(getNS(ours.sent[0][1], 2)[2])[0])[0] == key_alg


def test_no_ext_info_without_ext_info_c(monkeypatch: pytest.MonkeyPatch) -> None:
    fixed_ephemeral(monkeypatch)
    ours, conch = pair(ED25519, b"ssh-ed25519", KEXES[0], b"aes128-ctr", b"hmac-sha2-256")
    ours._peerSupportsExtensions = conch._peerSupportsExtensions = False
    client = client_x25519()
    ours.ssh_KEX_DH_GEX_REQUEST_OLD(client)
    conch.ssh_KEX_DH_GEX_REQUEST_OLD(client)
    assert ours.sent == conch.sent
    assert [m for m, _ in ours.sent] == [transport.MSG_KEXDH_REPLY, transport.MSG_NEWKEYS]


def outcome(t: Recording, client: bytes) -> tuple[list[tuple[int, bytes]], tuple[type, str] | None]:
    """What the transport's INIT handler did with `client`: packets and disconnects, and what it raised."""
    try:
        t.ssh_KEX_DH_GEX_REQUEST_OLD(client)
    except Exception as e:  # compared: the same exception (a parse error the transport reports), or none
        return t.sent, (type(e), str(e))
    return t.sent, None


@pytest.mark.parametrize(
    "client",
    [
        b"",
        b"\x00\x00",
        NS(bytes(31)),
        NS(bytes(33)),
        NS(bytes(32)),
        NS(b"\x01" + bytes(31)),
    ],
    ids=["empty", "short-length", "31-bytes", "33-bytes", "zero-point", "low-order-point"],
)
def test_bad_client_values_refused_as_by_conch(monkeypatch: pytest.MonkeyPatch, client: bytes) -> None:
    fixed_ephemeral(monkeypatch)
    ours, conch = pair(ED25519, b"ssh-ed25519", KEXES[0], b"chacha20-poly1305@openssh.com", b"hmac-sha2-256")
    result = outcome(ours, client)
    assert result == outcome(conch, client)
    sent, raised = result
    assert raised or [m for m, _ in sent] == [-transport.DISCONNECT_KEY_EXCHANGE_FAILED]


def test_a_wrong_guess_is_still_ignored() -> None:
    """first_kex_packet_follows with a wrong guess: the next kex packet is dropped, not answered."""
    for kex in (KEXES[0], MLKEM_KEX):
        t = Recording(ED25519, b"ssh-ed25519", kex, b"aes128-ctr", b"hmac-sha2-256")
        t.ignoreNextPacket = True
        t.ssh_KEX_DH_GEX_REQUEST_OLD(client_x25519())
        assert t.sent == [] and not t.ignoreNextPacket


@pytest.mark.parametrize(
    "digits",
    [b"", b"\x00", b"\x00\x00\x01", b"\x7f" * 32, b"\x80" + bytes(31), b"\x00\xff" + bytes(30), os.urandom(32)],
)
def test_mpint_and_strings_match_conch(digits: bytes) -> None:
    assert mpint(digits) == MP(int.from_bytes(digits, "big"))
    assert ssh_strings([digits, b"", b"abc"]) == NS(digits) + NS(b"") + NS(b"abc")


class FixedEncapsulation:
    """An ML-KEM-768 public key whose encapsulation is drawn once (encapsulate is random)."""

    results: dict[bytes, tuple[bytes, bytes]] = {}

    def __init__(self, data: bytes) -> None:
        self.key = REAL_MLKEM_FROM_BYTES(data)
        self.data = data

    def encapsulate(self) -> tuple[bytes, bytes]:
        if self.data not in self.results:
            self.results[self.data] = self.key.encapsulate()
        return self.results[self.data]


REAL_MLKEM_FROM_BYTES = mlkem.MLKEM768PublicKey.from_public_bytes


def mlkem_client_init(x25519_public: bytes | None = None) -> bytes:
    kem = mlkem.MLKEM768PrivateKey.generate().public_key().public_bytes_raw()
    classical = x25519_public or x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()
    return NS(kem + classical)


@pytest.mark.parametrize(
    ("cipher", "mac"),
    [(b"chacha20-poly1305@openssh.com", b"hmac-sha2-256"), (b"aes256-ctr", b"hmac-sha2-512-etm@openssh.com")],
)
def test_mlkem_same_reply_keys_and_ext_info_as_conch(
    monkeypatch: pytest.MonkeyPatch, cipher: bytes, mac: bytes
) -> None:
    fixed_ephemeral(monkeypatch)
    monkeypatch.setattr(mlkem.MLKEM768PublicKey, "from_public_bytes", staticmethod(FixedEncapsulation))
    ours, conch = pair(ED25519, b"ssh-ed25519", MLKEM_KEX, cipher, mac)
    for _ in range(2):
        new_kexinits(ours, conch)
        client = mlkem_client_init()
        ours.ssh_KEX_DH_GEX_REQUEST_OLD(client)
        conch.ssh_KEX_DH_GEX_REQUEST_OLD(client)
        assert [t for t, _ in ours.sent][:2] == [transport.MSG_KEXDH_REPLY, transport.MSG_NEWKEYS]
        assert ours.sent == conch.sent
        assert ours.sessionID == conch.sessionID
        assert sealed(ours.nextEncryptions) == sealed(conch.nextEncryptions)
        ours.sent.clear()
        conch.sent.clear()


@pytest.mark.parametrize(
    "client",
    [
        b"",
        NS(bytes(1184 + 31)),
        NS(bytes(1184 + 33)),
        NS(bytes(1184 + 32)),  # an all-zero X25519 value
        NS(b"\xff" * 1184),  # short: no X25519 value at all
        mlkem_client_init(b"\x01" + bytes(31)),  # a low-order X25519 point
        NS(b"\xff" * 1184 + x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()),  # not ML-KEM
    ],
    ids=["empty", "short", "long", "zero-x25519", "no-x25519", "low-order-x25519", "bad-mlkem"],
)
def test_mlkem_bad_client_values_refused_as_by_conch(monkeypatch: pytest.MonkeyPatch, client: bytes) -> None:
    fixed_ephemeral(monkeypatch)
    ours, conch = pair(ED25519, b"ssh-ed25519", MLKEM_KEX, b"aes128-ctr", b"hmac-sha2-256")
    result = outcome(ours, client)
    assert result == outcome(conch, client)
    sent, raised = result
    assert raised or [m for m, _ in sent] == [-transport.DISCONNECT_KEY_EXCHANGE_FAILED]


def valid_init(kex: bytes) -> bytes:
    return client_x25519() if kex in CURVE25519_KEXES else mlkem_client_init()


@pytest.mark.parametrize("kex", [*KEXES, MLKEM_KEX])
@pytest.mark.parametrize("malformed", ["trailing-byte", "length-past-end", "length-2**32-1"])
def test_an_init_that_is_not_exactly_one_string_is_refused_where_conch_answers_it(
    monkeypatch: pytest.MonkeyPatch, kex: bytes, malformed: str
) -> None:
    """sshd reads an INIT as one string and nothing after it (sshpkt_getb_froms, sshpkt_get_end:
    tests/differential/test_kex_init_differential.py); Conch's getNS takes the bytes present for a length past
    the packet's end, ignores bytes after the string, and answers. Here: a parse error (the
    transport's protocol error), nothing sent."""
    fixed_ephemeral(monkeypatch)
    value = valid_init(kex)[4:]
    client = {
        "trailing-byte": NS(value) + b"\0",
        "length-past-end": struct.pack(">L", len(value) + 1) + value,
        "length-2**32-1": b"\xff\xff\xff\xff" + value,
    }[malformed]
    ours, conch = pair(ED25519, b"ssh-ed25519", kex, b"aes128-ctr", b"hmac-sha2-256")
    sent, raised = outcome(ours, client)
    assert sent == []
    assert raised is not None and raised[0] is struct.error
    assert "key-exchange INIT: " in raised[1]
    conch_sent, conch_raised = outcome(conch, client)
    assert conch_raised is None and conch_sent[0][0] == transport.MSG_KEXDH_REPLY  # the input is otherwise valid
