"""What an idle authenticated connection keeps between key exchanges (issue 14, capacity at
scale: 10,000 idle sessions within 16 KiB each)."""

from __future__ import annotations

import pytest
from support.sshclient import Connection
from support.world import World


def lastlog_works(conn: Connection) -> bool:
    chan = conn.open_session()
    conn.exec(chan, b"lastlog -n 1")
    conn.flush()
    return (chan.exit_status, bytes(chan.out)) == (0, b"line 20\n")


@pytest.mark.parametrize("who", ["client", "server"])
def test_kexinit_payloads_are_dropped_after_each_key_exchange(world: World, who: str) -> None:
    """Both KEXINIT payloads (2-3 KiB: a client's lists every algorithm it knows) serve only the
    exchange hash; Conch kept them for the connection's life. Rekeys started by either side still
    complete, and the connection works after each."""
    conn = world.login()
    server = conn.server
    assert (server.ourKexInitPayload, server.otherKexInitPayload) == (b"", b"")
    for n in (2, 3):
        (conn.client if who == "client" else server).sendKexInit()
        conn.flush()
        assert server.kex_count == n and not conn.disconnected
        assert (server.ourKexInitPayload, server.otherKexInitPayload) == (b"", b"")
        assert lastlog_works(conn)
