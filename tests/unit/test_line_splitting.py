"""Issue 10, defect 3: OpenSSH key files end lines at \\n only.

`str.splitlines()` also broke at \\v, \\f, \\r, \\x1c-\\x1e, U+0085, U+2028 and U+2029: a key comment
holding one became a second, option-less line that bypassed from= and expiry-time=. sshd reads
with getline(); these tests hold conchcmd to that for authorized_keys, trusted CAs and revocations.
(tests/differential checks the same against a real sshd.)
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet.task import Clock

from conchcmd.keys.keyfile import file_lines
from conchcmd.policy.auth import KeyAuthorizer, KeyRefused
from conchcmd.policy.authorized_keys import AuthorizedKeysFiles, parse_authorized_keys
from conchcmd.policy.certs import RevokedKeys, TrustedCAs

SEPARATORS = ["\v", "\f", "\r", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
ALLOWED, FORBIDDEN = "10.0.0.1", "10.0.0.99"


def new_key() -> tuple[str, bytes]:
    """(OpenSSH public line, blob) of a fresh ed25519 key."""
    line = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return line, base64.b64decode(line.split()[1])


class Site:
    def __init__(self, root: Path):
        self.root = root
        (root / "ak").mkdir()
        self.revoked = root / "revoked"
        self.revoked.write_text("")
        self.trusted = root / "trusted"
        clock = Clock()
        clock.advance(time.time())
        self.authorizer = KeyAuthorizer(
            AuthorizedKeysFiles(f"{root}/ak/%u"), TrustedCAs(str(self.trusted)), RevokedKeys(str(self.revoked)), clock
        )

    def authorize(self, data: bytes) -> None:
        path = self.root / "ak" / "alice"
        path.write_bytes(data)
        path.chmod(0o600)

    def allowed(self, blob: bytes, peer: str) -> bool:
        try:
            self.authorizer.authorize("alice", b"ssh-ed25519", blob, peer)
        except KeyRefused:
            return False
        return True


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


@pytest.mark.parametrize("separator", SEPARATORS, ids=[f"U+{ord(s):04X}" for s in SEPARATORS])
def test_a_separator_in_a_comment_does_not_make_a_second_line(site: Site, separator: str) -> None:
    line, blob = new_key()
    site.authorize(f'from="{ALLOWED}" {line} ops{separator}{line}\n'.encode())
    assert site.allowed(blob, ALLOWED)
    assert not site.allowed(blob, FORBIDDEN)  # the bypass: the hidden copy had no from=


@pytest.mark.parametrize("separator", SEPARATORS, ids=[f"U+{ord(s):04X}" for s in SEPARATORS])
def test_a_separator_does_not_end_an_expired_line_either(site: Site, separator: str) -> None:
    line, blob = new_key()
    site.authorize(f'expiry-time="20200101Z" {line} x{separator}{line}\n'.encode())
    assert not site.allowed(blob, ALLOWED)


def test_the_whole_line_is_one_entry_with_its_comment() -> None:
    line, _ = new_key()
    parsed = parse_authorized_keys(f"restrict {line} a\x1cb\u2028c\rd\n".encode(), "ak")
    [entry] = parsed.entries
    assert entry.comment == "a\x1cb\u2028c\rd" and entry.meaning.pty is False
    assert parsed.problems == ()


def test_crlf_files_work_and_keep_their_options(site: Site) -> None:
    line, blob = new_key()
    other, other_blob = new_key()
    site.authorize(f'from="{ALLOWED}" {line}\r\n{other}\r\n'.encode())
    assert site.allowed(blob, ALLOWED) and not site.allowed(blob, FORBIDDEN)
    assert site.allowed(other_blob, FORBIDDEN)


@pytest.mark.parametrize("separator", ["\v", "\x1c", "\u2028", "\xa0"])
def test_fields_are_separated_by_space_and_tab_only(separator: str) -> None:
    line, _ = new_key()
    key_type, b64 = line.split()
    assert parse_authorized_keys(f"{key_type}{separator}{b64}\n".encode(), "ak").entries == ()
    assert len(parse_authorized_keys(f"{key_type}\t{b64}\n".encode(), "ak").entries) == 1


def test_a_nul_ends_what_sshd_sees_of_a_line() -> None:
    assert [text for _, text in file_lines(b"one\0two\nthree\r\n\n")] == ["one", "three\r", ""]


@pytest.mark.parametrize("separator", SEPARATORS, ids=[f"U+{ord(s):04X}" for s in SEPARATORS])
def test_revoked_keys_with_a_separator_in_a_comment(site: Site, separator: str) -> None:
    """Before: the comment's tail was an 'unreadable line', so every key was refused."""
    revoked_line, revoked_blob = new_key()
    good_line, good_blob = new_key()
    site.authorize(f"{revoked_line}\n{good_line}\n".encode())
    site.revoked.write_bytes(f"{revoked_line} stolen{separator}laptop\n".encode())
    assert not site.allowed(revoked_blob, ALLOWED)
    assert site.allowed(good_blob, ALLOWED)


@pytest.mark.parametrize("separator", SEPARATORS, ids=[f"U+{ord(s):04X}" for s in SEPARATORS])
def test_trusted_ca_file_with_a_separator_in_a_comment(tmp_path: Path, separator: str) -> None:
    ca_line, ca_blob = new_key()
    other_line, other_blob = new_key()
    path = tmp_path / "cas"
    path.write_bytes(f"{ca_line} ops CA{separator}{other_line}\n".encode())
    trusted = TrustedCAs(str(path))
    assert trusted.contains(ca_blob)
    assert not trusted.contains(other_blob)  # hidden in a comment: not a line of its own
