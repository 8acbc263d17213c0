"""Fixtures for the unit layer; the harness they hand out (command runs, Deferred helpers, keys made
by ssh-keygen) is support/unitharness.py."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from support.outputs import RecordingOutput
from support.unitharness import (
    KEYGEN_ARGS,
    Harness,
    KeyPair,
    failure_of,
    fired_result,
    ssh_keygen_fingerprint,
    success_of,
)


@pytest.fixture
def harness() -> Callable[..., Harness]:
    """harness(commands) -> a Dispatcher over those commands, with a Clock and a MemoryAuditLog."""
    return Harness


@pytest.fixture
def make_output() -> type[RecordingOutput]:
    """The RecordingOutput class: make_output() -> an Output that records every write."""
    return RecordingOutput


@pytest.fixture
def sync() -> SimpleNamespace:
    """Helpers for Deferreds that have already fired: sync.success(d), sync.failure(d), sync.result(d)."""
    return SimpleNamespace(success=success_of, failure=failure_of, result=fired_result)


@pytest.fixture(scope="session")
def keygen_fingerprint() -> Callable[[Path], str]:
    """The SHA256:... field of `ssh-keygen -lf PATH`."""
    return ssh_keygen_fingerprint


@pytest.fixture(scope="session")
def ssh_key(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], KeyPair]:
    """ssh_key(kind) -> a KeyPair made by ssh-keygen, generated once per session."""
    directory = tmp_path_factory.mktemp("sshkeys")
    cache: dict[str, KeyPair] = {}

    def make(kind: str) -> KeyPair:
        if kind not in cache:
            private = directory / f"id_{kind}"
            passphrase = "correct horse" if kind.endswith("-encrypted") else ""
            made = subprocess.run(
                [
                    "ssh-keygen",
                    "-q",
                    *KEYGEN_ARGS[kind],
                    "-N",
                    passphrase,
                    "-C",
                    f"test {kind} key",
                    "-f",
                    str(private),
                ],
                capture_output=True,
            )
            if made.returncode != 0:
                if kind == "dsa":  # OpenSSH 9.8+ no longer makes DSA keys
                    pytest.skip(f"ssh-keygen cannot make DSA keys: {made.stderr.decode(errors='replace').strip()}")
                made.check_returncode()
            public = directory / f"id_{kind}.pub"
            cache[kind] = KeyPair(private, public, public.read_text().strip(), ssh_keygen_fingerprint(public))
        return cache[kind]

    return make
