"""A real OpenSSH sshd on loopback, as an oracle for what OpenSSH accepts.

`Sshd` runs `/usr/sbin/sshd -D -e -f CONFIG` on 127.0.0.1 with its own host key, with
`AuthorizedKeysFile`, `TrustedUserCAKeys` and `RevokedKeys` pointing at files the test writes,
and with limits loose enough for hundreds of refusals from one source. sshd checks keys only for
a real account, so `system_user()` makes one (and removes it). `secure_directory()` gives a
directory that both sshd's StrictModes and the test user accept: root-owned, 0755, no
group/other-writable parent (so not under /tmp), readable by the user sshd reads it as.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")  # sshd refuses to start without its privilege-separation directory
START_TIMEOUT = 15.0


def sshd_available() -> bool:
    return os.path.exists(SSHD) and shutil.which("ssh-keygen") is not None and os.geteuid() == 0


def sshd_version() -> str:
    out = subprocess.run([SSHD, "-V"], capture_output=True, timeout=10)
    return (out.stderr or out.stdout).decode(errors="replace").strip()


def ipv6_loopback() -> bool:
    """Whether ::1 can be bound here (some containers have no IPv6)."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def _free_port(ipv6: bool, address: str = "127.0.0.1") -> int:
    """A port free on `address` (IPv4), and on ::1 too when sshd listens there."""
    for _ in range(50):
        with socket.socket() as v4, socket.socket(socket.AF_INET6) as v6:
            v4.bind((address, 0))
            port = int(v4.getsockname()[1])
            try:
                if ipv6:
                    v6.bind(("::1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no port free on both 127.0.0.1 and ::1")


@contextlib.contextmanager
def secure_directory(prefix: str = "conchcmd-sshd-") -> Iterator[Path]:
    """A fresh root-owned 0755 directory under /run (whose parents are root-owned and 0755)."""
    base = Path("/run") if os.access("/run", os.W_OK) else Path("/var/lib")
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def system_user(home: Path, name: str | None = None, shell: str | None = None) -> Iterator[str]:
    """A system account sshd will authenticate: home `home`, shell nologin (or `shell`: sshd runs a
    ForceCommand through it), and a `*` password field (without PAM, sshd treats the `!` that
    useradd writes as a locked account)."""
    name = name or f"cdiff{os.getpid()}"
    shell = shell or shutil.which("nologin") or "/usr/sbin/nologin"
    subprocess.run(
        ["useradd", "--no-create-home", "--home-dir", str(home), "--shell", shell, "--password", "*", name],
        check=True,
        capture_output=True,
        timeout=30,
    )
    try:
        pwd.getpwnam(name)
        yield name
    finally:
        subprocess.run(["userdel", name], capture_output=True, timeout=30)


@dataclass
class Sshd:
    """One sshd process on 127.0.0.1 (or `address`) and ::1 (the same port); `start()` writes its config and
    waits until it listens. UseDNS is off, so from= patterns are matched against addresses."""

    base: Path  # the host key, config and log live here
    authorized_keys: str  # AuthorizedKeysFile pattern (%u is the user)
    trusted_user_ca_keys: Path
    revoked_keys: Path
    extra: dict[str, str] = field(default_factory=dict)
    ipv6: bool = True  # also listen on ::1
    address: str = "127.0.0.1"  # the IPv4 loopback address to listen on
    port: int = 0
    popen_extra: dict[str, Any] = field(default_factory=dict)  # e.g. preexec_fn (tests/bench)
    proc: subprocess.Popen[bytes] | None = None
    _log: Any = field(default=None, repr=False)

    @property
    def config(self) -> Path:
        return self.base / "sshd_config"

    @property
    def log_path(self) -> Path:
        return self.base / "sshd.log"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _settings(self) -> dict[str, str]:
        settings = {
            "Port": str(self.port),
            "ListenAddress": self.address,
            "HostKey": str(self.base / "ssh_host_ed25519_key"),
            "PidFile": "none",
            "AuthorizedKeysFile": self.authorized_keys,
            "TrustedUserCAKeys": str(self.trusted_user_ca_keys),
            "RevokedKeys": str(self.revoked_keys),
            "StrictModes": "yes",
            "UsePAM": "no",
            "UseDNS": "no",
            "PubkeyAuthentication": "yes",
            "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no",
            "HostbasedAuthentication": "no",
            "PermitRootLogin": "no",
            "PermitUserEnvironment": "no",
            "MaxStartups": "200",
            "MaxAuthTries": "10",
            "LoginGraceTime": "30",
            "LogLevel": "VERBOSE",
        }
        known = self._known_keywords()
        if "persourcepenalties" in known:  # OpenSSH 9.8+
            settings["PerSourcePenalties"] = "no"
        if "persourcemaxstartups" in known:
            settings["PerSourceMaxStartups"] = "none"
        settings.update(self.extra)
        return settings

    def _config_text(self) -> str:
        # ListenAddress may be given twice: a dict cannot hold that, so ::1 is added here.
        lines = [f"{k} {v}" for k, v in self._settings().items()]
        if self.ipv6:
            lines.insert(2, "ListenAddress ::1")
        return "".join(line + "\n" for line in lines)

    def _known_keywords(self) -> set[str]:
        """The keywords this sshd knows, from `sshd -T` on a minimal config."""
        probe = self.base / "sshd_config.probe"
        probe.write_text(f"HostKey {self.base / 'ssh_host_ed25519_key'}\nPidFile none\n")
        out = subprocess.run([SSHD, "-T", "-f", str(probe)], capture_output=True, timeout=30)
        return {line.split(" ", 1)[0] for line in out.stdout.decode(errors="replace").splitlines() if line}

    def start(self) -> None:
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        self.base.mkdir(parents=True, exist_ok=True)
        host_key = self.base / "ssh_host_ed25519_key"
        if not host_key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True, timeout=30)
        for attempt in range(3):  # the free port may be taken between the probe and sshd's bind
            self.port = _free_port(self.ipv6, self.address)
            self.config.write_text(self._config_text())
            check = subprocess.run([SSHD, "-t", "-f", str(self.config)], capture_output=True, timeout=30)
            assert check.returncode == 0, f"sshd rejects its config: {check.stderr.decode(errors='replace')}"
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self.popen_extra,
            )
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline:
                log = self.log_text()
                v6_up = not self.ipv6 or f"on ::1 port {self.port}." in log
                if f"Server listening on {self.address} port {self.port}." in log and v6_up:
                    return
                if self.proc.poll() is not None:
                    break
                time.sleep(0.02)
            self.stop()
            if "Address already in use" not in self.log_text() or attempt == 2:
                raise AssertionError(f"sshd did not start:\n{self.log_text()}")

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # the listener and its per-connection children
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
