"""Issue 16: FIDO2 `sk-` keys and certificates, with sshd as the oracle.

A software authenticator (support.skauth) signs each login with the flags and counter the case
chooses; the same login goes to sshd and to conchcmd, which read the same files, under the same
server-wide policy (sshd's `PubkeyAuthOptions`, conchcmd's `pubkey_auth_options`). Each case also
states what sshd's documented rules give (sshd(8) AUTHORIZED_KEYS FILE FORMAT, sshd_config(5)
PubkeyAuthOptions, ssh-keygen(1) CERTIFICATES, PROTOCOL.u2f), so a case where sshd itself
surprised us fails too. `CASES` below is the list the issue's note quotes.

The rules: a signature must carry UP (user presence, flag 0x01) unless the authorized_keys line
says `no-touch-required` (for a certificate: the certificate's `no-touch-required` extension and,
on a cert-authority line, that line's `no-touch-required` as well) and the policy has no
`touch-required`; it must carry UV (user verification, 0x04) if the line says `verify-required`,
the certificate has the `verify-required` critical option, or the policy has `verify-required`.
Other flag bits and the counter are not judged. Plain (non-sk) keys ignore all of this.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from support.authcases import private_openssh, public_line
from support.differential import ConchServer, Pair, SkKeyPair, Target, deliberate_differences, login
from support.skauth import ECDSA_SK, UP, UV, SoftwareAuthenticator, signed_message, ssh_keygen_certificate
from support.sshd import Sshd
from twisted.conch.ssh.common import MP, NS, getNS

from conchcmd.policy.authorized_keys import fingerprint

pytestmark = pytest.mark.differential

SOURCE = "127.0.0.1"
CONCURRENCY = 8
POLICIES = ("", "touch-required", "verify-required")  # "" is sshd's default, PubkeyAuthOptions none
KINDS = ("ed25519", "ecdsa")
LINE_OPTIONS = ("", "no-touch-required", "verify-required", "no-touch-required,verify-required", "touch-required")
FLAG_SETS = (0, UP, UV, UP | UV)
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def flag_name(flags: int) -> str:
    names = [n for bit, n in ((UP, "UP"), (UV, "UV")) if flags & bit]
    other = flags & ~(UP | UV)
    return "+".join(names + ([f"0x{other:02x}"] if other else [])) or "none"


@dataclass
class SkCase:
    """One login: what the files hold, what the client presents and signs, and sshd's expected word."""

    name: str
    policy: str
    expected: bool
    client_key: Any  # SkKeyPair, or an asyncssh key for the plain-key cases
    lines: list[bytes] = field(default_factory=list)
    trusted: list[bytes] = field(default_factory=list)
    revoked: list[bytes] = field(default_factory=list)
    tags: set[str] = field(default_factory=set)  # README "Differences from sshd" tags it exercises

    def describe(self) -> str:
        out = [f"{self.name} [policy: {self.policy or 'none'}]"]
        if self.tags:
            out.append(f"  deliberate-difference tags: {', '.join(sorted(self.tags))}")
        out += [f"  authorized_keys: {line!r}" for line in self.lines]
        out += [f"  trusted CA: {line!r}" for line in self.trusted]
        return "\n".join(out)


def needs(flags: int, *, touch: bool, verify: bool) -> bool:
    """Whether a correctly signed sk login with `flags` passes a rule needing UP and/or UV."""
    return (not touch or bool(flags & UP)) and (not verify or bool(flags & UV))


def line_for(token: SoftwareAuthenticator, options: str) -> bytes:
    return token.public_line(options=options).strip().encode()


def token_ca_certificate(
    token: SoftwareAuthenticator, ca: SoftwareAuthenticator, principal: str, serial: int, *, ca_flags: int
) -> bytes:
    """A user certificate (PROTOCOL.certkeys) for `token`'s key signed by `ca`, itself an sk key
    (ssh-keygen -s would need the CA's token): valid forever for `principal`, with permit-pty."""
    kind = token.key_type.removesuffix(b"@openssh.com") + b"-cert-v01@openssh.com"
    key_fields = token.key_blob()[len(NS(token.key_type)) :]
    body = (
        NS(kind)
        + NS(os.urandom(32))
        + key_fields
        + struct.pack(">QL", serial, 1)
        + NS(b"sk-ca-%d" % serial)
        + NS(NS(principal.encode()))
        + struct.pack(">QQ", 0, (1 << 64) - 1)
        + NS(b"")
        + NS(NS(b"permit-pty") + NS(b""))
        + NS(b"")
        + NS(ca.key_blob())
    )
    return body + NS(ca.sign(body, flags=ca_flags))


def webauthn_signature(
    token: SoftwareAuthenticator, data: bytes, *, flags: int = UP, counter: int = 1, challenge: bytes | None = None
) -> bytes:
    """An sk-ecdsa signature as a WebAuthn client makes it (Windows Hello, browsers; PROTOCOL.u2f
    "webauthn-sk-ecdsa-sha2-nistp256@openssh.com"): the token signs SHA-256 of a clientData JSON
    whose challenge is the data (base64url), with the application as the origin."""
    assert isinstance(token.private, ec.EllipticCurvePrivateKey)
    origin = token.application
    challenge = base64.urlsafe_b64encode(data if challenge is None else challenge).rstrip(b"=")
    client_data = b'{"type":"webauthn.get","challenge":"' + challenge + b'","origin":"' + origin + b'"}'
    message = (
        hashlib.sha256(token.application).digest()
        + struct.pack(">BL", flags, counter)
        + hashlib.sha256(client_data).digest()
    )
    r, s = decode_dss_signature(token.private.sign(message, ec.ECDSA(hashes.SHA256())))
    return (
        NS(b"webauthn-" + ECDSA_SK)
        + NS(MP(r) + MP(s))
        + struct.pack(">BL", flags, counter)
        + NS(origin)
        + NS(client_data)
        + NS(b"")
    )


class Builder:
    """Makes the cases; certificates come from `ssh-keygen -s` with an ordinary ed25519 CA key."""

    def __init__(self, user: str, workdir: Path):
        self.user = user
        self.workdir = workdir
        self.serial = 0
        self.cases: list[SkCase] = []

    def new_ca(self) -> tuple[Path, bytes]:
        """A fresh CA key file for `ssh-keygen -s`, and its public line. Each way of trusting a CA
        gets its own, so no case's CA line decides another case's certificate."""
        key = ed25519.Ed25519PrivateKey.generate()
        path = self.workdir / f"ca-{len(self.cases)}"
        path.write_bytes(private_openssh(key))
        path.chmod(0o600)
        return path, public_line(key)

    def certified(self, token: SoftwareAuthenticator, ca: Path, options: tuple[str, ...] = ()) -> SoftwareAuthenticator:
        self.serial += 1
        blob = ssh_keygen_certificate(
            token,
            ca,
            self.workdir / "certs",
            principals=[self.user],
            key_id=f"sk-case-{self.serial}",
            serial=self.serial,
            options=options,
        )
        return token.with_certificate(blob)

    def add(
        self,
        name: str,
        policy: str,
        expected: bool,
        client_key: Any,
        *,
        tags: frozenset[str] = frozenset(),
        **files: Any,
    ) -> None:
        self.cases.append(SkCase(name, policy, expected, client_key, tags=set(tags), **files))

    # -- the matrix: key kind x authorized_keys options x flags x policy ---------------------------------

    def matrix(self) -> None:
        for policy in POLICIES:
            for kind in KINDS:
                for options in LINE_OPTIONS:
                    for flags in FLAG_SETS:
                        token = SoftwareAuthenticator.generate(kind, flags=flags, counter=7)
                        touch = policy == "touch-required" or "no-touch-required" not in options
                        verify = policy == "verify-required" or "verify-required" in options
                        self.add(
                            f"sk-{kind} line {options or '(no options)'!r} flags {flag_name(flags)}",
                            policy,
                            needs(flags, touch=touch, verify=verify),
                            SkKeyPair(token),
                            lines=[line_for(token, options)],
                        )

    # -- certificates -------------------------------------------------------------------------------------

    def certificates(self) -> None:
        ca, ca_line = self.new_ca()  # in TrustedUserCAKeys, on no authorized_keys line
        for policy in POLICIES:
            for kind in KINDS:
                for extension in ((), ("no-touch-required",)):
                    for flags in FLAG_SETS:
                        token = self.certified(SoftwareAuthenticator.generate(kind, flags=flags), ca, extension)
                        touch = policy == "touch-required" or not extension
                        verify = policy == "verify-required"
                        self.add(
                            f"sk-{kind} certificate {' '.join(extension) or '(no extensions)'} via TrustedUserCAKeys"
                            f" flags {flag_name(flags)}",
                            policy,
                            needs(flags, touch=touch, verify=verify),
                            SkKeyPair(token),
                            trusted=[ca_line],
                        )
        for flags in FLAG_SETS:  # the verify-required critical option (ssh-keygen -O verify-required)
            token = self.certified(SoftwareAuthenticator.generate("ed25519", flags=flags), ca, ("verify-required",))
            self.add(
                f"sk-ed25519 certificate with critical option verify-required flags {flag_name(flags)}",
                "",
                needs(flags, touch=True, verify=True),
                SkKeyPair(token),
                trusted=[ca_line],
            )
        # A cert-authority line: the line's options and the certificate's extensions both count
        # (sshd merges them: no-touch-required only if both say so, verify-required if either does).
        for line_options in ("cert-authority", "cert-authority,no-touch-required", "cert-authority,verify-required"):
            for extension in ((), ("no-touch-required",)):
                for flags in FLAG_SETS:
                    ca, ca_line = self.new_ca()
                    token = self.certified(SoftwareAuthenticator.generate("ed25519", flags=flags), ca, extension)
                    touch = not (extension and "no-touch-required" in line_options)
                    verify = "verify-required" in line_options
                    self.add(
                        f"sk-ed25519 certificate {' '.join(extension) or '(no extensions)'} via line "
                        f"{line_options!r} flags {flag_name(flags)}",
                        "",
                        needs(flags, touch=touch, verify=verify),
                        SkKeyPair(token),
                        lines=[line_options.encode() + b" " + ca_line],
                    )
        # A CA on a token: sshd's CASignatureAlgorithms has the sk types by default, and checks no
        # flag of a CA's signature (the CA signed the certificate long before the login).
        for ca_kind in KINDS:
            for ca_flags in (UP, 0):
                ca_token = SoftwareAuthenticator.generate(ca_kind)
                token = SoftwareAuthenticator.generate("ed25519")
                self.serial += 1
                blob = token_ca_certificate(token, ca_token, self.user, self.serial, ca_flags=ca_flags)
                self.add(
                    f"sk-ed25519 certificate signed by an sk-{ca_kind} CA (CA signature flags {flag_name(ca_flags)})"
                    " via TrustedUserCAKeys",
                    "",
                    True,
                    SkKeyPair(token.with_certificate(blob)),
                    trusted=[line_for(ca_token, "")],
                    tags=frozenset({"sk-ca"}),
                )

        # The certified key's own line does not let a certificate in (nor the other way round).
        ca, _ = self.new_ca()
        token = self.certified(SoftwareAuthenticator.generate("ed25519"), ca)
        plain = token.with_(certificate=None)
        self.add(
            "sk-ed25519 certificate of an untrusted CA, the key on a line",
            "",
            False,
            SkKeyPair(token),
            lines=[line_for(plain, "")],
        )

    # -- what an attacker or a broken token sends ----------------------------------------------------------

    def signatures(self) -> None:
        def plain(
            kind: str,
            name: str,
            expected: bool,
            sign: Callable[[SoftwareAuthenticator], Callable[[bytes], bytes]],
            *,
            application: bytes = b"ssh:",
            options: str = "",
            flags: int = UP,
            counter: int = 1,
            tags: frozenset[str] = frozenset(),
        ) -> None:
            token = SoftwareAuthenticator.generate(kind, application, flags=flags, counter=counter)
            self.add(
                f"sk-{kind} {name}",
                "",
                expected,
                SkKeyPair(token, sign(token)),
                lines=[line_for(token, options)],
                tags=tags,
            )

        def own(token: SoftwareAuthenticator) -> Callable[[bytes], bytes]:
            return token.sign

        for kind in KINDS:
            plain(
                kind,
                "signed for another application (ssh:other)",
                False,
                lambda t: lambda d: t.sign(d, application=b"ssh:other"),
            )
            plain(kind, "key of application ssh:work, signed for it", True, own, application=b"ssh:work")
            plain(
                kind,
                "key of application ssh:work, signed for ssh:",
                False,
                lambda t: lambda d: t.sign(d, application=b"ssh:"),
                application=b"ssh:work",
            )
            for counter in (0, 1, 0x7FFFFFFF, 0xFFFFFFFF):
                plain(kind, f"counter {counter} flags UP", True, own, counter=counter)
            plain(kind, "flags 0xff (every bit)", True, own, flags=0xFF)
            plain(kind, "flags 0xfe (every bit but UP)", False, own, flags=0xFE)
            plain(kind, "flags 0xfe with no-touch-required", True, own, flags=0xFE, options="no-touch-required")
            plain(kind, "flags UP+0x40+0x80 (AT, ED)", True, own, flags=UP | 0xC0)
            plain(kind, "flags 0x02 (reserved bit only)", False, own, flags=0x02)
            plain(kind, "a byte after the counter", False, lambda t: lambda d: t.sign(d) + b"\0")
            plain(kind, "counter cut short (3 bytes)", False, lambda t: lambda d: t.sign(d)[:-1])
            plain(kind, "no flags or counter", False, lambda t: lambda d: t.sign(d)[:-5])
            plain(
                kind,
                "flags changed after signing (0 -> UP)",
                False,
                lambda t: lambda d: t.sign(d, flags=0)[:-5] + struct.pack(">BL", UP, 1),
            )
            plain(
                kind,
                "counter changed after signing",
                False,
                lambda t: lambda d: t.sign(d, counter=5)[:-4] + struct.pack(">L", 6),
            )
        plain(
            "ed25519",
            "signature named ssh-ed25519",
            False,
            lambda t: lambda d: NS(b"ssh-ed25519") + t.sign(d)[len(NS(t.key_type)) :],
        )
        plain(
            "ed25519",
            "plain Ed25519 signature over the data",
            False,
            lambda t: lambda d: NS(t.key_type) + NS(t.private.sign(d)) + struct.pack(">BL", UP, 1),
        )  # type: ignore[union-attr]
        plain(
            "ecdsa",
            "signature named ecdsa-sha2-nistp256",
            False,
            lambda t: lambda d: NS(b"ecdsa-sha2-nistp256") + t.sign(d)[len(NS(t.key_type)) :],
        )
        plain(
            "ecdsa",
            "signature named sk-ssh-ed25519@openssh.com",
            False,
            lambda t: lambda d: NS(b"sk-ssh-ed25519@openssh.com") + t.sign(d)[len(NS(t.key_type)) :],
        )

        # Options are read in order, case-insensitively; the last word on touch or verify wins.
        for options, flags, expected in (
            ("no-touch-required,touch-required", 0, False),
            ("touch-required,no-touch-required", 0, True),
            ("NO-TOUCH-REQUIRED", 0, True),
            ("Verify-Required", UP, False),
            ("verify-required,no-verify-required", UP, True),
            ("no-verify-required,verify-required", UP, False),
            ("restrict,no-touch-required", 0, True),
            ("restrict,verify-required", UP | UV, True),
        ):
            plain("ed25519", f"line {options!r} flags {flag_name(flags)}", expected, own, options=options, flags=flags)

        # Application strings sshd does not restrict, and ones it cannot read (a C string).
        for application, expected in (
            (b"", True),
            (b"https://example.com", True),
            (b"ssh:\xff\xfe", True),
            (b"ssh:" + b"a" * 2000, True),
            (b"ssh:\0hidden", False),
        ):
            plain("ed25519", f"key of application {application[:24]!r}", expected, own, application=application)

        # The shape of the signature itself.
        def high_s(t: SoftwareAuthenticator) -> Callable[[bytes], bytes]:
            def sign(data: bytes) -> bytes:  # (r, n - s): as valid as (r, s) for ECDSA
                message = signed_message(t.application, UP, 1, data)
                r, s = decode_dss_signature(t.private.sign(message, ec.ECDSA(hashes.SHA256())))  # type: ignore[call-arg]
                s = P256_ORDER - s if s < P256_ORDER // 2 else s
                return NS(t.key_type) + NS(MP(r) + MP(s)) + struct.pack(">BL", UP, 1)

            return sign

        def ecdsa_parts(r: int, s: int) -> Callable[[SoftwareAuthenticator], Callable[[bytes], bytes]]:
            return lambda t: lambda d: NS(t.key_type) + NS(MP(r) + MP(s)) + struct.pack(">BL", UP, 1)

        plain("ecdsa", "signature with a high s (r, n - s)", True, high_s)
        plain("ecdsa", "signature r = 0, s = 0", False, ecdsa_parts(0, 0))
        plain("ecdsa", "signature r = n, s = 1", False, ecdsa_parts(P256_ORDER, 1))
        plain(
            "ecdsa",
            "signature with a byte after s",
            False,
            lambda t: (
                lambda d: NS(t.key_type) + NS(getNS(t.sign(d)[len(NS(t.key_type)) :])[0] + b"\0") + t.sign(d)[-5:]
            ),
        )
        plain(
            "ed25519",
            "signature of 63 bytes",
            False,
            lambda t: lambda d: NS(t.key_type) + NS(getNS(t.sign(d)[len(NS(t.key_type)) :])[0][:63]) + t.sign(d)[-5:],
        )

        # Public key blobs sshd cannot read (the same blob on the line and in the request; the
        # token signs as usual).
        def reshaped(kind: str, change: Callable[[SoftwareAuthenticator], bytes]) -> SoftwareAuthenticator:
            token = SoftwareAuthenticator.generate(kind)
            return token.with_certificate(change(token))  # presented instead of the key's own blob

        def ecdsa_blob(curve: bytes, point: bytes, application: bytes = b"ssh:") -> bytes:
            return NS(ECDSA_SK) + NS(curve) + NS(point) + NS(application)

        def point(t: SoftwareAuthenticator, encoding: PublicFormat) -> bytes:
            return t.private.public_key().public_bytes(Encoding.X962, encoding)  # type: ignore[union-attr]

        def off_curve(uncompressed: bytes) -> bytes:
            return uncompressed[:-1] + bytes([uncompressed[-1] ^ 1])

        for name, kind, expected, change in (
            ("sk-ed25519 blob with a byte after the application", "ed25519", False, lambda t: t.key_blob() + b"\0"),
            ("sk-ecdsa blob with a byte after the application", "ecdsa", False, lambda t: t.key_blob() + b"\0"),
            (
                "sk-ed25519 blob with a 31-byte key",
                "ed25519",
                False,
                lambda t: NS(t.key_type) + NS(getNS(t.key_blob()[len(NS(t.key_type)) :])[0][:31]) + NS(b"ssh:"),
            ),
            (
                "sk-ecdsa blob naming curve nistp384",
                "ecdsa",
                False,
                lambda t: ecdsa_blob(b"nistp384", point(t, PublicFormat.UncompressedPoint)),
            ),
            (
                "sk-ecdsa blob with a compressed point",
                "ecdsa",
                False,
                lambda t: ecdsa_blob(b"nistp256", point(t, PublicFormat.CompressedPoint)),
            ),
            (
                "sk-ecdsa blob with a point off the curve",
                "ecdsa",
                False,
                # y's lowest bit flipped (a last byte set to 1 left the point valid one run in 256)
                lambda t: ecdsa_blob(b"nistp256", off_curve(point(t, PublicFormat.UncompressedPoint))),
            ),
            (
                "sk-ecdsa blob as it should be, rebuilt (control)",
                "ecdsa",
                True,
                lambda t: ecdsa_blob(b"nistp256", point(t, PublicFormat.UncompressedPoint)),
            ),
        ):
            token = reshaped(kind, change)
            self.add(name, "", expected, SkKeyPair(token), lines=[line_for(token, "")])

        # RevokedKeys names a key by its whole blob, the application included.
        token = SoftwareAuthenticator.generate("ed25519")
        self.add(
            "sk-ed25519 key listed in RevokedKeys",
            "",
            False,
            SkKeyPair(token),
            lines=[line_for(token, "")],
            revoked=[line_for(token, "")],
        )
        token = SoftwareAuthenticator.generate("ed25519")
        self.add(
            "sk-ed25519 key, RevokedKeys lists the same key pair for application ssh:other",
            "",
            True,
            SkKeyPair(token),
            lines=[line_for(token, "")],
            revoked=[line_for(token.with_(application=b"ssh:other"), "")],
        )

        # WebAuthn signatures (sk-ecdsa only), under the key's own algorithm name.
        webauthn = frozenset({"webauthn"})
        for name, expected, flags, options, challenge in (
            ("flags UP", True, UP, "", None),
            ("flags none", False, 0, "", None),
            ("flags none, line no-touch-required", True, 0, "no-touch-required", None),
            ("flags UP, line verify-required", False, UP, "verify-required", None),
            ("flags UP+UV, line verify-required", True, UP | UV, "verify-required", None),
            ("over other data", False, UP, "", b"other data"),
        ):

            def sign(t: SoftwareAuthenticator, f: int = flags, c: bytes | None = challenge) -> Callable[[bytes], bytes]:
                return lambda d: webauthn_signature(t, d, flags=f, challenge=c)

            plain("ecdsa", f"WebAuthn signature {name}", expected, sign, options=options, tags=webauthn)

        # The key on the line must be the key that signs: same public key, another application.
        token = SoftwareAuthenticator.generate("ed25519")
        other_app = token.with_(application=b"ssh:other")
        self.add(
            "sk-ed25519 line for application ssh:, client presents ssh:other",
            "",
            False,
            SkKeyPair(other_app),
            lines=[line_for(token, "")],
        )

        # Plain keys: touch and verification rules do not apply to them.
        for policy in POLICIES:
            for options in ("", "verify-required", "touch-required"):
                key = ed25519.Ed25519PrivateKey.generate()
                self.add(
                    f"ssh-ed25519 (not sk) line {options or '(no options)'!r}",
                    policy,
                    True,
                    asyncssh.import_private_key(private_openssh(key)),
                    lines=[(options.encode() + b" " if options else b"") + public_line(key)],
                )


def build_cases(user: str, workdir: Path) -> list[SkCase]:
    builder = Builder(user, workdir)
    builder.matrix()
    builder.certificates()
    builder.signatures()
    return builder.cases


@dataclass
class PolicyServers:
    """sshd and conchcmd under one server-wide policy, reading the pair's files."""

    sshd: Target
    conch: Target
    conch_server: ConchServer


def sshd_policy(policy: str) -> dict[str, str]:
    return {"PubkeyAuthOptions": policy or "none"}


def conch_policy(policy: str) -> dict[str, Any]:
    return {"pubkey_auth_options": policy.split()}


@pytest.fixture(scope="module")
def policy_servers(server_pair: Pair, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, PolicyServers]]:
    """The session's pair serves the default policy; one more pair per other policy."""
    servers = {"": PolicyServers(server_pair.sshd_target, server_pair.conch_target, server_pair.conch)}
    started: list[Sshd | ConchServer] = []
    try:
        for policy in POLICIES[1:]:
            files = server_pair.files
            sshd = Sshd(
                tmp_path_factory.mktemp("sshd-sk"),
                authorized_keys=str(files.directory / "authorized_keys" / "%u"),
                trusted_user_ca_keys=files.trusted,
                revoked_keys=files.revoked,
                extra=sshd_policy(policy),
                ipv6=False,
            )
            conch = ConchServer(tmp_path_factory.mktemp("conchcmd-sk"), files, ipv6=False, extra=conch_policy(policy))
            started += [sshd, conch]
            sshd.start()
            conch.start()
            servers[policy] = PolicyServers(Target(sshd.port, sshd.port), Target(conch.port, conch.port6), conch)
        yield servers
    finally:
        for server in started:
            server.stop()
    for server in started:
        if isinstance(server, ConchServer):
            text = server.log_text()
            assert "Traceback" not in text and "Unhandled" not in text, f"conchcmd logged an error:\n{text[-20000:]}"


async def _decide_all(
    servers: dict[str, PolicyServers], user: str, cases: list[SkCase]
) -> list[tuple[bool | BaseException, bool | BaseException]]:
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def one(target: Target, case: SkCase) -> bool:
        async with semaphore:
            return await login(target, user, [case.client_key], SOURCE)

    tasks = []
    for case in cases:
        tasks += [one(servers[case.policy].sshd, case), one(servers[case.policy].conch, case)]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    return [(results[2 * i], results[2 * i + 1]) for i in range(len(cases))]


def test_sk_logins_are_decided_like_sshd(
    server_pair: Pair, policy_servers: dict[str, PolicyServers], tmp_path: Path
) -> None:
    cases = build_cases(server_pair.user, tmp_path)
    allowed = deliberate_differences()
    server_pair.files.write(cases)
    outcomes = asyncio.run(_decide_all(policy_servers, server_pair.user, cases))
    errors, surprises, disagreements, excused = [], [], [], collections.Counter[str]()
    for case, (by_sshd, by_conch) in zip(cases, outcomes, strict=True):
        if isinstance(by_sshd, BaseException) or isinstance(by_conch, BaseException):
            errors.append(f"{case.describe()}\n  sshd: {by_sshd!r}\n  conchcmd: {by_conch!r}")
            continue
        if by_sshd != case.expected:
            surprises.append(f"sshd {'accepts' if by_sshd else 'refuses'}: {case.describe()}")
        if by_conch != by_sshd:
            if by_sshd and case.tags & allowed:  # refused on purpose, as the README says
                excused.update(case.tags & allowed)
                continue
            disagreements.append(
                f"sshd {'accepts' if by_sshd else 'refuses'}, conchcmd {'accepts' if by_conch else 'refuses'}: "
                f"{case.describe()}"
            )
    # conchcmd's audit record of each sk login it accepts carries the token's flags and counter.
    audits = {policy: server.conch_server.audit() for policy, server in policy_servers.items()}
    audited = 0
    for case, (_, by_conch) in zip(cases, outcomes, strict=True):
        key = case.client_key
        if by_conch is True and isinstance(key, SkKeyPair) and key.own_signature and key.token.certificate is None:
            fp = fingerprint(key.token.key_blob())
            records = [r for r in audits[case.policy] if r["event"] == "auth" and r.get("fingerprint") == fp]
            assert [(r["ok"], r["sk_flags"], r["sk_counter"]) for r in records] == [
                (True, key.token.flags, key.token.counter)
            ], case.describe()
            audited += 1
    assert audited > 50, f"only {audited} accepted sk logins had their audit records checked"

    # A difference the README lists must still be one: else the README says what is no longer so.
    stale = {tag for case in cases for tag in case.tags & allowed} - set(excused)
    accepted = sum(1 for s, _ in outcomes if s is True)
    print(
        f"[sk differential] cases={len(cases)} sshd_accepts={accepted} disagreements={len(disagreements)} "
        f"excused={dict(excused)} audited={audited}"
    )
    assert not errors, f"{len(errors)} attempts failed oddly:\n\n" + "\n\n".join(errors[:5])
    assert not surprises, f"{len(surprises)} cases where sshd broke the stated rules:\n\n" + "\n\n".join(surprises[:20])
    assert not stale, f"README 'Differences from sshd' lists {sorted(stale)}, but conchcmd decides those cases as sshd"
    assert not disagreements, f"{len(disagreements)} of {len(cases)} cases decided differently from sshd:\n\n" + (
        "\n\n".join(disagreements[:20])
    )


if __name__ == "__main__":
    # The case list, for the note: PYTHONPATH=.:tests python -m differential.test_sk_differential
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        for case in build_cases("alice", Path(directory)):
            verdict = "accept" if case.expected else "refuse"
            print(f"{verdict}  [PubkeyAuthOptions {case.policy or 'none'}]  {case.name}")
