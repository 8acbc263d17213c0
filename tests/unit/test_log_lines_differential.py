"""The log line format and level filter `serve` uses are Twisted's, byte for byte and event for
event: ClassicLines against textFileLogObserver's formatter, `message` against eventAsText, and
LevelFilter against FilteringLogObserver + LogLevelFilterPredicate, over generated events (odd
formats, Twisted's `{f()}` call syntax, tracebacks, times at second boundaries, other time zones)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    eventAsText,
    formatEventAsClassicLogText,
    formatTime,
)
from twisted.python.failure import Failure

from conchcmd.core.logtargets import (
    _TIME_FORMAT,
    AUTH_LOG_NAMESPACE,
    LOG_NAMESPACE,
    ClassicFileObserver,
    ClassicLines,
    LevelFilter,
    filtered,
    message,
)


class Thing:
    attr = "attribute\nwith a newline"

    def __repr__(self) -> str:
        return "<Thing \u2028>"

    def __format__(self, spec: str) -> str:
        return f"thing:{spec}"

    def method(self) -> str:
        return "called"


FORMATS = [
    "plain text",
    "",
    "{user} from {peer}",
    "{user!r} {peer!s} {peer!a}",
    "{n:>8} {n:08.3f} {n!r:^12}",
    "{thing} {thing:spec} {thing.attr} {thing.method()}",
    "{call()} and {user}",
    "{missing}",
    "{0}",
    "{",
    "}",
    "{{literal}} {user}",
    "{items[0]} {items[1]!r}",
    "{mapping[key]}",
    "line one\nline two {user}",
    "{user:{width}}",
    "caf\u00e9 \U0001f600 {user}",
]

VALUES = st.one_of(st.text(max_size=20), st.integers(), st.floats(allow_nan=False), st.none(), st.binary(max_size=8))

TIMES = st.one_of(
    st.none(),
    st.floats(min_value=0, max_value=4e9, allow_nan=False),
    st.integers(min_value=0, max_value=4_000_000_000).map(float),
    # just before a second boundary, where rounding to microseconds carries into the next second
    st.integers(min_value=1_700_000_000, max_value=1_800_000_000).map(lambda s: s + 0.9999996),
    st.integers(min_value=1_700_000_000, max_value=1_800_000_000).map(lambda s: s + 0.9999994),
    st.just(-1.5),
)

LEVELS = st.sampled_from([*LogLevel.iterconstants(), None])

NAMESPACES = st.one_of(
    st.sampled_from(
        [
            LOG_NAMESPACE,
            AUTH_LOG_NAMESPACE,
            f"{LOG_NAMESPACE}.sub",
            "conchcmd",
            "conchcmd.logger",
            "twisted.conch.ssh.transport.SSHServerTransport",
            "",
            "-",
            "a..b",
        ]
    ),
    st.text(alphabet="abc.\n", max_size=8),
)


def failure() -> Failure:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        return Failure()


@st.composite
def events(draw: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "user": draw(VALUES),
        "peer": draw(VALUES),
        "n": draw(st.floats(allow_nan=False, allow_infinity=False)),
        "thing": Thing(),
        "call": lambda: "result of a call",
        "items": [draw(VALUES), draw(VALUES)],
        "mapping": {"key": draw(VALUES)},
        "width": draw(st.integers(min_value=0, max_value=12)),
    }
    fmt = draw(st.one_of(st.sampled_from(FORMATS), st.text(alphabet="{}!:ab user", max_size=12)))
    kind = draw(st.sampled_from(["str", "bytes", "none", "absent", "other"]))
    if kind == "str":
        event["log_format"] = fmt
    elif kind == "bytes":
        event["log_format"] = fmt.encode()
    elif kind == "none":
        event["log_format"] = None
    elif kind == "other":
        event["log_format"] = 42
    for key, strategy in (("log_time", TIMES), ("log_level", LEVELS), ("log_namespace", NAMESPACES)):
        if draw(st.booleans()) or key == "log_time":
            event[key] = draw(strategy)
    if draw(st.integers(0, 9)) == 0:
        event["log_system"] = draw(st.sampled_from(["system", "sys\ntem", 7]))
    if draw(st.integers(0, 9)) == 0:
        event["log_failure"] = failure()
    return event


@pytest.fixture(params=["UTC", "Europe/Berlin", "America/St_Johns"])
def zone(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield request.param
    monkeypatch.undo()
    time.tzset()


def twisted_line(event: dict[str, Any]) -> str | None:
    return formatEventAsClassicLogText(event, formatTime=lambda when: formatTime(when, _TIME_FORMAT))


#: One formatter per time zone, kept across examples: its per-second cache is under test too.
LINES: dict[str, ClassicLines] = {}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(event=events())
def test_classic_lines_are_twisted_s_lines(zone: str, event: dict[str, Any]) -> None:
    lines = LINES.setdefault(zone, ClassicLines(_TIME_FORMAT))
    assert lines(dict(event)) == twisted_line(dict(event))


#: One observer pair per time zone, kept across examples: the fast path needs a stamped second.
OBSERVERS: dict[str, tuple[io.StringIO, ClassicFileObserver, io.StringIO, FileLogObserver]] = {}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(event=events(), again=st.floats(min_value=0, max_value=0.9))
def test_the_stdout_observer_writes_what_file_log_observer_with_classic_lines_writes(
    zone: str, event: dict[str, Any], again: float
) -> None:
    """ClassicFileObserver's one-step path against the general one, for each event and for the
    same event a moment later in the same second (the usual case: the timestamp is cached)."""
    if zone not in OBSERVERS:
        mine_out, theirs_out = io.StringIO(), io.StringIO()
        OBSERVERS[zone] = (mine_out, ClassicFileObserver(mine_out, _TIME_FORMAT), theirs_out,
                           FileLogObserver(theirs_out, ClassicLines(_TIME_FORMAT)))  # fmt: skip
    mine_out, mine, theirs_out, theirs = OBSERVERS[zone]
    later = dict(event)
    when = event.get("log_time")
    if isinstance(when, float) and when >= 0:
        later["log_time"] = int(when) + min(when - int(when) + again, 0.9999)
    for e in (event, later, later):
        start_mine, start_theirs = mine_out.tell(), theirs_out.tell()
        mine(dict(e))
        theirs(dict(e))
        assert mine_out.getvalue()[start_mine:] == theirs_out.getvalue()[start_theirs:]


def test_the_usual_line_takes_the_one_step_path_and_reads_as_twisted_s() -> None:
    out = io.StringIO()
    observer = ClassicFileObserver(out, _TIME_FORMAT)
    when = 1_764_453_045.25
    event = {"log_format": "Cmd from {user}\nnext", "user": "u", "log_time": when, "log_level": LogLevel.info}
    event["log_namespace"] = LOG_NAMESPACE
    observer(dict(event))  # the general path stamps the second ...
    observer.formatEvent = None  # type: ignore[assignment]  # ... and the next line does without it
    observer(dict(event, log_time=when + 0.5))
    assert out.getvalue() == twisted_line(event) * 2  # type: ignore[operator]


@settings(max_examples=300, deadline=None)
@given(event=events())
def test_message_is_twisted_s_event_text(event: dict[str, Any]) -> None:
    expected = eventAsText(dict(event), includeTraceback=True, includeTimestamp=False, includeSystem=False)
    assert message(dict(event)) == expected.rstrip("\n")


def test_one_formatter_serves_many_lines_across_seconds_and_a_dst_change(zone: str) -> None:
    """The cached timestamp is per second: lines in one second, the next, and around a DST change."""
    lines = ClassicLines(_TIME_FORMAT)
    dst_change = 1_774_746_000.0  # 2026-03-29 01:00 UTC: Berlin goes from +0100 to +0200
    for when in (1_764_453_045.25, 1_764_453_045.75, 1_764_453_046.0, dst_change - 0.5, dst_change, dst_change + 3601):
        event = {"log_format": "at {when}", "when": when, "log_time": when, "log_level": LogLevel.info}
        event["log_namespace"] = LOG_NAMESPACE
        assert lines(dict(event)) == twisted_line(dict(event))


@settings(max_examples=400, deadline=None)
@given(
    levels=st.dictionaries(NAMESPACES, st.sampled_from(list(LogLevel.iterconstants())), max_size=4),
    default=st.sampled_from(list(LogLevel.iterconstants())),
    sent=st.lists(st.tuples(LEVELS, st.one_of(st.none(), NAMESPACES)), max_size=12),
)
def test_level_filter_passes_what_twisted_s_filter_passes(
    levels: dict[str, LogLevel], default: LogLevel, sent: list[tuple[LogLevel | None, str | None]]
) -> None:
    predicate = LogLevelFilterPredicate(defaultLogLevel=default)
    for namespace, level in levels.items():
        predicate.setLogLevelForNamespace(namespace, level)
    theirs: list[dict[str, Any]] = []
    ours: list[dict[str, Any]] = []
    reference = FilteringLogObserver(theirs.append, [predicate])
    mine = LevelFilter(ours.append, default, levels)
    for level, namespace in sent * 2:  # twice: the second time from the per-namespace cache
        event: dict[str, Any] = {"log_format": "x"}
        if level is not None:
            event["log_level"] = level
        if namespace is not None:
            event["log_namespace"] = namespace
        reference(dict(event))
        mine(dict(event))
    assert ours == theirs


def test_serve_s_filter_shows_conchcmd_info_and_only_warnings_from_the_rest() -> None:
    seen: list[dict[str, Any]] = []
    show = filtered(seen.append)
    for namespace in (LOG_NAMESPACE, AUTH_LOG_NAMESPACE, "twisted.conch.ssh.transport.SSHServerTransport"):
        for level in (LogLevel.debug, LogLevel.info, LogLevel.warn):
            show({"log_format": "x", "log_level": level, "log_namespace": namespace})
    assert [(e["log_namespace"], e["log_level"]) for e in seen] == [
        (LOG_NAMESPACE, LogLevel.info),
        (LOG_NAMESPACE, LogLevel.warn),
        (AUTH_LOG_NAMESPACE, LogLevel.info),
        (AUTH_LOG_NAMESPACE, LogLevel.warn),
        ("twisted.conch.ssh.transport.SSHServerTransport", LogLevel.warn),
    ]
