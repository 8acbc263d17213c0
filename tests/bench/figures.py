#!/usr/bin/env python3
"""conchcmd's own performance figures, the ones issue 7 sets targets for, on this machine.

Starts `python -m conchcmd serve` on 127.0.0.1 (port 0) and measures with the real OpenSSH
client (and asyncssh for multiplexing and idle sessions, as ../shared/bench/run.py does):

  exec latency, parallel and multiplexed execs/s, comphash MiB/s against in-process hashlib on
  the same file, lastlog on a big log against the bare exec, a small exec while two big hashes
  run, memory per idle session, bulk output MB/s with the server's RSS, and how fresh-exec
  throughput and memory scale with 10 / 100 / 1000 idle sessions open.

Not part of the pytest run: `python tests/bench/figures.py [--quick] [--json OUT]`
(needs asyncssh: `pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import asyncio
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for support
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for conchcmd
from support.tempdirs import trusted_temp_parent

LOG_LINE = b"Nov 26 15:02:03 lab CRON[4945]: (root) CMD (command -v debian-sa1 > /dev/null && debian-sa1 1 1)\n"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


class Bench:
    def __init__(self, root: Path, big_mib: int):
        self.root = root
        self.key = root / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        users = root / "keys" / "authorized_keys"
        users.mkdir(parents=True)
        (users / "bench").write_text(self.key.with_suffix(".pub").read_text())
        (users / "bench").chmod(0o600)
        self.small = root / "small.bin"
        self.small.write_bytes(os.urandom(4096))
        self.big = root / "big.bin"
        block = os.urandom(1 << 20)
        with self.big.open("wb") as f:
            for _ in range(big_mib):
                f.write(block)
        self.big_mib = big_mib
        self.log = root / "syslog"
        chunk = LOG_LINE * 10000
        with self.log.open("wb") as f:
            for _ in range(big_mib * (1 << 20) // len(chunk)):
                f.write(chunk)
        self.bulk = root / "bulk.log"
        long_line = b"x" * 9999 + b"\n"
        with self.bulk.open("wb") as f:
            f.write(long_line * 10000)  # 100 MB in 10000 lines
        self.start(self.log)

    def start(self, log: Path) -> None:
        """Start a server whose lastlog reads `log`."""
        root = self.root
        config = root / "conchcmd.toml"
        config.write_text(
            f'listen = ["tcp:0:interface=127.0.0.1"]\naudit_log = "audit.jsonl"\nmax_clients = 5000\n'
            f"max_startups = 500\nmax_startups_per_source = 100\nmax_sessions = 100\n"
            f'[lastlog]\npath = "{log}"\nmax_lines = 10000\n[comphash]\nroots = ["{root}"]\n'
        )
        server_log = root / "server.log"
        server_log.write_bytes(b"")
        self.out = server_log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "conchcmd", "serve", "--config", str(config)],
            stdout=self.out,
            stderr=subprocess.STDOUT,
            cwd=root,
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            m = re.search(rb"\(127\.0\.0\.1:(\d+)\)", server_log.read_bytes())
            if m:
                self.port = int(m.group(1))
                return
            time.sleep(0.05)
        raise SystemExit(server_log.read_text())

    def ssh_argv(self, *command: str) -> list[str]:
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-q",
            "-p",
            str(self.port),
            "-i",
            str(self.key),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "bench@127.0.0.1",
            *command,
        ]

    def ssh(self, *command: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self.ssh_argv(*command), capture_output=True, check=True, timeout=300)

    def timed_ms(self, *command: str, runs: int) -> float:
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            self.ssh(*command)
            times.append((time.perf_counter() - started) * 1000)
        return round(statistics.median(times), 2)

    def parallel_per_s(self, count: int, parallel: int = 8) -> float:
        started = time.perf_counter()
        running: list[subprocess.Popen[bytes]] = []
        done = 0
        for _ in range(count):
            while len(running) >= parallel:
                for p in running[:]:
                    if p.poll() is not None:
                        running.remove(p)
                        done += p.returncode == 0
                time.sleep(0.001)
            running.append(subprocess.Popen(self.ssh_argv("comphash", str(self.small)), stdout=subprocess.DEVNULL))
        for p in running:
            done += p.wait() == 0
        return round(done / (time.perf_counter() - started), 1)

    async def connect(self) -> Any:
        import asyncssh

        return await asyncssh.connect(
            "127.0.0.1", self.port, username="bench", client_keys=[str(self.key)], known_hosts=None
        )

    async def mux_per_s(self, count: int, concurrency: int = 16) -> float:
        async with await self.connect() as conn:
            gate = asyncio.Semaphore(concurrency)

            async def one() -> None:
                async with gate:
                    await conn.run(f"comphash {self.small}", check=True)

            started = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(count)))
            return round(count / (time.perf_counter() - started), 1)

    async def responsive_ms(self) -> float:
        async with await self.connect() as conn:
            hashes = [asyncio.create_task(conn.run(f"comphash {self.big}")) for _ in range(2)]
            await asyncio.sleep(0.3)
            times = []
            for _ in range(10):
                started = time.perf_counter()
                await conn.run("lastlog", check=True)
                times.append((time.perf_counter() - started) * 1000)
            await asyncio.gather(*hashes)
            return round(statistics.median(times), 2)

    async def idle_sessions(self, count: int) -> tuple[list[Any], list[Any]]:
        conns, procs = [], []
        for _ in range(count):
            conn = await self.connect()
            conns.append(conn)
            procs.append(await conn.create_process(term_type=None))
        return conns, procs

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.out.close()


def hashlib_mib_per_s(path: Path, mib: int) -> float:
    buffer = bytearray(1 << 20)
    digest = hashlib.sha256()
    started = time.perf_counter()
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(memoryview(buffer)[:n])
    return round(mib / (time.perf_counter() - started), 1)


async def scaling(bench: Bench, levels: tuple[int, ...], execs: int) -> list[dict[str, Any]]:
    rows = []
    opened: list[Any] = []
    procs: list[Any] = []
    base = pss_kib(bench.proc.pid)
    for level in levels:
        conns, more = await bench.idle_sessions(level - len(opened))
        opened += conns
        procs += more
        await asyncio.sleep(0.5)
        pss = pss_kib(bench.proc.pid)
        per_s = await asyncio.get_running_loop().run_in_executor(None, bench.parallel_per_s, execs)
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="256 MiB files, fewer runs, scaling to 100")
    ap.add_argument("--json")
    args = ap.parse_args()
    quick = args.quick
    with tempfile.TemporaryDirectory(prefix="conchcmd-figures-", dir=trusted_temp_parent()) as tmp:
        bench = Bench(Path(tmp), 256 if quick else 1024)
        try:
            r: dict[str, Any] = {}
            r["exec_latency_ms"] = bench.timed_ms("comphash", str(bench.small), runs=10 if quick else 30)
            r["parallel_exec_per_s"] = bench.parallel_per_s(40 if quick else 160)
            r["mux_exec_per_s"] = asyncio.run(bench.mux_per_s(100 if quick else 400))
            r["lastlog_ms"] = bench.timed_ms("lastlog", runs=5 if quick else 15)
            r["lastlog_minus_exec_ms"] = round(r["lastlog_ms"] - r["exec_latency_ms"], 2)
            started = time.perf_counter()
            bench.ssh("comphash", str(bench.big))
            r["comphash_mib_per_s"] = round(bench.big_mib / (time.perf_counter() - started), 1)
            r["hashlib_mib_per_s"] = hashlib_mib_per_s(bench.big, bench.big_mib)
            r["comphash_vs_hashlib"] = round(r["comphash_mib_per_s"] / r["hashlib_mib_per_s"], 2)
            r["responsive_ms_under_two_hashes"] = asyncio.run(bench.responsive_ms())
            levels = (10, 100) if quick else (10, 100, 1000)
            r["scaling"] = asyncio.run(scaling(bench, levels, 40 if quick else 160))
            bench.stop()
            bench.start(bench.bulk)  # a log of 10000 lines of 10 kB: `lastlog -n 10000` is 100 MB
            before = rss_kib(bench.proc.pid)
            started = time.perf_counter()
            out = bench.ssh("lastlog", "-n", "10000").stdout
            r["bulk_lastlog_mb"] = round(len(out) / 1e6, 1)
            r["bulk_mb_per_s"] = round(len(out) / 1e6 / (time.perf_counter() - started), 1)
            r["bulk_rss_growth_mib"] = round((rss_kib(bench.proc.pid) - before) / 1024, 1)
        finally:
            bench.stop()
    print(json.dumps(r, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
