"""`conchcmd users`, `conchcmd deluser`, and the .pub reader adduser and check share."""

from __future__ import annotations

import errno
import grp
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
from support.races import swap_at_readlink
from twisted.internet.task import Clock

from conchcmd.commands.safepath import ROOT_RETRIES
from conchcmd.core.config import load_config
from conchcmd.edge.cli import main
from conchcmd.edge.usercmds import UserCommandError, replace_file
from conchcmd.policy.auth import KeyAuthorizer, KeyRefused
from conchcmd.policy.authorized_keys import AuthorizedKeysFiles

PASSWORD_HASH = "$2b$04$abcdefghijklmnopqrstuu5bqGa5VIQ3Ru1c3gmsc4GgmrqsrwFIm"


@pytest.fixture(autouse=True)
def no_system_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """deluser logs to the machine's syslog: not from tests (the test of it records the calls)."""
    from conchcmd.edge import usercmds

    monkeypatch.setattr(usercmds.syslog, "syslog", lambda *a: None)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keys" / "authorized_keys").mkdir(parents=True)
    return tmp_path


def users_file(workdir: Path, user: str, text: str, mode: int = 0o600) -> Path:
    path = workdir / "keys" / "authorized_keys" / user
    path.write_text(text)
    path.chmod(mode)
    return path


def users_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["users", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def audit_records(workdir: Path) -> list[dict[str, Any]]:
    path = workdir / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# --- one reader of .pub files for adduser and check -------------------------------------------------


@pytest.mark.parametrize("kind", ["plain private", "encrypted private", "not a key", "empty"])
def test_check_and_adduser_say_the_same_about_a_file_that_is_no_public_key(
    workdir: Path, ssh_key, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """Issue 11: `check --key PRIVATE` said "Incorrect padding"; it now says what adduser says."""
    if kind == "plain private":
        path = ssh_key("ed25519").private
    elif kind == "encrypted private":
        path = ssh_key("ed25519-encrypted").private
    else:
        path = workdir / "f.pub"
        path.write_text("hello world\n" if kind == "not a key" else "")
    assert main(["adduser", "alice", str(path)]) == 2
    adduser_err = capsys.readouterr().err
    assert main(["check", "--user", "alice", "--key", str(path)]) == 2
    check_out, check_err = capsys.readouterr()
    assert check_err == adduser_err
    assert check_out == ""
    expected = "is a PRIVATE key; give the .pub file" if "private" in kind else "is not an OpenSSH public key"
    assert adduser_err == f"conchcmd: {path} {expected}\n"
    assert "padding" not in check_err


def test_adduser_names_the_reason_an_oddly_written_key_is_refused(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A .pub whose blob sshd would refuse (here: bytes after the key) is refused with the reason
    login gives, not only "not an OpenSSH public key"."""
    import base64

    from support.oddblobs import private_key, public_blob, trailing

    blob = trailing(public_blob(private_key("ed25519")))
    path = workdir / "odd.pub"
    path.write_text(f"ssh-ed25519 {base64.b64encode(blob).decode()} odd\n")
    assert main(["adduser", "alice", str(path)]) == 2
    assert capsys.readouterr().err == f"conchcmd: {path} is not an OpenSSH public key (trailing data after the key)\n"
    assert not (workdir / "keys" / "authorized_keys" / "alice").exists()


def test_adduser_refuses_a_certificate_and_says_what_to_do(
    workdir: Path, ssh_key, capsys: pytest.CaptureFixture[str]
) -> None:
    pair = ssh_key("ed25519")
    cert = workdir / "id-cert.pub"
    blob = pair.public_line.split()[1]
    cert.write_text(f"ssh-ed25519-cert-v01@openssh.com {blob}\n")
    assert main(["adduser", "alice", str(cert)]) == 2
    assert "is a certificate; authorize its CA instead" in capsys.readouterr().err


def test_adduser_writes_one_line_even_with_a_vertical_tab_in_the_comment(workdir: Path, ssh_key) -> None:
    """The file's first line as sshd reads it (lines end at \\n only), written whole."""
    pair = ssh_key("ed25519")
    pub = workdir / "k.pub"
    pub.write_bytes(pair.public_line.encode() + b" a\x0bb\r\n")
    assert main(["adduser", "alice", str(pub)]) == 0
    assert (workdir / "keys" / "authorized_keys" / "alice").read_bytes() == pair.public_line.encode() + b" a\x0bb\n"


# --- users ---------------------------------------------------------------------------------------------


def test_users_lists_keys_options_lines_and_refused_lines(
    workdir: Path, ssh_key, capsys: pytest.CaptureFixture[str]
) -> None:
    good, weak, rsa = ssh_key("ed25519"), ssh_key("rsa1024"), ssh_key("rsa")
    path = users_file(
        workdir,
        "alice",
        f"# alice's keys\n{good.public_line}\n"
        f'restrict,command="lastlog -n 5" {rsa.public_line}\n'
        f"{weak.public_line}\n"
        "garbage here\n"
        f"frobnicate {good.public_line}\n"
        f'expiry-time="20200101" {rsa.public_line}\n',
    )
    report = users_json(capsys)
    assert report["schema"] == 1
    [alice] = report["users"]
    assert (alice["user"], alice["file"], alice["file_status"], alice["password"]) == ("alice", str(path), "ok", False)
    rows = {k["line"]: k for k in alice["keys"]}
    assert rows[2] == {
        "line": 2,
        "type": "ssh-ed25519",
        "fingerprint": good.fingerprint,
        "options": [],
        "comment": "test ed25519 key",
        "cert_authority": False,
        "usable": True,
        "refused": None,
        "security_key": None,
    }
    assert rows[3]["options"] == ["restrict", 'command="lastlog -n 5"']
    assert (rows[3]["fingerprint"], rows[3]["usable"]) == (rsa.fingerprint, True)
    assert rows[4]["refused"] == "RSA key of 1024 bits is too small"
    assert rows[6]["refused"] == "unknown key option 'frobnicate'"
    assert rows[7]["refused"] == "key expired (expiry-time)"
    assert alice["refused_lines"] == [{"line": 5, "reason": "no key type and key"}]

    assert main(["users"]) == 0
    text = capsys.readouterr().out
    assert f"    line 2: ssh-ed25519 {good.fingerprint} (test ed25519 key)\n" in text
    assert f'    line 3: ssh-rsa {rsa.fingerprint} options restrict,command="lastlog -n 5" (test rsa key)\n' in text
    assert "    line 4: ssh-rsa " in text and ": REFUSED: RSA key of 1024 bits is too small\n" in text
    assert "    line 5: REFUSED: no key type and key\n" in text


def test_users_says_what_login_does_for_every_line(workdir: Path, ssh_key, capsys: pytest.CaptureFixture[str]) -> None:
    """Each key `users` calls usable logs in through the server's KeyAuthorizer; each it refuses does not."""
    kinds = ["ed25519", "rsa1024", "rsa", "ecdsa256", "ecdsa384"]
    lines = [
        ssh_key("ed25519").public_line,
        ssh_key("rsa1024").public_line,
        f'expiry-time="20200101" {ssh_key("rsa").public_line}',
        f'environment="A=b" {ssh_key("ecdsa256").public_line}',
        f'no-pty,command="help" {ssh_key("ecdsa384").public_line}',
    ]
    users_file(workdir, "bob", "\n".join(lines) + "\n")
    [bob] = users_json(capsys)["users"]
    clock = Clock()
    clock.advance(2_000_000_000)
    authorizer = KeyAuthorizer.from_config(load_config(None, cwd=workdir), clock)
    verdicts = {}
    for kind in kinds:
        blob = authorizer.keys.entries_for("bob")[kinds.index(kind)].blob
        algorithm = (
            b"rsa-sha2-512"
            if kind.startswith("rsa")
            else authorizer.keys.entries_for("bob")[kinds.index(kind)].key.sshType()
        )
        try:
            authorizer.authorize("bob", algorithm, blob, None)
            verdicts[kind] = True
        except KeyRefused:
            verdicts[kind] = False
    assert [k["usable"] for k in bob["keys"]] == [verdicts[k] for k in kinds] == [True, False, False, False, True]


def test_users_includes_config_users_and_password_users(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "conchcmd.toml").write_text(
        f'[users.carol]\npassword_bcrypt = "{PASSWORD_HASH}"\n[users.dave]\ncommands = ["lastlog"]\n'
    )
    users = {u["user"]: u for u in users_json(capsys)["users"]}
    assert set(users) == {"carol", "dave"}
    assert (users["carol"]["password"], users["carol"]["file_status"], users["carol"]["keys"]) == (True, "missing", [])
    assert users["dave"]["commands"] == ["lastlog"]
    assert main(["users"]) == 0
    text = capsys.readouterr().out
    assert "carol (password)\n" in text and "dave (commands: lastlog)\n" in text


def test_users_shows_an_ignored_file_and_why(workdir: Path, ssh_key, capsys: pytest.CaptureFixture[str]) -> None:
    path = users_file(workdir, "eve", ssh_key("ed25519").public_line + "\n", mode=0o666)
    [eve] = users_json(capsys)["users"]
    assert eve["file_status"] == "ignored"
    assert eve["file_problem"] == f"bad ownership or modes for file {path}; fix: chmod 600 {path}"
    assert [(k["usable"], k["refused"]) for k in eve["keys"]] == [
        (False, f"file ignored: bad ownership or modes for file {path}")
    ]


def test_users_finds_files_in_per_user_directories(workdir: Path, ssh_key, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "conchcmd.toml").write_text('authorized_keys = "home/%u/.ssh/authorized_keys"\n')
    for name in ("ann", "ben"):
        d = workdir / "home" / name / ".ssh"
        d.mkdir(parents=True)
        (d / "authorized_keys").write_text(ssh_key("ed25519").public_line + "\n")
        (d / "authorized_keys").chmod(0o600)
    (workdir / "home" / "not valid!" / ".ssh").mkdir(parents=True)
    (workdir / "home" / "not valid!" / ".ssh" / "authorized_keys").write_text(ssh_key("ed25519").public_line)
    assert [u["user"] for u in users_json(capsys)["users"]] == ["ann", "ben"]


def test_users_escapes_terminal_controls_in_comments(
    workdir: Path, ssh_key, capsys: pytest.CaptureFixture[str]
) -> None:
    users_file(workdir, "mal", ssh_key("ed25519").public_line + " \x1b]0;owned\x07\n")
    assert main(["users"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "?]0;owned?" in out


# --- deluser -------------------------------------------------------------------------------------------


def test_deluser_removes_the_named_key_keeping_everything_else(
    workdir: Path, ssh_key, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = ssh_key("ed25519"), ssh_key("rsa")
    original = f"# team key\n{a.public_line}\nbroken line\n{b.public_line}\n\n{a.public_line} again"
    path = users_file(workdir, "alice", original, mode=0o640)
    os.chown(path, os.geteuid(), 4322)  # a group of its own: kept (strict_modes trusts only our uid)
    inode = path.stat().st_ino
    files = AuthorizedKeysFiles(f"{workdir}/keys/authorized_keys/%u")
    assert len(files.entries_for("alice")) == 3  # cached by the server until the file changes
    assert main(["deluser", "alice", a.fingerprint]) == 0
    assert path.read_text() == f"# team key\nbroken line\n{b.public_line}\n"
    st = path.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, os.geteuid(), 4322)
    assert st.st_ino != inode  # replaced by rename, never rewritten in place
    assert sorted(p.name for p in path.parent.iterdir()) == ["alice"]  # no temporary file left
    assert capsys.readouterr().out == (
        f"alice: removed ssh-ed25519 key {a.fingerprint} (line 2) from {path}\n"
        f"alice: removed ssh-ed25519 key {a.fingerprint} (line 6) from {path}\n"
    )
    assert [e.blob for e in files.entries_for("alice")] == [files.entries_for("alice")[0].blob]
    assert files.entries_for("alice")[0].key.sshType() == b"ssh-rsa"
    [record] = audit_records(workdir)
    assert {k: v for k, v in record.items() if k != "ts"} == {
        "event": "deluser",
        "user": "alice",
        "fingerprints": [a.fingerprint, a.fingerprint],
        "lines": [2, 6],
        "file": str(path),
        "whole_file": False,
        "operator": "root" if os.geteuid() == 0 else record["operator"],
        "host": socket.gethostname(),  # as on the server's records
    }


def test_deluser_with_an_unknown_fingerprint_changes_nothing(
    workdir: Path, ssh_key, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = ssh_key("ed25519"), ssh_key("rsa")
    path = users_file(workdir, "alice", a.public_line + "\n")
    before = path.stat()
    assert main(["deluser", "alice", a.fingerprint, b.fingerprint]) == 1
    assert capsys.readouterr().err == f"conchcmd: alice has no key {b.fingerprint} in {path}; nothing removed\n"
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns, path.read_text()) == (
        before.st_ino,
        before.st_mtime_ns,
        a.public_line + "\n",
    )
    assert audit_records(workdir) == []


@pytest.mark.parametrize("bad", ["abc", "SHA256:short", "MD5:aa:bb", "SHA256:" + "A" * 42 + "!"])
def test_deluser_refuses_what_is_not_a_fingerprint(
    workdir: Path, ssh_key, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    path = users_file(workdir, "alice", ssh_key("ed25519").public_line + "\n")
    assert main(["deluser", "alice", bad]) == 2
    assert "is not a SHA256 fingerprint" in capsys.readouterr().err
    assert path.exists() and audit_records(workdir) == []


@pytest.mark.parametrize("user", ["../alice", "a/b", ".hidden"])
def test_deluser_refuses_an_invalid_user_name(workdir: Path, capsys: pytest.CaptureFixture[str], user: str) -> None:
    assert main(["deluser", user]) == 2
    assert capsys.readouterr().err.startswith(f"conchcmd: invalid user name {user!r}")


def test_deluser_without_fingerprints_deletes_the_users_file(
    workdir: Path, ssh_key, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = ssh_key("ed25519"), ssh_key("rsa")
    path = users_file(workdir, "alice", f"{a.public_line}\n{b.public_line}\n")
    assert main(["deluser", "alice"]) == 0
    assert not path.exists()
    out = capsys.readouterr().out
    assert out.endswith(f"alice: deleted {path}\n") and a.fingerprint in out and b.fingerprint in out
    [record] = audit_records(workdir)
    assert (record["fingerprints"], record["whole_file"]) == ([a.fingerprint, b.fingerprint], True)
    assert main(["deluser", "alice"]) == 1  # nothing left to remove
    assert "has no authorized_keys file" in capsys.readouterr().err


def test_deluser_edits_the_file_a_symlink_leads_to(workdir: Path, ssh_key) -> None:
    a, b = ssh_key("ed25519"), ssh_key("rsa")
    real = workdir / "keys" / "shared"
    real.write_text(f"{a.public_line}\n{b.public_line}\n")
    real.chmod(0o600)
    link = workdir / "keys" / "authorized_keys" / "alice"
    link.symlink_to(real)
    assert main(["deluser", "alice", a.fingerprint]) == 0
    assert link.is_symlink() and real.read_text() == f"{b.public_line}\n"


def test_deluser_resolves_a_symlink_swapped_for_a_file_inside_realpath_again(
    workdir: Path, ssh_key, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """alice's symlink exchanged with a regular file between realpath's lstat and readlink:
    readlink's EINVAL, which Python's realpath passes on, failed deluser before; now the name is
    resolved again and the file found there edited. Swapped at every look: refused, nothing lost."""
    a, b = ssh_key("ed25519"), ssh_key("rsa")
    both = f"{a.public_line}\n{b.public_line}\n"
    real = workdir / "keys" / "shared"
    real.write_text(both)
    real.chmod(0o600)
    link = workdir / "keys" / "authorized_keys" / "alice"
    link.symlink_to(real)
    replacement = workdir / "keys" / "replacement"
    replacement.write_text(both)
    replacement.chmod(0o600)

    plain_readlink = os.readlink
    errors = swap_at_readlink(monkeypatch, link, replacement, back=True)
    assert main(["deluser", "alice", a.fingerprint]) == 1
    assert errors == [errno.EINVAL] * ROOT_RETRIES
    assert capsys.readouterr().err == (
        f"conchcmd: {link} kept changing while it was read (a symlink being swapped); nothing removed; try again\n"
    )
    assert (real.read_text(), replacement.read_text(), audit_records(workdir)) == (both, both, [])

    monkeypatch.setattr(os, "readlink", plain_readlink)
    errors = swap_at_readlink(monkeypatch, link, replacement, back=False)
    assert main(["deluser", "alice", a.fingerprint]) == 0
    assert errors == [errno.EINVAL]  # the race really happened, once
    assert not link.is_symlink() and link.read_text() == f"{b.public_line}\n"  # the file found there
    assert real.read_text() == both


def test_deluser_refuses_when_the_audit_log_cannot_be_written(
    workdir: Path, ssh_key, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "conchcmd.toml").write_text('audit_log = "no/such/dir/audit.jsonl"\n')
    a = ssh_key("ed25519")
    path = users_file(workdir, "alice", a.public_line + "\n")
    assert main(["deluser", "alice", a.fingerprint]) == 1
    assert "cannot write the audit log" in capsys.readouterr().err
    assert path.read_text() == a.public_line + "\n"


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="gives files to another user: needs root")
SERVER_UID = 4321  # the service user owning the log directory (systemd's LogsDirectory)


def server_log_dir(workdir: Path, config: str = "") -> Path:
    log_dir = workdir / "log"
    log_dir.mkdir(mode=0o750)
    os.chown(log_dir, SERVER_UID, SERVER_UID)
    (workdir / "conchcmd.toml").write_text(f'audit_log = "log/audit.jsonl"\n{config}')
    return log_dir / "audit.jsonl"


@needs_root
def test_deluser_as_root_creates_the_audit_file_the_server_can_still_write(workdir: Path, ssh_key) -> None:
    # Found installing by the README: root's deluser created a missing audit file root:root 0600 in
    # the service user's log directory, and the server could no longer write its audit log.
    audit = server_log_dir(workdir, 'audit_group = "adm"\n')
    a = ssh_key("ed25519")
    users_file(workdir, "alice", a.public_line + "\n")
    assert main(["deluser", "alice", a.fingerprint]) == 0
    st = audit.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (SERVER_UID, grp.getgrnam("adm").gr_gid, 0o640)
    [record] = [json.loads(line) for line in audit.read_text().splitlines()]
    assert (record["event"], record["host"]) == ("deluser", socket.gethostname())
    assert record["fingerprints"] == [a.fingerprint]


@needs_root
def test_deluser_as_root_does_not_follow_a_symlink_the_service_user_put_there(
    workdir: Path, ssh_key, capsys: pytest.CaptureFixture[str]
) -> None:
    audit = server_log_dir(workdir)
    victim = workdir / "victim"  # a file only root may write, e.g. /etc/sudoers
    victim.write_text("root ALL=(ALL) ALL\n")
    audit.symlink_to(victim)
    a = ssh_key("ed25519")
    path = users_file(workdir, "alice", a.public_line + "\n")
    assert main(["deluser", "alice", a.fingerprint]) == 1
    assert "cannot write the audit log" in capsys.readouterr().err
    assert victim.read_text() == "root ALL=(ALL) ALL\n" and path.read_text() == a.public_line + "\n"


def test_deluser_sends_its_record_to_the_configured_syslog_address(workdir: Path, ssh_key) -> None:
    # It went to /dev/log whatever [log] syslog_address said (and failed where there is none).
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(10)
    port = receiver.getsockname()[1]
    (workdir / "conchcmd.toml").write_text(f'audit_log = "syslog"\n[log]\nsyslog_address = "udp:127.0.0.1:{port}"\n')
    a = ssh_key("ed25519")
    users_file(workdir, "alice", a.public_line + "\n")
    with receiver:
        assert main(["deluser", "alice"]) == 0
        message = receiver.recv(65536).decode()
    assert message.startswith("<86>1 ")  # authpriv.info, RFC 5424
    record = json.loads(message[message.index("{") :])
    assert (record["event"], record["user"], record["host"]) == ("deluser", "alice", socket.gethostname())


def test_deluser_refuses_a_tcp_syslog_it_could_not_deliver_to(
    workdir: Path, ssh_key, capsys: pytest.CaptureFixture[str]
) -> None:
    # A one-shot command has no running reactor to connect with: the record was dropped, rc 0.
    (workdir / "conchcmd.toml").write_text('audit_log = "syslog"\n[log]\nsyslog_address = "tcp:127.0.0.1:9"\n')
    a = ssh_key("ed25519")
    path = users_file(workdir, "alice", a.public_line + "\n")
    assert main(["deluser", "alice"]) == 1
    assert "cannot send its audit record to a stream syslog_address" in capsys.readouterr().err
    assert path.read_text() == a.public_line + "\n"


def test_deluser_notes_a_password_that_still_logs_in(
    workdir: Path, ssh_key, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "conchcmd.toml").write_text(f'[users.alice]\npassword_bcrypt = "{PASSWORD_HASH}"\n')
    users_file(workdir, "alice", ssh_key("ed25519").public_line + "\n")
    assert main(["deluser", "alice"]) == 0
    assert "note: alice can still log in with a password" in capsys.readouterr().out


def test_replace_file_refuses_a_file_changed_since_it_was_read(workdir: Path) -> None:
    path = workdir / "f"
    path.write_text("one\n")
    stale = path.stat()
    path.write_text("one\ntwo, added meanwhile\n")
    with pytest.raises(UserCommandError, match="changed while it was being edited"):
        replace_file(str(path), b"", stale)
    assert path.read_text() == "one\ntwo, added meanwhile\n"
    assert sorted(p.name for p in workdir.iterdir()) == ["f", "keys"]


def test_adduser_appends_to_the_file_deluser_renamed_into_place(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """adduser locks the file it opened; if deluser replaced it meanwhile (rename while adduser
    waited for the lock), adduser appends to the new file, so no key is lost."""
    import fcntl

    from conchcmd.edge import usercmds

    path = workdir / "keys" / "authorized_keys" / "alice"
    path.write_text("old\n")
    real_flock = fcntl.flock
    replaced = []

    def flock_after_a_rename(fd: int, operation: int) -> None:
        if not replaced:
            replaced.append(True)
            new = workdir / "keys" / "authorized_keys" / ".alice.tmp"
            new.write_text("new\n")
            os.rename(new, path)  # what deluser does while adduser waits
        real_flock(fd, operation)

    monkeypatch.setattr(usercmds.fcntl, "flock", flock_after_a_rename)
    fd = usercmds.open_for_append(str(path))
    with os.fdopen(fd, "a") as f:
        f.write("added\n")
    assert path.read_text() == "new\nadded\n"


def test_users_marks_revoked_and_dsa_keys_refused(workdir: Path, ssh_key, capsys: pytest.CaptureFixture[str]) -> None:
    good, revoked, dsa = ssh_key("ed25519"), ssh_key("rsa"), ssh_key("dsa")
    (workdir / "revoked").write_text(revoked.public_line + "\n")
    (workdir / "revoked").chmod(0o600)
    (workdir / "conchcmd.toml").write_text('revoked_keys = "revoked"\n')
    users_file(workdir, "alice", f"{good.public_line}\n{revoked.public_line}\n{dsa.public_line}\n")
    [alice] = users_json(capsys)["users"]
    assert [(k["line"], k["refused"]) for k in alice["keys"]] == [
        (1, None),
        (2, f"key {revoked.fingerprint} is revoked"),
        (3, "ssh-dss keys are not accepted"),
    ]


def test_deluser_logs_each_key_to_syslog_authpriv(
    workdir: Path, ssh_key, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import syslog

    from conchcmd.edge import usercmds

    opened: list[tuple[str, int, int]] = []
    logged: list[tuple[int, str]] = []
    monkeypatch.setattr(usercmds.syslog, "openlog", lambda *a: opened.append(a))
    monkeypatch.setattr(usercmds.syslog, "syslog", lambda *a: logged.append(a))
    a = ssh_key("ed25519")
    path = users_file(workdir, "alice", a.public_line + "\n")
    assert main(["deluser", "alice"]) == 0
    assert opened == [("conchcmd", syslog.LOG_PID, syslog.LOG_AUTHPRIV)]
    assert [text.rsplit(" by ", 1)[0] for _, text in logged] == [
        f"deluser: removed ssh-ed25519 key {a.fingerprint} of user alice from {path} line 1",
        f"deluser: deleted {path} of user alice",
    ]
    assert {priority for priority, _ in logged} == {syslog.LOG_NOTICE}
    capsys.readouterr()


def test_adduser_warns_that_login_refuses_a_small_rsa_key(
    workdir: Path, ssh_key, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["adduser", "alice", str(ssh_key("rsa1024").public)]) == 0
    assert "warning: login refuses this key: RSA key of 1024 bits is too small\n" in capsys.readouterr().out


def test_deluser_does_not_follow_a_symlink_to_a_file_login_ignores(
    workdir: Path, ssh_key, capsys: pytest.CaptureFixture[str]
) -> None:
    a = ssh_key("ed25519")
    other = workdir / "other-file"
    other.write_text(a.public_line + "\n")
    other.chmod(0o666)  # not a file login would trust
    (workdir / "keys" / "authorized_keys" / "alice").symlink_to(other)
    assert main(["deluser", "alice", a.fingerprint]) == 1
    assert "which login ignores: bad ownership or modes" in capsys.readouterr().err
    assert other.read_text() == a.public_line + "\n"


def test_users_does_not_hang_on_a_fifo_planted_as_a_users_file(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Login ignores a FIFO (not a regular file); `users` showed what an ignored file holds by
    reading it, and opening a FIFO nobody writes blocks for ever."""
    import threading

    fifo = workdir / "keys" / "authorized_keys" / "mallory"
    os.mkfifo(fifo)
    done: list[int] = []
    runner = threading.Thread(target=lambda: done.append(main(["users", "--json"])), daemon=True)
    runner.start()
    runner.join(timeout=30)
    if runner.is_alive():
        os.close(os.open(fifo, os.O_WRONLY))  # release it so the run can end
        runner.join(timeout=30)
        pytest.fail("conchcmd users blocked on a FIFO")
    assert done == [0]
    [mallory] = json.loads(capsys.readouterr().out)["users"]
    assert mallory["file_status"] == "ignored" and mallory["keys"] == []


def test_users_reads_at_most_a_bounded_prefix_of_an_ignored_file(
    workdir: Path, ssh_key, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ignored file is another user's to fill (or a symlink to /dev/zero): `users` shows the
    keys in its first MAX_IGNORED_BYTES only, never reads without end."""
    from conchcmd.edge import usercmds

    monkeypatch.setattr(usercmds, "MAX_IGNORED_BYTES", 4096)
    line = ssh_key("ed25519").public_line + "\n"
    users_file(workdir, "eve", line + "#" * 10_000 + "\n" + line, mode=0o666)
    (workdir / "keys" / "authorized_keys" / "zed").symlink_to("/dev/zero")
    users = {u["user"]: u for u in users_json(capsys)["users"]}
    assert len(users["eve"]["keys"]) == 1  # the second line is past the bound
    assert users["zed"]["file_status"] == "ignored" and users["zed"]["keys"] == []


def test_deluser_audits_where_the_server_does(workdir: Path, ssh_key) -> None:
    """deluser's record goes to the audit log as the server opens it: `audit_log = "syslog"`
    to `[log] syslog_address` (not /dev/log), and an audit file it creates gets `audit_group`."""
    import grp
    import socket

    key = ssh_key("ed25519")
    users_file(workdir, "alice", key.public_line + "\n")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(workdir / "syslog"))
    receiver.settimeout(5)
    (workdir / "conchcmd.toml").write_text(f'audit_log = "syslog"\n[log]\nsyslog_address = "unix:{workdir}/syslog"\n')
    assert main(["deluser", "alice", key.fingerprint]) == 0
    record = json.loads(receiver.recv(1 << 16).split(b": ", 1)[1])
    assert (record["event"], record["user"]) == ("deluser", "alice")
    receiver.close()

    group = next(g for g in grp.getgrall() if g.gr_gid != os.getegid())
    users_file(workdir, "bob", key.public_line + "\n")
    (workdir / "conchcmd.toml").write_text(f'audit_group = "{group.gr_name}"\n')
    assert main(["deluser", "bob"]) == 0
    st = (workdir / "audit.jsonl").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o640, group.gr_gid)


def test_deluser_with_a_tcp_syslog_audit_removes_nothing_rather_than_queue_a_record_for_ever(
    workdir: Path, ssh_key, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stream syslog needs a running reactor to take the record; deluser has none, so the
    record would wait in a queue and vanish at exit. It refuses instead (audit_failure = refuse)."""
    key = ssh_key("ed25519")
    path = users_file(workdir, "alice", key.public_line + "\n")
    (workdir / "conchcmd.toml").write_text('audit_log = "syslog"\n[log]\nsyslog_address = "tcp:127.0.0.1:9"\n')
    assert main(["deluser", "alice", key.fingerprint]) == 1
    assert "nothing removed" in capsys.readouterr().err
    assert path.read_text() == key.public_line + "\n"


def test_adduser_does_not_append_through_a_symlink_planted_in_a_directory_others_can_write(
    workdir: Path, ssh_key, capsys: pytest.CaptureFixture[str]
) -> None:
    """Someone who can write the keys directory links alice's file to root's OpenSSH
    authorized_keys: the operator's `adduser alice` must not put alice's key there."""
    victim = workdir / "root_authorized_keys"
    victim.write_text("")
    keys = workdir / "keys" / "authorized_keys"
    keys.chmod(0o1777)
    (keys / "alice").symlink_to(victim)
    pub = workdir / "alice.pub"
    pub.write_text(ssh_key("ed25519").public_line + "\n")
    assert main(["adduser", "alice", str(pub)]) == 1
    assert "symlink" in capsys.readouterr().err
    assert victim.read_text() == ""


def test_adduser_fails_at_once_on_a_fifo_planted_as_the_users_file(
    workdir: Path, ssh_key, capsys: pytest.CaptureFixture[str]
) -> None:
    import threading

    fifo = workdir / "keys" / "authorized_keys" / "alice"
    os.mkfifo(fifo)
    pub = workdir / "alice.pub"
    pub.write_text(ssh_key("ed25519").public_line + "\n")
    done: list[int] = []
    runner = threading.Thread(target=lambda: done.append(main(["adduser", "alice", str(pub)])), daemon=True)
    runner.start()
    runner.join(timeout=30)
    if runner.is_alive():
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        pytest.fail("adduser blocked on a FIFO")
    assert done == [1]
    assert "not a regular file" in capsys.readouterr().err


def test_adduser_follows_a_symlink_in_a_directory_only_the_server_can_write(workdir: Path, ssh_key) -> None:
    real = workdir / "elsewhere"
    real.mkdir(mode=0o700)
    keys = workdir / "keys" / "authorized_keys"
    keys.chmod(0o700)
    (keys / "alice").symlink_to(real / "alice")
    pub = workdir / "alice.pub"
    key = ssh_key("ed25519")
    pub.write_text(key.public_line + "\n")
    assert main(["adduser", "alice", str(pub)]) == 0
    assert (real / "alice").read_text() == key.public_line + "\n"


def test_users_marks_a_revoked_key_written_with_other_bytes_revoked(
    workdir: Path, ssh_key, capsys: pytest.CaptureFixture[str]
) -> None:
    """A line whose blob pads the key's numbers with zero bytes is the same key (sshd and login read
    it so): revoked too. One with bytes after the key is no key at all (sshd refuses it)."""
    import base64

    from support.oddblobs import trailing, zero_padded

    revoked = ssh_key("rsa")
    key_type, text = revoked.public_line.split()[:2]
    padded = base64.b64encode(zero_padded(base64.b64decode(text))).decode()
    extra = base64.b64encode(trailing(base64.b64decode(text))).decode()
    (workdir / "revoked").write_text(revoked.public_line + "\n")
    (workdir / "revoked").chmod(0o600)
    (workdir / "conchcmd.toml").write_text('revoked_keys = "revoked"\n')
    users_file(workdir, "alice", f"{key_type} {padded}\n{key_type} {extra}\n")
    [alice] = users_json(capsys)["users"]
    assert alice["refused_lines"] == [{"line": 2, "reason": "bad key (trailing data after the key)"}]
    [key] = alice["keys"]
    assert key["refused"] is not None and key["refused"].endswith(" is revoked")
