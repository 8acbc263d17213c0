"""Tab completion for the terminal shell: command names, options, and `comphash` paths."""

from __future__ import annotations

import os

from twisted.internet import defer

from conchcmd.commands import BlockingRunner, CommandTable
from conchcmd.comphash import within_roots
from conchcmd.config import UserPolicy

MAX_CANDIDATES = 200  # a directory listing is cut here (huge directories stay cheap)


def list_paths(partial: str, roots: tuple[str, ...], limit: int = MAX_CANDIDATES) -> list[str]:
    """Paths starting with `partial` that lead into the roots. Blocking: run it in a thread.

    Files are offered only inside the roots; directories also when they are on the way to one.
    """
    directory, _, stem = partial.rpartition("/")
    shown = directory + "/"
    try:
        entries = sorted(os.scandir(directory or "/"), key=lambda e: e.name)
    except OSError:
        return []
    candidates = []
    for entry in entries:
        name = entry.name
        if not name.startswith(stem) or (name.startswith(".") and not stem.startswith(".")):
            continue
        try:
            is_dir = entry.is_dir()
        except OSError:
            continue
        real = os.path.realpath(shown + name)
        inside = within_roots(real, roots)
        on_the_way = is_dir and any(root.startswith(real.rstrip("/") + "/") for root in roots)
        if inside or on_the_way:
            candidates.append(shown + name + ("/" if is_dir else ""))
            if len(candidates) >= limit:
                break
    return candidates


class Completer:
    """Completes the word before the cursor; directory listings run off the reactor thread."""

    def __init__(self, table: CommandTable, runner: BlockingRunner, roots: tuple[str, ...]):
        self.table = table
        self.runner = runner
        self.roots = tuple(os.path.realpath(r) for r in roots)

    def complete(self, line: str, policy: UserPolicy) -> defer.Deferred[list[str]]:
        """Candidates (whole words) for the last word of `line`."""
        words = line.split(" ")
        word = words[-1]
        permitted = [c for c in self.table if policy.permits(c.name)]
        if len(words) == 1:
            return defer.succeed([c.name for c in permitted if c.name.startswith(word)])
        command = next((c for c in permitted if c.name == words[0]), None)
        if command is None:
            return defer.succeed([])
        if word.startswith("-"):
            return defer.succeed([o for o in command.options if o.startswith(word)])
        if command.name == "help":
            return defer.succeed([c.name for c in permitted if c.name.startswith(word)])
        if command.name == "comphash" and word.startswith("/"):
            roots = policy.comphash_roots or self.roots
            return self.runner.run(list_paths, word, tuple(os.path.realpath(r) for r in roots))
        return defer.succeed([])
