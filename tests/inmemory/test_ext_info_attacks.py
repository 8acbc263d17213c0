"""Attacks on the first key exchange's end now that EXT_INFO leaves with the key-exchange reply
(RFC 8308 2.4), and on the end of later ones: messages between our NEWKEYS and the client's,
ext-info-c where it means nothing, deleted packets, sequence numbers under every cipher and MAC,
and output held behind a rekey whose flush starts the next one."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from support.flights import Flights, answer_to
from support.keys import ed25519_key
from support.scripted import KexHolding, ScriptedClient, force_send, once, scripted
from support.sshclient import AuthClient, ClientConnection, Connection, connect
from support.world import World, make_world
from twisted.conch.ssh import common, transport
from twisted.logger import capturedLogs

from conchcmd.core.config import CIPHERS, MACS, OPTIONAL_MACS, AlgorithmsConfig
from conchcmd.policy.auth import USER_SIGNATURE_ALGORITHMS
from conchcmd.server.transport import KEX_OUTPUT_BUDGET, KEX_TIMEOUT, ServerTransport
from conchcmd.wire import framing

SUCCESS = 52
DISCONNECT, IGNORE, UNIMPLEMENTED, SERVICE_REQUEST, SERVICE_ACCEPT, EXT_INFO = 1, 2, 3, 5, 6, 7
KEXINIT, NEWKEYS, ECDH_REPLY = 20, 21, 31
SIG_ALGS = {b"server-sig-algs": b",".join(USER_SIGNATURE_ALGORITHMS)}
#: Every cipher, each non-AEAD one with every MAC (encrypt-and-MAC ones named in the configuration).
SUITES = [(c, None) for c in CIPHERS if "-ctr" not in c] + [
    (c, m) for c in CIPHERS if "-ctr" in c for m in (*MACS, *OPTIONAL_MACS)
]


def suite_world(tmp_path: Path, mac: str | None) -> World:
    if mac in OPTIONAL_MACS:
        return make_world(tmp_path, algorithms=AlgorithmsConfig(macs=(mac,)))
    return make_world(tmp_path)


def suite_client(cipher: str, mac: str | None, strict: bool, **hooks: object) -> object:
    factory = scripted(strict, **hooks)  # type: ignore[arg-type]
    factory.supportedCiphers = [cipher.encode()]
    factory.supportedMACs = [mac.encode()] if mac else None
    return factory


def names(client: object) -> list[int]:
    assert isinstance(client, ScriptedClient)
    return [m for m, _ in client.received]


def holding(w: World) -> tuple[Connection, KexHolding]:
    factory = scripted()
    factory.protocol = KexHolding  # type: ignore[assignment]
    conn = w.connect(client=factory)
    client = conn.client
    assert isinstance(client, KexHolding)
    client.held = []
    assert conn.login(b"admin", ed25519_key()) == SUCCESS
    return conn, client


def log_lines(lines: int, width: int) -> bytes:
    """A log of `lines` numbered lines of `width` bytes each (lastlog's file in these tests)."""
    return b"".join(b"%06d %s\n" % (i, b"y" * width) for i in range(lines))


def lastlog_behind_a_rekey(tmp_path: Path, lines: int, width: int) -> tuple[World, Connection, KexHolding, Any]:
    """A logged-in client that holds back the KEXINIT of a rekey we start, then runs `lastlog -n
    lines` of a log of `lines` lines of `width` bytes: all its output is held behind the rekey."""
    w = make_world(tmp_path, log_text=log_lines(lines, width))
    conn, client = holding(w)
    chan = conn.open_session(window=64 * 1024 * 1024)
    client.hold = True
    conn.server.sendKexInit()  # the rekey: the client does not answer yet
    conn.flush()
    conn.exec(chan, b"lastlog -n %d" % lines)
    conn.flush()
    return w, conn, client, chan


def test_a_rekey_started_by_the_flush_of_held_output_still_has_a_time_limit(tmp_path: Path) -> None:
    """Output held behind a rekey goes out at the client's NEWKEYS; if it passes the traffic
    limit, the flush itself starts the next rekey. That one must end within KEX_TIMEOUT too: the
    timer of the rekey just finished was still set while the flush ran, so the new one got none,
    and a client that never answered its KEXINIT kept the connection and its held output."""
    w, conn, client, chan = lastlog_behind_a_rekey(tmp_path, 3000, 300)  # ~0.9 MB behind rekey 1
    assert bytes(chan.out) == b"" and len(conn.server.held_messages()) > 10
    conn.server.rekey_bytes = 64 * 1024  # the flush passes the traffic limit
    client.release(then_hold=True)  # rekey 1 ends; the client holds the KEXINIT of rekey 2
    conn.flush()
    assert conn.server.kex_count == 2 and not conn.server.kex_idle()  # rekey 2 started by the flush
    with capturedLogs():
        w.clock.advance(KEX_TIMEOUT + 1)
        conn.flush()
    assert conn.factory.disconnect_reason == (transport.DISCONNECT_KEY_EXCHANGE_FAILED, b"key exchange timed out")


# -- sequence numbers after EXT_INFO, under every cipher and MAC -----------------------------


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize(("cipher", "mac"), SUITES)
def test_after_ext_info_every_suite_keeps_the_sequence_numbers(
    tmp_path: Path, cipher: str, mac: str | None, strict: bool
) -> None:
    """EXT_INFO is the first packet under the new keys (strict: sequence number 0), sent before
    the client's NEWKEYS: the client reads it, then the next packets, with every cipher and MAC."""
    w = suite_world(tmp_path, mac)
    conn = connect(w.factory, w.clock, client_factory=suite_client(cipher, mac, strict))  # type: ignore[arg-type]
    server = conn.server
    assert server.nextEncryptions.outCipType == cipher.encode() and server.strict_kex is strict
    assert server.nextEncryptions.outMACType == (mac or cipher).encode()
    assert names(conn.client)[:4] == [KEXINIT, ECDH_REPLY, NEWKEYS, EXT_INFO]
    assert conn.client.peerExtensions == SIG_ALGS
    assert conn.login(b"admin", ed25519_key()) == SUCCESS
    assert SERVICE_ACCEPT in names(conn.client)


def test_an_ext_info_deleted_on_the_wire_breaks_the_next_packet(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """EXT_INFO takes its sequence number like any packet: an attacker who removes it (the
    Terrapin deletion, without the injection that strict KEX refuses) leaves the client unable
    to read the next one."""
    sent = ServerTransport.send_after_newkeys

    def deleted(self: ServerTransport, messageType: int, payload: bytes) -> None:
        write, self.transport.write = self.transport.write, lambda data: None
        try:
            sent(self, messageType, payload)
        finally:
            self.transport.write = write

    monkeypatch.setattr(ServerTransport, "send_after_newkeys", deleted)
    conn = connect(world.factory, world.clock, client_factory=scripted())
    assert EXT_INFO not in names(conn.client) and conn.client.peerExtensions == {}
    with capturedLogs():
        conn.start_auth(b"admin")
    assert conn.disconnected and SERVICE_ACCEPT not in names(conn.client)


# -- what a client sends between our NEWKEYS and its own --------------------------------------

#: (message, payload, answer without strict KEX: UNIMPLEMENTED, None (ignored) or the disconnect text)
BETWEEN = [
    (KEXINIT, b"", UNIMPLEMENTED),
    (SERVICE_REQUEST, common.NS(b"ssh-userauth"), UNIMPLEMENTED),
    (EXT_INFO, struct.pack(">L", 0), UNIMPLEMENTED),
    (8, b"", UNIMPLEMENTED),
    (IGNORE, common.NS(b"x"), None),
    (50, common.NS(b"admin"), "protocol error: rcvd type 50"),
    (90, common.NS(b"session"), "protocol error: rcvd type 90"),
]


@pytest.mark.parametrize(("message", "payload", "answer"), BETWEEN)
@pytest.mark.parametrize(("cipher", "mac"), [("chacha20-poly1305@openssh.com", None), ("aes128-ctr", MACS[0])])
def test_a_message_between_our_newkeys_and_the_client_s_is_answered_after_ext_info(
    tmp_path: Path, cipher: str, mac: str | None, message: int, payload: bytes, answer: int | str | None
) -> None:
    """Without strict KEX: UNIMPLEMENTED (or a disconnect) under the new keys, after EXT_INFO and
    with its sequence numbers: the client reads it and, if still connected, logs in."""
    w = make_world(tmp_path)
    if message == KEXINIT:
        hook = once(lambda c: force_send(c, KEXINIT, c.ourKexInitPayload[1:]))
    else:
        hook = once(lambda c: force_send(c, message, payload))
    with capturedLogs():
        conn = connect(w.factory, w.clock, client_factory=suite_client(cipher, mac, False, before_newkeys=hook))  # type: ignore[arg-type]
    got = names(conn.client)
    assert got[:4] == [KEXINIT, ECDH_REPLY, NEWKEYS, EXT_INFO]
    if answer is None:
        assert got[4:] == [] and conn.login(b"admin", ed25519_key()) == SUCCESS
    elif answer == UNIMPLEMENTED:
        assert isinstance(conn.client, ScriptedClient)
        # the sequence number of the client's packet: its third, after KEXINIT and ECDH_INIT
        assert got[4:] == [UNIMPLEMENTED] and conn.client.received[4][1] == struct.pack(">L", 2)
        assert conn.login(b"admin", ed25519_key()) == SUCCESS
    else:
        assert got[4:] == [DISCONNECT] and conn.factory.disconnect_reason == (2, str(answer).encode())


@pytest.mark.parametrize(("message", "payload", "answer"), BETWEEN)
def test_with_strict_kex_any_message_there_ends_it_with_a_disconnect_the_client_reads(
    world: World, message: int, payload: bytes, answer: object
) -> None:
    """The DISCONNECT follows EXT_INFO under the new keys, at sequence number 1: the client reads
    why (a wrong sequence number would have made it a MAC error on the client's side)."""
    if message == KEXINIT:
        hook = once(lambda c: force_send(c, KEXINIT, c.ourKexInitPayload[1:]))
    else:
        hook = once(lambda c: force_send(c, message, payload))
    with capturedLogs():
        conn = connect(world.factory, world.clock, client_factory=scripted(before_newkeys=hook))
    assert names(conn.client) == [KEXINIT, ECDH_REPLY, NEWKEYS, EXT_INFO, DISCONNECT]
    reason = conn.factory.disconnect_reason
    assert reason is not None and reason[0] == 2 and reason[1].startswith(b"strict KEX violation: message %d" % message)
    assert world.audit.of("auth") == []


# -- ext-info-c where it means nothing, or missing -------------------------------------------


class MarkersOnRekeys(ScriptedClient):
    """A client that lists its markers (ext-info-c, strict KEX) in every KEXINIT, or only in
    those of rekeys (`first_plain`): RFC 8308 2.1 says the server looks at the first only."""

    first_plain = False

    def connectionMade(self) -> None:
        self.first_plain = getattr(self.factory, "first_plain", False)
        super().connectionMade()

    def kex_markers(self) -> list[bytes]:
        markers = super().kex_markers()
        return [] if self.first_plain and self.kex_count == 0 else markers

    def sendKexInit(self) -> None:
        done, self._first_kex_done = self._first_kex_done, False  # (markers only while False)
        try:
            super().sendKexInit()
        finally:
            self._first_kex_done = done


@pytest.mark.parametrize("first_plain", [False, True])
@pytest.mark.parametrize("who", ["client", "server"])
def test_ext_info_c_in_a_rekey_gets_no_ext_info(world: World, first_plain: bool, who: str) -> None:
    factory = scripted(strict=not first_plain)
    factory.protocol = MarkersOnRekeys  # type: ignore[assignment]
    factory.first_plain = first_plain  # type: ignore[attr-defined]
    conn = connect(world.factory, world.clock, client_factory=factory)
    client = conn.client
    assert isinstance(client, MarkersOnRekeys)
    assert conn.login(b"admin", ed25519_key()) == SUCCESS
    for _ in range(3):
        (client.sendKexInit if who == "client" else conn.server.sendKexInit)()
        conn.flush()
    assert conn.server.kex_count == 4 and not conn.disconnected
    assert names(client).count(EXT_INFO) == (0 if first_plain else 1)
    assert conn.server.strict_kex is not first_plain  # nor does a rekey's strict-KEX marker count
    chan = conn.open_session()
    conn.exec(chan, b"lastlog -n 1")
    conn.flush()
    assert (chan.exit_status, bytes(chan.out)) == (0, b"line 20\n")


class WithoutExtInfo(ScriptedClient):
    def kex_markers(self) -> list[bytes]:
        return [m for m in super().kex_markers() if m != framing.EXT_INFO_CLIENT]


@pytest.mark.parametrize("strict", [True, False])
def test_without_ext_info_c_the_first_packet_under_the_new_keys_is_the_next_answer(world: World, strict: bool) -> None:
    """No EXT_INFO: the sequence numbers are those of a flight without it (strict: SERVICE_ACCEPT
    is number 0)."""
    factory = scripted(strict)
    factory.protocol = WithoutExtInfo  # type: ignore[assignment]
    conn = connect(world.factory, world.clock, client_factory=factory)
    assert names(conn.client) == [KEXINIT, ECDH_REPLY, NEWKEYS] and conn.server.strict_kex is strict
    assert conn.login(b"admin", ed25519_key()) == SUCCESS
    assert names(conn.client)[3] == SERVICE_ACCEPT and conn.client.peerExtensions == {}


# -- pipelining ----------------------------------------------------------------------------


@pytest.mark.parametrize("client_ext_info", [False, True])
@pytest.mark.parametrize("strict", [True, False])
def test_newkeys_and_service_request_in_one_read_are_both_handled(
    world: World, flights: Flights, strict: bool, client_ext_info: bool
) -> None:
    """The client asks for ssh-userauth as soon as it has sent NEWKEYS (OpenSSH does), with its
    own EXT_INFO between them (we offer ext-info-s): all reach the server in one read, after our
    EXT_INFO left; the answer is SERVICE_ACCEPT alone."""
    service = ClientConnection()
    auth = AuthClient(b"admin", service)

    def pipelined(c: ScriptedClient) -> None:
        if client_ext_info:
            c.sendExtInfo([(b"no-flow-control", b"p")])
        c.requestService(auth)

    conn = connect(world.factory, world.clock, client_factory=scripted(strict, after_newkeys=once(pipelined)))
    got = [NEWKEYS, EXT_INFO, SERVICE_REQUEST] if client_ext_info else [NEWKEYS, SERVICE_REQUEST]
    assert (got, [SERVICE_ACCEPT]) in flights
    assert answer_to(flights, 30) == [ECDH_REPLY, NEWKEYS, EXT_INFO]
    assert names(conn.client) == [KEXINIT, ECDH_REPLY, NEWKEYS, EXT_INFO, SERVICE_ACCEPT]
    assert conn.server.peerExtensions == ({b"no-flow-control": b"p"} if client_ext_info else {})
    conn.conn, conn.auth = service, auth
    assert conn.login(b"admin", ed25519_key()) == SUCCESS


@pytest.mark.parametrize("strict", [True, False])
def test_ecdh_init_newkeys_and_service_request_sent_blind_get_no_service(world: World, strict: bool) -> None:
    """A client that sends its key-exchange INIT, NEWKEYS and SERVICE_REQUEST in one write, before
    it has seen the reply, cannot know the keys: the server answers the INIT once, takes NEWKEYS,
    and the packet after it, read with keys the client could not have, fails; no service starts."""

    def blind(c: ScriptedClient) -> None:
        force_send(c, 30, common.NS(X25519PrivateKey.generate().public_key().public_bytes_raw()))
        force_send(c, NEWKEYS)
        force_send(c, SERVICE_REQUEST, common.NS(b"ssh-userauth"))

    factory = scripted(strict, after_kexinit=once(blind))
    factory.supportedKeyExchanges = [b"curve25519-sha256"]  # type: ignore[attr-defined]
    with capturedLogs():
        conn = connect(world.factory, world.clock, client_factory=factory)
    assert conn.disconnected and conn.server.service is None
    assert names(conn.client).count(ECDH_REPLY) == 1
    (bye,) = world.audit.of("disconnect")
    assert str(bye["reason"]).startswith("protocol error: ")
    assert world.audit.of("auth") == []


# -- output held behind a rekey: after the client's NEWKEYS, never with ours -----------------


def test_output_held_by_a_rekey_leaves_after_the_client_s_newkeys_never_before(
    tmp_path: Path, flights: Flights
) -> None:
    """A rekey's reply flight is the key exchange alone (no EXT_INFO, no channel data: the
    send_after_newkeys path is the first exchange's only); what the rekey held back follows the
    client's NEWKEYS, in order, and nothing else left between."""
    _, conn, client, chan = lastlog_behind_a_rekey(tmp_path, 1000, 300)
    held = len(conn.server.held_messages())
    assert held > 10 and bytes(chan.out) == b""
    before = len(flights)
    client.release()
    conn.flush()
    assert conn.server.kex_count == 2 and conn.server.kex_idle()
    rekey = flights[before:]
    assert answer_to(rekey, 30) == [ECDH_REPLY, NEWKEYS]
    after = answer_to(rekey, NEWKEYS)
    assert len(after) >= held and set(after) <= {
        94,
        96,
        97,
        98,
        99,
    }  # the exec's SUCCESS, DATA, EOF, exit-status, CLOSE
    assert after[:2] == [99, 94] and chan.exit_status == 0 and bytes(chan.out) == log_lines(1000, 300)


@pytest.mark.parametrize("strict", [True, False])
def test_a_client_that_never_sends_its_newkeys_reads_the_grace_time_disconnect(world: World, strict: bool) -> None:
    """The login grace time ends a client stuck between our NEWKEYS and its own; the DISCONNECT
    follows EXT_INFO under the new keys and the client reads why."""

    def mute(c: ScriptedClient) -> None:
        c.transport.write = lambda data: None  # type: ignore[method-assign]  # its NEWKEYS never leaves

    conn = connect(world.factory, world.clock, client_factory=scripted(strict, before_newkeys=once(mute)))
    assert names(conn.client) == [KEXINIT, ECDH_REPLY, NEWKEYS, EXT_INFO] and not conn.disconnected
    with capturedLogs():
        world.clock.advance(world.config.limits.login_grace_time)
        conn.flush()
    assert names(conn.client)[4:] == [DISCONNECT]
    assert conn.factory.disconnect_reason == (
        transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE,
        b"login grace time exceeded",
    )


def test_output_held_behind_a_rekey_the_flush_started_stays_within_the_budget(tmp_path: Path) -> None:
    """The same flush: what it re-queues behind the new rekey counts against KEX_OUTPUT_BUDGET.
    The count used to be zeroed after the flush, so channels queued another budget's worth."""
    _, conn, client, chan = lastlog_behind_a_rekey(tmp_path, 4000, 1000)  # ~4 MB
    assert sum(len(p) for _, p in conn.server.held_messages()) >= KEX_OUTPUT_BUDGET
    conn.server.rekey_bytes = 64 * 1024
    client.release(then_hold=True)
    conn.flush()
    assert conn.server.kex_count == 2 and not conn.server.kex_idle()
    assert sum(len(p) for _, p in conn.server.held_messages()) < KEX_OUTPUT_BUDGET + 40 * 1024
    client.release()
    conn.flush()
    assert chan.exit_status == 0 and bytes(chan.out) == log_lines(4000, 1000)


def test_a_tiny_traffic_limit_starts_no_rekey_before_login_and_ext_info_stays_first(
    world: World, flights: Flights, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's own rekeys wait for authentication (as sshd): with a limit passed by every
    packet, the first exchange still ends with EXT_INFO alone after our NEWKEYS, and rekeys
    start only once logged in, where each ends before the next."""
    monkeypatch.setattr(ServerTransport, "rekey_bytes", 1)
    conn = connect(world.factory, world.clock, client_factory=scripted())
    assert answer_to(flights, 30) == [ECDH_REPLY, NEWKEYS, EXT_INFO] and answer_to(flights, NEWKEYS) == []
    assert conn.login(b"admin", ed25519_key()) == SUCCESS
    assert conn.server.kex_count == 1
    chan = conn.open_session()
    conn.exec(chan, b"lastlog -n 1")
    conn.flush()
    assert (chan.exit_status, bytes(chan.out)) == (0, b"line 20\n")
    assert conn.server.kex_count > 2 and names(conn.client).count(EXT_INFO) == 1 and not conn.disconnected
