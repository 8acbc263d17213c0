"""An attacker's tools for race tests: atomically exchanging two names, over and over, or at the
moment a readlink() looks at one."""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path
from typing import Any

import pytest

_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100
RENAME_EXCHANGE = 2


def exchange(a: Path, b: Path) -> None:
    """Atomically swap two names (renameat2 RENAME_EXCHANGE): no moment where either is missing."""
    if _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def swapping(a: Path, b: Path, stop: threading.Event) -> threading.Thread:
    """A started thread that keeps exchanging `a` and `b` until `stop` is set."""

    def run() -> None:
        while not stop.is_set():
            exchange(a, b)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def swap_at_readlink(monkeypatch: pytest.MonkeyPatch, link: Path, other: Path, back: bool) -> list[int]:
    """os.readlink(link) (realpath's, after its lstat found a symlink) first exchanges `link` with
    `other`, not a symlink, so that the kernel's readlink finds no symlink there (EINVAL); with
    `back`, exchanges them again afterwards (the next lstat finds the symlink again). The errors
    readlink raised, as a list the caller reads."""
    real_readlink = os.readlink
    errors: list[int] = []

    def racing_readlink(path: Any, *args: Any, **kwargs: Any) -> Any:
        if os.fspath(path) != str(link) or kwargs.get("dir_fd") is not None:
            return real_readlink(path, *args, **kwargs)
        exchange(link, other)
        try:
            return real_readlink(path, *args, **kwargs)
        except OSError as e:
            errors.append(e.errno or 0)
            raise
        finally:
            if back:
                exchange(link, other)

    monkeypatch.setattr(os, "readlink", racing_readlink)
    return errors
