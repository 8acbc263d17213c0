"""Authentication: who may log in, with which key, certificate or password, and on what terms.

Corrects stock-Conch behaviours: `SSHPublicKeyChecker` answers PK_OK for any parseable key (we
look the key up first), accepts SHA-1 `ssh-rsa` signatures (refused here), skips authorized_keys
lines with options (parsed and enforced here), and has no certificates at all.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import bcrypt
from twisted.conch.error import ValidPublicKey
from twisted.conch.ssh.common import getNS
from twisted.conch.ssh.keys import Key
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ISSHPrivateKey, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from conchcmd.core.audit import sanitise
from conchcmd.core.config import Config, UserPolicy, valid_user_name
from conchcmd.core.filetrust import AttemptFiles, FileTrust, ServerSideFailure
from conchcmd.core.hostmatch import match_address_list
from conchcmd.core.logtargets import LOG_NAMESPACE
from conchcmd.core.peer import PeerSSHPrivateKey
from conchcmd.core.threads import BlockingRunner
from conchcmd.core.throttle import LineThrottle
from conchcmd.keys.keyparse import KeyParseError, ParsedKeys, PublicKey, ed25519_key_refusal
from conchcmd.keys.sk import (
    SK_ECDSA,
    SK_ED25519,
    SK_KEY_TYPES,
    PubkeyAuthOptions,
    SkBadSignature,
    SkError,
    SkPublicKey,
    SkRequirements,
    SkSignature,
    WireReader,
    parse_sk_public_key,
)
from conchcmd.policy.authorized_keys import AuthorizedKey, AuthorizedKeysFiles, ParsedFile, fingerprint, lines_for_key
from conchcmd.policy.certs import (
    CERT_SIGNATURES,
    CertificateReadings,
    CertificateRefused,
    RevokedKeys,
    TrustedCAs,
    principals_allow,
    validate_certificate,
)

log = Logger(namespace=LOG_NAMESPACE)
T = TypeVar("T")

#: Signature algorithms accepted per key type. No SHA-1 (`ssh-rsa`), no DSA.
SIGNATURE_ALGORITHMS: dict[bytes, tuple[bytes, ...]] = {
    b"ssh-ed25519": (b"ssh-ed25519",),
    b"ecdsa-sha2-nistp256": (b"ecdsa-sha2-nistp256",),
    b"ecdsa-sha2-nistp384": (b"ecdsa-sha2-nistp384",),
    b"ecdsa-sha2-nistp521": (b"ecdsa-sha2-nistp521",),
    b"ssh-rsa": (b"rsa-sha2-512", b"rsa-sha2-256"),
    SK_ED25519: (SK_ED25519,),  # security keys (not their webauthn signatures)
    SK_ECDSA: (SK_ECDSA,),
}
#: What `server-sig-algs` advertises: the user-key algorithms above, best first.
USER_SIGNATURE_ALGORITHMS: tuple[bytes, ...] = (
    b"ssh-ed25519",
    SK_ED25519,
    b"ecdsa-sha2-nistp256",
    b"ecdsa-sha2-nistp384",
    b"ecdsa-sha2-nistp521",
    SK_ECDSA,
    b"rsa-sha2-512",
    b"rsa-sha2-256",
)
MIN_RSA_BITS = 2048
#: Salt and digest of the hash checked for names without a password (no password matches it); the
#: cost is put in front at start-up and reload (see `dummy_hash`).
_DUMMY_SALT_AND_DIGEST = b"C6UzMDM.H6dfI/f/IKxGhu4kN/4Kg8HO0gAYbHk5NUqL7Gy5fPg2S"
#: bcrypt's own range of costs (log2 of the rounds).
_BCRYPT_COSTS = range(4, 32)
BCRYPT_MAX_PASSWORD = 72  # bytes: bcrypt 5 raises ValueError for a longer password


@dataclass(frozen=True)
class Grant:
    """The terms of a login: a forced command, whether a pty may be had, and why it was allowed."""

    forced_command: str | None = None
    pty: bool = True
    source: str = ""


@dataclass(frozen=True)
class Identity:
    """Who logged in, how, and on what terms: the avatar ID the realm receives."""

    user: str
    method: str
    key_type: str
    fingerprint: str
    grant: Grant = field(default=Grant(), compare=False)
    certificate: dict[str, Any] | None = field(default=None, compare=False)
    sk: SkSignature | None = field(default=None, compare=False)  # a security key's flags and counter

    def audit_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"method": self.method}
        if self.key_type:
            fields.update(key_type=self.key_type, fingerprint=self.fingerprint)
        if self.certificate:
            fields.update(self.certificate)
        if self.sk is not None:
            fields.update(self.sk.audit_fields())
        return fields


def key_refusal(key: Key) -> str | None:
    """Why login refuses this key whatever its authorized_keys line says (its type or its size),
    or None. Login and `conchcmd users` both ask here."""
    key_type = key.sshType()
    if key_type not in SIGNATURE_ALGORITHMS:
        return f"{sanitise(key_type)} keys are not accepted"
    if key.type() == "RSA" and key.size() < MIN_RSA_BITS:
        return f"RSA key of {key.size()} bits is too small"
    return None


class KeyRefused(UnauthorizedLogin):
    """Authentication failed for a stated reason (kept for logs and the audit record)."""

    def audit_fields(self) -> dict[str, Any]:
        """What the audit record of this refusal says besides the reason."""
        return {}


class LoginUnavailable(UnauthorizedLogin):
    """The login cannot be decided now for a reason of the server's own (a file it depends on
    could not be read: out of descriptors, memory, I/O): it fails, but the client is not to blame,
    so it is no failed attempt (no strike, no sshd "Failed" line)."""

    def __init__(self, failure: ServerSideFailure):
        super().__init__(str(failure))
        self.failure = failure

    def audit_fields(self) -> dict[str, Any]:
        return {"server_side": True}


#: At most one error line per cause in this many seconds, however many logins fail for it.
SERVER_FAILURE_LOG_INTERVAL = 60.0


class ServerFailureLog:
    """The error lines for ServerSideFailure: the first of a cause (file and errno) at once, then
    at most one per SERVER_FAILURE_LOG_INTERVAL with the count since, not one per attempt (a
    server out of descriptors would otherwise write a line per login it fails)."""

    def __init__(self, clock: IReactorTime, interval: float = SERVER_FAILURE_LOG_INTERVAL):
        self.clock = clock
        self.interval = interval
        self._throttle = LineThrottle(interval)

    def report(self, failure: ServerSideFailure) -> None:
        left_out = self._throttle.due((failure.path, failure.errno), self.clock.seconds())
        if left_out is None:
            return
        more = f"; {left_out} more failed reads since the last line" if left_out else ""
        log.error(
            "Logins cannot be decided: {what} {path}: {error}: a server-side failure, not counted "
            "against clients (logged at most every {interval:g} s{more})",
            what=failure.what,
            path=failure.path,
            error=failure.strerror,
            interval=self.interval,
            more=more,
        )


class SkRequirementNotMet(KeyRefused):
    """A good security-key signature without the touch or verification the policy asks for."""

    def __init__(self, requirement: str, why: str, signature: SkSignature):
        super().__init__(f"{requirement}: {why}; the signature's flags are 0x{signature.flags:02x}")
        self.requirement = requirement  # sshd's words, for the auth log
        self.signature = signature

    def audit_fields(self) -> dict[str, Any]:
        return self.signature.audit_fields()


@dataclass(frozen=True)
class Authorized:
    """A key or certificate that may log in: the identity, and the key that must sign."""

    identity: Identity
    key: PublicKey  # its Ed25519 signatures are checked by libsodium (keyparse.PublicKey.verify)
    signature_algorithm: bytes
    sk: SkPublicKey | None = None  # a security key: its signatures are checked by conchcmd.keys.sk
    requirements: SkRequirements = field(default_factory=SkRequirements)  # what a security key's signature must show


#: Plain-key decisions a KeyAuthorizer remembers (see `_Decision`), the oldest dropped first.
REMEMBERED_DECISIONS = 256


@dataclass(frozen=True)
class _Decision:
    """A key authorized by the first authorized_keys line for it, in the file as parsed then
    (`parsed`, one object per file version): what follows from the file's content and the key
    alone. Used again only while the file read at a later call is that same parse, with the
    revocation list and the line's own conditions (expiry-time) checked again at that call."""

    parsed: ParsedFile
    line: AuthorizedKey
    authorized: Authorized


class KeyAuthorizer:
    """Decides whether a public key or certificate may log in as a user, from where, and how.

    No signatures here: the checker verifies those, and `conchcmd check` asks the same questions
    as a dry run.
    """

    def __init__(
        self,
        keys: AuthorizedKeysFiles,
        trusted: TrustedCAs,
        revoked: RevokedKeys,
        clock: IReactorTime,
        options: PubkeyAuthOptions | None = None,
    ):
        self.keys = keys
        self.trusted = trusted
        self.revoked = revoked
        self.clock = clock
        self.options = options or PubkeyAuthOptions()
        self.failures = ServerFailureLog(clock)
        self.parsed = ParsedKeys()
        self.certificates = CertificateReadings()  # shared with the audit record and the auth log
        self._decided: dict[tuple[str, bytes, bytes, str | None], _Decision] = {}

    @classmethod
    def from_config(cls, config: Config, clock: IReactorTime) -> KeyAuthorizer:
        authorizer = cls.__new__(cls)
        authorizer.clock = clock
        authorizer.failures = ServerFailureLog(clock)
        authorizer.parsed = ParsedKeys()
        authorizer.certificates = CertificateReadings()
        authorizer._decided = {}
        authorizer.reload(config)
        return authorizer

    def reload(self, config: Config) -> None:
        """Take the key files, trusted CAs and revocations of a (new) configuration."""
        trust = FileTrust(strict=config.strict_modes)
        self.keys = AuthorizedKeysFiles(
            config.authorized_keys, permit_environment=config.permit_user_environment, trust=trust
        )
        self.trusted = TrustedCAs(config.trusted_user_ca_keys, trust=trust)
        self.revoked = RevokedKeys(config.revoked_keys, trust=trust)
        self.options = PubkeyAuthOptions.from_names(config.pubkey_auth_options)
        self._decided = {}

    def knows(self, user: str, attempt: AttemptFiles | None = None) -> bool:
        """Whether `user` could log in with a key or certificate at all: it has authorized_keys
        lines, or some CA is trusted for any name (`trusted_user_ca_keys`). For the log's
        "invalid user" (sshd's word for a name without an account)."""
        if not valid_user_name(user):
            return False
        try:
            return bool(self.keys.entries_for(user, attempt)) or self.trusted.any_trusted()
        except ServerSideFailure as e:
            self.failures.report(e)
            return True  # cannot tell now: not called invalid

    def knows_by_configuration(self, user: str) -> bool:
        """`knows` without the user's own file: whether some CA is trusted for any name (then
        every well-formed name may log in). The same work for every name, for the answer to
        OpenSSH's opening `none`, which must not tell which names have keys."""
        if self.trusted.path is None:
            return False
        try:
            trusted = self.trusted.any_trusted()  # read whatever the name, before looking at it
        except ServerSideFailure as e:
            self.failures.report(e)
            trusted = True  # cannot tell now: not called invalid
        return trusted and valid_user_name(user)

    def _failed(self, failure: ServerSideFailure) -> LoginUnavailable:
        self.failures.report(failure)
        return LoginUnavailable(failure)

    def authorize(
        self, user: str, algorithm: bytes, blob: bytes, peer_host: str | None, attempt: AttemptFiles | None = None
    ) -> Authorized:
        """What this key or certificate may do as `user`, or KeyRefused; `attempt`: the files this
        login attempt has read (see AttemptFiles)."""
        if not valid_user_name(user):
            raise KeyRefused("invalid user name")
        try:
            if algorithm in CERT_SIGNATURES:
                return self._certificate(user, algorithm, blob, peer_host, attempt)
            return self._plain_key(user, algorithm, blob, peer_host, attempt)
        except ServerSideFailure as e:  # before CertificateRefused: RevokedKeysUnavailable is both
            raise self._failed(e) from None
        except CertificateRefused as e:
            raise KeyRefused(str(e)) from None

    def _plain_key(
        self, user: str, algorithm: bytes, blob: bytes, peer_host: str | None, attempt: AttemptFiles | None
    ) -> Authorized:
        # OpenSSH asks twice per login (the probe, then the signed request), and again at each
        # login: a key already authorized by this very parse of the file is not decided again.
        remembered = (user, algorithm, blob, peer_host)
        known = self._decided.get(remembered)
        parsed = None
        if known is not None:  # the key parsed and passed the checks below before: the file first
            parsed = self.keys.parsed_for(user, attempt)
            if parsed is known.parsed:
                self.revoked.check_key(known.authorized.key.blob())
                try:
                    self._apply_line(known.line, user, known.authorized.key.blob(), peer_host)
                    return known.authorized
                except KeyRefused:
                    pass  # decided afresh below: a later line may pass, or it is refused as before
            del self._decided[remembered]
        try:
            key = self.parsed.get(blob)
        except KeyParseError as e:
            raise KeyRefused(f"malformed public key ({e})") from None
        blob = key.blob()  # as ssh-keygen writes it: sshd matches keys by value, not by their bytes
        key_type = key.sshType()
        if algorithm not in SIGNATURE_ALGORITHMS.get(key_type, ()):
            # The name as sent: whoever writes the reason out escapes it (once, `sanitise`).
            raise KeyRefused(f"signature algorithm {algorithm.decode('utf-8', 'surrogateescape')} not accepted")
        weak = key_refusal(key)
        if weak is not None:
            raise KeyRefused(weak)
        sk = None
        if key_type in SK_KEY_TYPES:  # Conch's parser is lax with these: read them as sshd does
            try:
                sk = parse_sk_public_key(blob)
            except SkError as e:
                raise KeyRefused(f"malformed public key ({e})") from None
        if parsed is None:
            parsed = self.keys.parsed_for(user, attempt)
        entries = lines_for_key(parsed.entries, blob)
        if not entries:
            raise KeyRefused("key not in authorized_keys")
        self.revoked.check_key(blob)

        def passes(entry: AuthorizedKey) -> AuthorizedKey:
            self._apply_line(entry, user, blob, peer_host)
            return entry

        entry = _first_that_passes(entries, passes)
        meaning = entry.meaning
        identity = Identity(
            user=user,
            method="publickey",
            key_type=key_type.decode("ascii"),
            fingerprint=fingerprint(blob),
            grant=Grant(forced_command=meaning.command, pty=meaning.pty, source=f"authorized_keys {entry.source}"),
        )
        requirements = self.options.requirements(
            no_touch_required=meaning.no_touch_required,
            verify_required=meaning.verify_required,
            where=f"authorized_keys line ({entry.source})",
        )
        authorized = Authorized(identity, key, algorithm, sk, requirements)
        if entry is entries[0]:  # no line before it refused (each refusal is logged at every call)
            if len(self._decided) >= REMEMBERED_DECISIONS:
                del self._decided[next(iter(self._decided))]
            self._decided[remembered] = _Decision(parsed, entry, authorized)
        return authorized

    def _apply_line(self, entry: AuthorizedKey, user: str, blob: bytes, peer_host: str | None) -> None:
        """An authorized_keys line's own conditions: refused options, expiry-time, from=."""
        if entry.refused is not None:
            log.warn(
                "Refusing key {fp} for {user}: {source}: {why}",
                fp=fingerprint(blob),
                user=sanitise(user),
                source=entry.source,
                why=entry.refused,
            )
            raise KeyRefused(f"authorized_keys line refused: {entry.refused}")
        meaning = entry.meaning
        if meaning.expiry is not None and math.floor(self.clock.seconds()) > meaning.expiry:  # sshd: expiry < now
            raise KeyRefused(f"key expired (expiry-time, {entry.source})")
        if meaning.from_patterns is not None and (
            peer_host is None or not match_address_list(peer_host, list(meaning.from_patterns))
        ):
            raise KeyRefused(f"from= does not allow {peer_host} ({entry.source})")

    def _ca_line_terms(
        self, line: AuthorizedKey, grant: Any, user: str, ca_blob: bytes, peer_host: str | None
    ) -> tuple[str | None, bool, str, SkRequirements]:
        """A cert-authority line's conditions for this certificate; the login's terms if they pass
        (sshd merges the line's options with the certificate's: no-touch-required must be in
        both, verify-required in either)."""
        if not principals_allow(grant.principals, user, line.meaning.principals):
            raise KeyRefused(f"certificate principals do not match {line.source}")
        self._apply_line(line, user, ca_blob, peer_host)
        command = grant.force_command
        if line.meaning.command is not None:
            if command is not None and command != line.meaning.command:
                raise KeyRefused("certificate and cert-authority line force different commands")
            command = line.meaning.command
        requirements = self.options.requirements(
            no_touch_required=grant.no_touch_required and line.meaning.no_touch_required,
            verify_required=grant.verify_required or line.meaning.verify_required,
            where=f"certificate and its cert-authority line ({line.source})",
        )
        return command, grant.pty and line.meaning.pty, f"cert-authority at {line.source}", requirements

    def _certificate(
        self, user: str, algorithm: bytes, blob: bytes, peer_host: str | None, attempt: AttemptFiles | None
    ) -> Authorized:
        lines = [e for e in self.keys.authorities(user, attempt) if e.refused is None]
        grant, ca_blob = validate_certificate(
            blob,
            user=user,
            peer_host=peer_host,
            now=self.clock.seconds(),
            trusted=self.trusted,
            authorities=[(e.blob, e.meaning.principals) for e in lines],
            revoked=self.revoked,
            readings=self.certificates,
        )
        if grant.key.type() == "RSA" and grant.key.size() < MIN_RSA_BITS:
            raise KeyRefused(f"certified RSA key of {grant.key.size()} bits is too small")
        weak = ed25519_key_refusal(grant.key)
        if weak is not None:  # its signature would be refused as a "bad signature": say why
            raise KeyRefused(f"certified key: {weak}")
        command, pty, via = grant.force_command, grant.pty, "trusted_user_ca_keys"
        requirements = self.options.requirements(
            no_touch_required=grant.no_touch_required, verify_required=grant.verify_required, where="certificate"
        )
        candidates = [e for e in lines if e.blob == ca_blob]
        if candidates:  # sshd's rule: the first cert-authority line whose conditions all pass,
            try:  # and failing those, trusted_user_ca_keys
                command, pty, via, requirements = _first_that_passes(
                    candidates, lambda line: self._ca_line_terms(line, grant, user, ca_blob, peer_host)
                )
            except KeyRefused:
                if not (user in grant.principals and self.trusted.contains(ca_blob)):
                    raise
        blob_type = getNS(blob)[0]
        expected = b"ssh-rsa-cert-v01@openssh.com" if algorithm.startswith(b"rsa-sha2-") else algorithm
        if blob_type != expected:
            raise KeyRefused("certificate algorithm does not match its key")
        certificate = {
            "cert_key_id": sanitise(grant.key_id),
            "cert_serial": grant.serial,
            "ca_fingerprint": grant.ca_fingerprint,
        }
        identity = Identity(
            user=user,
            method="publickey",
            key_type=algorithm.decode("ascii"),
            fingerprint=fingerprint(grant.key.blob()),
            grant=Grant(
                forced_command=command,
                pty=pty,
                source=f"certificate {sanitise(grant.key_id)!r} serial {grant.serial} via {via}",
            ),
            certificate=certificate,
        )
        return Authorized(identity, grant.key, CERT_SIGNATURES[algorithm], grant.sk_key, requirements)


def _first_that_passes(lines: list[AuthorizedKey], check: Callable[[AuthorizedKey], T]) -> T:
    """sshd's rule for a key or CA on several lines: the first line whose conditions all pass;
    if none does, the first line's refusal."""
    first_refusal: KeyRefused | None = None
    for line in lines:
        try:
            return check(line)
        except KeyRefused as e:
            first_refusal = first_refusal or e
    assert first_refusal is not None
    raise first_refusal


@implementer(ICredentialsChecker)
class PublicKeyChecker:
    """Checks an SSH public-key or certificate login: authorization first, then the signature."""

    credentialInterfaces = (ISSHPrivateKey,)

    def __init__(self, authorizer: KeyAuthorizer):
        self.authorizer = authorizer

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:
        return defer.maybeDeferred(self.check, credentials)

    def check(self, credentials: Any) -> Identity:
        """The identity these credentials log in as, decided now (this checker never waits);
        raises ValidPublicKey for an acceptable key offered without a signature, KeyRefused or
        LoginUnavailable otherwise."""
        authorized = self.acceptable(credentials)
        if credentials.signature is None:
            raise ValidPublicKey()  # the key may be used: Conch answers PK_OK
        try:
            sig_type, _ = getNS(credentials.signature)
            if sig_type != authorized.signature_algorithm:
                raise KeyRefused("signature type does not match the algorithm")
            if authorized.sk is not None:
                return self._security_key(authorized, credentials.signature, credentials.sigData)
            _read_as_sshd(credentials.signature, authorized.key.sshType())
            verified = authorized.key.verify(credentials.signature, credentials.sigData)
        except (struct.error, ValueError, IndexError):
            raise KeyRefused("malformed signature") from None
        if not verified:
            raise KeyRefused("bad signature")
        return authorized.identity

    def acceptable(self, credentials: Any) -> Authorized:
        """What the key or certificate of these credentials may do, signature aside (for a probe
        without one: the server answers PK_OK); KeyRefused or LoginUnavailable if it may not."""
        try:
            user = credentials.username.decode("utf-8")
        except UnicodeDecodeError:
            raise KeyRefused("user name is not UTF-8") from None
        # The transport sends PeerSSHPrivateKey; other credentials have no address: from= refuses.
        peer_host, attempt = None, None
        if isinstance(credentials, PeerSSHPrivateKey):
            peer_host, attempt = credentials.peer.host, credentials.attempt
        return self.authorizer.authorize(user, credentials.algName, credentials.blob, peer_host, attempt)

    @staticmethod
    def _security_key(authorized: Authorized, signature: bytes, signed: bytes) -> Identity:
        """PROTOCOL.u2f's signature check, then sshd's touch and verification requirements."""
        assert authorized.sk is not None
        try:
            reported = authorized.sk.verify(signature, signed)
        except SkBadSignature:
            raise KeyRefused("bad signature") from None
        except SkError as e:
            raise KeyRefused(f"malformed signature ({e})") from None
        refusal = authorized.requirements.refusal(reported)
        if refusal is not None:
            raise SkRequirementNotMet(*refusal, reported)
        return replace(authorized.identity, sk=reported)


def _read_as_sshd(signature: bytes, key_type: bytes) -> None:
    """sshd's sshkey_verify reads a signature with sshbuf: every length checked, no byte after it
    (nor after an ECDSA signature's two numbers). Conch's Key.verify slices without a check, so a
    signature sshd refuses (SSH_ERR_UNEXPECTED_TRAILING_DATA) verified: SkError (a ValueError)."""
    reader = WireReader(signature)
    reader.string()  # the type: compared by the caller
    body = reader.string()
    reader.end("the signature")
    if key_type.startswith(b"ecdsa-"):
        numbers = WireReader(body)
        numbers.mpint()
        numbers.mpint()
        numbers.end("the signature's numbers")


def bcrypt_cost(hashed: bytes) -> int:
    """The cost of a `$2b$NN$...` hash (the config checks the format)."""
    return int(hashed[4:6])


def dummy_hash(users: Mapping[str, UserPolicy]) -> bytes | None:
    """A hash at the highest cost among the users' hashes, checked for every name that has no
    password (unknown names too) so that a failure costs the same bcrypt work whatever the name.
    None when no user has a password: then password authentication is not offered at all."""
    costs = [bcrypt_cost(p.password_bcrypt) for p in users.values() if p.password_bcrypt]
    if not costs:
        return None
    cost = min(max(max(costs), _BCRYPT_COSTS.start), _BCRYPT_COSTS.stop - 1)
    return b"$2b$%02d$" % cost + _DUMMY_SALT_AND_DIGEST


def verify_password(password: bytes, hashed: bytes, real: bool) -> bool:
    """bcrypt's check (blocking: run it in the password pool). `real` is False for the dummy hash
    of a name without a password: the same work, and always a failure. A hash bcrypt cannot use
    raises (ValueError): the server's failure, never a wrong password."""
    if len(password) > BCRYPT_MAX_PASSWORD:  # bcrypt raises without hashing: refused, never truncated
        return False
    return bcrypt.checkpw(password, hashed) and real


class PasswordChecksBusy(KeyRefused):
    """More password checks at once than `max_password_checks`: this attempt fails (and counts)."""


@implementer(ICredentialsChecker)
class PasswordChecker:
    """Passwords, verified with bcrypt in the password pool (never the commands' pool), at most
    `max_checks` at once across all connections; over that an attempt fails at once.

    Every name gets the same work when any user has a password: names without one are checked
    against `dummy_hash`, so neither answers nor timing tell which names have a password.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, users: Mapping[str, UserPolicy], runner: BlockingRunner, max_checks: int):
        self.runner = runner
        self.in_progress = 0
        self.reload(users, max_checks)

    def reload(self, users: Mapping[str, UserPolicy], max_checks: int) -> None:
        """The users and cap of a (new) configuration; checks already running finish as they are."""
        self.users = users
        self.max_checks = max_checks
        self.dummy = dummy_hash(users)

    @property
    def offered(self) -> bool:
        """Whether `password` is an authentication method at all (some user has a password)."""
        return self.dummy is not None

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[Any]:
        if self.dummy is None:
            return defer.fail(KeyRefused("password authentication is not enabled"))
        if self.in_progress >= self.max_checks:
            return defer.fail(
                PasswordChecksBusy(f"too many password checks in progress (max_password_checks = {self.max_checks})")
            )
        user = credentials.username.decode("utf-8", "replace")
        policy = self.users.get(user)
        hashed = policy.password_bcrypt if policy else None
        self.in_progress += 1
        d = self.runner.run(verify_password, credentials.password, hashed or self.dummy, hashed is not None)

        def decided(ok: bool) -> Identity:
            if not ok:
                raise KeyRefused("wrong password")
            return Identity(user=user, method="password", key_type="", fingerprint="", grant=Grant(source="password"))

        def finished(result: Any) -> Any:
            self.in_progress -= 1
            return result

        return d.addBoth(finished).addCallback(decided)
