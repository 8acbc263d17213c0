"""Fuzz targets: `conchcmd check` (the operator's dry run: argv, a key or certificate file, a
client address, a command line) and the address patterns behind from= and source-address.

`conchcmd check` must answer with exit code 0, 1 or 2 (or argparse's usage error), never a
traceback; match_address_list never raises, split_patterns raises only PatternError, and a
negated pattern that matches always refuses.
"""

from __future__ import annotations

import base64
import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from twisted.conch.ssh.common import NS

from conchcmd.core.hostmatch import PatternError, match_address_list, split_patterns
from conchcmd.edge import cli
from conchcmd.policy.authorized_keys import parse_authorized_keys
from fuzz.guard import CORPUS, bounded, fuzz
from fuzz.samples import CA_LINE, CERT_LINES, KEY_LINES


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("fuzz-cli")
    users = base / "authorized_keys"
    users.mkdir()
    (users / "admin").write_text((CORPUS / "authorized_keys" / "options.txt").read_text())
    (users / "admin").chmod(0o600)
    (base / "ca.pub").write_text(CA_LINE + "\n")
    (base / "revoked").write_text("serial: 43\n")
    (base / "conchcmd.toml").write_text(
        'authorized_keys = "authorized_keys/%u"\ntrusted_user_ca_keys = "ca.pub"\nrevoked_keys = "revoked"\n'
        '[users.admin]\ncommands = ["lastlog"]\n'
    )
    yield base


def mangle(line: str, data: st.DataObject) -> str:
    kind, b64 = line.split()[:2]
    blob = bytearray(base64.b64decode(b64))
    for _ in range(data.draw(st.integers(0, 2))):
        blob[data.draw(st.integers(0, len(blob) - 1))] ^= data.draw(st.integers(1, 255))
    kind = data.draw(st.sampled_from([kind, "ssh-ed25519-cert-v01@openssh.com", "ssh-rsa"]))
    return f"{kind} {base64.b64encode(blob).decode()}"


key_texts = st.one_of(
    st.sampled_from(KEY_LINES + CERT_LINES),
    st.text(max_size=40),
    st.sampled_from(["", "ssh-ed25519", "ssh-ed25519 !!!", "-----BEGIN OPENSSH PRIVATE KEY-----\n"]),
)
addresses = st.one_of(
    st.sampled_from(["10.0.0.1", "10.1.2.3", "::1", "::ffff:10.0.0.1", "192.0.2.1", "fe80::1%eth0", "host.example"]),
    st.text(max_size=15),
)


def run_check(argv: list[str]) -> int:
    out, err = io.StringIO(), io.StringIO()
    with bounded(), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv, out=out)
        except SystemExit as e:  # argparse's usage error
            assert e.code == 2, e.code
            return 2
    assert code in (0, 1, 2), code
    assert "Traceback" not in out.getvalue() + err.getvalue()
    return code


@fuzz(150)
@given(
    user=st.one_of(st.sampled_from(["admin", "root", "alice", "-x", "", "a/b", "admin\0"]), st.text(max_size=10)),
    key=key_texts,
    peer=st.one_of(st.none(), addresses),
    command=st.one_of(
        st.none(), st.sampled_from(["lastlog -n 5", "comphash /etc/hosts", "'", "help"]), st.text(max_size=20)
    ),
    mangled=st.booleans(),
    data=st.data(),
)
@example(user="admin", key=KEY_LINES[0], peer="10.0.0.1", command="lastlog", mangled=False, data=None)
def test_check_command(
    setup: Path, user: str, key: str, peer: str | None, command: str | None, mangled: bool, data: st.DataObject
) -> None:
    if mangled and len(key.split()) >= 2 and key in KEY_LINES + CERT_LINES:
        key = mangle(key, data)
    key_file = setup / "key.pub"
    key_file.write_text(key, encoding="utf-8", errors="surrogateescape")
    argv = ["check", "--config", str(setup / "conchcmd.toml"), f"--user={user}", "--key", str(key_file)]
    argv += [f"--from={peer}"] if peer is not None else []
    argv += [f"--command={command}"] if command is not None else []
    run_check(argv)


def test_check_refuses_a_certificate_of_an_unknown_type(setup: Path) -> None:
    """Found by test_check_command (long run): a certificate with its type's length prefix changed.
    cryptography's UnsupportedAlgorithm escaped certs.parse_certificate: a traceback, not 'REFUSED'."""
    blob = NS(b"ecdsa-sha2-nistp256-cert-v01@openssh.com\0\0\0") + bytes(40)
    key_file = setup / "odd-cert.pub"
    key_file.write_text("ecdsa-sha2-nistp256-cert-v01@openssh.com " + base64.b64encode(blob).decode() + "\n")
    argv = ["check", "--config", str(setup / "conchcmd.toml"), "--user", "admin", "--key", str(key_file)]
    assert run_check(argv) == 1


def test_check_command_allows_the_real_key(setup: Path) -> None:
    """The configuration the fuzzing runs against does let someone in (so the codes mean something)."""
    codes = []
    for line in (KEY_LINES[0], KEY_LINES[3]):  # in admin's authorized_keys (options.txt), and not
        key_file = setup / "real.pub"
        key_file.write_text(line + "\n")
        argv = ["check", "--config", str(setup / "conchcmd.toml"), "--user", "admin", "--key", str(key_file)]
        codes.append(run_check([*argv, "--from", "10.0.0.1"]))
    assert codes == [0, 1]


patterns = st.lists(
    st.one_of(
        st.sampled_from(
            ["10.0.0.0/8", "!10.1.*", "*", "::1", "::/0", "10.0.0.?", "!*", "fe80::/10", "0.0.0.0/0", "1.2.3.4/33"]
        ),
        st.text(alphabet="0123456789abcdef:.*?!/", max_size=12),
        st.text(max_size=8),
    ),
    max_size=5,
).map(",".join)


@fuzz(400)
@given(value=patterns, host=addresses)
@example(value="1*" * 30 + "2", host="1" * 60)
def test_address_patterns(value: str, host: str) -> None:
    with bounded():
        try:
            listed = split_patterns(value)
        except PatternError:
            listed = value.split(",")  # the matcher must still not raise on unchecked patterns
        admitted = match_address_list(host, listed)
        negated = [p[1:] for p in listed if p.startswith("!")]
        if any(match_address_list(host, [p]) for p in negated if p):
            assert not admitted


_added = iter(range(10**9))


@fuzz(150)
@given(key=key_texts, mangled=st.booleans(), comment=st.text(max_size=20), data=st.data())
@example(key="(", mangled=False, comment="", data=None)  # Conch's LSH guess: AssertionError
@example(key="ssh-ed25519 ew==", mangled=False, comment="", data=None)  # '{': Conch's SEXP guess
@example(  # found in a long run: cryptography's NotImplementedError for a compressed EC point
    key=(CORPUS / "certificates" / "regression_compressed_ec_point.txt").read_text().strip(),
    mangled=False,
    comment="",
    data=None,
)
@example(key=KEY_LINES[0].split()[0] + " " + KEY_LINES[4].split()[1], mangled=False, comment="", data=None)
def test_adduser(setup: Path, key: str, mangled: bool, comment: str, data: st.DataObject) -> None:
    """`conchcmd adduser` writes a line the authorized_keys parser accepts as it is, or refuses (2)."""
    if mangled and key in KEY_LINES + CERT_LINES:
        key = mangle(key, data)
    user = f"u{next(_added)}"
    key_file = setup / "add.pub"
    key_file.write_text(f"{key} {comment}", encoding="utf-8", errors="surrogateescape")
    code = run_check(["adduser", "--config", str(setup / "conchcmd.toml"), user, str(key_file)])
    added = setup / "authorized_keys" / user
    if code == 0:
        parsed = parse_authorized_keys(added.read_text(), "added")
        assert len(parsed.entries) == 1 and not parsed.problems, parsed.problems
    else:
        assert code == 2 and not added.exists()
