"""The whole SSH stack in memory (real crypto, no sockets): transport, algorithms, authentication."""

from __future__ import annotations

from pathlib import Path

from support.keys import ecdsa_key, ed25519_key, rsa_key
from support.sshclient import result_of
from support.world import World, make_world
from twisted.conch.ssh import common, transport, userauth

from conchcmd.core.config import LimitsConfig
from conchcmd.server.factory import ServerSettings

SUCCESS, FAILURE, PK_OK = userauth.MSG_USERAUTH_SUCCESS, userauth.MSG_USERAUTH_FAILURE, 60


def test_banner_and_algorithms_are_modern_only(world: World) -> None:
    conn = world.connect()
    server = conn.server
    assert conn.client.otherVersionString == b"SSH-2.0-conchcmd"
    assert server.supportedKeyExchanges[0] == b"mlkem768x25519-sha256"
    assert set(server.supportedKeyExchanges) <= {
        b"mlkem768x25519-sha256",
        b"curve25519-sha256",
        b"curve25519-sha256@libssh.org",
    }
    assert server.supportedCiphers == [
        b"chacha20-poly1305@openssh.com",
        b"aes256-gcm@openssh.com",
        b"aes128-gcm@openssh.com",
        b"aes256-ctr",
        b"aes192-ctr",
        b"aes128-ctr",
    ]
    assert server.supportedMACs == [b"hmac-sha2-256-etm@openssh.com", b"hmac-sha2-512-etm@openssh.com"]
    assert server.supportedCompressions == [b"none"]
    assert server.supportedPublicKeys == [b"ssh-ed25519"]
    offered = b",".join(
        server.supportedKeyExchanges + server.supportedCiphers + server.supportedMACs + server.supportedPublicKeys
    )
    assert b"sha1" not in offered and b"cbc" not in offered and b"ssh-rsa" not in offered
    assert conn.client.kexAlg in (b"mlkem768x25519-sha256", b"curve25519-sha256")
    assert conn.factory.host_key is not None and conn.factory.host_key.sshType() == b"ssh-ed25519"


def test_server_sig_algs_lists_user_key_algorithms(world: World) -> None:
    """Conch lists host-key algorithms there; OpenSSH then refuses RSA user keys on an ed25519 host."""
    conn = world.connect()
    sig_algs = conn.client.peerExtensions[b"server-sig-algs"].split(b",")
    assert b"rsa-sha2-256" in sig_algs and b"rsa-sha2-512" in sig_algs and b"ssh-ed25519" in sig_algs
    assert b"ssh-rsa" not in sig_algs and b"ssh-dss" not in sig_algs


def test_rsa_host_key_never_offers_sha1(tmp_path: Path) -> None:
    from conchcmd.wire.hostkeys import generate_host_key

    w = make_world(tmp_path)
    generate_host_key(w.config.host_keys_dir / "ssh_host_rsa_key", "rsa")
    w2 = make_world(tmp_path / "again")
    generate_host_key(w2.config.host_keys_dir / "ssh_host_rsa_key", "rsa")
    from conchcmd.server.factory import CommandServerFactory
    from conchcmd.wire.hostkeys import load_host_keys

    keys = load_host_keys(w2.config.host_keys_dir)
    factory = CommandServerFactory(
        host_keys=keys, portal=w2.factory.portal, audit=w2.audit, clock=w2.clock, settings=ServerSettings()
    )
    proto = factory.buildProtocol(None)
    assert proto.supportedPublicKeys == [b"ssh-ed25519", b"rsa-sha2-512", b"rsa-sha2-256"]


def test_ed25519_login_is_audited(world: World) -> None:
    conn = world.connect(peer="10.1.2.3")
    assert conn.login(b"admin", ed25519_key()) == SUCCESS
    (connect_event,) = world.audit.of("connect")
    assert connect_event["peer"] == "10.1.2.3:40000"
    (auth,) = world.audit.of("auth")
    assert auth["ok"] is True and auth["user"] == "admin" and auth["method"] == "publickey"
    assert auth["key_type"] == "ssh-ed25519" and auth["fingerprint"].startswith("SHA256:")


def test_rsa_sha2_and_ecdsa_logins_work(world: World) -> None:
    for key, alg in ((rsa_key(), b"rsa-sha2-256"), (rsa_key(), b"rsa-sha2-512"), (ecdsa_key(), None)):
        conn = world.connect()
        assert conn.login(b"admin", key, alg) == SUCCESS, alg


def test_sha1_rsa_signature_refused(world: World) -> None:
    conn = world.connect()
    assert conn.login(b"admin", rsa_key(), b"ssh-rsa") == FAILURE
    (auth,) = world.audit.of("auth")
    assert auth["ok"] is False and "not accepted" in auth["reason"]


def test_unknown_key_gets_no_pk_ok(world: World) -> None:
    conn = world.connect()
    auth = conn.start_auth(b"admin")
    stranger = ed25519_key(99)
    probe = auth.probe(stranger)
    conn.flush()
    assert result_of(probe)[0] == FAILURE
    known = auth.probe(ed25519_key())
    conn.flush()
    assert result_of(known)[0] == PK_OK
    failures = [e for e in world.audit.of("auth") if not e["ok"]]
    assert len(failures) == 1 and failures[0]["fingerprint"] == _fingerprint(stranger)


def test_unknown_user_and_hostile_user_names_fail(world: World) -> None:
    for user in (b"nobody", b"../admin", b"admin/../admin", b"\xff\xfe"):
        conn = world.connect()
        assert conn.login(user, ed25519_key()) == FAILURE, user


def test_key_with_options_is_refused_and_named_in_the_log(world: World, tmp_path: Path) -> None:
    from support.keys import authorized_line
    from twisted.logger import globalLogPublisher

    key = ed25519_key(5)
    admin = Path(world.config.authorized_keys.replace("%u", "admin"))
    with admin.open("a") as f:
        f.write(authorized_line(key, 'no-pty,tunnel-device="tun0"'))
    seen: list[str] = []

    def observer(event: dict) -> None:
        from twisted.logger import formatEvent

        seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    try:
        conn = world.connect()
        assert conn.login(b"admin", key) == FAILURE
    finally:
        globalLogPublisher.removeObserver(observer)
    assert any("unknown key option 'tunnel-device'" in line for line in seen), seen


def test_max_auth_tries_disconnects(world: World) -> None:
    conn = world.connect()
    auth = conn.start_auth(b"admin")
    for n in range(6):
        auth.login(ed25519_key(50 + n))
        conn.flush()
    assert conn.factory.disconnect_reason is not None or conn.disconnected
    assert len([e for e in world.audit.of("auth") if not e["ok"]]) == 6
    (bye,) = world.audit.of("disconnect")
    assert bye["reason"] == "Too many authentication failures"


def test_six_probes_of_unknown_keys_end_the_connection(world: World) -> None:
    """A key probe (no signature) is a failed attempt too: probing is no way around max_auth_tries."""
    conn = world.connect()
    auth = conn.start_auth(b"admin")
    answers = []
    for n in range(6):
        assert not conn.disconnected, n
        probe = auth.probe(ed25519_key(60 + n))
        conn.flush()
        answers.append(result_of(probe)[0] if probe.called else None)
    assert answers[:5] == [FAILURE] * 5
    assert conn.disconnected
    assert len([e for e in world.audit.of("auth") if not e["ok"]]) == 6
    (bye,) = world.audit.of("disconnect")
    assert bye["reason"] == "Too many authentication failures"


def test_max_clients_turns_away_and_frees_slots(tmp_path: Path) -> None:
    w = make_world(tmp_path, max_clients=1)
    first = w.login()
    second = w.connect(peer="10.0.0.2")
    assert second.login(b"admin", ed25519_key()) != SUCCESS
    assert second.factory.disconnect_reason == (  # both limits are hit: the refusal names the user's
        transport.DISCONNECT_TOO_MANY_CONNECTIONS,
        b"Too many connections for user admin (max_clients_per_user 1)",
    )
    first.client.transport.loseConnection()
    first.flush()
    third = w.connect(peer="10.0.0.3")
    assert third.login(b"admin", ed25519_key()) == SUCCESS


def test_login_grace_time_closes_silent_and_slow_clients(world: World) -> None:
    conn = world.connect()  # version and kex done, never authenticates
    world.clock.advance(29)
    conn.flush()
    assert not conn.disconnected
    world.clock.advance(2)
    conn.flush()
    assert conn.disconnected
    (bye,) = world.audit.of("disconnect")
    assert bye["reason"] == "login grace time exceeded" and bye["user"] is None


def test_grace_timer_stops_after_login(world: World) -> None:
    conn = world.login()
    world.clock.advance(3600)
    conn.flush()
    assert not conn.disconnected


def test_garbage_ends_only_that_connection(world: World) -> None:
    good = world.login()
    bad = world.connect(peer="10.0.0.9")
    bad.client.transport.write(b"\x00\x00\x00\x10garbage-garbage-garbage-garbage")  # not a valid packet
    bad.flush()
    assert bad.disconnected
    chan = good.open_session()
    good.exec(chan, b"help")
    good.flush()
    assert chan.exit_status == 0


def _fingerprint(key: object) -> str:
    from conchcmd.policy.authorized_keys import fingerprint

    return fingerprint(key.public().blob())  # type: ignore[attr-defined]


def test_max_auth_tries_above_twenty_is_honoured(tmp_path: Path) -> None:
    """Conch's own limit (20 failures, then "too many bad auths") no longer cuts before max_auth_tries."""
    w = make_world(tmp_path, limits=LimitsConfig(max_auth_tries=30))
    conn = w.connect()
    auth = conn.start_auth(b"admin")
    for n in range(29):
        auth.send_request(b"publickey", b"\x00" + common.NS(b"ssh-ed25519") + common.NS(ed25519_key(100 + n).blob()))
        conn.flush()
    assert not conn.disconnected
    assert [r[0] for r in auth.replies] == [FAILURE] * 29
    auth.send_request(b"publickey", b"\x00" + common.NS(b"ssh-ed25519") + common.NS(ed25519_key(200).blob()))
    conn.flush()
    assert conn.disconnected
    assert conn.server.auth_failures == 30
    (bye,) = w.audit.of("disconnect")
    assert bye["reason"] == "Too many authentication failures"


def test_only_the_first_none_request_is_free(world: World) -> None:
    """As sshd: a client repeating `none` uses up max_auth_tries (6) like any failed attempt."""
    conn = world.connect()
    auth = conn.start_auth(b"admin")
    for _ in range(6):
        auth.send_request(b"none", b"")
        conn.flush()
    assert not conn.disconnected
    assert [r[0] for r in auth.replies] == [FAILURE] * 6
    assert conn.server.auth_failures == 5
    auth.send_request(b"none", b"")
    conn.flush()
    assert conn.disconnected
    (bye,) = world.audit.of("disconnect")
    assert bye["reason"] == "Too many authentication failures"


def test_thousands_of_pipelined_none_requests_end_the_connection(world: World) -> None:
    conn = world.connect()
    auth = conn.start_auth(b"admin")
    for i in range(5000):
        auth.send_request(b"none", b"")
        if i % 4 == 0:
            conn.flush()
    conn.flush()
    assert conn.disconnected
    assert conn.server.auth_failures == 6


def test_a_key_after_a_first_none_still_has_all_its_tries(world: World) -> None:
    """What OpenSSH does (`none` first, then keys): the `none` costs nothing."""
    conn = world.connect()
    auth = conn.start_auth(b"admin")
    auth.send_request(b"none", b"")
    conn.flush()
    for n in range(5):
        auth.send_request(b"publickey", b"\x00" + common.NS(b"ssh-ed25519") + common.NS(ed25519_key(70 + n).blob()))
        conn.flush()
    assert conn.server.auth_failures == 5
    assert conn.login(b"admin", ed25519_key()) == SUCCESS


def test_userauth_sets_no_login_timer_of_its_own_and_grace_time_still_ends_the_login(world: World) -> None:
    """Conch's userauth service starts a second login timer (loginTimeout) on every connection,
    only to cancel it at login: the transport's grace timer, running since the connection was
    made, is the one deadline. Once authentication has begun nothing of Conch's is pending, and
    a client that never finishes is still cut at login_grace_time."""
    conn = world.connect()
    auth = conn.start_auth(b"admin")
    probe = auth.probe(ed25519_key())
    conn.flush()
    assert result_of(probe)[0] == PK_OK  # a probe answered, no signed request: still logging in
    pending = [call.func for call in world.clock.getDelayedCalls() if call.active()]
    assert not any(getattr(f, "__name__", "") == "timeoutAuthentication" for f in pending), pending
    assert conn.server.service.supportedAuthentications == [b"publickey"]
    world.clock.advance(31)
    conn.flush()
    assert conn.disconnected
    (bye,) = world.audit.of("disconnect")
    assert bye["reason"] == "login grace time exceeded"
