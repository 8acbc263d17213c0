"""What every test's `conchcmd serve` process shares (support/server.py's Server, the one of the
end-to-end and reliability layers, and the differential layer's ConchServer): its files (config,
log, audit log), waiting for them, and stopping it with SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w

REPO = Path(__file__).resolve().parents[2]

STOP_TIMEOUT = 5.0


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def merged(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """The layers laid over each other in order: tables merge key by key, any other value replaces."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
                out[key] = merged(out[key], value)
            else:
                out[key] = dict(value) if isinstance(value, Mapping) else value
    return out


def toml_text(*layers: Mapping[str, Any]) -> str:
    """The merged layers as a TOML document (tomli-w writes it: strings and keys quoted for us)."""
    return tomli_w.dumps(merged(*layers))


class ServerFiles:
    """Mixed into a harness's Server dataclass, which provides `base`, `proc`, `returncode` and
    `_log_file`."""

    base: Path
    proc: subprocess.Popen[bytes] | None
    returncode: int | None
    _log_file: Any

    @property
    def config(self) -> Path:
        return self.base / "conchcmd.toml"

    def write_settings(self, *layers: Mapping[str, Any]) -> None:
        """Write the config file: the layers merged (see `merged`), as TOML."""
        self.config.write_text(toml_text(*layers))

    @property
    def log_path(self) -> Path:
        return self.base / "server.log"

    @property
    def audit_path(self) -> Path:
        return self.base / "audit.jsonl"

    def stop(self) -> None:
        """SIGTERM; the server must exit within STOP_TIMEOUT seconds."""
        proc = self.proc
        if proc is None or self.returncode is not None:
            return
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                self.returncode = proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: start_new_session=True
                proc.wait(timeout=STOP_TIMEOUT)
                self.returncode = -9
                raise AssertionError(
                    f"server did not exit within {STOP_TIMEOUT:g} s of SIGTERM; its log ends:\n"
                    + self.log_text()[-3000:]
                ) from None
        finally:
            if self._log_file is not None:
                self._log_file.close()

    def spawn(
        self,
        argv: Sequence[str] | None = None,
        env_extra: dict[str, str] | None = None,
        **popen_extra: Any,
    ) -> None:
        """Start the server (by default `python -m conchcmd serve --config CONFIG`) in its own
        session, importing this checkout's conchcmd, its output going to `log_path`."""
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env_extra or {}))
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            list(argv or [sys.executable, "-m", "conchcmd", "serve", "--config", str(self.config)]),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self.base,
            env=env,
            start_new_session=True,
            **popen_extra,
        )

    def log_bytes(self) -> bytes:
        return self.log_path.read_bytes() if self.log_path.exists() else b""

    def log_text(self) -> str:
        return self.log_bytes().decode("utf-8", "replace")

    def audit(self) -> list[dict[str, Any]]:
        if not self.audit_path.exists():
            return []
        text = self.audit_path.read_text(encoding="utf-8")
        # A line being written may be incomplete: only whole lines count.
        return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]

    def audit_mark(self) -> int:
        return len(self.audit())

    def wait_audit(
        self, predicate: Callable[[dict[str, Any]], bool], mark: int = 0, timeout: float = 10.0, what: str = "event"
    ) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            return next((e for e in self.audit_since(mark) if predicate(e)), None)

        return wait_for(find, timeout, f"audit {what}")

    def audit_since(self, mark: int, event: str | None = None) -> list[dict[str, Any]]:
        """Audit records after `mark` (an audit_mark()), only those of `event` if given."""
        return [e for e in self.audit()[mark:] if event is None or e["event"] == event]

    def log_mark(self) -> int:
        return len(self.log_text())

    def wait_log(self, pattern: str, since: int = 0, timeout: float = 10.0) -> re.Match[str]:
        """Wait for a server log line matching `pattern`, after `since` (a log_mark())."""
        return wait_for(
            lambda: re.search(pattern, self.log_text()[since:]), timeout, f"server log matching {pattern!r}"
        )

    def wait_listening(self, line: re.Pattern[bytes], timeout: float) -> int:
        """The port the server's `listening on` log line (`line`, the port its group 1) names; fails
        at once if the server exits first."""

        def listening() -> int | None:
            m = line.search(self.log_bytes())
            if m:
                return int(m.group(1))
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log_text()}")
            return None

        return int(wait_for(listening, timeout, "the server's listening line"))


def hermetic_ssh(
    port: int,
    key: Path,
    user: str,
    source: str,
    *,
    remote: str | None = None,
    options: Sequence[str] = (),
    log_level: str = "ERROR",
    ssh: str = "ssh",
) -> list[str]:
    """An OpenSSH argv that reads no user config, trusts any host key, never prompts, and binds
    to `source`. `options` come first: for ssh the first value given for an option wins."""
    argv = [
        ssh,
        *options,
        *("-o", f"BindAddress={source}", "-F", "/dev/null"),
        *("-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"),
        *("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"),
        *("-o", f"LogLevel={log_level}", "-o", "ConnectTimeout=10"),
        *("-p", str(port), "-i", str(key), f"{user}@127.0.0.1"),
    ]
    return [*argv, remote] if remote is not None else argv


def server_fleet(make: Callable[..., Any], check: Callable[[Any], None]) -> Iterator[Callable[..., Any]]:
    """Body of a module fixture: yields `start(**settings)`, which makes and starts a server;
    at teardown every server started is stopped and checked, and all failures are reported."""
    servers: list[Any] = []

    def start(**settings: Any) -> Any:
        server = make(**settings)
        servers.append(server)
        server.start()
        return server

    yield start
    errors = []
    for server in servers:
        try:
            check(server)
        except AssertionError as e:
            errors.append(str(e))
    assert not errors, "\n\n".join(errors)
