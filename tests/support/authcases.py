"""A seeded generator of OpenSSH authentication cases: authorized_keys lines, certificates,
trusted CAs and revocations, each with the key that tries to log in and the source it comes from.

Every case uses keys of its own, so many cases can share one authorized_keys file, one
TrustedUserCAKeys file and one RevokedKeys file without affecting each other. `tags` name the
deliberate differences from sshd (README, "Differences from sshd") a case exercises.
"""

from __future__ import annotations

import ipaddress
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import SSHCertificateBuilder, SSHCertificateType

SOURCES = ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.1.2.3", "127.200.0.9", "::1")
OTHER_USER = "someoneelse"

#: Bytes that end lines, or look as if they might, for one parser or another.
SEPARATORS = (
    b"\x0b",  # \v
    b"\x0c",  # \f
    b"\x1c",
    b"\x1d",
    b"\x1e",
    b"\r",
    b"\r\n",
    "\u0085".encode(),
    "\u2028".encode(),
    "\u2029".encode(),
    b"\x85",  # not UTF-8 on its own
)
#: The separators that do not end a line for sshd either. (The shared CA and revocation files get
#: only these: a real second line there would be unreadable and refuse every case's key.)
IN_LINE = tuple(s for s in SEPARATORS if b"\n" not in s)
#: Every C0 control character but \n, DEL, the Unicode separators, and bytes that are not UTF-8.
SPECIALS = (
    *(bytes([c]) for c in range(0x20) if c != 0x0A),
    b"\x7f",
    "\u0085".encode(),
    "\u2028".encode(),
    "\u2029".encode(),
    b"\x85",
    b"\xff",
    b"\xc3\xa9",
    b'"',
    b'\\"',
    b"\\",
    b",",
    b" ",
    b"#",
)
FLAGS = (
    "restrict",
    "RESTRICT",
    "no-pty",
    "pty",
    "No-Pty",
    "no-port-forwarding",
    "port-forwarding",
    "no-agent-forwarding",
    "agent-forwarding",
    "no-X11-forwarding",
    "x11-forwarding",
    "no-user-rc",
    "user-rc",
    "no-touch-required",
    "touch-required",
    "verify-required",
)


@dataclass
class Case:
    """One login attempt and the files that decide it."""

    number: int
    kind: str
    key: Any  # cryptography private key that signs the login
    source: str
    cert: bytes | None = None  # OpenSSH certificate line, when the login presents a certificate
    lines: list[bytes] = field(default_factory=list)  # authorized_keys lines
    trusted: list[bytes] = field(default_factory=list)  # TrustedUserCAKeys lines
    revoked: list[bytes] = field(default_factory=list)  # RevokedKeys lines
    tags: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        out = [f"case {self.number} ({self.kind}) from {self.source}" + (" with a certificate" if self.cert else "")]
        out += [f"  note: {n}" for n in self.notes]
        out += [f"  authorized_keys: {line!r}" for line in self.lines]
        out += [f"  trusted CA: {line!r}" for line in self.trusted]
        out += [f"  revoked: {line!r}" for line in self.revoked]
        if self.tags:
            out.append(f"  deliberate-difference tags: {', '.join(sorted(self.tags))}")
        return "\n".join(out)


def public_line(key: Any, comment: bytes = b"") -> bytes:
    """`TYPE BASE64` of a private or public key (and a comment)."""
    public = key.public_key() if hasattr(key, "public_key") else key
    text = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return text + (b" " + comment if comment else b"")


def private_openssh(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )


class Generator:
    """Draws cases from a seeded random.Random: the same seed gives the same files."""

    def __init__(self, seed: int, user: str, now: float | None = None, sources: tuple[str, ...] = SOURCES):
        self.sources = sources
        self.rng = random.Random(seed)
        self.user = user
        self.now = int(now if now is not None else time.time())
        self.count = 0
        self.unreadable_cert = False

    # -- keys ------------------------------------------------------------------------------

    def new_key(self) -> Any:
        # Key material cannot come from the seeded Random; the lines around it do.
        roll = self.rng.random()
        if roll < 0.03:
            return rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if roll < 0.15:
            return ec.generate_private_key(self.rng.choice([ec.SECP256R1(), ec.SECP256R1(), ec.SECP384R1()]))
        return ed25519.Ed25519PrivateKey.generate()

    # -- small pieces ----------------------------------------------------------------------

    def noise(self, n: int = 3) -> bytes:
        rng = self.rng
        parts = [rng.choice(SPECIALS) if rng.random() < 0.6 else rng.choice([b"a", b"Z", b"0", b"-", b"."])]
        parts += [rng.choice(SPECIALS) for _ in range(rng.randrange(n))]
        return b"".join(parts)

    def comment(self, key: Any, case: Case) -> bytes:
        rng = self.rng
        roll = rng.random()
        if roll < 0.3:
            return b""
        if roll < 0.6:
            return b"user@host" + self.noise()
        # A comment that hides a second, option-less line for the same key after a separator.
        separator = rng.choice(SEPARATORS)
        case.notes.append(f"comment embeds a bare key line after {separator!r}")
        return b"x" + separator + public_line(key) + (b" tail" if rng.random() < 0.5 else b"")

    def quoted(self, value: bytes) -> bytes:
        return b'"' + value.replace(b'"', b'\\"') + b'"'

    def from_pattern(self, case: Case) -> bytes:
        rng = self.rng
        own = case.source.encode()
        other = rng.choice([s for s in self.sources if s != case.source]).encode()
        pool: list[tuple[bytes, str | None]] = [  # (pattern, what it is)
            (own, None),
            (other, None),
            (b"127.0.0.0/8", None),
            (b"127.0.0.0/24", None),
            (b"127.1.0.0/16", None),
            (b"127.0.0.1/8", None),  # host bits set: an error for sshd
            (b"127.0.0.0/33", None),
            (b"0.0.0.0/0", None),
            (b"127.0.0.*", None),
            (b"127.*", None),
            (b"*", None),
            (b"127.?.?.?", None),
            (b"127.0.0.?", None),
            (b"::1", None),
            (b"::ffff:" + own, None),
            (b"127.1", None),
            (b"127.0.0.01", None),
            (b"0x7f.0.0.1", None),
            (b"", None),
            (own + b"/32", None),
            (own + b"/", None),
            (b"*" * 1100, None),  # longer than sshd's pattern buffer
            (b"::1/128", None),
            (b"::/0", None),
            (b"0:0:0:0:0:0:0:1", None),
            (b"::*", None),
            (b"::?", None),
            (b"::2", None),
            (b"::1/64", None),  # host bits set
            (b"fe80::/10", None),
            (b"localhost", "not an address"),
            (b"*.example.com", "not an address"),
            (b"Example.COM", "not an address"),
            (b" " + own, "not an address"),
            (own + b" ", "not an address"),
            (own + self.noise(1), "not an address"),
        ]
        pattern, _ = rng.choice(pool)
        if rng.random() < 0.25:
            pattern = b"!" + pattern
        return pattern

    def from_option(self, case: Case) -> bytes:
        patterns = [self.from_pattern(case) for _ in range(self.rng.choice([1, 1, 2, 3]))]
        return b'from="' + b",".join(patterns) + b'"'

    def expiry(self) -> bytes:
        rng = self.rng
        past, future = time.gmtime(self.now - 86400 * 3), time.gmtime(self.now + 86400 * 3)
        choices = [
            time.strftime("%Y%m%d", past),
            time.strftime("%Y%m%d", future),
            time.strftime("%Y%m%d%H%M", future),
            time.strftime("%Y%m%d%H%M%S", past) + "Z",
            time.strftime("%Y%m%d%H%M%S", future) + "Z",
            time.strftime("%Y%m%d%H%M%S", time.gmtime(self.now - 120)) + "Z",
            time.strftime("%Y%m%d%H%M%S", time.gmtime(self.now + 120)) + "Z",
            time.strftime("%Y%m%d%H%M", future) + "z",
            time.strftime("%Y%m%d", future) + "UTC",
            time.strftime("%Y%m%d", past) + "utc",
            "20991231",
            "20990231",  # 31 February: mktime normalises it
            "20991301",
            "20991232",
            "209912312460",
            "2099123123",
            "2099-12-31",
            "19700101Z",
            "0",
            "",
            "99991231",
        ]
        return b'expiry-time="' + rng.choice(choices).encode() + b'"'

    def value_option(self, case: Case) -> bytes:
        rng = self.rng
        kind = rng.randrange(9)
        if kind == 0:
            return b"command=" + self.quoted(rng.choice([b"lastlog", b'echo "hi"', b"a\\b", b""]) + self.noise())
        if kind == 1:
            return self.from_option(case)
        if kind == 2:
            return self.expiry()
        if kind == 3:
            return b"principals=" + self.quoted(rng.choice([self.user.encode(), b"x,y", b""]))
        if kind == 4:
            case.tags.add("environment")
            return b"environment=" + self.quoted(rng.choice([b"A=b", b"LANG=C", b"1A=b", b"=x", b"A", b"A-B=c"]))
        if kind in (5, 6):
            name = b"permitopen" if kind == 5 else b"permitlisten"
            value = rng.choice(
                [b"host:22", b"host", b"[::1]:22", b"host:*", b"host:0", b"host:ssh", b"host:99999", b"22", b""]
            )
            return name + b"=" + self.quoted(value)
        if kind == 7:
            return b"tunnel=" + self.quoted(rng.choice([b"1", b"any", b"ANY", b"x", b"2147483648", b"1:2", b""]))
        return rng.choice([b"foo", b"no-foo", b'foo="bar"', b"", b"restrictx", b"command=lastlog", b"cert-authority"])

    def options(self, case: Case, *, plain: bool = True) -> list[bytes]:
        rng = self.rng
        opts: list[bytes] = []
        for _ in range(rng.choice([0, 1, 1, 2, 2, 3, 4])):
            if rng.random() < 0.35:
                opts.append(rng.choice(FLAGS).encode())
            else:
                opts.append(self.value_option(case))
        if opts and rng.random() < 0.1:
            opts.append(rng.choice(opts))  # a duplicate
        if opts and rng.random() < 0.15:
            i = rng.randrange(len(opts))
            opts[i] = self.mutate(opts[i])
        return opts

    def mutate(self, text: bytes) -> bytes:
        """Insert, delete or replace one character somewhere."""
        rng = self.rng
        if not text:
            return self.noise(1)
        i = rng.randrange(len(text) + 1)
        roll = rng.random()
        if roll < 0.5:
            return text[:i] + self.noise(1) + text[i:]
        if roll < 0.75 and i < len(text):
            return text[:i] + text[i + 1 :]
        return text[:i] + rng.choice([b'"', b",", b" ", b"\t", b"=", b"\\"]) + text[i + 1 :]

    def line(self, key: Any, options: list[bytes], case: Case, comment: bytes | None = None) -> bytes:
        rng = self.rng
        key_part = public_line(key)
        if key_part.startswith(b"ssh-rsa ") and rng.random() < 0.5:  # sshd reads these names as RSA too
            key_part = rng.choice([b"rsa-sha2-256", b"rsa-sha2-512"]) + key_part[7:]
        if rng.random() < 0.15:
            key_part = key_part.replace(b" ", rng.choice([b"\t", b"  ", b" \t"]), 1)
        body = key_part
        if comment is None:
            comment = self.comment(key, case)
        if comment:
            body += rng.choice([b" ", b"\t", b"  "]) + comment
        if options:
            body = b",".join(options) + rng.choice([b" ", b" ", b"\t", b"  "]) + body
        lead = rng.choice([b"", b"", b"", b" ", b"\t", b"\xef\xbb\xbf", b"\x0b"])
        tail = rng.choice([b"", b"", b"", b"\r", b" ", b"\t", b"\x00junk"])
        return lead + body + tail

    # -- cases -----------------------------------------------------------------------------

    def case(self) -> Case:
        self.count += 1
        kind = self.rng.choices(
            ["options", "separator", "several-lines", "fuzz", "revoked", "trusted-cert", "authority-cert"],
            weights=[30, 12, 10, 12, 6, 15, 15],
        )[0]
        key = self.new_key()
        case = Case(self.count, kind, key, self.rng.choice(self.sources))
        build: Callable[[Case], None] = getattr(self, "_" + kind.replace("-", "_"))
        build(case)
        if any(not _address_like(entry) for line in case.lines for entry in _from_entries(line)):
            case.tags.add("from-not-address")
        return case

    def _options(self, case: Case) -> None:
        case.lines.append(self.line(case.key, self.options(case), case))

    def _separator(self, case: Case) -> None:
        # The attack: a from= that refuses this source, and a comment that, split at the
        # wrong place, becomes a second line without from=.
        others = [s for s in self.sources if s != case.source]
        options = [b'from="' + self.rng.choice(others).encode() + b'"']
        if self.rng.random() < 0.5:
            options.insert(0, b"restrict")
        separator = self.rng.choice(SEPARATORS)
        case.notes.append(f"separator {separator!r} before a bare copy of the key")
        comment = b"ops" + separator + public_line(case.key)
        case.lines.append(self.line(case.key, options, case, comment=comment))

    def _several_lines(self, case: Case) -> None:
        for _ in range(self.rng.choice([2, 2, 3])):
            case.lines.append(self.line(case.key, self.options(case), case))

    def _fuzz(self, case: Case) -> None:
        line = self.line(case.key, self.options(case), case)
        if self.rng.random() < 0.2:  # another type's name before this key's base64
            names = [b"ssh-ed25519", b"ecdsa-sha2-nistp256", b"ecdsa-sha2-nistp384", b"ssh-rsa", b"ssh-dss"]
            line = line.replace(public_line(case.key).split(b" ")[0], self.rng.choice(names), 1)
            case.notes.append("key type name swapped")
        for _ in range(self.rng.choice([0, 1, 1, 2])):
            line = self.mutate(line)
        case.notes.append("mutated line")
        case.lines.append(line)

    def _revoked(self, case: Case) -> None:
        case.lines.append(self.line(case.key, self.options(case), case, comment=b""))
        if self.rng.random() < 0.7:
            comment = self.rng.choice([b"", b"revoked", b"gone" + self.rng.choice(IN_LINE) + b"x", self.noise()])
            case.revoked.append(self.rng.choice([b"", b" ", b"\t"]) + public_line(case.key, comment))
        else:
            case.notes.append("revoked list names another key only")
            case.revoked.append(public_line(self.new_key(), b"someone else"))

    # -- certificates ----------------------------------------------------------------------

    def certificate(self, case: Case, ca: Any) -> bytes:
        rng = self.rng
        now = self.now
        key_id = b"case-%d" % case.number
        if rng.random() < 0.3:
            key_id = rng.choice([b"id-" + self.noise(2), b"nul\0id", b"last-nul\0"])
        builder = (
            SSHCertificateBuilder().public_key(case.key.public_key()).serial(rng.randrange(1 << 32)).key_id(key_id)
        )
        kind = SSHCertificateType.HOST if rng.random() < 0.06 else SSHCertificateType.USER
        builder = builder.type(kind)
        principals_choice = rng.choice(
            [
                [self.user],
                [self.user],
                [OTHER_USER],
                [OTHER_USER, self.user],
                [],
                [self.user + ",x"],
                ["x," + self.user],
                [" " + self.user],
                [self.user.upper()],
                ["*"],
                [self.user, "nul\0principal"],
                [self.user + "\0"],  # a last NUL: sshd reads the C string before it
            ]
        )
        if principals_choice:
            builder = builder.valid_principals([p.encode() for p in principals_choice])
        else:
            case.tags.add("cert-no-principals")
            builder = builder.valid_for_all_principals()
        window = rng.choice(["now", "now", "now", "expired", "future", "forever"])
        after, before = {
            "now": (now - 3600, now + 3600),
            "expired": (now - 7200, now - 3600),
            "future": (now + 3600, now + 7200),
            "forever": (0, (1 << 64) - 1),
        }[window]
        builder = builder.valid_after(after).valid_before(before)
        case.notes.append(f"certificate {kind.name} id={key_id!r} principals={principals_choice} window={window}")
        if rng.random() < 0.3:
            builder = builder.add_critical_option(b"force-command", rng.choice([b"lastlog", b"help", b""]))
        if rng.random() < 0.35:
            own = case.source.encode()
            value = rng.choice(
                [
                    own,
                    own + b"/32",
                    b"127.0.0.0/8",
                    b"10.0.0.0/8",
                    b"10.0.0.0/8," + own,
                    b"127.0.0.1/8",
                    b"127.0.0.*",
                    b"!" + own,
                    b" " + own,
                    b"",
                    b"localhost",
                    b"::1," + own,
                    own + b",",
                ]
            )
            builder = builder.add_critical_option(b"source-address", value)
        if rng.random() < 0.1:
            builder = builder.add_critical_option(rng.choice([b"unknown@example.com", b"verify-required"]), b"")
        for name in (b"permit-pty", b"permit-user-rc", b"unknown-ext@example.com"):
            if rng.random() < 0.4:
                builder = builder.add_extension(name, b"" if rng.random() < 0.85 else b"data")
        cert = builder.sign(ca)
        # sshd cannot read such a certificate at all: in the shared revocation file it would make
        # sshd (and conchcmd) refuse every key, so it is never listed there.
        self.unreadable_cert = b"\0" in key_id[:-1] or any("\0" in p[:-1] for p in principals_choice)
        return cert.public_bytes()

    def _trusted_cert(self, case: Case) -> None:
        ca = self.new_key()
        case.cert = self.certificate(case, ca)
        if self.rng.random() < 0.85:
            comment = self.rng.choice([b"", b"ca", b"ca" + self.rng.choice(IN_LINE) + b"x", self.noise()])
            if self.rng.random() < 0.01:  # sshd stops reading the file here: no CA after it is trusted
                case.trusted.append(b"not a key")
                case.notes.append("an unreadable line before the CA")
            case.trusted.append(self.rng.choice([b"", b" ", b"\t"]) + public_line(ca, comment))
        else:
            case.notes.append("CA not trusted")
        self._maybe_revoke_cert(case, ca)

    def _authority_cert(self, case: Case) -> None:
        ca = self.new_key()
        case.cert = self.certificate(case, ca)
        for _ in range(self.rng.choice([1, 1, 1, 2])):
            options = self.options(case)
            if self.rng.random() < 0.4:
                options.append(
                    b"principals="
                    + self.quoted(
                        self.rng.choice(
                            [self.user.encode(), OTHER_USER.encode(), f"{OTHER_USER},{self.user}".encode(), b"*", b""]
                        )
                    )
                )
            if self.rng.random() < 0.9:
                options.insert(self.rng.randrange(len(options) + 1), b"cert-authority")
            case.lines.append(self.line(ca, options, case))
        if self.rng.random() < 0.2:
            case.trusted.append(public_line(ca, b"also trusted"))
        if self.rng.random() < 0.1:  # the certified key itself, as a plain key: no use to a certificate
            case.lines.append(self.line(case.key, [], case))
        self._maybe_revoke_cert(case, ca)

    def _maybe_revoke_cert(self, case: Case, ca: Any) -> None:
        roll = self.rng.random()
        if roll < 0.06:
            case.revoked.append(public_line(ca, b"revoked CA"))
        elif roll < 0.12:
            case.revoked.append(public_line(case.key, b"revoked key"))
        elif roll < 0.16 and not self.unreadable_cert:
            assert case.cert is not None
            case.revoked.append(case.cert.rstrip(b"\n"))


_FROM = re.compile(rb'(?i)from="((?:[^"\\]|\\.)*)"')


def _from_entries(line: bytes) -> list[bytes]:
    return [entry for value in _FROM.findall(line) for entry in value.split(b",")]


def _address_like(entry: bytes) -> bool:
    """An address, a CIDR block without host bits, or an IPv4 wildcard (judged with `ipaddress`,
    independently of conchcmd's code)."""
    text = entry.removeprefix(b"!").decode("ascii", "replace")
    if re.fullmatch(r"[0-9.*?]+|[0-9A-Fa-f:.*?]*:[0-9A-Fa-f:.*?]*", text) and ("*" in text or "?" in text):
        return True
    try:
        ipaddress.ip_network(text, strict=True)
    except ValueError:
        return False
    return True


def generate(
    seed: int, count: int, user: str, now: float | None = None, sources: tuple[str, ...] = SOURCES
) -> list[Case]:
    generator = Generator(seed, user, now, sources)
    return [generator.case() for _ in range(count)]
