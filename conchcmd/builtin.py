"""The built-in command set: `help` and `exit`, and the table that joins them to the others."""

from __future__ import annotations

import json
from typing import Any

from conchcmd.commands import (
    EXIT_STATUS_HELP,
    BlockingRunner,
    Command,
    CommandTable,
    ExitStatus,
    Invocation,
    SessionExit,
    UsageError,
    parse_int,
    parse_options,
)
from conchcmd.comphash import Hasher, make_comphash
from conchcmd.config import Config
from conchcmd.lastlog import build_sources, make_lastlog


async def _exit(inv: Invocation) -> int:
    if len(inv.args) > 1:
        raise UsageError("too many arguments")
    raise SessionExit(parse_int(inv.args[0], "status", 0, 255) if inv.args else None)


def make_exit() -> Command:
    return Command(
        name="exit",
        summary="end the session, with status N (default: the last command's status)",
        usage="exit [N]",
        run=_exit,
    )


def make_help(table: CommandTable) -> Command:
    """`help` lists the table it is given, so it never disagrees with what runs."""

    async def run(inv: Invocation) -> int:
        options, operands = parse_options(inv.args, "j", ["json"])
        inv.argv = [inv.argv[0], *operands]
        if len(inv.args) > 1:
            raise UsageError("too many arguments")
        if "-j" in options or "--json" in options:
            listed = [c for c in table if inv.policy.permits(c.name)]
            if inv.args:
                listed = [c for c in listed if c.name == inv.args[0]]
                if not listed:
                    raise UsageError(f"no such command: {inv.args[0]}")
            entries = [{"name": c.name, "summary": c.summary, "usage": c.usage} for c in listed]
            await inv.say(json.dumps({"commands": entries}) + "\n")
            return ExitStatus.OK
        if inv.args:
            command = table.get(inv.args[0])
            if command is None or not inv.policy.permits(command.name):
                raise UsageError(f"no such command: {inv.args[0]}")
            await inv.say(f"usage: {command.usage}\n{command.summary}\n")
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
    )


def build_command_table(config: Config, runner: BlockingRunner, reactor: Any) -> CommandTable:
    """The commands every session offers, each built from only what it needs."""
    table = CommandTable()
    table.add(make_lastlog(config.lastlog, build_sources(config.lastlog, runner, reactor, reactor)))
    table.add(make_comphash(config.comphash, Hasher(config.comphash, runner), reactor))
    table.add(make_help(table))
    table.add(make_exit())
    return table
