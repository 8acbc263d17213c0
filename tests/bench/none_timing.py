#!/usr/bin/env python3
"""How long the server takes to answer OpenSSH's first userauth request (method `none`), by kind
of user name: one with an authorized_keys file, one configured (`[users.NAME]`) without a file,
and an unknown name. If the answers differ, a client that times them over many connections can
tell which names have keys (an account-probing oracle; sshd's answer to `none` does not read
authorized_keys).

Starts `python -m conchcmd serve` from a source tree (`--tree`, default this repository) on
127.0.0.1, then per round opens one connection per kind (interleaved, from 127.0.0.2-4 in turn),
completes the key exchange and the ssh-userauth service request, and times the `none` request's
round trip on the client (send to USERAUTH_FAILURE read, perf_counter). Prints the median and
the 25th/75th percentiles per kind and the medians' gap to the unknown name's.

`--then password`: times instead a password request sent after that `none` has been answered
(password logins are not offered here, so it is refused at once, without passwordDelay: its
answer must not wait for the name's authorized_keys either).

Not part of the pytest run: `python tests/bench/none_timing.py [--tree /work/main] [--rounds 400]
[--then password]`.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for support
from support.keys import authorized_line, ecdsa_key, ed25519_key, rsa_key
from support.rawssh import SocketTransport
from support.serverfiles import toml_text
from support.sshclient import AuthClient, ClientFactory, password_data
from support.tempdirs import trusted_temp_parent
from twisted.conch.ssh import userauth

REPO = Path(__file__).resolve().parents[2]
LISTENING = re.compile(rb"conchcmd: listening on .* \(127\.0\.0\.1:(\d+)\)")
KINDS = {"keys": b"admin", "configured": b"bob", "unknown": b"nobody"}


def start(root: Path, tree: Path) -> tuple[subprocess.Popen[bytes], int]:
    users = root / "keys" / "authorized_keys"
    users.mkdir(parents=True)
    admin = users / "admin"
    admin.write_text("".join(authorized_line(k) for k in (ed25519_key(), rsa_key(), ecdsa_key())))
    admin.chmod(0o600)
    config = root / "conchcmd.toml"
    settings = {
        "listen": ["tcp:0:interface=127.0.0.1"],
        "host_keys_dir": "keys",
        "authorized_keys": "keys/authorized_keys/%u",
        "audit_log": "audit.jsonl",
        "penalty_seconds": 0,
        "comphash": {"roots": [str(root)]},
        "users": {"bob": {"commands": ["help"]}},
    }
    config.write_text(toml_text(settings))
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONUNBUFFERED="1")
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "conchcmd", "serve", "--config", str(config)],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not (m := LISTENING.search((root / "server.log").read_bytes())):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the server did not start:\n" + (root / "server.log").read_text())
        time.sleep(0.05)
    return proc, int(m.group(1))


def pump_until(sock: socket.socket, client: Any, done: Callable[[], bool]) -> None:
    while not done():
        data = sock.recv(65536)
        if not data:
            raise SystemExit("the server closed the connection")
        client.dataReceived(data)


def time_none(port: int, user: bytes, source: str, then: bytes | None = None) -> float:
    """Seconds from sending the first `none` request as `user` to reading its answer (`then`:
    from sending a request of that method, after the `none` answer, to reading its answer)."""
    from twisted.internet import reactor

    factory = ClientFactory()
    factory.clock = reactor  # type: ignore[assignment]
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        client = factory.buildProtocol(None)
        client.factory = factory
        client.makeConnection(SocketTransport(sock))
        pump_until(sock, client, lambda: factory.secure.called)
        auth = AuthClient(user, None)  # type: ignore[arg-type]
        client.requestService(auth)
        pump_until(sock, client, lambda: client.service is auth)
        if then is not None:
            auth.send_request(b"none", b"")
            pump_until(sock, client, lambda: bool(auth.replies))
        started = time.perf_counter()
        if then is None:
            auth.send_request(b"none", b"")
        else:
            auth.send_request(then, password_data(b"guess") if then == b"password" else b"")
        answers = 1 if then is None else 2
        pump_until(sock, client, lambda: len(auth.replies) == answers)
        elapsed = time.perf_counter() - started
        assert auth.replies[-1][0] == userauth.MSG_USERAUTH_FAILURE, auth.replies
        return elapsed
    finally:
        sock.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=REPO, help="the conchcmd source tree to run the server from")
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--then", help="time a request of this method after the none (e.g. password)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="none-timing-", dir=trusted_temp_parent()) as tmp:
        proc, port = start(Path(tmp), args.tree)
        try:
            times: dict[str, list[float]] = {kind: [] for kind in KINDS}
            for i in range(args.rounds + 20):
                order = list(KINDS.items())
                order = order[i % 3 :] + order[: i % 3]  # each kind first in turn
                for n, (kind, user) in enumerate(order):
                    then = args.then.encode() if args.then else None
                    elapsed = time_none(port, user, f"127.0.0.{2 + n}", then)
                    if i >= 20:  # warm-up rounds dropped
                        times[kind].append(elapsed)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    base = statistics.median(times["unknown"])
    what = f"{args.then} after none" if args.then else "none"
    print(f"tree {args.tree}, {args.rounds} connections per kind; {what} round trip in microseconds")
    for kind, values in times.items():
        q = statistics.quantiles(values, n=4)
        median = statistics.median(values)
        print(
            f"  {kind:10} ({KINDS[kind].decode():6}) median {median * 1e6:7.1f}  "
            f"p25 {q[0] * 1e6:7.1f}  p75 {q[2] * 1e6:7.1f}  gap to unknown {(median - base) * 1e6:+6.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
