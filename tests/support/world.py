"""The whole SSH stack in memory: the real server object graph on a MemoryReactorClock, real crypto,
and the test client connected to it through iosim."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from twisted.internet.testing import MemoryReactorClock

from conchcmd.app import Server, build_server
from conchcmd.commands.framework import InlineRunner
from conchcmd.core.audit import MemoryAuditLog
from conchcmd.core.config import ComphashConfig, Config, LastlogConfig
from conchcmd.server.factory import ServerSettings
from conchcmd.wire.hostkeys import ensure_host_keys, load_host_keys
from support.keys import authorized_line, ecdsa_key, ed25519_key, rsa_key
from support.sshclient import ClientFactory, Connection, connect


@dataclass
class World:
    """A built server plus what the tests need to reach."""

    server: Server
    clock: MemoryReactorClock
    audit: MemoryAuditLog
    root: Path
    log_file: Path
    config: Config

    @property
    def factory(self) -> Any:
        return self.server.factory

    def connect(self, peer: str = "10.0.0.1", port: int = 40000, client: ClientFactory | None = None) -> Connection:
        return connect(self.factory, self.clock, peer, port, client)

    def login(self, user: bytes = b"admin", key: Any = None, peer: str = "10.0.0.1") -> Connection:
        conn = self.connect(peer)
        assert conn.login(user, key or ed25519_key()) == 52
        return conn


def make_world(
    tmp_path: Path,
    *,
    runner: Any = None,
    password_runner: Any = None,
    settings: ServerSettings | None = None,
    log_text: bytes | None = None,
    **config_changes: Any,
) -> World:
    keys_dir = tmp_path / "keys"
    ensure_host_keys(keys_dir)
    users = keys_dir / "authorized_keys"
    users.mkdir()
    admin = users / "admin"
    admin.write_text("".join(authorized_line(k) for k in (ed25519_key(), rsa_key(), ecdsa_key())))
    os.chmod(admin, 0o600)
    root = tmp_path / "root"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello\n")
    log_file = tmp_path / "syslog"
    log_file.write_bytes(log_text if log_text is not None else b"".join(b"line %d\n" % i for i in range(1, 21)))
    config = Config(
        host_keys_dir=keys_dir,
        authorized_keys=str(users / "%u"),
        lastlog=LastlogConfig(sources=(str(log_file),)),
        comphash=ComphashConfig(roots=(str(root),)),
    )
    config = replace(config, **config_changes)
    clock = MemoryReactorClock()
    audit = MemoryAuditLog()
    server = build_server(
        config,
        clock,
        host_keys=load_host_keys(keys_dir),
        audit=audit,
        runner=runner or InlineRunner(),
        password_runner=password_runner or InlineRunner(),
        hostname="testhost",
        settings=settings or ServerSettings.from_config(config),
    )
    return World(server, clock, audit, root, log_file, config)


def add_user(world: World, name: str, *lines: str) -> None:
    """Give user `name` an authorized_keys file holding `lines` (mode 0600)."""
    path = Path(world.config.authorized_keys.replace("%u", name))
    path.write_text("".join(lines))
    os.chmod(path, 0o600)
