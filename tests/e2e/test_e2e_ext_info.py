"""EXT_INFO in the key-exchange reply's flight (RFC 8308 2.4) against asyncssh, a client that
reads it only once our NEWKEYS is in: its server-sig-algs is what lets asyncssh sign with an RSA
key at all (without it asyncssh signs with SHA-1 `ssh-rsa`, which the server refuses), under each
kind of cipher, with strict KEX and without, and with rekeys every 32 KiB after it, all by
mlkem768x25519-sha256 (asyncssh's first choice)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e

CLIENT = """
import asyncio, json, sys
import asyncssh
from asyncssh.connection import SSHConnection

key, port, cipher, mac, markers = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
seen = {"ext_info": 0, "kexinits": 0, "kex": []}
markers = [m.encode() for m in markers.split(",") if m]
strict = b"kex-strict-c-v00@openssh.com" in markers
SSHConnection._get_extra_kex_algs = lambda self: markers
handlers = SSHConnection._packet_handlers
ext_info, kexinit, send_kexinit = handlers[7], handlers[20], SSHConnection._send_kexinit

def reading(self, *args):
    seen["ext_info"] += 1
    return ext_info(self, *args)

async def negotiating(self, *args):
    await kexinit(self, *args)
    seen["kex"].append(self._kex.algorithm.decode())  # asyncssh prefers mlkem768x25519-sha256
    self._strict_kex = self._strict_kex and strict  # asyncssh takes the server's marker alone

def counting(self):
    seen["kexinits"] += 1
    return send_kexinit(self)

handlers[7], handlers[20], SSHConnection._send_kexinit = reading, negotiating, counting

async def main():
    try:
        async with asyncssh.connect(
            "127.0.0.1", port, username="alice", client_keys=[key], known_hosts=None, agent_path=None,
            connect_timeout=10, encryption_algs=[cipher], mac_algs=[mac], rekey_bytes=32 * 1024,
        ) as conn:
            seen["strict"] = conn._strict_kex
            seen["sig_algs"] = sorted(a.decode() for a in conn._server_sig_algs)
            # asyncssh rekeys after rekey_bytes it has sent: the shell gets 128 KiB of empty lines first
            result = await conn.run(input=b"\\n" * 128 * 1024 + b"lastlog -n 2000\\nexit 0\\n", encoding=None)
            seen["status"] = result.exit_status
            seen["out"] = result.stdout.decode()
    except asyncssh.PermissionDenied:
        seen["denied"] = True
    print(json.dumps(seen))

asyncio.run(main())
"""

SUITES = [
    ("chacha20-poly1305@openssh.com", "hmac-sha2-256-etm@openssh.com"),  # the MAC is chacha20's own
    ("aes256-gcm@openssh.com", "hmac-sha2-256-etm@openssh.com"),
    ("aes128-ctr", "hmac-sha2-512-etm@openssh.com"),
]


def run_client(server, tmp_path, key, cipher: str, mac: str, markers: str) -> dict:
    pytest.importorskip("asyncssh")
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    r = subprocess.run(
        [sys.executable, script, key, str(server.port), cipher, mac, markers],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    return json.loads(r.stdout.decode().splitlines()[-1])


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize(("cipher", "mac"), SUITES)
def test_asyncssh_reads_ext_info_and_signs_with_rsa_sha2_across_rekeys(server, tmp_path, cipher, mac, strict):
    markers = "ext-info-c,kex-strict-c-v00@openssh.com" if strict else "ext-info-c"
    seen = run_client(server, tmp_path, server.keys.rsa, cipher, mac, markers)
    assert seen.get("denied") is None, seen
    assert seen["strict"] is strict and seen["ext_info"] == 1
    assert "rsa-sha2-256" in seen["sig_algs"] and "ssh-rsa" not in seen["sig_algs"]
    assert seen["status"] == 0 and seen["out"].encode() == server.tail(server.data.syslog, 2000)
    assert seen["kexinits"] >= 3  # the initial exchange and rekeys after EXT_INFO
    # the hybrid post-quantum exchange (answered by the server's own mlkem_init), every time
    assert set(seen["kex"]) == {"mlkem768x25519-sha256"} and len(seen["kex"]) >= 3, seen["kex"]


def test_without_ext_info_c_asyncssh_gets_none_and_its_rsa_key_is_refused(server, tmp_path):
    """The control: no ext-info-c, no EXT_INFO; asyncssh then signs with SHA-1 `ssh-rsa`, refused.
    An ed25519 key needs no server-sig-algs and logs in over the same transport."""
    seen = run_client(server, tmp_path, server.keys.rsa, *SUITES[0], "kex-strict-c-v00@openssh.com")
    assert seen == {"ext_info": 0, "kexinits": 1, "kex": ["mlkem768x25519-sha256"], "denied": True}
    seen = run_client(server, tmp_path, server.keys.ed25519, *SUITES[0], "kex-strict-c-v00@openssh.com")
    assert seen["ext_info"] == 0 and seen["sig_algs"] == [] and seen["status"] == 0 and seen["strict"] is True
