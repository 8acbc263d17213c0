"""sanitise() returns text with nothing to escape as it is (a regex check instead of a loop over
every character): the result is the character-by-character rule's, for any text and limit."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from conchcmd.core.audit import _LOG_UNSAFE, sanitise


def by_character(value: str | bytes, limit: int) -> str:
    """The rule, one character at a time (sanitise's slow path, written out independently)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")
    out = []
    for ch in value[:limit]:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        elif 0xD800 <= code < 0xE000:
            out.append(f"\\x{code & 0xFF:02x}")
        elif _LOG_UNSAFE.match(ch):
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out) + ("..." if len(value) > limit else "")


#: Mostly plain text (the fast path), with the characters that must be escaped mixed in.
TEXT = st.text(
    alphabet=st.one_of(
        st.characters(min_codepoint=0x20, max_codepoint=0x7E),
        st.sampled_from("\\\x00\x1b\x7f\x85\x9f\xa0\u061c\u200e\u2028\u202e\u2066\u2069\u206a\udc80\U0001f600é"),
    ),
    max_size=40,
)


@settings(max_examples=500, deadline=None)
@given(value=st.one_of(TEXT, st.binary(max_size=40)), limit=st.integers(min_value=0, max_value=50))
def test_sanitise_is_the_character_rule(value: str | bytes, limit: int) -> None:
    assert sanitise(value, limit) == by_character(value, limit)


def test_plain_text_comes_back_as_it_is_and_long_text_is_cut() -> None:
    assert sanitise("comphash /srv/data/file.bin") == "comphash /srv/data/file.bin"
    assert sanitise("x" * 30, 20) == "x" * 20 + "..."
    assert sanitise("ok\u2028" + "x" * 30, 20) == "ok\\u2028" + "x" * 17 + "..."
