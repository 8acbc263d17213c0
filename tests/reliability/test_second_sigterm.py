"""A second SIGTERM while the server is already shutting down (systemd's stop, then an impatient
operator's `kill`): harmless, as with sshd. The shutdown it interrupts goes on: every client is
told, the audit ends with server_stop, the exit status is 0."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

pytestmark = pytest.mark.reliability


def test_a_second_sigterm_during_shutdown_is_harmless(make_server, data):
    server = make_server()
    mark, since = server.audit_mark(), server.log_mark()
    hasher = subprocess.Popen(
        server.ssh_argv(f"comphash {data.big}", log_level="INFO"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        server.wait_log(r"Cmd received from alice@\S+ : comphash \S*big\.sparse", since)
        server.proc.send_signal(signal.SIGTERM)
        server.wait_log(r"Server stopping \(signal SIGTERM\)", since)
        # more, every 2 ms until it exits: through the shutdown and the interpreter's last moments
        deadline = time.monotonic() + 10
        while server.proc.poll() is None and time.monotonic() < deadline:
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(0.002)
        server.stop()
        assert server.returncode == 0, server.log_text()[-3000:]
        _, err = hasher.communicate(timeout=10)
    finally:
        if hasher.poll() is None:
            hasher.kill()
    assert hasher.returncode == 255 and b"server shutting down" in err, err
    tail = server.audit()[mark:]
    assert [e["exit_code"] for e in tail if e["event"] == "command"] == [130], tail
    assert [e["reason"] for e in tail if e["event"] == "disconnect"] == ["server shutting down"], tail
    assert (tail[-1]["event"], tail[-1]["reason"]) == ("server_stop", "signal SIGTERM"), tail
    log = server.log_text()[since:]
    assert "Traceback" not in log and "Unhandled" not in log, log
