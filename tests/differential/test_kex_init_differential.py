"""The curve25519-sha256 INIT (KEX_ECDH_INIT) against the oracle: the same hostile payloads, as
exact bytes from the project's test client, sent to the real sshd and to the conchcmd server
process (support/differential.py's pair), and whether each answers with its KEXDH_REPLY (a
host-key signature over the client's value) or ends the connection without one. sshd reads the
INIT as one string and nothing after it (kexgen.c: sshpkt_getb_froms, sshpkt_get_end) and refuses
an all-zero X25519 result (RFC 8731 3); it takes non-canonical u-coordinates (RFC 7748 5).
Where conchcmd deliberately differs, DIFFERS_FROM_SSHD says why. OpenSSH 9.2 has no
mlkem768x25519-sha256: its INIT is checked in memory only (tests/inmemory/test_kex_init_attacks.py,
tests/fuzz/test_fuzz_kex_init.py)."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from support.differential import Pair
from support.kexclients import guessing
from support.rawssh import dial
from support.scripted import ScriptedClient, scripted
from support.sshclient import ClientFactory
from twisted.conch.ssh import common
from twisted.logger import capturedLogs

NS = common.NS
INIT, REPLY, DISCONNECT = 30, 31, 1
P = 2**255 - 19
ORDER_8 = 325606250916557431795983626356110631294008115727848805560023387167927233504

#: INIT payloads made from the client's own public value.
CASES: dict[str, Callable[[bytes], bytes]] = {
    "well-formed": NS,
    "trailing-byte": lambda v: NS(v) + b"\0",
    "trailing-string": lambda v: NS(v) + NS(b"junk"),
    "length-past-end": lambda v: struct.pack(">L", 64) + v,
    "length-2**32-1": lambda v: b"\xff\xff\xff\xff" + v,
    "31-bytes": lambda v: NS(v[:31]),
    "33-bytes": lambda v: NS(v + b"\0"),
    "empty-string": lambda v: NS(b""),
    "no-string": lambda v: b"",
    "all-zero": lambda v: NS(bytes(32)),
    "u=1": lambda v: NS((1).to_bytes(32, "little")),
    "u=p-1": lambda v: NS((P - 1).to_bytes(32, "little")),
    "u=p (non-canonical 0)": lambda v: NS(P.to_bytes(32, "little")),
    "order-8 point": lambda v: NS(ORDER_8.to_bytes(32, "little")),
    "order-8 point, top bit set": lambda v: NS(ORDER_8.to_bytes(32, "little")[:31] + b"\x80"),
    "u=p+9 (non-canonical 9)": lambda v: NS((P + 9).to_bytes(32, "little")),
    "top bit set": lambda v: NS(v[:31] + bytes((v[31] | 0x80,))),
}

#: Cases where conchcmd's answer differs from sshd's, and why.
DIFFERS_FROM_SSHD = {
    "order-8 point, top bit set": "RFC 7748 5 says to ignore the top bit of a u-coordinate, as OpenSSL "
    "(and so conchcmd) does: this is the order-8 point, whose all-zero result RFC 8731 3 refuses. "
    "OpenSSH's reference X25519 (smult_curve25519_ref.c) reads all 256 bits: to sshd it is u + 2**255, "
    "a point of large order, and it replies",
}


class InitClient(ScriptedClient):
    """Sends, as its INIT, the factory's `init` of a fresh X25519 public value; records whether a
    reply came (its own checks of the reply are not the point: it may not know the value it sent)."""

    def ssh_KEXINIT(self, packet: bytes) -> None:
        if self.negotiate(packet) is None:
            return
        value = x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()
        self.sendPacket(INIT, self.factory.init(value))  # type: ignore[attr-defined]

    def ssh_KEX_DH_GEX_GROUP(self, packet: bytes) -> None:
        self.factory.replied = True  # type: ignore[attr-defined]
        self.transport.loseConnection()


def answer(port: int, init: Callable[[bytes], bytes]) -> str:
    factory = scripted(strict=True)
    factory.protocol = InitClient  # type: ignore[assignment]
    factory.supportedKeyExchanges = [b"curve25519-sha256"]
    factory.init = staticmethod(init)  # type: ignore[attr-defined]
    factory.replied = False  # type: ignore[attr-defined]
    with capturedLogs():
        conn = dial(port, factory)
        conn.pump.flush(quiet=0.3)
    if factory.replied:  # type: ignore[attr-defined]
        return "replied"
    conn.client.transport.loseConnection()
    return "refused" if conn.disconnected else "silent"


@pytest.mark.parametrize("case", list(CASES))
def test_the_init_is_answered_or_refused_as_by_sshd(server_pair: Pair, case: str) -> None:
    init = CASES[case]
    theirs = answer(server_pair.sshd.port, init)
    ours = answer(server_pair.conch.port, init)
    assert theirs in ("replied", "refused")
    if case in DIFFERS_FROM_SSHD:
        assert (theirs, ours) == ("replied", "refused"), DIFFERS_FROM_SSHD[case]
    else:
        assert ours == theirs, f"sshd {theirs}, conchcmd {ours}"


def first_choices(port: int) -> tuple[bytes, bytes]:
    """The server's first key exchange and host-key algorithm (its KEXINIT's lists)."""
    factory = scripted(strict=True)
    with capturedLogs():
        conn = dial(port, factory)
    conn.client.transport.loseConnection()
    kexinit = next(payload for number, payload in conn.client.received if number == 20)
    kexes, keys = common.getNS(kexinit[16:], 2)[:2]
    return kexes.split(b",")[0], keys.split(b",")[0]


def guessed(port: int, factory: ClientFactory) -> tuple[bool, str]:
    with capturedLogs():
        conn = dial(port, factory)
        conn.pump.flush(quiet=0.3)
    replied = REPLY in [number for number, _ in conn.client.received]
    conn.client.transport.loseConnection()
    return bool(conn.client.guessed_right), "replied" if replied else "refused"  # type: ignore[attr-defined]


@pytest.mark.parametrize("right", [True, False], ids=["right-guess", "wrong-guess"])
def test_a_malformed_guessed_init_is_read_or_dropped_as_by_sshd(server_pair: Pair, right: bool) -> None:
    """first_kex_packet_follows with a malformed guessed INIT: when the client's first choices are
    the server's, the guess is the key exchange's INIT (refused); otherwise it is dropped unread
    and the client's next INIT (curve25519-sha256) is answered."""
    outcomes = []
    for port in (server_pair.sshd.port, server_pair.conch.port):
        kex, host_key = first_choices(port)
        kexes = [kex, b"curve25519-sha256"] if right else [b"curve25519-sha256", kex]
        outcomes.append(guessed(port, guessing(kexes, [host_key], guess=b"\xff")))
    assert outcomes[0] == (right, "refused" if right else "replied")
    assert outcomes[1] == outcomes[0]


def closes(port: int, data: bytes, wait: float = 2.0) -> bool:
    """Whether the server closes the connection within `wait` s of reading `data` as its first bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                if not sock.recv(65536):
                    return True
            except TimeoutError:
                return False
            except ConnectionResetError:
                return True
    return False


@pytest.mark.parametrize("lines", [b"hello\r\n", b"\r\n"], ids=["a-line", "an-empty-line"])
def test_lines_before_the_client_version_line_end_the_connection_as_in_sshd(server_pair: Pair, lines: bytes) -> None:
    """RFC 4253 4.2 allows lines before the version line from a server only: sshd closes at once
    ("invalid protocol identifier"), and so does conchcmd (a protocol error)."""
    data = lines + b"SSH-2.0-OpenSSH_9.2\r\n"
    assert closes(server_pair.sshd.port, data)
    assert closes(server_pair.conch.port, data)
    assert not closes(server_pair.conch.port, b"SSH-2.0-OpenSSH_9.2\r\n", wait=0.5)  # the version line alone: kept
