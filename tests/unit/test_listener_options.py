"""set_listener_options: TCP_NODELAY and SO_KEEPALIVE set once on a listening socket reach every
connection it accepts (Linux copies them), so that connections need no setsockopt of their own;
a port without a TCP socket is left to its connections."""

from __future__ import annotations

import io
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from conchcmd.server.transport import set_listener_options

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's inheritance of socket options")


def accepted_options(family: socket.AddressFamily, host: str, keepalive: bool) -> tuple[int, int]:
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.bind((host, 0))
        listener.listen()
        assert set_listener_options(SimpleNamespace(socket=listener), keepalive=keepalive)
        with socket.create_connection(listener.getsockname()[:2], timeout=5):
            accepted, _ = listener.accept()
            with accepted:
                return (
                    accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
                    accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                )


@pytest.mark.parametrize(("family", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_accepted_sockets_inherit_nodelay_and_keepalive(family: socket.AddressFamily, host: str) -> None:
    assert accepted_options(family, host, keepalive=True) == (1, 1)


def test_keepalive_off_leaves_it_off() -> None:
    assert accepted_options(socket.AF_INET, "127.0.0.1", keepalive=False) == (1, 0)


def test_a_port_without_a_tcp_socket_is_left_to_its_connections(tmp_path: Path) -> None:
    assert not set_listener_options(object(), keepalive=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
        unix.bind(str(tmp_path / "s"))
        assert not set_listener_options(SimpleNamespace(socket=unix), keepalive=True)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        assert not set_listener_options(SimpleNamespace(socket=udp), keepalive=True)


def test_the_service_sets_them_on_every_listening_socket(tmp_path: Path) -> None:
    """`serve` (ConchcmdService, on a real epoll reactor that is not run) sets both options on its
    listening sockets and tells the factory, whose connections then set none; each port keeps
    its logger."""
    from twisted.internet.epollreactor import EPollReactor

    from conchcmd.core.config import load_config
    from conchcmd.edge.service import ConchcmdService

    (tmp_path / "conchcmd.toml").write_text(
        'listen = ["tcp:0:interface=127.0.0.1", "tcp6:0:interface=\\\\:\\\\:1"]\n'
        'host_keys_dir = "keys"\nauthorized_keys = "keys/authorized_keys/%u"\naudit_log = "audit.jsonl"\n'
    )
    reactor = EPollReactor()
    config = load_config(tmp_path / "conchcmd.toml", cwd=tmp_path)
    service = ConchcmdService(config, reactor, io.StringIO(), config_path=tmp_path / "conchcmd.toml")
    service.startService()
    try:
        assert service.ready.called
        assert service.server is not None and service.server.factory.listener_options
        assert len(service.ports) == 2
        for port in service.ports:
            assert port.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            assert port.socket.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            # its logger made once and kept (Twisted made one twice per accepted connection): the same one
            kept = vars(port)["_logger"]
            made = type(port)._logger.__get__(port, type(port))
            assert (kept.namespace, kept.source, kept.observer) == (made.namespace, made.source, made.observer)
            assert port._logger is kept
    finally:
        for port in service.ports:
            port.stopListening()
        for pool in (service.pool, service.bulk_pool, service.password_pool):
            pool.stop()
        reactor._poller.close()
