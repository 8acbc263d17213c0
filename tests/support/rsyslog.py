"""A real rsyslogd for tests: one process listening on a local datagram socket (as /dev/log,
imuxsock), UDP (imudp) and TCP (imtcp, octet counting), writing every message it gets to one file
with its facility, severity, program name and PID. Used by the syslog end-to-end tests and, as the
central syslog of a whole fleet, by tests/fleet."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from support.e2e import free_port
from support.serverfiles import wait_for

RSYSLOGD = "/usr/sbin/rsyslogd"
HAVE_RSYSLOG = shutil.which(RSYSLOGD) is not None
RSYSLOG_CONF = """\
global(workDirectory="{dir}" maxMessageSize="64k")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{dir}/log.sock" RateLimit.Interval="0")
module(load="imudp")
input(type="imudp" address="127.0.0.1" port="{udp}")
module(load="imtcp" MaxSessions="{max_sessions}")
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

    @property
    def received_path(self) -> Path:
        return self.directory / "received.log"

    def received(self) -> list[Received]:
        path = self.received_path
        out = []
        for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
            facility, severity, program, pid, message = line.split(" ", 4)
            text = json.loads(f'"{message}"')
            out.append(Received(facility, severity, program, pid, text.removeprefix(" ")))  # RFC 3164: ": msg"
        return out

    def of(self, pid: int) -> list[Received]:
        return [r for r in self.received() if r.pid == str(pid)]


@contextlib.contextmanager
def running_rsyslog(directory: Path, max_sessions: int = 200) -> Iterator[Rsyslog]:
    """rsyslogd in the foreground with its files in `directory`, ready on every input; at exit it
    is stopped with SIGTERM and must exit 0. `max_sessions`: TCP clients at once (imtcp's limit)."""
    udp, tcp = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    conf = directory / "rsyslog.conf"
    conf.write_text(RSYSLOG_CONF.format(dir=directory, udp=udp, tcp=tcp, max_sessions=max_sessions))
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
