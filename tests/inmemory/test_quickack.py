"""When the server re-arms TCP_QUICKACK (an immediate ACK of what it has read, so that a client's
Nagle-held next packet is not stalled by the 40 ms delayed-ACK timer): only after a read that the
same turn answers with nothing (the client's version line, KEXINIT and NEWKEYS, whose answers went
out before; a command still running), never after one it answers (the reply carries the ACK: the
key-exchange reply does) or one that closes the connection."""

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


def test_key_exchange_reads_arm_once_handled_unless_the_key_exchange_reply_answers_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[object] = []
    received = ServerTransport.dataReceived
    dispatch = ServerTransport.dispatchMessage

    def reading(self: ServerTransport, data: bytes) -> None:
        order.append("read")
        received(self, data)
        order.append("handled")

    def dispatching(self: ServerTransport, messageNum: int, payload: bytes) -> None:
        if not self._first_kex_done:
            order.append(messageNum)
        dispatch(self, messageNum, payload)

    monkeypatch.setattr(ServerTransport, "dataReceived", reading)
    monkeypatch.setattr(ServerTransport, "dispatchMessage", dispatching)
    monkeypatch.setattr(ServerTransport, "_quickack", staticmethod(lambda: order.append("arm")))
    world = make_world(tmp_path)
    world.connect()
    reads: list[list[object]] = []  # each read: the key-exchange messages it brought, and "arm" if armed
    for item in order:
        if item == "read":
            reads.append([])
        elif item != "handled":
            reads[-1].append(item)
    kex = [r for r in reads if any(isinstance(m, int) for m in r)]
    assert [m for r in kex for m in r if m != "arm"][:3] == [20, 30, 21]  # KEXINIT, KEX_ECDH_INIT, NEWKEYS
    for r in kex:
        answered = 30 in r  # the key-exchange reply went out in the read's turn
        assert r.count("arm") == (0 if answered else 1), r
        assert "arm" not in r[:-1]  # armed once handled, not before


def test_after_the_key_exchange_only_reads_answered_by_nothing_arm(
    tmp_path: Path, events: list[tuple[str, bool, int]]
) -> None:
    runner = ManualRunner()
    world = make_world(tmp_path, runner=runner)
    conn = world.login()
    chan = conn.open_session()
    # (the client's NEWKEYS arms once handled: the key exchange is done by then)
    after_kex = events[events.index(next(e for e in events if e[:2] == ("read", True))) :]
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
