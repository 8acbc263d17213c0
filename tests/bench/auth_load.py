#!/usr/bin/env python3
"""An operator's `comphash` latency, idle and while password guessers pipeline requests (issue 10).

Starts `python -m conchcmd serve` from a source tree (`--tree`, default this repository) on
127.0.0.1 with one key user (the operator) and one password user (bcrypt cost `--cost`, 12 as
`conchcmd hash-password` makes), `penalty_seconds = 0` so that the guessers are never shut out and
the load lasts. The operator keeps one OpenSSH ControlMaster connection and times
`comphash FILE` over it (`--runs` times, median and 90th percentile): idle, then while
`--sources` guessers (127.0.0.10, .11, ...; tests/support/pipeliner.py) each keep `--burst`
password requests in flight, reconnecting when cut.

Not part of the pytest run: `python tests/bench/auth_load.py [--tree /work/main] [--json OUT]`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bcrypt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for support
from support.serverfiles import toml_text

REPO = Path(__file__).resolve().parents[2]
PIPELINER = REPO / "tests" / "support" / "pipeliner.py"
LISTENING = re.compile(rb"conchcmd: listening on .* \(127\.0\.0\.1:(\d+)\)")


def ssh_options(port: int, key: Path) -> list[str]:
    return [
        *("-F", "/dev/null", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"),
        *("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"),
        *("-o", "BindAddress=127.0.0.3", "-p", str(port), "-i", str(key)),
    ]


class Bench:
    def __init__(self, root: Path, tree: Path, cost: int):
        self.root = root
        self.key = root / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        users = root / "keys" / "authorized_keys"
        users.mkdir(parents=True)
        (users / "operator").write_text(self.key.with_suffix(".pub").read_text())
        (users / "operator").chmod(0o600)
        data = root / "data"
        data.mkdir()
        self.file = data / "small.bin"
        self.file.write_bytes(os.urandom(64 * 1024))
        self.digest = hashlib.sha256(self.file.read_bytes()).hexdigest()
        hashed = bcrypt.hashpw(b"the operator's own", bcrypt.gensalt(rounds=cost)).decode()
        config = root / "conchcmd.toml"
        config.write_text(
            toml_text(
                {
                    "listen": ["tcp:0:interface=127.0.0.1"],
                    "host_keys_dir": "keys",
                    "authorized_keys": "keys/authorized_keys/%u",
                    "audit_log": "audit.jsonl",
                    "penalty_seconds": 0,
                    "comphash": {"roots": [str(data)]},
                    "users": {"carol": {"password_bcrypt": hashed}},
                }
            )
        )
        env = dict(os.environ, PYTHONPATH=str(tree), PYTHONUNBUFFERED="1")
        self.log = (root / "server.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "conchcmd", "serve", "--config", str(config)],
            cwd=root,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while not (m := LISTENING.search((root / "server.log").read_bytes())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start:\n" + (root / "server.log").read_text())
            time.sleep(0.05)
        self.port = int(m.group(1))
        self.control = root / "ctl"
        subprocess.run(
            ["ssh", *ssh_options(self.port, self.key), "-M", "-S", str(self.control), "-N", "-f", "operator@127.0.0.1"],
            check=True,
            timeout=30,
        )

    def comphash_ms(self) -> float:
        started = time.perf_counter()
        r = subprocess.run(
            ["ssh", "-S", str(self.control), "x", "comphash", str(self.file)], capture_output=True, timeout=300
        )
        elapsed = (time.perf_counter() - started) * 1000
        if r.returncode != 0 or self.digest.encode() not in r.stdout:
            raise SystemExit(f"comphash failed: rc {r.returncode}: {r.stderr!r}")
        return elapsed

    def sample(self, runs: int, pause: float) -> dict[str, float]:
        times = []
        for _ in range(runs):
            times.append(self.comphash_ms())
            time.sleep(pause)
        times.sort()
        return {
            "median_ms": round(statistics.median(times), 1),
            "p90_ms": round(times[int(len(times) * 0.9) - 1], 1),
            "max_ms": round(times[-1], 1),
        }

    def stop(self) -> None:
        subprocess.run(["ssh", "-S", str(self.control), "-O", "exit", "x"], capture_output=True, timeout=10)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # e.g. a server whose threads still have guesses queued
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=REPO, help="the conchcmd source tree to run the server from")
    parser.add_argument("--sources", type=int, default=10)
    parser.add_argument("--burst", type=int, default=5, help="password requests each guesser keeps in flight")
    parser.add_argument("--cost", type=int, default=12)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--pause", type=float, default=0.1, help="seconds between two comphash runs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    # Not under /tmp: strict_modes rightly ignores key files in a directory anyone can write.
    parent = Path.home() / ".cache" / "conchcmd-bench"
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="auth-load-", dir=parent) as tmp:
        bench = Bench(Path(tmp), args.tree.resolve(), args.cost)
        try:
            idle = bench.sample(args.runs, args.pause)
            seconds = 3600  # they reconnect until stopped, after the loaded sample
            sources = [f"127.0.0.{10 + n}" for n in range(args.sources)]
            guessers = subprocess.Popen(
                [
                    sys.executable,
                    str(PIPELINER),
                    "--port",
                    str(bench.port),
                    *[a for s in sources for a in ("--source", s)],
                    "--burst",
                    str(args.burst),
                    "--refill",
                    "--seconds",
                    str(seconds),
                ],
                stdout=subprocess.PIPE,
                env=dict(os.environ, PYTHONPATH=str(REPO)),
            )
            try:
                time.sleep(2)  # the guessers connect and fill their pipes
                loaded = bench.sample(args.runs, args.pause)
            finally:
                guessers.terminate()
                out, _ = guessers.communicate(timeout=30)
            records = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
            audit = [json.loads(line) for line in (Path(tmp) / "audit.jsonl").read_text().splitlines()]
        finally:
            bench.stop()
    failed = [e for e in audit if e["event"] == "auth" and not e.get("ok")]
    result: dict[str, Any] = {
        "tree": str(args.tree),
        "sources": args.sources,
        "burst": args.burst,
        "bcrypt_cost": args.cost,
        "idle": idle,
        "under_guessing": loaded,
        "delta_median_ms": round(loaded["median_ms"] - idle["median_ms"], 1),
        "guesser_connections_ended": len(records),
        "password_failures_audited": len(failed),
        "over_the_cap": sum("too many password checks" in e.get("reason", "") for e in failed),
        "guesser_ends": sorted({str(r["disconnect"]) for r in records}),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
