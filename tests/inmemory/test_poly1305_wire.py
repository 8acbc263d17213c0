"""chacha20-poly1305@openssh.com packets on both sides of `poly1305.SODIUM_MAX` (libsodium's tags up
to 12 KiB, cryptography's above), from the smallest packet to the largest one the server takes,
before and after a rekey: each genuine packet is taken, and one with any single bit of its body or
tag changed ends the connection with a MAC error and nothing of it dispatched."""

from __future__ import annotations

import os

import pytest
from support.keys import ed25519_key
from support.sshclient import Connection
from support.world import World
from twisted.conch.ssh import common, transport

from conchcmd.wire import poly1305
from conchcmd.wire.packets import pad

CHACHA = b"chacha20-poly1305@openssh.com"
#: Packet length fields (multiples of 8: chacha aligns the 1 + payload + padding to 8 bytes); the
#: tag covers the 4 length bytes and the rest: 20 ... 65540 bytes.
LENGTHS = [16, 24, poly1305.SODIUM_MAX - 8, poly1305.SODIUM_MAX, 32768, 65536]


def ignore_packet(conn: Connection, length: int) -> bytes:
    """An SSH_MSG_IGNORE sealed by the client's codec whose packet length field is `length`."""
    codec = conn.client._out_codec
    plain = pad(bytes((transport.MSG_IGNORE,)) + common.NS(os.urandom(length - 14)), codec, lambda n: bytes(n))
    assert len(plain) == 4 + length
    return codec.seal(conn.client.outgoingPacketSequence, plain)


def send(conn: Connection, wire: bytes) -> None:
    conn.client.transport.write(wire)
    conn.client.outgoingPacketSequence += 1
    conn.flush()


def keyed_connection(world: World, rekeyed: bool, peer: str = "10.0.0.1") -> Connection:
    conn = world.connect(peer)
    if rekeyed:
        assert conn.login(b"admin", ed25519_key()) == 52
        conn.client.sendKexInit()
        conn.flush()
        assert conn.server.kex_count == 2
    assert conn.server.currentEncryptions.inCipType == CHACHA  # OpenSSH's first choice, and ours
    return conn


def test_the_sizes_are_the_last_before_the_switch_and_the_first_after_it() -> None:
    assert 4 + LENGTHS[2] <= poly1305.SODIUM_MAX < 4 + LENGTHS[3]  # the tag covers 4 + length bytes
    assert LENGTHS[-1] == 65536  # the server's largest before authentication


@pytest.mark.parametrize("rekeyed", [False, True])
def test_genuine_packets_of_every_size_are_taken(world: World, rekeyed: bool) -> None:
    conn = keyed_connection(world, rekeyed)
    for length in LENGTHS:
        send(conn, ignore_packet(conn, length))
        assert not conn.disconnected, length
    if not rekeyed:
        assert conn.login(b"admin", ed25519_key()) == 52  # the sequence numbers still agree
    chan = conn.open_session()
    conn.exec(chan, b"lastlog -n 1")
    conn.flush()
    assert chan.exit_status == 0 and chan.out == b"line 20\n"


@pytest.mark.parametrize("rekeyed", [False, True])
@pytest.mark.parametrize("length", LENGTHS)
def test_one_changed_bit_anywhere_after_the_length_ends_the_connection_with_a_mac_error(
    world: World, length: int, rekeyed: bool
) -> None:
    """(A changed bit of the encrypted length makes another length: refused or waited for.)"""
    rng = os.urandom(4)
    wheres = (4 + rng[0] % 16, 4 + length // 2, 4 + length - 1, 4 + length, 4 + length + 15)
    for i, where in enumerate(wheres):  # (a peer each: the server slows down a peer's repeated failures)
        conn = keyed_connection(world, rekeyed, f"10.0.{i}.1")
        wire = bytearray(ignore_packet(conn, length))
        wire[where] ^= 1 << (rng[1] % 8)
        send(conn, bytes(wire))
        assert conn.disconnected, (length, where)
        assert conn.factory.disconnect_reason is not None
        assert conn.factory.disconnect_reason[0] == transport.DISCONNECT_MAC_ERROR
