"""Attacks on the first key exchange's end now that EXT_INFO leaves with the key-exchange reply
(RFC 8308 2.4), and on the end of later ones: messages between our NEWKEYS and the client's,
ext-info-c where it means nothing, deleted packets, sequence numbers under every cipher and MAC,
and output held behind a rekey whose flush starts the next one."""

from __future__ import annotations

from pathlib import Path

from support.keys import ed25519_key
from support.scripted import ScriptedClient, scripted
from support.sshclient import Connection
from support.world import World, make_world
from twisted.conch.ssh import transport
from twisted.logger import capturedLogs

from conchcmd.server.transport import KEX_TIMEOUT

SUCCESS = 52


class Holding(ScriptedClient):
    """A client that can hold back the server's KEXINIT (and so never finish its key exchange)."""

    hold = False
    held: list[bytes]

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        if self.hold and messageNum == transport.MSG_KEXINIT:
            self.held.append(payload)
            return
        super().dispatchMessage(messageNum, payload)

    def release(self, then_hold: bool = False) -> None:
        held, self.held, self.hold = self.held, [], then_hold
        for payload in held:
            ScriptedClient.dispatchMessage(self, transport.MSG_KEXINIT, payload)


def holding(w: World) -> tuple[Connection, Holding]:
    factory = scripted()
    factory.protocol = Holding  # type: ignore[assignment]
    conn = w.connect(client=factory)
    client = conn.client
    assert isinstance(client, Holding)
    client.held = []
    assert conn.login(b"admin", ed25519_key()) == SUCCESS
    return conn, client


def test_a_rekey_started_by_the_flush_of_held_output_still_has_a_time_limit(tmp_path: Path) -> None:
    """Output held behind a rekey goes out at the client's NEWKEYS; if it passes the traffic
    limit, the flush itself starts the next rekey. That one must end within KEX_TIMEOUT too: the
    timer of the rekey just finished was still set while the flush ran, so the new one got none,
    and a client that never answered its KEXINIT kept the connection and its held output."""
    text = b"".join(b"%06d %s\n" % (i, b"y" * 300) for i in range(3000))  # ~0.9 MB
    w = make_world(tmp_path, log_text=text)
    conn, client = holding(w)
    chan = conn.open_session(window=64 * 1024 * 1024)
    client.hold = True
    conn.server.sendKexInit()  # rekey 1: the client does not answer yet
    conn.flush()
    conn.exec(chan, b"lastlog -n 3000")
    conn.flush()
    assert bytes(chan.out) == b"" and len(conn.server.held_messages()) > 10
    conn.server.rekey_bytes = 64 * 1024  # the flush passes the traffic limit
    client.release(then_hold=True)  # rekey 1 ends; the client holds the KEXINIT of rekey 2
    conn.flush()
    assert conn.server.kex_count == 2 and not conn.server.kex_idle()  # rekey 2 started by the flush
    with capturedLogs():
        w.clock.advance(KEX_TIMEOUT + 1)
        conn.flush()
    assert conn.factory.disconnect_reason == (transport.DISCONNECT_KEY_EXCHANGE_FAILED, b"key exchange timed out")
