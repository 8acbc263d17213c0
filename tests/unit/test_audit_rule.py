"""The `rule` of a command refused with status 126, as the dispatcher audits it, and the channel's
own sink (connection, channel, kind) receiving the record instead of the server's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from support.outputs import RecordingOutput

from conchcmd.commands.framework import Command, CommandError, ExitStatus, Invocation
from conchcmd.core.audit import BoundAudit, MemoryAuditLog
from conchcmd.core.config import UserPolicy


async def _refuses_twice(inv: Invocation) -> int:
    inv.refuse("outside roots: /first")
    return inv.refuse("outside roots: /second")


async def _raises_126(inv: Invocation) -> int:
    raise CommandError("not for you", ExitStatus.NOT_PERMITTED)


async def _notes_but_succeeds(inv: Invocation) -> int:
    inv.refuse("outside roots: /x")
    return ExitStatus.OK  # a rule is audited only with the 126 it explains


async def _fails(inv: Invocation) -> int:
    raise CommandError("no such file")


COMMANDS = [
    Command("twice", "", "twice", _refuses_twice),
    Command("raises", "", "raises", _raises_126),
    Command("noted", "", "noted", _notes_but_succeeds),
    Command("fails", "", "fails", _fails),
]


def test_the_rule_is_the_first_one_noted_or_the_126_error_message(harness: Callable[..., Any]) -> None:
    h = harness(COMMANDS)
    for line in ("twice", "raises", "noted", "fails", "nosuch"):
        h.run(line)
    assert [(e["argv"][0], e["exit_code"], e.get("rule")) for e in h.audit.of("command")] == [
        ("twice", 126, "outside roots: /first"),
        ("raises", 126, "not for you"),
        ("noted", 0, None),
        ("fails", 1, None),
        ("nosuch", 127, None),
    ]


def test_a_policy_refusal_is_command_not_permitted(harness: Callable[..., Any]) -> None:
    h = harness(COMMANDS)
    d = h.dispatcher.dispatch(
        "fails",
        stdout=RecordingOutput(),
        stderr=RecordingOutput(),
        user="alice",
        peer="p",
        fingerprint="f",
        policy=UserPolicy(commands=frozenset({"twice"})),
    )
    assert d.result.status == 126
    (record,) = h.audit.of("command")
    assert record["rule"] == "command not permitted"


def test_the_channel_sink_gets_the_record_and_is_asked_about_failures(harness: Callable[..., Any]) -> None:
    h = harness(COMMANDS)
    channel_log = MemoryAuditLog()
    channel_log.failure = lambda: "Read-only file system"  # type: ignore[method-assign]
    sink = BoundAudit(channel_log, connection="c0ffee", channel=2, kind="pty-shell")
    d = h.dispatcher.dispatch(
        "noted", stdout=RecordingOutput(), stderr=RecordingOutput(), user="u", peer="p", fingerprint="f", audit=sink
    )
    assert d.result.status == 126
    assert h.audit.events == []
    (record,) = channel_log.events
    assert {k: record[k] for k in ("connection", "channel", "kind", "rule")} == {
        "connection": "c0ffee",
        "channel": 2,
        "kind": "pty-shell",
        "rule": "audit log cannot be written",
    }
