"""A fleet end to end: N `conchcmd serve` hosts (distinct 127.77.x addresses, each its own host key,
config and log, all trusting one user CA, no authorized_keys), their log lines and audit records
going to one central rsyslogd over TCP; the shipped Ansible playbook (conchcmd/contrib/ansible-fleet.yml:
`raw` tasks, forks 20, ControlMaster and `-tt` as Ansible's ssh connection does them) runs
`comphash --json` and `lastlog --json` on every host and checks the parsed answers against the
test's own (hashlib, the file's last lines). The central file must then hold each command's audit
record exactly once, per host, connection and channel. The same playbook runs against N sshd +
ForceCommand hosts (tests/fleet/forcecmd.sh) trusting the same CA, for the side-by-side figures:
the playbook's wall time and the PSS per instance while the multiplexed connections are open.

CONCHCMD_FLEET=1 (or -m fleet) runs the 100-host fleet (CONCHCMD_FLEET_HOSTS changes the count);
the default run has a 5-host one. Run with -s to see the figures."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from support.e2e import syslog_lines
from support.fleet import (
    ANSIBLE_PLAYBOOK,
    FORCECMD,
    Fleet,
    fleet_data,
    make_credentials,
    mib,
    start_fleet,
)
from support.rsyslog import HAVE_RSYSLOG, Rsyslog, running_rsyslog
from support.serverfiles import wait_for
from support.sshd import secure_directory, sshd_available, system_user

FULL_SIZE = int(os.environ.get("CONCHCMD_FLEET_HOSTS", "100"))
SMALL_SIZE = 5
LOG_LINES = 200


def _need_tools() -> None:
    if not HAVE_RSYSLOG:
        pytest.skip("rsyslog is not installed (apt install rsyslog)")
    if not sshd_available():
        pytest.skip("the sshd fleet needs /usr/sbin/sshd, ssh-keygen and root (it adds a system user)")
    if ANSIBLE_PLAYBOOK is None:
        pytest.skip("ansible-playbook is not installed (pip install ansible-core)")
    if shutil.which("jq") is None:
        pytest.skip("the ForceCommand wrapper needs jq (apt install jq)")


RESULT = re.compile(r"^ok: \[(\S+)\] => (\{.*\})$", re.M)  # a task's result, as -v shows it
RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def _recap(result: Any) -> dict[str, tuple[int, ...]]:
    """Ansible's PLAY RECAP: host -> (ok, changed, unreachable, failed)."""
    return {m.group(1): tuple(int(g) for g in m.groups()[1:]) for m in RECAP.finditer(result.stdout)}


def _check_play(result: Any, hosts: list[str]) -> None:
    assert result.returncode == 0, f"ansible-playbook failed:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    # every host ran the two raw tasks and the assert, nothing failed or was unreachable
    assert _recap(result) == {name: (3, 0, 0, 0) for name in hosts}, result.stdout[-6000:]
    # both raw tasks ran with a pty, as Ansible's `ssh -tt` asks: its line discipline ends lines with \r\n
    raw = [(name, json.loads(text)) for name, text in RESULT.findall(result.stdout)]
    raw = [(name, r) for name, r in raw if "rc" in r]
    assert Counter(name for name, _ in raw) == Counter({name: 2 for name in hosts}), result.stdout[:3000]
    for name, r in raw:
        assert r["stdout"].endswith("}\r\n") and "\n" not in r["stdout"].replace("\r\n", ""), (name, r)


def _central_records(rsyslog: Rsyslog, fleet: Fleet) -> tuple[dict[str, str], list[tuple[str, dict[str, Any]]]]:
    """The audit records rsyslog wrote, each with the host whose PID sent it."""
    host_of = {str(h.proc.pid): h.name for h in fleet.conch if h.proc is not None}
    received = [r for r in rsyslog.received() if r.program == "conchcmd"]
    assert {r.pid for r in received} <= set(host_of), "a record from a process that is not a fleet host"
    records = [(host_of[r.pid], json.loads(r.message)) for r in received if r.message.startswith("{")]
    return host_of, records


def run_fleet(size: int, tmp_path: Path) -> dict[str, Any]:
    _need_tools()
    file_bytes = random.Random(12).randbytes(1 << 20)
    with (
        secure_directory("conchcmd-fleet-") as shared,  # sshd's user reads the data and the wrapper here
        system_user(shared, f"cfleet{os.getpid()}", shell="/bin/sh") as user,
        running_rsyslog(_mkdir(tmp_path / "rsyslog"), max_sessions=size + 50) as rsyslog,
    ):
        data = fleet_data(shared / "data", syslog_lines(LOG_LINES), file_bytes)
        wrapper = shared / "forcecmd.sh"
        shutil.copyfile(FORCECMD, wrapper)
        wrapper.chmod(0o755)
        credentials = make_credentials(_mkdir(tmp_path / "credentials"), user)
        expected_lines = [line.decode("utf-8", "replace") for line in data.log.read_bytes().splitlines()[-10:]]
        extra_vars = tmp_path / "vars.json"
        extra_vars.write_text(
            json.dumps(
                {
                    "fleet_file": str(data.file),
                    "fleet_sha256": hashlib.sha256(file_bytes).hexdigest(),
                    "fleet_lines": expected_lines,
                }
            )
        )
        fleet = start_fleet(tmp_path / "fleet", size, credentials, data, rsyslog.tcp, wrapper)
        try:
            conch_play, conch_wall = fleet.play("conchcmd", extra_vars)
            _check_play(conch_play, [h.name for h in fleet.conch])
            conch_pss = fleet.conch_pss()  # while Ansible's multiplexed connections are still open
            sshd_play, sshd_wall = fleet.play("sshd", extra_vars)
            _check_play(sshd_play, [f"sshd{i + 1:03d}" for i in range(size)])
            sshd_pss = fleet.sshd_pss()
            sshd_processes = len(fleet.sshd_children) + size
        finally:
            problems = fleet.close()
        assert not problems, "\n".join(problems)

        # the hosts have written their last records (server_stop) before exiting; rsyslog writes them soon after
        def stopped() -> bool:
            return sum(e["event"] == "server_stop" for _, e in _central_records(rsyslog, fleet)[1]) == size

        wait_for(stopped, 30, "every host's server_stop record in the central file")
        host_of, records = _central_records(rsyslog, fleet)
        lines = [r.message for r in rsyslog.received() if r.program == "conchcmd" and r.pid in host_of]
        sshd_logs = [s.log_text() for s in fleet.sshd]
        own_logs = [h.log_text() for h in fleet.conch]

    names = sorted(host_of.values())
    commands = [(host, e) for host, e in records if e["event"] == "command"]
    # each command's record arrived exactly once: per host, connection and channel
    keys = Counter((host, e["connection"], e["channel"]) for host, e in commands)
    assert keys and max(keys.values()) == 1, [k for k, n in keys.items() if n > 1]
    assert Counter(host for host, _ in commands) == Counter({name: 2 for name in names})
    for host in names:
        mine = [e for h, e in commands if h == host]
        assert sorted(e["argv"] for e in mine) == [
            ["comphash", "--json", str(data.file)],
            ["lastlog", "--json"],
        ], mine
        assert {(e["exit_code"], e["user"], e["kind"]) for e in mine} == {(0, user, "exec")}  # a pty, still exec
        # Ansible's ControlMaster: both commands came over one connection, on two channels
        assert len({e["connection"] for e in mine}) == 1 and len({e["channel"] for e in mine}) == 2
    events = Counter((host, e["event"]) for host, e in records)
    for host in names:
        for event in ("server_start", "connect", "disconnect", "server_stop"):
            assert events[host, event] == 1, (host, event, events)
    # one login per host, by certificate; OpenSSH offers the bare key first, which no host accepts
    auths = [(host, e) for host, e in records if e["event"] == "auth"]
    accepted = Counter(host for host, e in auths if e["ok"] and e.get("cert_key_id") == "fleet-operator")
    assert accepted == Counter({name: 1 for name in names}), auths
    refused = {(e["key_type"], e["reason"]) for _, e in auths if not e["ok"]}
    assert refused <= {("ssh-ed25519", "key not in authorized_keys")}, refused
    assert not [line for line in lines if "Traceback" in line or "Unhandled" in line]
    for log in own_logs:  # each host's own log (stdout) has its listening line, and no first-run hint: the CA has users
        assert "conchcmd: listening on" in log and "Traceback" not in log and "No users are configured" not in log, log
    for log in sshd_logs:  # sshd too served the play over one multiplexed connection
        assert log.count(f"Accepted publickey for {user} ") == 1, log

    figures = {
        "hosts": size,
        "forks": 20,
        "conchcmd_playbook_s": round(conch_wall, 2),
        "sshd_playbook_s": round(sshd_wall, 2),
        "conchcmd_pss_mib": round(mib(conch_pss), 2),
        "sshd_pss_mib": round(mib(sshd_pss), 2),
        "sshd_processes": sshd_processes,
        "audit_records_central": len(records),
        "command_records_central": len(commands),
    }
    print("\nfleet figures:", json.dumps(figures))
    return figures


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_a_small_fleet_answers_ansible_and_audits_centrally_once(tmp_path: Path) -> None:
    run_fleet(SMALL_SIZE, tmp_path)


@pytest.mark.fleet
def test_a_hundred_hosts_answer_ansible_and_audit_centrally_once(tmp_path: Path) -> None:
    run_fleet(FULL_SIZE, tmp_path)
