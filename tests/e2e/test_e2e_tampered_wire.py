"""chacha20-poly1305@openssh.com on the real wire: the OpenSSH client's packets pass through a relay
that changes one bit of one of them, in a small packet (the first after the client's NEWKEYS: a
Poly1305 tag from libsodium) or in the middle of bulk input (32 KiB packets: cryptography's). The
server ends that connection with a MAC error, logs it, and goes on serving; unchanged, the same
bulk goes through."""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
from collections.abc import Callable

import pytest
from support.server import client_env, next_source
from support.serverfiles import hermetic_ssh

pytestmark = pytest.mark.e2e

CHACHA = "chacha20-poly1305@openssh.com"
BULK = 2 * 1024 * 1024


def newkeys_end(stream: bytes) -> int | None:
    """Where the client's first encrypted packet starts: after its version line and plaintext
    packets up to NEWKEYS (message 21); None until all of that has come."""
    at = stream.find(b"\n") + 1
    while at and len(stream) >= at + 6:
        length, kind = struct.unpack(">L", stream[at : at + 4])[0], stream[at + 5]
        if len(stream) < at + 4 + length:
            return None
        at += 4 + length
        if kind == 21:
            return at
    return None


class Relay:
    """Loopback TCP relay to `port` that flips bit 0 of the client's byte `where(stream)` says."""

    def __init__(self, port: int, where: Callable[[bytes], int | None] | None) -> None:
        self.port, self.where = port, where
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(30)
        self.flipped: int | None = None
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        client, _ = self.listener.accept()
        # from a loopback address of its own: the server penalises a source after failures
        server = socket.create_connection(("127.0.0.1", self.port), timeout=30, source_address=(next_source(), 0))
        back = threading.Thread(target=self.copy, args=(server, client), daemon=True)
        back.start()
        stream = bytearray()
        try:
            while chunk := client.recv(65536):
                start = len(stream)
                stream += chunk
                if self.flipped is None and self.where is not None:
                    at = self.where(bytes(stream))
                    if at is not None and at < len(stream):
                        self.flipped = at
                        changed = bytearray(chunk)
                        changed[at - start] ^= 1
                        chunk = bytes(changed)
                server.sendall(chunk)
        except OSError:
            pass
        finally:
            server.close()
            back.join(30)
            client.close()

    @staticmethod
    def copy(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            sink.close()


def first_encrypted(stream: bytes) -> int | None:
    start = newkeys_end(stream)
    return None if start is None or len(stream) < start + 24 else start + 20  # inside the body


def in_the_bulk(stream: bytes) -> int | None:
    return BULK // 2 if len(stream) > BULK // 2 else None


@pytest.mark.parametrize("where", [None, first_encrypted, in_the_bulk], ids=["untouched", "small", "bulk"])
def test_one_changed_bit_from_a_real_client_ends_its_connection_with_a_mac_error(server, where) -> None:
    mark = len(server.log_text())
    relay = Relay(server.port, where)
    port = relay.listener.getsockname()[1]
    argv = hermetic_ssh(port, server.keys.default, "alice", "127.0.0.1", options=["-T", "-c", CHACHA])
    # The shell reads the empty lines (the client's 32 KiB packets), then the command.
    typed = b"\n" * BULK + b"lastlog -n 3\nexit 0\n"
    r = subprocess.run(argv, input=typed, capture_output=True, timeout=60, env=client_env())
    relay.thread.join(30)
    if where is None:
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.endswith(server.tail(server.data.syslog, 3))
        return
    assert relay.flipped is not None
    assert r.returncode == 255 and r.stdout == b"", r.stderr[-2000:]
    server.wait_log(r"bad Poly1305 tag", since=mark)
    check = server.ssh("lastlog -n 1")  # the server goes on serving
    assert check.returncode == 0 and check.stdout == server.tail(server.data.syslog, 1)
