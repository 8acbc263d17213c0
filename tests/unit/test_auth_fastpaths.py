"""The auth path's shortcuts give what the general code gives: each is checked against the
general computation it skips (kept here as the reference), edge cases included."""

from __future__ import annotations

import ipaddress
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.skauth import SoftwareAuthenticator
from twisted.conch.ssh.keys import Key

from conchcmd.core.audit import sanitise
from conchcmd.core.hostmatch import normalise_peer
from conchcmd.keys.keyparse import MAX_KEPT_BLOB, KeyParseError, ParsedKeys, PublicKey, public_key_from_blob
from conchcmd.policy.auth import key_refusal
from conchcmd.server.admission import source_of
from conchcmd.server.authlog import MAX_USER, log_word


def reference_normalise_peer(host: str) -> str:
    """normalise_peer without its shortcut for hosts without a colon."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def reference_source_of(host: str) -> str:
    """source_of without its shortcut for IPv4 hosts."""
    host = reference_normalise_peer(host)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    return host


_OCTETS = st.one_of(
    st.integers(0, 300).map(str),
    st.sampled_from(["00", "01", "007", "0x1", "+1", "-1", " 1", "1 ", "\u0661", "\uff11", "1\n", "", "1e2"]),
)
_IPV4_LIKE = st.lists(_OCTETS, min_size=1, max_size=6).map(".".join)
_IPV6_LIKE = st.one_of(
    st.ip_addresses(v=6).map(str),
    st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
    st.ip_addresses(v=4).map(lambda a: f"::FFFF:{a}"),
    st.sampled_from(["::1", "fe80::1%eth0", "::ffff:127.0.0.1%1", "::ffff:7f00:1", "1::2::3", ":", "::ffff:01.2.3.4"]),
)
HOSTS = st.one_of(st.ip_addresses(v=4).map(str), _IPV4_LIKE, _IPV6_LIKE, st.text(max_size=40))

EDGE_CASES = [
    "127.0.0.1",
    "0.0.0.0",
    "255.255.255.255",
    "256.0.0.1",
    "01.2.3.4",
    "1.2.3",
    "1.2.3.4.5",
    "\u0661.2.3.4",
    " 1.2.3.4",
    "1.2.3.4\n",
    "localhost",
    "",
    "::ffff:10.0.0.1",
    "::1",
    "2001:db8::1",
    "/tmp/socket",
]


def test_normalise_peer_edge_cases() -> None:
    for host in EDGE_CASES:
        assert normalise_peer(host) == reference_normalise_peer(host), host
        assert source_of(host) == reference_source_of(host), host


@settings(max_examples=1000, deadline=None)
@given(HOSTS)
def test_normalise_peer_and_source_of_match_the_general_parse(host: str) -> None:
    assert normalise_peer(host) == reference_normalise_peer(host)
    assert source_of(host) == reference_source_of(host)


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa256", "ecdsa384", "ecdsa521", "rsa", "sk-ed25519", "sk-ecdsa"])
def test_parsed_keys_answer_as_conch_s_key_does(ssh_key, kind: str) -> None:  # type: ignore[no-untyped-def]
    """A key read from a client's blob remembers its type: the answers are Conch's Key's, for
    every key type a client can offer, and its signatures verify as with Conch's Key."""
    if kind.startswith("sk-"):
        token = SoftwareAuthenticator.generate(kind[3:])
        blob = token.key_blob()
    else:
        blob = Key.fromString(ssh_key(kind).public_line).blob()
    plain = Key.fromString(blob, type="blob")
    key = public_key_from_blob(blob)
    assert isinstance(key, PublicKey)
    for _ in range(2):  # worked out, then remembered
        assert key.type() == plain.type()
        assert key.sshType() == plain.sshType()
        assert key.blob() == plain.blob() == blob
        assert key.supportedSignatureAlgorithms() == plain.supportedSignatureAlgorithms()
        assert key_refusal(key) == key_refusal(plain)
    assert key == plain and plain == key
    if not kind.startswith("sk-"):
        private = Key.fromFile(str(ssh_key(kind).private))
        for algorithm in private.supportedSignatureAlgorithms():
            signature = private.sign(b"signed data", algorithm)
            assert key.verify(signature, b"signed data") == plain.verify(signature, b"signed data") is True
            assert key.verify(signature, b"other data") == plain.verify(signature, b"other data") is False


def test_parsed_keys_are_read_once_kept_in_bounds_and_never_keep_a_refusal() -> None:
    from support.keys import ed25519_key, rsa_key
    from support.oddblobs import fields, ns

    blobs = [ed25519_key(n).public().blob() for n in range(40, 44)]
    parsed = ParsedKeys(size=3)
    first = parsed.get(blobs[0])
    assert parsed.get(blobs[0]) is first and first == Key.fromString(blobs[0], type="blob")
    for blob in blobs[1:3]:
        parsed.get(blob)
    parsed.get(blobs[0])  # the most recently offered now
    parsed.get(blobs[3])  # over the bound: blobs[1], the least recently offered, is dropped
    assert parsed.get(blobs[0]) is first
    assert len(parsed._keys) == 3 and blobs[1] not in parsed._keys
    for _ in range(2):  # a blob that does not parse raises each time and is not kept
        with pytest.raises(KeyParseError):
            parsed.get(blobs[0][:-1])
    assert blobs[0][:-1] not in parsed._keys and len(parsed._keys) == 3
    with pytest.raises(KeyParseError, match="trailing data"):  # refused, as sshd refuses it
        parsed.get(blobs[0] + bytes(MAX_KEPT_BLOB))
    rsa = rsa_key(40).public()
    name, e, n = fields(rsa.blob())  # numbers as long as sshd takes them: the same key, not kept
    padded = ns(name) + ns(e.rjust(2049, b"\0")) + ns(n.rjust(2049, b"\0"))
    assert len(padded) > MAX_KEPT_BLOB
    assert parsed.get(padded) == rsa and parsed.get(padded).blob() == rsa.blob() and padded not in parsed._keys


def reference_log_word(value: str | bytes, limit: int = MAX_USER) -> str:
    """log_word without its shortcut for ASCII: sanitise's text, then character by character
    every space and non-ASCII character escaped (\\xNN, \\uNNNN, \\UNNNNNNNN)."""

    def word_char(ch: str) -> str:
        code = ord(ch)
        if 0x21 <= code <= 0x7E:
            return ch
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"

    return "".join(map(word_char, sanitise(value, limit)))


def test_log_word_escapes_every_space_and_every_non_ascii_character() -> None:
    every = "".join(map(chr, range(sys.maxunicode + 1)))
    word = log_word(every, len(every))
    assert word == reference_log_word(every, len(every))
    assert word.isascii() and word.isprintable() and " " not in word


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=150), st.binary(max_size=150)), st.sampled_from([MAX_USER, 32, 256]))
def test_log_word_matches_the_character_by_character_escape(value: str | bytes, limit: int) -> None:
    assert log_word(value, limit) == reference_log_word(value, limit)
