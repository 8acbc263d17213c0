"""Access policy against the real OpenSSH client: authorized_keys options, certificates made by
`ssh-keygen -s` and offered with CertificateFile, per-user commands, and password login (askpass)."""

from __future__ import annotations

import itertools
import os
import pty
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("ssh") is None, reason="the OpenSSH client is not installed"),
]

PASSWORD = "e2e pass, with spaces"
_sources = itertools.count(2)


def own_source() -> str:
    """A loopback source address of this module's own (127.77.x.y), for source-address checks."""
    n = next(_sources)
    return f"127.77.{n // 250 + 1}.{n % 250 + 2}"


PASSWORD_OPTIONS = [
    "-o",
    "BatchMode=no",
    "-o",
    "PreferredAuthentications=password",
    "-o",
    "PubkeyAuthentication=no",
    "-o",
    "NumberOfPasswordPrompts=1",
]


@dataclass(frozen=True)
class Authority:
    directory: Path
    private: Path
    fingerprint: str


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    directory = tmp_path_factory.mktemp("e2e-ca")
    private = directory / "ca"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "e2e ca", "-f", str(private)], check=True)
    out = subprocess.run(["ssh-keygen", "-lf", f"{private}.pub"], check=True, capture_output=True, text=True).stdout
    (directory / "revoked").write_text("serial: 666\nid: revoked-in-e2e\n")
    return Authority(directory, private, out.split()[1])


@pytest.fixture(scope="module")
def policy(make_server, ca: Authority, client_keys):
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    server = make_server(
        settings={
            "trusted_user_ca_keys": str(ca.private) + ".pub",
            "revoked_keys": str(ca.directory / "revoked"),
            "users": {
                "carol": {"commands": ["lastlog"], "password_bcrypt": hashed},
                "dana": {"commands": ["lastlog"]},
            },
        },
    )
    k = client_keys
    server.authorize("near", f'from="127.0.0.0/8,!10.0.0.0/8" {k.pub_line(k.ed25519)}')
    server.authorize("wild", f'from="127.77.*.*,!127.77.0.13" {k.pub_line(k.ed25519)}')
    server.authorize("far", f'from="10.0.0.0/8,!127.0.0.0/8" {k.pub_line(k.ed25519)}')
    server.authorize("forced", f'command="lastlog -n 2" {k.pub_line(k.ed25519)}')
    server.authorize("nopty", f"no-pty {k.pub_line(k.ed25519)}")
    server.authorize("expired", f'expiry-time="20200101" {k.pub_line(k.ed25519)}')
    server.authorize("later", f'expiry-time="20991231235959Z" {k.pub_line(k.ed25519)}')
    server.authorize("dana", k.pub_line(k.ed25519))
    server.authorize("carol", k.pub_line(k.ecdsa))
    return server


_certs = itertools.count(1)


def sign(ca: Authority, key: Path, tmp_path: Path, *options: str, principals: str = "alice", validity: str = "-5m:+1h"):
    """A certificate for `key` (its .pub), written to tmp_path; returns (cert path, key id, serial)."""
    n = next(_certs)
    pub = tmp_path / f"cert{n}.pub"
    shutil.copy(key.with_name(key.name + ".pub"), pub)
    key_id = f"e2e-cert-{n}"
    argv = ["ssh-keygen", "-q", "-s", str(ca.private), "-I", key_id, "-z", str(n), "-n", principals, "-V", validity]
    for option in options:
        argv += ["-O", option]
    subprocess.run([*argv, str(pub)], check=True, capture_output=True)
    return tmp_path / f"cert{n}-cert.pub", key_id, n


def cert_options(cert: Path) -> list[str]:
    return ["-o", f"CertificateFile={cert}"]


def auths(server, mark: int, **match):
    return [e for e in server.audit_since(mark, "auth") if all(e.get(k) == v for k, v in match.items())]


def denied(r: subprocess.CompletedProcess[bytes]) -> bool:
    return r.returncode == 255 and b"Permission denied" in r.stderr


# -- authorized_keys options ---------------------------------------------------------------------------------


def test_from_allows_the_loopback_source(policy, client_keys) -> None:
    source = own_source()
    mark = policy.audit_mark()
    r = policy.ssh("exit 4", user="near", source=source)
    assert (r.returncode, r.stderr) == (4, b"")
    [auth] = auths(policy, mark, ok=True)
    assert auth["user"] == "near" and auth["peer"].startswith(source + ":")


def test_from_wildcards_and_negation_against_the_bound_source(policy) -> None:
    assert policy.ssh("exit 0", user="wild", source=own_source()).returncode == 0
    assert denied(policy.ssh("exit 0", user="wild", source="127.77.0.13"))
    assert denied(policy.ssh("exit 0", user="wild"))  # 127.1.x.y: outside the wildcard


def test_from_refuses_a_source_outside_it(policy) -> None:
    mark = policy.audit_mark()
    r = policy.ssh("exit 0", user="far")
    assert denied(r)
    record = policy.wait_audit(lambda e: e["event"] == "auth" and e.get("user") == "far", mark, what="refused auth")
    assert record["ok"] is False and record["reason"].startswith("from= does not allow 127.")


def test_forced_command_runs_and_the_audit_keeps_the_original(policy, data) -> None:
    mark = policy.audit_mark()
    r = policy.ssh("comphash /etc/passwd", user="forced")
    assert (r.returncode, r.stderr) == (0, b"")
    assert r.stdout == policy.tail(data.syslog, 2)
    record = policy.wait_audit(lambda e: e["event"] == "command" and e["user"] == "forced", mark, what="command")
    assert record["argv"] == ["lastlog", "-n", "2"] and record["original_command"] == "comphash /etc/passwd"


def test_forced_command_runs_for_an_interactive_login(policy, data) -> None:
    mark = policy.audit_mark()
    r = policy.ssh(user="forced", input=b"help\n")
    assert (r.returncode, r.stdout) == (0, policy.tail(data.syslog, 2))
    record = policy.wait_audit(lambda e: e["event"] == "command" and e["user"] == "forced", mark, what="command")
    assert record["original_command"] == ""


def ssh_on_a_tty(server, *, user: str, input: bytes, options: list[str], key: Path | None = None):
    """ssh with a pseudo-terminal as stdin and RequestTTY=auto, as a person at a terminal runs it.

    With a tty it asks for a pty; a refusal is then a warning (-t/-tt make it fatal, see below).
    """
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "DISPLAY", "SSH_ASKPASS")}
    try:
        proc = subprocess.Popen(
            server.ssh_argv(user=user, key=key, options=["-o", "RequestTTY=auto", *options], log_level="ERROR"),
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        os.write(master, input)
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    finally:
        os.close(slave)
        os.close(master)
    return proc.returncode, out, err


def test_no_pty_key_at_a_terminal_warns_and_gets_the_plain_shell(policy, data) -> None:
    mark = policy.log_mark()
    status, out, err = ssh_on_a_tty(policy, user="nopty", input=b"lastlog -n 1\nexit 5\n", options=[])
    assert b"PTY allocation request failed" in err
    assert status == 5
    assert out == policy.tail(data.syslog, 1)  # no banner, no prompt, no CRLF: the plain shell ran it
    policy.wait_log(r"Refused pty for nopty@127\.[0-9.:]+: not permitted by authorized_keys", since=mark)


def test_no_pty_key_with_ssh_tt_is_refused_a_pty(policy) -> None:
    """OpenSSH 9.2 makes a refused pty fatal when one is forced (-tt): it reports and exits 255.
    The server refuses only the pty; the exec sent with it still runs (and is audited)."""
    mark = policy.audit_mark()
    r = policy.ssh("lastlog -n 1", user="nopty", options=["-tt"])
    assert b"PTY allocation request failed" in r.stderr
    assert r.returncode == 255
    record = policy.wait_audit(lambda e: e["event"] == "command" and e["user"] == "nopty", mark, what="command")
    assert record["argv"] == ["lastlog", "-n", "1"]


def test_pty_key_with_ssh_tt_gets_a_pty(policy) -> None:
    r = policy.ssh("lastlog -n 1", user="near", options=["-tt"])
    assert r.returncode == 0 and r.stdout.endswith(b"\r\n")  # a pty: CRLF line ends


def test_expiry_time_in_the_past_is_refused(policy) -> None:
    mark = policy.audit_mark()
    assert denied(policy.ssh("exit 0", user="expired"))
    record = policy.wait_audit(lambda e: e["event"] == "auth" and e.get("user") == "expired", mark, what="auth")
    assert record["ok"] is False and "expired" in record["reason"]
    assert policy.ssh("exit 0", user="later").returncode == 0


def test_command_not_permitted_for_the_user(policy) -> None:
    r = policy.ssh("comphash /etc/hosts", user="dana")
    assert (r.returncode, r.stdout, r.stderr) == (126, b"", b"comphash: not permitted\n")
    r = policy.ssh(user="dana", input=b"comphash /etc/hosts\nhelp\n")
    assert r.returncode == 0 and r.stderr == b"comphash: not permitted\n"
    assert b"lastlog" in r.stdout and b"comphash" not in r.stdout


# -- certificates ---------------------------------------------------------------------------------------


def test_certificate_login(policy, ca: Authority, client_keys, tmp_path: Path) -> None:
    cert, key_id, serial = sign(ca, client_keys.spare, tmp_path)
    mark = policy.audit_mark()
    r = policy.ssh("exit 6", key=client_keys.spare, options=cert_options(cert))
    assert (r.returncode, r.stderr) == (6, b"")
    [auth] = auths(policy, mark, ok=True)
    assert auth["user"] == "alice" and auth["key_type"] == "ssh-ed25519-cert-v01@openssh.com"
    assert (auth["cert_key_id"], auth["cert_serial"], auth["ca_fingerprint"]) == (key_id, serial, ca.fingerprint)
    assert auth["fingerprint"] == client_keys.fingerprint(client_keys.spare)


def test_rsa_certificate_login_uses_sha2(policy, ca: Authority, client_keys, tmp_path: Path) -> None:
    cert, key_id, _ = sign(ca, client_keys.rsa, tmp_path, principals="certrsa")
    mark = policy.audit_mark()
    r = policy.ssh("exit 0", user="certrsa", key=client_keys.rsa, options=cert_options(cert))
    assert (r.returncode, r.stderr) == (0, b"")
    [auth] = auths(policy, mark, ok=True)
    assert auth["key_type"] in ("rsa-sha2-512-cert-v01@openssh.com", "rsa-sha2-256-cert-v01@openssh.com")
    assert auth["cert_key_id"] == key_id


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"validity": "-2h:-1h"}, "certificate has expired"),
        ({"validity": "+1h:+2h"}, "certificate is not yet valid"),
        ({"principals": "bob,root"}, "do not include alice"),
    ],
    ids=["expired", "not-yet-valid", "wrong-principal"],
)
def test_refused_certificates(policy, ca: Authority, client_keys, tmp_path: Path, kwargs, reason) -> None:
    cert, key_id, _ = sign(ca, client_keys.spare, tmp_path, **kwargs)
    mark = policy.audit_mark()
    assert denied(policy.ssh("exit 0", key=client_keys.spare, options=cert_options(cert)))
    record = policy.wait_audit(
        lambda e: e["event"] == "auth" and e.get("cert_key_id") == key_id, mark, what="refused certificate"
    )
    assert record["ok"] is False and reason in record["reason"]
    assert auths(policy, mark, ok=True) == []


def test_revoked_certificate(policy, ca: Authority, client_keys, tmp_path: Path) -> None:
    pub = tmp_path / "revoked-key.pub"
    shutil.copy(client_keys.pub(client_keys.spare), pub)
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(ca.private), "-I", "revoked-in-e2e", "-n", "alice", "-V", "-5m:+1h", str(pub)],
        check=True,
    )
    assert denied(policy.ssh("exit 0", key=client_keys.spare, options=cert_options(tmp_path / "revoked-key-cert.pub")))


def test_certificate_force_command(policy, ca: Authority, client_keys, tmp_path: Path, data) -> None:
    cert, _, _ = sign(ca, client_keys.spare, tmp_path, "force-command=lastlog -n 1")
    mark = policy.audit_mark()
    r = policy.ssh("comphash /etc/shadow", key=client_keys.spare, options=cert_options(cert))
    assert (r.returncode, r.stdout, r.stderr) == (0, policy.tail(data.syslog, 1), b"")
    record = policy.wait_audit(lambda e: e["event"] == "command", mark, what="command")
    assert record["argv"] == ["lastlog", "-n", "1"] and record["original_command"] == "comphash /etc/shadow"


def test_certificate_source_address_matches_the_bound_source(
    policy, ca: Authority, client_keys, tmp_path: Path
) -> None:
    source = own_source()
    cert, _, _ = sign(ca, client_keys.spare, tmp_path, f"source-address={source}/32")
    r = policy.ssh("exit 2", key=client_keys.spare, options=cert_options(cert), source=source)
    assert (r.returncode, r.stderr) == (2, b"")
    other = own_source()
    mark = policy.audit_mark()
    assert denied(policy.ssh("exit 0", key=client_keys.spare, options=cert_options(cert), source=other))
    record = policy.wait_audit(lambda e: e["event"] == "auth", mark, what="refused certificate")
    assert record["reason"] == f"certificate source-address does not allow {other}"


def test_certificate_source_address_elsewhere_is_refused(policy, ca: Authority, client_keys, tmp_path: Path) -> None:
    cert, _, _ = sign(ca, client_keys.spare, tmp_path, "source-address=10.0.0.0/8,192.0.2.1")
    assert denied(policy.ssh("exit 0", key=client_keys.spare, options=cert_options(cert)))


def test_certificate_without_permit_pty(policy, ca: Authority, client_keys, tmp_path: Path, data) -> None:
    cert, _, _ = sign(ca, client_keys.spare, tmp_path, "no-pty")
    status, out, err = ssh_on_a_tty(
        policy, user="alice", key=client_keys.spare, input=b"lastlog -n 1\nexit 3\n", options=cert_options(cert)
    )
    assert b"PTY allocation request failed" in err
    assert (status, out) == (3, policy.tail(data.syslog, 1))


# -- passwords ------------------------------------------------------------------------------------------


def test_password_login(policy, askpass, data) -> None:
    mark = policy.audit_mark()
    r = policy.ssh("lastlog -n 1", user="carol", options=PASSWORD_OPTIONS, env=askpass(PASSWORD))
    assert (r.returncode, r.stdout, r.stderr) == (0, policy.tail(data.syslog, 1), b"")
    [auth] = auths(policy, mark, ok=True)
    assert auth["user"] == "carol" and auth["method"] == "password" and "fingerprint" not in auth


def test_password_user_keeps_her_command_policy(policy, askpass) -> None:
    r = policy.ssh("comphash /etc/hosts", user="carol", options=PASSWORD_OPTIONS, env=askpass(PASSWORD))
    assert (r.returncode, r.stderr) == (126, b"comphash: not permitted\n")


def test_wrong_password_is_refused(policy, askpass) -> None:
    mark = policy.audit_mark()
    r = policy.ssh("exit 0", user="carol", options=PASSWORD_OPTIONS, env=askpass("not the password"))
    assert denied(r)
    assert b"(publickey,password)" in r.stderr
    record = policy.wait_audit(lambda e: e["event"] == "auth" and e.get("user") == "carol", mark, what="auth")
    assert (record["ok"], record["method"], record["reason"]) == (False, "password", "wrong password")


@pytest.mark.parametrize("user", ["alice", "nobody"])
def test_names_without_a_password_look_like_a_wrong_password(policy, askpass, user) -> None:
    """alice has no password and nobody does not exist: both are asked for one and refused exactly
    as carol is with a wrong one, so the answers do not tell which names have a password."""
    mark = policy.audit_mark()
    r = policy.ssh("exit 0", user=user, options=PASSWORD_OPTIONS, env=askpass(PASSWORD))
    assert denied(r)
    assert b"(publickey,password)" in r.stderr
    record = policy.wait_audit(lambda e: e["event"] == "auth" and e.get("user") == user, mark, what="auth")
    assert (record["ok"], record["method"], record["reason"]) == (False, "password", "wrong password")
