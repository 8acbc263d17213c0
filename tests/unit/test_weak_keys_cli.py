"""What an operator sees of an Ed25519 key of small order (anyone can sign for it) in a key line:
`conchcmd users` shows the line refused with the reason, `conchcmd doctor` lists it (and a
trusted CA of small order) as a problem, `conchcmd adduser` warns, and `deluser` takes it out by its fingerprint."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from support import edwards
from support.edwards import ED25519, SK_ED25519, SmallOrderKey
from twisted.conch.ssh.common import NS

from conchcmd.edge.cli import main
from conchcmd.policy.authorized_keys import fingerprint

WHY = "Ed25519 key of small order: anyone can sign for it"
TORSION = edwards.torsion_points()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keys" / "authorized_keys").mkdir(parents=True, mode=0o700)
    return tmp_path


def weak_blob(index: int, key_type: bytes = ED25519) -> bytes:
    point = TORSION[index]
    return SmallOrderKey(edwards.encode(point), point, key_type=key_type).key_blob()


def honest_blob() -> bytes:
    return NS(ED25519) + NS(ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw())


def line(blob: bytes, options: str = "") -> str:
    kind = blob[4 : 4 + int.from_bytes(blob[:4], "big")]
    return " ".join(x for x in (options, kind.decode(), base64.b64encode(blob).decode()) if x) + "\n"


def run(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    status = main(list(args), out=out)
    return status, out.getvalue()


def write_user(workdir: Path, name: str, text: str) -> Path:
    path = workdir / "keys" / "authorized_keys" / name
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("key_type", [ED25519, SK_ED25519])
def test_users_shows_the_line_refused_with_the_reason(workdir: Path, key_type: bytes) -> None:
    weak = weak_blob(1, key_type)
    write_user(workdir, "alice", line(weak) + line(honest_blob()) + line(weak_blob(2), "cert-authority"))
    status, text = run("users")
    assert status == 0
    (first,) = [row for row in text.splitlines() if row.startswith("    line 1: ")]
    assert first.startswith(f"    line 1: {key_type.decode()} {fingerprint(weak)}")
    assert first.endswith(f": REFUSED: {WHY}")
    assert (
        f"    line 3: ssh-ed25519 {fingerprint(weak_blob(2))} options cert-authority: REFUSED: CA key: {WHY}\n" in text
    )
    status, text = run("users", "--json")
    (user,) = json.loads(text)["users"]
    assert [(k["line"], k["usable"], k["refused"]) for k in user["keys"]] == [
        (1, False, WHY),
        (2, True, None),
        (3, False, f"CA key: {WHY}"),
    ]


def test_doctor_lists_the_line_as_a_problem(workdir: Path) -> None:
    path = write_user(workdir, "alice", line(honest_blob()) + line(weak_blob(4)))
    status, text = run("doctor")
    assert status == 1
    assert f"problem  {path}:2: line refused: {WHY}\n" in text
    assert "user alice: 1 usable key line(s)" in text


def test_doctor_lists_a_trusted_ca_of_small_order(workdir: Path) -> None:
    write_user(workdir, "alice", line(honest_blob()))
    trusted = workdir / "trusted"
    trusted.write_text(line(weak_blob(0)) + line(honest_blob()))
    trusted.chmod(0o600)
    (workdir / "conchcmd.toml").write_text(f'trusted_user_ca_keys = "{trusted}"\n')
    status, text = run("doctor")
    assert status == 1
    assert f"problem  trusted_user_ca_keys {trusted}:1: CA key refused: {WHY}\n" in text
    assert "trusted_user_ca_keys: 1 CA key(s)" in text


def test_adduser_warns_that_login_refuses_the_key(workdir: Path) -> None:
    pub = workdir / "weak.pub"
    pub.write_text(line(weak_blob(3)))
    status, text = run("adduser", "alice", str(pub))
    assert status == 0
    assert text.endswith(f"warning: login refuses this key: {WHY}\n")
    status, text = run("deluser", "alice", fingerprint(weak_blob(3)))
    assert status == 0 and f"alice: removed ssh-ed25519 key {fingerprint(weak_blob(3))} (line 1)" in text
    assert (workdir / "keys" / "authorized_keys" / "alice").read_text() == ""
