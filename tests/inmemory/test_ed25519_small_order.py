"""Every place a login checks an Ed25519 signature refuses a key of small order, for which anyone can
make a valid signature without a private key (support.edwards.forge): a plain key in
authorized_keys, an sk-ssh-ed25519 key, the key a certificate certifies, and a CA key (in a
cert-authority line or trusted_user_ca_keys, for ordinary and for sk certificates), in each of
the key's encodings. sshd accepts them all (tests/differential/test_ed25519_edges_differential.py).
The line is refused when it is read, and the audit record and log lines say why (not "bad
signature")."""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from support import edwards
from support.certlogin import raw_certificate
from support.edwards import APPLICATION, ED25519, SK_ED25519, SmallOrderKey
from support.keys import ed25519_key
from support.skauth import UP, signed_message
from support.world import World, add_user, make_world
from twisted.conch.ssh.common import NS
from twisted.conch.ssh.keys import Key
from twisted.logger import capturedLogs, formatEvent

from conchcmd.policy.authorized_keys import fingerprint

SUCCESS, FAILURE = 52, 51
WHY = "Ed25519 key of small order: anyone can sign for it"
CERT = b"ssh-ed25519-cert-v01@openssh.com"
SK_CERT = b"sk-ssh-ed25519-cert-v01@openssh.com"


def small_order_keys() -> dict[str, tuple[bytes, edwards.Point]]:
    """The eight points of order dividing 8, and non-canonical encodings of two of them."""
    found = {}
    for point in edwards.torsion_points():
        encoded = edwards.encode(point)
        found[f"order {edwards.order(point)} {encoded[:2].hex()}..{encoded[-1]:02x}"] = (encoded, point)
    found["identity as y + p"] = ((1 + edwards.P).to_bytes(32, "little"), edwards.IDENTITY)
    found["identity, sign bit set"] = ((1 + (1 << 255)).to_bytes(32, "little"), edwards.IDENTITY)
    return found


KEYS = small_order_keys()
#: The ones each path is tried with (all of them for the plain key).
SOME = ["order 1 0100..00", "identity as y + p", next(k for k in KEYS if k.startswith("order 8"))]


def line(blob: bytes, options: str = "") -> str:
    kind = blob[4 : 4 + struct.unpack(">L", blob[:4])[0]].decode()
    return f"{options} {kind} {base64.b64encode(blob).decode()}".strip() + "\n"


def certificate(cert_type: bytes, key_fields: bytes, ca_blob: bytes, ca_sign: Callable[[bytes], bytes]) -> bytes:
    """A user certificate for "carol", valid in the in-memory clock's time."""
    return raw_certificate(cert_type, key_fields, ca_blob, ca_sign, principals=[b"carol"], valid=(0, 10**9))


def honest_ca() -> tuple[bytes, Callable[[bytes], bytes]]:
    private = ed25519.Ed25519PrivateKey.generate()
    return Key(private).public().blob(), private.sign


def forged_ca(name: str) -> tuple[bytes, Callable[[bytes], bytes]]:
    raw, point = KEYS[name]
    return NS(ED25519) + NS(raw), lambda signed: edwards.forge(raw, point, signed)


def login(w: World, key: object, algorithm: bytes) -> int:
    conn = w.connect()
    auth = conn.start_auth(b"carol")
    signature_type = ED25519 if algorithm == CERT else SK_ED25519 if algorithm == SK_CERT else None
    d = auth._request(b"publickey", auth.signed(key, algorithm, signature_type=signature_type))  # type: ignore[arg-type]
    conn.flush()
    assert d.called
    return int(d.result[0])


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path, trusted_user_ca_keys=str(tmp_path / "trusted"))


def refused_with(w: World, reason: str) -> None:
    (record,) = w.audit.of("auth")
    assert (record["ok"], record["reason"]) == (False, reason)


def log_lines(events: list[dict]) -> list[str]:
    return [formatEvent(e) for e in events]


@pytest.mark.parametrize("name", sorted(KEYS))
def test_a_plain_key_of_small_order_never_logs_in(world: World, name: str) -> None:
    """Refused with its line's reason: logged when the file is read (as other refused lines),
    and at the login that offers it."""
    forger = SmallOrderKey(*KEYS[name])
    add_user(world, "carol", "# carol's keys\n", line(forger.key_blob()))
    with capturedLogs() as events:
        assert login(world, forger, ED25519) == FAILURE
    refused_with(world, f"authorized_keys line refused: {WHY}")
    where = f"{world.config.authorized_keys.replace('%u', 'carol')}:2"
    logged = log_lines(events)
    assert logged.count(f"{where}: line refused: {WHY}") == 1
    assert f"Refusing key {fingerprint(forger.key_blob())} for carol: {where}: {WHY}" in logged


@pytest.mark.parametrize("name", SOME)
def test_a_security_key_of_small_order_never_logs_in(world: World, name: str) -> None:
    forger = SmallOrderKey(*KEYS[name], key_type=SK_ED25519)
    add_user(world, "carol", line(forger.key_blob()))
    assert login(world, forger, SK_ED25519) == FAILURE
    refused_with(world, f"authorized_keys line refused: {WHY}")


def test_an_honest_key_on_another_line_still_logs_in(world: World) -> None:
    """The refused line costs the user nothing else: the file's other lines still work."""
    forger = SmallOrderKey(*KEYS["order 1 0100..00"])
    add_user(world, "carol", line(forger.key_blob()), line(ed25519_key(3).public().blob()))
    assert login(world, forger, ED25519) == FAILURE
    assert world.connect().login(b"carol", ed25519_key(3)) == SUCCESS


@pytest.mark.parametrize("cert_type", [CERT, SK_CERT])
@pytest.mark.parametrize("name", SOME)
def test_a_certified_key_of_small_order_never_logs_in(world: World, name: str, cert_type: bytes) -> None:
    """An honest CA that signed a certificate for such a key: the certificate is public, so the
    key's forged signature would let anyone in. Refused with that reason, not "bad signature"."""
    ca_blob, ca_sign = honest_ca()
    raw, point = KEYS[name]
    sk = cert_type == SK_CERT
    cert = certificate(cert_type, NS(raw) + (NS(APPLICATION) if sk else b""), ca_blob, ca_sign)
    add_user(world, "carol", line(ca_blob, "cert-authority"))
    forger = SmallOrderKey(raw, point, SK_ED25519 if sk else ED25519, certificate=cert)
    assert login(world, forger, cert_type) == FAILURE
    refused_with(world, f"certified key: {WHY}")


@pytest.mark.parametrize("where", ["cert-authority", "trusted_user_ca_keys"])
@pytest.mark.parametrize("name", SOME)
def test_a_ca_key_of_small_order_certifies_nothing(world: World, tmp_path: Path, name: str, where: str) -> None:
    """Anyone could mint a certificate for any principal under such a CA."""
    ca_blob, ca_sign = forged_ca(name)
    user_key = ed25519_key(3)
    cert = certificate(CERT, NS(user_key.public()._keyObject.public_bytes_raw()), ca_blob, ca_sign)
    if where == "cert-authority":
        add_user(world, "carol", line(ca_blob, "cert-authority"))
        logged = f"{world.config.authorized_keys.replace('%u', 'carol')}:1: line refused: CA key: {WHY}"
    else:
        add_user(world, "carol", "")
        (tmp_path / "trusted").write_text(line(ca_blob))
        logged = f"{tmp_path / 'trusted'}:1: CA key refused: {WHY}"
    with capturedLogs() as events:
        conn = world.connect()
        auth = conn.start_auth(b"carol")
        d = auth._request(b"publickey", auth.signed(user_key, CERT, cert, signature_type=ED25519))
        conn.flush()
    assert d.called and d.result[0] == FAILURE
    refused_with(world, f"certificate authority key: {WHY}")
    assert logged in log_lines(events)


@pytest.mark.parametrize("name", SOME)
def test_a_ca_key_of_small_order_certifies_no_security_key(world: World, name: str) -> None:
    """The same for an sk certificate (conchcmd.keys.sk checks its CA signature)."""
    ca_blob, ca_sign = forged_ca(name)
    token = ed25519.Ed25519PrivateKey.generate()
    raw = token.public_key().public_bytes_raw()
    cert = certificate(SK_CERT, NS(raw) + NS(APPLICATION), ca_blob, ca_sign)
    add_user(world, "carol", line(ca_blob, "cert-authority"))

    class Token(SmallOrderKey):
        def sign(self, data: bytes, signatureType: bytes | None = None) -> bytes:
            body = token.sign(signed_message(APPLICATION, UP, 1, data))
            return NS(SK_ED25519) + NS(body) + struct.pack(">BL", UP, 1)

    assert login(world, Token(raw, edwards.IDENTITY, SK_ED25519, cert), SK_CERT) == FAILURE
    refused_with(world, f"certificate authority key: {WHY}")
