"""The Twisted internals conchcmd relies on are still those the code was written against.

`conchcmd.wire.framing` copies and overrides parts of Conch's transport, `conchcmd.wire.conchprivate` uses
Conch's private names, the server's services override Conch methods, `conchcmd.core.twistedprivate` uses
private parsers and fields of Twisted's endpoints (each adapter the only module that names its privates). A Twisted release that changes any of them fails here,
naming what to re-synchronise, instead of every connection failing with a "protocol error".

Recorded: each name's signature, and a SHA-256 digest of the source of every Conch method we call
by a private name, override, or copy (found by walking our classes, so a new override is noticed
too). After re-synchronising the code, record the new state with
`python tests/unit/test_conch_contract.py --write` (it rewrites RECORDED in this file).
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import json
import pkgutil
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import conchcmd

#: Private names we use, and where (the part to re-synchronise when one changes).
PRIVATE: dict[str, str] = {
    "twisted.conch.ssh.transport:SSHTransportBase._keyExchangeState": "conchcmd.wire.conchprivate.KexState",
    "twisted.conch.ssh.transport:SSHTransportBase._blockedByKeyExchange": "conchcmd.wire.conchprivate.KexState",
    "twisted.conch.ssh.transport:SSHTransportBase._KEY_EXCHANGE_NONE": "conchcmd.wire.conchprivate.KexState",
    "twisted.conch.ssh.transport:SSHTransportBase._KEY_EXCHANGE_REQUESTED": "conchcmd.wire.conchprivate.KexState",
    "twisted.conch.ssh.transport:SSHTransportBase._KEY_EXCHANGE_PROGRESSING": "conchcmd.wire.conchprivate.KexState",
    "twisted.conch.ssh.transport:SSHTransportBase._peerSupportsExtensions": "conchcmd.wire.conchprivate.KexState",
    "twisted.conch.ssh.transport:SSHTransportBase._allowedKeyExchangeMessageType": "conchcmd.wire.conchprivate.KexState",
    "twisted.conch.ssh.transport:SSHTransportBase._newKeys": "conchcmd.wire.conchprivate.KexState.conch_new_keys",
    "twisted.conch.ssh.transport:SSHTransportBase._getKey": "conchcmd.wire.conchprivate.KeyDerivation",
    # the letters it asks _getKey for, and which key goes to which direction (framing.derive_key)
    "twisted.conch.ssh.transport:SSHTransportBase._keySetup": "conchcmd.wire.conchprivate.KeyDerivation",
    "twisted.conch.ssh._kex:getHashProcessor": "conchcmd.wire.conchprivate.KeyDerivation.kex_hash_factory",
    "twisted.conch.ssh.userauth:SSHUserAuthServer._cbFinishedAuth": "conchcmd.wire.conchprivate.UserAuthHooks",
    "twisted.conch.ssh.userauth:SSHUserAuthServer._ebBadAuth": "conchcmd.wire.conchprivate.UserAuthHooks",
    "twisted.conch.ssh.userauth:SSHUserAuthServer._ebCheckKey": "conchcmd.wire.conchprivate.UserAuthHooks",
    "twisted.conch.ssh.transport:SSHTransportBase._log": "conchcmd.wire.conchprivate.QuietTransportLog",
    "twisted.conch.ssh.userauth:SSHUserAuthServer._log": "conchcmd.wire.conchprivate.UserAuthHooks",
    "twisted.conch.ssh.connection:SSHConnection._log": "conchcmd.wire.conchprivate.QuietConnection",
    "twisted.conch.ssh.connection:SSHConnection._cleanupGlobalDeferreds": "conchcmd.wire.conchprivate.QuietConnection",
    "twisted.conch.ssh.channel:SSHChannel._log": "conchcmd.wire.conchprivate.QuietChannel",
    # The test client (tests/support/sshclient.py) drives Conch's client key exchange by hand.
    "twisted.conch.ssh.transport:SSHClientTransport._generateECPrivateKey": "tests/support/sshclient.py",
    "twisted.conch.ssh.transport:SSHClientTransport._encodeECPublicKey": "tests/support/sshclient.py",
    # (also its `_gotNewKeys`, an instance attribute: set in connectionMade, read in _keySetup)
    "twisted.conch.ssh.transport:SSHClientTransport._keySetup": "tests/support/sshclient.py",
    # Not Conch: Twisted's core, for the endpoint checks of `check-config` and `doctor`, all in
    # conchcmd/core/twistedprivate.py.
    "twisted.internet.endpoints:_parse": "conchcmd.core.twistedprivate.split_description",
    "twisted.internet.endpoints:_SystemdParser._sddaemon": "conchcmd.core.twistedprivate._SystemdDescriptionParser",
    "twisted.internet.endpoints:_SystemdParser.parseStreamServer": "conchcmd.core.twistedprivate.systemd_endpoint_unadopted",
    "twisted.internet.endpoints:TCP4ServerEndpoint.__init__": "conchcmd.core.twistedprivate.tcp_port_and_interface",
    "twisted.internet.endpoints:TCP6ServerEndpoint.__init__": "conchcmd.core.twistedprivate.tcp_port_and_interface",
    "twisted.protocols.haproxy._parser:unparseEndpoint": "conchcmd.core.twistedprivate.join_description",
    # Not Conch: Twisted's PROXY header parsers, read by conchcmd.core.proxyheader through the adapter.
    "twisted.protocols.haproxy._v1parser:V1Parser.parse": "conchcmd.core.twistedprivate.parse_proxy_v1",
    "twisted.protocols.haproxy._v1parser:V1Parser.PROXYSTR": "conchcmd.core.twistedprivate.PROXY_V1_SIGNATURE",
    "twisted.protocols.haproxy._v2parser:V2Parser.parse": "conchcmd.core.twistedprivate.parse_proxy_v2",
    "twisted.protocols.haproxy._v2parser:V2Parser.PREFIX": "conchcmd.core.twistedprivate.PROXY_V2_SIGNATURE",
    "twisted.protocols.haproxy._exceptions:InvalidProxyHeader": "conchcmd.core.twistedprivate (caught)",
    # Not Conch: the event loop FlushingReactor changes (conchcmd.core.twistedprivate), and what it
    # relies on: the epoll reactor's private state and handler, the order of the main loop, a
    # connection's doWrite (stopWriting once drained), the log context callWithLogger gives.
    "twisted.internet.epollreactor:EPollReactor.__init__": "conchcmd.core.twistedprivate.FlushingReactor (_poller, _selectables, _writes)",
    "twisted.internet.epollreactor:EPollReactor._doReadOrWrite": "conchcmd.core.twistedprivate.FlushingReactor._event",
    "twisted.internet.epollreactor:EPollReactor.doPoll": "conchcmd.core.twistedprivate.FlushingReactor.doPoll",
    "twisted.internet.epollreactor:EPollReactor.addWriter": "conchcmd.core.twistedprivate.FlushingReactor.addWriter",
    "twisted.internet.epollreactor:EPollReactor.removeWriter": "conchcmd.core.twistedprivate.FlushingReactor.removeWriter",
    "twisted.internet.epollreactor:EPollReactor.removeAll": "conchcmd.core.twistedprivate.FlushingReactor.removeAll",
    "twisted.internet.base:ReactorBase.mainLoop": "conchcmd.core.twistedprivate.FlushingReactor.doPoll",
    "twisted.internet.abstract:FileDescriptor.doWrite": "conchcmd.core.twistedprivate.FlushingReactor._flush",
    "twisted.internet.abstract:FileDescriptor._writeDisconnecting": "conchcmd.core.twistedprivate.FlushingReactor._flush",
    "twisted.internet.tcp:Port._logger": "conchcmd.core.twistedprivate.keep_port_logger",
    "twisted.internet.epollreactor:EPollReactor.addReader": "conchcmd.core.twistedprivate.FlushingReactor.addReader",
    "twisted.internet.epollreactor:EPollReactor.removeReader": "conchcmd.core.twistedprivate.FlushingReactor.removeReader (_reads, _selectables)",
    "twisted.internet.posixbase:PosixReactorBase.installWaker": "conchcmd.core.twistedprivate.FlushingReactor.installWaker",
    "twisted.internet.base:ReactorBase.wakeUp": "conchcmd.core.twistedprivate._EdgeWaker",
    "twisted.internet.base:ReactorBase.runUntilCurrent": "conchcmd.core.twistedprivate._EdgeWaker (runs the thread-call queue)",
    "twisted.internet.base:ReactorBase._cancelCallLater": "conchcmd.core.twistedprivate.FlushingReactor._cancelCallLater (_pendingTimedCalls, _cancellations)",
    "twisted.internet.base:ReactorBase.timeout": "conchcmd.core.twistedprivate.FlushingReactor._cancelCallLater (reads the heap's first call, cancelled or not)",
    "twisted.internet.abstract:FileDescriptor.loseConnection": "conchcmd.core.twistedprivate.FlushingReactor.removeReader",
    "twisted.internet.tcp:Connection._closeSocket": "conchcmd.core.twistedprivate.ClosingServer (_shouldShutdown)",
    "twisted.internet.tcp:Port.doRead": "conchcmd.core.twistedprivate.accept_as_closing_servers (Port.transport)",
    "twisted.python.log:callWithLogger": "conchcmd.core.twistedprivate.FlushingReactor._event",
    "twisted.python.log:callWithContext": "conchcmd.core.twistedprivate.FlushingReactor._event",
    "twisted.python.context:ContextTracker.callWithContext": "conchcmd.core.twistedprivate.FlushingReactor._event",
}

#: Private attributes a recorded `__init__` sets on Twisted's objects (invisible on the class): for
#: each class, a description `serverFromString` makes one of, the attributes read, where, and the
#: (port, interface) the adapter must read back.
INSTANCE_ATTRIBUTES: dict[str, tuple[str, tuple[str, ...], str, tuple[int, str]]] = {
    "twisted.internet.endpoints:TCP4ServerEndpoint": (
        "tcp:2222:interface=127.0.0.1",
        ("_port", "_interface"),
        "conchcmd.core.twistedprivate.tcp_port_and_interface",
        (2222, "127.0.0.1"),
    ),
    "twisted.internet.endpoints:TCP6ServerEndpoint": (
        "tcp6:2223:interface=\\:\\:1",
        ("_port", "_interface"),
        "conchcmd.core.twistedprivate.tcp_port_and_interface",
        (2223, "::1"),
    ),
}

#: The adapters: the only modules of the package that may name a private of Conch, or of Twisted's core.
CONCH_ADAPTER = "conchcmd/wire/conchprivate.py"
CORE_ADAPTER = "conchcmd/core/twistedprivate.py"

#: Our classes outside the package that subclass Conch's (their overrides are recorded too).
SUPPORT_MODULES = ("support.sshclient",)

#: Conch methods whose logic we repeat without overriding them (an override is found and recorded
#: by itself), and where: a change in one of them means the copy must follow.
COPIED: dict[str, str] = {
    "twisted.conch.ssh.connection:SSHConnection.sendEOF": "conchcmd.server.connection.ConnectionService.send_exit",
    "twisted.conch.ssh.connection:SSHConnection.sendRequest": "conchcmd.server.connection.ConnectionService.send_exit",
    "twisted.conch.ssh.connection:SSHConnection.sendClose": "conchcmd.server.connection.ConnectionService.send_exit",
    # curve25519-sha256 and mlkem768x25519-sha256 answered by our code (same reply, refusals and
    # keys as these: tests/unit/test_kex_fastpath.py)
    "twisted.conch.ssh.transport:SSHServerTransport._ssh_KEX_ECDH_INIT": "conchcmd.wire.framing.ModernServerTransport.curve25519_init",
    "twisted.conch.ssh.transport:SSHTransportBase._generateECSharedSecret": "conchcmd.wire.framing.ModernServerTransport.curve25519_init",
    "twisted.conch.ssh.transport:SSHServerTransport._ssh_KEX_HYBRID_INIT": "conchcmd.wire.framing.ModernServerTransport.mlkem_init",
    "twisted.conch.ssh.transport:SSHServerTransport._getHostKeys": "conchcmd.wire.framing.ModernServerTransport.curve25519_init, mlkem_init",
    "twisted.conch.ssh.transport:SSHServerTransport._keySetup": "conchcmd.wire.framing.ModernServerTransport.set_up_keys",
    "twisted.conch.ssh.transport:SSHTransportBase._keySetup": "conchcmd.wire.framing.ModernServerTransport.set_up_keys",
}

# --- RECORDED: generated by --write, for Twisted 26.10.0 ---
RECORDED: dict[str, str] = {
    "twisted.conch.avatar:ConchUser.__init__": "(self) sha256:7557c55338e2bd7fa2aac3caa7dd4f8107e34eed66b53a4e2b98e3b3efd1703a",
    "twisted.conch.avatar:ConchUser.gotGlobalRequest": "(self, requestType, data) sha256:02feb4551fb65f8ea7a7522784a872029d54762d1ceaec9a72536ddd8a9eb25b",
    "twisted.conch.avatar:ConchUser.lookupChannel": "(self, channelType, windowSize, maxPacket, data) sha256:9ba56489d57d5a5de1692a7d9324aa2e27c47e2cd9ce371c943aacec5ee32589",
    "twisted.conch.insults.insults:ServerProtocol.dataReceived": "(self, data) sha256:288454a896e0d882c2ea401391a145a93e3b82c3a031b5a892402d4298fbe551",
    "twisted.conch.insults.insults:ServerProtocol.loseConnection": "(self) sha256:aaf7628611419fd30bee11eccd662a1792fa8c47202f00db54255caa8d958363",
    "twisted.conch.insults.insults:TerminalProtocol.connectionMade": "(self) sha256:156b21e05cb6011c084e3d28a7af2a323db979e61ec54b6fbab7cba708a6795a",
    "twisted.conch.insults.insults:TerminalProtocol.keystrokeReceived": "(self, keyID, modifier) sha256:7f2a942ce2c534e3b38a4d8eba0240c49ec3ba3012410c0c3a0b011c961f6763",
    "twisted.conch.insults.insults:TerminalProtocol.terminalSize": "(self, width, height) sha256:90d642b8512f27599c423f86ac22591b04e0b5adeba189d916256a1e22ab544d",
    "twisted.conch.recvline:HistoricRecvLine.connectionMade": "(self) sha256:b3a5375700484bb187d393c9cb07e5b0692c88dd4f87dbed7ea0b9b5e472dd2c",
    "twisted.conch.recvline:HistoricRecvLine.handle_DOWN": "(self) sha256:6fbac05131ff7e61fe8a1c4a5c2d0814c365808c2afbef0d7006c79f2817fb1f",
    "twisted.conch.recvline:HistoricRecvLine.handle_RETURN": "(self) sha256:79d615f04b8839e4c6ffa672a3f5b8c99ed393aa0c9d102ea3ecab3d93c1b092",
    "twisted.conch.recvline:HistoricRecvLine.handle_UP": "(self) sha256:17a815c25b50862852214772dd94725b16cb99e671c0a474f7faec1759ffe903",
    "twisted.conch.recvline:RecvLine.characterReceived": "(self, ch, moreCharactersComing) sha256:c741643bfe153e4c4be6bb15a9baa4ad0b5c24667e22b577e3d3649e3b35e6e9",
    "twisted.conch.recvline:RecvLine.connectionMade": "(self) sha256:2168b3040cbe314f906f3045ca80c7f116493a93531986a44d83e75a0212ff80",
    "twisted.conch.recvline:RecvLine.drawInputLine": "(self) sha256:ca0b4e24214d3000f72551c7568fc510cfe3cd1879225d0510852c29b23c7a65",
    "twisted.conch.recvline:RecvLine.handle_BACKSPACE": "(self) sha256:12c3636143770867ac03a318560accdcbb9e07fa180a49ec858a2e0afd1cf15c",
    "twisted.conch.recvline:RecvLine.handle_DELETE": "(self) sha256:bac3c77d32842ac58e7e1ea66f3472822e065b42890462586474651cf3797d23",
    "twisted.conch.recvline:RecvLine.handle_END": "(self) sha256:205c03d1a345311b590469bd181bcdf5c77c071976a0ff4596ecef50134e44a2",
    "twisted.conch.recvline:RecvLine.handle_HOME": "(self) sha256:7e6cb09a291dea6075d507b5bc734f7a47c985f97aa0a3c5898929798a3bd575",
    "twisted.conch.recvline:RecvLine.handle_INSERT": "(self) sha256:fbd242c4515bfe7d02e941cd9de4458de21ca27b7195c42e57c04fb20fedc593",
    "twisted.conch.recvline:RecvLine.handle_LEFT": "(self) sha256:05ccab61d8838c1a4058c280d3695f83bbf928e6ac3189fb6106021b0c58b389",
    "twisted.conch.recvline:RecvLine.handle_RETURN": "(self) sha256:1afe38d52fdaf018c3adbe9763b767d0e2b47c59420731d26f4783e75dfae9ab",
    "twisted.conch.recvline:RecvLine.handle_RIGHT": "(self) sha256:fb4b8e86d17251082236d328b953ca039a443715a389155249b15d12c403c888",
    "twisted.conch.recvline:RecvLine.handle_TAB": "(self) sha256:344fafd453e1f15f846d143ea28d071026655a3abe46ed5d7815a88bde45aec0",
    "twisted.conch.recvline:RecvLine.initializeScreen": "(self) sha256:3bf474515ecedd4bb18d517cef38e6af0df83dd91c0bc33778da3e453f1829d7",
    "twisted.conch.recvline:RecvLine.keystrokeReceived": "(self, keyID, modifier) sha256:2f29cca1d9fe7c597f14f2a0ee4e46f86034bb39350d44b453ff4a1c3556fd08",
    "twisted.conch.recvline:RecvLine.lineReceived": "(self, line) sha256:839274e092d51f528c7ff771cf433897a49cb5da9da2f54f8f51a5fee6f31ce0",
    "twisted.conch.recvline:RecvLine.terminalSize": "(self, width, height) sha256:36867b61aa401d9e5ccdcc4efbcdbe981e416a24fbb12a4cbbd6378703b179d5",
    "twisted.conch.ssh._kex:getHashProcessor": "(kexAlgorithm: 'bytes') -> '_HashFactory' sha256:3bc85b23d0bd8a3658044b2ff1dc9da8ec52d042ac7b867fed8fb1652ae1d87d",
    "twisted.conch.ssh.channel:SSHChannel.__init__": "(self, localWindow: 'int' = 0, localMaxPacket: 'int' = 0, remoteWindow: 'int' = 0, remoteMaxPacket: 'int' = 0, conn: 'SSHConnection | None' = None, data: 'bytes | None' = None, avatar: 'IConchUser | None' = None) -> 'None' sha256:29422b36b8b0dfe9809f8b44bac0b9f1bafa422d399ee8a9e6d304abe66ae157",
    "twisted.conch.ssh.channel:SSHChannel._log": "attribute Logger",
    "twisted.conch.ssh.channel:SSHChannel.addWindowBytes": "(self, data) sha256:ab1e50bfa5d91bb4e14083cdcb05cb1952e70985576cf38976ae85823cb67eee",
    "twisted.conch.ssh.channel:SSHChannel.channelOpen": "(self, specificData) sha256:17549efc38f3a1160710b0872df1e0119933b73d120cbf7607fd0deb9fe2688e",
    "twisted.conch.ssh.channel:SSHChannel.closed": "(self) sha256:9d2381ebf327b00a3897f17760ef8e50a79d0cb99fa1fba9baa1c26d30a013da",
    "twisted.conch.ssh.channel:SSHChannel.dataReceived": "(self, data) sha256:8137b6224a02e2035d5ca9044a40f0faf9b31f76c299ca6431d09f12b061d70d",
    "twisted.conch.ssh.channel:SSHChannel.eofReceived": "(self) sha256:e71eaf09dc1e26a84af281e0517fcedd80c019fef9ea08da93bb17e86687c68b",
    "twisted.conch.ssh.channel:SSHChannel.extReceived": "(self, dataType, data) sha256:0c4104c7a958fcf60327f717ed9eb18411fa02e0fe3f257a2c232a3bb8ab7def",
    "twisted.conch.ssh.channel:SSHChannel.openFailed": "(self, reason) sha256:8556c436b2c87e86ccd4891b00ea08d645c7742c5655ce5035f57fc12b7c2168",
    "twisted.conch.ssh.channel:SSHChannel.requestReceived": "(self, requestType, data) sha256:e311cc847ce5ec0d991a5d4d32c794047e61f62a657f80ff98480eacbbcc297a",
    "twisted.conch.ssh.connection:SSHConnection.__init__": "(self) sha256:f6fecc291f45c0cb0935b9f311f8bd59cf3b60c41086d6190351f27cb16cb2a5",
    "twisted.conch.ssh.connection:SSHConnection._cleanupGlobalDeferreds": "(self) sha256:21c001755572227e00d007ce4f0d649aaeed71926a679ed2abe6b2ebaaabdd2c",
    "twisted.conch.ssh.connection:SSHConnection._log": "attribute Logger",
    "twisted.conch.ssh.connection:SSHConnection.adjustWindow": "(self, channel, bytesToAdd) sha256:d405b2a6077f34a65b42c27133929885b781beabae432af07e954a12fb5a6ec4",
    "twisted.conch.ssh.connection:SSHConnection.sendClose": "(self, channel) sha256:097bb4945a10abdd784548a56424b8fd7ece79714cd740895486effff54fac39",
    "twisted.conch.ssh.connection:SSHConnection.sendData": "(self, channel, data) sha256:2f106d6f0a7f8242850f9140a2fc381338a0955db1439205909b313af15b86b2",
    "twisted.conch.ssh.connection:SSHConnection.sendEOF": "(self, channel) sha256:bf8145865a4f7dddfc6d82dd6e1afede2ee28226b24e869a95de7240c991707f",
    "twisted.conch.ssh.connection:SSHConnection.sendExtendedData": "(self, channel, dataType, data) sha256:79cc1073b707148ad5ec6fc518f32c953b728f1462d9eaa1d52a5a6b0e83b320",
    "twisted.conch.ssh.connection:SSHConnection.sendRequest": "(self, channel, requestType, data, wantReply=0) sha256:7589f77d69d26df743ea387781ae9de2b34dea127cbd54ca104a329c200de460",
    "twisted.conch.ssh.connection:SSHConnection.serviceStarted": "(self) sha256:2cd64aa6096d12abb3f02137a59e6a79313e8514caf6a095bb958cd4b7ebdaa6",
    "twisted.conch.ssh.connection:SSHConnection.serviceStopped": "(self) sha256:d4ed749bb93251fe3529557610211d8bdc1126e8d9ad23fefb2cfce304c163a1",
    "twisted.conch.ssh.connection:SSHConnection.ssh_CHANNEL_FAILURE": "(self, packet) sha256:cb74c23ec10fadd56b30affd9d706fd56175d48f2677e36cf2a115b0b310f2fe",
    "twisted.conch.ssh.connection:SSHConnection.ssh_CHANNEL_OPEN": "(self, packet) sha256:06281135927b073ac1e7f14228c5ae60ece5ddb0949c01290cb064148dfe8c87",
    "twisted.conch.ssh.connection:SSHConnection.ssh_CHANNEL_OPEN_CONFIRMATION": "(self, packet) sha256:c12caf35969733eab7ae1fb0f2751c81b8d390a4442dc8167deae719d58326dd",
    "twisted.conch.ssh.connection:SSHConnection.ssh_CHANNEL_OPEN_FAILURE": "(self, packet) sha256:64b0aa0bb6eb736b8b0f04e346f9948e64ab3c498be42bc977db76d5c1453f31",
    "twisted.conch.ssh.connection:SSHConnection.ssh_CHANNEL_REQUEST": "(self, packet) sha256:d45dfdfc76075992d6f08320a72073296742f20ad61ac8ea1bbc3de9537b7213",
    "twisted.conch.ssh.connection:SSHConnection.ssh_CHANNEL_SUCCESS": "(self, packet) sha256:81f338cdbb6e9d81181fe6b30c6656a8b4cffbf851736f70a4f55f083ba55513",
    "twisted.conch.ssh.connection:SSHConnection.ssh_CHANNEL_WINDOW_ADJUST": "(self, packet) sha256:ebfaf07fadce8835df9e8731885707d986d53cd9a24a73a48976517e99d2c391",
    "twisted.conch.ssh.connection:SSHConnection.ssh_REQUEST_FAILURE": "(self, packet) sha256:a2ea608dd9b3aa7194d96a4566305bdc54546ce2e3bfc384de9db14c56162831",
    "twisted.conch.ssh.connection:SSHConnection.ssh_REQUEST_SUCCESS": "(self, packet) sha256:272be48fe2e542a14627ee99ea4bc8b6cceb6caaf0e57935200cf5d4e59e0526",
    "twisted.conch.ssh.factory:SSHFactory.buildProtocol": "(self, addr: 'IAddress | None') -> 'transport.SSHServerTransport' sha256:4d30e336f623329412959245e14d62e4cfcf15aa6ece2c2ca9f28d1b9543fde3",
    "twisted.conch.ssh.keys:Key.blob": "(self) sha256:d89cebc9c0756062dca2f7717655938274bf3cdfe383077089ae216cb8a9e49f",
    "twisted.conch.ssh.keys:Key.sign": "(self, data: 'bytes', signatureType: 'bytes | None' = None) -> 'bytes' sha256:4da3cd9af3091a04c249a7fd39a85f8fb8c60988b49450e4b0bc9250ff711878",
    "twisted.conch.ssh.keys:Key.sshType": "(self) sha256:5747cb24ef0a8660bb3714b3df08bc7936ab466299df1a05cfbbf21e025c09a7",
    "twisted.conch.ssh.keys:Key.type": "(self) -> \"Literal['RSA', 'DSA', 'EC', 'Ed25519']\" sha256:7ad8e2183bde6fa81cdc8aa658cfc9a7c80a51b627d30c61cc70a64223b07d09",
    "twisted.conch.ssh.keys:Key.verify": "(self, signature, data) sha256:944e5e19bc46dfb5d249ac775e2f6277345a76614e5818dae77803bf23a8ba46",
    "twisted.conch.ssh.service:SSHService.packetReceived": "(self, messageNum, packet) sha256:c37163c3f8bcdecb3a15f519e83af020cdb3e0ae881c6336a4c6b028f9ead653",
    "twisted.conch.ssh.service:SSHService.serviceStarted": "(self) sha256:de78575f2178c7f6ae867476607629a33987e285d7ded2daaa842a463d9a8ea1",
    "twisted.conch.ssh.service:SSHService.serviceStopped": "(self) sha256:c07c3cd7010afa598aa82a9da3d1f5ad8d6e99c262fcf5bc5f829b05b3450cb8",
    "twisted.conch.ssh.transport:SSHClientTransport._encodeECPublicKey": "(self, ecPub) sha256:8b79620b11f29cdd1a8fa43f7b7593525f2595973fa14babd3cb08f0bbbac3ce",
    "twisted.conch.ssh.transport:SSHClientTransport._generateECPrivateKey": "(self) sha256:cb3771402a1382fe19e7534defad6df502a2344fa764cdaac86d277b92bec1d1",
    "twisted.conch.ssh.transport:SSHClientTransport._keySetup": "(self, sharedSecret, exchangeHash) sha256:64195efa8f65666564d3b9aa03658d0e8c923dc900c5658436da7e060e4cc141",
    "twisted.conch.ssh.transport:SSHClientTransport.connectionMade": "(self) sha256:ef589cfd164b00ad5998473c1b32e1a0dac34d0d99ab11824f249471eb92ac62",
    "twisted.conch.ssh.transport:SSHClientTransport.connectionSecure": "(self) sha256:f0b7893cd8b7151d86cd28b691df533a2e1cb234effaf9537ca8d960591dab3a",
    "twisted.conch.ssh.transport:SSHClientTransport.ssh_KEXINIT": "(self, packet) sha256:87e42ac2252f836bfdec8ff7bdef4703dbdbc387d364d0c71feddf66d0074b3a",
    "twisted.conch.ssh.transport:SSHClientTransport.ssh_KEX_DH_GEX_GROUP": "(self, packet) sha256:5f2dca698b6bc1fe8b61a81dbd539dc01b36c795d19edd3ae2f9537d3e4547b1",
    "twisted.conch.ssh.transport:SSHClientTransport.ssh_NEWKEYS": "(self, packet) sha256:42129212faa634e323a5255520caeca635d0f8396f1edd9e4abb938fab4a40f0",
    "twisted.conch.ssh.transport:SSHClientTransport.verifyHostKey": "(self, hostKey, fingerprint) sha256:bff9daf69a1f675dae4a60e177611ac69174a00ced6e98d797d301b87e6aaa3d",
    "twisted.conch.ssh.transport:SSHServerTransport._getHostKeys": "(self, keyAlg: 'bytes') -> 'tuple[keys.Key, keys.Key]' sha256:d71b60ea24b4d0470c7340680a2ebc3a4ffecc0ded49b902fb0fc533301762b4",
    "twisted.conch.ssh.transport:SSHServerTransport._keySetup": "(self, sharedSecret: 'bytes', exchangeHash: 'bytes') -> 'None' sha256:df2df58675d60072d8fce2daa1dc1855a01a0c3aebbd07d24a691d8955af8dca",
    "twisted.conch.ssh.transport:SSHServerTransport._ssh_KEX_ECDH_INIT": "(self, packet: 'bytes') -> 'None' sha256:53b7f0bc582ea4d5402087f39bd8bc778661d00efcd8986becc323eb4cfcad50",
    "twisted.conch.ssh.transport:SSHServerTransport._ssh_KEX_HYBRID_INIT": "(self, packet: 'bytes') -> 'None' sha256:602da7a67ef9c14a9e8abb347ec2790b98451601de93aec8af9289e21f2f724f",
    "twisted.conch.ssh.transport:SSHServerTransport.ssh_KEXINIT": "(self, packet: 'bytes') -> 'None' sha256:c2ef4f16d58008d181cca0308d088b029636816117b96e11e2899cc703522fd7",
    "twisted.conch.ssh.transport:SSHServerTransport.ssh_KEX_DH_GEX_REQUEST_OLD": "(self, packet: 'bytes') -> 'None' sha256:116b1b8ef7c46307002b9a9325d5884e792e96a8aeda3341704966cff04018f6",
    "twisted.conch.ssh.transport:SSHServerTransport.ssh_NEWKEYS": "(self, packet: 'bytes') -> 'None' sha256:7ef5aab34bdc1a737de4fcdd5026db5aa14300083a18145486c837c0f7417513",
    "twisted.conch.ssh.transport:SSHServerTransport.ssh_SERVICE_REQUEST": "(self, packet: 'bytes') -> 'None' sha256:993732051f39763e0e4baa54baeac1dd2f1667a0785753a82e7831de7a4ca2eb",
    "twisted.conch.ssh.transport:SSHTransportBase._KEY_EXCHANGE_NONE": "attribute str",
    "twisted.conch.ssh.transport:SSHTransportBase._KEY_EXCHANGE_PROGRESSING": "attribute str",
    "twisted.conch.ssh.transport:SSHTransportBase._KEY_EXCHANGE_REQUESTED": "attribute str",
    "twisted.conch.ssh.transport:SSHTransportBase._allowedKeyExchangeMessageType": "(self, messageType) sha256:520f80493fb433cf6b070a30693cb8c9f8afc9c3d7410739897339a9d9b82c06",
    "twisted.conch.ssh.transport:SSHTransportBase._blockedByKeyExchange": "attribute NoneType",
    "twisted.conch.ssh.transport:SSHTransportBase._generateECSharedSecret": "(self, ecPriv, theirECPubBytes) sha256:84167fe6f5d5a6909bdc6d4281b5c81c38dafe2d010425b989e49c63a3b634bb",
    "twisted.conch.ssh.transport:SSHTransportBase._getKey": "(self, c: 'bytes', sharedSecret: 'bytes', exchangeHash: 'bytes') -> 'bytes' sha256:f2c8e93045605ea44c85bae2852748c7fe00dc7162e78e32bea5cdd04a56afd5",
    "twisted.conch.ssh.transport:SSHTransportBase._keyExchangeState": "attribute str",
    "twisted.conch.ssh.transport:SSHTransportBase._keySetup": "(self, sharedSecret: 'bytes', exchangeHash: 'bytes') -> 'None' sha256:1af37ad4b1b98fefe28ebfbdaab161529c8de2d92e96ff119ed1bb33148e0d98",
    "twisted.conch.ssh.transport:SSHTransportBase._log": "attribute Logger",
    "twisted.conch.ssh.transport:SSHTransportBase._newKeys": "(self) sha256:7d299f5f9fda2472c9db1a7d20a7849a0034400620e17fe0498ca67d7c24db93",
    "twisted.conch.ssh.transport:SSHTransportBase._peerSupportsExtensions": "attribute bool",
    "twisted.conch.ssh.transport:SSHTransportBase.connectionLost": "(self, reason: 'Failure | None' = None) -> 'None' sha256:dd514a81fd76889e4d3a50bbcae975aad1584b76652832fa509f91724e217c78",
    "twisted.conch.ssh.transport:SSHTransportBase.connectionMade": "(self) sha256:fa9fde9f96548c698e7cdee8252965c67ede4d61f74cc1204ae9370cc5c2a5a1",
    "twisted.conch.ssh.transport:SSHTransportBase.dataReceived": "(self, data) sha256:be2cda28591a970f3bda1591e274f5280f758a004cadecd2ef4039b2d91631e7",
    "twisted.conch.ssh.transport:SSHTransportBase.dispatchMessage": "(self, messageNum, payload) sha256:d692af8d80bfad1c63ae20e3194b7d87652b405c77c9f93ef9a317463f7d95a6",
    "twisted.conch.ssh.transport:SSHTransportBase.getPacket": "(self) sha256:6e2493d4bbdba144c717aaabc9af61b666c5bc419d0daa4af6b2b3d300c74822",
    "twisted.conch.ssh.transport:SSHTransportBase.receiveError": "(self, reasonCode, description) sha256:fee7cd3f39a38503fd3b81fdd6af694995fc34cdecf00751be2f45da64bcf568",
    "twisted.conch.ssh.transport:SSHTransportBase.sendDisconnect": "(self, reason, desc) sha256:8b82375e7243884c8fec57c9ccd73dc8ef2c3d67f0b42a4a57db7d0c796795a6",
    "twisted.conch.ssh.transport:SSHTransportBase.sendExtInfo": "(self, extensions) sha256:de5c4af7a26a41e86685b29deee9459a6d500ab0dd57fa3c7705bc85533ac348",
    "twisted.conch.ssh.transport:SSHTransportBase.sendKexInit": "(self) sha256:268bc7174038e693e52850cd4bb778bfbbdb4bc20bda601fbc63c08ed9dda699",
    "twisted.conch.ssh.transport:SSHTransportBase.sendPacket": "(self, messageType, payload) sha256:d506e8caade38a4bc2472a03430a3d8bf9600bf4ab399c904ba021afe31b4f1e",
    "twisted.conch.ssh.transport:SSHTransportBase.ssh_KEXINIT": "(self, packet) sha256:abf43ee2749abdbe49083ed624e8dbc99f5f265a7cf61673196c78b64cbdeee9",
    "twisted.conch.ssh.userauth:SSHUserAuthServer._cbFinishedAuth": "(self, result: '_ConchPortalTuple') -> 'None' sha256:f4521485b1a3dd5fde775ef303120a669b2ce94102343d35ca559db48e5e254a",
    "twisted.conch.ssh.userauth:SSHUserAuthServer._ebBadAuth": "(self, reason) sha256:ae5dea1b4e9a5c4fa941397660388cddf5e52e75b4f5d0d025ce17cd797e4452",
    "twisted.conch.ssh.userauth:SSHUserAuthServer._ebCheckKey": "(self, reason: 'failure.Failure', packet: 'bytes') -> 'failure.Failure' sha256:2b957fa0962b3cb6b2a54748f6bb55b55c03b42f7038e7669e9174ac0b6db8be",
    "twisted.conch.ssh.userauth:SSHUserAuthServer._log": "attribute Logger",
    "twisted.conch.ssh.userauth:SSHUserAuthServer.auth_password": "(self, packet) sha256:626ffa4215d38ec3e0382f069009a77b91aa2c224b019d79d116d89b08c8011d",
    "twisted.conch.ssh.userauth:SSHUserAuthServer.auth_publickey": "(self, packet: 'bytes') -> 'Deferred[_ConchPortalTuple]' sha256:600907b39373cd59d9f061c5793e9a172bc0dfeb09b6b754fecad8ff24f1d918",
    "twisted.conch.ssh.userauth:SSHUserAuthServer.serviceStarted": "(self) sha256:98a55ed89b95c8a3820948869e72e815ffea51c4cc395393363c127c52d7ba5e",
    "twisted.conch.ssh.userauth:SSHUserAuthServer.serviceStopped": "(self) sha256:1204ab5531ee99dd67944ddabe123a896b891b490f12ec9b5a65afc0282c8dbf",
    "twisted.conch.ssh.userauth:SSHUserAuthServer.ssh_USERAUTH_REQUEST": "(self, packet: 'bytes') -> 'Deferred[_ConchPortalTuple] | None' sha256:fafb2aefa3d14157c65b8ce62d593f3fb48af295601a069ddfc8b1c030e8c28d",
    "twisted.internet.abstract:FileDescriptor._writeDisconnecting": "attribute bool",
    "twisted.internet.abstract:FileDescriptor.doWrite": "(self) sha256:a986d7b1b1054e431495d50528824683fa7ebb1ffcf3e57333bdd6f37f603141",
    "twisted.internet.abstract:FileDescriptor.loseConnection": "(self) sha256:e13b8468f05208ae2f7bc13b69db4887259abc836d18d519964539a2d5ec9b24",
    "twisted.internet.base:ReactorBase._cancelCallLater": "(self, delayedCall: 'DelayedCall') -> 'None' sha256:aa636b7ad522311eefdb099bc2fec1f6de347ff04253c502e40138822fd28f57",
    "twisted.internet.base:ReactorBase.mainLoop": "(self) -> 'None' sha256:769125a86d0cd7e9c567589163430d7ccaf2668f5b58f739c745f1cb6c68c7eb",
    "twisted.internet.base:ReactorBase.runUntilCurrent": "(self) -> 'None' sha256:b9fbbdb8e8414792ab8a87c4ee4355f11d2b66229d39f34ce3b55b3e871e2152",
    "twisted.internet.base:ReactorBase.timeout": "(self) -> 'float | None' sha256:347720436ca8713cdebe17b9510dcea7cf6ef8a487924a654a08fc3b4a23908a",
    "twisted.internet.base:ReactorBase.wakeUp": "(self) -> 'None' sha256:561ab0a2f0fa515995543700f1483ba2d853ce5893a96c92f0b186a696f69276",
    "twisted.internet.endpoints:TCP4ServerEndpoint.__init__": "(self, reactor, port, backlog=50, interface='') sha256:5aad3c9f01b4d0cf26224a6c52b693b7378fa26a1ef263665aec273b133299cb",
    "twisted.internet.endpoints:TCP6ServerEndpoint.__init__": "(self, reactor, port, backlog=50, interface='::') sha256:95a3c468440e29f9e0871e0c3d784a66661c329fe8d48cb9106e2d590e01cea3",
    "twisted.internet.endpoints:_SystemdParser._sddaemon": "attribute ListenFDs",
    "twisted.internet.endpoints:_SystemdParser.parseStreamServer": "(self, reactor, *args, **kwargs) sha256:08a273c2a068de6281caf92c694dc2a8fc807d86ed36b161546ec4d552d148e3",
    "twisted.internet.endpoints:_parse": "(description) sha256:91037a29d4450903713b007cd342dc0850b51659d7c6731df1f1ec01a8c633e1",
    "twisted.internet.epollreactor:EPollReactor.__init__": "(self) sha256:6ab0ab1446e1857e0f4922bead81cf750b0c801bb25ff930b921872b2cfc4c4c",
    "twisted.internet.epollreactor:EPollReactor._doReadOrWrite": "(self, selectable, fd, event) sha256:5ffee55b79492b0037fc7bedacfc3aaa6d1f173122c738f8274b8be12d8d2be3",
    "twisted.internet.epollreactor:EPollReactor.addReader": "(self, reader) sha256:5e6507f1bd352132a30949a42b641691f4ada698a631703075217e34ac754fd0",
    "twisted.internet.epollreactor:EPollReactor.addWriter": "(self, writer) sha256:f2e5669e150996adc5445c754e8eac6545e659c5ceb078bd7d323424f34b07f6",
    "twisted.internet.epollreactor:EPollReactor.doPoll": "(self, timeout) sha256:09b62ae68ef01b4bc5eaa170827e2baf0a2a5098e7e7ce7b5e1c80cda187c827",
    "twisted.internet.epollreactor:EPollReactor.removeAll": "(self) sha256:f21099e365729d9923abc1b10665027cb534b800f1c846530538f6be451e332f",
    "twisted.internet.epollreactor:EPollReactor.removeReader": "(self, reader) sha256:0eb1a831dde9d8aea705124b546a400c1b0585349837bd99dc86de690728b65d",
    "twisted.internet.epollreactor:EPollReactor.removeWriter": "(self, writer) sha256:1b5d5060b8c4ab4247470e3f62076406d18e1c4054e25737fd8606de12e906b5",
    "twisted.internet.posixbase:PosixReactorBase.installWaker": "(self) sha256:328da7ec0e646857aca0bd7dd64159cc80fbf4b4e19220a0d80eee11522bf68c",
    "twisted.internet.tcp:Connection._closeSocket": "(self, orderly) sha256:9aa82f5b862c84983b5549e5dfbaa37c8a4ae48ac3b006d62d48a0c1b9525389",
    "twisted.internet.tcp:Port._logger": "attribute Logger",
    "twisted.internet.tcp:Port.doRead": "(self) sha256:d240fc123090ee235be9f4e6b99a11e38d3dceab45d1708a47016d420e179ad9",
    "twisted.protocols.haproxy._exceptions:InvalidProxyHeader": "class sha256:b925950ef1aabab7a212947ee0dad63829cd6de8cc05b54a3df0cd02a11b96bc",
    "twisted.protocols.haproxy._parser:unparseEndpoint": "(args: tuple[object, ...], kwargs: collections.abc.Mapping[str, object]) -> str sha256:48791c8cca8c5105e3c5a2c208e3e4f7059b870f16eb2df35e9a85af40e93114",
    "twisted.protocols.haproxy._v1parser:V1Parser.PROXYSTR": "attribute bytes",
    "twisted.protocols.haproxy._v1parser:V1Parser.parse": "(cls, line: 'bytes') -> '_info.ProxyInfo' sha256:16dc561b83b151803d4687c6b7953af47e5b9f9beb392ad035ab546df16c5579",
    "twisted.protocols.haproxy._v2parser:V2Parser.PREFIX": "attribute bytes",
    "twisted.protocols.haproxy._v2parser:V2Parser.parse": "(cls, line: 'bytes') -> '_info.ProxyInfo' sha256:95b5990be4008b5fc1f9ef558f88c0a5cf7a7b63b467c17d710f8a498980f616",
    "twisted.python.context:ContextTracker.callWithContext": "(self, newContext, func, *args, **kw) sha256:c17a3f4bb097dffb6eaea306ff9e2de261feeb1f69ea0f3dc78330632c0050ab",
    "twisted.python.log:callWithContext": "(ctx, func, *args, **kw) sha256:c44b5124f288e82f638d7b5df72759ed0f71d4891c70c14aacd893eff5615047",
    "twisted.python.log:callWithLogger": "(logger, func, *args, **kw) sha256:802f8564bca3531fe46ea2098450b784ad60ff5bf0365c9fb06dda1c7ff668a6",
}
# --- end of RECORDED ---


def resolve(path: str) -> Any:
    """The object at "module:Qual.name", or AttributeError/ImportError."""
    module_name, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part) if not isinstance(obj, type) else inspect.getattr_static(obj, part)
    return obj


def describe(obj: Any) -> str:
    """What is recorded of a name: a function's signature and source digest, else the value's type."""
    if isinstance(obj, staticmethod | classmethod):
        obj = obj.__func__
    if inspect.isfunction(obj) or inspect.isclass(obj):
        source = inspect.getsource(obj)
        digest = hashlib.sha256(source.encode()).hexdigest()
        signature = str(inspect.signature(obj)) if inspect.isfunction(obj) else "class"
        return f"{signature} sha256:{digest}"
    return f"attribute {type(obj).__name__}"


def our_classes() -> Iterator[type]:
    names = [m.name for m in pkgutil.walk_packages(conchcmd.__path__, "conchcmd.") if not m.name.endswith("__main__")]
    modules = [importlib.import_module(name) for name in names]
    modules += [importlib.import_module(m) for m in SUPPORT_MODULES]
    for module in modules:
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__:
                yield cls


def ours(cls: type) -> bool:
    return cls.__module__.startswith(("conchcmd.", *SUPPORT_MODULES))


def overridden() -> dict[str, set[str]]:
    """Every Conch method one of our classes overrides (each definition along the MRO, since an
    override usually stands for Conch's whole chain), with the overriders."""
    found: dict[str, set[str]] = {}
    for cls in our_classes():
        conch = [c for c in cls.__mro__ if c.__module__.startswith("twisted.conch.")]
        for mine in (c for c in cls.__mro__ if ours(c)):
            for name, value in vars(mine).items():
                if not inspect.isfunction(value):
                    continue
                for base in conch:
                    if inspect.isfunction(vars(base).get(name)):
                        key = f"{base.__module__}:{base.__qualname__}.{name}"
                        found.setdefault(key, set()).add(f"{mine.__module__}.{mine.__qualname__}.{name}")
    return found


def relied_on() -> dict[str, str]:
    """Each name we rely on, with what to re-synchronise when it changes."""
    names = {path: f"its use in {where}" for path, where in PRIVATE.items()}
    names.update({path: f"the copy in {where}" for path, where in COPIED.items()})
    for path, overriders in overridden().items():
        also = names.get(path)
        names[path] = "the override(s) " + ", ".join(sorted(overriders)) + (f" and {also}" if also else "")
    return names


def current() -> dict[str, str]:
    record = {}
    for path in sorted(relied_on()):
        try:
            record[path] = describe(resolve(path))
        except (AttributeError, ImportError):
            record[path] = "missing"
    return record


def test_every_conch_internal_we_rely_on_is_unchanged() -> None:
    problems = contract_problems()
    assert not problems, "\n".join(problems)


def contract_problems() -> list[str]:
    """What of the recorded Twisted internals the installed Twisted no longer has as recorded, each
    naming what to re-synchronise."""
    import twisted

    names = relied_on()
    now = current()
    problems = []
    for path, what in sorted(names.items()):
        if path not in RECORDED:
            problems.append(f"{path} is used by {what} but not recorded: record it (see the module docstring)")
        elif now[path] == "missing":
            problems.append(f"Twisted {twisted.__version__} has no {path}: re-synchronise {what}")
        elif now[path] != RECORDED[path]:
            was, new = RECORDED[path], now[path]
            problems.append(
                f"Twisted {twisted.__version__} changed {path} (was: {was}; now: {new}): re-read it and "
                f"re-synchronise {what}, then record it again"
            )
    problems += [f"{path} is recorded but no longer used: remove it from RECORDED" for path in RECORDED.keys() - names]
    return problems + instance_attribute_problems()


def instance_attribute_problems() -> list[str]:
    """The private attributes of INSTANCE_ATTRIBUTES, on an object Twisted makes, read back by the adapter."""
    import twisted
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    from conchcmd.core.twistedprivate import tcp_port_and_interface

    problems = []
    for path, (description, attributes, where, expected) in INSTANCE_ATTRIBUTES.items():
        endpoint = serverFromString(MemoryReactor(), description)
        made = f"{type(endpoint).__module__}:{type(endpoint).__qualname__}"
        if made != path:
            problems.append(
                f"Twisted {twisted.__version__} makes a {made} of {description!r}, not a {path}: re-synchronise {where}"
            )
            continue
        missing = [name for name in attributes if name not in vars(endpoint)]
        if missing:
            problems.append(
                f"Twisted {twisted.__version__}'s {path} no longer sets {', '.join(missing)}: re-synchronise its use in {where}"
            )
        elif tcp_port_and_interface(endpoint) != expected:
            problems.append(
                f"Twisted {twisted.__version__}'s {path} made of {description!r} holds "
                f"{tcp_port_and_interface(endpoint)!r}, not {expected!r}: re-synchronise {where}"
            )
    return problems


def test_a_changed_twisted_core_name_fails_naming_what_to_resynchronise(monkeypatch: pytest.MonkeyPatch) -> None:
    """As a new Twisted would: the systemd parser's `_sddaemon` gone, `_parse` with another
    signature, the TCP endpoint keeping its port under another name. Each is named with the
    adapter's part to re-synchronise."""
    import twisted
    from twisted.internet import endpoints

    parse = endpoints._parse

    def _parse(description, strict=False):  # type: ignore[no-untyped-def]
        return parse(description)

    def __init__(self, reactor, port, backlog=50, interface=""):  # type: ignore[no-untyped-def]
        self._reactor, self._portNumber, self._backlog, self._interface = reactor, port, backlog, interface

    assert contract_problems() == []
    monkeypatch.delattr(endpoints._SystemdParser, "_sddaemon")
    monkeypatch.setattr(endpoints, "_parse", _parse)
    monkeypatch.setattr(endpoints.TCP4ServerEndpoint, "__init__", __init__)
    v = twisted.__version__
    assert contract_problems() == [
        f"Twisted {v} changed twisted.internet.endpoints:TCP4ServerEndpoint.__init__ (was: "
        f"{RECORDED['twisted.internet.endpoints:TCP4ServerEndpoint.__init__']}; now: {describe(__init__)}): re-read it "
        "and re-synchronise its use in conchcmd.core.twistedprivate.tcp_port_and_interface, then record it again",
        f"Twisted {v} has no twisted.internet.endpoints:_SystemdParser._sddaemon: "
        "re-synchronise its use in conchcmd.core.twistedprivate._SystemdDescriptionParser",
        f"Twisted {v} changed twisted.internet.endpoints:_parse (was: {RECORDED['twisted.internet.endpoints:_parse']}; "
        f"now: {describe(_parse)}): re-read it and re-synchronise its use in "
        "conchcmd.core.twistedprivate.split_description, then record it again",
        f"Twisted {v}'s twisted.internet.endpoints:TCP4ServerEndpoint no longer sets _port: "
        "re-synchronise its use in conchcmd.core.twistedprivate.tcp_port_and_interface",
    ]


def test_the_contract_covers_the_copied_transport_methods() -> None:
    """framing.py copies these (its docstring says so): each is recorded with its digest."""
    for name in ("connectionMade", "sendKexInit", "ssh_KEXINIT", "sendPacket", "getPacket", "dispatchMessage"):
        assert f"twisted.conch.ssh.transport:SSHTransportBase.{name}" in relied_on(), name
    for name in ("ssh_KEXINIT", "ssh_NEWKEYS"):
        assert f"twisted.conch.ssh.transport:SSHServerTransport.{name}" in relied_on(), name
        assert f"twisted.conch.ssh.transport:SSHClientTransport.{name}" in relied_on(), name


def test_no_module_but_the_adapter_names_a_conch_private() -> None:
    """Every use of a Conch private name is in conchcmd/wire/conchprivate.py."""
    # `_log` is also a common name of our own loggers; Conch's is recorded above all the same.
    conch_private = {path.rpartition(".")[2] for path in PRIVATE if path.startswith("twisted.conch.")} - {"_log"}
    found = []
    for source, text in package_sources():
        if source == CONCH_ADAPTER:
            continue
        found += [f"{source}: {name}" for name in sorted(conch_private) if name in text]
        found += [f"{source}: {what}" for what in private_twisted_names(text, conch=True)]
    assert found == []


def conch_key_private_attributes() -> set[str]:
    """The private attributes of Conch's Key: its methods and what `__init__` sets on the instance
    (`_keyObject`, the cryptography object; `_sk`, `_application`)."""
    from twisted.conch.ssh import keys

    defined = {name for name in vars(keys.Key) if name.startswith("_") and not name.startswith("__")}
    assigned = set(re.findall(r"self\.(_[a-zA-Z]\w*) = ", inspect.getsource(keys.Key)))
    return defined | assigned


def test_no_module_reads_a_private_attribute_of_conch_keys() -> None:
    """A Key subclass (keyparse.PublicKey, hostkeys.HostKey) reads its key through Conch's public
    `data()`, not `self._keyObject`: the scan by name above misses instance attributes."""
    private = conch_key_private_attributes()
    assert "_keyObject" in private
    found = []
    for source, text in package_sources():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Attribute) and node.attr in private:
                found.append(f"{source}:{node.lineno}: .{node.attr}")
    assert found == []


def test_no_module_but_the_adapter_names_a_twisted_core_private() -> None:
    """Every use of a private name of Twisted outside Conch is in conchcmd/core/twistedprivate.py:
    no other module imports one (or a private module), or reads one as an attribute."""
    found = []
    for source, text in package_sources():
        if source != CORE_ADAPTER:
            found += [f"{source}: {what}" for what in private_twisted_names(text, conch=False)]
    assert found == []


def test_the_private_name_scan_finds_what_the_adapter_does() -> None:
    """The scans above are no tests that cannot fail: over the adapter's own text, and over the way
    core/endpoints.py used to reach the privates itself, they find each private used."""
    text = (Path(conchcmd.__file__).parent.parent / CORE_ADAPTER).read_text()
    assert without_lines(private_twisted_names(text, conch=False)) == [
        "imports twisted.internet.endpoints._parse",
        "imports twisted.internet.endpoints._SystemdParser",
        "imports twisted.protocols.haproxy._exceptions.InvalidProxyHeader",
        "imports twisted.protocols.haproxy._parser.unparseEndpoint",
        "imports twisted.protocols.haproxy._v1parser.V1Parser",
        "imports twisted.protocols.haproxy._v2parser.V2Parser",
        "reads ._logger",
        "reads ._logger",
        "reads ._port",
        "reads ._interface",
        "reads ._cancelCallLater",
        "reads ._writeDisconnecting",
        "reads ._writeDisconnecting",
    ]
    assert private_twisted_names(text, conch=True) == []
    before = (
        "from twisted.internet.endpoints import (\n    TCP4ServerEndpoint,\n    _parse,\n)\n"
        "import twisted.protocols.haproxy._parser\n"
        "from twisted.conch.ssh.transport import (\n    SSHServerTransport,\n    _MACParams,\n)\n"
        "def problem(endpoint, d):\n    self._port = endpoints._SystemdParser\n    return endpoint._port\n"
    )
    assert without_lines(private_twisted_names(before, conch=False)) == [
        "imports twisted.internet.endpoints._parse",
        "imports twisted.protocols.haproxy._parser",
        "reads ._SystemdParser",
        "reads ._port",
    ]
    assert private_twisted_names(before, conch=True) == ["imports twisted.conch.ssh.transport._MACParams"]


def without_lines(found: list[str]) -> list[str]:
    return [re.sub(r" \(line \d+\)$", "", what) for what in found]


def package_sources() -> Iterator[tuple[str, str]]:
    """(path relative to the repository, text) of each source file of the package."""
    package = Path(conchcmd.__file__).parent
    for source in sorted(package.rglob("*.py")):
        yield source.relative_to(package.parent).as_posix(), source.read_text()


def core_private_attributes() -> set[str]:
    """The private names of Twisted's core we rely on, as attribute names (`_parse`, `_port`, ...)."""
    names = {part for path in PRIVATE if not path.startswith("twisted.conch.") for part in re.split(r"[:.]", path)}
    names |= {name for _, attributes, _, _ in INSTANCE_ATTRIBUTES.values() for name in attributes}
    return {name for name in names if name.startswith("_") and not name.startswith("__")}


def private_twisted_names(text: str, *, conch: bool) -> list[str]:
    """Where `text` imports a private name or module of Twisted (of Conch if `conch`, else of the
    rest of Twisted), or reads one of the core's private names we rely on as an attribute of
    something other than `self` or `cls`."""

    def private(dotted: str) -> bool:
        return any(part.startswith("_") and not part.startswith("__") for part in dotted.split("."))

    def ours(module: str) -> bool:
        return module.startswith("twisted.") and module.startswith("twisted.conch.") == conch

    found = []
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level and ours(node.module or ""):
            found += [
                f"imports {node.module}.{alias.name}" for alias in node.names if private(f"{node.module}.{alias.name}")
            ]
        elif isinstance(node, ast.Import):
            found += [f"imports {alias.name}" for alias in node.names if ours(alias.name) and private(alias.name)]
    if not conch:
        attributes = core_private_attributes()
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in attributes
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                found.append(f"reads .{node.attr} (line {node.lineno})")
    return found


def write_record() -> None:
    """Rewrite RECORDED in this file with what the installed Twisted has now."""
    import twisted

    here = Path(__file__)
    text = here.read_text()
    start = text.index("# --- RECORDED: generated")
    end = text.index("# --- end of RECORDED ---")
    lines = [
        f"# --- RECORDED: generated by --write, for Twisted {twisted.__version__} ---",
        "RECORDED: dict[str, str] = {",
    ]
    # double quotes, as `ruff format` writes them (CI checks the file is formatted)
    lines += [f"    {json.dumps(path)}: {json.dumps(value)}," for path, value in current().items()]
    here.write_text(text[:start] + "\n".join([*lines, "}", ""]) + text[end:])


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for support.sshclient
    if sys.argv[1:] == ["--write"]:
        write_record()
    else:
        for path, value in current().items():
            print(f"{path}: {value}")
