"""Resolving client-given paths against allowed roots without a check-then-open race.

`realpath` followed by `open` checks one file and may open another: a directory on the way can
be swapped for a symlink in between. Here every component is looked up relative to a directory
descriptor already held, with O_NOFOLLOW; symlinks are read and their targets resolved the same
way (at most MAX_SYMLINKS of them, like the kernel); `..` returns to the descriptor held for the
parent, never through the file system. So the canonical path we track is the path of what we
really opened, and the roots check is made on that. (Linux's openat2 RESOLVE_BENEATH would do
the walk in the kernel, but it refuses absolute symlinks and Python has no binding for it.)

The common case, a plain path inside the roots without a symlink on the way, takes a short cut:
openat2 with RESOLVE_NO_SYMLINKS (called through ctypes) opens its directory in one system call
and fails if any component is a symlink, so the directory opened is the one at that very path;
anything else (a symlink, `..`, an error, no openat2) is left to the walk, which decides. A hash
of a small file costs 10 system calls instead of 23, each of them a release and re-take of the
GIL that the worker thread competes for with the reactor. comphash tries it against the roots as
configured first (`open_plain_unresolved`): no realpath (an lstat per component) of the roots
when nothing on the way is a symlink.

What no path policy can see: a hard link inside a root to a file outside it. Roots, and the
directories above them, must not be writable by untrusted users.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import sys
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from conchcmd.core.realpaths import ROOT_RETRIES, RootsChanged, realpath_retried

MAX_SYMLINKS = 40  # Linux's MAXSYMLINKS
MAX_OPEN_DIRS = 16  # directory descriptors one walk holds besides "/"
_O_PATH = getattr(os, "O_PATH", os.O_RDONLY)  # O_PATH: lookups need only search permission
_DIR_FLAGS = _O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: O_NONBLOCK: a FIFO swapped in at the last moment must not hang the thread.
_FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY


class OutsideRoots(Exception):
    """The path leads outside every allowed root (or could not be resolved outside them)."""


class NotAFile(Exception):
    """The path names something other than a regular file; the message says what."""


@dataclass(frozen=True)
class Opened:
    """A regular file opened for reading, and the symlink-free path it was opened at."""

    fd: int
    path: str
    size: int = -1  # of a file, when it was opened (-1: not known)


_SYS_OPENAT2 = 437  # the same on every Linux architecture (the generic table; Linux 5.6)
_AT_FDCWD = -100
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _Openat2:
    """openat2(2) with RESOLVE_NO_SYMLINKS, through libc's syscall(2)."""

    def __init__(self) -> None:
        self._syscall = ctypes.CDLL(None, use_errno=True).syscall
        self._syscall.restype = ctypes.c_long

    def open_no_symlinks(self, path: str, flags: int) -> int:
        """Open absolute `path`, failing (ELOOP) if any component of it is a symlink."""
        how = _OpenHow(flags, 0, _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
        fd = int(
            self._syscall(
                ctypes.c_long(_SYS_OPENAT2),
                ctypes.c_int(_AT_FDCWD),
                ctypes.c_char_p(os.fsencode(path)),
                ctypes.byref(how),
                ctypes.c_size_t(ctypes.sizeof(how)),
            )
        )
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return fd


def _probe_openat2() -> _Openat2 | None:
    """openat2 if this kernel (and any seccomp filter) lets it work, else None: the walk only."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        openat2 = _Openat2()
        os.close(openat2.open_no_symlinks("/", _DIR_FLAGS))
    except (OSError, AttributeError):
        return None
    return openat2


_OPENAT2 = _probe_openat2()


def within_roots(path: str, roots: tuple[str, ...]) -> bool:
    """True if `path` (canonical, absolute) is one of the roots or below one."""
    return any(os.path.commonpath([root, path]) == root for root in roots)


def resolve_roots(roots: tuple[str, ...]) -> tuple[str, ...]:
    """The operator's roots with their own symlinks followed (trusted configuration)."""
    return tuple(realpath_retried(r) for r in roots)


def allowed_roots(roots: tuple[str, ...], user_roots: tuple[str, ...] | None) -> tuple[str, ...]:
    """The canonical roots one user may read: the global ones, narrowed by the user's own (a
    user root that resolves outside every global root allows nothing)."""
    allowed = resolve_roots(roots)
    if user_roots is None:
        return allowed
    return tuple(r for r in resolve_roots(user_roots) if within_roots(r, allowed))


def open_plain_unresolved(path: str, roots: tuple[str, ...], user_roots: tuple[str, ...] | None) -> Opened | None:
    """open_file's short cut against the roots as configured, before anything resolves them:
    `path` must lie within a root as written (a user's root as written, and that root within a
    global one as written), every such root absolute and normal. openat2 then finds no symlink
    on the way to `path`, so none in the roots on that way either: each is its own realpath, and
    `allowed_roots` would allow `path` too, without its lstat of every component of every root.
    None otherwise: the caller resolves the roots and decides with open_file."""
    if _OPENAT2 is None:
        return None
    if user_roots is not None:
        roots = tuple(r for r in user_roots if _normal(r) and any(_normal(g) and within_roots(r, (g,)) for g in roots))
    return _open_plain(path, tuple(r for r in roots if _normal(r)))


def _normal(path: str) -> bool:
    return path.startswith("/") and os.path.normpath(path) == path


def _components(path: str) -> list[str]:
    parts = [p for p in path.split("/") if p]
    if path.endswith("/") and parts:
        parts.append(".")  # "file/" must be a directory, like the kernel says
    return parts


def _error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class _Walk:
    """The chain of directories from "/" down to the current one. "/" and the last
    MAX_OPEN_DIRS of them are held open; one further up is reopened, by its names and without
    following symlinks, only if `..` comes back to it (so a deep tree cannot exhaust descriptors)."""

    def __init__(self) -> None:
        self.stack: list[tuple[int | None, str]] = [(os.open("/", _DIR_FLAGS), "")]
        self.hops = 0

    @property
    def fd(self) -> int:
        fd = self.stack[-1][0]
        assert fd is not None  # the current directory is always open
        return fd

    def path(self, name: str | None = None) -> str:
        names = [n for _, n in self.stack[1:]]
        if name is not None:
            names.append(name)
        return "/" + "/".join(names)

    def _pop(self) -> None:
        fd = self.stack.pop()[0]
        if fd is not None:
            os.close(fd)

    def up(self) -> None:
        if len(self.stack) > 1:  # ".." of "/" is "/"
            self._pop()
            if self.stack[-1][0] is None:
                self._reopen_top()

    def _reopen_top(self) -> None:
        top = len(self.stack) - 1
        base = max(i for i in range(top) if self.stack[i][0] is not None)  # "/" at least
        current = self.stack[base][0]
        assert current is not None
        for i in range(base + 1, top + 1):
            try:
                opened = os.open(self.stack[i][1], _DIR_FLAGS, dir_fd=current)
            finally:
                if i - 1 > base:
                    os.close(current)  # a directory in between, opened only to pass through
            current = opened
        self.stack[top] = (current, self.stack[top][1])

    def to_top(self) -> None:
        while len(self.stack) > 1:
            self._pop()

    def down(self, name: str) -> None:
        self.stack.append((os.open(name, _DIR_FLAGS, dir_fd=self.fd), name))
        oldest = len(self.stack) - 1 - MAX_OPEN_DIRS
        if oldest > 0:
            fd, name_there = self.stack[oldest]
            if fd is not None:
                os.close(fd)
                self.stack[oldest] = (None, name_there)

    def close(self) -> None:
        self.to_top()
        self._pop()

    def follow(self, name: str, pending: deque[str]) -> bool:
        """If `name` is a symlink, queue its target's components and return True."""
        try:
            target = os.readlink(name, dir_fd=self.fd)
        except OSError as e:
            if e.errno == errno.EINVAL:
                return False  # not a symlink (any more)
            raise
        self.hops += 1
        if self.hops > MAX_SYMLINKS:
            raise _error(errno.ELOOP)
        if target.startswith("/"):
            self.to_top()
        pending.extendleft(reversed(_components(target)))
        return True

    def retry(self, name: str, pending: deque[str]) -> None:
        """The object changed type under us: look it up again (bounded like symlinks)."""
        self.hops += 1
        if self.hops > MAX_SYMLINKS:
            raise _error(errno.ELOOP)
        pending.appendleft(name)


@contextmanager
def _walk() -> Iterator[_Walk]:
    walk = _Walk()
    try:
        yield walk
    finally:
        walk.close()


def _settle(walk: _Walk, pending: deque[str], roots: tuple[str, ...] | None) -> tuple[str | None, int]:
    """Walk `pending` down to its last component, following every symlink on the way and at
    the end. Returns that component's name in the directory `walk` now holds, and its mode (not
    opened yet); name None when the path ends at `walk`'s directory itself ("/", ".", "..", a
    trailing slash). With `roots`, a failure on the way outside them raises OutsideRoots."""

    def outside_or(error: OSError, name: str) -> Exception:
        if roots is None:
            return error
        lexical = os.path.normpath("/".join([walk.path(name), *pending]))
        return error if within_roots(lexical, roots) else OutsideRoots()

    while pending:
        name = pending.popleft()
        if name == ".":
            continue
        if name == "..":
            try:
                walk.up()
            except OSError as e:
                raise outside_or(e, name) from None
            continue
        if pending:  # a directory on the way
            try:
                walk.down(name)
            except OSError as e:
                if e.errno != errno.ENOTDIR:
                    raise outside_or(e, name) from None
                try:
                    if walk.follow(name, pending):
                        continue
                    mode = os.stat(name, dir_fd=walk.fd, follow_symlinks=False).st_mode
                    if stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
                        walk.retry(name, pending)  # it changed type under us: look again
                        continue
                except OSError as e2:
                    raise outside_or(e2, name) from None
                raise outside_or(e, name) from None
            continue
        try:
            mode = os.stat(name, dir_fd=walk.fd, follow_symlinks=False).st_mode
            if stat.S_ISLNK(mode):
                if not walk.follow(name, pending):
                    walk.retry(name, pending)
                continue
        except OSError as e:
            raise outside_or(e, name) from None
        return name, mode
    return None, stat.S_IFDIR


def open_file(path: str, roots: tuple[str, ...]) -> Opened:
    """Open the regular file at absolute `path` for reading, if it lies within `roots`.

    `roots` must be canonical (see resolve_roots). Raises OutsideRoots, NotAFile, or OSError
    (missing, permission denied, too many symlinks). Failures on the way to a place outside the
    roots are reported as OutsideRoots, so nothing outside can be probed. The caller closes fd.
    """
    plain = _open_plain(path, roots)
    if plain is not None:
        return plain
    with _walk() as walk:
        pending = deque(_components(path))
        while True:
            name, mode = _settle(walk, pending, roots)
            if not within_roots(walk.path(name), roots):
                raise OutsideRoots()
            if name is None or stat.S_ISDIR(mode):
                raise NotAFile(os.strerror(errno.EISDIR))
            if not stat.S_ISREG(mode):
                raise NotAFile("not a regular file")  # opening a device could have side effects
            try:
                fd = os.open(name, _FILE_FLAGS, dir_fd=walk.fd)
            except OSError as e:
                if e.errno != errno.ELOOP:
                    raise
                walk.retry(name, pending)  # swapped for a symlink since the stat
                continue
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):  # swapped since the stat; O_NONBLOCK kept a FIFO from hanging
                    raise NotAFile(os.strerror(errno.EISDIR) if stat.S_ISDIR(st.st_mode) else "not a regular file")
            except BaseException:
                os.close(fd)
                raise
            return Opened(fd, walk.path(name), st.st_size)


def open_in_roots(path: str, roots: tuple[str, ...], user_roots: tuple[str, ...] | None) -> Opened:
    """open_file against the roots as they are now (`allowed_roots`), after the short cut
    against the roots as written (`open_plain_unresolved`). A path found outside them while a
    root changed (resolved as one directory, walked through another: a root swapped for a
    symlink meanwhile) is tried again with the roots resolved anew, at most ROOT_RETRIES times:
    OutsideRoots only when the roots were the same before and after the walk."""
    plain = open_plain_unresolved(path, roots, user_roots)  # no lstat of the roots' components
    if plain is not None:
        return plain
    for _ in range(ROOT_RETRIES):
        allowed = allowed_roots(roots, user_roots)
        try:
            return open_file(path, allowed)
        except OutsideRoots:
            if allowed_roots(roots, user_roots) == allowed:
                raise
    raise RootsChanged()


def _open_plain(path: str, roots: tuple[str, ...]) -> Opened | None:
    """open_file's short cut (see the module doc): `path` absolute and normal (no ".", "..",
    "//" or trailing "/"), inside the roots as written, its directory reached without a symlink
    (openat2 refuses any), and a regular file at its end: opened, in 5 system calls. None in
    every other case, errors included: the walk then decides, and reports what it finds."""
    if (
        _OPENAT2 is None
        or not path.startswith("/")
        or path.startswith("//")
        or "\0" in path
        or os.path.normpath(path) != path
        or not within_roots(path, roots)
    ):
        return None
    directory, name = path.rsplit("/", 1)
    try:
        dir_fd = _OPENAT2.open_no_symlinks(directory or "/", _DIR_FLAGS)
    except OSError:
        return None  # a symlink on the way (ELOOP), missing, not permitted...: the walk's to say
    try:
        if not stat.S_ISREG(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            return None  # a symlink, a directory, a device or a FIFO (not opened): the walk's to say
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)  # O_NOFOLLOW: swapped for a symlink, ELOOP
    except OSError:
        return None
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    if not stat.S_ISREG(st.st_mode):  # swapped since the stat
        os.close(fd)
        return None
    return Opened(fd, path, st.st_size)


def open_directory(path: str) -> Opened:
    """Open the directory at absolute `path` for listing (O_RDONLY), wherever it is, resolved
    like open_file; `path` in the result is where it really is. Raises OSError."""
    with _walk() as walk:
        pending = deque(_components(path))
        while True:
            name, mode = _settle(walk, pending, None)
            if not stat.S_ISDIR(mode):
                raise _error(errno.ENOTDIR)
            try:
                fd = os.open(name or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=walk.fd)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR) or name is None:
                    raise
                walk.retry(name, pending)  # swapped for a symlink since the stat
                continue
            return Opened(fd, walk.path(name))


def locate(path: str) -> tuple[str, int]:
    """Where absolute `path` really leads (symlinks resolved as open_file does), and the mode
    of what is there, without opening it. Raises OSError."""
    with _walk() as walk:
        name, mode = _settle(walk, deque(_components(path)), None)
        return walk.path(name), mode
