"""A key is the same key however its blob is written. Conch reads a blob loosely: it ignores bytes
after the key, the curve name of an ECDSA key, and takes zero-padded numbers and compressed
points; authorized_keys matches the bytes a client sends. revoked_keys must still refuse the key
(sshd compares keys by value): an authorized_keys line written oddly (by the key's owner, who
handed it in that way) must not keep a revoked key logging in."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from support.keys import authorized_line, ecdsa_key, ed25519_key, rsa_key
from support.sshclient import result_of
from support.world import add_user, make_world
from twisted.conch.ssh import common, userauth
from twisted.conch.ssh.keys import Key


def trailing_bytes(key: Key) -> bytes:
    return key.public().blob() + b"\x00\x00\x00\x03pad"


def zero_padded_modulus(key: Key) -> bytes:
    numbers = key.public()._keyObject.public_numbers()
    n = numbers.n.to_bytes(numbers.n.bit_length() // 8 + 1, "big")  # one 0x00 in front, as MP writes it
    return common.NS(b"ssh-rsa") + common.MP(numbers.e) + common.NS(b"\x00" + n)


def another_curve_name(key: Key) -> bytes:
    _, _, point = common.getNS(key.public().blob(), 3)[:3]
    return common.NS(b"ecdsa-sha2-nistp256") + common.NS(b"nistp521") + common.NS(point)


def compressed_point(key: Key) -> bytes:
    point = key.public()._keyObject.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    return common.NS(b"ecdsa-sha2-nistp256") + common.NS(b"nistp256") + common.NS(point)


ENCODINGS: dict[str, tuple[Callable[[], Key], bytes, Callable[[Key], bytes]]] = {
    "trailing bytes": (lambda: ed25519_key(21), b"ssh-ed25519", trailing_bytes),
    "zero-padded RSA modulus": (lambda: rsa_key(21), b"rsa-sha2-512", zero_padded_modulus),
    "another curve name": (lambda: ecdsa_key(21), b"ecdsa-sha2-nistp256", another_curve_name),
    "compressed ECDSA point": (lambda: ecdsa_key(21), b"ecdsa-sha2-nistp256", compressed_point),
}


@pytest.mark.parametrize("revoked", [False, True])
@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_a_revoked_key_is_refused_however_its_blob_is_written(tmp_path: Path, encoding: str, revoked: bool) -> None:
    make_key, algorithm, write = ENCODINGS[encoding]
    key = make_key()
    blob = write(key)
    assert blob != key.public().blob() and Key.fromString(blob, type="blob") == key.public()  # the same key
    revoked_keys = tmp_path / "w" / "keys" / "revoked_keys"
    w = make_world(tmp_path / "w", revoked_keys=str(revoked_keys))
    revoked_keys.write_text(authorized_line(key) if revoked else "")  # the key as ssh-keygen writes it
    os.chmod(revoked_keys, 0o600)
    add_user(w, "mallory", f"{key.sshType().decode()} {base64.b64encode(blob).decode()}\n")
    conn = w.connect()
    auth = conn.start_auth(b"mallory")
    signed = (
        common.NS(conn.client.sessionID)
        + bytes((userauth.MSG_USERAUTH_REQUEST,))
        + common.NS(b"mallory")
        + common.NS(b"ssh-connection")
        + common.NS(b"publickey")
        + b"\x01"
        + common.NS(algorithm)
        + common.NS(blob)
    )
    signature = key.sign(signed, signatureType=algorithm)
    d = auth._request(b"publickey", b"\x01" + common.NS(algorithm) + common.NS(blob) + common.NS(signature))
    conn.flush()
    [record] = w.audit.of("auth")
    if revoked:
        assert result_of(d)[0] == userauth.MSG_USERAUTH_FAILURE
        assert record["ok"] is False and "is revoked" in record["reason"]
    else:  # the oddly written line does log in: the refusal above is the revocation's
        assert result_of(d)[0] == userauth.MSG_USERAUTH_SUCCESS and record["ok"] is True
