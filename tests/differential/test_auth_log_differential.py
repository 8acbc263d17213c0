"""sshd is the oracle for the authentication lines too: the same logins by the real OpenSSH client
against a real sshd (LogLevel VERBOSE) and conchcmd, reading the same files, give the same lines,
word for word but for the port. conchcmd writes one line sshd 9.2 does not: "Failed publickey for
invalid user NAME ..." (sshd's privilege separation drops it)."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from support.authcases import Case
from support.differential import ONLY_CONCHCMD, Pair
from support.serverfiles import hermetic_ssh, wait_for

pytestmark = [
    pytest.mark.differential,
    pytest.mark.skipif(shutil.which("ssh") is None, reason="the OpenSSH client is not installed"),
]

#: The kinds of line conchcmd writes in sshd's words.
KINDS = re.compile(r"(Accepted|Failed|Invalid user|Connection closed by|Disconnected from|maximum|Disconnecting) ")
_sources = itertools.count(2)


def keygen(directory: Path, name: str) -> Path:
    path = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30)
    return path


def lines_from(text: str, host: str) -> list[str]:
    """The authentication lines about client address `host`, ports replaced by P."""
    out = []
    for line in text.splitlines():
        line = line.split("[conchcmd.auth#", 1)[-1].split("] ", 1)[-1] if "[conchcmd." in line else line
        m = KINDS.match(line)
        if m and re.search(rf"(?: | from ){re.escape(host)} port \d+", line):
            out.append(re.sub(r" port \d+", " port P", line))
    return out


def test_the_same_logins_give_sshds_lines(server_pair: Pair, tmp_path: Path) -> None:
    good, stranger, ca = keygen(tmp_path, "good"), keygen(tmp_path, "stranger"), keygen(tmp_path, "ca")
    cert_pub = tmp_path / "certified.pub"
    shutil.copy(f"{good}.pub", cert_pub)
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(ca), "-I", "ops-key", "-z", "5", "-n", server_pair.user, str(cert_pub)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    cert = tmp_path / "certified-cert.pub"
    user = server_pair.user
    good_line = Path(f"{good}.pub").read_bytes().strip()
    ca_line = Path(f"{ca}.pub").read_bytes().strip()
    marks = (len(server_pair.sshd.log_text()), len(server_pair.conch.log_text()))

    scenarios: list[tuple[str, str, Path, str, list[str]]] = []  # (name, source, key, user, options)

    def run(name: str, key: Path, login: str, ok: bool, *, source: str | None = None, options=()) -> None:
        source = source or f"127.55.0.{next(_sources)}"
        scenarios.append((name, source, key, login, list(options)))
        for port in (server_pair.sshd.port, server_pair.conch.port6 if ":" in source else server_pair.conch.port):
            argv = hermetic_ssh(port, key, login, source, remote="exit 0", options=list(options))
            if ":" in source:
                argv = [a if a != f"{login}@127.0.0.1" else f"{login}@::1" for a in argv]
            r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
            # 255: not logged in (sshd then runs nologin, which exits 1)
            assert (r.returncode != 255) == ok, (name, port, r.returncode, r.stderr)

    # No trusted CA yet: with one, conchcmd lets any name log in by certificate (none is invalid).
    server_pair.files.write([Case(0, "authlog", None, "", lines=[good_line])])
    run("key", good, user, True)
    run("stranger key", stranger, user, False)
    run("invalid user", good, "rootx", False)
    if server_pair.sshd.ipv6:
        run("key over IPv6", good, user, True, source="::1")
    server_pair.files.write([Case(0, "authlog", None, "", trusted=[ca_line])])
    run("certificate", good, user, True, options=["-o", f"CertificateFile={cert}"])

    def settled() -> bool:
        sshd, conch = server_pair.sshd.log_text()[marks[0] :], server_pair.conch.log_text()[marks[1] :]
        ends = ("Connection closed by", "Disconnected from")
        return all(
            any(line.startswith(ends) for line in lines_from(text, source))
            for _, source, *_ in scenarios
            for text in (sshd, conch)
        )

    wait_for(settled, 15.0, "each connection's last line from both servers")
    sshd_text = server_pair.sshd.log_text()[marks[0] :]
    conch_text = server_pair.conch.log_text()[marks[1] :]
    for name, source, *_ in scenarios:
        expected = lines_from(sshd_text, source)
        got = lines_from(conch_text, source)
        assert expected, (name, sshd_text)
        assert [line for line in got if not ONLY_CONCHCMD.match(line)] == expected, name
    [invalid] = [s for s in scenarios if s[0] == "invalid user"]
    assert ONLY_CONCHCMD.match(lines_from(conch_text, invalid[1])[1])
