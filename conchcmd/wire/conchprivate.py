"""Every use of a private name of Twisted Conch, behind public names of our own.

Conch keeps the transport's key-exchange state, the messages held back during a key exchange,
userauth's success and failure callbacks and its channels' loggers in private names; the framing
(`conchcmd.wire.framing`), the server's services and the session channel must read, write or override
them. They do it only through this module, so a new Twisted breaks here, where
tests/unit/test_conch_contract.py names what to re-synchronise, and nowhere else.
"""

from __future__ import annotations

from typing import Any

from twisted.conch.ssh import _kex, channel, connection, userauth
from twisted.python.failure import Failure

from conchcmd.core.audit import QuietLogger


class KexState:
    """The transport's key-exchange state machine (Conch's `_keyExchangeState` with its three
    `_KEY_EXCHANGE_*` values) and the queue of messages it holds back until NEWKEYS
    (`_blockedByKeyExchange`), for a mixin placed before Conch's transport class."""

    # Provided by Conch's SSHTransportBase:
    _keyExchangeState: str
    _blockedByKeyExchange: Any  # None between key exchanges, else a list of (type, payload)
    _KEY_EXCHANGE_NONE: str
    _KEY_EXCHANGE_REQUESTED: str
    _KEY_EXCHANGE_PROGRESSING: str
    _peerSupportsExtensions: bool
    _allowedKeyExchangeMessageType: Any
    _newKeys: Any

    def kex_idle(self) -> bool:
        """No key exchange is under way."""
        return self._keyExchangeState == self._KEY_EXCHANGE_NONE

    def kex_state(self) -> str:
        """Conch's name of the key-exchange state (for error messages)."""
        return self._keyExchangeState

    def kex_requested(self) -> None:
        """Our KEXINIT is out: from now on, non-kex messages wait for NEWKEYS (as Conch's sendKexInit)."""
        self._keyExchangeState = self._KEY_EXCHANGE_REQUESTED
        self._blockedByKeyExchange = []

    def kex_peer_init(self, peer_supports_extensions: bool) -> bool:
        """The peer's KEXINIT arrived (the end of Conch's ssh_KEXINIT); True if we must answer it
        with our own KEXINIT (the peer started this key exchange)."""
        self._peerSupportsExtensions = peer_supports_extensions
        if self._keyExchangeState == self._KEY_EXCHANGE_REQUESTED:
            self._keyExchangeState = self._KEY_EXCHANGE_PROGRESSING
            return False
        return True

    def peer_supports_extensions(self) -> bool:
        """The peer's KEXINIT asked for EXT_INFO (ext-info-c / ext-info-s), as Conch's sendExtInfo checks."""
        return self._peerSupportsExtensions

    def held_by_kex(self, messageType: int) -> bool:
        """Whether a message of this type must wait for the key exchange under way to end."""
        # kex_idle() inline: this is asked for every packet sent
        return self._keyExchangeState != self._KEY_EXCHANGE_NONE and not self._allowedKeyExchangeMessageType(
            messageType
        )

    def hold_for_kex(self, messageType: int, payload: bytes) -> None:
        """Queue a message until NEWKEYS (Conch sends the queue in `_newKeys`)."""
        assert self._blockedByKeyExchange is not None
        self._blockedByKeyExchange.append((messageType, payload))

    def held_messages(self) -> list[tuple[int, bytes]]:
        """The messages waiting for the key exchange under way to end."""
        return list(self._blockedByKeyExchange or [])

    def conch_new_keys(self) -> None:
        """Conch's `_newKeys`: adopt the next keys and send what the key exchange held back."""
        self._newKeys()


class KeyDerivation:
    """For a mixin placed before Conch's transport class: Conch's `_keySetup` asks its private
    `_getKey` for each of the six keys (RFC 4253 7.2), which always hashes out 4 digests (128 bytes)
    whatever the cipher reads: 24 hashes per key exchange where chacha20-poly1305 uses 4. Here
    `_getKey` calls `derive_key`, and Conch's hash of the key exchange is `kex_hash_factory`."""

    kexAlg: Any  # bytes once negotiated (Conch: None before)

    def _getKey(self, c: bytes, sharedSecret: bytes, exchangeHash: bytes) -> bytes:
        return self.derive_key(c, sharedSecret, exchangeHash)

    def derive_key(self, letter: bytes, shared_secret: bytes, exchange_hash: bytes) -> bytes:
        """The key named by `letter` (b"A".."F"); to be provided by the class that mixes this in."""
        raise NotImplementedError

    def kex_hash_factory(self) -> Any:
        """The hash constructor of the negotiated key exchange (hashlib.sha256 for curve25519-sha256)."""
        return _kex.getHashProcessor(self.kexAlg)


class QuietTransportLog:
    """For a mixin placed before Conch's server transport: its `_log` without the debug and info
    lines of every connection ("NEW KEYS", "starting service", "connection lost"...), which
    `serve` filters out anyway, after they have cost their dispatch; warnings and errors pass."""

    _log: Any = QuietLogger()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # QuietLogger's view fixed once per class (a plain attribute, not a descriptor): debug and
        # info cost one call; warnings are named after the concrete class, as Conch's Logger names them.
        cls._log = QuietLogger().__get__(None, cls)


class UserAuthHooks(userauth.SSHUserAuthServer):
    """SSHUserAuthServer whose private success and failure callbacks call public hooks, without
    Conch's debug lines per attempt ("trying auth", "failed auth": `serve` filters them out)."""

    _log = QuietLogger()

    def _cbFinishedAuth(self, result: Any) -> None:
        self.auth_succeeded(result)

    def _ebBadAuth(self, reason: Failure) -> Any:
        return self.auth_failed(reason)

    def auth_succeeded(self, result: Any) -> None:
        """A login succeeded; Conch's answer: USERAUTH_SUCCESS and the next service."""
        super()._cbFinishedAuth(result)

    def auth_failed(self, reason: Failure) -> Any:
        """A login failed; Conch's answer: USERAUTH_FAILURE (or a disconnect after too many)."""
        return super()._ebBadAuth(reason)

    def answer_key_probe(self, reason: Failure, packet: bytes) -> Any:
        """Conch's errback for a key offered without a signature: PK_OK if the key is valid."""
        return self._ebCheckKey(reason, packet)


class QuietConnection(connection.SSHConnection):
    """SSHConnection without Conch's per-channel debug lines, and with its pending-global-request
    cleanup callable by name."""

    _log = QuietLogger()

    def fail_global_requests(self) -> None:
        """Errback every global request still waiting for an answer (as Conch's serviceStopped)."""
        self._cleanupGlobalDeferreds()


class QuietChannel(channel.SSHChannel):
    """SSHChannel without Conch's per-channel info lines (they cost more than the channel's work)."""

    _log = QuietLogger()
