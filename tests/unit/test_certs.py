"""OpenSSH user certificates made with `ssh-keygen -s`: validation, trust, revocation, and the
KeyAuthorizer / PublicKeyChecker / `conchcmd check` decisions built on them."""

from __future__ import annotations

import base64
import itertools
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.keys import authorized_line, ed25519_key
from twisted.conch.error import ValidPublicKey
from twisted.conch.ssh.keys import Key
from twisted.cred.credentials import SSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.task import Clock

from conchcmd.core.audit import sanitise
from conchcmd.edge.cli import main
from conchcmd.policy.auth import Authorized, KeyAuthorizer, KeyRefused, PublicKeyChecker
from conchcmd.policy.authorized_keys import AuthorizedKeysFiles
from conchcmd.policy.certs import (
    CertificateRefused,
    RevokedKeys,
    TrustedCAs,
    is_certificate,
    validate_certificate,
)

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen is not installed")

SIG_DATA = b"\x00\x00\x00\x20session-identifier-and-userauth-request"
#: The userauth algorithm for each user key kind's certificate (RSA: the SHA-2 variants).
CERT_ALGORITHMS = {
    "ed25519": b"ssh-ed25519-cert-v01@openssh.com",
    "ecdsa256": b"ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ecdsa384": b"ecdsa-sha2-nistp384-cert-v01@openssh.com",
    "rsa": b"rsa-sha2-512-cert-v01@openssh.com",
}
SIGNATURE_TYPES = {
    b"ssh-ed25519-cert-v01@openssh.com": b"ssh-ed25519",
    b"ecdsa-sha2-nistp256-cert-v01@openssh.com": b"ecdsa-sha2-nistp256",
    b"ecdsa-sha2-nistp384-cert-v01@openssh.com": b"ecdsa-sha2-nistp384",
    b"rsa-sha2-512-cert-v01@openssh.com": b"rsa-sha2-512",
    b"rsa-sha2-256-cert-v01@openssh.com": b"rsa-sha2-256",
}


def keygen_fp(path: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", str(path)], check=True, capture_output=True, text=True).stdout
    return out.split()[1]


@dataclass(frozen=True)
class CA:
    private: Path
    public: Path
    public_line: str
    fingerprint: str

    @property
    def blob(self) -> bytes:
        return base64.b64decode(self.public_line.split()[1])


@pytest.fixture(scope="session")
def make_ca(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], CA]:
    """make_ca(name) -> a CA key ("ed25519...", "rsa..."), made once per session by ssh-keygen."""
    directory = tmp_path_factory.mktemp("cas")
    cache: dict[str, CA] = {}

    def make(name: str) -> CA:
        if name not in cache:
            args = (
                ["-t", "rsa", "-b", "2048"]
                if name.startswith("rsa")
                else ["-t", "ecdsa", "-b", "384"]
                if name.startswith("ecdsa")
                else ["-t", "ed25519"]
            )
            private = directory / f"ca_{name}"
            subprocess.run(
                ["ssh-keygen", "-q", *args, "-N", "", "-C", f"ca {name}", "-f", str(private)],
                check=True,
                capture_output=True,
            )
            public = directory / f"ca_{name}.pub"
            cache[name] = CA(private, public, public.read_text().strip(), keygen_fp(public))
        return cache[name]

    return make


_serials = itertools.count(1000)


@dataclass(frozen=True)
class Cert:
    path: Path  # the -cert.pub file
    blob: bytes
    algorithm: bytes  # for userauth
    key_id: str
    serial: int


@pytest.fixture
def sign(tmp_path: Path, make_ca, ssh_key) -> Callable[..., Cert]:
    """sign(user_kind="ed25519", ca="ed25519", principals="alice", validity="-5m:+1h", *options)."""
    counter = itertools.count()

    def run(
        *options: str,
        user: str = "ed25519",
        ca: str = "ed25519",
        principals: str | None = "alice",
        validity: str | None = "-5m:+1h",
        key_id: str | None = None,
        serial: int | None = None,
        host: bool = False,
        ca_algorithm: str | None = None,
    ) -> Cert:
        n = next(counter)
        pub = tmp_path / f"k{n}.pub"
        shutil.copy(ssh_key(user).public, pub)
        serial = next(_serials) if serial is None else serial
        key_id = key_id or f"{user}-cert-{n}"
        argv = ["ssh-keygen", "-q", "-s", str(make_ca(ca).private), "-I", key_id, "-z", str(serial)]
        if principals is not None:
            argv += ["-n", principals]
        if validity is not None:
            argv += ["-V", validity]
        if host:
            argv.append("-h")
        if ca_algorithm is not None:
            argv += ["-t", ca_algorithm]
        for option in options:
            argv += ["-O", option]
        subprocess.run([*argv, str(pub)], check=True, capture_output=True)
        path = tmp_path / f"k{n}-cert.pub"
        kind, b64 = path.read_text().split()[:2]
        algorithm = CERT_ALGORITHMS.get(user, kind.encode())
        return Cert(path, base64.b64decode(b64), algorithm, key_id, serial)

    return run


@dataclass
class Site:
    """Authorized_keys files, a trusted CA file, a revocation file and a clock, wired together."""

    root: Path
    clock: Clock
    authorizer: KeyAuthorizer

    @property
    def trusted(self) -> Path:
        return self.root / "trusted_cas"

    @property
    def revoked(self) -> Path:
        return self.root / "revoked"

    def trust(self, *cas: CA) -> None:
        self.trusted.write_text("# trusted user CAs\n" + "".join(ca.public_line + "\n" for ca in cas))

    def revoke(self, *lines: str) -> None:
        self.revoked.write_text("".join(line + "\n" for line in lines))

    def authorize_lines(self, user: str, *lines: str) -> None:
        path = self.root / "ak" / user
        path.write_text("".join(line + "\n" for line in lines))
        path.chmod(0o600)

    def check(self, cert: Cert, *, user: str = "alice", peer: str | None = "10.0.0.5", algorithm: bytes | None = None):
        return self.authorizer.authorize(user, algorithm or cert.algorithm, cert.blob, peer)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    root = tmp_path / "site"
    (root / "ak").mkdir(parents=True)
    clock = Clock()
    clock.advance(time.time())
    authorizer = KeyAuthorizer(
        AuthorizedKeysFiles(f"{root}/ak/%u"),
        TrustedCAs(str(root / "trusted_cas")),
        RevokedKeys(str(root / "revoked")),
        clock,
    )
    site = Site(root, clock, authorizer)
    site.revoke("# nothing revoked")
    return site


def validate(cert: Cert, *, trusted: TrustedCAs, user: str = "alice", peer: str | None = "10.0.0.5", now=None, **kw):
    return validate_certificate(
        cert.blob,
        user=user,
        peer_host=peer,
        now=time.time() if now is None else now,
        trusted=trusted,
        authorities=kw.get("authorities", []),
        revoked=kw.get("revoked", RevokedKeys(None)),
    )


# -- good certificates -----------------------------------------------------------------------------


@pytest.mark.parametrize("ca", ["ed25519", "rsa", "ecdsa"])
@pytest.mark.parametrize("user", ["ed25519", "ecdsa256", "ecdsa384", "rsa"])
def test_good_certificate_logs_in_with_its_details_in_the_audit(site: Site, sign, ssh_key, make_ca, ca, user) -> None:
    site.trust(make_ca(ca))
    cert = sign(user=user, ca=ca, key_id=f"alice@laptop-{user}", serial=4242)
    assert is_certificate(cert.blob)
    authorized = site.check(cert)
    identity = authorized.identity
    assert identity.user == "alice"
    assert identity.method == "publickey"
    assert identity.key_type == cert.algorithm.decode()
    assert identity.fingerprint == ssh_key(user).fingerprint  # the certified key, as ssh-keygen -lf shows it
    assert identity.audit_fields() == {
        "method": "publickey",
        "key_type": cert.algorithm.decode(),
        "fingerprint": ssh_key(user).fingerprint,
        "cert_key_id": f"alice@laptop-{user}",
        "cert_serial": 4242,
        "ca_fingerprint": make_ca(ca).fingerprint,
    }
    assert identity.grant.forced_command is None and identity.grant.pty is True
    assert "via trusted_user_ca_keys" in identity.grant.source
    assert authorized.key.blob() == base64.b64decode(ssh_key(user).public_line.split()[1])
    assert authorized.signature_algorithm == SIGNATURE_TYPES[cert.algorithm]


def test_rsa_certificate_with_sha256_signatures(site: Site, sign, make_ca) -> None:
    site.trust(make_ca("ed25519"))
    cert = sign(user="rsa")
    authorized = site.check(cert, algorithm=b"rsa-sha2-256-cert-v01@openssh.com")
    assert authorized.signature_algorithm == b"rsa-sha2-256"


def test_validate_certificate_returns_the_grant_and_ca(sign, make_ca, tmp_path: Path) -> None:
    ca = make_ca("ed25519")
    (tmp_path / "cas").write_text(ca.public_line + "\n")
    cert = sign(principals="ops,alice,dev", key_id="kid", serial=7)
    grant, ca_blob = validate(cert, trusted=TrustedCAs(str(tmp_path / "cas")))
    assert ca_blob == ca.blob
    assert (grant.key_id, grant.serial, grant.ca_fingerprint) == ("kid", 7, ca.fingerprint)
    assert grant.principals == ("ops", "alice", "dev")
    assert (grant.force_command, grant.source_address, grant.pty) == (None, None, True)


def test_time_window_edges(sign, make_ca, tmp_path: Path) -> None:
    (tmp_path / "cas").write_text(make_ca("ed25519").public_line + "\n")
    trusted = TrustedCAs(str(tmp_path / "cas"))
    cert = sign(validity="20300101000000Z:20300102000000Z")
    start, end = 1893456000, 1893542400  # 2030-01-01 and 2030-01-02, UTC
    validate(cert, trusted=trusted, now=start)
    validate(cert, trusted=trusted, now=end - 1)
    with pytest.raises(CertificateRefused, match="not yet valid"):
        validate(cert, trusted=trusted, now=start - 1)
    with pytest.raises(CertificateRefused, match="expired"):
        validate(cert, trusted=trusted, now=end)


def test_certificate_valid_forever(site: Site, sign, make_ca) -> None:
    site.trust(make_ca("ed25519"))
    site.check(sign(validity=None))
    site.clock.advance(100 * 365 * 86400)
    site.check(sign(validity=None))


# -- refusals ---------------------------------------------------------------------------------------


def test_wrong_principal_is_refused(site: Site, sign, make_ca) -> None:
    site.trust(make_ca("ed25519"))
    with pytest.raises(KeyRefused, match="certificate principals bob, root do not include alice"):
        site.check(sign(principals="bob,root"))


def test_principal_for_another_user_does_not_log_in_as_that_user(site: Site, sign, make_ca) -> None:
    site.trust(make_ca("ed25519"))
    cert = sign(principals="alice")
    site.check(cert, user="alice")
    with pytest.raises(KeyRefused, match="do not include bob"):
        site.check(cert, user="bob")


def test_expired_certificate_is_refused(site: Site, sign, make_ca) -> None:
    site.trust(make_ca("ed25519"))
    with pytest.raises(KeyRefused, match="certificate has expired"):
        site.check(sign(validity="-2h:-1h"))


def test_certificate_expires_while_the_clock_runs(site: Site, sign, make_ca) -> None:
    site.trust(make_ca("ed25519"))
    cert = sign(validity="-1m:+10m")
    site.check(cert)
    site.clock.advance(11 * 60)
    with pytest.raises(KeyRefused, match="certificate has expired"):
        site.check(cert)


def test_not_yet_valid_certificate_is_refused(site: Site, sign, make_ca) -> None:
    site.trust(make_ca("ed25519"))
    cert = sign(validity="+1h:+2h")
    with pytest.raises(KeyRefused, match="certificate is not yet valid"):
        site.check(cert)
    site.clock.advance(3600 + 60)
    site.check(cert)


def test_force_command_becomes_the_grants_forced_command(site: Site, sign, make_ca) -> None:
    site.trust(make_ca("ed25519"))
    identity = site.check(sign("force-command=lastlog -n 3")).identity
    assert identity.grant.forced_command == "lastlog -n 3"


@pytest.mark.parametrize(
    ("source", "peer"),
    [("10.0.0.0/8", "10.1.2.3"), ("192.0.2.1,10.0.0.5", "10.0.0.5"), ("2001:db8::/32", "2001:db8::7")],
)
def test_source_address_allows_a_matching_peer(site: Site, sign, make_ca, source: str, peer: str) -> None:
    site.trust(make_ca("ed25519"))
    site.check(sign(f"source-address={source}"), peer=peer)


def test_source_address_allows_an_ipv4_mapped_peer(site: Site, sign, make_ca) -> None:
    site.trust(make_ca("ed25519"))
    site.check(sign("source-address=10.0.0.0/8"), peer="::ffff:10.1.2.3")


@pytest.mark.parametrize("peer", ["192.0.2.1", "10.0.0.6", "2001:db8::1", None])
def test_source_address_refuses_other_peers(site: Site, sign, make_ca, peer) -> None:
    site.trust(make_ca("ed25519"))
    with pytest.raises(KeyRefused, match=f"certificate source-address does not allow {peer}"):
        site.check(sign("source-address=10.0.0.5/32,192.0.2.128/25"), peer=peer)


@pytest.mark.parametrize("option", ["critical:foo=bar", "critical:foo", "critical:permit-pty"])
def test_unknown_critical_option_is_refused(site: Site, sign, make_ca, option: str) -> None:
    site.trust(make_ca("ed25519"))
    name = option.split(":", 1)[1].split("=", 1)[0]
    with pytest.raises(KeyRefused, match=f"certificate has unknown critical option\\(s\\): {name}"):
        site.check(sign(option))


def test_unknown_extension_is_ignored(site: Site, sign, make_ca) -> None:
    site.trust(make_ca("ed25519"))
    site.check(sign("extension:custom@example.com=hello"))


def test_no_pty_certificate_grants_no_pty(site: Site, sign, make_ca) -> None:
    site.trust(make_ca("ed25519"))
    assert site.check(sign("no-pty")).identity.grant.pty is False
    assert site.check(sign("clear")).identity.grant.pty is False
    assert site.check(sign("clear", "permit-pty")).identity.grant.pty is True


def test_untrusted_ca_is_refused(site: Site, sign, make_ca) -> None:
    site.trust(make_ca("ed25519"))
    other = make_ca("ed25519-other")
    with pytest.raises(KeyRefused, match=re.escape(f"certificate authority {other.fingerprint} is not trusted")):
        site.check(sign(ca="ed25519-other"))


def test_no_trusted_ca_file_trusts_nothing(site: Site, sign) -> None:
    with pytest.raises(KeyRefused, match="is not trusted"):
        site.check(sign())


def test_ca_in_authorized_keys_as_a_plain_key_is_not_a_cert_authority(site: Site, sign, make_ca) -> None:
    site.authorize_lines("alice", make_ca("ed25519").public_line)
    with pytest.raises(KeyRefused, match="is not trusted"):
        site.check(sign())


def test_host_certificate_is_refused(site: Site, sign, make_ca) -> None:
    site.trust(make_ca("ed25519"))
    with pytest.raises(KeyRefused, match="a host certificate cannot log in"):
        site.check(sign(host=True))


def test_certificate_without_principals_is_refused(site: Site, sign, make_ca) -> None:
    site.trust(make_ca("ed25519"))
    with pytest.raises(KeyRefused, match="certificate has no principals"):
        site.check(sign(principals=None))


def test_tampered_certificate_is_refused(site: Site, sign, make_ca) -> None:
    site.trust(make_ca("ed25519"))
    cert = sign(key_id="honest-key-id")
    tampered = cert.blob.replace(b"honest-key-id", b"sneaky-key-id")
    assert tampered != cert.blob
    with pytest.raises(KeyRefused, match="certificate signature is not valid"):
        site.authorizer.authorize("alice", cert.algorithm, tampered, "10.0.0.5")


def test_malformed_certificate_blob_is_refused(site: Site, sign, make_ca) -> None:
    site.trust(make_ca("ed25519"))
    cert = sign()
    for blob in (cert.blob[:60], cert.blob[:-5], cert.blob + b"junk"):
        with pytest.raises(KeyRefused):
            site.authorizer.authorize("alice", cert.algorithm, blob, "10.0.0.5")


def test_certificate_under_another_algorithm_name_is_refused(site: Site, sign, make_ca) -> None:
    site.trust(make_ca("ed25519"))
    cert = sign(user="ed25519")
    with pytest.raises(KeyRefused, match="certificate algorithm does not match its key"):
        site.check(cert, algorithm=b"ecdsa-sha2-nistp256-cert-v01@openssh.com")
    rsa = sign(user="rsa")
    with pytest.raises(KeyRefused, match="certificate algorithm does not match its key"):
        site.check(rsa, algorithm=b"ssh-ed25519-cert-v01@openssh.com")


def test_certificate_of_a_small_rsa_key_is_refused(site: Site, sign, make_ca) -> None:
    """A 1024-bit RSA key is refused as a plain key (MIN_RSA_BITS); certifying it must not help."""
    site.trust(make_ca("ed25519"))
    with pytest.raises(KeyRefused, match="RSA key of 1024 bits is too small"):
        site.check(sign(user="rsa1024"), algorithm=b"rsa-sha2-512-cert-v01@openssh.com")


def test_certificate_signed_with_sha1_is_refused(site: Site, sign, make_ca) -> None:
    site.trust(make_ca("rsa"))
    with pytest.raises(KeyRefused, match="certificate signed with SHA-1"):
        site.check(sign(ca="rsa", ca_algorithm="ssh-rsa"))
    site.check(sign(ca="rsa", ca_algorithm="rsa-sha2-256"))


def test_certificate_algorithm_with_a_plain_key_blob_is_refused(site: Site, make_ca, ssh_key) -> None:
    site.trust(make_ca("ed25519"))
    site.authorize_lines("alice", ssh_key("ed25519").public_line)
    blob = base64.b64decode(ssh_key("ed25519").public_line.split()[1])
    with pytest.raises(KeyRefused, match="not a certificate"):
        site.authorizer.authorize("alice", b"ssh-ed25519-cert-v01@openssh.com", blob, "10.0.0.5")


def test_plain_key_algorithm_with_a_certificate_blob_is_refused(site: Site, sign, make_ca) -> None:
    site.trust(make_ca("ed25519"))
    cert = sign()
    with pytest.raises(KeyRefused):
        site.authorizer.authorize("alice", b"ssh-ed25519", cert.blob, "10.0.0.5")


# -- revocation -----------------------------------------------------------------------------------


def test_revoked_by_serial(site: Site, sign, make_ca) -> None:
    site.trust(make_ca("ed25519"))
    site.revoke("serial: 17", "serial: 100-199   # a batch")
    for serial in (17, 100, 150, 199):
        with pytest.raises(KeyRefused, match=f"certificate serial {serial} is revoked"):
            site.check(sign(serial=serial))
    for serial in (16, 18, 99, 200):
        site.check(sign(serial=serial))


def test_revoked_by_key_id(site: Site, sign, make_ca) -> None:
    site.trust(make_ca("ed25519"))
    site.revoke("id: stolen-laptop")
    with pytest.raises(KeyRefused, match="certificate id 'stolen-laptop' is revoked"):
        site.check(sign(key_id="stolen-laptop"))
    site.check(sign(key_id="stolen-laptop-2"))
    site.revoke("id: lap\\top\u200b")  # escaped once when written out, as the principals are
    with pytest.raises(KeyRefused) as info:
        site.check(sign(key_id="lap\\top\u200b"))
    assert sanitise(str(info.value)) == "certificate id 'lap\\\\top\\u200b' is revoked"


def test_revoked_by_the_users_key(site: Site, sign, make_ca, ssh_key) -> None:
    site.trust(make_ca("ed25519"))
    site.revoke(ssh_key("ecdsa256").public_line)
    with pytest.raises(KeyRefused, match=re.escape(f"key {ssh_key('ecdsa256').fingerprint} is revoked")):
        site.check(sign(user="ecdsa256"))
    site.check(sign(user="ed25519"))


def test_revoked_by_the_ca_key(site: Site, sign, make_ca) -> None:
    ca = make_ca("ed25519")
    site.trust(ca, make_ca("rsa"))
    site.revoke(ca.public_line)
    with pytest.raises(KeyRefused, match=re.escape(f"certificate authority {ca.fingerprint} is revoked")):
        site.check(sign(ca="ed25519"))
    site.check(sign(ca="rsa"))


def test_revocation_file_is_re_read_when_it_changes(site: Site, sign, make_ca) -> None:
    site.trust(make_ca("ed25519"))
    cert = sign(serial=5)
    site.check(cert)
    site.revoke("# now revoked", "serial: 5")
    with pytest.raises(KeyRefused, match="serial 5 is revoked"):
        site.check(cert)


def test_unreadable_revocation_file_refuses_everything(site: Site, sign, make_ca) -> None:
    site.trust(make_ca("ed25519"))
    site.revoked.unlink()
    with pytest.raises(KeyRefused, match="revocation list unreadable"):
        site.check(sign())


def test_revocation_file_forms(tmp_path: Path, sign, make_ca, ssh_key) -> None:
    path = tmp_path / "revoked"
    path.write_text(
        f"# revoked by ops\n\nserial:7\nserial: 10-12   # a batch\n  id: lost laptop  \n{ssh_key('rsa').public_line}\n"
    )
    revoked = RevokedKeys(str(path))
    (tmp_path / "cas").write_text(make_ca("ed25519").public_line + "\n")
    validate(sign(key_id="y", serial=9), trusted=TrustedCAs(str(tmp_path / "cas")), revoked=revoked)
    assert revoked.ids == frozenset({"lost laptop"}) and revoked.serials == ((7, 7), (10, 12))
    assert revoked.blobs == frozenset({base64.b64decode(ssh_key("rsa").public_line.split()[1])})


def test_openssh_krl_is_honoured_or_refused_never_ignored(site: Site, sign, make_ca, tmp_path: Path) -> None:
    """An OpenSSH KRL (binary, `ssh-keygen -k`) given as revoked_keys must not read as an empty
    list: either conchcmd understands it, or it fails closed, as for an unreadable file."""
    ca = make_ca("ed25519")
    site.trust(ca)
    spec = tmp_path / "krl.spec"
    spec.write_text("serial: 4711\n")
    subprocess.run(
        ["ssh-keygen", "-q", "-k", "-f", str(site.revoked), "-s", str(ca.public), str(spec)],
        check=True,
        capture_output=True,
    )
    assert site.revoked.read_bytes().startswith(b"SSHKRL\n\0")
    with pytest.raises(KeyRefused):
        site.check(sign(serial=4711))


@pytest.mark.parametrize(("user", "other"), [("ed25519", "ecdsa256"), ("rsa", "ed25519"), ("ecdsa256", "ed25519")])
def test_certificate_line_in_revoked_keys_revokes_its_key(site: Site, sign, make_ca, ssh_key, user, other) -> None:
    """As in sshd's flat RevokedKeys file, listing a certificate revokes the key it certifies
    (it is not skipped as "not a public key", which would leave the key usable)."""
    site.trust(make_ca("ed25519"))
    listed = sign(user=user)
    site.revoke(listed.path.read_text().strip())
    with pytest.raises(KeyRefused, match=re.escape(f"key {ssh_key(user).fingerprint} is revoked")):
        site.check(sign(user=user))  # a new certificate of the same key
    site.check(sign(user=other))


# -- cert-authority lines in authorized_keys -------------------------------------------------------------


def test_cert_authority_line_trusts_a_ca_for_this_user_only(site: Site, sign, make_ca) -> None:
    ca = make_ca("ed25519-other")
    site.authorize_lines("alice", f"cert-authority {ca.public_line}")
    cert = sign(ca="ed25519-other", principals="alice,bob")
    identity = site.check(cert).identity
    assert "via cert-authority at" in identity.grant.source and identity.grant.source.endswith("alice:1")
    assert identity.certificate == {
        "cert_key_id": cert.key_id,
        "cert_serial": cert.serial,
        "ca_fingerprint": ca.fingerprint,
    }
    with pytest.raises(KeyRefused, match="is not trusted"):
        site.check(cert, user="bob")  # bob has no such line


def test_cert_authority_without_principals_requires_the_user_name(site: Site, sign, make_ca) -> None:
    site.authorize_lines("alice", f"cert-authority {make_ca('ed25519-other').public_line}")
    with pytest.raises(KeyRefused, match="do not include alice"):
        site.check(sign(ca="ed25519-other", principals="ops"))


def test_cert_authority_with_principals_replaces_the_user_name(site: Site, sign, make_ca) -> None:
    site.authorize_lines("alice", f'cert-authority,principals="ops,dba" {make_ca("ed25519-other").public_line}')
    site.check(sign(ca="ed25519-other", principals="web,dba"))
    with pytest.raises(KeyRefused, match="do not include alice"):
        site.check(sign(ca="ed25519-other", principals="alice"))


def test_cert_authority_line_options_apply(site: Site, sign, make_ca) -> None:
    ca = make_ca("ed25519-other")
    site.authorize_lines("alice", f'cert-authority,no-pty,command="lastlog -n 1",from="10.0.0.0/8" {ca.public_line}')
    grant = site.check(sign(ca="ed25519-other"), peer="10.9.9.9").identity.grant
    assert (grant.forced_command, grant.pty) == ("lastlog -n 1", False)
    with pytest.raises(KeyRefused, match=r"from= does not allow 192\.0\.2\.1"):
        site.check(sign(ca="ed25519-other"), peer="192.0.2.1")


def test_cert_authority_line_command_conflicting_with_force_command_is_refused(site: Site, sign, make_ca) -> None:
    ca = make_ca("ed25519-other")
    site.authorize_lines("alice", f'cert-authority,command="lastlog -n 1" {ca.public_line}')
    with pytest.raises(KeyRefused, match="certificate and cert-authority line force different commands"):
        site.check(sign("force-command=help", ca="ed25519-other"))
    grant = site.check(sign("force-command=lastlog -n 1", ca="ed25519-other")).identity.grant
    assert grant.forced_command == "lastlog -n 1"


def test_cert_authority_line_with_an_unknown_option_is_not_a_ca(site: Site, sign, make_ca) -> None:
    site.authorize_lines("alice", f"cert-authority,frobnicate {make_ca('ed25519-other').public_line}")
    with pytest.raises(KeyRefused):
        site.check(sign(ca="ed25519-other"))


def test_expired_cert_authority_line_is_refused(site: Site, sign, make_ca) -> None:
    site.authorize_lines("alice", f'cert-authority,expiry-time="20200101Z" {make_ca("ed25519-other").public_line}')
    with pytest.raises(KeyRefused, match="expiry-time"):
        site.check(sign(ca="ed25519-other"))


def test_cert_authority_line_and_trusted_file_together(site: Site, sign, make_ca) -> None:
    """As in sshd, a certificate passes through either: the user's cert-authority line (with its
    principals=), or, failing that, trusted_user_ca_keys (the user name as a principal)."""
    ca = make_ca("ed25519")
    site.trust(ca)
    site.authorize_lines("alice", f'cert-authority,principals="ops",command="lastlog" {ca.public_line}')
    assert site.check(sign(principals="ops")).identity.grant.forced_command == "lastlog"
    assert site.check(sign(principals="alice")).identity.grant.forced_command is None
    with pytest.raises(KeyRefused, match="do not include alice"):
        site.check(sign(principals="bob"))


def test_each_cert_authority_line_for_the_same_ca_is_judged_on_its_own(site: Site, sign, make_ca) -> None:
    """Two lines for one CA with different principals= and command=: as in sshd, the line whose
    principals match is the one whose options apply (not one line's principals and another's command)."""
    ca = make_ca("ed25519-other")
    site.authorize_lines(
        "alice",
        f'cert-authority,principals="ops",command="lastlog -n 1" {ca.public_line}',
        f'cert-authority,principals="admin" {ca.public_line}',
    )
    ops = site.check(sign(ca="ed25519-other", principals="ops")).identity.grant
    assert ops.forced_command == "lastlog -n 1"
    admin = site.check(sign(ca="ed25519-other", principals="admin")).identity.grant
    assert admin.forced_command is None


# -- PublicKeyChecker: a real signature over a certificate login -----------------------------------------------


def cert_credentials(cert: Cert, signer: Path, *, signature_type: bytes | None = None, data: bytes = SIG_DATA):
    sig_type = signature_type or SIGNATURE_TYPES[cert.algorithm]
    signature = Key.fromFile(str(signer)).sign(data, signatureType=sig_type)
    return SSHPrivateKey(b"alice", cert.algorithm, cert.blob, SIG_DATA, signature)


@pytest.mark.parametrize("user", ["ed25519", "ecdsa256", "rsa"])
def test_checker_accepts_a_certificate_login_signed_by_the_certified_key(
    site: Site, sign, make_ca, ssh_key, sync, user: str
) -> None:
    site.trust(make_ca("ed25519"))
    cert = sign("force-command=lastlog", user=user)
    checker = PublicKeyChecker(site.authorizer)
    identity = sync.success(checker.requestAvatarId(cert_credentials(cert, ssh_key(user).private)))
    assert identity.user == "alice" and identity.key_type == cert.algorithm.decode()
    assert identity.grant.forced_command == "lastlog"
    assert identity.audit_fields()["cert_serial"] == cert.serial


def test_checker_probe_of_a_good_certificate_gets_pk_ok(site: Site, sign, make_ca, sync) -> None:
    site.trust(make_ca("ed25519"))
    cert = sign()
    failure = sync.failure(
        PublicKeyChecker(site.authorizer).requestAvatarId(
            SSHPrivateKey(b"alice", cert.algorithm, cert.blob, None, None)
        )
    )
    assert failure.check(ValidPublicKey)


def test_checker_probe_of_a_refused_certificate_gets_no_pk_ok(site: Site, sign, make_ca, sync) -> None:
    site.trust(make_ca("ed25519"))
    cert = sign(principals="bob")
    failure = sync.failure(
        PublicKeyChecker(site.authorizer).requestAvatarId(
            SSHPrivateKey(b"alice", cert.algorithm, cert.blob, None, None)
        )
    )
    assert failure.check(UnauthorizedLogin) and not failure.check(ValidPublicKey)


def test_checker_refuses_a_signature_by_the_ca_or_another_key(site: Site, sign, make_ca, ssh_key, sync) -> None:
    ca = make_ca("ed25519")
    site.trust(ca)
    cert = sign()
    checker = PublicKeyChecker(site.authorizer)
    for signer in (ca.private, ssh_key("ed25519-other").private):
        failure = sync.failure(checker.requestAvatarId(cert_credentials(cert, signer)))
        assert failure.check(KeyRefused) and "bad signature" in failure.getErrorMessage()


def test_checker_refuses_a_signature_over_other_data(site: Site, sign, make_ca, ssh_key, sync) -> None:
    site.trust(make_ca("ed25519"))
    cert = sign()
    creds = cert_credentials(cert, ssh_key("ed25519").private, data=SIG_DATA + b"x")
    failure = sync.failure(PublicKeyChecker(site.authorizer).requestAvatarId(creds))
    assert "bad signature" in failure.getErrorMessage()


def test_checker_refuses_a_signature_type_other_than_the_algorithms(site: Site, sign, make_ca, ssh_key, sync) -> None:
    site.trust(make_ca("ed25519"))
    cert = sign(user="rsa")  # announced as rsa-sha2-512-cert: a SHA-256 or SHA-1 signature does not do
    for sig_type in (b"rsa-sha2-256", b"ssh-rsa"):
        creds = cert_credentials(cert, ssh_key("rsa").private, signature_type=sig_type)
        failure = sync.failure(PublicKeyChecker(site.authorizer).requestAvatarId(creds))
        assert "signature type does not match" in failure.getErrorMessage()


def test_sha1_ssh_rsa_cert_algorithm_is_refused(site: Site, sign, make_ca, ssh_key, sync) -> None:
    site.trust(make_ca("ed25519"))
    cert = sign(user="rsa")
    signature = Key.fromFile(str(ssh_key("rsa").private)).sign(SIG_DATA, signatureType=b"ssh-rsa")
    creds = SSHPrivateKey(b"alice", b"ssh-rsa-cert-v01@openssh.com", cert.blob, SIG_DATA, signature)
    failure = sync.failure(PublicKeyChecker(site.authorizer).requestAvatarId(creds))
    assert failure.check(UnauthorizedLogin)


def test_checker_returns_authorized_terms_for_the_realm(site: Site, sign, make_ca) -> None:
    site.trust(make_ca("ed25519"))
    authorized = site.check(sign("no-pty", "force-command=help"))
    assert isinstance(authorized, Authorized)
    assert (authorized.identity.grant.pty, authorized.identity.grant.forced_command) == (False, "help")


# -- conchcmd check with a certificate -----------------------------------------------------------------


def test_check_cli_certificate_with_forced_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, sign, make_ca
) -> None:
    ca = make_ca("ed25519")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cas").write_text(ca.public_line + "\n")
    (tmp_path / "conchcmd.toml").write_text(
        'authorized_keys = "ak/%u"\ntrusted_user_ca_keys = "cas"\n[users.alice]\ncommands = ["lastlog"]\n'
    )
    cert = sign("force-command=lastlog -n 4", "source-address=10.0.0.0/8", "no-pty", key_id="ops-7", serial=77)
    args = ["check", "--user", "alice", "--key", str(cert.path), "--from", "10.2.3.4", "--command", "comphash /x"]
    assert main(args) == 0
    out = capsys.readouterr().out
    first, second = out.splitlines()
    assert first.startswith("login: allowed for alice from 10.2.3.4 (by certificate 'ops-7' serial 77 via ")
    assert "forced command 'lastlog -n 4'" in first and "no pty" in first and f"CA {ca.fingerprint}" in first
    assert second == "command: allowed: lastlog -n 4 (forced; the client's command is ignored)"

    args[args.index("--from") + 1] = "192.0.2.1"
    assert main(args) == 1
    assert capsys.readouterr().out == "login: REFUSED: certificate source-address does not allow 192.0.2.1\n"


def test_check_cli_certificate_forcing_a_command_the_user_may_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, sign, make_ca
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cas").write_text(make_ca("ed25519").public_line + "\n")
    (tmp_path / "conchcmd.toml").write_text(
        'authorized_keys = "ak/%u"\ntrusted_user_ca_keys = "cas"\n[users.alice]\ncommands = ["lastlog"]\n'
    )
    cert = sign("force-command=comphash /etc/hosts")
    assert main(["check", "--user", "alice", "--key", str(cert.path)]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "command: REFUSED: comphash: not permitted (status 126)"


def test_check_cli_rsa_certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, sign, make_ca) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cas").write_text(make_ca("rsa").public_line + "\n")
    (tmp_path / "conchcmd.toml").write_text('authorized_keys = "ak/%u"\ntrusted_user_ca_keys = "cas"\n')
    cert = sign(user="rsa", ca="rsa")
    assert main(["check", "--user", "alice", "--key", str(cert.path)]) == 0
    assert capsys.readouterr().out.startswith("login: allowed for alice from any address (by certificate ")


def test_check_cli_expired_certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, sign, make_ca) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cas").write_text(make_ca("ed25519").public_line + "\n")
    (tmp_path / "conchcmd.toml").write_text('authorized_keys = "ak/%u"\ntrusted_user_ca_keys = "cas"\n')
    cert = sign(validity="-2d:-1d")
    assert main(["check", "--user", "alice", "--key", str(cert.path)]) == 1
    assert capsys.readouterr().out == "login: REFUSED: certificate has expired\n"


# -- what the sshd differential tests found (tests/differential) ----------------------------------


def test_a_principal_containing_a_comma_is_one_principal(site: Site) -> None:
    """principals="admin" must not match a certificate principal "x,admin" (current sshd, and
    Debian's 9.2, compare whole principals; 9.2 as released split them at commas)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    ca = ed25519.Ed25519PrivateKey.generate()
    ca_line = ca.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    site.authorize_lines("alice", f'cert-authority,principals="admin" {ca_line.decode()}')
    algorithm = b"ssh-ed25519-cert-v01@openssh.com"
    with pytest.raises(KeyRefused, match="principals"):
        site.authorizer.authorize("alice", algorithm, _raw_certificate(principals=[b"x,admin"], ca=ca), "10.0.0.5")
    site.authorizer.authorize("alice", algorithm, _raw_certificate(principals=[b"x", b"admin"], ca=ca), "10.0.0.5")


@pytest.mark.parametrize("wanted", ["ops,,admin", ",admin"])
def test_principals_option_stops_at_an_empty_item(site: Site, sign, make_ca, wanted: str) -> None:
    ca = make_ca("ed25519-other")
    site.authorize_lines("alice", f'cert-authority,principals="{wanted}" {ca.public_line}')
    with pytest.raises(KeyRefused, match="principals"):
        site.check(sign(ca="ed25519-other", principals="admin"))


def test_verify_required_is_a_known_critical_option(site: Site, sign, make_ca) -> None:
    """sshd knows it; it only concerns FIDO keys, which conchcmd does not accept."""
    site.trust(make_ca("ed25519"))
    site.check(sign("verify-required"))


def _raw_certificate(*, key_id: bytes = b"id", extensions=(), critical=(), principals=(b"alice",), ca=None) -> bytes:
    """A certificate made with `cryptography`, which (unlike ssh-keygen) writes what it is given."""
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.hazmat.primitives.serialization import SSHCertificateBuilder, SSHCertificateType

    builder = (
        SSHCertificateBuilder()
        .public_key(ed25519.Ed25519PrivateKey.generate().public_key())
        .serial(1)
        .type(SSHCertificateType.USER)
        .key_id(key_id)
        .valid_principals(list(principals))
        .valid_after(0)
        .valid_before((1 << 64) - 1)
    )
    for name, value in extensions:
        builder = builder.add_extension(name, value)
    for name, value in critical:
        builder = builder.add_critical_option(name, value)
    signed = builder.sign(ca or ed25519.Ed25519PrivateKey.generate())
    return base64.b64decode(signed.public_bytes().split()[1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"key_id": b"a\0b"}, "NUL in the key id"),
        ({"extensions": [(b"permit-pty", b"data")]}, "permit-pty is corrupt"),
        ({"critical": [(b"force-command", b"")]}, "force-command cannot be parsed"),
        ({"critical": [(b"source-address", b"10.0.0.1/8")]}, "source-address is malformed"),
        ({"critical": [(b"source-address", b"10.0.0.1, 10.0.0.2")]}, "source-address is malformed"),
    ],
)
def test_certificates_sshd_cannot_read_are_refused(kwargs: dict, message: str) -> None:
    from conchcmd.policy.certs import CertificateRefused, certificate_options, parse_certificate

    blob = _raw_certificate(**kwargs)
    with pytest.raises(CertificateRefused, match=message):
        parse_certificate(blob)
        certificate_options(blob)


def test_an_unreadable_certificate_in_revoked_keys_refuses_everything(site: Site, sign, make_ca) -> None:
    """sshd cannot read it either, and then treats every key as revoked."""
    site.trust(make_ca("ed25519"))
    blob = _raw_certificate(key_id=b"a\0b")
    site.revoke("ssh-ed25519-cert-v01@openssh.com " + base64.b64encode(blob).decode())
    with pytest.raises(KeyRefused, match="revocation list has an unreadable line"):
        site.check(sign())


def test_a_bad_line_in_the_trusted_file_hides_the_cas_after_it(site: Site, sign, make_ca) -> None:
    """sshd stops reading TrustedUserCAKeys at a line it cannot read."""
    ca = make_ca("ed25519")
    site.trusted.write_text(f"not a key\n{ca.public_line}\n")
    with pytest.raises(KeyRefused, match="not trusted"):
        site.check(sign())
    site.trusted.write_text(f"{ca.public_line}\nnot a key\n")
    site.check(sign())


def test_a_last_nul_in_a_principal_or_key_id_is_allowed_and_not_part_of_it(site: Site) -> None:
    """sshbuf_get_cstring() accepts one NUL at the very end; the C string stops before it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    ca = ed25519.Ed25519PrivateKey.generate()
    site.trusted.write_bytes(
        ca.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n"
    )
    blob = _raw_certificate(key_id=b"laptop\0", principals=[b"alice\0"], ca=ca)
    authorized = site.authorizer.authorize("alice", b"ssh-ed25519-cert-v01@openssh.com", blob, "10.0.0.5")
    assert authorized.identity.certificate is not None
    assert authorized.identity.certificate["cert_key_id"] == "laptop"


# -- loading, as doctor does it -------------------------------------------------------------------


def test_revoked_keys_load_reads_the_list_or_refuses_every_key(tmp_path: Path) -> None:
    """`load` is what doctor calls: the list is read (or found unusable) without a query."""
    path = tmp_path / "revoked"
    path.write_text(authorized_line(ed25519_key(7)) + "serial: 5-9\nid: lost-laptop\n")
    path.chmod(0o600)
    revoked = RevokedKeys(str(path))
    revoked.load()
    assert (revoked.blobs, revoked.serials, revoked.ids) == (
        frozenset({ed25519_key(7).public().blob()}),
        ((5, 9),),
        frozenset({"lost-laptop"}),
    )
    path.write_text("serial: 5-9\nssh-ed25519 AAAA-not-base64\n")
    with pytest.raises(CertificateRefused, match="revocation list has an unreadable line"):
        revoked.load()
    with pytest.raises(CertificateRefused):  # and so does every key, at login
        revoked.check_key(ed25519_key(8).public().blob())


def test_trusted_cas_load_returns_the_keys_and_where_reading_stopped(tmp_path: Path) -> None:
    path = tmp_path / "cas"
    good, after = ed25519_key(7), ed25519_key(8)
    mislabelled = "ssh-rsa " + authorized_line(good).split()[1] + "\n"
    path.write_text(authorized_line(good) + mislabelled + authorized_line(after))
    path.chmod(0o600)
    trusted = TrustedCAs(str(path))
    assert trusted.load() == frozenset({good.public().blob()})  # the mislabelled line stops reading
    assert trusted.unreadable_line == 2
    assert not trusted.contains(after.public().blob())


def test_a_refusal_quotes_the_principals_as_they_are_and_each_writer_escapes_them_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, site: Site, sign, make_ca
) -> None:
    """The principals went into the reason already escaped, and the reason was escaped again as
    a whole for the log and the audit record: a backslash showed as four, U+200B as \\\\u200b."""
    ca = make_ca("ed25519")
    site.trust(ca)
    cert = sign(principals="b\\ob,\u200broot")
    with pytest.raises(KeyRefused) as info:
        site.check(cert)
    assert str(info.value) == "certificate principals b\\ob, \u200broot do not include alice"
    assert sanitise(str(info.value)) == "certificate principals b\\\\ob, \\u200broot do not include alice"

    monkeypatch.chdir(tmp_path)  # `check` on a terminal: the invisible character shown as '?'
    (tmp_path / "cas").write_text(ca.public_line + "\n")
    (tmp_path / "conchcmd.toml").write_text('authorized_keys = "ak/%u"\ntrusted_user_ca_keys = "cas"\n')
    assert main(["check", "--user", "alice", "--key", str(cert.path)]) == 1
    assert capsys.readouterr().out == "login: REFUSED: certificate principals b\\ob, ?root do not include alice\n"
