"""Differential harness: a real sshd and a real `conchcmd serve` reading the same files.

Both read one authorized_keys file (in a directory sshd's StrictModes accepts), one
TrustedUserCAKeys file and one RevokedKeys file; an asyncssh client tries each case's key
against both, from the case's loopback source address, and only authenticates. `SkKeyPair`
lets that client sign with a software FIDO2 authenticator (support.skauth), flags and all.
The `server_pair` fixture is in tests/differential/conftest.py.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import asyncssh
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import SSHCertificateBuilder, SSHCertificateType

from support.authcases import SOURCES, Case, private_openssh
from support.server import LISTENING
from support.serverfiles import ServerFiles, wait_for
from support.skauth import SoftwareAuthenticator
from support.sshd import Sshd

LISTENING6 = re.compile(rb"conchcmd: listening on .* \(::1:(\d+)\)")
ATTEMPT_TIMEOUT = 30.0


class FileLines(Protocol):
    """What a case puts in the shared files (authcases.Case, and the sk cases)."""

    lines: list[bytes]
    trusted: list[bytes]
    revoked: list[bytes]


@dataclass
class Files:
    """The files both servers read."""

    directory: Path
    user: str

    @property
    def authorized_keys(self) -> Path:
        return self.directory / "authorized_keys" / self.user

    @property
    def trusted(self) -> Path:
        return self.directory / "trusted_user_ca_keys"

    @property
    def revoked(self) -> Path:
        return self.directory / "revoked_keys"

    def write(self, cases: Sequence[FileLines]) -> None:
        """Replace all three files (each through a new inode, so no reader sees half a file)."""
        for path, chunks in (
            (self.authorized_keys, [line for case in cases for line in case.lines]),
            (self.trusted, [line for case in cases for line in case.trusted]),
            (self.revoked, [line for case in cases for line in case.revoked]),
        ):
            temporary = path.with_name(path.name + ".new")
            temporary.write_bytes(b"".join(chunk + b"\n" for chunk in chunks))
            temporary.chmod(0o644)
            os.replace(temporary, path)


@dataclass
class ConchServer(ServerFiles):
    """`conchcmd serve` with the shared files, and limits loose enough for hundreds of refusals."""

    base: Path
    files: Files
    ipv6: bool = True  # also listen on ::1
    extra: dict[str, Any] = field(default_factory=dict)  # more settings (e.g. pubkey_auth_options)
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    port6: int = 0
    returncode: int | None = None
    _log_file: Any = field(default=None, repr=False)

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        syslog = self.base / "syslog"
        syslog.write_text("nothing\n")
        settings = {
            "listen": ["tcp:0:interface=127.0.0.1", *(["tcp6:0:interface=\\:\\:1"] if self.ipv6 else [])],
            "host_keys_dir": "keys",
            "authorized_keys": str(self.files.directory / "authorized_keys" / "%u"),
            "trusted_user_ca_keys": str(self.files.trusted),
            "revoked_keys": str(self.files.revoked),
            "audit_log": "audit.jsonl",
            "max_clients": 100,
            "max_startups": 200,
            "max_startups_per_source": 100,
            "max_auth_tries": 10,
            "penalty_seconds": 0,
            "penalty_max_seconds": 0,
            **self.extra,
        }
        self.write_settings(settings, {"lastlog": {"path": str(syslog)}})
        self.spawn()

        def listening() -> tuple[int, int] | None:
            log = self.log_bytes()
            v4, v6 = LISTENING.search(log), LISTENING6.search(log)
            if v4 and (v6 or not self.ipv6):
                return int(v4.group(1)), int(v6.group(1)) if v6 else 0
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"conchcmd exited with {self.proc.returncode}:\n{self.log_text()}")
            return None

        self.port, self.port6 = wait_for(listening, 15.0, "conchcmd's listening lines")


@dataclass(frozen=True)
class Target:
    """Where one server listens: a port on 127.0.0.1 and one on ::1."""

    port: int
    port6: int

    def address(self, source: str) -> tuple[str, int]:
        return ("::1", self.port6) if ":" in source else ("127.0.0.1", self.port)


@dataclass
class Pair:
    """sshd and conchcmd over the same files, and the user both authenticate."""

    sshd: Sshd
    conch: ConchServer
    files: Files

    @property
    def user(self) -> str:
        return self.files.user

    @property
    def sources(self) -> tuple[str, ...]:
        """The generator's client addresses this machine can use (::1 only with IPv6)."""
        return SOURCES if self.sshd.ipv6 else tuple(s for s in SOURCES if ":" not in s)

    @property
    def sshd_target(self) -> Target:
        return Target(self.sshd.port, self.sshd.port)

    @property
    def conch_target(self) -> Target:
        return Target(self.conch.port, self.conch.port6)


# -- the client ------------------------------------------------------------------------------


class AttemptError(Exception):
    """An attempt ended neither in success nor in a refusal of the key."""


def _certificate_pair(key: Any, case: Case) -> Any:
    """asyncssh's key pair for a certificate it would refuse to parse (unknown critical options,
    key ids that are not UTF-8, ...): made with a stand-in certificate for the same key, then
    presenting the case's certificate blob exactly as generated."""
    stand_in = (
        SSHCertificateBuilder()
        .public_key(case.key.public_key())
        .serial(0)
        .type(SSHCertificateType.USER)
        .key_id(b"stand-in")
        .valid_principals([b"stand-in"])
        .valid_after(0)
        .valid_before((1 << 64) - 1)
        .sign(ed25519.Ed25519PrivateKey.generate())
    )
    cert = asyncssh.import_certificate(stand_in.public_bytes())
    (pair,) = (p for p in asyncssh.load_keypairs([(key, cert)]) if p.algorithm.endswith(b"-cert-v01@openssh.com"))
    pair.public_data = base64.b64decode(case.cert.split()[1])
    return pair


class SkKeyPair(asyncssh.SSHKeyPair):
    """asyncssh's client key for a software sk authenticator: it presents the token's key (or the
    certificate the token carries) and signs with `sign` (by default the token's own signature,
    with the flags and counter the token is set to), so a test can send any signature it builds."""

    def __init__(self, token: SoftwareAuthenticator, sign: Callable[[bytes], bytes] | None = None):
        algorithm = token.sshType()
        super().__init__(algorithm, token.key_type, (token.key_type,), (algorithm,), token.blob(), None)
        self.token = token
        self.own_signature = sign is None  # the token's signature, with its flags and counter
        self._sign = sign or token.sign

    def set_sig_algorithm(self, sig_algorithm: bytes) -> None:
        """One signature algorithm per sk key; asyncssh would otherwise name a certificate by its
        plain key type."""

    def sign(self, data: bytes) -> bytes:
        return self._sign(data)


async def login(target: Target, user: str, client_keys: list[Any], source: str) -> bool:
    """Authenticate with `client_keys` from `source`; True if accepted, False if refused."""
    host, port = target.address(source)
    try:
        conn = await asyncio.wait_for(
            asyncssh.connect(
                host,
                port,
                username=user,
                client_keys=client_keys,
                local_addr=(source, 0),
                known_hosts=None,
                agent_path=None,
                config=(),
                password=None,
                kbdint_auth=False,
                gss_auth=False,
                preferred_auth="publickey",
            ),
            ATTEMPT_TIMEOUT,
        )
    except asyncssh.PermissionDenied:
        return False
    except (OSError, asyncssh.Error, TimeoutError) as e:
        raise AttemptError(f"{type(e).__name__}: {e}") from e
    conn.close()
    await conn.wait_closed()
    return True


async def attempt(target: Target, user: str, case: Case) -> bool:
    """Authenticate with the case's key (or certificate) from its source; True if accepted."""
    key = asyncssh.import_private_key(private_openssh(case.key))
    client_keys: list[Any]
    client_keys = [_certificate_pair(key, case)] if case.cert is not None else [key]
    return await login(target, user, client_keys, case.source)


# -- what the comparisons allow --------------------------------------------------------------

README = Path(__file__).resolve().parents[2] / "README.md"
#: Authentication log lines conchcmd writes where sshd writes none (a failed key for an invalid user).
ONLY_CONCHCMD = re.compile(r"Failed \S+ for invalid user ")


def deliberate_differences() -> set[str]:
    """The tags listed in the README's "Differences from sshd" section: cases carrying one may be
    refused by conchcmd where sshd accepts them (never the other way round)."""
    text = README.read_text()
    section = re.search(r"^### Differences from sshd\n(.*?)(?=^#)", text, re.S | re.M)
    assert section, "README has no '### Differences from sshd' section"
    return set(re.findall(r"^- `([a-z0-9-]+)`", section.group(1), re.M))
