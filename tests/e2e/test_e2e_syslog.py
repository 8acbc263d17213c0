"""A real rsyslog receives a real `conchcmd serve`'s log lines (`[log] target = "syslog"`) over each
kind of address: a local datagram socket as /dev/log is (imuxsock), UDP (imudp) and TCP with
octet counting (imtcp). The scenario: a login with a command, a failed login, and a login to a
user whose key file is ignored (a warning). The oracle is the same scenario on the stdout target,
whose lines name each event's namespace and level: every one of its lines arrives in rsyslog once,
with facility authpriv for namespace conchcmd.auth and daemon for the rest, at the severity of its
level; with `audit_log = "syslog"` every audit record arrives once too, as JSON at authpriv.info.
rsyslog's template records facility, severity, program name and PID (each server's own)."""

from __future__ import annotations

import json
import os
import re
import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.rsyslog import HAVE_RSYSLOG, Received, Rsyslog, running_rsyslog
from support.serverfiles import wait_for

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def rsyslog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rsyslog]:
    if not HAVE_RSYSLOG:
        pytest.skip("rsyslog is not installed (apt install rsyslog)")
    with running_rsyslog(tmp_path_factory.mktemp("rsyslog")) as server:
        yield server


#: Twisted's level names as syslog's severities (rsyslog's %syslogseverity-text%).
SEVERITY_TEXT = {"critical": "crit", "error": "err", "warn": "warning", "info": "info", "debug": "debug"}
#: A line of the stdout target: time stamp, [namespace#level], message.
STDOUT_LINE = re.compile(r"\S+ \S+ \[([\w.]+)#(\w+)\] (.*)")


def _scenario(server: Any, keys: Any) -> None:
    """A login with a command, a failed login (a key nobody authorized), and a login to a user
    whose key file is ignored (others may write it: a warning), then SIGTERM."""
    try:
        server.start()
        server.authorize("carol", keys.pub_line(keys.ed25519), mode=0o666)
        ok = server.ssh("lastlog -n 1")
        assert ok.returncode == 0, ok.stderr
        assert server.ssh("lastlog -n 1", key=keys.stranger).returncode == 255
        assert server.ssh("help", user="carol").returncode == 255
        server.wait_no_clients()  # each close logged as "closed", never as "server shutting down"
    finally:
        server.stop()
    assert server.returncode == 0, server.log_text()
    server.check_log(expect_activity=False)


def _normalise(text: str, base: Path) -> str:
    """What differs between two runs of the scenario: directories, host keys, addresses, times."""
    text = text.replace(str(base), "BASE")
    text = re.sub(r"SHA256:[A-Za-z0-9+/=]+", "SHA256:*", text)
    return re.sub(r"\d+", "N", text)


@pytest.fixture(scope="module")
def stdout_run(server_class: Any, client_keys: Any, data: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The oracle: the same scenario with the default stdout target, whose lines name each
    event's namespace and level. Returns (facility, severity, line) of each, and the audit events."""
    base = tmp_path_factory.mktemp("stdout-server")
    server = server_class(base, client_keys, data)
    _scenario(server, client_keys)
    lines = []
    for line in server.log_text().splitlines():
        m = STDOUT_LINE.fullmatch(line)
        if m:
            namespace, level, text = m.groups()
            facility = "authpriv" if namespace == "conchcmd.auth" else "daemon"
            lines.append((facility, SEVERITY_TEXT[level], _normalise(text, base)))
    return Counter(lines), Counter(e["event"] for e in server.audit())


@pytest.mark.parametrize("kind", ["unix", "udp", "tcp"])
def test_every_event_arrives_once_with_its_facility_and_severity(
    kind: str, rsyslog: Rsyslog, stdout_run: Any, server_class: Any, client_keys: Any, data: Any, tmp_path: Path
) -> None:
    address = {
        "unix": f"unix:{rsyslog.socket_path}",
        "udp": f"udp:127.0.0.1:{rsyslog.udp}",
        "tcp": f"tcp:127.0.0.1:{rsyslog.tcp}",
    }[kind]
    audit_to_syslog = kind != "udp"

    settings: dict[str, Any] = {"log": {"target": "syslog", "syslog_address": address}}
    if audit_to_syslog:
        settings["audit_log"] = "syslog"
    base = tmp_path / "server"
    server = server_class(base, client_keys, data, settings=settings)
    _scenario(server, client_keys)
    assert "Cmd received" not in server.log_text()  # the log lines went to syslog, not stdout
    assert server.proc is not None
    expected_lines, expected_events = stdout_run

    def arrived() -> list[Received] | None:
        got = rsyslog.of(server.proc.pid)
        return (
            got if len(got) >= sum(expected_lines.values()) + audit_to_syslog * sum(expected_events.values()) else None
        )

    got = wait_for(arrived, 10, "the server's lines in rsyslog's file")
    assert {r.program for r in got} == {"conchcmd"}
    lines = [r for r in got if not r.message.startswith("{")]
    records = [r for r in got if r.message.startswith("{")]
    # every line the stdout target showed, once, at the facility of its namespace and the severity of its level
    assert Counter((r.facility, r.severity, _normalise(r.message, base)) for r in lines) == expected_lines
    accepted = [r for r in lines if r.message.startswith("Accepted publickey for alice ")]
    assert [(r.facility, r.severity) for r in accepted] == [("authpriv", "info")]
    assert {(r.facility, r.severity) for r in lines if r.message.startswith("Ignoring ")} == {("daemon", "warning")}

    if not audit_to_syslog:
        assert records == []
        return
    assert {(r.facility, r.severity) for r in records} == {("authpriv", "info")}
    events = [json.loads(r.message) for r in records]
    assert len({json.dumps(e, sort_keys=True) for e in events}) == len(events), "an audit record arrived twice"
    assert Counter(e["event"] for e in events) == expected_events
    assert next(e for e in events if e["event"] == "command")["argv"] == ["lastlog", "-n", "1"]
    assert not server.audit_path.exists()  # the records went to syslog only


def test_under_systemd_stdout_lines_carry_sd_daemon_priorities(
    server_class: Any, client_keys: Any, data: Any, tmp_path: Path
) -> None:
    """stdout is the journal stream (JOURNAL_STREAM names its device and inode, as systemd sets
    it): each log line starts with its priority and has no timestamp, journald adds one."""
    base = tmp_path / "server"
    base.mkdir()
    log = base / "server.log"
    log.touch()  # the harness reopens it for the server's stdout: same inode
    st = os.stat(log)
    server = server_class(base, client_keys, data, env_extra={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    try:
        server.start()
        server.authorize("carol", client_keys.pub_line(client_keys.ed25519), mode=0o666)
        assert server.ssh("lastlog -n 1").returncode == 0
        assert server.ssh("help", user="carol").returncode == 255
        server.wait_no_clients()  # each close logged as "closed", never as "server shutting down"
    finally:
        server.stop()
    assert server.returncode == 0, server.log_text()
    lines = [line for line in server.log_text().splitlines() if not line.startswith("conchcmd: ")]
    assert os.stat(log).st_ino == st.st_ino
    assert any(re.fullmatch(r"<6>Accepted publickey for alice from .*", line) for line in lines), lines
    assert any(re.fullmatch(r"<4>Ignoring .*/carol: .*", line) for line in lines), lines
    assert any(re.fullmatch(r"<6>Cmd received from alice@\S+ : lastlog -n 1", line) for line in lines), lines
    assert all(re.match(r"<[0-7]>[^\d\[\s]", line) for line in lines), lines  # no timestamp, no [namespace]


def test_a_syslog_that_is_down_does_not_stop_the_server(
    server_class: Any, client_keys: Any, data: Any, tmp_path: Path
) -> None:
    """No syslog daemon behind the socket: logins and commands go on, stderr says once that lines
    are dropped, and when syslog is back, how many were; the lines after that arrive."""
    path = tmp_path / "log.sock"
    server = server_class(
        tmp_path / "server",
        client_keys,
        data,
        settings={"log": {"target": "syslog", "syslog_address": f"unix:{path}"}},
    )
    try:
        server.start()
        for _ in range(2):
            assert server.ssh("lastlog -n 1").returncode == 0
        server.wait_for(lambda: len(server.audit_since(0, "disconnect")) == 2, 10, "both sessions' ends audited")
        dropping = server.log_text().count("dropping log lines until it works again")
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.bind(str(path))
        receiver.settimeout(10)
        assert server.ssh("lastlog -n 1").returncode == 0
        first = receiver.recv(9000).decode()
        receiver.close()
    finally:
        server.stop()
    assert server.returncode == 0, server.log_text()
    assert dropping == 1
    assert re.fullmatch(r"<30>\w{3} [ \d]\d \d\d:\d\d:\d\d conchcmd\[\d+\]: Client connection from \S+", first)
    recovered = re.findall(
        rf"log target syslog {re.escape(str(path))} works again; (\d+) log line\(s\) were dropped", server.log_text()
    )
    assert len(recovered) == 1 and int(recovered[0]) >= 8, server.log_text()  # 4 a session (connect .. lost)
