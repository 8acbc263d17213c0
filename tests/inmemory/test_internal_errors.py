"""The transport's catch-all over the whole in-memory stack: a packet that hits a bug of ours is
logged with its traceback (once per place) and ends only that connection, without counting
against the client's source; a malformed packet is still a protocol error that does count."""

from __future__ import annotations

import struct

import pytest
from support.world import World
from twisted.conch.ssh import transport
from twisted.logger import LogLevel, capturedLogs

from conchcmd.server.admission import STRIKES_BEFORE_PENALTY, source_of
from conchcmd.server.transport import ServerTransport, is_parse_error

PEER = "10.0.0.7"


def simulated_bug(self: ServerTransport, packet: bytes) -> None:
    raise KeyError("simulated bug")


def test_a_bug_is_logged_once_with_its_traceback_and_not_held_against_the_client(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ServerTransport, "ssh_SERVICE_REQUEST", simulated_bug)
    with capturedLogs() as events:
        for _ in range(STRIKES_BEFORE_PENALTY + 2):
            conn = world.connect(peer=PEER)
            conn.start_auth(b"admin")  # SERVICE_REQUEST
            assert conn.disconnected
            assert conn.factory.disconnect_reason == (transport.DISCONNECT_BY_APPLICATION, b"internal error")
    bugs = [e for e in events if "Internal error" in e.get("log_format", "")]
    assert len(bugs) == STRIKES_BEFORE_PENALTY + 2
    first, *again = bugs
    assert first["log_level"] == LogLevel.critical  # log.failure: with the traceback
    assert "simulated_bug" in first["log_failure"].getTraceback()
    assert all("traceback logged before" in e["log_format"] and "log_failure" not in e for e in again)
    reasons = [r["reason"] for r in world.audit.of("disconnect")]
    assert reasons == ["internal error: KeyError: 'simulated bug'"] * (STRIKES_BEFORE_PENALTY + 2)
    assert world.audit.of("penalty") == []  # our bug, not the client's doing
    assert world.factory.admissions.sources.refusal(source_of(PEER), PEER) is None


def test_a_truncated_packet_is_a_protocol_error_that_counts(world: World) -> None:
    """Conch reads DEBUG's `always_display` with ord(packet[0:1]): an empty DEBUG raises TypeError
    in Conch, which is the client's malformed packet, not a bug."""
    with capturedLogs() as events:
        for _ in range(STRIKES_BEFORE_PENALTY):
            conn = world.connect(peer=PEER)
            conn.client.sendPacket(transport.MSG_DEBUG, b"")
            conn.flush()
            assert conn.disconnected
            assert conn.factory.disconnect_reason == (transport.DISCONNECT_PROTOCOL_ERROR, b"protocol error")
    assert not [e for e in events if "log_failure" in e]  # no traceback for the client's garbage
    reasons = [r["reason"] for r in world.audit.of("disconnect")]
    assert all(r.startswith("protocol error: TypeError: ord() expected") for r in reasons), reasons
    assert [p["source"] for p in world.audit.of("penalty")] == [PEER]
    assert world.factory.admissions.sources.refusal(source_of(PEER), PEER) is not None


def test_parse_errors_and_bugs_are_told_apart() -> None:
    def raised(fn: object) -> Exception:
        try:
            fn()  # type: ignore[operator]
        except Exception as e:
            return e
        raise AssertionError("did not raise")

    assert is_parse_error(raised(lambda: struct.unpack(">L", b"\0")))
    assert is_parse_error(raised(lambda: b"\xff".decode()))
    assert not is_parse_error(raised(lambda: {}["x"]))
    assert not is_parse_error(raised(lambda: None.attribute))  # type: ignore[attr-defined]
    assert not is_parse_error(raised(lambda: ord(b"")))  # ord() of nothing, but not in Conch: ours
