"""A minimal ssh-agent holding software sk keys, so the real OpenSSH client can log in with them.

The OpenSSH client signs with an agent's key without touching any token itself: it sends the
agent SSH_AGENTC_SIGN_REQUEST and forwards the signature it gets. This agent answers that (and
SSH_AGENTC_REQUEST_IDENTITIES) from `SoftwareAuthenticator` tokens, with each token's own flags
and counter; everything else gets SSH_AGENT_FAILURE (draft-miller-ssh-agent).

Use:
    with SkAgent(directory) as agent:
        agent.hold(token)                 # its key, or its certificate if it carries one
        ssh -o IdentityAgent=agent.path -i key.pub ...
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from pathlib import Path
from types import TracebackType

from support.skauth import SoftwareAuthenticator

REQUEST_IDENTITIES, IDENTITIES_ANSWER = 11, 12
SIGN_REQUEST, SIGN_RESPONSE = 13, 14
FAILURE = 5


def _ns(value: bytes) -> bytes:
    return struct.pack(">L", len(value)) + value


def _take(data: bytes, pos: int) -> tuple[bytes, int]:
    (length,) = struct.unpack_from(">L", data, pos)
    return data[pos + 4 : pos + 4 + length], pos + 4 + length


class SkAgent:
    """An agent on a Unix socket in `directory`, served by a thread until `close()`."""

    def __init__(self, directory: Path):
        self.path = directory / "sk-agent.sock"
        self._tokens: dict[bytes, SoftwareAuthenticator] = {}  # presented blob -> token
        self._comments: dict[bytes, bytes] = {}
        self.signed: list[bytes] = []  # the blobs it signed for, in order
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind(str(self.path))
        self._listener.listen(8)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def hold(self, token: SoftwareAuthenticator, comment: bytes = b"sk") -> None:
        """Offer only this token's key, or its certificate if it carries one (signing with the token)."""
        self._tokens = {token.blob(): token}
        self._comments = {token.blob(): comment}

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError, struct.error):
                while True:
                    header = conn.recv(4, socket.MSG_WAITALL)
                    if len(header) < 4:
                        break
                    (length,) = struct.unpack(">L", header)
                    message = conn.recv(length, socket.MSG_WAITALL)
                    reply = self._answer(message)
                    conn.sendall(_ns(reply))

    def _answer(self, message: bytes) -> bytes:
        kind = message[0] if message else 0
        if kind == REQUEST_IDENTITIES:
            keys = b"".join(_ns(blob) + _ns(self._comments[blob]) for blob in self._tokens)
            return bytes([IDENTITIES_ANSWER]) + struct.pack(">L", len(self._tokens)) + keys
        if kind == SIGN_REQUEST:
            blob, pos = _take(message, 1)
            data, _ = _take(message, pos)
            token = self._tokens.get(blob)
            if token is not None:
                self.signed.append(blob)
                return bytes([SIGN_RESPONSE]) + _ns(token.sign(data))
        return bytes([FAILURE])

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=5)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def __enter__(self) -> SkAgent:
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.close()
