"""conchcmd.policy.authorized_keys: the OpenSSH options parser, the file parser, and the per-user key files."""

from __future__ import annotations

import base64
import os
import struct
from pathlib import Path

import pytest
from twisted.conch.ssh.keys import Key

import conchcmd.policy.authorized_keys as ak_module
from conchcmd.core.config import valid_user_name
from conchcmd.policy.authorized_keys import (
    AuthorizedKeysFiles,
    OptionsSyntaxError,
    fingerprint,
    parse_authorized_keys,
    parse_options,
)

# --- parse_options -------------------------------------------------------------------------


def test_options_plain_names_and_quoted_values() -> None:
    options, rest = parse_options('restrict,command="uptime",no-pty ssh-ed25519 AAAA c')
    assert options == [("restrict", None), ("command", "uptime"), ("no-pty", None)]
    assert rest == "ssh-ed25519 AAAA c"


def test_options_quoted_value_may_contain_commas_and_spaces() -> None:
    options, rest = parse_options('command="a,b c",from="10.0.0.1,10.0.0.2"\tssh-rsa AAAA')
    assert options == [("command", "a,b c"), ("from", "10.0.0.1,10.0.0.2")]
    assert rest == "ssh-rsa AAAA"


def test_options_escaped_quote_inside_value() -> None:
    options, rest = parse_options(r'command="echo \"hi, there\"" ssh-ed25519 AAAA')
    assert options == [("command", 'echo "hi, there"')]
    assert rest == "ssh-ed25519 AAAA"


def test_options_backslash_not_before_quote_is_kept() -> None:
    options, _ = parse_options(r'command="a\nb\x" ssh-ed25519 AAAA')
    assert options == [("command", "a\\nb\\x")]


def test_options_names_are_lowered() -> None:
    options, _ = parse_options('NO-PTY,Command="x" ssh-ed25519 AAAA')
    assert options == [("no-pty", None), ("command", "x")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('command="never closed ssh-ed25519 AAAA', "invalid key option string (unterminated quote)"),
        ("command=uptime ssh-ed25519 AAAA", "option 'command': missing start quote"),
        ('"quoted" ssh-ed25519 AAAA', "unknown key option '\"quoted\"'"),
        ("no-pty,", "unexpected end-of-options"),
        ('command="x"junk ssh-ed25519 AAAA', "unknown key option 'command'"),
        ("no-ptyx ssh-ed25519 AAAA", "unknown key option 'no-ptyx'"),
    ],
)
def test_options_syntax_errors(text: str, message: str) -> None:
    with pytest.raises(OptionsSyntaxError) as info:
        parse_options(text)
    assert str(info.value) == message


# --- parse_authorized_keys -----------------------------------------------------------------


def test_comments_and_blank_lines_are_skipped(ssh_key) -> None:
    pair = ssh_key("ed25519")
    parsed = parse_authorized_keys(f"# a comment\n\n   \n  # indented comment\n{pair.public_line}\n", "ak")
    assert parsed.problems == ()
    assert len(parsed.entries) == 1
    assert parsed.entries[0].source == "ak:5"


def test_plain_key_line(ssh_key) -> None:
    pair = ssh_key("ed25519")
    key_type, b64 = pair.public_line.split()[:2]
    parsed = parse_authorized_keys(f"{key_type} {b64}\n", "ak")
    [entry] = parsed.entries
    assert parsed.problems == ()
    assert entry.blob == base64.b64decode(b64)
    assert entry.key == Key.fromFile(str(pair.public))
    assert entry.options == ()
    assert entry.comment == ""


def test_comment_with_spaces_is_kept_whole(ssh_key) -> None:
    pair = ssh_key("ecdsa256")
    key_type, b64 = pair.public_line.split()[:2]
    [entry] = parse_authorized_keys(f"{key_type} {b64} alice on her  laptop\n", "ak").entries
    assert entry.comment == "alice on her  laptop"


def test_line_with_an_unknown_option_is_kept_but_refused_and_reported(ssh_key) -> None:
    pair = ssh_key("ed25519")
    parsed = parse_authorized_keys(f'from="10.0.0.0/8",no-pty,frobnicate {pair.public_line}\n', "users/alice")
    [entry] = parsed.entries
    assert entry.refused == "unknown key option 'frobnicate'"
    assert parsed.problems == ("users/alice:1: line refused: unknown key option 'frobnicate'",)


def test_bad_options_syntax_is_a_problem_not_an_entry(ssh_key) -> None:
    pair = ssh_key("ed25519")
    parsed = parse_authorized_keys(f'command="unclosed {pair.public_line}\n', "ak")
    assert parsed.entries == ()
    assert parsed.problems == ("ak:1: line refused: invalid key option string (unterminated quote)",)


def test_certificate_lines_are_refused(ssh_key) -> None:
    b64 = ssh_key("ed25519").public_line.split()[1]
    parsed = parse_authorized_keys(f"ssh-ed25519-cert-v01@openssh.com {b64} cert\n", "ak")
    assert parsed.entries == ()
    assert parsed.problems == ("ak:1: line refused: certificates are not accepted here",)


def test_bad_base64_is_a_problem(ssh_key) -> None:
    parsed = parse_authorized_keys("ssh-ed25519 AAAA!!!notbase64 c\n", "ak")
    assert parsed.entries == ()
    assert parsed.problems == ("ak:1: line refused: no key type and key",)


def test_a_blob_that_is_not_a_key_is_a_problem() -> None:
    parsed = parse_authorized_keys("ssh-ed25519 AAAA c\n", "ak")
    assert parsed.entries == ()
    [problem] = parsed.problems
    assert problem.startswith("ak:1: line refused: bad key (")


def test_key_type_mismatch_is_a_problem(ssh_key) -> None:
    b64 = ssh_key("ed25519").public_line.split()[1]
    parsed = parse_authorized_keys(f"ssh-rsa {b64}\n", "ak")
    assert parsed.entries == ()
    assert parsed.problems == ("ak:1: line refused: key type ssh-rsa does not match the key",)


def test_line_without_key_is_a_problem() -> None:
    parsed = parse_authorized_keys("ssh-ed25519\n", "ak")
    assert parsed.entries == ()
    assert parsed.problems == ("ak:1: line refused: no key type and key",)


@pytest.mark.parametrize(
    "blob",
    [
        struct.pack(">I", 7) + b"ssh-rsa" + b"\x00\x00",  # truncated RSA blob: no e, no n
        struct.pack(">I", 19) + b"ecdsa-sha2-nistp256" + b"\x00",  # truncated ECDSA blob
    ],
    ids=["rsa", "ecdsa"],
)
def test_truncated_key_blob_is_a_problem_and_other_lines_still_count(ssh_key, blob: bytes) -> None:
    # "bad lines become problems, never exceptions": one corrupt line must not lock out the file.
    key_type = blob[4 : 4 + struct.unpack(">I", blob[:4])[0]].decode()
    pair = ssh_key("ed25519")
    text = f"{key_type} {base64.b64encode(blob).decode()} corrupt\n{pair.public_line}\n"
    parsed = parse_authorized_keys(text, "ak")
    assert [e.source for e in parsed.entries] == ["ak:2"]
    [problem] = parsed.problems
    assert problem.startswith("ak:1: line refused: bad key")


def test_several_keys_each_with_its_line_number(ssh_key) -> None:
    lines = [ssh_key(kind).public_line for kind in ("ed25519", "ecdsa256", "rsa")]
    parsed = parse_authorized_keys("\n".join(["# keys", *lines]) + "\n", "f")
    assert [e.source for e in parsed.entries] == ["f:2", "f:3", "f:4"]
    assert [e.key.sshType() for e in parsed.entries] == [b"ssh-ed25519", b"ecdsa-sha2-nistp256", b"ssh-rsa"]


# --- fingerprint, user names ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa384", "rsa"])
def test_fingerprint_matches_ssh_keygen(ssh_key, kind: str) -> None:
    pair = ssh_key(kind)
    blob = base64.b64decode(pair.public_line.split()[1])
    assert fingerprint(blob) == pair.fingerprint


@pytest.mark.parametrize("name", ["admin", "alice.smith", "bob-2", "_svc", "A" * 64, "9lives"])
def test_valid_user_names(name: str) -> None:
    assert valid_user_name(name)


@pytest.mark.parametrize(
    "name",
    ["", "../x", "a/b", ".hidden", "..", "A" * 65, "-rf", "al ice", "admin\n", "admin\x00", "é"],
)
def test_invalid_user_names(name: str) -> None:
    assert not valid_user_name(name)


# --- AuthorizedKeysFiles -------------------------------------------------------------------


def write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)


def test_percent_u_is_replaced_by_the_user_name(tmp_path: Path) -> None:
    files = AuthorizedKeysFiles(f"{tmp_path}/%u/keys-%u")
    assert files.path_for("alice") == f"{tmp_path}/alice/keys-alice"


def test_double_percent_is_a_literal_percent() -> None:
    files = AuthorizedKeysFiles("/k/100%%/%%u/%u")
    assert files.path_for("bob") == "/k/100%/%u/bob"


def test_invalid_user_name_has_no_path_and_no_entries(tmp_path: Path, ssh_key) -> None:
    write_private(tmp_path / "x", ssh_key("ed25519").public_line + "\n")
    files = AuthorizedKeysFiles(f"{tmp_path}/users/%u")
    assert files.path_for("../x") is None
    assert files.entries_for("../x") == ()


def test_entries_and_find_by_blob(tmp_path: Path, ssh_key) -> None:
    mine, other = ssh_key("ed25519"), ssh_key("ecdsa256")
    write_private(tmp_path / "alice", mine.public_line + "\n")
    files = AuthorizedKeysFiles(f"{tmp_path}/%u")
    mine_blob = base64.b64decode(mine.public_line.split()[1])
    other_blob = base64.b64decode(other.public_line.split()[1])
    entry = files.find("alice", mine_blob)
    assert entry is not None
    assert entry.blob == mine_blob
    assert files.find("alice", other_blob) is None
    assert files.find("bob", mine_blob) is None


def test_missing_file_gives_no_entries(tmp_path: Path) -> None:
    assert AuthorizedKeysFiles(f"{tmp_path}/%u").entries_for("nobody") == ()


def test_edited_file_is_re_read(tmp_path: Path, ssh_key) -> None:
    first, second = ssh_key("ed25519"), ssh_key("ed25519-other")
    first_line, second_line = (" ".join(p.public_line.split()[:2]) + "\n" for p in (first, second))
    assert len(first_line) == len(second_line)
    path = tmp_path / "alice"
    write_private(path, first_line)
    files = AuthorizedKeysFiles(f"{tmp_path}/%u")
    [entry] = files.entries_for("alice")
    assert entry.blob == base64.b64decode(first.public_line.split()[1])
    # Same inode, same size, new content: only the mtime tells the cache it changed.
    st = path.stat()
    path.write_text(second_line)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    [entry] = files.entries_for("alice")
    assert entry.blob == base64.b64decode(second.public_line.split()[1])


def test_unchanged_file_is_not_re_read(tmp_path: Path, ssh_key, monkeypatch: pytest.MonkeyPatch) -> None:
    write_private(tmp_path / "alice", ssh_key("ed25519").public_line + "\n")
    files = AuthorizedKeysFiles(f"{tmp_path}/%u")
    assert len(files.entries_for("alice")) == 1
    reads: list[object] = []
    original = ak_module.parse_authorized_keys
    monkeypatch.setattr(ak_module, "parse_authorized_keys", lambda *a, **k: reads.append(a) or original(*a, **k))
    assert len(files.entries_for("alice")) == 1
    assert reads == []
    path = tmp_path / "alice"
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 1))
    assert len(files.entries_for("alice")) == 1
    assert len(reads) == 1  # the patch does see a re-read


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_group_or_other_writable_file_is_ignored(tmp_path: Path, ssh_key, mode: int) -> None:
    path = tmp_path / "alice"
    write_private(path, ssh_key("ed25519").public_line + "\n")
    files = AuthorizedKeysFiles(f"{tmp_path}/%u")
    assert len(files.entries_for("alice")) == 1
    path.chmod(mode)
    assert files.entries_for("alice") == ()


def test_readable_by_others_is_fine(tmp_path: Path, ssh_key) -> None:
    path = tmp_path / "alice"
    write_private(path, ssh_key("ed25519").public_line + "\n")
    path.chmod(0o644)
    assert len(AuthorizedKeysFiles(f"{tmp_path}/%u").entries_for("alice")) == 1


def test_deleted_file_gives_no_entries_after_caching(tmp_path: Path, ssh_key) -> None:
    path = tmp_path / "alice"
    write_private(path, ssh_key("ed25519").public_line + "\n")
    files = AuthorizedKeysFiles(f"{tmp_path}/%u")
    assert len(files.entries_for("alice")) == 1
    path.unlink()
    assert files.entries_for("alice") == ()
