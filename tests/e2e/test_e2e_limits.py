"""`max_clients` and `max_clients_per_user`: authenticated connections beyond a limit are turned
away with the limit's name; slots free on leaving; accepted sockets have TCP keepalive on."""

from __future__ import annotations

import shutil
import subprocess

import pytest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("ssh") is None, reason="the OpenSSH client is not installed"),
]


@pytest.fixture(scope="module")
def server(make_server):
    return make_server(max_clients=2, settings={"max_clients_per_user": 2})


def test_max_clients(server, data):
    mark = server.audit_mark()
    shells = [server.popen(options=["-T"], stdin=subprocess.PIPE) for _ in range(2)]
    try:
        server.wait_for(
            lambda: len([e for e in server.audit_since(mark, "auth") if e["ok"]]) == 2, 10, "two logged-in shells"
        )
        # A third client (another user: alice is at her max_clients_per_user too) is turned away,
        # with the limit it hit, after authenticating.
        r = server.ssh("exit 0", key=server.keys.optioned, user="bob", log_level="INFO")
        assert r.returncode == 255
        assert b"Too many connections (max_clients 2)" in r.stderr, r.stderr
        server.wait_log(r"Too many connections \(max_clients 2\): turned away bob@127\.1\.\d+\.\d+:\d+")
        refused = [e for e in server.audit_since(mark, "auth") if not e["ok"]]
        assert [e.get("reason") for e in refused] == ["Too many connections (max_clients 2)"]
        assert server.audit_since(mark, "command") == []
        server.wait_for(lambda: len(server.audit_since(mark, "disconnect")) == 1, 10, "the refused disconnect")

        # The held shells still work; one leaves, and its slot is free again.
        first = shells.pop(0)
        out, err = first.communicate(b"lastlog -n 1\nexit 0\n", timeout=10)
        assert (first.returncode, out, err) == (0, server.tail(data.syslog, 1), b"")
        server.wait_for(lambda: len(server.audit_since(mark, "disconnect")) == 2, 10, "the first shell's disconnect")
        r = server.ssh("exit 4")
        assert (r.returncode, r.stderr) == (4, b"")
    finally:
        for shell in shells:
            if shell.poll() is None:
                shell.communicate(b"exit 0\n", timeout=10)
    assert all(shell.returncode == 0 for shell in shells)
    # Every slot is free again: two at once work.
    procs = [server.popen(options=["-T"], stdin=subprocess.PIPE) for _ in range(2)]
    results = [p.communicate(b"exit 3\n", timeout=10) for p in procs]
    assert [p.returncode for p in procs] == [3, 3], results


def server_sockets(port: int) -> list[str]:
    """`ss` (iproute2) lines of the established TCP sockets on the server's side of `port`, with timers."""
    out = subprocess.run(
        ["ss", "-tnoH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        check=True,
        timeout=10,
    ).stdout.decode()
    return [line for line in out.splitlines() if line.strip()]


def test_one_user_holding_idle_connections_locks_out_nobody(make_server, data):
    """Issue 10, item 7: bob (allowed only `lastlog`) opens idle connections (`ssh -N`) to take
    every slot. He gets max_clients_per_user (half of max_clients) and is told which limit he
    hit; alice still gets in. Every accepted socket has SO_KEEPALIVE (sshd's TCPKeepAlive), so a
    holder that vanishes without a FIN frees its slot."""
    server = make_server(max_clients=4)
    mark = server.audit_mark()
    idle = [server.popen(key=server.keys.optioned, user="bob", options=["-N"]) for _ in range(2)]
    try:
        server.wait_for(
            lambda: len([e for e in server.audit_since(mark, "auth") if e["ok"]]) == 2, 10, "bob's two logins"
        )

        # ss shows one timer per socket: the keepalive timer once no data waits for an ACK.
        def keepalive_on_both() -> bool:
            sockets = server_sockets(server.port)
            return len(sockets) == 2 and all("timer:(keepalive," in line for line in sockets)

        server.wait_for(keepalive_on_both, 10, "keepalive timers on the server's two sockets")
        r = server.ssh(key=server.keys.optioned, user="bob", options=["-N"], log_level="INFO")
        assert r.returncode == 255
        assert b"Too many connections for user bob (max_clients_per_user 2)" in r.stderr, r.stderr
        server.wait_log(r"Too many connections for user bob \(max_clients_per_user 2\): turned away bob@")
        refused = [e for e in server.audit_since(mark, "auth") if not e["ok"]]
        assert [(e["user"], e["reason"]) for e in refused] == [
            ("bob", "Too many connections for user bob (max_clients_per_user 2)")
        ]
        r = server.ssh("lastlog -n 1")
        assert (r.returncode, r.stdout, r.stderr) == (0, server.tail(data.syslog, 1), b"")
    finally:
        for proc in idle:
            proc.terminate()
            proc.wait(timeout=10)


def test_sigterm_with_busy_clients_exits_promptly(make_server, data):
    """Stopping the server while a shell is open and a long hash runs: prompt, clean exit."""
    busy = make_server()
    since = busy.log_mark()
    shell = busy.popen(options=["-T"], stdin=subprocess.PIPE)
    hashing = busy.popen(f"comphash {data.big}")
    try:
        busy.wait_log(r"Cmd received from alice@\S+ : comphash \S*big\.sparse", since)
        busy.wait_for(lambda: len([e for e in busy.audit() if e["event"] == "auth"]) == 2, 10, "both logins")
        busy.stop()  # asserts the exit within 5 s
        assert busy.returncode == 0
        assert hashing.wait(timeout=5) == 255
        shell.stdin.close()
        assert shell.wait(timeout=5) == 255
    finally:
        for proc in (shell, hashing):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
    busy.check_log()


def test_no_system_log_is_a_clear_error(make_server, tmp_path):
    missing = tmp_path / "no-such-syslog"
    logless = make_server(lastlog_path=missing)
    r = logless.ssh("lastlog")
    assert (r.returncode, r.stdout) == (1, b"")
    assert r.stderr == f"lastlog: no system log available (tried {missing}); set [lastlog] path\n".encode()


def test_a_real_client_rekeying_often_is_not_cut_off(server, data):
    """OpenSSH with RekeyLimit=16K (its default is 1 GiB or more) starts more key exchanges than
    REKEY_BURST in well under a minute while it moves 15 MB: each follows over 8 KiB (REKEY_FREE_BYTES) of traffic
    (OpenSSH checks its limit as it sends, about once per window adjustment or packet of input: the
    256 KiB of input make it check often enough whatever the timing of the output), so none counts."""
    r = server.ssh(
        "lastlog -n 10000", options=["-o", "RekeyLimit=16K"], log_level="DEBUG", timeout=60, input=b"x" * (256 * 1024)
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout == server.tail(data.syslog, 10000)
    assert r.stderr.count(b"SSH2_MSG_KEXINIT sent") > 10 + 1  # the initial exchange and over 10 rekeys
