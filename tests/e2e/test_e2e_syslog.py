"""A real rsyslog receives a real `conchcmd serve`'s log lines (`[log] target = "syslog"`) over each
kind of address: a local datagram socket as /dev/log is (imuxsock), UDP (imudp) and TCP with
octet counting (imtcp). After a login with a command, a failed login and a login to a user whose
key file is ignored, every line the server logged arrives once, with facility authpriv for the
authentication lines and daemon for the rest, at the right severity; with `audit_log = "syslog"`
every audit record arrives once too, as JSON at authpriv.info. rsyslog's template records
facility, severity, program name and PID, so each server's lines are told apart by its PID."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.serverfiles import wait_for

pytestmark = [pytest.mark.e2e]

RSYSLOGD = "/usr/sbin/rsyslogd"
HAVE_RSYSLOG = shutil.which(RSYSLOGD) is not None
#: The authentication lines (facility authpriv); every other line is daemon.
AUTH_LINE = re.compile(
    r"(Accepted|Failed) \S+ for |Invalid user |Connection closed by authenticating user "
    r"|Too many authentication failures "
)
RSYSLOG_CONF = """\
global(workDirectory="{dir}" maxMessageSize="64k")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{dir}/log.sock" RateLimit.Interval="0")
module(load="imudp")
input(type="imudp" address="127.0.0.1" port="{udp}")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{tcp}")
template(name="fields" type="string"
         string="%syslogfacility-text% %syslogseverity-text% %programname% %procid% %msg:::json%\\n")
*.* action(type="omfile" file="{dir}/received.log" template="fields")
"""


@dataclass(frozen=True)
class Received:
    facility: str
    severity: str
    program: str
    pid: str
    message: str


@dataclass
class Rsyslog:
    directory: Path
    udp: int
    tcp: int
    proc: subprocess.Popen[bytes]

    @property
    def socket_path(self) -> Path:
        return self.directory / "log.sock"

    def received(self) -> list[Received]:
        path = self.directory / "received.log"
        out = []
        for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
            facility, severity, program, pid, message = line.split(" ", 4)
            text = json.loads(f'"{message}"')
            out.append(Received(facility, severity, program, pid, text.removeprefix(" ")))  # RFC 3164: ": msg"
        return out

    def of(self, pid: int) -> list[Received]:
        return [r for r in self.received() if r.pid == str(pid)]


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def rsyslog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rsyslog]:
    if not HAVE_RSYSLOG:
        pytest.skip("rsyslog is not installed (apt install rsyslog)")
    directory = tmp_path_factory.mktemp("rsyslog")
    udp, tcp = _free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_STREAM)
    conf = directory / "rsyslog.conf"
    conf.write_text(RSYSLOG_CONF.format(dir=directory, udp=udp, tcp=tcp))
    proc = subprocess.Popen(
        [RSYSLOGD, "-n", "-f", str(conf), "-i", str(directory / "rsyslogd.pid")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    server = Rsyslog(directory, udp, tcp, proc)
    try:
        _wait_ready(server)
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=10)[0]
    assert proc.returncode == 0, output.decode(errors="replace")


def _wait_ready(server: Rsyslog) -> None:
    """Probe each input until rsyslog has written what it got (it listens a moment after it starts)."""
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def probe() -> bool:
        if server.proc.poll() is not None:
            raise AssertionError(f"rsyslogd exited: {server.proc.communicate()[0]!r}")
        got = {r.message for r in server.of(1)}
        if "probe unix" not in got and server.socket_path.exists():
            unix.sendto(b"<14>Nov 29 00:00:00 probe[1]: probe unix", str(server.socket_path))
        if "probe udp" not in got:
            udp.sendto(b"<14>1 - - probe 1 - - probe udp", ("127.0.0.1", server.udp))
        if "probe tcp" not in got:
            try:
                with socket.create_connection(("127.0.0.1", server.tcp), timeout=1) as tcp:
                    tcp.sendall(b"31 <14>1 - - probe 1 - - probe tcp")
            except ConnectionRefusedError:
                pass
        return got >= {"probe unix", "probe udp", "probe tcp"}

    try:
        wait_for(probe, 10, "rsyslog's inputs")
    finally:
        unix.close()
        udp.close()


def _expected_severity(message: str) -> str:
    return "warning" if message.startswith("Ignoring ") else "info"


@pytest.mark.parametrize("kind", ["unix", "udp", "tcp"])
def test_every_event_arrives_once_with_its_facility_and_severity(
    kind: str, rsyslog: Rsyslog, server_class: Any, client_keys: Any, data: Any, tmp_path: Path
) -> None:
    address = {
        "unix": f"unix:{rsyslog.socket_path}",
        "udp": f"udp:127.0.0.1:{rsyslog.udp}",
        "tcp": f"tcp:127.0.0.1:{rsyslog.tcp}",
    }[kind]
    audit_to_syslog = kind != "udp"

    class SyslogServer(server_class):  # type: ignore[misc, valid-type]
        def write_config(self) -> None:
            super().write_config()
            if audit_to_syslog:
                text = self.config.read_text().replace('audit_log = "audit.jsonl"', 'audit_log = "syslog"')
                self.config.write_text(text)

    server = SyslogServer(
        tmp_path / "server",
        client_keys,
        data,
        config_tables=f'[log]\ntarget = "syslog"\nsyslog_address = "{address}"\n',
    )
    try:
        server.start()
        server.authorize("carol", client_keys.pub_line(client_keys.ed25519), mode=0o666)  # ignored: others write it
        ok = server.ssh("lastlog -n 1")
        assert ok.returncode == 0, ok.stderr
        assert server.ssh("lastlog -n 1", key=client_keys.stranger).returncode == 255
        assert server.ssh("help", user="carol").returncode == 255
    finally:
        server.stop()
    assert server.returncode == 0, server.log_text()
    server.check_log(expect_activity=False)
    assert "Cmd received" not in server.log_text()  # the log lines went to syslog, not stdout
    assert server.proc is not None
    pid = server.proc.pid

    def arrived() -> list[Received] | None:
        got = rsyslog.of(pid)
        lines = [r for r in got if not r.message.startswith("{")]
        return got if len([r for r in lines if r.message.startswith("Lost client connection")]) == 3 else None

    got = wait_for(arrived, 10, "the server's lines in rsyslog's file")
    assert {r.program for r in got} == {"conchcmd"}
    lines = [r for r in got if not r.message.startswith("{")]
    records = [r for r in got if r.message.startswith("{")]

    counts = Counter(r.message for r in lines)
    assert [m for m, n in counts.items() if n > 1] == [], "a line arrived twice"
    wrong = [r for r in lines if r.facility != ("authpriv" if AUTH_LINE.match(r.message) else "daemon")]
    assert wrong == [], "wrong facility"
    assert [r for r in lines if r.severity != _expected_severity(r.message)] == [], "wrong severity"
    expected = {  # every line the server logged, each the number of times it happened
        r"Client connection from ": 3,
        r"Accepted publickey for alice from ": 1,
        r"Cmd received from alice@\S+ : lastlog -n 1$": 1,
        r"Lost client connection \S+ \(alice\)": 1,
        r"Lost client connection \S+ \(not authenticated\)": 2,
        r"Failed publickey for alice from ": 1,
        r"Ignoring .*/carol: ": 1,
        r"Failed publickey for carol from ": 1,
    }
    matched = Counter(next((p for p in expected if re.match(p, r.message)), r.message) for r in lines)
    assert matched == expected
    assert [r.facility for r in lines].count("authpriv") == 3

    if not audit_to_syslog:
        assert records == []
        return
    assert {(r.facility, r.severity) for r in records} == {("authpriv", "info")}
    events = [json.loads(r.message) for r in records]
    assert len({json.dumps(e, sort_keys=True) for e in events}) == len(events), "an audit record arrived twice"
    kinds = Counter(e["event"] for e in events)
    assert kinds["command"] == 1 and kinds["disconnect"] == 3, kinds
    assert [e.get("ok") for e in events if e["event"] == "auth"].count(True) == 1
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
    finally:
        server.stop()
    assert server.returncode == 0, server.log_text()
    lines = [line for line in server.log_text().splitlines() if not line.startswith("conchcmd: ")]
    assert os.stat(log).st_ino == st.st_ino
    assert re.fullmatch(r"<6>Accepted publickey for alice from \S+: ssh-ed25519 .*", lines[1])
    assert any(re.fullmatch(r"<4>Ignoring .*/carol: .*", line) for line in lines), lines
    assert any(re.fullmatch(r"<6>Cmd received from alice@\S+ : lastlog -n 1", line) for line in lines), lines
    assert all(re.match(r"<[0-7]>[A-Z]", line) for line in lines), lines  # no timestamp, no [namespace]


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
        config_tables=f'[log]\ntarget = "syslog"\nsyslog_address = "unix:{path}"\n',
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
