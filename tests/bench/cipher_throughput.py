#!/usr/bin/env python3
"""Bulk output MB/s through conchcmd per cipher and MAC, with the real OpenSSH client.

Starts `python -m conchcmd serve` on 127.0.0.1 (port 0) with a large log, then times
`ssh -c CIPHER [-m MAC] lastlog -n N > /dev/null` several times per algorithm. Not part of the
pytest run: `python tests/bench/cipher_throughput.py [--mib 100] [--runs 3]`.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for support
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for conchcmd
from support.reliability import cpu_seconds
from support.serverfiles import toml_text
from support.tempdirs import trusted_temp_parent

CASES = [
    ("chacha20-poly1305@openssh.com", None),
    ("aes256-gcm@openssh.com", None),
    ("aes128-gcm@openssh.com", None),
    ("aes256-ctr", "hmac-sha2-256-etm@openssh.com"),
    ("aes128-ctr", "hmac-sha2-256-etm@openssh.com"),
    ("aes128-ctr", "hmac-sha2-512-etm@openssh.com"),
]
LINE = b"Nov 26 15:02:03 lab app[42]: " + b"x" * 4066 + b"\n"  # 4 KiB lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=100, help="output size per run")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    lines = args.mib * 1024 * 1024 // len(LINE)
    with tempfile.TemporaryDirectory(prefix="conchcmd-bench-", dir=trusted_temp_parent()) as tmp:
        base = Path(tmp)
        key = base / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        (base / "keys" / "authorized_keys").mkdir(parents=True)
        auth = base / "keys" / "authorized_keys" / "bench"
        auth.write_text(key.with_suffix(".pub").read_text())
        auth.chmod(0o600)
        log = base / "syslog"
        with log.open("wb") as f:
            for _ in range(lines // 1000 + 1):
                f.write(LINE * 1000)
        config = base / "conchcmd.toml"
        config.write_text(
            toml_text(
                {
                    "listen": ["tcp:0:interface=127.0.0.1"],
                    "audit_log": "audit.jsonl",
                    "lastlog": {"path": str(log), "max_lines": lines + 10},
                }
            )
        )
        out = (base / "server.log").open("wb")
        server = subprocess.Popen(
            [sys.executable, "-m", "conchcmd", "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=base,
        )
        try:
            port = None
            for _ in range(200):
                m = re.search(rb"\(127\.0\.0\.1:(\d+)\)", (base / "server.log").read_bytes())
                if m:
                    port = int(m.group(1))
                    break
                time.sleep(0.05)
            assert port, (base / "server.log").read_text()
            print(f"{args.mib} MiB of `lastlog -n {lines}` per run, best of {args.runs}; server CPU per MiB")
            print(f"{'cipher':32} {'MAC':32} {'MB/s':>8} {'CPU ms/MiB':>11}")
            for cipher, mac in CASES:
                argv = [
                    "ssh",
                    "-F",
                    "/dev/null",
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                    "-o",
                    "IdentitiesOnly=yes",
                    "-o",
                    "LogLevel=ERROR",
                    "-i",
                    str(key),
                    "-p",
                    str(port),
                    "-c",
                    cipher,
                    *(["-m", mac] if mac else []),
                    "bench@127.0.0.1",
                    f"lastlog -n {lines}",
                ]
                times, cpu = [], []
                for _ in range(args.runs):
                    before = cpu_seconds(server.pid)
                    started = time.perf_counter()
                    subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
                    times.append(time.perf_counter() - started)
                    cpu.append(cpu_seconds(server.pid) - before)
                size = lines * len(LINE) / 1e6
                print(
                    f"{cipher:32} {mac or '(implicit)':32} {size / min(times):8.0f} "
                    f"{statistics.median(cpu) * 1000 / (size / 1.048576):11.2f}"
                )
        finally:
            server.terminate()
            server.wait(10)
            out.close()


if __name__ == "__main__":
    main()
