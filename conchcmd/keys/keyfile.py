"""The text conventions of OpenSSH's key files (authorized_keys, TrustedUserCAKeys, RevokedKeys),
as sshd reads them, so conchcmd reads every such file exactly as sshd would.

Lines end at "\\n" only (sshd reads with getline), and a NUL ends what sshd sees of a line. Fields
are separated by spaces and tabs only: Python's `str.splitlines()` and `str.split()` also break at
\\v, \\f, \\r, \\x1c-\\x1e, U+0085, U+2028 and U+2029, which let a key comment become a line of
its own (issue 10, defect 3). Base64 is decoded as OpenSSH's b64_pton does.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from dataclasses import dataclass

#: The key types sshd's key reader knows, and the key type their blob must hold.
LINE_KEY_TYPES: dict[str, str] = {
    name: name
    for name in (
        "ssh-ed25519",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "ssh-rsa",
        "ssh-dss",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    )
}
LINE_KEY_TYPES.update({"rsa-sha2-256": "ssh-rsa", "rsa-sha2-512": "ssh-rsa"})
CERT_SUFFIX = "-cert-v01@openssh.com"
LINE_KEY_TYPES.update(
    {
        name.removesuffix("@openssh.com") + CERT_SUFFIX: blob_type.removesuffix("@openssh.com") + CERT_SUFFIX
        for name, blob_type in LINE_KEY_TYPES.items()
    }
)

_C_SPACE = re.compile(r"[ \t\n\v\f\r]")  # C isspace() in the C locale
_BASE64 = re.compile(r"[A-Za-z0-9+/]*")


def file_lines(data: bytes) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line, as sshd sees it: split at b"\\n" only, cut at a NUL.

    Text is decoded as UTF-8 with surrogateescape, so every byte keeps its place and nothing
    that is not ASCII can look like a separator."""
    pieces = data.split(b"\n")
    if pieces and pieces[-1] == b"":
        pieces.pop()
    for number, raw in enumerate(pieces, 1):
        yield number, raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def skip_space(text: str, i: int) -> int:
    """sshd's skip_space(): past spaces and tabs only."""
    while i < len(text) and text[i] in " \t":
        i += 1
    return i


def field_end(text: str, i: int) -> int:
    """The end of the field at i: the next space or tab (strcspn(cp, " \\t"))."""
    while i < len(text) and text[i] not in " \t":
        i += 1
    return i


def b64_decode(text: str) -> bytes | None:
    """OpenSSH's b64_pton: C whitespace anywhere is skipped, padding must be exact, and the bits
    past the last whole byte must be zero. None when it would fail."""
    compact = _C_SPACE.sub("", text)
    data, equals, pad = compact.partition("=")
    if not _BASE64.fullmatch(data):
        return None
    state = len(data) % 4
    if (equals + pad) != {0: "", 2: "==", 3: "="}.get(state, "invalid") or (state == 0 and equals):
        return None
    decoded = base64.b64decode(data + equals + pad)
    if state:  # the slop bits of the last character
        last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".index(data[-1])
        if last & (0x0F if state == 2 else 0x03):
            return None
    return decoded


@dataclass(frozen=True)
class KeyField:
    """A `TYPE BASE64` pair read from a line: the type named, the blob, and where the comment starts."""

    key_type: str
    blob: bytes
    comment_start: int


def read_key(text: str, i: int) -> KeyField | None:
    """sshkey_read(): TYPE, spaces/tabs, BASE64 up to the next space/tab, spaces/tabs. The blob's
    own type is checked by the caller once it is parsed. None when sshd's reader would fail."""
    end = field_end(text, i)
    if end == len(text):  # a type must be followed by a space or tab
        return None
    key_type = text[i:end]
    if key_type not in LINE_KEY_TYPES:
        return None
    start = skip_space(text, end)
    if start == len(text):
        return None
    stop = field_end(text, start)
    blob = b64_decode(text[start:stop])
    if blob is None:
        return None
    return KeyField(key_type, blob, skip_space(text, stop))
