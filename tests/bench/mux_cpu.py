#!/usr/bin/env python3
"""CPU per multiplexed exec, measured in memory: no sockets, no threads, no other process.

The whole stack of tests/support/world.py (the real server object graph, real crypto, the test
client over iosim) runs `comphash` of a small file on `--concurrency` channels of one connection
at a time, `-n` execs per round, and prints this thread's CPU time per exec (client included: it
is the same code on both sides of an A/B). Being CPU time of one thread, it is not moved by the
load of a shared machine the way a rate is, so before/after differences of a few percent show.

  PYTHONPATH=TREE python tests/bench/mux_cpu.py            # TREE: a worktree or exported commit
  python tests/bench/mux_cpu.py --trees /tmp/base,.          # alternate trees, each in a subprocess
  python tests/bench/mux_cpu.py --profile out.prof          # cProfile (thread CPU time) of the execs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for support
if "PYTHONPATH" not in os.environ:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for conchcmd


def measure(n: int, concurrency: int, rounds: int, profile: str | None) -> list[float]:
    from support.sshclient import RecordingChannel
    from support.tempdirs import trusted_temp_parent
    from support.world import make_world
    from twisted.conch.ssh import common

    from conchcmd.core.config import LimitsConfig

    with tempfile.TemporaryDirectory(dir=trusted_temp_parent()) as tmp:
        world = make_world(Path(tmp), limits=LimitsConfig(max_sessions=100))  # as the benchmarks' servers
        (world.root / "small.bin").write_bytes(os.urandom(4096))
        command = common.NS(f"comphash {world.root / 'small.bin'}".encode())
        conn = world.login()

        def one_round() -> None:
            done = 0
            live: list[RecordingChannel] = []
            started = 0
            while done < n:
                while len(live) < concurrency and started < n:
                    chan = RecordingChannel(localWindow=2 * 1024 * 1024, localMaxPacket=32768, conn=conn.conn)
                    conn.conn.openChannel(chan)
                    chan.opened.addCallback(lambda c: conn.conn.sendRequest(c, b"exec", command, wantReply=True))
                    chan.opened.addErrback(lambda f: sys.exit(f"open refused: {f.value}"))
                    live.append(chan)
                    started += 1
                conn.flush()
                world.clock.advance(0)
                conn.flush()
                for chan in [c for c in live if c.is_closed]:
                    assert chan.exit_status == 0 and len(chan.out.split()[0]) == 64, (chan.out, chan.err)
                    live.remove(chan)
                    done += 1

        one_round()  # warm-up
        profiler = None
        if profile:
            import cProfile

            profiler = cProfile.Profile(time.thread_time)
            profiler.enable()
        per_exec = []
        for _ in range(rounds):
            t = time.thread_time()
            one_round()
            per_exec.append((time.thread_time() - t) * 1000 / n)
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile)
        return per_exec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--trees", help="comma-separated trees to alternate, each run in a subprocess")
    ap.add_argument("--repeat", type=int, default=3, help="with --trees: runs of each tree, alternating")
    ap.add_argument("--profile")
    args = ap.parse_args()
    if not args.trees:
        per_exec = measure(args.n, args.concurrency, args.rounds, args.profile)
        print(json.dumps({"cpu_ms_per_exec": [round(x, 4) for x in per_exec]}))
        return
    results: dict[str, list[float]] = {}
    trees = args.trees.split(",")
    for i in range(args.repeat):
        for tree in trees if i % 2 == 0 else reversed(trees):
            env = dict(os.environ, PYTHONPATH=str(Path(tree).resolve()))
            argv = [sys.executable, __file__, "-n", str(args.n), "--concurrency", str(args.concurrency)]
            out = subprocess.run([*argv, "--rounds", str(args.rounds)], env=env, capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(out.stderr)
            results.setdefault(tree, []).extend(json.loads(out.stdout.splitlines()[-1])["cpu_ms_per_exec"])
    for tree, values in results.items():
        print(
            f"{tree}: CPU ms per exec (client and server) median {statistics.median(values):.4f}"
            f" min {min(values):.4f} max {max(values):.4f} over {len(values)} rounds"
        )


if __name__ == "__main__":
    main()
