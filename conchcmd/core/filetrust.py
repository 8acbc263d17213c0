"""Which files conchcmd may trust: sshd's StrictModes rule (OpenSSH misc.c `safe_path`).

A file that decides who logs in is trusted only if it, and every directory from it up to `/`
(after resolving symlinks), is owned by root or by the server's own user and is not writable by
group or others. Anyone else who could write one of them could authorize their own key.
"""

from __future__ import annotations

import errno
import functools
import os
import pwd
import stat
from dataclasses import dataclass, field
from types import TracebackType

from conchcmd.core.realpaths import strict_realpath_retried

#: Reasons a file cannot be opened or read that are the server's own (out of descriptors or memory,
#: a failing disk or file server), not the file's: they pass, and say nothing about who may log in.
SERVER_SIDE_ERRNOS = frozenset(
    {
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOMEM,
        errno.ENOBUFS,
        errno.EIO,
        errno.EAGAIN,
        errno.EINTR,
        errno.ESTALE,
        errno.ETIMEDOUT,
    }
)


def server_side(error: OSError) -> bool:
    """Whether `error` is the server's own trouble (see SERVER_SIDE_ERRNOS) rather than the file's
    (missing, not permitted, not a file)."""
    return error.errno in SERVER_SIDE_ERRNOS


class ServerSideFailure(Exception):
    """A file a login depends on could not be read for a reason of the server's own: the login
    cannot be decided now, and the client is not to blame (no strike, no "Failed" line)."""

    def __init__(self, what: str, path: str, error: OSError):
        self.what = what  # "authorized_keys", "trusted_user_ca_keys", "revoked_keys"
        self.path = path
        self.strerror = error.strerror or str(error)
        self.errno = error.errno
        super().__init__(f"{what} {path} cannot be read: {self.strerror} (a server-side failure)")


@dataclass(frozen=True)
class FileTrust:
    """The `strict_modes` slice of the configuration, and whose files count as the server's own."""

    strict: bool = True
    uid: int = field(default_factory=os.geteuid)

    def owner_ok(self, st: os.stat_result) -> bool:
        return st.st_uid in (0, self.uid)

    def owner_name(self) -> str:
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return str(self.uid)


@dataclass(frozen=True)
class Untrusted:
    """Why a file or directory is not trusted, in sshd's words, and what an operator can do."""

    path: str  # the file or directory at fault, symlinks resolved
    reason: str
    fix: str


class UntrustedFile(Exception):
    """A file failed the ownership and mode check, or is not a regular file."""

    def __init__(self, problem: Untrusted):
        super().__init__(problem.reason)
        self.problem = problem


def _bad(st: os.stat_result, trust: FileTrust) -> bool:
    return not trust.owner_ok(st) or bool(st.st_mode & 0o022)


def _fix(path: str, st: os.stat_result, trust: FileTrust, subject: str) -> str:
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISDIR(st.st_mode) and mode & 0o002 and mode & stat.S_ISVTX:
        # A shared directory such as /tmp: tightening it would break the system.
        owners = "root" if trust.uid == 0 else f"root or {trust.owner_name()}"
        return f"move {subject} to a directory only {owners} can write"
    directory = stat.S_ISDIR(st.st_mode)
    steps = []
    if not trust.owner_ok(st):
        steps.append(f"chown {trust.owner_name()} {path}")
    if mode & 0o022:
        steps.append(f"chmod go-w {path}" if directory else f"chmod 600 {path}")
    return " && ".join(steps) + (f", or move {subject} elsewhere" if directory else "")


@functools.lru_cache(maxsize=256)
def _ancestors(start: str) -> tuple[str, ...]:
    """`start` and every directory above it, up to `/` (names only: each is stat'ed every time)."""
    chain = [start]
    while (parent := os.path.dirname(chain[-1])) != chain[-1]:
        chain.append(parent)
    return tuple(chain)


def _directory_chain(start: str, trust: FileTrust, subject: str) -> Untrusted | None:
    """Check `start` (a resolved directory) and every directory above it, up to `/`."""
    owners = (0, trust.uid)  # FileTrust.owner_ok's
    for directory in _ancestors(start):
        try:
            st = os.stat(directory)
        except OSError as e:
            if server_side(e):
                raise
            return Untrusted(directory, f"bad ownership or modes for directory {directory}", f"check {directory}")
        if st.st_uid not in owners or st.st_mode & 0o022:  # _bad, inline: each directory above each key file
            reason = f"bad ownership or modes for directory {directory}"
            return Untrusted(directory, reason, _fix(directory, st, trust, subject))
    return None


def file_problem(
    path: str, file_stat: os.stat_result, trust: FileTrust, *, resolved: str | None = None
) -> Untrusted | None:
    """sshd's `safe_path` for a file already opened (`file_stat` is its fstat), or None if trusted.

    The path is resolved first (`resolved`, when the caller has the kernel's name for the opened
    file), so a symlink is judged by where it leads; the resolved file must be the one that was
    opened, else it changed under us and is not trusted this time.
    """
    if not stat.S_ISREG(file_stat.st_mode):
        return Untrusted(path, f"{path} is not a regular file", f"replace {path} with a regular file")
    if not trust.strict:
        return None
    try:
        real = resolved if resolved is not None else strict_realpath_retried(path)
        real_stat = os.stat(real)
    except OSError as e:
        if server_side(e):
            raise
        return Untrusted(path, f"realpath {path} failed: {e.strerror}", f"check {path}")
    if (real_stat.st_dev, real_stat.st_ino) != (file_stat.st_dev, file_stat.st_ino):
        return Untrusted(path, f"{path} changed while it was checked", "try again")
    if _bad(file_stat, trust):
        return Untrusted(real, f"bad ownership or modes for file {real}", _fix(real, file_stat, trust, path))
    return _directory_chain(os.path.dirname(real), trust, path)


def directory_problem(path: str, trust: FileTrust) -> Untrusted | None:
    """The same rule for a directory that will hold trusted files (the host key directory)."""
    if not trust.strict:
        return None
    try:
        real = strict_realpath_retried(path)
    except OSError as e:
        return Untrusted(path, f"realpath {path} failed: {e.strerror}", f"check {path}")
    return _directory_chain(real, trust, f"the files in {path}")


def opened_path(fd: int) -> str | None:
    """The kernel's absolute, symlink-free name for an open file (/proc/self/fd): what realpath
    works out component by component in Python, in one readlink. None without /proc, or for a
    file unlinked since (the name then ends " (deleted)")."""
    try:
        name = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    return name if name.startswith("/") and not name.endswith(" (deleted)") else None


def path_problem(path: str, trust: FileTrust) -> Untrusted | None:
    """`file_problem` for a path not yet opened (for `doctor`); a missing file is no problem here."""
    try:
        with CheckedFile(path, trust):
            return None
    except UntrustedFile as e:
        return e.problem
    except OSError:
        return None


def file_version(st: os.stat_result) -> tuple[int, ...]:
    """Which file, at which content: (device, inode, size, mtime, ctime), for caches and for noticing
    a file changed under a rewrite."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class AttemptFiles:
    """The files one login attempt (one connection's authentication) has read and checked, each
    with its `file_version` at that read.

    Authentication reads a user's authorized_keys up to three times (the name, the key probe, the
    signature) within milliseconds; what was read may be used again only while `os.stat` of the
    path still gives the same version (same file, same content), so a replaced, rewritten or
    chmod-ed file (its ctime moves) is read and checked again. A new connection starts empty, so
    every login checks ownership and modes at least once.
    """

    def __init__(self) -> None:
        self._seen: dict[str, tuple[tuple[int, ...], object]] = {}

    def get(self, path: str) -> object | None:
        """What was recorded for `path` if the file there is still the one read, else None."""
        seen = self._seen.get(path)
        if seen is None:
            return None
        try:
            version = file_version(os.stat(path))
        except OSError:
            version = ()
        if version != seen[0]:
            del self._seen[path]
            return None
        return seen[1]

    def put(self, path: str, version: tuple[int, ...], value: object) -> None:
        self._seen[path] = (version, value)


class CheckedFile:
    """A file opened for reading only after it passed `file_problem`.

    The check is on the open descriptor, so what is read is what was checked; opening does not
    block on a FIFO. Raises OSError if it cannot be opened, UntrustedFile if it is not trusted.
    """

    def __init__(self, path: str, trust: FileTrust):
        self.path = path
        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            self.stat = os.fstat(self._fd)
            resolved = opened_path(self._fd) if trust.strict and stat.S_ISREG(self.stat.st_mode) else None
            problem = file_problem(path, self.stat, trust, resolved=resolved)
        except BaseException:
            os.close(self._fd)
            raise
        if problem is not None:
            os.close(self._fd)
            raise UntrustedFile(problem)

    @property
    def version(self) -> tuple[int, ...]:
        """What a parse cache is keyed on: a replaced or rewritten file always has a new one, even
        one copied with its size and mtime kept (`cp -p`, `rsync -t`): ctime cannot be set back."""
        return file_version(self.stat)

    def read(self) -> bytes:
        chunks = []
        while chunk := os.read(self._fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> CheckedFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def read_trusted(path: str, trust: FileTrust) -> bytes:
    """The whole content of a trusted file (OSError or UntrustedFile otherwise)."""
    with CheckedFile(path, trust) as f:
        return f.read()


def symlink_followable(path: str, uid: int | None = None) -> bool:
    """Whether a symlink at `path` may be followed when writing there: only when the directory
    holding it is owned by root or the server's user (`uid`, default this process's) and
    writable by nobody else, so that only someone who could replace the file anyway placed it
    (as /dev for /dev/stdout). Callers add O_NOFOLLOW otherwise."""
    try:
        st = os.stat(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return False
    return st.st_uid in (0, os.geteuid() if uid is None else uid) and not st.st_mode & 0o022
