"""Tab completion for the terminal shell: command names, options, and `comphash` paths."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

from twisted.internet import defer

from conchcmd.commands.framework import BlockingRunner, CommandTable
from conchcmd.commands.safepath import RootsChanged, allowed_roots, locate, open_directory, within_roots
from conchcmd.core.audit import terminal_safe
from conchcmd.core.config import UserPolicy

MAX_CANDIDATES = 200  # a directory listing is cut here (huge directories stay cheap)
_SPECIAL = re.compile(r"""([\s'"\\#;&|<>()$`*?!])""")


@dataclass(frozen=True)
class Completion:
    """Candidates for the word before the cursor; `complete` is False when the list was cut."""

    candidates: list[str]
    complete: bool = True


def quote_word(text: str) -> str:
    """Backslash-escape what the command-line parser would otherwise split or interpret."""
    return _SPECIAL.sub(r"\\\1", text)


def split_words(line: str) -> list[str]:
    """The words of a partial command line, backslash escapes undone (quotes kept as typed)."""
    words, current, escaped = [], [], False
    for ch in line:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == " ":
            words.append("".join(current))
            current = []
        else:
            current.append(ch)
    words.append("".join(current))
    return words


def last_word(line: str) -> str:
    return split_words(line)[-1]


def list_paths(
    partial: str, roots: tuple[str, ...], limit: int = MAX_CANDIDATES, user_roots: tuple[str, ...] | None = None
) -> Completion:
    """Paths starting with `partial` that lead into the roots. Blocking: run it in a thread.

    Files are offered only inside the roots; directories also when they are on the way to one.
    The directory is opened and its entries judged by safepath's race-free resolution, so a
    directory swapped for a symlink meanwhile cannot make names outside the roots appear.
    """
    try:
        roots = allowed_roots(roots, user_roots)  # as comphash computes them, in this thread
    except RootsChanged:
        return Completion([])  # a root kept changing while it was resolved: nothing to offer now
    directory, _, stem = partial.rpartition("/")
    shown = directory + "/"
    try:
        opened = open_directory(directory or "/")
    except OSError:
        return Completion([])
    try:
        with os.scandir(opened.fd) as listing:
            entries = sorted(listing, key=lambda e: e.name)
    except OSError:
        return Completion([])
    finally:
        os.close(opened.fd)
    here = opened.path.rstrip("/")
    candidates: list[str] = []
    for entry in entries:
        name = entry.name
        if not name.startswith(stem) or (name.startswith(".") and not stem.startswith(".")):
            continue
        if terminal_safe(name, single_line=True) != name:
            continue  # a name the terminal sanitiser would alter is not offered: it could not be typed back
        real = f"{here}/{name}"
        try:
            if entry.is_symlink():
                real, mode = locate(real)
                is_dir = stat.S_ISDIR(mode)
            else:
                is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            continue
        inside = within_roots(real, roots)
        on_the_way = is_dir and any(root.startswith(real.rstrip("/") + "/") for root in roots)
        if inside or on_the_way:
            if len(candidates) >= limit:
                return Completion(candidates, complete=False)
            candidates.append(shown + name + ("/" if is_dir else ""))
    return Completion(candidates)


class Completer:
    """Completes the word before the cursor; directory listings run off the reactor thread."""

    def __init__(self, table: CommandTable, runner: BlockingRunner, roots: tuple[str, ...]):
        self.table = table
        self.runner = runner
        self.roots = roots  # resolved by list_paths, in its thread, as comphash resolves them

    def complete(self, line: str, policy: UserPolicy) -> defer.Deferred[Completion]:
        """Candidates (whole, unquoted words) for the last word of `line`."""
        words = split_words(line)
        word = words[-1]
        permitted = [c for c in self.table if policy.permits(c.name)]

        def names(options: list[str]) -> defer.Deferred[Completion]:
            return defer.succeed(Completion([o for o in options if o.startswith(word)]))

        if len(words) == 1:
            return names([c.name for c in permitted])
        command = next((c for c in permitted if c.name == words[0]), None)
        if command is None:
            return names([])
        if word.startswith("-"):
            return names(list(command.options))
        if command.name == "help":
            return names([c.name for c in permitted])
        if command.name == "comphash" and word.startswith("/"):
            return self.runner.run(list_paths, word, self.roots, MAX_CANDIDATES, policy.comphash_roots)
        return names([])
