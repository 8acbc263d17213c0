"""Fuzz target: the server transport before key exchange completes (version line, packet lengths,
KEXINIT, kex messages), over a StringTransport with the real server built by make_world.

Checked after every chunk (fuzz.wire): bounded input buffer, DISCONNECT before any close, nothing
dispatched after DISCONNECT, bounded output; at the end, nothing logged at error level and the
connection's slot, admission count and timers released.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from support.world import World, make_world
from twisted.conch.ssh import transport
from twisted.conch.ssh.common import NS

from conchcmd.core.config import CIPHERS, KEX_ALGORITHMS, MACS, OPTIONAL_MACS
from conchcmd.wire.dispatch import Action, Phase, decide
from conchcmd.wire.framing import MARKERS
from fuzz.guard import LogWatch, bounded, corpus, fuzz
from fuzz.wire import Wire, frame

# Conch builds DH numbers for a stray group-exchange message before refusing it.
pytestmark = pytest.mark.filterwarnings("ignore:Diffie-Hellman over finite fields")

VERSION = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield make_world(tmp_path_factory.mktemp("fuzz-transport"))


def chunked(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    """`data` cut into pieces of the given sizes (cycled), as TCP might deliver it."""
    i = 0
    n = 0
    while i < len(data):
        size = sizes[n % len(sizes)] if sizes else len(data)
        yield data[i : i + size]
        i += size
        n += 1


def run(world: World, log_watch: LogWatch, data: bytes, sizes: list[int]) -> Wire:
    with bounded(), log_watch.clean():
        wire = Wire(world)
        try:
            for piece in chunked(data, sizes):
                if wire.closing:
                    break
                wire.feed(piece)
            world.clock.advance(0)
            wire.check()
        finally:
            wire.close()  # also after a failed check, so the next example starts clean
    return wire


chunk_sizes = st.lists(st.integers(1, 700), max_size=6)

# -- version line ---------------------------------------------------------------------------

version_words = st.sampled_from(
    [b"SSH-2.0-", b"SSH-1.99-", b"SSH-1.5-", b"SSH-2.0", b"SSH-", b"SSH-2.0-\x00", b"ssh-2.0-", b"\r", b"\n", b"\r\n"]
)
version_lines = st.lists(st.one_of(version_words, st.binary(max_size=80)), max_size=8).map(b"".join)


@fuzz(300)
@given(prefix=version_lines, tail=st.binary(max_size=600), sizes=chunk_sizes)
@example(prefix=b"SSH-2.0-x" + b"a" * 5000 + b"\r\n", tail=b"", sizes=[])
@example(prefix=b"junk\r\n" * 800 + VERSION, tail=b"", sizes=[100])
@example(prefix=b"SSH-2.0-a\nSSH-2.0-b\n", tail=b"\0\0\0\x0c", sizes=[1])
@example(prefix=b"SSH-1.5-old\r\n", tail=b"", sizes=[])
def test_version_line(world: World, log_watch: LogWatch, prefix: bytes, tail: bytes, sizes: list[int]) -> None:
    wire = run(world, log_watch, prefix + tail, sizes)
    if len(prefix + tail) > 4096 + 1 and b"\n" not in prefix + tail:
        assert wire.closing  # Conch's 4 KiB cap on a missing version line holds


@pytest.mark.parametrize("data", corpus("version_line"))
def test_version_line_corpus(world: World, log_watch: LogWatch, data: bytes) -> None:
    run(world, log_watch, data, [1, 7, 300])
    run(world, log_watch, data, [])


# -- raw bytes after the version line ---------------------------------------------------------


@fuzz(300)
@given(data=st.binary(max_size=3000), sizes=chunk_sizes)
@example(data=struct.pack(">L", 0xFFFFFFFF) + b"\0" * 12, sizes=[])
@example(data=struct.pack(">L", 5) + b"\x04" + b"\0" * 4, sizes=[])  # padding fills the packet
@example(data=struct.pack(">L", 65 * 1024) + b"\0" * 100, sizes=[])
def test_random_bytes_after_the_version_line(world: World, log_watch: LogWatch, data: bytes, sizes: list[int]) -> None:
    run(world, log_watch, VERSION + data, sizes)


# -- structured packets: KEXINIT, kex messages, anything -------------------------------------

ALGORITHM_NAMES = [
    *(n.encode() for n in (*KEX_ALGORITHMS, *CIPHERS, *MACS, *OPTIONAL_MACS)),
    *MARKERS,
    b"ssh-ed25519",
    b"rsa-sha2-512",
    b"ecdsa-sha2-nistp256",
    b"ssh-rsa",
    b"none",
    b"zlib@openssh.com",
    b"diffie-hellman-group14-sha256",
    b"",
]
name_lists = st.lists(st.one_of(st.sampled_from(ALGORITHM_NAMES), st.binary(max_size=12)), max_size=6).map(b",".join)


@st.composite
def kexinit_payloads(draw: st.DrawFn) -> bytes:
    cookie = draw(st.binary(min_size=16, max_size=16))
    lists = [draw(name_lists) for _ in range(10)]
    follows = draw(st.sampled_from([b"\0", b"\1", b"\xff"]))
    reserved = draw(st.sampled_from([b"\0\0\0\0", b"\xff\xff\xff\xff"]))
    payload = cookie + b"".join(NS(x) for x in lists) + follows + reserved
    cut = draw(st.one_of(st.none(), st.integers(0, len(payload))))
    return payload if cut is None else payload[:cut]


def good_kexinit(strict: bool) -> bytes:
    kex = b",".join([b"curve25519-sha256", b"ext-info-c", *([b"kex-strict-c-v00@openssh.com"] if strict else [])])
    lists = [kex, b"ssh-ed25519", b"aes128-ctr", b"aes128-ctr", MACS[0].encode(), MACS[0].encode()]
    return bytes(16) + b"".join(NS(x) for x in [*lists, b"none", b"none", b"", b""]) + b"\0" * 5


MESSAGE_NUMBERS = [1, 2, 3, 4, 5, 6, 7, 20, 21, 30, 31, 32, 33, 34, 50, 51, 52, 60, 80, 90, 94, 98]
messages = st.tuples(
    st.one_of(st.sampled_from(MESSAGE_NUMBERS), st.integers(0, 255)),
    st.one_of(
        st.binary(max_size=300),
        st.binary(min_size=32, max_size=32).map(NS),  # a curve25519 public value
        st.binary(min_size=1216, max_size=1216).map(NS),  # an mlkem768x25519 one
        st.lists(st.binary(max_size=40), max_size=4).map(lambda xs: b"".join(NS(x) for x in xs)),
    ),
)


@st.composite
def conversations(draw: st.DrawFn) -> bytes:
    first = draw(st.one_of(st.just(good_kexinit(True)), st.just(good_kexinit(False)), kexinit_payloads(), st.none()))
    out = [frame(transport.MSG_KEXINIT, first)] if first is not None else []
    for number, payload in draw(st.lists(messages, max_size=8)):
        out.append(frame(number, payload, draw(st.sampled_from([8, 16]))))
    return b"".join(out)


@fuzz(400)
@given(data=conversations(), sizes=chunk_sizes)
@example(  # strict KEX: a message outside the key exchange before NEWKEYS, then more packets
    data=frame(20, good_kexinit(True)) + frame(5, NS(b"ssh-userauth")) + frame(2, b"x") * 3, sizes=[]
)
@example(data=frame(21, b"") + frame(20, good_kexinit(False)), sizes=[])  # NEWKEYS first
@example(data=frame(20, good_kexinit(False)) + frame(30, NS(bytes(32))) + frame(21, b""), sizes=[])
def test_kexinit_and_kex_messages(world: World, log_watch: LogWatch, data: bytes, sizes: list[int]) -> None:
    run(world, log_watch, VERSION + data, sizes)


@pytest.mark.parametrize("data", corpus("kexinit"))
def test_kexinit_corpus(world: World, log_watch: LogWatch, data: bytes) -> None:
    """Saved client first flights (version line, KEXINIT, kex init) replayed whole and byte by byte."""
    run(world, log_watch, data, [])
    run(world, log_watch, data, [1])


def test_corpus_folders_exist() -> None:
    for target in ("version_line", "kexinit"):
        assert corpus(target), f"no corpus for {target} in {Path(__file__).parent / 'corpus'}"


def server_messages(wire: Wire) -> list[tuple[int, bytes]]:
    """(message number, payload) of each cleartext packet the server sent after its version line."""
    data = wire.transport.value()
    data = data[data.index(b"\r\n") + 2 :]
    out = []
    while data:
        length, padding = struct.unpack(">LB", data[:5])
        payload = data[5 : 4 + length - padding]
        out.append((payload[0], payload[1:]))
        data = data[4 + length :]
    return out


@pytest.mark.parametrize("message", [30, 32, 21], ids=["ecdh-init", "gex-init", "newkeys"])
def test_key_exchange_messages_before_kexinit_are_refused_by_name(
    world: World, log_watch: LogWatch, message: int
) -> None:
    """Found by test_kexinit_and_kex_messages: these ended in Conch with an AttributeError (no kexAlg,
    no nextEncryptions yet) that the transport's catch-all turned into a protocol error. Now each
    gets what conchcmd.wire.dispatch's table names for it before the client's KEXINIT (sshd's
    kex_protocol_error: UNIMPLEMENTED naming the packet; NEWKEYS: a named DISCONNECT), on the wire."""
    verdict = decide(Phase.BEFORE_KEX, message)
    assert verdict.action in (Action.UNIMPLEMENTED, Action.DISCONNECT) and verdict.source
    wire = run(world, log_watch, VERSION + frame(message, NS(bytes(32)) if message == 30 else NS(b"\1")), [])
    sent = server_messages(wire)
    assert sent[0][0] == transport.MSG_KEXINIT
    if verdict.action is Action.UNIMPLEMENTED:
        assert sent[1:] == [(transport.MSG_UNIMPLEMENTED, struct.pack(">L", 0))]  # the client's packet 0
        assert wire.spy.disconnects == [] and not wire.closing
    else:
        reason = (verdict.text % message if "%d" in verdict.text else verdict.text).encode()
        assert wire.spy.disconnects == [(verdict.reason, reason)]
        assert sent[1:] == [(transport.MSG_DISCONNECT, struct.pack(">L", verdict.reason) + NS(reason) + NS(b""))]
