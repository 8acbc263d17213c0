"""What a hostile or careless client (or log) must not be able to do to a session."""

from __future__ import annotations

from support.channels import Harness

from conchcmd.core.audit import TerminalSafe, terminal_safe
from conchcmd.session.completion import list_paths
from conchcmd.session.shell import HISTORY_BYTES, MAX_CONTROL_SEQUENCE


def test_empty_lines_count_toward_the_input_limit() -> None:
    h = Harness()
    h.shell()
    h.client_sends(b"block\n")
    sent = h.fill_window(b"\n")
    assert h.chan.localWindowLeft == 0  # the client's window stays shut: memory is bounded
    assert h.chan.input_held() == sent <= h.chan.input_limit
    assert h.gate is not None
    h.gate.callback(None)
    assert h.chan.input_held() == 0
    assert h.chan.localWindowLeft > 0


def test_history_is_bounded_in_bytes_too() -> None:
    """500 lines of nearly 16 K each would be 8 MB per session: history keeps 64 KiB at most,
    the newest lines, and Up still recalls the last one."""
    h = Harness()
    h.shell(pty=True)
    editor = h.chan.handler.editor  # type: ignore[union-attr]
    long_line = b"say " + b"y" * 15_000
    for i in range(6):
        h.client_sends(long_line + str(i).encode() + b"\r")
        h.settle()
    assert sum(len(line) for line in editor.historyLines) <= HISTORY_BYTES
    assert editor.historyLines[-1] == long_line + b"5"
    assert len(editor.historyLines) == HISTORY_BYTES // len(long_line + b"5")  # the 4 newest
    h.client_sends(b"\x1b[A")  # Up
    assert b"".join(editor.lineBuffer) == long_line + b"5"


def test_an_endless_control_sequence_is_not_collected() -> None:
    """`ESC [` followed by a megabyte of parameters: insults would keep every byte (a list entry
    each); the sequence is dropped once longer than any key sends, and the shell still works."""
    h = Harness()
    h.shell(pty=True)
    protocol = h.chan.handler.protocol  # type: ignore[union-attr]
    h.client_sends(b"\x1b[")
    for _ in range(4):
        h.client_sends(b"1;" * 16384)
        assert len(getattr(protocol, "escBuf", [])) <= MAX_CONTROL_SEQUENCE
    h.client_sends(b"\x03say ok\r")
    assert b"ok\r\n" in h.conn.data()


def test_exec_is_not_busy_once_its_command_has_ended() -> None:
    h = Harness(window=0)
    h.exec(b"say hi")
    assert not h.chan.busy  # the exit status waits for the window, but nothing runs any more


def test_terminal_safe_output_replaces_c0_c1_and_broken_bytes() -> None:
    safe = TerminalSafe()
    text = "ok \x1b[2J \x9b7m \u0085 é\t|\n".encode()
    assert safe(text[:-5]) + safe(text[-5:]) == "ok ?[2J ?7m ? é\t|\n".encode()  # é split across chunks
    assert safe(b"raw \x9b and \xff\n") == b"raw ? and ?\n"
    assert terminal_safe("a\x07b") == "a?b"


def test_completion_does_not_offer_names_with_control_characters(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "plain.txt").write_text("x")
    (tmp_path / "evil\x1b]0;x\x07.txt").write_text("x")
    found = list_paths(f"{tmp_path}/", (str(tmp_path),))
    assert found.candidates == [f"{tmp_path}/plain.txt"]


def test_a_nul_byte_in_a_path_is_a_usage_error() -> None:
    import threading

    import pytest

    from conchcmd.commands.comphash import PathRefused, hash_file

    with pytest.raises(PathRefused) as refused:
        hash_file("/etc/hostname\0x", ("/",), "sha256", threading.Event())
    assert (refused.value.reason, refused.value.status) == ("path contains a NUL byte", 2)
