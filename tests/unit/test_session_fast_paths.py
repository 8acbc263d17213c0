"""The session path's shortcuts give what the general code gives: Conch's quiet loggers (debug and
info dropped, the rest as Twisted's descriptor logs it), the audit record's JSON (json.dumps's,
byte for byte) and its direct write (the same file, the same failure handling)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher

from conchcmd.core.audit import AuditLog, QuietLogger, _encode


class Chatty:
    log = QuietLogger()


class ChattierStill(Chatty):
    pass


@pytest.fixture
def events() -> Any:
    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def test_quiet_logger_drops_debug_and_info_and_logs_the_rest_as_twisted_would(events: list[dict[str, Any]]) -> None:
    thing = ChattierStill()
    thing.log.debug("channel {id} open", id=1)
    thing.log.info("sending close {id}", id=1)
    thing.log.emit(LogLevel.info, "via emit")
    assert events == []
    thing.log.warn("window {n}", n=5)
    thing.log.error("bad {n}", n=6)
    thing.log.emit(LogLevel.critical, "via emit")
    try:
        raise ValueError("boom")
    except ValueError:
        thing.log.failure("while {doing}", doing="closing")
    ChattierStill.log.warn("from the class")
    namespace = f"{__name__}.ChattierStill"  # Twisted's descriptor: the class it is read through
    assert [(e["log_level"], e["log_namespace"], e["log_source"], e["log_format"]) for e in events] == [
        (LogLevel.warn, namespace, thing, "window {n}"),
        (LogLevel.error, namespace, thing, "bad {n}"),
        (LogLevel.critical, namespace, thing, "via emit"),
        (LogLevel.critical, namespace, thing, "while {doing}"),
        (LogLevel.warn, namespace, ChattierStill, "from the class"),
    ]
    assert events[3]["log_failure"].check(ValueError)
    assert events[0]["n"] == 5 and events[3]["doing"] == "closing"


JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),  # NaN and the infinities too: dumps writes NaN, Infinity
        st.text(),  # any code point: controls, U+2028, lone surrogates
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(record=st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=8))
def test_audit_json_is_json_dumps_byte_for_byte(record: dict[str, Any]) -> None:
    assert _encode(record) == json.dumps(record, ensure_ascii=False)


def test_audit_json_refuses_what_json_dumps_refuses() -> None:
    for bad in ({"x": object()}, {"x": {1, 2}}, {"x": b"bytes"}):
        with pytest.raises(TypeError):
            json.dumps(bad, ensure_ascii=False)
        with pytest.raises(TypeError):
            _encode(bad)
    assert _encode({"n": math.inf, "after": "a failed one"}) == '{"n": Infinity, "after": "a failed one"}'


class Target:
    """A line target that fails while `failing` is set."""

    name = "target"

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.failing = False

    def write(self, line: bytes) -> None:
        if self.failing:
            raise OSError(28, "No space left on device")
        self.lines.append(line)

    def reopen(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_audit_record_written_directly_keeps_order_and_the_backlog_through_a_failure(
    events: list[dict[str, Any]],
) -> None:
    target = Target()
    audit = AuditLog(target, Clock(), host="h")  # type: ignore[arg-type]
    audit.record("one", n=1)
    target.failing = True
    audit.record("two", n=2)
    audit.record("three", n=3)
    assert audit.failure() == "No space left on device"
    target.failing = False
    audit.record("four", n=4)  # the backlog first, then this one
    assert audit.failure() is None
    assert [json.loads(line)["event"] for line in target.lines] == ["one", "two", "three", "four"]
    assert target.lines[0] == b'{"ts": "1970-01-01T00:00:00.000Z", "event": "one", "host": "h", "n": 1}\n'
    messages = [e["log_format"] for e in events if e.get("log_namespace") == "conchcmd.log"]
    assert len(messages) == 2 and "cannot be written" in messages[0] and "writable again" in messages[1]


def test_fast_logger_emits_what_twisted_s_logger_emits(events: list[dict[str, Any]]) -> None:
    from twisted.logger import Logger

    from conchcmd.core.logtargets import FastLogger

    fast, plain = FastLogger(namespace="conchcmd.log"), Logger(namespace="conchcmd.log")
    for logger in (fast, plain):
        logger.info("Cmd received from {user}@{peer} : {line}", user="u", peer="p", line="l")
        logger.warn("warned {n}", n=1)
        logger.emit(LogLevel.error, None, extra=True)
    ours, theirs = events[:3], events[3:]
    assert [{k: v for k, v in e.items() if k not in ("log_logger", "log_time")} for e in ours] == [
        {k: v for k, v in e.items() if k not in ("log_logger", "log_time")} for e in theirs
    ]
    assert all(e["log_logger"] is fast for e in ours) and all(isinstance(e["log_time"], float) for e in ours)
    trace: list[Any] = []
    fast.info("traced", log_trace=trace)
    assert trace[0] == (fast, fast.observer)
    del events[:]
    fast.emit("not a level", "x")  # type: ignore[arg-type]
    assert events[-1]["log_level"] == LogLevel.critical and "invalid log level" in events[-1]["log_format"]


@settings(max_examples=300, deadline=None)
@given(
    argv=st.lists(st.one_of(st.text(max_size=6), st.sampled_from(["-a", "sha1", "--json", "-", "--", "-j", "x"]))),
)
def test_parse_options_is_getopt_with_or_without_options(argv: list[str]) -> None:
    import getopt

    from conchcmd.commands.framework import UsageError, parse_options

    try:
        pairs, operands = getopt.gnu_getopt(list(argv), "a:j", ["algorithm=", "json"])
    except getopt.GetoptError:
        with pytest.raises(UsageError):
            parse_options(argv, "a:j", ["algorithm=", "json"])
        return
    assert parse_options(argv, "a:j", ["algorithm=", "json"]) == (dict(pairs), operands)


@settings(max_examples=300, deadline=None)
@given(line=st.text(alphabet=" \t\r\nab'\"\\#$", max_size=12))
def test_command_lines_split_as_shlex_splits_them(line: str) -> None:
    import shlex

    from conchcmd.commands.framework import UsageError, split_command_line

    try:
        expected = shlex.split(line, comments=False, posix=True)
    except ValueError:
        with pytest.raises(UsageError):
            split_command_line(line)
        return
    assert split_command_line(line) == expected


def test_a_partly_written_audit_line_is_removed_and_the_lines_before_it_stay(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from conchcmd.core import audit as audit_module

    path = tmp_path / "audit.jsonl"
    target = audit_module.AppendFile(str(path))
    target.write(b'{"event": "first"}\n')
    real_write = os.write
    calls: list[int] = []

    def half_then_full_disk(fd: int, data: Any) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data)[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(audit_module.os, "write", half_then_full_disk)
    with pytest.raises(OSError):
        target.write(b'{"event": "second", "padding": "' + b"x" * 100 + b'"}\n')
    monkeypatch.undo()
    assert path.read_bytes() == b'{"event": "first"}\n' and len(calls) == 2
    target.write(b'{"event": "third"}\n')  # reopened: the log goes on after the failure
    assert path.read_bytes() == b'{"event": "first"}\n{"event": "third"}\n'
