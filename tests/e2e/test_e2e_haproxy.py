"""conchcmd behind a REAL HAProxy (Debian `haproxy`, `mode tcp`, `send-proxy-v2`) on loopback:
OpenSSH clients bound to distinct 127.x sources connect through it; `from=` and penalties act on
their addresses, not on HAProxy's; the audit names each client and the proxy; a client that
reaches the PROXY listener directly, not through a trusted proxy, is refused."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.e2e import ClientKeys, free_port
from support.server import SSH_TIMEOUT, Server, client_env
from support.serverfiles import hermetic_ssh

pytestmark = pytest.mark.e2e

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
ADMITTED, OTHER = "127.3.0.7", "127.3.0.8"  # from= admits the first only
FAILING, NEIGHBOUR = "127.3.1.9", "127.3.1.10"
DIRECT = "127.3.2.2"
MAPPED = "127.3.3.3"
V1_CLIENT = "127.3.4.4"


class HAProxy:
    """One haproxy process in the foreground, its configuration in `base`."""

    def __init__(
        self,
        base: Path,
        backend_port: int,
        *,
        bind: str = "127.0.0.1:{port}",
        server: str = "send-proxy-v2 check inter 300ms",
    ) -> None:
        self.port = free_port()
        self.config = base / "haproxy.cfg"
        self.config.write_text(
            "global\n"
            "    maxconn 64\n"
            "defaults\n"
            "    mode tcp\n"
            "    timeout connect 5s\n"
            "    timeout client 30s\n"
            "    timeout server 30s\n"
            "frontend ssh\n"
            f"    bind {bind.format(port=self.port)}\n"
            "    default_backend conchcmd\n"
            "backend conchcmd\n"
            # HAProxy's health checks send a LOCAL header (send-proxy-v2): closed, logged once.
            f"    server s1 127.0.0.1:{backend_port} {server}\n"
        )
        check = subprocess.run([HAPROXY, "-c", "-f", str(self.config)], capture_output=True, timeout=30)
        assert check.returncode == 0, check.stderr.decode()
        self.log = (base / "haproxy.log").open("wb")
        self.proc = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(self.config)], stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 15
        while True:
            assert self.proc.poll() is None, "haproxy exited at start"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "haproxy is not listening"
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="module")
def behind(
    make_server: Callable[..., Server], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, HAProxy]]:
    if not Path(HAPROXY).exists():
        pytest.skip("haproxy is not installed (Debian package haproxy)")
    server = make_server(listen="haproxy:tcp:0:interface=127.0.0.1", settings={"penalty_seconds": 60})
    keys = server.keys
    server.authorize("carol", f'from="{ADMITTED}" {keys.pub_line(keys.spare)}')
    proxy = HAProxy(tmp_path_factory.mktemp("haproxy"), server.port)
    yield server, proxy
    proxy.stop()


def ssh(port: int, keys: ClientKeys, source: str, *, key: Path | None = None, user: str = "alice") -> Any:
    argv = hermetic_ssh(port, key or keys.ed25519, user, source, remote="help")
    return subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=SSH_TIMEOUT, env=client_env(None)
    )


def connects(server: Server, source: str) -> list[dict[str, Any]]:
    return [r for r in server.audit() if r["event"] == "connect" and r["peer"].startswith(f"{source}:")]


def test_from_admits_the_clients_address_through_the_proxy(behind: tuple[Server, HAProxy]) -> None:
    server, proxy = behind
    keys = server.keys
    admitted = ssh(proxy.port, keys, ADMITTED, key=keys.spare, user="carol")
    assert admitted.returncode == 0, admitted.stderr
    assert b"lastlog" in admitted.stdout  # help lists the commands
    other = ssh(proxy.port, keys, OTHER, key=keys.spare, user="carol")
    assert other.returncode == 255 and b"Permission denied" in other.stderr
    server.wait_no_clients()
    (record,) = connects(server, ADMITTED)
    assert record["proxy"].startswith("127.0.0.1:")  # HAProxy's own connection
    refused = [r for r in server.audit() if r["event"] == "auth" and not r["ok"]]
    assert any(r["reason"].startswith(f"from= does not allow {OTHER}") for r in refused)
    text = server.log_text()
    assert f"Accepted publickey for carol from {ADMITTED} port " in text
    assert f"Client connection from {ADMITTED}:" in text and " via 127.0.0.1:" in text


def test_a_penalty_falls_on_the_failing_client_and_not_on_its_neighbour(behind: tuple[Server, HAProxy]) -> None:
    server, proxy = behind
    keys = server.keys
    for _ in range(3):
        failed = ssh(proxy.port, keys, FAILING, key=keys.stranger)
        assert failed.returncode == 255 and b"Permission denied" in failed.stderr
    server.wait_for(lambda: any(r["event"] == "penalty" for r in server.audit()), 10.0, "a penalty in the audit log")
    penalties = [r for r in server.audit() if r["event"] == "penalty"]
    assert [p["source"] for p in penalties] == [FAILING]
    refused = ssh(proxy.port, keys, FAILING)  # even with a good key: the source is penalised
    assert refused.returncode == 255 and not refused.stdout
    neighbour = ssh(proxy.port, keys, NEIGHBOUR)  # the same proxy, another client
    assert neighbour.returncode == 0, neighbour.stderr
    server.wait_for(
        lambda: any(r["event"] == "refused" and r.get("source") == FAILING for r in server.audit()),
        15.0,
        "the refusal in the audit log",
    )
    assert len(connects(server, FAILING)) == 3  # the fourth never reached SSH


def test_haproxys_health_checks_are_closed_and_logged_once(behind: tuple[Server, HAProxy]) -> None:
    server, _ = behind
    said = "PROXY v2 header naming no client (LOCAL/UNKNOWN: a health check) from 127.0.0.1:"
    server.wait_for(lambda: said in server.log_text(), 10.0, "a health check in the log")
    time.sleep(1.0)  # three more checks at least: HAProxy checks every 300 ms here
    assert server.log_text().count(said) == 1
    assert not any(r["event"] == "refused" and r["source"] == "127.0.0.1" for r in server.audit())


def test_a_client_reaching_the_proxy_listener_directly_is_refused(behind: tuple[Server, HAProxy]) -> None:
    server, _ = behind
    direct = ssh(server.port, server.keys, DIRECT)  # not through HAProxy: not in proxy_from
    assert direct.returncode == 255 and not direct.stdout
    server.wait_for(
        lambda: any(r["event"] == "refused" and r.get("source") == DIRECT for r in server.audit()),
        15.0,
        "the refusal in the audit log",
    )
    (record,) = [r for r in server.audit() if r["event"] == "refused" and r.get("source") == DIRECT]
    assert record["reason"] == "not a trusted proxy (proxy_from)"
    assert connects(server, DIRECT) == []


def test_an_ipv4_client_of_a_dual_stack_haproxy_is_its_ipv4_address(
    behind: tuple[Server, HAProxy], tmp_path: Path
) -> None:
    """HAProxy listening on an IPv6 socket that takes IPv4 (`v4v6`) sends a TCP6 header naming
    the client `::ffff:127.3.3.3` (measured): the logs and the audit name 127.3.3.3."""
    server, _ = behind
    dual = HAProxy(tmp_path, server.port, bind="ipv6@::ffff:127.0.0.1:{port} v4v6")
    try:
        result = ssh(dual.port, server.keys, MAPPED)
    finally:
        dual.stop()
    assert result.returncode == 0, result.stderr
    server.wait_no_clients()
    (record,) = connects(server, MAPPED)
    assert record["proxy"].startswith("127.0.0.1:")
    assert f"Accepted publickey for alice from {MAPPED} port " in server.log_text()
    assert "::ffff:" not in server.log_text()


def test_haproxys_v1_health_checks_are_no_clients(behind: tuple[Server, HAProxy], tmp_path: Path) -> None:
    """With `send-proxy` (v1: no LOCAL), HAProxy 2.6's checks send `PROXY TCP4` naming the
    check's own connection (measured): closed as health checks, not a connection and disconnect
    in the log and the audit every check; a client through the same HAProxy is served."""
    server, _ = behind
    v1_proxy = HAProxy(tmp_path, server.port, server="send-proxy check inter 200ms")
    try:
        client = ssh(v1_proxy.port, server.keys, V1_CLIENT)
        time.sleep(1.0)  # five checks at least
    finally:
        v1_proxy.stop()
    assert client.returncode == 0, client.stderr
    server.wait_no_clients()
    (record,) = connects(server, V1_CLIENT)
    assert record["proxy"].startswith("127.0.0.1:")
    itself = [r for r in server.audit() if r["event"] == "connect" and r.get("proxy") == r["peer"]]
    assert itself == []


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def test_idle_connections_on_the_proxy_listener_hold_at_most_max_startups_descriptors(
    make_server: Callable[..., Server], tmp_path: Path
) -> None:
    """A peer in proxy_from (by default any local user, as HAProxy on the same host is) that
    opens connections and sends no header holds at most max_startups of the server's
    descriptors (it held one per connection for 5 s), and HAProxy's clients are still served."""
    server = make_server(listen="haproxy:tcp:0:interface=127.0.0.1", settings={"max_startups": 20})
    proxy = HAProxy(tmp_path, server.port)
    before = open_fds(server.pid)
    idle: list[socket.socket] = []
    try:
        for _ in range(200):
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        client = ssh(proxy.port, server.keys, V1_CLIENT)  # the server has accepted every one by now
        # Evicted connections close on the reactor's next turn: wait for it (well within the 5 s
        # header deadline, which would close them all anyway), then count.
        bound = 20 + 3  # the waiting ones, HAProxy's health check and client connections in flight
        with contextlib.suppress(AssertionError):  # judged below, with the count
            server.wait_for(lambda: open_fds(server.pid) - before <= bound, 2.0, "the descriptors to settle")
        held = open_fds(server.pid) - before
    finally:
        for sock in idle:
            sock.close()
        proxy.stop()
    assert held <= bound, f"{held} descriptors for 200 idle connections"
    assert client.returncode == 0, client.stderr
    server.assert_alive()
    refused = [r for r in server.audit() if r["event"] == "refused"]
    assert refused and all(r["reason"].startswith("waited longest for its PROXY header") for r in refused)
