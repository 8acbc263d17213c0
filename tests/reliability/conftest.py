"""Fixtures for the reliability layer; the server is support/server.py, what this layer gives it
support/reliability.py."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator

import pytest
from support.reliability import (
    BIG_LOG_LINE,
    BIG_LOG_LINES,
    BIG_SPARSE_SIZE,
    FIGURES,
    FIGURES_PATH,
    ClientKeys,
    Data,
)
from support.server import HAVE_OPENSSH, Server, module_servers

# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _write_figures() -> Iterator[None]:
    yield
    if FIGURES:
        FIGURES_PATH.write_text(json.dumps(FIGURES, indent=2, sort_keys=True) + "\n")
        print(f"\n[figures] written to {FIGURES_PATH}")


@pytest.fixture(scope="session")
def client_keys(tmp_path_factory: pytest.TempPathFactory) -> ClientKeys:
    if not HAVE_OPENSSH:
        pytest.skip("the OpenSSH client (ssh, ssh-keygen) is not installed")
    directory = tmp_path_factory.mktemp("client-keys")
    paths = {}
    for name in ("good", "stranger"):
        path = directory / f"id_{name}"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"reliability-{name}", "-f", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            check=True,
            timeout=30,
        )
        path.chmod(0o600)
        paths[name] = path
    return ClientKeys(**paths)


@pytest.fixture(scope="session")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    base = tmp_path_factory.mktemp("data")
    syslog = base / "syslog"
    filler = (b"abcdefghijklmnopqrstuvwxyz0123456789 ABCDEFGHIJKLMNOPQRSTUVWXYZ.,:;-_=+()[]" * 60)[:BIG_LOG_LINE]
    with open(syslog, "wb") as f:
        for i in range(BIG_LOG_LINES):
            prefix = f"Nov 26 12:{(i // 60) % 60:02d}:{i % 60:02d} relhost app[{i}]: ".encode()
            f.write(prefix + filler[: BIG_LOG_LINE - len(prefix) - 1] + b"\n")
    root = base / "root"
    root.mkdir()
    small = root / "small.txt"
    small.write_bytes(b"hello, reliability\n")
    big = root / "big.sparse"
    with open(big, "wb") as f:
        f.truncate(BIG_SPARSE_SIZE)
    return Data(syslog=syslog, root=root, small=small, big=big)


@pytest.fixture(scope="module")
def make_server(
    tmp_path_factory: pytest.TempPathFactory, client_keys: ClientKeys, data: Data
) -> Iterator[Callable[..., Server]]:
    """Start servers for this module; all are stopped (SIGTERM, exit 0) and their logs checked."""
    yield from module_servers(tmp_path_factory, client_keys, data, expect_activity=False)
