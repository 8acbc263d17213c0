"""Issue 16: one key-type policy. Login, `conchcmd users`, `conchcmd doctor` and `conchcmd adduser`
say the same about every key type: FIDO2 sk keys (sk-ssh-ed25519, sk-ecdsa-sha2-nistp256) are
accepted like the others, ssh-dss and RSA under 2048 bits are refused, and a CA key of a refused
type on a cert-authority line is reported as refused too."""

from __future__ import annotations

import base64
import io
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from support.oddblobs import (
    ENCODINGS,
    OddEncoding,
    fields,
    ns,
    private_key,
    public_blob,
    trailing,
    type_nul,
    zero_padded,
)
from support.skauth import SoftwareAuthenticator, ssh_keygen_certificate
from twisted.conch.ssh.common import getNS
from twisted.internet.task import Clock

from conchcmd.core.config import load_config
from conchcmd.edge.cli import main
from conchcmd.keys.keyparse import KeyParseError, public_key_from_blob
from conchcmd.policy.auth import SIGNATURE_ALGORITHMS, KeyAuthorizer, KeyRefused
from conchcmd.policy.authorized_keys import parse_authorized_keys

#: Key kind -> whether login accepts it.
KINDS = {
    "ed25519": True,
    "ecdsa256": True,
    "rsa": True,
    "rsa1024": False,
    "dsa": False,
    "sk-ed25519": True,
    "sk-ecdsa": True,
}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keys" / "authorized_keys").mkdir(parents=True, mode=0o700)
    return tmp_path


def public_line(kind: str, ssh_key: Any, workdir: Path) -> str:
    """The .pub line of a key of this kind: ssh-keygen's, or what `ssh-keygen -t ed25519-sk` writes."""
    if kind.startswith("sk-"):
        token = SoftwareAuthenticator.generate(kind.removeprefix("sk-"))
        return token.public_line(comment=f"{kind} on a token").strip()
    return str(ssh_key(kind).public_line)


def ssh_keygen_fingerprint(pub: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(pub)], capture_output=True, text=True, check=True, timeout=30)
    return out.stdout.split()[1]


def doctor(workdir: Path) -> str:
    out = io.StringIO()
    main(["doctor"], out=out)
    return out.getvalue()


def login_refusal(user: str, line: str, workdir: Path) -> str | None:
    """What login's own authorizer says about this key (signatures aside): None if it may log in."""
    blob = base64.b64decode(line.split()[1])
    algorithm = getNS(blob)[0]
    algorithm = SIGNATURE_ALGORITHMS.get(algorithm, (algorithm,))[0]
    authorizer = KeyAuthorizer.from_config(load_config(None, cwd=workdir), Clock())
    try:
        authorizer.authorize(user, algorithm, blob, "127.0.0.1")
    except KeyRefused as e:
        return str(e)
    return None


@pytest.mark.parametrize("kind", list(KINDS))
def test_login_users_doctor_and_adduser_agree_on_a_key_type(
    workdir: Path, ssh_key: Any, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    accepted = KINDS[kind]
    line = public_line(kind, ssh_key, workdir)
    pub = workdir / "key.pub"
    pub.write_text(line + "\n")
    fingerprint = ssh_keygen_fingerprint(pub)

    assert main(["adduser", "alice", str(pub)]) == 0
    out = capsys.readouterr().out
    assert f"alice: added {line.split()[0]} key {fingerprint} to " in out
    assert ("warning: login refuses this key" in out) is not accepted, out
    assert (workdir / "keys" / "authorized_keys" / "alice").read_text() == line + "\n"

    refusal = login_refusal("alice", line, workdir)
    assert (refusal is None) is accepted, refusal

    assert main(["users", "--json"]) == 0
    (user,) = json.loads(capsys.readouterr().out)["users"]
    (key,) = user["keys"]
    assert (key["type"], key["fingerprint"], key["usable"]) == (line.split()[0], fingerprint, accepted)
    assert bool(key["refused"]) is not accepted

    report = doctor(workdir)
    assert f"user alice: {int(accepted)} usable key line(s)" in report, report
    refused_line = f"problem  {workdir}/keys/authorized_keys/alice:1: key {fingerprint} is refused at login: "
    assert (refused_line in report) is not accepted, report
    if not accepted:
        assert f"conchcmd deluser alice {fingerprint}`" in report


CA_KINDS = [("ed25519", True), ("ecdsa256", True), ("rsa1024", True), ("dsa", False), ("sk-ed25519", False)]


@pytest.mark.parametrize(("kind", "usable"), [*CA_KINDS, ("sk-ecdsa", False)])
def test_a_cert_authority_line_is_judged_by_its_key_type(
    workdir: Path, ssh_key: Any, capsys: pytest.CaptureFixture[str], kind: str, usable: bool
) -> None:
    """A DSA CA can sign no certificate login accepts (ssh-dss signatures are refused), nor can a CA
    on a security key (README, Differences from sshd: sk-ca): such a line is reported as refused.
    The RSA size rule is login's for user keys only, so a small RSA CA's line stays usable in the
    report, as it is at login."""
    path = workdir / "keys" / "authorized_keys" / "alice"
    path.write_text(f"cert-authority {public_line(kind, ssh_key, workdir)}\n")
    path.chmod(0o600)
    (key,) = json.loads(main(["users", "--json"]) == 0 and capsys.readouterr().out)["users"][0]["keys"]
    assert (key["cert_authority"], key["usable"]) == (True, usable), key
    if not usable:
        assert key["refused"].endswith(" CA keys are not accepted (login refuses the certificates they sign)")
    assert f"user alice: {int(usable)} usable key line(s)" in doctor(workdir)


@pytest.mark.parametrize(("kind", "usable"), CA_KINDS)
def test_doctor_names_a_trusted_ca_whose_certificates_login_refuses(
    workdir: Path, ssh_key: Any, kind: str, usable: bool
) -> None:
    line = public_line(kind, ssh_key, workdir)
    (workdir / "cas").write_text(line + "\n")
    (workdir / "conchcmd.toml").write_text('trusted_user_ca_keys = "cas"\n')
    pub = workdir / "ca.pub"
    pub.write_text(line + "\n")
    report = doctor(workdir)
    assert "trusted_user_ca_keys: 1 CA key(s)" in report
    problem = (
        f"problem  trusted_user_ca_keys: CA {ssh_keygen_fingerprint(pub)}: {line.split()[0]} CA keys are not accepted"
    )
    assert (problem in report) is not usable, report


def test_doctor_reports_revoked_and_expired_lines_as_login_refuses_them(
    workdir: Path, ssh_key: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    revoked, expired, good = ssh_key("ed25519"), ssh_key("ecdsa256"), ssh_key("ed25519-other")
    path = workdir / "keys" / "authorized_keys" / "alice"
    path.write_text(f'{revoked.public_line}\nexpiry-time="20200101" {expired.public_line}\n{good.public_line}\n')
    path.chmod(0o600)
    (workdir / "revoked").write_text(revoked.public_line + "\n")
    (workdir / "conchcmd.toml").write_text('revoked_keys = "revoked"\n')
    report = doctor(workdir)
    assert f"alice:1: key {revoked.fingerprint} is refused at login: " in report
    assert f"alice:2: key {expired.fingerprint} is refused at login: key expired (expiry-time)" in report
    assert "user alice: 1 usable key line(s)" in report
    assert f"alice:3: key {good.fingerprint}" not in report


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa"])
def test_an_sk_key_login_cannot_read_is_refused_by_adduser_users_and_doctor(
    workdir: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """Conch reads sk blobs loosely (a byte after the application goes unnoticed); login reads them
    as sshd does and refuses this one, so adduser, users and doctor must not take it either."""
    good = SoftwareAuthenticator.generate(kind)
    bad_token = SoftwareAuthenticator.generate(kind)
    bad = bad_token.with_certificate(bad_token.key_blob() + b"\0").public_line().strip()
    pub = workdir / "bad.pub"
    pub.write_text(bad + "\n")
    assert main(["adduser", "alice", str(pub)]) == 2
    assert capsys.readouterr().err == f"conchcmd: {pub} is not an OpenSSH public key (trailing data after the key)\n"
    path = workdir / "keys" / "authorized_keys" / "alice"
    assert not path.exists()

    path.write_text(bad + "\n" + good.public_line())
    path.chmod(0o600)
    assert login_refusal("alice", bad, workdir) == "malformed public key (trailing data after the key)"
    assert login_refusal("alice", good.public_line(), workdir) is None
    assert main(["users", "--json"]) == 0
    (user,) = json.loads(capsys.readouterr().out)["users"]
    assert [(k["line"], k["usable"]) for k in user["keys"]] == [(2, True)]
    assert [r["line"] for r in user["refused_lines"]] == [1]
    assert user["refused_lines"][0]["reason"].startswith("bad key (")
    report = doctor(workdir)
    assert f"problem  {path}:1: line refused: bad key (" in report
    assert "user alice: 1 usable key line(s)" in report


@pytest.mark.parametrize(
    "server", [(), ("touch-required",), ("verify-required",), ("touch-required", "verify-required")]
)
def test_users_shows_what_each_sk_login_must_show_as_login_decides_it(
    workdir: Path, capsys: pytest.CaptureFixture[str], server: tuple[str, ...]
) -> None:
    """`users` says, per sk line, whether each login needs a touch and a PIN: the requirements
    login's authorizer derives from the line and `pubkey_auth_options`."""
    options = ["", "no-touch-required", "verify-required", "no-touch-required,verify-required", "touch-required"]
    tokens = [SoftwareAuthenticator.generate("ecdsa" if i % 2 else "ed25519", b"ssh:ops%d" % i) for i in range(5)]
    path = workdir / "keys" / "authorized_keys" / "alice"
    path.write_text("".join(t.public_line(options=o) for t, o in zip(tokens, options, strict=True)))
    path.chmod(0o600)
    (workdir / "conchcmd.toml").write_text(f"pubkey_auth_options = {json.dumps(list(server))}\n")
    authorizer = KeyAuthorizer.from_config(load_config(None, cwd=workdir), Clock())
    assert main(["users", "--json"]) == 0
    keys = json.loads(capsys.readouterr().out)["users"][0]["keys"]
    for token, key in zip(tokens, keys, strict=True):
        needs = authorizer.authorize("alice", token.key_type, token.key_blob(), "127.0.0.1").requirements
        assert key["security_key"] == {
            "application": token.application.decode(),
            "touch_required": needs.touch,
            "verify_required": needs.verify,
        }
    assert main(["users"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("    line ")]
    for line, key in zip(lines, keys, strict=True):
        sk = key["security_key"]
        needs = " and ".join(
            n for n, on in (("touch", sk["touch_required"]), ("user verification", sk["verify_required"])) if on
        )
        assert line.endswith(f" [security key ({sk['application']}): {needs or 'no touch'} required]"), line


def test_users_shows_no_security_key_for_other_lines(
    workdir: Path, ssh_key: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = SoftwareAuthenticator.generate("ed25519")
    path = workdir / "keys" / "authorized_keys" / "alice"
    path.write_text(f"verify-required {ssh_key('ed25519').public_line}\ncert-authority {ca.public_line()}")
    path.chmod(0o600)
    assert main(["users", "--json"]) == 0
    keys = json.loads(capsys.readouterr().out)["users"][0]["keys"]
    assert [k["security_key"] for k in keys] == [None, None]


@pytest.mark.parametrize(
    ("line_options", "server", "needs"),
    [
        ("", [], "touch"),
        ("verify-required", [], "touch and user verification"),
        ("no-touch-required", [], "no touch"),
        ("no-touch-required", ["touch-required"], "touch"),
        ("no-touch-required", ["verify-required"], "user verification"),
    ],
)
def test_check_says_what_an_sk_login_must_show(
    workdir: Path, capsys: pytest.CaptureFixture[str], line_options: str, server: list[str], needs: str
) -> None:
    """`check` cannot see a signature, so it says what the signature will have to show."""
    token = SoftwareAuthenticator.generate("ed25519")
    path = workdir / "keys" / "authorized_keys" / "alice"
    path.write_text(token.public_line(options=line_options))
    path.chmod(0o600)
    (workdir / "conchcmd.toml").write_text(f"pubkey_auth_options = {json.dumps(server)}\n")
    pub = workdir / "sk.pub"
    pub.write_text(token.public_line(comment="yubikey"))
    assert main(["check", "--user", "alice", "--key", str(pub)]) == 0
    assert capsys.readouterr().out.endswith(f"; pty allowed; security key: {needs} required)\n")


def test_check_says_what_an_sk_certificate_login_must_show(
    workdir: Path, ssh_key: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    token = SoftwareAuthenticator.generate("ecdsa")
    blob = ssh_keygen_certificate(
        token, ssh_key("ed25519").private, workdir / "certs", principals=["alice"], options=("no-touch-required",)
    )
    (workdir / "cas").write_text(ssh_key("ed25519").public_line + "\n")
    (workdir / "conchcmd.toml").write_text('trusted_user_ca_keys = "cas"\n')
    pub = workdir / "sk-cert.pub"
    pub.write_text(f"{token.with_certificate(blob).sshType().decode()} {base64.b64encode(blob).decode()}\n")
    assert main(["check", "--user", "alice", "--key", str(pub)]) == 0
    assert capsys.readouterr().out.endswith("; security key: no touch required)\n")


# -- key blobs written otherwise than ssh-keygen writes them (support/oddblobs.py) -----------------

ODD_CASES = [(encoding, kind) for encoding in ENCODINGS for kind in encoding.kinds]


@pytest.mark.parametrize(("encoding", "kind"), ODD_CASES, ids=[f"{e.name}-{k}" for e, k in ODD_CASES])
def test_a_key_blob_is_read_as_sshd_reads_it(encoding: OddEncoding, kind: str) -> None:
    """sshd's verdict on each encoding (checked against the real sshd by the differential test);
    a key read is the key ssh-keygen writes, a refusal says why in words."""
    canonical = public_blob(private_key(kind))
    odd = encoding.rewrite(canonical)
    if encoding.sshd_accepts:
        assert public_key_from_blob(odd).blob() == canonical
    else:
        with pytest.raises(KeyParseError) as refused:
            public_key_from_blob(odd)
        assert "Error" not in str(refused.value) and str(refused.value)


def test_login_users_and_doctor_skip_a_line_sshd_refuses_and_keep_the_others(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every refused encoding in one file: each line is reported with its reason, the good line
    (written with zero-padded numbers, as sshd allows) logs in with the key as ssh-keygen writes
    it, under the fingerprint `ssh-keygen -l` gives for its line."""
    refused = [(e, k) for e, k in ODD_CASES if not e.sshd_accepts]
    types = {"ed25519": "ssh-ed25519", "p256": "ecdsa-sha2-nistp256", "p384": "ecdsa-sha2-nistp384", "rsa": "ssh-rsa"}
    lines = [f"{types[k]} {base64.b64encode(e.rewrite(public_blob(private_key(k)))).decode()}" for e, k in refused]
    good = rsa.generate_private_key(65537, 2048)
    padded = f"ssh-rsa {base64.b64encode(zero_padded(public_blob(good))).decode()} padded"
    path = workdir / "keys" / "authorized_keys" / "alice"
    path.write_text("\n".join([*lines, padded]) + "\n")
    path.chmod(0o600)
    (workdir / "padded.pub").write_text(padded + "\n")
    expected = ssh_keygen_fingerprint(workdir / "padded.pub")

    for line in lines:  # the client sending the same bytes
        assert (login_refusal("alice", line, workdir) or "").startswith("malformed public key ("), line
    canonical = f"ssh-rsa {base64.b64encode(public_blob(good)).decode()}"
    assert login_refusal("alice", canonical, workdir) is None
    assert login_refusal("alice", padded, workdir) is None
    authorizer = KeyAuthorizer.from_config(load_config(None, cwd=workdir), Clock())
    granted = authorizer.authorize("alice", b"rsa-sha2-256", public_blob(good), "127.0.0.1")
    assert granted.identity.fingerprint == expected

    assert main(["users", "--json"]) == 0
    (user,) = json.loads(capsys.readouterr().out)["users"]
    assert [(k["line"], k["usable"], k["fingerprint"]) for k in user["keys"]] == [(len(lines) + 1, True, expected)]
    reasons = {r["line"]: r["reason"] for r in user["refused_lines"]}
    assert sorted(reasons) == list(range(1, len(lines) + 1))
    for number, (encoding, _) in enumerate(refused, 1):
        assert reasons[number].startswith("bad key ("), (encoding.name, reasons[number])
    assert reasons[1] == "bad key (trailing data after the key)"
    shown = "\n".join(reasons.values())
    assert "curve name nistp384 does not match key type ecdsa-sha2-nistp256" in shown
    assert "EC point not in uncompressed form" in shown
    report = doctor(workdir)
    for number in reasons:
        assert f"problem  {path}:{number}: line refused: {reasons[number]}" in report
    assert "user alice: 1 usable key line(s)" in report


def test_a_name_in_a_refused_blob_cannot_forge_a_log_line() -> None:
    """The reason quotes the blob's curve name: escaped and cut short, one line in the log."""
    point = fields(public_blob(private_key("p256")))[2]
    blob = ns(b"ecdsa-sha2-nistp256") + ns(b"nistp256\nconchcmd: Accepted publickey for root" + b"x" * 200) + ns(point)
    line = f"ecdsa-sha2-nistp256 {base64.b64encode(blob).decode()}"
    parsed = parse_authorized_keys(line + "\n", "f")
    assert parsed.entries == () and len(parsed.problems) == 1
    (problem,) = parsed.problems
    assert "\n" not in problem and "\\x0aconchcmd" in problem and len(problem) < 200, problem


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa"])
def test_an_sk_key_type_ending_in_nul_is_read_as_sshd_reads_it(kind: str) -> None:
    token = SoftwareAuthenticator.generate(kind)
    assert public_key_from_blob(type_nul(token.key_blob())).blob() == token.key_blob()
    with pytest.raises(KeyParseError, match="trailing data"):
        public_key_from_blob(trailing(token.key_blob()))
