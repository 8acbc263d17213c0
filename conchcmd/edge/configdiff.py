"""What a reload changes: the settings that differ between two configurations, by their TOML
names, and which of them a running server applies at once (see `Server.reload`)."""

from __future__ import annotations

import dataclasses
import hashlib

from conchcmd.core.config import Config

#: Config fields holding a dataclass whose keys are top-level in the TOML file.
FLATTENED = frozenset({"limits", "algorithms"})
#: TOML names of fields whose Python name differs.
RENAMED = {"lastlog.sources": "lastlog.path"}
#: What `Server.reload` (and the service's password pool) apply to logins from then on: key
#: files and the trust in them, CAs, revocations, the security-key policy, users, the password-check cap. Anything else
#: (listen, host keys, limits, algorithms, the commands' settings, the audit log, settings added
#: later) is built once at start and needs a restart.
APPLIED_ON_RELOAD = frozenset(
    {
        "authorized_keys",
        "permit_user_environment",
        "pubkey_auth_options",
        "strict_modes",
        "trusted_user_ca_keys",
        "revoked_keys",
        "max_password_checks",
    }
)


def changed_settings(old: Config, new: Config) -> list[str]:
    """The settings whose values differ, in the Config's field order: `users.NAME` per user
    added, removed or changed; the others by their TOML key (`max_sessions`, `comphash.roots`)."""
    changed: list[str] = []
    for f in dataclasses.fields(Config):
        if f.name == "source":
            continue
        before, after = getattr(old, f.name), getattr(new, f.name)
        if f.name == "users":
            changed += [f"users.{u}" for u in sorted(before.keys() | after.keys()) if before.get(u) != after.get(u)]
        elif dataclasses.is_dataclass(before) and dataclasses.is_dataclass(after):
            prefix = "" if f.name in FLATTENED else f"{f.name}."
            for sub in dataclasses.fields(before):
                if getattr(before, sub.name) != getattr(after, sub.name):
                    name = prefix + sub.name
                    changed.append(RENAMED.get(name, name))
        elif before != after:
            changed.append(f.name)
    return changed


def applies_on_reload(setting: str) -> bool:
    return setting in APPLIED_ON_RELOAD or setting.startswith("users.")


def config_digest(config: Config) -> str:
    """SHA-256 (hex) of the effective configuration as `check-config` prints it, less its first
    line (a comment naming the file): the same settings give the same digest wherever they are."""
    text = config.describe().split("\n", 1)[1]
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
