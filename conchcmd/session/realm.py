"""The realm and the avatar: what an authenticated user may open (session channels only)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.conch.avatar import ConchUser
from twisted.conch.interfaces import IConchUser
from twisted.cred.portal import IRealm
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from conchcmd.commands.framework import Dispatcher
from conchcmd.core.audit import AuditSink, sanitise
from conchcmd.core.config import UserPolicy
from conchcmd.core.internalerrors import InternalErrors
from conchcmd.core.logtargets import LOG_NAMESPACE
from conchcmd.core.peer import Peer
from conchcmd.core.refusals import RepeatLog
from conchcmd.policy.auth import Identity
from conchcmd.session.channel import (
    ChannelHandler,
    ConnectionBudget,
    ExecHandler,
    SessionChannel,
    SessionContext,
    ShellSettings,
)
from conchcmd.session.shell import PlainShell, TerminalShell

log = Logger(namespace=LOG_NAMESPACE)


def make_handler(chan: SessionChannel, command: str | None) -> ChannelHandler:
    """An exec'd command line, or the shell that fits the channel (with or without a pty).

    A forced command (authorized_keys `command=`, a certificate's force-command) runs instead of
    either, the client's own command kept for the audit log.
    """
    forced = chan.context.identity.grant.forced_command
    if forced is not None:
        return ExecHandler(chan, chan.context, forced, original=command if command is not None else "")
    if command is not None:
        return ExecHandler(chan, chan.context, command)
    if chan.terminal is not None:
        return TerminalShell(chan, chan.context, chan.terminal)
    return PlainShell(chan, chan.context)


class CommandUser(ConchUser):
    """An authenticated user: may open session channels, nothing else (no forwarding)."""

    def __init__(
        self,
        identity: Identity,
        dispatcher: Dispatcher,
        clock: IReactorTime,
        shell: ShellSettings,
        policy: UserPolicy | None = None,
    ):
        super().__init__()
        self.identity = identity
        self.policy = policy or UserPolicy()
        self.dispatcher = dispatcher
        self.clock = clock
        self.shell = shell
        self.peer = "?"  # the client's address, from the login's mind (see CommandRealm)
        self.budget = ConnectionBudget()  # one avatar per connection: its channels share this
        # The connection's, set by the transport (its one owner) when it admits this user.
        self.refusals: RepeatLog | None = None
        self.audit: AuditSink | None = None  # the connection's (with its id), set the same way
        self.internal_errors = InternalErrors()  # the server's (one traceback per place), set the same way

    def lookupChannel(self, channelType: bytes, windowSize: int, maxPacket: int, data: bytes) -> SessionChannel:
        # Only called for b"session": ConnectionService refuses every other type up front.
        context = SessionContext(
            self.dispatcher,
            self.clock,
            self.identity,
            self.peer,
            self.shell,
            self.policy,
            self.budget,
            self.refusals,
            self.audit or self.dispatcher.audit,
            self.internal_errors,
        )
        return SessionChannel(
            context,
            make_handler,
            remoteWindow=windowSize,
            remoteMaxPacket=maxPacket,
            data=data,
            avatar=self,
        )

    def gotGlobalRequest(self, requestType: bytes, data: bytes) -> int:
        if requestType in (b"tcpip-forward", b"streamlocal-forward@openssh.com"):
            refusals = self.refusals or RepeatLog(log, self.peer)  # (admitted users have one)
            refusals.note(
                f"Refused {sanitise(requestType)}",
                "Refused {kind} for {user}@{peer}: forwarding is disabled",
                kind=sanitise(requestType),
                user=sanitise(self.identity.user),
            )
        return 0


@implementer(IRealm)
class CommandRealm:
    """Gives each authenticated identity a CommandUser."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        clock: IReactorTime,
        shell: ShellSettings,
        users: Mapping[str, UserPolicy] | None = None,
    ):
        self.dispatcher = dispatcher
        self.clock = clock
        self.shell = shell
        self.users = users or {}

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> tuple[Any, CommandUser, Any]:
        if IConchUser not in interfaces or not isinstance(avatarId, Identity):
            raise NotImplementedError("conchcmd serves only SSH users")
        user = CommandUser(avatarId, self.dispatcher, self.clock, self.shell, self.users.get(avatarId.user))
        if isinstance(mind, Peer):  # the transport logs in with the client's address as the mind
            user.peer = mind.text
        return IConchUser, user, lambda: None
