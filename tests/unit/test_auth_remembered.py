"""Attacks on the plain-key decisions a KeyAuthorizer remembers per parse of authorized_keys: every
change an attacker or an operator makes between the key probe and the signature, or between two
logins, must give the answer a fresh KeyAuthorizer (no remembered decision) gives, and the
warnings it logs. Each scenario runs the same calls on a long-lived authorizer and on a new one
per call (the differential), with real files on disk."""

from __future__ import annotations

import base64
import gc
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from twisted.conch.ssh.common import NS, getNS
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

from conchcmd.core.config import parse_config
from conchcmd.policy.auth import KeyAuthorizer, KeyRefused
from conchcmd.policy.authorized_keys import fingerprint

ED = b"ssh-ed25519"


def blob_of(pair) -> bytes:
    return base64.b64decode(pair.public_line.split()[1])


class World:
    """A key directory, a config and two authorizers: `kept` (lives across calls, remembers) and
    a fresh one built for each call (the oracle)."""

    def __init__(self, tmp_path: Path, extra: str = "", pattern: str = "keys/%u"):
        self.root = tmp_path
        (tmp_path / "keys").mkdir(mode=0o755)
        tmp_path.chmod(0o755)
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.pattern = pattern
        self.extra = extra
        self.kept = KeyAuthorizer.from_config(self.config(), self.clock)

    def config(self):
        text = f'authorized_keys = "{self.pattern}"\n{self.extra}'
        return parse_config(text, base_dir=self.root)

    def reload(self, extra: str) -> None:
        self.extra = extra
        self.kept.reload(self.config())

    def write(self, user: str, *lines: str, mode: int = 0o600) -> Path:
        path = self.root / "keys" / user
        path.write_text("".join(line + "\n" for line in lines))
        path.chmod(mode)
        return path

    def decide(self, user: str, pair, peer: str | None = "10.0.0.1") -> tuple[object, list[str]]:
        """kept's answer and warnings, which must be fresh's."""
        answers = []
        for authorizer in (self.kept, KeyAuthorizer.from_config(self.config(), self.clock)):
            lines: list[str] = []

            def seen(event: LogEvent, lines: list[str] = lines) -> None:
                if event.get("log_level") is not None and event["log_level"].name in ("warn", "error"):
                    lines.append(formatEvent(event))

            globalLogPublisher.addObserver(seen)
            try:
                got = authorizer.authorize(user, ED, blob_of(pair), peer)
                grant = got.identity.grant
                terms = (grant.forced_command, grant.pty, grant.source, got.requirements)
                answer: object = ("ok", got.identity.user, *terms)
            except KeyRefused as e:
                answer = ("refused", str(e))
            finally:
                globalLogPublisher.removeObserver(seen)
            answers.append((answer, lines))
        (kept, kept_lines), (fresh, fresh_lines) = answers
        assert kept == fresh
        # A file's parse problems ("PATH:N: ...") are logged once per parse: the fresh authorizer
        # parses again. Every other line is logged at every call, remembered decision or not.
        assert [w for w in kept_lines if not w.startswith(str(self.root))] == [
            w for w in fresh_lines if not w.startswith(str(self.root))
        ]
        return kept, kept_lines


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def _same_stat_rewrite(path: Path, text: str) -> None:
    """Rewrite in place keeping size, mtime and atime (`touch -d` to the old time)."""
    before = path.stat()
    assert len(text.encode()) == before.st_size
    with open(path, "r+") as f:
        f.write(text)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_rewrite_in_place_with_same_size_and_mtime(world: World, ssh_key) -> None:
    pair = ssh_key("ed25519")
    path = world.write("alice", f'command="abcdef" {pair.public_line}')
    assert world.decide("alice", pair)[0][2] == "abcdef"
    _same_stat_rewrite(path, f'command="uvwxyz" {pair.public_line}\n')
    assert world.decide("alice", pair)[0][2] == "uvwxyz"
    # the key's own bytes broken: same size, the key gone
    line = path.read_text()
    _same_stat_rewrite(path, line.replace("AAAA", "BBBB", 1))
    assert world.decide("alice", pair)[0][0] == "refused"


def test_rename_over_and_hard_link_and_truncate(world: World, ssh_key) -> None:
    pair = ssh_key("ed25519")
    path = world.write("alice", pair.public_line)
    assert world.decide("alice", pair)[0][2] is None
    other = world.root / "keys" / ".new"
    other.write_text(f'no-pty,command="x" {pair.public_line}\n')
    other.chmod(0o600)
    st = path.stat()
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, path)
    assert world.decide("alice", pair)[0][2:4] == ("x", False)
    # a hard link edited through its other name
    link = world.root / "keys" / "link"
    os.link(path, link)
    link.write_text(f'from="10.9.9.9" {pair.public_line}\n')
    assert world.decide("alice", pair)[0][0] == "refused"
    # truncated then rewritten
    with open(path, "w") as f:
        f.flush()
        assert world.decide("alice", pair)[0][0] == "refused"
        f.write(pair.public_line + "\n")
    assert world.decide("alice", pair)[0][0] == "ok"


def test_chmod_chown_and_parent_directory(world: World, ssh_key) -> None:
    pair = ssh_key("ed25519")
    path = world.write("alice", pair.public_line)
    assert world.decide("alice", pair)[0][0] == "ok"
    path.chmod(0o620)
    answer, warnings = world.decide("alice", pair)
    assert answer[0] == "refused" and any("Ignoring" in w for w in warnings)
    path.chmod(0o600)
    assert world.decide("alice", pair)[0][0] == "ok"
    os.chown(path, 12345, -1)
    assert world.decide("alice", pair)[0][0] == "refused"
    os.chown(path, 0, -1)
    assert world.decide("alice", pair)[0][0] == "ok"
    (world.root / "keys").chmod(0o777)
    answer, warnings = world.decide("alice", pair)
    assert answer[0] == "refused" and warnings
    (world.root / "keys").chmod(0o755)
    assert world.decide("alice", pair)[0][0] == "ok"
    os.chown(world.root / "keys", 12345, -1)
    assert world.decide("alice", pair)[0][0] == "refused"
    os.chown(world.root / "keys", 0, -1)
    assert world.decide("alice", pair)[0][0] == "ok"


@pytest.mark.parametrize(
    "options",
    [
        "restrict",
        "no-pty",
        'command="lastlog"',
        'from="10.0.0.2"',
        'from="!10.0.0.1,*"',
        'expiry-time="19700101"',
        'environment="A=b"',
        'permitopen="a:1"',
        "cert-authority",
        'principals="alice"',
        "no-touch-required",
        "verify-required",
        "bogus-option",
    ],
)
def test_each_option_added_between_two_calls(world: World, ssh_key, options: str) -> None:
    pair = ssh_key("ed25519")
    path = world.write("alice", pair.public_line)
    first = world.decide("alice", pair)[0]
    assert first[0] == "ok"
    path.write_text(f"{options} {pair.public_line}\n")
    world.decide("alice", pair)  # kept agrees with fresh
    world.decide("alice", pair)  # and again, from what it may have remembered
    path.write_text(pair.public_line + "\n")
    assert world.decide("alice", pair)[0] == first


def test_refused_first_line_warns_at_every_call(world: World, ssh_key) -> None:
    pair = ssh_key("ed25519")
    world.write("alice", f'environment="A=b" {pair.public_line}', f'command="lastlog" {pair.public_line}')
    for _ in range(3):
        answer, warnings = world.decide("alice", pair)
        assert answer[2] == "lastlog"
        assert any("Refusing key" in w for w in warnings)


def test_two_users_sharing_a_file_and_one_key_for_two_users(tmp_path: Path, ssh_key) -> None:
    pair = ssh_key("ed25519")
    shared = World(tmp_path, pattern="keys/shared")
    path = shared.root / "keys" / "shared"
    path.write_text(pair.public_line + "\n")
    path.chmod(0o600)
    assert shared.decide("alice", pair)[0][1] == "alice"
    assert shared.decide("bob", pair)[0][1] == "bob"
    assert shared.decide("alice", pair)[0][1] == "alice"


def test_one_key_for_two_users_by_percent_u(world: World, ssh_key) -> None:
    pair, other = ssh_key("ed25519"), ssh_key("ecdsa256")
    world.write("alice", pair.public_line)
    world.write("bob", other.public_line)
    assert world.decide("alice", pair)[0][0] == "ok"
    assert world.decide("bob", pair)[0][0] == "refused"
    world.write("bob", f'command="lastlog" {pair.public_line}')
    assert world.decide("bob", pair)[0][2] == "lastlog"
    assert world.decide("alice", pair)[0][2] is None


def test_peer_addresses(world: World, ssh_key) -> None:
    pair = ssh_key("ed25519")
    world.write("alice", f'from="10.0.0.0/24,!10.0.0.7" {pair.public_line}')
    assert world.decide("alice", pair, "10.0.0.1")[0][0] == "ok"
    assert world.decide("alice", pair, "10.0.0.7")[0][0] == "refused"
    assert world.decide("alice", pair, None)[0][0] == "refused"
    assert world.decide("alice", pair, "10.0.0.1")[0][0] == "ok"


def test_reload_with_changed_paths_and_strict_modes(tmp_path: Path, ssh_key) -> None:
    pair = ssh_key("ed25519")
    world = World(tmp_path, extra="strict_modes = false\n")
    world.write("alice", pair.public_line, mode=0o666)
    assert world.decide("alice", pair)[0][0] == "ok"
    world.reload("strict_modes = true\n")
    assert world.decide("alice", pair)[0][0] == "refused"
    world.write("alice", pair.public_line)
    assert world.decide("alice", pair)[0][0] == "ok"
    revoked = tmp_path / "revoked"
    revoked.write_text(pair.public_line + "\n")
    revoked.chmod(0o600)
    world.reload(f'revoked_keys = "{revoked}"\n')
    assert world.decide("alice", pair)[0][0] == "refused"
    world.reload("")
    assert world.decide("alice", pair)[0][0] == "ok"
    (tmp_path / "other").mkdir(mode=0o755)
    world.pattern = "other/%u"
    world.reload("")
    assert world.decide("alice", pair)[0][0] == "refused"


def _padded_rsa_blobs(pair, count: int):
    """`count` distinct blobs, each as long as sshd takes (numbers of at most 16384 bits plus a
    zero byte), for the same RSA key: its numbers padded with leading zero bytes, which sshd (and
    so conchcmd) reads as the same key. Anyone who knows an authorized public key can offer them,
    unsigned (the probe)."""
    key_type, rest = getNS(blob_of(pair))
    e, n, _ = getNS(rest, 2)
    n = b"\0" * (2049 - len(n)) + n
    for i in range(count):
        yield NS(key_type) + NS(b"\0" * (2049 - len(e) - i) + e) + NS(n)


def _retained(action: Callable[[], None]) -> int:
    """Bytes allocated by `action` and still held after it."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        action()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_padded_blobs_offered_unsigned_hold_bounded_memory(world: World, ssh_key) -> None:
    """The remembered decisions are keyed by the blob as sent, so a client that pads a known
    authorized key's blob can fill them: bounded by sshd's own limit on a number (a blob of at
    most ~4.1 kB; a packet would take 257 kB), 256 x 4.1 kB."""
    pair = ssh_key("rsa")
    world.write("alice", pair.public_line)

    def offer() -> None:
        for blob in _padded_rsa_blobs(pair, 300):
            assert len(blob) > 3800
            assert world.kept.authorize("alice", b"rsa-sha2-256", blob, "10.0.0.1").identity.user == "alice"

    assert _retained(offer) < 4_000_000  # measured: 1.5 MB


def test_revoked_keys_loosened_removed_or_rewritten_between_calls(tmp_path: Path, ssh_key) -> None:
    pair, other = ssh_key("ed25519"), ssh_key("ecdsa256")
    revoked = tmp_path / "revoked"
    revoked.write_text(other.public_line + "\n")
    revoked.chmod(0o600)
    world = World(tmp_path, extra=f'revoked_keys = "{revoked}"\n')
    world.write("alice", pair.public_line)
    assert world.decide("alice", pair)[0][0] == "ok"
    revoked.chmod(0o666)  # untrusted: it could have lost lines, every key refused, with a warning
    answer, warnings = world.decide("alice", pair)
    assert answer[0] == "refused" and warnings
    revoked.chmod(0o600)
    assert world.decide("alice", pair)[0][0] == "ok"
    _same_stat_rewrite(revoked, pair.public_line[: len(other.public_line)].ljust(len(other.public_line)) + "\n")
    # now it names alice's key (padded with blanks to the same size), mtime put back
    assert world.decide("alice", pair)[0] == ("refused", f"key {fingerprint(blob_of(pair))} is revoked")
    revoked.unlink()
    world.decide("alice", pair)
    revoked.write_text(pair.public_line + "\n")
    revoked.chmod(0o600)
    assert world.decide("alice", pair)[0][0] == "refused"


def test_percent_u_in_a_directory_loosened_or_swapped_between_calls(tmp_path: Path, ssh_key) -> None:
    """home/%u/ak: the user's own directory made writable by others, or replaced by another
    directory (rename over) holding a file with other options, between two calls."""
    pair = ssh_key("ed25519")
    world = World(tmp_path, pattern="home/%u/ak")
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    (home / "alice").mkdir(mode=0o755)
    path = home / "alice" / "ak"
    path.write_text(pair.public_line + "\n")
    path.chmod(0o600)
    assert world.decide("alice", pair)[0][2] is None
    (home / "alice").chmod(0o775)
    assert world.decide("alice", pair)[0][0] == "refused"
    (home / "alice").chmod(0o755)
    assert world.decide("alice", pair)[0][0] == "ok"
    (home / "new").mkdir(mode=0o755)
    (home / "new" / "ak").write_text(f'command="lastlog" {pair.public_line}\n')
    (home / "new" / "ak").chmod(0o600)
    os.utime(home / "new" / "ak", ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns))
    os.rename(home / "alice", home / "old")
    os.rename(home / "new", home / "alice")
    assert world.decide("alice", pair)[0][2] == "lastlog"
    assert world.decide("bob", pair)[0][0] == "refused"  # no home/bob at all
