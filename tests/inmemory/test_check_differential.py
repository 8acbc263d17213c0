"""`conchcmd check --command` against the in-memory server: for each (user policy, roots, command)
the dry run must give the exit status the server's exec gives (issue 11: check said "allowed"
where the server refused with 126, ignoring `roots` and `comphash_roots`)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.keys import authorized_line, ed25519_key
from support.serverfiles import toml_text
from support.sshclient import RecordingChannel
from support.world import World, make_world

from conchcmd.core.config import ComphashConfig, Config, UserPolicy
from conchcmd.edge.cli import main

USER_KEY = 21
# Paths in the table: ROOT is the world's root (holding hello.txt, sub/inner.txt, a symlink
# `out` to OUTSIDE and a directory `dir`); OUTSIDE is a directory beside it.


@dataclass(frozen=True)
class Case:
    command: str
    roots: tuple[str, ...] = ("ROOT",)
    commands: tuple[str, ...] | None = None
    user_roots: tuple[str, ...] | None = None
    expected: int = 0  # what the server says: the test checks the server too, so the table stays true


CASES = [
    Case("comphash ROOT/hello.txt"),
    Case("comphash OUTSIDE/secret", expected=126),  # the defect: check said "allowed"
    Case("comphash /etc/hostname", expected=126),
    Case("comphash ROOT/out/secret", expected=126),  # a symlink inside the root leading out
    Case("comphash ROOT/../outside/secret", expected=126),
    Case("comphash ROOT/sub/../hello.txt"),
    Case("comphash ROOT/hello.txt", roots=("ROOT/sub",), expected=126),
    Case("comphash ROOT/sub/inner.txt", roots=("ROOT/sub",)),
    Case("comphash ROOT/hello.txt", user_roots=("ROOT/sub",), expected=126),  # comphash_roots narrows
    Case("comphash ROOT/sub/inner.txt", user_roots=("ROOT/sub",)),
    Case("comphash ROOT/hello.txt OUTSIDE/secret", expected=126),  # the worst of the paths
    Case("comphash ROOT/hello.txt ROOT/missing", expected=1),
    Case("comphash ROOT/missing OUTSIDE/missing", expected=126),  # nothing outside can be probed
    Case("comphash ROOT/dir", expected=1),
    Case("comphash relative/path", expected=2),
    Case("comphash -a crc32 ROOT/hello.txt", expected=2),
    Case("comphash", expected=2),
    Case("comphash ROOT/hello.txt", commands=("lastlog",), expected=126),
    Case("lastlog -n 3", commands=("lastlog",)),
    Case("lastlog -n 0", expected=2),
    Case("lastlog extra", expected=2),
    Case("lastlog", commands=("comphash",), expected=126),
    Case("help comphash", commands=("lastlog",), expected=2),  # help hides what is not permitted
    Case("help --json lastlog", commands=("lastlog",)),
    Case("help a b", expected=2),
    Case("exit 1 2", expected=2),
    Case("rm -rf /", expected=127),
    Case("comphash 'unterminated", expected=2),
]


def status_from_check(out: str) -> int:
    """The status `check` predicts: 0 when allowed, else the worst "(status N)" it printed."""
    lines = [line for line in out.splitlines() if line.startswith("command: ")]
    assert lines, out
    if lines[0].startswith("command: allowed: "):
        return 0
    return max(int(m) for m in re.findall(r"\(status (\d+)\)$", "\n".join(lines), re.M))


def config_toml(config: Config) -> str:
    """The world's configuration as the file `check` reads (every setting the decision uses)."""
    users: dict[str, Any] = {}
    for name, policy in config.users.items():
        users[name] = {}
        if policy.commands is not None:
            users[name]["commands"] = sorted(policy.commands)
        if policy.comphash_roots is not None:
            users[name]["comphash_roots"] = list(policy.comphash_roots)
    return toml_text(
        {
            "host_keys_dir": str(config.host_keys_dir),
            "authorized_keys": config.authorized_keys,
            "strict_modes": config.strict_modes,
            "lastlog": {"path": list(config.lastlog.sources)},
            "comphash": {"roots": list(config.comphash.roots)},
            "users": users,
        }
    )


def build(tmp_path: Path, case: Case) -> tuple[World, dict[str, str]]:
    root = tmp_path / "root"
    places = {"ROOT": str(root), "OUTSIDE": str(tmp_path / "outside")}

    def place(text: str) -> str:
        for name, path in places.items():
            text = text.replace(name, path)
        return text

    policy = UserPolicy(
        commands=frozenset(case.commands) if case.commands is not None else None,
        comphash_roots=tuple(place(r) for r in case.user_roots) if case.user_roots is not None else None,
    )
    world = make_world(
        tmp_path,
        comphash=ComphashConfig(roots=tuple(place(r) for r in case.roots)),
        users={"pat": policy} if case.commands is not None or case.user_roots is not None else {},
    )
    (root / "sub").mkdir()
    (root / "sub" / "inner.txt").write_bytes(b"inner\n")
    (root / "dir").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret\n")
    (root / "out").symlink_to(outside)
    users_file = Path(world.config.authorized_keys.replace("%u", "pat"))
    users_file.write_text(authorized_line(ed25519_key(USER_KEY)))
    os.chmod(users_file, 0o600)
    return world, {"line": place(case.command)}


def server_status(world: World, line: str) -> tuple[int | None, bytes]:
    conn = world.connect()
    assert conn.login(b"pat", ed25519_key(USER_KEY)) == 52
    chan: RecordingChannel = conn.open_session()
    conn.exec(chan, line.encode())
    conn.flush()
    world.clock.advance(1)
    conn.flush()
    return chan.exit_status, bytes(chan.err)


def case_id(case: Case) -> str:
    terms = [case.command]
    if case.roots != ("ROOT",):
        terms.append(f"roots={','.join(case.roots)}")
    if case.commands is not None:
        terms.append(f"commands={','.join(case.commands)}")
    if case.user_roots is not None:
        terms.append(f"comphash_roots={','.join(case.user_roots)}")
    return " ".join(terms)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_check_predicts_the_servers_exit_status(tmp_path: Path, case: Case, capsys: pytest.CaptureFixture[str]) -> None:
    world, placed = build(tmp_path, case)
    line = placed["line"]
    status, err = server_status(world, line)
    assert status == case.expected, err
    config_file = tmp_path / "conchcmd.toml"
    config_file.write_text(config_toml(world.config))
    key_file = tmp_path / "pat.pub"
    key_file.write_text(authorized_line(ed25519_key(USER_KEY)))
    code = main(["check", "--config", str(config_file), "--user", "pat", "--key", str(key_file), "--command", line])
    out = capsys.readouterr().out
    assert status_from_check(out) == status, out
    assert code == (0 if status == 0 else 1)


def test_check_says_the_servers_words_for_a_path_outside_the_roots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world, placed = build(tmp_path, Case("comphash OUTSIDE/secret"))
    status, err = server_status(world, placed["line"])
    assert status == 126
    config_file = tmp_path / "conchcmd.toml"
    config_file.write_text(config_toml(world.config))
    key_file = tmp_path / "pat.pub"
    key_file.write_text(authorized_line(ed25519_key(USER_KEY)))
    main(["check", "--config", str(config_file), "--user", "pat", "--key", str(key_file), "--command", placed["line"]])
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == f"command: REFUSED: {err.decode().strip()} (status 126)"
