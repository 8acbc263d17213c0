"""tests/bench/compare.py compares servers doing the same work: its AsyncSSH anchor and conchcmd,
started the way compare.py starts them, answer the real OpenSSH client with the same bytes and
exit statuses for the commands it times (the ForceCommand anchor: tests/unit/test_bench_scripts.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support.sshbench import asyncssh_anchor, conchcmd_server, hashlib_rate, make_files

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("ssh") is None, reason="the OpenSSH client is not installed"),
]


def test_the_asyncssh_anchor_and_conchcmd_answer_alike(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    files = make_files(tmp_path / "data", 1)
    _, digest = hashlib_rate(files.big, 1)
    log_tail = b"".join(files.log.read_bytes().splitlines(keepends=True)[-10:])
    work = tmp_path / "work"
    work.mkdir()
    answers = {}
    for name, runner in (
        ("asyncssh", lambda: asyncssh_anchor(work, files)),
        ("conchcmd", lambda: conchcmd_server(work / "conchcmd", files)),
    ):
        with runner() as target:
            answers[name] = [
                (r.returncode, r.stdout)
                for r in (target.ssh(cmd, check=False) for cmd in (f"comphash {files.big}", "lastlog", "nosuch"))
            ]
    assert (
        answers["asyncssh"]
        == answers["conchcmd"]
        == [
            (0, f"{digest}  {files.big}\n".encode()),
            (0, log_tail),
            (127, b""),
        ]
    )
