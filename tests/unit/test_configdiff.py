"""configdiff: every setting a reload can change is reported once, by the name check-config
prints, and the config digest follows check-config's output."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from conchcmd.core.config import Config, UserPolicy, parse_config
from conchcmd.edge.configdiff import APPLIED_ON_RELOAD, applies_on_reload, changed_settings, config_digest


def _other(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, tuple):
        return (*value, "x")
    if isinstance(value, Path):
        return value / "x"
    if value is None:
        return 3
    raise AssertionError(f"no other value for {value!r}")


def _leaves(config: Config) -> list[tuple[str, str | None]]:
    """(field, subfield) of every setting except users and source."""
    out: list[tuple[str, str | None]] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in ("users", "source"):
            continue
        if dataclasses.is_dataclass(value):
            out += [(f.name, sub.name) for sub in dataclasses.fields(value)]
        else:
            out.append((f.name, None))
    return out


def _printed_keys(tmp_path: Path) -> set[str]:
    """`table.key` (or `key` at the top) of every setting check-config prints, optional ones set."""
    config = parse_config(
        'trusted_user_ca_keys = "ca"\nrevoked_keys = "r"\nmax_clients_per_user = 2\naudit_group = "root"\n'
        'metrics_listen = "tcp:9122"\n',
        base_dir=tmp_path,
    )
    keys, table = set(), ""
    for line in config.describe().splitlines():
        line = line.lstrip("# ")
        if line.startswith("["):
            table = line.strip("[]") + "."
        elif m := re.match(r"([a-z_]+) = ", line):
            keys.add(table + m.group(1))
    return keys


def test_every_setting_is_reported_once_by_its_check_config_name(tmp_path: Path) -> None:
    base = Config()
    printed = _printed_keys(tmp_path)
    seen = []
    for name, sub in _leaves(base):
        if sub is None:
            changed = dataclasses.replace(base, **{name: _other(getattr(base, name))})
        else:
            inner = getattr(base, name)
            changed = dataclasses.replace(
                base, **{name: dataclasses.replace(inner, **{sub: _other(getattr(inner, sub))})}
            )
        (reported,) = changed_settings(base, changed)
        assert reported in printed, reported
        seen.append(reported)
    assert len(seen) == len(set(seen))
    assert set(seen) >= APPLIED_ON_RELOAD, "every setting said to apply at once exists"


def test_users_are_reported_each_by_name() -> None:
    old = Config(users={"a": UserPolicy(), "b": UserPolicy(commands=frozenset({"lastlog"}))})
    new = Config(users={"b": UserPolicy(), "c": UserPolicy()})
    assert changed_settings(old, new) == ["users.a", "users.b", "users.c"]
    assert all(applies_on_reload(s) for s in changed_settings(old, new))
    assert changed_settings(old, old) == []


@pytest.mark.parametrize(
    "setting", ["listen", "metrics_listen", "host_keys_dir", "max_sessions", "comphash.roots", "audit_log"]
)
def test_what_is_built_at_start_needs_a_restart(setting: str) -> None:
    assert not applies_on_reload(setting)


def test_the_digest_ignores_which_file_holds_the_settings(tmp_path: Path) -> None:
    text = 'audit_log = "/var/log/a.jsonl"\nhost_keys_dir = "/k"\nauthorized_keys = "/a/%u"\n'
    a = parse_config(text, base_dir=tmp_path, source=tmp_path / "a.toml")
    b = parse_config(text, base_dir=tmp_path, source=tmp_path / "b.toml")
    c = parse_config(text + "max_sessions = 3\n", base_dir=tmp_path, source=tmp_path / "a.toml")
    assert config_digest(a) == config_digest(b) != config_digest(c)
    assert re.fullmatch(r"[0-9a-f]{64}", config_digest(a))
