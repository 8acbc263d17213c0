"""The service's start, stop and SIGHUP reload on a MemoryReactorClock: the log lines and the
`server_start`, `server_stop` and `reload` audit records (read back from the real audit file)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

import conchcmd
from conchcmd.core.logtargets import LOG_NAMESPACE
from conchcmd.edge.cli import main
from conchcmd.edge.service import ConchcmdService

REPO = Path(__file__).resolve().parents[2]
BASE_CONFIG = """\
listen = ["tcp:2222", "tcp6:2223:interface=\\\\:\\\\:1"]
host_keys_dir = "keys"
authorized_keys = "keys/authorized_keys/%u"
audit_log = "audit.jsonl"
"""


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        if event.get("log_namespace") == LOG_NAMESPACE:
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


class Running:
    def __init__(self, base: Path, config_text: str = BASE_CONFIG):
        from conchcmd.core.config import load_config

        self.base = base
        self.config_path = base / "conchcmd.toml"
        self.config_path.write_text(config_text)
        self.clock = MemoryReactorClock()
        self.clock.advance(1_000_000)
        config = load_config(self.config_path, cwd=base)
        self.service = ConchcmdService(config, self.clock, io.StringIO(), config_path=self.config_path)
        self.service.prepare()
        self.service.startService()

    def audit(self, event: str) -> list[dict[str, Any]]:
        lines = (self.base / "audit.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["event"] == event]

    def reload(self, config_text: str) -> dict[str, Any]:
        self.config_path.write_text(config_text)
        before = len(self.audit("reload"))
        self.service.reload()
        records = self.audit("reload")
        assert len(records) == before + 1
        return records[-1]

    def stop(self) -> None:
        d = self.service.stopService()
        self.clock.advance(1)
        assert d.called


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    r = Running(tmp_path)
    yield r
    if r.service.running:
        r.stop()


def digest_of_check_config(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """What an operator computes: `conchcmd check-config --config FILE | tail -n +2 | sha256sum`."""
    capsys.readouterr()
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    return hashlib.sha256(out.split("\n", 1)[1].encode()).hexdigest()


def host_key_fingerprint(base: Path) -> str:
    """`ssh-keygen -lf`'s SHA256 fingerprint of the created host key, computed here."""
    blob = base64.b64decode((base / "keys" / "ssh_host_ed25519_key.pub").read_text().split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def test_start_logs_and_audits_version_addresses_and_host_keys(
    tmp_path: Path, log_lines: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    r = Running(tmp_path)
    assert r.service.ready.called
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert conchcmd.__version__ == version
    fp = host_key_fingerprint(tmp_path)
    assert log_lines[-1] == (
        f"Server started: conchcmd {version} listening on 0.0.0.0:2222, [::1]:2223; host keys ssh-ed25519 {fp}"
    )
    (start,) = r.audit("server_start")
    assert start["version"] == version
    assert start["listen"] == ["0.0.0.0:2222", "[::1]:2223"]
    assert start["host_keys"] == [f"ssh-ed25519 {fp}"]
    assert start["config_digest"] == digest_of_check_config(r.config_path, capsys)
    r.stop()


def test_stop_logs_and_audits_the_reason_and_uptime(running: Running, log_lines: list[str]) -> None:
    running.clock.advance(125.5)
    running.service.stop_reason = "signal SIGTERM"
    running.stop()
    assert log_lines[-1] == "Server stopping (signal SIGTERM) after 126 s"
    (stop,) = running.audit("server_stop")
    assert (stop["reason"], stop["uptime"]) == ("signal SIGTERM", 125.5)


def test_stop_before_listening_records_no_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that never started (its endpoints failed) writes no server_stop without a start."""
    # A systemd: endpoint parses at load time but cannot listen without a socket from systemd.
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    monkeypatch.delenv("LISTEN_FDNAMES", raising=False)
    (tmp_path / "conchcmd.toml").write_text(BASE_CONFIG.replace('"tcp:2222", ', '"systemd:domain=INET:index=0", '))
    r = Running.__new__(Running)
    r.base = tmp_path
    from conchcmd.core.config import load_config

    config = load_config(tmp_path / "conchcmd.toml", cwd=tmp_path)
    clock = MemoryReactorClock()
    service = ConchcmdService(config, clock, io.StringIO(), config_path=tmp_path / "conchcmd.toml")
    service.prepare()
    service.startService()
    failures: list[Any] = []
    service.ready.addErrback(failures.append)
    assert failures and "systemd:domain=INET:index=0" in str(failures[0].value)
    assert service.stop_reason.startswith("startup failed: cannot listen on systemd:domain=INET:index=0")
    service.stopService()
    clock.advance(1)
    assert r.audit("server_start") == r.audit("server_stop") == []


def test_reload_without_changes(running: Running, log_lines: list[str]) -> None:
    (start,) = running.audit("server_start")
    record = running.reload(BASE_CONFIG)
    assert record["ok"] is True
    assert (record["changed"], record["restart_needed"]) == ([], [])
    assert record["config_digest"] == start["config_digest"]
    assert log_lines[-1] == (
        f"Reloaded users, keys and policy from {running.config_path}: no change took effect; nothing needs a restart"
    )


def test_reload_says_what_took_effect_and_what_needs_a_restart(
    running: Running, log_lines: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    server = running.service.server
    assert server is not None
    new = (
        BASE_CONFIG.replace('"tcp:2222"', '"tcp:2200"')
        + 'revoked_keys = "revoked"\nmax_sessions = 3\nmax_password_checks = 5\nstrict_modes = false\n'
        + '[comphash]\nalgorithm = "sha512"\n[users.carol]\ncommands = ["lastlog"]\n'
    )
    record = running.reload(new)
    # In the order of the Config's fields.
    assert record["changed"] == [
        "listen",
        "comphash.algorithm",
        "max_password_checks",
        "max_sessions",
        "revoked_keys",
        "strict_modes",
        "users.carol",
    ]
    assert record["restart_needed"] == ["listen", "comphash.algorithm", "max_sessions"]
    assert record["config_digest"] == digest_of_check_config(running.config_path, capsys)
    assert log_lines[-1] == (
        f"Reloaded users, keys and policy from {running.config_path}: "
        "took effect: max_password_checks, revoked_keys, strict_modes, users.carol; "
        "need a restart: listen, comphash.algorithm, max_sessions"
    )
    # What the line says took effect did; what it says needs a restart did not.
    assert server.authorizer.revoked.path == str(running.base / "revoked")
    assert server.authorizer.keys.trust.strict is False
    assert server.passwords.max_checks == 5 and running.service.password_pool.max == 5
    assert set(server.realm.users) == {"carol"}
    assert server.factory.settings.limits.max_sessions == 10
    assert [str(p.getHost().port) for p in running.service.ports] == ["2222", "2223"]


def test_a_setting_changed_earlier_still_needs_a_restart_until_it_is_changed_back(
    running: Running, log_lines: list[str]
) -> None:
    changed = BASE_CONFIG + "max_sessions = 3\n"
    assert running.reload(changed)["restart_needed"] == ["max_sessions"]
    again = running.reload(changed + "[users.dave]\n")
    assert (again["changed"], again["restart_needed"]) == (["users.dave"], ["max_sessions"])
    back = running.reload(BASE_CONFIG)
    assert (back["changed"], back["restart_needed"]) == (["max_sessions", "users.dave"], [])
    assert log_lines[-1].endswith("took effect: users.dave; nothing needs a restart")


def test_a_rejected_reload_is_audited_and_keeps_the_running_digest(running: Running, log_lines: list[str]) -> None:
    (start,) = running.audit("server_start")
    record = running.reload(BASE_CONFIG + "no_such_key = 1\n")
    assert record["ok"] is False
    assert "no_such_key: unknown key" in record["reason"]
    assert record["config_digest"] == start["config_digest"]
    assert log_lines[-1].startswith("Reload rejected, keeping the running configuration: ")
