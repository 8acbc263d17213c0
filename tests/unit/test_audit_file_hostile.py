"""The audit file against a hostile local user who can write the directory it is in: a symlink
planted at the path, a FIFO nobody reads, a file someone else owns. Each is refused with an error
(records kept in the backlog) instead of being followed, freezing the server, or written to."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from conchcmd.core.audit import AppendFile, AuditLog


@pytest.fixture
def shared_dir(tmp_path: Path) -> Path:
    """A directory others can write (an audit directory with loose modes, or /tmp-like)."""
    d = tmp_path / "shared"
    d.mkdir()
    d.chmod(0o1777)
    return d


def test_a_dangling_symlink_in_a_shared_directory_does_not_create_its_target(shared_dir: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    (shared_dir / "audit.jsonl").symlink_to(victim)
    with pytest.raises(OSError, match="symlink"):
        AppendFile(str(shared_dir / "audit.jsonl"))
    assert not victim.exists()


def test_a_symlink_to_an_existing_file_in_a_shared_directory_is_not_written_through(
    shared_dir: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (shared_dir / "audit.jsonl").symlink_to(victim)
    log = AuditLog(_unopened(shared_dir / "audit.jsonl"), Clock())
    log.record("auth", user="x")
    assert victim.read_text() == "precious\n"
    assert log.failure() is not None and "symlink" in log.failure()  # type: ignore[operator]


def test_a_symlink_planted_before_a_reopen_is_not_followed_and_the_records_wait(
    shared_dir: Path, tmp_path: Path
) -> None:
    path = shared_dir / "audit.jsonl"
    log = AuditLog(AppendFile(str(path)), Clock())
    log.record("before")
    path.rename(shared_dir / "audit.jsonl.1")  # rotated
    victim = tmp_path / "victim"
    path.symlink_to(victim)  # planted before the SIGHUP
    log.reopen()
    log.record("after")
    assert not victim.exists()
    assert log.failure() is not None
    path.unlink()  # the operator removes the link: the waiting record goes to a new file
    log.record("later")
    assert [line.count('"event"') for line in path.read_text().splitlines()] == [1, 1]
    assert '"after"' in path.read_text() and '"later"' in path.read_text()


def test_a_symlink_in_a_directory_only_the_server_can_write_is_followed(tmp_path: Path) -> None:
    """/dev/stdout and an operator's own links keep working."""
    target = tmp_path / "real.jsonl"
    (tmp_path / "audit.jsonl").symlink_to(target)
    tmp_path.chmod(0o755)
    f = AppendFile(str(tmp_path / "audit.jsonl"))
    f.write(b"{}\n")
    f.close()
    assert target.read_text() == "{}\n"


def test_a_fifo_nobody_reads_fails_at_once_instead_of_blocking(shared_dir: Path) -> None:
    fifo = shared_dir / "audit.jsonl"
    os.mkfifo(fifo)
    result: list[BaseException | None] = []

    def open_it() -> None:
        try:
            AppendFile(str(fifo))
            result.append(None)
        except OSError as e:
            result.append(e)

    opener = threading.Thread(target=open_it, daemon=True)
    opener.start()
    opener.join(timeout=30)
    if opener.is_alive():  # unblock the thread so the test run can end
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        fd = os.open(fifo, os.O_RDONLY)
        os.close(fd)
        pytest.fail("opening a FIFO nobody reads blocked")
    assert isinstance(result[0], OSError)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_an_existing_file_owned_by_another_user_is_refused(shared_dir: Path) -> None:
    path = shared_dir / "audit.jsonl"
    path.write_text("")
    path.chmod(0o666)
    os.chown(path, 65534, 65534)
    with pytest.raises(OSError, match="owned by uid 65534"):
        AppendFile(str(path))
    assert path.read_text() == ""


def _unopened(path: Path) -> AppendFile:
    """An AppendFile whose first open happens at the first write (as after a failed reopen)."""
    f = AppendFile.__new__(AppendFile)
    f.name, f.group, f.mode, f._fd = str(path), None, 0o600, None
    return f


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a FIFO to another user needs root")
def test_a_fifo_owned_by_another_user_is_refused_even_with_a_reader(shared_dir: Path) -> None:
    """Its owner could stop reading at any time and freeze every write."""
    fifo = shared_dir / "audit.jsonl"
    os.mkfifo(fifo)
    os.chown(fifo, 65534, 65534)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(OSError, match="owned by uid 65534"):
            AppendFile(str(fifo))
    finally:
        os.close(reader)


def test_a_collectors_fifo_gets_whole_lines(tmp_path: Path) -> None:
    """A FIFO the operator made (owned by the server's user) with a reader works as before."""
    fifo = tmp_path / "audit.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        log = AuditLog(AppendFile(str(fifo)), Clock())
        log.record("auth", user="x" * 3000)
        assert log.failure() is None
        data = os.read(reader, 1 << 16)
        assert data.endswith(b"\n") and data.count(b"\n") == 1
    finally:
        os.close(reader)
