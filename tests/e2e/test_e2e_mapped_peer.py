"""A `tcp6` listener on :: takes IPv4 clients too, as IPv4-mapped addresses (::ffff:127.1.0.9):
the log and the audit name them by their IPv4 address, as the auth lines and sshd do."""

from __future__ import annotations

import re
import subprocess

import pytest
from support.server import client_env, next_source
from support.serverfiles import hermetic_ssh, wait_for

pytestmark = pytest.mark.e2e


def test_an_ipv4_client_of_a_tcp6_listener_is_named_by_its_ipv4_address(make_server, client_keys) -> None:
    server = make_server(settings={"listen": ["tcp:0:interface=127.0.0.1", "tcp6:0:interface=\\:\\:"]})
    port6 = int(re.search(r"conchcmd: listening on tcp6:\S+ \(:::(\d+)\)", server.log_text()).group(1))
    mark, since = server.audit_mark(), server.log_mark()
    good, stranger = next_source(), next_source()
    for key, source, status in ((client_keys.ed25519, good, 0), (client_keys.stranger, stranger, 255)):
        argv = hermetic_ssh(port6, key, "alice", source, remote="help")
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30, env=client_env())
        assert done.returncode == status, done.stderr
    wait_for(lambda: len(server.audit_since(mark, "disconnect")) == 2, 10, "both disconnects")
    log = server.log_text()[since:]
    assert "ffff" not in log, log
    for source in (good, stranger):
        assert re.search(rf"Client connection from {re.escape(source)}:\d+\n", log), log
    assert re.search(rf"Accepted publickey for alice from {re.escape(good)} port \d+ ssh2", log), log
    assert re.search(rf"Cmd received from alice@{re.escape(good)}:\d+ : help", log), log
    records = server.audit_since(mark)
    assert "ffff" not in str(records), records
    peers = {(e["event"], e["peer"].rsplit(":", 1)[0]) for e in records if "peer" in e}
    assert {("connect", good), ("auth", good), ("disconnect", good), ("connect", stranger)} <= peers, peers
