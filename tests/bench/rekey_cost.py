#!/usr/bin/env python3
"""Server CPU per key exchange a client starts, the figure behind REKEY_BURST.

Runs the real server object graph in memory (tests/inmemory's World: MemoryReactorClock, iosim,
real crypto), logs a client in, then has it rekey N times with the clock advanced far enough
that the rekey limit never applies; only the CPU time spent inside the server's dataReceived
is counted (process time, so the client's half is excluded). Prints ms per rekey for each
curve25519 key exchange (the test client cannot do mlkem768x25519).

Not part of the pytest run: `PYTHONPATH=. python tests/bench/rekey_cost.py [--rekeys N]`
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support.keys import ed25519_key
from support.sshclient import ClientFactory
from support.tempdirs import trusted_temp_parent
from support.world import make_world

from conchcmd.core.config import KEX_ALGORITHMS
from conchcmd.wire.framing import REKEY_WINDOW


def measure(kex: str, rekeys: int) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="conchcmd-rekey-", dir=trusted_temp_parent()) as tmp:
        return _measure(Path(tmp), kex, rekeys)


def _measure(tmp: Path, kex: str, rekeys: int) -> list[float]:
    world = make_world(tmp)
    factory = ClientFactory()
    factory.supportedKeyExchanges = [kex.encode()]
    conn = world.connect(client=factory)
    assert conn.login(b"admin", ed25519_key()) == 52
    server = conn.server
    spent = [0.0]
    received = server.dataReceived

    def timed(data: bytes) -> None:
        started = time.process_time()
        received(data)
        spent[0] += time.process_time() - started

    server.dataReceived = timed  # type: ignore[method-assign]
    costs = []
    for _ in range(rekeys):
        world.clock.advance(REKEY_WINDOW)
        spent[0] = 0.0
        conn.client.sendKexInit()
        conn.flush()
        costs.append(spent[0] * 1000)
    assert server.kex_count == rekeys + 1 and not conn.disconnected
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rekeys", type=int, default=200)
    args = parser.parse_args()
    for kex in KEX_ALGORITHMS:
        if not kex.startswith("curve25519"):
            continue  # the in-memory test client speaks curve25519/ECDH only (not mlkem768x25519)
        costs = measure(kex, args.rekeys)
        print(
            f"{kex:32} server CPU per client rekey: median {statistics.median(costs):.2f} ms, "
            f"p90 {statistics.quantiles(costs, n=10)[-1]:.2f} ms ({args.rekeys} rekeys)"
        )


if __name__ == "__main__":
    main()
