"""Wiring: build the server's object graph from a Config, with the reactor passed in."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from twisted.cred.portal import Portal

from conchcmd import __version__
from conchcmd.commands.builtin import build_command_table
from conchcmd.commands.framework import Dispatcher, ExitStatus
from conchcmd.core.audit import AuditSink
from conchcmd.core.config import Config
from conchcmd.core.internalerrors import InternalErrors
from conchcmd.core.metrics import NO_METRICS, Metrics
from conchcmd.core.threads import BlockingRunner
from conchcmd.policy.auth import KeyAuthorizer, PasswordChecker, PublicKeyChecker
from conchcmd.server.factory import CommandServerFactory, ServerSettings
from conchcmd.server.livestate import FactoryState
from conchcmd.session.channel import ShellSettings
from conchcmd.session.completion import Completer
from conchcmd.session.realm import CommandRealm
from conchcmd.wire.hostkeys import HostKeys


@dataclass
class Server:
    """The built server: the factory to listen with, and the pieces tests and the CLI reach."""

    factory: CommandServerFactory
    dispatcher: Dispatcher
    authorizer: KeyAuthorizer
    realm: CommandRealm
    passwords: PasswordChecker
    metrics: Metrics | None = None  # with `metrics_listen` only

    def reload(self, config: Config) -> None:
        """New users, keys and policy for logins from now on; sessions keep what they have."""
        self.authorizer.reload(config)
        self.realm.users = config.users
        self.passwords.reload(config.users, config.limits.max_password_checks)


def build_server(
    config: Config,
    reactor: Any,
    *,
    host_keys: HostKeys,
    audit: AuditSink,
    runner: BlockingRunner,
    password_runner: BlockingRunner,
    hostname: str | None = None,
    settings: ServerSettings | None = None,
    bulk_runner: BlockingRunner | None = None,
) -> Server:
    """Assemble commands, auth, realm and SSH factory; nothing listens yet.

    `runner` serves the commands (hashing, reading logs, completion); `password_runner` only the
    password checks, so that authentication load never waits for, or delays, a command;
    `bulk_runner` (default `runner`) the hashes of big files, so that they yield to the rest.
    """
    metrics = None
    if config.metrics_listen is not None:
        metrics = Metrics(version=__version__, statuses=ExitStatus)
        audit = metrics.audit_sink(audit)  # counts what the audit records say
    table = build_command_table(
        config, runner, reactor, bulk_runner, on_hashed=metrics.file_hashed if metrics else None
    )
    if metrics is not None:
        metrics.commands = frozenset(command.name for command in table)  # any other name counts as "other"
    internal_errors = InternalErrors()  # the server's bugs, each traceback logged once
    dispatcher = Dispatcher(table, audit, reactor, audit_failure=config.audit_failure, internal_errors=internal_errors)
    authorizer = KeyAuthorizer.from_config(config, reactor)
    shell = ShellSettings(
        hostname=hostname or socket.gethostname(),
        prompt=config.shell.prompt,
        completer=Completer(table, runner, config.comphash.roots),
    )
    # Password auth is offered to every name when some user has a password, else to none.
    passwords = PasswordChecker(config.users, password_runner, config.limits.max_password_checks)
    realm = CommandRealm(dispatcher, reactor, shell, config.users)
    portal = Portal(realm, [PublicKeyChecker(authorizer), passwords])
    factory = CommandServerFactory(
        host_keys=host_keys,
        portal=portal,
        audit=audit,
        clock=reactor,
        settings=settings or ServerSettings.from_config(config),
        passwords=passwords,
        known_user=lambda user, files: user in realm.users or authorizer.knows(user, files),
        # Both asked for every name: the same work whichever of them knows it (and no CA file: no call).
        configured_user=lambda user: (
            (user in realm.users) | (authorizer.trusted.path is not None and authorizer.knows_by_configuration(user))
        ),
        metrics=metrics or NO_METRICS,
        internal_errors=internal_errors,
        certificates=authorizer.certificates,
    )
    if metrics is not None:
        metrics.watch(FactoryState(factory))
    return Server(factory, dispatcher, authorizer, realm, passwords, metrics)
