"""The host key's signature of every key exchange, checked by the OpenSSH client against the key
in its known_hosts file: the Ed25519 host key signs through libsodium (wire/hostkeys.py), an RSA
one through Conch (rsa-sha2-256 and rsa-sha2-512); RekeyLimit makes the client rekey several
times within one session, and each rekey is signed again."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.server import stop_and_check

from conchcmd.wire.hostkeys import generate_host_key


@pytest.fixture(scope="module")
def two_key_server(
    server_class: Any, client_keys: Any, data: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    base = tmp_path_factory.mktemp("two-host-keys")
    keys = base / "keys"
    keys.mkdir(mode=0o700)
    generate_host_key(keys / "ssh_host_ed25519_key", "ed25519")
    generate_host_key(keys / "ssh_host_rsa_key", "rsa")
    server = server_class(base, client_keys, data)
    server.start()
    try:
        yield server
    finally:
        stop_and_check(server)


def known_hosts(server: Any, path: Path) -> Path:
    lines = []
    for name in ("ssh_host_ed25519_key.pub", "ssh_host_rsa_key.pub"):
        kind, blob = (server.host_keys_dir / name).read_text().split()[:2]
        lines.append(f"[127.0.0.1]:{server.port} {kind} {blob}\n")
    path.write_text("".join(lines))
    return path


@pytest.mark.parametrize("algorithm", ["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"])
def test_each_host_key_signature_is_verified_by_openssh_at_every_rekey(
    two_key_server: Any, tmp_path: Path, algorithm: str
) -> None:
    known = known_hosts(two_key_server, tmp_path / "known_hosts")
    r = two_key_server.ssh(
        "lastlog -n 3000",
        options=[
            *("-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}"),
            *("-o", f"HostKeyAlgorithms={algorithm}", "-o", "RekeyLimit=64K"),
            "-vv",
        ],
        log_level="DEBUG2",
        timeout=60,
    )
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 0, err[-3000:]
    assert f"debug1: kex: host key algorithm: {algorithm}" in err
    assert "Host key verification failed" not in err
    # Each key exchange's signature is checked (ssh_dispatch verifies it before SSH2_MSG_NEWKEYS).
    assert len(re.findall(r"SSH2_MSG_NEWKEYS received", err)) >= 3, "fewer than two rekeys"
