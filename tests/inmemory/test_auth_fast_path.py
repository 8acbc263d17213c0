"""Publickey requests are decided without cred's portal and its Deferred chain when the checker is
conchcmd's own (it and the realm never wait). Differential: each scenario runs twice over the
whole in-memory stack, once that way and once with the same checker behind an opaque wrapper,
which sends every request through Conch's tryAuth, portal.login and errback chain as before; the
answers on the wire (message and payload), the disconnects, the audit records and every log line
must be the same, refusals, bugs and server-side failures included."""

from __future__ import annotations

import errno
import gc
import json
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from support.certlogin import cert_login, make_cert
from support.keys import authorized_line, ecdsa_key, ed25519_key, rsa_key
from support.sshclient import AuthClient, Connection
from support.world import World, add_user, make_world
from twisted.conch.ssh import common
from twisted.conch.ssh.keys import Key
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ISSHPrivateKey
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.logger import capturedLogs, formatEvent
from zope.interface import implementer

from conchcmd.core.config import LimitsConfig, UserPolicy
from conchcmd.policy.auth import KeyAuthorizer, PublicKeyChecker
from conchcmd.session.realm import CommandRealm

STRANGER = ed25519_key(7)  # authorized nowhere
CA = ed25519.Ed25519PrivateKey.generate()


@implementer(ICredentialsChecker)
class ViaPortal:
    """conchcmd's checker, hidden from the fast path: requests go through cred's portal."""

    credentialInterfaces = (ISSHPrivateKey,)

    def __init__(self, checker: PublicKeyChecker):
        self.checker = checker

    def requestAvatarId(self, credentials: Any) -> Any:
        return self.checker.requestAvatarId(credentials)


def unsigned(key: Any, algorithm: bytes | None = None, blob: bytes | None = None) -> bytes:
    return b"\x00" + common.NS(algorithm or key.sshType()) + common.NS(blob or key.public().blob())


def run(auth: AuthClient, conn: Connection, method: bytes, data: bytes) -> None:
    """Send one request and let the server answer (answers collect in auth.replies)."""
    auth.send_request(method, data)
    conn.flush()


# -- scenarios: what a client sends on one connection -------------------------------------------


def openssh_login(w: World, conn: Connection) -> None:
    auth = conn.start_auth(b"admin")
    run(auth, conn, b"none", b"")
    run(auth, conn, b"publickey", unsigned(ed25519_key()))
    run(auth, conn, b"publickey", auth.signed(ed25519_key()))


def stranger_then_admin(w: World, conn: Connection) -> None:
    auth = conn.start_auth(b"admin")
    run(auth, conn, b"publickey", unsigned(STRANGER))
    run(auth, conn, b"publickey", auth.signed(STRANGER))
    run(auth, conn, b"publickey", unsigned(ecdsa_key()))
    run(auth, conn, b"publickey", auth.signed(ecdsa_key()))


def rsa_algorithms(w: World, conn: Connection) -> None:
    auth = conn.start_auth(b"admin")
    run(auth, conn, b"publickey", unsigned(rsa_key(), b"ssh-rsa"))
    run(auth, conn, b"publickey", auth.signed(rsa_key(), b"ssh-rsa"))
    run(auth, conn, b"publickey", unsigned(rsa_key(), b"rsa-sha2-512"))
    run(auth, conn, b"publickey", auth.signed(rsa_key(), b"rsa-sha2-256"))


def bad_signatures(w: World, conn: Connection) -> None:
    auth = conn.start_auth(b"admin")
    algorithm, blob, signature, _ = common.getNS(auth.signed(ed25519_key())[1:], 3)
    other = common.getNS(auth.signed(ed25519_key(3))[1:], 3)[2]  # another key's signature, same request
    sig_type, raw = common.getNS(signature, 2)[:2]

    def request(signature: bytes) -> bytes:
        return b"\x01" + common.NS(algorithm) + common.NS(blob) + common.NS(signature)

    run(auth, conn, b"publickey", request(other))
    run(auth, conn, b"publickey", request(common.NS(sig_type) + common.NS(bytes(len(raw)))))
    run(auth, conn, b"publickey", request(common.NS(b"ssh-rsa") + common.NS(raw)))  # the wrong type
    run(auth, conn, b"publickey", request(signature[:-1]))  # malformed
    run(auth, conn, b"publickey", request(signature))


def malformed_blobs(w: World, conn: Connection) -> None:
    auth = conn.start_auth(b"admin")
    run(auth, conn, b"publickey", unsigned(ed25519_key(), b"ssh-ed25519", b"garbage"))
    run(auth, conn, b"publickey", unsigned(ed25519_key(), b"ssh-dss"))
    run(auth, conn, b"publickey", unsigned(ed25519_key(), b"no-such-alg@x"))
    run(auth, conn, b"publickey", b"\x01" + common.NS(b"ssh-ed25519") + common.NS(b"(sexp"))


def truncated_request(w: World, conn: Connection) -> None:
    auth = conn.start_auth(b"admin")
    run(auth, conn, b"publickey", unsigned(ed25519_key()))
    run(auth, conn, b"publickey", b"\x01" + common.NS(b"ssh-ed25519"))  # no blob: a protocol error


def too_many_failures(w: World, conn: Connection) -> None:
    auth = conn.start_auth(b"admin")
    for n in range(10, 10 + w.config.limits.max_auth_tries + 1):
        run(auth, conn, b"publickey", auth.signed(ed25519_key(n)))


def pipelined(w: World, conn: Connection) -> None:
    auth = conn.start_auth(b"admin")
    for data in (unsigned(STRANGER), unsigned(ed25519_key()), auth.signed(STRANGER), auth.signed(ed25519_key())):
        auth.send_request(b"publickey", data)
    conn.flush()


def names_change(w: World, conn: Connection) -> None:
    auth = conn.start_auth(b"nobody")
    run(auth, conn, b"publickey", unsigned(ed25519_key()))
    auth.user = b"\xff\xfe"  # not UTF-8
    run(auth, conn, b"publickey", auth.signed(ed25519_key()))
    auth.user = b"admin"
    run(auth, conn, b"password", b"\x00" + common.NS(b"secret"))  # not offered: no user has one
    run(auth, conn, b"publickey", auth.signed(ed25519_key()))


def line_conditions(w: World, conn: Connection) -> None:
    add_user(
        w,
        "carol",
        authorized_line(ed25519_key(), 'from="10.9.9.9"'),
        authorized_line(ecdsa_key(), 'expiry-time="19700101"'),
        authorized_line(rsa_key(), 'command="lastlog",no-pty'),
    )
    auth = conn.start_auth(b"carol")
    for key in (ed25519_key(), ecdsa_key(), rsa_key()):
        algorithm = b"rsa-sha2-512" if key is rsa_key() else None
        run(auth, conn, b"publickey", unsigned(key, algorithm))
        run(auth, conn, b"publickey", auth.signed(key, algorithm))


def certificate(w: World, conn: Connection) -> None:
    ca_line = authorized_line(Key(CA), 'cert-authority,principals="carol"')
    add_user(w, "carol", ca_line)
    cert_login(conn, b"carol", ed25519_key(5), make_cert(CA, ed25519_key(5), principals=[b"other"]))
    if not conn.disconnected:  # (a bug in the checker ends the connection: "internal error")
        cert_login(conn, b"carol", ed25519_key(5), make_cert(CA, ed25519_key(5), principals=[b"carol"]))


def second_client_over_the_limit(w: World, conn: Connection) -> None:
    openssh_login(w, w.connect("10.0.0.2"))  # takes the only slot
    openssh_login(w, conn)


SCENARIOS: dict[str, Callable[[World, Connection], None]] = {
    f.__name__: f
    for f in (
        openssh_login,
        stranger_then_admin,
        rsa_algorithms,
        bad_signatures,
        malformed_blobs,
        truncated_request,
        too_many_failures,
        pipelined,
        names_change,
        line_conditions,
        certificate,
        second_client_over_the_limit,
    )
}
#: Failures forced into the checker, the realm or the files, as a bug or the system would cause them.
FAULTS = ("none", "checker bug", "realm bug", "realm answers with a Deferred", "out of descriptors")


def observe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scenario: str, fault: str, via_portal: bool
) -> dict[str, Any]:
    w = make_world(tmp_path, max_clients=1, limits=LimitsConfig(max_auth_tries=4))
    if fault == "out of descriptors":
        path = w.config.authorized_keys.replace("%u", "admin")
        real_open = os.open

        def fake_open(name: Any, *args: Any, **kwargs: Any) -> int:
            if os.fspath(name) == path:
                raise OSError(errno.EMFILE, os.strerror(errno.EMFILE), name)
            return real_open(name, *args, **kwargs)

        monkeypatch.setattr(os, "open", fake_open)
    if fault == "checker bug":
        monkeypatch.setattr(KeyAuthorizer, "authorize", lambda *a, **k: {}["simulated bug"])
    if fault == "realm bug":
        monkeypatch.setattr(CommandRealm, "requestAvatar", lambda *a, **k: {}["simulated bug"])
    if fault == "realm answers with a Deferred":
        real_request_avatar = CommandRealm.requestAvatar
        monkeypatch.setattr(CommandRealm, "requestAvatar", lambda *a: defer.maybeDeferred(real_request_avatar, *a))
    portal = w.factory.portal
    checker = portal.checkers[ISSHPrivateKey]
    assert isinstance(checker, PublicKeyChecker)
    if via_portal:
        portal.checkers[ISSHPrivateKey] = ViaPortal(checker)
    through_portal: list[Any] = []
    real_login = Portal.login

    def login(self: Portal, credentials: Any, mind: Any, *interfaces: Any) -> Any:
        through_portal.append(credentials)
        return real_login(self, credentials, mind, *interfaces)

    monkeypatch.setattr(Portal, "login", login)
    with capturedLogs() as events:
        conn = w.connect("10.0.0.1")
        SCENARIOS[scenario](w, conn)
        conn.client.transport.loseConnection()
        conn.flush()
    keyed = [c for c in through_portal if ISSHPrivateKey.providedBy(c)]
    lines = []
    for e in events:
        text = formatEvent(e)
        if e.get("log_failure") is not None:
            text += " | " + e["log_failure"].getErrorMessage()
        lines.append((e.get("log_namespace"), str(e.get("log_level")), text))
    ids: dict[str, str] = {}  # random connection ids, named in order of appearance
    for record in w.audit.events:
        if "connection" in record:
            record["connection"] = ids.setdefault(record["connection"], f"<connection {len(ids)}>")

    def named(text: str) -> str:
        for real, name in ids.items():
            text = text.replace(real, name)
        return text.replace(str(tmp_path), "<tmp>")

    return {
        "replies": list(conn.auth.replies if conn.auth else []),
        "disconnected": conn.disconnected,
        "audit": json.loads(named(json.dumps(w.audit.events))),
        "log": [(namespace, level, named(text)) for namespace, level, text in lines],
        "keyed_through_portal": len(keyed),
    }


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_the_fast_path_answers_as_conch_s_portal_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scenario: str, fault: str
) -> None:
    fast = observe(tmp_path / "fast", monkeypatch, scenario, fault, via_portal=False)
    monkeypatch.undo()
    slow = observe(tmp_path / "slow", monkeypatch, scenario, fault, via_portal=True)
    assert fast["keyed_through_portal"] == 0  # the fast path was taken
    assert slow["keyed_through_portal"] > 0 or not slow["replies"]  # the comparison is with the portal's
    for field in ("replies", "disconnected", "audit", "log"):
        assert fast[field] == slow[field], field


@pytest.mark.parametrize("passwords", [False, True])
def test_the_first_none_is_answered_as_conch_answers_the_next(tmp_path: Path, passwords: bool) -> None:
    """OpenSSH's opening `none` is answered without a Failure; a second `none` still goes through
    auth_failed and Conch's _ebBadAuth: the same bytes, and only the second is counted."""
    users = {"carol": UserPolicy(password_bcrypt=bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)))} if passwords else {}
    w = make_world(tmp_path, users=users)
    conn = w.connect()
    auth = conn.start_auth(b"admin")
    with capturedLogs() as events:
        run(auth, conn, b"none", b"")
        assert not w.audit.of("auth") and not list(events) and conn.server.auth_failures == 0
        run(auth, conn, b"none", b"")
    first, second = auth.replies
    assert first == second == (51, common.NS(b"publickey,password" if passwords else b"publickey") + b"\x00")
    assert conn.server.auth_failures == 1 and len(w.audit.of("auth")) == 1


def test_refused_probes_with_padded_blobs_leave_no_memory_behind(tmp_path: Path) -> None:
    """Conch reads a key blob and ignores what follows the key, so an unauthenticated client can
    send a 60 KB blob per probe (refused: no authorized_keys line has those bytes). The parsed-key
    cache must not keep such blobs: 300 of them once kept 15 MiB for the life of the process."""
    w = make_world(tmp_path, limits=LimitsConfig(max_auth_tries=100))
    blob = ed25519_key().public().blob()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for c in range(3):
            conn = w.connect(f"10.1.{c}.1")
            auth = conn.start_auth(b"admin")
            for _ in range(99):
                run(auth, conn, b"publickey", unsigned(ed25519_key(), blob=blob + os.urandom(60_000)))
            assert auth.replies == [(51, common.NS(b"publickey") + b"\x00")] * 99  # each refused
            conn.client.transport.loseConnection()
            conn.flush()
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert retained < 2 * 2**20, f"{retained / 2**20:.1f} MiB kept after 297 refused probes"
    assert w.login().server.transport is not None  # and an operator's key still logs in


# -- an attacker's requests, drawn: the two paths agree, and only a genuine signature logs in ------

_KEYS = {"ed25519": ed25519_key, "rsa": rsa_key, "ecdsa": ecdsa_key, "stranger": lambda: STRANGER}
_ALGORITHMS = (
    b"ssh-rsa",
    b"ssh-rsa",  # SHA-1: twice as likely as the others
    b"rsa-sha2-256",
    b"rsa-sha2-512",
    b"ssh-ed25519",
    b"ecdsa-sha2-nistp256",
    b"sk-ssh-ed25519@openssh.com",
    b"ssh-ed25519-cert-v01@openssh.com",
    b"ssh-dss",
)
#: The algorithms each of admin's keys may log in with (none for the stranger's).
_ACCEPTED = {
    "ed25519": (b"ssh-ed25519",),
    "ecdsa": (b"ecdsa-sha2-nistp256",),
    "rsa": (b"rsa-sha2-256", b"rsa-sha2-512"),
}
#: What an attacker changes in a request it built from a genuine one.
_MUTATIONS = (
    "none",
    "pad blob",
    "cut blob",
    "flip signature",
    "signed for another user",
    "signed for another service",
    "signed with another session id",
    "signed with another algorithm",
    "signature type renamed",
    "blob of another key",
)
_REQUESTS = st.one_of(
    st.just(("none",)),
    st.tuples(st.just("garbage"), st.binary(max_size=64)),
    st.tuples(
        st.just("publickey"),
        st.sampled_from(sorted(_KEYS)),
        st.booleans(),  # signed
        st.just(None) | st.sampled_from(_ALGORITHMS),  # mostly the key's own
        st.just(b"admin") | st.sampled_from((b"admin", b"carol", b"\xff")),
        st.just("none") | st.sampled_from(_MUTATIONS),
    ),
    st.builds(  # a genuine login, for the failures before it to be counted against
        lambda name, algorithm: ("publickey", name, True, algorithm, b"admin", "none"),
        st.just("rsa") | st.just("ed25519") | st.just("ecdsa"),
        st.just(None),
    ),
)


def _request_data(auth: AuthClient, request: tuple[Any, ...]) -> tuple[bytes, bytes, bool]:
    """The method and data of a drawn request, and whether it is a genuine login (a correctly
    signed request with an authorized key and an accepted algorithm, unchanged)."""
    _, name, signed, algorithm, user, mutation = request
    key = _KEYS[name]()
    own = b"rsa-sha2-512" if key.sshType() == b"ssh-rsa" else key.sshType()
    algorithm = algorithm or own
    blob = key.public().blob()
    if mutation == "pad blob":
        blob += b"\x00tail"
    elif mutation == "cut blob":
        blob = blob[:-1]
    elif mutation == "blob of another key":
        blob = ed25519_key(8).public().blob()
    if not signed:
        return b"publickey", unsigned(key, algorithm, blob), False
    fields = {"user": user, "service": b"ssh-connection", "session": auth.transport.sessionID, "alg": algorithm}
    if mutation == "signed for another user":
        fields["user"] = b"admin" if user != b"admin" else b"carol"
    elif mutation == "signed for another service":
        fields["service"] = b"ssh-userauth"
    elif mutation == "signed with another session id":
        fields["session"] = bytes(len(fields["session"]))
    elif mutation == "signed with another algorithm":
        fields["alg"] = b"ssh-rsa" if key.sshType() == b"ssh-rsa" else b"x" + algorithm
    signed_data = (
        common.NS(fields["session"])
        + b"\x32"
        + common.NS(fields["user"])
        + common.NS(fields["service"])
        + common.NS(b"publickey")
        + b"\x01"
        + common.NS(fields["alg"])
        + common.NS(blob)
    )
    rsa_algorithm = algorithm in (b"ssh-rsa", b"rsa-sha2-256", b"rsa-sha2-512")
    try:
        signature = key.sign(signed_data, signatureType=algorithm if rsa_algorithm else key.sshType())
    except Exception:  # an RSA algorithm named for a key of another type: the key's own
        signature = key.sign(signed_data)
    if mutation == "flip signature":
        signature = signature[:-1] + bytes([signature[-1] ^ 1])
    elif mutation == "signature type renamed":
        signature = common.NS(b"ssh-rsa" if rsa_algorithm else b"ssh-ed25519") + common.getNS(signature, 2)[1]
    genuine = mutation == "none" and user == b"admin" and algorithm in _ACCEPTED.get(name, ())
    return b"publickey", b"\x01" + common.NS(algorithm) + common.NS(blob) + common.NS(signature), genuine


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(requests=st.lists(_REQUESTS, min_size=1, max_size=7))
@example(requests=[("publickey", "rsa", True, b"ssh-rsa", b"admin", "none")])  # SHA-1
@example(requests=[("publickey", "ed25519", True, b"ssh-ed25519-cert-v01@openssh.com", b"admin", "none")])
@example(requests=[("publickey", "ed25519", True, b"sk-ssh-ed25519@openssh.com", b"admin", "none")])
@example(requests=[("publickey", "ecdsa", True, b"ssh-ed25519", b"admin", "none")])  # type vs algorithm
@example(
    requests=[
        ("publickey", "ed25519", False, None, b"admin", "none"),
        ("publickey", "ed25519", True, None, b"admin", "pad blob"),
    ]
)
@example(requests=[("publickey", "ed25519", True, None, b"carol", "none")])  # from= another address
@example(requests=[("publickey", "rsa", True, None, b"admin", "signed with another session id")])
def test_drawn_attacks_get_the_same_answers_and_only_a_genuine_signature_logs_in(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, requests: list[tuple[Any, ...]]
) -> None:
    genuine: list[bool] = []

    def drawn(w: World, conn: Connection) -> None:
        add_user(w, "carol", authorized_line(ed25519_key(), 'from="10.9.9.9"'))
        auth = conn.start_auth(b"admin")
        for request in requests:
            if request[0] == "none":
                auth.user, method, data, ok = b"admin", b"none", b"", False
            elif request[0] == "garbage":
                method, data, ok = b"publickey", request[1], False
            else:
                auth.user = request[4]
                method, data, ok = _request_data(auth, request)
            genuine.append(ok)
            run(auth, conn, method, data)
            if conn.disconnected or any(number == 52 for number, _ in auth.replies):
                return

    root = tmp_path_factory.mktemp("drawn")
    with monkeypatch.context() as patched:
        patched.setitem(SCENARIOS, "drawn", drawn)
        fast = observe(root / "fast", patched, "drawn", "none", via_portal=False)
    fast_genuine, genuine[:] = list(genuine), []
    with monkeypatch.context() as patched:
        patched.setitem(SCENARIOS, "drawn", drawn)
        slow = observe(root / "slow", patched, "drawn", "none", via_portal=True)
    assert genuine == fast_genuine
    for field in ("replies", "disconnected", "audit", "log"):
        assert fast[field] == slow[field], field
    logged_in = any(number == 52 for number, _ in fast["replies"])
    event(f"logged in: {logged_in}")
    if logged_in:
        assert genuine[-1], "logged in without a genuine signature"


@pytest.mark.parametrize("change", ["line removed", "key revoked", "from= added", "expiry-time passed"])
def test_what_changed_since_the_probe_decides_the_signed_request(tmp_path: Path, change: str) -> None:
    """The probe's PK_OK is no promise: the signed request that follows is decided again on the
    files and the clock of its own time (the parsed key is remembered, nothing else)."""
    revoked_keys = tmp_path / "keys" / "revoked_keys"
    w = make_world(tmp_path, revoked_keys=str(revoked_keys))
    revoked_keys.write_text("")
    os.chmod(revoked_keys, 0o600)
    add_user(w, "carol", authorized_line(ed25519_key(), 'expiry-time="19700101000020Z"'))
    conn = w.connect()
    auth = conn.start_auth(b"carol")
    run(auth, conn, b"publickey", unsigned(ed25519_key()))
    assert auth.replies[-1][0] == 60  # PK_OK
    if change == "line removed":
        add_user(w, "carol", authorized_line(ed25519_key(3)))
    elif change == "key revoked":
        revoked_keys.write_text(authorized_line(ed25519_key()))
    elif change == "from= added":
        add_user(w, "carol", authorized_line(ed25519_key(), 'from="10.9.9.9"'))
    w.clock.advance(25 if change == "expiry-time passed" else 1)  # within the login grace time
    run(auth, conn, b"publickey", auth.signed(ed25519_key()))
    assert auth.replies[-1][0] == 51
    assert w.audit.of("auth")[-1]["ok"] is False
