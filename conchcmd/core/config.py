"""Configuration: strict TOML parsing into frozen dataclasses, one slice per component."""

from __future__ import annotations

import grp
import hashlib
import re
import string
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conchcmd.core.endpoints import endpoint_problem, proxy_problem
from conchcmd.core.hostmatch import PatternError, addr_match_list, check_pattern

DEFAULT_CONFIG_NAME = "conchcmd.toml"
HASH_ALGORITHMS = ("sha256", "sha1", "sha512", "blake2b", "md5")
AUTO_LOG_SOURCES = ("/var/log/syslog", "/var/log/messages", "journal")
_USER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def valid_user_name(name: str) -> bool:
    """True for names safe to put into a file path pattern (no slashes, no leading dot); the one rule for
    user names in the configuration, on the wire and in the operator's commands."""
    return bool(_USER_NAME.fullmatch(name))


class ConfigError(Exception):
    """A configuration problem, naming the file and the key at fault."""

    def __init__(self, message: str, *, source: Path | None = None, key: str | None = None):
        where = str(source) if source else "built-in defaults"
        prefix = f"{where}: {key}: " if key else f"{where}: "
        super().__init__(prefix + message)
        self.source = source
        self.key = key


@dataclass(frozen=True)
class LastlogConfig:
    """Where `lastlog` reads from and how much it may print."""

    #: Sources tried in order; "journal" means the systemd journal via journalctl.
    sources: tuple[str, ...] = AUTO_LOG_SOURCES
    lines: int = 10
    max_lines: int = 10000


@dataclass(frozen=True)
class ComphashConfig:
    """Which files `comphash` may read, how, and how many at once."""

    roots: tuple[str, ...] = ("/",)
    algorithm: str = "sha256"
    max_concurrent: int = 4
    #: None: max_concurrent - 1 (at least 1), so one user always leaves a slot for the others.
    max_concurrent_per_user: int | None = None

    @property
    def per_user_limit(self) -> int:
        if self.max_concurrent_per_user is not None:
            return self.max_concurrent_per_user
        return max(1, self.max_concurrent - 1)


@dataclass(frozen=True)
class ShellConfig:
    """The interactive shell: its prompt, with `{user}` and `{host}` filled in."""

    prompt: str = "{user}@{host}> "


@dataclass(frozen=True)
class LimitsConfig:
    """Connection limits and timers (top-level keys; each has an OpenSSH counterpart)."""

    banner_version: str = "conchcmd"
    login_grace_time: float = 30.0  # LoginGraceTime
    idle_timeout: float = 0.0  # ChannelTimeout/UnusedConnectionTimeout; 0 = off
    keepalive_interval: float = 0.0  # ClientAliveInterval; 0 = off
    keepalive_count_max: int = 3  # ClientAliveCountMax
    max_auth_tries: int = 6  # MaxAuthTries
    max_password_checks: int = 2  # none (sshd's bcrypt runs in its per-connection process)
    max_sessions: int = 10  # MaxSessions
    max_startups: int = 100  # MaxStartups (without random early drop)
    max_startups_per_source: int = 10  # PerSourceMaxStartups
    penalty_seconds: float = 30.0  # PerSourcePenalties
    penalty_max_seconds: float = 600.0  # PerSourcePenalties max
    #: PerSourcePenaltyExemptList: address patterns (hostmatch.py syntax) never penalised.
    penalty_exempt: tuple[str, ...] = ()


KEX_ALGORITHMS = ("mlkem768x25519-sha256", "curve25519-sha256", "curve25519-sha256@libssh.org")
CIPHERS = (
    "chacha20-poly1305@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)
MACS = ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com")
#: Implemented but not offered unless named: encrypt-and-MAC (ssh-audit warns about it).
OPTIONAL_MACS = ("hmac-sha2-256", "hmac-sha2-512")


@dataclass(frozen=True)
class AlgorithmsConfig:
    """What the transport offers, in preference order; configuration may only narrow it."""

    kex_algorithms: tuple[str, ...] = KEX_ALGORITHMS
    ciphers: tuple[str, ...] = CIPHERS
    macs: tuple[str, ...] = MACS


#: The command registry's names (builtin.py); `[users.NAME] commands` may list only these.
COMMAND_NAMES = ("lastlog", "comphash", "help", "exit")
#: Always allowed: they only describe or end the session.
SESSION_COMMANDS = frozenset({"help", "exit"})
_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12]\d|3[01])\$[./A-Za-z0-9]{53}")  # costs bcrypt takes: 04-31


@dataclass(frozen=True)
class UserPolicy:
    """`[users.NAME]`: what one user may do beyond what their key or certificate says."""

    commands: frozenset[str] | None = None  # None: every command
    comphash_roots: tuple[str, ...] | None = None  # None: the global [comphash] roots
    password_bcrypt: bytes | None = None

    def permits(self, command: str) -> bool:
        return self.commands is None or command in self.commands or command in SESSION_COMMANDS


AUDIT_FAILURE_MODES = ("refuse", "continue")
#: `audit_log` values that are not file names ("-" is stdout).
AUDIT_SINKS = ("-", "syslog", "journal")
LOG_TARGETS = ("stdout", "syslog", "journal")


@dataclass(frozen=True)
class LogConfig:
    """`[log]`: where the log lines go, and the syslog address (None: /dev/log)."""

    target: str = "stdout"
    syslog_address: str | None = None


def default_clients_per_user(max_clients: int, configured: int | None = None) -> int:
    """`max_clients_per_user`: as configured, else half of `max_clients`, at least 1."""
    return configured if configured is not None else max(1, max_clients // 2)


#: Limit keys, in the order check-config prints them.
LIMIT_KEYS = tuple(LimitsConfig.__dataclass_fields__)


@dataclass(frozen=True)
class Config:
    """The whole effective configuration of one server."""

    listen: tuple[str, ...] = ("tcp:2222",)
    #: Address patterns of the proxies a `haproxy:` listener accepts connections (and their
    #: PROXY headers, which name the client) from; anyone else is refused.
    proxy_from: tuple[str, ...] = ("127.0.0.1", "::1")
    #: Where Prometheus scrapes /metrics (a server endpoint description); None: no metrics.
    metrics_listen: str | None = None
    host_keys_dir: Path = Path("keys")
    authorized_keys: str = "keys/authorized_keys/%u"
    max_clients: int = 10
    #: None: half of max_clients, at least 1 (see `clients_per_user`).
    max_clients_per_user: int | None = None
    tcp_keepalive: bool = True  # sshd's TCPKeepAlive
    audit_log: str = "audit.jsonl"
    audit_failure: str = "refuse"
    audit_group: str | None = None  # a group name: the audit file is then created 0640 with it
    lastlog: LastlogConfig = field(default_factory=LastlogConfig)
    comphash: ComphashConfig = field(default_factory=ComphashConfig)
    shell: ShellConfig = field(default_factory=ShellConfig)
    log: LogConfig = field(default_factory=LogConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    algorithms: AlgorithmsConfig = field(default_factory=AlgorithmsConfig)
    trusted_user_ca_keys: str | None = None
    revoked_keys: str | None = None
    permit_user_environment: bool = False
    #: sshd's PubkeyAuthOptions for security keys: "touch-required", "verify-required" (none by default).
    pubkey_auth_options: tuple[str, ...] = ()
    strict_modes: bool = True  # StrictModes: trust key files only if root or we can write them
    users: dict[str, UserPolicy] = field(default_factory=dict)
    source: Path | None = None

    @property
    def clients_per_user(self) -> int:
        """The effective `max_clients_per_user`."""
        return default_clients_per_user(self.max_clients, self.max_clients_per_user)

    def describe(self) -> str:
        """Render the effective settings as TOML, as `check-config` prints them."""
        out = [
            f"# effective configuration ({self.source or 'built-in defaults'})",
            f"listen = {_toml_list(self.listen)}",
            f"proxy_from = {_toml_list(self.proxy_from)}",
            f"metrics_listen = {_toml_str(self.metrics_listen)}"
            if self.metrics_listen
            else "# metrics_listen unset: no metrics are served",
            f"host_keys_dir = {_toml_str(str(self.host_keys_dir))}",
            f"authorized_keys = {_toml_str(self.authorized_keys)}",
            f"max_clients = {self.max_clients}",
            f"max_clients_per_user = {self.clients_per_user}"
            if self.max_clients_per_user is not None
            else f"# max_clients_per_user = {self.clients_per_user}  (the default: half of max_clients)",
            f"tcp_keepalive = {str(self.tcp_keepalive).lower()}",
            f"audit_log = {_toml_str(self.audit_log)}",
            f"audit_failure = {_toml_str(self.audit_failure)}",
            f"audit_group = {_toml_str(self.audit_group)}"
            if self.audit_group
            else "# audit_group unset: the audit file is created 0600",
            *(f"{key} = {_toml_value(getattr(self.limits, key))}" for key in LIMIT_KEYS),
            f"kex_algorithms = {_toml_list(self.algorithms.kex_algorithms)}",
            f"ciphers = {_toml_list(self.algorithms.ciphers)}",
            f"macs = {_toml_list(self.algorithms.macs)}",
            *([f"trusted_user_ca_keys = {_toml_str(self.trusted_user_ca_keys)}"] if self.trusted_user_ca_keys else []),
            *([f"revoked_keys = {_toml_str(self.revoked_keys)}"] if self.revoked_keys else []),
            f"permit_user_environment = {str(self.permit_user_environment).lower()}",
            f"pubkey_auth_options = {_toml_list(self.pubkey_auth_options)}",
            f"strict_modes = {str(self.strict_modes).lower()}",
            "",
            "[lastlog]",
            f"path = {_toml_list(self.lastlog.sources)}",
            f"lines = {self.lastlog.lines}",
            f"max_lines = {self.lastlog.max_lines}",
            "",
            "[comphash]",
            f"roots = {_toml_list(self.comphash.roots)}",
            f"algorithm = {_toml_str(self.comphash.algorithm)}",
            f"max_concurrent = {self.comphash.max_concurrent}",
            f"max_concurrent_per_user = {self.comphash.per_user_limit}",
            "",
            "[shell]",
            f"prompt = {_toml_str(self.shell.prompt)}",
            "",
            "[log]",
            f"target = {_toml_str(self.log.target)}",
            f"syslog_address = {_toml_str(self.log.syslog_address)}"
            if self.log.syslog_address
            else '# syslog_address = "unix:/dev/log"  (the default)',
        ]
        for name, policy in sorted(self.users.items()):
            out += ["", f"[users.{_toml_key(name)}]"]
            if policy.commands is not None:
                out.append(f"commands = {_toml_list(tuple(sorted(policy.commands)))}")
            if policy.comphash_roots is not None:
                out.append(f"comphash_roots = {_toml_list(policy.comphash_roots)}")
            if policy.password_bcrypt is not None:
                out.append(f"password_bcrypt = {_toml_str(policy.password_bcrypt.decode())}")
        return "\n".join(out) + "\n"


def _toml_str(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    escaped = "".join(f"\\u{ord(c):04x}" if (ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F else c for c in escaped)
    return f'"{escaped}"'


def _toml_key(name: str) -> str:
    """A table key as TOML reads it back: bare if it can be, else quoted (`ops.team` has a dot)."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else _toml_str(name)


def _toml_value(value: object) -> str:
    if isinstance(value, tuple):
        return _toml_list(value)
    return _toml_str(value) if isinstance(value, str) else repr(value)


def _toml_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(_toml_str(v) for v in values) + "]"


class _Reader:
    """Takes typed values out of one TOML table, remembering which keys were used."""

    def __init__(self, table: dict[str, Any], prefix: str, source: Path | None):
        self.values = table
        self.prefix = prefix
        self.source = source
        self.used: set[str] = set()

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, source=self.source, key=self.prefix + key)

    def _get(self, key: str, kind: type | tuple[type, ...], kind_name: str) -> Any:
        self.used.add(key)
        if key not in self.values:
            return None
        value = self.values[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise self.error(key, f"must be {kind_name}, not {type(value).__name__}")
        return value

    def integer(self, key: str, default: int, minimum: int = 0) -> int:
        value = self._get(key, int, "an integer")
        if value is None:
            return default
        if value < minimum:
            raise self.error(key, f"must be at least {minimum}, not {value}")
        return value

    def number(self, key: str, default: float, minimum: float = 0.0) -> float:
        value = self._get(key, (int, float), "a number of seconds")
        if value is None:
            return default
        if not value >= minimum or value == float("inf"):
            raise self.error(key, f"must be a finite number of at least {minimum:g}, not {value}")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, bool, "true or false")
        return default if value is None else bool(value)

    def string(self, key: str, default: str) -> str:
        value = self._get(key, str, "a string")
        if value is None:
            return default
        if not value:
            raise self.error(key, "must not be empty")
        return value

    def strings(
        self, key: str, default: tuple[str, ...], *, allow_str: bool = False, allow_empty: bool = False
    ) -> tuple[str, ...]:
        kinds: tuple[type, ...] = (list, str) if allow_str else (list,)
        value = self._get(key, kinds, "a list of strings")
        if value is None:
            return default
        if isinstance(value, str):
            value = [value]
        if not value and not allow_empty:
            raise self.error(key, "must not be an empty list")
        for item in value:
            if not isinstance(item, str) or not item:
                raise self.error(key, "must be a list of non-empty strings")
        return tuple(value)

    def table(self, key: str) -> dict[str, Any]:
        value = self._get(key, dict, "a table")
        return value or {}

    def reject_unknown(self) -> None:
        for key in self.values:
            if key not in self.used:
                raise self.error(key, "unknown key")


def audit_group_id(name: str) -> int | None:
    """The gid of the group named by `audit_group`, or None if there is no such group."""
    try:
        return grp.getgrnam(name).gr_gid
    except (KeyError, ValueError):  # ValueError: a NUL in the name
        return None


def parse_config(text: str, *, base_dir: Path, source: Path | None = None) -> Config:
    """Parse TOML text into a Config; relative paths resolve against base_dir."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}", source=source) from None
    top = _Reader(data, "", source)

    def resolve(path: str) -> str:
        return str(base_dir / path) if not Path(path).is_absolute() else path

    listen = top.strings("listen", Config.listen)
    for description in listen:
        problem = endpoint_problem(description) or proxy_problem(description)
        if problem is not None:
            raise top.error("listen", f"{description!r} is not an endpoint Twisted can listen on: {problem}")
    proxy_from = _address_patterns(top, "proxy_from", Config.proxy_from, allow_empty=False)
    metrics_listen = top.string("metrics_listen", "") or None
    if metrics_listen is not None:
        problem = endpoint_problem(metrics_listen)
        if problem is None and metrics_listen.split(":", 1)[0].lower() == "haproxy":
            problem = "a PROXY header is for the SSH listeners, not for metrics"
        if problem is not None:
            raise top.error("metrics_listen", f"{metrics_listen!r} is not an endpoint Twisted can listen on: {problem}")
    host_keys_dir = Path(resolve(top.string("host_keys_dir", "keys")))
    authorized_keys = resolve(top.string("authorized_keys", Config.authorized_keys))
    max_clients = top.integer("max_clients", Config.max_clients, minimum=1)
    per_user = top.integer("max_clients_per_user", 0, minimum=1) if "max_clients_per_user" in data else None
    if per_user is not None and per_user > max_clients:
        raise top.error("max_clients_per_user", f"must not exceed max_clients ({max_clients})")
    tcp_keepalive = top.boolean("tcp_keepalive", Config.tcp_keepalive)
    audit_log = top.string("audit_log", Config.audit_log)
    if audit_log not in AUDIT_SINKS:
        audit_log = resolve(audit_log)
    audit_failure = top.string("audit_failure", Config.audit_failure)
    if audit_failure not in AUDIT_FAILURE_MODES:
        raise top.error("audit_failure", f"must be one of {', '.join(AUDIT_FAILURE_MODES)}, not {audit_failure!r}")
    audit_group = top.string("audit_group", "") or None
    if audit_group is not None and audit_group_id(audit_group) is None:
        raise top.error("audit_group", f"no such group: {audit_group!r}")

    lastlog_table = _Reader(top.table("lastlog"), "lastlog.", source)
    sources = lastlog_table.strings("path", AUTO_LOG_SOURCES, allow_str=True)
    sources = tuple(s if s == "journal" else resolve(s) for s in sources)
    lines = lastlog_table.integer("lines", LastlogConfig.lines, minimum=1)
    max_lines = lastlog_table.integer("max_lines", LastlogConfig.max_lines, minimum=1)
    if lines > max_lines:
        raise lastlog_table.error("lines", f"must not exceed max_lines ({max_lines})")
    lastlog_table.reject_unknown()

    comphash_table = _Reader(top.table("comphash"), "comphash.", source)
    roots = comphash_table.strings("roots", ComphashConfig.roots)
    for root in roots:
        if not Path(root).is_absolute():
            raise comphash_table.error("roots", f"{root!r} must be an absolute path")
    algorithm = comphash_table.string("algorithm", ComphashConfig.algorithm)
    if algorithm not in HASH_ALGORITHMS:
        raise comphash_table.error("algorithm", f"must be one of {', '.join(HASH_ALGORITHMS)}")
    hashlib.new(algorithm)  # fails early if this Python lacks it
    max_concurrent = comphash_table.integer("max_concurrent", ComphashConfig.max_concurrent, minimum=1)
    hashes_per_user = comphash_table.integer(
        "max_concurrent_per_user", ComphashConfig(max_concurrent=max_concurrent).per_user_limit, minimum=1
    )
    if hashes_per_user > max_concurrent:
        raise comphash_table.error("max_concurrent_per_user", f"must not exceed max_concurrent ({max_concurrent})")
    comphash_table.reject_unknown()

    shell_table = _Reader(top.table("shell"), "shell.", source)
    prompt = shell_table.string("prompt", ShellConfig.prompt)
    problem = _prompt_problem(prompt)
    if problem is not None:
        raise shell_table.error("prompt", f"may use only {{user}} and {{host}} ({problem})")
    shell_table.reject_unknown()
    log_config = _parse_log(_Reader(top.table("log"), "log.", source))
    limits = _parse_limits(top)
    algorithms = AlgorithmsConfig(
        kex_algorithms=_algorithm_list(top, "kex_algorithms", KEX_ALGORITHMS, KEX_ALGORITHMS),
        ciphers=_algorithm_list(top, "ciphers", CIPHERS, CIPHERS),
        macs=_algorithm_list(top, "macs", MACS, MACS + OPTIONAL_MACS),
    )
    trusted = top.string("trusted_user_ca_keys", "") or None
    revoked = top.string("revoked_keys", "") or None
    permit_environment = top.boolean("permit_user_environment", False)
    pubkey_auth_options = _pubkey_auth_options(top)
    strict_modes = top.boolean("strict_modes", Config.strict_modes)
    users = _parse_users(top, roots, resolve)
    top.reject_unknown()
    return Config(
        listen=listen,
        proxy_from=proxy_from,
        metrics_listen=metrics_listen,
        host_keys_dir=host_keys_dir,
        authorized_keys=authorized_keys,
        max_clients=max_clients,
        max_clients_per_user=per_user,
        tcp_keepalive=tcp_keepalive,
        audit_log=audit_log,
        audit_failure=audit_failure,
        audit_group=audit_group,
        lastlog=LastlogConfig(sources=sources, lines=lines, max_lines=max_lines),
        comphash=ComphashConfig(
            roots=roots, algorithm=algorithm, max_concurrent=max_concurrent, max_concurrent_per_user=hashes_per_user
        ),
        shell=ShellConfig(prompt=prompt),
        log=log_config,
        limits=limits,
        algorithms=algorithms,
        trusted_user_ca_keys=resolve(trusted) if trusted else None,
        revoked_keys=resolve(revoked) if revoked else None,
        permit_user_environment=permit_environment,
        pubkey_auth_options=pubkey_auth_options,
        strict_modes=strict_modes,
        users=users,
        source=source,
    )


def _prompt_problem(prompt: str) -> str | None:
    """Why the prompt is not plain text with {user} and {host} fields, if it is not.

    A format spec or conversion is refused, not merely tried: `{user:999999999999}` would make
    str.format allocate that many characters.
    """
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(prompt)]
    except ValueError as e:
        return str(e)
    for name, spec, conversion in fields:
        if name is not None and (name not in ("user", "host") or spec or conversion):
            return f"field {{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}"
    return None


_BANNER = re.compile(r"[!-,.-~]{1,64}")  # printable ASCII, no space, no '-' (RFC 4253 4.2)


def _parse_users(top: _Reader, roots: tuple[str, ...], resolve: Any) -> dict[str, UserPolicy]:
    users: dict[str, UserPolicy] = {}
    for name, table in top.table("users").items():
        if not valid_user_name(name):
            raise top.error(f"users.{name}", "is not a valid user name")
        if not isinstance(table, dict):
            raise top.error(f"users.{name}", "must be a table")
        reader = _Reader(table, f"users.{name}.", top.source)
        commands = reader.strings("commands", ()) if "commands" in table else None
        for command in commands or ():
            if command not in COMMAND_NAMES:
                raise reader.error("commands", f"{command!r} is not a command ({', '.join(COMMAND_NAMES)})")
        user_roots = reader.strings("comphash_roots", ()) if "comphash_roots" in table else None
        for root in user_roots or ():
            if not Path(root).is_absolute():
                raise reader.error("comphash_roots", f"{root!r} must be an absolute path")
            if not any(Path(root).is_relative_to(r) for r in roots):
                raise reader.error("comphash_roots", f"{root!r} is not inside [comphash] roots")
        password = reader.string("password_bcrypt", "") or None
        if password is not None and not _BCRYPT.fullmatch(password):
            raise reader.error("password_bcrypt", "is not a bcrypt hash (make one with `conchcmd hash-password`)")
        reader.reject_unknown()
        users[name] = UserPolicy(
            commands=frozenset(commands) if commands is not None else None,
            comphash_roots=user_roots,
            password_bcrypt=password.encode() if password else None,
        )
    return users


def _algorithm_list(top: _Reader, key: str, default: tuple[str, ...], known: tuple[str, ...]) -> tuple[str, ...]:
    names = top.strings(key, default)
    for name in names:
        if name not in known:
            raise top.error(key, f"{name!r} is not implemented; choose from {', '.join(known)}")
    if len(set(names)) != len(names):
        raise top.error(key, "lists an algorithm twice")
    return names


PUBKEY_AUTH_OPTIONS = ("touch-required", "verify-required")


def _pubkey_auth_options(top: _Reader) -> tuple[str, ...]:
    """`pubkey_auth_options`: a list of "touch-required" / "verify-required", each at most once."""
    names = top.strings("pubkey_auth_options", (), allow_empty=True)
    for name in names:
        if name not in PUBKEY_AUTH_OPTIONS:
            raise top.error("pubkey_auth_options", f"{name!r} is not one of {', '.join(PUBKEY_AUTH_OPTIONS)}")
    if len(set(names)) != len(names):
        raise top.error("pubkey_auth_options", "lists an option twice")
    return names


def _parse_log(table: _Reader) -> LogConfig:
    from conchcmd.core.logtargets import parse_syslog_address

    target = table.string("target", LogConfig.target)
    if target not in LOG_TARGETS:
        raise table.error("target", f"must be one of {', '.join(LOG_TARGETS)}, not {target!r}")
    address = table.string("syslog_address", "") or None
    try:
        parse_syslog_address(address)
    except ValueError as e:
        raise table.error("syslog_address", str(e)) from None
    table.reject_unknown()
    return LogConfig(target=target, syslog_address=address)


def _parse_limits(top: _Reader) -> LimitsConfig:
    d = LimitsConfig()
    banner = top.string("banner_version", d.banner_version)
    if not _BANNER.fullmatch(banner):
        raise top.error("banner_version", "must be 1-64 printable ASCII characters without spaces or '-'")
    limits = LimitsConfig(
        banner_version=banner,
        login_grace_time=top.number("login_grace_time", d.login_grace_time, minimum=1),
        idle_timeout=top.number("idle_timeout", d.idle_timeout),
        keepalive_interval=top.number("keepalive_interval", d.keepalive_interval),
        keepalive_count_max=top.integer("keepalive_count_max", d.keepalive_count_max, minimum=1),
        max_auth_tries=top.integer("max_auth_tries", d.max_auth_tries, minimum=1),
        max_password_checks=top.integer("max_password_checks", d.max_password_checks, minimum=1),
        max_sessions=top.integer("max_sessions", d.max_sessions, minimum=1),
        max_startups=top.integer("max_startups", d.max_startups, minimum=1),
        max_startups_per_source=top.integer("max_startups_per_source", d.max_startups_per_source, minimum=1),
        penalty_seconds=top.number("penalty_seconds", d.penalty_seconds),
        penalty_max_seconds=top.number("penalty_max_seconds", d.penalty_max_seconds),
        penalty_exempt=_address_patterns(top, "penalty_exempt"),
    )
    if limits.penalty_max_seconds < limits.penalty_seconds:
        raise top.error("penalty_max_seconds", "must not be less than penalty_seconds")
    return limits


def _address_patterns(
    top: _Reader, key: str, default: tuple[str, ...] = (), *, allow_empty: bool = True
) -> tuple[str, ...]:
    """A list of address patterns as `from=` takes them, each checked as sshd checks
    PerSourcePenaltyExemptList: a host name, or a mask that does not fit its address, is an error."""
    patterns = top.strings(key, default, allow_empty=allow_empty)
    for pattern in patterns:
        try:
            check_pattern(pattern)
        except PatternError as e:
            raise top.error(key, str(e)) from None
        if addr_match_list(None, pattern) != 0:
            raise top.error(key, f"{pattern!r}: the mask length is longer than the address or leaves host bits set")
    return patterns


def load_config(path: Path | None, *, cwd: Path) -> Config:
    """Load the config file, or `conchcmd.toml` in cwd if present, or built-in defaults."""
    if path is None:
        candidate = cwd / DEFAULT_CONFIG_NAME
        if not candidate.exists():
            return parse_config("", base_dir=cwd)
        path = candidate
    path = path if path.is_absolute() else cwd / path
    if ".." in path.parts:
        path = path.resolve()  # as the kernel follows it; printed paths then name the real directory
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", source=path) from None
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", source=path) from None
    return parse_config(text, base_dir=path.parent, source=path)
