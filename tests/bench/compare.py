#!/usr/bin/env python3
"""conchcmd beside OpenSSH + ForceCommand and AsyncSSH, serving the same commands, in one run.

Starts three servers on 127.0.0.1, one after the other, each serving `lastlog` (the last 10 lines
of a big log), `comphash PATH` (SHA-256) and `exit` to the same key:

  openssh   /usr/sbin/sshd with `ForceCommand tests/bench/anchors/forcecmd.sh` (MaxSessions 100)
  asyncssh  tests/bench/anchors/asyncssh_server.py
  conchcmd  `python -m conchcmd serve` from this checkout (max_sessions = 100, as sshd gets)

and measures each the same way (tests/support/sshbench.py): fresh exec latency with the server's
CPU per exec and the `ssh` client's own CPU per exec (the floor), parallel execs/s (8 clients),
execs/s multiplexed on one asyncssh connection (median of 8 rounds, with the spread), comphash of
a big file in MiB/s beside in-process hashlib on the same file, lastlog on the big log, a small
exec while two big hashes run, and memory per idle session. It prints a markdown table with the
ratios conchcmd / AsyncSSH (and --json OUT writes every figure). Ratios between servers measured
in one run are what count on a shared or noisy machine; absolute figures move with the load.

The methodology is the development team's `../shared/bench/run.py` (same fixtures, counts and
measurements), so the two cross-check, with three differences: the multiplexed figure is the
median of 8 rounds (run.py: 5); the server's CPU per multiplexed exec is recorded too; and sshd
runs as a child subreaper, because its privileged connection process exits without reaping the
session process: run.py loses that process's CPU (the session and its ForceCommand shell), so its
OpenSSH CPU figures are lower than sshd's real cost.

Needs root for the OpenSSH server: sshd authenticates a real account, so this creates a system
user `bench` (shell /bin/sh, for ForceCommand) if there is none, and leaves it in place, as
run.py does. Without root, run `--servers asyncssh,conchcmd`. Needs asyncssh (`pip install -e
'.[bench]'`) and openssh-server; 2 GiB of scratch files under /var/tmp (512 MiB with --quick).

usage: python tests/bench/compare.py [--quick] [--servers openssh,asyncssh,conchcmd] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for support
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for conchcmd
from support import sshbench
from support.sshbench import BenchFiles, Target
from support.sshd import secure_directory, sshd_version
from support.tempdirs import trusted_temp_parent

import conchcmd

SERVERS = ("openssh", "asyncssh", "conchcmd")
LABELS = {"openssh": "OpenSSH + ForceCommand", "asyncssh": "AsyncSSH", "conchcmd": "conchcmd"}


def conchcmd_server(work: Path, files: BenchFiles) -> contextlib.AbstractContextManager[Target]:
    """conchcmd with the configuration run.py gives it (sshbench.conchcmd_settings)."""
    return sshbench.conchcmd_server(work / "conchcmd", files)


RUNNERS = {"openssh": sshbench.openssh, "asyncssh": sshbench.asyncssh_anchor, "conchcmd": conchcmd_server}


@dataclass(frozen=True)
class Counts:
    """How many of each measurement: run.py's counts (--quick: its quick ones), 8 multiplexed rounds."""

    execs: int
    parallel: int
    mux: int
    mux_rounds: int
    lastlogs: int
    idle_sessions: int

    @classmethod
    def of(cls, quick: bool) -> Counts:
        if quick:
            return cls(execs=10, parallel=40, mux=60, mux_rounds=8, lastlogs=5, idle_sessions=50)
        return cls(execs=30, parallel=160, mux=200, mux_rounds=8, lastlogs=15, idle_sessions=300)


def measure(t: Target, files: BenchFiles, digest: str, n: Counts) -> dict[str, Any]:
    """Every figure for one server; a figure that fails is recorded as its error, the rest still run."""
    r: dict[str, Any] = {}
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("exec", lambda: sshbench.exec_latency(t, files, n.execs)),
        ("parallel_exec_per_s", lambda: sshbench.parallel_per_s(t, files, n.parallel)),
        ("mux", lambda: sshbench.mux_per_s(t, files, n.mux, 16, n.mux_rounds)),
        ("lastlog_ms", lambda: sshbench.lastlog_ms(t, n.lastlogs)),
        ("big_hash", lambda: sshbench.big_hash(t, files, digest)),
        ("responsive_ms_under_hash", lambda: sshbench.responsive_ms(t, files)),
        ("idle_sessions", lambda: sshbench.idle_session_kib(t, files, n.idle_sessions)),
    ]
    for name, step in steps:
        try:
            value = step()
        except Exception as e:
            r[name] = f"error: {type(e).__name__}: {e}"[:300]
        else:
            if isinstance(value, dict) and name in ("exec", "mux"):
                r.update(value)
            else:
                r[name] = value
        print(f"  {t.name} {name}: {r.get(name, 'done')}", file=sys.stderr, flush=True)
    return r


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return "error" if value.startswith("error") else value
    if isinstance(value, float):
        value = value if abs(value) >= 0.005 else 0.0  # no "-0.00"
        return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def table(results: dict[str, Any], servers: list[str]) -> str:
    """The markdown table: one row a figure, one column a server, then conchcmd / AsyncSSH."""
    local = results["local"]
    mib = local["big_mib"]

    def get(*path: str) -> Callable[[dict[str, Any]], Any]:
        def pick(r: dict[str, Any]) -> Any:
            for key in path:
                if not isinstance(r, dict) or key not in r:
                    return r if isinstance(r, str) else None
                r = r[key]
            return r

        return pick

    def mux(r: dict[str, Any]) -> Any:
        value = r.get("mux_exec_per_s", r.get("mux"))
        spread = r.get("mux_exec_spread")
        return f"{value:.1f} ({spread[0]:.0f}-{spread[1]:.0f})" if spread and _number(value) else value

    rows: list[tuple[str, Callable[[dict[str, Any]], Any], Callable[[dict[str, Any]], Any] | None]] = [
        ("fresh `ssh host comphash small`, median ms", get("exec_latency_ms"), get("exec_latency_ms")),
        ("server CPU per fresh exec, ms", get("server_cpu_ms_per_exec"), get("server_cpu_ms_per_exec")),
        ("`ssh` client CPU per exec (the floor), ms", get("client_cpu_ms_per_exec"), None),
        ("server CPU per multiplexed exec, ms", get("server_cpu_ms_per_mux_exec"), get("server_cpu_ms_per_mux_exec")),
        ("parallel execs/s (8 clients, new connection each)", get("parallel_exec_per_s"), get("parallel_exec_per_s")),
        (
            f"execs/s multiplexed on one connection (median of {local['mux_rounds']} rounds, spread)",
            mux,
            get("mux_exec_per_s"),
        ),
        (f"comphash of {mib} MiB, MiB/s", get("big_hash", "mib_per_s"), get("big_hash", "mib_per_s")),
        (f"lastlog on a {mib} MiB log, median ms", get("lastlog_ms"), get("lastlog_ms")),
        (
            f"small exec while two {mib} MiB hashes run, ms",
            get("responsive_ms_under_hash"),
            get("responsive_ms_under_hash"),
        ),
        (
            "memory per idle session, KiB",
            get("idle_sessions", "kib_per_session"),
            get("idle_sessions", "kib_per_session"),
        ),
    ]
    head = [LABELS[s] for s in servers]
    ratio = "conchcmd" in servers and "asyncssh" in servers
    lines = ["| figure | " + " | ".join(head) + (" | conchcmd ÷ AsyncSSH |" if ratio else " |")]
    lines.append("|---" * (len(head) + 1 + ratio) + "|")
    for label, shown, compared in rows:
        cells = [_cell(shown(results[s])) for s in servers]
        if ratio:
            a = _number(compared(results["asyncssh"])) if compared else None
            c = _number(compared(results["conchcmd"])) if compared else None
            cells.append(f"{c / a:.2f}" if a and c and a > 0 and c > 0 else "—")  # PSS noise can go below 0
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    notes = [f"In-process hashlib on the same file: {local['hashlib_mib_per_s']} MiB/s."]
    conch = results.get("conchcmd", {})
    hashed, floor, latency = (
        _number(get("big_hash", "mib_per_s")(conch)),
        _number(conch.get("client_cpu_ms_per_exec")),
        _number(conch.get("exec_latency_ms")),
    )
    if hashed:
        notes.append(f"conchcmd's comphash is {hashed / local['hashlib_mib_per_s']:.2f} of it.")
    if floor and latency:
        notes.append(f"conchcmd's fresh exec latency is {latency / floor:.2f} times its `ssh` client's CPU floor.")
    for s in servers:
        if isinstance(results[s], dict) and results[s].get("big_hash", {}).get("correct") is False:
            notes.append(f"{LABELS[s]}: WRONG DIGEST for the big file.")
        errors = [
            f"{k}: {v}" for k, v in results[s].items() if isinstance(v, str) and (k == "error" or v.startswith("error"))
        ]
        notes += [f"{LABELS[s]}: {e}" for e in errors]
    return "\n".join(lines) + "\n\n" + " ".join(notes[:3]) + "".join("\n" + n for n in notes[3:])


def environment() -> dict[str, Any]:
    import asyncssh
    import twisted

    return {
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "openssh": sshd_version().split(",")[0] if Path("/usr/sbin/sshd").exists() else None,
        "asyncssh": asyncssh.__version__,
        "twisted": twisted.__version__,
        "conchcmd": conchcmd.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", default=",".join(SERVERS), help="comma-separated, from: " + ", ".join(SERVERS))
    ap.add_argument("--quick", action="store_true", help="256 MiB files and run.py's quick counts (about a minute)")
    ap.add_argument("--json", type=Path, help="write every figure here")
    args = ap.parse_args(argv)
    servers = [s for s in args.servers.split(",") if s]
    unknown = [s for s in servers if s not in RUNNERS]
    if unknown:
        ap.error(f"unknown server(s): {', '.join(unknown)}")
    if "openssh" in servers and os.geteuid() != 0:
        ap.error("the OpenSSH server needs root; run as root or pass --servers asyncssh,conchcmd")
    n = Counts.of(args.quick)
    env = environment()
    # sshd's StrictModes wants root-owned directories all the way up; without root, a private one.
    work_dir = (
        secure_directory("conchcmd-compare-")
        if os.geteuid() == 0
        else tempfile.TemporaryDirectory(prefix="conchcmd-compare-", dir=trusted_temp_parent())
    )
    # The big files go to disk (/run and /tmp may be memory), readable by the `bench` account.
    with work_dir as work_name, tempfile.TemporaryDirectory(prefix="conchcmd-compare-data-", dir="/var/tmp") as data:
        work = Path(work_name)
        Path(data).chmod(0o755)
        files = sshbench.make_files(Path(data), 256 if args.quick else 1024)
        hashlib_rate, digest = sshbench.hashlib_rate(files.big, files.big_mib)  # also warms the page cache
        started = time.perf_counter()
        for _ in range(20):
            subprocess.run(["tail", "-n", "10", str(files.log)], capture_output=True, check=True)
        results: dict[str, Any] = {
            "environment": env,
            "local": {
                "big_mib": files.big_mib,
                "hashlib_mib_per_s": hashlib_rate,
                "tail_ms": round((time.perf_counter() - started) * 1000 / 20, 2),
                "mux_rounds": n.mux_rounds,
            },
        }
        for name in servers:
            print(f"{name}: starting", file=sys.stderr, flush=True)
            try:
                with RUNNERS[name](work, files) as target:
                    results[name] = measure(target, files, digest, n)
            except Exception as e:
                results[name] = {"error": f"{type(e).__name__}: {e}"[:400]}
            print(name, json.dumps(results[name]), file=sys.stderr, flush=True)
    print(
        f"{env['when']}, {env['cpus']} CPUs, load average at start {env['load_average_at_start']}; "
        f"{env['openssh']}, AsyncSSH {env['asyncssh']}, conchcmd {env['conchcmd']} (Twisted {env['twisted']}), "
        f"Python {env['python']}{', --quick' if args.quick else ''}\n"
    )
    print(table(results, servers))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
