"""The authentication lines of a real `conchcmd serve`, made by the real OpenSSH client (a
failed key, an unknown user, a wrong and a right password, a key and a certificate that log in,
a certificate nobody trusts, and user names that read like log text), read from the server's
stdout by the REAL fail2ban-regex with the shipped filter: every failure counted against the
client's own address, nothing counted for a login that succeeded, never a foreign address.

Each client binds its own loopback address, so each address stands for one scenario."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest
from support.fail2ban import fail2ban_available, failures, install_filter

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("ssh") is None, reason="the OpenSSH client is not installed"),
    pytest.mark.skipif(not fail2ban_available(), reason="fail2ban (fail2ban-regex) is not installed"),
]

PASSWORD = "carol's password"
HOSTILE = "x from 6.6.6.6 port 1 ssh2"
PASSWORD_OPTIONS = [
    *("-o", "BatchMode=no", "-o", "PreferredAuthentications=password"),
    *("-o", "PubkeyAuthentication=no", "-o", "NumberOfPasswordPrompts=1"),
]


_sources = itertools.count(2)


def own_source() -> str:
    """A loopback source address of this module's own (127.88.0.x): one per scenario."""
    return f"127.88.0.{next(_sources)}"


@dataclass(frozen=True)
class Authority:
    private: Path
    fingerprint: str


def keygen_fingerprint(pub: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], check=True, capture_output=True, text=True, timeout=10)
    return out.stdout.split()[1]


def make_ca(directory: Path, name: str) -> Authority:
    private = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(private)], check=True, timeout=30)
    return Authority(private, keygen_fingerprint(Path(f"{private}.pub")))


def certify(ca: Authority, key: Path, directory: Path, key_id: str, serial: int) -> Path:
    pub = directory / f"cert{serial}.pub"
    shutil.copy(f"{key}.pub", pub)
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(ca.private), "-I", key_id, "-z", str(serial), "-n", "alice", str(pub)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return directory / f"cert{serial}-cert.pub"


def test_real_logins_through_the_real_fail2ban_regex(make_server, client_keys, askpass, tmp_path: Path) -> None:
    k = client_keys
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    server = make_server(settings={"users": {"carol": {"password_bcrypt": hashed}}})
    ca, rogue = make_ca(tmp_path, "ca"), make_ca(tmp_path, "rogue")
    # A CA trusted for alice alone (a cert-authority line, not trusted_user_ca_keys, which would
    # make every name one that can log in): "root" stays an invalid user.
    server.authorize("alice", k.pub_line(k.ed25519), f"cert-authority {Path(f'{ca.private}.pub').read_text().strip()}")
    good_cert = certify(ca, k.spare, tmp_path, "ops key", 5)
    rogue_cert = certify(rogue, k.spare, tmp_path, HOSTILE, 6)

    src: dict[str, str] = {}

    def run(name: str, expect: int, **kwargs) -> None:
        src[name] = own_source()
        r = server.ssh("exit 0", source=src[name], **kwargs)
        assert r.returncode == expect, (name, r.returncode, r.stderr)

    run("key", 0)
    run("stranger key", 255, key=k.stranger)
    run("unknown user", 255, user="root")
    run("wrong password", 255, user="carol", options=PASSWORD_OPTIONS, env=askpass("wrong"))
    run("password", 0, user="carol", options=PASSWORD_OPTIONS, env=askpass(PASSWORD))
    run("certificate", 0, key=k.spare, options=["-o", f"CertificateFile={good_cert}"])
    run("untrusted certificate", 255, key=k.spare, options=["-o", f"CertificateFile={rogue_cert}"])
    run("hostile name, key", 255, user=HOSTILE)
    run("hostile name, password", 255, user=HOSTILE, options=PASSWORD_OPTIONS, env=askpass("guess"))
    for name in src:
        last = r"\[conchcmd\.auth#info\] (Connection closed by|Disconnected from) (?:\S+ )?user \S+ "
        server.wait_log(last + re.escape(src[name]) + " ")

    text = server.log_text()

    def auth_lines(name: str) -> list[str]:
        host = re.escape(src[name])
        pattern = re.compile(rf"\[conchcmd\.auth#\w+\] (.*(?: | from ){host} port )(\d+)(.*)")
        return [m[1] + "P" + m[3] for m in map(pattern.search, text.splitlines()) if m]

    spare = k.fingerprint(k.spare)
    escaped = HOSTILE.replace(" ", "\\x20")
    a = {name: src[name] for name in src}
    assert auth_lines("key") == [
        f"Accepted publickey for alice from {a['key']} port P ssh2: ED25519 {k.fingerprint(k.ed25519)}",
        f"Disconnected from user alice {a['key']} port P",
    ]
    assert auth_lines("password") == [
        f"Accepted password for carol from {a['password']} port P ssh2",
        f"Disconnected from user carol {a['password']} port P",
    ]
    assert auth_lines("certificate") == [
        f"Accepted publickey for alice from {a['certificate']} port P ssh2: "
        f"ED25519-CERT {spare} ID ops\\x20key (serial 5) CA ED25519 {ca.fingerprint}",
        f"Disconnected from user alice {a['certificate']} port P",
    ]
    assert auth_lines("untrusted certificate") == [
        f"Failed publickey for alice from {a['untrusted certificate']} port P ssh2: "
        f"ED25519-CERT {spare} ID {escaped} (serial 6) CA ED25519 {rogue.fingerprint}",
        f"Failed publickey for alice from {a['untrusted certificate']} port P ssh2: ED25519 {spare}",
        f"Connection closed by authenticating user alice {a['untrusted certificate']} port P [preauth]",
    ]
    assert auth_lines("unknown user") == [
        f"Invalid user root from {a['unknown user']} port P",
        f"Failed publickey for invalid user root from {a['unknown user']} port P ssh2: "
        f"ED25519 {k.fingerprint(k.ed25519)}",
        f"Connection closed by invalid user root {a['unknown user']} port P [preauth]",
    ]
    assert auth_lines("wrong password")[0] == f"Failed password for carol from {a['wrong password']} port P ssh2"
    assert auth_lines("hostile name, password")[:2] == [
        f"Invalid user {escaped} from {a['hostile name, password']} port P",
        f"Failed password for invalid user {escaped} from {a['hostile name, password']} port P ssh2",
    ]

    filter_path = install_filter(tmp_path / "fail2ban")
    log = server.log_path
    by_default = {
        "unknown user": 2,  # Invalid user, Failed publickey for invalid user
        "wrong password": 1,
        "hostile name, key": 2,
        "hostile name, password": 2,
    }
    every_key = {**by_default, "stranger key": 1, "untrusted certificate": 2}
    aggressive = {name: n + 1 for name, n in every_key.items() if name != "wrong password"} | {"wrong password": 2}
    for options, expected in [
        ("", by_default),
        ("publickey=any", every_key),
        ("publickey=any, mode=aggressive", aggressive),
    ]:
        found = failures(log, filter_path, options)
        for failure in found:
            assert re.search(rf"(?: | from ){re.escape(failure.host)} port \d+", failure.line), failure
            assert failure.host != "6.6.6.6" and "Accepted" not in failure.line
        counted = Counter(f.host for f in found)
        assert counted == Counter({src[name]: n for name, n in expected.items()}), (options, found)
