"""Key-exchange messages out of order, in the first key exchange and in later ones, and a client
that rekeys without pause: what an attacker on the wire, or a hostile client, can make the
server do. Compared with sshd (OpenSSH 9.6+): strict KEX (kex-strict-s-v00@openssh.com) makes
any unexpected message in the *initial* key exchange fatal; in later ones, IGNORE and DEBUG are
fine and an out-of-order key-exchange message gets UNIMPLEMENTED (kex_protocol_error)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from support.keys import ed25519_key
from support.scripted import ScriptedClient, dropped, ecdh_init, force_send, injected, once, scripted, send
from support.sshclient import ClientFactory, Connection, connect
from support.world import World, make_world
from twisted.conch.ssh import common, transport
from twisted.logger import capturedLogs, formatEvent

from conchcmd.wire.framing import REKEY_BURST, REKEY_FREE_BYTES, REKEY_WINDOW

IGNORE, UNIMPLEMENTED, DEBUG = transport.MSG_IGNORE, transport.MSG_UNIMPLEMENTED, transport.MSG_DEBUG
KEXINIT, NEWKEYS, ECDH_INIT, ECDH_REPLY = 20, 21, 30, 31
SUCCESS = 52


def the_end(world: World) -> str:
    (bye,) = world.audit.of("disconnect")
    return str(bye["reason"])


NOISE = {IGNORE: common.NS(b"x"), UNIMPLEMENTED: struct.pack(">L", 0), DEBUG: b"\0" + common.NS(b"m") + common.NS(b"")}


# -- the initial key exchange, strict --------------------------------------------------------


@pytest.mark.parametrize("message", [IGNORE, UNIMPLEMENTED, DEBUG])
@pytest.mark.parametrize("where", ["after_kexinit", "before_newkeys"])
def test_strict_kex_ends_the_connection_at_any_message_in_the_initial_exchange(
    world: World, message: int, where: str
) -> None:
    conn = connect(world.factory, world.clock, client_factory=scripted(**{where: once(send(message, NOISE[message]))}))
    assert conn.disconnected
    assert the_end(world) == f"strict KEX violation: message {message} during the initial key exchange"
    assert world.audit.of("auth") == []


@pytest.mark.parametrize("message", [IGNORE, DEBUG])
def test_without_strict_kex_the_same_messages_are_tolerated_as_rfc_4253_allows(world: World, message: int) -> None:
    conn = connect(
        world.factory,
        world.clock,
        client_factory=scripted(strict=False, before_newkeys=once(send(message, NOISE[message]))),
    )
    assert not conn.disconnected and conn.login(b"admin", ed25519_key()) == SUCCESS


@pytest.mark.parametrize("strict", [True, False])
def test_newkeys_twice_ends_the_connection(world: World, strict: bool) -> None:
    conn = connect(world.factory, world.clock, client_factory=scripted(strict, after_newkeys=once(send(NEWKEYS))))
    assert conn.disconnected
    assert the_end(world) == "NEWKEYS before the key exchange"


def test_a_second_kexinit_or_ecdh_init_in_the_initial_strict_exchange_ends_it(world: World) -> None:
    conn = connect(
        world.factory,
        world.clock,
        client_factory=scripted(after_kexinit=once(lambda c: force_send(c, KEXINIT, c.ourKexInitPayload[1:]))),
    )
    assert conn.disconnected and the_end(world).startswith("strict KEX violation: ")
    w2 = make_world(world.root.parent / "2")
    conn = connect(
        w2.factory,
        w2.clock,
        client_factory=scripted(before_newkeys=once(lambda c: c.sendPacket(ECDH_INIT, ecdh_init(c)))),
    )
    assert conn.disconnected
    assert the_end(w2) == "strict KEX violation: message 30 out of order in the initial key exchange"
    assert [m for m, _ in conn.client.received].count(ECDH_REPLY) == 1  # no second signature made


def test_a_second_ecdh_init_without_strict_kex_gets_unimplemented_and_no_second_signature(world: World) -> None:
    conn = connect(
        world.factory,
        world.clock,
        client_factory=scripted(strict=False, before_newkeys=once(lambda c: c.sendPacket(ECDH_INIT, ecdh_init(c)))),
    )
    assert not conn.disconnected
    received = [m for m, _ in conn.client.received]
    assert received.count(ECDH_REPLY) == 1 and UNIMPLEMENTED in received
    assert conn.login(b"admin", ed25519_key()) == SUCCESS


# -- Terrapin (CVE-2023-48795): prefix truncation by an attacker on the wire -----------------


def test_terrapin_injection_and_deletion_fails_against_strict_kex(world: World) -> None:
    """The attack: inject an IGNORE before NEWKEYS (the server's incoming sequence number moves
    on by one), then delete the client's first encrypted packet. Strict KEX stops it at the
    injection."""
    conn = connect(
        world.factory,
        world.clock,
        client_factory=scripted(before_newkeys=once(lambda c: injected(c, IGNORE, b"\0\0\0\0"))),
    )
    assert conn.disconnected and the_end(world).startswith("strict KEX violation: message 2")


def test_deleting_the_first_encrypted_packet_alone_breaks_the_mac(world: World) -> None:
    """Without the injection (which strict KEX refuses), nothing can realign the sequence numbers,
    which restart at 0 after NEWKEYS: the next packet fails its MAC."""
    conn = connect(world.factory, world.clock, client_factory=scripted())
    assert conn.client.strict_kex and conn.server.incomingPacketSequence == 0
    dropped(conn.client, IGNORE, common.NS(b"deleted by the attacker"))
    conn.start_auth(b"admin")  # SERVICE_REQUEST
    assert conn.disconnected
    # chacha20-poly1305 decrypts the length with the sequence number: it comes out as garbage
    # ("bad packet length", "packet larger than ..."); with AES-GCM or EtM, the MAC fails.
    assert the_end(world).startswith("protocol error: ")
    assert transport.MSG_SERVICE_ACCEPT not in [m for m, _ in conn.client.received]


def test_without_strict_kex_the_truncation_goes_unnoticed_as_the_readme_warns(world: World) -> None:
    """Why the README says older clients (OpenSSH <= 9.5) cannot be protected by the server alone:
    with chacha20-poly1305 and no strict KEX, the same attack silently removes a packet. If this
    test ever fails, the server found a way to protect them: update the README."""
    conn = connect(
        world.factory,
        world.clock,
        client_factory=scripted(strict=False, before_newkeys=once(lambda c: injected(c, IGNORE, b"\0\0\0\0"))),
    )
    assert conn.server.nextEncryptions.inCipType == b"chacha20-poly1305@openssh.com"
    assert conn.server.incomingPacketSequence == conn.client.outgoingPacketSequence + 1
    dropped(conn.client, IGNORE, common.NS(b"deleted by the attacker"))
    assert conn.login(b"admin", ed25519_key()) == SUCCESS  # SERVICE_REQUEST onwards: all accepted
    assert (transport.MSG_SERVICE_ACCEPT, common.NS(b"ssh-userauth")) in conn.client.received


# -- later key exchanges (rekeys): as sshd ---------------------------------------------------


def logged_in(world: World, factory: ClientFactory | None = None) -> Connection:
    conn = connect(world.factory, world.clock, client_factory=factory or scripted())
    assert conn.login(b"admin", ed25519_key()) == SUCCESS
    return conn


def works(conn: Connection) -> bool:
    chan = conn.open_session()
    conn.exec(chan, b"lastlog -n 1")
    conn.flush()
    return (chan.exit_status, bytes(chan.out)) == (0, b"line 20\n")


@pytest.mark.parametrize("message", [IGNORE, DEBUG])
def test_ignore_and_debug_during_a_rekey_are_fine(world: World, message: int) -> None:
    def rekey_only(client: ScriptedClient) -> None:
        if client.kex_count >= 1:
            client.sendPacket(message, NOISE[message])

    conn = logged_in(world, scripted(before_newkeys=rekey_only))
    conn.client.sendKexInit()
    conn.flush()
    assert conn.server.kex_count == 2 and works(conn)


def test_an_unsolicited_ecdh_init_gets_unimplemented_and_changes_nothing(world: World) -> None:
    """Stock Conch would sign a new exchange hash and switch its outgoing keys on the spot."""
    conn = logged_in(world)
    client = conn.client
    assert isinstance(client, ScriptedClient)
    with capturedLogs() as events:
        for _ in range(3):
            client.sendPacket(ECDH_INIT, ecdh_init(client))
            seq = client.outgoingPacketSequence - 1
            conn.flush()
            assert client.received[-1] == (UNIMPLEMENTED, struct.pack(">L", seq))
    assert [m for m, _ in client.received].count(ECDH_REPLY) == 1  # only the initial exchange's
    assert conn.server.kex_count == 1 and works(conn)
    lines = [formatEvent(e) for e in events if "out of order" in formatEvent(e)]
    assert len(lines) == 1 and lines[0].startswith("Key-exchange message 30 out of order from 10.0.0.1:40000")


def test_newkeys_during_a_rekey_the_server_started_ends_the_connection(world: World) -> None:
    conn = logged_in(world)
    conn.server.sendKexInit()  # the server renews the keys; the client answers NEWKEYS at once
    force_send(conn.client, NEWKEYS)
    conn.flush()
    assert conn.disconnected and the_end(world) == "NEWKEYS before the key exchange"


def test_newkeys_before_ecdh_init_in_a_rekey_ends_the_connection(world: World) -> None:
    conn = logged_in(world, scripted(after_kexinit=lambda c: force_send(c, NEWKEYS) if c.kex_count else None))
    conn.client.sendKexInit()
    conn.flush()
    assert conn.disconnected and the_end(world) == "NEWKEYS before the key exchange"


# -- a client that rekeys without pause ------------------------------------------------------


def storm(rekeys: int) -> Callable[[ScriptedClient], None]:
    """on_new_keys hook: start another key exchange as soon as one ends, `rekeys` times."""

    def again(client: ScriptedClient) -> None:
        if client.kex_count <= rekeys:
            client.sendKexInit()

    return again


def test_a_rekey_storm_is_cut_off_and_other_clients_are_unaffected(world: World) -> None:
    bystander = logged_in(world)
    assert works(bystander)
    stormy = logged_in(world)
    assert isinstance(stormy.client, ScriptedClient)
    stormy.client.on_new_keys = storm(1000)
    with capturedLogs():
        stormy.client.sendKexInit()
        stormy.flush()
    assert stormy.disconnected
    assert stormy.server.kex_count == REKEY_BURST + 1  # the initial exchange and REKEY_BURST rekeys
    assert stormy.factory.disconnect_reason == (
        transport.DISCONNECT_PROTOCOL_ERROR,
        b"too many key exchanges (more than %d in %d s)" % (REKEY_BURST, REKEY_WINDOW),
    )
    assert world.audit.of("disconnect")[-1]["reason"] == f"too many key exchanges (more than {REKEY_BURST} in 60 s)"
    assert works(bystander) and not bystander.disconnected


def test_the_rekey_limits_are_the_figures_the_readme_states() -> None:
    """The tests around this one use the constants; README's Rekeying bullet states the numbers."""
    assert (REKEY_BURST, REKEY_WINDOW, REKEY_FREE_BYTES) == (10, 60.0, 8 * 1024)


def test_rekeys_spread_out_in_time_or_after_traffic_are_never_cut_off(tmp_path: Path) -> None:
    w = make_world(tmp_path)
    conn = logged_in(w)
    spacing = REKEY_WINDOW / REKEY_BURST + 0.5
    for _ in range(2 * REKEY_BURST):
        w.clock.advance(spacing)
        conn.client.sendKexInit()
        conn.flush()
    assert not conn.disconnected and conn.server.kex_count == 2 * REKEY_BURST + 1
    lines = REKEY_FREE_BYTES // 1024 + 1
    w.log_file.write_bytes((b"z" * 1023 + b"\n") * lines)
    for _ in range(REKEY_BURST + 2):  # each after 1 MiB of output: a client's RekeyLimit at work
        chan = conn.open_session()
        conn.exec(chan, b"lastlog -n %d" % lines)
        conn.flush()
        assert chan.exit_status == 0
        conn.client.sendKexInit()
        conn.flush()
    assert not conn.disconnected and conn.server.kex_count == 3 * REKEY_BURST + 3


def test_a_second_kexinit_during_a_rekey_gets_unimplemented_and_the_rekey_completes(world: World) -> None:
    def twice(client: ScriptedClient) -> None:
        if client.kex_count:  # a rekey: send the same KEXINIT again, out of turn
            force_send(client, KEXINIT, client.ourKexInitPayload[1:])

    conn = logged_in(world, scripted(after_kexinit=twice))
    conn.client.sendKexInit()
    conn.flush()
    assert not conn.disconnected and conn.server.kex_count == 2
    assert UNIMPLEMENTED in [m for m, _ in conn.client.received]
    assert works(conn)
