"""ssh-userauth: Conch's userauth service with sshd's pacing, limits and audit (see UserAuthService)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.conch import error as conch_error
from twisted.conch.error import NotEnoughAuthentication
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import transport, userauth
from twisted.conch.ssh.common import NS, getNS
from twisted.cred.credentials import ISSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.python.failure import Failure

from conchcmd.core.audit import error_kind, sanitise
from conchcmd.core.filetrust import AttemptFiles
from conchcmd.core.logtargets import LOG_NAMESPACE, FastLogger
from conchcmd.core.peer import PeerSSHPrivateKey, PeerUsernamePassword
from conchcmd.keys.keyparse import KeyParseError, sshd_blob
from conchcmd.policy.auth import Identity, KeyRefused, LoginUnavailable, PublicKeyChecker, SkRequirementNotMet
from conchcmd.policy.authorized_keys import fingerprint
from conchcmd.policy.certs import CertificateRefused, is_certificate, parse_certificate, public_blob
from conchcmd.server.authlog import KeyInfo, log_word
from conchcmd.wire.conchprivate import UserAuthHooks

if TYPE_CHECKING:
    from conchcmd.server.transport import ServerTransport

log = FastLogger(namespace=LOG_NAMESPACE)

#: What a check raises to refuse a login (Conch's IgnoreAuthentication: answered already, e.g. PK_OK;
#: NotEnoughAuthentication: partial success). Anything else is a bug (`_internal_error`).
REFUSALS = (UnauthorizedLogin, conch_error.ConchError, conch_error.IgnoreAuthentication, NotEnoughAuthentication)

#: Authentication requests a connection may have waiting behind the one being checked; one more
#: and it is disconnected. OpenSSH's client sends one and waits for the answer.
MAX_WAITING_AUTH_REQUESTS = 4


class UserAuthService(UserAuthHooks):
    """ssh-userauth with the factory's clock and limits, and an audit record per real attempt.

    Overrides Conch's class-level global-reactor clock, its 10-hour login timeout and its 20
    attempts; answers requests one at a time (Conch checks every request as it arrives, so a
    pipelining client had hundreds of password checks running at once, counted late); counts a
    failure when it is decided, then holds the answer to a password failure back for
    `passwordDelay`; offers password auth to every name or to none; accepts OpenSSH certificates
    (Conch's auth_publickey refuses any blob its Key class cannot parse); and hands the checkers
    the peer address (for `from=` and `source-address`).
    """

    transport: ServerTransport
    _key: tuple[bytes, bytes] | None = None
    _logged: bytes | None = None  # _key's blob as logged (`_logged_blob`), worked out once per request
    _methods: list[bytes] = []
    _listed = False  # Conch has filled in _methods
    _in_progress = False  # a request is being checked (or its failure answer held back)
    _stopped = False
    _delay: Any = None
    _write_call: Any = None  # `_write_held` on the next turn (see `_auth_line`'s `hold`)
    _unavailable = 0  # attempts that failed for a server-side reason (not counted as failures)

    _without_password: list[bytes] | None = None  # _methods less password, made once

    @property
    def supportedAuthentications(self) -> list[bytes]:
        passwords = self.transport.factory.passwords
        if not self._listed or (passwords is not None and passwords.offered):
            return self._methods  # Conch fills this list in serviceStarted
        if self._without_password is None:
            self._without_password = [m for m in self._methods if m != b"password"]
        return self._without_password

    @supportedAuthentications.setter
    def supportedAuthentications(self, methods: list[bytes]) -> None:
        self._methods = methods
        self._without_password = None

    def serviceStarted(self) -> None:
        factory = self.transport.factory
        self.clock = factory.clock
        self.loginTimeout = math.ceil(factory.settings.limits.login_grace_time)
        self.max_auth_tries = factory.settings.limits.max_auth_tries
        # Conch's own counter (attemptsBeforeDisconnect = 20) would cut at 21 failures even when
        # max_auth_tries is higher; auth_failed counts and disconnects alone.
        self.attemptsBeforeDisconnect = self.max_auth_tries + 1
        self._requests = 0  # requests looked at (sshd's authctxt->attempt)
        self._waiting: deque[bytes] = deque()
        self._files = AttemptFiles()  # authorized_keys read once per connection while unchanged
        self._decided: dict[bytes, bool] = {}  # whether each name is valid, once decided (`_note_user`)
        #: Auth lines waiting for their name to be decided, in order (None: "Invalid user", if it is).
        self._waiting_lines: list[tuple[bytes, Callable[[bool], None] | None]] = []
        self.transport.settle_auth_user = self._settle_all
        self.transport.after_auth_lines = self._after_waiting
        # Conch's serviceStarted, less its login timer (a DelayedCall per connection, set and then
        # cancelled: timeoutAuthentication after loginTimeout): the transport's login grace timer,
        # started at connect with the same limit, ends an unauthenticated connection first.
        self.authenticatedWith = []
        self.loginAttempts = 0
        self.user = None
        self.nextService = None
        self.portal = factory.portal
        methods = self.interfaceToMethod
        self.supportedAuthentications = [methods[i] for i in self.portal.listCredentialsInterfaces() if i in methods]
        if not self.transport.isEncrypted("in") and b"password" in self._methods:
            self._methods.remove(b"password")  # (Conch: no password in plaintext)
        self._listed = True

    def serviceStopped(self) -> None:
        """Authenticated or disconnected: what waits is dropped, a held-back answer is not sent."""
        self._stopped = True
        if self._waiting_lines:  # authenticated: nothing waits; disconnected: settled already
            self._settle_all()
        self.transport.settle_auth_user = self.transport.after_auth_lines = None
        self._waiting.clear()
        if self._delay is not None and self._delay.active():
            self._delay.cancel()
        self._delay = None
        if self._write_call is not None and self._write_call.active():
            self._write_call.cancel()  # (written by _settle_all above, or as the connection ended)
        self._write_call = None
        # (Conch's serviceStopped only cancels the login timer serviceStarted no longer sets.)

    @property
    def pending(self) -> bool:
        """Whether a request is being checked or waits (for the strike of a connection closed then)."""
        return self._in_progress or bool(self._waiting)

    def ssh_USERAUTH_REQUEST(self, packet: bytes) -> Any:
        # RFC 4252 section 5, as sshd does it: each request is answered before the next is looked at.
        if self._stopped or self.transport.closing:
            return None
        if self._in_progress:
            if len(self._waiting) >= MAX_WAITING_AUTH_REQUESTS:
                self._waiting.clear()
                peer = self.transport.peer
                self._after_waiting(
                    lambda: log.info(
                        "More than {n} authentication requests waiting from {peer}; disconnecting",
                        n=MAX_WAITING_AUTH_REQUESTS,
                        peer=peer,
                    )
                )
                self.transport.sendDisconnect(
                    transport.DISCONNECT_PROTOCOL_ERROR, b"too many authentication requests pending"
                )
            else:
                self._waiting.append(packet)
            return None
        user, next_service, rest = getNS(packet, 2)
        if next_service != b"ssh-connection":
            # Conch would look the service up only after a successful check: an unknown one raised
            # there, `ssh-userauth` started a second round, and each success took another slot.
            self.transport.sendDisconnect(transport.DISCONNECT_SERVICE_NOT_AVAILABLE, b"no such service")
            return None
        self._in_progress = True
        self._requests += 1
        self._note_user(user)
        method, rest = getNS(rest)
        offered = method in self.supportedAuthentications
        checker = self._key_checker() if offered and method == b"publickey" else None
        if not offered:
            d = self._refuse_method(user, next_service, method)
        elif checker is not None:
            self._set_request(user, next_service, method)
            creds = self._key_credentials(rest)  # a malformed request raises here, as in auth_publickey
            try:
                d = self._publickey_now(checker, creds, rest)
            except Exception:  # a bug in auth_failed itself: _request_done ends the connection
                d = Failure()
            if self._waiting_lines:  # the check has read authorized_keys (as sshd's does): decide now
                self._settle()
        else:
            d = super().ssh_USERAUTH_REQUEST(packet)  # passwords: Conch's tryAuth and Deferred chain
            if method == b"publickey" and self._waiting_lines:
                self._settle()  # through cred's portal: as above
        if not isinstance(d, defer.Deferred):  # answered already (a Failure: a bug, see _request_done)
            self._request_done(d)
            return None
        return d.addBoth(self._request_done)

    def _set_request(self, user: bytes, next_service: bytes, method: bytes) -> None:
        """Conch's ssh_USERAUTH_REQUEST state for a request (a new name or service forgets what
        the previous ones authenticated)."""
        if user != self.user or next_service != self.nextService:
            self.authenticatedWith = []
        self.user, self.nextService, self.method = user, next_service, method

    def _refuse_method(self, user: bytes, next_service: bytes, method: bytes) -> Any:
        """A method not offered (`none` above all: OpenSSH's first question on every connection),
        answered as Conch answers it (its ssh_USERAUTH_REQUEST state, then auth_failed with
        tryAuth's ConchError), without the Deferred chain that re-raises the Failure on the way."""
        self._set_request(user, next_service, method)
        if method == b"none" and self._requests == 1:
            # Free (auth_failed's rule), so Conch's answer alone, without building a Failure.
            self.transport.sendPacket(
                userauth.MSG_USERAUTH_FAILURE, NS(b",".join(self.supportedAuthentications)) + b"\x00"
            )
            return None
        return self.auth_failed(Failure(conch_error.ConchError("unsupported authentication, failing")))

    def _key_checker(self) -> PublicKeyChecker | None:
        """The portal's checker of public keys when it is ours (it decides without waiting), for
        `_publickey_now`; None sends the request through cred's portal."""
        checker = self.portal.checkers.get(ISSHPrivateKey)
        return checker if isinstance(checker, PublicKeyChecker) else None

    def _publickey_now(self, checker: PublicKeyChecker, creds: PeerSSHPrivateKey, data: bytes) -> Any:
        """A publickey request decided at once, with the answers Conch's tryAuth, portal.login and
        errback chain give it (PK_OK for an acceptable key offered without a signature, else
        auth_succeeded or auth_failed), without a Deferred and a re-raised Failure per step: our
        checker and realm never wait."""
        try:
            if creds.signature is None:  # the checker's ValidPublicKey, without raising it
                checker.acceptable(creds)
                # A key the name's file (or a trusted CA) accepts: a name that can log in, decided
                # without asking `known_user` to read the file again.
                self._decided[creds.username] = True
                self.transport.sendPacket(userauth.MSG_USERAUTH_PK_OK, data[1:])
                return None  # Conch's IgnoreAuthentication: nothing more to say
            identity = checker.check(creds)
            self._decided[creds.username] = True  # as above
            result = self.portal.realm.requestAvatar(identity, self.transport.peer_address, IConchUser)
            if isinstance(result, defer.Deferred):  # a realm that waits: as Conch's chain would
                return result.addCallback(self.auth_succeeded).addErrback(self.auth_failed)
            self.auth_succeeded(result)
            return None
        except Exception:
            return self.auth_failed(Failure())

    def _note_user(self, name: bytes) -> None:
        """A request for a user name not seen on this connection: whether it is one that can log
        in, and sshd's "Invalid user" line if not (sshd logs it once, as it allows no change of
        name; Conch allows one, so each new name gets its line).

        sshd decides from its account database, which costs the same for every name; here a name
        is an account if the configuration says so or it has authorized_keys lines. Reading that
        file before answering would let a client time OpenSSH's opening `none` (answered after
        this) to learn which names have keys, so only the configuration is asked now (the same
        work for every name); what it leaves open waits for `_settle`, with the lines that need it.
        """
        t = self.transport
        if name == t.auth_user:
            return
        decided = self._decided
        # Not UTF-8: no configured name, and `_decide` finds it invalid; asked all the same.
        if name not in decided and t.factory.configured_user(name.decode("utf-8", "surrogateescape")):
            decided[name] = True
        valid = decided.get(name)
        t.auth_user, t.auth_user_valid = name, valid is not False
        if valid is None or (valid is False and self._waiting_lines):  # `_auth_line(None)`, inline
            # (a name decided valid has no line to wait for: the queue stays bounded by the
            # counted failures however often a client alternates names its key is good for)
            self._waiting_lines.append((name, None))
        elif valid is False:  # decided earlier (a failed password): not before this answer either
            self._auth_line(None, hold=True)

    def _auth_line(self, write: Callable[[bool], None] | None, *, hold: bool = False) -> None:
        """Write an auth-log line about the current name, given whether it is valid (None: the
        "Invalid user" line, if it is not), now if that is decided and no earlier line waits,
        else once `_settle` or `_settle_all` has decided it (lines keep their order). `hold`:
        not before the answer to this request in any case (on the reactor's next turn, once the
        answer has left, if the name is decided then): an answer sent at once must cost the same
        whether the name was decided (its lines written) or not (its lines waiting), or its
        timing tells a configured name from the others."""
        name = self.transport.auth_user or b""
        if hold:
            self._waiting_lines.append((name, write))
            if self._write_call is None:
                self._write_call = self.clock.callLater(0, self._write_held)
        elif not self._waiting_lines and name in self._decided:
            self._write(name, write)
        else:
            self._waiting_lines.append((name, write))

    def _write_held(self) -> None:
        self._write_call = None
        if self.transport.closing:
            # The answer was a disconnect: a closing connection's last bytes are written by the
            # reactor's next poll, after this turn's timed calls (FlushingReactor, as Twisted's
            # EPOLLOUT): the lines wait for the connection's end (`_settle_all`) instead.
            return
        self._write_decided()

    def _write(self, name: bytes, write: Callable[[bool], None] | None) -> None:
        valid = self._decided[name]
        if write is not None:
            write(valid)
        elif not valid:
            self.transport.auth_log.invalid_user(name)

    def _decide(self, name: bytes, *, gone: bool = False) -> None:
        """Whether `name` is valid, from the configuration and its authorized_keys (read now).
        A bug there is the connection's internal error, and the name is taken as valid (as one
        whose file cannot be read): the lines waiting for it are written all the same."""
        t = self.transport
        try:
            valid = t.factory.known_user(name.decode("utf-8"), self._files)
        except UnicodeDecodeError:
            valid = False
        except Exception:
            valid = True
            t.internal_error(Failure(), "deciding whether a user name can log in", gone=gone)
        self._decided[name] = valid
        if name == t.auth_user:
            t.auth_user_valid = valid

    def _settle(self) -> None:
        """Decide the current name (reading its authorized_keys, unless this connection's check
        has just read it) and write the lines that waited for it. Run where that file is read
        anyway (after its publickey request's check); never for another name, whose file no
        answer may depend on (a failed password's answer, held back, settles them all)."""
        name = self.transport.auth_user or b""
        if name not in self._decided:
            self._decide(name)
        self._write_decided()

    def _write_decided(self) -> None:
        """Write the waiting lines of decided names, up to the first line of a name still open."""
        decided, waiting = self._decided, self._waiting_lines
        done = 0
        try:
            for line_name, write in waiting:  # the lines of decided names, up to the first still open
                if line_name not in decided:
                    break
                done += 1  # first: a bug writing this line drops it, not writes those before it again
                self._write(line_name, write)
        finally:
            del waiting[:done]

    def _settle_all(self, gone: bool = False) -> None:
        """Decide every name whose lines wait and write them: as the connection ends or once
        authenticated, when no answer to this client is left to show the reads, or behind a
        failed password's fixed delay (`gone`: the connection is lost; the transport calls this
        as its `settle_auth_user`)."""
        lines, self._waiting_lines = self._waiting_lines, []  # taken first: a bug met here once
        for name, _ in lines:
            if name not in self._decided:
                self._decide(name, gone=gone)
        for line in lines:
            self._write(*line)

    def _after_waiting(self, write: Callable[[], None]) -> None:
        """Write the line saying why the server disconnects after those waiting for their name,
        as the connection ends: never before the disconnect, which leaves at once whatever the
        name (written at once when nothing waited, a name decided at once, configured, made the
        disconnect ~20 µs later than another name's)."""
        self._waiting_lines.append((self.transport.auth_user or b"", lambda _valid: write()))

    def _request_done(self, result: Any) -> None:
        self._in_progress = False
        if isinstance(result, Failure):  # a bug in answering (auth_succeeded, auth_failed): no answer was sent
            self.transport.internal_error(result, "answering an authentication request")
        if self._waiting and not self._stopped and not self.transport.closing:
            try:
                self.ssh_USERAUTH_REQUEST(self._waiting.popleft())
            except Exception as e:  # malformed, found only now: as ServerTransport.dataReceived does
                self._waiting.clear()
                self.transport.packet_raised(e, " in a waiting authentication request")
        else:
            self._waiting.clear()

    def _key_credentials(self, packet: bytes) -> PeerSSHPrivateKey:
        """The credentials of a publickey request's data (Conch's auth_publickey reads the same
        fields), with the peer and the files this connection's authentication has read."""
        has_signature = packet[0:1] != b"\0"
        algorithm, blob, rest = getNS(packet[1:], 2)
        user, service = self.user or b"", self.nextService or b""
        self._key, self._logged = (algorithm, blob), None
        signed = None
        signature = None
        if has_signature:
            signature = getNS(rest)[0]
            assert self.transport.sessionID is not None
            signed = (
                NS(self.transport.sessionID)
                + bytes((userauth.MSG_USERAUTH_REQUEST,))
                + NS(user)
                + NS(service)
                + NS(b"publickey")
                + b"\x01"
                + NS(algorithm)
                + NS(blob)
            )
        return PeerSSHPrivateKey(user, algorithm, blob, signed, signature, self.transport.peer_address, self._files)

    def auth_publickey(self, packet: bytes) -> Any:
        creds = self._key_credentials(packet)
        d = self.portal.login(creds, self.transport.peer_address, IConchUser)
        if creds.signature is None:
            d.addErrback(self.answer_key_probe, packet[1:])  # an authorized key's probe gets PK_OK
        return d

    def auth_password(self, packet: bytes) -> Any:
        password = getNS(packet[1:])[0]
        creds = PeerUsernamePassword(self.user or b"", password, self.transport.peer_address)
        return self.portal.login(creds, self.transport.peer_address, IConchUser)  # the failure delay: see auth_failed

    def _key_fields(self) -> dict[str, Any]:
        if self.method != b"publickey" or self._key is None:
            return {}
        algorithm, blob = self._key[0], self._logged_blob()
        fields: dict[str, Any] = {"key_type": sanitise(algorithm, 64), "fingerprint": fingerprint(blob)}
        if is_certificate(blob):
            try:
                cert = parse_certificate(blob, self.transport.factory.certificates)
                fields.update(
                    fingerprint=fingerprint(public_blob(cert.public_key())),
                    cert_key_id=sanitise(cert.key_id),
                    cert_serial=cert.serial,
                    ca_fingerprint=fingerprint(public_blob(cert.signature_key())),
                )
            except CertificateRefused:
                pass
        return fields

    def _logged_blob(self) -> bytes:
        """The request's key blob as ssh-keygen writes the key, for fingerprints in log lines and
        audit records: sshd logs the key it read, so padding a blob (which sshd takes) must not
        show one key under another fingerprint. The bytes as sent if they are no key."""
        assert self._key is not None
        if self._logged is None:
            try:
                self._logged = sshd_blob(self._key[1])
            except KeyParseError:
                self._logged = self._key[1]
        return self._logged

    def _user_name(self) -> str:
        """The client's user name in an audit record as in the auth-log line (`log_word`), so
        the two join and neither reads as another name."""
        return log_word(self.user or b"")

    def auth_succeeded(self, result: Any) -> None:
        _, avatar, logout = result
        identity: Identity = avatar.identity
        if self._stopped or self.transport.closing:  # decided after the client left: no slot, no session
            logout()
            return
        if not self.transport.admit(avatar):
            self._audit_identity(identity, ok=False, reason=self.transport.refusal)
            logout()
            return
        key = None
        if identity.method == "publickey" and self._key:
            key = self.transport.factory.key_infos.of(self._key[1], self._logged_blob)
        t = self.transport
        if self._waiting_lines:  # an earlier name's lines (written once authenticated): after them
            authorized = {"user": sanitise(identity.user), "peer": t.peer, "source": identity.grant.source}
            self._auth_line(lambda _valid: t.auth_log.accepted(identity.method, identity.user, key))
            self._auth_line(lambda _valid: log.info("Authorized {user}@{peer} by {source}", **authorized))
        else:
            t.auth_log.accepted(identity.method, identity.user, key)
            log.info(
                "Authorized {user}@{peer} by {source}",
                user=sanitise(identity.user),
                peer=t.peer,
                source=identity.grant.source,
            )
        self._audit_identity(identity, ok=True)
        super().auth_succeeded(result)

    def _audit_identity(self, identity: Identity, **fields: Any) -> None:
        self.transport.audit.record(
            "auth", user=sanitise(identity.user), peer=self.transport.peer, **identity.audit_fields(), **fields
        )

    def auth_failed(self, reason: Failure) -> Any:
        if self._stopped:  # decided after the client left (it was counted as abandoned)
            if not isinstance(reason.value, (*REFUSALS, defer.CancelledError)):
                self.transport.internal_error(reason, "checking an authentication request", gone=True)
            return None
        # isinstance on the value, not reason.check: check recomputes the type's qualified MRO names
        # on every call (~10 calls each); the same answer for these classes.
        if isinstance(reason.value, LoginUnavailable):
            return self._unavailable_answer(reason)
        if not isinstance(reason.value, REFUSALS):
            return self._internal_error(reason)
        # As sshd (auth2.c userauth_finish): only a first request of method `none` is free; Conch
        # never counted `none`, so a client could send them without end.
        if not isinstance(reason.value, conch_error.IgnoreAuthentication) and (
            self.method != b"none" or self._requests > 1
        ):
            message = sanitise(reason.getErrorMessage(), 200)
            t = self.transport
            decided = self.clock.seconds()
            key = (
                KeyInfo.of(self._logged_blob(), t.factory.certificates)
                if self.method == b"publickey" and self._key
                else None
            )
            method, user = self.method or b"", self.user or b""
            # Not before an answer of the same cost for every name (none, a method not offered,
            # the last failure's disconnect; a password's is held back anyway); a publickey
            # request's answer came after reading the name's file, as sshd's (not claimed).
            hold = method != b"publickey"
            if isinstance(reason.value, SkRequirementNotMet):
                requirement = reason.value.requirement
                self._auth_line(lambda valid: t.auth_log.sk_requirement_not_met(user, valid, key, requirement))
            self._auth_line(lambda valid: t.auth_log.failed(method, user, valid, key), hold=hold)
            refused = {"method": sanitise(method, 32), "user": log_word(user), "peer": t.peer, "reason": message}
            # The reason's line follows the auth line it explains, when that waits for _settle too.
            self._auth_line(
                lambda _valid: log.info("Refused {method} for {user} from {peer}: {reason}", **refused), hold=hold
            )
            self.transport.audit.record(
                "auth",
                ok=False,
                user=self._user_name(),
                peer=self.transport.peer,
                method=sanitise(self.method, 32),
                **self._key_fields(),
                **(reason.value.audit_fields() if isinstance(reason.value, KeyRefused) else {}),
                reason=message,
            )
            self.transport.auth_failures += 1
            if self.transport.auth_failures >= self.max_auth_tries:  # OpenSSH's MaxAuthTries
                self._auth_line(lambda valid: t.auth_log.too_many_failures(user, valid), hold=hold)
                self.transport.auth_end_logged = True
                self.transport.sendDisconnect(
                    transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE, b"Too many authentication failures"
                )
                return None
            if self.method == b"password" and b"password" in self.supportedAuthentications:
                # Conch's passwordDelay, taken here (after counting) rather than in auth_password;
                # the next request waits for it too.
                # The answer waits for passwordDelay from `decided` whatever this reads, so every
                # open name is decided (their lines, counted by fail2ban, need not wait for the
                # end); not where no delay hides the reads (a refused method, the last failure).
                if self._waiting_lines:
                    self._settle_all()
                held: defer.Deferred[None] = defer.Deferred()
                delay = max(0.0, self.passwordDelay - (self.clock.seconds() - decided))
                self._delay = self.clock.callLater(delay, held.callback, None)
                return held.addCallback(lambda _: self._answer_failure(reason))
        super().auth_failed(reason)
        return None

    def _unavailable_answer(self, reason: Failure) -> Any:
        """A login the server could not decide (LoginUnavailable): audited with its cause, no
        auth-log line in sshd's words (fail2ban would count it), no failure counted. The
        authorizer has logged the cause (rate-limited). USERAUTH_FAILURE lets the client try
        another method; after max_auth_tries such answers the connection is closed, still
        without a strike."""
        t = self.transport
        self._server_side_failure(reason.getErrorMessage())
        self._unavailable += 1
        if self._unavailable + t.auth_failures >= self.max_auth_tries:
            t.sendDisconnect(
                transport.DISCONNECT_SERVICE_NOT_AVAILABLE, b"temporary server-side failure; try again later"
            )
            return None
        super().auth_failed(reason)
        return None

    def _internal_error(self, reason: Failure) -> None:
        """A check that raised something no refusal raises: a bug in our checker, realm or
        success path (Conch's last errback logs it and answers USERAUTH_FAILURE: a login refused
        to the client, a "Failed" line to fail2ban, an operator who sees nothing). Audited as the
        server's failure, no sshd-worded line, no failure counted; the transport logs the
        traceback and ends the connection, so that a client cannot replay the bug without end."""
        self._server_side_failure(f"internal error: {error_kind(reason.value)}: {reason.getErrorMessage()}")
        self.transport.internal_error(reason, "checking an authentication request")

    def _server_side_failure(self, reason: str) -> None:
        """The auth record of a request the server failed to decide, and no "Connection closed by
        ... [preauth]" line for its end (fail2ban would count it)."""
        t = self.transport
        t.auth_end_logged = True
        t.audit.record(
            "auth",
            ok=False,
            user=self._user_name(),
            peer=t.peer,
            method=sanitise(self.method, 32),
            **self._key_fields(),
            server_side=True,
            reason=sanitise(reason, 200),
        )

    def _answer_failure(self, reason: Failure) -> None:
        self._delay = None
        if not self._stopped and not self.transport.closing:
            super().auth_failed(reason)
