"""The benchmark scripts in tests/bench/ are not run by pytest (they take minutes and measure
speed), so this checks what can break them unnoticed: each still imports and answers `--help`,
the configuration they give conchcmd is one conchcmd accepts, and the OpenSSH ForceCommand anchor
serves the commands the way conchcmd names them."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.serverfiles import toml_text
from support.sshbench import BenchFiles, conchcmd_settings

from conchcmd.core.config import parse_config

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "tests" / "bench"
SCRIPTS = [
    "compare.py",
    "figures.py",
    "auth_load.py",
    "cipher_throughput.py",
    "rekey_cost.py",
    "protocol_findings.py",
    "reactor_roundtrip.py",
    "anchors/asyncssh_server.py",
]


def test_every_bench_script_answers_help() -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(BENCH / name), "--help"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
        for name in SCRIPTS
    }
    failed = []
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=60)
        if proc.returncode != 0 or b"usage" not in out:
            failed.append(f"{name}: rc {proc.returncode}:\n{out.decode(errors='replace')[-1500:]}")
    assert not failed, "\n\n".join(failed)


def test_the_bench_configuration_is_one_conchcmd_accepts(tmp_path: Path) -> None:
    files = BenchFiles(
        key=tmp_path / "key", small=tmp_path / "small.bin", big=tmp_path / "big.bin", big_mib=1, log=tmp_path / "log"
    )
    config = parse_config(toml_text(conchcmd_settings(files)), base_dir=tmp_path)
    # The shared bench gives OpenSSH MaxSessions 100: conchcmd must get the same, or its
    # multiplexed figure is "too many sessions (max 10)".
    assert config.limits.max_sessions == 100
    assert config.lastlog.sources == (str(files.log),)
    assert config.comphash.roots == (str(tmp_path),)
    assert list(config.listen) == ["tcp:0:interface=127.0.0.1"]


def forcecmd(tmp_path: Path, command: str | None, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    env = {"PATH": os.environ["PATH"], "BENCH_LOG": str(tmp_path / "syslog")}
    if command is not None:
        env["SSH_ORIGINAL_COMMAND"] = command
    return subprocess.run(
        ["sh", str(BENCH / "anchors" / "forcecmd.sh")], input=stdin, capture_output=True, env=env, timeout=30
    )


@pytest.fixture
def log_and_file(tmp_path: Path) -> tuple[list[bytes], Path]:
    lines = [f"Nov 26 15:02:{i:02d} lab CRON[{i}]: line {i}\n".encode() for i in range(25)]
    (tmp_path / "syslog").write_bytes(b"".join(lines))
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(5000))
    return lines, data


def test_the_forcecommand_anchor_serves_the_commands(tmp_path: Path, log_and_file: tuple[list[bytes], Path]) -> None:
    lines, data = log_and_file
    r = forcecmd(tmp_path, "lastlog")
    assert (r.returncode, r.stdout) == (0, b"".join(lines[-10:]))
    r = forcecmd(tmp_path, f"comphash {data}")
    assert (r.returncode, r.stdout) == (0, f"{hashlib.sha256(data.read_bytes()).hexdigest()}  {data}\n".encode())
    r = forcecmd(tmp_path, "comphash")
    assert (r.returncode, r.stderr) == (2, b"usage: comphash PATH\n")
    r = forcecmd(tmp_path, f"comphash {tmp_path / 'missing'}")
    assert r.returncode == 1 and r.stdout == b""
    r = forcecmd(tmp_path, "sh -c id")
    assert (r.returncode, r.stdout, r.stderr) == (127, b"", b"Command not found.\n")
    assert forcecmd(tmp_path, "exit").returncode == 0


def test_the_forcecommand_anchor_reads_commands_without_one(
    tmp_path: Path, log_and_file: tuple[list[bytes], Path]
) -> None:
    lines, _ = log_and_file
    r = forcecmd(tmp_path, None, stdin=b"lastlog\nexit\nlastlog\n")
    assert r.returncode == 0
    assert r.stdout == b"> " + b"".join(lines[-10:]) + b"> "  # nothing after exit
