"""The built-in command set: `help` and `exit`, and the table that joins them to the others."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from conchcmd.commands.comphash import Hasher, make_comphash
from conchcmd.commands.framework import (
    EXIT_STATUS_HELP,
    BlockingRunner,
    Command,
    CommandError,
    CommandTable,
    ExitStatus,
    Invocation,
    SessionExit,
    UsageError,
    parse_int,
    parse_options,
    usage_preflight,
)
from conchcmd.commands.lastlog import build_sources, make_lastlog
from conchcmd.core.config import Config, UserPolicy


def _exit_status(args: list[str]) -> int | None:
    if len(args) > 1:
        raise UsageError("too many arguments")
    return parse_int(args[0], "status", 0, 255) if args else None


async def _exit(inv: Invocation) -> int:
    raise SessionExit(_exit_status(inv.args))


def make_exit() -> Command:
    return Command(
        name="exit",
        summary="end the session, with status N (default: the last command's status)",
        usage="exit [N]",
        run=_exit,
        preflight=usage_preflight(_exit_status),
    )


def make_help(table: CommandTable) -> Command:
    """`help` lists the table it is given, so it never disagrees with what runs."""

    def arguments(args: list[str], policy: UserPolicy) -> tuple[bool, Command | None]:
        """(JSON output, the command asked about), or UsageError."""
        options, operands = parse_options(args, "j", ["json"])
        if len(operands) > 1:
            raise UsageError("too many arguments")
        command = table.get(operands[0]) if operands else None
        if operands and (command is None or not policy.permits(command.name)):
            raise UsageError(f"no such command: {operands[0]}")
        return "-j" in options or "--json" in options, command

    def preflight(argv: list[str], policy: UserPolicy) -> list[CommandError]:
        try:
            arguments(argv[1:], policy)
        except UsageError as e:
            return [e]
        return []

    async def run(inv: Invocation) -> int:
        as_json, asked = arguments(inv.args, inv.policy)
        if as_json:
            listed = [c for c in table if inv.policy.permits(c.name)] if asked is None else [asked]
            entries = [{"name": c.name, "summary": c.summary, "usage": c.usage} for c in listed]
            await inv.say(json.dumps({"commands": entries}) + "\n")
            return ExitStatus.OK
        if asked is not None:
            await inv.say(f"usage: {asked.usage}\n{asked.summary}\n")
            return ExitStatus.OK
        commands = [c for c in table if inv.policy.permits(c.name)]
        width = max(len(c.name) for c in commands)
        lines = ["Commands:"]
        lines += [f"  {c.name.ljust(width)}  {c.summary}" for c in commands]
        lines += ["", "Exit statuses:"]
        lines += [f"  {int(code):>3}  {meaning}" for code, meaning in EXIT_STATUS_HELP]
        lines += ["", "`help COMMAND` shows its usage."]
        await inv.say("\n".join(lines) + "\n")
        return ExitStatus.OK

    return Command(
        name="help",
        summary="list commands, or show how to use one",
        usage="help [--json] [COMMAND]",
        run=run,
        options=("--json",),
        preflight=preflight,
    )


def build_command_table(
    config: Config,
    runner: BlockingRunner,
    reactor: Any,
    bulk_runner: BlockingRunner | None = None,
    *,
    on_hashed: Callable[[int], None] | None = None,
) -> CommandTable:
    """The commands every session offers, each built from only what it needs (`bulk_runner`:
    hashes big files, see Hasher, default `runner`; `on_hashed`: told the size of each file
    comphash has hashed)."""
    table = CommandTable()
    table.add(make_lastlog(config.lastlog, build_sources(config.lastlog, runner, reactor, reactor)))
    table.add(make_comphash(config.comphash, Hasher(config.comphash, runner, on_hashed, bulk_runner), reactor))
    table.add(make_help(table))
    table.add(make_exit())
    return table
