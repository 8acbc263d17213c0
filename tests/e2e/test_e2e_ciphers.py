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
