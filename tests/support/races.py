"""An attacker's tool for race tests: atomically exchanging two names, over and over."""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

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
