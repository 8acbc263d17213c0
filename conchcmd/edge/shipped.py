"""The service files shipped in the package (conchcmd/contrib/): listed and printed by
`conchcmd contrib`, read through importlib.resources so that they work from an installed wheel."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable

#: What each known file is and where an operator installs it; a file not named here is listed
#: with its first comment line.
DESCRIPTIONS: dict[str, tuple[str, str]] = {
    "conchcmd.service": ("the systemd unit (Type=notify, sandboxed)", "/etc/systemd/system/conchcmd.service"),
    "conchcmd.socket": ("systemd socket activation on port 2222", "/etc/systemd/system/conchcmd.socket"),
    "conchcmd.toml": ("example configuration, every key at its default", "/etc/conchcmd/conchcmd.toml"),
    "logrotate": ("log rotation of the audit log (SIGHUP reopens it)", "/etc/logrotate.d/conchcmd"),
    "fail2ban-filter.conf": ("fail2ban filter for the authentication lines", "/etc/fail2ban/filter.d/conchcmd.conf"),
    "fail2ban-jail.conf": ("fail2ban jail using that filter", "/etc/fail2ban/jail.d/conchcmd.conf"),
}


@dataclass(frozen=True)
class ShippedFile:
    name: str
    description: str
    install_as: str
    resource: Traversable

    def text(self) -> str:
        return self.resource.read_text(encoding="utf-8")


def _directory() -> Traversable:
    return resources.files("conchcmd").joinpath("contrib")


def shipped_files() -> list[ShippedFile]:
    """Every file in conchcmd/contrib, by name."""
    found = []
    for entry in sorted(_directory().iterdir(), key=lambda e: e.name):
        if not entry.is_file() or entry.name.startswith((".", "_")):
            continue
        description, install_as = DESCRIPTIONS.get(entry.name) or (_first_comment(entry), "")
        found.append(ShippedFile(entry.name, description, install_as, entry))
    return found


def _first_comment(entry: Traversable) -> str:
    for line in entry.read_text(encoding="utf-8").splitlines()[:5]:
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def find(name: str) -> ShippedFile | None:
    return next((f for f in shipped_files() if f.name == name), None)
