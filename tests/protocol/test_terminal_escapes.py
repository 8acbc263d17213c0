"""Client- and file-derived text reaches the operator's terminal only through the one sanitiser:
the bytes the client receives for file names carrying an OSC title sequence, C1 controls and
bidi overrides, on a pty and without one."""

from __future__ import annotations

import hashlib
import unicodedata
from pathlib import Path

import pytest
from support.runners import ManualRunner
from support.terminal import Term

from conchcmd.commands.comphash import MIB
from conchcmd.core.audit import TerminalSafe, sanitise, terminal_safe
from conchcmd.session.completion import list_paths

OSC_TITLE = "\x1b]0;pwned\x07"  # sets the terminal's window title
NAMES = {
    "osc": (f"evil{OSC_TITLE}.bin", "evil?]0;pwned?.bin"),
    "c1-csi": ("evil\x9b2J.bin", "evil?2J.bin"),
    "bidi": ("invoice\u202etxt.exe", "invoice?txt.exe"),
    "separator": ("a\u2028b", "a?b"),
    # Default-ignorable: shown as nothing, so "a\u200bb" would read as "ab".
    "zero-width": ("a\u200bb.bin", "a?b.bin"),
    "soft-hyphen": ("pay\u00adroll.bin", "pay?roll.bin"),
    "bom": ("\ufeffbom.bin", "?bom.bin"),
    "hangul-filler": ("x\u3164y.bin", "x?y.bin"),
    "variation-selector": ("v\ufe0fs.bin", "v?s.bin"),
}


def _hash_job(runner: ManualRunner) -> list[int]:
    (_, args, _), *_ = runner.jobs
    progress: list[int] = args[5]
    return progress


@pytest.mark.parametrize("kind", NAMES)
def test_comphash_progress_and_result_on_a_pty_show_the_name_sanitised(tmp_path: Path, kind: str) -> None:
    name, shown = NAMES[kind]
    runner = ManualRunner()
    root = tmp_path / "srv" / "root"
    root.mkdir(parents=True)
    (root / name).write_bytes(b"data\n")
    term = Term(tmp_path, runner=runner, exec_line=f"comphash '{root}/{name}'")
    _hash_job(runner)[:] = [4 * MIB, 10 * MIB]
    term.clock.advance(1.0)
    assert term.screen == f"\r{root}/{shown}: 4/10 MiB 40% 4 MiB/s\x1b[K".encode()
    runner.run_all()
    digest = hashlib.sha256(b"data\n").hexdigest()
    assert term.screen.endswith(f"\r\x1b[K{digest}  {root}/{shown}\r\n".encode())
    assert term.exit_status() == 0


def test_a_newline_in_a_name_does_not_break_the_progress_line(tmp_path: Path) -> None:
    runner = ManualRunner()
    root = tmp_path / "srv" / "root"
    root.mkdir(parents=True)
    (root / "two\nlines").write_bytes(b"x")
    term = Term(tmp_path, runner=runner, exec_line=f"comphash '{root}/two\nlines'")
    _hash_job(runner)[:] = [MIB, 2 * MIB]
    term.clock.advance(1.0)
    assert term.screen == f"\r{root}/two?lines: 1/2 MiB 50% 1 MiB/s\x1b[K".encode()


@pytest.mark.parametrize("pty", [True, False], ids=["pty", "no-pty"])
def test_error_messages_quoting_a_path_are_sanitised_with_or_without_a_pty(tmp_path: Path, pty: bool) -> None:
    term = Term(tmp_path, pty=pty, exec_line=f"comphash '{tmp_path}/srv/root/missing{OSC_TITLE}'")
    expected = f"comphash: {tmp_path}/srv/root/missing?]0;pwned?: No such file or directory\n"
    if pty:
        assert term.screen == expected.replace("\n", "\r\n").encode()
    else:
        assert term.conn.data("stderr") == expected.encode()
    assert b"\x1b" not in term.conn.data() + term.conn.data("stderr")
    assert term.exit_status() == 1


def test_without_a_pty_the_hash_line_stays_byte_exact_for_scripts(tmp_path: Path) -> None:
    name = f"evil{OSC_TITLE}.bin"
    Term(tmp_path)  # creates the tree
    (tmp_path / "srv" / "root" / name).write_bytes(b"data\n")
    term = Term(tmp_path, pty=False, exec_line=f"comphash '{tmp_path}/srv/root/{name}'")
    digest = hashlib.sha256(b"data\n").hexdigest()
    assert term.screen == f"{digest}  {tmp_path}/srv/root/{name}\n".encode()  # what sha256sum prints


@pytest.mark.parametrize("pty", [True, False], ids=["pty", "no-pty"])
@pytest.mark.parametrize(
    ("line", "message"),
    [
        (f"{OSC_TITLE}ls", "?]0;pwned?ls: command not found"),
        ("comphash -\x9b /x", "comphash: option -? not recognized"),
        ("lastlog '\u202e'", "lastlog: unexpected argument '\\u202e'"),
    ],
    ids=["command-name", "option", "argument"],
)
def test_dispatcher_diagnostics_quoting_the_client_are_sanitised(
    tmp_path: Path, pty: bool, line: str, message: str
) -> None:
    term = Term(tmp_path, pty=pty, exec_line=line)
    shown = term.screen if pty else term.conn.data("stderr")
    assert shown.startswith(message.encode() + (b"\r\n" if pty else b"\n"))
    for unsafe in (b"\x1b", "\x9b".encode(), "\u202e".encode()):
        assert unsafe not in shown


def test_completion_lists_no_name_the_sanitiser_would_alter(tmp_path: Path) -> None:
    for name, _ in NAMES.values():
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "tab\there").write_bytes(b"x")
    (tmp_path / "plain.txt").write_bytes(b"x")
    assert list_paths(f"{tmp_path}/", (str(tmp_path),)).candidates == [f"{tmp_path}/plain.txt"]


def test_a_user_name_in_the_prompt_is_sanitised(tmp_path: Path) -> None:
    term = Term(tmp_path, user="ev\x1b]0;x\x07il")
    assert term.screen.endswith(b"ev?]0;x?il@testhost> ")


BIDI_CONTROLS = {"LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI"}


def test_the_sanitiser_passes_nothing_that_can_drive_or_reorder_a_terminal() -> None:
    # Every control, separator and bidi mark is in the BMP; past it, a sample of each plane.
    everything = "".join(chr(c) for c in (*range(0x10000), *range(0x10000, 0x110000, 0x101)))
    for out in (terminal_safe(everything), TerminalSafe()(everything.encode("utf-8", "surrogatepass"))):
        if isinstance(out, bytes):
            out = out.decode("utf-8")  # strict: the stream sanitiser emits valid UTF-8
        unsafe = {
            ch
            for ch in set(out)
            if (unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") and ch not in "\t\n")
            or unicodedata.bidirectional(ch) in BIDI_CONTROLS
            or unicodedata.name(ch, "") in ("LEFT-TO-RIGHT MARK", "RIGHT-TO-LEFT MARK", "ARABIC LETTER MARK")
        }
        assert unsafe == set()
    assert terminal_safe("a\tb\nc", single_line=True) == "a?b?c"
    assert terminal_safe("é日本🙂 plain") == "é日本🙂 plain"


def test_the_terminal_hides_exactly_what_logs_escape() -> None:
    """One set of hidden characters: each one sanitise escapes (controls, separators, bidi,
    zero-width, soft hyphen, BOM, fillers, variation selectors, private-use, unassigned...) is '?'
    on a terminal, but tab and newline outside a drawn line; every other character stays itself."""
    # The BMP, the astral hidden ones (musical format, shorthand format, tags) and a sample of the rest.
    astral = (*range(0x1BCA0, 0x1BCA4), *range(0x1D173, 0x1D17B), *range(0xE0000, 0xE1000, 7), 0xE0041, 0xE0FFF)
    chars = [chr(c) for c in (*range(0x10000), *astral, *range(0x10000, 0x110000, 0x101))]
    hidden = {ch for ch in chars if sanitise(ch) not in (ch, "\\\\")}
    assert terminal_safe("".join(chars)) == "".join("?" if ch in hidden and ch not in "\t\n" else ch for ch in chars)
    assert terminal_safe("".join(chars), single_line=True) == "".join("?" if ch in hidden else ch for ch in chars)
    assert {"\u00ad", "\u200b", "\u3164", "\ufe0f", "\ufeff", "\U000e0041"} <= hidden


def test_lastlog_shows_hidden_characters_of_a_log_line_as_question_marks(tmp_path: Path) -> None:
    Term(tmp_path)  # creates the tree
    (tmp_path / "syslog").write_bytes("sudo: r\u200boot\u00ad ok \u202egnp.exe\ufeff José 日本\n".encode())
    term = Term(tmp_path, exec_line="lastlog -n 1")  # on a pty; without one the bytes stay exact, as tail's
    assert term.screen == "sudo: r?oot? ok ?gnp.exe? José 日本\r\n".encode()
    assert term.exit_status() == 0
