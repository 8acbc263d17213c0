"""A password-guessing client that pipelines: the attacker of issue 10, for the reliability test and
tests/bench/auth_load.py. Run as a script (it runs its own reactor):

    python tests/support/pipeliner.py --port PORT --source 127.0.0.10 --source 127.0.0.11 \\
        [--user NAME] [--burst 5] [--refill] [--seconds 3]

Each source opens a connection, completes key exchange with real crypto (the test client of
support.sshclient), and sends `--burst` password requests back to back without waiting for
answers; with `--refill` it sends another one for each failure that comes back, keeping its pipe
full. With `--seconds`, a source whose connection is cut reconnects (after 0.2 s) until the time is
up; without, each source makes one connection. Prints one JSON object per connection on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for `support`

from twisted.conch.ssh import userauth
from twisted.python.failure import Failure

from support.sshclient import AuthClient, ClientConnection, ClientFactory, password_data

RECONNECT_AFTER = 0.2
GIVE_UP_AFTER = 30.0  # seconds: no connection is left hanging whatever the server does


class Guesser(AuthClient):
    """Sends wrong passwords back to back; counts what comes back."""

    def __init__(self, user: bytes, burst: int, refill: bool, record: dict[str, Any]):
        super().__init__(user, ClientConnection())
        self.burst = burst
        self.refill = refill
        self.record = record

    def serviceStarted(self) -> None:
        for _ in range(self.burst):
            self.guess()

    def guess(self) -> None:
        self.record["sent"] += 1
        self.send_request(b"password", password_data(b"wrong guess %d" % self.record["sent"]))

    def packetReceived(self, messageNum: int, packet: bytes) -> None:
        super().packetReceived(messageNum, packet)
        if messageNum == userauth.MSG_USERAUTH_FAILURE:
            self.record["failures"] += 1
            if self.refill:
                self.guess()
        elif messageNum == userauth.MSG_USERAUTH_SUCCESS:
            self.record["successes"] += 1


class Attempt(ClientFactory):
    """One connection from one source; reports when it ends."""

    def __init__(self, source: str, args: argparse.Namespace, done: Any, clock: Any):
        super().__init__(clock)
        self.source = source
        self.done = done
        self.record: dict[str, Any] = {
            "source": source,
            "secure": False,
            "sent": 0,
            "failures": 0,
            "successes": 0,
            "disconnect": None,
        }
        self.secure.addCallback(self._secure, args)

    def _secure(self, client: Any, args: argparse.Namespace) -> None:
        self.record["secure"] = True
        client.requestService(Guesser(args.user.encode(), args.burst, args.refill, self.record))

    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
        if self.disconnect_reason is not None:
            self.record["disconnect"] = self.disconnect_reason[1].decode("utf-8", "replace")
        self.done(self)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.record["disconnect"] = f"connect failed: {reason.getErrorMessage()}"
        self.done(self)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--source", action="append", required=True, help="a local address to connect from")
    parser.add_argument("--user", default="carol")
    parser.add_argument("--burst", type=int, default=5)
    parser.add_argument("--refill", action="store_true")
    parser.add_argument("--seconds", type=float, default=0.0)
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    started = reactor.seconds()  # type: ignore[attr-defined]
    live: set[Attempt] = set()

    def dial(source: str) -> None:
        attempt = Attempt(source, args, ended, reactor)
        live.add(attempt)
        reactor.connectTCP(args.host, args.port, attempt, timeout=10, bindAddress=(source, 0))  # type: ignore[attr-defined]

    def ended(attempt: Attempt) -> None:
        if attempt not in live:
            return
        live.discard(attempt)
        print(json.dumps(attempt.record), flush=True)
        if args.seconds and reactor.seconds() - started < args.seconds:  # type: ignore[attr-defined]
            reactor.callLater(RECONNECT_AFTER, dial, attempt.source)  # type: ignore[attr-defined]
        elif not live:
            reactor.stop()  # type: ignore[attr-defined]

    for source in args.source:
        dial(source)
    reactor.callLater(GIVE_UP_AFTER + args.seconds, reactor.stop)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
