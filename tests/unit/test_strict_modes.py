"""`strict_modes` (sshd's StrictModes): a key file is trusted only if it and every directory above it
are owned by root or the server's user and are not writable by group or others — for authorized_keys,
the trusted CA file, the revoked keys file and the host keys; `doctor` reports the same. Run as root
(as CI is), so files can be given to another uid (65534, nobody)."""

from __future__ import annotations

import errno
import io
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.keys import authorized_line, ed25519_key
from support.races import exchange, swap_at_readlink
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from conchcmd.core.config import parse_config
from conchcmd.core.filetrust import CheckedFile, FileTrust, directory_problem, file_problem, opened_path, path_problem
from conchcmd.core.realpaths import ROOT_RETRIES
from conchcmd.edge import cli
from conchcmd.policy.auth import KeyAuthorizer, KeyRefused
from conchcmd.policy.authorized_keys import AuthorizedKeysFiles
from conchcmd.policy.certs import CertificateRefused, RevokedKeys, TrustedCAs
from conchcmd.wire.hostkeys import HostKeyError, ensure_host_keys, load_host_keys

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another uid needs root (CI runs as root)")

NOBODY = 65534
STRICT = FileTrust(strict=True, uid=0)
LOOSE = FileTrust(strict=False, uid=0)


# -- the layouts an attacker would use -------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """A user's authorized_keys file for `alice` under `users/`, made untrustworthy one way."""

    pattern: str
    path: Path  # the file as the pattern names it
    culprit: str  # what sshd's message names: "file X" or "directory X"


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def layout(tmp_path: Path, kind: str, text: str) -> Layout:
    users = tmp_path / "users"
    users.mkdir(mode=0o755)
    path = users / "alice"
    if kind == "other-owner":
        os.chown(_write(path, text), NOBODY, NOBODY)
        culprit = f"file {path}"
    elif kind == "group-writable":
        _write(path, text, 0o620)  # group root, which has no other member: still refused
        culprit = f"file {path}"
    elif kind == "world-writable-parent":
        _write(path, text)
        users.chmod(0o777)
        culprit = f"directory {users}"
    elif kind == "parent-owned-by-another":
        _write(path, text)
        os.chown(users, NOBODY, NOBODY)
        culprit = f"directory {users}"
    elif kind == "group-writable-grandparent":
        _write(path, text)
        tmp_path.chmod(0o770)
        culprit = f"directory {tmp_path}"
    elif kind == "symlink-into-sticky-dir":
        shared = tmp_path / "shared"
        shared.mkdir()
        shared.chmod(0o1777)  # like /tmp
        real = _write(shared / "alice-keys", text)  # root-owned, 0600: only its directory is wrong
        path.symlink_to(real)
        culprit = f"directory {shared}"
    elif kind == "directory-symlink-into-sticky-dir":
        shared = tmp_path / "shared"
        shared.mkdir()
        shared.chmod(0o1777)
        _write(shared / "users" / "alice", text)  # the users directory itself is root's, 0755
        users.rmdir()
        users.symlink_to(shared / "users")
        culprit = f"directory {shared}"
    else:
        raise AssertionError(kind)
    return Layout(f"{users}/%u", path, culprit)


KINDS = [
    "other-owner",
    "group-writable",
    "world-writable-parent",
    "parent-owned-by-another",
    "group-writable-grandparent",
    "symlink-into-sticky-dir",
    "directory-symlink-into-sticky-dir",
]


@pytest.fixture
def key_text() -> str:
    return authorized_line(ed25519_key())


# -- authorized_keys --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_untrusted_authorized_keys_is_ignored_with_a_log_line(tmp_path: Path, key_text: str, kind: str) -> None:
    site = layout(tmp_path, kind, key_text)
    files = AuthorizedKeysFiles(site.pattern, trust=STRICT)
    with capturedLogs() as events:
        assert files.entries_for("alice") == ()
    lines = [formatEvent(e) for e in events]
    assert lines == [f"Ignoring {site.path}: bad ownership or modes for {site.culprit}"]


@pytest.mark.parametrize("kind", KINDS)
def test_strict_modes_false_trusts_the_same_layout(tmp_path: Path, key_text: str, kind: str) -> None:
    site = layout(tmp_path, kind, key_text)
    [entry] = AuthorizedKeysFiles(site.pattern, trust=LOOSE).entries_for("alice")
    assert entry.blob == ed25519_key().public().blob()


def test_a_trusted_layout_is_read(tmp_path: Path, key_text: str) -> None:
    _write(tmp_path / "users" / "alice", key_text, 0o644)  # readable by others is fine, as in sshd
    with capturedLogs() as events:
        assert len(AuthorizedKeysFiles(f"{tmp_path}/users/%u", trust=STRICT).entries_for("alice")) == 1
    assert events == []


def test_a_loosened_directory_is_noticed_at_the_next_login(tmp_path: Path, key_text: str) -> None:
    """Owner and mode changes leave the file's mtime alone: the parse cache must not hide them."""
    path = _write(tmp_path / "users" / "alice", key_text)
    files = AuthorizedKeysFiles(f"{tmp_path}/users/%u", trust=STRICT)
    assert len(files.entries_for("alice")) == 1
    path.parent.chmod(0o777)
    assert files.entries_for("alice") == ()
    path.parent.chmod(0o755)
    assert len(files.entries_for("alice")) == 1
    os.chown(path, NOBODY, NOBODY)
    assert files.entries_for("alice") == ()


def test_the_servers_own_user_may_own_the_files(tmp_path: Path, key_text: str) -> None:
    """A server running as uid 1000 trusts files owned by 1000 or root, not by anyone else."""
    path = _write(tmp_path / "users" / "alice", key_text)
    os.chown(path, 1000, 1000)
    assert len(AuthorizedKeysFiles(f"{tmp_path}/users/%u", trust=FileTrust(uid=1000)).entries_for("alice")) == 1
    os.chown(path.parent, 1000, 1000)
    assert len(AuthorizedKeysFiles(f"{tmp_path}/users/%u", trust=FileTrust(uid=1000)).entries_for("alice")) == 1
    os.chown(path, 1001, 1001)
    assert AuthorizedKeysFiles(f"{tmp_path}/users/%u", trust=FileTrust(uid=1000)).entries_for("alice") == ()


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_non_regular_file_is_refused_without_blocking_even_when_loose(tmp_path: Path, kind: str) -> None:
    (tmp_path / "users").mkdir()
    path = tmp_path / "users" / "alice"
    if kind == "fifo":
        os.mkfifo(path, 0o600)  # opening it for reading must not wait for a writer
    else:
        path.mkdir(mode=0o700)
    for trust in (STRICT, LOOSE):
        with capturedLogs() as events:
            assert AuthorizedKeysFiles(f"{tmp_path}/users/%u", trust=trust).entries_for("alice") == ()
        assert [formatEvent(e) for e in events] == [f"Ignoring {path}: {path} is not a regular file"]


@pytest.mark.parametrize("kind", [*KINDS, "trusted"])
def test_the_kernel_s_name_for_the_opened_file_gives_realpath_s_verdict(
    tmp_path: Path, key_text: str, kind: str
) -> None:
    """CheckedFile resolves the opened file by /proc/self/fd (one readlink) rather than realpath:
    the same file, the same directories checked, the same reason and fix, in every layout."""
    if kind == "trusted":
        (tmp_path / "users").mkdir(mode=0o755)
        path = _write(tmp_path / "users" / "alice", key_text)
    else:
        path = layout(tmp_path, kind, key_text).path
    fd = os.open(path, os.O_RDONLY)
    try:
        assert opened_path(fd) == os.path.realpath(path)
        by_proc = file_problem(str(path), os.fstat(fd), STRICT, resolved=opened_path(fd))
        by_realpath = file_problem(str(path), os.fstat(fd), STRICT)
    finally:
        os.close(fd)
    assert by_proc == by_realpath
    assert (by_proc is None) == (kind == "trusted")
    if by_proc is None:
        with CheckedFile(str(path), STRICT) as f:
            assert f.read() == key_text.encode()


def test_a_file_unlinked_after_it_was_opened_has_no_kernel_name_and_is_not_trusted(tmp_path: Path) -> None:
    path = _write(tmp_path / "alice", "x")
    fd = os.open(path, os.O_RDONLY)
    try:
        path.unlink()
        assert opened_path(fd) is None  # "... (deleted)": realpath's answer is used, and fails
        problem = file_problem(str(path), os.fstat(fd), STRICT, resolved=opened_path(fd))
    finally:
        os.close(fd)
    assert problem is not None and problem.reason.startswith(f"realpath {path} failed")


def test_a_file_replaced_between_open_and_check_is_not_trusted(tmp_path: Path) -> None:
    first = _write(tmp_path / "a", "x")
    second = _write(tmp_path / "b", "y")
    problem = file_problem(str(second), first.stat(), STRICT)
    assert problem is not None and problem.reason == f"{second} changed while it was checked"


def test_the_test_suites_own_files_are_trusted(tmp_path: Path) -> None:
    """tests/conftest.py keeps pytest's files out of /tmp, or every key-file test would be refused."""
    assert directory_problem(str(tmp_path), FileTrust()) is None
    assert not str(tmp_path).startswith("/tmp/")


def test_adduser_warns_when_the_file_it_wrote_is_ignored(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.mkdir()
    users.chmod(0o777)
    config = tmp_path / "conchcmd.toml"
    config.write_text('authorized_keys = "users/%u"\n')
    pub = _write(tmp_path / "id.pub", authorized_line(ed25519_key()), 0o644)
    out = io.StringIO()
    assert cli.main(["adduser", "--config", str(config), "alice", str(pub)], out=out) == 0
    assert out.getvalue().splitlines()[-1] == (
        f"warning: {users}/alice is ignored until this is fixed: bad ownership or modes for directory {users}; "
        f"fix: chmod go-w {users}, or move {users}/alice elsewhere"
    )


def test_check_says_why_the_users_file_is_ignored(tmp_path: Path, key_text: str) -> None:
    site = layout(tmp_path, "symlink-into-sticky-dir", key_text)
    config = tmp_path / "conchcmd.toml"
    config.write_text(f'authorized_keys = "{site.pattern}"\n')
    pub = _write(tmp_path / "id.pub", key_text, 0o644)
    out = io.StringIO()
    assert cli.main(["check", "--config", str(config), "--user", "alice", "--key", str(pub)], out=out) == 1
    assert out.getvalue().splitlines() == [
        "login: REFUSED: key not in authorized_keys",
        f"note: {site.path} is ignored: bad ownership or modes for {site.culprit}; "
        f"fix: move {site.path} to a directory only root can write",
    ]


# -- fixes that doctor offers ----------------------------------------------------------------------


def test_fixes_name_the_culprit_and_never_suggest_tightening_a_shared_dir(tmp_path: Path, key_text: str) -> None:
    site = layout(tmp_path, "symlink-into-sticky-dir", key_text)
    problem = path_problem(str(site.path), STRICT)
    assert problem is not None
    assert problem.fix == f"move {site.path} to a directory only root can write"
    loose_dir = tmp_path / "loose"
    loose_dir.mkdir()
    loose_dir.chmod(0o775)
    assert directory_problem(str(loose_dir), STRICT).fix == (  # type: ignore[union-attr]
        f"chmod go-w {loose_dir}, or move the files in {loose_dir} elsewhere"
    )
    owned = _write(tmp_path / "owned", "x", 0o666)
    os.chown(owned, NOBODY, NOBODY)
    assert path_problem(str(owned), STRICT).fix == f"chown root {owned} && chmod 600 {owned}"  # type: ignore[union-attr]


# -- revoked_keys and trusted_user_ca_keys --------------------------------------------------------


def _authorizer(tmp_path: Path, *, strict: bool) -> KeyAuthorizer:
    trust = FileTrust(strict=strict, uid=0)
    _write(tmp_path / "ak" / "alice", authorized_line(ed25519_key()))
    return KeyAuthorizer(
        AuthorizedKeysFiles(f"{tmp_path}/ak/%u", trust=trust),
        TrustedCAs(str(tmp_path / "lists" / "cas"), trust=trust),
        RevokedKeys(str(tmp_path / "lists" / "revoked"), trust=trust),
        Clock(),
    )


@pytest.mark.parametrize("loosen", ["file", "directory", "owner"])
def test_untrusted_revoked_keys_refuses_every_key(tmp_path: Path, loosen: str) -> None:
    """An untrusted revocation list could have had lines removed: it is not read as 'nothing
    revoked' but refuses every key, as sshd does when RevokedKeys cannot be loaded."""
    revoked = _write(tmp_path / "lists" / "revoked", "# nothing revoked\n")
    authorizer = _authorizer(tmp_path, strict=True)
    blob = ed25519_key().public().blob()
    assert authorizer.authorize("alice", b"ssh-ed25519", blob, "10.0.0.1").identity.user == "alice"
    if loosen == "file":
        revoked.chmod(0o666)
        culprit = f"file {revoked}"
    elif loosen == "directory":
        revoked.parent.chmod(0o777)
        culprit = f"directory {revoked.parent}"
    else:
        os.chown(revoked, NOBODY, NOBODY)
        culprit = f"file {revoked}"
    reason = f"bad ownership or modes for {culprit}"
    with capturedLogs() as events, pytest.raises(KeyRefused, match=f"revocation list not trusted: {reason}"):
        authorizer.authorize("alice", b"ssh-ed25519", blob, "10.0.0.1")
    assert [formatEvent(e) for e in events] == [
        f"revoked_keys {revoked} is not trusted ({reason}): refusing every key until it is fixed"
    ]
    assert _authorizer(tmp_path, strict=False).authorize("alice", b"ssh-ed25519", blob, "10.0.0.1")


def test_revoked_keys_is_re_read_once_fixed(tmp_path: Path) -> None:
    """While the list was untrusted it may have been edited in ways its size and mtime do not show:
    once fixed it is read afresh, never served from what was cached before."""
    line = authorized_line(ed25519_key())
    revoked = _write(tmp_path / "revoked", "#" * (len(line) - 1) + "\n")
    rk = RevokedKeys(str(revoked), trust=STRICT)
    blob = ed25519_key().public().blob()
    rk.check_key(blob)  # nothing revoked yet
    st = revoked.stat()
    revoked.chmod(0o666)
    with pytest.raises(CertificateRefused, match="not trusted"):
        rk.check_key(blob)
    revoked.write_text(line)  # same size, same mtime: an edit the cache key cannot see
    os.utime(revoked, ns=(st.st_atime_ns, st.st_mtime_ns))
    revoked.chmod(0o600)
    with pytest.raises(CertificateRefused, match="is revoked"):
        rk.check_key(blob)


def test_untrusted_ca_file_trusts_no_ca(tmp_path: Path) -> None:
    ca = ed25519_key(7)
    cas = _write(tmp_path / "lists" / "cas", authorized_line(ca))
    trusted = TrustedCAs(str(cas), trust=STRICT)
    assert trusted.contains(ca.public().blob())
    cas.parent.chmod(0o777)
    with capturedLogs() as events:
        assert not trusted.contains(ca.public().blob())
    assert [formatEvent(e) for e in events] == [
        f"Ignoring {cas}: bad ownership or modes for directory {cas.parent}: no CA is trusted"
    ]
    assert TrustedCAs(str(cas), trust=LOOSE).contains(ca.public().blob())


# -- host keys ------------------------------------------------------------------------------------


def test_host_key_directory_writable_by_others_is_refused(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    ensure_host_keys(keys, trust=STRICT)
    keys.chmod(0o777)
    with pytest.raises(HostKeyError, match=f"host key directory {keys}: bad ownership or modes for directory {keys}"):
        load_host_keys(keys, trust=STRICT)
    assert load_host_keys(keys, trust=LOOSE).private


def test_no_host_key_is_created_in_an_untrusted_directory(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    os.chown(keys, NOBODY, NOBODY)
    with pytest.raises(HostKeyError, match="bad ownership or modes for directory"):
        ensure_host_keys(keys, trust=STRICT)
    assert list(keys.iterdir()) == []


def test_no_host_key_directory_is_made_inside_a_shared_one(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(HostKeyError, match=f"host key directory {shared}/a/keys: bad ownership .* directory {shared}"):
        ensure_host_keys(shared / "a" / "keys", trust=STRICT)
    assert list(shared.iterdir()) == []


def test_host_key_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    (key,) = ensure_host_keys(keys, trust=STRICT)
    os.chown(key, NOBODY, NOBODY)
    with pytest.raises(HostKeyError, match=f"host key {key}: bad ownership or modes for file {key}; fix: chown root"):
        load_host_keys(keys, trust=STRICT)


# -- config and doctor ----------------------------------------------------------------------------


def test_strict_modes_defaults_to_true_and_is_shown(tmp_path: Path) -> None:
    assert parse_config("", base_dir=tmp_path).strict_modes is True
    config = parse_config("strict_modes = false\n", base_dir=tmp_path)
    assert config.strict_modes is False
    assert "strict_modes = false\n" in config.describe()
    with pytest.raises(Exception, match="strict_modes: must be true or false"):
        parse_config('strict_modes = "no"\n', base_dir=tmp_path)


@dataclass
class Doctor:
    base: Path

    def run(self, extra: str = "") -> tuple[int, str]:
        config = self.base / "conchcmd.toml"
        config.write_text(
            "\n".join(
                [
                    'host_keys_dir = "keys"',
                    'authorized_keys = "users/%u"',
                    f'trusted_user_ca_keys = "{self.base}/lists/cas"',
                    f'revoked_keys = "{self.base}/lists/revoked"',
                    extra,
                    "[lastlog]",
                    f'path = "{self.base / "syslog"}"',
                    "[comphash]",
                    f'roots = ["{self.base}"]',
                    "",
                ]
            )
        )
        out = io.StringIO()
        return cli.main(["doctor", "--config", str(config)], out=out), out.getvalue()


def problems(report: str) -> list[str]:
    lines = report.splitlines()
    return [f"{line}\n{lines[i + 1].strip()}" for i, line in enumerate(lines) if line.startswith("problem ")]


@pytest.fixture
def doctor(tmp_path: Path, key_text: str) -> Doctor:
    ensure_host_keys(tmp_path / "keys", trust=STRICT)
    _write(tmp_path / "syslog", "a line\n", 0o644)
    _write(tmp_path / "lists" / "cas", authorized_line(ed25519_key(7)))
    _write(tmp_path / "lists" / "revoked", "# none\n")
    return Doctor(tmp_path)


def test_doctor_reports_each_untrusted_authorized_keys_file_with_a_fix(doctor: Doctor, key_text: str) -> None:
    users = doctor.base / "users"
    os.chown(_write(users / "alice", key_text), NOBODY, NOBODY)
    _write(users / "bob", key_text, 0o620)
    shared = doctor.base / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o1777)
    (users / "carol").symlink_to(_write(shared / "carol", key_text))
    _write(users / "dave", key_text)
    status, report = doctor.run()
    assert status == 1
    assert problems(report) == [
        f"problem  {users}/alice: bad ownership or modes for file {users}/alice: it is ignored\n"
        f"fix: chown root {users}/alice",
        f"problem  {users}/bob: bad ownership or modes for file {users}/bob: it is ignored\nfix: chmod 600 {users}/bob",
        f"problem  {users}/carol: bad ownership or modes for directory {shared}: it is ignored\n"
        f"fix: move {users}/carol to a directory only root can write",
    ]
    assert "ok       user dave: 1 usable key line(s)" in report
    status, report = doctor.run("strict_modes = false")
    assert (status, problems(report)) == (0, []), report


def test_doctor_reports_the_authorized_keys_directory(doctor: Doctor, key_text: str) -> None:
    _write(doctor.base / "users" / "alice", key_text)
    (doctor.base / "users").chmod(0o777)
    status, report = doctor.run()
    assert status == 1
    assert problems(report) == [
        f"problem  authorized_keys in {doctor.base}/users: bad ownership or modes for directory {doctor.base}/users:"
        f" every file is ignored\nfix: chmod go-w {doctor.base}/users, or move the files in {doctor.base}/users "
        "elsewhere"
    ]


def test_doctor_reports_the_host_key_directory_ca_and_revoked_files(doctor: Doctor, key_text: str) -> None:
    _write(doctor.base / "users" / "alice", key_text)
    (doctor.base / "keys").chmod(0o775)
    lists = doctor.base / "lists"
    os.chown(lists, NOBODY, NOBODY)
    status, report = doctor.run()
    assert status == 1
    assert problems(report) == [
        f"problem  host key directory {doctor.base}/keys: bad ownership or modes for directory {doctor.base}/keys:"
        f" serve refuses to start\nfix: chmod go-w {doctor.base}/keys, or move the files in {doctor.base}/keys "
        "elsewhere",
        f"problem  trusted_user_ca_keys {lists}/cas: bad ownership or modes for directory {lists}: no CA is trusted\n"
        f"fix: chown root {lists}, or move {lists}/cas elsewhere",
        f"problem  revoked_keys {lists}/revoked: bad ownership or modes for directory {lists}: every key is refused\n"
        f"fix: chown root {lists}, or move {lists}/revoked elsewhere",
    ]
    status, report = doctor.run("strict_modes = false")
    assert (status, problems(report)) == (0, []), report


def test_keygen_refuses_an_untrusted_host_key_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    keys.chmod(0o777)
    config = tmp_path / "conchcmd.toml"
    config.write_text('host_keys_dir = "keys"\n')
    assert cli.main(["keygen", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"conchcmd: host key directory {keys}: bad ownership or modes for directory {keys}; fix:")
    assert list(keys.iterdir()) == []


# -- a symlink on the way swapped for a directory while realpath reads it ---------------------------


def _deploy(tmp_path: Path) -> tuple[Path, Path]:
    """tmp/current -> tmp/r1 holding f, and tmp/dir_release, a directory holding the same file (a
    hard link): what a deploy swaps `current` with."""
    base = Path(os.path.realpath(tmp_path))
    (base / "r1").mkdir()
    _write(base / "r1" / "f", "x")
    (base / "dir_release").mkdir()
    os.link(base / "r1" / "f", base / "dir_release" / "f")
    (base / "current").symlink_to(base / "r1")
    return base / "current", base / "dir_release"


def test_a_symlink_swapped_for_a_directory_inside_realpath_is_resolved_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python's realpath lstat()s `current` (a symlink), then readlink()s it: swapped for a directory
    in between, readlink fails with EINVAL. Reported before as an untrusted file and directory,
    "realpath ... failed: Invalid argument"; now the name is resolved again and judged."""
    current, release = _deploy(tmp_path)
    path = current / "f"
    opened = path.stat()
    errors = swap_at_readlink(monkeypatch, current, release, back=False)
    assert file_problem(str(path), opened, STRICT) is None
    assert errors == [errno.EINVAL]  # the race really happened, once
    exchange(current, release)  # the symlink back, for directory_problem's own race
    errors.clear()
    assert directory_problem(str(current), STRICT) is None
    assert errors == [errno.EINVAL]


def test_a_symlink_that_keeps_changing_inside_realpath_and_a_missing_path_are_still_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    current, release = _deploy(tmp_path)
    errors = swap_at_readlink(monkeypatch, current, release, back=True)
    problem = directory_problem(str(current), STRICT)
    assert errors == [errno.EINVAL] * ROOT_RETRIES
    assert problem is not None and problem.reason == f"realpath {current} failed: Invalid argument"
    problem = file_problem(str(current / "f"), (current / "f").stat(), STRICT)
    assert problem is not None and problem.reason == f"realpath {current}/f failed: Invalid argument"
    monkeypatch.undo()
    missing = current / "missing"
    problem = directory_problem(str(missing), STRICT)
    assert problem is not None and problem.reason == f"realpath {missing} failed: No such file or directory"
