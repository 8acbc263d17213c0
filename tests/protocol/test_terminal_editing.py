"""The terminal shell as a person meets it, over a recording connection (no sockets, task.Clock):
Tab completion, history, line editing keys, Ctrl-C/Ctrl-D, UTF-8 input, the prompt, and the
comphash progress line. Every assertion is on the bytes the user's terminal receives, the exit
status sent, or the command the audit log says ran."""

from __future__ import annotations

import gc
import hashlib
from pathlib import Path
from typing import Any

import pytest
from support.channels import winsize
from support.runners import ManualRunner
from support.terminal import (
    BELL,
    CLEARS,
    CTRL_A,
    CTRL_C,
    CTRL_D,
    CTRL_E,
    CTRL_K,
    CTRL_L,
    CTRL_U,
    CTRL_W,
    DOWN,
    LEFT,
    PROMPT,
    TAB,
    UP,
    Term,
)
from twisted.logger import LogLevel, capturedLogs, formatEvent

from conchcmd.commands.comphash import MIB, hash_file
from conchcmd.core.config import UserPolicy
from conchcmd.session import completion
from conchcmd.session.completion import MAX_CANDIDATES


@pytest.fixture
def term(tmp_path: Path) -> Term:
    return Term(tmp_path)


# -- Tab completion: command names --------------------------------------------------------------


def test_tab_completes_a_single_command_name_and_adds_a_space(term: Term) -> None:
    assert term.keys(b"lastl") == b"lastl"
    assert term.keys(TAB) == b"og "
    term.keys(b"-n 1\r")
    assert term.ran() == [["lastlog", "-n", "1"]]
    assert term.screen.endswith(b"lastlog -n 1\r\nlog line 20\r\n" + PROMPT)


def test_tab_extends_to_the_common_prefix_of_several_commands_without_a_space(term: Term) -> None:
    term.keys(b"st")
    assert term.keys(TAB) == b"at-"
    assert term.keys(b"t" + TAB) == b"two "  # now unique


def test_tab_on_an_ambiguous_word_lists_candidates_then_redraws_prompt_and_line(term: Term) -> None:
    term.keys(b"stat-")
    out = term.keys(TAB)
    assert out == b"\r\nstat-one  stat-two\r\n\r" + PROMPT + b"stat-\x1b[K"
    assert term.keys(b"one\r").startswith(b"one\r\nstat-one\r\n")
    assert term.ran() == [["stat-one"]]


def test_tab_with_the_cursor_inside_the_line_redraws_with_the_cursor_back_in_place(term: Term) -> None:
    term.keys(b"stat- tail" + LEFT * 5)
    out = term.keys(TAB)
    assert out.startswith(b"\r\nstat-one  stat-two\r\n\r" + PROMPT + b"stat- tail\x1b[K")
    assert out.endswith(b"\x1b[5D")  # back to just after "stat-"


def test_tab_with_nothing_to_offer_rings_the_bell(term: Term) -> None:
    term.keys(b"zz")
    assert term.keys(TAB) == BELL
    assert term.keys(b"\r").startswith(b"\r\n")
    assert term.ran() == [["zz"]] and term.statuses() == [127]


def test_tab_on_an_empty_line_lists_every_command(term: Term) -> None:
    out = term.keys(TAB)
    assert out.startswith(b"\r\nlastlog  comphash  help  exit  say  block  stat-one  stat-two\r\n")
    assert out.endswith(b"\r" + PROMPT + b"\x1b[K")


def test_tab_completes_options(term: Term) -> None:
    term.keys(b"lastlog --f")
    assert term.keys(TAB) == b"ollow "
    term.keys(CTRL_U + b"comphash --j")
    assert term.keys(TAB) == b"son "


def test_tab_completes_command_names_after_help(term: Term) -> None:
    term.keys(b"help l")
    assert term.keys(TAB) == b"astlog "
    out = term.keys(b"\r")
    assert b"usage: lastlog [-n N] [-f] [--json]\r\n" in out
    assert term.ran() == [["help", "lastlog"]]


def test_tab_completes_nothing_for_arguments_of_commands_without_completion(term: Term) -> None:
    term.keys(b"lastlog x")
    assert term.keys(TAB) == BELL


# -- Tab completion: comphash paths --------------------------------------------------------------


def test_tab_completes_a_file_inside_the_root_with_a_space(term: Term) -> None:
    term.keys(f"comphash {term.root}/hello".encode())
    assert term.keys(TAB) == b".txt "
    out = term.keys(b"\r")
    digest = hashlib.sha256(b"hello\n").hexdigest()
    assert f"{digest}  {term.root}/hello.txt\r\n".encode() in out
    assert term.statuses() == [0]


def test_tab_on_files_sharing_a_prefix_extends_then_lists_base_names(term: Term) -> None:
    term.keys(f"comphash {term.root}/he".encode())
    assert term.keys(TAB) == b"l"
    out = term.keys(TAB)
    line = f"comphash {term.root}/hel".encode()
    assert out == b"\r\nhello.txt  help.md\r\n\r" + PROMPT + line + b"\x1b[K"


def test_tab_gives_directories_a_trailing_slash_and_no_space(term: Term) -> None:
    term.keys(f"comphash {term.root}/su".encode())
    assert term.keys(TAB) == b"b/"
    assert term.keys(TAB) == b"deep.txt "


def test_tab_offers_a_directory_on_the_way_to_a_root_but_nothing_else_outside(term: Term) -> None:
    """From base/srv/ only root/ leads into the roots: rootless/, other/ and notes.txt do not."""
    term.keys(f"comphash {term.srv}/".encode())
    assert term.keys(TAB) == b"root/"
    term.keys(CTRL_U + f"comphash {term.srv}/ro".encode())
    assert term.keys(TAB) == b"ot/"  # not ambiguous with rootless/


def test_tab_offers_each_parent_directory_that_leads_to_a_root(term: Term) -> None:
    parent, name = term.base.parent, term.base.name
    term.keys(f"comphash {parent}/{name}".encode())
    assert term.keys(TAB) == b"/"
    assert term.keys(TAB) == b"srv/"
    assert term.keys(TAB) == b"root/"


@pytest.mark.parametrize("prefix", ["oth", "notes", "rootl"])
def test_tab_never_offers_paths_outside_the_roots(term: Term, prefix: str) -> None:
    term.keys(f"comphash {term.srv}/{prefix}".encode())
    assert term.keys(TAB) == BELL


def test_tab_completed_name_with_a_space_still_names_the_file(term: Term) -> None:
    """A completed name must stay one argument when the line runs (quoted or escaped)."""
    term.keys(f"comphash {term.root}/with".encode())
    term.keys(TAB)
    out = term.keys(b"\r")
    digest = hashlib.sha256(b"spaced\n").hexdigest()
    assert term.statuses() == [0], out
    assert f"{digest}  {term.root}/with space.txt\r\n".encode() in out


def test_tab_listing_is_capped(term: Term) -> None:
    many = term.root / "many"
    many.mkdir()
    for i in range(MAX_CANDIDATES + 50):
        (many / f"{i:03d}").write_bytes(b"")
    term.keys(f"comphash {many}/".encode())
    out = term.keys(TAB)
    listed = out.split(b"\r\n")[1].split(b"  ")
    assert len(listed) == MAX_CANDIDATES


def test_tab_never_extends_past_what_all_matches_share_when_the_listing_is_capped(term: Term) -> None:
    """With more matches than the cap, the common prefix of the first ones is not the common
    prefix of all: completing `item-` to `item-a-` would hide `item-b`."""
    many = term.root / "many"
    many.mkdir()
    for i in range(MAX_CANDIDATES):
        (many / f"item-a-{i:04d}").write_bytes(b"")
    (many / "item-b").write_bytes(b"")
    term.keys(f"comphash {many}/item-".encode())
    assert not term.keys(TAB).startswith(b"a-"), "completed to a prefix that excludes item-b"


def test_tab_respects_the_user_policy(tmp_path: Path) -> None:
    term = Term(tmp_path, policy=UserPolicy(commands=frozenset({"lastlog"})))
    term.keys(b"comph")
    assert term.keys(TAB) == BELL, "a command the user may not run is not completed"
    term.keys(CTRL_U + f"comphash {term.root}/hel".encode())
    assert term.keys(TAB) == BELL, "nor its paths"
    term.keys(CTRL_U + b"s")
    assert term.keys(TAB) == BELL
    term.keys(CTRL_U + b"h")
    assert term.keys(TAB) == b"elp ", "help and exit are always allowed"
    term.keys(CTRL_U)
    assert term.keys(TAB).startswith(b"\r\nlastlog  help  exit\r\n")


def test_tab_paths_follow_the_users_own_roots(tmp_path: Path) -> None:
    probe = Term(tmp_path)
    sub = str(probe.root / "sub")
    term = Term(tmp_path, policy=UserPolicy(comphash_roots=(sub,)))
    term.keys(f"comphash {term.root}/".encode())
    assert term.keys(TAB) == b"sub/"  # hello.txt and help.md are outside this user's root


def test_tab_with_a_slow_listing_completes_when_the_listing_arrives(tmp_path: Path) -> None:
    runner = ManualRunner()
    term = Term(tmp_path, runner=runner)
    term.keys(f"comphash {term.root}/hello".encode())
    assert term.keys(TAB) == b""  # the listing runs off the reactor thread
    runner.run_all()
    assert term.screen.endswith(b"hello.txt ")


def test_a_flood_of_tabs_queues_one_listing_which_still_completes(tmp_path: Path) -> None:
    """Each listing takes a thread of the commands' shared pool: a Tab while one is pending is
    ignored (before: 1,000 Tabs queued 1,000 listings, delaying everyone's comphash)."""
    runner = ManualRunner()
    term = Term(tmp_path, runner=runner)
    term.keys(f"comphash {term.root}/hello".encode())
    assert term.keys(TAB * 500) == b""
    for _ in range(500):
        assert term.keys(TAB) == b""
    assert runner.submitted == 1
    runner.run_all()
    assert term.screen.endswith(b"hello.txt ")
    term.keys(CTRL_U + f"comphash {term.root}/su".encode())
    term.keys(TAB)  # the finished listing freed the slot
    assert runner.submitted == 2
    runner.run_all()
    assert term.screen.endswith(b"sub/")


def test_tab_result_is_dropped_if_the_line_changed_meanwhile(tmp_path: Path) -> None:
    runner = ManualRunner()
    term = Term(tmp_path, runner=runner)
    term.keys(f"comphash {term.root}/hello".encode())
    term.keys(TAB + b"X")
    before = term.screen
    runner.run_all()
    assert term.screen == before


# -- history ---------------------------------------------------------------------------------------


def test_up_recalls_previous_lines_and_down_comes_back(term: Term) -> None:
    term.keys(b"say one\r")
    term.keys(b"say two\r")
    assert term.keys(UP).endswith(b"say two")
    assert term.keys(UP).endswith(b"say one")
    assert term.keys(UP) == b""  # the oldest: nothing more
    assert term.keys(DOWN).endswith(b"say two")
    term.keys(b" again\r")
    assert term.ran()[-1] == ["say", "two", "again"]


def test_down_past_the_newest_line_gives_an_empty_line(term: Term) -> None:
    term.keys(b"say one\r")
    term.keys(UP)
    term.keys(DOWN)
    term.keys(b"say fresh\r")
    assert term.ran()[-1] == ["say", "fresh"]


def test_history_keeps_only_history_size_lines(tmp_path: Path) -> None:
    term = Term(tmp_path, history_size=3)
    for i in range(1, 6):
        term.keys(b"say %d\r" % i)
    term.keys(UP * 10 + b"\r")
    assert term.ran()[-1] == ["say", "3"], "the oldest line kept is the third"


def test_history_cap_holds_even_without_pressing_return(tmp_path: Path) -> None:
    """Typing and pressing Up stores the typed line; that must not grow history past its cap."""
    term = Term(tmp_path, history_size=3)
    for i in range(10):
        term.keys(b"draft%d" % i + UP + DOWN + DOWN)  # type, look back, come back to an empty line
    term.keys(UP * 20 + b"\r")
    assert term.ran() in ([], [["draft7"]]), "Up reached further back than history_size lines"
    handler: Any = term.chan.handler
    assert len(handler.editor.historyLines) <= 3


def test_history_is_per_session(tmp_path: Path) -> None:
    first = Term(tmp_path)
    first.keys(b"say secret\r")
    second = Term(tmp_path)
    assert second.keys(UP) == b""


# -- line editing keys -------------------------------------------------------------------------------


def test_ctrl_a_and_ctrl_e_move_to_the_start_and_the_end(term: Term) -> None:
    term.keys(b"ay hello" + CTRL_A + b"s" + CTRL_E + b" there\r")
    assert term.ran() == [["say", "hello", "there"]]


def test_ctrl_w_deletes_the_word_before_the_cursor(term: Term) -> None:
    out = term.keys(b"say one two" + CTRL_W)
    assert out.endswith(b"\r" + PROMPT + b"say one \x1b[K")
    term.keys(b"three\r")
    assert term.ran() == [["say", "one", "three"]]


def test_ctrl_w_also_takes_the_spaces_after_the_word(term: Term) -> None:
    term.keys(b"say one two   " + CTRL_W + b"2\r")
    assert term.ran() == [["say", "one", "2"]]


def test_ctrl_w_in_the_middle_keeps_the_rest(term: Term) -> None:
    out = term.keys(b"say bad good" + LEFT * 5 + CTRL_W)
    assert out.endswith(b"\r" + PROMPT + b"say  good\x1b[K\x1b[5D")
    term.keys(b"fine\r")
    assert term.ran() == [["say", "fine", "good"]]


def test_ctrl_u_deletes_to_the_start_of_the_line(term: Term) -> None:
    out = term.keys(b"junk words" + CTRL_U)
    assert out.endswith(b"\r" + PROMPT + b"\x1b[K")
    term.keys(b"say ok\r")
    assert term.ran() == [["say", "ok"]]


def test_ctrl_u_in_the_middle_keeps_what_is_after_the_cursor(term: Term) -> None:
    term.keys(b"xxsay mid" + LEFT * 7 + CTRL_U + b"\r")
    assert term.ran() == [["say", "mid"]]


def test_ctrl_k_deletes_to_the_end_of_the_line(term: Term) -> None:
    out = term.keys(b"say keep cut" + LEFT * 4 + CTRL_K)
    assert out.endswith(b"\x1b[K")
    term.keys(b"\r")
    assert term.ran() == [["say", "keep"]]


def test_ctrl_l_redraws_on_a_new_line_and_never_clears_the_screen(term: Term) -> None:
    out = term.keys(b"say abc" + CTRL_L)
    assert out == b"say abc\r\n\r" + PROMPT + b"say abc\x1b[K"
    out = term.keys(LEFT * 2 + CTRL_L)
    assert out.endswith(b"\r" + PROMPT + b"say abc\x1b[K\x1b[2D")  # the cursor stays where it was
    term.keys(b"X\r")
    assert term.ran() == [["say", "aXbc"]]
    for clear in CLEARS:
        assert clear not in term.screen


def test_window_change_sends_nothing_and_the_line_survives(term: Term) -> None:
    term.keys(b"say wide")
    before = term.screen
    assert term.chan.requestReceived(b"window-change", winsize(132, 50)) == 1
    assert term.chan.requestReceived(b"window-change", winsize(20, 5)) == 1
    term.clock.advance(1)
    assert term.screen == before
    term.keys(b"r\r")
    assert term.ran() == [["say", "wider"]]


def test_the_session_never_clears_resets_or_sets_insert_mode(term: Term) -> None:
    term.keys(b"say a" + CTRL_L + TAB + UP + DOWN + CTRL_C + b"exit\r")
    out = term.screen
    for bad in (*CLEARS, b"\x1b[4h", b"\x1b[?1049h", b"\x1b[H"):
        assert bad not in out, bad


# -- Ctrl-C, Ctrl-D ----------------------------------------------------------------------------------


def test_ctrl_c_at_the_prompt_abandons_the_line(term: Term) -> None:
    out = term.keys(b"say abc" + LEFT * 3 + CTRL_C)
    assert out.endswith(b"\x1b[3C^C\r\n" + PROMPT)  # to the end of the line, then ^C
    term.keys(b"say next\r")
    assert term.ran() == [["say", "next"]]


def test_ctrl_c_during_a_command_interrupts_it_with_130(term: Term) -> None:
    term.keys(b"block\r")
    assert term.gate is not None
    out = term.keys(CTRL_C)
    assert out == b"^C\r\n" + PROMPT
    assert term.gate.called  # cancelled
    assert term.ran() == [["block"]] and term.statuses() == [130]
    term.keys(b"exit\r")
    assert term.exit_status() == 130


def test_ctrl_c_during_a_comphash_interrupts_the_hash(tmp_path: Path) -> None:
    runner = ManualRunner()
    term = Term(tmp_path, runner=runner)
    term.keys(f"comphash {term.root}/hello.txt\r".encode())
    assert runner.jobs, "the hash waits in the runner"
    term.keys(CTRL_C)
    assert term.statuses() == [130]
    runner.run_all()  # the thread finishing late changes nothing
    assert term.screen.endswith(b"^C\r\n" + PROMPT)


def test_ctrl_d_on_an_empty_line_ends_with_the_last_status(term: Term) -> None:
    term.keys(b"nosuch\r")
    out = term.keys(CTRL_D)
    assert out == b"\r\n"
    assert term.exit_status() == 127
    assert term.conn.kinds()[-3:] == ["eof", "exit-status", "close"]


def test_ctrl_d_on_a_fresh_session_ends_with_0(term: Term) -> None:
    term.keys(CTRL_D)
    assert term.exit_status() == 0


def test_ctrl_d_inside_a_line_deletes_the_character_under_the_cursor(term: Term) -> None:
    term.keys(b"say abc" + LEFT * 2 + CTRL_D + b"\r")
    assert term.ran() == [["say", "ac"]]
    assert term.exit_status() is None


def test_input_after_ctrl_d_is_ignored(term: Term) -> None:
    term.keys(CTRL_D + b"say late\r")
    assert term.ran() == []


# -- UTF-8 ----------------------------------------------------------------------------------------------


def test_utf8_split_across_packets_is_one_character(term: Term) -> None:
    term.keys(b"say caf")
    assert term.keys(b"\xc3") == b""  # half a character: nothing echoed yet
    assert term.keys(b"\xa9") == "é".encode()
    for byte in "🐍".encode():
        term.keys(bytes([byte]))
    out = term.keys(b"\r")
    assert term.ran() == [["say", "café🐍"]]
    assert "say café🐍\r\n".encode() in out


def test_utf8_editing_moves_by_characters(term: Term) -> None:
    term.keys("say añb".encode() + LEFT + b"\x7f" + b"n\r")
    assert term.ran() == [["say", "anb"]]


def test_invalid_utf8_bytes_are_dropped(term: Term) -> None:
    term.keys(b"say a\xffb\xc3(\r")
    assert term.ran() == [["say", "ab("]]


def test_utf8_completion_of_a_non_ascii_file_name(term: Term) -> None:
    (term.root / "grüße.txt").write_bytes(b"x")
    term.keys(f"comphash {term.root}/gr".encode())
    assert term.keys(TAB) == "üße.txt ".encode()


# -- the prompt ---------------------------------------------------------------------------------------


def test_default_prompt_names_user_and_host(term: Term) -> None:
    assert term.screen == b"conchcmd on testhost: type 'help' for commands, 'exit' to leave.\r\n" + PROMPT


def test_configured_prompt(tmp_path: Path) -> None:
    term = Term(tmp_path, prompt="[{host}:{user}]$ ", user="carol")
    assert term.screen.endswith(b"[testhost:carol]$ ")
    assert term.keys(b"say x\r").endswith(b"x\r\n[testhost:carol]$ ")


# -- comphash progress -----------------------------------------------------------------------------------


def _hash_job(runner: ManualRunner) -> tuple[Any, ...]:
    (fn, args, _), *_ = runner.jobs
    assert fn is hash_file
    return args


def test_comphash_on_a_pty_shows_a_progress_line_and_erases_it(tmp_path: Path) -> None:
    runner = ManualRunner()
    term = Term(tmp_path, runner=runner)
    path = term.root / "hello.txt"
    term.keys(f"comphash {path}\r".encode())
    progress = _hash_job(runner)[5]
    progress[:] = [0, 10 * MIB]
    term.clock.advance(0.5)
    assert term.keys(b"") == b"", "nothing in the first second"
    before = len(term.screen)
    progress[0] = 4 * MIB
    term.clock.advance(0.5)
    shown = term.screen[before:]
    assert shown == f"\r{path}: 4/10 MiB 40% 4 MiB/s\x1b[K".encode()
    progress[0] = 8 * MIB
    term.clock.advance(1.0)
    assert term.screen.endswith(f"\r{path}: 8/10 MiB 80% 4 MiB/s\x1b[K".encode())
    before = len(term.screen)
    runner.run_all()
    digest = hashlib.sha256(b"hello\n").hexdigest()
    assert term.screen[before:] == f"\r\x1b[K{digest}  {path}\r\n".encode() + PROMPT
    term.clock.advance(5)
    assert term.screen.endswith(PROMPT), "no progress after the end"
    assert term.statuses() == [0]


def test_comphash_progress_stops_when_interrupted(tmp_path: Path) -> None:
    runner = ManualRunner()
    term = Term(tmp_path, runner=runner)
    term.keys(f"comphash {term.root}/hello.txt\r".encode())
    _hash_job(runner)[5][:] = [MIB, 2 * MIB]
    term.clock.advance(1.0)
    assert b"MiB" in term.screen
    out = term.keys(CTRL_C)
    assert out.startswith(b"^C\r\n")
    assert b"\r\x1b[K" in out  # the progress line is erased
    before = term.screen
    term.clock.advance(5)
    assert term.screen == before


def test_quick_comphash_on_a_pty_shows_no_progress(tmp_path: Path) -> None:
    term = Term(tmp_path)
    out = term.keys(f"comphash {term.root}/hello.txt\r".encode())
    assert b"MiB" not in out and b"\x1b" not in out


@pytest.mark.parametrize("exec_", [True, False], ids=["exec", "shell"])
def test_comphash_without_a_pty_never_shows_progress(tmp_path: Path, exec_: bool) -> None:
    runner = ManualRunner()
    line = f"comphash {tmp_path}/srv/root/hello.txt"
    term = Term(tmp_path, runner=runner, pty=False, exec_line=line if exec_ else None)
    if not exec_:
        term.keys(line.encode() + b"\n")
    assert _hash_job(runner)[5] is None  # no progress is even collected
    term.clock.advance(10)
    runner.run_all()
    if not exec_:
        term.chan.eofReceived()
    digest = hashlib.sha256(b"hello\n").hexdigest()
    assert term.screen == f"{digest}  {term.root}/hello.txt\n".encode()
    assert term.exit_status() == 0


def test_ctrl_c_interrupts_an_exec_with_a_pty(tmp_path: Path) -> None:
    """`ssh -t host comphash BIG`: the client's terminal is raw, so Ctrl-C arrives as the byte
    0x03; with a pty (emulated, as here) that byte is the interrupt character."""
    runner = ManualRunner()
    term = Term(tmp_path, runner=runner, exec_line=f"comphash {tmp_path}/srv/root/hello.txt")
    assert runner.jobs, "the hash is running"
    term.keys(CTRL_C)
    assert term.statuses() == [130]
    assert term.exit_status() == 130


# -- output backpressure ---------------------------------------------------------------------------


def test_echo_waits_for_the_client_to_read_and_ctrl_c_still_clears_the_line(term: Term) -> None:
    """Once the editor's echo backs up, further keys wait as typeahead (the channel counts them,
    so the window shuts); a flood of Ctrl-C queues nothing; all is processed once the client reads."""
    term.chan.remoteWindowLeft = 0  # the client reads nothing
    term.keys(b"x" * 16000)
    term.keys(CTRL_L * 100)  # 16 KB redrawn per Ctrl-L
    queued = term.chan._queued
    assert queued < 1024 * 1024
    assert term.chan.input_held() > 0  # the rest of the Ctrl-Ls wait
    term.keys(CTRL_C * 1000)
    assert term.chan._queued == queued
    term.chan.addWindowBytes(1 << 24)  # the client reads again
    term.clock.advance(0)
    assert term.screen.endswith(b"^C\r\n" + PROMPT)  # the Ctrl-C cleared the line
    assert term.chan.input_held() == 0
    term.keys(b"say hi\r")
    assert term.ran() == [["say", "hi"]]


def test_a_bug_in_completion_rings_the_bell_and_logs_its_traceback_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listing fails (a bug, off the reactor thread): the user gets the bell, the traceback
    is logged once per place, then one line per Tab; before, nothing reached the user and the
    traceback only surfaced as "Unhandled error in Deferred" when garbage-collected."""
    runner = ManualRunner()
    term = Term(tmp_path, runner=runner)
    term.keys(f"comphash {term.root}/hel".encode())

    def simulated_listing_bug(*args: Any) -> Any:
        raise KeyError("simulated completion bug")

    monkeypatch.setattr(completion, "list_paths", simulated_listing_bug)
    with capturedLogs() as events:
        for _ in range(20):
            before = len(term.screen)
            assert term.keys(TAB) == b""
            runner.run_all()
            assert term.screen[before:] == BELL
        gc.collect()  # a failure left in a Deferred would be reported now
    bugs = [e for e in events if e.get("log_format", "").startswith("Internal error")]
    assert len(bugs) == 20 and runner.submitted == 20  # each Tab freed the slot for the next
    first, *again = bugs
    assert formatEvent(first) == "Internal error completing a word from admin@10.0.0.1:40000; bell"
    assert first["log_level"] == LogLevel.error
    assert "simulated_listing_bug" in first["log_failure"].getTraceback()
    assert all(e["log_level"] == LogLevel.error and "log_failure" not in e for e in again)
    assert formatEvent(again[-1]) == (
        "Internal error completing a word from admin@10.0.0.1:40000 "
        "(KeyError: 'simulated completion bug', traceback logged before); bell"
    )
    assert [e for e in events if "log_failure" in e] == [first]
    monkeypatch.undo()
    before = len(term.screen)
    term.keys(TAB)
    runner.run_all()
    assert b"hello.txt  help.md\r\n" in term.screen[before:]  # the bug fixed: Tab lists again
    term.keys(CTRL_U + b"say still here\r")
    assert term.ran()[-1] == ["say", "still", "here"]


def test_a_completer_that_raises_at_once_rings_the_bell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Raised before any Deferred: the keystroke's packet must not end the connection."""
    term = Term(tmp_path)

    def simulated_completer_bug(*args: Any) -> Any:
        raise KeyError("simulated completion bug")

    monkeypatch.setattr(completion.Completer, "complete", simulated_completer_bug)
    with capturedLogs() as events:
        assert term.keys(b"he" + TAB) == b"he" + BELL
        assert term.keys(TAB) == BELL
    (first,) = [e for e in events if "log_failure" in e]
    assert "simulated_completer_bug" in first["log_failure"].getTraceback()
    assert term.keys(b"lp\r").startswith(b"lp")
    assert term.ran() == [["help"]]
