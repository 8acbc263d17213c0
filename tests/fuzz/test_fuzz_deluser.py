"""Fuzz target: `deluser` over authorized_keys files of key lines, options, comments, junk and
the separators sshd does not split at. Removing a fingerprint takes out exactly the lines whose
key login reads as that key, leaves every other byte as it was, and the result reads (as login
reads it) as the old entries minus the removed key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conchcmd.core.config import Config
from conchcmd.edge.usercmds import remove_keys
from conchcmd.policy.authorized_keys import fingerprint, parse_authorized_keys
from fuzz.guard import bounded, fuzz
from fuzz.samples import KEY_LINES, OTHER_LINE_BREAKS

lines = st.one_of(
    st.sampled_from(KEY_LINES),
    st.sampled_from(KEY_LINES).map(lambda k: f'restrict,command="help" {k}'),
    st.sampled_from(KEY_LINES).map(lambda k: f"{k} comment{OTHER_LINE_BREAKS[0]}{KEY_LINES[1]}"),
    st.sampled_from(KEY_LINES).map(lambda k: f"{k}\0{KEY_LINES[2]}"),
    st.sampled_from(KEY_LINES).map(lambda k: f"{k}\r"),
    st.sampled_from(["", "# comment", "garbage", "\t", "ssh-ed25519", 'from="x ' + KEY_LINES[0]]),
    st.text(alphabet='ab \t\r\v\0"#,=', max_size=12),
)


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("deluser-fuzz")


@fuzz(150)
@given(body=st.lists(lines, min_size=1, max_size=8), final_newline=st.booleans(), pick=st.integers(0, 7))
def test_deluser_removes_exactly_the_key(keys_dir: Path, body: list[str], final_newline: bool, pick: int) -> None:
    path = keys_dir / "alice"
    data = ("\n".join(body) + ("\n" if final_newline else "")).encode("utf-8", "surrogateescape")
    path.write_bytes(data)
    os.chmod(path, 0o600)
    before = parse_authorized_keys(data, str(path))
    if not before.entries:
        return
    target = fingerprint(before.entries[pick % len(before.entries)].blob)
    with bounded():
        removed = remove_keys(Config(authorized_keys=str(keys_dir / "%u")), "alice", [target])
    gone = {e.line for e in before.entries if fingerprint(e.blob) == target}
    assert {line for line, _, _ in removed.keys} == gone
    pieces = data.split(b"\n")
    assert path.read_bytes() == b"\n".join(p for n, p in enumerate(pieces, 1) if n not in gone)
    after = parse_authorized_keys(path.read_bytes(), str(path))
    assert [(e.blob, e.options) for e in after.entries] == [
        (e.blob, e.options) for e in before.entries if fingerprint(e.blob) != target
    ]
