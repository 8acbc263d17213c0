"""A fleet on one machine: N `conchcmd serve` instances and N sshd + ForceCommand instances on
loopback, each on its own 127.x address with its own host key, config and log, all trusting one
user CA (no authorized_keys anywhere), driven by Ansible.

The conchcmd hosts send their log lines and audit records to one rsyslogd (support/rsyslog.py) over
TCP, as hosts send to a central log server. Everything is started concurrently and waited for by
its listening line; `Fleet.close()` ends every process the fleet started and says which, if any,
outlived it."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.serverfiles import REPO, ServerFiles, toml_text, wait_for
from support.sshd import Sshd

FORCECMD = REPO / "tests" / "fleet" / "forcecmd.sh"
PLAYBOOK = REPO / "conchcmd" / "contrib" / "ansible-fleet.yml"
BIN = str(Path(sys.executable).parent)  # the venv running the tests: ansible-core is installed there
ANSIBLE_PLAYBOOK = shutil.which("ansible-playbook", path=os.pathsep.join([BIN, *os.get_exec_path()]))
STOP_TIMEOUT = 30.0  # each server gives its clients 3 s and syslog 2 s; a hundred stop at once
START_TIMEOUT = 120.0  # a hundred Python processes starting at once on two cores
FORKS = 20
CONTROL_PERSIST = 600  # the multiplexed connections stay up after the play: memory is measured while they serve


def conch_address(i: int) -> str:
    return f"127.77.{i // 250}.{i % 250 + 1}"


def sshd_address(i: int) -> str:
    return f"127.78.{i // 250}.{i % 250 + 1}"


@dataclass(frozen=True)
class Credentials:
    """One user CA, and an operator key with a certificate it signed for `principal`."""

    ca_pub: Path
    key: Path  # the private key; ssh loads KEY-cert.pub beside it
    principal: str

    @property
    def certificate(self) -> Path:
        return self.key.with_name(self.key.name + "-cert.pub")


def make_credentials(directory: Path, principal: str) -> Credentials:
    ca, key = directory / "user_ca", directory / "operator"
    for path in (ca, key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30)
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(ca), "-I", "fleet-operator", "-n", principal, "-V", "-5m:+4h", f"{key}.pub"],
        check=True,
        timeout=30,
    )
    return Credentials(Path(f"{ca}.pub"), key, principal)


@dataclass(frozen=True)
class FleetData:
    """What every host serves: the log `lastlog` reads and the file `comphash` hashes."""

    directory: Path
    log: Path
    file: Path


@dataclass
class ConchHost(ServerFiles):
    """One `conchcmd serve` on `address` (port chosen by the kernel), certificates only."""

    name: str
    base: Path
    address: str
    proc: subprocess.Popen[bytes] | None = None
    returncode: int | None = None
    port: int = 0
    _log_file: Any = field(default=None, repr=False)

    def settings(self, credentials: Credentials, data: FleetData, syslog_tcp: int) -> dict[str, Any]:
        return {
            "listen": [f"tcp:0:interface={self.address}"],
            "host_keys_dir": "keys",
            "trusted_user_ca_keys": str(credentials.ca_pub),
            "audit_log": "syslog",
            "log": {"target": "syslog", "syslog_address": f"tcp:127.0.0.1:{syslog_tcp}"},
            "lastlog": {"path": str(data.log)},
            "comphash": {"roots": [str(data.directory)]},
        }

    def launch(self, credentials: Credentials, data: FleetData, syslog_tcp: int) -> None:
        self.base.mkdir(parents=True)
        self.config.write_text(toml_text(self.settings(credentials, data, syslog_tcp)))
        self.spawn()

    def reap(self, timeout: float) -> None:
        """Wait for the exit that a SIGTERM already sent starts (a second SIGTERM, which
        ServerFiles.stop would send, kills a server that is shutting down)."""
        assert self.proc is not None
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.returncode = self.proc.wait(timeout=timeout)
            raise AssertionError(f"{self.name} did not exit within {timeout:g} s of SIGTERM") from None
        finally:
            if self._log_file is not None:
                self._log_file.close()

    def wait(self, timeout: float) -> None:
        line = re.compile(rb"conchcmd: listening on .* \(" + re.escape(self.address.encode()) + rb":(\d+)\)")
        self.port = self.wait_listening(line, timeout)


@dataclass
class Fleet:
    """The running fleet and what it has started; `close()` tears all of it down."""

    base: Path
    credentials: Credentials
    data: FleetData
    control_dir: Path  # Ansible's ControlPath sockets: short, for sun_path's 108 bytes
    conch: list[ConchHost] = field(default_factory=list)
    sshd: list[Sshd] = field(default_factory=list)
    sshd_children: set[int] = field(default_factory=set)  # per-connection processes seen while serving

    # -- Ansible ----------------------------------------------------------------------------

    def inventory(self, kind: str) -> Path:
        """An INI inventory of the `kind` hosts ("conchcmd" or "sshd"), all in group conchcmd."""
        hosts: Iterable[tuple[str, str, int]] = (
            [(h.name, h.address, h.port) for h in self.conch]
            if kind == "conchcmd"
            else [(f"sshd{i + 1:03d}", s.address, s.port) for i, s in enumerate(self.sshd)]
        )
        lines = ["[conchcmd]"]
        lines += [f"{name} ansible_host={address} ansible_port={port}" for name, address, port in hosts]
        lines += [
            "",
            "[conchcmd:vars]",
            f"ansible_user={self.credentials.principal}",
            f"ansible_ssh_private_key_file={self.credentials.key}",
        ]
        path = self.base / f"inventory-{kind}.ini"
        path.write_text("\n".join(lines) + "\n")
        return path

    def ansible_env(self) -> dict[str, str]:
        """ansible-playbook's environment: its own config, home and temporary files in the fleet's
        directory, forks 20, and the ssh connection's defaults (ControlMaster; -tt for raw)."""
        cfg = self.base / "ansible.cfg"
        ssh_args = (
            f"-C -o ControlMaster=auto -o ControlPersist={CONTROL_PERSIST}s -F /dev/null -o IdentitiesOnly=yes"
            " -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
        )
        cfg.write_text(
            "[defaults]\n"
            f"forks = {FORKS}\n"
            "host_key_checking = False\n"
            "retry_files_enabled = False\n"
            "nocolor = True\n"
            "timeout = 60\n"  # ssh's ConnectTimeout (10 s by default): the machine may be busy
            f"local_tmp = {self.base / 'ansible-tmp'}\n"
            "[ssh_connection]\n"
            f"ssh_args = {ssh_args}\n"
            f"control_path_dir = {self.control_dir}\n"
        )
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("SSH_AUTH_SOCK", "DISPLAY") and not k.startswith("ANSIBLE_")
        }
        env.update(
            ANSIBLE_CONFIG=str(cfg),
            ANSIBLE_HOME=str(self.base / "ansible-home"),
            LC_ALL="C.UTF-8",
            PATH=os.pathsep.join([BIN, env.get("PATH", "")]),
        )
        return env

    def play(self, kind: str, extra_vars: Path) -> tuple[subprocess.CompletedProcess[str], float]:
        """Run the shipped playbook against the `kind` hosts: the result and its wall time (s)."""
        assert ANSIBLE_PLAYBOOK is not None, "ansible-playbook is not installed (pip install ansible-core)"
        # -v prints each raw task's result: its stderr shows whether ssh ran it with a pty (-tt)
        argv = [ANSIBLE_PLAYBOOK, "-v", "-i", str(self.inventory(kind)), "-e", f"@{extra_vars}", str(PLAYBOOK)]
        started = time.monotonic()
        result = subprocess.run(argv, env=self.ansible_env(), capture_output=True, text=True, timeout=900)
        return result, time.monotonic() - started

    def close_masters(self) -> None:
        """End Ansible's ControlPersist masters (`ssh -O exit`), one per host it reached."""
        for socket_path in sorted(self.control_dir.iterdir()) if self.control_dir.exists() else []:
            subprocess.run(
                ["ssh", "-F", "/dev/null", "-o", f"ControlPath={socket_path}", "-O", "exit", "fleet"],
                capture_output=True,
                timeout=30,
            )

    # -- memory -----------------------------------------------------------------------------

    def conch_pss(self) -> list[int]:
        """PSS (bytes) of each conchcmd process."""
        return [pss(h.proc.pid) for h in self.conch if h.proc is not None]

    def sshd_pss(self) -> list[int]:
        """PSS (bytes) of each sshd: the listener and every process below it (the per-connection
        privileged monitor and unprivileged child, and a command while it runs)."""
        out = []
        for s in self.sshd:
            assert s.proc is not None
            tree = descendants(s.proc.pid)
            self.sshd_children.update(tree)
            out.append(sum(pss(pid) for pid in [s.proc.pid, *tree]))
        return out

    # -- teardown ---------------------------------------------------------------------------

    def close(self) -> list[str]:
        """Stop everything; returns what failed to stop cleanly or outlived the teardown."""
        problems: list[str] = []
        self.close_masters()
        for s in self.sshd:
            if s.proc is not None:
                self.sshd_children.update(descendants(s.proc.pid))
        for h in self.conch:
            if h.proc is not None and h.proc.poll() is None:
                h.proc.send_signal(signal.SIGTERM)
        for s in self.sshd:
            s.stop()
        for pid in self.sshd_children:  # sshd's connection processes are in sessions of their own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for h in self.conch:
            try:
                if h.proc is not None:
                    h.reap(STOP_TIMEOUT)
            except AssertionError as e:
                problems.append(f"{h.name}: {e}")
            if h.returncode not in (0, None):
                problems.append(f"{h.name} exited with {h.returncode}:\n{h.log_text()}")
        with contextlib.suppress(AssertionError):
            wait_for(lambda: not self.leftovers(), 10, "the fleet's processes to end")
        problems += [f"left running: {p}" for p in self.leftovers()]
        shutil.rmtree(self.control_dir, ignore_errors=True)
        return problems

    def leftovers(self) -> list[str]:
        """Processes of this fleet still alive: any whose command line names its directory, and
        sshd's connection processes seen while it served."""
        alive = []
        for pid in _pids():
            cmdline = _cmdline(pid)
            ours = str(self.base) in cmdline or str(self.control_dir) in cmdline
            if (pid in self.sshd_children or (ours and pid != os.getpid())) and _state(pid) not in ("Z", "X", None):
                alive.append(f"{pid} {cmdline}")
        return alive


def start_fleet(
    base: Path, size: int, credentials: Credentials, data: FleetData, syslog_tcp: int, wrapper: Path
) -> Fleet:
    """Start `size` conchcmd and `size` sshd hosts at once and wait until every one listens. On a
    failure the hosts already started are stopped before the error goes up."""
    fleet = Fleet(base, credentials, data, Path(tempfile.mkdtemp(prefix="conchcmd-fleet-cp-", dir="/tmp")))
    try:
        for i in range(size):
            host = ConchHost(f"conch{i + 1:03d}", base / "conchcmd" / f"{i + 1:03d}", conch_address(i))
            fleet.conch.append(host)
            host.launch(credentials, data, syslog_tcp)
        revoked = base / "revoked_keys"
        revoked.write_text("")
        for i in range(size):
            fleet.sshd.append(
                Sshd(
                    base=base / "sshd" / f"{i + 1:03d}",
                    authorized_keys="none",
                    trusted_user_ca_keys=credentials.ca_pub,
                    revoked_keys=revoked,
                    ipv6=False,
                    address=sshd_address(i),
                    extra={"ForceCommand": f"{wrapper} {data.log}", "LogLevel": "INFO"},
                )
            )
        with ThreadPoolExecutor(max_workers=32) as pool:
            list(pool.map(Sshd.start, fleet.sshd))
        for host in fleet.conch:
            host.wait(START_TIMEOUT)
    except BaseException:
        fleet.close()
        raise
    return fleet


# -- /proc --------------------------------------------------------------------------------------


def pss(pid: int) -> int:
    """The process's proportional set size in bytes (0 if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    m = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) * 1024 if m else 0


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2 :].split()  # state, ppid, ...


def _state(pid: int) -> str | None:
    fields = _stat(pid)
    return fields[0] if fields else None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def descendants(root: int) -> set[int]:
    """Every living process below `root`."""
    children: dict[int, list[int]] = {}
    for pid in _pids():
        fields = _stat(pid)
        if fields:
            children.setdefault(int(fields[1]), []).append(pid)
    out: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def mib(values: Sequence[int]) -> float:
    return sum(values) / len(values) / (1 << 20) if values else 0.0


def fleet_data(directory: Path, lines: Iterator[bytes], file_bytes: bytes) -> FleetData:
    """Write the log and the file every host serves, readable by sshd's user."""
    directory.mkdir(exist_ok=True)
    log = directory / "syslog"
    log.write_bytes(b"".join(lines))
    file = directory / "release.tar"
    file.write_bytes(file_bytes)
    for path in (log, file):
        path.chmod(0o644)
    return FleetData(directory, log, file)
