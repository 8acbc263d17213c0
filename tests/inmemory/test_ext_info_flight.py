"""EXT_INFO (RFC 8308 2.4) leaves right after the server's first NEWKEYS, in the flight that
answers the client's key-exchange INIT (as sshd sends it), under the new keys and, with strict KEX,
the restarted sequence numbers; the client's NEWKEYS then gets no answer of its own, and rekeys
send no EXT_INFO."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from support.keys import ed25519_key
from support.sshclient import ClientFactory, ClientTransport, connect
from support.world import World

from conchcmd.policy.auth import USER_SIGNATURE_ALGORITHMS
from conchcmd.server.transport import ServerTransport
from conchcmd.wire import framing

KEXINIT, NEWKEYS, ECDH_INIT, ECDH_REPLY, EXT_INFO = 20, 21, 30, 31, 7
SERVICE_REQUEST, SERVICE_ACCEPT = 5, 6


@pytest.fixture
def flights(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[list[int], list[int]]]]:
    """Per read of the server: the client messages it brought, and the messages the server sent
    while handling it (its flight), by message number."""
    recorded: list[tuple[list[int], list[int]]] = []
    current: list[list[int]] = []  # the flight of the read being handled, if any
    seal = framing.pad
    dispatch = ServerTransport.dispatchMessage
    received = ServerTransport.dataReceived

    def sealing(payload: bytes, codec: Any, take: Any) -> bytes:
        if current:
            current[0].append(payload[0])
        return seal(payload, codec, take)

    def dispatching(self: ServerTransport, messageNum: int, payload: bytes) -> None:
        if recorded:
            recorded[-1][0].append(messageNum)
        dispatch(self, messageNum, payload)

    def reading(self: ServerTransport, data: bytes) -> None:
        recorded.append(([], []))
        current.append(recorded[-1][1])
        try:
            received(self, data)
        finally:
            current.pop()

    monkeypatch.setattr(framing, "pad", sealing)
    monkeypatch.setattr(ServerTransport, "dispatchMessage", dispatching)
    monkeypatch.setattr(ServerTransport, "dataReceived", reading)
    yield recorded


def answer_to(flights: list[tuple[list[int], list[int]]], message: int) -> list[int]:
    (sent,) = [sent for got, sent in flights if message in got]
    return sent


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("cipher", [b"chacha20-poly1305@openssh.com", b"aes256-gcm@openssh.com", b"aes128-ctr"])
def test_ext_info_leaves_with_the_key_exchange_reply(
    world: World, flights: list[tuple[list[int], list[int]]], strict: bool, cipher: bytes
) -> None:
    client = ClientFactory()
    client.offer_strict_kex = strict
    client.supportedCiphers = [cipher]
    conn = connect(world.factory, world.clock, client_factory=client)
    assert answer_to(flights, ECDH_INIT) == [ECDH_REPLY, NEWKEYS, EXT_INFO]
    assert answer_to(flights, NEWKEYS) == []  # (Conch held EXT_INFO until here)
    # The client read it with the new keys (and, strict, sequence number 0): login works.
    assert conn.client.peerExtensions == {b"server-sig-algs": b",".join(USER_SIGNATURE_ALGORITHMS)}
    assert conn.client.strict_kex is strict and conn.server.strict_kex is strict
    assert conn.login(b"admin", ed25519_key()) == 52
    assert answer_to(flights, SERVICE_REQUEST) == [SERVICE_ACCEPT]


def test_a_rekey_sends_no_ext_info(world: World, flights: list[tuple[list[int], list[int]]]) -> None:
    conn = world.login()
    before = len(flights)
    conn.client.sendKexInit()
    conn.flush()
    assert conn.server.kex_count == 2 and not conn.disconnected
    sent = [m for _, flight in flights[before:] for m in flight]
    assert EXT_INFO not in sent and sent.count(NEWKEYS) == 1


class NoExtInfoClient(ClientTransport):
    """A client whose KEXINIT does not ask for EXT_INFO (no ext-info-c)."""

    def kex_markers(self) -> list[bytes]:
        return [m for m in super().kex_markers() if m != framing.EXT_INFO_CLIENT]


def test_a_client_without_ext_info_c_gets_none(world: World, flights: list[tuple[list[int], list[int]]]) -> None:
    client = ClientFactory()
    client.protocol = NoExtInfoClient  # type: ignore[assignment]
    conn = connect(world.factory, world.clock, client_factory=client)
    assert answer_to(flights, ECDH_INIT) == [ECDH_REPLY, NEWKEYS]
    assert answer_to(flights, NEWKEYS) == []
    assert conn.client.peerExtensions == {}
    assert conn.login(b"admin", ed25519_key()) == 52
