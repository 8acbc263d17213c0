"""Operator experience end to end: JSON for scripts, `lastlog -f` (file and journal), the progress
line, the twistd plugin, systemd readiness and socket activation, and SIGHUP reloads."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.server import stop_and_check
from support.serverfiles import toml_text

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("ssh") is None, reason="the OpenSSH client is not installed"),
]

TWISTD = Path(sys.executable).with_name("twistd")


def q(*words: object) -> str:
    return " ".join(shlex.quote(str(w)) for w in words)


def prompt(user: str = "alice") -> bytes:
    return f"{user}@{socket.gethostname()}> ".encode()


class Reader:
    """Reads a child's stdout without blocking forever: everything so far, or until a needle shows."""

    def __init__(self, proc: subprocess.Popen[bytes]):
        assert proc.stdout is not None
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.data = b""

    def until(self, needle: bytes, timeout: float = 10.0, start: int = 0) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.data[start:]:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {needle!r}; got {self.data[-500:]!r}")
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.2))
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    raise AssertionError(f"EOF while waiting for {needle!r}; got {self.data[-500:]!r}")
                self.data += chunk
        return self.data

    def rest(self, timeout: float = 10.0) -> bytes:
        """Read to EOF."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no EOF within {timeout} s; got {self.data[-500:]!r}")
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.2))
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    return self.data
                self.data += chunk


@contextlib.contextmanager
def client(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def send(proc: subprocess.Popen[bytes], data: bytes) -> None:
    assert proc.stdin is not None
    proc.stdin.write(data)
    proc.stdin.flush()


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with contextlib.suppress(OSError):  # a zombie not yet reaped counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    return False


@pytest.fixture(scope="module")
def op(make_server: Callable[..., Any], client_keys) -> Any:
    """A server with carol, who may only run lastlog (and help/exit)."""
    server = make_server(settings={"users": {"carol": {"commands": ["lastlog"]}}})
    server.authorize("carol", client_keys.pub_line(client_keys.spare))
    return server


# -- JSON output ---------------------------------------------------------------------------------------


def test_comphash_json_over_ssh(op, data) -> None:
    missing = data.root / "missing"
    r = op.ssh(q("comphash", "--json", data.small, data.medium, missing, data.space))
    assert r.returncode == 1
    assert r.stderr == b""
    assert b"\x1b" not in r.stdout
    records = [json.loads(line) for line in r.stdout.decode().splitlines()]
    assert records[2] == {"path": str(missing), "error": "No such file or directory"}
    for record, path in zip([records[0], records[1], records[3]], [data.small, data.medium, data.space], strict=True):
        content = path.read_bytes()
        assert record == {
            "path": str(path),
            "algorithm": "sha256",
            "digest": hashlib.sha256(content).hexdigest(),
            "bytes": len(content),
            "opened": str(path),
        }


def test_comphash_json_outside_the_roots_is_126(op, data) -> None:
    r = op.ssh(q("comphash", "-j", "-a", "md5", data.outside))
    assert r.returncode == 126
    assert json.loads(r.stdout) == {"path": str(data.outside), "error": "outside the allowed roots"}


def test_lastlog_json_over_ssh_equals_the_tail(op, data) -> None:
    n = data.esc_line_index + 3  # includes the line with an ESC in it
    r = op.ssh(f"lastlog --json -n {n}")
    assert (r.returncode, r.stderr) == (0, b"")
    assert b"\x1b" not in r.stdout, "the ESC in the log is escaped in JSON"
    assert r.stdout.endswith(b"\n") and r.stdout.count(b"\n") == 1
    doc = json.loads(r.stdout)
    expected = [line.decode("utf-8", "replace") for line in op.tail(data.syslog, n).splitlines()]
    assert doc == {"source": str(data.syslog), "lines": expected}
    assert any("\x1b[31m" in line for line in doc["lines"])


def test_help_json_over_ssh_for_a_full_and_a_restricted_user(op, client_keys) -> None:
    full = json.loads(op.ssh("help --json").stdout)
    assert [c["name"] for c in full["commands"]] == ["lastlog", "comphash", "help", "exit"]
    assert all(set(c) == {"name", "summary", "usage"} for c in full["commands"])
    r = op.ssh("help --json", user="carol", key=client_keys.spare)
    assert r.returncode == 0, r.stderr
    assert [c["name"] for c in json.loads(r.stdout)["commands"]] == ["lastlog", "help", "exit"]


def test_plain_shell_json_and_no_escape_codes(op, data) -> None:
    script = f"comphash --json {data.small}\nlastlog --json -n 2\nhelp --json\nhelp\nnosuch\nexit\n"
    r = op.ssh(options=["-T"], input=script.encode())
    assert r.returncode == 127
    assert b"\x1b" not in r.stdout + r.stderr
    lines = r.stdout.decode().splitlines()
    assert json.loads(lines[0])["digest"] == hashlib.sha256(data.small.read_bytes()).hexdigest()
    assert len(json.loads(lines[1])["lines"]) == 2
    assert "commands" in json.loads(lines[2])


def test_configured_prompt_over_ssh(make_server: Callable[..., Any]) -> None:
    server = make_server(settings={"shell": {"prompt": "{user} on {host} $ "}})
    r = server.ssh(options=["-tt"], input=b"exit 5\n")
    assert r.returncode == 5
    assert f"alice on {socket.gethostname()} $ exit 5\r\n".encode() in r.stdout, r.stdout


# -- lastlog -f ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def follower(make_server: Callable[..., Any], tmp_path_factory) -> Any:
    """A server whose lastlog reads a private file the tests append to."""
    log = tmp_path_factory.mktemp("followed") / "app.log"
    log.write_bytes(b"".join(b"old %d\n" % i for i in range(5)))
    server = make_server(lastlog_path=log)
    server.followed = log
    return server


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def test_follow_under_ssh_n_streams_appends_and_rotation_until_the_client_leaves(follower) -> None:
    """`ssh -n host lastlog -f` (stdin closed, as under cron): EOF comes at once and does not end the
    follow (it used to, with status 0); lines appended after the start arrive; killing ssh ends it."""
    log: Path = follower.followed
    mark = follower.audit_mark()
    with client(follower.popen("lastlog -f -n 2", options=["-n"])) as proc:
        out = Reader(proc)
        out.until(b"old 3\nold 4\n")
        append(log, b"appended 1\n")
        out.until(b"appended 1\n")
        rotated = log.with_name("app.log.1")
        log.rename(rotated)
        log.write_bytes(b"after rotation\n")
        out.until(b"after rotation\n")
        assert proc.poll() is None, "the follow ended by itself"
        assert out.data == b"old 3\nold 4\nappended 1\nafter rotation\n"
        proc.kill()
    record = follower.wait_audit(lambda e: e["event"] == "command" and e["argv"][:2] == ["lastlog", "-f"], mark)
    assert record["exit_code"] == 130


def test_follow_json_over_ssh_is_one_object_per_line(follower) -> None:
    log: Path = follower.followed
    with client(follower.popen("lastlog -f --json -n 1", stdin=subprocess.PIPE)) as proc:
        out = Reader(proc)
        out.until(b"}\n")
        assert proc.stdin is not None
        proc.stdin.close()  # exec: the end of input does not end the follow
        append(log, b"json \xff line\n")
        out.until(b"json")
        out.until(b"}\n", start=out.data.index(b"json"))
        data = out.data
        assert proc.poll() is None
    records = [json.loads(line) for line in data.decode().splitlines()]
    assert records[-1] == {"source": str(log), "line": "json \ufffd line"}
    assert all(set(r) == {"source", "line"} for r in records)


def test_follow_ends_when_the_client_leaves(follower) -> None:
    mark = follower.audit_mark()
    with client(follower.popen("lastlog -f -n 1", stdin=subprocess.PIPE)) as proc:
        Reader(proc).until(b"\n")
        proc.kill()
    record = follower.wait_audit(lambda e: e["event"] == "command" and e["argv"][:2] == ["lastlog", "-f"], mark)
    assert record["exit_code"] == 130


FAKE_FOLLOWING_JOURNALCTL = """#!/bin/sh
case " $* " in *" -f "*) ;; *) echo "an entry"; exit 0;; esac  # lastlog -f first asks for one entry
echo $$ > "{pidfile}"
echo "args: $*"
i=1
while :; do echo "journal tick $i"; i=$((i+1)); sleep 0.1; done
"""


@pytest.fixture
def journal_server(server_class, tmp_path: Path, client_keys, data) -> Iterator[Any]:
    """A server of its own whose lastlog reads the journal through a fake `journalctl -f`
    (stopped and its log checked by each test, so that a failure points at that test)."""
    tool = tmp_path / "bin" / "journalctl"
    tool.parent.mkdir()
    tool.write_text(FAKE_FOLLOWING_JOURNALCTL.format(pidfile=tmp_path / "pid"))
    tool.chmod(0o755)
    server = server_class(
        tmp_path / "server",
        client_keys,
        data,
        lastlog_path="journal",
        env_extra={"PATH": f"{tool.parent}{os.pathsep}{os.environ.get('PATH', '')}"},
    )
    server.journal_pidfile = tmp_path / "pid"
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _journal_pid(server: Any) -> int:
    def read() -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(server.journal_pidfile.read_text())
        return None

    return server.wait_for(read, 10, "journalctl's pid")


def test_journal_follow_streams_and_journalctl_is_killed_when_the_client_leaves(journal_server) -> None:
    with client(journal_server.popen("lastlog -f -n 5", options=["-n"])) as proc:
        out = Reader(proc)
        out.until(b"journal tick 3\n")
        assert out.data.startswith(b"args: -n 5 -f --no-pager -q\njournal tick 1\n")
        pid = _journal_pid(journal_server)
        assert not pid_gone(pid), "EOF (ssh -n) does not end an exec follow"
        proc.kill()
    journal_server.wait_for(lambda: pid_gone(pid), 5, "journalctl to be killed")
    stop_and_check(journal_server, expect_activity=False)


def test_journal_follow_ctrl_c_in_a_terminal(journal_server) -> None:
    with client(journal_server.popen(options=["-tt"], stdin=subprocess.PIPE)) as proc:
        out = Reader(proc)
        out.until(prompt())
        send(proc, b"lastlog -f\n")
        out.until(b"journal tick 2\r\n")
        pid = _journal_pid(journal_server)
        send(proc, b"\x03")
        out.until(b"^C\r\n" + prompt())
        journal_server.wait_for(lambda: pid_gone(pid), 5, "journalctl to be killed")
        send(proc, b"exit\n")
        out.rest()
        assert proc.wait(timeout=5) == 130
    record = journal_server.wait_audit(lambda e: e["event"] == "command" and e["argv"][:1] == ["lastlog"])
    assert record["exit_code"] == 130
    stop_and_check(journal_server, expect_activity=False)  # journalctl's end after the interrupt is no error


# -- the comphash progress line -------------------------------------------------------------------------------


def test_progress_line_on_a_terminal_then_ctrl_c(op, data) -> None:
    with client(op.popen(options=["-tt"], stdin=subprocess.PIPE)) as proc:
        out = Reader(proc)
        out.until(prompt())
        send(proc, q("comphash", data.big).encode() + b"\n")
        start = len(out.data)
        out.until(b" MiB/s\x1b[K", timeout=10, start=start)
        line = out.data[start:].split(b"\r")[-1]
        assert line.startswith(f"{data.big}: ".encode()) and b"/16,384 MiB" in line, line
        send(proc, b"\x03")
        out.until(b"^C\r\n", start=start)
        after = out.until(prompt(), start=out.data.index(b"^C\r\n", start))[start:]
        assert b"\r\x1b[K" in after, "the progress line is erased"
        send(proc, b"exit\n")
        out.rest()
        assert proc.wait(timeout=5) == 130


def test_no_progress_bytes_without_a_pty(op, data) -> None:
    with client(op.popen(q("comphash", data.big))) as proc:
        time.sleep(1.8)  # past the second after which a terminal would see progress
        assert proc.poll() is None
        proc.kill()
        assert proc.stdout is not None
        assert proc.stdout.read() == b""


def test_ctrl_c_interrupts_an_exec_with_a_pty(op, data) -> None:
    """`ssh -t host comphash BIG` then Ctrl-C: with a pty the client sends ^C as a byte (its
    terminal is raw), so the server's emulated pty must treat it as an interrupt."""
    mark = op.audit_mark()
    with client(op.popen(q("comphash", data.big), options=["-tt"], stdin=subprocess.PIPE)) as proc:
        out = Reader(proc)
        out.until(b" MiB/s", timeout=10)
        send(proc, b"\x03")
        deadline = time.monotonic() + 3
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        status = proc.poll()
    assert status == 130, "Ctrl-C did not interrupt the command within 3 s"
    record = op.wait_audit(lambda e: e["event"] == "command" and e["argv"][:1] == ["comphash"], mark)
    assert record["exit_code"] == 130


# -- twistd -------------------------------------------------------------------------------------------------------


def test_twistd_help_lists_the_plugin(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for argv in ([str(TWISTD), "--help"], [sys.executable, "-m", "twisted", "--help"]):
        r = subprocess.run(argv, capture_output=True, cwd=tmp_path, env=env, timeout=30)
        assert r.returncode == 0, r.stderr
        listing = {line.split()[0]: line for line in r.stdout.decode().splitlines() if line.startswith("    ")}
        assert "conchcmd" in listing, r.stdout.decode()
        assert "hardened SSH server" in listing["conchcmd"]


def test_twistd_conchcmd_serves_comphash_and_stops_on_sigterm(make_server: Callable[..., Any], data) -> None:
    if not TWISTD.exists():
        pytest.skip("twistd is not installed next to this Python")
    server = make_server(
        command=lambda s: [str(TWISTD), "-n", "--pidfile=", "conchcmd", "--config", str(s.config)],
        stop_status=-signal.SIGTERM,  # twistd ends by re-raising the signal that stopped it
    )
    r = server.ssh(q("comphash", data.small))
    assert (r.returncode, r.stderr) == (0, b"")
    assert r.stdout == server.coreutils("sha256sum", data.small)
    r = server.ssh(q("comphash", "--json", data.outside))
    assert r.returncode == 126
    server.stop()
    assert server.returncode == -signal.SIGTERM, server.log_text()
    log = server.log_text()
    assert "Cmd received from alice@" in log
    assert "Traceback" not in log


def test_twistd_conchcmd_with_a_bad_config_says_so(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("listen = 5\n")
    r = subprocess.run(
        [str(TWISTD), "-n", "--pidfile=", "conchcmd", "--config", str(config)],
        capture_output=True,
        cwd=tmp_path,
        timeout=30,
    )
    assert r.returncode != 0
    assert f"conchcmd: configuration error: {config}: listen: must be a list of strings".encode() in (
        r.stdout + r.stderr
    )


# -- systemd --------------------------------------------------------------------------------------------------------


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    directory = tempfile.mkdtemp(prefix="sd")  # short: AF_UNIX paths are limited to 107 bytes
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    try:
        yield sock, path
    finally:
        sock.close()
        shutil.rmtree(directory, ignore_errors=True)


def test_sd_notify_ready_when_listening_and_stopping_at_sigterm(
    make_server: Callable[..., Any], notify_socket: tuple[socket.socket, str], data
) -> None:
    sock, path = notify_socket
    server = make_server(env_extra={"NOTIFY_SOCKET": path})
    message = sock.recv(4096)  # sent once the endpoints listen (the server already said so)
    assert message.split(b"\n")[0] == b"READY=1", message
    assert server.ssh(q("comphash", data.small)).returncode == 0
    server.stop()
    assert server.returncode == 0
    assert sock.recv(4096) == b"STOPPING=1"


def test_sd_notify_to_an_abstract_socket(make_server: Callable[..., Any], data) -> None:
    name = f"conchcmd-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        server = make_server(env_extra={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096).startswith(b"READY=1")
        assert server.ssh("exit 0").returncode == 0


def test_socket_activation(make_server: Callable[..., Any], data, socket_activated) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    fd = listener.fileno()
    try:
        server = make_server(**socket_activated(fd, "INET"))
    finally:
        listener.close()  # the server has its own copy now
    assert server.port == port, "the server must listen on the socket it was given"
    r = server.ssh(q("comphash", data.small))
    assert (r.returncode, r.stderr) == (0, b"")
    assert r.stdout == server.coreutils("sha256sum", data.small)
    assert "listening on systemd:domain=INET:index=0" in server.log_text()


def test_systemd_endpoint_without_a_socket_is_a_clear_startup_error(tmp_path: Path, data) -> None:
    """Started by hand (or by a supervisor that passed no socket), the server must say what is
    wrong and exit, not log a traceback and hang without listening."""
    config = tmp_path / "conchcmd.toml"
    config.write_text(toml_text({"listen": ["systemd:domain=INET:index=0"], "lastlog": {"path": str(data.syslog)}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    proc = subprocess.Popen(
        [sys.executable, "-m", "conchcmd", "serve", "--config", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env=env,
    )
    try:
        out, _ = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=5)
        pytest.fail(f"the server neither listened nor exited:\n{out.decode(errors='replace')}")
    assert proc.returncode != 0
    assert b"cannot listen on systemd:domain=INET:index=0" in out, out
    assert b"Traceback" not in out, out


# -- SIGHUP ---------------------------------------------------------------------------------------------------------


def test_sighup_reloads_policy_for_new_logins_and_keeps_sessions(
    make_server: Callable[..., Any], data, client_keys
) -> None:
    server = make_server()
    digest = server.coreutils("sha256sum", data.small)
    with client(server.popen(options=["-T"], stdin=subprocess.PIPE)) as live:
        out = Reader(live)
        send(live, q("comphash", data.small).encode() + b"\n")
        out.until(digest)

        since = server.log_mark()
        server.settings = {"users": {"alice": {"commands": ["lastlog"]}}}
        server.write_config()
        assert server.proc is not None
        server.proc.send_signal(signal.SIGHUP)
        server.wait_log(r"Reloaded users, keys and policy from", since)

        r = server.ssh(q("comphash", data.small))
        assert r.returncode == 126, "a new login gets the new policy"
        assert r.stderr == b"comphash: not permitted\n"
        assert server.ssh("lastlog -n 1").returncode == 0

        start = len(out.data)
        send(live, q("comphash", data.small).encode() + b"\n")
        out.until(digest, start=start)  # the old session keeps its policy

        since = server.log_mark()
        server.config.write_text(server.config.read_text() + "\nno_such_setting = 1\n")
        server.proc.send_signal(signal.SIGHUP)
        match = server.wait_log(r"Reload rejected, keeping the running configuration: (.*)", since)
        assert "no_such_setting" in match.group(1) and str(server.config) in match.group(1)

        assert server.ssh("lastlog -n 1").returncode == 0, "logins keep working"
        assert server.ssh(q("comphash", data.small)).returncode == 126, "under the last good configuration"
        assert live.poll() is None, "the live session survived both reloads"
        assert live.stdin is not None
        live.stdin.close()
        out.rest()
        assert live.wait(timeout=5) == 0


def test_sighup_picks_up_a_new_user(make_server: Callable[..., Any], client_keys) -> None:
    server = make_server(settings={"users": {"dave": {"commands": ["lastlog"]}}})
    server.authorize("dave", client_keys.pub_line(client_keys.spare))
    assert server.ssh("comphash /x", user="dave", key=client_keys.spare).returncode == 126
    since = server.log_mark()
    server.settings = {}
    server.write_config()
    server.proc.send_signal(signal.SIGHUP)
    server.wait_log(r"Reloaded users", since)
    r = server.ssh(q("help", "--json"), user="dave", key=client_keys.spare)
    assert [c["name"] for c in json.loads(r.stdout)["commands"]] == ["lastlog", "comphash", "help", "exit"]
