"""The per-packet fast paths of the transport give what the slow paths they replace gave: the
dispatch ruling looked up by state (against the dispatch policy read for the phase each time), and
Conch's transport log lines (debug and info dropped, the rest as Conch's own Logger makes them)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.conch.ssh import transport
from twisted.logger import Logger, LogLevel, capturedLogs

from conchcmd.server.transport import ServerTransport
from conchcmd.wire.dispatch import Action, Phase, decide


class Recording(ServerTransport):
    """What dispatchMessage does with a message, recorded instead of done."""

    def __init__(self, acted: list[Any]):
        self.acted = acted

    def sendDisconnect(self, reason: int, desc: bytes | str) -> None:
        self.acted.append(("disconnect", reason, desc))

    def sendPacket(self, messageType: int, payload: bytes) -> None:
        self.acted.append(("packet", messageType, payload))

    def note_refused(self, messageNum: int, phase: Phase, verdict: Any) -> None:
        self.acted.append(("refused", messageNum, phase, verdict))


def expected(phase: Phase, message: int, strict: bool, seq: int) -> list[Any]:
    verdict = decide(phase, message, strict)
    if verdict.action is Action.PROCESS:
        return [("process", message)]
    if verdict.action is Action.DISCONNECT:
        text = verdict.text % message if "%d" in verdict.text else verdict.text
        return [("disconnect", verdict.reason, text.encode())]
    if verdict.action is Action.UNIMPLEMENTED:
        return [
            ("refused", message, phase, verdict),
            ("packet", transport.MSG_UNIMPLEMENTED, (seq - 1).to_bytes(4, "big")),
        ]
    return [] if phase is Phase.CLOSED else [("refused", message, phase, verdict)]


def test_each_state_and_message_is_ruled_as_the_policy_says_for_its_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every combination of what the phase depends on, every message number, strict KEX or not:
    the first time (the ruling worked out) and the second (looked up) act as decide() says for
    dispatch_phase(), in every one of the nine phases."""
    acted: list[Any] = []
    monkeypatch.setattr(
        transport.SSHServerTransport, "dispatchMessage", lambda self, m, p: acted.append(("process", m))
    )
    phases = set()
    states = itertools.product(
        (False, True), (False, True), (False, True), (False, True), (None, b"ssh-userauth", b"ssh-connection")
    )
    for (dead, first, peer, keyed, service), strict in itertools.product(states, (False, True)):
        t = Recording(acted)
        t._dead, t._first_kex_done, t._peer_kexinit, t.strict_kex = dead, first, peer, strict
        t.nextEncryptions = SimpleNamespace(keyed=keyed)
        t.service = None if service is None else SimpleNamespace(name=service)
        t.incomingPacketSequence = 7
        phase = t.dispatch_phase()
        phases.add(phase)
        for message in range(256):
            for _ in range(2):
                acted.clear()
                t.dispatchMessage(message, b"")
                assert acted == expected(phase, message, strict, 7), (
                    dead,
                    first,
                    peer,
                    keyed,
                    service,
                    strict,
                    message,
                )
    assert phases == set(Phase)


def test_conch_transport_log_lines_are_conch_s_without_debug_and_info() -> None:
    """Conch's transport logs through `self._log`: debug and info lines go nowhere; a warning
    is the event Conch's own Logger would have made (namespace, level, format, fields)."""
    t = ServerTransport()
    with capturedLogs() as events:
        t._log.debug("couldn't handle {messageNum}: {payload!r}", messageNum=99, payload=b"x")
        t._log.info("connection lost")
        t._log.warn("other side unimplemented packet #{seqnum}", seqnum=5)
        t._log.error("nope {x}", x=1)
    with capturedLogs() as reference:
        conch = Logger(namespace="conchcmd.server.transport.ServerTransport")
        conch.warn("other side unimplemented packet #{seqnum}", seqnum=5)
        conch.error("nope {x}", x=1)
    fields = ("log_namespace", "log_level", "log_format", "seqnum", "x")
    assert [{k: e.get(k) for k in fields} for e in events] == [{k: e.get(k) for k in fields} for e in reference]
    assert [e["log_level"] for e in events] == [LogLevel.warn, LogLevel.error]
