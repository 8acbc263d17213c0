"""conchcmd.core.config: strict TOML parsing, path resolution, load_config's file choice, describe()."""

from __future__ import annotations

from pathlib import Path

import pytest

from conchcmd.core.config import (
    AUTO_LOG_SOURCES,
    DEFAULT_CONFIG_NAME,
    ComphashConfig,
    Config,
    ConfigError,
    LastlogConfig,
    load_config,
    parse_config,
)

BASE = Path("/srv/conchcmd")
SOURCE = BASE / "conchcmd.toml"

FULL = """
listen = ["tcp:2200", "tcp6:2201:interface=\\\\:\\\\:1"]
host_keys_dir = "/etc/conchcmd/keys"
authorized_keys = "/etc/conchcmd/users/%u.keys"
max_clients = 3
audit_log = "/var/log/conchcmd/audit.jsonl"

[lastlog]
path = ["/var/log/app.log", "journal"]
lines = 25
max_lines = 500

[comphash]
roots = ["/srv", "/etc"]
algorithm = "blake2b"
max_concurrent = 2
max_concurrent_per_user = 2
"""


def parse(text: str) -> Config:
    return parse_config(text, base_dir=BASE, source=SOURCE)


def config_error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value


def test_empty_file_gives_the_documented_defaults_resolved_against_base_dir() -> None:
    config = parse_config("", base_dir=BASE)
    assert config == Config(
        listen=("tcp:2222",),
        host_keys_dir=BASE / "keys",
        authorized_keys=str(BASE / "keys/authorized_keys/%u"),
        max_clients=10,
        audit_log=str(BASE / "audit.jsonl"),
        lastlog=LastlogConfig(sources=("/var/log/syslog", "/var/log/messages", "journal"), lines=10, max_lines=10000),
        comphash=ComphashConfig(roots=("/",), algorithm="sha256", max_concurrent=4, max_concurrent_per_user=3),
        source=None,
    )


def test_every_key_is_parsed() -> None:
    config = parse(FULL)
    assert config == Config(
        listen=("tcp:2200", "tcp6:2201:interface=\\:\\:1"),
        host_keys_dir=Path("/etc/conchcmd/keys"),
        authorized_keys="/etc/conchcmd/users/%u.keys",
        max_clients=3,
        audit_log="/var/log/conchcmd/audit.jsonl",
        lastlog=LastlogConfig(sources=("/var/log/app.log", "journal"), lines=25, max_lines=500),
        comphash=ComphashConfig(
            roots=("/srv", "/etc"), algorithm="blake2b", max_concurrent=2, max_concurrent_per_user=2
        ),
        source=SOURCE,
    )


def test_relative_paths_resolve_against_base_dir() -> None:
    config = parse(
        """
        host_keys_dir = "state/keys"
        authorized_keys = "users/%u"
        audit_log = "logs/audit.jsonl"
        [lastlog]
        path = ["logs/app.log", "journal", "/var/log/syslog"]
        """
    )
    assert config.host_keys_dir == BASE / "state/keys"
    assert config.authorized_keys == str(BASE / "users/%u")
    assert config.audit_log == str(BASE / "logs/audit.jsonl")
    # "journal" is a source name, not a path; absolute paths stay as they are.
    assert config.lastlog.sources == (str(BASE / "logs/app.log"), "journal", "/var/log/syslog")


def test_audit_log_dash_means_stdout_and_is_not_resolved() -> None:
    assert parse('audit_log = "-"').audit_log == "-"


def test_lastlog_path_may_be_a_single_string() -> None:
    assert parse('[lastlog]\npath = "/var/log/app.log"').lastlog.sources == ("/var/log/app.log",)


def test_lastlog_path_may_be_a_list() -> None:
    config = parse('[lastlog]\npath = ["/var/log/a.log", "/var/log/b.log"]')
    assert config.lastlog.sources == ("/var/log/a.log", "/var/log/b.log")


def test_unknown_top_level_key_names_the_key_and_the_file() -> None:
    error = config_error("max_client = 5")
    assert str(error) == f"{SOURCE}: max_client: unknown key"
    assert error.key == "max_client"
    assert error.source == SOURCE


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[lastlog]\nlenght = 5", "lastlog.lenght"),
        ("[comphash]\nroot = ['/']", "comphash.root"),
    ],
)
def test_unknown_table_key_names_the_dotted_key_and_the_file(text: str, key: str) -> None:
    error = config_error(text)
    assert str(error) == f"{SOURCE}: {key}: unknown key"


def test_unknown_table_is_an_unknown_key() -> None:
    assert str(config_error("[sshd]\nport = 22")) == f"{SOURCE}: sshd: unknown key"


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ('max_clients = "10"', "max_clients", "must be an integer, not str"),
        ("max_clients = true", "max_clients", "must be an integer, not bool"),
        ("max_clients = 2.5", "max_clients", "must be an integer, not float"),
        ("max_clients = 0", "max_clients", "must be at least 1, not 0"),
        ("[lastlog]\nlines = false", "lastlog.lines", "must be an integer, not bool"),
        ('[lastlog]\nmax_lines = "many"', "lastlog.max_lines", "must be an integer, not str"),
        ('[comphash]\nmax_concurrent = "4"', "comphash.max_concurrent", "must be an integer, not str"),
        ("[comphash]\nmax_concurrent_per_user = 0", "comphash.max_concurrent_per_user", "must be at least 1, not 0"),
        (
            "[comphash]\nmax_concurrent = 2\nmax_concurrent_per_user = 3",
            "comphash.max_concurrent_per_user",
            "must not exceed max_concurrent (2)",
        ),
        ("listen = [2222, 2223]", "listen", "must be a list of non-empty strings"),
        ('listen = "tcp:2222"', "listen", "must be a list of strings, not str"),
        ("listen = []", "listen", "must not be an empty list"),
        ("[comphash]\nroots = [1]", "comphash.roots", "must be a list of non-empty strings"),
        ("[lastlog]\npath = [1, 2]", "lastlog.path", "must be a list of non-empty strings"),
        ("host_keys_dir = 5", "host_keys_dir", "must be a string, not int"),
        ('authorized_keys = ""', "authorized_keys", "must not be empty"),
        ("lastlog = 5", "lastlog", "must be a table, not int"),
    ],
)
def test_wrong_types_name_the_key(text: str, key: str, message: str) -> None:
    error = config_error(text)
    assert str(error) == f"{SOURCE}: {key}: {message}"
    assert error.key == key


def test_lines_above_max_lines_is_an_error_naming_lines() -> None:
    error = config_error("[lastlog]\nlines = 20\nmax_lines = 10")
    assert str(error) == f"{SOURCE}: lastlog.lines: must not exceed max_lines (10)"


def test_lines_equal_to_max_lines_is_fine() -> None:
    assert parse("[lastlog]\nlines = 10\nmax_lines = 10").lastlog.lines == 10


def test_unknown_algorithm_is_refused_with_the_choices() -> None:
    error = config_error('[comphash]\nalgorithm = "crc32"')
    assert str(error) == f"{SOURCE}: comphash.algorithm: must be one of sha256, sha1, sha512, blake2b, md5"


def test_relative_comphash_root_is_refused() -> None:
    error = config_error('[comphash]\nroots = ["/srv", "data"]')
    assert str(error) == f"{SOURCE}: comphash.roots: 'data' must be an absolute path"


def test_invalid_toml_names_the_file() -> None:
    error = config_error("listen = [")
    assert str(error).startswith(f"{SOURCE}: not valid TOML: ")
    assert error.key is None


def test_error_without_a_file_says_built_in_defaults() -> None:
    with pytest.raises(ConfigError, match=r"^built-in defaults: max_clients: "):
        parse_config("max_clients = -1", base_dir=BASE)


def test_load_config_picks_conchcmd_toml_from_cwd(tmp_path: Path) -> None:
    (tmp_path / DEFAULT_CONFIG_NAME).write_text('max_clients = 7\nhost_keys_dir = "hk"\n')
    config = load_config(None, cwd=tmp_path)
    assert config.max_clients == 7
    assert config.host_keys_dir == tmp_path / "hk"
    assert config.source == tmp_path / DEFAULT_CONFIG_NAME


def test_load_config_without_a_file_falls_back_to_defaults_in_cwd(tmp_path: Path) -> None:
    config = load_config(None, cwd=tmp_path)
    assert config == parse_config("", base_dir=tmp_path)
    assert config.source is None
    assert config.audit_log == str(tmp_path / "audit.jsonl")


def test_load_config_relative_path_is_taken_from_cwd_and_paths_resolve_beside_it(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "server.toml").write_text('audit_log = "audit/log.jsonl"\n')
    config = load_config(Path("etc/server.toml"), cwd=tmp_path)
    assert config.audit_log == str(tmp_path / "etc" / "audit/log.jsonl")
    assert config.source == tmp_path / "etc" / "server.toml"


def test_load_config_missing_named_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read: No such file or directory"):
        load_config(tmp_path / "nope.toml", cwd=tmp_path)


def test_load_config_error_names_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / DEFAULT_CONFIG_NAME
    path.write_text("[comphash]\nmax_concurrent = 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(None, cwd=tmp_path)
    assert str(info.value) == f"{path}: comphash.max_concurrent: must be at least 1, not 0"


def test_load_config_refuses_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b'audit_log = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(path, cwd=tmp_path)


def _round_trip(config: Config) -> Config:
    return parse_config(config.describe(), base_dir=Path("/elsewhere"), source=config.source)


def test_describe_of_defaults_round_trips() -> None:
    config = parse_config("", base_dir=BASE)
    assert _round_trip(config) == config


def test_describe_of_full_config_round_trips() -> None:
    config = parse(FULL)
    assert _round_trip(config) == config


def test_describe_round_trips_quotes_and_backslashes() -> None:
    config = parse(
        """
        listen = ['unix:/run/con"ch\\cmd.sock']
        audit_log = 'C:\\audit "x".jsonl'
        """
    )
    assert _round_trip(config) == config


def test_describe_round_trips_control_characters_in_paths() -> None:
    # TOML basic strings cannot hold raw control characters; describe() must escape them.
    config = parse('audit_log = "/var/log/a\\u007fb\\nc.jsonl"')
    assert _round_trip(config) == config


def test_describe_shows_the_source_and_every_section() -> None:
    text = parse(FULL).describe()
    assert text.splitlines()[0] == f"# effective configuration ({SOURCE})"
    assert "[lastlog]" in text
    assert "[comphash]" in text
    assert 'path = ["/var/log/app.log", "journal"]' in text
    assert AUTO_LOG_SOURCES[0] in parse_config("", base_dir=BASE).describe()


@pytest.mark.parametrize(
    ("text", "per_user"),
    [
        ("", 5),
        ("max_clients = 3", 1),
        ("max_clients = 1", 1),
        ("max_clients = 1000", 500),
        ("max_clients_per_user = 10", 10),
    ],
)
def test_max_clients_per_user_defaults_to_half_of_max_clients(text: str, per_user: int) -> None:
    config = parse(text)
    assert config.clients_per_user == per_user
    assert f"max_clients_per_user = {per_user}" in config.describe()
    assert parse(config.describe()) == config


def test_new_top_level_keys_and_their_defaults() -> None:
    config = parse("")
    assert (config.tcp_keepalive, config.audit_failure) == (True, "refuse")
    assert "\ntcp_keepalive = true\n" in config.describe() and '\naudit_failure = "refuse"\n' in config.describe()
    config = parse('tcp_keepalive = false\naudit_failure = "continue"')
    assert (config.tcp_keepalive, config.audit_failure) == (False, "continue")
    assert parse(config.describe()) == config


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("max_clients_per_user = 0", "max_clients_per_user", "must be at least 1, not 0"),
        ("max_clients_per_user = 11", "max_clients_per_user", "must not exceed max_clients (10)"),
        ('max_clients_per_user = "2"', "max_clients_per_user", "must be an integer, not str"),
        ('tcp_keepalive = "yes"', "tcp_keepalive", "must be true or false, not str"),
        ('audit_failure = "ignore"', "audit_failure", "must be one of refuse, continue, not 'ignore'"),
    ],
)
def test_new_keys_are_parsed_strictly(text: str, key: str, message: str) -> None:
    assert str(config_error(text)) == f"{SOURCE}: {key}: {message}"


def test_max_password_checks_is_a_limit_of_at_least_one() -> None:
    assert parse_config("", base_dir=BASE).limits.max_password_checks == 2
    config = parse("max_password_checks = 3")
    assert config.limits.max_password_checks == 3
    assert "max_password_checks = 3" in config.describe().splitlines()
    assert str(config_error("max_password_checks = 0")) == f"{SOURCE}: max_password_checks: must be at least 1, not 0"
