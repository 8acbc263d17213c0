"""The command framework: one registry and one dispatcher serve exec, both shells and help.

Every user-facing outcome is mapped to an exit status here, and every command run is audited
here, whatever path it took (success, error, unknown command, interruption).
"""

from __future__ import annotations

import getopt
import re
import shlex
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from conchcmd.core.audit import AuditSink, sanitise, terminal_safe
from conchcmd.core.config import UserPolicy
from conchcmd.core.internalerrors import InternalErrors
from conchcmd.core.logtargets import LOG_NAMESPACE, FastLogger

# Re-exported for the command modules: the runners live in conchcmd.core.threads.
from conchcmd.core.threads import BlockingRunner as BlockingRunner
from conchcmd.core.threads import InlineRunner as InlineRunner

log = FastLogger(namespace=LOG_NAMESPACE)


ALL_PERMITTED = UserPolicy()


class ExitStatus(IntEnum):
    """Exit statuses, the same in exec and in both shells."""

    OK = 0
    FAILED = 1
    USAGE = 2
    NOT_PERMITTED = 126
    UNKNOWN_COMMAND = 127
    INTERRUPTED = 130


EXIT_STATUS_HELP = (
    (ExitStatus.OK, "success"),
    (ExitStatus.FAILED, "the command ran and failed (e.g. a missing file)"),
    (ExitStatus.USAGE, "usage error (bad option or argument)"),
    (ExitStatus.NOT_PERMITTED, "not permitted by policy (e.g. a path outside the roots, or no audit log)"),
    (ExitStatus.UNKNOWN_COMMAND, "unknown command"),
    (ExitStatus.INTERRUPTED, "interrupted (Ctrl-C, or the client went away)"),
)


class CommandError(Exception):
    """A failure to report to the user on stderr, with the exit status it implies."""

    def __init__(self, message: str, status: int = ExitStatus.FAILED):
        super().__init__(message)
        self.message = message
        self.status = status


class UsageError(CommandError):
    def __init__(self, message: str):
        super().__init__(message, ExitStatus.USAGE)


class SessionExit(Exception):
    """Raised by `exit`: the session should end, with this status (None: the last one)."""

    def __init__(self, status: int | None):
        super().__init__(status)
        self.status = status


class Output(Protocol):
    """A byte stream to the client; the Deferred fires when the writer may write more."""

    def write(self, data: bytes) -> defer.Deferred[None]: ...


@dataclass
class Invocation:
    """One run of one command: its arguments, its streams, and who asked."""

    argv: list[str]
    stdout: Output
    stderr: Output
    user: str
    peer: str
    interactive: bool = False
    policy: UserPolicy = field(default_factory=UserPolicy)
    #: Fires when a shell's client closes its input (EOF): commands that follow a log stop then
    #: (never in exec, where the command reads no input: see ExecHandler.eof_received).
    input_closed: defer.Deferred[None] = field(default_factory=defer.Deferred)
    #: The rule that refused the command (its status 126), for the audit: see `refuse`.
    rule: str | None = None

    def refuse(self, rule: str) -> int:
        """Note the rule that refuses (part of) this command, e.g. "outside roots: PATH"; the
        first one noted is audited. Returns ExitStatus.NOT_PERMITTED."""
        if self.rule is None:
            self.rule = rule
        return ExitStatus.NOT_PERMITTED

    @property
    def args(self) -> list[str]:
        return self.argv[1:]

    async def say(self, text: str) -> None:
        await self.stdout.write(text.encode("utf-8", "surrogateescape"))

    async def complain(self, text: str) -> None:
        """Write a diagnostic to stderr, through the terminal sanitiser: stderr is for people
        (and reaches their terminal even without a pty), so never raw client or file text."""
        await self.stderr.write(terminal_safe(text).encode("utf-8"))


@dataclass(frozen=True)
class Command:
    """A named command: `run` returns its exit status or raises CommandError."""

    name: str
    summary: str
    usage: str
    run: Callable[[Invocation], Awaitable[int]]
    options: tuple[str, ...] = ()  # for completion
    #: A dry run of the checks `run` makes before doing anything, for `conchcmd check`: the
    #: refusals (CommandError) these arguments would meet under this policy, each with its status.
    #: It calls the same functions `run` calls, so the two cannot disagree.
    preflight: Callable[[list[str], UserPolicy], list[CommandError]] | None = None


class CommandTable:
    """The registry of commands, in the order `help` lists them."""

    def __init__(self, commands: Iterable[Command] = ()):
        self._commands: dict[str, Command] = {}
        for command in commands:
            self.add(command)

    def add(self, command: Command) -> None:
        if command.name in self._commands:
            raise ValueError(f"duplicate command {command.name}")
        self._commands[command.name] = command

    def get(self, name: str) -> Command | None:
        return self._commands.get(name)

    def __iter__(self) -> Any:
        return iter(self._commands.values())


def parse_options(
    argv: Sequence[str], shortopts: str, longopts: Sequence[str] = ()
) -> tuple[dict[str, str], list[str]]:
    """getopt with GNU ordering; errors become UsageError. Returns ({opt: value}, operands)."""
    for arg in argv:
        if arg[:1] == "-":
            break
    else:
        return {}, list(argv)  # no option anywhere: what getopt returns, without its calls
    try:
        pairs, operands = getopt.gnu_getopt(list(argv), shortopts, list(longopts))
    except getopt.GetoptError as e:
        raise UsageError(str(e)) from None
    return dict(pairs), operands


_INTEGER = re.compile(r"-?[0-9]+")  # ASCII digits only: int() would also take "+5", "1_0", " 5", "٣"


def parse_int(text: str, what: str, minimum: int, maximum: int) -> int:
    """A command-line integer: an optional minus and ASCII digits, within [minimum, maximum]."""
    if not _INTEGER.fullmatch(text):
        raise UsageError(f"{what} must be a number, not {text!r}")
    digits = text.lstrip("-").lstrip("0")
    if len(digits) > len(str(max(abs(minimum), abs(maximum)))) or not minimum <= int(text, 10) <= maximum:
        raise UsageError(f"{what} must be between {minimum} and {maximum}")
    return int(text, 10)


_WORD = re.compile(r"[^ \t\r\n]+")  # shlex.whitespace
_QUOTING = re.compile("['\"\\\\]")  # what shlex treats specially: quotes and the backslash


def split_command_line(line: str) -> list[str]:
    """Split a command line like a POSIX shell would, without expansion."""
    if _QUOTING.search(line) is None:
        return _WORD.findall(line)  # what shlex gives for a line without quotes or escapes, faster
    try:
        return shlex.split(line, comments=False, posix=True)
    except ValueError as e:
        raise UsageError(f"cannot parse the command line: {e}") from None


def usage_preflight(parse: Callable[[list[str]], object]) -> Callable[[list[str], UserPolicy], list[CommandError]]:
    """A preflight for a command whose only checks before running are its argument parser's."""

    def preflight(argv: list[str], policy: UserPolicy) -> list[CommandError]:
        try:
            parse(argv[1:])
        except CommandError as e:
            return [e]
        return []

    return preflight


def admit(table: CommandTable, argv: list[str], policy: UserPolicy) -> Command:
    """The command a parsed line names, if the user's policy lets it run; else CommandError with
    status 127 (no such command) or 126 (not permitted). The dispatcher and `conchcmd check` both
    decide here."""
    command = table.get(argv[0])
    if command is None:
        raise CommandError(f"{argv[0]}: command not found", ExitStatus.UNKNOWN_COMMAND)
    if not policy.permits(command.name):
        raise CommandError(f"{command.name}: not permitted", ExitStatus.NOT_PERMITTED)
    return command


@dataclass(frozen=True)
class DryRun:
    """What the dispatcher would do with a line, without running it: the refusals (empty: it
    would run) and the status they end with."""

    argv: list[str]
    refusals: list[CommandError]
    checked_arguments: bool  # False when the command has no preflight: its arguments were not looked at

    @property
    def status(self) -> int | None:
        """The exit status the refusals end with (as the command reports the worst), or None."""
        return max((r.status for r in self.refusals), default=None)


def dry_run(table: CommandTable, line: str, policy: UserPolicy) -> DryRun:
    """`Dispatcher.dispatch`'s decisions for `line` (parse, look up, policy, the command's own
    preflight checks), without running anything. The audit-log state is not part of it."""
    try:
        argv = split_command_line(line)
    except UsageError as e:
        return DryRun([], [e], True)
    if not argv:
        return DryRun(argv, [], True)
    try:
        command = admit(table, argv, policy)
    except CommandError as e:
        return DryRun(argv, [e], True)
    if command.preflight is None:
        return DryRun(argv, [], False)
    refusals = [CommandError(f"{command.name}: {e.message}", e.status) for e in command.preflight(argv, policy)]
    return DryRun(argv, refusals, True)


@dataclass(frozen=True)
class Outcome:
    """What a dispatched line came to: its status, and whether the session should end."""

    status: int
    end_session: bool = False


async def _complain(stderr: Output, message: str) -> None:
    """A diagnostic (which may quote the client's words) to stderr, sanitised like complain()."""
    await stderr.write(terminal_safe(message + "\n").encode("utf-8"))


class Dispatcher:
    """Runs command lines: parse, look up, run, map errors to statuses, log and audit."""

    def __init__(
        self,
        table: CommandTable,
        audit: AuditSink,
        clock: IReactorTime,
        *,
        audit_failure: str = "refuse",
        internal_errors: InternalErrors | None = None,
    ):
        self.table = table
        self.audit = audit
        self.clock = clock
        #: "refuse": while the audit log cannot be written, commands other than `exit` are
        #: refused rather than run unaudited; "continue": they run (the audit log logs its failure).
        self.refuse_unaudited = audit_failure == "refuse"
        #: Bugs already logged with their traceback, by place in the code (the server's, shared
        #: with the transport and sessions: see app.build_server).
        self.internal_errors = internal_errors or InternalErrors()

    def dispatch(
        self,
        line: str,
        *,
        stdout: Output,
        stderr: Output,
        user: str,
        peer: str,
        fingerprint: str,
        interactive: bool = False,
        last_status: int = 0,
        policy: UserPolicy | None = None,
        original_command: str | None = None,
        input_closed: defer.Deferred[None] | None = None,
        audit: AuditSink | None = None,
    ) -> defer.Deferred[Outcome]:
        """Run one line. Cancelling the Deferred interrupts the command (status 130).

        `last_status` is what a bare `exit` ends the session with, as in a POSIX shell.
        `policy` is the user's (which commands, which roots); `original_command` is what the
        client asked for when a forced command runs instead, for the audit record. `audit` is
        the sink of the channel (with its connection id, number and kind); default the server's.
        """
        policy = policy or ALL_PERMITTED
        sink = audit or self.audit
        shown_user = sanitise(user)  # as logged and audited; `user` itself goes to the command
        log.info("Cmd received from {user}@{peer} : {line}", user=shown_user, peer=peer, line=sanitise(line))
        started = self.clock.seconds()
        argv: list[str] = []
        rule: list[str] = []  # the rule that refused the command (status 126), if any

        async def run() -> Outcome:
            nonlocal argv
            try:
                argv = split_command_line(line)
                if not argv:
                    return Outcome(ExitStatus.OK)
            except UsageError as e:
                await _complain(stderr, f"conchcmd: {e.message}")
                return Outcome(e.status)
            if self.refuse_unaudited and argv[0] != "exit":
                why = sink.failure()
                if why is not None:
                    rule.append("audit log cannot be written")
                    await _complain(stderr, f"conchcmd: refused: the audit log cannot be written ({why})")
                    return Outcome(ExitStatus.NOT_PERMITTED)
            try:
                command = admit(self.table, argv, policy)
            except CommandError as e:
                if e.status == ExitStatus.NOT_PERMITTED:
                    rule.append("command not permitted")
                await _complain(stderr, e.message)
                return Outcome(e.status)
            invocation = Invocation(
                argv, stdout, stderr, user, peer, interactive, policy, input_closed or defer.Deferred()
            )
            try:
                return Outcome(await command.run(invocation))
            except SessionExit as e:
                return Outcome(last_status if e.status is None else e.status, end_session=True)
            except UsageError as e:
                await _complain(stderr, f"{command.name}: {e.message}\nusage: {command.usage}")
                return Outcome(e.status)
            except CommandError as e:
                if e.status == ExitStatus.NOT_PERMITTED:
                    invocation.refuse(e.message)
                await _complain(stderr, f"{command.name}: {e.message}")
                return Outcome(e.status)
            finally:
                if invocation.rule is not None:
                    rule.append(invocation.rule)

        def ended(result: Outcome | Failure) -> Outcome:
            # one callback for the three steps (interrupted, crashed, audited): one Deferred step
            if isinstance(result, Failure):
                if result.check(defer.CancelledError):
                    result = Outcome(ExitStatus.INTERRUPTED)
                else:
                    # Once per place with its traceback, then a line: a user who can make a
                    # command crash must not flood the log with a traceback a run.
                    name = sanitise(argv[0], 64) if argv else "a command line"
                    self.internal_errors.report(log, result, f"running {name}", f"{shown_user}@{peer}", "exit status 1")
                    stderr.write(b"conchcmd: internal error\n")
                    result = Outcome(ExitStatus.FAILED)
            return audited(result)

        def audited(outcome: Outcome) -> Outcome:
            if line.strip():
                unparsed = {} if argv else {"line": sanitise(line)}
                if original_command is not None:
                    unparsed["original_command"] = sanitise(original_command)
                if outcome.status == ExitStatus.NOT_PERMITTED and rule:
                    unparsed["rule"] = sanitise(rule[0])
                sink.record(
                    "command",
                    user=shown_user,
                    peer=peer,
                    fingerprint=fingerprint,
                    argv=[sanitise(a) for a in argv],
                    **unparsed,
                    exit_code=outcome.status,
                    duration_ms=round((self.clock.seconds() - started) * 1000, 3),
                )
            return outcome

        d = defer.Deferred.fromCoroutine(run())
        d.addBoth(ended)
        return d
