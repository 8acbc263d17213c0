"""Fuzz targets over the in-memory stack (real client, real crypto, MemoryReactorClock):

- every cipher and MAC the server implements: a changed packet is never dispatched and ends the
  connection with a DISCONNECT, while the same packet unchanged is accepted;
- pre-authentication: generated USERAUTH_REQUESTs (every method, real and mangled keys and
  certificates, bad signatures) and stray messages never authenticate, never log a traceback,
  keep buffers bounded and end, if they end, with a DISCONNECT.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    SSHCertificateBuilder,
    SSHCertificateType,
)
from hypothesis import example, given
from hypothesis import strategies as st
from support.certlogin import cert_login
from support.keys import ecdsa_key, ed25519_key, rsa_key
from support.sshclient import ClientFactory
from support.world import World, make_world
from twisted.conch.ssh import service, transport, userauth
from twisted.conch.ssh.common import NS

from conchcmd.core.config import CIPHERS, MACS, OPTIONAL_MACS, AlgorithmsConfig
from conchcmd.policy.certs import CERT_SIGNATURES
from conchcmd.wire.packets import pad
from fuzz.guard import LogWatch, bounded, fuzz
from fuzz.samples import BROKEN_SIGNATURE_KEY, ODD_BLOBS, SUITE_IDS, SUITES, mangled
from fuzz.wire import PACKET_BUFFER, Keyed

CA = ed25519.Ed25519PrivateKey.generate()


def certificate(principals: list[bytes], **critical: bytes) -> bytes:
    builder = (
        SSHCertificateBuilder()
        .public_key(ed25519_key()._keyObject.public_key())
        .serial(7)
        .type(SSHCertificateType.USER)
        .key_id(b"fuzz")
        .valid_principals(principals)
        .valid_after(0)
        .valid_before(2**63)
    )
    for name, value in critical.items():
        builder = builder.add_critical_option(name.encode(), NS(value))
    return base64.b64decode(builder.sign(CA).public_bytes().split()[1])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("fuzz-keyed")
    ca_file = base / "trusted_ca"
    ca_file.write_bytes(CA.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH) + b"\n")
    yield make_world(
        base,
        algorithms=AlgorithmsConfig(macs=MACS + OPTIONAL_MACS),
        trusted_user_ca_keys=str(ca_file),
    )


# -- every cipher and MAC: tampering is always caught ------------------------------------------


def client_for(cipher: str, mac: str) -> ClientFactory:
    factory = ClientFactory()
    factory.supportedCiphers = [cipher.encode()]
    factory.supportedMACs = [(mac or MACS[0]).encode()]
    return factory


@pytest.mark.parametrize(("cipher", "mac"), SUITES, ids=SUITE_IDS)
@fuzz(12)
@given(payload=st.binary(min_size=0, max_size=600), data=st.data())
def test_a_changed_packet_is_never_dispatched(
    world: World, log_watch: LogWatch, cipher: str, mac: str, payload: bytes, data: st.DataObject
) -> None:
    with bounded(), log_watch.clean():
        keyed = Keyed(world, client_for(cipher, mac))
        try:
            assert keyed.server.currentEncryptions.inCipType == cipher.encode()
            client = keyed.conn.client
            codec = client._out_codec

            def seal(message: bytes) -> bytes:
                sealed = codec.seal(client.outgoingPacketSequence, pad(message, codec, client._padding.take))
                client.outgoingPacketSequence += 1
                return bytes(sealed)

            before = len(keyed.spy.dispatched)
            keyed.raw(seal(bytes((transport.MSG_IGNORE,)) + NS(payload)))
            assert keyed.spy.dispatched[before:] == [transport.MSG_IGNORE] and not keyed.closing

            changed = bytearray(seal(bytes((transport.MSG_IGNORE,)) + NS(payload)))
            positions = data.draw(st.lists(st.integers(0, len(changed) - 1), min_size=1, max_size=3, unique=True))
            for p in positions:
                changed[p] ^= data.draw(st.integers(1, 255))
            keyed.raw(bytes(changed))
            if not keyed.closing:  # a changed length may ask for more bytes: give them all
                keyed.raw(bytes(PACKET_BUFFER))
            assert keyed.closing, "the changed packet was neither refused nor is it still awaited"
            assert keyed.spy.dispatched[before + 1 :] == []
            reasons = [reason for reason, _ in keyed.spy.disconnects]
            assert reasons[:1] in ([transport.DISCONNECT_MAC_ERROR], [transport.DISCONNECT_PROTOCOL_ERROR])
        finally:
            keyed.close()


# -- pre-authentication: generated userauth requests -------------------------------------------

KEYS = [ed25519_key(), rsa_key(), ecdsa_key(), ed25519_key(9)]  # the first three are admin's
CERTS = [certificate([b"admin"]), certificate([b"root"]), certificate([b"admin"], **{"source-address": "0.0.0.0/0"})]
BLOBS = [k.public().blob() for k in KEYS] + CERTS
ALGORITHMS = [
    b"ssh-ed25519",
    b"rsa-sha2-256",
    b"rsa-sha2-512",
    b"ssh-rsa",
    b"ecdsa-sha2-nistp256",
    *CERT_SIGNATURES,
    b"ssh-rsa-cert-v01@openssh.com",
    b"",
]


# With types cryptography does not know (ssh-dss-cert-v01@openssh.com, x-cert-v01@openssh.com):
# test_a_certificate_of_an_unknown_type_gets_a_reply.
cert_kinds = st.sampled_from(
    [
        b"ssh-ed25519-cert-v01@openssh.com",
        b"ecdsa-sha2-nistp256-cert-v01@openssh.com",
        b"ssh-dss-cert-v01@openssh.com",
        b"x-cert-v01@openssh.com",
    ]
)
blobs = st.one_of(
    st.sampled_from(BLOBS),
    st.sampled_from(ODD_BLOBS),  # keys written oddly (support/oddblobs.py), not admin's
    st.sampled_from(BLOBS).flatmap(mangled),
    st.binary(max_size=200),
    st.tuples(cert_kinds, st.binary(max_size=100)).map(lambda t: NS(t[0]) + t[1]),
    # Conch's format guessing: SEXP, LSH, PEM (test_a_key_blob_conch_cannot_guess_is_refused_without_a_traceback)
    st.tuples(st.sampled_from([b"{", b"(", b"-----BEGIN "]), st.binary(max_size=40)).map(b"".join),
)
signatures = st.one_of(
    st.binary(max_size=100),
    st.tuples(st.sampled_from(ALGORITHMS), st.binary(max_size=600)).map(lambda t: NS(NS(t[0]) + NS(t[1]))),
)
publickey_data = st.tuples(st.sampled_from([b"\0", b"\1", b"\2"]), st.sampled_from(ALGORITHMS), blobs, signatures).map(
    lambda t: t[0] + NS(t[1]) + NS(t[2]) + (NS(t[3]) if t[0] != b"\0" else b"")
)
password_data = st.tuples(st.sampled_from([b"\0", b"\1"]), st.binary(max_size=80), st.binary(max_size=80)).map(
    lambda t: t[0] + NS(t[1]) + (NS(t[2]) if t[0] == b"\1" else b"")
)
methods = st.one_of(
    publickey_data.map(lambda d: NS(b"publickey") + d),
    password_data.map(lambda d: NS(b"password") + d),
    st.just(NS(b"none")),
    st.tuples(
        st.sampled_from([b"keyboard-interactive", b"hostbased", b"gssapi-with-mic", b"publickey", b"password"]),
        st.binary(max_size=60),
    ).map(lambda t: NS(t[0]) + t[1]),
)
users = st.one_of(
    st.sampled_from([b"admin", b"root", b"", b"admin\0", b"../admin", b"adm\xc3\xafn", b"a" * 300]),
    st.binary(max_size=30),
)
services = st.sampled_from([b"ssh-connection", b"ssh-userauth", b"", b"ssh-connection\0"])


@st.composite
def userauth_requests(draw: st.DrawFn) -> bytes:
    payload = NS(draw(users)) + NS(draw(services)) + draw(methods)
    cut = draw(st.one_of(st.none(), st.none(), st.integers(0, len(payload))))
    return payload if cut is None else payload[:cut]


stray = st.tuples(
    st.sampled_from([2, 4, 5, 6, 7, 20, 21, 50, 51, 60, 61, 80, 90, 94, 98, 255]), st.binary(max_size=120)
)
steps = st.lists(st.one_of(userauth_requests().map(lambda p: (userauth.MSG_USERAUTH_REQUEST, p)), stray), max_size=8)


@fuzz(100)
@given(steps=steps)
@example(steps=[(50, NS(b"admin") + NS(b"ssh-connection") + NS(b"publickey") + b"\0" + NS(b"ssh-ed25519"))])
@example(steps=[(50, NS(b"admin") + NS(b"ssh-connection") + NS(b"publickey") + b"\1" + NS(b"x") + NS(CERTS[0]))])
@example(steps=[(50, NS(b"admin") + NS(b"ssh-connection") + NS(b"password") + b"\1" + NS(b"a"))])
def test_generated_userauth_requests_never_authenticate(
    world: World, log_watch: LogWatch, steps: list[tuple[int, bytes]]
) -> None:
    with bounded(), log_watch.clean():
        keyed = Keyed(world)
        try:
            auth = keyed.conn.start_auth(b"admin")
            for message, payload in steps:
                keyed.send(message, payload)
                world.clock.advance(1.5)  # failed attempts answer after a delay
                keyed.conn.flush()
                keyed.check()
            replies = [number for number, _ in auth.replies]
            assert userauth.MSG_USERAUTH_SUCCESS not in replies
            answers = [n for n in replies if n in (userauth.MSG_USERAUTH_FAILURE, userauth.MSG_USERAUTH_PK_OK)]
            asked = sum(1 for message, _ in steps if message == userauth.MSG_USERAUTH_REQUEST)
            assert keyed.closing or len(answers) >= asked, f"{asked} requests, {len(answers)} answers"
            assert not keyed.server.holds_slot
            assert not [r for r in world.audit.of("auth") if r.get("ok")]
        finally:
            keyed.close()
            world.clock.advance(60)


def publickey_request(algorithm: bytes, blob: bytes) -> bytes:
    return NS(b"admin") + NS(b"ssh-connection") + NS(b"publickey") + b"\0" + NS(algorithm) + NS(blob)


UNKNOWN_CERT_TYPES = [
    publickey_request(b"ssh-ed25519-cert-v01@openssh.com", NS(b"ssh-dss-cert-v01@openssh.com") + NS(bytes(32))),
    publickey_request(b"ssh-ed25519-cert-v01@openssh.com", b"\0\0\0(\0"),  # found by the fuzzing above
    publickey_request(  # test_fuzz_keyfiles.test_a_certificate_with_a_broken_key_field_is_refused
        b"ecdsa-sha2-nistp384-cert-v01@openssh.com", base64.b64decode(BROKEN_SIGNATURE_KEY[1])
    ),
]


@pytest.mark.parametrize(
    "payload", UNKNOWN_CERT_TYPES, ids=["ssh-dss-cert", "short-type-string", "broken-signature-key"]
)
def test_a_certificate_of_an_unknown_type_gets_a_reply(world: World, log_watch: LogWatch, payload: bytes) -> None:
    """Found by test_generated_userauth_requests_never_authenticate: cryptography's UnsupportedAlgorithm
    (and ValueError from its lazily parsed CA key) escaped certs.parse_certificate: an 'Error checking
    auth' traceback, or, from server.UserAuthService._key_fields, a request that never got a reply."""
    with log_watch.clean(collect=True):
        keyed = Keyed(world)
        auth = keyed.conn.start_auth(b"admin")
        keyed.send(userauth.MSG_USERAUTH_REQUEST, payload)
        world.clock.advance(1.5)
        keyed.conn.flush()
        replies = [n for n, _ in auth.replies]
        keyed.close()
        del keyed, auth
    assert replies == [userauth.MSG_USERAUTH_FAILURE]


# -- after authentication: the connection layer ---------------------------------------------


class Sink(service.SSHService):
    """Takes the client's side of ssh-connection: records what the server sends, answers nothing."""

    name = b"ssh-connection"

    def __init__(self) -> None:
        self.got: list[int] = []

    def packetReceived(self, messageNum: int, packet: bytes) -> None:
        self.got.append(messageNum)


u32 = st.one_of(st.sampled_from([0, 1, 2, 2**31, 2**32 - 1]), st.integers(0, 2**32 - 1)).map(
    lambda n: struct.pack(">L", n)
)
channel_ids = st.integers(0, 3).map(lambda n: struct.pack(">L", n))
pty_req = st.tuples(st.sampled_from([b"xterm", b"", b"\x1b]0;x\x07"]), u32, u32, u32, u32, st.binary(max_size=20)).map(
    lambda t: NS(t[0]) + t[1] + t[2] + t[3] + t[4] + NS(t[5])
)
request_data = {
    b"pty-req": pty_req,
    b"window-change": st.tuples(u32, u32, u32, u32).map(b"".join),
    b"exec": st.sampled_from(
        [b"lastlog -n 3", b"help", b"comphash hello.txt", b"exit 7", b"nosuch", b"lastlog -f"]
    ).map(NS),
    b"shell": st.just(b""),
    b"env": st.tuples(st.binary(max_size=10), st.binary(max_size=10)).map(lambda t: NS(t[0]) + NS(t[1])),
    b"subsystem": st.sampled_from([b"sftp", b""]).map(NS),
    b"signal": st.sampled_from([b"INT", b"KILL", b""]).map(NS),
    b"break": u32,
    b"x11-req": st.binary(max_size=30),
}
channel_requests = st.sampled_from(sorted(request_data)).flatmap(
    lambda kind: st.tuples(channel_ids, st.booleans(), st.one_of(request_data[kind], st.binary(max_size=40))).map(
        lambda t: (98, t[0] + NS(kind) + bytes((t[1],)) + t[2])
    )
)
connection_messages = st.one_of(
    # A maximum packet size below 1024 is refused (tests/inmemory/test_channel_rules.py).
    st.tuples(st.sampled_from([b"session", b"direct-tcpip", b"x11", b""]), st.integers(0, 3), u32, u32).map(
        lambda t: (90, NS(t[0]) + struct.pack(">L", t[1]) + t[2] + t[3])
    ),
    channel_requests,
    channel_requests,
    st.tuples(channel_ids, st.sampled_from([b"help\n", b"exit\n", b"\x03", b"x" * 5000])).map(
        lambda t: (94, t[0] + NS(t[1]))
    ),
    st.tuples(channel_ids, u32).map(lambda t: (93, t[0] + t[1])),
    channel_ids.map(lambda c: (96, c)),
    channel_ids.map(lambda c: (97, c)),
    st.tuples(
        st.sampled_from([b"keepalive@openssh.com", b"tcpip-forward", b"no-more-sessions@openssh.com"]), st.booleans()
    ).map(lambda t: (80, NS(t[0]) + bytes((t[1],)))),
    st.tuples(st.sampled_from([91, 92, 95, 99, 100, 81, 82, 20, 2, 4]), st.binary(max_size=30)),
)


@fuzz(60)
@given(steps=st.lists(connection_messages, max_size=10))
@example(
    steps=[(90, NS(b"session") + struct.pack(">3L", 0, 2**32 - 1, 2**32 - 1)), (93, struct.pack(">2L", 0, 2**32 - 1))]
)
@example(
    steps=[
        (90, NS(b"session") + struct.pack(">3L", 0, 1000, 1)),
        (98, struct.pack(">L", 0) + NS(b"exec") + b"\1" + NS(b"help")),
    ]
)
def test_generated_connection_messages_after_login(
    world: World, log_watch: LogWatch, steps: list[tuple[int, bytes]]
) -> None:
    with bounded(), log_watch.clean():
        keyed = Keyed(world)
        try:
            assert keyed.conn.login(b"admin", ed25519_key()) == userauth.MSG_USERAUTH_SUCCESS
            keyed.conn.client.setService(Sink())
            for message, payload in steps:
                keyed.send(message, payload)
                world.clock.advance(0.5)
                keyed.conn.flush()
                keyed.check()
            channels = getattr(keyed.server.service, "channels", {})
            assert len(channels) <= world.config.limits.max_sessions
        finally:
            keyed.close()
            world.clock.advance(60)


@pytest.mark.parametrize(
    "blob", [b"{x", b"(x", b"-----BEGIN OPENSSH PRIVATE KEY-----\n"], ids=["sexp-brace", "lsh-paren", "pem"]
)
def test_a_key_blob_conch_cannot_guess_is_refused_without_a_traceback(
    world: World, log_watch: LogWatch, blob: bytes
) -> None:
    """Found by test_generated_userauth_requests_never_authenticate: Key.fromString(blob) without type=
    sent a blob starting with '{' or '(' to Conch's SEXP/LSH parser, whose AssertionError was logged as
    'Error checking auth' with a full traceback, once per request, before authentication."""
    with log_watch.clean(collect=True):
        keyed = Keyed(world)
        auth = keyed.conn.start_auth(b"admin")
        keyed.send(userauth.MSG_USERAUTH_REQUEST, publickey_request(b"ssh-ed25519", blob))
        world.clock.advance(1.5)
        keyed.conn.flush()
        replies = [n for n, _ in auth.replies]
        keyed.close()
        del keyed, auth
    assert replies == [userauth.MSG_USERAUTH_FAILURE]


def test_the_fuzzed_suites_are_all_the_server_implements() -> None:
    assert {c for c, _ in SUITES} == set(CIPHERS)
    assert {m for _, m in SUITES if m} == set(MACS + OPTIONAL_MACS)


def test_a_real_login_still_works_in_the_fuzzed_world(world: World) -> None:
    """The fuzzed server is one where the right key, and the right certificate, do log in (so
    'never authenticates' means something)."""
    conn = world.connect("10.200.0.1")
    assert conn.login(b"admin", ed25519_key()) == userauth.MSG_USERAUTH_SUCCESS
    conn.server.connectionLost(None)
    conn = world.connect("10.200.0.2")
    assert cert_login(conn, b"admin", ed25519_key(), base64.b64encode(CERTS[0])) == userauth.MSG_USERAUTH_SUCCESS
    conn.server.connectionLost(None)
