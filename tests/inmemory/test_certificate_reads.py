"""A client's certificate is read (parsed, its CA signature checked) once, not once for the
authorization, once for the audit record and once for the auth-log line of each request: and
what is remembered is only the reading of the bytes, so validity and revocation are still
checked at every login, and a refused certificate stays refused with its reason."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from support.certlogin import raw_certificate
from support.keys import ed25519_key
from support.world import World, add_user, make_world
from twisted.conch.ssh.common import NS
from twisted.conch.ssh.keys import Key

from conchcmd.policy import certs

CERT = b"ssh-ed25519-cert-v01@openssh.com"
SUCCESS, FAILURE = 52, 51


@pytest.fixture
def ca_checks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """The CA signature checks made, by certificate blob."""
    checks: list[bytes] = []
    check = certs.verify_ca_signature_of

    def counted(cert: Any, blob: bytes) -> None:
        checks.append(blob)
        check(cert, blob)

    monkeypatch.setattr(certs, "verify_ca_signature_of", counted)
    yield checks


def ca() -> tuple[bytes, Callable[[bytes], bytes]]:
    private = ed25519.Ed25519PrivateKey.generate()
    return Key(private).public().blob(), private.sign


def certificate(ca_sign: Callable[[bytes], bytes], ca_blob: bytes, valid: tuple[int, int] = (0, 10**9)) -> bytes:
    key = ed25519_key(3).public()._keyObject.public_bytes_raw()
    return raw_certificate(CERT, NS(key), ca_blob, ca_sign, principals=[b"carol"], valid=valid)


def login(w: World, cert: bytes, *, probe: bool = True) -> int:
    conn = w.connect()
    auth = conn.start_auth(b"carol")
    if probe:  # OpenSSH's PK_OK question first
        query = auth._request(b"publickey", b"\x00" + NS(CERT) + NS(cert))
        conn.flush()
        assert query.called
    d = auth._request(b"publickey", auth.signed(ed25519_key(3), CERT, cert, signature_type=b"ssh-ed25519"))
    conn.flush()
    assert d.called
    return int(d.result[0])


def world_with_ca(tmp_path: Path, ca_blob: bytes) -> World:
    w = make_world(tmp_path)
    add_user(w, "carol", f"cert-authority {Key.fromString(ca_blob).toString('OPENSSH').decode()}\n")
    return w


def test_a_certificate_is_read_once_for_all_of_a_login_and_the_next(tmp_path: Path, ca_checks: list[bytes]) -> None:
    ca_blob, ca_sign = ca()
    w = world_with_ca(tmp_path, ca_blob)
    cert = certificate(ca_sign, ca_blob)
    assert login(w, cert) == SUCCESS
    assert ca_checks == [cert]  # authorization, audit record and auth-log line: 3 checks without it
    assert login(w, cert) == SUCCESS
    assert ca_checks == [cert]
    ok = [r for r in w.audit.of("auth") if r["ok"]]
    assert len(ok) == 2 and ok[0]["cert_key_id"] == ok[1]["cert_key_id"]


def test_validity_is_still_checked_at_every_login(tmp_path: Path, ca_checks: list[bytes]) -> None:
    ca_blob, ca_sign = ca()
    w = world_with_ca(tmp_path, ca_blob)
    now = int(w.clock.seconds())
    cert = certificate(ca_sign, ca_blob, valid=(0, now + 60))
    assert login(w, cert) == SUCCESS
    w.clock.advance(120)
    assert login(w, cert) == FAILURE
    assert ca_checks == [cert]
    assert "expired" in w.audit.of("auth")[-1]["reason"]


def test_a_refused_certificate_stays_refused_with_its_reason(tmp_path: Path, ca_checks: list[bytes]) -> None:
    ca_blob, _ = ca()
    _, other_sign = ca()  # signed by another key than the one it names as its CA
    w = world_with_ca(tmp_path, ca_blob)
    forged = certificate(other_sign, ca_blob)
    assert login(w, forged, probe=False) == FAILURE
    assert login(w, forged, probe=False) == FAILURE
    reasons = [r["reason"] for r in w.audit.of("auth")]
    assert reasons == ["certificate signature is not valid"] * 2
    assert ca_checks == [forged]


def test_only_blobs_up_to_the_bound_are_kept(ca_checks: list[bytes]) -> None:
    """A client's long blob (a certificate padded with principals) is read each time instead:
    the memory holds at most READ_CERTIFICATES x MAX_KEPT_CERTIFICATE bytes of client data."""
    ca_blob, ca_sign = ca()
    key = ed25519_key(3).public().data()["a"]
    principals = [b"p%04d" % i for i in range(200)] + [b"x" * 9000]
    long = raw_certificate(CERT, NS(key), ca_blob, ca_sign, principals=principals, valid=(0, 10**9))
    short = certificate(ca_sign, ca_blob)
    assert len(long) > certs.MAX_KEPT_CERTIFICATE >= len(short)
    readings = certs.CertificateReadings()
    for blob in (short, long, short, long):
        assert readings.read(blob).key_id == b"raw-cert"
    assert ca_checks == [short, long, long]


def test_the_oldest_reading_is_dropped_first(ca_checks: list[bytes]) -> None:
    ca_blob, ca_sign = ca()
    first, second, third = (certificate(ca_sign, ca_blob, valid=(0, 10**9 + n)) for n in range(3))
    readings = certs.CertificateReadings(size=2)
    for blob in (first, second, first, third, first, second):
        readings.read(blob)
    assert ca_checks == [first, second, third, second]  # `first` read again kept it; `second` went


def test_each_server_has_its_own_readings(tmp_path: Path, ca_checks: list[bytes]) -> None:
    """No reading is shared between servers (nor left behind by another test)."""
    ca_blob, ca_sign = ca()
    cert = certificate(ca_sign, ca_blob)
    assert login(world_with_ca(tmp_path / "a", ca_blob), cert) == SUCCESS
    assert login(world_with_ca(tmp_path / "b", ca_blob), cert) == SUCCESS
    assert ca_checks == [cert, cert]
