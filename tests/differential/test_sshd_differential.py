"""sshd is the oracle: every generated case must be accepted or refused by conchcmd exactly as
a real sshd reading the same files decides, unless the README lists the difference.

CONCHCMD_DIFF_CASES sets how many cases (default 300), CONCHCMD_DIFF_SEED the seed (default:
a fresh one, printed on failure so the run can be repeated).
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
from collections.abc import Awaitable

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from support.authcases import SEPARATORS, Case, generate, public_line
from support.differential import AttemptError, Pair, Target, attempt, deliberate_differences

pytestmark = pytest.mark.differential

DEFAULT_CASES = 300
BATCH = 400  # cases per set of files
CONCURRENCY = 8


async def _bounded(tasks: list[Awaitable[bool]], limit: int) -> list[bool | BaseException]:
    semaphore = asyncio.Semaphore(limit)

    async def run(task: Awaitable[bool]) -> bool:
        async with semaphore:
            return await task

    return await asyncio.gather(*(run(t) for t in tasks), return_exceptions=True)


def _run_batch(pair: Pair, cases: list[Case]) -> list[tuple[Case, bool | BaseException, bool | BaseException]]:
    pair.files.write(cases)
    tasks: list[Awaitable[bool]] = []
    for case in cases:
        tasks.append(attempt(pair.sshd_target, pair.user, case))
        tasks.append(attempt(pair.conch_target, pair.user, case))
    results = asyncio.run(_bounded(tasks, CONCURRENCY))
    return [(case, results[2 * i], results[2 * i + 1]) for i, case in enumerate(cases)]


def test_conchcmd_decides_like_sshd(server_pair: Pair) -> None:
    count = int(os.environ.get("CONCHCMD_DIFF_CASES", DEFAULT_CASES))
    seed = int(os.environ.get("CONCHCMD_DIFF_SEED", random.randrange(1 << 31)))
    allowed = deliberate_differences()
    cases = generate(seed, count, server_pair.user, sources=server_pair.sources)
    outcomes = []
    for start in range(0, len(cases), BATCH):
        outcomes += _run_batch(server_pair, cases[start : start + BATCH])

    errors, disagreements, excused = [], [], collections.Counter[str]()
    for case, by_sshd, by_conch in outcomes:
        if isinstance(by_sshd, BaseException) or isinstance(by_conch, BaseException):
            errors.append(f"{case.describe()}\n  sshd: {by_sshd!r}\n  conchcmd: {by_conch!r}")
        elif by_sshd != by_conch:
            if by_sshd and not by_conch and case.tags & allowed:
                excused.update(case.tags & allowed)
            else:
                verdict = f"sshd {'accepts' if by_sshd else 'refuses'}, conchcmd {'accepts' if by_conch else 'refuses'}"
                disagreements.append(f"{verdict}\n{case.describe()}")
    accepted = sum(1 for _, s, _ in outcomes if s is True)
    print(
        f"[differential] seed={seed} cases={len(cases)} sshd_accepts={accepted} "
        f"disagreements={len(disagreements)} excused={dict(excused)} errors={len(errors)}"
    )
    assert not errors, f"seed {seed}: {len(errors)} attempts failed oddly:\n\n" + "\n\n".join(errors[:5])
    shown = int(os.environ.get("CONCHCMD_DIFF_SHOW", 15))
    assert not disagreements, (
        f"seed {seed} (CONCHCMD_DIFF_SEED={seed} repeats it): {len(disagreements)} of {len(cases)} cases "
        f"decided differently from sshd:\n\n" + "\n\n".join(disagreements[:shown])
    )
    # The generator must produce both outcomes, or the comparison proves little.
    assert 0.05 * len(cases) < accepted < 0.9 * len(cases), f"sshd accepted {accepted} of {len(cases)}"


def test_a_separator_in_a_comment_does_not_bypass_from(server_pair: Pair) -> None:
    """Issue 10, defect 3, end to end: a comment holding a line separator (for Python) and a bare
    copy of the key must not let the key in from an address its from= forbids."""
    cases = []
    for separator in SEPARATORS:
        if b"\n" in separator:  # a real line end, for sshd too
            continue
        key = ed25519.Ed25519PrivateKey.generate()
        line = b'from="127.0.0.3" ' + public_line(key) + b" ops" + separator + public_line(key)
        for source in ("127.0.0.2", "127.0.0.3"):
            cases.append(Case(len(cases), f"separator {separator!r}", key, source, lines=[line]))
    for case, by_sshd, by_conch in _run_batch(server_pair, cases):
        expected = case.source == "127.0.0.3"
        assert (by_sshd, by_conch) == (expected, expected), case.describe()


def test_attempt_errors_are_not_refusals(server_pair: Pair) -> None:
    """A server that is not there is an error, never a quiet 'refused'."""
    case = generate(1, 1, server_pair.user)[0]
    with pytest.raises(AttemptError):
        asyncio.run(attempt(Target(1, 1), server_pair.user, case))
