"""The audit file: its mode and group whatever the umask, a warning for a looser existing file, and
reopening by name (SIGHUP after log rotation) without losing or repeating a record."""

from __future__ import annotations

import grp
import io
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent

from conchcmd.core.audit import AppendFile, AuditLog, BoundAudit, MemoryAuditLog, StreamTarget, new_connection_id
from conchcmd.core.config import Config, ConfigError, parse_config
from conchcmd.edge.service import ConchcmdService


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def argvs(path: Path) -> list[str]:
    """The first word of each command record (reload and other records have none)."""
    records = (json.loads(line) for line in path.read_text().splitlines())
    return [r["argv"][0] for r in records if r["event"] == "command"]


def warnings(captured: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(e) for e in captured if e["log_level"] == LogLevel.warn]


@pytest.fixture(params=[0o000, 0o022, 0o077, 0o777], ids=lambda m: f"umask{m:03o}")
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def other_group() -> int:
    """A group the file may be given that is not this process's own: any group for root, else
    a supplementary group of this user."""
    own = os.getegid()
    candidates = [g.gr_gid for g in grp.getgrall()] if os.geteuid() == 0 else os.getgroups()
    for gid in candidates:
        if gid != own:
            return gid
    pytest.skip("this user belongs to no group but its own: chown to another group is not possible")


def test_a_created_audit_file_is_0600_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog.open(str(path), Clock())
    audit.record("connect")
    audit.close()
    assert mode_of(path) == 0o600


def test_with_audit_group_it_is_0640_with_that_group_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    gid = other_group()
    path = tmp_path / "audit.jsonl"
    AuditLog.open(str(path), Clock(), group=gid).close()
    assert mode_of(path) == 0o640
    assert path.stat().st_gid == gid


def test_an_existing_looser_file_is_left_alone_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text("")
    path.chmod(0o644)
    with capturedLogs() as captured:
        target = AppendFile(str(path))
    target.close()
    assert mode_of(path) == 0o644  # not chmod-ed behind the operator's back
    (warning,) = warnings(captured)
    assert f"Audit log {path} has mode 0644" in warning
    assert f"chmod 600 {path}" in warning


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o200])
def test_an_existing_file_as_strict_gets_no_warning(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text("")
    path.chmod(mode)
    with capturedLogs() as captured:
        AppendFile(str(path)).close()
    assert warnings(captured) == []
    assert mode_of(path) == mode


def test_an_existing_group_readable_file_is_looser_without_audit_group(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text("")
    path.chmod(0o640)
    with capturedLogs() as captured:
        AppendFile(str(path)).close()
    assert len(warnings(captured)) == 1
    gid = other_group()
    os.chown(path, -1, gid)
    with capturedLogs() as captured:
        AppendFile(str(path), group=gid).close()  # the configured group may read it: as created
    assert warnings(captured) == []


def test_reopen_after_a_move_writes_to_a_new_file_at_the_path(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog.open(str(path), Clock())
    audit.record("command", argv=["before"])
    rotated = tmp_path / "audit.jsonl.1"
    path.rename(rotated)
    audit.record("command", argv=["between"])  # rotated, not yet signalled: still the old file
    with capturedLogs() as captured:
        audit.reopen()
    audit.record("command", argv=["after"])
    audit.close()
    assert argvs(rotated) == ["before", "between"]
    assert argvs(path) == ["after"]
    assert mode_of(path) == 0o600
    assert any(f"Audit log {path} reopened" in formatEvent(e) for e in captured)


def test_reopen_without_a_move_goes_on_appending_to_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog.open(str(path), Clock())
    audit.record("command", argv=["one"])
    audit.reopen()
    audit.reopen()
    audit.record("command", argv=["two"])
    audit.close()
    assert argvs(path) == ["one", "two"]


def test_reopen_that_fails_keeps_the_records_for_the_new_file(tmp_path: Path) -> None:
    """The directory was moved away as well: reopening fails, the records wait in the backlog and
    go, each once and in order, to the file created once the directory is back."""
    directory = tmp_path / "logs"
    directory.mkdir()
    path = directory / "audit.jsonl"
    audit = AuditLog.open(str(path), Clock())
    audit.record("command", argv=["before"])
    directory.rename(tmp_path / "old")
    with capturedLogs() as captured:
        audit.reopen()
        audit.record("command", argv=["waiting-1"])
        audit.record("command", argv=["waiting-2"])
    assert audit.failure() is not None
    assert any(e["log_level"] == LogLevel.error for e in captured)
    directory.mkdir()
    assert audit.failure() is None  # tried again: written now
    audit.record("command", argv=["after"])
    audit.close()
    assert argvs(tmp_path / "old" / "audit.jsonl") == ["before"]
    assert argvs(path) == ["waiting-1", "waiting-2", "after"]
    assert mode_of(path) == 0o600


def test_reopen_of_stdout_is_harmless() -> None:
    stream = io.StringIO()
    audit = AuditLog(StreamTarget(stream), Clock())
    audit.record("connect")
    audit.reopen()
    audit.record("disconnect")
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["connect", "disconnect"]


def test_every_record_carries_the_host_it_was_given(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog.open(str(path), Clock(), host="ops-1.example")
    audit.record("connect", peer="p")
    audit.record("refused", host_field_is_not_overridden_by="nothing")
    audit.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["host"] for r in records] == ["ops-1.example", "ops-1.example"]
    assert list(records[0]) == ["ts", "event", "host", "peer"]


def test_bound_audit_adds_its_fields_and_binds_further() -> None:
    memory = MemoryAuditLog()
    connection = BoundAudit(memory, connection="00aa")
    channel = connection.bind(channel=3, kind="exec")
    connection.record("auth", user="u")
    channel.record("command", argv=["help"])
    assert memory.events == [
        {"event": "auth", "connection": "00aa", "user": "u"},
        {"event": "command", "connection": "00aa", "channel": 3, "kind": "exec", "argv": ["help"]},
    ]
    assert channel.failure() is None
    channel.record("command", connection="forged", channel=99)
    assert memory.events[-1] == {"event": "command", "connection": "00aa", "channel": 3, "kind": "exec"}


def test_a_bound_audit_wrapping_another_writes_as_the_chain_did() -> None:
    """A channel's sink wraps its connection's: it is flattened to one binding (one merge per
    record), with the same keys in the same order, and the connection's fields still win."""
    memory = MemoryAuditLog()
    channel = BoundAudit(BoundAudit(memory, connection="00aa"), channel=3, kind="exec", connection="forged")
    assert channel.sink is memory
    channel.record("command", argv=["help"], channel=99)
    assert memory.events == [{"event": "command", "connection": "00aa", "channel": 3, "kind": "exec", "argv": ["help"]}]
    assert list(memory.events[0]) == ["event", "connection", "channel", "kind", "argv"]


def test_a_connection_id_is_16_hex_digits_and_never_one_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = iter([b"\x01" * 8, b"\x01" * 8, b"\x02" * 8])
    monkeypatch.setattr(os, "urandom", lambda n: next(draws))
    in_use: set[str] = set()
    assert new_connection_id(in_use) == "0101010101010101"
    assert new_connection_id(in_use) == "0202020202020202"  # the repeated draw was skipped
    assert in_use == {"0101010101010101", "0202020202020202"}


def test_connection_ids_are_random() -> None:
    in_use: set[str] = set()
    ids = [new_connection_id(in_use) for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids)


# -- configuration -------------------------------------------------------------------------------


def test_audit_group_names_an_existing_group(tmp_path: Path) -> None:
    name = grp.getgrgid(other_group()).gr_name
    config = parse_config(f'audit_group = "{name}"', base_dir=tmp_path)
    assert config.audit_group == name
    assert f'audit_group = "{name}"' in config.describe()
    assert "# audit_group unset" in Config().describe()
    assert Config().audit_group is None


@pytest.mark.parametrize("name", ["no-such-group-conchcmd", "a\x00b"])
def test_an_unknown_audit_group_is_a_config_error(tmp_path: Path, name: str) -> None:
    text = f"audit_group = {json.dumps(name)}"
    with pytest.raises(ConfigError, match="audit_group: no such group"):
        parse_config(text, base_dir=tmp_path)


# -- SIGHUP ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("new_config", ["unchanged", "changed", "unparseable", "no config file"])
def test_reload_reopens_the_audit_file_whatever_becomes_of_the_config(tmp_path: Path, new_config: str) -> None:
    config_path = tmp_path / "conchcmd.toml"
    config_path.write_text('audit_log = "audit.jsonl"\nhost_keys_dir = "keys"\n')
    config = parse_config(config_path.read_text(), base_dir=tmp_path, source=config_path)
    service = ConchcmdService(
        config, reactor=Clock(), out=io.StringIO(), config_path=None if new_config == "no config file" else config_path
    )
    service.prepare()
    path = tmp_path / "audit.jsonl"
    try:
        service.audit.record("command", argv=["before"])
        path.rename(tmp_path / "audit.jsonl.1")
        if new_config == "changed":
            config_path.write_text(config_path.read_text() + "max_clients = 3\n")
        elif new_config == "unparseable":
            config_path.write_text("max_clients = [\n")
        service.reload()
        service.audit.record("command", argv=["after"])
    finally:
        service.audit.close()
    assert argvs(tmp_path / "audit.jsonl.1") == ["before"]
    assert argvs(path) == ["after"]
    assert mode_of(path) == 0o600


def test_a_group_that_cannot_be_given_leaves_it_owner_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not root and not in audit_group: chown fails; the file stays 0600 rather than 0640 with
    the wrong group, and the warning says so."""

    def refuse(fd: int, uid: int, gid: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "fchown", refuse)
    path = tmp_path / "audit.jsonl"
    with capturedLogs() as captured:
        audit = AuditLog.open(str(path), Clock(), group=12345)
    audit.record("connect")
    audit.close()
    assert mode_of(path) == 0o600
    (warning,) = warnings(captured)
    assert "cannot give it group 12345 and mode 0640 (Operation not permitted); it stays owner-only" in warning


def test_a_line_the_kernel_takes_in_pieces_is_written_once_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A short write (a signal, a pipe near full) goes on from where it stopped: the line is in
    the file once, whole, and nothing of it is written twice."""
    path = tmp_path / "audit.log"
    target = AppendFile(str(path))
    real_write = os.write
    sizes: list[int] = []

    def short_write(fd: int, data: Any) -> int:
        n = real_write(fd, bytes(data)[: max(1, len(data) // 3)])
        sizes.append(n)
        return n

    monkeypatch.setattr(os, "write", short_write)
    line = b'{"event": "command", "argv": ["comphash", "/srv/a"]}\n'
    target.write(line)
    monkeypatch.undo()
    target.write(b"next\n")
    target.close()
    assert len(sizes) > 2
    assert path.read_bytes() == line + b"next\n"
