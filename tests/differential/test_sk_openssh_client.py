"""Issue 16 with the real OpenSSH client: an sk key (and an sk certificate) held by an ssh-agent
(support.skagent, signing with a software token) logs in to sshd and to conchcmd, reading the same
files; both decide alike and write the same authentication lines, sk rejections included."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.authcases import Case
from support.differential import ONLY_CONCHCMD, Pair
from support.serverfiles import hermetic_ssh, wait_for
from support.skagent import SkAgent
from support.skauth import UP, UV, SoftwareAuthenticator, ssh_keygen_certificate

pytestmark = [
    pytest.mark.differential,
    pytest.mark.skipif(shutil.which("ssh") is None, reason="the OpenSSH client is not installed"),
]

#: sshd's authentication lines, and its lines refusing an sk signature.
KINDS = re.compile(r"(Accepted|Failed|Connection closed by|Disconnected from|public key \S+ \S+ signature for) ")


def lines_from(text: str, host: str) -> list[str]:
    """The authentication lines about client address `host`, ports replaced by P."""
    out = []
    for line in text.splitlines():
        line = line.split("[conchcmd.auth#", 1)[-1].split("] ", 1)[-1] if "[conchcmd." in line else line
        if KINDS.match(line) and re.search(rf"(?: | from ){re.escape(host)} port \d+", line):
            out.append(re.sub(r" port \d+", " port P", line).rstrip())
    return out


@dataclass
class Run:
    """Each scenario's name, source address and decisions (sshd's, conchcmd's), and both logs' new text."""

    decisions: list[tuple[str, str, bool, bool]]
    sshd_text: str
    conch_text: str


@pytest.fixture(scope="module")
def agent_logins(server_pair: Pair, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The real OpenSSH client, its key in an agent that signs with a software token, tries each
    scenario against sshd and conchcmd from a source of its own."""
    tmp_path = tmp_path_factory.mktemp("sk-agent")
    user = server_pair.user
    ca = tmp_path / "ca"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ca)], check=True, timeout=30)
    tokens = {
        "touched": (SoftwareAuthenticator.generate("ed25519", flags=UP), "", True),
        "not touched": (SoftwareAuthenticator.generate("ecdsa", flags=0), "", False),
        "touched, PIN required, none given": (
            SoftwareAuthenticator.generate("ed25519", flags=UP),
            "verify-required",
            False,
        ),
        "touched with PIN, PIN required": (
            SoftwareAuthenticator.generate("ecdsa", flags=UP | UV),
            "verify-required",
            True,
        ),
        "untouched, no-touch-required": (SoftwareAuthenticator.generate("ed25519", flags=0), "no-touch-required", True),
    }
    certified = SoftwareAuthenticator.generate("ed25519", flags=UP)
    cert_blob = ssh_keygen_certificate(certified, ca, tmp_path / "certs", principals=[user], key_id="sk-agent-cert")
    untouched_cert = SoftwareAuthenticator.generate("ecdsa", flags=0)
    untouched_blob = ssh_keygen_certificate(untouched_cert, ca, tmp_path / "certs", principals=[user], key_id="sk-0")
    lines = [t.public_line(options=o).strip().encode() for t, o, _ in tokens.values()]
    trusted = [b" ".join(Path(f"{ca}.pub").read_bytes().split()[:2])]
    server_pair.files.write([Case(0, "sk agent", None, "", lines=lines, trusted=trusted)])
    marks = (len(server_pair.sshd.log_text()), len(server_pair.conch.log_text()))

    scenarios: list[tuple[str, str]] = []
    decisions = []
    # A short directory: a Unix socket's path has room for about 100 bytes.
    with tempfile.TemporaryDirectory(prefix="skagent-") as directory, SkAgent(Path(directory)) as agent:
        plans = [(name, token, ok) for name, (token, _, ok) in tokens.items()]
        plans.append(("certificate", certified.with_certificate(cert_blob), True))
        plans.append(("certificate, not touched", untouched_cert.with_certificate(untouched_blob), False))
        for number, (name, token, ok) in enumerate(plans, 1):
            agent.hold(token)  # the only identity ssh can use: the key, or the certificate
            pub = tmp_path / f"key{number}.pub"
            pub.write_text(token.public_line())
            pub.chmod(0o600)  # ssh also tries to read it as a private key, and refuses a readable one
            source = f"127.57.0.{number}"
            scenarios.append((name, source))
            accepted = []
            for port in (server_pair.sshd.port, server_pair.conch.port):
                options = ["-o", f"IdentityAgent={agent.path}", "-o", "IdentitiesOnly=no"]
                argv = hermetic_ssh(port, pub, user, source, remote="exit 0", options=options)
                r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
                # 255: not logged in (sshd then runs nologin, which exits 1)
                accepted.append(r.returncode != 255)
            decisions.append((name, source, ok, *accepted))
        assert len(agent.signed) >= 2 * len(plans)  # every login was signed by the agent's token

    def settled() -> bool:
        sshd, conch = server_pair.sshd.log_text()[marks[0] :], server_pair.conch.log_text()[marks[1] :]
        ends = ("Connection closed by", "Disconnected from")
        return all(
            any(line.startswith(ends) for line in lines_from(text, source))
            for _, source in scenarios
            for text in (sshd, conch)
        )

    wait_for(settled, 15.0, "each connection's last line from both servers")
    return Run(decisions, server_pair.sshd.log_text()[marks[0] :], server_pair.conch.log_text()[marks[1] :])


def test_sk_keys_from_an_agent_are_decided_like_sshd(agent_logins: Run) -> None:
    got = [(name, by_sshd, by_conch) for name, _, _, by_sshd, by_conch in agent_logins.decisions]
    assert got == [(name, ok, ok) for name, _, ok, _, _ in agent_logins.decisions]


def test_sk_logins_from_an_agent_give_sshds_log_lines(agent_logins: Run) -> None:
    for name, source, *_ in agent_logins.decisions:
        expected = lines_from(agent_logins.sshd_text, source)
        assert any("-SK" in line for line in expected), (name, expected)
        got = lines_from(agent_logins.conch_text, source)
        assert [line for line in got if not ONLY_CONCHCMD.match(line)] == expected, name
