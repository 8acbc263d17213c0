"""conchcmd.core.fdlimit: the soft descriptor limit raised to the hard one (in a child process with
a real low limit), the estimate `doctor` and `check-config` compare with the hard limit, their
warnings, the shipped unit's LimitNOFILE, and the one warning for connections closed at accept."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import LogLevel

from conchcmd.core.config import Config, LimitsConfig, load_config
from conchcmd.core.fdlimit import BASE_DESCRIPTORS, AcceptFailures, descriptors_needed, limit_warning
from conchcmd.edge import shipped

CONTRIB = Path(shipped.__file__).parents[1] / "contrib"
RAISE = (
    "import json, resource, sys\n"
    "from conchcmd.core.fdlimit import raise_soft_limit\n"
    "cap = int(sys.argv[1]) if len(sys.argv) > 1 else None\n"
    "limit = raise_soft_limit(cap)\n"
    "print(json.dumps([limit.soft, limit.hard, limit.before, limit.describe(),"
    " list(resource.getrlimit(resource.RLIMIT_NOFILE))]))\n"
)


def run_limited(argv: list[str], soft: int, hard: int) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return subprocess.run(argv, capture_output=True, text=True, timeout=60, preexec_fn=limit, check=False)


def raised(soft: int, hard: int, *cap: str) -> list[Any]:
    done = run_limited([sys.executable, "-c", RAISE, *cap], soft, hard)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    assert raised(32, 300) == [300, 300, 32, "300 (raised from 32; hard limit 300)", [300, 300]]


def test_a_cap_holds_it_below_the_hard_limit_and_it_is_never_lowered() -> None:
    assert raised(32, 300, "100")[:3] == [100, 300, 32]  # a select reactor's FD_SETSIZE, say
    assert raised(200, 300, "100")[:3] == [200, 300, 200]
    assert raised(300, 300) == [300, 300, 300, "300 (hard limit 300)", [300, 300]]


def test_the_estimate_counts_clients_startups_listeners_and_hashes() -> None:
    config = Config(max_clients=1000, listen=("tcp:22", "tcp6:22"), limits=LimitsConfig(max_startups=50))
    assert descriptors_needed(config) == BASE_DESCRIPTORS + 2 + 1000 + 50 + config.comphash.max_concurrent
    warning = limit_warning(config, 1024)
    assert warning is not None
    assert "max_clients = 1000" in warning and f"{descriptors_needed(config)} file descriptors" in warning
    assert "hard limit of 1024" in warning
    assert limit_warning(config, descriptors_needed(config)) is None
    assert limit_warning(config, resource.RLIM_INFINITY) is None
    assert limit_warning(Config(), 1024) is None  # the defaults fit systemd's default soft limit


def test_doctor_and_check_config_warn_under_a_low_hard_limit(tmp_path: Path) -> None:
    config = tmp_path / "conchcmd.toml"
    config.write_text("max_clients = 200\n")
    needed = descriptors_needed(load_config(config, cwd=tmp_path))
    warning = f"may need {needed} file descriptors, above the hard limit of 256"
    checked = run_limited([sys.executable, "-m", "conchcmd", "check-config", "--config", str(config)], 256, 256)
    assert checked.returncode == 0, checked.stderr
    assert f"# warning: max_clients = 200 with max_startups = 100 {warning}" in checked.stdout
    tomllib.loads(checked.stdout)  # still a configuration
    doctor = run_limited([sys.executable, "-m", "conchcmd", "doctor", "--config", str(config)], 256, 256)
    (line,) = [line for line in doctor.stdout.splitlines() if "file descriptors" in line]
    assert line.startswith("warning") and warning in line, doctor.stdout
    assert "LimitNOFILE=" in doctor.stdout
    fine = run_limited([sys.executable, "-m", "conchcmd", "check-config", "--config", str(config)], 256, 4096)
    assert "# warning" not in fine.stdout


def test_the_shipped_unit_sets_a_limit_the_shipped_config_fits_with_room() -> None:
    unit = (CONTRIB / "conchcmd.service").read_text(encoding="utf-8")
    (value,) = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("LimitNOFILE=")]
    config = load_config(CONTRIB / "conchcmd.toml", cwd=CONTRIB)
    assert limit_warning(config, int(value)) is None
    assert limit_warning(Config(max_clients=10000), int(value)) is None  # the capacity benchmark's scale


def twisted_event(fmt: str, when: float, **fields: Any) -> dict[str, Any]:
    return {"log_format": fmt, "log_time": when, "log_level": LogLevel.info, "log_namespace": "twisted", **fields}


def test_connections_closed_at_accept_give_one_warning_per_interval() -> None:
    seen: list[dict[str, Any]] = []
    observer = AcceptFailures(seen.append, "conchcmd.log", interval=60)
    closed = "EMFILE recovery: Closed socket from {address}"
    for n in range(5):
        observer(twisted_event(closed, 1000.0 + n, address=("127.0.0.1", 5000 + n)))
    observer(twisted_event("something else", 1010.0))
    observer(twisted_event(closed, 1061.0, address=("127.0.0.1", 6000)))
    warnings = [e for e in seen if e.get("log_namespace") == "conchcmd.log"]
    assert [e["log_level"] for e in warnings] == [LogLevel.warn, LogLevel.warn]
    assert warnings[0]["more"] == "" and warnings[1]["more"] == "; 4 more since the last line"
    assert "Out of file descriptors" in warnings[0]["log_format"]
    assert len(seen) == 7 + 2  # every event passes on as it was


@pytest.mark.parametrize("fmt", ["Could not accept new connection ({acceptError})"])
def test_any_accept_failure_warns(fmt: str) -> None:
    seen: list[dict[str, Any]] = []
    AcceptFailures(seen.append, "conchcmd.log")(twisted_event(fmt, 5.0, acceptError="ENFILE"))
    assert [e["log_namespace"] for e in seen] == ["conchcmd.log", "twisted"]
