"""The software authenticator against OpenSSH itself: `ssh-keygen -Y check-novalidate` verifies
its signatures as a token's (so the tests that log in with it test the real construction), and
`ssh-keygen -s` certifies its public keys with an ordinary CA key."""

from __future__ import annotations

import base64
import hashlib
import struct
import subprocess
from pathlib import Path

import pytest
from support.skauth import UP, UV, SoftwareAuthenticator, ssh_keygen_certificate
from twisted.conch.ssh.common import NS


def sshsig(token: SoftwareAuthenticator, message: bytes, **kw: object) -> str:
    """An SSHSIG (ssh-keygen -Y sign) armoured signature of `message` made by the token."""
    hashed = hashlib.sha512(message).digest()
    signature = token.sign(b"SSHSIG" + NS(b"file") + NS(b"") + NS(b"sha512") + NS(hashed), **kw)
    blob = b"SSHSIG" + struct.pack(">L", 1) + NS(token.blob()) + NS(b"file") + NS(b"") + NS(b"sha512") + NS(signature)
    text = base64.b64encode(blob).decode()
    lines = "\n".join(text[i : i + 70] for i in range(0, len(text), 70))
    return f"-----BEGIN SSH SIGNATURE-----\n{lines}\n-----END SSH SIGNATURE-----\n"


def openssh_verifies(tmp_path: Path, armoured: str, message: bytes) -> subprocess.CompletedProcess[bytes]:
    (tmp_path / "sig").write_text(armoured)
    args = ["ssh-keygen", "-Y", "check-novalidate", "-n", "file", "-s", str(tmp_path / "sig")]
    return subprocess.run(args, input=message, capture_output=True, timeout=30)


@pytest.mark.parametrize(("kind", "shown"), [("ed25519", b"ED25519-SK"), ("ecdsa", b"ECDSA-SK")])
def test_openssh_accepts_the_software_tokens_signatures(tmp_path: Path, kind: str, shown: bytes) -> None:
    token = SoftwareAuthenticator.generate(kind)
    (tmp_path / "k.pub").write_text(token.public_line(comment="t"))
    listed = subprocess.run(["ssh-keygen", "-l", "-f", str(tmp_path / "k.pub")], capture_output=True, check=True)
    assert listed.stdout.rstrip().endswith(b"(" + shown + b")")
    for flags in (0, UP, UP | UV):
        result = openssh_verifies(tmp_path, sshsig(token, b"hello", flags=flags, counter=9), b"hello")
        assert result.returncode == 0 and b"Good" in result.stdout, result
    wrong_app = openssh_verifies(tmp_path, sshsig(token, b"hello", application=b"ssh:other"), b"hello")
    assert wrong_app.returncode != 0
    assert openssh_verifies(tmp_path, sshsig(token, b"hello"), b"hellO").returncode != 0


def test_ssh_keygen_certifies_an_sk_key_with_an_ordinary_ca(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ca)], check=True, timeout=30)
    token = SoftwareAuthenticator.generate("ecdsa")
    blob = ssh_keygen_certificate(token, ca, tmp_path / "w", principals=["alice"], options=("no-touch-required",))
    certified = token.with_certificate(blob)
    assert certified.sshType() == b"sk-ecdsa-sha2-nistp256-cert-v01@openssh.com"
    assert certified.blob() == blob and certified.key_blob() == token.key_blob()
    shown = subprocess.run(["ssh-keygen", "-L", "-f", "-"], input=certified.public_line().encode(), capture_output=True)
    assert b"Type: sk-ecdsa-sha2-nistp256-cert-v01@openssh.com user certificate" in shown.stdout
    assert b"no-touch-required" in shown.stdout and b"alice" in shown.stdout
