"""Clients that leave while the server still has output for them, run as a subprocess by
test_closing_attacks.py: COUNT connections, each logs in, starts `lastlog -n 10000` (40 MB of
output) with reading paused, then leaves in the way MODE says:

  disconnect  sends SSH_MSG_DISCONNECT and keeps the socket open, never reading (the server
              closes with its output unsent: it must cut the connection, not keep it and the output)
  rst         closes the socket with SO_LINGER 0 (a RST while the server writes)
  halfclose   shuts its sending side (FIN) and keeps the socket open, never reading
  eof         closes the channel and sends EOF mid-output, then stops reading entirely

Prints one JSON line when all have left, then waits for a line on stdin before closing what is
still open.

Usage: closing_client.py KEY PORT SOURCE MODE COUNT
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import sys

import asyncssh
from asyncssh.constants import MSG_DISCONNECT
from asyncssh.packet import String, UInt32
from push_client import Quiet, connect_as_alice  # this script's own folder is on sys.path

OUTPUT_WINDOW = 2 * 1024 * 1024  # the server may send this much before the window shuts


async def leave(key: str, port: str, source: str, mode: str) -> tuple[asyncssh.SSHClientConnection, socket.socket]:
    conn = await connect_as_alice(key, port, source)
    chan, _ = await conn.create_session(Quiet, "lastlog -n 10000", window=OUTPUT_WINDOW, encoding=None)
    await asyncio.sleep(0.2)  # output flows
    transport = conn._transport  # asyncssh offers no public way to stop reading a connection
    transport.pause_reading()
    sock: socket.socket = transport.get_extra_info("socket")
    await asyncio.sleep(0.2)  # the server fills the socket
    if mode == "disconnect":
        conn.send_packet(MSG_DISCONNECT, UInt32(11), String("bye"), String(""))
    elif mode == "rst":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    elif mode == "halfclose":
        sock.shutdown(socket.SHUT_WR)
    elif mode == "eof":
        chan.write_eof()
        chan.close()
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    return conn, sock


async def main() -> None:
    key, port, source, mode, count = sys.argv[1:6]
    prefix, last = source.rsplit(".", 1)
    left = await asyncio.gather(
        *(leave(key, port, f"{prefix}.{int(last) + i}", mode) for i in range(int(count))), return_exceptions=True
    )
    errors = [repr(e) for e in left if isinstance(e, BaseException)]
    print(json.dumps({"left": len(left) - len(errors), "errors": errors[:3]}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for item in left:
        if not isinstance(item, BaseException):
            item[0].abort()


asyncio.run(main())
