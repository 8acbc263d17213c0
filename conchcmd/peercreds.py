"""What cred carries about the client: its address in the credentials (for `from=` and a
certificate's `source-address`), and its connection in the login's `mind` (for the realm)."""

from __future__ import annotations

from dataclasses import dataclass

from twisted.cred import credentials

from conchcmd.audit import AuditSink
from conchcmd.refusals import RepeatLog


class PeerSSHPrivateKey(credentials.SSHPrivateKey):
    """Conch's public-key credentials and the address the client connects from (None: unknown)."""

    def __init__(
        self,
        username: bytes,
        algName: bytes,
        blob: bytes,
        sigData: bytes | None,
        signature: bytes | None,
        peer_host: str | None,
    ):
        super().__init__(username, algName, blob, sigData, signature)
        self.peer_host = peer_host


class PeerUsernamePassword(credentials.UsernamePassword):
    """Cred's password credentials and the address the client connects from (None: unknown)."""

    def __init__(self, username: bytes, password: bytes, peer_host: str | None):
        super().__init__(username, password)
        self.peer_host = peer_host


def peer_host_of(creds: object) -> str | None:
    """The client's address the credentials carry; None for credentials without one."""
    return creds.peer_host if isinstance(creds, PeerSSHPrivateKey | PeerUsernamePassword) else None


@dataclass(frozen=True)
class ConnectionMind:
    """The `mind` of a login: the connection the avatar will serve."""

    peer: str  # as the logs write it: "host:port" or "[v6]:port"
    audit: AuditSink  # the connection's, with its id
    refusals: RepeatLog  # the connection's log of refused requests
