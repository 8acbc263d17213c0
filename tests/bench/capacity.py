#!/usr/bin/env python3
"""Capacity at scale (issue 14): what N idle authenticated sessions cost the server.

Starts `python -m conchcmd serve` on 127.0.0.1 with the admission limits raised for the run
(`max_clients`, `max_clients_per_user`, `max_startups`, `max_startups_per_source`), then:

  1. the fresh-exec rate with 8 parallel OpenSSH clients (`comphash` of a small file, a new
     connection each) and the server's CPU per exec, with no session open;
  2. opens idle authenticated sessions with asyncssh (one shell session each, no pty), spread
     over several client processes, each on its own 127.0.0.x source address, up to each level
     of `--sessions` in turn;
  3. at each level: the server's PSS per session ((PSS now - PSS before) / sessions), the same
     fresh-exec rate and CPU per exec with the sessions open, and that the last session opened
     still answers (`comphash` through its shell);
  4. once every session is closed, the idle figures again (the 2 cores are shared: the two idle
     figures bracket the machine's drift during the run).

`--tracemalloc FRAMES` runs the server under tracemalloc (slow: the figures are then not
comparable) and prints the allocation sites that grew per session, after a gc.collect(), with
the sessions open and again once they are closed (what is left then would be a leak).

File descriptors: the server holds one per session, each client process one per session it
opens, so the soft RLIMIT_NOFILE is raised to the hard limit here, and the server and the
clients inherit it; the run needs a hard limit above the largest level plus about 100 (the
script says so and stops if it is lower).

Not part of the pytest run:
    python tests/bench/capacity.py --sessions 1000 10000 [--clients 2] [--execs 120] [--rounds 3]
        [--tracemalloc FRAMES] [--json OUT]
(needs asyncssh: `pip install -e '.[bench]'`). With 1,000 and 10,000 sessions the run takes 70 s
on an idle 2-core VM, over 2 minutes on a busy one.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for support
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for conchcmd
from support.serverfiles import ServerFiles, hermetic_ssh, wait_for
from support.sshbench import run_parallel
from support.tempdirs import trusted_temp_parent

LISTENING = re.compile(rb"conchcmd: listening on .* \(127\.0\.0\.1:(\d+)\)")
USER = "bench"
EXEC_SOURCE = "127.0.0.2"  # the OpenSSH clients' source; the idle sessions' are 127.0.0.10 + i
FDS_SPARE = 100  # descriptors besides the sessions': listening socket, logs, exec clients, Python
#: `--tracemalloc`: the server runs under tracemalloc and dumps a snapshot on SIGUSR1.
TRACED_SERVER = """
import gc, os, runpy, signal, sys, time, tracemalloc
tracemalloc.start(int(os.environ["CAPACITY_TRACE_FRAMES"]))
def dump(_signum, _frame):
    path = os.environ["CAPACITY_SNAPSHOT"]
    tracked, started = len(gc.get_objects()), time.perf_counter()
    found = gc.collect()
    took = (time.perf_counter() - started) * 1000
    with open(path + ".gc", "w") as f:
        f.write(f"gc.collect(): {found} unreachable of {tracked} tracked objects, {took:.0f} ms (traced)")
    tracemalloc.take_snapshot().dump(path + ".tmp")
    os.replace(path + ".tmp", path)
signal.signal(signal.SIGUSR1, dump)
sys.argv = ["conchcmd", *sys.argv[1:]]
runpy.run_module("conchcmd", run_name="__main__", alter_sys=True)
"""


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raise_fd_limit(needed: int) -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (inherited by the server and the clients)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(
            f"RLIMIT_NOFILE hard limit {hard} < {needed} needed: raise it (ulimit -Hn, LimitNOFILE=) and run again"
        )
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


@dataclass
class Server(ServerFiles):
    """`conchcmd serve` with admission raised so that `capacity` clients of one user get in."""

    base: Path
    capacity: int
    key: Path
    small: Path
    trace_frames: int = 0  # > 0: run under tracemalloc with this many frames (see `snapshot`)
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    returncode: int | None = None
    _log_file: Any = field(default=None, repr=False)

    def start(self) -> None:
        users = self.base / "keys" / "authorized_keys"
        users.mkdir(parents=True, exist_ok=True)
        (users / USER).write_text(self.key.with_name(self.key.name + ".pub").read_text())
        (users / USER).chmod(0o600)
        log = self.base / "syslog"
        log.write_bytes(b"Nov 26 15:02:03 lab CRON[4945]: (root) CMD (true)\n" * 100)
        self.write_settings(
            {
                "listen": ["tcp:0:interface=127.0.0.1"],
                "host_keys_dir": "keys",
                "authorized_keys": "keys/authorized_keys/%u",
                "audit_log": "audit.jsonl",
                "max_clients": self.capacity,
                "max_clients_per_user": self.capacity,
                "max_startups": 1000,
                "max_startups_per_source": 1000,
                "lastlog": {"path": str(log)},
                "comphash": {"roots": [str(self.base)]},
            }
        )
        if self.trace_frames:
            env = {"CAPACITY_TRACE_FRAMES": str(self.trace_frames), "CAPACITY_SNAPSHOT": str(self.snapshot_path)}
            self.spawn([sys.executable, "-c", TRACED_SERVER, "serve", "--config", str(self.config)], env)
        else:
            self.spawn()
        self.port = self.wait_listening(LISTENING, 30.0)

    @property
    def snapshot_path(self) -> Path:
        return self.base / "tracemalloc.snapshot"

    def snapshot(self) -> tracemalloc.Snapshot:
        """The traced server's allocations now (it dumps them on SIGUSR1)."""
        self.snapshot_path.unlink(missing_ok=True)
        assert self.proc is not None
        self.proc.send_signal(signal.SIGUSR1)
        wait_for(self.snapshot_path.exists, 120.0, "the tracemalloc snapshot")
        print(Path(f"{self.snapshot_path}.gc").read_text(), flush=True)
        return tracemalloc.Snapshot.load(str(self.snapshot_path))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def all_connections_lost(self) -> bool:
        """Every connection the server logged as made it has also logged as lost."""
        text = self.log_text()
        return text.count("Client connection from") == text.count("Lost client connection")

    def exec_argv(self) -> list[str]:
        return hermetic_ssh(self.port, self.key, USER, EXEC_SOURCE, remote=f"comphash {self.small}", options=["-q"])


def fresh_execs(server: Server, count: int, parallel: int = 8) -> dict[str, float]:
    """`count` fresh execs, `parallel` OpenSSH clients at a time: completed per second, and the
    server's CPU per exec."""
    cpu0 = cpu_seconds(server.pid)
    done, took = run_parallel(server.exec_argv(), count, parallel)
    failed = count - done
    if failed:
        raise SystemExit(f"{failed} of {count} fresh execs failed:\n{server.log_text()[-3000:]}")
    return {
        "execs_per_s": round(done / took, 1),
        "server_cpu_ms_per_exec": round((cpu_seconds(server.pid) - cpu0) * 1000 / count, 2),
    }


def exec_rate(server: Server, count: int, rounds: int) -> dict[str, Any]:
    """The median of `rounds` rounds of `fresh_execs` (the machine is shared: one round is noisy)."""
    results = [fresh_execs(server, count) for _ in range(rounds)]
    rates = [r["execs_per_s"] for r in results]
    return {
        "execs_per_s": statistics.median(rates),
        "execs_per_s_rounds": rates,
        "server_cpu_ms_per_exec": statistics.median(r["server_cpu_ms_per_exec"] for r in results),
    }


# -- the client processes that hold the idle sessions -------------------------------------------


async def worker(port: int, key: str, source: str, concurrency: int) -> None:
    """Holds sessions for the main process. Commands on stdin, one per line, each answered on
    stdout: `open N` (open N more sessions: `opened TOTAL SECONDS`), `check PATH` (comphash PATH
    through the last session's shell: `answered LINE`); EOF closes every session and exits."""
    import asyncssh

    conns: list[Any] = []
    procs: list[Any] = []
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def one(gate: asyncio.Semaphore) -> None:
        async with gate:
            conn = await asyncssh.connect(
                "127.0.0.1",
                port,
                username=USER,
                client_keys=[key],
                known_hosts=None,
                agent_path=None,
                local_addr=(source, 0),
                connect_timeout=120,
            )
            conns.append(conn)
            procs.append(await conn.create_process(term_type=None))

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    while line := (await reader.readline()).decode():
        command, _, arg = line.strip().partition(" ")
        if command == "open":
            started = time.perf_counter()
            gate = asyncio.Semaphore(concurrency)
            await asyncio.gather(*(one(gate) for _ in range(int(arg))))
            say(f"opened {len(procs)} {time.perf_counter() - started:.2f}")
        elif command == "check":
            proc = procs[-1]
            proc.stdin.write(f"comphash {arg}\n")
            out = await asyncio.wait_for(proc.stdout.readuntil(arg), 60)
            say("answered " + out.strip().splitlines()[-1])
    for conn in conns:
        conn.close()
    await asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True)


class Clients:
    """`count` worker processes (this script with --worker), each on its own source address."""

    def __init__(self, server: Server, count: int, concurrency: int):
        self.procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    f"--port={server.port}",
                    f"--key={server.key}",
                    f"--source=127.0.0.{10 + i}",
                    f"--concurrency={concurrency}",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                bufsize=1,
            )
            for i in range(count)
        ]
        self.held = 0

    def _ask(self, proc: subprocess.Popen[str], line: str) -> str:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
        return proc.stdout.readline()

    def open_to(self, total: int) -> float:
        """Open sessions until `total` are held (shared out over the workers, in parallel);
        returns the seconds it took."""
        more = total - self.held
        shares = [more // len(self.procs) + (i < more % len(self.procs)) for i in range(len(self.procs))]
        started = time.perf_counter()
        for proc, share in zip(self.procs, shares, strict=True):
            assert proc.stdin is not None
            proc.stdin.write(f"open {share}\n")
            proc.stdin.flush()
        for proc in self.procs:
            assert proc.stdout is not None
            answer = proc.stdout.readline()
            if not answer.startswith("opened "):
                raise SystemExit(f"a client process failed to open its sessions: {answer!r}")
        self.held = total
        return time.perf_counter() - started

    def last_answers(self, path: Path) -> str:
        """What the last session opened (of the last worker) says to `comphash PATH`."""
        answer = self._ask(self.procs[-1], f"check {path}")
        if not answer.startswith("answered "):
            raise SystemExit(f"the last session did not answer: {answer!r}")
        return answer.removeprefix("answered ").strip()

    def close(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()


def traced_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, sessions: int, top: int) -> list[str]:
    """The allocation sites that grew most between the snapshots, per session."""
    diffs = after.compare_to(before, "traceback" if len(after.traces) and after.traceback_limit > 1 else "lineno")
    total = sum(d.size_diff for d in diffs)
    lines = [f"traced growth: {total / sessions / 1024:.2f} KiB per session (Python allocations only)"]
    for d in diffs[:top]:
        frames = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in list(reversed(d.traceback))[:5])
        lines.append(f"{d.size_diff / sessions:9.1f} B/session {d.count_diff / sessions:6.2f} blocks/session  {frames}")
    return lines


def run(
    levels: list[int], clients: int, concurrency: int, execs: int, rounds: int, trace_frames: int = 0
) -> dict[str, Any]:
    hard = raise_fd_limit(max(levels) + FDS_SPARE)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="conchcmd-capacity-", dir=trusted_temp_parent()) as tmp:
        base = Path(tmp)
        key = base / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        small = base / "small.bin"
        small.write_bytes(os.urandom(4096))
        digest = hashlib.sha256(small.read_bytes()).hexdigest()
        server = Server(base=base, capacity=max(levels) + FDS_SPARE, key=key, small=small, trace_frames=trace_frames)
        server.start()
        out: dict[str, Any] = {"fd_limit": hard, "client_processes": clients, "levels": []}
        pool: Clients | None = None
        try:
            fresh_execs(server, 16)  # warm up: the first connections import and build what stays
            idle = exec_rate(server, execs, rounds)
            time.sleep(1.0)
            base_pss = pss_kib(server.pid)
            before = server.snapshot() if trace_frames else None
            out["idle"] = {"pss_mib": round(base_pss / 1024, 1), **idle}
            print("0 sessions:", json.dumps(out["idle"]), flush=True)
            pool = Clients(server, clients, concurrency)
            for level in levels:
                opened_in = pool.open_to(level)
                time.sleep(2.0)  # let the server settle (freed handshake state, audit writes)
                pss = pss_kib(server.pid)
                if before is not None:
                    for line in traced_growth(before, server.snapshot(), level, 30):
                        print(line, flush=True)
                answer = pool.last_answers(small)
                if digest not in answer:
                    raise SystemExit(f"the last session answered {answer!r}, expected {digest}")
                rate = exec_rate(server, execs, rounds)
                row = {
                    "sessions": level,
                    "open_s": round(opened_in, 1),
                    "pss_mib": round(pss / 1024, 1),
                    "kib_per_session": round((pss - base_pss) / level, 2),
                    **rate,
                    "rate_vs_idle": round(rate["execs_per_s"] / idle["execs_per_s"], 3),
                    "last_session_answered": True,
                }
                out["levels"].append(row)
                print(f"{level} sessions:", json.dumps(row), flush=True)
            pool.close()
            pool = None
            # The idle server again, after the sessions have gone: brackets the machine's drift
            # (the 2 cores are shared) between the first idle figure and this one.
            wait_for(server.all_connections_lost, 120.0, "the server to see every session close")
            if before is not None:
                time.sleep(2.0)
                print("after the sessions closed:", flush=True)
                for line in traced_growth(before, server.snapshot(), max(levels), 30):
                    print(line, flush=True)
            again = exec_rate(server, execs, rounds)
            out["idle_after"] = {"pss_mib": round(pss_kib(server.pid) / 1024, 1), **again}
            print("0 sessions again:", json.dumps(out["idle_after"]), flush=True)
            text = server.log_text()
            out["connections_logged"] = {
                "made": text.count("Client connection from"),
                "lost": text.count("Lost client connection"),
            }
            print("connections logged:", json.dumps(out["connections_logged"]), flush=True)
        finally:
            if pool is not None:
                pool.close()
            server.stop()
        out["run_s"] = round(time.perf_counter() - began, 1)
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, nargs="+", default=[1000], help="levels of idle sessions, ascending")
    ap.add_argument("--clients", type=int, default=2, help="client processes holding the sessions")
    ap.add_argument("--concurrency", type=int, default=32, help="handshakes in flight per client process")
    ap.add_argument("--execs", type=int, default=120, help="fresh execs per round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per exec-rate figure (median)")
    ap.add_argument(
        "--tracemalloc",
        type=int,
        default=0,
        metavar="FRAMES",
        help="run the server under tracemalloc and print what grew per session (slow)",
    )
    ap.add_argument("--json")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--key", help=argparse.SUPPRESS)
    ap.add_argument("--source", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        asyncio.run(worker(args.port, args.key, args.source, args.concurrency))
        return
    if args.sessions != sorted(args.sessions):
        ap.error("--sessions levels must be ascending")
    result = run(args.sessions, args.clients, args.concurrency, args.execs, args.rounds, args.tracemalloc)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
