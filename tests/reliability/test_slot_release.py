"""A connection the server ends must free its client slot, whatever state its output was in.

Found while testing issue 10's slot limits: Twisted's loseConnection, with a streaming producer
that is paused (the socket's send buffer was full), resumes the producer when the buffer drains
instead of closing; a transport that has sent its DISCONNECT produces nothing more, so the socket
stayed open in CLOSE-WAIT for good, with its slot (max_clients, max_clients_per_user) held.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from support.reliability import kill_all

pytestmark = pytest.mark.reliability

# Runs `lastlog` with a 2 GiB window, stops reading its socket until the server's send buffer is
# full (its output producer paused), then sends garbage where the next packet should be (the
# server ends the connection: a protocol error) and reads everything to the server's DISCONNECT.
CLIENT = """
import asyncio, os, sys
import asyncssh

key, port, source = sys.argv[1], int(sys.argv[2]), sys.argv[3]

class Session(asyncssh.SSHClientSession):
    def data_received(self, data, datatype):
        pass

async def main():
    conn = await asyncssh.connect(
        "127.0.0.1", port, username="alice", client_keys=[key], known_hosts=None,
        local_addr=(source, 0), agent_path=None, connect_timeout=10,
    )
    await conn.create_session(Session, "lastlog -n 10000", window=2**31, encoding=None)
    conn._transport.pause_reading()
    await asyncio.sleep(1.0)  # the server's socket backs up: real time, there is no clock to advance
    conn._transport.write(os.urandom(64))
    conn._transport.resume_reading()
    await asyncio.wait_for(conn.wait_closed(), 20)
    print("closed", flush=True)

asyncio.run(main())
"""


def test_a_connection_ended_while_its_output_was_backed_up_frees_its_slot(make_server, tmp_path):
    pytest.importorskip("asyncssh")
    server = make_server(settings={"max_clients_per_user": 1})
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    since = server.log_mark()
    source = "127.0.0.31"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(server.keys.good), str(server.port), source],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        out, _ = proc.communicate(timeout=30)
    finally:
        kill_all([proc])
    assert out.endswith(b"closed\n"), out[-2000:]
    server.wait_log(rf"Lost client connection {source}:\d+ \(alice\): protocol error", since)
    r = server.ssh("exit 0")  # alice's only slot is free again
    assert r.returncode == 0, r.stderr
