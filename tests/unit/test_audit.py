"""conchcmd.core.audit: sanitise() and the JSON-lines AuditLog."""

from __future__ import annotations

import io
import json
import unicodedata
from enum import IntEnum
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from conchcmd.core.audit import MAX_TEXT, AuditLog, MemoryAuditLog, StreamTarget, sanitise


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain text", "plain text"),
        ("a\x00b", "a\\x00b"),
        ("\x1b[2J\x1b]0;pwned\x07", "\\x1b[2J\\x1b]0;pwned\\x07"),
        ("line1\nline2\r\n", "line1\\x0aline2\\x0d\\x0a"),
        ("tab\there", "tab\\x09here"),
        ("del\x7f", "del\\x7f"),
        ("c1 \x85 \x9b \x80 \x9f", "c1 \\x85 \\x9b \\x80 \\x9f"),
        ("é日本🙂", "é日本🙂"),
        ("\xa0\u3000", "\\xa0\\u3000"),
        (b"\xff\xfeok".decode("utf-8", "surrogateescape"), "\\xff\\xfeok"),
        (b"bytes \x1b\xff", "bytes \\x1b\\xff"),
        (b"caf\xc3\xa9", "café"),
        ("one\u2028two\u2029three", "one\\u2028two\\u2029three"),
        ("abc\u202egnp.exe", "abc\\u202egnp.exe"),
    ],
)
def test_sanitise_escapes_what_could_drive_a_terminal_or_split_a_line(value: str | bytes, expected: str) -> None:
    assert sanitise(value) == expected


def test_sanitise_truncates_long_text_with_an_ellipsis() -> None:
    assert sanitise("x" * (MAX_TEXT + 1)) == "x" * MAX_TEXT + "..."
    assert sanitise("abcdef", limit=3) == "abc..."


def test_sanitise_does_not_mark_text_at_the_limit() -> None:
    assert sanitise("x" * MAX_TEXT) == "x" * MAX_TEXT
    assert sanitise("abc", limit=3) == "abc"


def test_sanitise_output_has_no_control_characters_or_surrogates() -> None:
    everything = "".join(chr(c) for c in range(0x100)) + "\udc80\ud800"
    out = sanitise(everything)
    assert [ch for ch in out if unicodedata.category(ch) in ("Cc", "Cs")] == []
    out.encode("utf-8")  # strict: no lone surrogates left


class FlushCountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0
        self.flushed_text: list[str] = []

    def flush(self) -> None:
        self.flushes += 1
        self.flushed_text.append(self.getvalue())
        super().flush()


def test_audit_log_writes_one_json_object_per_line_with_ts_and_event() -> None:
    stream = FlushCountingStream()
    clock = Clock()
    clock.advance(1_700_000_000.25)
    log = AuditLog(StreamTarget(stream), clock)
    log.record("connect", peer="192.0.2.1:4000")
    clock.advance(1.5)
    log.record("command", user="alice", argv=["comphash", "/etc/hostname"], exit_code=0, duration_ms=1.25)
    lines = stream.getvalue().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"ts": "2023-11-14T22:13:20.250Z", "event": "connect", "peer": "192.0.2.1:4000"},
        {
            "ts": "2023-11-14T22:13:21.750Z",
            "event": "command",
            "user": "alice",
            "argv": ["comphash", "/etc/hostname"],
            "exit_code": 0,
            "duration_ms": 1.25,
        },
    ]
    assert stream.getvalue().endswith("\n")


def test_audit_log_flushes_every_event() -> None:
    stream = FlushCountingStream()
    log = AuditLog(StreamTarget(stream), Clock())
    log.record("connect", peer="p")
    log.record("disconnect", peer="p")
    assert stream.flushes == 2
    # each flush happens after its own complete line is written
    assert stream.flushed_text[0].count("\n") == 1
    assert stream.flushed_text[1].count("\n") == 2


def test_audit_log_keeps_non_ascii_and_escapes_newlines_inside_values() -> None:
    stream = io.StringIO()
    AuditLog(StreamTarget(stream), Clock()).record("auth", user="jürgen\nfake", ok=False)
    [line] = stream.getvalue().splitlines()
    assert "jürgen" in line
    assert json.loads(line)["user"] == "jürgen\nfake"


def test_audit_log_open_appends_to_a_file_and_close_closes_it(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"event": "old"}\n')
    log = AuditLog.open(str(path), Clock())
    log.record("connect", peer="p")
    assert [json.loads(x)["event"] for x in path.read_text().splitlines()] == ["old", "connect"]
    log.close()
    with pytest.raises(ValueError):
        log.record("late")


def test_memory_audit_log_filters_by_event() -> None:
    log = MemoryAuditLog()
    log.record("connect", peer="a")
    log.record("command", exit_code=0)
    assert log.of("command") == [{"event": "command", "exit_code": 0}]


EVERY_CHARACTER = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)
LONE_SURROGATES = "\ud800x\udfff"  # JSON readers join an escaped high+low pair: keep them apart


def test_every_audit_record_is_one_line_for_any_line_based_reader(tmp_path: Path) -> None:
    """U+2028, U+2029, U+0085 and every other character str.splitlines() splits at are escaped."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog.open(str(path), Clock())
    log.record("command", user="x\u2028y", argv=["a\u2029b", "c\x85d", "e\x1cf\x0bg\x0ch"])
    log.record("command", argv=[EVERY_CHARACTER, LONE_SURROGATES])  # a UTF-8 file cannot hold the last raw
    log.record("disconnect", reason="\r\n\u2028")
    log.close()
    text = path.read_text(encoding="utf-8")
    assert text.isascii() is False  # non-ASCII text is kept readable, not all escaped
    for lines in (text.splitlines(), text.split("\n")[:-1]):
        assert [json.loads(line)["event"] for line in lines] == ["command", "command", "disconnect"]
    records = [json.loads(line) for line in text.split("\n")[:-1]]
    assert records[0]["user"] == "x\u2028y"
    assert records[0]["argv"] == ["a\u2029b", "c\x85d", "e\x1cf\x0bg\x0ch"]
    assert records[1]["argv"] == [EVERY_CHARACTER, LONE_SURROGATES]  # escaped, not altered
    assert records[2]["reason"] == "\r\n\u2028"


def test_sanitise_returns_text_it_would_not_change_as_it_is_and_escapes_the_rest_as_before() -> None:
    """sanitise() returns a text without anything to escape in one regex search: for every code
    point, alone and in a text it truncates, the result is what the character-by-character
    escaping (forced here by a leading backslash) gives."""
    differ = [c for c in range(0x110000) if sanitise(chr(c)) != sanitise("\\" + chr(c))[2:]]
    assert differ == []
    for ch in map(chr, range(0, 0x110000, 97)):
        assert sanitise(ch * 5, limit=3) == sanitise("\\" + ch * 5, limit=4)[2:]
    assert sanitise("plain text", limit=5) == "plain..."
    assert sanitise(b"caf\xc3\xa9 \xff") == "café \\xff"


def test_record_timestamps_are_datetimes_milliseconds_at_every_edge_of_a_second() -> None:
    """`ts` is made once per second plus the milliseconds: the same text as datetime's isoformat
    (which rounds to the microsecond first, half to even), also just before a second ends, when
    the clock goes back, and before 1970."""
    from datetime import UTC, datetime

    clock = Clock()
    stream = io.StringIO()
    log = AuditLog(StreamTarget(stream), clock)
    base = 1_700_000_000
    fractions = (0.0, 0.0004999, 0.0005, 0.25, 0.9994999, 0.9995, 0.9999994, 0.9999995, 0.99999999)
    times = [base + f for f in fractions] + [base - 1 + 0.9999995, base + 86399.9999996, 0.5, -0.25, -1.9999995]
    for when in times:
        clock.rightNow = when
        log.record("connect")
    stamps = [json.loads(line)["ts"] for line in stream.getvalue().splitlines()]
    expected = [datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z") for t in times]
    assert stamps == expected
    assert stamps[7] == "2023-11-14T22:13:21.000Z"  # .9999995 rounds up into the next second


def _reference_line(ts: str, event: str, host: str | None, fields: dict[str, object]) -> str:
    """A record's line as json.dumps writes the record dict (what AuditLog wrote before it built
    lines itself), with the hidden characters escaped as AuditLog escapes them."""
    from conchcmd.core.audit import _json_safe

    entry = {"ts": ts, "event": event, **({"host": host} if host is not None else {}), **fields}
    return _json_safe(json.dumps(entry, ensure_ascii=False)) + "\n"


class Level(IntEnum):
    NOT_PERMITTED = 126


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12) | st.sampled_from(
    ["", 'q"uote', "back\\slash", "tab\tnl\nnul\x00", "del\x7f", "é\u200b\u2028", "x\ud800y"]
)
_PLAIN = st.one_of(  # what records hold: written without json's encoder
    _TEXT,
    st.integers(-(2**70), 2**70),
    st.sampled_from([Level.NOT_PERMITTED, True, False, None, 0.1, -0.0, 1e300, 1.25, 1e16, 5e-324]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(_TEXT, max_size=4),
    st.lists(_TEXT, max_size=2).map(tuple),
)
_VALUE = _PLAIN | st.one_of(  # and anything else json takes, decided by json's encoder
    st.sampled_from([float("nan"), float("inf"), -float("inf")]),
    st.lists(st.integers(), max_size=2).map(tuple),
    st.dictionaries(_TEXT, st.integers(), max_size=2),
    st.lists(st.lists(_TEXT, max_size=2), max_size=2),
)
_NAMES = st.sampled_from(["user", "peer", "argv", "exit_code", "é", "ts", "host", "channel", "kind", 'a"b'])


@settings(max_examples=300, deadline=None)
@given(
    host=st.none() | _TEXT,
    bound=st.dictionaries(_NAMES, _PLAIN, max_size=3),
    fields=st.dictionaries(_NAMES, _PLAIN, max_size=6),
    event=_TEXT,
)
def test_record_lines_are_what_json_dumps_writes_for_the_record(
    host: str | None, bound: dict[str, object], fields: dict[str, object], event: str
) -> None:
    """AuditLog writes a record's line itself (and a BoundAudit's fields once) rather than
    through json's encoder: for any fields, names and values (lists, tuples, IntEnums, floats,
    non-ASCII, quotes, controls, the names ts and host) the bytes are the ones json.dumps
    wrote, and a bound field still wins over a field of the same name."""
    _assert_lines_as_json_dumps(host, bound, fields, event)


@settings(max_examples=200, deadline=None)
@given(
    host=st.none() | _TEXT,
    bound=st.dictionaries(_NAMES, _VALUE, max_size=3),
    fields=st.dictionaries(_NAMES, _VALUE, max_size=4),
    event=_TEXT,
)
def test_record_lines_with_any_json_value_are_what_json_dumps_writes(
    host: str | None, bound: dict[str, object], fields: dict[str, object], event: str
) -> None:
    """The same with values the line builder leaves to json's encoder (NaN, dicts, nested lists)."""
    _assert_lines_as_json_dumps(host, bound, fields, event)


def _assert_lines_as_json_dumps(
    host: str | None, bound: dict[str, object], fields: dict[str, object], event: str
) -> None:
    from conchcmd.core.audit import BoundAudit

    clock = Clock()
    clock.advance(1_700_000_000.25)
    stream = io.StringIO()
    log = AuditLog(StreamTarget(stream), clock, host=host)
    log.record(event, **fields)
    BoundAudit(log, **bound).record(event, **fields)
    BoundAudit(BoundAudit(log, **bound), extra=1).record(event, **fields)
    ts = "2023-11-14T22:13:20.250Z"
    inner = {**bound, "extra": 1, **bound}
    assert stream.getvalue() == (
        _reference_line(ts, event, host, fields)
        + _reference_line(ts, event, host, {**bound, **fields, **bound})
        + _reference_line(ts, event, host, {**inner, **fields, **inner})
    )
