"""conchcmd.commands.safepath: resolving paths inside roots on the real file system, races included."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections import Counter
from pathlib import Path

import pytest
from support.races import swap_at_readlink, swapping

from conchcmd.commands import safepath
from conchcmd.commands.comphash import ROOTS_CHANGED, PathRefused, hash_file
from conchcmd.commands.safepath import MAX_OPEN_DIRS, MAX_SYMLINKS, NotAFile, OutsideRoots, open_file
from conchcmd.session.completion import list_paths

INSIDE = b"inside\n"
SECRET = b"SECRET outside the roots\n"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """tmp/root (the allowed root) with root/dir/f; tmp/outside with outside/f (the secret)."""
    base = Path(os.path.realpath(tmp_path))
    (base / "root" / "dir").mkdir(parents=True)
    (base / "root" / "dir" / "f").write_bytes(INSIDE)
    (base / "outside").mkdir()
    (base / "outside" / "f").write_bytes(SECRET)
    return base


def read(path: str, roots: tuple[str, ...]) -> tuple[bytes, str]:
    opened = open_file(path, roots)
    with open(opened.fd, "rb") as f:
        return f.read(), opened.path


def test_a_plain_file_is_opened_and_its_path_reported(tree: Path) -> None:
    assert read(f"{tree}/root/dir/f", (f"{tree}/root",)) == (INSIDE, f"{tree}/root/dir/f")


def test_the_reported_path_is_the_file_actually_opened_after_symlinks_and_dotdot(tree: Path) -> None:
    (tree / "root" / "a").symlink_to("dir")  # relative
    (tree / "root" / "dir" / "up").symlink_to(tree / "root")  # absolute
    path = f"{tree}/root/a/up/./a/../dir//f"
    assert read(path, (f"{tree}/root",)) == (INSIDE, f"{tree}/root/dir/f")


def test_dotdot_after_a_symlink_is_the_physical_parent_like_the_kernel(tree: Path) -> None:
    (tree / "root" / "deep" / "er").mkdir(parents=True)
    (tree / "root" / "deep" / "f").write_bytes(b"deep\n")
    (tree / "root" / "l").symlink_to("deep/er")
    assert read(f"{tree}/root/l/../f", (f"{tree}/root",)) == (b"deep\n", f"{tree}/root/deep/f")
    with open(f"{tree}/root/l/../f", "rb") as f:  # the kernel agrees
        assert f.read() == b"deep\n"


def test_a_symlink_from_outside_into_a_root_is_followed(tree: Path) -> None:
    (tree / "outside" / "in").symlink_to(tree / "root" / "dir")
    assert read(f"{tree}/outside/in/f", (f"{tree}/root",)) == (INSIDE, f"{tree}/root/dir/f")


@pytest.mark.parametrize(
    "make",
    [
        lambda t: (t / "root" / "l").symlink_to(t / "outside" / "f"),
        lambda t: (t / "root" / "l").symlink_to("../outside/f"),
        lambda t: (t / "root" / "l").symlink_to("dir/../../outside/f"),
        lambda t: (t / "root" / "l").symlink_to("/../../" + str(t.relative_to("/")) + "/outside/f"),
    ],
    ids=["absolute", "relative", "dotdot-inside-then-out", "dotdot-above-slash"],
)
def test_symlinks_leading_outside_are_refused(tree: Path, make) -> None:
    make(tree)
    with pytest.raises(OutsideRoots):
        open_file(f"{tree}/root/l", (f"{tree}/root",))


def test_a_symlinked_directory_leading_outside_is_refused(tree: Path) -> None:
    (tree / "root" / "d").symlink_to(tree / "outside")
    with pytest.raises(OutsideRoots):
        open_file(f"{tree}/root/d/f", (f"{tree}/root",))


def test_a_symlink_loop_is_refused_after_max_symlinks(tree: Path) -> None:
    (tree / "root" / "a").symlink_to("b")
    (tree / "root" / "b").symlink_to("a")
    with pytest.raises(OSError) as info:
        open_file(f"{tree}/root/a", (f"{tree}/root",))
    assert info.value.strerror == "Too many levels of symbolic links"


def test_a_chain_of_max_symlinks_is_followed_and_one_more_is_not(tree: Path) -> None:
    root = tree / "root"
    (root / "l0").symlink_to("dir/f")
    for i in range(1, MAX_SYMLINKS + 1):
        (root / f"l{i}").symlink_to(f"l{i - 1}")
    assert read(f"{root}/l{MAX_SYMLINKS - 1}", (str(root),))[0] == INSIDE
    with pytest.raises(OSError):
        open_file(f"{root}/l{MAX_SYMLINKS}", (str(root),))


@pytest.mark.parametrize("suffix", ["", "/", "/.", "/dir/..", "/dir/"])
def test_a_directory_is_not_a_file(tree: Path, suffix: str) -> None:
    with pytest.raises(NotAFile, match="Is a directory"):
        open_file(f"{tree}/root{suffix}", (f"{tree}/root",))


def test_a_file_with_a_trailing_slash_is_not_a_directory(tree: Path) -> None:
    with pytest.raises(OSError) as info:
        open_file(f"{tree}/root/dir/f/", (f"{tree}/root",))
    assert info.value.strerror == "Not a directory"


@pytest.mark.parametrize(
    "path",
    ["{t}/outside/f", "{t}/outside/missing", "{t}/nowhere/at/all", "{t}/outside/f/x", "/", "{t}/root/../outside/f"],
)
def test_anything_outside_reads_the_same_whether_it_exists_or_not(tree: Path, path: str) -> None:
    with pytest.raises(OutsideRoots):
        open_file(path.format(t=tree), (f"{tree}/root",))


def test_missing_inside_is_reported_as_missing(tree: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_file(f"{tree}/root/nope/f", (f"{tree}/root",))


def test_a_fifo_and_a_device_are_refused_without_being_opened(tree: Path) -> None:
    os.mkfifo(tree / "root" / "pipe")
    with pytest.raises(NotAFile, match="not a regular file"):
        open_file(f"{tree}/root/pipe", (f"{tree}/root",))  # would block without O_NONBLOCK
    with pytest.raises(NotAFile, match="not a regular file"):
        open_file("/dev/null", ("/",))


def test_a_root_that_is_a_symlink_follows_its_current_target(tree: Path) -> None:
    (tree / "current").symlink_to(tree / "root")
    roots = (f"{tree}/current",)
    result = hash_file(f"{tree}/current/dir/f", roots, "sha256", threading.Event())
    assert (result.digest, result.opened) == (hashlib.sha256(INSIDE).hexdigest(), f"{tree}/root/dir/f")
    (tree / "current").unlink()
    (tree / "current").symlink_to(tree / "outside")  # the operator repoints the root
    result = hash_file(f"{tree}/current/f", roots, "sha256", threading.Event())
    assert result.digest == hashlib.sha256(SECRET).hexdigest()
    with pytest.raises(PathRefused):
        hash_file(f"{tree}/root/dir/f", roots, "sha256", threading.Event())


def test_user_roots_narrow_the_global_roots(tree: Path) -> None:
    (tree / "root" / "other").mkdir()
    (tree / "root" / "other" / "g").write_bytes(b"g")
    global_roots = (f"{tree}/root",)
    mine = (f"{tree}/root/dir",)
    assert hash_file(f"{tree}/root/dir/f", global_roots, "md5", threading.Event(), mine).size == len(INSIDE)
    for path in (f"{tree}/root/other/g", f"{tree}/root/dir/../other/g"):
        with pytest.raises(PathRefused) as info:
            hash_file(path, global_roots, "md5", threading.Event(), mine)
        assert info.value.status == 126


def test_a_user_root_that_resolves_outside_the_global_roots_allows_nothing(tree: Path) -> None:
    (tree / "root" / "sneaky").symlink_to(tree / "outside")
    with pytest.raises(PathRefused) as info:
        hash_file(f"{tree}/root/sneaky/f", (f"{tree}/root",), "md5", threading.Event(), (f"{tree}/root/sneaky",))
    assert info.value.status == 126


# --- races: an attacker swaps things while the server resolves ------------------------------------


def _hammer(path: str, roots: tuple[str, ...], stop: threading.Event, rounds: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    try:
        for _ in range(rounds):
            try:
                result = hash_file(path, roots, "sha256", threading.Event())
            except PathRefused as e:
                seen[e.reason] += 1
            else:
                assert result.digest != hashlib.sha256(SECRET).hexdigest(), "hashed a file outside the roots"
                assert result.digest == hashlib.sha256(INSIDE).hexdigest()
                assert result.opened.startswith(roots[0] + "/")
                seen["hashed"] += 1
    finally:
        stop.set()
    return seen


#: Against the realpath-then-open code each of these tests hashed the outside file 1-7 times per 3000.
ROUNDS = int(os.environ.get("CONCHCMD_RACE_ROUNDS", "3000"))
ALLOWED_OUTCOMES = {"hashed", "outside the allowed roots", "Too many levels of symbolic links"}


def test_swapping_an_intermediate_directory_for_a_symlink_never_hashes_outside(tree: Path) -> None:
    root = tree / "root"
    (root / "spare").symlink_to(tree / "outside")
    stop = threading.Event()
    thread = swapping(root / "dir", root / "spare", stop)
    seen = _hammer(f"{root}/dir/f", (str(root),), stop, ROUNDS)
    thread.join(10)
    assert seen["hashed"] > 0, seen  # the race really ran: both states were seen
    assert seen["outside the allowed roots"] > 0, seen
    assert set(seen) <= ALLOWED_OUTCOMES, seen


def test_swapping_the_file_itself_for_a_symlink_never_hashes_outside(tree: Path) -> None:
    root = tree / "root"
    (root / "spare").symlink_to(tree / "outside" / "f")
    stop = threading.Event()
    thread = swapping(root / "dir" / "f", root / "spare", stop)
    seen = _hammer(f"{root}/dir/f", (str(root),), stop, ROUNDS)
    thread.join(10)
    assert seen["hashed"] > 0, seen
    assert seen["outside the allowed roots"] > 0, seen
    assert set(seen) <= ALLOWED_OUTCOMES, seen


def test_moving_a_walked_directory_out_of_the_root_never_reaches_its_new_parent(tree: Path) -> None:
    """`..` goes back through the descriptors we hold, not through the directory's current parent."""
    root = tree / "root"
    (root / "dir" / "sub").mkdir()
    (root / "f2").write_bytes(INSIDE)
    (tree / "outside" / "dir" / "sub").mkdir(parents=True)
    (tree / "outside" / "f2").write_bytes(SECRET)
    stop = threading.Event()
    thread = swapping(root / "dir", tree / "outside" / "dir", stop)
    seen = _hammer(f"{root}/dir/sub/../../f2", (str(root),), stop, ROUNDS)
    thread.join(10)
    assert set(seen) == {"hashed"}, seen


def test_completion_never_lists_names_outside_while_a_directory_is_swapped(tree: Path) -> None:
    root = tree / "root"
    (tree / "outside" / "secret-name").write_bytes(SECRET)
    (root / "spare").symlink_to(tree / "outside")
    stop = threading.Event()
    thread = swapping(root / "dir", root / "spare", stop)
    seen: Counter[tuple[str, ...]] = Counter()
    try:
        for _ in range(ROUNDS // 3):
            seen[tuple(list_paths(f"{root}/dir/", (str(root),)).candidates)] += 1
    finally:
        stop.set()
    thread.join(10)
    assert set(seen) <= {(f"{root}/dir/f",), ()}, seen
    assert seen[(f"{root}/dir/f",)] > 0, seen


def test_completion_through_a_symlink_into_a_root_lists_what_is_there(tree: Path) -> None:
    (tree / "outside" / "in").symlink_to(tree / "root" / "dir")
    (tree / "root" / "dir" / "sub").mkdir()
    (tree / "root" / "dir" / "up").symlink_to("..")
    (tree / "root" / "dir" / "out").symlink_to(tree / "outside")
    found = list_paths(f"{tree}/outside/in/", (f"{tree}/root",))
    assert found.candidates == [f"{tree}/outside/in/{n}" for n in ("f", "sub/", "up/")]


def test_a_hard_link_inside_a_root_is_hashed_which_is_why_roots_must_not_be_writable(tree: Path) -> None:
    """The documented limit of any path policy: a hard link is the file itself, wherever it is."""
    os.link(tree / "outside" / "f", tree / "root" / "hardlink")
    assert read(f"{tree}/root/hardlink", (f"{tree}/root",)) == (SECRET, f"{tree}/root/hardlink")


def test_completion_narrows_to_the_users_roots_as_comphash_does(tree: Path) -> None:
    root = tree / "root"
    (root / "sneaky").symlink_to(tree / "outside")
    assert list_paths(f"{root}/sneaky/", (str(root),), user_roots=(f"{root}/sneaky",)).candidates == []
    assert list_paths(f"{root}/", (str(root),), user_roots=(f"{root}/dir",)).candidates == [f"{root}/dir/"]
    assert list_paths(f"{root}/dir/", (str(root),), user_roots=(f"{root}/dir",)).candidates == [f"{root}/dir/f"]


def test_a_deep_tree_holds_a_bounded_number_of_descriptors(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deep = tree / "root"
    for _ in range(200):
        deep = deep / "d"
    deep.mkdir(parents=True)
    (deep / "f").write_bytes(b"deep\n")
    (deep / "back").symlink_to("../" * 200 + "dir/f")  # all the way back up, by `..`
    held: set[int] = set()
    peak = [0]
    real_open, real_close = os.open, os.close

    def counting_open(*args, **kwargs):  # type: ignore[no-untyped-def]
        fd = real_open(*args, **kwargs)
        held.add(fd)
        peak[0] = max(peak[0], len(held))
        return fd

    def counting_close(fd: int) -> None:
        held.discard(fd)
        real_close(fd)

    monkeypatch.setattr(os, "open", counting_open)
    monkeypatch.setattr(os, "close", counting_close)
    roots = (f"{tree}/root",)
    assert read(str(deep / "f"), roots) == (b"deep\n", str(deep / "f"))
    assert read(str(deep / "back"), roots) == (INSIDE, f"{tree}/root/dir/f")
    assert read(str(deep) + "/.." * 150 + "/" + "d/" * 150 + "f", roots) == (b"deep\n", str(deep / "f"))
    assert peak[0] <= MAX_OPEN_DIRS + 3, peak  # "/", the window, a reopening, the file
    with pytest.raises(OutsideRoots):
        open_file(str(deep) + "/.." * 201 + "/outside/f", roots)
    assert len(held) <= 3  # the files `read` closed through their file objects, nothing else


# --- the openat2 short cut and the walk decide alike ----------------------------------------------


def _outcome(path: str, roots: tuple[str, ...]) -> tuple[str, ...]:
    try:
        opened = open_file(path, roots)
    except OSError as e:  # NotAFile and OutsideRoots are Exceptions, not OSErrors
        return ("OSError", str(e.errno))
    except (NotAFile, OutsideRoots, ValueError) as e:  # ValueError: a NUL byte (comphash refuses it first)
        return (type(e).__name__, str(e))
    with open(opened.fd, "rb") as f:
        return ("opened", opened.path, f.read().decode(), str(opened.size))


@pytest.mark.skipif(safepath._OPENAT2 is None, reason="no openat2 here (Linux >= 5.6): the walk alone runs")
def test_the_short_cut_and_the_walk_agree_on_every_kind_of_path(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain paths, symlinks (to files and directories, inside and out, relative and absolute),
    `.`, `..`, `//`, trailing slashes, directories, FIFOs, missing names, NUL bytes: the same
    outcome with the openat2 short cut as with the walk alone."""
    root = tree / "root"
    (root / "in-link").symlink_to("dir/f")
    (root / "out-link").symlink_to(tree / "outside" / "f")
    (root / "dir-link").symlink_to(tree / "root" / "dir")
    (root / "out-dir").symlink_to("../outside")
    (tree / "outside" / "back").symlink_to(root / "dir")
    os.mkfifo(root / "pipe")
    (root / "locked").mkdir(mode=0)
    names = [
        "root/dir/f", "root/in-link", "root/out-link", "root/dir-link/f", "root/out-dir/f", "outside/back/f",
        "outside/f", "root/dir", "root/dir/", "root/dir/f/", "root/./dir/f", "root//dir/f", "root/dir/../dir/f",
        "root/dir/missing", "root/missing/f", "root/pipe", "root/locked/f", "root", "root/dir/f\0x",
    ]  # fmt: skip
    roots = (str(root),)
    paths = [f"{tree}/{n}" for n in names] + ["/", "//" + f"{tree}/root/dir/f".lstrip("/"), "relative/f"]
    with_short_cut = [_outcome(p, roots) for p in paths]
    monkeypatch.setattr(safepath, "_OPENAT2", None)
    assert [_outcome(p, roots) for p in paths] == with_short_cut
    assert with_short_cut[0] == ("opened", f"{root}/dir/f", INSIDE.decode(), str(len(INSIDE)))


@pytest.mark.skipif(safepath._OPENAT2 is None, reason="no openat2 here (Linux >= 5.6): the walk alone runs")
def test_a_plain_path_takes_the_short_cut_and_a_symlinked_one_the_walk(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    walks = []
    real_walk = safepath._walk

    def counted_walk():  # type: ignore[no-untyped-def]
        walks.append(1)
        return real_walk()

    monkeypatch.setattr(safepath, "_walk", counted_walk)
    (tree / "root" / "l").symlink_to("dir")
    roots = (f"{tree}/root",)
    assert read(f"{tree}/root/dir/f", roots) == (INSIDE, f"{tree}/root/dir/f")
    assert walks == []
    assert read(f"{tree}/root/l/f", roots) == (INSIDE, f"{tree}/root/dir/f")
    assert walks == [1]


def _hash_outcome(path: str, roots: tuple[str, ...], user_roots: tuple[str, ...] | None) -> tuple[str, ...]:
    try:
        result = hash_file(path, roots, "sha256", threading.Event(), user_roots)
    except PathRefused as e:
        return ("refused", e.reason, str(e.status))
    return ("hashed", result.digest, result.opened)


@pytest.mark.skipif(safepath._OPENAT2 is None, reason="no openat2 here (Linux >= 5.6): the walk alone runs")
def test_roots_as_written_decide_alike_with_and_without_resolving_them_first(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """comphash tries the path against the roots as configured before resolving them (no lstat
    of every component of every root): for roots that are symlinks, lead through one, are not
    normal, narrow each other or do not, every path has the outcome it has when the roots are
    resolved first; and a plain path under plain roots resolves no root at all."""
    (tree / "current").symlink_to(tree / "root")
    (tree / "root" / "sneaky").symlink_to(tree / "outside")
    (tree / "root" / "other").mkdir()
    (tree / "root" / "other" / "g").write_bytes(b"g")
    root = f"{tree}/root"
    configurations: list[tuple[tuple[str, ...], tuple[str, ...] | None]] = [
        ((root,), None),
        ((f"{tree}/current",), None),
        ((root + "/",), None),
        ((f"{tree}/root/../root",), None),
        ((f"{tree}/./root",), None),
        ((f"{tree}/outside", root), None),
        ((root,), (f"{tree}/root/dir",)),
        ((root,), (f"{tree}/current/dir",)),
        ((f"{tree}/current",), (f"{tree}/root/dir",)),
        ((root,), (f"{tree}/root/sneaky",)),
        ((root,), (f"{tree}/outside",)),
        ((root,), ()),
        (("/",), (root,)),
    ]
    names = [
        "root/dir/f",
        "current/dir/f",
        "root/other/g",
        "root/sneaky/f",
        "outside/f",
        "root/dir/missing",
        "root/dir",
    ]
    paths = [f"{tree}/{n}" for n in names]
    first = [[_hash_outcome(p, roots, mine) for p in paths] for roots, mine in configurations]
    monkeypatch.setattr(safepath, "open_plain_unresolved", lambda *_: None)
    assert [[_hash_outcome(p, roots, mine) for p in paths] for roots, mine in configurations] == first
    monkeypatch.undo()
    assert first[0][0][0] == "hashed" and first[0][3][0] == "refused"

    resolved: list[tuple[str, ...]] = []
    real_resolve = safepath.resolve_roots
    monkeypatch.setattr(safepath, "resolve_roots", lambda r: resolved.append(r) or real_resolve(r))
    assert _hash_outcome(f"{root}/dir/f", (root,), (f"{root}/dir",))[0] == "hashed"
    assert resolved == []  # no root resolved: nothing on the way is a symlink
    assert _hash_outcome(f"{tree}/current/dir/f", (f"{tree}/current",), None)[0] == "hashed"
    assert resolved == [(f"{tree}/current",)]  # a symlinked root is followed where it points now


# --- a root that changes while a path in it is opened -------------------------------------------


def _releases(tree: Path) -> tuple[Path, Path]:
    """tree/current -> tree/r1 (f: b"one"), and tree/r2 (f: b"two"): a deploy's layout."""
    for name, data in (("r1", b"one"), ("r2", b"two")):
        (tree / name).mkdir()
        (tree / name / "f").write_bytes(data)
    (tree / "current").symlink_to(tree / "r1")
    return tree / "current", tree / "r2"


def test_a_root_symlink_repointed_between_resolving_the_roots_and_the_walk_hashes_the_new_target(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ln -sfn r2 current` (an atomic rename over the symlink) after the roots were resolved
    (to r1) and before the walk (which then follows current to r2): the request is answered as
    one made after the deploy, not refused as outside the roots."""
    current, r2 = _releases(tree)
    (tree / "next").symlink_to(r2)
    walked = safepath.open_file

    def deploy_first(path: str, roots: tuple[str, ...]) -> safepath.Opened:
        if (tree / "next").is_symlink():
            os.rename(tree / "next", current)
        return walked(path, roots)

    monkeypatch.setattr(safepath, "open_file", deploy_first)
    result = hash_file(f"{current}/f", (str(current),), "sha256", threading.Event())
    assert (result.digest, result.opened) == (hashlib.sha256(b"two").hexdigest(), f"{r2}/f")


def test_a_root_swapped_for_a_directory_inside_realpath_is_resolved_again(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python's realpath lstat()s the root (a symlink), then readlink()s it: swapped for a
    directory in between, readlink fails with EINVAL, which realpath passes on. Shown before as
    "Invalid argument"; now the root is resolved again and the file in the directory hashed."""
    current, _ = _releases(tree)
    (tree / "dir_release").mkdir()
    (tree / "dir_release" / "f").write_bytes(b"three")
    errors = swap_at_readlink(monkeypatch, current, tree / "dir_release", back=False)
    result = hash_file(f"{current}/f", (str(current),), "sha256", threading.Event())
    assert errors == [errno.EINVAL]  # the race really happened, once
    assert (result.digest, result.opened) == (hashlib.sha256(b"three").hexdigest(), f"{current}/f")


def test_a_root_that_keeps_changing_is_refused_as_changed_not_as_invalid_argument(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    current, _ = _releases(tree)
    (tree / "dir_release").mkdir()
    (tree / "dir_release" / "f").write_bytes(b"three")
    errors = swap_at_readlink(monkeypatch, current, tree / "dir_release", back=True)
    with pytest.raises(PathRefused) as info:
        hash_file(f"{current}/f", (str(current),), "sha256", threading.Event())
    assert errors == [errno.EINVAL] * safepath.ROOT_RETRIES
    assert (info.value.reason, info.value.status) == (ROOTS_CHANGED, 1)
    assert list_paths(f"{current}/", (str(current),)).candidates == []  # Tab offers nothing, no error
    monkeypatch.undo()  # without the race, the same request is answered
    assert hash_file(f"{current}/f", (str(current),), "sha256", threading.Event()).size == len(b"one")
    assert list_paths(f"{current}/", (str(current),)).candidates == [f"{current}/f"]


def test_swapping_a_root_for_a_symlink_never_refuses_with_a_system_error(tree: Path) -> None:
    """A root directory exchanged with a symlink to another directory, over and over, while
    requests run: each is hashed, or refused as outside the roots (resolved as one, walked as
    the other) or as changed; 17 of 40,000 were refused "Invalid argument" (realpath's EINVAL)."""
    root = tree / "current"
    (root / "dir").mkdir(parents=True)
    (root / "dir" / "f").write_bytes(INSIDE)
    (tree / "spare").symlink_to(tree / "root")
    stop = threading.Event()
    thread = swapping(root, tree / "spare", stop)
    seen: Counter[str] = Counter()
    try:
        for _ in range(ROUNDS):
            try:
                result = hash_file(f"{root}/dir/f", (str(root),), "sha256", threading.Event())
            except PathRefused as e:
                seen[e.reason] += 1
            else:
                assert result.digest == hashlib.sha256(INSIDE).hexdigest()
                seen["hashed"] += 1
    finally:
        stop.set()
    thread.join(10)
    assert seen["hashed"] > 0, seen
    assert set(seen) <= {"hashed", "outside the allowed roots", ROOTS_CHANGED}, seen
