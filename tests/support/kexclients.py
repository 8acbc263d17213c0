"""Test clients that play with the key exchange's first flight: a guessed first key-exchange
packet (RFC 4253 7, first_kex_packet_follows), for the in-memory tests and the sshd oracle."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import x25519
from twisted.conch.ssh import common

from conchcmd.wire.framing import MLKEM_KEX
from support.scripted import ScriptedClient, scripted
from support.sshclient import ClientFactory

KEXINIT, INIT = 20, 30


class GuessingClient(ScriptedClient):
    """Sets first_kex_packet_follows in its first KEXINIT and sends, at once, the INIT of its
    first key exchange (or the factory's `guess` payload); once the server's KEXINIT is in, sends
    the INIT again only if the guess was wrong (RFC 4253 7: either side's first kex or host-key
    algorithm differs)."""

    guessed_right: bool | None = None

    def connectionMade(self) -> None:
        self.supportedPublicKeys = self.factory.host_key_algorithms  # type: ignore[attr-defined]
        super().connectionMade()

    def sendPacket(self, messageType: int, payload: bytes) -> None:
        if messageType != KEXINIT or self.kex_count:
            super().sendPacket(messageType, payload)
            return
        payload = payload[:-5] + b"\x01\0\0\0\0"
        self.ourKexInitPayload = bytes((KEXINIT,)) + payload
        super().sendPacket(messageType, payload)
        guess = self.factory.guess  # type: ignore[attr-defined]
        if guess is not None:
            super().sendPacket(INIT, guess)
        elif self.supportedKeyExchanges[0] == MLKEM_KEX:
            self.hybrid_init()  # sends it; also what the client decapsulates with
        else:
            self.ecPriv = x25519.X25519PrivateKey.generate()
            self.ecPub = self.ecPriv.public_key()
            super().sendPacket(INIT, common.NS(self.ecPub.public_bytes_raw()))

    def ssh_KEXINIT(self, packet: bytes) -> None:
        if self.kex_count:
            super().ssh_KEXINIT(packet)
            return
        kexes, keys = (s.split(b",")[0] for s in common.getNS(packet[16:], 2)[:2])
        self.guessed_right = kexes == self.supportedKeyExchanges[0] and keys == self.supportedPublicKeys[0]
        if self.guessed_right:
            self.negotiate(packet)  # the INIT is out already
        else:
            super().ssh_KEXINIT(packet)


def guessing(
    kexes: list[bytes], host_keys: list[bytes], guess: bytes | None = None, strict: bool = True
) -> ClientFactory:
    factory = scripted(strict)
    factory.protocol = GuessingClient  # type: ignore[assignment]
    factory.supportedKeyExchanges = kexes
    factory.host_key_algorithms = host_keys  # type: ignore[attr-defined]
    factory.guess = guess  # type: ignore[attr-defined]
    return factory
