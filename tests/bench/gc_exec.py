#!/usr/bin/env python3
"""What Python's cyclic garbage collector costs a serving process per fresh `ssh host comphash 4KiB`.

Starts `conchcmd serve` from each --tree (PYTHONPATH) under a small wrapper that times every
collection (gc.callbacks: wall clock and the collecting thread's CPU, per generation, with the
objects it found unreachable), switched on only around N fresh execs after a warm-up (the fixture
of profile_exec.py: the real `ssh` client on 127.0.0.1). Prints, per tree: collections and GC ms
per exec by generation, the thresholds the server ran with, its RSS before and after the execs.

`--saveall` (a throwaway run: it keeps every unreachable object) also lists what the collected
cycles were made of: the types of the objects the collector found, per exec.

Not part of the pytest run:
    python tests/bench/gc_exec.py [--tree TREE ...] [--execs 200] [--saveall]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]


def serve_gc(stats_file: str, config: str, saveall: bool) -> None:
    """The server side: conchcmd serve, its collections recorded between SIGUSR1 and SIGUSR2."""
    import collections
    import gc

    from conchcmd.edge import cli

    recording = False
    per_gen = {g: {"count": 0, "wall_ms": 0.0, "cpu_ms": 0.0, "collected": 0, "uncollectable": 0} for g in range(3)}
    started = [0.0, 0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        if not recording:
            return
        if phase == "start":
            started[:] = [time.perf_counter(), time.thread_time()]
            return
        row = per_gen[info["generation"]]
        row["count"] += 1
        row["wall_ms"] += (time.perf_counter() - started[0]) * 1000
        row["cpu_ms"] += (time.thread_time() - started[1]) * 1000
        row["collected"] += info["collected"]
        row["uncollectable"] += info["uncollectable"]

    def rss_kib() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    before: dict[str, object] = {}

    def on(*_: object) -> None:
        nonlocal recording
        before.update(rss_kib=rss_kib(), tracked=len(gc.get_objects()), frozen=gc.get_freeze_count())
        if saveall:
            gc.garbage.clear()
            gc.set_debug(gc.DEBUG_SAVEALL)
        recording = True

    def off(*_: object) -> None:
        nonlocal recording
        recording = False
        gc.set_debug(0)
        types = collections.Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage)
        report = {
            "per_gen": per_gen,
            "threshold": gc.get_threshold(),
            "before": before,
            "after": {"rss_kib": rss_kib(), "tracked": len(gc.get_objects()), "frozen": gc.get_freeze_count()},
            "garbage": len(gc.garbage),
            "types": types.most_common(60),
        }
        gc.garbage.clear()
        t0 = time.perf_counter()
        gc.collect()  # what one full collection costs this process now (not counted above)
        report["full_collect_ms"] = (time.perf_counter() - t0) * 1000
        tmp = stats_file + ".tmp"
        Path(tmp).write_text(json.dumps(report))
        os.replace(tmp, stats_file)

    gc.callbacks.append(timed)
    signal.signal(signal.SIGUSR1, on)
    signal.signal(signal.SIGUSR2, off)
    sys.exit(cli.main(["serve", "--config", config]))


def measure(fx: object, tree: Path, execs: int, saveall: bool, name: str) -> dict:
    from profile_exec import Server  # type: ignore[import-not-found]

    stats = Path(fx.root) / f"{name}.json"  # type: ignore[attr-defined]
    launcher = [sys.executable, str(HERE), "--serve-gc", str(stats)] + (["--saveall"] if saveall else [])
    server = Server(fx, tree, name, launcher=launcher)
    try:
        cpu_ms, sched_ms, client_ms = server.switched_execs(execs, stats)
    finally:
        server.stop()
    report = json.loads(stats.read_text())
    report.update(cpu_ms=cpu_ms, sched_ms=sched_ms, client_ms=client_ms)
    return report


def show(tree: Path, execs: int, r: dict) -> None:
    print(f"tree {tree}: {execs} fresh execs; server CPU {r['sched_ms']:.2f} ms/exec (schedstat)")
    print(f"  thresholds {r['threshold']}")
    total = {"count": 0, "wall_ms": 0.0, "cpu_ms": 0.0, "collected": 0}
    print("  gen  collections  per exec   GC wall ms/exec  GC CPU ms/exec  ms each   unreachable/exec")
    for g in ("0", "1", "2"):
        row = r["per_gen"][g]
        n = row["count"]
        each = row["wall_ms"] / n if n else 0.0
        wall, cpu = row["wall_ms"] / execs, row["cpu_ms"] / execs
        print(
            f"  {g}    {n:6d}       {n / execs:6.3f}    {wall:8.3f}         {cpu:8.3f}"
            f"       {each:6.3f}   {row['collected'] / execs:8.1f}"
        )
        for k in total:
            total[k] += row[k]
    print(
        f"  all  {total['count']:6d}       {total['count'] / execs:6.3f}    {total['wall_ms'] / execs:8.3f}"
        f"         {total['cpu_ms'] / execs:8.3f}                {total['collected'] / execs:8.1f}"
    )
    b, a = r["before"], r["after"]
    print(
        f"  RSS {b['rss_kib']} -> {a['rss_kib']} KiB ({(a['rss_kib'] - b['rss_kib']) / execs:+.2f} KiB/exec);"
        f" gc-tracked objects {b['tracked']} -> {a['tracked']}; frozen {b['frozen']} -> {a['frozen']}"
    )
    print(f"  one full collection after the execs (gc.collect()): {r['full_collect_ms']:.2f} ms")
    if r["garbage"]:
        print(f"  unreachable objects found (DEBUG_SAVEALL): {r['garbage'] / execs:.1f} per exec; by type, per exec:")
        for name, n in r["types"]:
            print(f"    {n / execs:7.2f}  {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", type=Path, nargs="+", default=[REPO], help="source trees (default: this one)")
    ap.add_argument("--execs", type=int, default=200)
    ap.add_argument("--saveall", action="store_true", help="keep and list the unreachable objects (throwaway run)")
    ap.add_argument("--serve-gc", metavar="STATS", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_gc:
        serve_gc(args.serve_gc, args.config, args.saveall)
        return
    sys.path[:0] = [str(HERE.parent), str(HERE.parents[1]), str(REPO)]  # bench/, tests/ (support), the repository
    from profile_exec import Fixture
    from support.tempdirs import trusted_temp_parent

    with tempfile.TemporaryDirectory(prefix="conchcmd-gc-", dir=trusted_temp_parent()) as tmp:
        fx = Fixture(Path(tmp))
        for i, tree in enumerate(args.tree):
            show(tree.resolve(), args.execs, measure(fx, tree.resolve(), args.execs, args.saveall, f"tree{i}"))


if __name__ == "__main__":
    main()
