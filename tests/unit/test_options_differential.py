"""conchcmd's authorized_keys options parser against AsyncSSH's (asyncssh.auth_keys), over generated
option strings.

Both read the same lines; where a line uses none of the features listed in KNOWN_DIFFERENCES, the
two must agree: both refuse it, or both accept it with the same options and values. Each known
difference has its own test below, showing what each parser does with it. conchcmd follows sshd
(test_sshd_differential.py checks that against the real sshd); AsyncSSH is a second, independent
reading of the same format.
"""

from __future__ import annotations

from typing import Any

import pytest
from asyncssh import KeyImportError
from asyncssh.auth_keys import _SSHAuthorizedKeyEntry
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from conchcmd.policy.authorized_keys import parse_authorized_keys

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32))).public_key()
KEY_FIELDS = KEY.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode() + " someone@example"

#: Where the two parsers part, with what each does; the generator marks every item it makes with
#: the differences it exercises, and lines with none of them must be read alike.
KNOWN_DIFFERENCES = {
    "case": "option names in another case: sshd (and conchcmd) accept them, AsyncSSH takes them as other options",
    "unquoted": "NAME=value without quotes: sshd refuses the line, AsyncSSH takes the value",
    "backslash": "a backslash not before a quote: sshd keeps it, AsyncSSH drops it and keeps the next character",
    "empty-item": "an empty item (',,'): sshd skips it, AsyncSSH records an option named ''",
    "unknown": "an option sshd does not know: sshd refuses the line, AsyncSSH keeps it",
    "repeated": "command=, from= or principals= twice: sshd refuses the line, AsyncSSH keeps both or the last",
    "unchecked": "a malformed expiry-time=, tunnel= or permitlisten= value: sshd refuses, AsyncSSH does not check",
    "service-port": "permitopen= with a service name as the port: sshd looks it up, AsyncSSH refuses the line",
    "principals-without-ca": "principals= without cert-authority: sshd refuses the line, AsyncSSH ignores it",
}

FLAGS = [
    "restrict",
    "cert-authority",
    "pty",
    "no-pty",
    "port-forwarding",
    "no-port-forwarding",
    "agent-forwarding",
    "no-agent-forwarding",
    "x11-forwarding",
    "no-x11-forwarding",
    "user-rc",
    "no-user-rc",
    "touch-required",
    "no-touch-required",
    "verify-required",
]
#: Values each option takes, and the differences a value exercises (beyond quoting).
VALUES: dict[str, list[tuple[str, frozenset[str]]]] = {
    "command": [
        ("lastlog", frozenset()),
        ("lastlog -n 5", frozenset()),
        ("comphash /srv/a,b", frozenset()),
        ('echo \\"quoted\\"', frozenset()),
        ("", frozenset()),
        ("a\\b", frozenset({"backslash"})),
    ],
    "from": [
        ("127.0.0.1", frozenset()),
        ("10.0.0.0/8,!10.1.0.0/16", frozenset()),
        ("192.168.*", frozenset()),
    ],
    "principals": [("alice", frozenset()), ("alice,ops-*", frozenset())],
    "environment": [("LANG=C", frozenset()), ("A_1=x y", frozenset())],
    "permitopen": [
        ("localhost:22", frozenset()),
        ("[::1]:2222", frozenset()),
        ("db.example:*", frozenset()),
        ("localhost:ssh", frozenset({"service-port"})),
    ],
    "permitlisten": [("localhost:8080", frozenset()), ("x:y:z", frozenset({"unchecked"}))],
    "expiry-time": [("20991231", frozenset()), ("20991231Z", frozenset()), ("2099", frozenset({"unchecked"}))],
    "tunnel": [("any", frozenset()), ("5", frozenset()), ("tun0", frozenset({"unchecked"}))],
}
ONCE = ("command", "from", "principals")


@st.composite
def option_item(draw: st.DrawFn, differences: bool) -> tuple[str, str, frozenset[str]]:
    """One item of an options field: (name, text, differences it exercises); with `differences`
    false, only items both parsers should read alike."""
    kinds = ["flag", "flag", "value", "value", "value", *(["empty", "unknown"] if differences else [])]
    kind = draw(st.sampled_from(kinds))
    if kind == "empty":
        return "", "", frozenset({"empty-item"})
    if kind == "unknown":
        return "unknown", draw(st.sampled_from(["no-such-flag", 'no-such="value"'])), frozenset({"unknown"})
    name = draw(st.sampled_from(FLAGS if kind == "flag" else sorted(VALUES)))
    labels: set[str] = set()
    written = name
    if differences and draw(st.booleans()) and draw(st.booleans()):
        written = "".join(c.upper() if draw(st.booleans()) else c for c in name)
        if written != name:
            labels.add("case")
    if kind == "flag":
        return name, written, frozenset(labels)
    value, value_labels = draw(st.sampled_from([v for v in VALUES[name] if differences or not v[1]]))
    labels |= value_labels
    plain = all(c not in ' \t,"\\' for c in value)
    if differences and plain and value and draw(st.integers(0, 4)) == 0:
        return name, f"{written}={value}", frozenset(labels | {"unquoted"})
    return name, f'{written}="{value}"', frozenset(labels)


@st.composite
def options_field(draw: st.DrawFn, differences: bool = True) -> tuple[str, frozenset[str]]:
    """An options field and the known differences it exercises (see `option_item`)."""
    unique = None if differences else (lambda item: item[0])  # each option once
    items = draw(st.lists(option_item(differences), min_size=1, max_size=5, unique_by=unique))
    if (
        not differences
        and any(n == "principals" for n, _, _ in items)
        and all(n != "cert-authority" for n, _, _ in items)
    ):
        items.append(("cert-authority", "cert-authority", frozenset()))
    labels: set[str] = set()
    for _, _, item_labels in items:
        labels |= item_labels
    names = [name for name, _, _ in items]
    if any(names.count(name) > 1 for name in ONCE):
        labels.add("repeated")
    if "environment" in names and len({t for n, t, _ in items if n == "environment"}) < names.count("environment"):
        labels.add("repeated")  # the same variable twice: AsyncSSH keeps one, sshd both (the first wins)
    if "principals" in names and "cert-authority" not in names:
        labels.add("principals-without-ca")
    if names[-1] == "" or names[0] == "":
        labels.add("empty-item")
    return ",".join(text for _, text, _ in items), frozenset(labels)


def conchcmd_reading(line: str) -> dict[str, Any] | None:
    """The options conchcmd takes from the line, or None if it refuses it (environment= allowed,
    as AsyncSSH allows it)."""
    parsed = parse_authorized_keys(line + "\n", "test", permit_environment=True)
    if parsed.unreadable or not parsed.entries or parsed.entries[0].refused is not None:
        return None
    out: dict[str, Any] = {}
    for name, value in parsed.entries[0].options:
        if value is None:
            out[name] = True
        elif name == "permitopen":
            host, _, port = value.rpartition(":")
            number: int | str | None = None if port == "*" else int(port) if port.isdigit() else port
            out.setdefault(name, set()).add((host.removeprefix("[").removesuffix("]"), number))
        elif name == "environment":
            variable, _, content = value.partition("=")
            out.setdefault(name, {})[variable] = content
        elif name == "command":
            out[name] = value
        else:
            out.setdefault(name, []).append(value)
    return out


class _RawPatterns(_SSHAuthorizedKeyEntry):
    """AsyncSSH's entry, keeping from= and principals= as the text it unquoted (its pattern objects
    do not give the text back); everything else is AsyncSSH's own handling."""

    def _add_raw(self, option: str, value: str) -> None:
        self.options.setdefault(option, []).append(value)  # type: ignore[attr-defined]

    _handlers = {**_SSHAuthorizedKeyEntry._handlers, "from": _add_raw, "principals": _add_raw}


def asyncssh_reading(line: str) -> dict[str, Any] | None:
    """The options AsyncSSH takes from the line, or None if it refuses it."""
    try:
        entry = _RawPatterns(line)
    except (KeyImportError, ValueError):
        return None
    return dict(entry.options)


@settings(max_examples=300, deadline=None)
@given(options_field(differences=False))
def test_lines_without_a_known_difference_are_read_alike(field: tuple[str, frozenset[str]]) -> None:
    text, labels = field
    line = f"{text} {KEY_FIELDS}"
    assert not labels
    assert conchcmd_reading(line) == asyncssh_reading(line), line


@settings(max_examples=300, deadline=None)
@given(options_field())
def test_lines_with_known_differences_are_read_alike_without_them(field: tuple[str, frozenset[str]]) -> None:
    """Any line: neither parser fails other than by refusing it, and where the generator used no
    known difference, they agree."""
    text, labels = field
    line = f"{text} {KEY_FIELDS}"
    ours, theirs = conchcmd_reading(line), asyncssh_reading(line)
    assert labels <= KNOWN_DIFFERENCES.keys()
    if not labels:
        assert ours == theirs, line


def test_a_plain_line_is_read_alike() -> None:
    line = f'restrict,pty,command="lastlog -n 5",from="127.0.0.1",permitopen="[::1]:2222" {KEY_FIELDS}'
    expected = {
        "restrict": True,
        "pty": True,
        "command": "lastlog -n 5",
        "from": ["127.0.0.1"],
        "permitopen": {("::1", 2222)},
    }
    assert conchcmd_reading(line) == asyncssh_reading(line) == expected


REFUSED = None
#: (difference, options field, conchcmd's reading, AsyncSSH's reading)
KNOWN_CASES = [
    ("case", 'COMMAND="x"', {"command": "x"}, {"COMMAND": ["x"]}),
    ("case", "No-Pty", {"no-pty": True}, {"No-Pty": True}),
    ("unquoted", "command=lastlog", REFUSED, {"command": "lastlog"}),
    ("backslash", 'command="a\\b"', {"command": "a\\b"}, {"command": "ab"}),
    (
        "empty-item",
        "no-pty,,restrict",
        {"no-pty": True, "restrict": True},
        {"no-pty": True, "": True, "restrict": True},
    ),
    ("unknown", "no-such-flag", REFUSED, {"no-such-flag": True}),
    ("repeated", 'command="a",command="b"', REFUSED, {"command": "b"}),
    ("unchecked", 'expiry-time="2099"', REFUSED, {"expiry-time": ["2099"]}),
    ("unchecked", 'tunnel="tun0"', REFUSED, {"tunnel": ["tun0"]}),
    ("service-port", 'permitopen="localhost:ssh"', {"permitopen": {("localhost", "ssh")}}, REFUSED),
    ("principals-without-ca", 'principals="alice"', REFUSED, {"principals": ["alice"]}),
]


@pytest.mark.parametrize(("difference", "options", "ours", "theirs"), KNOWN_CASES)
def test_known_difference(difference: str, options: str, ours: Any, theirs: Any) -> None:
    line = f"{options} {KEY_FIELDS}"
    assert conchcmd_reading(line) == ours
    assert asyncssh_reading(line) == theirs


def test_every_known_difference_is_shown() -> None:
    assert {case[0] for case in KNOWN_CASES} == KNOWN_DIFFERENCES.keys()
