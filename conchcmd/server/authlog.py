"""Authentication log lines in OpenSSH sshd's words, so that fail2ban, SIEM rules and people who
know sshd's log read them as they read sshd's (`Accepted publickey for admin from 203.0.113.7 port
55844 ssh2: ED25519 SHA256:...`).

They go to AUTH_LOG_NAMESPACE (syslog facility authpriv). One deliberate difference from sshd:
text the client chooses (user names, certificate key IDs) has its spaces escaped as well as
its control and non-ASCII characters, so that a name like "x from 6.6.6.6 port 1 ssh2" can
neither end a field early nor put a foreign address where a filter looks for the client's (sshd
writes spaces as they come, and its fail2ban filter needs several look-aheads to cope).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.conch.ssh.common import getNS
from twisted.logger import Logger

from conchcmd.core.audit import escape_char, sanitise
from conchcmd.core.logtargets import AUTH_LOG_NAMESPACE, FastLogger
from conchcmd.policy.authorized_keys import fingerprint
from conchcmd.policy.certs import (
    CertificateReadings,
    CertificateRefused,
    is_certificate,
    parse_certificate,
    public_blob,
)

auth_log = FastLogger(namespace=AUTH_LOG_NAMESPACE)

#: sshd's `%.100s` for user names.
MAX_USER = 100
#: sshd's names for key types (sshkey_type()); certificates add "-CERT".
_KEY_TYPES = {
    b"ssh-ed25519": "ED25519",
    b"ssh-rsa": "RSA",
    b"ssh-dss": "DSA",
    b"ecdsa-sha2-nistp256": "ECDSA",
    b"ecdsa-sha2-nistp384": "ECDSA",
    b"ecdsa-sha2-nistp521": "ECDSA",
    b"sk-ssh-ed25519@openssh.com": "ED25519-SK",
    b"sk-ecdsa-sha2-nistp256@openssh.com": "ECDSA-SK",
}
_CERT_SUFFIX = b"-cert-v01@openssh.com"


def log_word(value: str | bytes, limit: int = MAX_USER) -> str:
    """Client-chosen text as one word of a log line, in printable ASCII: `sanitise` (controls,
    separators, bidi controls, invisible characters escaped), then the space and every
    non-ASCII character escaped too, as sshd escapes every non-ASCII byte of its log: a user
    name with a Cyrillic "o" (U+043E) or a combining mark must not read as "root", and the text
    can never look like more than one field."""
    text = sanitise(value, limit)
    if text.isascii():  # (a flag CPython keeps: no scan) sanitise escaped ASCII's other whitespace
        return text.replace(" ", "\\x20") if " " in text else text
    return _NOT_A_WORD.sub(_escaped, text)


#: What sanitise leaves that a log word must not hold: the space and any non-ASCII character.
_NOT_A_WORD = re.compile("[^!-~]")


def _escaped(match: re.Match[str]) -> str:
    return escape_char(match.group())


def key_type_name(blob_type: bytes) -> str:
    """sshd's name for a key or certificate type ("ED25519", "RSA-CERT"), "unknown" if none."""
    if blob_type.endswith(_CERT_SUFFIX):
        plain = blob_type[: -len(_CERT_SUFFIX)]  # sk-ssh-ed25519-cert-v01@openssh.com: sk-ssh-ed25519@openssh.com
        base = _KEY_TYPES.get(plain) or _KEY_TYPES.get(plain + b"@openssh.com")
        return f"{base}-CERT" if base else "unknown"
    return _KEY_TYPES.get(blob_type, "unknown")


@dataclass(frozen=True)
class KeyInfo:
    """What sshd puts after "ssh2: " for a public key: its type and fingerprint, and for a
    certificate the key ID, serial and the CA's type and fingerprint."""

    key_type: str
    fingerprint: str
    cert_id: str | None = None
    serial: int | None = None
    ca_type: str | None = None
    ca_fingerprint: str | None = None

    @classmethod
    def of(cls, blob: bytes, readings: CertificateReadings | None = None) -> KeyInfo | None:
        """The description of a client's key blob (a certificate read through the server's
        `readings`, if given); None when it cannot be parsed (sshd then logs the line without one)."""
        try:
            blob_type = getNS(blob)[0]
        except (struct.error, IndexError, ValueError):
            return None
        if not is_certificate(blob):
            return cls(key_type_name(blob_type), fingerprint(blob))
        try:
            cert = parse_certificate(blob, readings)
            ca_blob = public_blob(cert.signature_key())
            return cls(
                key_type=key_type_name(blob_type),
                fingerprint=fingerprint(public_blob(cert.public_key())),
                cert_id=log_word(cert.key_id, 256),
                serial=cert.serial,
                ca_type=key_type_name(getNS(ca_blob)[0]),
                ca_fingerprint=fingerprint(ca_blob),
            )
        except (CertificateRefused, ValueError, struct.error, IndexError):
            return None

    def text(self) -> str:
        """sshd's words: `ED25519 SHA256:...` or `ED25519-CERT SHA256:... ID x (serial 5) CA ED25519 SHA256:...`."""
        if self.cert_id is None:
            return f"{self.key_type} {self.fingerprint}"
        return (
            f"{self.key_type} {self.fingerprint} ID {self.cert_id} (serial {self.serial}) "
            f"CA {self.ca_type} {self.ca_fingerprint}"
        )


#: Logged-in keys' descriptions a KeyInfos keeps (see KeyInfos), the oldest dropped first.
KEY_INFOS = 256


class KeyInfos:
    """`KeyInfo.of` for the keys of accepted logins, kept per server by the blob as sent: an
    operator's key logs in again and again, and its description follows from those bytes alone
    (the blob read as sshd reads it, its type and fingerprint). Only accepted keys are kept, at
    most `size` of them."""

    def __init__(self, size: int = KEY_INFOS, readings: CertificateReadings | None = None):
        self.size = size
        self.readings = readings
        self._known: dict[bytes, KeyInfo] = {}

    def of(self, blob: bytes, logged: Callable[[], bytes]) -> KeyInfo | None:
        """The description of `blob`, from `logged()` (the blob as sshd reads it) the first time."""
        info = self._known.get(blob)
        if info is None:
            info = KeyInfo.of(logged(), self.readings)
            if info is not None:
                if len(self._known) >= self.size:
                    del self._known[next(iter(self._known))]
                self._known[blob] = info
        return info


@dataclass(frozen=True)
class Client:
    """The connection an authentication line is about: address as sshd prints it ("::1", not
    "[::1]") and port, and the `peer` string of conchcmd's other lines and audit records."""

    host: str
    port: int
    peer: str

    def fields(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "peer": self.peer}


class AuthLog:
    """The authentication lines of one connection. `user` is the client's raw user name; each
    method escapes it (see `log_word`). `valid` says whether the name is one that can log in
    (sshd's "invalid user" otherwise)."""

    def __init__(self, client: Client, logger: Logger = auth_log):
        self.client = client
        self.log = logger

    def _user(self, user: str | bytes, valid: bool) -> dict[str, Any]:
        return {"user": log_word(user), "invalid": "" if valid else "invalid user ", **self.client.fields()}

    @staticmethod
    def _key(key: KeyInfo | None) -> dict[str, Any]:
        if key is None:
            return {"info": ""}
        return {"info": f": {key.text()}", "key_type": key.key_type, "fingerprint": key.fingerprint}

    def invalid_user(self, user: str | bytes) -> None:
        self.log.info("Invalid user {user} from {host} port {port}", **self._user(user, False))

    def accepted(self, method: str, user: str | bytes, key: KeyInfo | None = None) -> None:
        self.log.info(
            "Accepted {method} for {user} from {host} port {port} ssh2{info}",
            method=log_word(method, 32),
            **self._user(user, True),
            **self._key(key),
        )

    def failed(self, method: str | bytes, user: str | bytes, valid: bool, key: KeyInfo | None = None) -> None:
        self.log.info(
            "Failed {method} for {invalid}{user} from {host} port {port} ssh2{info}",
            method=log_word(method, 32),
            **self._user(user, valid),
            **self._key(key),
        )

    def sk_requirement_not_met(self, user: str | bytes, valid: bool, key: KeyInfo | None, requirement: str) -> None:
        """sshd's error for a good security-key signature without the touch or verification
        required (auth2-pubkey.c; its trailing space included), before its "Failed publickey"
        line. The key as sshd's format_key: type and fingerprint only, for a certificate too."""
        shown = f"{key.key_type} {key.fingerprint}" if key is not None else "(unknown)"
        self.log.error(
            "public key {key} signature for {invalid}{user} from {host} port {port} rejected: {requirement} ",
            key=shown,
            requirement=requirement,
            **self._user(user, valid),
        )

    def too_many_failures(self, user: str | bytes, valid: bool) -> None:
        """sshd's two lines when MaxAuthTries is reached (auth.c auth_maxtries_exceeded)."""
        fields = self._user(user, valid)
        self.log.error(
            "maximum authentication attempts exceeded for {invalid}{user} from {host} port {port} ssh2", **fields
        )
        self.log.info(
            "Disconnecting {who} {host} port {port}: Too many authentication failures [preauth]",
            who=_who(fields),
            **fields,
        )

    def closed_during_auth(self, user: str | bytes, valid: bool, *, client_disconnected: bool) -> None:
        """The client left before authenticating, after naming a user."""
        fields = self._user(user, valid)
        verb = "Disconnected from" if client_disconnected else "Connection closed by"
        self.log.info("{verb} {who} {host} port {port} [preauth]", verb=verb, who=_who(fields), **fields)

    def disconnected(self, user: str | bytes) -> None:
        """An authenticated connection ended."""
        self.log.info("Disconnected from user {user} {host} port {port}", **self._user(user, True))


def _who(fields: dict[str, Any]) -> str:
    """sshd's connection preamble during authentication: "authenticating user NAME" or "invalid user NAME"."""
    return f"{fields['invalid'] or 'authenticating user '}{fields['user']}"
