"""When the server re-arms TCP_QUICKACK (an immediate ACK of what it has read, so that a client's
Nagle-held next packet is not stalled by the 40 ms delayed-ACK timer): before handling every read
of the first key exchange, where the client pipelines; after it, only after a read that the same
turn answers with nothing (a command still running), never after one it answers (the reply
carries the ACK) or one that closes the connection."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.runners import ManualRunner
from support.world import make_world

from conchcmd.server.transport import ServerTransport


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool, int]]:
    """(kind, key exchange done, packets handled so far) for each read the server takes ("read")
    and each re-arm of TCP_QUICKACK ("arm"), in order (a recorder stands in for the socket's
    setsockopt, which an in-memory transport has not)."""
    seen: list[tuple[str, bool, int]] = []
    current: list[ServerTransport] = []
    received = ServerTransport.dataReceived
    dispatch = ServerTransport.dispatchMessage
    handled = [0]

    def reading(self: ServerTransport, data: bytes) -> None:
        current[:] = [self]
        seen.append(("read", self._first_kex_done, handled[0]))
        received(self, data)

    def dispatching(self: ServerTransport, messageNum: int, payload: bytes) -> None:
        handled[0] += 1
        dispatch(self, messageNum, payload)

    def arm() -> None:
        seen.append(("arm", current[0]._first_kex_done, handled[0]))

    monkeypatch.setattr(ServerTransport, "dataReceived", reading)
    monkeypatch.setattr(ServerTransport, "dispatchMessage", dispatching)
    monkeypatch.setattr(ServerTransport, "_quickack", staticmethod(arm))
    return seen


def test_every_read_of_the_first_key_exchange_arms_before_it_is_handled(
    tmp_path: Path, events: list[tuple[str, bool, int]]
) -> None:
    world = make_world(tmp_path)
    world.connect()
    kex = [e for e in events if not e[1]]
    assert len(kex) >= 4 and len(kex) % 2 == 0
    for read, arm in zip(kex[::2], kex[1::2], strict=True):
        assert (read[0], arm[0]) == ("read", "arm")
        assert arm[2] == read[2]  # armed before the read's packets were handled


def test_after_the_key_exchange_only_reads_answered_by_nothing_arm(
    tmp_path: Path, events: list[tuple[str, bool, int]]
) -> None:
    runner = ManualRunner()
    world = make_world(tmp_path, runner=runner)
    conn = world.login()
    chan = conn.open_session()
    after_kex = [e for e in events if e[1]]
    # userauth and the channel open: each read is answered in its turn, no re-arm
    assert [e[0] for e in after_kex] == ["read"] * len(after_kex)
    assert after_kex
    del events[:]
    sent = conn.server.bytes_sent
    replied = conn.exec(chan, b"comphash " + str(world.root / "hello.txt").encode())
    # the exec request: the command is still running, nothing answers it in this turn
    assert not replied.called and conn.server.bytes_sent == sent
    assert [e[:2] for e in events] == [("read", True), ("arm", True)]
    assert events[1][2] > events[0][2]  # once the request was handled
    del events[:]
    runner.run_all()
    conn.flush()
    assert replied.called
    del events[:]
    conn.client.loseConnection()  # the client's DISCONNECT: the server closes, no re-arm
    conn.flush()
    assert [e[0] for e in events] == ["read"]
