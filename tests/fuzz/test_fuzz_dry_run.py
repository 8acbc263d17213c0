"""Fuzz target: `conchcmd check`'s dry run (commands.dry_run) against the dispatcher that runs the
line, over generated command lines and user policies. Both are built from the server's own
command table; for every line the dry run must predict the status the dispatcher ends with
(None meaning "it runs": status 0, or for `exit` the status it asks for)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from support.outputs import RecordingOutput
from twisted.internet.task import Clock

from conchcmd.commands.builtin import build_command_table
from conchcmd.commands.framework import CommandTable, Dispatcher, InlineRunner, SessionExit, dry_run
from conchcmd.core.audit import MemoryAuditLog
from conchcmd.core.config import COMMAND_NAMES, ComphashConfig, Config, LastlogConfig, UserPolicy
from fuzz.guard import bounded, fuzz


@dataclass(frozen=True)
class Site:
    base: Path
    table: CommandTable
    dispatcher: Dispatcher


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("dry-run")
    root = base / "root"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"a\n")
    (root / "sub" / "b.txt").write_bytes(b"b\n")
    (base / "outside").mkdir()
    (base / "outside" / "secret").write_bytes(b"s\n")
    (root / "link").symlink_to(base / "outside")
    (root / "loop").symlink_to(root / "loop")
    (base / "syslog").write_bytes(b"".join(b"line %d\n" % i for i in range(30)))
    config = Config(
        lastlog=LastlogConfig(sources=(str(base / "syslog"),)),
        comphash=ComphashConfig(roots=(str(root),)),
    )
    clock = Clock()
    table = build_command_table(config, InlineRunner(), clock)
    yield Site(base, table, Dispatcher(table, MemoryAuditLog(), clock))


WORDS = [
    *COMMAND_NAMES,
    "rm",
    "-n",
    "5",
    "0",
    "99999",
    "-j",
    "--json",
    "-a",
    "md5",
    "crc",
    "--lines=3",
    "-x",
    "ROOT/a.txt",
    "ROOT/sub/b.txt",
    "ROOT/sub",
    "ROOT/missing",
    "ROOT/link/secret",
    "ROOT/loop",
    "ROOT/../outside/secret",
    "BASE/outside/secret",
    "/etc/hostname",
    "relative",
    "'",
    '"quoted word"',
    "\\",
    "",
]
policies = st.builds(
    UserPolicy,
    commands=st.one_of(st.none(), st.frozensets(st.sampled_from(COMMAND_NAMES))),
    comphash_roots=st.one_of(st.none(), st.sampled_from([("ROOT/sub",), ("ROOT",), ("BASE/outside",)])),
)


def place(text: str, site: Site) -> str:
    return text.replace("ROOT", str(site.base / "root")).replace("BASE", str(site.base))


@fuzz(300)
@given(words=st.lists(st.sampled_from(WORDS), max_size=5), policy=policies)
@example(words=["comphash", "BASE/outside/secret"], policy=UserPolicy())
@example(words=["comphash", "ROOT/a.txt"], policy=UserPolicy(comphash_roots=("ROOT/sub",)))
def test_dry_run_predicts_the_dispatchers_status(site: Site, words: list[str], policy: UserPolicy) -> None:
    line = place(" ".join(words), site)
    if policy.comphash_roots is not None:
        policy = UserPolicy(policy.commands, tuple(place(r, site) for r in policy.comphash_roots))
    predicted = dry_run(site.table, line, policy)
    stdout, stderr = RecordingOutput(), RecordingOutput()
    with bounded():
        d = site.dispatcher.dispatch(
            line, stdout=stdout, stderr=stderr, user="pat", peer="192.0.2.1:5", fingerprint="", policy=policy
        )
    outcomes: list[object] = []
    d.addBoth(outcomes.append)
    [outcome] = outcomes
    status = getattr(outcome, "status", None)
    assert status is not None, outcome
    if predicted.status is None and predicted.argv and predicted.argv[0] == "exit":
        assert getattr(outcome, "end_session", False)
        return
    assert (predicted.status or 0) == status, (line, predicted, stderr.data)
    assert not isinstance(outcome, SessionExit)
