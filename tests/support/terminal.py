"""A terminal shell as a person meets it, over a recording connection (no sockets, task.Clock): the
real commands, a few test ones, the real Completer over a small directory tree, and the keys a
terminal sends."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from twisted.conch.ssh import common
from twisted.internet import defer, task

from conchcmd.commands.builtin import build_command_table
from conchcmd.commands.framework import Command, Dispatcher, InlineRunner, Invocation
from conchcmd.core.audit import MemoryAuditLog
from conchcmd.core.config import ComphashConfig, Config, LastlogConfig, UserPolicy
from conchcmd.policy.auth import Identity
from conchcmd.session.channel import SessionChannel, SessionContext, ShellSettings
from conchcmd.session.completion import Completer
from conchcmd.session.realm import make_handler
from support.channels import RecordingConnection, winsize

UP, DOWN, LEFT, RIGHT = b"\x1b[A", b"\x1b[B", b"\x1b[D", b"\x1b[C"
CTRL_A, CTRL_C, CTRL_D, CTRL_E = b"\x01", b"\x03", b"\x04", b"\x05"
CTRL_K, CTRL_L, CTRL_U, CTRL_W = b"\x0b", b"\x0c", b"\x15", b"\x17"
TAB, BELL = b"\t", b"\x07"
PROMPT = b"admin@testhost> "
CLEARS = (b"\x1b[2J", b"\x1bc", b"\x1b[3J")


class Term:
    """A terminal shell on a recording connection with the real commands (lastlog, comphash,
    help, exit), a few test commands, and the real Completer over a directory tree:

        base/srv/root/            the comphash root: hello.txt, help.md, sub/, with space.txt
        base/srv/rootless/        a sibling directory sharing the root's name prefix (outside)
        base/srv/other/           outside, not on the way to the root
        base/srv/notes.txt        a file outside the root
    """

    def __init__(
        self,
        base: Path,
        *,
        policy: UserPolicy | None = None,
        prompt: str = "{user}@{host}> ",
        history_size: int = 500,
        runner: Any = None,
        user: str = "admin",
        pty: bool = True,
        exec_line: str | None = None,
    ):
        self.base = base
        self.srv = base / "srv"
        self.root = self.srv / "root"
        if not self.root.exists():
            self.root.mkdir(parents=True)
            (self.root / "hello.txt").write_bytes(b"hello\n")
            (self.root / "help.md").write_bytes(b"# help\n")
            (self.root / "with space.txt").write_bytes(b"spaced\n")
            (self.root / "sub").mkdir()
            (self.root / "sub" / "deep.txt").write_bytes(b"deep\n")
            (self.srv / "rootless").mkdir()
            (self.srv / "other").mkdir()
            (self.srv / "notes.txt").write_bytes(b"outside\n")
            (base / "syslog").write_bytes(b"".join(b"log line %d\n" % i for i in range(1, 21)))
        self.clock = task.Clock()
        self.clock.advance(1_000)
        self.runner = runner or InlineRunner()
        self.audit = MemoryAuditLog()
        config = Config(
            lastlog=LastlogConfig(sources=(str(base / "syslog"),)),
            comphash=ComphashConfig(roots=(str(self.root),)),
        )
        self.table = build_command_table(config, self.runner, self.clock)
        self.gate: defer.Deferred[None] | None = None
        self.table.add(Command("say", "print the arguments", "say WORDS", self._say))
        self.table.add(Command("block", "wait until the test says so", "block", self._block))
        self.table.add(Command("stat-one", "a test command", "stat-one", self._say))
        self.table.add(Command("stat-two", "a test command", "stat-two", self._say))
        self.dispatcher = Dispatcher(self.table, self.audit, self.clock)
        completer = Completer(self.table, self.runner, config.comphash.roots)
        settings = ShellSettings("testhost", prompt=prompt, history_size=history_size, completer=completer)
        identity = Identity(user, "publickey", "ssh-ed25519", "SHA256:x")
        context = SessionContext(
            self.dispatcher, self.clock, identity, "10.0.0.1:40000", settings, policy or UserPolicy()
        )
        self.conn = RecordingConnection()
        self.chan = SessionChannel(context, make_handler, remoteWindow=1 << 24, remoteMaxPacket=32768)
        self.chan.conn = self.conn  # type: ignore[assignment]
        if pty:
            data = common.NS(b"xterm") + winsize(80, 24) + common.NS(b"")
            assert self.chan.requestReceived(b"pty-req", data) == 1
        if exec_line is not None:
            assert self.chan.requestReceived(b"exec", common.NS(exec_line.encode())) == 1
        else:
            assert self.chan.requestReceived(b"shell", b"") == 1
        self.clock.advance(0)

    async def _say(self, inv: Invocation) -> int:
        await inv.stdout.write(" ".join(inv.argv).encode() + b"\n")
        return 0

    async def _block(self, inv: Invocation) -> int:
        self.gate = defer.Deferred()
        await self.gate
        return 0

    @property
    def screen(self) -> bytes:
        return self.conn.data()

    def keys(self, data: bytes) -> bytes:
        """Send keystrokes; return what the terminal received in response."""
        before = len(self.screen)
        self.chan.dataReceived(data)
        self.clock.advance(0)
        return self.screen[before:]

    def ran(self) -> list[list[str]]:
        return [r["argv"] for r in self.audit.of("command")]

    def statuses(self) -> list[int]:
        return [r["exit_code"] for r in self.audit.of("command")]

    def exit_status(self) -> int | None:
        for kind, value in self.conn.sent:
            if kind == "exit-status":
                return int(struct.unpack(">L", value)[0])
        return None
