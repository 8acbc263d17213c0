"""`penalty_exempt` over the whole in-memory SSH stack: real key exchange and failed public-key
logins from an exempt address never get it refused; the same failures from another address do."""

from __future__ import annotations

from pathlib import Path

from support.keys import ed25519_key
from support.world import World, make_world
from twisted.internet.address import IPv4Address

from conchcmd.core.config import LimitsConfig

FAILURE = 51


def fail_login(w: World, peer: str) -> None:
    conn = w.connect(peer=peer)
    assert conn.login(b"admin", ed25519_key(77)) == FAILURE
    conn.client.transport.loseConnection()
    conn.flush()


def admitted(w: World, peer: str) -> bool:
    return w.factory.buildProtocol(IPv4Address("TCP", peer, 5000)) is not None


def test_an_exempt_source_failing_repeatedly_is_never_refused(tmp_path: Path) -> None:
    w = make_world(tmp_path, limits=LimitsConfig(penalty_seconds=30, penalty_exempt=("10.0.9.0/24",)))
    for _ in range(12):  # four times what penalises any other address
        fail_login(w, "10.0.9.5")
        assert admitted(w, "10.0.9.5")
    assert w.login(peer="10.0.9.5") is not None
    for _ in range(3):
        fail_login(w, "10.0.0.5")  # not in the list: penalised as before
    assert not admitted(w, "10.0.0.5")
    assert [e["source"] for e in w.audit.of("penalty")] == ["10.0.0.5"]
    assert all(e["source"] != "10.0.9.5" for e in w.audit.of("refused"))
