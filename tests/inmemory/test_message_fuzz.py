"""A fuzz target over message *sequences* (not bytes): after login, a seeded generator sends a
run of messages of every type, with well-formed, truncated or random payloads, mixed with real
channel work (opens, execs, follows, rekeys). Whatever the sequence, the server logs no
traceback, ends the connection with a reason or keeps serving it, and once the client has gone
holds no slot, no connection, no open file and no running command."""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Callable

import pytest
from support.dispatchprobe import PROBES, Probe, client
from support.keys import ed25519_key
from support.scripted import force_send
from support.world import World
from twisted.conch.ssh import common
from twisted.logger import capturedLogs, formatEvent

NS = common.NS
SEEDS = int(os.environ.get("CONCHCMD_FUZZ_SEEDS", "60"))
STEPS = 40


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def channel_message(rng: random.Random, ids: list[int]) -> tuple[int, bytes]:
    """A connection-protocol message naming a channel the server has, or had, or never had."""
    target = rng.choice([*ids, 0, 1, 7, 0xFFFFFFFF]) if ids else rng.choice([0, 7])
    kind = rng.choice([91, 92] if rng.random() < 0.03 else [93, 94, 95, 96, 97, 98, 98, 98, 99, 100])
    body = {
        91: struct.pack(">3L", rng.getrandbits(32), rng.getrandbits(32), rng.choice([0, 1, 32768])),
        92: struct.pack(">L", 2) + NS(b"no") + NS(b""),
        93: struct.pack(">L", rng.choice([1, 1 << 20, 0xFFFFFFFF])),
        94: NS(rng.randbytes(rng.randint(0, 100))),
        95: struct.pack(">L", 1) + NS(b"x"),
        96: b"",
        97: b"",
        98: NS(rng.choice([b"exec", b"shell", b"pty-req", b"subsystem", b"signal", b"env"]))
        + b"\x01"
        + NS(rng.choice([b"lastlog -f", b"lastlog -n 3", b"INT", b"sftp", b"help"])),
        99: b"",
        100: b"",
    }[kind]
    return kind, struct.pack(">L", target) + body


def step(rng: random.Random) -> Callable[[Probe, list[int]], tuple[int, bytes] | None]:
    roll = rng.random()

    def act(c: Probe, ids: list[int]) -> tuple[int, bytes] | None:
        if roll < 0.35:
            return channel_message(rng, ids)
        if roll < 0.5:
            window, packet = rng.choice([0, 1, 65536, 0xFFFFFFFF]), rng.choice([0, 1, 1024, 32768, 0xFFFFFFFF])
            return 90, NS(rng.choice([b"session", b"direct-tcpip", b"x11"])) + struct.pack(
                ">3L", rng.getrandbits(16), window, packet
            )
        if roll < 0.55:
            if c.kex_idle():
                c.sendKexInit()
            return None
        fatal = rng.random() < 0.05  # the messages that end a connection whatever they carry
        message = rng.choice(
            [0, 21, 91, 92] if fatal else [m for m in (*PROBES, rng.randint(1, 255)) if m not in (0, 21)]
        )
        if message in PROBES and rng.random() < 0.8:
            payload = PROBES[message](c)
            if rng.random() < 0.1:
                payload = payload[: rng.randint(0, len(payload))]  # truncated
        else:
            payload = rng.randbytes(rng.randint(0, 48))
        return message, payload

    return act


@pytest.mark.parametrize("seed", range(SEEDS))
def test_any_message_sequence_leaves_nothing_behind(world: World, seed: int) -> None:
    rng = random.Random(seed)
    before = open_files()
    conn = world.connect(client=client(strict=True))
    assert conn.login(b"admin", ed25519_key()) == 52
    c = conn.client
    assert isinstance(c, Probe)
    with capturedLogs() as events:
        for _ in range(STEPS):
            if conn.disconnected:
                break
            ids = list(conn.server.service.channels) if conn.server.service is not None else []
            sent = step(rng)(c, ids)
            if sent is not None:
                force_send(c, *sent)
            conn.flush()
            world.clock.advance(rng.choice([0, 0.1, 1]))
        alive = not conn.disconnected
        c.transport.loseConnection()
        conn.flush()
        world.clock.advance(5)
        conn.flush()
    failures = [formatEvent(e) for e in events if e.get("log_failure") is not None]
    assert failures == [], failures
    bye = world.audit.of("disconnect")
    assert len(bye) == 1 and bye[0]["reason"], bye
    assert world.factory.admissions.slots.used == 0 and not world.factory.transports
    assert open_files() == before, f"seed {seed}: open files left (alive until the end: {alive})"
