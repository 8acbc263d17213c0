"""A valid signature written otherwise than as one SSH string pair: conchcmd answers exactly what a
real sshd answers (sshkey_verify checks every length and refuses any byte after the signature;
Conch's Key.verify took all of these), and the signature as written logs in on both."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from support.differential import Pair
from support.keys import authorized_line, ecdsa_key, ed25519_key, rsa_key
from support.rawssh import dial
from support.sshclient import result_of
from twisted.conch.ssh import common, userauth
from twisted.conch.ssh.keys import Key

pytestmark = pytest.mark.differential


@dataclass
class Lines:
    lines: list[bytes]
    trusted: list[bytes] = field(default_factory=list)
    revoked: list[bytes] = field(default_factory=list)


def as_written(signature: bytes) -> bytes:
    return signature


def trailing_byte(signature: bytes) -> bytes:
    return signature + b"\x00"


def long_body_length(signature: bytes) -> bytes:
    kind, body = common.getNS(signature, 2)[:2]
    return common.NS(kind) + (len(body) + 0x200000).to_bytes(4, "big") + body


def trailing_string(signature: bytes) -> bytes:
    return signature + common.NS(b"extra")


KEYS = {"ed25519": ed25519_key(), "rsa": rsa_key(), "ecdsa": ecdsa_key()}


def answer(port: int, user: str, key: Key, rewrite: Callable[[bytes], bytes]) -> int:
    conn = dial(port)
    try:
        auth = conn.start_auth(user.encode())
        data = auth.signed(key, b"rsa-sha2-512" if key.sshType() == b"ssh-rsa" else None)
        algorithm, blob, signature = common.getNS(data[1:], 3)[:3]
        d = auth._request(
            b"publickey", data[:1] + common.NS(algorithm) + common.NS(blob) + common.NS(rewrite(signature))
        )
        conn.flush()
        return int(result_of(d)[0]) if d.called else 0
    finally:
        conn.client.transport.loseConnection()


@pytest.mark.parametrize("rewrite", [as_written, trailing_byte, long_body_length, trailing_string])
@pytest.mark.parametrize("kind", sorted(KEYS))
def test_a_signature_is_framed_as_sshd_reads_it(
    server_pair: Pair, kind: str, rewrite: Callable[[bytes], bytes]
) -> None:
    key = KEYS[kind]
    server_pair.files.write([Lines([authorized_line(key).strip().encode()])])
    expected = userauth.MSG_USERAUTH_SUCCESS if rewrite is as_written else userauth.MSG_USERAUTH_FAILURE
    assert answer(server_pair.sshd.port, server_pair.user, key, rewrite) == expected
    assert answer(server_pair.conch.port, server_pair.user, key, rewrite) == expected
