"""conchcmd.commands.comphash: hash_file's policy checks, sha256sum-compatible lines, the command, the Hasher."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from support.runners import ManualRunner
from twisted.internet import defer
from twisted.internet.task import Clock

from conchcmd.commands import comphash
from conchcmd.commands.comphash import (
    CancelFlag,
    HashCancelled,
    Hasher,
    HashResult,
    PathRefused,
    format_line,
    hash_file,
    make_comphash,
)
from conchcmd.commands.framework import Dispatcher, InlineRunner
from conchcmd.commands.safepath import Opened
from conchcmd.core.audit import MemoryAuditLog
from conchcmd.core.config import HASH_ALGORITHMS, ComphashConfig

CONTENT = bytes(range(256)) * 41 + b"tail"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An allowed root (resolved), with a file `data.bin` in it."""
    r = tmp_path / "root"
    r.mkdir()
    (r / "data.bin").write_bytes(CONTENT)
    return Path(os.path.realpath(r))


def refused(path: str | Path, roots: tuple[str, ...]) -> PathRefused:
    with pytest.raises(PathRefused) as info:
        hash_file(str(path), roots, "sha256", threading.Event())
    return info.value


@pytest.mark.parametrize("algorithm", HASH_ALGORITHMS)
def test_hash_file_matches_hashlib(root: Path, algorithm: str) -> None:
    result = hash_file(str(root / "data.bin"), (str(root),), algorithm, threading.Event())
    assert result == HashResult(hashlib.new(algorithm, CONTENT).hexdigest(), len(CONTENT), f"{root}/data.bin")


@pytest.mark.parametrize("read_size", [1, 7, 256, len(CONTENT), len(CONTENT) + 1])
def test_hash_file_in_chunks_matches_hashlib(root: Path, monkeypatch: pytest.MonkeyPatch, read_size: int) -> None:
    monkeypatch.setattr(comphash, "READ_SIZE", read_size)
    result = hash_file(str(root / "data.bin"), (str(root),), "sha256", threading.Event())
    assert result.digest == hashlib.sha256(CONTENT).hexdigest()


def test_hash_of_empty_file(root: Path) -> None:
    (root / "empty").write_bytes(b"")
    result = hash_file(str(root / "empty"), (str(root),), "sha256", threading.Event())
    assert result == HashResult(hashlib.sha256(b"").hexdigest(), 0, f"{root}/empty")


def test_symlink_inside_root_to_a_file_inside_is_followed(root: Path) -> None:
    (root / "link").symlink_to(root / "data.bin")
    result = hash_file(str(root / "link"), (str(root),), "sha256", threading.Event())
    assert result.digest == hashlib.sha256(CONTENT).hexdigest()


def test_symlink_inside_root_pointing_outside_is_refused(root: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("outside")
    (root / "escape").symlink_to(secret)
    error = refused(root / "escape", (str(root),))
    assert (error.reason, error.status) == ("outside the allowed roots", 126)


def test_symlinked_directory_pointing_outside_is_refused(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_text("x")
    (root / "dirlink").symlink_to(outside)
    assert refused(root / "dirlink" / "f", (str(root),)).status == 126


@pytest.mark.parametrize("rel", ["../outside.txt", "sub/../../outside.txt", "../root/../outside.txt"])
def test_dotdot_escaping_the_root_is_refused(root: Path, tmp_path: Path, rel: str) -> None:
    (tmp_path / "outside.txt").write_text("x")
    (root / "sub").mkdir()
    error = refused(f"{root}/{rel}", (str(root),))
    assert (error.reason, error.status) == ("outside the allowed roots", 126)


def test_dotdot_staying_inside_the_root_is_fine(root: Path) -> None:
    (root / "sub").mkdir()
    result = hash_file(f"{root}/sub/../data.bin", (str(root),), "sha256", threading.Event())
    assert result.digest == hashlib.sha256(CONTENT).hexdigest()


def test_sibling_sharing_a_name_prefix_with_the_root_is_refused(tmp_path: Path) -> None:
    allowed = tmp_path / "data"
    allowed.mkdir()
    sibling = tmp_path / "database"
    sibling.mkdir()
    (sibling / "f").write_text("x")
    assert refused(sibling / "f", (os.path.realpath(allowed),)).status == 126


def test_any_of_several_roots_allows(root: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "f").write_bytes(b"abc")
    result = hash_file(str(other / "f"), (str(root), os.path.realpath(other)), "md5", threading.Event())
    assert result.digest == hashlib.md5(b"abc").hexdigest()


def test_relative_path_is_a_usage_error(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(root)
    error = refused("data.bin", ("/",))
    assert (error.reason, error.status) == ("path must be absolute", 2)


def test_directory_is_refused(root: Path) -> None:
    error = refused(root, (str(root),))
    assert (error.reason, error.status) == ("Is a directory", 1)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
@pytest.mark.parametrize("kind", ["directory", "fifo", "device", "outside", "missing"])
def test_refused_paths_leak_no_file_descriptor(root: Path, tmp_path: Path, kind: str) -> None:
    os.mkfifo(root / "pipe")
    path = {
        "directory": str(root),
        "fifo": str(root / "pipe"),
        "device": "/dev/null",
        "outside": str(tmp_path),
        "missing": str(root / "missing"),
    }[kind]
    roots = ("/",) if kind == "device" else (str(root),)
    before = open_fds()
    for _ in range(3):
        with contextlib.suppress(Exception):  # how each is refused is checked by the tests above and below
            hash_file(path, roots, "sha256", threading.Event())
    assert open_fds() == before


def test_missing_file_is_a_failure(root: Path) -> None:
    error = refused(root / "nope", (str(root),))
    assert (error.reason, error.status) == ("No such file or directory", 1)


def test_fifo_is_refused_without_hanging(root: Path) -> None:
    fifo = root / "pipe"
    os.mkfifo(fifo)
    outcome: list[BaseException | HashResult] = []

    def attempt() -> None:
        try:
            outcome.append(hash_file(str(fifo), (str(root),), "sha256", threading.Event()))
        except BaseException as e:
            outcome.append(e)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=10)
    if worker.is_alive():  # unblock the thread so the test run can finish, then fail
        with open(fifo, "wb"):
            pass
        pytest.fail("hash_file blocked opening a FIFO")
    [error] = outcome
    assert isinstance(error, PathRefused)
    assert (error.reason, error.status) == ("not a regular file", 1)


def test_device_is_refused(tmp_path: Path) -> None:
    error = refused("/dev/null", ("/",))
    assert (error.reason, error.status) == ("not a regular file", 1)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a mode-000 file")
def test_permission_denied(root: Path) -> None:
    locked = root / "locked"
    locked.write_text("secret")
    locked.chmod(0)
    error = refused(locked, (str(root),))
    assert (error.reason, error.status) == ("Permission denied", 1)


def test_cancel_event_stops_the_hash(root: Path) -> None:
    cancelled = CancelFlag()  # what the Hasher hands the thread
    cancelled.set()
    with pytest.raises(HashCancelled):
        hash_file(str(root / "data.bin"), (str(root),), "sha256", cancelled)


def test_cancel_event_set_mid_file_stops_between_reads(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(comphash, "READ_SIZE", 100)
    cancelled = CancelFlag()  # what the Hasher hands the thread
    real_new = hashlib.new
    updates = []

    class Spy:
        def __init__(self, name: str) -> None:
            self.h = real_new(name)

        def update(self, data: Any) -> None:
            updates.append(len(data))
            cancelled.set()
            self.h.update(data)

    monkeypatch.setattr(comphash.hashlib, "new", Spy)
    with pytest.raises(HashCancelled):
        hash_file(str(root / "data.bin"), (str(root),), "sha256", cancelled)
    assert updates == [100]


def test_a_hash_reads_in_1_mib_blocks_and_stops_at_the_next_one(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README: a client that disconnects stops its hash at the next 1 MiB block."""
    (root / "big.bin").write_bytes(b"x" * (3 << 20))
    cancelled = CancelFlag()  # what the Hasher hands the thread
    real_new = hashlib.new
    updates = []

    class Spy:
        def __init__(self, name: str) -> None:
            self.h = real_new(name)

        def update(self, data: Any) -> None:
            updates.append(len(data))
            if len(updates) == 2:
                cancelled.set()
            self.h.update(data)

    monkeypatch.setattr(comphash.hashlib, "new", Spy)
    with pytest.raises(HashCancelled):
        hash_file(str(root / "big.bin"), (str(root),), "sha256", cancelled)
    assert updates == [1 << 20, 1 << 20]


# --- format_line against sha256sum ---------------------------------------------------------

NAMES = ["plain.txt", "with space", "back\\slash", "new\nline", "both\\and\nnew", "carriage\rreturn", "trailing\r"]


@pytest.mark.parametrize("name", NAMES)
def test_format_line_matches_sha256sum(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(CONTENT)
    expected = subprocess.run(["sha256sum", "--", name], cwd=tmp_path, check=True, capture_output=True).stdout
    assert format_line(hashlib.sha256(CONTENT).hexdigest(), name).encode() == expected


def test_format_line_output_passes_sha256sum_check(tmp_path: Path) -> None:
    for name in NAMES:
        (tmp_path / name).write_bytes(name.encode())
    sums = "".join(format_line(hashlib.sha256(n.encode()).hexdigest(), n) for n in NAMES)
    (tmp_path / "SUMS").write_text(sums)
    check = subprocess.run(["sha256sum", "--check", "--strict", "SUMS"], cwd=tmp_path, capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr


# --- the `comphash` command ----------------------------------------------------------------


@pytest.fixture
def comphash_harness(harness, root: Path):
    """comphash_harness(**config) -> a Harness with `comphash`, root allowed by default."""

    def make(**overrides: Any):
        config = ComphashConfig(**{"roots": (str(root),), **overrides})
        return harness([make_comphash(config, Hasher(config, InlineRunner()), Clock())])

    return make


def test_comphash_prints_sha256sum_line(comphash_harness, root: Path) -> None:
    run = comphash_harness().run(f"comphash {root}/data.bin")
    assert (run.status, run.stderr) == (0, b"")
    assert run.out == f"{hashlib.sha256(CONTENT).hexdigest()}  {root}/data.bin\n"


def test_comphash_prints_the_path_as_given(comphash_harness, root: Path) -> None:
    (root / "sub").mkdir()
    run = comphash_harness().run(f"comphash {root}/sub/../data.bin")
    assert run.out == f"{hashlib.sha256(CONTENT).hexdigest()}  {root}/sub/../data.bin\n"


@pytest.mark.parametrize("line", ["comphash -a md5 {p}", "comphash --algorithm md5 {p}", "comphash {p} -a md5"])
def test_comphash_algorithm_option(comphash_harness, root: Path, line: str) -> None:
    run = comphash_harness().run(line.format(p=f"{root}/data.bin"))
    assert run.out == f"{hashlib.md5(CONTENT).hexdigest()}  {root}/data.bin\n"


def test_comphash_default_algorithm_from_config(comphash_harness, root: Path) -> None:
    run = comphash_harness(algorithm="sha1").run(f"comphash {root}/data.bin")
    assert run.out == f"{hashlib.sha1(CONTENT).hexdigest()}  {root}/data.bin\n"


def test_comphash_several_paths_one_missing(comphash_harness, root: Path) -> None:
    (root / "b").write_bytes(b"b")
    run = comphash_harness().run(f"comphash {root}/data.bin {root}/missing {root}/b")
    assert run.status == 1
    assert run.out == (
        f"{hashlib.sha256(CONTENT).hexdigest()}  {root}/data.bin\n{hashlib.sha256(b'b').hexdigest()}  {root}/b\n"
    )
    assert run.err == f"comphash: {root}/missing: No such file or directory\n"


def test_comphash_outside_roots_gives_126(comphash_harness, root: Path) -> None:
    run = comphash_harness().run(f"comphash {root}/data.bin /etc/hostname {root}/missing")
    assert run.status == 126
    assert run.out == f"{hashlib.sha256(CONTENT).hexdigest()}  {root}/data.bin\n"
    assert run.err == (
        f"comphash: /etc/hostname: outside the allowed roots\ncomphash: {root}/missing: No such file or directory\n"
    )


def test_comphash_directory(comphash_harness, root: Path) -> None:
    run = comphash_harness().run(f"comphash {root}")
    assert (run.status, run.out, run.err) == (1, "", f"comphash: {root}: Is a directory\n")


def test_comphash_relative_path_is_usage_status(comphash_harness) -> None:
    run = comphash_harness().run("comphash data.bin")
    assert (run.status, run.err) == (2, "comphash: data.bin: path must be absolute\n")


def test_comphash_unknown_algorithm(comphash_harness, root: Path) -> None:
    run = comphash_harness().run(f"comphash -a crc32 {root}/data.bin")
    assert run.status == 2
    assert run.out == ""
    assert run.err == (
        "comphash: unknown algorithm 'crc32' (choose from sha256, sha1, sha512, blake2b, md5)\n"
        "usage: comphash [-a ALGORITHM] [--json] PATH...\n"
    )


def test_comphash_without_a_path(comphash_harness) -> None:
    run = comphash_harness().run("comphash")
    assert (run.status, run.out, run.err) == (
        2,
        "",
        "comphash: no file given\nusage: comphash [-a ALGORITHM] [--json] PATH...\n",
    )


def test_comphash_bad_option(comphash_harness, root: Path) -> None:
    run = comphash_harness().run(f"comphash -z {root}/data.bin")
    assert run.status == 2
    assert run.err.startswith("comphash: option -z not recognized\n")


def test_comphash_escaped_name_line(comphash_harness, root: Path) -> None:
    (root / "a\\b").write_bytes(b"x")
    run = comphash_harness().run(f"comphash '{root}/a\\b'")
    assert run.out == f"\\{hashlib.sha256(b'x').hexdigest()}  {root}/a\\\\b\n"


# --- the Hasher: concurrency limit and cancellation ----------------------------------------


def start_hash(hasher: Hasher, path: Path, user: str = "alice") -> defer.Deferred[HashResult]:
    return defer.Deferred.fromCoroutine(hasher.hash(str(path), "sha256", user=user))


def test_second_hash_waits_for_the_first(root: Path, sync) -> None:
    (root / "b").write_bytes(b"b")
    runner = ManualRunner()
    hasher = Hasher(ComphashConfig(roots=(str(root),), max_concurrent=1), runner)
    first = start_hash(hasher, root / "data.bin")
    second = start_hash(hasher, root / "b")
    assert len(runner.calls) == 1
    assert not first.called
    assert not second.called
    runner.complete(0)
    assert sync.success(first).digest == hashlib.sha256(CONTENT).hexdigest()
    assert len(runner.calls) == 2
    assert not second.called
    runner.complete(1)
    assert sync.success(second).digest == hashlib.sha256(b"b").hexdigest()
    assert hasher.semaphore.tokens == 1


def test_max_concurrent_two_runs_two_at_once(root: Path) -> None:
    runner = ManualRunner()
    hasher = Hasher(ComphashConfig(roots=(str(root),), max_concurrent=2, max_concurrent_per_user=2), runner)
    for _ in range(3):
        start_hash(hasher, root / "data.bin")
    assert len(runner.calls) == 2
    runner.complete(1)
    assert len(runner.calls) == 3


def test_failed_hash_releases_its_slot(root: Path, sync) -> None:
    runner = ManualRunner()
    hasher = Hasher(ComphashConfig(roots=(str(root),), max_concurrent=1), runner)
    first = start_hash(hasher, root / "missing")
    start_hash(hasher, root / "data.bin")
    runner.complete(0)
    assert sync.failure(first).check(PathRefused)
    assert len(runner.calls) == 2


def test_cancelling_a_running_hash_sets_its_event_and_frees_the_slot_only_when_work_ends(root: Path, sync) -> None:
    runner = ManualRunner()
    hasher = Hasher(ComphashConfig(roots=(str(root),), max_concurrent=1), runner)
    first = start_hash(hasher, root / "data.bin")
    second = start_hash(hasher, root / "data.bin")
    [(_, args, _)] = runner.calls
    cancel_event = args[3]
    assert isinstance(cancel_event, CancelFlag)
    assert not cancel_event.is_set()

    first.cancel()
    assert sync.failure(first).check(defer.CancelledError)
    assert cancel_event.is_set()
    # The worker thread may still be reading: the slot stays taken, the second hash waits.
    assert hasher.semaphore.tokens == 0
    assert len(runner.calls) == 1
    assert not second.called

    runner.complete(0)  # the worker sees the event and raises HashCancelled, which is dropped
    assert len(runner.calls) == 2
    runner.complete(1)
    assert sync.success(second).digest == hashlib.sha256(CONTENT).hexdigest()
    assert hasher.semaphore.tokens == 1


def test_cancelling_a_waiting_hash_never_starts_it(root: Path, sync) -> None:
    runner = ManualRunner()
    hasher = Hasher(ComphashConfig(roots=(str(root),), max_concurrent=1), runner)
    first = start_hash(hasher, root / "data.bin")
    waiting = start_hash(hasher, root / "data.bin")
    waiting.cancel()
    assert sync.failure(waiting).check(defer.CancelledError)
    runner.complete(0)
    sync.success(first)
    assert len(runner.calls) == 1
    assert hasher.semaphore.tokens == 1


def test_interrupting_comphash_command_gives_130_and_cancels_the_hash(harness, root: Path, sync) -> None:
    runner = ManualRunner()
    config = ComphashConfig(roots=(str(root),), max_concurrent=1)
    h = harness([make_comphash(config, Hasher(config, runner), Clock())])
    d, stdout, stderr = h.start(f"comphash {root}/data.bin")
    [(_, args, _)] = runner.calls
    d.cancel()
    assert sync.success(d).status == 130
    assert args[3].is_set()
    assert (stdout.data, stderr.data) == (b"", b"")
    [record] = h.audit.of("command")
    assert record["exit_code"] == 130
    runner.complete(0)  # late completion is harmless


# --- fairness: one user cannot take every slot ---------------------------------------------------


def started_paths(runner: ManualRunner) -> list[str]:
    return [Path(args[0]).name for _, args, _ in runner.calls]


def test_one_user_leaves_a_slot_for_another(root: Path, sync) -> None:
    for name in ("a1", "a2", "a3", "a4", "b1", "b2"):
        (root / name).write_bytes(name.encode())
    runner = ManualRunner()
    hasher = Hasher(ComphashConfig(roots=(str(root),), max_concurrent=4), runner)  # 3 per user by default
    a = [start_hash(hasher, root / f"a{i}", "alice") for i in range(1, 5)]
    assert started_paths(runner) == ["a1", "a2", "a3"]  # alice's fourth waits for her own slot
    b1 = start_hash(hasher, root / "b1", "bob")
    assert started_paths(runner) == ["a1", "a2", "a3", "b1"]  # bob gets the slot alice cannot take
    b2 = start_hash(hasher, root / "b2", "bob")
    assert len(runner.calls) == 4  # every slot is busy: bob waits too
    runner.complete(0)
    assert sync.success(a[0]).digest == hashlib.sha256(b"a1").hexdigest()
    assert started_paths(runner)[4:] == ["b2"]  # first in the shared queue; alice's a4 queues behind
    runner.complete(3)
    assert started_paths(runner)[5:] == ["a4"]
    for i in (1, 2, 4, 5):
        runner.complete(i)
    assert [sync.success(d).digest for d in (*a[1:], b1, b2)] == [
        hashlib.sha256(n.encode()).hexdigest() for n in ("a2", "a3", "a4", "b1", "b2")
    ]
    assert hasher.semaphore.tokens == 4
    assert hasher.user_slots == {}  # idle users leave nothing behind


@pytest.mark.parametrize(("max_concurrent", "per_user", "alone"), [(1, None, 1), (2, None, 1), (4, 4, 4), (4, 2, 2)])
def test_per_user_limit_defaults_and_overrides(
    root: Path, max_concurrent: int, per_user: int | None, alone: int
) -> None:
    runner = ManualRunner()
    config = ComphashConfig(roots=(str(root),), max_concurrent=max_concurrent, max_concurrent_per_user=per_user)
    hasher = Hasher(config, runner)
    for _ in range(6):
        start_hash(hasher, root / "data.bin", "alice")
    assert len(runner.calls) == alone


def test_cancelling_a_hash_waiting_for_its_users_slot_frees_nothing_it_did_not_take(root: Path, sync) -> None:
    runner = ManualRunner()
    hasher = Hasher(ComphashConfig(roots=(str(root),), max_concurrent=2), runner)  # 1 per user
    first = start_hash(hasher, root / "data.bin", "alice")
    waiting = start_hash(hasher, root / "data.bin", "alice")
    waiting.cancel()
    assert sync.failure(waiting).check(defer.CancelledError)
    start_hash(hasher, root / "data.bin", "alice")
    assert len(runner.calls) == 1  # alice still holds her one slot
    start_hash(hasher, root / "data.bin", "bob")
    assert len(runner.calls) == 2
    runner.complete(0)
    sync.success(first)
    assert len(runner.calls) == 3  # alice's slot passes to her next hash
    assert hasher.semaphore.tokens == 0


def test_comphash_command_gives_another_user_a_slot(harness, root: Path, sync) -> None:
    runner = ManualRunner()
    config = ComphashConfig(roots=(str(root),), max_concurrent=3)
    h = harness([make_comphash(config, Hasher(config, runner), Clock())])
    held = [h.start(f"comphash {root}/data.bin", user="alice")[0] for _ in range(3)]
    assert len(runner.calls) == 2
    d, stdout, _ = h.start(f"comphash {root}/data.bin", user="bob")
    assert len(runner.calls) == 3
    runner.complete(2)
    assert sync.success(d).status == 0
    assert stdout.data == f"{hashlib.sha256(CONTENT).hexdigest()}  {root}/data.bin\n".encode()
    assert not any(x.called for x in held)


def test_a_small_file_that_grew_after_it_was_opened_is_read_to_its_end(root: Path) -> None:
    """The one-read path for small files takes the size seen at open as a hint, not a limit."""
    grown = CONTENT * 3  # bigger than the size below, and than one read of size + 1
    (root / "log").write_bytes(grown)
    fd = os.open(root / "log", os.O_RDONLY)
    result = comphash._hash_small(Opened(fd, f"{root}/log", size=10), "sha256", threading.Event())
    assert (result.digest, result.size) == (hashlib.sha256(grown).hexdigest(), len(grown))
    with pytest.raises(OSError):
        os.fstat(fd)  # closed


def test_with_a_bulk_runner_a_small_file_is_hashed_where_it_is_opened_and_a_big_one_in_bulk(
    root: Path, sync, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server hashes big files in threads of a lower priority: the file is opened (and a
    small one hashed) by `runner`, a big one is handed open to `bulk_runner`, which closes it."""
    monkeypatch.setattr(comphash, "READ_SIZE", 4096)  # data.bin (10 KiB) is big, b is small
    (root / "b").write_bytes(b"b")
    runner, bulk = ManualRunner(), ManualRunner()
    hasher = Hasher(ComphashConfig(roots=(str(root),), max_concurrent=1), runner, bulk_runner=bulk)
    small = start_hash(hasher, root / "b")
    runner.complete(0)
    assert sync.success(small).digest == hashlib.sha256(b"b").hexdigest()
    assert bulk.calls == [] and hasher.semaphore.tokens == 1
    big = start_hash(hasher, root / "data.bin")
    runner.complete(1)
    assert not big.called and hasher.semaphore.tokens == 0  # the slot is held while bulk hashes
    [(fn, (opened, *_), _)] = bulk.jobs
    assert fn is comphash.hash_opened and isinstance(opened, Opened)
    bulk.complete(0)
    assert sync.success(big) == HashResult(hashlib.sha256(CONTENT).hexdigest(), len(CONTENT), f"{root}/data.bin")
    assert hasher.semaphore.tokens == 1
    with pytest.raises(OSError):
        os.fstat(opened.fd)  # closed


def test_a_big_hash_cancelled_between_its_two_threads_closes_its_file_and_frees_its_slot(
    root: Path, sync, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(comphash, "READ_SIZE", 4096)
    runner, bulk = ManualRunner(), ManualRunner()
    hasher = Hasher(ComphashConfig(roots=(str(root),), max_concurrent=1), runner, bulk_runner=bulk)
    big = start_hash(hasher, root / "data.bin")
    runner.complete(0)
    [(_, (opened, _, cancelled, _), _)] = bulk.jobs
    big.cancel()
    assert sync.failure(big).check(defer.CancelledError) and cancelled.is_set()
    assert hasher.semaphore.tokens == 0  # until the bulk thread has seen the cancel
    bulk.complete(0)  # HashCancelled, dropped
    assert hasher.semaphore.tokens == 1
    with pytest.raises(OSError):
        os.fstat(opened.fd)


def test_a_big_hash_refused_by_a_stopped_bulk_runner_closes_its_file_and_frees_its_slot(
    root: Path, sync, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bulk pool stopped (shutdown) between the two steps: the opened file, which hash_opened
    would have closed, is closed here, and the hash fails at once with RunnerStopped."""
    from twisted.python.threadpool import ThreadPool

    from conchcmd.core.threads import RunnerStopped, ThreadRunner

    monkeypatch.setattr(comphash, "READ_SIZE", 4096)
    pool = ThreadPool(minthreads=0, maxthreads=1, name="bulk")
    bulk = ThreadRunner(Clock(), pool)
    bulk.stop()
    runner = ManualRunner()
    hasher = Hasher(ComphashConfig(roots=(str(root),), max_concurrent=1), runner, bulk_runner=bulk)
    big = start_hash(hasher, root / "data.bin")
    before = open_fds()
    runner.complete(0)
    assert sync.failure(big).check(RunnerStopped)
    assert open_fds() == before  # the file open_path opened is closed again
    assert hasher.semaphore.tokens == 1


def test_the_server_hashes_big_files_in_lower_priority_threads_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conchcmd.core.config import Config
    from conchcmd.core.threads import ThreadRunner
    from conchcmd.edge import service as service_module

    built: dict[str, Any] = {}
    real_build = service_module.build_server

    def recording_build(*args: Any, **kwargs: Any) -> Any:
        built.update(kwargs)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(service_module, "build_server", recording_build)
    config = Config(
        host_keys_dir=tmp_path / "keys",
        authorized_keys=str(tmp_path / "users" / "%u"),
        audit_log=str(tmp_path / "audit.jsonl"),
    )
    service = service_module.ConchcmdService(config, reactor=Clock(), out=io.StringIO())
    service.prepare()
    try:
        bulk, commands = built["bulk_runner"], built["runner"]
        assert isinstance(bulk, ThreadRunner) and isinstance(commands, ThreadRunner)
        assert bulk.pool is service.bulk_pool is not service.pool is commands.pool
        assert bulk.nice == service_module.BULK_THREADS_NICE > 0 and commands.nice == 0
        assert service.bulk_pool.max == config.comphash.max_concurrent
    finally:
        service.audit.close()


def test_the_command_table_gives_comphash_the_bulk_runner(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conchcmd.commands.builtin import build_command_table
    from conchcmd.core.config import Config

    monkeypatch.setattr(comphash, "READ_SIZE", 4096)
    runner, bulk = ManualRunner(), ManualRunner()
    config = Config(
        host_keys_dir=root / "keys", authorized_keys=str(root / "%u"), comphash=ComphashConfig(roots=(str(root),))
    )
    table = build_command_table(config, runner, Clock(), bulk)
    dispatcher = Dispatcher(table, MemoryAuditLog(), Clock())
    out: list[bytes] = []
    sink = type("Sink", (), {"write": lambda self, data: (out.append(data), defer.succeed(None))[1]})()
    done = dispatcher.dispatch(
        f"comphash {root}/data.bin", stdout=sink, stderr=sink, user="u", peer="p", fingerprint="f"
    )
    runner.run_all()
    assert [fn for fn, _, _ in bulk.jobs] == [comphash.hash_opened]
    bulk.run_all()
    assert done.called and b"".join(out) == f"{hashlib.sha256(CONTENT).hexdigest()}  {root}/data.bin\n".encode()


def test_out_of_descriptors_says_so_not_that_the_file_is_missing(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EMFILE at any open on the way is the server's trouble, reported as itself (status 1),
    never as "No such file" or as a path outside the roots."""
    real_open = os.open
    for failing_at in range(1, 8):  # the first open, the second... (the walk, then the file)
        opened = [0]

        def counting_open(*args: Any, opened: list[int] = opened, failing_at: int = failing_at, **kwargs: Any) -> int:
            opened[0] += 1
            if opened[0] == failing_at:
                raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
            return real_open(*args, **kwargs)

        monkeypatch.setattr(os, "open", counting_open)
        try:
            result = hash_file(str(root / "data.bin"), (str(root),), "sha256", threading.Event())
        except PathRefused as e:
            assert (e.reason, e.status) == ("Too many open files", 1), failing_at
        else:
            # done before that open, or the fast path's failure retried by the walk (safepath)
            assert result.size == len(CONTENT) and (opened[0] < failing_at or failing_at == 1), failing_at
        monkeypatch.setattr(os, "open", real_open)
