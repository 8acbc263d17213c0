"""Host keys are loaded as HostKey, which works out its type, SSH type name and public blob once
(Conch asks for them in every key exchange): the answers are Conch's Key's, for every key type
serve loads, and what the server signs with it verifies with the public key it sends."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from twisted.conch.ssh.keys import Key

from conchcmd.wire.hostkeys import HOST_KEY_FILES, HostKey, load_host_keys


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa"])
def test_host_keys_answer_as_conch_s_key_does(tmp_path: Path, kind: str) -> None:
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir(mode=0o700)
    name = next(n for n in HOST_KEY_FILES if kind in n)
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(keys_dir / name)], check=True, timeout=60)
    loaded = load_host_keys(keys_dir)
    [(algorithm, private)] = loaded.private.items()
    public = loaded.public[algorithm]
    plain = Key.fromString((keys_dir / name).read_bytes())
    for key in (private, public):
        assert isinstance(key, HostKey)
        for _ in range(2):  # worked out, then remembered
            assert key.type() == plain.type()
            assert key.sshType() == plain.sshType() == algorithm
            assert key.blob() == plain.public().blob()
    assert public.isPublic() and not private.isPublic()
    assert public == plain.public()
    for signature_algorithm in private.supportedSignatureAlgorithms():
        signature = private.sign(b"exchange hash", signature_algorithm)
        assert plain.public().verify(signature, b"exchange hash")
        assert public.verify(signature, b"exchange hash")
        assert not public.verify(signature, b"another hash")
