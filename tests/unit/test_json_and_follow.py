"""Output for automation (`--json` on comphash, lastlog and help, validated by parsing) and
`lastlog -f` (tail -F: appends, truncation, rotation; journalctl -f), driven by task.Clock with
commands run inline: no threads, no sleeping."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from support.outputs import RecordingOutput
from twisted.internet import defer, error
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from conchcmd.commands import lastlog
from conchcmd.commands.builtin import build_command_table, make_exit, make_help
from conchcmd.commands.comphash import Hasher, make_comphash
from conchcmd.commands.framework import EXIT_STATUS_HELP, CommandTable, InlineRunner, Outcome
from conchcmd.commands.lastlog import FOLLOW_POLL, FileTail, JournalTail, make_lastlog
from conchcmd.core.config import ComphashConfig, Config, LastlogConfig, UserPolicy

# -- helpers ---------------------------------------------------------------------------------------


def parse_lines(data: bytes) -> list[dict[str, Any]]:
    """Every line must be one JSON object; the output ends with a newline."""
    assert data.endswith(b"\n"), data[-50:]
    assert b"\x1b" not in data
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]


def parse_one(data: bytes) -> dict[str, Any]:
    (obj,) = parse_lines(data)
    return obj


class Follow:
    """One `lastlog` run through the Dispatcher, with the input-closed Deferred in the test's hands."""

    def __init__(self, harness: Any, line: str, *, interactive: bool = False, policy: UserPolicy | None = None):
        self.stdout, self.stderr = RecordingOutput(), RecordingOutput()
        self.input_closed: defer.Deferred[None] = defer.Deferred()
        self.clock: Clock = harness.clock
        self.result: list[Any] = []
        self.d = harness.dispatcher.dispatch(
            line,
            stdout=self.stdout,
            stderr=self.stderr,
            user="alice",
            peer="192.0.2.7:50022",
            fingerprint="SHA256:x",
            interactive=interactive,
            policy=policy,
            input_closed=self.input_closed,
        )
        self.d.addBoth(self.result.append)

    def poll(self, times: int = 1) -> bytes:
        before = len(self.stdout.data)
        for _ in range(times):
            self.clock.advance(FOLLOW_POLL)
        return self.stdout.data[before:]

    @property
    def done(self) -> bool:
        return bool(self.result)

    @property
    def outcome(self) -> Outcome:
        assert self.done, "the command is still running"
        assert isinstance(self.result[0], Outcome), self.result[0]
        return self.result[0]


def fds_open_on(*paths: Path) -> list[str]:
    """This process's file descriptors open on any of the paths (whatever GC does elsewhere)."""
    wanted = {str(p) for p in paths}
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}") in wanted:
                found.append(fd)
    return found


@pytest.fixture
def log_harness(harness, tmp_path: Path):
    """log_harness(*sources) -> a Harness with `lastlog` over those files, clock-driven follow."""

    def make(*paths: Path | str, lines: int = 10):
        config = LastlogConfig(sources=tuple(str(p) for p in paths), lines=lines, max_lines=1000)
        h = harness([])
        runner = InlineRunner()
        h.table.add(make_lastlog(config, [FileTail(str(p), runner, h.clock) for p in paths]))
        return h

    return make


# -- comphash --json ------------------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.txt").write_bytes(b"alpha\n")
    (root / "b.bin").write_bytes(bytes(range(256)) * 5000)
    (root / "empty").write_bytes(b"")
    (root / "dir").mkdir()
    (root / 'odd "name"\n.txt').write_bytes(b"odd\n")
    (tmp_path / "outside.txt").write_bytes(b"no\n")
    return root


@pytest.fixture
def comphash(harness, root: Path):
    config = ComphashConfig(roots=(str(root),))
    return harness([make_comphash(config, Hasher(config, InlineRunner()), Clock())])


@pytest.mark.parametrize("algorithm", ["sha256", "sha1", "sha512", "blake2b", "md5"])
def test_comphash_json_fields_match_hashlib(comphash, root: Path, algorithm: str) -> None:
    paths = [root / "a.txt", root / "b.bin", root / "empty"]
    run = comphash.run(f"comphash --json -a {algorithm} " + " ".join(map(str, paths)))
    assert (run.status, run.stderr) == (0, b"")
    records = parse_lines(run.stdout)
    assert records == [
        {
            "path": str(p),
            "algorithm": algorithm,
            "digest": hashlib.new(algorithm, p.read_bytes()).hexdigest(),
            "bytes": p.stat().st_size,
            "opened": str(p),
        }
        for p in paths
    ]
    assert all(list(r) == ["path", "algorithm", "digest", "bytes", "opened"] for r in records)


def test_comphash_json_reports_the_file_actually_opened(comphash, root: Path) -> None:
    (root / "link").symlink_to("a.txt")
    run = comphash.run(f"comphash --json {root}/link {root}/dir/../link")
    assert [(r["path"], r["opened"]) for r in parse_lines(run.stdout)] == [
        (f"{root}/link", f"{root}/a.txt"),
        (f"{root}/dir/../link", f"{root}/a.txt"),
    ]


def test_comphash_json_missing_path_is_an_error_object_and_exit_1(comphash, root: Path) -> None:
    run = comphash.run(f"comphash --json {root}/a.txt {root}/missing {root}/empty")
    assert run.status == 1
    assert run.stderr == b"", "in JSON mode errors are records on stdout"
    first, missing, last = parse_lines(run.stdout)
    assert first["digest"] == hashlib.sha256(b"alpha\n").hexdigest()
    assert missing == {"path": f"{root}/missing", "error": "No such file or directory"}
    assert last["bytes"] == 0


@pytest.mark.parametrize(
    ("operand", "error", "status"),
    [
        ("{tmp}/outside.txt", "outside the allowed roots", 126),
        ("{root}/dir", "Is a directory", 1),
        ("relative.txt", "path must be absolute", 2),
    ],
)
def test_comphash_json_refusals(comphash, root: Path, operand: str, error: str, status: int) -> None:
    path = operand.format(tmp=root.parent, root=root)
    run = comphash.run(f"comphash --json {path}")
    assert run.status == status
    assert parse_one(run.stdout) == {"path": path, "error": error}


def test_comphash_json_worst_status_wins(comphash, root: Path) -> None:
    run = comphash.run(f"comphash -j {root}/missing {root.parent}/outside.txt {root}/a.txt")
    assert run.status == 126
    assert [sorted(r) for r in parse_lines(run.stdout)] == [
        ["error", "path"],
        ["error", "path"],
        ["algorithm", "bytes", "digest", "opened", "path"],
    ]


def test_comphash_json_escapes_awkward_names(comphash, root: Path) -> None:
    name = root / 'odd "name"\n.txt'
    run = comphash.run(f"comphash --json '{name}'")
    assert run.status == 0
    (record,) = parse_lines(run.stdout)  # the newline in the name did not split the record
    assert record["path"] == str(name)
    assert record["digest"] == hashlib.sha256(b"odd\n").hexdigest()


def test_comphash_json_on_a_terminal_is_the_same_json(comphash, root: Path) -> None:
    run = comphash.run(f"comphash --json {root}/a.txt", interactive=True)
    assert parse_one(run.stdout)["path"] == f"{root}/a.txt"


# -- lastlog --json -------------------------------------------------------------------------------------


def test_lastlog_json_is_one_object_with_the_tail(log_harness, tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    lines = [f"Nov 26 12:00:{i:02d} host app: event {i}" for i in range(30)]
    log.write_text("\n".join(lines) + "\n")
    run = log_harness(log).run("lastlog --json -n 7")
    assert run.status == 0
    assert parse_one(run.stdout) == {"source": str(log), "lines": lines[-7:]}
    assert list(parse_one(run.stdout)) == ["source", "lines"]


def test_lastlog_json_default_line_count(log_harness, tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    log.write_bytes(b"".join(b"l%d\n" % i for i in range(50)))
    assert parse_one(log_harness(log, lines=4).run("lastlog -j").stdout)["lines"] == ["l46", "l47", "l48", "l49"]


def test_lastlog_json_replaces_invalid_utf8_and_keeps_control_characters_escaped(log_harness, tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    log.write_bytes(b"ok caf\xc3\xa9\nbad \xff\xfe byte\nesc \x1b[31mred\x1b[0m\ttab\nlast without newline")
    run = log_harness(log).run("lastlog --json")
    assert b"\x1b" not in run.stdout
    assert parse_one(run.stdout)["lines"] == [
        "ok caf\u00e9",
        "bad \ufffd\ufffd byte",
        "esc \x1b[31mred\x1b[0m\ttab",
        "last without newline",
    ]


def test_lastlog_json_of_an_empty_log(log_harness, tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    log.write_bytes(b"")
    assert parse_one(log_harness(log).run("lastlog --json").stdout) == {"source": str(log), "lines": []}


def test_lastlog_json_keeps_empty_lines(log_harness, tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    log.write_bytes(b"a\n\n\nb\n")
    assert parse_one(log_harness(log).run("lastlog --json").stdout)["lines"] == ["a", "", "", "b"]


def test_lastlog_json_of_a_big_tail_streamed_in_chunks(log_harness, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(lastlog, "STREAM_CHUNK", 1000)  # lines cross chunk boundaries
    log = tmp_path / "syslog"
    lines = [f"line {i} " + "x" * (i % 97) for i in range(2000)]
    log.write_text("\n".join(lines) + "\n")
    run = log_harness(log).run("lastlog --json -n 1000")
    assert len(run.stdout_writes) > 10
    assert parse_one(run.stdout)["lines"] == lines[-1000:]


def test_lastlog_json_error_when_no_log_is_plain_stderr(log_harness, tmp_path: Path) -> None:
    run = log_harness(tmp_path / "missing").run("lastlog --json")
    assert run.status == 1
    assert run.stdout == b""
    assert b"no system log available" in run.stderr


# -- help --json ------------------------------------------------------------------------------------------


@pytest.fixture
def full_table(tmp_path: Path) -> CommandTable:
    log = tmp_path / "syslog"
    log.write_bytes(b"x\n")
    config = Config(lastlog=LastlogConfig(sources=(str(log),)), comphash=ComphashConfig(roots=(str(tmp_path),)))
    return build_command_table(config, InlineRunner(), Clock())


def _help_run(harness, table: CommandTable, line: str, policy: UserPolicy | None = None) -> tuple[Outcome, Any]:
    h = harness([])
    h.table = table
    h.dispatcher.table = table
    out, err = RecordingOutput(), RecordingOutput()
    results: list[Any] = []
    h.dispatcher.dispatch(line, stdout=out, stderr=err, user="u", peer="p", fingerprint="f", policy=policy).addBoth(
        results.append
    )
    return results[0], (out, err)


def test_help_json_lists_every_command_with_name_summary_usage(harness, full_table: CommandTable) -> None:
    outcome, (out, _) = _help_run(harness, full_table, "help --json")
    assert outcome.status == 0
    doc = parse_one(out.data)
    assert list(doc) == ["commands"]
    assert doc["commands"] == [{"name": c.name, "summary": c.summary, "usage": c.usage} for c in full_table]
    assert [c["name"] for c in doc["commands"]] == ["lastlog", "comphash", "help", "exit"]
    assert all(c["summary"] and c["usage"].startswith(c["name"]) for c in doc["commands"])


def test_help_json_lists_only_what_a_restricted_user_may_run(harness, full_table: CommandTable) -> None:
    policy = UserPolicy(commands=frozenset({"lastlog"}))
    outcome, (out, _) = _help_run(harness, full_table, "help --json", policy)
    assert outcome.status == 0
    assert [c["name"] for c in parse_one(out.data)["commands"]] == ["lastlog", "help", "exit"]


def test_help_json_for_one_command(harness, full_table: CommandTable) -> None:
    _, (out, _) = _help_run(harness, full_table, "help comphash --json")
    (entry,) = parse_one(out.data)["commands"]
    assert entry["name"] == "comphash"
    assert entry["usage"] == "comphash [-a ALGORITHM] [--json] PATH..."


def test_help_json_for_a_command_the_user_may_not_run_is_an_error(harness, full_table: CommandTable) -> None:
    policy = UserPolicy(commands=frozenset({"lastlog"}))
    outcome, (out, err) = _help_run(harness, full_table, "help --json comphash", policy)
    assert outcome.status == 2
    assert out.data == b""
    assert b"no such command: comphash" in err.data


def test_help_text_documents_the_exit_statuses(harness, full_table: CommandTable) -> None:
    _, (out, _) = _help_run(harness, full_table, "help")
    text = out.text
    for code in ("0", "1", "2", "126", "127", "130"):
        assert f"  {code:>3}  " in text
    assert "\x1b" not in text


def test_readme_documents_the_same_exit_statuses() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = dict(re.findall(r"^\| (\d+) \| (.+) \|$", readme, re.MULTILINE))
    assert sorted(int(code) for code in rows) == sorted(int(code) for code, _ in EXIT_STATUS_HELP)


def test_help_json_with_a_custom_table(harness) -> None:
    table = CommandTable()
    table.add(make_help(table))
    table.add(make_exit())
    _, (out, _) = _help_run(harness, table, "help -j")
    assert [c["name"] for c in parse_one(out.data)["commands"]] == ["help", "exit"]


# -- lastlog -f on a file ----------------------------------------------------------------------------------


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "syslog"
    path.write_bytes(b"one\ntwo\nthree\n")
    return path


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def test_follow_prints_the_tail_then_what_is_appended(log_harness, log: Path) -> None:
    run = Follow(log_harness(log), "lastlog -n 2 -f")
    assert run.stdout.data == b"two\nthree\n"
    assert not run.done
    assert run.poll(3) == b""
    append(log, b"four\n")
    assert run.poll() == b"four\n"
    append(log, b"five\nsix\n")
    append(log, b"seven\n")
    assert run.poll() == b"five\nsix\nseven\n"
    assert not run.done


def test_follow_passes_partial_lines_as_they_come(log_harness, log: Path) -> None:
    run = Follow(log_harness(log), "lastlog -n 1 --follow")
    append(log, b"hal")
    assert run.poll() == b"hal"
    append(log, b"f\n")
    assert run.poll() == b"f\n"


def test_follow_restarts_from_the_beginning_after_truncation(log_harness, log: Path) -> None:
    run = Follow(log_harness(log), "lastlog -f")
    assert run.stdout.data == b"one\ntwo\nthree\n"
    log.write_bytes(b"new\n")  # same file, rewritten shorter (logrotate copytruncate)
    assert run.poll() == b"new\n"
    append(log, b"more\n")
    assert run.poll() == b"more\n"


def test_follow_after_truncation_to_empty(log_harness, log: Path) -> None:
    run = Follow(log_harness(log), "lastlog -f")
    log.write_bytes(b"")
    assert run.poll() == b""
    append(log, b"fresh\n")
    assert run.poll(2) == b"fresh\n"


def test_follow_continues_with_the_new_file_after_rotation(log_harness, log: Path) -> None:
    run = Follow(log_harness(log), "lastlog -n 1 -f")
    assert run.stdout.data == b"three\n"
    append(log, b"last words of the old file\n")
    log.rename(log.with_name("syslog.1"))
    log.write_bytes(b"first of the new file\n")
    assert run.poll() == b"last words of the old file\nfirst of the new file\n"
    append(log.with_name("syslog.1"), b"too late\n")
    append(log, b"second of the new file\n")
    assert run.poll() == b"second of the new file\n"


def test_follow_waits_while_the_log_is_rotated_away(log_harness, log: Path) -> None:
    run = Follow(log_harness(log), "lastlog -n 1 -f")
    log.rename(log.with_name("syslog.1"))
    append(log.with_name("syslog.1"), b"written after the rename\n")
    assert run.poll() == b"written after the rename\n"
    assert run.poll(2) == b""
    assert not run.done
    log.write_bytes(b"recreated\n")
    assert run.poll() == b"recreated\n"


def test_follow_across_two_rotations(log_harness, log: Path) -> None:
    run = Follow(log_harness(log), "lastlog -n 1 -f")
    for generation in range(1, 3):
        log.rename(log.with_name(f"syslog.{generation}"))
        log.write_bytes(b"gen %d\n" % generation)
        assert run.poll() == b"gen %d\n" % generation


def test_follow_ends_at_input_eof_with_0_and_closes_the_file(log_harness, log: Path) -> None:
    run = Follow(log_harness(log), "lastlog -f")
    assert len(fds_open_on(log)) == 1  # the followed file
    append(log, b"four\n")
    run.input_closed.callback(None)
    assert run.poll() == b"four\n"  # what arrived before the end is still sent
    assert run.outcome.status == 0
    assert fds_open_on(log) == []
    assert run.poll(3) == b""


def test_follow_ends_on_cancellation_with_130_and_closes_the_file(log_harness, log: Path) -> None:
    h = log_harness(log)
    run = Follow(h, "lastlog -f")
    run.poll()
    run.d.cancel()
    assert run.outcome.status == 130
    assert fds_open_on(log) == []
    assert h.audit.of("command")[-1]["exit_code"] == 130
    assert h.clock.getDelayedCalls() == [], "no poll left scheduled"


def test_follow_cancelled_after_a_rotation_closes_the_new_file(log_harness, log: Path) -> None:
    gc.collect()
    gc.disable()  # the check is about closing, not about what the garbage collector may do later
    try:
        run = Follow(log_harness(log), "lastlog -f")
        log.rename(log.with_name("syslog.1"))
        log.write_bytes(b"x\n")
        run.poll()
        assert len(fds_open_on(log, log.with_name("syslog.1"))) == 1  # only the new file
        run.d.cancel()
        assert run.outcome.status == 130
        assert fds_open_on(log, log.with_name("syslog.1")) == [], "the new file is left to the garbage collector"
    finally:
        gc.enable()
        gc.collect()


def test_follow_on_a_terminal_neutralises_control_bytes(log_harness, log: Path) -> None:
    run = Follow(log_harness(log), "lastlog -n 1 -f", interactive=True)
    append(log, b"\x1b]0;pwned\x07 \x1b[2J tab\there\n")
    assert run.poll() == b"?]0;pwned? ?[2J tab\there\n"


def test_follow_json_gives_one_object_per_line(log_harness, log: Path) -> None:
    run = Follow(log_harness(log), "lastlog -n 2 -f --json")
    assert parse_lines(run.stdout.data) == [
        {"source": str(log), "line": "two"},
        {"source": str(log), "line": "three"},
    ]
    append(log, b"fo")
    assert run.poll() == b"", "half a line waits for its end"
    append(log, b"ur \xff\nfive\n")
    assert parse_lines(run.poll()) == [
        {"source": str(log), "line": "four \ufffd"},
        {"source": str(log), "line": "five"},
    ]
    append(log, b"unterminated")
    run.input_closed.callback(None)
    tail = run.poll()
    assert run.outcome.status == 0
    assert parse_lines(tail) == [{"source": str(log), "line": "unterminated"}]
    assert parse_lines(run.stdout.data)[-1]["line"] == "unterminated"


def test_follow_json_across_truncation(log_harness, log: Path) -> None:
    run = Follow(log_harness(log), "lastlog -n 1 -f -j")
    log.write_bytes(b"restart\n")
    assert parse_lines(run.poll()) == [{"source": str(log), "line": "restart"}]


def test_follow_is_flow_controlled(log_harness, log: Path) -> None:
    """A follower whose output is not acknowledged reads no further (the client's window rules)."""

    class Stalled(RecordingOutput):
        def __init__(self) -> None:
            super().__init__()
            self.waiting: list[defer.Deferred[None]] = []

        def write(self, data: bytes) -> defer.Deferred[None]:
            self.writes.append(data)
            d: defer.Deferred[None] = defer.Deferred()
            self.waiting.append(d)
            return d

    h = log_harness(log)
    out = Stalled()
    h.dispatcher.dispatch("lastlog -n 1 -f", stdout=out, stderr=RecordingOutput(), user="u", peer="p", fingerprint="f")
    assert out.data == b"three\n"
    append(log, b"four\n")
    for _ in range(5):
        h.clock.advance(FOLLOW_POLL)
    assert out.data == b"three\n", "nothing more is read while the client does not take it"
    out.waiting.pop().callback(None)
    h.clock.advance(FOLLOW_POLL)
    assert out.data == b"three\nfour\n"


# -- lastlog -f on the journal --------------------------------------------------------------------------


class FakeProcess:
    def __init__(self) -> None:
        self.signals: list[str] = []
        self.paused = False

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False


class FakeProcessReactor:
    def __init__(self) -> None:
        self.spawned: list[tuple[Any, str, list[str], dict[str, str]]] = []
        self.process = FakeProcess()

    def spawnProcess(self, protocol: Any, executable: str, argv: list[str], env: dict[str, str]) -> FakeProcess:
        self.spawned.append((protocol, executable, argv, env))
        protocol.makeConnection(self.process)
        return self.process


@pytest.fixture
def journal(harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "journalctl"
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    reactor = FakeProcessReactor()
    h = harness([])
    h.table.add(make_lastlog(LastlogConfig(sources=("journal",)), [JournalTail(reactor)]))
    h.reactor = reactor
    return h


TERMINATED = Failure(error.ProcessTerminated(signal=15))


def answer_probe(journal: Any, output: bytes = b"an entry\n") -> None:
    """A follow first asks `journalctl -n 1` whether any entry is readable: answer it."""
    protocol, _, argv, _ = journal.reactor.spawned[-1]
    assert argv[1:] == ["-n", "1", "--no-pager", "-q"]
    if output:
        protocol.outReceived(output)
    protocol.processEnded(Failure(error.ProcessDone(0)))


def test_journal_follow_runs_journalctl_f_and_ends_it_at_eof(journal) -> None:
    run = Follow(journal, "lastlog -f -n 3")
    answer_probe(journal)
    (_, (protocol, _, argv, env)) = journal.reactor.spawned
    assert argv[1:] == ["-n", "3", "-f", "--no-pager", "-q"]
    assert env["SYSTEMD_COLORS"] == "0"
    protocol.outReceived(b"entry 1\nentry 2\n")
    protocol.outReceived(b"entry 3\n")
    assert run.stdout.data == b"entry 1\nentry 2\nentry 3\n"
    assert not run.done
    run.input_closed.callback(None)
    assert journal.reactor.process.signals == ["TERM"]
    protocol.processEnded(TERMINATED)
    assert run.outcome.status == 0
    assert run.stderr.data == b""


def test_journal_follow_interrupted_kills_journalctl_with_130(journal) -> None:
    run = Follow(journal, "lastlog -f")
    run.d.cancel()
    assert journal.reactor.process.signals == ["TERM"]
    assert run.outcome.status == 130


@pytest.mark.parametrize("line", ["lastlog -f", "lastlog -n 5"])
def test_journalctl_ending_after_an_interrupt_is_no_error(journal, line: str) -> None:
    """journalctl exits (killed) after the command was interrupted: nothing may fail then
    (an error left in a Deferred is logged as 'Unhandled error in Deferred')."""
    run = Follow(journal, line)
    protocol = journal.reactor.spawned[0][0]
    run.d.cancel()
    assert run.outcome.status == 130
    protocol.processEnded(TERMINATED)
    left: list[Any] = []
    protocol.ended.addBoth(left.append)
    assert not (left and isinstance(left[0], Failure)), left[0].getTraceback()


def test_journal_follow_json_is_one_object_per_line(journal) -> None:
    run = Follow(journal, "lastlog --follow --json")
    answer_probe(journal)
    protocol = journal.reactor.spawned[1][0]
    protocol.outReceived(b"a\nb")
    protocol.outReceived(b"c\n")
    assert parse_lines(run.stdout.data) == [
        {"source": "journal", "line": "a"},
        {"source": "journal", "line": "bc"},
    ]
    run.input_closed.callback(None)
    protocol.processEnded(TERMINATED)
    assert run.outcome.status == 0


def test_journal_json_without_follow(journal) -> None:
    run = Follow(journal, "lastlog --json -n 2")
    protocol = journal.reactor.spawned[0][0]
    assert "-f" not in journal.reactor.spawned[0][2]
    protocol.outReceived(b"x\ny\n")
    protocol.processEnded(Failure(error.ProcessDone(0)))
    assert parse_one(run.stdout.data) == {"source": "journal", "lines": ["x", "y"]}


def test_journal_failing_during_a_follow_is_reported(journal) -> None:
    run = Follow(journal, "lastlog -f")
    protocol = journal.reactor.spawned[0][0]
    protocol.errReceived(b"Failed to get journal access\n")
    protocol.processEnded(Failure(error.ProcessTerminated(exitCode=1)))
    assert run.outcome.status == 1
    assert run.stderr.data == b"lastlog: journalctl: Failed to get journal access\n"
