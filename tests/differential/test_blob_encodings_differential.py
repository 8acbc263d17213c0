"""Key blobs written otherwise than ssh-keygen writes them: conchcmd accepts and refuses exactly
what a real sshd does, whether the odd blob is in the authorized_keys line, sent by the client,
or both; the refused line is logged by conchcmd with its reason and the file's other lines work.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field
from typing import Any

import asyncssh
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from support.authcases import private_openssh
from support.differential import Pair, _certificate_pair, deliberate_differences, login
from support.oddblobs import (
    ENCODINGS,
    KINDS,
    OddEncoding,
    curve_nul,
    private_key,
    public_blob,
    type_nul,
    user_certificate,
)
from support.serverfiles import wait_for

pytestmark = pytest.mark.differential

#: Where the odd blob is: in the line (the client sends the key as ssh-keygen writes it), in
#: what the client sends (the line as ssh-keygen writes it), or in both.
PLACES = ("line", "client", "both")
LINE_TYPES = {"ed25519": "ssh-ed25519", "p256": "ecdsa-sha2-nistp256", "p384": "ecdsa-sha2-nistp384", "rsa": "ssh-rsa"}


@dataclass
class BlobCase:
    encoding: OddEncoding | None  # None: the key as ssh-keygen writes it everywhere
    kind: str
    place: str
    key: Any = field(init=False)
    line_blob: bytes = field(init=False)
    client_blob: bytes = field(init=False)
    trusted: list[bytes] = field(default_factory=list)
    revoked: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.key = private_key(self.kind)
        canonical = public_blob(self.key)
        odd = canonical if self.encoding is None else self.encoding.rewrite(canonical)
        self.line_blob = odd if self.place in ("line", "both") else canonical
        self.client_blob = odd if self.place in ("client", "both") else canonical

    @property
    def name(self) -> str:
        return f"{self.encoding.name if self.encoding else 'as ssh-keygen writes it'} ({self.kind}, {self.place})"

    @property
    def lines(self) -> list[bytes]:
        text = base64.b64encode(self.line_blob).decode()
        return [f"{LINE_TYPES[self.kind]} {text} {self.kind}-{self.place}".encode()]

    async def attempt(self, pair: Pair, target: Any) -> bool:
        keypair = asyncssh.load_keypairs([asyncssh.import_private_key(private_openssh(self.key))])[0]
        keypair.public_data = self.client_blob  # signed over as sent: both servers verify these bytes
        return await login(target, pair.user, [keypair], "127.0.0.1")


@dataclass
class CaCase:
    """A certificate whose CA key is written oddly in the user's cert-authority line, in the
    certificate's signature key field (signed over as written), or in both."""

    encoding: OddEncoding | None
    kind: str
    place: str
    user: str
    key: ed25519.Ed25519PrivateKey = field(init=False, default_factory=ed25519.Ed25519PrivateKey.generate)
    cert: str = field(init=False)
    line_blob: bytes = field(init=False)
    trusted: list[bytes] = field(default_factory=list)
    revoked: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        ca = private_key(self.kind)
        canonical = public_blob(ca)
        rewrite = self.encoding.rewrite if self.encoding else None
        self.line_blob = rewrite(canonical) if rewrite and self.place in ("line", "both") else canonical
        blob = user_certificate(ca, self.key, self.user, rewrite if self.place in ("client", "both") else None)
        self.cert = f"ssh-ed25519-cert-v01@openssh.com {base64.b64encode(blob).decode()}"

    @property
    def tags(self) -> set[str]:
        """README's deliberate differences this case shows: cryptography reads certificates."""
        if self.encoding is None or self.place == "line":
            return set()
        return {"ca-key-nul"} if self.encoding.rewrite in (type_nul, curve_nul) else set()

    @property
    def name(self) -> str:
        written = self.encoding.name if self.encoding else "as ssh-keygen writes it"
        return f"CA key: {written} ({self.kind}, {self.place})"

    @property
    def lines(self) -> list[bytes]:
        text = base64.b64encode(self.line_blob).decode()
        return [f"cert-authority {LINE_TYPES[self.kind]} {text} ca-{self.kind}-{self.place}".encode()]

    async def attempt(self, pair: Pair, target: Any) -> bool:
        keypair = _certificate_pair(asyncssh.import_private_key(private_openssh(self.key)), self)  # type: ignore[arg-type]
        return await login(target, pair.user, [keypair], "127.0.0.1")


def _cases(user: str) -> list[BlobCase | CaCase]:
    cases: list[BlobCase | CaCase] = [BlobCase(None, kind, "both") for kind in KINDS]
    cases += [CaCase(None, kind, "both", user) for kind in KINDS]
    for encoding in ENCODINGS:
        for kind in encoding.kinds:
            cases += [BlobCase(encoding, kind, place) for place in PLACES]
            cases += [CaCase(encoding, kind, place, user) for place in PLACES]
    return cases


async def _verdicts(pair: Pair, cases: list[BlobCase | CaCase]) -> list[tuple[bool, bool]]:
    semaphore = asyncio.Semaphore(8)

    async def one(case: BlobCase | CaCase) -> tuple[bool, bool]:
        async with semaphore:
            return await case.attempt(pair, pair.sshd_target), await case.attempt(pair, pair.conch_target)

    return await asyncio.gather(*(one(c) for c in cases))


def test_odd_key_blobs_are_decided_as_sshd_decides(server_pair: Pair) -> None:
    cases = _cases(server_pair.user)
    server_pair.files.write(cases)
    verdicts = asyncio.run(_verdicts(server_pair, cases))
    table = [
        f"{case.name}: sshd {'accepts' if s else 'refuses'}, conchcmd {'accepts' if c else 'refuses'}"
        for case, (s, c) in zip(cases, verdicts, strict=True)
    ]
    print("[blob encodings]\n" + "\n".join(table))
    allowed = deliberate_differences()
    differ = [
        row
        for case, row, (s, c) in zip(cases, table, verdicts, strict=True)
        if s != c and not (s and not c and isinstance(case, CaCase) and case.tags & allowed)
    ]
    assert not differ, "decided differently from sshd:\n" + "\n".join(differ)
    # What OpenSSH 9.2 does with each encoding (so the generator's verdicts stay true).
    for case, (by_sshd, _) in zip(cases, verdicts, strict=True):
        assert by_sshd == (case.encoding is None or case.encoding.sshd_accepts), case.name

    # Each line sshd cannot read is logged by conchcmd with its reason, the others kept.
    def logged() -> str | None:
        text = server_pair.conch.log_text()
        return text if "trailing data after the key" in text else None

    text = wait_for(logged, 10.0, "conchcmd's refused-line log")
    for reason in (
        "line refused: bad key (trailing data after the key)",
        "line refused: bad key (curve name nistp384 does not match key type ecdsa-sha2-nistp256)",
        "line refused: bad key (EC point not in uncompressed form",
        "line refused: bad key (ssh-rsa key: negative number)",
        "line refused: bad key (Ed25519 key of 33 bytes, not 32)",
    ):
        assert reason in text, reason


@dataclass
class TrustedCaFile:
    """`trusted_user_ca_keys` holding one CA key, written oddly (sshd stops reading the file at a
    line it cannot read, so each case has the file to itself)."""

    case: CaCase

    @property
    def lines(self) -> list[bytes]:
        return []

    @property
    def trusted(self) -> list[bytes]:
        text = base64.b64encode(self.case.line_blob).decode()
        return [f"{LINE_TYPES[self.case.kind]} {text} ca".encode()]

    @property
    def revoked(self) -> list[bytes]:
        return []


def test_odd_trusted_ca_keys_are_decided_as_sshd_decides(server_pair: Pair) -> None:
    rows, differ = [], []
    for encoding in (None, *ENCODINGS):
        for kind in encoding.kinds if encoding else KINDS:
            case = CaCase(encoding, kind, "line", server_pair.user)
            server_pair.files.write([TrustedCaFile(case)])
            by_sshd, by_conch = asyncio.run(_verdicts(server_pair, [case]))[0]
            verdict = f"sshd {'accepts' if by_sshd else 'refuses'}, conchcmd {'accepts' if by_conch else 'refuses'}"
            row = f"trusted {case.name}: {verdict}"
            rows.append(row)
            if by_sshd != by_conch:
                differ.append(row)
            assert by_sshd == (encoding is None or encoding.sshd_accepts), row
    print("[trusted CA encodings]\n" + "\n".join(rows))
    assert not differ, "decided differently from sshd:\n" + "\n".join(differ)


@dataclass
class RevokedFile:
    """The key's authorized_keys line as ssh-keygen writes it, and its revoked_keys line written
    oddly (each case has the files to itself: sshd reads no further than a line it cannot read)."""

    case: BlobCase
    revoked_blob: bytes
    trusted: list[bytes] = field(default_factory=list)

    @property
    def lines(self) -> list[bytes]:
        return self.case.lines

    @property
    def revoked(self) -> list[bytes]:
        return [f"{LINE_TYPES[self.case.kind]} {base64.b64encode(self.revoked_blob).decode()}".encode()]


def test_a_key_revoked_by_an_odd_line_is_decided_as_sshd_decides(server_pair: Pair) -> None:
    """Read as a key (by value) or not readable (sshd then treats every key as revoked, as
    conchcmd does): either way the key is refused by both."""
    rows, differ = [], []
    for encoding in (None, *ENCODINGS):
        for kind in encoding.kinds if encoding else KINDS:
            case = BlobCase(None, kind, "both")
            canonical = public_blob(case.key)
            server_pair.files.write([RevokedFile(case, encoding.rewrite(canonical) if encoding else canonical)])
            by_sshd, by_conch = asyncio.run(_verdicts(server_pair, [case]))[0]
            verdict = f"sshd {'accepts' if by_sshd else 'refuses'}, conchcmd {'accepts' if by_conch else 'refuses'}"
            rows.append(
                f"revoked by a line: {encoding.name if encoding else 'as ssh-keygen writes it'} ({kind}): {verdict}"
            )
            if by_sshd != by_conch:
                differ.append(rows[-1])
    print("[revoked_keys encodings]\n" + "\n".join(rows))
    assert not differ, "decided differently from sshd:\n" + "\n".join(differ)
