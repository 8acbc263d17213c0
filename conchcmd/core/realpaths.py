"""os.path.realpath that survives a name changed while it is resolved.

Python's realpath lstat()s each component and readlink()s it if it is a symlink; a symlink swapped
for a directory or file in between makes that readlink fail with EINVAL (ENOENT if it was
removed), which realpath passes on as if the path were bad. Resolving again decides.
"""

from __future__ import annotations

import errno
import os


class RootsChanged(Exception):
    """A root kept changing (a symlink swapped for a directory, or back) while it was resolved
    or while a path in it was opened: nothing was opened; asking again may succeed."""


#: Times a path is tried again when a root changed meanwhile, before RootsChanged.
ROOT_RETRIES = 8


def realpath_retried(root: str) -> str:
    """os.path.realpath, again when the name changed while it was read (EINVAL or ENOENT from
    the readlink after the lstat). RootsChanged after ROOT_RETRIES tries."""
    for _ in range(ROOT_RETRIES):
        try:
            return os.path.realpath(root)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOENT):
                raise
    raise RootsChanged()


def strict_realpath_retried(path: str) -> str:
    """os.path.realpath(strict=True), again when the name changed while it was read; a path that
    does not exist, or keeps changing for ROOT_RETRIES tries, raises the last OSError, as
    strict realpath does."""
    for _ in range(ROOT_RETRIES - 1):
        try:
            return os.path.realpath(path, strict=True)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOENT):
                raise
    return os.path.realpath(path, strict=True)
