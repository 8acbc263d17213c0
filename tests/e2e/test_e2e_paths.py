"""comphash's path resolution against a real attacker loop, through the real OpenSSH client."""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import threading
from collections import Counter

import pytest
from support.races import swapping

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("ssh") is None, reason="the OpenSSH client is not installed"),
]

ROUNDS = 1000


def test_swapping_a_directory_for_a_symlink_during_hashes_over_ssh_never_hashes_outside(server, data) -> None:
    """One plain-shell session runs ROUNDS hashes of ROOT/race/dir/f while this process keeps
    exchanging `dir` with a symlink to the outside (renameat2 RENAME_EXCHANGE)."""
    race = data.root / "race"
    (race / "dir").mkdir(parents=True)
    (race / "dir" / "f").write_bytes(b"inside\n")
    outside = data.outside.parent / "race-outside"
    outside.mkdir()
    (outside / "f").write_bytes(b"SECRET\n")
    (race / "spare").symlink_to(outside)
    stop = threading.Event()
    thread = swapping(race / "dir", race / "spare", stop)
    line = f"comphash --json {shlex.quote(str(race / 'dir' / 'f'))}\n".encode()
    try:
        r = server.ssh(input=line * ROUNDS, options=["-T"], timeout=120)
    finally:
        stop.set()
        thread.join(10)
        shutil.rmtree(race)
        shutil.rmtree(outside)
    records = [json.loads(x) for x in r.stdout.decode().splitlines()]
    assert len(records) == ROUNDS
    seen = Counter(rec.get("digest") or rec["error"] for rec in records)
    assert hashlib.sha256(b"SECRET\n").hexdigest() not in seen
    assert set(seen) <= {hashlib.sha256(b"inside\n").hexdigest(), "outside the allowed roots"}, seen
    assert len(seen) == 2, seen  # the race really ran: both states were seen
    assert {rec["opened"] for rec in records if "opened" in rec} == {str(race / "dir" / "f")}
