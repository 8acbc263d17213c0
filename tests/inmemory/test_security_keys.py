"""FIDO2 security keys (sk-ssh-ed25519, sk-ecdsa-sha2-nistp256 and their certificates) logging in
through the whole in-memory SSH stack, signed by the software authenticator as a token signs:
sshd's touch / verification policy from the authorized_keys line, the certificate and
`pubkey_auth_options`, with what the audit record and the auth log say each time."""

from __future__ import annotations

import base64
import os
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from support.keys import authorized_line, ed25519_key
from support.skauth import UP, UV, SoftwareAuthenticator, ssh_keygen_certificate
from support.sshclient import Connection
from support.world import World, make_world
from twisted.conch.ssh import userauth
from twisted.logger import capturedLogs, formatEvent

from conchcmd.core.logtargets import AUTH_LOG_NAMESPACE
from conchcmd.policy.authorized_keys import fingerprint

SUCCESS, FAILURE, PK_OK = userauth.MSG_USERAUTH_SUCCESS, userauth.MSG_USERAUTH_FAILURE, userauth.MSG_USERAUTH_PK_OK
TOKENS = {kind: SoftwareAuthenticator.generate(kind, counter=7) for kind in ("ed25519", "ecdsa")}
SHOWN = {"ed25519": "ED25519-SK", "ecdsa": "ECDSA-SK"}
PRESENCE = "user presence (authenticator touch) requirement not met"
VERIFICATION = "user verification requirement not met"


def sk_world(tmp_path: Path, line: str, **config: Any) -> World:
    world = make_world(tmp_path, **config)
    path = Path(world.config.authorized_keys.replace("%u", "alice"))
    path.write_text(line)
    os.chmod(path, 0o600)
    return world


def attempt(world: World, token: SoftwareAuthenticator) -> tuple[int, dict[str, Any], list[str]]:
    """One signed login as alice: the answer, its auth audit record, the auth log lines."""
    with capturedLogs() as events:
        conn = world.connect("10.0.0.9")
        answer = conn.login(b"alice", token)
    record = world.audit.of("auth")[-1]
    return answer, record, [formatEvent(e) for e in events if e.get("log_namespace") == AUTH_LOG_NAMESPACE]


@pytest.fixture(params=sorted(TOKENS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_a_touched_signature_logs_in_with_flags_and_counter_audited(tmp_path: Path, kind: str) -> None:
    token = TOKENS[kind]
    world = sk_world(tmp_path, token.public_line())
    answer, record, lines = attempt(world, token.with_(flags=UP, counter=41))
    assert answer == SUCCESS
    fp = fingerprint(token.key_blob())
    assert record["ok"] is True and record["key_type"] == token.key_type.decode() and record["fingerprint"] == fp
    assert (record["sk_flags"], record["sk_counter"]) == (UP, 41)
    assert lines == [f"Accepted publickey for alice from 10.0.0.9 port 40000 ssh2: {SHOWN[kind]} {fp}"]


def test_no_touch_is_refused_by_default(tmp_path: Path, kind: str) -> None:
    token = TOKENS[kind]
    world = sk_world(tmp_path, token.public_line())
    answer, record, lines = attempt(world, token.with_(flags=UV, counter=5))  # verified, not touched
    assert answer == FAILURE
    assert record["ok"] is False and (record["sk_flags"], record["sk_counter"]) == (UV, 5)
    assert record["reason"].startswith(PRESENCE + ": no no-touch-required on the authorized_keys line")
    fp = fingerprint(token.key_blob())
    assert lines == [  # sshd 9.2's two lines, word for word (its error line ends in a space)
        f"public key {SHOWN[kind]} {fp} signature for alice from 10.0.0.9 port 40000 rejected: {PRESENCE} ",
        f"Failed publickey for alice from 10.0.0.9 port 40000 ssh2: {SHOWN[kind]} {fp}",
    ]


def test_no_touch_required_on_the_line_waives_the_touch(tmp_path: Path, kind: str) -> None:
    token = TOKENS[kind]
    world = sk_world(tmp_path, token.public_line(options="no-touch-required"))
    answer, record, _ = attempt(world, token.with_(flags=0))
    assert answer == SUCCESS and record["sk_flags"] == 0


def test_server_touch_required_overrides_no_touch_required(tmp_path: Path) -> None:
    token = TOKENS["ed25519"]
    world = sk_world(tmp_path, token.public_line(options="no-touch-required"), pubkey_auth_options=("touch-required",))
    answer, record, _ = attempt(world, token.with_(flags=0))
    assert answer == FAILURE and record["reason"].startswith(PRESENCE + ": pubkey_auth_options has touch-required")
    assert attempt(world, token.with_(flags=UP))[0] == SUCCESS


def test_a_reload_applies_pubkey_auth_options_to_the_next_login(tmp_path: Path) -> None:
    token = TOKENS["ed25519"].with_(flags=UP)
    world = sk_world(tmp_path, token.public_line())
    assert attempt(world, token)[0] == SUCCESS
    world.server.reload(replace(world.config, pubkey_auth_options=("verify-required",)))
    answer, record, _ = attempt(world, token)
    assert answer == FAILURE and record["reason"].startswith(VERIFICATION + ": pubkey_auth_options has verify-required")


@pytest.mark.parametrize(
    ("options", "config", "flags", "answer", "reason"),
    [
        ("verify-required", (), UP, FAILURE, VERIFICATION + ": verify-required on the authorized_keys line"),
        ("verify-required", (), UP | UV, SUCCESS, None),
        ("verify-required", (), UV, FAILURE, PRESENCE),  # sshd checks the touch first
        ("verify-required,no-touch-required", (), UV, SUCCESS, None),
        ("", ("verify-required",), UP, FAILURE, VERIFICATION + ": pubkey_auth_options has verify-required"),
        ("", ("verify-required",), UP | UV, SUCCESS, None),
        ("", ("touch-required", "verify-required"), UP | UV, SUCCESS, None),
    ],
)
def test_verification_policy(
    tmp_path: Path, options: str, config: tuple[str, ...], flags: int, answer: int, reason: str | None
) -> None:
    token = TOKENS["ecdsa"]
    world = sk_world(tmp_path, token.public_line(options=options), pubkey_auth_options=config)
    got, record, _ = attempt(world, token.with_(flags=flags))
    assert got == answer and record["sk_flags"] == flags
    if reason is not None:
        assert record["reason"].startswith(reason)


def test_server_options_leave_ordinary_keys_alone(tmp_path: Path) -> None:
    """As sshd: PubkeyAuthOptions and verify-required concern signatures that carry flags only."""
    world = sk_world(
        tmp_path, authorized_line(ed25519_key(31), "verify-required"), pubkey_auth_options=("verify-required",)
    )
    answer, record, _ = attempt(world, ed25519_key(31))
    assert answer == SUCCESS and "sk_flags" not in record


def test_probe_gets_pk_ok_only_for_an_authorized_sk_key(tmp_path: Path) -> None:
    token = TOKENS["ed25519"]
    world = sk_world(tmp_path, token.public_line())
    conn = world.connect()
    auth = conn.start_auth(b"alice")
    d = auth.probe(token)
    conn.flush()
    assert d.result[0] == PK_OK
    stranger = SoftwareAuthenticator.generate("ed25519")
    d = auth.probe(stranger)
    conn.flush()
    assert d.result[0] == FAILURE


def test_an_sk_key_enrolled_for_another_application_is_another_key(tmp_path: Path) -> None:
    token = TOKENS["ed25519"]
    world = sk_world(tmp_path, token.public_line())
    answer, record, _ = attempt(world, token.with_(application=b"ssh:other"))
    assert answer == FAILURE and record["reason"] == "key not in authorized_keys"


def test_server_sig_algs_lists_the_sk_algorithms(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    conn: Connection = world.connect()
    listed = conn.client.peerExtensions[b"server-sig-algs"].split(b",")
    assert b"sk-ssh-ed25519@openssh.com" in listed and b"sk-ecdsa-sha2-nistp256@openssh.com" in listed
    assert not any(name.startswith(b"webauthn") for name in listed)


# -- certificates made by ssh-keygen -s with an ordinary CA key ---------------------------------------------


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30)
    return path


def ca_fp(ca: Path) -> str:
    return fingerprint(base64.b64decode(Path(f"{ca}.pub").read_text().split()[1]))


def cert_world(tmp_path: Path, ca: Path, *, line: str = "", via_line: bool = False, **config: Any) -> World:
    """alice's certificates are trusted through `trusted_user_ca_keys`, or through a
    cert-authority line (with `line`'s options) when `via_line`."""
    ca_line = Path(f"{ca}.pub").read_text()
    if via_line:
        return sk_world(tmp_path, ",".join(filter(None, ["cert-authority", line])) + " " + ca_line, **config)
    trusted = tmp_path / "trusted_cas"
    trusted.write_text(ca_line)
    return sk_world(tmp_path, "", trusted_user_ca_keys=str(trusted), **config)


def certified(token: SoftwareAuthenticator, ca: Path, tmp_path: Path, *options: str) -> SoftwareAuthenticator:
    blob = ssh_keygen_certificate(token, ca, tmp_path / "certs", principals=["alice"], serial=77, options=options)
    return token.with_certificate(blob)


def test_certificate_of_an_sk_key_logs_in(tmp_path: Path, ca: Path, kind: str) -> None:
    token = TOKENS[kind]
    world = cert_world(tmp_path, ca)
    answer, record, lines = attempt(world, certified(token, ca, tmp_path).with_(counter=9))
    assert answer == SUCCESS
    assert record["key_type"] == token.key_type.decode().replace("@openssh.com", "-cert-v01@openssh.com")
    assert record["fingerprint"] == fingerprint(token.key_blob()) and record["cert_serial"] == 77
    assert (record["sk_flags"], record["sk_counter"]) == (UP, 9)
    cert_info = f"{SHOWN[kind]}-CERT {fingerprint(token.key_blob())} ID sk-test (serial 77) CA ED25519 {ca_fp(ca)}"
    assert lines == [f"Accepted publickey for alice from 10.0.0.9 port 40000 ssh2: {cert_info}"]


def test_certificate_refusal_is_logged_as_sshd_logs_it(tmp_path: Path, ca: Path) -> None:
    """sshd 9.2's lines, seen from the real sshd: the error names the certified key's type and
    fingerprint only, the Failed line the whole certificate."""
    token = TOKENS["ed25519"]
    world = cert_world(tmp_path, ca)
    answer, record, lines = attempt(world, certified(token, ca, tmp_path).with_(flags=0))
    assert answer == FAILURE and record["cert_key_id"] == "sk-test" and record["sk_flags"] == 0
    fp = fingerprint(token.key_blob())
    assert lines == [
        f"public key ED25519-SK-CERT {fp} signature for alice from 10.0.0.9 port 40000 rejected: {PRESENCE} ",
        "Failed publickey for alice from 10.0.0.9 port 40000 ssh2: "
        f"ED25519-SK-CERT {fp} ID sk-test (serial 77) CA ED25519 {ca_fp(ca)}",
    ]


@pytest.mark.parametrize(
    ("cert_options", "line", "via_line", "flags", "answer"),
    [
        ((), "", False, 0, FAILURE),
        (("no-touch-required",), "", False, 0, SUCCESS),
        (("verify-required",), "", False, UP, FAILURE),
        (("verify-required",), "", False, UP | UV, SUCCESS),
        # through a cert-authority line sshd merges: no-touch-required must be in both
        (("no-touch-required",), "", True, 0, FAILURE),
        ((), "no-touch-required", True, 0, FAILURE),
        (("no-touch-required",), "no-touch-required", True, 0, SUCCESS),
        # and verify-required in either
        ((), "verify-required", True, UP, FAILURE),
        ((), "verify-required", True, UP | UV, SUCCESS),
    ],
)
def test_certificate_policy(
    tmp_path: Path, ca: Path, cert_options: tuple[str, ...], line: str, via_line: bool, flags: int, answer: int
) -> None:
    world = cert_world(tmp_path, ca, line=line, via_line=via_line)
    got, record, _ = attempt(world, certified(TOKENS["ed25519"], ca, tmp_path, *cert_options).with_(flags=flags))
    assert got == answer, record
    assert record["cert_serial"] == 77 and record["sk_flags"] == flags


def test_server_touch_required_overrides_the_certificates_no_touch_required(tmp_path: Path, ca: Path) -> None:
    world = cert_world(tmp_path, ca, pubkey_auth_options=("touch-required",))
    got, record, _ = attempt(world, certified(TOKENS["ecdsa"], ca, tmp_path, "no-touch-required").with_(flags=0))
    assert got == FAILURE and record["reason"].startswith(PRESENCE + ": pubkey_auth_options has touch-required")
