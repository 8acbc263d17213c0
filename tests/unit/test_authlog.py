"""The authentication lines, word for word as OpenSSH sshd 9.2 writes them (captured from
/usr/sbin/sshd), with the event fields the log targets use, and client-chosen text (user names,
certificate key IDs) kept to one word."""

from __future__ import annotations

import base64
import datetime

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, ssh
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import capturedLogs, formatEvent

from conchcmd.core.logtargets import AUTH_LOG_NAMESPACE
from conchcmd.core.peer import format_peer
from conchcmd.policy.authorized_keys import fingerprint
from conchcmd.server.authlog import AuthLog, Client, KeyInfo, KeyInfos, key_type_name, log_word
from conchcmd.server.transport import auth_client

CLIENT = Client(host="203.0.113.7", port=55844, peer="203.0.113.7:55844")


def lines(action) -> list[tuple[str, dict]]:
    with capturedLogs() as events:
        action(AuthLog(CLIENT))
    assert all(e["log_namespace"] == AUTH_LOG_NAMESPACE for e in events)
    return [(formatEvent(e), e) for e in events]


def texts(action) -> list[str]:
    return [text for text, _ in lines(action)]


def blob_of(key: ed25519.Ed25519PrivateKey) -> bytes:
    return base64.b64decode(key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).split()[1])


KEY = ed25519.Ed25519PrivateKey.generate()
FP = fingerprint(blob_of(KEY))


def test_accepted_publickey_in_sshds_words_with_the_event_fields() -> None:
    [(text, event)] = lines(lambda log: log.accepted("publickey", "admin", KeyInfo.of(blob_of(KEY))))
    assert text == f"Accepted publickey for admin from 203.0.113.7 port 55844 ssh2: ED25519 {FP}"
    assert {k: event[k] for k in ("user", "host", "port", "peer", "method", "key_type", "fingerprint")} == {
        "user": "admin",
        "host": "203.0.113.7",
        "port": 55844,
        "peer": "203.0.113.7:55844",
        "method": "publickey",
        "key_type": "ED25519",
        "fingerprint": FP,
    }


def test_accepted_password_has_no_empty_fields() -> None:
    """The line used to read "Accepted password for carol from PEER:   (password)"."""
    assert texts(lambda log: log.accepted("password", "carol")) == [
        "Accepted password for carol from 203.0.113.7 port 55844 ssh2"
    ]


def test_failures_invalid_users_and_the_ends_of_a_connection() -> None:
    key = KeyInfo.of(blob_of(KEY))

    def act(log: AuthLog) -> None:
        log.failed(b"publickey", b"admin", True, key)
        log.failed(b"password", b"root", False)
        log.invalid_user(b"root")
        log.failed(b"none", b"root", False)
        log.too_many_failures(b"admin", True)
        log.too_many_failures(b"root", False)
        log.closed_during_auth(b"admin", True, client_disconnected=False)
        log.closed_during_auth(b"root", False, client_disconnected=True)
        log.disconnected("admin")

    assert texts(act) == [
        f"Failed publickey for admin from 203.0.113.7 port 55844 ssh2: ED25519 {FP}",
        "Failed password for invalid user root from 203.0.113.7 port 55844 ssh2",
        "Invalid user root from 203.0.113.7 port 55844",
        "Failed none for invalid user root from 203.0.113.7 port 55844 ssh2",
        "maximum authentication attempts exceeded for admin from 203.0.113.7 port 55844 ssh2",
        "Disconnecting authenticating user admin 203.0.113.7 port 55844: Too many authentication failures [preauth]",
        "maximum authentication attempts exceeded for invalid user root from 203.0.113.7 port 55844 ssh2",
        "Disconnecting invalid user root 203.0.113.7 port 55844: Too many authentication failures [preauth]",
        "Connection closed by authenticating user admin 203.0.113.7 port 55844 [preauth]",
        "Disconnected from invalid user root 203.0.113.7 port 55844 [preauth]",
        "Disconnected from user admin 203.0.113.7 port 55844",
    ]


def test_certificate_in_sshds_words() -> None:
    """As sshd 9.2 logged a certificate login: `ED25519-CERT SHA256:... ID key id x (serial 5) CA
    ED25519 SHA256:...`, the key ID's spaces escaped here."""
    ca = ed25519.Ed25519PrivateKey.generate()
    now = datetime.datetime.now(datetime.UTC).timestamp()
    cert = (
        ssh.SSHCertificateBuilder()
        .public_key(KEY.public_key())
        .serial(5)
        .key_id(b"key id x")
        .type(ssh.SSHCertificateType.USER)
        .valid_principals([b"admin"])
        .valid_after(int(now) - 60)
        .valid_before(int(now) + 3600)
        .sign(ca)
    )
    blob = base64.b64decode(cert.public_bytes().split()[1])
    info = KeyInfo.of(blob)
    assert info is not None
    assert info.text() == (f"ED25519-CERT {FP} ID key\\x20id\\x20x (serial 5) CA ED25519 {fingerprint(blob_of(ca))}")
    [text] = texts(lambda log: log.accepted("publickey", "admin", info))
    assert text == f"Accepted publickey for admin from 203.0.113.7 port 55844 ssh2: {info.text()}"


def test_an_unparseable_key_is_logged_without_a_description_as_sshd_does() -> None:
    assert KeyInfo.of(b"\x00\x00\x00") is None
    assert KeyInfo.of(b"\x00\x00\x00\x20ssh-ed25519-cert-v01@openssh.com") is None
    assert texts(lambda log: log.failed(b"publickey", b"admin", True, None)) == [
        "Failed publickey for admin from 203.0.113.7 port 55844 ssh2"
    ]


@pytest.mark.parametrize(
    ("blob_type", "name"),
    [
        (b"ssh-ed25519", "ED25519"),
        (b"ssh-rsa", "RSA"),
        (b"ecdsa-sha2-nistp384", "ECDSA"),
        (b"sk-ssh-ed25519@openssh.com", "ED25519-SK"),
        (b"ssh-rsa-cert-v01@openssh.com", "RSA-CERT"),
        (b"ecdsa-sha2-nistp256-cert-v01@openssh.com", "ECDSA-CERT"),
        (b"sk-ecdsa-sha2-nistp256@openssh.com", "ECDSA-SK"),
        (b"sk-ssh-ed25519-cert-v01@openssh.com", "ED25519-SK-CERT"),
        (b"sk-ecdsa-sha2-nistp256-cert-v01@openssh.com", "ECDSA-SK-CERT"),
        (b"x-cert-v01@openssh.com", "unknown"),
        (b"made-up", "unknown"),
    ],
)
def test_key_type_names_are_sshds(blob_type: bytes, name: str) -> None:
    assert key_type_name(blob_type) == name


def test_ipv6_peers_print_as_sshd_prints_them() -> None:
    """sshd: "from ::1 port 22" (no brackets); an IPv4-mapped address as IPv4."""
    address = IPv6Address("TCP", "2001:db8::7", 55844)
    client = auth_client(address, format_peer(address))
    assert (client.host, client.port, client.peer) == ("2001:db8::7", 55844, "[2001:db8::7]:55844")
    mapped = IPv6Address("TCP", "::ffff:198.51.100.4", 1)
    assert auth_client(mapped, format_peer(mapped)).host == "198.51.100.4"
    v4 = IPv4Address("TCP", "198.51.100.4", 2)
    assert auth_client(v4, format_peer(v4)) == Client("198.51.100.4", 2, "198.51.100.4:2")
    with capturedLogs() as events:
        AuthLog(auth_client(address, format_peer(address))).invalid_user(b"root")
    assert formatEvent(events[0]) == "Invalid user root from 2001:db8::7 port 55844"


HOSTILE_NAMES = [
    "x from 6.6.6.6 port 1 ssh2",
    "x from 6.6.6.6",
    "invalid user x from 6.6.6.6 port 1",
    "root from 6.6.6.6 port 1 ssh2\nFailed password for root from 6.6.6.6 port 1 ssh2",
    "a\rFailed password for root from 6.6.6.6 port 1 ssh2",
    "tab\tfrom\t6.6.6.6",
    "nbsp\u00a0from\u00a06.6.6.6",
    "ideographic\u3000from\u30006.6.6.6",
    "ls\u2028Failed password for root from 6.6.6.6 port 1 ssh2",
    "nel\x85from 6.6.6.6",
    "vt\x0bfrom\x0c6.6.6.6\x1c",
    "{user} {host} %s",
    "x" * 300 + " from 6.6.6.6",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_user_name_stays_one_word_of_one_line(name: str) -> None:
    word = log_word(name)
    assert word and not any(ch.isspace() for ch in word)
    assert len(word.splitlines()) == 1
    for text in texts(lambda log: (log.failed(b"password", name.encode(), False), log.invalid_user(name.encode()))):
        assert len(text.splitlines()) == 1
        assert text.split(" from ")[1].startswith("203.0.113.7 port 55844"), text
        assert " 6.6.6.6" not in text


def test_log_word_escapes_are_unambiguous() -> None:
    assert log_word("a b") == "a\\x20b"
    assert log_word("a\\x20b") == "a\\\\x20b"  # a typed backslash cannot pass for an escape
    assert log_word("") == ""
    assert log_word(b"caf\xe9") == "caf\\xe9"  # not UTF-8
    assert len(log_word("x" * 300)) == 103  # sshd's %.100s, and "..."


def test_no_code_point_is_left_unescaped_by_the_ascii_short_cut() -> None:
    """log_word returns ASCII text as sanitise gave it, its spaces escaped (a short cut past the
    regex): for every code point, alone and between letters, the word is what the regex gives,
    printable ASCII without a space."""
    from conchcmd.core.audit import sanitise
    from conchcmd.server.authlog import _NOT_A_WORD, _escaped

    for text in (chr(c) for c in range(0x110000)):
        for value in (text, f"a{text}b"):
            word = log_word(value)
            assert word == _NOT_A_WORD.sub(_escaped, sanitise(value, 100)), hex(ord(text))
            assert word.isascii() and word.isprintable() and " " not in word


def test_key_infos_describes_each_blob_once_and_keeps_at_most_its_size() -> None:
    keys = [blob_of(ed25519.Ed25519PrivateKey.generate()) for _ in range(3)]
    read: list[bytes] = []
    infos = KeyInfos(size=2)

    def of(blob: bytes) -> KeyInfo | None:
        return infos.of(blob, lambda: (read.append(blob), blob)[1])

    assert of(keys[0]) == of(keys[0]) == KeyInfo("ED25519", fingerprint(keys[0]))
    assert read == [keys[0]]  # read once, then kept
    of(keys[1])
    of(keys[2])  # one more than its size: the oldest goes
    assert of(keys[0]) == KeyInfo("ED25519", fingerprint(keys[0]))
    assert read == [keys[0], keys[1], keys[2], keys[0]]
    assert of(b"\x00\x00\x00") is None and of(b"\x00\x00\x00") is None  # no description: none kept
    assert len(infos._known) == 2
