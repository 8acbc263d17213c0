"""The algorithms the server offers by default work with the installed Twisted and cryptography.

CI runs this file on the lowest versions pyproject.toml allows as well (.ci/run), so it is the
check that the dependency floors keep every advertised algorithm.
"""

from __future__ import annotations

import pytest
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import mlkem

from conchcmd.core.config import KEX_ALGORITHMS
from conchcmd.wire.framing import usable_key_exchanges


def test_every_default_key_exchange_is_usable_here() -> None:
    usable = usable_key_exchanges()
    assert [k for k in KEX_ALGORITHMS if k.encode() not in usable] == []


def without_mlkem_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """cryptography 47: the `hpke` and `mlkem` modules exist, the OpenSSL backend lacks ML-KEM."""

    def generate() -> mlkem.MLKEM768PrivateKey:
        raise UnsupportedAlgorithm("ML-KEM-768 is not supported by this backend.")

    monkeypatch.setattr(mlkem.MLKEM768PrivateKey, "generate", staticmethod(generate))


def test_ml_kem_listed_by_conch_but_missing_from_the_backend_is_not_offered(monkeypatch: pytest.MonkeyPatch) -> None:
    """Conch 26.10 lists mlkem768x25519-sha256 on cryptography 47 (measured), where a client that
    chooses it fails in the middle of the key exchange."""
    without_mlkem_backend(monkeypatch)
    usable = usable_key_exchanges()
    assert b"mlkem768x25519-sha256" not in usable and b"curve25519-sha256" in usable
