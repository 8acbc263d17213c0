#!/usr/bin/env python3
"""conchcmd's own performance figures, the ones issue 7 sets targets for, on this machine.

Starts `python -m conchcmd serve` on 127.0.0.1 (port 0) and measures with the real OpenSSH
client (and asyncssh for multiplexing and idle sessions, as ../shared/bench/run.py does):

  exec latency with the server's CPU per exec and the `ssh` client's own CPU per exec (the floor
  no server can go below), parallel execs/s, multiplexed execs/s on one connection (the median
  of 8 rounds, with the spread, and the server's CPU per multiplexed exec), comphash MiB/s
  against in-process hashlib on the same file, lastlog on a big log against the bare exec, a
  small exec while two big hashes run, bulk output MB/s with the server's RSS, and how
  fresh-exec throughput and memory scale with 10 / 100 / 1000 idle sessions open.

The measurements are tests/support/sshbench.py's, the same as tests/bench/compare.py's (which
puts conchcmd beside OpenSSH and AsyncSSH).

Not part of the pytest run: `python tests/bench/figures.py [--quick] [--json OUT]`
(needs asyncssh: `pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for support
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for conchcmd
from support import sshbench
from support.sshbench import BenchFiles, Target, conchcmd_server
from support.tempdirs import trusted_temp_parent

#: Laid over sshbench.conchcmd_settings: scaling opens up to 1000 sessions from one address.
SETTINGS = {"max_clients": 5000, "max_startups": 500, "max_startups_per_source": 100}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def idle_sessions(t: Target, count: int) -> list[Any]:
    conns = []
    for _ in range(count):
        conn = await t.connect()
        conns.append(conn)
        await conn.create_process(term_type=None)
    return conns


async def scaling(t: Target, files: BenchFiles, levels: tuple[int, ...], execs: int) -> list[dict[str, Any]]:
    rows = []
    opened: list[Any] = []
    base = sshbench.tree_pss_kib(t.pid)
    for level in levels:
        opened += await idle_sessions(t, level - len(opened))
        await asyncio.sleep(0.5)
        pss = sshbench.tree_pss_kib(t.pid)
        per_s = await asyncio.get_running_loop().run_in_executor(None, sshbench.parallel_per_s, t, files, execs)
        rows.append(
            {
                "sessions": level,
                "fresh_execs_per_s": per_s,
                "pss_mib": round(pss / 1024, 1),
                "kib_per_session": round((pss - base) / level, 1),
            }
        )
        print("scaling", rows[-1], flush=True)
    for conn in opened:
        conn.close()
    return rows


def bulk_log(root: Path) -> Path:
    """A log of 10000 lines of 10 kB: `lastlog -n 10000` prints 100 MB."""
    bulk = root / "bulk.log"
    with bulk.open("wb") as f:
        f.write((b"x" * 9999 + b"\n") * 10000)
    return bulk


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="256 MiB files, fewer runs, scaling to 100")
    ap.add_argument("--json")
    args = ap.parse_args()
    quick = args.quick
    with tempfile.TemporaryDirectory(prefix="conchcmd-figures-", dir=trusted_temp_parent()) as tmp:
        root = Path(tmp)
        data = root / "data"
        data.mkdir()
        files = sshbench.make_files(data, 256 if quick else 1024)
        hashlib_rate, digest = sshbench.hashlib_rate(files.big, files.big_mib)
        r: dict[str, Any] = {}
        with conchcmd_server(root / "server", files, SETTINGS) as t:
            r.update(sshbench.exec_latency(t, files, 10 if quick else 30))
            r["parallel_exec_per_s"] = sshbench.parallel_per_s(t, files, 40 if quick else 160)
            r.update(sshbench.mux_per_s(t, files, 60 if quick else 200, 16, 8))
            r["lastlog_ms"] = sshbench.lastlog_ms(t, 5 if quick else 15)
            r["lastlog_minus_exec_ms"] = round(r["lastlog_ms"] - r["exec_latency_ms"], 2)
            hashed = sshbench.big_hash(t, files, digest)
            assert hashed["correct"], "comphash printed the wrong digest"
            r["comphash_mib_per_s"] = hashed["mib_per_s"]
            r["hashlib_mib_per_s"] = hashlib_rate
            r["comphash_vs_hashlib"] = round(r["comphash_mib_per_s"] / r["hashlib_mib_per_s"], 2)
            r["responsive_ms_under_two_hashes"] = sshbench.responsive_ms(t, files)
            levels = (10, 100) if quick else (10, 100, 1000)
            r["scaling"] = asyncio.run(scaling(t, files, levels, 40 if quick else 160))
        bulk = {"lastlog": {"path": str(bulk_log(data)), "max_lines": 10000}}
        with conchcmd_server(root / "bulk", files, SETTINGS, bulk) as t:
            before = rss_kib(t.pid)
            started = time.perf_counter()
            out = t.ssh("lastlog -n 10000").stdout
            r["bulk_lastlog_mb"] = round(len(out) / 1e6, 1)
            r["bulk_mb_per_s"] = round(len(out) / 1e6 / (time.perf_counter() - started), 1)
            r["bulk_rss_growth_mib"] = round((rss_kib(t.pid) - before) / 1024, 1)
    print(json.dumps(r, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
