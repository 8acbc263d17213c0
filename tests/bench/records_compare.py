#!/usr/bin/env python3
"""Are the audit records and log lines of two source trees the same, byte for byte (timestamps,
connection ids, client ports and durations aside)? For changes that must not show in them.

Starts one real `conchcmd serve` per tree (tests/bench/profile_exec.py's Server, same fixture),
runs the same OpenSSH sessions against each (a comphash, refusals, an unknown command, an
argument with quotes, backslashes and non-ASCII, lastlog, help, a failed and a probed login),
then compares the normalised audit log and server log line by line:

    python tests/bench/records_compare.py BEFORE_TREE AFTER_TREE      # exit status 1 if they differ

Not part of the pytest run (it needs two trees).
"""

from __future__ import annotations

import difflib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path[:0] = [str(HERE.parent), str(HERE.parents[1])]  # tests/bench, tests/
import profile_exec as pe  # noqa: E402
from support.serverfiles import wait_for  # noqa: E402
from support.tempdirs import trusted_temp_parent  # noqa: E402

NORMALISE = [
    (re.compile(r'"ts": "[^"]*"'), '"ts": "TS"'),
    (re.compile(r'"connection": "[0-9a-f]{16}"'), '"connection": "ID"'),
    (re.compile(r'"(duration_ms|duration_s|uptime)": [0-9.e-]+'), r'"\1": D'),
    (re.compile(r'"config_digest": "[0-9a-f]*"'), '"config_digest": "C"'),
    (re.compile(r"ssh-ed25519 SHA256:[A-Za-z0-9+/]+"), "ssh-ed25519 HOSTKEY"),  # each server's own
    (re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d{4} ", re.M), "T "),
    (re.compile(r"(127\.0\.0\.1|localhost)([: ]|\\x3a| port )\d+"), r"\1\2PORT"),
    (re.compile(r"\b\d+(\.\d+)? ?ms\b"), "N ms"),
]


def normalised(text: str, server_dir: Path) -> list[str]:
    text = text.replace(str(server_dir), "DIR")
    for pattern, replacement in NORMALISE:
        text = pattern.sub(replacement, text)
    return text.splitlines()


def sessions(server: pe.Server, fx: pe.Fixture, wrong_key: Path) -> None:
    base = ["ssh", "-F", "/dev/null", "-q", "-p", str(server.port), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]  # fmt: skip
    good = [*base, "-i", str(fx.key), "bench@127.0.0.1"]
    odd = fx.root / "odd 'q\" \\ é\u200b.bin"
    odd.write_bytes(b"x")
    for command in (
        ["comphash", str(fx.small)],
        ["comphash", "/etc/hostname"],  # outside the roots: 126
        ["comphash", str(fx.root / "missing")],
        ["nosuch", "arg"],  # 127
        ["comphash", "'" + str(odd).replace("'", "'\\''") + "'"],
        ["lastlog"],
        ["help"],
    ):
        subprocess.run([*good, *command], capture_output=True, timeout=60)
    # a wrong key only, then a wrong key offered before the right one (a refused probe)
    subprocess.run([*base, "-i", str(wrong_key), "bench@127.0.0.1", "help"], capture_output=True, timeout=60)
    subprocess.run([*base, "-i", str(wrong_key), "-i", str(fx.key), "bench@127.0.0.1", "help"],
                   capture_output=True, timeout=60)  # fmt: skip
    subprocess.run([*base, "-i", str(fx.key), "nobody@127.0.0.1", "help"], capture_output=True, timeout=60)


def main() -> int:
    trees = [Path(t).resolve() for t in sys.argv[1:3]]
    with tempfile.TemporaryDirectory(prefix="conchcmd-records-", dir=trusted_temp_parent()) as tmp:
        fx = pe.Fixture(Path(tmp))
        wrong = fx.root / "wrong_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
        outputs = []
        for i, tree in enumerate(trees):
            server = pe.Server(fx, tree, f"tree{i}")
            audit_file = fx.root / f"tree{i}" / "audit.jsonl"
            try:
                sessions(server, fx, wrong)
                # every connection's end recorded before the server stops (else "shutting down")
                wait_for(lambda: audit_file.read_text().count('"disconnect"') == 10, 10, "the disconnects")  # noqa: B023
            finally:
                server.stop()
            d = fx.root / f"tree{i}"
            audit = normalised((d / "audit.jsonl").read_text(), d)
            log = normalised(server.log.read_text(errors="surrogateescape"), d)
            outputs.append((audit, log))
    (audit0, log0), (audit1, log1) = outputs
    diff = [*difflib.unified_diff(audit0, audit1, "audit before", "audit after", lineterm="")]
    diff += difflib.unified_diff(log0, log1, "log before", "log after", lineterm="")
    print(f"{len(audit0)} audit records, {len(log0)} log lines compared")
    if diff:
        print("\n".join(diff))
        return 1
    print("identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
