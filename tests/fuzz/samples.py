"""Inputs the fuzz targets share: key, certificate and CA lines from the corpus, the cipher/MAC
suites, and `mangled`, an attacker's edits of a valid blob. (A module of its own, as guard.py and
wire.py are: test modules import it, not each other.)"""

from __future__ import annotations

import base64

from hypothesis import strategies as st
from support.oddblobs import ENCODINGS

from conchcmd.core.config import CIPHERS, MACS, OPTIONAL_MACS
from fuzz.guard import CORPUS

KEY_LINES = (CORPUS / "authorized_keys" / "openssh_keys.txt").read_text().splitlines()
CERT_LINES = [p.read_text().strip() for p in sorted((CORPUS / "certificates").glob("*-cert.txt"))]
CERT_BLOBS = [base64.b64decode(line.split()[1]) for line in CERT_LINES]
CA_LINE = (CORPUS / "certificates" / "ca.pub.txt").read_text().strip()
_KINDS = {"ssh-ed25519": "ed25519", "ecdsa-sha2-nistp256": "p256", "ecdsa-sha2-nistp384": "p384", "ssh-rsa": "rsa"}
#: KEY_LINES' keys written otherwise than ssh-keygen writes them (support/oddblobs.py): trailing
#: bytes, the other curve's name, compressed points, ... (sshd refuses most, takes some).
ODD_KEY_LINES = [
    f"{kind} {base64.b64encode(encoding.rewrite(base64.b64decode(blob))).decode()} {encoding.name}"
    for kind, blob, *_ in (line.split() for line in KEY_LINES)
    for encoding in ENCODINGS
    if _KINDS.get(kind) in encoding.kinds
]
ODD_BLOBS = [base64.b64decode(line.split()[1]) for line in ODD_KEY_LINES]
#: What str.splitlines() ends a line at besides \n and \r; OpenSSH files end lines at \n only.
OTHER_LINE_BREAKS = "\v\f\x1c\x1d\x1e\x85\u2028\u2029"
BROKEN_SIGNATURE_KEY = (CORPUS / "certificates" / "regression_broken_signature_key_length.txt").read_text().split()

AEAD = ("chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com", "aes128-gcm@openssh.com")
SUITES = [(c, "") for c in AEAD] + [(c, m) for c in CIPHERS if c not in AEAD for m in (*MACS, *OPTIONAL_MACS)]
SUITE_IDS = [f"{c}+{m}" if m else c for c, m in SUITES]


@st.composite
def mangled(draw: st.DrawFn, original: bytes) -> bytes:
    """`original` with a few bytes changed, cut short, or with bytes added: an attacker's edits."""
    out = bytearray(original)
    for _ in range(draw(st.integers(0, 3))):
        out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.one_of(st.none(), st.integers(0, len(out))))
    if cut is not None:
        out = out[:cut]
    out += draw(st.sampled_from([b"", b"\0", b"\0\0\0\x10extra", b"\xff\xff\xff\xff"]))
    return bytes(out)
