"""conchcmd.commands.framework.Dispatcher and the built-in `help` and `exit`: statuses, stderr, audit records."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet import defer
from twisted.logger import LogLevel, capturedLogs, formatEvent

from conchcmd.commands.builtin import build_command_table
from conchcmd.commands.framework import (
    EXIT_STATUS_HELP,
    Command,
    CommandError,
    CommandTable,
    ExitStatus,
    InlineRunner,
    Invocation,
    Outcome,
    parse_int,
    split_command_line,
)
from conchcmd.core.config import parse_config


@pytest.fixture
def builtin(harness, tmp_path: Path):
    """A Harness over the real command table (lastlog reading a temp file, comphash under tmp_path)."""
    log = tmp_path / "syslog"
    log.write_text("one\ntwo\n")
    config = parse_config(
        f'[lastlog]\npath = "{log}"\n[comphash]\nroots = ["{tmp_path}"]\n', base_dir=tmp_path, source=None
    )
    h = harness([])
    h.table = build_command_table(config, InlineRunner(), reactor=object())  # type: ignore[arg-type]
    h.dispatcher.table = h.table
    return h


def command(name: str, run, usage: str = "") -> Command:
    return Command(name=name, summary=f"the {name} command", usage=usage or name, run=run)


def test_unknown_command(builtin) -> None:
    run = builtin.run("frobnicate --all")
    assert run.outcome == Outcome(127)
    assert (run.out, run.err) == ("", "frobnicate: command not found\n")


def test_unknown_command_is_audited(builtin) -> None:
    builtin.run("rm -rf /")
    [record] = builtin.audit.of("command")
    assert record["argv"] == ["rm", "-rf", "/"]
    assert record["exit_code"] == 127


@pytest.mark.parametrize("line", ["comphash 'unclosed", 'lastlog "', "echo \\"])
def test_unbalanced_quotes_are_a_usage_error(builtin, line: str) -> None:
    run = builtin.run(line)
    assert run.outcome == Outcome(2)
    assert run.out == ""
    assert run.err.startswith("conchcmd: cannot parse the command line: ")


def test_unparseable_line_is_audited_with_the_sanitised_line(builtin) -> None:
    builtin.run("comphash '\x1b[2J")
    [record] = builtin.audit.of("command")
    assert record["argv"] == []
    assert record["line"] == "comphash '\\x1b[2J"
    assert record["exit_code"] == 2


@pytest.mark.parametrize("line", ["", "   ", "\t"])
def test_empty_line_does_nothing_and_is_not_audited(builtin, line: str) -> None:
    run = builtin.run(line, last_status=5)
    assert run.outcome == Outcome(0)
    assert (run.stdout, run.stderr) == (b"", b"")
    assert builtin.audit.events == []


def test_quoting_splits_like_a_shell(harness) -> None:
    seen: list[list[str]] = []

    async def record(inv: Invocation) -> int:
        seen.append(inv.argv)
        return 0

    harness([command("echo", record)]).run("""echo 'a b' "c\\"d" e\\ f ''""")
    assert seen == [["echo", "a b", 'c"d', "e f", ""]]


def test_exit_with_status(builtin) -> None:
    run = builtin.run("exit 5")
    assert run.outcome == Outcome(5, end_session=True)
    assert (run.stdout, run.stderr) == (b"", b"")
    [record] = builtin.audit.of("command")
    assert record["exit_code"] == 5


@pytest.mark.parametrize("last", [0, 1, 127])
def test_bare_exit_uses_the_last_status(builtin, last: int) -> None:
    assert builtin.run("exit", last_status=last).outcome == Outcome(last, end_session=True)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("exit 256", "exit: status must be between 0 and 255"),
        ("exit -1", "exit: status must be between 0 and 255"),
        ("exit soon", "exit: status must be a number, not 'soon'"),
        ("exit 1 2", "exit: too many arguments"),
    ],
)
def test_bad_exit_is_a_usage_error_and_does_not_end_the_session(builtin, line: str, message: str) -> None:
    run = builtin.run(line)
    assert run.outcome == Outcome(2, end_session=False)
    assert run.err == f"{message}\nusage: exit [N]\n"


@pytest.mark.parametrize(
    ("line", "number"),
    [("exit \u0663", "\u0663"), ("exit \uff11", "\uff11"), ("exit +5", "+5"), ("exit 1_0", "1_0"), ("exit ' 5'", " 5")],
)
def test_exit_status_takes_ascii_digits_only(builtin, line: str, number: str) -> None:
    """int() takes every one of these (an Arabic-Indic and a fullwidth digit among them); exit takes none."""
    run = builtin.run(line)
    assert run.outcome == Outcome(2, end_session=False)
    assert run.err == f"exit: status must be a number, not {number!r}\nusage: exit [N]\n"


def test_help_lists_every_command_and_the_exit_statuses(builtin) -> None:
    run = builtin.run("help")
    assert (run.status, run.stderr) == (0, b"")
    lines = run.out.splitlines()
    assert lines[0] == "Commands:"
    listed = [line.split()[0] for line in lines[1 : lines.index("")]]
    assert listed == [c.name for c in builtin.table] == ["lastlog", "comphash", "help", "exit"]
    for c in builtin.table:
        assert c.summary in run.out
    statuses = [line.split(None, 1) for line in lines[lines.index("Exit statuses:") + 1 :] if line.startswith("  ")]
    assert statuses == [[str(int(code)), meaning] for code, meaning in EXIT_STATUS_HELP]
    assert {int(code) for code, _ in EXIT_STATUS_HELP} == {0, 1, 2, 126, 127, 130}


def test_help_for_one_command_shows_its_usage(builtin) -> None:
    run = builtin.run("help lastlog")
    assert run.status == 0
    assert run.out.splitlines()[0] == "usage: lastlog [-n N] [-f] [--json]"
    assert run.out.splitlines()[1].startswith("show the last N lines of the system log")


def test_help_for_unknown_command(builtin) -> None:
    run = builtin.run("help nope")
    assert run.status == 2
    assert run.err == "help: no such command: nope\nusage: help [--json] [COMMAND]\n"


def test_audit_record_per_command_line(builtin, tmp_path: Path) -> None:
    builtin.run("lastlog -n 1")
    builtin.run(f"comphash {tmp_path}/missing")
    records = builtin.audit.of("command")
    assert records == [
        {
            "event": "command",
            "user": "alice",
            "peer": "192.0.2.7:50022",
            "fingerprint": "SHA256:testfingerprint",
            "argv": ["lastlog", "-n", "1"],
            "exit_code": 0,
            "duration_ms": 0,
        },
        {
            "event": "command",
            "user": "alice",
            "peer": "192.0.2.7:50022",
            "fingerprint": "SHA256:testfingerprint",
            "argv": ["comphash", f"{tmp_path}/missing"],
            "exit_code": 1,
            "duration_ms": 0,
        },
    ]


def test_audit_argv_is_sanitised(builtin) -> None:
    builtin.run("nosuch 'a\x1bb' 'c\nd'")
    [record] = builtin.audit.of("command")
    assert record["argv"] == ["nosuch", "a\\x1bb", "c\\x0ad"]


def test_audit_duration_is_measured_with_the_clock(harness) -> None:
    h = harness([])

    async def slow(inv: Invocation) -> int:
        h.clock.advance(1.5)
        await inv.say("done\n")
        h.clock.advance(0.0125)
        return 0

    h.table.add(command("slow", slow))
    run = h.run("slow")
    assert run.out == "done\n"
    [record] = h.audit.of("command")
    assert record["duration_ms"] == 1512.5


def test_command_error_status_and_message(harness) -> None:
    async def fail(inv: Invocation) -> int:
        raise CommandError("it broke", ExitStatus.NOT_PERMITTED)

    run = harness([command("fail", fail)]).run("fail")
    assert run.outcome == Outcome(126)
    assert run.err == "fail: it broke\n"


def test_command_return_value_is_the_status(harness) -> None:
    async def three(inv: Invocation) -> int:
        await inv.say("out\n")
        await inv.complain("err\n")
        return 3

    run = harness([command("three", three)]).run("three")
    assert (run.status, run.out, run.err) == (3, "out\n", "err\n")


def test_cancelling_a_waiting_command_gives_130_and_is_audited(harness, sync) -> None:
    async def hang(inv: Invocation) -> int:
        await defer.Deferred()  # never fires
        return 0

    h = harness([command("hang", hang)])
    d, stdout, stderr = h.start("hang")
    assert not d.called
    assert h.audit.events == []
    h.clock.advance(2)
    d.cancel()
    assert sync.success(d) == Outcome(130)
    assert (stdout.data, stderr.data) == (b"", b"")
    [record] = h.audit.of("command")
    assert record["argv"] == ["hang"]
    assert record["exit_code"] == 130
    assert record["duration_ms"] == 2000


def test_cancellation_reaches_the_awaited_deferred(harness, sync) -> None:
    cancelled: list[bool] = []

    async def hang(inv: Invocation) -> int:
        await defer.Deferred(lambda _: cancelled.append(True))
        return 0

    d, _, _ = harness([command("hang", hang)]).start("hang")
    d.cancel()
    assert cancelled == [True]
    assert sync.success(d).status == 130


def test_unexpected_exception_is_an_internal_error(harness) -> None:
    async def crash(inv: Invocation) -> int:
        raise RuntimeError("secret detail")

    h = harness([command("crash", crash)])
    run = h.run("crash")
    assert run.outcome == Outcome(1)
    assert run.err == "conchcmd: internal error\n"
    assert "secret detail" not in run.err
    [record] = h.audit.of("command")
    assert record["exit_code"] == 1


def test_a_command_that_crashes_again_and_again_logs_one_traceback(harness) -> None:
    """A user who can make a command crash must not flood the log: the traceback once per place
    in the code, then one line per run (it was a critical-level traceback each time)."""

    async def crash(inv: Invocation) -> int:
        raise RuntimeError("simulated command bug")

    h = harness([command("crash", crash)])
    with capturedLogs() as events:
        for _ in range(20):
            assert h.run("crash").outcome == Outcome(1)
    bugs = [e for e in events if e.get("log_format", "").startswith("Internal error")]
    assert len(bugs) == 20
    first, *again = bugs
    assert first["log_level"] == LogLevel.error and "simulated command bug" in first["log_failure"].getTraceback()
    assert formatEvent(first).startswith("Internal error running crash from ")
    assert formatEvent(first).endswith("; exit status 1")
    assert all("log_failure" not in e and "traceback logged before" in e["log_format"] for e in again)
    assert not [e for e in events if e.get("log_level") == LogLevel.critical]


def test_command_table_refuses_duplicates() -> None:
    async def nothing(inv: Invocation) -> int:
        return 0

    table = CommandTable([command("a", nothing)])
    with pytest.raises(ValueError, match="duplicate command a"):
        table.add(command("a", nothing))


def test_parse_int_bounds() -> None:
    assert parse_int("7", "-n", 1, 10) == 7
    assert parse_int("010", "-n", 1, 10) == 10


def test_split_command_line_keeps_hash_as_a_word() -> None:
    assert split_command_line("comphash /tmp/#file") == ["comphash", "/tmp/#file"]
