"""A real terminal: `ssh -tt` running inside a detached tmux session, driven with `send-keys` and
read with `capture-pane`. What is asserted is what a person would see on the screen."""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

TMUX = shutil.which("tmux")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("ssh") is None, reason="the OpenSSH client is not installed"),
    pytest.mark.skipif(TMUX is None, reason="tmux is not installed"),
]

_sessions = itertools.count()


class Tmux:
    """One tmux server on its own socket, one session with one pane."""

    def __init__(self, command: str, env: dict[str, str]):
        self.socket = f"conchcmd-test-{os.getpid()}-{next(_sessions)}"
        self.env = env
        self.tmux("new-session", "-d", "-s", "t", "-x", "120", "-y", "30", command)
        self.socket_path = self.tmux("display-message", "-p", "#{socket_path}").stdout.strip()

    def tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert TMUX is not None
        r = subprocess.run(
            [TMUX, "-L", self.socket, "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=10,
        )
        assert r.returncode == 0, f"tmux {' '.join(args)}: {r.stderr}"
        return r

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", "t", "-l", "--", text)

    def key(self, *names: str) -> None:
        self.tmux("send-keys", "-t", "t", *names)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "t").stdout

    def lines(self) -> list[str]:
        return [line.rstrip() for line in self.screen().rstrip("\n").splitlines()]

    def last_line(self) -> str:
        lines = [line for line in self.lines() if line]
        return lines[-1] if lines else ""

    def wait(self, check: Callable[[str], Any], what: str, timeout: float = 8.0) -> Any:
        """Poll the screen until check(screen) is truthy."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            value = check(screen)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the screen:\n{screen}")
            time.sleep(0.05)

    def wait_text(self, text: str, timeout: float = 8.0) -> str:
        return self.wait(lambda s: s if text in s else None, repr(text), timeout)

    def wait_last_line(self, line: str, timeout: float = 8.0) -> None:
        self.wait(lambda _: self.last_line() == line, f"the last line to be {line!r}", timeout)

    def kill(self) -> None:
        assert TMUX is not None
        subprocess.run([TMUX, "-L", self.socket, "kill-server"], capture_output=True, env=self.env, timeout=10)
        if self.socket_path.endswith(self.socket):
            Path(self.socket_path).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def tty_server(make_server: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    log = tmp_path_factory.mktemp("tmuxlog") / "app.log"
    log.write_bytes(b"".join(b"boot line %d\n" % i for i in range(1, 6)))
    server = make_server(lastlog_path=log)
    server.followed = log
    return server


@pytest.fixture
def terminal(tty_server: Any) -> Iterator[Tmux]:
    env = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "DISPLAY", "SSH_ASKPASS", "TMUX")}
    env["TERM"] = "xterm-256color"
    ssh = shlex.join(tty_server.ssh_argv(options=["-tt"]))
    term = Tmux(f"{ssh}; echo EXIT=$?; sleep 600", env)
    try:
        yield term
    finally:
        term.kill()


PROMPT = f"alice@{socket.gethostname()}>"


def append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


def test_completion_history_follow_ctrl_c_and_exit_status(terminal: Tmux, tty_server: Any) -> None:
    mark = tty_server.audit_mark()
    terminal.wait_last_line(PROMPT)
    assert "conchcmd on" in terminal.screen()

    # Tab completes the command name and adds the space.
    terminal.type("lastl")
    terminal.key("Tab")
    terminal.type("-n 2")
    terminal.wait_last_line(f"{PROMPT} lastlog -n 2")
    terminal.key("Enter")
    terminal.wait(lambda s: "boot line 4\nboot line 5\n" + PROMPT in s, "the tail and a new prompt")

    # Up recalls the previous command; it runs again.
    terminal.key("Up")
    terminal.wait_last_line(f"{PROMPT} lastlog -n 2")
    terminal.key("Enter")
    terminal.wait(lambda s: s.count("boot line 5\n" + PROMPT) == 2, "the second run's output")
    runs = [e["argv"] for e in tty_server.audit_since(mark, "command")]
    assert runs == [["lastlog", "-n", "2"], ["lastlog", "-n", "2"]]

    # lastlog -f shows lines appended while it runs; Ctrl-C returns to the prompt.
    terminal.type("lastlog -f -n 1")
    terminal.key("Enter")
    terminal.wait(lambda s: s.rstrip().endswith("lastlog -f -n 1\nboot line 5"), "the follow's first line")
    append(tty_server.followed, "followed in tmux 1\n")
    terminal.wait_text("boot line 5\nfollowed in tmux 1\n")
    append(tty_server.followed, "followed in tmux 2\nfollowed in tmux 3\n")
    terminal.wait_text("followed in tmux 1\nfollowed in tmux 2\nfollowed in tmux 3\n")
    terminal.key("C-c")
    terminal.wait(lambda s: "followed in tmux 3\n^C\n" + PROMPT in s, "^C and the prompt")
    terminal.wait_last_line(PROMPT)
    follow = tty_server.wait_audit(lambda e: e["event"] == "command" and e["argv"][:2] == ["lastlog", "-f"], mark)
    assert follow["exit_code"] == 130

    # `exit 3` ends ssh with status 3.
    terminal.type("exit 3")
    terminal.key("Enter")
    terminal.wait_text("EXIT=3")
    assert "\x1b" not in terminal.screen()


def test_editing_keys_and_ctrl_l_keep_the_screen(terminal: Tmux, tty_server: Any) -> None:
    terminal.wait_last_line(PROMPT)
    terminal.type("help")
    terminal.key("Enter")
    terminal.wait_text("Exit statuses:")

    # Ctrl-L redraws the line below; the help text above stays on the screen.
    terminal.type("comphash wrong")
    terminal.key("C-l")
    terminal.wait(lambda s: s.rstrip().endswith(f"{PROMPT} comphash wrong\n{PROMPT} comphash wrong"), "the redraw")
    assert "Exit statuses:" in terminal.screen(), "the screen was not cleared"

    # Ctrl-W, Ctrl-U, Ctrl-A / Ctrl-E.
    terminal.key("C-w")
    terminal.wait_last_line(f"{PROMPT} comphash")
    terminal.key("C-u")
    terminal.wait_last_line(PROMPT)
    terminal.type("elp lastlog")
    terminal.key("C-a")
    terminal.type("h")
    terminal.key("C-e")
    terminal.wait_last_line(f"{PROMPT} help lastlog")
    terminal.key("Enter")
    terminal.wait_text("usage: lastlog [-n N] [-f] [--json]")

    # A window resize does not clear the screen either; editing goes on.
    terminal.type("exi")
    terminal.tmux("resize-window", "-t", "t", "-x", "100", "-y", "25")
    terminal.wait(lambda _: len(terminal.lines()) <= 25, "the resize")
    assert "usage: lastlog" in terminal.screen()
    terminal.type("t 4")
    terminal.key("Enter")
    terminal.wait_text("EXIT=4")


def test_ctrl_d_on_an_empty_line_leaves_with_the_last_status(terminal: Tmux) -> None:
    terminal.wait_last_line(PROMPT)
    terminal.type("nosuch")
    terminal.key("Enter")
    terminal.wait_text("nosuch: command not found")
    terminal.wait_last_line(PROMPT)
    terminal.key("C-d")
    terminal.wait_text("EXIT=127")
    assert re.search(r"EXIT=127", terminal.screen())


def test_cjk_editing_on_a_wrapped_line_runs_what_the_screen_shows(tty_server: Any) -> None:
    """Double-width characters on a line that wraps: Left/Right, insert, Backspace, Home/End. The
    line that runs (the audit record) is the one tmux shows, character for character."""
    env = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "DISPLAY", "SSH_ASKPASS", "TMUX")}
    env.update(TERM="xterm-256color", LC_ALL="C.UTF-8")
    mark = tty_server.audit_mark()
    terminal = Tmux(f"{shlex.join(tty_server.ssh_argv(options=['-tt']))}; echo EXIT=$?; sleep 600", env)
    try:
        terminal.wait_last_line(PROMPT)
        terminal.tmux("resize-window", "-t", "t", "-x", "31", "-y", "30")
        word = "中文字符漢字" * 4  # 48 columns: the line wraps at least once, wide characters at the edge
        terminal.type("help " + word)
        expected = word
        terminal.key("Left", "Left", "Left")
        terminal.type("x")
        expected = expected[:-3] + "x" + expected[-3:]
        terminal.key("C-a")
        terminal.key(*["Right"] * 9)  # "help " and four wide characters
        terminal.type("ab")
        expected = expected[:4] + "ab" + expected[4:]
        terminal.key("BSpace")
        expected = expected[:5] + expected[6:]
        terminal.key("C-e", "BSpace")
        expected = expected[:-1]
        shown = f"{PROMPT} help {expected}"

        def shows_it(_: str) -> bool:
            # The input's rows from the prompt down, joined: spaces left out, since a row may end in
            # a blank cell (a wide character that did not fit) and rows are right-trimmed.
            rows = terminal.lines()
            start = max(i for i, row in enumerate(rows) if row.startswith(PROMPT))
            return "".join(rows[start:]).replace(" ", "") == shown.replace(" ", "")

        terminal.wait(shows_it, f"the screen to show {shown!r}")
        terminal.key("Enter")
        record = tty_server.wait_audit(lambda e: e["event"] == "command" and e["argv"][:1] == ["help"], mark)
        assert record["argv"] == ["help", expected], "what ran is not what the screen showed"
    finally:
        terminal.kill()
