"""The dispatch policy against the oracle: the same cells as tests/inmemory/test_dispatch_policy.py
(phase x message type, exact bytes from the project's test client) sent to a real sshd started
on loopback, and the outcome class it gives (disconnect with its reason code, UNIMPLEMENTED for
that packet, or no refusal) compared with what conchcmd's table says.

Cells where conchcmd deliberately differs are listed in DIFFERS_FROM_SSHD (in the in-memory test)
with the reason, and must differ. Every cell runs by default (211 cells, about 45 s here: sshd
forks per connection, and an ignored message is known only after a quiet wait);
CONCHCMD_ORACLE=sample runs 12, one per phase and outcome class, for a quick local run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.dispatchprobe import (
    DIFFERS_FROM_SSHD,
    PROBES,
    SSHD_VERSION_DEPENDENT,
    Dial,
    Probe,
    client,
    expected_outcome,
    in_memory,
    outcome,
    run,
)
from support.e2e import free_port
from support.keys import authorized_line, ed25519_key
from support.rawssh import dial
from support.sshclient import ClientFactory, Connection
from support.world import make_world
from twisted.logger import capturedLogs

from conchcmd.wire.dispatch import Action, Phase, decide

SSHD = "/usr/sbin/sshd"
ALL = os.environ.get("CONCHCMD_ORACLE", "all") != "sample"
REKEY_QUIET = 0.5  # seconds of silence that end a rekey cell
#: The default run's sample: one cell per phase and outcome class.
SAMPLE = {
    (Phase.BEFORE_KEX, 5, False),
    (Phase.BEFORE_KEX, 50, False),
    (Phase.KEX_METHOD, 2, True),
    (Phase.KEX_METHOD, 25, False),
    (Phase.KEX_NEWKEYS, 90, False),
    (Phase.UNSERVICED, 50, False),
    (Phase.AUTHENTICATING, 90, False),
    (Phase.AUTHENTICATED, 5, False),
    (Phase.AUTHENTICATED, 50, False),
    (Phase.AUTHENTICATED, 90, False),
    (Phase.REKEY_METHOD, 90, False),
    (Phase.REKEY_NEWKEYS, 30, False),
}


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A real sshd on loopback that lets root in with the test key; yields its port."""
    if not Path(SSHD).exists() or shutil.which("ssh-keygen") is None:
        pytest.skip("openssh-server is not installed")
    d = tmp_path_factory.mktemp("sshd")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host")], check=True, timeout=30)
    (d / "authorized_keys").write_text(authorized_line(ed25519_key()))
    port = free_port()
    (d / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {d / 'host'}\nPidFile none\nUsePAM no\n"
        f"PermitRootLogin prohibit-password\nAuthorizedKeysFile {d / 'authorized_keys'}\nStrictModes no\n"
        "MaxStartups 100:30:200\nLoginGraceTime 30\nLogLevel ERROR\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    log = open(d / "sshd.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"sshd did not start: {(d / 'sshd.log').read_text()}")
            time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(10)
    log.close()


def cells() -> list[object]:
    out = []
    for phase in Phase:
        if phase is Phase.CLOSED:
            continue
        for message in PROBES:
            if (phase, message) in SSHD_VERSION_DEPENDENT:
                continue
            for strict in (False, True) if phase in (Phase.KEX_METHOD, Phase.KEX_NEWKEYS) else (False,):
                if not ALL and (phase, message, strict) not in SAMPLE:
                    continue
                if decide(phase, message, strict).action is Action.PROCESS and message in (20, 21, 30):
                    continue
                name = f"{phase.name}-{message}-{'strict' if strict else 'plain'}"
                out.append(pytest.param(phase, message, strict, id=name))
    return out


def sshd_dial(port: int) -> Dial:
    def connect(factory: ClientFactory) -> Connection:
        return dial(port, factory)

    return connect


@pytest.mark.parametrize(("phase", "message", "strict"), cells())
def test_the_cell_agrees_with_sshd(sshd: int, phase: Phase, message: int, strict: bool) -> None:
    with capturedLogs():
        conn, sent = run(sshd_dial(sshd), phase, message, strict, user=b"root")
    try:
        assert sent.seq is not None, "the probe was never sent"
        if phase in (Phase.REKEY_METHOD, Phase.REKEY_NEWKEYS):
            # sshd answers a rekey with a key exchange first: on a loaded machine its answer to the
            # probe can come later than the 0.1 s quiet wait, which then reads as "no refusal"
            conn.pump.flush(quiet=REKEY_QUIET)
        theirs = outcome(conn, sent)
    finally:
        conn.client.transport.loseConnection()
    ours = expected_outcome(phase, message, strict)
    # sshd often closes without sending its DISCONNECT (dispatch.c: sshpkt_disconnect, then the
    # fatal exit before the packet is written): a close counts as a disconnect with any code.
    agree = theirs == ours or (theirs == (Action.DISCONNECT, 0) and ours[0] is Action.DISCONNECT)
    if (phase, message, strict) in DIFFERS_FROM_SSHD:
        assert not agree, f"listed as a difference but sshd agrees: {DIFFERS_FROM_SSHD[phase, message, strict]}"
    else:
        assert agree, (theirs, ours)


class NoExtInfoProbe(Probe):
    """A client whose KEXINIT does not ask for EXT_INFO (no ext-info-c)."""

    def kex_markers(self) -> list[bytes]:
        return [m for m in super().kex_markers() if m != b"ext-info-c"]


@pytest.mark.parametrize("ext_info", [True, False])
@pytest.mark.parametrize("strict", [True, False])
def test_the_key_exchange_reply_s_flight_and_ext_info_are_sshd_s(
    sshd: int, tmp_path: Path, strict: bool, ext_info: bool
) -> None:
    """EXT_INFO in the key-exchange reply's flight: what sshd sends there, and nowhere else (not
    in a rekey, not without ext-info-c), conchcmd sends; the client reads both under the new keys."""

    def session(dial: Dial, user: bytes, real: bool) -> tuple[list[int], dict[bytes, bytes]]:
        factory = client(strict)
        if not ext_info:
            factory.protocol = NoExtInfoProbe  # type: ignore[assignment]
        conn = dial(factory)
        try:
            first = [m for m, _ in conn.client.received]  # type: ignore[attr-defined]
            assert conn.login(user, ed25519_key()) == 52
            conn.client.sendKexInit()  # a rekey: no EXT_INFO again
            if real:  # sshd's rekey answer may take longer than the default quiet wait
                conn.pump.flush(quiet=REKEY_QUIET)  # type: ignore[call-arg]
            else:
                conn.flush()
            everything = [m for m, _ in conn.client.received]  # type: ignore[attr-defined]
            assert conn.client.kex_count == 2 and everything.count(21) == 2
            return [*first, everything.count(7)], dict(conn.client.peerExtensions)
        finally:
            conn.client.transport.loseConnection()

    with capturedLogs():
        theirs, their_extensions = session(sshd_dial(sshd), b"root", True)
        ours, our_extensions = session(in_memory(make_world(tmp_path)), b"admin", False)
    assert ours == theirs == ([20, 31, 21, 7, 1] if ext_info else [20, 31, 21, 0])
    assert (b"server-sig-algs" in our_extensions) is (b"server-sig-algs" in their_extensions) is ext_info
