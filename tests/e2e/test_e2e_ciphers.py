"""The modern transport against the real OpenSSH client: every cipher and MAC, rekeying, strict
KEX, and ssh-audit's verdict."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

AEAD_CIPHERS = ["chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com", "aes128-gcm@openssh.com"]
CTR_CIPHERS = ["aes256-ctr", "aes192-ctr", "aes128-ctr"]
ETM_MACS = ["hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com"]


def _bulk(server, options):
    """`lastlog -n 10000` (several MB) with OpenSSH rekeying every MiB; returns (stdout, stderr)."""
    r = server.ssh(
        "lastlog -n 10000", options=[*options, "-o", "RekeyLimit=1M", "-vv"], log_level="DEBUG2", timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]
    expected = server.tail(server.data.syslog, 10000)
    assert len(expected) > 4 * 1024 * 1024
    assert r.stdout == expected
    return r.stderr.decode(errors="replace")


@pytest.mark.parametrize("cipher", AEAD_CIPHERS + CTR_CIPHERS)
def test_each_cipher_with_rekeying(server, cipher):
    err = _bulk(server, ["-c", cipher])
    assert f"kex: server->client cipher: {cipher}" in err
    assert err.count("SSH2_MSG_NEWKEYS received") >= 4  # the initial kex and at least three rekeys


@pytest.mark.parametrize("kex", ["curve25519-sha256", "curve25519-sha256@libssh.org"])  # OpenSSH 9.2's of ours
def test_each_key_exchange_with_ext_info_and_rekeying(server, kex):
    """EXT_INFO leaves with the key-exchange reply (RFC 8308 2.4): OpenSSH takes it under the new
    keys (strict KEX: sequence number 0), once, and rekeys after it as before."""
    err = _bulk(server, ["-o", f"KexAlgorithms={kex}"])
    assert f"kex: algorithm: {kex}" in err
    assert "kex-strict-c-v00@openssh.com" in err and "kex-strict-s-v00@openssh.com" in err  # both: strict
    assert err.count("kex_input_ext_info: server-sig-algs=<") == 1
    assert err.count("SSH2_MSG_NEWKEYS received") >= 4


@pytest.mark.parametrize("mac", ETM_MACS)
def test_each_etm_mac_with_rekeying(server, mac):
    err = _bulk(server, ["-c", "aes128-ctr", "-m", mac])
    assert f"kex: server->client cipher: aes128-ctr MAC: {mac}" in err
    assert err.count("SSH2_MSG_NEWKEYS received") >= 4


def _packet(payload: bytes) -> bytes:
    """An unencrypted SSH packet (before the first NEWKEYS), padded to 8 bytes."""
    padding = 8 - (5 + len(payload)) % 8
    if padding < 4:
        padding += 8
    return struct.pack(">LB", 1 + len(payload) + padding, padding) + payload + bytes(padding)


def _name_list(*names: bytes) -> bytes:
    joined = b",".join(names)
    return struct.pack(">L", len(joined)) + joined


def _kexinit(strict: bool) -> bytes:
    kex = [b"curve25519-sha256", b"ext-info-c", *([b"kex-strict-c-v00@openssh.com"] if strict else [])]
    return (
        b"\x14"
        + os.urandom(16)
        + _name_list(*kex)
        + _name_list(b"ssh-ed25519")
        + _name_list(b"aes128-ctr") * 2
        + _name_list(b"hmac-sha2-256-etm@openssh.com") * 2
        + _name_list(b"none") * 2
        + _name_list() * 2
        + b"\0\0\0\0\0"
    )


def _talk(server, strict: bool) -> bytes:
    """Version, KEXINIT, then an SSH_MSG_IGNORE in the middle of the key exchange."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"SSH-2.0-terrapin_probe\r\n" + _packet(_kexinit(strict)) + _packet(b"\x02" + _name_list(b"x")))
        received = b""
        try:
            while len(received) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                received += chunk
        except TimeoutError:
            pass
    return received


def test_strict_kex_disconnects_on_a_message_injected_during_kex(server):
    received = _talk(server, strict=True)
    assert b"strict KEX violation: message 2 during the initial key exchange" in received
    server.wait_log(r"Lost client connection 127\.0\.0\.1:\d+ \(not authenticated\): strict KEX violation")


def test_ssh_audit_finds_no_failure_and_only_the_post_quantum_warning(server):
    tool = shutil.which("ssh-audit", path=str(Path(sys.executable).parent)) or shutil.which("ssh-audit")
    if tool is None:
        pytest.skip("ssh-audit is not installed (it is in the test extra)")
    r = subprocess.run(
        [tool, "-jj", "--skip-rate-test", "-p", str(server.port), "127.0.0.1"], capture_output=True, timeout=60
    )
    report = json.loads(r.stdout)
    failures, warnings = [], []
    for kind in ("kex", "key", "enc", "mac"):
        for entry in report[kind]:
            notes = entry.get("notes", {})
            failures += [(entry["algorithm"], n) for n in notes.get("fail", [])]
            warnings += [(entry["algorithm"], n) for n in notes.get("warn", [])]
    assert failures == []
    assert {name for name, _ in warnings} <= {"curve25519-sha256", "curve25519-sha256@libssh.org"}
    assert all("post-quantum" in note for _, note in warnings), warnings
    assert report["cves"] == [] and report["recommendations"] == {}
    assert report["banner"]["software"] == "conchcmd"


# A second strict-KEX client besides OpenSSH (whose 9.2 has it only as Debian's backport): asyncssh
# rekeys after `rekey_bytes` it has sent, and counts its key exchanges here by wrapping _send_kexinit.
STRICT_REKEYING_CLIENT = """
import asyncio, sys
import asyncssh
from asyncssh.connection import SSHConnection

key, port, source, cipher, mac = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
exchanges = 0
send_kexinit = SSHConnection._send_kexinit

def counting(self):
    global exchanges
    exchanges += 1
    return send_kexinit(self)

SSHConnection._send_kexinit = counting

async def main():
    async with asyncssh.connect(
        "127.0.0.1", port, username="alice", client_keys=[key], known_hosts=None, local_addr=(source, 0),
        agent_path=None, connect_timeout=10, encryption_algs=[cipher], mac_algs=[mac], rekey_bytes=32 * 1024,
    ) as conn:
        strict = conn._strict_kex
        result = await conn.run(input=b"\\n" * 256 * 1024 + b"lastlog -n 3000\\nexit 7\\n", encoding=None)
    sys.stdout.buffer.write(result.stdout)
    print(f"strict={strict} exchanges={exchanges} status={result.exit_status}", file=sys.stderr)

asyncio.run(main())
"""


@pytest.mark.parametrize(
    ("cipher", "mac"),
    [
        ("chacha20-poly1305@openssh.com", "hmac-sha2-256-etm@openssh.com"),  # the MAC is chacha20's own
        ("aes128-ctr", "hmac-sha2-512-etm@openssh.com"),
    ],  # not GCM: its nonce counts on its own, so the sequence numbers cannot show there
)
def test_strict_kex_sequence_numbers_restart_at_every_rekey_with_asyncssh(server, tmp_path, cipher, mac):
    """Strict KEX restarts the sequence numbers after every NEWKEYS, rekeys included; a server that
    restarted them only after the first exchange would break the MAC at the client's first rekey."""
    pytest.importorskip("asyncssh")
    script = tmp_path / "client.py"
    script.write_text(STRICT_REKEYING_CLIENT)
    r = subprocess.run(
        [sys.executable, script, server.keys.ed25519, str(server.port), "127.0.0.1", cipher, mac],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
    )
    assert r.stderr.decode().splitlines()[-1:] != [] and r.returncode == 0, r.stderr.decode()[-3000:]
    summary = dict(word.split("=") for word in r.stderr.decode().split()[-3:])
    assert summary["strict"] == "True" and summary["status"] == "7"
    assert int(summary["exchanges"]) >= 5  # the initial exchange and at least four rekeys
    assert r.stdout == server.tail(server.data.syslog, 3000)
