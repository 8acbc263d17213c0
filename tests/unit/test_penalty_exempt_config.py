"""`penalty_exempt` in the configuration: parsed strictly (sshd's rules for
PerSourcePenaltyExemptList, plus conchcmd's refusal of host names), shown by `check-config`."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from conchcmd.core.config import ConfigError, parse_config
from conchcmd.edge import cli


def exempt(value: str) -> tuple[str, ...]:
    return parse_config(f"penalty_exempt = {value}", base_dir=Path("/srv")).limits.penalty_exempt


def test_default_is_nobody() -> None:
    assert parse_config("", base_dir=Path("/srv")).limits.penalty_exempt == ()
    assert exempt("[]") == ()


def test_addresses_blocks_wildcards_and_negations() -> None:
    value = '["192.0.2.0/24", "198.51.100.7", "10.1.*", "!192.0.2.66", "2001:db8::/32", "::1", "fe80::?", "*"]'
    assert exempt(value) == (
        "192.0.2.0/24",
        "198.51.100.7",
        "10.1.*",
        "!192.0.2.66",
        "2001:db8::/32",
        "::1",
        "fe80::?",
        "*",  # everybody: the same as penalty_seconds = 0
    )


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ('["10.0.0.1/8"]', "'10.0.0.1/8': the mask length is longer than the address or leaves host bits set"),
        ('["192.0.2.0/33"]', "'192.0.2.0/33': the mask length is longer than the address or leaves host bits set"),
        ('["2001:db8::1/32"]', "'2001:db8::1/32': the mask length"),
        ('["10.0.0.0/129"]', "'10.0.0.0/129' is not an address, CIDR block or address wildcard"),
        ('["bastion.example.com"]', "host names are not resolved"),
        ('["192.0.2.1,198.51.100.1"]', "is not an address"),  # one pattern per list item
        ('["192.0.2.1 "]', "is not an address"),
        ('["!"]', "empty pattern"),
        ('[""]', "must be a list of non-empty strings"),
        ('"192.0.2.1"', "must be a list of strings, not str"),
        ("[1]", "must be a list of non-empty strings"),
    ],
)
def test_bad_patterns_are_errors_naming_the_key(value: str, says: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(f"penalty_exempt = {value}", base_dir=Path("/srv"), source=Path("/c.toml"))
    assert str(e.value).startswith("/c.toml: penalty_exempt: ")
    assert says in str(e.value)


def test_check_config_shows_it_and_what_it_shows_reads_back(tmp_path: Path) -> None:
    config = tmp_path / "conchcmd.toml"
    config.write_text('penalty_exempt = ["192.0.2.0/24", "!192.0.2.66"]\n')
    out = io.StringIO()
    assert cli.main(["check-config", "--config", str(config)], out=out) == 0
    assert 'penalty_exempt = ["192.0.2.0/24", "!192.0.2.66"]\n' in out.getvalue()
    again = parse_config(out.getvalue(), base_dir=tmp_path)
    assert again.limits == parse_config(config.read_text(), base_dir=tmp_path).limits
    out = io.StringIO()
    config.write_text("")
    assert cli.main(["check-config", "--config", str(config)], out=out) == 0
    assert "penalty_exempt = []\n" in out.getvalue()
