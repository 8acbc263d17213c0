"""Password guessers that pipeline their requests (issue 10) against the real server: an operator's
`comphash` still completes, and every guessing connection is cut.

The guessers are tests/support/pipeliner.py processes: real TCP from their own loopback sources,
real key exchange, then password requests without waiting for answers. Before the fix, each
request went to bcrypt at once in the commands' thread pool, and `comphash` waited behind them.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from typing import Any

import bcrypt
import pytest
from support.reliability import kill_all
from support.serverfiles import REPO, wait_for

pytestmark = pytest.mark.reliability

PIPELINER = REPO / "tests" / "support" / "pipeliner.py"
OPERATOR = "127.0.5.100"
STEADY = [f"127.0.5.{n}" for n in range(1, 5)]  # 5 requests in flight, one more per failure
BURSTS = [f"127.0.5.{n}" for n in range(11, 14)]  # 200 requests at once, reconnecting for 2 s
CAP_REASON = "too many password checks in progress (max_password_checks = 2)"


def guessers(port: int, sources: list[str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(PIPELINER), "--port", str(port), *[a for s in sources for a in ("--source", s)], *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )


def records(proc: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
    out, err = proc.communicate(timeout=45)
    assert proc.returncode == 0, err.decode(errors="replace")
    return [json.loads(line) for line in out.decode().splitlines()]


def test_comphash_completes_while_guessers_pipeline_passwords(make_server) -> None:
    hashed = bcrypt.hashpw(b"never guessed", bcrypt.gensalt(rounds=12)).decode()
    server = make_server(settings={"max_auth_tries": 3, "users": {"carol": {"password_bcrypt": hashed}}})
    small = server.data.small
    expected = f"{hashlib.sha256(small.read_bytes()).hexdigest()}  {small}\n".encode()
    mark = server.audit_mark()

    def carol_failures() -> list[dict[str, Any]]:
        return [e for e in server.audit_since(mark, "auth") if e.get("user") == "carol" and not e["ok"]]

    procs = [
        guessers(server.port, STEADY, "--burst", "5", "--refill"),
        guessers(server.port, BURSTS, "--burst", "200", "--seconds", "2"),
    ]
    try:
        wait_for(lambda: len(carol_failures()) >= 4, 20, "the guessing to get going")
        for _ in range(3):
            r = server.ssh(f"comphash {small}", source=OPERATOR)
            assert (r.returncode, r.stdout, r.stderr) == (0, expected, b"")
        steady, bursts = (records(p) for p in procs)
    finally:
        kill_all(procs)

    # Each steady guesser got two failures back, then the third ended it: nothing ran after it.
    assert len(steady) == len(STEADY)
    for record in steady:
        assert record["secure"] and record["successes"] == 0, record
        assert (record["failures"], record["disconnect"]) == (2, "Too many authentication failures"), record
    # A burst is cut as it arrives (a source that keeps at it is then refused before key exchange).
    assert {r["source"] for r in bursts} == set(BURSTS)
    assert all(r["successes"] == 0 and r["failures"] == 0 for r in bursts)
    for source in BURSTS:
        assert next(r for r in bursts if r["source"] == source)["secure"]
    for record in bursts:
        assert not record["secure"] or record["disconnect"] == "too many authentication requests pending", record
    audited = carol_failures()
    assert {e["reason"] for e in audited} <= {"wrong password", CAP_REASON}
    assert not [e for e in server.audit_since(mark, "auth") if e.get("user") == "carol" and e["ok"]]
    server.assert_alive()
