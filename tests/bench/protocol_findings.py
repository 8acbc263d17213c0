#!/usr/bin/env python3
"""The figures behind issue 15's findings, measured on the real server object graph in memory
(tests/inmemory's World: MemoryReactorClock, iosim, real crypto), so that the same script runs
against the tree before the fix and after it:

    PYTHONPATH=<tree> python <tree>/tests/bench/protocol_findings.py

Each line: the finding, what was measured, the figure. CPU is this process's CPU time (the
client's half included, but it does little); a spinning loop is stopped after --limit s of CPU.
Not part of the pytest run.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support.keys import ed25519_key
from support.scripted import ScriptedClient, force_send, scripted
from support.sshclient import Connection
from support.world import World, make_world
from twisted.conch.ssh import common, connection, transport
from twisted.logger import globalLogPublisher

NS = common.NS


@functools.cache
def scratch() -> Path:
    """This run's scratch directory, made on first use (not at import: `--help` leaves nothing)."""
    return Path(tempfile.mkdtemp(dir=os.path.expanduser("~/.cache")))


class Spun(Exception):
    pass


def world(**changes: Any) -> World:
    return make_world(Path(tempfile.mkdtemp(dir=scratch())), **changes)


class Tolerant(ScriptedClient):
    """Survives answers to channels it opened with raw packets."""

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        with contextlib.suppress(Exception):
            super().dispatchMessage(messageNum, payload)


def login(w: World, peer: str = "10.0.0.1", factory: Any = None) -> Connection:
    if factory is None:
        factory = scripted()
        factory.protocol = Tolerant
    conn = w.connect(peer=peer, client=factory)
    assert conn.login(b"admin", ed25519_key()) == 52
    return conn


def raw_open(conn: Connection, sender: int, max_packet: int, window: int = 1 << 20) -> None:
    force_send(
        conn.client, connection.MSG_CHANNEL_OPEN, NS(b"session") + struct.pack(">3L", sender, window, max_packet)
    )


def raw_exec(conn: Connection, server_id: int, command: bytes) -> None:
    force_send(
        conn.client, connection.MSG_CHANNEL_REQUEST, struct.pack(">L", server_id) + NS(b"exec") + b"\0" + NS(command)
    )


def cpu_limited(limit: float, action: Any) -> tuple[float, bool]:
    """Run `action`; stop it after `limit` s of CPU (raising Spun every 0.1 s of CPU after that,
    since the server's own error handling may catch the first). (CPU seconds, whether stopped)."""
    stopped = [False]

    def stop(*_: Any) -> None:
        stopped[0] = True
        raise Spun()

    old = signal.signal(signal.SIGPROF, stop)
    signal.setitimer(signal.ITIMER_PROF, limit, 0.1)
    started = time.process_time()
    try:
        action()
    except Spun:
        pass
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, old)
    return time.process_time() - started, stopped[0]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def finding_1(limit: float) -> None:
    w = world()
    conn = login(w)
    conn.server.sendKexInit()  # a rekey left pending (the client's answer not yet read)
    raw_open(conn, 0, 0)
    raw_exec(conn, 0, b"lastlog -n 20")
    rss = rss_mb()
    cpu, stopped = cpu_limited(limit, conn.flush)
    what = f"spun, stopped after {cpu:.2f} s CPU" if stopped else f"{cpu * 1000:.1f} ms CPU, done"
    print(f"1  max packet 0 + pending rekey: {what}; RSS +{rss_mb() - rss:.0f} MB")


def finding_6(limit: float) -> None:
    size = 100_000
    w = world(log_text=b"z" * (size - 1) + b"\n")
    conn = login(w)
    raw_open(conn, 0, 1, window=1 << 30)
    raw_exec(conn, 0, b"lastlog -n 1")
    cpu, stopped = cpu_limited(limit, conn.flush)
    print(
        f"6  max packet 1, {size} bytes of output: {cpu:.2f} s CPU ({cpu / size * 1e6:.1f} us/byte)"
        f"{' (stopped)' if stopped else ''}"
    )


def finding_3(n: int) -> None:
    before = open_files()
    w = world()
    conn = login(w)
    started = 0
    for _ in range(n):
        if conn.disconnected:
            break
        chan = conn.open_session()
        conn.exec(chan, b"lastlog -f")
        server_id = conn.conn.localToRemoteChannel.get(chan.id)
        if server_id is None:
            break
        started += 1
        # The client "refuses" the channel the server has open: Conch forgets it, command running.
        force_send(
            conn.client, connection.MSG_CHANNEL_OPEN_FAILURE, struct.pack(">2L", server_id, 2) + NS(b"") + NS(b"")
        )
        conn.flush()
    running = open_files() - before
    conn.client.transport.loseConnection()
    try:
        conn.flush()
        error = ""
    except Exception as e:  # what the old code raised
        error = f" ({type(e).__name__} on close)"
    w.clock.advance(5)
    print(
        f"3  {started} follows started (max_sessions 10); open files while connected +{running},"
        f" after it left +{open_files() - before}{error}"
    )


def finding_5() -> None:
    w = world(max_clients=3, max_clients_per_user=3)
    conns = []
    refused = 0
    for i in range(2):
        factory = scripted()
        factory.protocol = Tolerant
        conn = w.connect(peer=f"10.0.0.{i + 1}", client=factory)
        if conn.login(b"admin", ed25519_key()) != 52:
            refused += 1
            continue
        for _ in range(2):
            force_send(conn.client, transport.MSG_SERVICE_REQUEST, NS(b"ssh-userauth"))
            conn.flush()
            assert conn.auth is not None
            conn.auth.send_request(b"publickey", conn.auth.signed(ed25519_key()))
            conn.flush()
        conns.append(conn)
    held = w.factory.admissions.slots.used
    for conn in conns:
        conn.client.transport.loseConnection()
        conn.flush()
    print(
        f"5  2 clients, each logging in again twice on its connection: {refused} turned away; slots used"
        f" {held} of 3 while connected, {w.factory.admissions.slots.used} after they left"
    )


def finding_7_logs(n: int) -> None:
    w = world()
    conn = login(w)
    lines: list[str] = []
    observer = lambda event: lines.append(event.get("log_format", ""))  # noqa: E731
    globalLogPublisher.addObserver(observer)
    try:
        for i in range(n):
            force_send(
                conn.client, connection.MSG_CHANNEL_OPEN, NS(b"direct-tcpip") + struct.pack(">3L", i, 65536, 32768)
            )
        conn.flush()
        conn.client.transport.loseConnection()
        conn.flush()
    finally:
        globalLogPublisher.removeObserver(observer)
    refusals = [line for line in lines if "Refused" in line or "times in all" in line]
    print(f"7  {n} refused channel opens on one connection: {len(refusals)} log lines")


def finding_7_after_disconnect() -> None:
    w = world()
    conn = login(w)
    force_send(conn.client, transport.MSG_NEWKEYS)  # out of step: the server disconnects...
    raw_open(conn, 5, 32768)  # ...and these arrive in the same read
    raw_exec(conn, 0, b"lastlog -n 1")
    conn.flush()
    w.clock.advance(1)
    conn.flush()
    ran = len(w.audit.of("exec")) + len(w.audit.of("command"))
    print(f"7  commands run from packets read after the server's DISCONNECT: {ran}")


class Stalling(Tolerant):
    hold = False

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        if self.hold and messageNum == transport.MSG_KEXINIT:
            return
        super().dispatchMessage(messageNum, payload)


def finding_2(megabytes: int) -> None:
    text = b"".join(b"%06d %s\n" % (i, b"y" * 1000) for i in range(megabytes * 1000))
    w = world(log_text=text)
    factory = scripted()
    factory.protocol = Stalling  # type: ignore[assignment]
    conn = login(w, factory=factory)
    chans = [conn.open_session(window=256 * 1024 * 1024) for _ in range(3)]
    conn.client.hold = True  # type: ignore[attr-defined]
    conn.server.sendKexInit()
    conn.flush()
    rss = rss_mb()
    for chan in chans:
        conn.exec(chan, b"lastlog -n %d" % (megabytes * 1000))
        conn.flush()
    queued = sum(len(p) for _, p in conn.server.held_messages())
    print(
        f"2  3 x {megabytes} MB of output behind a stalled rekey: {queued / 1e6:.1f} MB queued,"
        f" RSS +{rss_mb() - rss:.0f} MB"
    )


def finding_4(n: int) -> None:
    w = world()
    conn = w.connect(client=scripted())  # keys exchanged, not authenticated
    blob = NS(bytes(range(32)))
    started = time.process_time()
    for _ in range(n):
        force_send(conn.client, 30, blob)
    sending = time.process_time() - started
    started = time.process_time()
    conn.flush()
    cpu = time.process_time() - started
    print(f"4  {n} unsolicited KEX_ECDH_INIT before login: {cpu:.2f} s CPU to handle (+{sending:.2f} s to send)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=float, default=3.0, help="CPU seconds before a spinning loop is stopped")
    args = parser.parse_args()
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    try:
        run_all(args.limit)
    finally:
        shutil.rmtree(scratch(), ignore_errors=True)


def run_all(limit: float) -> None:
    finding_1(limit)
    finding_6(limit * 10)
    finding_3(200)
    finding_5()
    finding_7_logs(1000)
    finding_7_after_disconnect()
    finding_2(4)
    finding_4(15000)


if __name__ == "__main__":
    main()
