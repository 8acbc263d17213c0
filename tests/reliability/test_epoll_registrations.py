"""After connections end in every way a client or the server ends them (closed at once, reset,
half-closed, cut for a protocol error with input unread, logged in and gone, killed mid-output,
many at once), the server holds no descriptor and no epoll registration for any of them, and no
registration names a closed descriptor or, under a reused number, another file (a close without
the epoll_ctl DEL would leave one wherever the socket lives on in a child: see FlushingReactor)."""

from __future__ import annotations

import os
import re
import socket
import struct
import time

import pytest
from support.reliability import raw_connect, read_until_closed, wait_until_idle
from support.server import next_source

pytestmark = pytest.mark.reliability

REGISTRATION = re.compile(r"tfd:\s*(?P<fd>\d+)\s.*\bino:(?P<ino>[0-9a-f]+)")
EACH = 15  # connections of each raw kind
SETTLE = 15.0  # seconds for the server to let go of them all (ABORT_AFTER is 5 s), on a loaded machine


def descriptors(pid: int) -> dict[int, tuple[str, int]]:
    """The server's open descriptors: what each is, and its inode."""
    found = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            found[int(name)] = (os.readlink(f"/proc/{pid}/fd/{name}"), os.stat(f"/proc/{pid}/fd/{name}").st_ino)
        except FileNotFoundError:  # closed meanwhile
            continue
    return found


def registrations(pid: int, fds: dict[int, tuple[str, int]]) -> set[tuple[int, int]]:
    """(descriptor, inode) of every file registered in the server's epoll instances (fdinfo's
    `tfd:` lines)."""
    found = set()
    for fd, (what, _) in fds.items():
        if what == "anon_inode:[eventpoll]":
            for line in open(f"/proc/{pid}/fdinfo/{fd}").read().splitlines():  # noqa: SIM115
                registered = REGISTRATION.match(line)
                if registered:
                    found.add((int(registered["fd"]), int(registered["ino"], 16)))
    return found


def settled(pid: int, before: int) -> tuple[dict[int, tuple[str, int]], set[tuple[int, int]]]:
    """The descriptors and registrations once the server is down to `before` descriptors (or
    SETTLE has passed)."""
    deadline = time.monotonic() + SETTLE
    while True:
        fds = descriptors(pid)
        if len(fds) <= before or time.monotonic() > deadline:
            return fds, registrations(pid, fds)
        time.sleep(0.1)


def ending_in_every_way(server) -> None:
    port = server.port
    for _ in range(EACH):
        raw_connect(port, next_source()).close()  # closed at once
        with raw_connect(port, next_source()) as s:  # reset
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with raw_connect(port, next_source()) as s:  # a version line, then its half-close
            s.sendall(b"SSH-2.0-halfclose\r\n")
            s.shutdown(socket.SHUT_WR)
            assert read_until_closed(s, 10.0)[1]
        with raw_connect(port, next_source()) as s:  # a protocol error, with input behind it
            s.sendall(b"SSH-2.0-garbage\r\n" + b"\xff" * 64 + b"\0" * 65536)
            assert read_until_closed(s, 10.0)[1]
    many = [raw_connect(port, next_source()) for _ in range(2 * EACH)]  # open together, gone together
    for n, s in enumerate(many):
        s.sendall(b"SSH-2.0-many\r\n")
        if n % 2:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    for s in many:
        s.close()
    for _ in range(3):
        assert server.ssh(f"comphash {server.data.small}").returncode == 0
        client = server.popen("lastlog -n 10000")  # killed mid-output
        assert client.stdout is not None and client.stdout.read(4096)
        client.kill()
        client.wait(timeout=10)


def test_connections_ended_in_every_way_leave_no_descriptor_and_no_epoll_registration(make_server) -> None:
    server = make_server(settings={"max_startups": 100, "max_startups_per_source": 10})
    pid = server.pid
    assert server.ssh("help").returncode == 0
    wait_until_idle(pid)
    fds_before = descriptors(pid)
    registered_before = registrations(pid, fds_before)
    assert registered_before  # the listening socket at least
    ending_in_every_way(server)
    fds_after, registered_after = settled(pid, len(fds_before))
    server.assert_alive()
    assert fds_after == fds_before
    assert registered_after == registered_before
    # every registration names an open descriptor, the very file it registered
    assert {(fd, fds_after[fd][1]) for fd, _ in registered_after if fd in fds_after} == registered_after
