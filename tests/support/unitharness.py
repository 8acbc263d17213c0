"""The unit layer's harness (its fixtures are in tests/unit/conftest.py): command runs, SSH keys made
by ssh-keygen, Deferred helpers.

Nothing here touches the network or the global reactor. Keys are generated per test session
into a temporary directory; no private key is ever stored in the repository."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from conchcmd.commands.framework import Command, CommandTable, Dispatcher, Outcome
from conchcmd.core.audit import MemoryAuditLog
from support.outputs import RecordingOutput


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


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    public_line: str
    fingerprint: str  # from `ssh-keygen -lf`


def ssh_keygen_fingerprint(path: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", str(path)], check=True, capture_output=True, text=True).stdout
    return out.split()[1]


KEYGEN_ARGS = {
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
