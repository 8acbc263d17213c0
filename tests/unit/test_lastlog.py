"""conchcmd.commands.lastlog: reading a file's tail from its end, and the `lastlog` command via the Dispatcher."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from conchcmd.commands import lastlog
from conchcmd.commands.framework import InlineRunner
from conchcmd.commands.lastlog import FileTail, JournalTail, build_sources, find_tail_start, make_lastlog
from conchcmd.core.config import LastlogConfig


class CountingReader:
    """A binary file wrapper that counts the bytes read through it."""

    def __init__(self, f: io.BufferedIOBase | io.BytesIO):
        self.f = f
        self.bytes_read = 0

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.f.seek(offset, whence)

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.bytes_read += len(data)
        return data


def expected_tail(data: bytes, lines: int) -> bytes:
    """The last `lines` lines the slow, obvious way."""
    all_lines = data.splitlines(keepends=True)
    return b"".join(all_lines[-lines:]) if lines else b""


def tail_of(data: bytes, lines: int) -> bytes:
    start = find_tail_start(io.BytesIO(data), len(data), lines)
    return data[start:]


@pytest.mark.parametrize(
    ("data", "lines", "tail"),
    [
        (b"a\nb\nc\n", 2, b"b\nc\n"),
        (b"a\nb\nc", 2, b"b\nc"),
        (b"a\nb\nc\n", 1, b"c\n"),
        (b"a\nb\nc", 1, b"c"),
        (b"a\nb\nc\n", 3, b"a\nb\nc\n"),
        (b"a\nb\nc\n", 10, b"a\nb\nc\n"),
        (b"only line", 5, b"only line"),
        (b"", 3, b""),
        (b"\n", 1, b"\n"),
        (b"a\n\n\n", 2, b"\n\n"),
        (b"\n\nlast\n", 2, b"\nlast\n"),
    ],
)
def test_find_tail_start(data: bytes, lines: int, tail: bytes) -> None:
    assert tail_of(data, lines) == tail


@pytest.mark.parametrize("block", [1, 2, 3, 4, 7])
@pytest.mark.parametrize(
    "data",
    [
        b"aaa\nbb\nc\n\ndddd\neeeee\nf\n",
        b"aaa\nbb\nc\n\ndddd\neeeee\nf",
        b"0123456789\n" * 5,
        b"\n" * 9,
        b"x" * 20 + b"\n" + b"y" * 20,
    ],
)
def test_find_tail_start_across_scan_block_boundaries(monkeypatch: pytest.MonkeyPatch, block: int, data: bytes) -> None:
    monkeypatch.setattr(lastlog, "SCAN_BLOCK", block)
    for lines in range(1, data.count(b"\n") + 3):
        assert tail_of(data, lines) == expected_tail(data, lines), (block, lines)


def test_find_tail_start_reads_only_the_tail_of_a_big_file(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    line = b"Jan  1 00:00:00 host daemon[123]: " + b"x" * 60 + b"\n"
    with path.open("wb") as f:
        f.write(line * 100_000)  # ~9.5 MB
    size = path.stat().st_size
    with path.open("rb") as raw:
        reader = CountingReader(raw)
        start = find_tail_start(reader, size, 10)  # type: ignore[arg-type]
    assert start == size - 10 * len(line)
    assert reader.bytes_read <= lastlog.SCAN_BLOCK + 1
    assert reader.bytes_read < size // 100


# --- the `lastlog` command -----------------------------------------------------------------


def write_log(path: Path, count: int) -> bytes:
    data = b"".join(f"line {i}\n".encode() for i in range(1, count + 1))
    path.write_bytes(data)
    return data


@pytest.fixture
def lastlog_harness(harness, tmp_path: Path):
    """lastlog_harness(*paths, lines=10, max_lines=50) -> a Harness whose `lastlog` reads those files."""

    def make(*paths: Path | str, lines: int = 10, max_lines: int = 50):
        config = LastlogConfig(sources=tuple(str(p) for p in paths), lines=lines, max_lines=max_lines)
        runner = InlineRunner()
        return harness([make_lastlog(config, [FileTail(str(p), runner, Clock()) for p in paths])])

    return make


def test_lastlog_prints_the_default_number_of_lines(lastlog_harness, tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    data = write_log(log, 25)
    run = lastlog_harness(log).run("lastlog")
    assert (run.status, run.stderr) == (0, b"")
    assert run.stdout == expected_tail(data, 10)
    assert run.out.splitlines()[0] == "line 16"


@pytest.mark.parametrize("line", ["lastlog -n 3", "lastlog -n3", "lastlog --lines 3", "lastlog --lines=3"])
def test_lastlog_n(lastlog_harness, tmp_path: Path, line: str) -> None:
    log = tmp_path / "syslog"
    write_log(log, 25)
    run = lastlog_harness(log).run(line)
    assert (run.status, run.stdout, run.stderr) == (0, b"line 23\nline 24\nline 25\n", b"")


def test_lastlog_n_more_than_the_file_has_prints_it_all(lastlog_harness, tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    data = write_log(log, 4)
    run = lastlog_harness(log).run("lastlog -n 40")
    assert (run.status, run.stdout) == (0, data)


def test_lastlog_default_lines_come_from_config(lastlog_harness, tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    write_log(log, 25)
    assert lastlog_harness(log, lines=2).run("lastlog").stdout == b"line 24\nline 25\n"


def test_lastlog_n_equal_to_max_lines_is_allowed(lastlog_harness, tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    data = write_log(log, 60)
    run = lastlog_harness(log, max_lines=50).run("lastlog -n 50")
    assert (run.status, run.stdout) == (0, expected_tail(data, 50))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("lastlog -n 0", "lastlog: -n must be between 1 and 50"),
        ("lastlog -n 51", "lastlog: -n must be between 1 and 50"),
        ("lastlog -n -3", "lastlog: -n must be between 1 and 50"),
        ("lastlog -n ten", "lastlog: -n must be a number, not 'ten'"),
        ("lastlog -n 1_0", "lastlog: -n must be a number, not '1_0'"),
        ("lastlog -n +5", "lastlog: -n must be a number, not '+5'"),
        ("lastlog -n ٣", "lastlog: -n must be a number, not '٣'"),
        ("lastlog -n \uff11", "lastlog: -n must be a number, not '\uff11'"),  # fullwidth 1
        ("lastlog -n ' 5'", "lastlog: -n must be a number, not ' 5'"),
        ("lastlog -n '5 '", "lastlog: -n must be a number, not '5 '"),
        ("lastlog -n ''", "lastlog: -n must be a number, not ''"),
        ("lastlog -n -1", "lastlog: -n must be between 1 and 50"),
        ("lastlog --lines=+5", "lastlog: -n must be a number, not '+5'"),
        ("lastlog -n " + "9" * 5000, "lastlog: -n must be between 1 and 50"),
        ("lastlog -n", "lastlog: option -n requires argument"),
        ("lastlog -x", "lastlog: option -x not recognized"),
        ("lastlog extra", "lastlog: unexpected argument 'extra'"),
        ("lastlog -n 3 extra", "lastlog: unexpected argument 'extra'"),
    ],
)
def test_lastlog_usage_errors(lastlog_harness, tmp_path: Path, line: str, message: str) -> None:
    log = tmp_path / "syslog"
    write_log(log, 5)
    run = lastlog_harness(log, max_lines=50).run(line)
    assert run.status == 2
    assert run.stdout == b""
    assert run.err == f"{message}\nusage: lastlog [-n N] [-f] [--json]\n"


def test_lastlog_n_with_leading_zeros_is_still_a_number(lastlog_harness, tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    data = write_log(log, 10)
    run = lastlog_harness(log, max_lines=50).run("lastlog -n 0000000000000000000000000000005")
    assert (run.status, run.stdout) == (0, expected_tail(data, 5))


def test_lastlog_without_any_log_is_a_clear_error(lastlog_harness, tmp_path: Path) -> None:
    run = lastlog_harness(tmp_path / "syslog", tmp_path / "messages").run("lastlog")
    assert run.status == 1
    assert run.stdout == b""
    tried = f"{tmp_path}/syslog, {tmp_path}/messages"
    assert run.err == f"lastlog: no system log available (tried {tried}); set [lastlog] path\n"


def test_lastlog_falls_back_to_the_next_source(lastlog_harness, tmp_path: Path) -> None:
    second = tmp_path / "messages"
    write_log(second, 3)
    run = lastlog_harness(tmp_path / "missing", second).run("lastlog -n 1")
    assert (run.status, run.stdout, run.stderr) == (0, b"line 3\n", b"")


def test_lastlog_uses_the_first_available_source(lastlog_harness, tmp_path: Path) -> None:
    first, second = tmp_path / "syslog", tmp_path / "messages"
    first.write_bytes(b"from syslog\n")
    second.write_bytes(b"from messages\n")
    assert lastlog_harness(first, second).run("lastlog").stdout == b"from syslog\n"


def test_lastlog_skips_a_directory_source(lastlog_harness, tmp_path: Path) -> None:
    directory = tmp_path / "dir"
    directory.mkdir()
    second = tmp_path / "messages"
    second.write_bytes(b"ok\n")
    assert lastlog_harness(directory, second).run("lastlog").stdout == b"ok\n"


def test_lastlog_interactive_neutralises_terminal_controls(lastlog_harness, tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    log.write_bytes(b"\x1b[31mred\x1b[0m\ttab \x07bell\rcr\x7f caf\xc3\xa9\n")
    run = lastlog_harness(log).run("lastlog", interactive=True)
    assert run.stdout == b"?[31mred?[0m\ttab ?bell?cr? caf\xc3\xa9\n"


def test_lastlog_not_interactive_passes_bytes_through(lastlog_harness, tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    raw = b"\x1b[31mred\x1b[0m\r\n\xff\xfe\n"
    log.write_bytes(raw)
    assert lastlog_harness(log).run("lastlog").stdout == raw


def test_lastlog_streams_in_bounded_chunks(lastlog_harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lastlog, "STREAM_CHUNK", 16)
    log = tmp_path / "syslog"
    data = write_log(log, 30)
    run = lastlog_harness(log, lines=20).run("lastlog")
    assert run.stdout == expected_tail(data, 20)
    assert len(run.stdout_writes) > 1
    assert max(len(w) for w in run.stdout_writes) <= 16


def test_lastlog_audit_record(lastlog_harness, tmp_path: Path) -> None:
    log = tmp_path / "syslog"
    write_log(log, 5)
    h = lastlog_harness(log)
    h.run("lastlog -n 0")
    [record] = h.audit.of("command")
    assert record["argv"] == ["lastlog", "-n", "0"]
    assert record["exit_code"] == 2


# --- sources -------------------------------------------------------------------------------


def test_build_sources_maps_journal_to_journal_tail_and_paths_to_file_tails() -> None:
    config = LastlogConfig(sources=("/var/log/syslog", "journal"))
    sources = build_sources(config, InlineRunner(), reactor=object(), clock=Clock())  # type: ignore[arg-type]
    assert [type(s) for s in sources] == [FileTail, JournalTail]
    assert [s.describe() for s in sources] == ["/var/log/syslog", "the systemd journal"]


def _executable(path: Path, mode: int = 0o755) -> None:
    path.write_text("#!/bin/sh\necho fake journal\n")
    path.chmod(mode)


def test_journal_available_when_journalctl_is_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "journalctl")
    monkeypatch.setenv("PATH", f"{tmp_path / 'empty'}{os.pathsep}{bin_dir}")
    assert JournalTail(reactor=object()).available()  # type: ignore[arg-type]


def test_journal_unavailable_without_journalctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert not JournalTail(reactor=object()).available()  # type: ignore[arg-type]


def test_journal_unavailable_when_journalctl_is_not_executable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _executable(tmp_path / "journalctl", mode=0o644)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert not JournalTail(reactor=object()).available()  # type: ignore[arg-type]


def test_lastlog_stops_at_the_size_seen_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync) -> None:
    # A log that grows while it is streamed must not keep the command running.
    monkeypatch.setattr(lastlog, "STREAM_CHUNK", 8)
    log = tmp_path / "syslog"
    data = write_log(log, 5)
    received: list[bytes] = []

    def out(chunk: bytes):
        received.append(chunk)
        with log.open("ab") as f:
            f.write(b"appended while streaming\n")
        return defer.succeed(None)

    sync.success(
        defer.Deferred.fromCoroutine(FileTail(str(log), InlineRunner(), Clock()).tail(10, out, stop=defer.Deferred()))
    )
    assert b"".join(received) == data


def test_lastlog_out_of_descriptors_says_so(lastlog_harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EMFILE when opening the log is reported as itself, not as a missing or unreadable log."""
    log = tmp_path / "syslog"
    write_log(log, 3)
    real_open = open

    def no_descriptors(path, *args, **kwargs):
        if str(path) == str(log):
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", no_descriptors)
    run = lastlog_harness(log).run("lastlog")
    assert (run.status, run.stdout) == (1, b"")
    assert run.err == f"lastlog: {log}: Too many open files\n"
