#!/usr/bin/env python3
"""The commands conchcmd serves (lastlog, comphash PATH, exit) served by AsyncSSH, as a yardstick.

Exec (`ssh host comphash PATH`) and an interactive shell (a "> " prompt, one command a line) both
work; hashing runs in the default thread pool, lastlog reads the tail of the log in-process. It
matches ../shared/bench/anchors/asyncssh_server.py, except that it may listen on port 0: it prints
`listening on PORT` once it accepts connections. tests/bench/compare.py runs it.

usage: asyncssh_server.py PORT HOSTKEY AUTHORIZED_KEYS LOGFILE
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys

import asyncssh


def tail(path: str, n: int = 10, block: int = 8192) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        data = b""
        while end > 0 and data.count(b"\n") <= n:
            step = min(block, end)
            end -= step
            f.seek(end)
            data = f.read(step) + data
    return b"\n".join(data.splitlines()[-n:]).decode(errors="replace") + "\n"


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


async def run(line: str, process: asyncssh.SSHServerProcess, log: str) -> int | None:
    """One command; its exit status, or None for `exit`."""
    parts = line.split()
    if not parts:
        return 0
    if parts[0] == "lastlog":
        process.stdout.write(tail(log))
        return 0
    if parts[0] == "comphash":
        if len(parts) != 2:
            process.stderr.write("usage: comphash PATH\n")
            return 2
        try:
            digest = await asyncio.get_running_loop().run_in_executor(None, sha256_file, parts[1])
        except OSError as e:
            process.stderr.write(f"comphash: {e.strerror}\n")
            return 1
        process.stdout.write(f"{digest}  {parts[1]}\n")
        return 0
    if parts[0] == "exit":
        return None
    process.stderr.write("Command not found.\n")
    return 127


async def handle(process: asyncssh.SSHServerProcess, log: str) -> None:
    if process.command is not None:
        rc = await run(process.command, process, log)
        process.exit(rc or 0)
        return
    while True:
        process.stdout.write("> ")
        try:
            line = await process.stdin.readline()
        except asyncssh.BreakReceived:
            continue
        if not line:
            break
        if await run(line.strip(), process, log) is None:
            break
    process.exit(0)


async def main(port: int, host_key: str, authorized_keys: str, log: str) -> None:
    server = await asyncssh.create_server(
        asyncssh.SSHServer,
        "127.0.0.1",
        port,
        server_host_keys=[host_key],
        authorized_client_keys=authorized_keys,
        process_factory=lambda process: handle(process, log),
        encoding="utf-8",
        line_editor=False,
    )
    print(f"listening on {server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.Future()


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if len(sys.argv) == 2 else 2)
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]))
