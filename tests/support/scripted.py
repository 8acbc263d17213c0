"""A test SSH client with hooks at each step of a key exchange, and ways to put packets on the wire
that its key-exchange state would not allow: for out-of-order and injected-message tests."""

from __future__ import annotations

import os
from collections.abc import Callable

from twisted.conch.ssh import common, transport

from conchcmd.wire.packets import PacketCodec, pad
from support.sshclient import ClientFactory, ClientTransport


def force_send(client: ClientTransport, message: int, payload: bytes = b"") -> None:
    """Put a packet on the wire now, whatever the client's key-exchange state would allow."""
    codec = client._out_codec
    client.transport.write(
        codec.seal(client.outgoingPacketSequence, pad(bytes((message,)) + payload, codec, os.urandom))
    )
    client.outgoingPacketSequence = (client.outgoingPacketSequence + 1) & 0xFFFFFFFF


def injected(client: ClientTransport, message: int, payload: bytes = b"") -> None:
    """An attacker on the wire adds a plaintext packet (before NEWKEYS nothing is encrypted); the
    client knows nothing of it, so its sequence numbers do not move."""
    client.transport.write(PacketCodec().seal(0, pad(bytes((message,)) + payload, PacketCodec(), os.urandom)))


def dropped(client: ClientTransport, message: int, payload: bytes = b"") -> None:
    """The client sends a packet that an attacker on the wire removes: its sequence number is used."""
    client.transport.write = lambda data: None  # type: ignore[method-assign]
    try:
        client.sendPacket(message, payload)
    finally:
        del client.transport.write


class ScriptedClient(ClientTransport):
    """The test client, with hooks at each step of a key exchange and a record of what it got."""

    after_kexinit: Callable[[ScriptedClient], None] | None = None  # right after its KEXINIT
    before_newkeys: Callable[[ScriptedClient], None] | None = None  # after ECDH_INIT, before NEWKEYS
    after_newkeys: Callable[[ScriptedClient], None] | None = None  # right after its NEWKEYS
    on_new_keys: Callable[[ScriptedClient], None] | None = None  # once the exchange is complete
    received: list[tuple[int, bytes]]

    def connectionMade(self) -> None:
        self.received = []
        for hook in ("after_kexinit", "before_newkeys", "after_newkeys", "on_new_keys"):
            setattr(self, hook, getattr(self.factory, hook, None))
        super().connectionMade()

    def sendKexInit(self) -> None:
        super().sendKexInit()
        if self.after_kexinit is not None:
            self.after_kexinit(self)

    def _keySetup(self, sharedSecret: bytes, exchangeHash: bytes) -> None:
        if self.before_newkeys is not None:
            self.before_newkeys(self)
        super()._keySetup(sharedSecret, exchangeHash)  # sends NEWKEYS
        if self.after_newkeys is not None:
            self.after_newkeys(self)

    def take_new_keys(self) -> None:
        super().take_new_keys()
        if self.on_new_keys is not None:
            self.on_new_keys(self)

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        self.received.append((messageNum, payload))
        super().dispatchMessage(messageNum, payload)


def scripted(strict: bool = True, **hooks: Callable[[ScriptedClient], None] | None) -> ClientFactory:
    factory = ClientFactory()
    factory.protocol = ScriptedClient  # type: ignore[assignment]
    factory.offer_strict_kex = strict
    for name, hook in hooks.items():
        setattr(factory, name, hook)
    return factory


def once(action: Callable[[ScriptedClient], None]) -> Callable[[ScriptedClient], None]:
    """A hook that acts on the first key exchange only."""

    def hook(client: ScriptedClient) -> None:
        if client.kex_count == 0:
            action(client)

    return hook


def send(message: int, payload: bytes = b"") -> Callable[[ScriptedClient], None]:
    return lambda client: client.sendPacket(message, payload)


def ecdh_init(client: ClientTransport) -> bytes:
    return common.NS(client._encodeECPublicKey(client._generateECPrivateKey().public_key()))


class KexHolding(ScriptedClient):
    """A client that can hold back the server's KEXINIT (and so never finish a key exchange);
    `held` is set to [] by whoever makes it."""

    hold = False
    held: list[bytes]

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        if self.hold and messageNum == transport.MSG_KEXINIT:
            self.held.append(payload)
            return
        super().dispatchMessage(messageNum, payload)

    def release(self, then_hold: bool = False) -> None:
        """Handle the held KEXINITs now; with `then_hold`, hold the next ones again."""
        held, self.held, self.hold = self.held, [], then_hold
        for payload in held:
            ScriptedClient.dispatchMessage(self, transport.MSG_KEXINIT, payload)
