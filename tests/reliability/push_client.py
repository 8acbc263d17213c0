"""An abusive but authenticated client (asyncssh), run as a subprocess by test_input_memory.py.

It opens CHANNELS session channels on one connection, never reads their output (each channel's
window to the server is small and its reading paused), and pushes up to BYTES bytes of PATTERN
into every channel, a chunk whenever asyncssh's own send buffer is nearly empty. A channel is
done when all its bytes are out or the server has taken nothing for STALL seconds (its window
is shut). The client then prints one JSON line with what the server accepted, keeps the
connection open until a line arrives on stdin, and exits.

Usage: push_client.py KEY PORT SOURCE PATTERN CHANNELS BYTES
PATTERN: short, blank, long, binary (plain shells), pty, pty-long (terminal shells),
exec (`lastlog -n 10000` stdin)
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time

import asyncssh

CHUNK = 64 * 1024
CLIENT_BUFFER = 128 * 1024  # keep at most this much in asyncssh's send buffer
STALL = 0.5  # seconds without progress: the server's window is shut
DEADLINE = 20.0  # seconds for all channels together
OUTPUT_WINDOW = 4 * 1024  # the window we offer the server: it fills and stays full


def pattern_chunk(pattern: str) -> bytes:
    if pattern in ("short", "exec"):
        return b"a\n" * (CHUNK // 2)
    if pattern == "pty":
        return b"a\r" * (CHUNK // 2)
    if pattern == "pty-long":
        return "é".encode() * (CHUNK // 2)  # one line, never ended: each character an object
    if pattern == "blank":
        return b"\n" * CHUNK
    if pattern == "long":
        return b"x" * CHUNK
    if pattern == "binary":
        return random.Random(1).randbytes(CHUNK)
    raise SystemExit(f"unknown pattern {pattern!r}")


class Quiet(asyncssh.SSHClientSession[bytes]):
    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        pass


async def push(chan: asyncssh.SSHClientChannel[bytes], chunk: bytes, total: int, deadline: float) -> int:
    written = 0
    last_size, last_progress = -1, time.monotonic()
    while time.monotonic() < deadline:
        size = chan.get_write_buffer_size()
        if chan.is_closing():
            break
        if size != last_size:
            last_size, last_progress = size, time.monotonic()
        if written >= total and size == 0:
            break
        if written < total and size < CLIENT_BUFFER:
            n = min(len(chunk), total - written)
            chan.write(chunk[:n])
            written += n
            continue
        if time.monotonic() - last_progress > STALL:
            break
        await asyncio.sleep(0.01)
    return written - chan.get_write_buffer_size()


async def connect_as_alice(key: str, port: str, source: str) -> asyncssh.SSHClientConnection:
    """The reliability server's user `alice`, from a chosen loopback source, trusting any host key."""
    return await asyncssh.connect(
        "127.0.0.1",
        int(port),
        username="alice",
        client_keys=[key],
        known_hosts=None,
        local_addr=(source, 0),
        agent_path=None,
        connect_timeout=10,
    )


async def main() -> None:
    key, port, source, pattern, channels, total = sys.argv[1:7]
    conn = await connect_as_alice(key, port, source)
    chunk = pattern_chunk(pattern)
    opened = []
    for _ in range(int(channels)):
        chan, _ = await conn.create_session(
            Quiet,
            "lastlog -n 10000" if pattern == "exec" else None,  # 40 MB of output, never read
            term_type="xterm" if pattern.startswith("pty") else None,
            window=OUTPUT_WINDOW,
            encoding=None,
        )
        chan.pause_reading()  # output is never read: the window we gave the server stays used up
        opened.append(chan)
    deadline = time.monotonic() + DEADLINE
    accepted = await asyncio.gather(*(push(chan, chunk, int(total), deadline) for chan in opened))
    print(json.dumps({"accepted": accepted, "open": sum(not c.is_closing() for c in opened)}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    conn.abort()


if __name__ == "__main__":
    asyncio.run(main())
