"""Shared fixtures for the unit layer: recorded output, SSH keys made by ssh-keygen, Deferred helpers.

Nothing here touches the network or the global reactor. Keys are generated per test session
into a temporary directory; no private key is ever stored in the repository.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from support.outputs import RecordingOutput
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from conchcmd.audit import MemoryAuditLog
from conchcmd.commands import Command, CommandTable, Dispatcher, Outcome


def fired_result(d: defer.Deferred[Any]) -> Any:
    """The result (or Failure) of a Deferred that must already have fired; consumes failures."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def success_of(d: defer.Deferred[Any]) -> Any:
    result = fired_result(d)
    if isinstance(result, Failure):
        pytest.fail(f"expected success, got {result.getTraceback()}")
    return result


def failure_of(d: defer.Deferred[Any]) -> Failure:
    result = fired_result(d)
    assert isinstance(result, Failure), f"expected a failure, got {result!r}"
    return result


@dataclass
class Run:
    """What one dispatched command line came to, as the user sees it."""

    outcome: Outcome
    stdout: bytes
    stderr: bytes
    stdout_writes: list[bytes]

    @property
    def status(self) -> int:
        return self.outcome.status

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "surrogateescape")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "surrogateescape")


class Harness:
    """A Dispatcher over a given command set, with a Clock and an in-memory audit log."""

    def __init__(self, commands: Iterable[Command]):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.audit = MemoryAuditLog()
        self.table = CommandTable(commands)
        self.dispatcher = Dispatcher(self.table, self.audit, self.clock)

    def start(
        self, line: str, *, interactive: bool = False, last_status: int = 0, user: str = "alice"
    ) -> tuple[defer.Deferred[Outcome], RecordingOutput, RecordingOutput]:
        stdout, stderr = RecordingOutput(), RecordingOutput()
        d = self.dispatcher.dispatch(
            line,
            stdout=stdout,
            stderr=stderr,
            user=user,
            peer="192.0.2.7:50022",
            fingerprint="SHA256:testfingerprint",
            interactive=interactive,
            last_status=last_status,
        )
        return d, stdout, stderr

    def run(self, line: str, **kwargs: Any) -> Run:
        d, stdout, stderr = self.start(line, **kwargs)
        outcome = success_of(d)
        return Run(outcome, stdout.data, stderr.data, stdout.writes)


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


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    public_line: str
    fingerprint: str  # from `ssh-keygen -lf`


def ssh_keygen_fingerprint(path: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", str(path)], check=True, capture_output=True, text=True).stdout
    return out.split()[1]


_KEYGEN_ARGS = {
    "ed25519": ["-t", "ed25519"],
    "ecdsa256": ["-t", "ecdsa", "-b", "256"],
    "ecdsa384": ["-t", "ecdsa", "-b", "384"],
    "ecdsa521": ["-t", "ecdsa", "-b", "521"],
    "rsa": ["-t", "rsa", "-b", "2048"],
    "rsa1024": ["-t", "rsa", "-b", "1024"],
    "dsa": ["-t", "dsa"],
    "ed25519-other": ["-t", "ed25519"],
    "ed25519-encrypted": ["-t", "ed25519"],
}


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
                    *_KEYGEN_ARGS[kind],
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
