"""A client that logs in, stops reading its socket and sends COUNT want-reply global requests
(each answered with REQUEST_FAILURE), run as a subprocess by test_unread_replies.py. Stops early once
BACKED_UP bytes wait in its own buffer (the server has stopped reading: what the test looks for).
Prints one JSON line once everything is handed to the socket, or it backed up, or DEADLINE passes,
then waits for a line on stdin.

Usage: request_flood_client.py KEY PORT SOURCE COUNT
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from asyncssh.constants import MSG_GLOBAL_REQUEST
from asyncssh.packet import Boolean, String
from push_client import connect_as_alice  # this script's own folder is on sys.path

DEADLINE = 60.0  # a bound on a slow machine, not a figure: the loop normally ends by BACKED_UP
BACKED_UP = 4 << 20


async def main() -> None:
    key, port, source, count = sys.argv[1:5]
    conn = await connect_as_alice(key, port, source)
    transport = conn._transport  # asyncssh offers no public way to stop reading a connection
    transport.pause_reading()
    deadline = time.monotonic() + DEADLINE
    sent = 0
    while sent < int(count) and time.monotonic() < deadline and transport.get_write_buffer_size() < BACKED_UP:
        for _ in range(1000):
            conn.send_packet(MSG_GLOBAL_REQUEST, String(b"flood@example.com"), Boolean(True))
        sent += 1000
        await asyncio.sleep(0)
    await asyncio.sleep(1.0)  # the kernel moves what it can
    print(json.dumps({"sent": sent, "unsent_bytes": transport.get_write_buffer_size()}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    conn.abort()


asyncio.run(main())
