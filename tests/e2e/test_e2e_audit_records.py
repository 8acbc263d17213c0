"""Audit records of the real server for the real OpenSSH client: host, connection id joining a
connection's records, channel, kind and the rule of a 126."""

from __future__ import annotations

import re
import shutil
import socket
from typing import Any

import pytest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("ssh") is None, reason="the OpenSSH client is not installed"),
]


def test_an_exec_and_a_shell_are_joined_by_their_connection_ids(server: Any) -> None:
    mark = server.audit_mark()
    r = server.ssh("comphash /etc/hostname")
    assert r.returncode == 126
    r = server.ssh(options=["-T"], input=b"help lastlog\nnosuch\n")
    assert r.returncode == 127
    server.wait_for(lambda: len(server.audit_since(mark, "disconnect")) == 2, 10, "both disconnect records")
    records = server.audit_since(mark)
    assert {e["host"] for e in records} == {socket.gethostname()}
    connects = [e for e in records if e["event"] == "connect"]
    assert len(connects) == 2
    first, second = (c["connection"] for c in connects)
    assert first != second and all(re.fullmatch(r"[0-9a-f]{16}", c) for c in (first, second))
    story = {c: [e["event"] for e in records if e["connection"] == c] for c in (first, second)}
    assert story == {
        first: ["connect", "auth", "command", "disconnect"],
        second: ["connect", "auth", "command", "command", "disconnect"],
    }
    commands = [
        (e["argv"], e["kind"], e["channel"], e["exit_code"], e.get("rule")) for e in records if e["event"] == "command"
    ]
    assert commands == [
        (["comphash", "/etc/hostname"], "exec", 0, 126, "outside roots: /etc/hostname"),
        (["help", "lastlog"], "shell", 0, 0, None),
        (["nosuch"], "shell", 0, 127, None),
    ]
