"""Invisible, format, bidi, private-use, unassigned characters in logs and audit records: the rule
over every code point, derived here from unicodedata's categories and names (not from the code's
own list), for sanitise (main log, audit fields), log_word (auth log) and the audit JSON text."""

from __future__ import annotations

import io
import json
import re
import sys
import unicodedata
from collections import defaultdict

from support.unitharness import Harness
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from conchcmd.commands.builtin import make_exit
from conchcmd.core.audit import AuditLog, StreamTarget, sanitise
from conchcmd.core.logtargets import LOG_NAMESPACE
from conchcmd.server.authlog import log_word

#: Categories nobody can read as themselves: controls, format (zero-width, bidi, soft hyphen,
#: BOM, tags), surrogates, private-use, unassigned, line and paragraph separators.
HIDDEN_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
#: Printable by category, shown as nothing: fillers, variation selectors, the grapheme joiner,
#: Khmer's inherent vowels, the blank braille cell.
BLANK_NAME = re.compile(
    r"HANGUL (?:\w+ )?FILLER|VARIATION SELECTOR|GRAPHEME JOINER|VOWEL INHERENT|BRAILLE PATTERN BLANK"
)


def expected_hidden(code: int) -> bool:
    ch = chr(code)
    category = unicodedata.category(ch)
    if category in HIDDEN_CATEGORIES:
        return True
    if category == "Zs":
        return code != 0x20  # no-break, em, ideographic... spaces: blanks that are not the space
    return BLANK_NAME.search(unicodedata.name(ch, "")) is not None


def unescape(text: str) -> str:
    """sanitise's escapes read back (\\\\, \\xNN, \\uNNNN, \\UNNNNNNNN)."""
    return re.sub(
        r"\\(\\|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})",
        lambda m: "\\" if m.group(1) == "\\" else chr(int(m.group(1)[1:], 16)),
        text,
    )


def test_sanitise_escapes_exactly_the_hidden_characters_of_every_category() -> None:
    by_category: dict[str, list[int]] = defaultdict(list)
    for code in range(sys.maxunicode + 1):
        by_category[unicodedata.category(chr(code))].append(code)
    assert len(by_category) == 30  # every general category of the Unicode standard, Cn included
    wrong = {}
    for category, codes in by_category.items():
        for code in codes:
            ch = chr(code)
            out = sanitise(f"a{ch}b")
            escaped = out != f"a{ch}b"
            if escaped != (expected_hidden(code) or ch == "\\"):
                wrong[hex(code)] = (category, out)
            if escaped:
                assert out.isascii() and out.isprintable(), hex(code)
                if category != "Cs":  # (undecodable bytes come as U+DC80-DCFF: \xNN, the byte)
                    assert unescape(out) == f"a{ch}b", hex(code)
    assert wrong == {}
    # The asked-about ones by name: zero-width space, soft hyphen, BOM, word joiner, bidi controls.
    for ch in "\u200b\u00ad\ufeff\u2060\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029\ue000":
        assert ch not in sanitise(f"x{ch}y")
    assert sanitise("\U000f0000\U000e0041\U0010ffff") == "\\U000f0000\\U000e0041\\U0010ffff"
    assert sanitise("José Ελένη Дмитрий 日本 🙂") == "José Ελένη Дмитрий 日本 🙂"  # printable letters stay


def test_log_word_is_printable_ascii_and_reads_back_as_the_sanitised_text() -> None:
    every = "".join(map(chr, range(sys.maxunicode + 1)))
    word = log_word(every, len(every))
    assert word.isascii() and word.isprintable() and " " not in word
    assert unescape(word) == unescape(sanitise(every, len(every)))  # one more escape level, nothing lost
    assert log_word("ro\u200bot") == "ro\\u200bot"
    assert log_word("r\u043e\u043et") == "r\\u043e\\u043et"  # Cyrillic o: does not read as root
    assert log_word("Jos\u00e9") == "Jos\\xe9"


def test_audit_json_holds_no_hidden_character_raw_and_every_value_exactly() -> None:
    every = "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c < 0xE000)
    stream = io.StringIO()
    AuditLog(StreamTarget(stream), Clock()).record("command", argv=[every, "\ud800x\udfff"], user="é")
    text = stream.getvalue()
    assert [hex(ord(ch)) for ch in text if expected_hidden(ord(ch)) and ch != "\n"] == []
    assert "é" in text and "日" in text  # printable text is kept readable
    record = json.loads(text)
    assert record["argv"] == [every, "\ud800x\udfff"] and record["user"] == "é"


def test_the_dispatcher_logs_and_audits_the_user_name_it_is_given_escaped() -> None:
    """Login names are letters, digits, '.', '_', '-' (valid_user_name) today; the dispatcher does
    not rely on its callers for that: the name is sanitised in its log line and record."""
    harness = Harness([make_exit()])
    with capturedLogs() as events:
        run = harness.run("exit 3", user="op\u200bx\u202egnp")
    assert run.status == 3
    [line] = [formatEvent(e) for e in events if e.get("log_namespace") == LOG_NAMESPACE]
    assert line == "Cmd received from op\\u200bx\\u202egnp@192.0.2.7:50022 : exit 3"
    [record] = harness.audit.of("command")
    assert record["user"] == "op\\u200bx\\u202egnp"
