"""exec (`ssh host CMD ARGS`): exit statuses, stdout vs stderr, hashes, lastlog, large output, audit."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess

import pytest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("ssh") is None, reason="the OpenSSH client is not installed"),
]

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")


def q(*words: object) -> str:
    """A remote command line, each word quoted the way conchcmd's POSIX-like splitter reads it."""
    return " ".join(shlex.quote(str(w)) for w in words)


# -- exit status 0 ------------------------------------------------------------------------------


def test_comphash_equals_sha256sum_and_sha256sum_accepts_it(server, data, tmp_path):
    r = server.ssh(q("comphash", data.small))
    assert (r.returncode, r.stderr) == (0, b"")
    assert r.stdout == server.coreutils("sha256sum", data.small)
    check = subprocess.run(["sha256sum", "-c", "-"], input=r.stdout, capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout == f"{data.small}: OK\n".encode()


def test_comphash_many_awkward_names_equals_sha256sum(server, data):
    """Spaces, backslash, newline (escaped and flagged like sha256sum does), UTF-8, empty, multi-chunk."""
    paths = [
        data.small,
        data.medium,
        data.empty,
        data.space,
        data.backslash,
        data.newline,
        data.carriage,
        data.utf8,
        data.not_utf8,
        data.link_in,
    ]
    r = server.ssh(q("comphash", *paths))
    assert (r.returncode, r.stderr) == (0, b"")
    assert r.stdout == server.coreutils("sha256sum", *paths)
    check = subprocess.run(["sha256sum", "--strict", "-c", "-"], input=r.stdout, capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize(
    ("algorithm", "tool"),
    [("sha256", "sha256sum"), ("sha1", "sha1sum"), ("sha512", "sha512sum"), ("blake2b", "b2sum"), ("md5", "md5sum")],
)
def test_comphash_algorithms_equal_coreutils(server, data, algorithm, tool):
    paths = [data.small, data.medium, data.space]
    r = server.ssh(q("comphash", "-a", algorithm, *paths))
    assert (r.returncode, r.stderr) == (0, b"")
    assert r.stdout == server.coreutils(tool, *paths)


def test_comphash_long_algorithm_option(server, data):
    r = server.ssh(q("comphash", "--algorithm=sha1", data.small))
    assert (r.returncode, r.stdout, r.stderr) == (0, server.coreutils("sha1sum", data.small), b"")


def test_lastlog_default_is_tail_10(server, data):
    r = server.ssh("lastlog")
    assert (r.returncode, r.stderr) == (0, b"")
    assert r.stdout == server.tail(data.syslog, 10)


@pytest.mark.parametrize("argv", [["lastlog", "-n", "3"], ["lastlog", "-n3"], ["lastlog", "--lines=3"]])
def test_lastlog_n_3(server, data, argv):
    r = server.ssh(q(*argv))
    assert (r.returncode, r.stderr) == (0, b"")
    assert r.stdout == server.tail(data.syslog, 3)
    assert r.stdout.count(b"\n") == 3


def test_lastlog_large_output_arrives_whole(server, data):
    """~15 MB in one exec: flow control must neither truncate nor hang."""
    expected = server.tail(data.syslog, 10000)
    assert len(expected) > 10_000_000
    r = server.ssh("lastlog -n 10000", timeout=60)
    assert (r.returncode, r.stderr) == (0, b"")
    assert len(r.stdout) == len(expected)
    assert r.stdout == expected


def test_help_lists_the_commands(server):
    r = server.ssh("help")
    assert (r.returncode, r.stderr) == (0, b"")
    for name in (b"lastlog", b"comphash", b"exit", b"help"):
        assert re.search(rb"^\s+" + name + rb"\s", r.stdout, re.M), r.stdout
    r = server.ssh("help comphash")
    assert (r.returncode, r.stderr) == (0, b"")
    assert r.stdout.startswith(b"usage: comphash [-a ALGORITHM] [--json] PATH...\n")


def test_concurrent_connections_each_get_their_own_result(server, data):
    jobs = [
        (q("comphash", data.medium), 0, server.coreutils("sha256sum", data.medium)),
        (q("comphash", "-a", "blake2b", data.small), 0, server.coreutils("b2sum", data.small)),
        ("lastlog -n 4", 0, server.tail(data.syslog, 4)),
        ("exit 11", 11, b""),
        ("nope", 127, b""),
        (q("comphash", data.outside), 126, b""),
    ]
    procs = [server.popen(command) for command, _, _ in jobs]
    for proc, (command, status, out) in zip(procs, jobs, strict=True):
        stdout, _ = proc.communicate(timeout=30)
        assert (proc.returncode, stdout) == (status, out), command


def test_exec_ignores_large_stdin(server, data):
    r = server.ssh("lastlog -n 3", input=b"z" * (10 * 1024 * 1024), timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (0, server.tail(data.syslog, 3), b"")


def test_exec_with_a_pty_merges_stderr_with_crlf(server):
    r = server.ssh("nosuch", options=["-tt"])
    assert r.returncode == 127
    assert r.stdout == b"nosuch: command not found\r\n"


# -- failures: status, message on stderr, nothing on stdout ------------------------------------


def test_missing_file_is_status_1(server, data):
    missing = data.root / "no-such-file"
    r = server.ssh(q("comphash", missing))
    assert (r.returncode, r.stdout) == (1, b"")
    assert r.stderr == f"comphash: {missing}: No such file or directory\n".encode()


@pytest.mark.parametrize(("name", "reason"), [("directory", "Is a directory"), ("fifo", "not a regular file")])
def test_not_a_regular_file_is_status_1(server, data, name, reason):
    path = getattr(data, name)
    r = server.ssh(q("comphash", path), timeout=15)
    assert (r.returncode, r.stdout) == (1, b"")
    assert r.stderr == f"comphash: {path}: {reason}\n".encode()


@pytest.mark.parametrize(
    ("argv", "prefix"),
    [
        (["lastlog", "-n", "0"], b"lastlog: "),
        (["lastlog", "-n", "10001"], b"lastlog: "),
        (["lastlog", "-n", "many"], b"lastlog: "),
        (["lastlog", "extra"], b"lastlog: "),
        (["lastlog", "-x"], b"lastlog: "),
        (["comphash"], b"comphash: "),
        (["comphash", "-a", "nope", "x"], b"comphash: "),
        (["comphash", "-a"], b"comphash: "),
        (["exit", "256"], b"exit: "),
        (["exit", "1", "2"], b"exit: "),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_usage_errors_are_status_2(server, argv, prefix):
    r = server.ssh(q(*argv))
    assert (r.returncode, r.stdout) == (2, b"")
    assert r.stderr.startswith(prefix), r.stderr
    assert b"\nusage: " + argv[0].encode() in r.stderr, r.stderr
    assert r.stderr.endswith(b"\n")


def test_unparsable_command_line_is_status_2(server):
    r = server.ssh("comphash 'unterminated")
    assert (r.returncode, r.stdout) == (2, b"")
    assert r.stderr.startswith(b"conchcmd: cannot parse the command line"), r.stderr


def test_relative_path_is_status_2(server):
    r = server.ssh("comphash small.txt")
    assert (r.returncode, r.stdout) == (2, b"")
    assert r.stderr == b"comphash: small.txt: path must be absolute\n"


@pytest.mark.parametrize("name", ["outside", "link_out"])
def test_path_outside_roots_is_status_126(server, data, name):
    path = getattr(data, name)
    r = server.ssh(q("comphash", path))
    assert (r.returncode, r.stdout) == (126, b"")
    assert r.stderr == f"comphash: {path}: outside the allowed roots\n".encode()


def test_dotdot_escape_is_status_126(server, data):
    path = f"{data.root}/../outside/secret.txt"
    r = server.ssh(q("comphash", path))
    assert (r.returncode, r.stdout) == (126, b"")
    assert r.stderr == f"comphash: {path}: outside the allowed roots\n".encode()


def test_unknown_command_is_status_127(server):
    r = server.ssh("frobnicate --now")
    assert (r.returncode, r.stdout, r.stderr) == (127, b"", b"frobnicate: command not found\n")


@pytest.mark.parametrize(("command", "status"), [("exit 7", 7), ("exit 0", 0), ("exit 255", 255), ("exit", 0)])
def test_exit_sets_the_status(server, command, status):
    r = server.ssh(command)
    assert (r.returncode, r.stdout, r.stderr) == (status, b"", b"")


def test_stdout_and_stderr_are_separate(server, data):
    """Good lines only on stdout, in order; one error line per bad path only on stderr."""
    missing = data.root / "missing.txt"
    paths = [data.small, missing, data.medium, data.outside, data.space]
    r = server.ssh(q("comphash", *paths))
    assert r.stdout == server.coreutils("sha256sum", data.small, data.medium, data.space)
    assert (
        r.stderr
        == (
            f"comphash: {missing}: No such file or directory\ncomphash: {data.outside}: outside the allowed roots\n"
        ).encode()
    )
    assert r.returncode == 126, "the highest per-path status (README)"


# -- audit ---------------------------------------------------------------------------------------


def test_audit_records_one_exec(server, data, client_keys):
    mark = server.audit_mark()
    r = server.ssh(q("comphash", "-a", "md5", data.small))
    assert r.returncode == 0
    command = server.wait_audit(lambda e: e["event"] == "command", mark, what="command record")
    peer = command["peer"]
    assert re.fullmatch(r"127\.1\.\d+\.\d+:\d+", peer)  # each ssh call binds its own loopback source
    server.wait_audit(lambda e: e["event"] == "disconnect" and e["peer"] == peer, mark, what="disconnect")
    events = [e for e in server.audit_since(mark) if e.get("peer") == peer]
    assert [e["event"] for e in events] == ["connect", "auth", "command", "disconnect"]
    fingerprint = client_keys.fingerprint(client_keys.ed25519)
    connect, auth, command, disconnect = events
    for e in events:
        assert TS.match(e["ts"]), e
    assert auth["ok"] is True
    assert (auth["user"], auth["method"], auth["key_type"], auth["fingerprint"]) == (
        "alice",
        "publickey",
        "ssh-ed25519",
        fingerprint,
    )
    assert FINGERPRINT.match(auth["fingerprint"])
    assert command["user"] == "alice"
    assert command["fingerprint"] == fingerprint
    assert command["argv"] == ["comphash", "-a", "md5", str(data.small)]
    assert command["exit_code"] == 0
    assert isinstance(command["duration_ms"], int | float) and 0 <= command["duration_ms"] < 10_000
    assert disconnect.get("user") == "alice"
    assert connect["ts"] <= auth["ts"] <= command["ts"] <= disconnect["ts"]


def test_audit_records_failures_and_sanitises(server):
    mark = server.audit_mark()
    r = server.ssh("nosuch\x1b[2J 'two words'")
    assert r.returncode == 127
    command = server.wait_audit(lambda e: e["event"] == "command", mark, what="command record")
    assert command["argv"] == ["nosuch\\x1b[2J", "two words"]
    assert command["exit_code"] == 127
    log = server.log_text()
    assert "\x1b" not in log, "control bytes from the client reached the server log"


def test_audit_and_log_of_a_name_that_is_not_utf8(server, data):
    mark = server.audit_mark()
    r = server.ssh(q("comphash", data.not_utf8))
    assert (r.returncode, r.stdout) == (0, server.coreutils("sha256sum", data.not_utf8))
    command = server.wait_audit(lambda e: e["event"] == "command", mark, what="command record")
    assert command["argv"][1].endswith("caf\\xe9-latin1.bin"), command["argv"]
    assert server.audit_path.read_bytes().decode("utf-8")  # the audit log stays valid UTF-8
