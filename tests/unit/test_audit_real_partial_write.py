"""The audit file when the kernel itself writes a record part-way: a file size limit
(RLIMIT_FSIZE, in a child process) makes write(2) return a short count and then fail with EFBIG,
as a full disk does with ENOSPC. The partial line is cut off, the records wait in the backlog,
and once there is room again they are written whole, in order: every line of the file is one
JSON record, none lost, none twice."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

CHILD = textwrap.dedent(
    """
    import json, resource, signal, sys
    from twisted.internet.task import Clock
    from conchcmd.core.audit import AppendFile, AuditLog

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of the signal
    path, limit = sys.argv[1], int(sys.argv[2])
    log = AuditLog(AppendFile(path), Clock())
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    n = 0
    while log.failure() is None:
        n += 1
        log.record("command", n=n, padding="x" * 300)
    for _ in range(5):  # more records while it fails: kept
        n += 1
        log.record("command", n=n, padding="x" * 300)
    failure = log.failure()
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # room again
    n += 1
    log.record("command", n=n, padding="x" * 300)
    print(json.dumps([n, failure, log.failure()]))
    log.close()
    """
)


def test_a_record_the_kernel_writes_part_way_is_cut_off_and_written_whole_later(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    limit = 4096 + 100  # not a multiple of the record's length: the write that crosses it is short
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(limit)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    total, failure, after = json.loads(done.stdout)
    assert (failure, after) == ("File too large", None)  # while failing, then no failure
    text = path.read_text()
    assert text.endswith("\n")
    numbers = [json.loads(line)["n"] for line in text.splitlines()]
    assert numbers == list(range(1, total + 1))  # every record once, in order, no torn line
