#!/usr/bin/env python3
"""The reactor's own cost per reply: server CPU and wall time per request/response round trip on
loopback, Twisted's epoll reactor beside FlushingReactor (the one `conchcmd serve` runs).

Each server answers every 64-byte request with two writes (a reply flight of two packets, as an
SSH reply often is); a blocking client sends the next request once the whole answer is back.
Interleaved rounds, CPU from /proc/PID/task/*/schedstat (ns, not 10 ms ticks): a fresh exec is
about ten such flights, and its few tens of microseconds saved are lost in a busy machine's noise
on the whole-exec figures (profile_exec.py --compare), not here. Not part of the pytest run:

    python tests/bench/reactor_roundtrip.py [--trips 20000] [--rounds 6]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SERVER = """
import sys
from twisted.internet import protocol
from twisted.internet.epollreactor import EPollReactor
from conchcmd.core.twistedprivate import FlushingReactor

reactor = {"epoll": EPollReactor, "flushing": FlushingReactor}[sys.argv[1]]()


class TwoWrites(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data[:32])
        self.transport.write(data[32:])


port = reactor.listenTCP(0, protocol.Factory.forProtocol(TwoWrites), interface="127.0.0.1")
print(port.getHost().port, flush=True)
reactor.run()
"""

REACTORS = ("epoll", "flushing")


def cpu_s(pid: int) -> float:
    return sum(int((t / "schedstat").read_text().split()[0]) for t in Path(f"/proc/{pid}/task").iterdir()) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trips", type=int, default=20000, help="round trips per round")
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    procs = {
        name: subprocess.Popen([sys.executable, "-c", SERVER, name], stdout=subprocess.PIPE, text=True, cwd=REPO)
        for name in REACTORS
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in REACTORS}
    try:
        socks = {}
        for name, proc in procs.items():
            assert proc.stdout is not None
            socks[name] = socket.create_connection(("127.0.0.1", int(proc.stdout.readline())))
            socks[name].setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request = b"x" * 64
        for r in range(args.rounds):
            for name in REACTORS if r % 2 == 0 else tuple(reversed(REACTORS)):
                s, pid = socks[name], procs[name].pid
                cpu0, wall0 = cpu_s(pid), time.perf_counter()
                for _ in range(args.trips):
                    s.sendall(request)
                    got = 0
                    while got < len(request):
                        got += len(s.recv(len(request) - got))
                cpu, wall = cpu_s(pid) - cpu0, time.perf_counter() - wall0
                results[name].append((cpu * 1e6 / args.trips, wall * 1e6 / args.trips))
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
    print(f"{args.rounds} interleaved rounds of {args.trips} round trips; medians")
    for name, rows in results.items():
        cpu_us = statistics.median(x for x, _ in rows)
        wall_us = statistics.median(y for _, y in rows)
        print(f"  {name:9s} server CPU {cpu_us:5.1f} us per round trip, wall {wall_us:5.1f} us")
    pairs = zip(results["flushing"], results["epoll"], strict=True)
    print(f"  flushing / epoll, paired: CPU {statistics.median(a[0] / b[0] for a, b in pairs):.2f}")


if __name__ == "__main__":
    main()
