"""What the benchmarks in tests/bench/ measure, the same way for any SSH server serving `lastlog`,
`comphash PATH` and `exit` on 127.0.0.1, and the three servers they measure, each started as a
context manager yielding a `Target`: conchcmd (`conchcmd_server`), OpenSSH's sshd with a
ForceCommand script (`openssh`) and an AsyncSSH server (`asyncssh_anchor`), the last two from
tests/bench/anchors/.

The methods follow the development team's side-by-side bench (`../shared/bench/run.py`), so that
figures from tests/bench/compare.py and tests/bench/figures.py cross-check against it: the real
OpenSSH client for fresh connections, asyncssh for one multiplexed connection and idle sessions.
Server CPU and memory count the server process with its descendants (sshd forks per connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.server import LISTENING
from support.serverfiles import REPO, ServerFiles, hermetic_ssh, wait_for
from support.sshd import Sshd

LOG_LINE = b"Nov 26 15:02:03 lab CRON[4945]: (root) CMD (command -v debian-sa1 > /dev/null && debian-sa1 1 1)\n"
SSH_TIMEOUT = 300.0
START_TIMEOUT = 60.0
USER = "bench"
ANCHORS = REPO / "tests" / "bench" / "anchors"
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


@dataclass(frozen=True)
class BenchFiles:
    """The client key and the files every server serves: a 4 KiB file to hash, a big one, a big log."""

    key: Path  # private key; KEY.pub is authorized on every server
    small: Path
    big: Path
    big_mib: int
    log: Path

    @property
    def public_line(self) -> str:
        return self.key.with_name(self.key.name + ".pub").read_text()


def make_files(root: Path, big_mib: int) -> BenchFiles:
    """Write the key and data files under `root` (as run.py's Fixture does: random data, a log of
    identical CRON lines, both `big_mib` MiB)."""
    key = root / "client_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30)
    small = root / "small.bin"
    small.write_bytes(os.urandom(4096))
    big = root / "big.bin"
    block = os.urandom(1 << 20)
    with big.open("wb") as f:
        for _ in range(big_mib):
            f.write(block)
    log = root / "syslog"
    chunk = LOG_LINE * 10000
    with log.open("wb") as f:
        for _ in range(big_mib * (1 << 20) // len(chunk)):
            f.write(chunk)
    for path in (small, big, log):
        path.chmod(0o644)
    return BenchFiles(key=key, small=small, big=big, big_mib=big_mib, log=log)


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(entry))
    return kids


def _tree(pid: int) -> list[int]:
    kids, todo, out = _children(), [pid], []
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of `pid` and its descendants, with the children they reaped (utime, stime,
    cutime, cstime): sshd's per-connection processes count once they end. In clock ticks (10 ms
    each, usually): a figure per exec is only as fine as 10 ms divided by the number of execs."""
    total = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def become_subreaper() -> None:
    """Make the calling process a child subreaper (kept across execve): its orphaned descendants
    are reparented to it, not to init, and their CPU joins its cutime when it reaps them. sshd's
    privileged connection process exits without reaping the user's session process; without this,
    that process's CPU (the session, the ForceCommand shell) would leave the server's tree uncounted.
    Meant for a child's preexec_fn."""
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def settled_cpu_s(pid: int, timeout: float = 10.0) -> float:
    """tree_cpu_s once `pid` has no child processes left (a server at rest has none): an sshd
    connection process that is still exiting, or not yet reaped, would take its CPU with it."""
    deadline = time.monotonic() + timeout
    while len(_tree(pid)) > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    return tree_cpu_s(pid)


def tree_pss_kib(pid: int) -> int:
    """Proportional set size of `pid` and its descendants."""
    total = 0
    for p in _tree(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def children_cpu_s() -> float:
    """CPU seconds of this process's reaped children (getrusage: finer than os.times' clock ticks)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def hashlib_rate(path: Path, mib: int) -> tuple[float, str]:
    """(MiB/s, hex digest) of SHA-256 over the file in this process: what comphash can approach."""
    buffer = bytearray(1 << 20)
    digest = hashlib.sha256()
    started = time.perf_counter()
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(memoryview(buffer)[:n])
    return round(mib / (time.perf_counter() - started), 1), digest.hexdigest()


@dataclass(frozen=True)
class Target:
    """One running server: where it listens, its process, and who may log in with which key."""

    name: str
    port: int
    pid: int  # CPU and memory are counted for this process and its descendants
    user: str
    key: Path

    def ssh_argv(self, remote: str) -> list[str]:
        return hermetic_ssh(self.port, self.key, self.user, "127.0.0.1", remote=remote)

    def ssh(self, remote: str, *, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            self.ssh_argv(remote), stdin=subprocess.DEVNULL, capture_output=True, timeout=SSH_TIMEOUT, check=check
        )

    async def connect(self) -> Any:
        import asyncssh

        return await asyncssh.connect(
            "127.0.0.1", self.port, username=self.user, client_keys=[str(self.key)], known_hosts=None
        )


def _check_digest(out: bytes, where: str) -> None:
    word = out.split()[0] if out.split() else b""
    if len(word) != 64:
        raise AssertionError(f"{where}: no SHA-256 in the output: {out[:200]!r}")


def exec_latency(t: Target, files: BenchFiles, runs: int) -> dict[str, float]:
    """Fresh `ssh host comphash SMALL` (new connection, kex, auth, exec): the median ms, the server's
    CPU per exec (its capacity per core) and the `ssh` client's own CPU per exec (the floor no
    server can go below; the clients are the only children this process reaps meanwhile)."""
    times = []
    cpu0, client0 = settled_cpu_s(t.pid), children_cpu_s()
    for _ in range(runs):
        started = time.perf_counter()
        out = t.ssh(f"comphash {files.small}").stdout
        times.append((time.perf_counter() - started) * 1000)
        _check_digest(out, "comphash small")
    client = children_cpu_s() - client0
    return {
        "exec_latency_ms": round(statistics.median(times), 1),
        "server_cpu_ms_per_exec": round((settled_cpu_s(t.pid) - cpu0) * 1000 / runs, 2),
        "client_cpu_ms_per_exec": round(client * 1000 / runs, 2),
    }


def run_parallel(argv: list[str], count: int, parallel: int = 8) -> tuple[int, float]:
    """Run `argv` (an `ssh` exec) `count` times, `parallel` at once, each a new connection: how many
    exited 0, and the seconds the whole took."""
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
        running.append(
            subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
    for p in running:
        done += p.wait(timeout=SSH_TIMEOUT) == 0
    return done, time.perf_counter() - started


def parallel_per_s(t: Target, files: BenchFiles, count: int, parallel: int = 8) -> float:
    """Completed execs per second with `parallel` OpenSSH clients at once, a new connection each."""
    done, took = run_parallel(t.ssh_argv(f"comphash {files.small}"), count, parallel)
    return round(done / took, 1)


async def _mux_rounds(t: Target, files: BenchFiles, count: int, concurrency: int, rounds: int) -> list[float]:
    async with await t.connect() as conn:
        gate = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with gate:
                r = await conn.run(f"comphash {files.small}", check=True)
                _check_digest(r.stdout.encode(), "multiplexed comphash")

        rates = []
        for _ in range(rounds):
            started = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(count)))
            rates.append(round(count / (time.perf_counter() - started), 1))
        return rates


def mux_per_s(t: Target, files: BenchFiles, count: int, concurrency: int = 16, rounds: int = 8) -> dict[str, Any]:
    """Exec channels per second on ONE asyncssh connection, `concurrency` at a time: the median of
    `rounds` rounds of `count` execs, with the spread (one round is too noisy to compare), and the
    server's CPU per exec over all rounds."""
    cpu0 = settled_cpu_s(t.pid)
    rates = asyncio.run(_mux_rounds(t, files, count, concurrency, rounds))
    cpu = settled_cpu_s(t.pid) - cpu0  # the connection's kex and auth too: one in `rounds * count` execs
    return {
        "mux_exec_per_s": statistics.median(rates),
        "mux_exec_spread": [min(rates), max(rates)],
        "mux_exec_rounds": rates,
        "server_cpu_ms_per_mux_exec": round(cpu * 1000 / (rounds * count), 3),
    }


def lastlog_ms(t: Target, runs: int) -> float:
    """Median ms of a fresh `ssh host lastlog` (the last 10 lines of the big log)."""
    times = []
    out = b""
    for _ in range(runs):
        started = time.perf_counter()
        out = t.ssh("lastlog").stdout
        times.append((time.perf_counter() - started) * 1000)
    if b"CRON" not in out:
        raise AssertionError(f"lastlog printed no log line: {out[:200]!r}")
    return round(statistics.median(times), 1)


def big_hash(t: Target, files: BenchFiles, digest: str) -> dict[str, Any]:
    """`ssh host comphash BIG`: MiB/s, and whether the digest is the one hashlib computed."""
    started = time.perf_counter()
    out = t.ssh(f"comphash {files.big}").stdout
    took = time.perf_counter() - started
    return {"mib_per_s": round(files.big_mib / took, 1), "correct": out.split()[:1] == [digest.encode()]}


async def _responsive(t: Target, files: BenchFiles) -> float:
    async with await t.connect() as conn:
        hashes = [asyncio.create_task(conn.run(f"comphash {files.big}")) for _ in range(2)]
        await asyncio.sleep(0.3)
        times = []
        for _ in range(10):
            started = time.perf_counter()
            await conn.run("lastlog", check=True)
            times.append((time.perf_counter() - started) * 1000)
        await asyncio.gather(*hashes)
        return round(statistics.median(times), 1)


def responsive_ms(t: Target, files: BenchFiles) -> float:
    """Median ms of a small exec (lastlog) on a connection while two big hashes run on it."""
    return asyncio.run(_responsive(t, files))


async def _idle(t: Target, files: BenchFiles, count: int) -> dict[str, Any]:
    base = tree_pss_kib(t.pid)
    conns, procs = [], []
    try:
        for _ in range(count):
            conn = await t.connect()
            conns.append(conn)
            procs.append(await conn.create_process(term_type=None))
        await asyncio.sleep(1.0)
        last = procs[-1]  # every session still answers: the last one opened is asked
        last.stdin.write(f"comphash {files.small}\n")
        out = await asyncio.wait_for(last.stdout.readuntil(str(files.small)), 30)
        if str(files.small) not in out:
            raise AssertionError(f"an idle session did not answer: {out[:200]!r}")
        return {"sessions": count, "kib_per_session": round((tree_pss_kib(t.pid) - base) / count, 1)}
    finally:
        for conn in conns:
            conn.close()


def idle_session_kib(t: Target, files: BenchFiles, count: int) -> dict[str, Any]:
    """Memory (PSS of the server's process tree) per idle authenticated shell session held open."""
    return asyncio.run(_idle(t, files, count))


def ready(target: Target, files: BenchFiles, alive: Callable[[], bool], log: Callable[[], str]) -> Target:
    """Wait until `ssh host comphash SMALL` succeeds (as run.py does), failing early if the server died."""

    def answers() -> bool:
        if not alive():
            raise RuntimeError(f"{target.name} exited:\n{log()[-2000:]}")
        return target.ssh(f"comphash {files.small}", check=False).returncode == 0

    wait_for(answers, START_TIMEOUT, f"{target.name} to answer")
    return target


def ensure_bench_user() -> None:
    """The account sshd logs the benchmark in as: a shell (ForceCommand runs through it) and a `*`
    password field (sshd without PAM refuses the `!` of a locked account)."""
    if subprocess.run(["id", USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", USER], check=True, capture_output=True, timeout=30)
    subprocess.run(["usermod", "-p", "*", USER], check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def openssh(work: Path, files: BenchFiles) -> Iterator[Target]:
    """sshd with tests/bench/anchors/forcecmd.sh as its ForceCommand, in `work`/openssh (which must
    satisfy StrictModes: sshd.secure_directory), logging USER in: the sshd_config run.py writes,
    except LogLevel INFO rather than ERROR (the Sshd harness waits for its `Server listening` line)."""
    if os.geteuid() != 0:
        raise RuntimeError("the OpenSSH server needs root (a `bench` account, sshd's privilege separation)")
    ensure_bench_user()
    base = work / "openssh"
    base.mkdir(mode=0o755)
    authorized = base / "authorized_keys"
    authorized.write_text(files.public_line)
    script = base / "forcecmd.sh"  # a copy the bench user can reach (the checkout may be under /root)
    shutil.copyfile(ANCHORS / "forcecmd.sh", script)
    script.chmod(0o755)
    sshd = Sshd(
        base=base,
        authorized_keys=str(authorized),
        trusted_user_ca_keys=Path("none"),  # sshd_config's own word for "no file"
        revoked_keys=Path("none"),
        ipv6=False,
        popen_extra={"preexec_fn": become_subreaper},  # count every connection process's CPU
        extra={
            "AllowUsers": USER,
            "SetEnv": f"BENCH_LOG={files.log}",
            "ForceCommand": str(script),
            "AllowTcpForwarding": "no",
            "X11Forwarding": "no",
            "MaxStartups": "1000",
            "MaxSessions": "100",
            "LogLevel": "INFO",
        },
    )
    sshd.start()
    try:
        assert sshd.proc is not None
        proc = sshd.proc
        yield ready(
            Target("openssh", sshd.port, proc.pid, USER, files.key), files, lambda: proc.poll() is None, sshd.log_text
        )
    finally:
        sshd.stop()


@contextlib.contextmanager
def asyncssh_anchor(work: Path, files: BenchFiles) -> Iterator[Target]:
    """tests/bench/anchors/asyncssh_server.py in `work`/asyncssh, on a port of its choosing, with its
    own ed25519 host key."""
    base = work / "asyncssh"
    base.mkdir(mode=0o755)
    host_key = base / "ssh_host_ed25519_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True, timeout=30)
    authorized = base / "authorized_keys"
    authorized.write_text(files.public_line)
    log_path = base / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(ANCHORS / "asyncssh_server.py"),
                "0",
                str(host_key),
                str(authorized),
                str(files.log),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=base,
            start_new_session=True,
        )

    def log_text() -> str:
        return log_path.read_text(errors="replace")

    try:

        def port() -> int | None:
            if proc.poll() is not None:
                raise RuntimeError(f"asyncssh exited:\n{log_text()[-2000:]}")
            m = re.search(r"listening on (\d+)", log_text())
            return int(m.group(1)) if m else None

        listening = int(wait_for(port, START_TIMEOUT, "the asyncssh anchor's listening line"))
        yield ready(
            Target("asyncssh", listening, proc.pid, USER, files.key), files, lambda: proc.poll() is None, log_text
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def conchcmd_settings(files: BenchFiles) -> dict[str, Any]:
    """The configuration run.py gives conchcmd: limits loose enough for the bench (max_sessions 100
    as its sshd gets MaxSessions 100; idle sessions need max_clients), lastlog on the big log."""
    return {
        "listen": ["tcp:0:interface=127.0.0.1"],
        "host_keys_dir": "keys",
        "authorized_keys": "keys/authorized_keys/%u",
        "max_clients": 10000,
        "max_sessions": 100,
        "max_startups": 1000,
        "audit_log": "audit.jsonl",
        "lastlog": {"path": str(files.log), "lines": 10},
        "comphash": {"roots": [str(files.small.parent)]},
    }


@dataclass
class ConchcmdServer(ServerFiles):
    """`python -m conchcmd serve` from this checkout (ServerFiles: config, log, spawn, stop)."""

    base: Path
    proc: subprocess.Popen[bytes] | None = None
    returncode: int | None = None
    _log_file: Any = field(default=None, repr=False)


@contextlib.contextmanager
def conchcmd_server(base: Path, files: BenchFiles, *layers: Mapping[str, Any]) -> Iterator[Target]:
    """conchcmd in `base` (created), configured with `conchcmd_settings` and `layers` laid over it,
    `files.key` authorized for USER; stopped with SIGTERM on exit."""
    server = ConchcmdServer(base=base)
    base.mkdir(mode=0o755)
    authorized = base / "keys" / "authorized_keys" / USER
    authorized.parent.mkdir(parents=True)
    authorized.write_text(files.public_line)
    authorized.chmod(0o600)
    server.write_settings(conchcmd_settings(files), *layers)
    server.spawn()
    try:
        port = server.wait_listening(LISTENING, START_TIMEOUT)
        assert server.proc is not None
        proc = server.proc
        yield ready(
            Target("conchcmd", port, proc.pid, USER, files.key), files, lambda: proc.poll() is None, server.log_text
        )
    finally:
        server.stop()
