"""Fuzz target: the configuration parser (conchcmd.core.config.parse_config).

Any text either parses or raises ConfigError (never another exception, never unbounded memory);
what parses is printed by `check-config` (describe()) as TOML that parses back to the same Config.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from conchcmd.core.config import CIPHERS, KEX_ALGORITHMS, MACS, OPTIONAL_MACS, ConfigError, parse_config
from fuzz.guard import bounded, corpus, fuzz

BASE = Path("/srv/conchcmd")

TOP_KEYS = [
    "listen", "host_keys_dir", "authorized_keys", "max_clients", "audit_log", "banner_version",
    "login_grace_time", "idle_timeout", "keepalive_interval", "keepalive_count_max", "max_auth_tries",
    "max_sessions", "max_startups", "max_startups_per_source", "penalty_seconds", "penalty_max_seconds",
    "penalty_exempt",
    "kex_algorithms", "ciphers", "macs", "trusted_user_ca_keys", "revoked_keys", "permit_user_environment",
]  # fmt: skip
TABLES = {
    "lastlog": ["path", "lines", "max_lines"],
    "comphash": ["roots", "algorithm", "max_concurrent"],
    "shell": ["prompt"],
}
USER_KEYS = ["commands", "comphash_roots", "password_bcrypt"]
WORDS = [
    *KEX_ALGORITHMS, *CIPHERS, *MACS, *OPTIONAL_MACS, "journal", "/", "/var/log/syslog", "relative/path", "-",
    "sha256", "md5", "sha3_256", "lastlog", "comphash", "help", "exit", "shell", "tcp:2222", "{user}@{host}> ",
    "{user:999999999999}", "{user:2000000000}", "{0}", "{user.__class__}", "{host!r}", "{", "}", "conchcmd", "a-b",
    "$2b$12$" + "a" * 53, "\u2028", "\0", "x" * 70, "10.0.0.0/8", "10.0.0.1/8", "2001:db8::/33", "192.0.2.*",
    "!192.0.2.1", "unix:/run/x.sock", "systemd:domain=INET:index=0", "haproxy:tcp:2222", "tcp:70000", "tcp:x",
]  # fmt: skip

scalars = st.one_of(
    st.integers(-(2**65), 2**65),
    st.integers(0, 20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.sampled_from(WORDS),
    st.text(max_size=20),
)
values = st.one_of(scalars, st.lists(st.one_of(st.sampled_from(WORDS), scalars), max_size=4))


def toml_key(key: str) -> str:
    return key if key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key) else toml_value(key)


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return ("-" if value < 0 else "") + "inf" if math.isinf(value) else "nan" if math.isnan(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text) + '"'


@st.composite
def configs(draw: st.DrawFn) -> str:
    lines = [
        f"{toml_key(k)} = {toml_value(draw(values))}" for k in draw(st.lists(st.sampled_from(TOP_KEYS), max_size=5))
    ]
    for table, keys in TABLES.items():
        if draw(st.booleans()):
            lines.append(f"[{table}]")
            lines += [
                f"{toml_key(k)} = {toml_value(draw(values))}" for k in draw(st.lists(st.sampled_from(keys), max_size=3))
            ]
    for name in draw(
        st.lists(st.one_of(st.sampled_from(["alice", "ops.team", "-x", "a" * 65]), st.text(max_size=5)), max_size=2)
    ):
        lines.append(f"[users.{toml_key(name)}]")
        lines += [f"{k} = {toml_value(draw(values))}" for k in draw(st.lists(st.sampled_from(USER_KEYS), max_size=3))]
    if draw(st.booleans()):
        lines.append(f"{toml_key(draw(st.text(max_size=8)))} = {toml_value(draw(values))}")
    return "\n".join(lines) + "\n"


def check_config(text: str) -> None:
    with bounded():
        try:
            config = parse_config(text, base_dir=BASE)
        except ConfigError:
            return
        shown = config.describe()
        assert parse_config(shown, base_dir=BASE / "elsewhere") == replace(config, source=None), shown


@fuzz(400)
@given(text=configs())
@example(text='[shell]\nprompt = "{user:999999999999}"\n')
@example(text='[shell]\nprompt = "{user:2000000000}"\n')
@example(text='[shell]\nprompt = "{user.__class__.__mro__}"\n')
@example(text="login_grace_time = nan\n")
@example(text='banner_version = "a\\u2028b"\n')
def test_config_text(text: str) -> None:
    check_config(text)


@fuzz(200)
@given(text=st.text(max_size=200))
def test_config_random_text(text: str) -> None:
    check_config(text)


@pytest.mark.parametrize("data", corpus("config"))
def test_config_corpus(data: bytes) -> None:
    check_config(data.decode("utf-8"))


@pytest.mark.parametrize("prompt", ["{user:999999999999}", "{user:>10}", "{host!r}", "{user.__class__}", "{0}", "{"])
def test_a_prompt_with_more_than_plain_fields_is_refused(prompt: str) -> None:
    """Found by test_config_text: `{user:999999999999}` made the parser allocate ~1 TB (MemoryError)."""
    with pytest.raises(ConfigError, match=r"shell\.prompt: may use only \{user\} and \{host\}"):
        parse_config(f"[shell]\nprompt = {toml_value(prompt)}\n", base_dir=BASE)


def test_check_config_quotes_a_user_name_with_a_dot() -> None:
    """Found by test_config_corpus: `[users.ops.team]` read back as a nested table."""
    config = parse_config('[users."ops.team"]\ncommands = ["help"]\n', base_dir=BASE)
    assert '[users."ops.team"]' in config.describe()
    assert parse_config(config.describe(), base_dir=BASE).users == config.users
