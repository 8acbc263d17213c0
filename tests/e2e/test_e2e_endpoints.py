"""`listen` descriptions Twisted cannot parse: `serve` (with `--listen` too), `check-config` and
`doctor` refuse them alike at configuration load, naming the key, before anything is started."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from conchcmd.edge import cli

pytestmark = pytest.mark.e2e


def test_check_config_doctor_and_serve_fail_alike(tmp_path: Path) -> None:
    config = tmp_path / "conchcmd.toml"
    config.write_text('listen = ["tcp:22O2"]\n')  # a letter O for a zero
    expected = (
        f"{config}: listen: 'tcp:22O2' is not an endpoint Twisted can listen on: "
        "invalid literal for int() with base 10: '22O2'"
    )
    check = _run_cli("check-config", "--config", str(config))
    assert (check.returncode, check.stdout) == (2, "")
    assert check.stderr == f"conchcmd: configuration error: {expected}\n"
    report = io.StringIO()
    assert cli.main(["doctor", "--config", str(config)], out=report) == 2
    assert report.getvalue().startswith(f"problem  configuration: {expected}\n")
    serve = _run_cli("serve", "--config", str(config))  # fails before it binds or writes anything
    assert serve.returncode == 2
    assert serve.stderr == check.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conchcmd.toml"]


def test_serve_listen_option_is_checked_too(tmp_path: Path) -> None:
    serve = _run_cli("serve", "--listen", "tcp:0:interface=127.0.0.1", "--listen", "tcp:ssh", cwd=tmp_path)
    assert serve.returncode == 2
    assert serve.stderr == (
        "conchcmd: --listen: 'tcp:ssh' is not an endpoint Twisted can listen on: "
        "invalid literal for int() with base 10: 'ssh'\n"
    )
    assert list(tmp_path.iterdir()) == []  # no host key, no audit log: nothing started


def _run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conchcmd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )
