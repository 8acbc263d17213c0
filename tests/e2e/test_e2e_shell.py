"""Shells (without a pty for scripts, with a pty for people) and ControlMaster multiplexing."""

from __future__ import annotations

import shlex
import shutil
import socket
import subprocess
import time

import pytest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("ssh") is None, reason="the OpenSSH client is not installed"),
]


def q(*words: object) -> str:
    return " ".join(shlex.quote(str(w)) for w in words)


def crlf(data: bytes) -> bytes:
    return data.replace(b"\n", b"\r\n")


# -- shell without a pty ------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [["-T"], []], ids=["-T", "piped-stdin"])
def test_plain_shell_runs_lines_in_order(server, data, flags):
    script = f"lastlog -n 2\n{q('comphash', data.small)}\nexit 3\n".encode()
    r = server.ssh(options=flags, input=script)
    assert r.returncode == 3, r.stderr
    assert r.stdout == server.tail(data.syslog, 2) + server.coreutils("sha256sum", data.small)
    assert b"\x1b" not in r.stdout
    assert r.stderr == b""


def test_plain_shell_eof_without_exit_gives_last_status(server):
    r = server.ssh(options=["-T"], input=b"lastlog -n 1\nnosuch thing\n")
    assert r.returncode == 127
    assert r.stderr == b"nosuch: command not found\n"


def test_plain_shell_last_line_without_newline(server):
    r = server.ssh(options=["-T"], input=b"lastlog -n 1\nexit 6")
    assert (r.returncode, r.stderr) == (6, b"")


def test_plain_shell_bare_exit_uses_last_status(server, data):
    r = server.ssh(options=["-T"], input=q("comphash", data.root / "missing").encode() + b"\nexit\nlastlog\n")
    assert (r.returncode, r.stdout) == (1, b""), "lines after exit must not run"
    assert r.stderr == f"comphash: {data.root / 'missing'}: No such file or directory\n".encode()


def test_plain_shell_errors_on_stderr_outputs_on_stdout(server, data):
    script = "\n".join(
        [q("comphash", data.small), "bogus", q("comphash", data.outside), q("comphash", data.space), "exit 0", ""]
    ).encode()
    r = server.ssh(options=["-T"], input=script)
    assert r.returncode == 0
    assert r.stdout == server.coreutils("sha256sum", data.small, data.space)
    assert r.stderr == f"bogus: command not found\ncomphash: {data.outside}: outside the allowed roots\n".encode()


def test_plain_shell_too_long_line_is_refused_and_the_session_continues(server, data):
    script = b"comphash /" + b"x" * (2 * 1024 * 1024) + b"\n" + q("comphash", data.small).encode() + b"\n"
    r = server.ssh(options=["-T"], input=script, timeout=30)
    assert r.returncode == 0
    assert r.stdout == server.coreutils("sha256sum", data.small)
    assert b"line too long" in r.stderr
    assert r.stderr.count(b"\n") == 1, r.stderr


def test_plain_shell_crlf_line_ends(server, data):
    r = server.ssh(options=["-T"], input=b"lastlog -n 1\r\nexit 2\r\n")
    assert (r.returncode, r.stdout, r.stderr) == (2, server.tail(data.syslog, 1), b"")


@pytest.mark.parametrize("newline", [b"\n", b""], ids=["with-newline", "at-eof"])
def test_plain_shell_too_long_last_line_sets_status_2(server, newline):
    r = server.ssh(options=["-T"], input=b"lastlog -n 1 " + b"y" * (2 * 1024 * 1024) + newline, timeout=30)
    assert (r.returncode, r.stdout) == (2, b"")
    assert b"line too long" in r.stderr


def test_plain_shell_many_lines_in_order(server, data):
    """Input far beyond one packet: every line runs, in order (input flow control)."""
    files = [data.small, data.space, data.empty, data.utf8]
    lines = [q("comphash", files[i % len(files)]) for i in range(400)]
    r = server.ssh(options=["-T"], input=("\n".join(lines) + "\n").encode(), timeout=60)
    assert (r.returncode, r.stderr) == (0, b"")
    expected = {f: server.coreutils("sha256sum", f) for f in files}
    assert r.stdout == b"".join(expected[files[i % len(files)]] for i in range(400))


def test_plain_shell_input_larger_than_the_window(server, data):
    """3 MB of input (more than the 2 MiB channel window) through the plain shell: all of it runs."""
    line = q("comphash", data.empty).encode() + b" " * 10_000 + b"\n"
    r = server.ssh(options=["-T"], input=line * 300 + b"exit 8\n", timeout=60)
    assert (r.returncode, r.stderr) == (8, b"")
    assert r.stdout == server.coreutils("sha256sum", data.empty) * 300


# -- shell with a pty ---------------------------------------------------------------------------


def prompt(user: str = "alice") -> bytes:
    return f"{user}@{socket.gethostname()}> ".encode()


def test_pty_shell_prompt_and_crlf_output(server, data):
    r = server.ssh(options=["-tt"], input=b"lastlog -n 2\nexit 4\n")
    assert r.returncode == 4, r.stderr
    out = r.stdout
    assert out.count(prompt()) >= 2, out
    assert prompt() + b"lastlog -n 2\r\n" + crlf(server.tail(data.syslog, 2)) + prompt() in out
    assert b"\x1bc" not in out, "full terminal reset"
    assert b"\x1b[2J" not in out, "clear screen"
    assert b"\x1b[4h" not in out, "insert mode left on"


def test_pty_shell_echo_of_the_last_line_arrives_before_eof(server):
    """Output queued in the same input batch as `exit` must not be dropped or sent after EOF."""
    r = server.ssh(options=["-tt"], input=b"lastlog -n 1\nexit 4\n")
    assert r.returncode == 4
    assert r.stdout.endswith(prompt() + b"exit 4\r\n"), r.stdout[-200:]


def test_pty_shell_too_long_line(server):
    """The bell, then the error on its own line, then the prompt; the session goes on."""
    r = server.ssh(options=["-tt"], input=b"comphash /" + b"x" * 20000 + b"\nexit 3\n")
    assert r.returncode == 3
    message = b"conchcmd: line too long (more than 16384 bytes), ignored\r\n"
    assert b"x\x07\r\n" + message + prompt() + b"exit 3\r\n" in r.stdout, r.stdout[-300:]


def test_pty_shell_large_output(server, data):
    r = server.ssh(options=["-tt"], input=b"lastlog -n 10000\nexit 0\n", timeout=60)
    assert r.returncode == 0
    expected = crlf(server.tail(data.syslog, 10000).replace(b"\x1b", b"?"))
    assert prompt() + b"lastlog -n 10000\r\n" + expected + prompt() + b"exit 0\r\n" in r.stdout


def test_pty_shell_ctrl_c_clears_the_line(server):
    r = server.ssh(options=["-tt"], input=b"lastlo\x03nosuch\nexit\n")
    assert r.returncode == 127, "the cleared line must not run; `exit` gives the last status"
    assert b"^C" in r.stdout
    assert b"lastlo: command not found" not in r.stdout
    assert b"nosuch: command not found\r\n" in r.stdout


def test_pty_shell_ctrl_d_on_empty_line_ends_the_session(server, data):
    r = server.ssh(options=["-tt"], input=q("comphash", data.outside).encode() + b"\n\x04lastlog\n")
    assert r.returncode == 126
    assert f"comphash: {data.outside}: outside the allowed roots\r\n".encode() in r.stdout
    assert server.tail(data.syslog, 1).rstrip(b"\n") not in r.stdout, "input after Ctrl-D must not run"


def test_pty_shell_utf8_input(server, data):
    r = server.ssh(options=["-tt"], input=q("comphash", data.utf8).encode() + b"\nexit\n")
    assert r.returncode == 0
    assert crlf(server.coreutils("sha256sum", data.utf8)) in r.stdout


def test_pty_shell_log_control_bytes_are_neutralised(server, data):
    n = data.esc_line_index
    r = server.ssh(options=["-tt"], input=f"lastlog -n {n}\nexit\n".encode())
    assert r.returncode == 0
    assert b"\x1b[31m" not in r.stdout
    assert b"?[31mred alert?[0m" in r.stdout
    for line in server.tail(data.syslog, n).splitlines()[1:]:
        assert line + b"\r\n" in r.stdout


def test_pty_shell_ctrl_c_interrupts_a_running_command(server, data):
    mark, since = server.audit_mark(), server.log_mark()
    proc = server.popen(options=["-tt"], stdin=subprocess.PIPE)
    try:
        assert proc.stdin is not None
        proc.stdin.write(q("comphash", data.big).encode() + b"\n")
        proc.stdin.flush()
        server.wait_log(r"Cmd received from alice@\S+ : comphash \S*big\.sparse", since)
        started = time.monotonic()
        proc.stdin.write(b"\x03")
        proc.stdin.flush()
        record = server.wait_audit(
            lambda e: e["event"] == "command" and e["argv"][:1] == ["comphash"], mark, timeout=5, what="command"
        )
        assert record["exit_code"] == 130
        assert time.monotonic() - started < 3
        proc.stdin.write(b"exit\n")
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    assert proc.returncode == 130
    assert b"^C" in out


# -- ControlMaster: several sessions on one connection -------------------------------------------


@pytest.fixture
def master(server, tmp_path_factory):
    """A ControlMaster connection run in the foreground (we own its pid), closed with -O exit."""
    control = tmp_path_factory.mktemp("cm") / "cm"
    proc = subprocess.Popen(
        server.ssh_argv(options=["-o", "ControlMaster=yes", "-o", f"ControlPath={control}", "-N"]),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def mux(*args: str) -> subprocess.CompletedProcess[bytes]:
        argv = server.ssh_argv(options=["-o", "ControlMaster=no", "-S", str(control), *args])
        return subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=10)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"master exited: {proc.stderr.read() if proc.stderr else b''!r}")
        return control.exists() and mux("-O", "check").returncode == 0

    try:
        server.wait_for(ready, 10, "the ControlMaster socket")
        yield control
        r = mux("-O", "exit")
        assert r.returncode == 0, r.stderr
        proc.wait(timeout=5)  # a -N master has no session of its own: ssh exits 255 here even against sshd
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


def test_controlmaster_sessions_have_their_own_output_and_status(server, data, master):
    mark = server.audit_mark()
    mux = ["-o", "ControlMaster=no", "-S", str(master)]
    jobs = {
        "hash": (q("comphash", data.medium), 0),
        "log": ("lastlog -n 5", 0),
        "missing": (q("comphash", data.root / "gone"), 1),
        "exit": ("exit 5", 5),
        "unknown": ("whatever", 127),
        "outside": (q("comphash", data.outside), 126),
    }
    procs = {name: server.popen(cmd, options=mux) for name, (cmd, _) in jobs.items()}
    results = {name: (p.communicate(timeout=30), p.returncode) for name, p in procs.items()}
    for name, (_, status) in jobs.items():
        assert results[name][1] == status, (name, results[name])
    (out, err), _ = results["hash"]
    assert (out, err) == (server.coreutils("sha256sum", data.medium), b"")
    (out, err), _ = results["log"]
    assert (out, err) == (server.tail(data.syslog, 5), b"")
    (out, err), _ = results["unknown"]
    assert (out, err) == (b"", b"whatever: command not found\n")
    (out, err), _ = results["outside"]
    assert (out, err) == (b"", f"comphash: {data.outside}: outside the allowed roots\n".encode())
    # Sequential sessions through the same master, including a plain shell with its own state.
    r = server.ssh(options=mux, input=b"nosuch\nexit\n")
    assert (r.returncode, r.stderr) == (127, b"nosuch: command not found\n")
    r = server.ssh("exit 9", options=mux)
    assert r.returncode == 9
    r = server.ssh("lastlog -n 10000", options=mux, timeout=60)
    assert (r.returncode, r.stdout == server.tail(data.syslog, 10000)) == (0, True)
    # A session whose client (not the master) dies mid-command is cancelled; the others go on.
    since = server.log_mark()
    proc = server.popen(q("comphash", data.big), options=mux)
    try:
        server.wait_log(r"Cmd received from alice@\S+ : comphash \S*big\.sparse", since)
        proc.kill()
        proc.wait(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    record = server.wait_audit(
        lambda e: e["event"] == "command" and e["argv"][1:] == [str(data.big)], mark, timeout=5, what="cancelled hash"
    )
    assert record["exit_code"] == 130
    r = server.ssh(q("comphash", data.small), options=mux)
    assert (r.returncode, r.stdout) == (0, server.coreutils("sha256sum", data.small))
    # One connection carried them all.
    commands = server.audit_since(mark, "command")
    assert len(commands) == len(jobs) + 6
    assert len({c["peer"] for c in commands}) == 1
    assert server.audit_since(mark, "connect") == [], "the sessions must reuse the master's connection"
