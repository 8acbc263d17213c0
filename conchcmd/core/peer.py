"""The client's address through cred's own channels: credentials that carry it to the checkers
(for `from=` and a certificate's `source-address`) and the `mind` that carries it to the realm."""

from __future__ import annotations

from dataclasses import dataclass

from twisted.cred import credentials
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress

from conchcmd.core.filetrust import AttemptFiles
from conchcmd.core.hostmatch import normalise_peer


def host_and_port(address: IAddress) -> tuple[str, int] | None:
    """An IP address's host and port; None for other addresses (a UNIX socket). An IPv4-mapped
    IPv6 host (a `tcp6` listener's IPv4 client) is its IPv4 address, as sshd and the auth lines
    name it, so that every log line and audit record names a client alike."""
    if isinstance(address, (IPv4Address, IPv6Address)):
        return normalise_peer(address.host), address.port
    return None


def format_peer(address: IAddress) -> str:
    """`host:port`, `[v6host]:port`, or the address's own text if it is not an IP address."""
    return _peer_text(address, host_and_port(address))


def _peer_text(address: IAddress, ip: tuple[str, int] | None) -> str:
    if ip is None:
        return str(address)
    host, port = ip
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Peer:
    """Who is connecting: the IP host (None when not an IP connection) and the text logs show."""

    host: str | None
    text: str

    @classmethod
    def of(cls, address: IAddress) -> Peer:
        return cls.of_ip(address, host_and_port(address))

    @classmethod
    def of_ip(cls, address: IAddress, ip: tuple[str, int] | None) -> Peer:
        """`of(address)`, its `host_and_port(address)` known already."""
        return cls(ip[0] if ip is not None else None, _peer_text(address, ip))


class PeerSSHPrivateKey(credentials.SSHPrivateKey):
    """Conch's public-key credentials, plus the peer the request came from and the files its
    connection's authentication has read (`AttemptFiles`)."""

    def __init__(
        self,
        username: bytes,
        algName: bytes,
        blob: bytes,
        sigData: bytes | None,
        signature: bytes | None,
        peer: Peer,
        attempt: AttemptFiles | None = None,
    ):
        super().__init__(username, algName, blob, sigData, signature)
        self.peer = peer
        self.attempt = attempt


class PeerUsernamePassword(credentials.UsernamePassword):
    """Conch's password credentials, plus the peer the request came from."""

    def __init__(self, username: bytes, password: bytes, peer: Peer):
        super().__init__(username, password)
        self.peer = peer
