"""Fuzz target: packet protection (conchcmd.wire.packets) for every cipher and MAC.

Properties: a sealed packet of any payload, at any sequence number, opens to itself with the
length the receiver computes from its head; changing any byte of it makes `open` raise BadPacket
(the only documented error), whichever length the receiver then reads.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conchcmd.wire.packets import NONE, BadPacket, PacketCodec, make_codec, pad
from fuzz.guard import bounded, fuzz
from fuzz.samples import SUITE_IDS, SUITES

keys = st.binary(min_size=64, max_size=64)
ivs = st.binary(min_size=16, max_size=16)
payloads = st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=4)
sequence_numbers = st.integers(0, 0xFFFFFFFF)


def codecs(cipher: str, mac: str, key: bytes, iv: bytes, mac_key: bytes) -> tuple[PacketCodec, PacketCodec]:
    args = (cipher.encode(), mac.encode() or NONE, key, iv, mac_key)
    return make_codec(*args, out=True), make_codec(*args, out=False)


def receive(codec: PacketCodec, seq: int, data: bytes) -> tuple[int, bytes]:
    """What the transport does with one packet: the length from the head, then open."""
    length = codec.packet_length(seq, data[: codec.head])
    return length, codec.open(seq, data)


def check_frame(codec: PacketCodec, packet: bytes, payload: bytes) -> None:
    length, padding = int.from_bytes(packet[:4], "big"), packet[4]
    assert length == len(packet) - 4
    assert 4 <= padding <= 255 and packet[5 : 5 + len(payload)] == payload
    covered = length if codec.length_excluded else length + 4
    assert covered % max(codec.block_size, 8) == 0


@pytest.mark.parametrize(("cipher", "mac"), SUITES, ids=SUITE_IDS)
@fuzz(25)
@given(key=keys, iv=ivs, mac_key=keys, payloads=payloads, seq=sequence_numbers, data=st.data())
def test_sealed_packets_open_to_themselves_and_any_change_is_refused(
    cipher: str, mac: str, key: bytes, iv: bytes, mac_key: bytes, payloads: list[bytes], seq: int, data: st.DataObject
) -> None:
    with bounded():
        sender, receiver = codecs(cipher, mac, key, iv, mac_key)
        for i, payload in enumerate(payloads):
            n = (seq + i) & 0xFFFFFFFF
            packet = pad(payload, sender, lambda k: bytes(k))
            check_frame(sender, packet, payload)
            sealed = sender.seal(n, packet)
            assert len(sealed) == len(packet) + sender.tag_size
            last = i == len(payloads) - 1
            if not last:
                assert receive(receiver, n, sealed) == (len(packet) - 4, packet)
                continue
            # The last packet arrives changed: one or more bytes xor-ed with a non-zero mask.
            positions = data.draw(st.lists(st.integers(0, len(sealed) - 1), min_size=1, max_size=3, unique=True))
            changed = bytearray(sealed)
            for p in positions:
                changed[p] ^= data.draw(st.integers(1, 255))
            with pytest.raises(BadPacket):
                receive(receiver, n, bytes(changed))


class _Framing(PacketCodec):
    """The plain codec's framing with a cipher's block size (`align`) and length rule."""

    def __init__(self, block: int, excluded: bool):
        self.block_size = self.align = block
        self.length_excluded = excluded


@fuzz(200)
@given(payload=st.binary(max_size=70_000), block=st.sampled_from([8, 16]), excluded=st.booleans())
def test_padding_aligns_and_stays_within_its_bounds(payload: bytes, block: int, excluded: bool) -> None:
    codec = _Framing(block, excluded)
    if not payload:
        payload = b"\0"
    check_frame(codec, pad(payload, codec, lambda k: bytes(k)), payload)
