#!/usr/bin/env python3
"""Server CPU per fresh `ssh host comphash SMALL`, and a profile of where it goes.

Two modes, both against real `conchcmd serve` processes on 127.0.0.1 and the real OpenSSH client:

  profile  (default) one server under cProfile, switched on only around N fresh execs (after a
           warm-up): prints the server CPU per exec and the top entries by tottime and cumulative.
               python tests/bench/profile_exec.py [--execs 200] [--top 30]
  compare  one unprofiled server per source tree, run side by side and interleaved (rounds of
           --execs execs, each tree in turn), so that a shared, noisy machine affects all alike:
               python tests/bench/profile_exec.py --compare BEFORE_TREE AFTER_TREE [--rounds 6]
  instructions  --compare with --instructions: each server under valgrind's callgrind, counting the
           user-space instructions it executes per exec (all threads). Repeatable to ~1% whatever else
           the machine runs, so small changes show; the kernel's share (sends, wake-ups) is not counted.
               python tests/bench/profile_exec.py --instructions --compare TREE... [--asyncssh SCRIPT] [--phases]

Server CPU is what ../shared/bench/run.py's m_exec_latency measures: utime+stime of the server
process (all its threads) from /proc/PID/stat across the execs, divided by their number; the
`ssh` client's own CPU (the floor) is this script's children's CPU. Not part of the pytest run.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
sys.path.insert(0, str(HERE.parents[1]))  # tests/, for support
from support.serverfiles import toml_text  # noqa: E402

LISTENING = re.compile(rb"\(127\.0\.0\.1:(\d+)\)")


def cpu_s(pid: int) -> float:
    """utime+stime (and reaped children) of pid, all threads, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def run_ns(pid: int) -> int:
    """CPU time on a core of pid's live threads, in ns (/proc/PID/task/*/schedstat): the same time
    as utime+stime without its 10 ms ticks, for short rounds."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):  # a thread that has just ended
            total += int((task / "schedstat").read_text().split()[0])
    return total


def children_cpu_s() -> float:
    t = os.times()
    return t.children_user + t.children_system


class Fixture:
    """A client key, a 4 KiB file to hash, and a log for lastlog, in a directory strict_modes trusts."""

    def __init__(self, root: Path):
        self.root = root
        self.key = root / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        self.small = root / "small.bin"
        self.small.write_bytes(os.urandom(4096))
        self.log = root / "syslog"
        self.log.write_bytes(b"Nov 26 15:02:03 lab CRON[4945]: (root) CMD (true)\n" * 100)


class Server:
    """`python -m conchcmd serve` from `tree` (PYTHONPATH), optionally under this script's
    profiling wrapper; its own directory, host key and audit log, as ../shared/bench/run.py sets up."""

    def __init__(
        self,
        fx: Fixture,
        tree: Path,
        name: str,
        profile_to: Path | None = None,
        launcher: list[str] | None = None,
        wrap: list[str] | None = None,
    ):
        self.fx, self.tree, self.name = fx, tree, name
        self.latency_ms = 0.0  # of the last execs()
        d = fx.root / name
        users = d / "keys" / "authorized_keys"
        users.mkdir(parents=True)
        (users / "bench").write_text(fx.key.with_suffix(".pub").read_text())
        (users / "bench").chmod(0o600)
        config = d / "conchcmd.toml"
        settings = {
            "listen": ["tcp:0:interface=127.0.0.1"],
            "host_keys_dir": "keys",
            "authorized_keys": "keys/authorized_keys/%u",
            "audit_log": "audit.jsonl",
            "max_clients": 10000,
            "max_sessions": 100,
            "max_startups": 1000,
            "lastlog": {"path": str(fx.log), "lines": 10},
            "comphash": {"roots": [str(fx.root)]},
        }
        config.write_text(toml_text(settings))
        if launcher is not None:  # another bench's wrapper around serve (tests/bench/gc_exec.py)
            argv = [*launcher, "--config", str(config)]
        elif profile_to is None:
            argv = [sys.executable, "-m", "conchcmd", "serve", "--config", str(config)]
        else:
            argv = [sys.executable, str(HERE), "--serve-profiled", str(profile_to), "--config", str(config)]
        argv = [*(wrap or []), *argv]
        self.log = d / "server.log"
        self.out = self.log.open("wb")
        env = dict(os.environ, PYTHONPATH=str(tree))
        self.proc = subprocess.Popen(argv, stdout=self.out, stderr=subprocess.STDOUT, cwd=d, env=env)
        deadline = time.time() + 30
        while time.time() < deadline:
            m = LISTENING.search(self.log.read_bytes())
            if m:
                self.port = int(m.group(1))
                break
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        else:
            raise SystemExit(self.log.read_text())
        if self.proc.poll() is not None:
            raise SystemExit(self.log.read_text())

    def __str__(self) -> str:
        return str(self.tree)

    def ssh(self) -> None:
        argv = ["ssh", "-F", "/dev/null", "-q", "-p", str(self.port), "-i", str(self.fx.key),
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "IdentitiesOnly=yes", "bench@127.0.0.1", "comphash", str(self.fx.small)]  # fmt: skip
        out = subprocess.run(argv, capture_output=True, check=True, timeout=60).stdout
        assert len(out.split()[0]) == 64, out

    def execs(self, n: int) -> tuple[float, float, float]:
        """Run n fresh execs; returns ms per exec: server CPU (utime+stime), server CPU (schedstat),
        client CPU."""
        server0, ns0, client0 = cpu_s(self.proc.pid), run_ns(self.proc.pid), children_cpu_s()
        walls = []
        for _ in range(n):
            started = time.perf_counter()
            self.ssh()
            walls.append((time.perf_counter() - started) * 1000)
        server1, ns1, client1 = cpu_s(self.proc.pid), run_ns(self.proc.pid), children_cpu_s()
        self.latency_ms = statistics.median(walls)  # the fresh exec's latency, as run.py times it
        return (server1 - server0) * 1000 / n, (ns1 - ns0) / 1e6 / n, (client1 - client0) * 1000 / n

    def switched_execs(self, n: int, output: Path) -> tuple[float, float, float]:
        """Warm up, then run n fresh execs with the server's recorder switched on (SIGUSR1) and off
        (SIGUSR2), and wait for it to write `output`; returns what execs() returns."""
        self.execs(10)  # warm-up: imports, first-use caches
        os.kill(self.proc.pid, signal.SIGUSR1)
        time.sleep(0.2)
        measured = self.execs(n)
        os.kill(self.proc.pid, signal.SIGUSR2)
        deadline = time.time() + 30
        while not output.exists() and time.time() < deadline:
            time.sleep(0.05)
        return measured

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        self.out.close()


class AsyncsshServer(Server):
    """The AsyncSSH anchor (tests/bench/anchors/asyncssh_server.py, or ../shared/bench/anchors/'s:
    PORT HOSTKEY AUTHORIZED_KEYS LOG), for the ratio the issue's target is stated in."""

    def __init__(self, fx: Fixture, script: Path, wrap: list[str] | None = None):
        self.fx, self.tree, self.name = fx, script, "asyncssh"
        d = fx.root / "asyncssh"
        d.mkdir()
        hostkey = d / "host_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hostkey)], check=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        argv = [sys.executable, str(script), str(self.port), str(hostkey), str(fx.key.with_suffix(".pub")), str(fx.log)]
        argv = [*(wrap or []), *argv]
        self.log = d / "server.log"
        self.out = self.log.open("wb")
        self.proc = subprocess.Popen(argv, stdout=self.out, stderr=subprocess.STDOUT, cwd=d)
        deadline = time.time() + 30
        # ../shared's anchor prints "ready"; tests/bench/anchors' prints "listening on PORT"
        while not any(word in self.log.read_bytes() for word in (b"ready", b"listening on")):
            if self.proc.poll() is not None or time.time() > deadline:
                self.proc.kill()  # not left running when it never said it was ready
                raise SystemExit(self.log.read_text())
            time.sleep(0.05)


def summary(stats_file: Path, top: int) -> str:
    """The top entries by own time and by cumulative time, paths shortened to the package."""
    text = io.StringIO()
    st = pstats.Stats(str(stats_file), stream=text)
    st.strip_dirs()
    for order in ("tottime", "cumulative"):
        text.write(f"--- top {top} by {order} ---\n")
        st.sort_stats(order).print_stats(top)
    lines = [line for line in text.getvalue().splitlines() if line.strip()]
    return "\n".join(line for line in lines if not line.lstrip().startswith(("Ordered by", "List reduced"))) + "\n"


def profile(fx: Fixture, tree: Path, execs: int, top: int, keep: Path | None) -> None:
    stats_file = keep.resolve() if keep else fx.root / "exec.prof"
    stats_file.unlink(missing_ok=True)
    server = Server(fx, tree, "profiled", profile_to=stats_file)
    try:
        per_exec, _, client = server.switched_execs(execs, stats_file)
    finally:
        server.stop()
    print(f"{execs} fresh execs of `ssh host comphash 4KiB` (tree {tree})")
    print(f"server CPU per exec under cProfile: {per_exec:.2f} ms; ssh client CPU per exec: {client:.2f} ms")
    stats = pstats.Stats(str(stats_file))
    calls = stats.total_calls  # type: ignore[attr-defined]
    print(f"reactor thread, per exec: {calls / execs:.0f} function calls (the figure a busy machine does not move)")
    print("(times below are wall-clock under cProfile: shares, not CPU figures; epoll.poll is the idle wait)")
    print(summary(stats_file, top))


def compare(fx: Fixture, trees: list[Path], execs: int, rounds: int, asyncssh: Path | None) -> None:
    servers: list[Server] = []
    ticks: dict[int, list[float]] = {}
    sched: dict[int, list[float]] = {}
    clients: list[float] = []
    latency: dict[int, list[float]] = {}
    floor: dict[int, list[float]] = {}
    try:  # the servers started so far are stopped whatever fails, a later one's start included
        for i, tree in enumerate(trees):
            servers.append(Server(fx, tree, f"tree{i}"))
        if asyncssh is not None:
            servers.append(AsyncsshServer(fx, asyncssh.resolve()))  # it runs in its own directory
        ticks.update({i: [] for i in range(len(servers))})
        sched.update({i: [] for i in range(len(servers))})
        latency.update({i: [] for i in range(len(servers))})
        floor.update({i: [] for i in range(len(servers))})
        for s in servers:
            s.execs(10)  # warm-up
        for r in range(rounds):
            order = list(range(len(servers))) if r % 2 == 0 else list(reversed(range(len(servers))))
            for i in order:
                by_ticks, by_sched, client_ms = servers[i].execs(execs)
                ticks[i].append(by_ticks)
                sched[i].append(by_sched)
                clients.append(client_ms)
                latency[i].append(servers[i].latency_ms)
                floor[i].append(servers[i].latency_ms / client_ms)
    finally:
        for s in servers:
            s.stop()
    print(f"server CPU ms per fresh exec, {rounds} interleaved rounds of {execs} execs; median (min-max)")
    print("  utime+stime (as ../shared/bench/run.py)   schedstat (ns)   server")
    for i, server in enumerate(servers):
        a, b = ticks[i], sched[i]
        print(
            f"  {statistics.median(a):5.2f} ({min(a):.2f}-{max(a):.2f})"
            f"                  {statistics.median(b):5.2f} ({min(b):.2f}-{max(b):.2f})   {server}"
        )
    print(f"  ssh client CPU per exec (the floor): median {statistics.median(clients):.2f}")
    print("fresh exec latency, ms: median of the rounds' medians; latency / that round's client CPU")
    for i, server in enumerate(servers):
        print(f"  {statistics.median(latency[i]):5.2f}   {statistics.median(floor[i]):.3f}   {server}")

    def paired(i: int, j: int) -> str:
        """Median over rounds of the per-round ratio: both measured minutes apart at most."""
        by_ticks = statistics.median(x / y for x, y in zip(ticks[i], ticks[j], strict=True))
        by_sched = statistics.median(x / y for x, y in zip(sched[i], sched[j], strict=True))
        by_latency = statistics.median(x / y for x, y in zip(latency[i], latency[j], strict=True))
        return f"{by_ticks:.2f} (utime+stime), {by_sched:.2f} (schedstat), latency {by_latency:.3f}"

    for i in range(1, len(trees)):
        print(f"  {trees[i]} / {trees[0]}: {paired(i, 0)}")
    if asyncssh is not None:
        for i, tree in enumerate(trees):
            print(f"  {tree} / asyncssh: {paired(i, len(trees))}")


def callgrind(out_dir: Path, name: str) -> list[str]:
    """valgrind's callgrind with counting off until switched on; dumps go to out_dir/name.out.N."""
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out_dir / name}.out"]


def counted(server: Server, n: int, out_dir: Path, step: Callable[[], object]) -> float:
    """Millions of instructions the server executes per step over n steps (callgrind_control
    switches counting on around them and dumps the total)."""
    pid = str(server.proc.pid)
    before = set(out_dir.glob(f"{server.name}.out.*"))
    for args in (["-z"], ["-i", "on"]):
        subprocess.run(["callgrind_control", *args, pid], check=True, capture_output=True)
    for _ in range(n):
        step()
    for args in (["-i", "off"], ["-d"]):
        subprocess.run(["callgrind_control", *args, pid], check=True, capture_output=True)
    (dump,) = set(out_dir.glob(f"{server.name}.out.*")) - before
    totals = re.search(r"^totals: (\d+)$", dump.read_text(), re.M)
    assert totals, dump
    return int(totals.group(1)) / n / 1e6


def phases(server: Server) -> list[tuple[str, Callable[[], object]]]:
    """Parts of a fresh exec on their own: a TCP connection that reads the server's greeting and
    closes, and ssh-keyscan (version exchange and key exchange, no authentication); each from its
    own 127.0.0.x source, so that no per-source limit meets the execs'."""

    def greeting() -> None:
        with socket.create_connection(("127.0.0.1", server.port), source_address=("127.0.0.3", 0)) as c:
            c.recv(100)

    def keyscan() -> None:
        argv = ["ssh-keyscan", "-t", "ed25519", "-p", str(server.port), "127.0.0.1"]
        assert b"ssh-ed25519" in subprocess.run(argv, capture_output=True, timeout=60).stdout

    return [("connect, greeting, close", greeting), ("ssh-keyscan: + key exchange", keyscan)]


def instructions(
    fx: Fixture, trees: list[Path], execs: int, rounds: int, asyncssh: Path | None, with_phases: bool
) -> None:
    out_dir = fx.root / "callgrind"
    out_dir.mkdir()
    servers: list[Server] = []
    counts: dict[int, list[float]] = {}
    parts: dict[str, list[float]] = {}  # phase: per server, in order
    try:
        for i, tree in enumerate(trees):
            servers.append(Server(fx, tree, f"tree{i}", wrap=callgrind(out_dir, f"tree{i}")))
        if asyncssh is not None:
            servers.append(AsyncsshServer(fx, asyncssh.resolve(), wrap=callgrind(out_dir, "asyncssh")))
        for s in servers:
            s.execs(10)  # warm-up, not counted: imports, first-use caches
        for i, s in enumerate(servers):
            counts[i] = [counted(s, execs, out_dir, s.ssh) for _ in range(rounds)]
            if with_phases:
                for name, step in phases(s):
                    step()  # its first use: imports, caches
                    parts.setdefault(name, []).append(counted(s, execs, out_dir, step))
    finally:
        for s in servers:
            s.stop()
    print(f"user-space instructions per fresh exec, millions (callgrind, {rounds} rounds of {execs}; median (min-max))")
    for i, server in enumerate(servers):
        c = counts[i]
        print(f"  {statistics.median(c):6.2f} ({min(c):.2f}-{max(c):.2f})   {server}")
    for name, per_server in parts.items():
        print(f"  {name}: " + ", ".join(f"{m:.2f}" for m in per_server) + " (servers in the order above)")
    base = statistics.median(counts[0])
    for i in range(1, len(servers)):
        print(f"  {servers[i]} / {servers[0]}: {statistics.median(counts[i]) / base:.3f}")
    if asyncssh is not None:
        anchor = statistics.median(counts[len(servers) - 1])
        for i, tree in enumerate(trees):
            print(f"  {tree} / asyncssh: {statistics.median(counts[i]) / anchor:.3f}")


def serve_profiled(stats_file: str, config: str) -> None:
    """The server side of `profile`: conchcmd serve, with cProfile on between SIGUSR1 and SIGUSR2."""
    from conchcmd.edge import cli

    # The default (wall-clock) timer: a CPU-time timer is a system call per event and distorts the
    # profile more than a busy machine does (preemption lands in functions in proportion to their time).
    profiler = cProfile.Profile()

    def on(*_: object) -> None:
        profiler.enable()

    def off(*_: object) -> None:
        profiler.disable()
        profiler.dump_stats(stats_file)

    signal.signal(signal.SIGUSR1, on)
    signal.signal(signal.SIGUSR2, off)
    sys.exit(cli.main(["serve", "--config", config]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--execs", type=int, default=200)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--tree", type=Path, default=REPO, help="the source tree to profile (default: this one)")
    ap.add_argument("--keep", type=Path, help="also write the raw cProfile stats here (for pstats/snakeviz)")
    ap.add_argument("--compare", type=Path, nargs="+", metavar="TREE")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--asyncssh", type=Path, metavar="SCRIPT", help="also run this AsyncSSH server in the comparison")
    ap.add_argument("--instructions", action="store_true", help="with --compare: count instructions under callgrind")
    ap.add_argument("--phases", action="store_true", help="with --instructions: also a greeting alone and ssh-keyscan")
    ap.add_argument("--serve-profiled", metavar="STATS", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_profiled:
        serve_profiled(args.serve_profiled, args.config)
        return
    # Only here: the profiled server (above) must import conchcmd from its own PYTHONPATH tree.
    sys.path[:0] = [str(HERE.parents[1]), str(REPO)]  # tests/, for support; the repository
    from support.tempdirs import trusted_temp_parent

    with tempfile.TemporaryDirectory(prefix="conchcmd-profile-", dir=trusted_temp_parent()) as tmp:
        fx = Fixture(Path(tmp))
        if args.compare and args.instructions:
            compared = [t.resolve() for t in args.compare]
            instructions(fx, compared, args.execs, args.rounds, args.asyncssh, args.phases)
        elif args.compare:
            compare(fx, [t.resolve() for t in args.compare], args.execs, args.rounds, args.asyncssh)
        else:
            profile(fx, args.tree.resolve(), args.execs, args.top, args.keep)


if __name__ == "__main__":
    main()
