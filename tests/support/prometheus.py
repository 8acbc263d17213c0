"""A real Prometheus server for the tests (Debian's `prometheus`): started on a free loopback port
with a scrape config of its own and its storage in a temporary directory, queried through its
HTTP API (/api/v1/query), killed at the end."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.e2e import free_port
from support.serverfiles import wait_for

PROMETHEUS = shutil.which("prometheus")
START_TIMEOUT = 30.0


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@dataclass
class Prometheus:
    """One running Prometheus scraping `targets` (HOST:PORT) every second as job `job`."""

    base: Path
    targets: list[str]
    job: str = "conchcmd"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    _log: Any = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.base / "prometheus.log"

    def start(self) -> None:
        assert PROMETHEUS is not None
        self.base.mkdir(parents=True, exist_ok=True)
        config = self.base / "prometheus.yml"
        scrape = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": self.job, "static_configs": [{"targets": self.targets}]}],
        }
        config.write_text(json.dumps(scrape))  # YAML is a superset of JSON
        self.port = free_port()
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.base / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=info",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.base,
        )

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                return http_get(f"http://127.0.0.1:{self.port}/-/ready", timeout=1)[0] == 200
            except OSError:
                return False

        wait_for(ready, START_TIMEOUT, "prometheus ready")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The instant vector of `expression` now: [{"metric": {labels}, "value": [time, "text"]}]."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        status, body = http_get(url)
        answer = json.loads(body)
        assert status == 200 and answer["status"] == "success", answer
        return list(answer["data"]["result"])

    def value(self, expression: str) -> float | None:
        """The one value of `expression`, or None while it has none."""
        result = self.query(expression)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def wait_value(self, expression: str, expected: float, timeout: float = 30.0) -> float | None:
        """Poll until `expression` has the value `expected` (each scrape takes a second), or the
        deadline passes; returns the last value seen, for the test to compare."""
        deadline = time.monotonic() + timeout
        seen = self.value(expression)
        while seen != expected and time.monotonic() < deadline:
            time.sleep(0.25)
            seen = self.value(expression)
        return seen

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        if self._log is not None:
            self._log.close()
            self._log = None
