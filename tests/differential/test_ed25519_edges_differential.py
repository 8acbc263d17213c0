"""Ed25519 client keys and signatures at the edges, against a real sshd (OpenSSH's own ref10 code)
and conchcmd (libsodium, conchcmd/keys/sodium.py). Each case is a key in authorized_keys and a
signature put on the wire as chosen bytes. Where the two differ, conchcmd refuses what sshd
accepts, never the other way round; the differences are written out in each case's `sshd` field
(and the README's "Differences from sshd"): sshd lets anyone in with a key of small order (the
signature is forged without a private key), also written non-canonically (y + p, or the identity
with its sign bit set), and takes s + L for s while s < 2**253 (the malleable twin of a valid
signature)."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from support import edwards
from support.certlogin import raw_certificate
from support.differential import Pair, deliberate_differences
from support.edwards import SK_ED25519, SmallOrderKey
from support.keys import ed25519_key
from support.rawssh import dial
from support.sshclient import AuthClient, Connection, result_of
from twisted.conch.ssh import common, userauth
from twisted.internet.defer import Deferred

pytestmark = pytest.mark.differential

SUCCESS, FAILURE = userauth.MSG_USERAUTH_SUCCESS, userauth.MSG_USERAUTH_FAILURE
HONEST = 0x1234567890ABCDEF1234567890ABCDEF  # an honest key's secret scalar


@dataclass
class Lines:
    lines: list[bytes]
    trusted: list[bytes] = field(default_factory=list)
    revoked: list[bytes] = field(default_factory=list)


@dataclass(frozen=True)
class Case:
    """A public key (its 32 bytes as sent) and how the raw signature of the signed data is made."""

    public: bytes
    sign: Callable[[bytes], bytes]
    sshd: int  # sshd's answer (measured); conchcmd refuses every case but "honest"
    name: bytes = b"ssh-ed25519"  # the algorithm name inside the signature
    tag: str = ""  # the README's "Differences from sshd" entry, where sshd accepts it

    @property
    def blob(self) -> bytes:
        return common.NS(b"ssh-ed25519") + common.NS(self.public)


def honest_public() -> bytes:
    return edwards.encode(edwards.multiply(HONEST, edwards.BASE))


def honest(data: bytes) -> bytes:
    return edwards.sign(HONEST, data)[1]


def plus_l(times: int) -> Callable[[bytes], bytes]:
    """The honest signature with s + times * L: the same value mod L."""

    def sign(data: bytes) -> bytes:
        good = honest(data)
        return good[:32] + (int.from_bytes(good[32:], "little") + times * edwards.L).to_bytes(32, "little")

    return sign


def short_63(data: bytes) -> bytes:
    """sshd concatenates signature and data and reads the first 64 bytes as R || s: 63 bytes of
    signature, completed by the data's first byte (0, the session id's length), sign data[1:]
    (sshd then refuses it because the message came out one byte short)."""
    while True:
        good = honest(data[1:])
        if good[63] == data[0]:
            return good[:63]


def long_65(data: bytes) -> bytes:
    return honest(data) + b"\x00"


def mixed_r(data: bytes) -> bytes:
    """The honest signature with a point of order 8 added to R: valid only cofactored."""
    t8 = next(t for t in edwards.torsion_points() if edwards.order(t) == 8)
    nonce = int.from_bytes(data[-32:], "little") % edwards.L
    big_r = edwards.encode(edwards.add(edwards.multiply(nonce, edwards.BASE), t8))
    s = (nonce + edwards.challenge(big_r, honest_public(), data) * HONEST) % edwards.L
    return big_r + s.to_bytes(32, "little")


def forged_for(encoded: bytes, point: edwards.Point) -> Callable[[bytes], bytes]:
    return lambda data: edwards.forge(encoded, point, data)


def identity_r_zero_s(data: bytes) -> bytes:
    """R the identity and s = 0: [0]B = O + [h]O for the identity key, whatever the data."""
    return (1).to_bytes(32, "little") + bytes(32)


def non_canonical(point: edwards.Point, sign_bit: int) -> bytes:
    """An encoding of a point with y < 19 as y + p (and the sign bit given)."""
    y = int.from_bytes(edwards.encode(point), "little") & ((1 << 255) - 1)
    assert y < 19
    return (y + edwards.P + (sign_bit << 255)).to_bytes(32, "little")


def cases() -> dict[str, Case]:
    found: dict[str, Case] = {
        "honest": Case(honest_public(), honest, SUCCESS),
        "s+L": Case(honest_public(), plus_l(1), SUCCESS, tag="ed25519-s-above-l"),
        "s+2L": Case(honest_public(), plus_l(2), FAILURE),  # s >= 2**253: sshd checks the top 3 bits
        "s+7L": Case(honest_public(), plus_l(7), FAILURE),
        "signature of 63 bytes": Case(honest_public(), short_63, FAILURE),  # sshd checks the message length
        "signature of 65 bytes": Case(honest_public(), long_65, FAILURE),
        "R plus a point of order 8": Case(honest_public(), mixed_r, FAILURE),
        "another algorithm name": Case(honest_public(), honest, FAILURE, name=b"ssh-rsa"),
        "identity key, R identity, s 0": Case(
            (1).to_bytes(32, "little"), identity_r_zero_s, SUCCESS, tag="ed25519-small-order"
        ),
    }
    for point in edwards.torsion_points():
        encoded = edwards.encode(point)
        found[f"key of order {edwards.order(point)} {encoded[:4].hex()}..{encoded[-1]:02x}"] = Case(
            encoded, forged_for(encoded, point), SUCCESS, tag="ed25519-small-order"
        )
    identity, order4 = edwards.IDENTITY, edwards.decode(bytes(32))  # y = 0: x = sqrt(-1), order 4
    assert order4 is not None
    for label, point in (("identity", identity), ("order 4", order4)):
        for sign_bit in (0, 1):
            encoded = non_canonical(point, sign_bit)
            found[f"{label} as y + p, sign {sign_bit}"] = Case(
                encoded, forged_for(encoded, point), SUCCESS, tag="ed25519-small-order"
            )
    for r_label, r in (
        ("y + p", (1 + edwards.P).to_bytes(32, "little")),
        ("sign bit", (1 + (1 << 255)).to_bytes(32, "little")),
    ):
        # [0]B = R + [h]O holds for R the identity, but only its canonical encoding compares equal
        found[f"identity key, R identity as {r_label}, s 0"] = Case(
            (1).to_bytes(32, "little"), lambda data, r=r: r + bytes(32), FAILURE
        )
    negative_zero = (1 + (1 << 255)).to_bytes(32, "little")  # the identity with x "negative"
    found["identity with the sign bit"] = Case(
        negative_zero, forged_for(negative_zero, identity), SUCCESS, tag="ed25519-small-order"
    )
    return found


CASES = cases()


def request(auth: AuthClient, session_id: bytes, case: Case) -> Deferred[tuple[int, bytes]]:
    signed = (
        common.NS(session_id)
        + bytes((userauth.MSG_USERAUTH_REQUEST,))
        + common.NS(auth.user)
        + common.NS(auth.next_service)
        + common.NS(b"publickey")
        + b"\x01"
        + common.NS(b"ssh-ed25519")
        + common.NS(case.blob)
    )
    signature = common.NS(case.name) + common.NS(case.sign(signed))
    return auth._request(
        b"publickey", b"\x01" + common.NS(b"ssh-ed25519") + common.NS(case.blob) + common.NS(signature)
    )


def answers(port: int, user: str, cases: list[Case]) -> list[int]:
    """Each case's answer, several to a connection (a new one after a success or 8 failures),
    each read as soon as it arrives."""
    results: list[int] = []
    conn: Connection | None = None
    auth: AuthClient | None = None
    tries = 0
    for case in cases:
        if conn is None or auth is None or conn.pump.transport.disconnected or tries >= 8:
            if conn is not None:
                conn.client.transport.loseConnection()
            conn, tries = dial(port), 0
            auth = conn.start_auth(user.encode())
        d = request(auth, conn.client.sessionID, case)
        deadline = time.monotonic() + 10
        while not d.called and not conn.pump.transport.disconnected and time.monotonic() < deadline:
            conn.pump.flush(quiet=0.01)
        results.append(int(result_of(d)[0]) if d.called else 0)
        tries += 1
        if results[-1] != FAILURE:
            conn.client.transport.loseConnection()
            conn = None
    if conn is not None:
        conn.client.transport.loseConnection()
    return results


@pytest.fixture(scope="module")
def verdicts(server_pair: Pair) -> dict[str, tuple[int, int]]:
    """(sshd's answer, conchcmd's) for every case, all keys in one authorized_keys file."""
    lines = [b"ssh-ed25519 " + base64.b64encode(case.blob) for case in CASES.values()]
    server_pair.files.write([Lines(sorted(set(lines)))])
    labels = sorted(CASES)
    cases = [CASES[label] for label in labels]
    by_sshd = answers(server_pair.sshd.port, server_pair.user, cases)
    by_conch = answers(server_pair.conch.port, server_pair.user, cases)
    return dict(zip(labels, zip(by_sshd, by_conch, strict=True), strict=True))


@pytest.mark.parametrize("label", sorted(CASES))
def test_conchcmd_refuses_every_edge_sshd_accepts_or_refuses(verdicts: dict[str, tuple[int, int]], label: str) -> None:
    """Only the honest signature logs in to conchcmd; sshd's answers are OpenSSH 9.2's, and each
    case it accepts and conchcmd refuses is a difference the README lists."""
    case = CASES[label]
    by_sshd, by_conch = verdicts[label]
    assert by_sshd == case.sshd, "sshd's answer changed"
    assert by_conch == (SUCCESS if label == "honest" else FAILURE)
    if case.sshd == SUCCESS and label != "honest":
        assert case.tag in deliberate_differences()


CERT = b"ssh-ed25519-cert-v01@openssh.com"


def cert_answer(port: int, user: str, cert: bytes) -> int:
    conn = dial(port)
    try:
        auth = conn.start_auth(user.encode())
        d = auth._request(b"publickey", auth.signed(ed25519_key(), CERT, cert, signature_type=b"ssh-ed25519"))
        conn.flush()
        return int(result_of(d)[0]) if d.called else 0
    finally:
        conn.client.transport.loseConnection()


@pytest.mark.parametrize("ca", ["honest", "identity", "order 8"])
def test_a_ca_key_of_small_order_lets_anyone_mint_certificates_for_sshd_only(server_pair: Pair, ca: str) -> None:
    """The CA key in TrustedUserCAKeys is the identity (or another point of small order): anyone
    can sign a certificate for any principal under it, and sshd accepts it; conchcmd does not."""
    user_raw = ed25519_key().public()._keyObject.public_bytes_raw()
    if ca == "honest":
        private = ed25519.Ed25519PrivateKey.generate()
        ca_raw, sign = private.public_key().public_bytes_raw(), private.sign
    else:
        point = next(t for t in edwards.torsion_points() if edwards.order(t) == (1 if ca == "identity" else 8))
        ca_raw = edwards.encode(point)

        def sign(signed: bytes) -> bytes:
            return edwards.forge(ca_raw, point, signed)

    ca_blob = common.NS(b"ssh-ed25519") + common.NS(ca_raw)
    server_pair.files.write([Lines([], trusted=[b"ssh-ed25519 " + base64.b64encode(ca_blob)])])
    cert = raw_certificate(CERT, common.NS(user_raw), ca_blob, sign, principals=[server_pair.user.encode()])
    assert cert_answer(server_pair.sshd.port, server_pair.user, cert) == SUCCESS
    assert cert_answer(server_pair.conch.port, server_pair.user, cert) == (SUCCESS if ca == "honest" else FAILURE)
    assert "ed25519-small-order" in deliberate_differences()


@pytest.mark.parametrize("order", [1, 8])
def test_a_security_key_of_small_order_lets_anyone_in_to_sshd_only(server_pair: Pair, order: int) -> None:
    """The same for an sk-ssh-ed25519 key in authorized_keys: sshd takes the forged signature
    (touch flag set, as its default policy wants), conchcmd does not."""
    point = next(t for t in edwards.torsion_points() if edwards.order(t) == order)
    key = SmallOrderKey(edwards.encode(point), point, SK_ED25519)
    line = SK_ED25519 + b" " + base64.b64encode(key.key_blob())
    server_pair.files.write([Lines([line])])
    for port, expected in ((server_pair.sshd.port, SUCCESS), (server_pair.conch.port, FAILURE)):
        conn = dial(port)
        try:
            auth = conn.start_auth(server_pair.user.encode())
            d = auth._request(b"publickey", auth.signed(key, SK_ED25519))  # type: ignore[arg-type]
            conn.flush()
            assert d.called and result_of(d)[0] == expected
        finally:
            conn.client.transport.loseConnection()
    assert "ed25519-small-order" in deliberate_differences()
