"""Fixtures for the end-to-end layer; the server is support/server.py, what this layer gives it support/e2e.py."""

from __future__ import annotations

import itertools
import os
import random
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support.e2e import (
    BIG_SPARSE_SIZE,
    SYSLOG_LINES,
    ClientKeys,
    Data,
    socket_activation,
    syslog_lines,
)
from support.server import HAVE_OPENSSH, Server, module_servers


@pytest.fixture(scope="session")
def askpass(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], dict[str, str]]:
    """askpass(secret) -> the environment for ssh to answer its password prompt with `secret`."""
    directory = tmp_path_factory.mktemp("askpass")
    scripts = itertools.count()

    def make(secret: str) -> dict[str, str]:
        script = directory / f"askpass{next(scripts)}.sh"
        secret_file = directory / f"{script.name}.secret"
        secret_file.write_text(secret + "\n")
        script.write_text(f'#!/bin/sh\ncat "{secret_file}"\n')
        script.chmod(0o700)
        return {"SSH_ASKPASS": str(script), "SSH_ASKPASS_REQUIRE": "force"}

    return make


@pytest.fixture(scope="session")
def client_keys(tmp_path_factory: pytest.TempPathFactory) -> ClientKeys:
    if not HAVE_OPENSSH:
        pytest.skip("the OpenSSH client (ssh, ssh-keygen) is not installed")
    directory = tmp_path_factory.mktemp("client-keys")
    specs = {
        "ed25519": ["-t", "ed25519"],
        "rsa": ["-t", "rsa", "-b", "3072"],
        "ecdsa": ["-t", "ecdsa", "-b", "256"],
        "stranger": ["-t", "ed25519"],
        "optioned": ["-t", "ed25519"],
        "spare": ["-t", "ed25519"],
    }
    procs = []
    for name, args in specs.items():
        path = directory / f"id_{name}"
        procs.append(
            subprocess.Popen(
                ["ssh-keygen", "-q", *args, "-N", "", "-C", f"e2e-{name}", "-f", str(path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        )
    for proc in procs:
        assert proc.wait(timeout=60) == 0, "ssh-keygen failed"
    paths = {name: directory / f"id_{name}" for name in specs}
    for path in paths.values():
        path.chmod(0o600)
    return ClientKeys(**paths)


@pytest.fixture(scope="session")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    base = tmp_path_factory.mktemp("data")
    syslog = base / "syslog"
    lines = list(syslog_lines(SYSLOG_LINES))
    esc_index = 5
    lines[-esc_index] = lines[-esc_index].rstrip(b"\n") + b" \x1b[31mred alert\x1b[0m\n"
    syslog.write_bytes(b"".join(lines))

    root = base / "root"
    root.mkdir()
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"not for you\n")

    small = root / "small.txt"
    small.write_bytes(b"hello, conchcmd\n")
    medium = root / "medium.bin"
    medium.write_bytes(random.Random(1).randbytes(3 * 1024 * 1024 + 17))  # several read chunks
    empty = root / "empty"
    empty.write_bytes(b"")
    space = root / "with space.txt"
    space.write_bytes(b"spaced out\n")
    backslash = root / "back\\slash.txt"
    backslash.write_bytes(b"escaped\n")
    newline = root / "new\nline.txt"
    newline.write_bytes(b"two\nlines\n")
    carriage = root / "car\rriage.txt"
    carriage.write_bytes(b"return\n")
    utf8 = root / "\u00fcnic\u00f6de.txt"
    utf8.write_bytes("gr\u00fc\u00dfe\n".encode())
    not_utf8 = root / os.fsdecode(b"caf\xe9-latin1.bin")  # a name that is not UTF-8
    not_utf8.write_bytes(b"bytes\n")
    directory = root / "sub"
    directory.mkdir()
    fifo = root / "fifo"
    os.mkfifo(fifo)
    link_in = root / "link-in"
    link_in.symlink_to("small.txt")
    link_out = root / "link-out"
    link_out.symlink_to(outside / "secret.txt")
    big = root / "big.sparse"
    with open(big, "wb") as f:
        f.truncate(BIG_SPARSE_SIZE)
    return Data(
        syslog=syslog,
        root=root,
        outside=outside / "secret.txt",
        small=small,
        medium=medium,
        empty=empty,
        space=space,
        backslash=backslash,
        newline=newline,
        carriage=carriage,
        utf8=utf8,
        not_utf8=not_utf8,
        directory=directory,
        fifo=fifo,
        link_in=link_in,
        link_out=link_out,
        big=big,
        esc_line_index=esc_index,
    )


@pytest.fixture(scope="session")
def socket_activated() -> Callable[[int, str], dict[str, Any]]:
    """socket_activated(fd, domain) -> make_server/Server arguments for a server started as systemd
    starts a socket-activated unit: the socket `fd` as fd 3, LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES
    set, `listen` its endpoint (`domain` INET or INET6)."""
    return socket_activation


@pytest.fixture(scope="module")
def make_server(
    tmp_path_factory: pytest.TempPathFactory, client_keys: ClientKeys, data: Data
) -> Iterator[Callable[..., Server]]:
    """Start servers for this module; all are stopped and their logs checked at module teardown."""
    yield from module_servers(tmp_path_factory, client_keys, data)


@pytest.fixture(scope="module")
def server(make_server: Callable[..., Server]) -> Server:
    """The module's server: max_clients 10, users alice (3 keys) and bob (an options line)."""
    return make_server()


@pytest.fixture(scope="session")
def server_class() -> type[Server]:
    """The Server class, for tests that start and stop a server themselves (and check its log)."""
    return Server
