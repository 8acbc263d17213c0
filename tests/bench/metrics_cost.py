#!/usr/bin/env python3
"""Server CPU per exec with and without metrics (`metrics_listen`), and the cost of a scrape.

Runs the real server object graph in memory (tests/inmemory's World: MemoryReactorClock, iosim,
real crypto): one logged-in connection runs N `help` execs, each on a channel of its own (open,
exec, exit status, close), and only the CPU time spent inside the server's dataReceived is counted
(process time: the client's half is excluded). Rounds alternate between a server with metrics and
one without, so drift hits both; prints the median µs per exec of each and the difference, then
what one scrape (the whole exposition) costs with that many connections open.

Not part of the pytest run: `PYTHONPATH=. python tests/bench/metrics_cost.py [--execs N] [--rounds R]`
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support.sshclient import Connection
from support.tempdirs import trusted_temp_parent
from support.world import World, make_world

ROOMY: dict[str, Any] = {"max_clients": 200, "max_clients_per_user": 200}  # room for the scrape's connections


def timed_server(conn: Connection) -> list[float]:
    """Wrap the server's dataReceived to add up the process time it takes."""
    spent = [0.0]
    server = conn.server
    received = server.dataReceived

    def timed(data: bytes) -> None:
        started = time.process_time()
        received(data)
        spent[0] += time.process_time() - started

    server.dataReceived = timed
    return spent


def per_exec(world: World, execs: int) -> float:
    """Server CPU µs per exec of `help`, each on a new channel of one connection."""
    conn = world.login()
    spent = timed_server(conn)
    for _ in range(execs):
        chan = conn.open_session()
        conn.exec(chan, b"help")
        conn.flush()
        assert chan.exit_status == 0
    conn.client.transport.loseConnection()
    conn.flush()
    return spent[0] / execs * 1e6


def scrape_cost(world: World, connections: int, scrapes: int) -> float:
    """µs per exposition with `connections` logged-in connections open."""
    held: list[Any] = [world.login(peer=f"10.1.{n // 250}.{n % 250 + 1}") for n in range(connections)]
    metrics = world.server.metrics
    assert metrics is not None
    started = time.process_time()
    for _ in range(scrapes):
        metrics.exposition()
    cost = (time.process_time() - started) / scrapes * 1e6
    for conn in held:
        conn.client.transport.loseConnection()
        conn.flush()
    return cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--execs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    results: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="conchcmd-metrics-", dir=trusted_temp_parent()) as tmp:
        worlds = {
            False: make_world(Path(tmp) / "plain", **ROOMY),
            True: make_world(Path(tmp) / "metered", metrics_listen="tcp:0", **ROOMY),
        }
        for world in worlds.values():
            per_exec(world, 20)  # warm up
        for _ in range(args.rounds):
            for metered in (False, True):
                results[metered].append(per_exec(worlds[metered], args.execs))
        without, with_ = statistics.median(results[False]), statistics.median(results[True])
        print(f"server CPU per exec, median of {args.rounds} rounds of {args.execs}:")
        print(f"  without metrics: {without:.1f} µs  (rounds: {', '.join(f'{v:.0f}' for v in results[False])})")
        print(f"  with metrics:    {with_:.1f} µs  (rounds: {', '.join(f'{v:.0f}' for v in results[True])})")
        print(f"  difference:      {with_ - without:+.1f} µs ({(with_ - without) / without * 100:+.1f}%)")
        for connections in (1, 100):
            cost = scrape_cost(worlds[True], connections, 200)
            print(f"one scrape with {connections} connection(s) open: {cost:.0f} µs")


if __name__ == "__main__":
    main()
