"""Idle authenticated sessions are cheap: a few hundred held open cost the server at most 16 KiB
each (issue 14's bound at 10,000; `tests/bench/capacity.py` measures that), and every one of
them still answers."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from support.reliability import figure, kill_all, source_of_peer
from support.serverfiles import wait_for

pytestmark = pytest.mark.reliability

SESSIONS = 300
KIB_PER_SESSION_BOUND = 16

# Opens SESSIONS shell sessions (no pty), one connection each, says "open"; then on "check PATH"
# runs comphash PATH in the last one's shell and prints the answer; EOF on stdin closes them all.
HOLDER = """
import asyncio, sys
import asyncssh

key, port, source, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])

async def main():
    gate = asyncio.Semaphore(20)
    conns, procs = [], []

    async def one():
        async with gate:
            conn = await asyncssh.connect(
                "127.0.0.1", port, username="alice", client_keys=[key], known_hosts=None,
                local_addr=(source, 0), agent_path=None, connect_timeout=30,
            )
            conns.append(conn)
            procs.append(await conn.create_process(term_type=None))

    await asyncio.gather(*(one() for _ in range(count)))
    print("open", flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        path = line.split(" ", 1)[1].strip()
        procs[-1].stdin.write(f"comphash {path}\\n")
        print((await asyncio.wait_for(procs[-1].stdout.readuntil(path), 30)).strip(), flush=True)
    for conn in conns:
        conn.close()
    await asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True)

asyncio.run(main())
"""


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise AssertionError(f"no Pss line for {pid}")


@pytest.fixture(scope="module")
def server(make_server):
    room = {"max_clients_per_user": SESSIONS + 10, "max_startups": 100, "max_startups_per_source": 100}
    return make_server(max_clients=SESSIONS + 10, settings=room)


def test_idle_sessions_cost_at_most_16_kib_each(server, data, tmp_path):
    pytest.importorskip("asyncssh")
    for _ in range(3):  # what the first connections build once (imports, caches) is not per session
        assert server.ssh("exit 0").returncode == 0
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    source = "127.0.0.15"
    mark = server.audit_mark()
    before = pss_kib(server.pid)
    holder = subprocess.Popen(
        [sys.executable, str(script), str(server.keys.good), str(server.port), source, str(SESSIONS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert holder.stdin is not None and holder.stdout is not None
        line = holder.stdout.readline()
        if line != "open\n":
            holder.wait(timeout=10)
            raise AssertionError(f"the holder failed: {line + holder.stdout.read()}")
        after = pss_kib(server.pid)
        holder.stdin.write(f"check {data.small}\n")
        holder.stdin.flush()
        answer = holder.stdout.readline()
        holder.stdin.close()
        holder.wait(timeout=60)
    finally:
        kill_all([holder])
    per_session = (after - before) / SESSIONS
    figure(
        "idle_sessions",
        {
            "sessions": SESSIONS,
            "pss_before_kib": before,
            "pss_after_kib": after,
            "kib_per_session": round(per_session, 2),
        },
    )
    assert hashlib.sha256(data.small.read_bytes()).hexdigest() in answer, answer
    assert per_session <= KIB_PER_SESSION_BOUND, f"{per_session:.1f} KiB per idle session"
    # Every one was authenticated, and every one's slot is released when its client leaves.
    logins = [e for e in server.audit_since(mark, "auth") if e.get("ok") and source_of_peer(e["peer"]) == source]
    assert len(logins) == SESSIONS
    wait_for(
        lambda: (
            len([e for e in server.audit_since(mark, "disconnect") if source_of_peer(e["peer"]) == source]) == SESSIONS
        ),
        30,
        "every session's disconnect record",
    )
    assert server.ssh("exit 0").returncode == 0
