#!/usr/bin/env python3
"""Probe of the multiplexed-exec path: many `comphash SMALL` execs over ONE asyncssh connection.

Measures what ../shared/bench/run.py's `_mux` measures (n execs, `concurrency` at a time, the rate
of each round), interleaved round by round between several servers started side by side, so that
a before/after comparison on a shared machine sees the same noise. For every exec it records when
each phase ended, as the client sees it:

  open     CHANNEL_OPEN sent -> exec request answered (channel open and exec reply)
  output   -> the first stdout byte
  status   -> exit-status
  closed   -> the channel closed (the server's CLOSE answered)

and prints, per server, the rounds' rates (median, spread) and the per-exec latency percentiles
of each phase, so that a stall shows as the phase whose tail grows.

Servers: `--server NAME=TREE` runs `python -m conchcmd serve` with TREE on PYTHONPATH (a worktree
or an exported commit, for before/after), `--server NAME=asyncssh` runs the anchor in
../shared/bench/anchors if present. Not part of the pytest run:

  python tests/bench/mux_probe.py --server before=/tmp/base --server after=. --rounds 8
  python tests/bench/mux_probe.py --server after=. --responsive   # a small exec under two big hashes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for support
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for conchcmd
from support.serverfiles import toml_text
from support.tempdirs import trusted_temp_parent

ANCHOR = Path(__file__).resolve().parents[3] / "shared" / "bench" / "anchors" / "asyncssh_server.py"
LOG_LINE = b"Nov 26 15:02:03 lab CRON[4945]: (root) CMD (command -v debian-sa1 > /dev/null && debian-sa1 1 1)\n"
PHASES = ("open", "output", "status", "closed")
PROFILED = """
import cProfile, sys, time
from conchcmd.edge.cli import run
p = cProfile.Profile(time.thread_time)
sys.argv[0] = "conchcmd"
try:
    p.runcall(run)
except SystemExit:
    pass
finally:
    p.dump_stats({out!r})
"""


class Fixture:
    """Client key, the files the commands read, one directory per server."""

    def __init__(self, root: Path, big_mib: int):
        self.root = root
        self.key = root / "id_ed25519"
        self.hostkey = root / "ssh_host_ed25519_key"
        for k in (self.key, self.hostkey):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(k)], check=True)
        self.pub = self.key.with_suffix(".pub").read_text()
        (root / "authorized_keys").write_text(self.pub)
        self.small = root / "small.bin"
        self.small.write_bytes(os.urandom(4096))
        self.log = root / "syslog"
        self.log.write_bytes(LOG_LINE * 20000)
        self.big = root / "big.bin"
        if big_mib:
            block = os.urandom(1 << 20)
            with self.big.open("wb") as f:
                for _ in range(big_mib):
                    f.write(block)


class Server:
    """One server on 127.0.0.1: a conchcmd tree, or the AsyncSSH anchor."""

    def __init__(self, name: str, spec: str, fx: Fixture, comphash_extra: dict[str, Any] | None = None):
        self.name = name
        d = fx.root / name
        d.mkdir()
        self.out_path = d / "server.log"
        self.out = self.out_path.open("wb")
        env = dict(os.environ)
        if spec == "asyncssh":
            import socket

            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
            s.close()
            argv = [
                sys.executable,
                str(ANCHOR),
                str(self.port),
                str(fx.hostkey),
                str(fx.root / "authorized_keys"),
                str(fx.log),
            ]
        else:
            keys = d / "keys" / "authorized_keys"
            keys.mkdir(parents=True)
            (keys / "bench").write_text(fx.pub)
            (keys / "bench").chmod(0o600)
            config = d / "conchcmd.toml"
            settings = {
                "listen": ["tcp:0:interface=127.0.0.1"],
                "host_keys_dir": str(d / "keys"),
                "audit_log": str(d / "audit.jsonl"),
                "max_clients": 5000,
                "max_startups": 500,
                "max_startups_per_source": 100,
                "max_sessions": 100,
                "lastlog": {"path": str(fx.log), "lines": 10},
                "comphash": {"roots": [str(fx.root)], **(comphash_extra or {})},
            }
            config.write_text(toml_text(settings))
            env["PYTHONPATH"] = str(Path(spec).resolve())
            argv = [sys.executable, "-m", "conchcmd", "serve", "--config", str(config)]
            profile = os.environ.get("MUX_PROBE_PROFILE")  # a directory: the reactor thread under cProfile
            if profile:  # CPU time of the reactor thread (thread_time: waits for the GIL are not counted)
                out = Path(profile, f"{name}.prof")
                argv[1:3] = ["-c", PROFILED.format(out=str(out))]
        self.proc = subprocess.Popen(argv, stdout=self.out, stderr=subprocess.STDOUT, cwd=d, env=env)
        deadline = time.time() + 60
        while time.time() < deadline:
            text = self.out_path.read_bytes()
            if spec == "asyncssh" and b"ready" in text:
                return
            m = re.search(rb"\(127\.0\.0\.1:(\d+)\)", text)
            if spec != "asyncssh" and m:
                self.port = int(m.group(1))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise SystemExit(f"{name} did not start: {self.out_path.read_text()[-2000:]}")

    def cpu_s(self) -> float:
        """CPU seconds the server process has used (all its threads)."""
        f = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

    def threads(self) -> dict[int, tuple[str, int, int, int]]:
        """Per thread of the server: (name, ns on CPU, ns waiting for a CPU, voluntary sleeps)."""
        out = {}
        for tid in os.listdir(f"/proc/{self.proc.pid}/task"):
            try:
                base = f"/proc/{self.proc.pid}/task/{tid}"
                name = Path(f"{base}/comm").read_text().strip()
                on_cpu, waiting, _ = Path(f"{base}/schedstat").read_text().split()
                status = Path(f"{base}/status").read_text()
                vol = int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
                out[int(tid)] = (name, int(on_cpu), int(waiting), vol)
            except (OSError, ValueError):
                pass
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.out.close()


@dataclass
class Exec:
    """The client's timestamps of one exec (perf_counter seconds)."""

    start: float
    marks: dict[str, float] = field(default_factory=dict)

    def phases_ms(self) -> dict[str, float]:
        out, last = {}, self.start
        for p in PHASES:
            t = self.marks.get(p, last)
            out[p] = (t - last) * 1000
            last = t
        out["total"] = (last - self.start) * 1000
        return out


def make_session_class() -> Any:
    import asyncssh

    class Timed(asyncssh.SSHClientSession):  # type: ignore[misc]
        def __init__(self, rec: Exec, done: asyncio.Future[None]):
            self.rec, self.done, self.data = rec, done, b""

        def data_received(self, data: Any, datatype: Any) -> None:
            self.rec.marks.setdefault("output", time.perf_counter())
            self.data += data if isinstance(data, bytes) else data.encode()

        def exit_status_received(self, status: int) -> None:
            self.rec.marks["status"] = time.perf_counter()
            self.status = status

        def connection_lost(self, exc: Exception | None) -> None:
            self.rec.marks["closed"] = time.perf_counter()
            if not self.done.done():
                self.done.set_result(None)

    return Timed


async def connect(fx: Fixture, port: int) -> Any:
    import asyncssh

    return await asyncssh.connect(
        "127.0.0.1", port, username="bench", client_keys=[str(fx.key)], known_hosts=None, encoding=None
    )


async def mux_round(conn: Any, command: str, n: int, concurrency: int, timed: Any) -> tuple[float, list[Exec]]:
    gate = asyncio.Semaphore(concurrency)
    recs: list[Exec] = []

    async def one() -> None:
        async with gate:
            rec = Exec(time.perf_counter())
            recs.append(rec)
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            _chan, session = await conn.create_session(lambda: timed(rec, done), command)
            rec.marks["open"] = time.perf_counter()
            await done
            assert session.status == 0 and len(session.data.split()[0]) == 64, session.data

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return n / (time.perf_counter() - started), recs


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def summarise(rates: list[float], recs: list[Exec]) -> dict[str, Any]:
    phases = [r.phases_ms() for r in recs]
    out: dict[str, Any] = {
        "rates": [round(r) for r in rates],
        "median_per_s": round(statistics.median(rates)),
        "spread": [round(min(rates)), round(max(rates))],
    }
    for p in (*PHASES, "total"):
        vs = [x[p] for x in phases]
        out[p] = {q: round(pct(vs, v), 2) for q, v in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))}
    return out


async def run_mux(fx: Fixture, servers: list[Server], args: argparse.Namespace) -> dict[str, Any]:
    timed = make_session_class()
    command = f"comphash {fx.small}"
    conns = {s.name: await connect(fx, s.port) for s in servers}
    rates: dict[str, list[float]] = {s.name: [] for s in servers}
    cpu: dict[str, list[float]] = {s.name: [] for s in servers}
    client_cpu: dict[str, list[float]] = {s.name: [] for s in servers}
    #: per round, the reactor thread's and the worker threads' CPU and sleeps per exec (schedstat)
    schedstat: dict[str, list[dict[str, float]]] = {s.name: [] for s in servers}
    recs: dict[str, list[Exec]] = {s.name: [] for s in servers}
    try:
        for s in servers:  # one warm-up round each
            await mux_round(conns[s.name], command, args.n, args.concurrency, timed)
        for i in range(args.rounds):
            order = servers if i % 2 == 0 else list(reversed(servers))
            for s in order:
                cpu0, own0, th0, wall0 = s.cpu_s(), time.process_time(), s.threads(), time.perf_counter()
                rate, rs = await mux_round(conns[s.name], command, args.n, args.concurrency, timed)
                wall, th1 = time.perf_counter() - wall0, s.threads()
                main = s.proc.pid
                split = {"reactor": [0, 0, 0], "workers": [0, 0, 0]}
                for tid, (_name, on, wait, vol) in th1.items():
                    before = th0.get(tid, ("", 0, 0, 0))
                    part = split["reactor" if tid == main else "workers"]
                    part[0] += on - before[1]
                    part[1] += wait - before[2]
                    part[2] += vol - before[3]
                r, w = split["reactor"], split["workers"]
                row = {
                    "rate": round(rate),
                    "reactor_cpu_ms": round(r[0] / 1e6 / args.n, 3),  # per exec
                    "reactor_runq": round(r[1] / 1e9 / wall, 2),  # share of the wall time runnable, not running
                    "reactor_sleeps": round(r[2] / args.n, 1),  # per exec: epoll_wait or futex (GIL) waits
                    "reactor_idle": round(1 - (r[0] + r[1]) / 1e9 / wall, 2),  # share of the wall time asleep
                    "workers_cpu_ms": round(w[0] / 1e6 / args.n, 3),
                    "workers_runq": round(w[1] / 1e9 / wall, 2),  # summed over the worker threads
                    "workers_sleeps": round(w[2] / args.n, 1),
                }
                schedstat[s.name].append(row)
                if args.verbose:
                    print(s.name, row, flush=True)
                cpu[s.name].append((s.cpu_s() - cpu0) * 1000 / args.n)
                client_cpu[s.name].append((time.process_time() - own0) * 1000 / args.n)
                rates[s.name].append(rate)
                recs[s.name] += rs
            print(f"round {i}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in rates.items()), flush=True)
        if args.strace:  # one more round per server under `strace -c`: the syscalls of 200 execs
            for s in servers:
                out = Path(args.strace) / f"strace-{s.name}.txt"
                detail = os.environ.get("MUX_PROBE_STRACE_ARGS")  # e.g. "-tt -T": the reactor thread's timeline
                how = detail.split() if detail else ["-f", "-c"]
                tracer = subprocess.Popen(["strace", *how, "-o", str(out), "-p", str(s.proc.pid)])
                await asyncio.sleep(1.0)
                await mux_round(conns[s.name], command, args.n, args.concurrency, timed)
                tracer.send_signal(2)
                tracer.wait(30)
                print(f"{s.name}: strace -c of one round in {out}", flush=True)
    finally:
        for c in conns.values():
            c.close()
    result = {s.name: summarise(rates[s.name], recs[s.name]) for s in servers}
    for s in servers:  # server CPU per exec: a stall shows as a low rate at an unchanged CPU per exec
        result[s.name]["server_cpu_ms_per_exec"] = round(statistics.median(cpu[s.name]), 2)
        result[s.name]["client_cpu_ms_per_exec"] = round(statistics.median(client_cpu[s.name]), 2)
        for k in (
            "reactor_cpu_ms",
            "reactor_runq",
            "reactor_sleeps",
            "reactor_idle",
            "workers_cpu_ms",
            "workers_runq",
            "workers_sleeps",
        ):
            result[s.name][k] = round(statistics.median(row[k] for row in schedstat[s.name]), 3)
    return result


async def run_responsive(fx: Fixture, servers: list[Server], args: argparse.Namespace) -> dict[str, Any]:
    """run.py's `_responsive`: two `comphash BIG` on one connection, then 10 `lastlog` on it, their
    median ms; one round per server in turn, `--rounds` times."""
    medians: dict[str, list[float]] = {s.name: [] for s in servers}
    for i in range(args.rounds):
        for s in servers if i % 2 == 0 else list(reversed(servers)):
            async with await connect(fx, s.port) as conn:
                big = [asyncio.create_task(conn.run(f"comphash {fx.big}")) for _ in range(2)]
                await asyncio.sleep(0.3)
                ts = []
                for _ in range(10):
                    t = time.perf_counter()
                    await conn.run("lastlog", check=True)
                    ts.append((time.perf_counter() - t) * 1000)
                await asyncio.gather(*big)
                medians[s.name].append(statistics.median(ts))
                print(s.name, [round(t, 1) for t in ts], flush=True)
    return {
        name: {"medians_ms": [round(m, 2) for m in ms], "median_ms": round(statistics.median(ms), 2)}
        for name, ms in medians.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", action="append", required=True, help="NAME=TREE[,TOML LINE...] or NAME=asyncssh")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--responsive", action="store_true", help="a small exec under two big hashes instead")
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--strace", metavar="DIR", help="then one round per server under strace -c, written to DIR")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each round's thread figures")
    ap.add_argument("--logs", metavar="DIR", help="keep each server's output as DIR/NAME.log")
    ap.add_argument("--json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="conchcmd-mux-", dir=trusted_temp_parent()) as tmp:
        fx = Fixture(Path(tmp), args.big_mib if args.responsive else 0)
        servers: list[Server] = []
        try:
            for spec in args.server:
                name, _, where = spec.partition("=")
                tree, *lines = where.split(",")  # NAME=TREE,key = value,...: lines for its [comphash]
                servers.append(Server(name, tree, fx, tomllib.loads("".join(line + "\n" for line in lines))))
            run = run_responsive if args.responsive else run_mux
            result = asyncio.run(run(fx, servers, args))
        finally:
            for s in servers:
                s.stop()
                if args.logs:
                    Path(args.logs, f"{s.name}.log").write_bytes(s.out_path.read_bytes())
    for name, r in result.items():
        print(name, json.dumps(r))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
