"""EXT_INFO (RFC 8308 2.4) leaves right after the server's first NEWKEYS, in the flight that
answers the client's key-exchange INIT (as sshd sends it), under the new keys and, with strict KEX,
the restarted sequence numbers; the client's NEWKEYS then gets no answer of its own, and rekeys
send no EXT_INFO."""

from __future__ import annotations

import pytest
from support.flights import Flights, answer_to
from support.keys import ed25519_key
from support.sshclient import ClientFactory, ClientTransport, connect
from support.world import World

from conchcmd.policy.auth import USER_SIGNATURE_ALGORITHMS
from conchcmd.wire import framing

KEXINIT, NEWKEYS, ECDH_INIT, ECDH_REPLY, EXT_INFO = 20, 21, 30, 31, 7
SERVICE_REQUEST, SERVICE_ACCEPT = 5, 6


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("cipher", [b"chacha20-poly1305@openssh.com", b"aes256-gcm@openssh.com", b"aes128-ctr"])
def test_ext_info_leaves_with_the_key_exchange_reply(
    world: World, flights: Flights, strict: bool, cipher: bytes
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


def test_a_rekey_sends_no_ext_info(world: World, flights: Flights) -> None:
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


def test_a_client_without_ext_info_c_gets_none(world: World, flights: Flights) -> None:
    client = ClientFactory()
    client.protocol = NoExtInfoClient  # type: ignore[assignment]
    conn = connect(world.factory, world.clock, client_factory=client)
    assert answer_to(flights, ECDH_INIT) == [ECDH_REPLY, NEWKEYS]
    assert answer_to(flights, NEWKEYS) == []
    assert conn.client.peerExtensions == {}
    assert conn.login(b"admin", ed25519_key()) == 52
