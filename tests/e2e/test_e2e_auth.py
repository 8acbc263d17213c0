"""Keys and algorithms: user key types, refusals, authorized_keys handling, host key, banner, kex."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys

import pytest
from support.keys import write_encrypted_key

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("ssh") is None, reason="the OpenSSH client is not installed"),
]


def auth_records(server, mark, **match):
    return [e for e in server.audit_since(mark, "auth") if all(e.get(k) == v for k, v in match.items())]


# -- user keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithms", [None, "rsa-sha2-512", "rsa-sha2-256"], ids=["default", "sha512", "sha256"])
def test_rsa_user_key_against_ed25519_only_host(server, client_keys, algorithms):
    options = ["-o", f"PubkeyAcceptedAlgorithms={algorithms}"] if algorithms else []
    mark = server.audit_mark()
    r = server.ssh("exit 3", key=client_keys.rsa, options=options)
    assert (r.returncode, r.stderr) == (3, b"")
    [auth] = auth_records(server, mark, ok=True)
    assert (auth["key_type"], auth["fingerprint"]) == ("ssh-rsa", client_keys.fingerprint(client_keys.rsa))


def test_ecdsa_user_key(server, client_keys):
    mark = server.audit_mark()
    r = server.ssh("exit 0", key=client_keys.ecdsa)
    assert (r.returncode, r.stderr) == (0, b"")
    [auth] = auth_records(server, mark, ok=True)
    assert (auth["key_type"], auth["fingerprint"]) == (
        "ecdsa-sha2-nistp256",
        client_keys.fingerprint(client_keys.ecdsa),
    )


def test_rsa_with_sha1_signatures_is_refused(server, client_keys):
    """OpenSSH itself declines here (ssh-rsa is not in server-sig-algs): no way in with SHA-1."""
    mark = server.audit_mark()
    r = server.ssh("exit 0", key=client_keys.rsa, options=["-o", "PubkeyAcceptedAlgorithms=ssh-rsa"])
    assert r.returncode == 255
    assert b"Permission denied" in r.stderr
    assert auth_records(server, mark, ok=True) == []


def test_unknown_key_is_refused_and_audited(server, client_keys):
    mark = server.audit_mark()
    r = server.ssh("exit 0", key=client_keys.stranger)
    assert r.returncode == 255
    assert b"Permission denied" in r.stderr
    fingerprint = client_keys.fingerprint(client_keys.stranger)
    record = server.wait_audit(
        lambda e: e["event"] == "auth" and e.get("fingerprint") == fingerprint, mark, what="refused auth"
    )
    assert record["ok"] is False
    assert record["user"] == "alice"
    assert record["method"] == "publickey"
    assert auth_records(server, mark, ok=True) == []
    assert server.audit_since(mark, "command") == []


def test_unknown_user_is_refused(server, client_keys):
    r = server.ssh("exit 0", user="mallory")
    assert (r.returncode, b"Permission denied" in r.stderr) == (255, True)


def test_forced_command_runs_instead_of_the_clients(server, client_keys):
    mark = server.audit_mark()
    r = server.ssh("exit 7", user="bob", key=client_keys.optioned)  # bob's line: command="lastlog"
    assert r.returncode == 0
    assert r.stdout == server.tail(server.data.syslog, 10)
    (command,) = server.audit_since(mark, "command")
    assert command["argv"] == ["lastlog"] and command["original_command"] == "exit 7"


def test_adduser_while_running_needs_no_restart(server, client_keys):
    r = server.ssh("exit 0", user="carol", key=client_keys.spare)
    assert r.returncode == 255
    add = subprocess.run(
        [
            sys.executable,
            "-m",
            "conchcmd",
            "adduser",
            "--config",
            str(server.config),
            "carol",
            str(client_keys.pub(client_keys.spare)),
        ],
        capture_output=True,
        timeout=30,
        cwd=server.base,
    )
    assert add.returncode == 0, add.stderr
    assert client_keys.fingerprint(client_keys.spare).encode() in add.stdout
    path = server.authorized_keys("carol")
    assert path.stat().st_mode & 0o777 == 0o600
    r = server.ssh("exit 0", user="carol", key=client_keys.spare)
    assert (r.returncode, r.stderr) == (0, b"")


def test_group_writable_authorized_keys_is_ignored(server, client_keys):
    path = server.authorize("dave", client_keys.pub_line(client_keys.spare), mode=0o664)
    r = server.ssh("exit 0", user="dave", key=client_keys.spare)
    assert r.returncode == 255
    server.wait_log(rf"Ignoring {re.escape(str(path))}: bad ownership or modes for file {re.escape(str(path))}")
    path.chmod(0o600)
    r = server.ssh("exit 0", user="dave", key=client_keys.spare)
    assert r.returncode == 0


def _link_into_a_sticky_shared_dir(server, user, line):
    """authorized_keys/USER as a symlink to a root-owned 0600 file in a /tmp-like (1777) directory."""
    shared = server.base / f"shared-{user}"
    shared.mkdir()
    shared.chmod(0o1777)
    target = shared / "keys"
    target.write_text(line + "\n")
    target.chmod(0o600)
    link = server.authorized_keys(user)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return link, shared


def test_authorized_keys_through_a_symlink_into_a_sticky_dir_is_refused(server, client_keys):
    """sshd's StrictModes resolves the link and checks every directory: 1777 fails, sticky or not."""
    link, shared = _link_into_a_sticky_shared_dir(server, "erin", client_keys.pub_line(client_keys.spare))
    mark = server.audit_mark()
    r = server.ssh("exit 0", user="erin", key=client_keys.spare)
    assert r.returncode == 255
    assert b"Permission denied" in r.stderr
    assert auth_records(server, mark, ok=True) == []
    server.wait_log(rf"Ignoring {re.escape(str(link))}: bad ownership or modes for directory {re.escape(str(shared))}")


def test_strict_modes_false_accepts_the_same_layout(make_server, client_keys):
    loose = make_server(settings={"strict_modes": False})
    _link_into_a_sticky_shared_dir(loose, "erin", client_keys.pub_line(client_keys.spare))
    r = loose.ssh("exit 0", user="erin", key=client_keys.spare)
    assert (r.returncode, r.stderr) == (0, b"")


# -- host key and banner ------------------------------------------------------------------------


def test_keyscan_lists_only_the_ed25519_host_key(server):
    r = subprocess.run(["ssh-keyscan", "-T", "5", "-p", str(server.port), "127.0.0.1"], capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    host_pub = (server.host_keys_dir / "ssh_host_ed25519_key.pub").read_text().split()
    assert lines == [f"[127.0.0.1]:{server.port} ssh-ed25519 {host_pub[1]}"]
    assert "ssh-rsa" not in r.stdout.decode()
    assert host_pub[0] == "ssh-ed25519"
    assert (server.host_keys_dir / "ssh_host_ed25519_key").stat().st_mode & 0o777 == 0o600


def test_strict_host_key_checking_with_the_served_key(server, tmp_path):
    host_pub = (server.host_keys_dir / "ssh_host_ed25519_key.pub").read_text().split()
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{server.port} {host_pub[0]} {host_pub[1]}\n")
    r = server.ssh("exit 0", options=["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}"])
    assert (r.returncode, r.stderr) == (0, b"")


def test_banner_does_not_name_twisted(server):
    """The first line the server sends is its version line, and it does not reveal Twisted."""
    received = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        while b"\r\n" not in received and len(received) < 4096:
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
    line = received.split(b"\r\n", 1)[0] + b"\r\n"
    assert line == b"SSH-2.0-conchcmd\r\n"
    assert b"Twisted" not in received


# -- algorithms ----------------------------------------------------------------------------------


def test_negotiated_and_offered_algorithms_are_modern(server):
    r = server.ssh("exit 0", options=["-vv"])
    assert r.returncode == 0
    err = r.stderr.decode().replace("\r\n", "\n")
    assert "debug1: kex: algorithm: curve25519-sha256\n" in err  # OpenSSH 9.2 has no mlkem768x25519
    assert "debug1: kex: host key algorithm: ssh-ed25519\n" in err
    for direction in ("server->client", "client->server"):
        m = re.search(rf"kex: {direction} cipher: (\S+) MAC: (\S+) compression: (\S+)", err)
        assert m, err
        cipher, mac, compression = m.groups()
        assert (cipher, mac) == ("chacha20-poly1305@openssh.com", "<implicit>")  # OpenSSH's first choice
        assert compression == "none"
    # What the server offered (its KEXINIT, as the client logs it).
    offer = err.split("peer server KEXINIT proposal", 1)[1]
    lists = dict(re.findall(r"debug2: ([A-Za-z ]+): (.*)", offer)[:10])
    kex = set(lists["KEX algorithms"].split(","))
    assert "curve25519-sha256" in kex
    assert kex <= {
        "mlkem768x25519-sha256",
        "curve25519-sha256",
        "curve25519-sha256@libssh.org",
        "ext-info-s",
        "kex-strict-s-v00@openssh.com",
    }
    assert lists["host key algorithms"] == "ssh-ed25519"
    for name in ("ciphers ctos", "ciphers stoc"):
        assert lists[name] == (
            "chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-gcm@openssh.com,"
            "aes256-ctr,aes192-ctr,aes128-ctr"
        )
    for name in ("MACs ctos", "MACs stoc"):
        assert lists[name] == "hmac-sha2-256-etm@openssh.com,hmac-sha2-512-etm@openssh.com"  # EtM only
    if any(mac.endswith("-etm@openssh.com") for mac in lists["MACs stoc"].split(",")):
        assert "kex-strict-s-v00@openssh.com" in kex, "EtM MACs need strict KEX (Terrapin)"
    for name in ("compression ctos", "compression stoc"):
        assert lists[name] == "none"
    assert "sha1" not in " ".join(lists.values())


@pytest.mark.parametrize(
    ("option", "what"),
    [
        ("Ciphers=aes128-cbc", "cipher"),
        ("Ciphers=3des-cbc", "cipher"),
        ("KexAlgorithms=diffie-hellman-group14-sha1", "key exchange method"),
        ("KexAlgorithms=diffie-hellman-group-exchange-sha1", "key exchange method"),
        ("MACs=hmac-sha1,hmac-sha2-256", "MAC"),  # with a non-AEAD cipher, see below
        ("HostKeyAlgorithms=ssh-rsa", "host key type"),
    ],
)
def test_weak_algorithms_are_refused(server, option, what):
    # An AEAD cipher (chacha20, GCM) carries its own MAC, so MAC choices only matter with CTR.
    extra = ["-o", "Ciphers=aes128-ctr"] if what == "MAC" else []
    r = server.ssh("exit 0", options=["-o", option, *extra], log_level="INFO")
    assert r.returncode == 255
    assert f"no matching {what} found".encode() in r.stderr, r.stderr


def test_server_still_serves_after_refusals(server):
    r = server.ssh("exit 0")
    assert r.returncode == 0
    assert re.search(r"Lost client connection 127\.0\.0\.1:\d+ \(not authenticated\)", server.log_text())


def test_serve_refuses_a_host_key_readable_by_others(tmp_path):
    config = tmp_path / "conchcmd.toml"
    config.write_text('listen = ["tcp:0:interface=127.0.0.1"]\n')
    run = [sys.executable, "-m", "conchcmd"]
    keygen = subprocess.run([*run, "keygen", "--config", str(config)], capture_output=True, timeout=30)
    assert keygen.returncode == 0, keygen.stderr
    key = tmp_path / "keys" / "ssh_host_ed25519_key"
    assert key.stat().st_mode & 0o777 == 0o600
    key.chmod(0o644)
    r = subprocess.run(
        [*run, "serve", "--config", str(config)], capture_output=True, timeout=30, stdin=subprocess.DEVNULL
    )
    assert r.returncode != 0
    assert b"listening on" not in r.stdout
    assert b"refusing to start" in r.stderr
    assert f"chmod 600 {key}".encode() in r.stderr


def test_serve_refuses_a_host_key_directory_others_can_write(tmp_path):
    config = tmp_path / "conchcmd.toml"
    config.write_text('listen = ["tcp:0:interface=127.0.0.1"]\n')
    keys = tmp_path / "keys"
    keys.mkdir()
    keys.chmod(0o777)
    r = subprocess.run(
        [sys.executable, "-m", "conchcmd", "serve", "--config", str(config)],
        capture_output=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode != 0
    assert b"listening on" not in r.stdout
    assert (
        f"refusing to start: host key directory {keys}: bad ownership or modes for directory {keys}; "
        f"fix: chmod go-w {keys}"
    ).encode() in r.stderr
    assert list(keys.iterdir()) == []  # no key was written there


def test_serve_refuses_an_encrypted_host_key_without_a_traceback(tmp_path):
    """A host key with a passphrase (nobody is there to type it): serve names the file and the fix."""
    config = tmp_path / "conchcmd.toml"
    config.write_text('listen = ["tcp:0:interface=127.0.0.1"]\n')
    key = write_encrypted_key(tmp_path / "keys" / "ssh_host_ed25519_key")
    r = subprocess.run(
        [sys.executable, "-m", "conchcmd", "serve", "--config", str(config)],
        capture_output=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 1
    assert b"listening on" not in r.stdout
    assert r.stderr.decode() == (
        f"conchcmd: refusing to start: host key {key} is encrypted with a passphrase; conchcmd needs an unencrypted "
        f'key: remove the passphrase with `ssh-keygen -p -N "" -f {key}`, or move the file away\n'
    )


@pytest.mark.parametrize(
    "payload",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"SSH-1.5-old\r\n",
        b"SSH-2.0-junk\r\n" + b"\xff\xff\xff\xff" + b"A" * 100,
    ],
    ids=["http", "ssh1", "bad-length"],
)
def test_garbage_clients_are_dropped_cleanly(server, payload):
    since = server.log_mark()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(payload)
        received = b""
        while chunk := sock.recv(65536):  # the server must close the connection
            received += chunk
    assert received.startswith(b"SSH-2.0-conchcmd\r\n")
    server.wait_log(r"Lost client connection 127\.0\.0\.1:\d+ \(not authenticated\)", since)
    assert server.ssh("exit 0").returncode == 0
