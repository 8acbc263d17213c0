"""A SessionChannel without sockets: the recording connection it sends through, and a harness with a
command table the test controls (time driven by task.Clock)."""

from __future__ import annotations

import struct
from typing import Any

from twisted.conch.ssh import common
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address

from conchcmd.commands.framework import Command, CommandTable, Dispatcher, Invocation
from conchcmd.core.audit import MemoryAuditLog
from conchcmd.policy.auth import Identity
from conchcmd.session.channel import ConnectionBudget, SessionChannel, SessionContext, ShellSettings
from conchcmd.session.realm import make_handler


def winsize(columns: int, rows: int) -> bytes:
    """The window size of a pty-req or window-change request (RFC 4254: width in columns first)."""
    return struct.pack(">4L", columns, rows, 0, 0)


class RecordingConnection:
    """Stands in for SSHConnection: records what the channel sends, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []
        self.transport = self
        self.tcp_paused = False  # the transport side of conchcmd.core.flow.ChannelConnection

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "10.0.0.1", 40000)

    getHost = getPeer

    def sendData(self, chan: Any, data: bytes) -> None:
        self.sent.append(("data", data))

    def sendExtendedData(self, chan: Any, kind: int, data: bytes) -> None:
        self.sent.append(("stderr", data))

    def sendEOF(self, chan: Any) -> None:
        self.sent.append(("eof", None))

    def sendRequest(self, chan: Any, kind: bytes, data: bytes, wantReply: int = 0) -> None:
        self.sent.append((kind.decode(), data))

    def sendClose(self, chan: Any) -> None:
        self.sent.append(("close", None))

    def send_exit(self, chan: Any, status: int) -> None:
        self.sent += [("eof", None), ("exit-status", struct.pack(">L", status & 0xFFFFFFFF)), ("close", None)]

    def grant_window(self, chan: Any, n: int) -> None:
        self.sent.append(("window", n))
        chan.localWindowLeft += n

    def granted(self) -> int:
        return sum(v for k, v in self.sent if k == "window")

    def kinds(self) -> list[str]:
        return [k for k, _ in self.sent]

    def data(self, kind: str = "data") -> bytes:
        return b"".join(v for k, v in self.sent if k == kind)


class Harness:
    """A SessionChannel on a RecordingConnection, with a command table the test controls."""

    def __init__(self, window: int = 1 << 20, max_packet: int = 32768, budget: ConnectionBudget | None = None):
        self.clock = task.Clock()
        self.audit = MemoryAuditLog()
        self.gate: defer.Deferred[None] | None = None
        self.table = CommandTable(
            [
                Command("say", "print the arguments", "say WORDS", self._say),
                Command("block", "wait until the test says so", "block", self._block),
                Command("flood", "print N bytes", "flood N", self._flood),
            ]
        )
        self.dispatcher = Dispatcher(self.table, self.audit, self.clock)
        identity = Identity("admin", "publickey", "ssh-ed25519", "SHA256:x")
        self.budget = budget or ConnectionBudget()
        self.context = SessionContext(
            self.dispatcher,
            self.clock,
            identity,
            "10.0.0.1:40000",
            ShellSettings("testhost"),
            budget=self.budget,
        )
        self.conn = RecordingConnection()
        self.chan = SessionChannel(self.context, make_handler, remoteWindow=window, remoteMaxPacket=max_packet)
        self.chan.conn = self.conn  # type: ignore[assignment]

    def client_sends(self, data: bytes, chan: SessionChannel | None = None) -> None:
        """What Conch's ssh_CHANNEL_DATA does: the window shrinks, then the channel gets the data.
        A client cannot send more than the window (Conch would close the channel)."""
        chan = chan or self.chan
        assert len(data) <= chan.localWindowLeft, (len(data), chan.localWindowLeft)
        chan.localWindowLeft -= len(data)
        chan.dataReceived(data)

    def settle(self) -> None:
        """Run what is due now, including the shell's continuations (it yields every few lines)."""
        for _ in range(100_000):
            if not any(c.getTime() <= self.clock.seconds() for c in self.clock.getDelayedCalls()):
                return
            self.clock.advance(0)
        raise AssertionError("still busy after 100000 turns")

    def fill_window(self, pattern: bytes, chan: SessionChannel | None = None, total: int = 1 << 30) -> int:
        """Send `pattern` repeated, packet by packet, as long as the window allows (at most `total`)."""
        chan = chan or self.chan
        sent = 0
        while chan.localWindowLeft > 0 and sent < total:
            n = min(chan.localWindowLeft, 32768, total - sent)
            offset = sent % len(pattern)  # the pattern runs on across packets
            self.client_sends((pattern * (n // len(pattern) + 2))[offset : offset + n], chan)
            sent += n
        return sent

    async def _say(self, inv: Invocation) -> int:
        await inv.stdout.write(" ".join(inv.args).encode() + b"\n")
        return 0

    async def _block(self, inv: Invocation) -> int:
        self.gate = defer.Deferred()
        await self.gate
        return 0

    async def _flood(self, inv: Invocation) -> int:
        total = int(inv.args[0])
        while total > 0:
            n = min(total, 100_000)
            await inv.stdout.write(b"y" * n)
            total -= n
        return 0

    def exec(self, line: bytes) -> None:
        assert self.chan.requestReceived(b"exec", common.NS(line)) == 1
        self.clock.advance(0)

    def shell(self, pty: bool = False, columns: int = 80) -> None:
        if pty:
            data = common.NS(b"xterm") + common.NS(b"")[:0] + winsize(columns, 24) + common.NS(b"")
            assert self.chan.requestReceived(b"pty-req", data) == 1
        assert self.chan.requestReceived(b"shell", b"") == 1
        self.clock.advance(0)
