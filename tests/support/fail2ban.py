"""The real `fail2ban-regex` (apt `fail2ban`) run on log lines with conchcmd's shipped filter.

The filter includes fail2ban's own `common.conf`, which fail2ban looks for next to the filter: it
is copied from the installed fail2ban into a directory of the test's with the filter beside it.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import conchcmd

FAIL2BAN_REGEX = shutil.which("fail2ban-regex") or "/usr/bin/fail2ban-regex"
COMMON_CONF = Path("/etc/fail2ban/filter.d/common.conf")
FILTER = Path(conchcmd.__file__).parent / "contrib" / "fail2ban-filter.conf"
JAIL = Path(conchcmd.__file__).parent / "contrib" / "fail2ban-jail.conf"


def fail2ban_available() -> bool:
    return shutil.which("fail2ban-regex") is not None and COMMON_CONF.exists()


@dataclass(frozen=True)
class Failure:
    """One line fail2ban counts as a failure: the host it would ban and the line itself."""

    host: str
    user: str | None
    line: str


def install_filter(directory: Path) -> Path:
    """filter.d/conchcmd.conf (the shipped filter) and fail2ban's common.conf under `directory`."""
    filters = directory / "filter.d"
    filters.mkdir(parents=True, exist_ok=True)
    shutil.copy(COMMON_CONF, filters / "common.conf")
    shutil.copy(FILTER, filters / "conchcmd.conf")
    return filters / "conchcmd.conf"


#: fail2ban-regex's output per failure: the host, the user, the line (tab-separated: conchcmd
#: escapes tabs in what it logs).
OUT_FORMAT = "<ip>\t<F-USER>\t<msg>"


def failures(log: Path, filter_path: Path, options: str = "") -> list[Failure]:
    """What fail2ban-regex counts as failures in `log`, in order. `options` like
    "publickey=any, mode=aggressive" are the filter's [Init] options."""
    spec = f"{filter_path}[{options}]" if options else str(filter_path)
    r = subprocess.run(
        [FAIL2BAN_REGEX, "--out", OUT_FORMAT, str(log), spec], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, f"fail2ban-regex failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    found = []
    for line in r.stdout.splitlines():
        host, user, text = line.split("\t", 2)
        found.append(Failure(host=host, user=user, line=text))
    return found
