"""conchcmd.keys.keyparse, and what an operator sees when a host key has a passphrase: `keygen`, `doctor`
and `serve` (its start-up, in process) name the file, say conchcmd needs an unencrypted key and how
to get one, and exit with a status instead of a traceback."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.keys import ecdsa_key, ed25519_key, write_encrypted_key
from twisted.conch.ssh.common import NS
from twisted.internet.task import Clock

from conchcmd.core.config import parse_config
from conchcmd.edge.cli import main
from conchcmd.edge.service import ConchcmdService, StartupError
from conchcmd.keys.keyfile import KeyField
from conchcmd.keys.keyparse import (
    EncryptedKeyFile,
    KeyParseError,
    KeyTypeMismatch,
    private_key_from_file,
    public_key_from_blob,
    public_key_from_line,
)
from conchcmd.wire.hostkeys import EncryptedHostKey, load_host_keys


def fix_for(path: Path) -> str:
    return f'`ssh-keygen -p -N "" -f {path}`'


# -- the helper ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"not a key blob",
        NS(b"ssh-foo") + NS(b"x"),  # an unknown type: Conch's BadKeyError
        NS(b"ssh-rsa"),  # short: struct.error
        NS(b"ecdsa-sha2-nistp256") + NS(b"nistp256") + NS(b"\x04" + b"\0" * 64),  # not on the curve: ValueError
        NS(b"ssh-ed25519") + NS(b"\0" * 5),  # a short ed25519 point
        b"(sexp)",
        b"{lsh}",
    ],
    ids=["empty", "text", "unknown-type", "short", "off-curve", "short-ed25519", "sexp", "lsh"],
)
def test_a_malformed_blob_is_one_key_parse_error(blob: bytes) -> None:
    with pytest.raises(KeyParseError):
        public_key_from_blob(blob)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=200)
    | st.builds(
        lambda t, rest: NS(t) + rest,
        st.sampled_from(
            [b"ssh-ed25519", b"ssh-rsa", b"ecdsa-sha2-nistp256", b"ssh-dss", b"sk-ssh-ed25519@openssh.com"]
        ),
        st.binary(max_size=120),
    )
)
def test_any_bytes_give_a_key_or_a_key_parse_error(blob: bytes) -> None:
    """What a client sends as its key: nothing but KeyParseError escapes, whatever Conch raises."""
    try:
        key = public_key_from_blob(blob)
    except KeyParseError:
        return
    assert key.isPublic()


def test_a_good_blob_reads_back() -> None:
    key = ed25519_key()
    assert public_key_from_blob(key.public().blob()) == key.public()


def test_a_line_whose_blob_is_another_type_is_a_mismatch() -> None:
    with pytest.raises(KeyTypeMismatch, match="key type ssh-ed25519 does not match the key"):
        public_key_from_line(KeyField("ssh-ed25519", ecdsa_key().public().blob(), 0))
    assert public_key_from_line(KeyField("ssh-ed25519", ed25519_key().public().blob(), 0)) == ed25519_key().public()


@pytest.mark.parametrize("pem", [False, True], ids=["openssh", "pem"])
def test_an_encrypted_private_key_says_so(tmp_path: Path, pem: bool) -> None:
    path = write_encrypted_key(tmp_path / "k", pem=pem)
    with pytest.raises(EncryptedKeyFile) as info:
        private_key_from_file(path.read_bytes(), str(path))
    assert str(info.value) == f"{path} is encrypted with a passphrase; conchcmd needs an unencrypted host key"
    assert fix_for(path) in info.value.fix


def test_garbage_private_key_is_a_key_parse_error_not_encrypted(tmp_path: Path) -> None:
    with pytest.raises(KeyParseError) as info:
        private_key_from_file(b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n", "k")
    assert not isinstance(info.value, EncryptedKeyFile)


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen is not installed")
@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa"])
def test_keys_ssh_keygen_encrypts_are_recognised(tmp_path: Path, kind: str) -> None:
    """The files an operator really has: `ssh-keygen -N`, in OpenSSH's own format."""
    path = tmp_path / "ssh_host_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "secret", "-f", str(path)], check=True, timeout=30, capture_output=True
    )
    with pytest.raises(EncryptedKeyFile):
        private_key_from_file(path.read_bytes(), str(path))


# -- the operator's commands ------------------------------------------------------------------------


@pytest.fixture
def encrypted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory whose keys directory holds an encrypted ed25519 host key."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conchcmd.toml").write_text('host_keys_dir = "keys"\naudit_log = "audit.jsonl"\n')
    return write_encrypted_key(tmp_path / "keys" / "ssh_host_ed25519_key")


def test_load_host_keys_names_the_encrypted_file(encrypted: Path) -> None:
    with pytest.raises(EncryptedHostKey) as info:
        load_host_keys(encrypted.parent)
    assert info.value.path == encrypted
    message = str(info.value)
    assert message.startswith(f"host key {encrypted} is encrypted with a passphrase; conchcmd needs an unencrypted key")
    assert fix_for(encrypted) in message


def test_keygen_says_the_host_key_is_encrypted(encrypted: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = encrypted.read_bytes()
    assert main(["keygen"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"conchcmd: host key {encrypted} is encrypted with a passphrase")
    assert fix_for(encrypted) in err
    assert encrypted.read_bytes() == before  # left alone


def test_doctor_says_the_host_key_is_encrypted(encrypted: Path) -> None:
    out = io.StringIO()
    assert main(["doctor"], out=out) == 1
    lines = out.getvalue().splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith(f"problem  host key {encrypted} is encrypted"))
    assert "serve refuses to start" in lines[i]
    assert "unencrypted host key" in lines[i]
    assert lines[i + 1].strip() == f"fix: remove the passphrase with {fix_for(encrypted)}, or move the file away"


def test_serve_start_up_refuses_an_encrypted_host_key(encrypted: Path) -> None:
    base = encrypted.parent.parent
    config = parse_config((base / "conchcmd.toml").read_text(), base_dir=base, source=base / "conchcmd.toml")
    service = ConchcmdService(config, reactor=Clock(), out=io.StringIO())
    with pytest.raises(StartupError) as info:
        service.prepare()
    assert str(info.value).startswith(f"refusing to start: host key {encrypted} is encrypted with a passphrase")
    assert not (base / "audit.jsonl").exists()  # nothing opened before the keys
