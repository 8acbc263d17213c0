"""A key is the same key however sshd lets its blob be written, and no key where sshd refuses the
blob. sshd takes numbers padded with zero bytes (by value: revoked_keys still refuses the key, an
authorized_keys line written that way by the key's owner must not keep a revoked key logging in),
and refuses bytes after the key, an ECDSA curve name not the key type's and compressed points,
which Conch alone would read: such a blob, in the line and sent by the client, never logs in.
The whole matrix against a real sshd: tests/differential/test_blob_encodings_differential.py."""

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
from twisted.logger import capturedLogs, formatEvent

from conchcmd.policy.authorized_keys import fingerprint


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


#: name -> (the key, its signature algorithm, the odd blob, whether sshd accepts the blob)
ENCODINGS: dict[str, tuple[Callable[[], Key], bytes, Callable[[Key], bytes], bool]] = {
    "trailing bytes": (lambda: ed25519_key(21), b"ssh-ed25519", trailing_bytes, False),
    "zero-padded RSA modulus": (lambda: rsa_key(21), b"rsa-sha2-512", zero_padded_modulus, True),
    "another curve name": (lambda: ecdsa_key(21), b"ecdsa-sha2-nistp256", another_curve_name, False),
    "compressed ECDSA point": (lambda: ecdsa_key(21), b"ecdsa-sha2-nistp256", compressed_point, False),
}


@pytest.mark.parametrize("revoked", [False, True])
@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_a_revoked_key_is_refused_however_its_blob_is_written(tmp_path: Path, encoding: str, revoked: bool) -> None:
    make_key, algorithm, write, sshd_accepts = ENCODINGS[encoding]
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
    d = auth.login(key, algorithm, blob)
    conn.flush()
    [record] = w.audit.of("auth")
    if not sshd_accepts:  # no key, revoked or not: refused before any line is looked at
        assert result_of(d)[0] == userauth.MSG_USERAUTH_FAILURE
        assert record["ok"] is False and record["reason"].startswith("malformed public key ("), record
    elif revoked:
        assert result_of(d)[0] == userauth.MSG_USERAUTH_FAILURE
        assert record["ok"] is False and "is revoked" in record["reason"]
    else:  # the oddly written line does log in: the refusal above is the revocation's
        assert result_of(d)[0] == userauth.MSG_USERAUTH_SUCCESS and record["ok"] is True


@pytest.mark.parametrize("authorized", [True, False])
def test_a_padded_blob_is_logged_and_audited_by_its_keys_fingerprint(tmp_path: Path, authorized: bool) -> None:
    # sshd logs the fingerprint of the key it read (ssh-keygen -l's), not a hash of the bytes the
    # client chose: padding the blob must not show one key under many fingerprints.
    key = rsa_key(21)
    blob = zero_padded_modulus(key)
    expected = fingerprint(key.public().blob())
    assert fingerprint(blob) != expected
    w = make_world(tmp_path / "w")
    add_user(w, "mallory", authorized_line(key) if authorized else authorized_line(rsa_key(22)))
    with capturedLogs() as events:
        conn = w.connect()
        auth = conn.start_auth(b"mallory")
        d = auth.login(key, b"rsa-sha2-512", blob)
        conn.flush()
    wanted = userauth.MSG_USERAUTH_SUCCESS if authorized else userauth.MSG_USERAUTH_FAILURE
    assert result_of(d)[0] == wanted
    [record] = w.audit.of("auth")
    assert record["fingerprint"] == expected, record
    word = "Accepted" if authorized else "Failed"
    [line] = [formatEvent(e) for e in events if formatEvent(e).startswith(f"{word} publickey for mallory")]
    assert line.endswith(f"ssh2: RSA {expected}"), line


def _with_trailing_byte(signature: bytes) -> bytes:
    return signature + b"\x00"


def _with_long_body_length(signature: bytes) -> bytes:
    """The body's length field says more bytes than there are (Conch's getNS takes what is there)."""
    kind, body = common.getNS(signature, 2)[:2]
    return common.NS(kind) + (len(body) + 0x200000).to_bytes(4, "big") + body


def _with_trailing_string(signature: bytes) -> bytes:
    return signature + common.NS(b"extra")


@pytest.mark.parametrize("key", [ed25519_key(), rsa_key(), ecdsa_key()], ids=["ed25519", "rsa", "ecdsa"])
@pytest.mark.parametrize("rewrite", [_with_trailing_byte, _with_long_body_length, _with_trailing_string])
def test_a_valid_signature_written_as_sshd_would_not_read_it_does_not_log_in(
    tmp_path: Path, key: Key, rewrite: Callable[[bytes], bytes]
) -> None:
    """sshd's sshkey_verify reads the signature with sshbuf (every length checked) and refuses any
    byte after it (SSH_ERR_UNEXPECTED_TRAILING_DATA); Conch's Key.verify took all of these."""
    world = make_world(tmp_path)
    conn = world.connect()
    auth = conn.start_auth(b"admin")
    algorithm = b"rsa-sha2-512" if key.sshType() == b"ssh-rsa" else None
    data = auth.signed(key, algorithm)
    head, rest = data[:1], data[1:]
    algorithm_name, blob, signature = common.getNS(rest, 3)[:3]
    d = auth._request(b"publickey", head + common.NS(algorithm_name) + common.NS(blob) + common.NS(rewrite(signature)))
    conn.flush()
    assert result_of(d)[0] == userauth.MSG_USERAUTH_FAILURE
    (record,) = world.audit.of("auth")
    assert record["reason"] == "malformed signature"
    d = auth._request(b"publickey", data)  # the same signature as written: logs in
    conn.flush()
    assert result_of(d)[0] == userauth.MSG_USERAUTH_SUCCESS


def test_each_login_logs_its_key_s_fingerprint_however_the_blob_is_written(tmp_path: Path) -> None:
    # The accepted keys' descriptions are kept per server by the bytes sent: a padded blob of a
    # key that logged in before, and the plain one again, are still logged by the key's fingerprint.
    key = rsa_key(21)
    expected = fingerprint(key.public().blob())
    w = make_world(tmp_path / "w")
    add_user(w, "mallory", authorized_line(key))
    for blob in (key.public().blob(), zero_padded_modulus(key), key.public().blob(), zero_padded_modulus(key)):
        with capturedLogs() as events:
            conn = w.connect()
            auth = conn.start_auth(b"mallory")
            d = auth.login(key, b"rsa-sha2-512", blob)
            conn.flush()
        assert result_of(d)[0] == userauth.MSG_USERAUTH_SUCCESS
        [line] = [formatEvent(e) for e in events if formatEvent(e).startswith("Accepted publickey for mallory")]
        assert line.endswith(f"ssh2: RSA {expected}"), line
    assert [r["fingerprint"] for r in w.audit.of("auth")] == [expected] * 4
