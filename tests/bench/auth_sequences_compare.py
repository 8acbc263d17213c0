#!/usr/bin/env python3
"""Do two source trees write the same auth-log and conchcmd.log lines and audit records for the
same userauth sequences? Random sequences of requests (none, key probes, logins, passwords,
keyboard-interactive, malformed blobs) under changing user names (with keys, configured, with a
password, unknown, not UTF-8), each ended by the client, the login grace time or a login, over
the in-memory SSH stack (tests/support/world.py) in one process per tree; the outputs are
normalised (temporary paths, key fingerprints) and compared line by line:

    python tests/bench/auth_sequences_compare.py BEFORE_TREE AFTER_TREE [--cases 300] [--seed 7] [--ca]

`--ca`: with `trusted_user_ca_keys` (every well-formed name valid) and certificate logins and
probes (principal `deploy`) among the requests.

Exit status 1 if they differ. Not part of the pytest run (it needs two trees).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
NORMALISE = [
    (re.compile(r"SHA256:[A-Za-z0-9+/]{43}"), "SHA256:FP"),  # keys are generated per process
]


def emit(cases: int, seed: int, ca: bool) -> None:
    """Print each case's lines and records (the tree on PYTHONPATH)."""
    sys.path.insert(0, str(TESTS))
    import base64

    import bcrypt
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from support.certlogin import make_cert
    from support.keys import ed25519_key
    from support.sshclient import password_data
    from support.tempdirs import trusted_temp_parent
    from support.world import make_world
    from twisted.conch.ssh.common import NS
    from twisted.conch.ssh.keys import Key
    from twisted.logger import capturedLogs, formatEvent

    from conchcmd.core.config import UserPolicy
    from conchcmd.core.logtargets import AUTH_LOG_NAMESPACE, LOG_NAMESPACE

    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=4))
    names = [b"admin", b"bob", b"nobody", b"carol", b"no\xffutf8", b"root", b"deploy", b"../admin"]
    authority = ed25519.Ed25519PrivateKey.generate()
    cert = base64.b64decode(make_cert(authority, ed25519_key(3), principals=[b"deploy"]))
    cert_algorithm = b"ssh-ed25519-cert-v01@openssh.com"
    stranger = ed25519_key(9)
    requests = {
        "none": lambda auth: (b"none", b""),
        "probe-stranger": lambda auth: (b"publickey", b"\0" + NS(b"ssh-ed25519") + NS(stranger.public().blob())),
        "probe-admin": lambda auth: (b"publickey", b"\0" + NS(b"ssh-ed25519") + NS(ed25519_key().public().blob())),
        "login-admin": lambda auth: (b"publickey", auth.signed(ed25519_key())),
        "pw-wrong": lambda auth: (b"password", password_data(b"wrong")),
        "pw-right": lambda auth: (b"password", password_data(b"right")),
        "kbd": lambda auth: (b"keyboard-interactive", NS(b"") + NS(b"")),
        "bad-blob": lambda auth: (b"publickey", b"\0" + NS(b"ssh-ed25519") + NS(b"garbage")),
    }
    if ca:
        requests["cert-probe"] = lambda auth: (b"publickey", b"\0" + NS(cert_algorithm) + NS(cert))
        requests["cert-login"] = lambda auth: (
            b"publickey",
            auth.signed(ed25519_key(3), cert_algorithm, cert, signature_type=b"ssh-ed25519"),
        )
    rng = random.Random(seed)
    for case in range(cases):
        steps = [(rng.choice(names), rng.choice(sorted(requests))) for _ in range(rng.randint(1, 9))]
        end = rng.choice(["leave", "grace", "wait-then-leave"])
        with tempfile.TemporaryDirectory(dir=trusted_temp_parent()) as tmp:
            users = {"bob": UserPolicy(commands=frozenset({"help"})), "carol": UserPolicy(password_bcrypt=hashed)}
            changes = {}
            if ca:
                ca_file = Path(tmp) / "ca.pub"
                ca_file.write_text(Key(authority).public().toString("openssh").decode() + "\n")
                ca_file.chmod(0o600)
                changes["trusted_user_ca_keys"] = str(ca_file)
            world = make_world(Path(tmp), users=users, **changes)
            with capturedLogs() as events:
                conn = world.connect()
                auth = None
                for user, request in steps:
                    if conn.disconnected:
                        break
                    auth = auth or conn.start_auth(user)
                    auth.user = user
                    auth.send_request(*requests[request](auth))
                    conn.flush()
                    world.clock.advance(1.0)
                    conn.flush()
                world.clock.advance({"grace": 200, "wait-then-leave": 5}.get(end, 0))
                conn.flush()
                conn.client.transport.loseConnection()
                conn.flush()
                world.clock.advance(60)
                conn.flush()
            print(f"=== case {case}: {[(u.decode('latin-1'), r) for u, r in steps]} end={end}")
            for e in events:
                if e.get("log_namespace") in (AUTH_LOG_NAMESPACE, LOG_NAMESPACE):
                    failure = " [traceback]" if e.get("log_failure") is not None else ""
                    print("  L", formatEvent(e).replace(tmp, "TMP") + failure)
            for record in world.audit.events:
                fields = {k: v for k, v in record.items() if k not in ("ts", "connection", "duration_s")}
                print("  A", json.dumps(fields, sort_keys=True).replace(tmp, "TMP"))


def run(tree: Path, cases: int, seed: int, ca: bool) -> list[str]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, __file__, "--emit", "--cases", str(cases), "--seed", str(seed), *(["--ca"] if ca else [])]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    for pattern, replacement in NORMALISE:
        out = pattern.sub(replacement, out)
    return out.splitlines()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", nargs="*", type=Path)
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--ca", action="store_true", help="trust a user CA; certificate requests")
    parser.add_argument("--emit", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.emit:
        emit(args.cases, args.seed, args.ca)
        return 0
    if len(args.trees) != 2:
        parser.error("give two source trees")
    before, after = (run(tree, args.cases, args.seed, args.ca) for tree in args.trees)
    diff = list(difflib.unified_diff(before, after, str(args.trees[0]), str(args.trees[1]), lineterm=""))
    print("\n".join(diff[:200]))
    print(f"{args.cases} sequences, {len(after)} lines: {sum(d[:1] in '+-' for d in diff[2:])} differ")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
