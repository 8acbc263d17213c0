"""authorized_keys options as OpenSSH parses and applies them, the from= matcher, expiry-time,
their enforcement by KeyAuthorizer, and the policy tools (`conchcmd check`, `hash-password`)."""

from __future__ import annotations

import io
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import bcrypt
import pytest
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from conchcmd.core.hostmatch import PatternError, match_address_list, split_patterns
from conchcmd.edge.cli import main
from conchcmd.policy.auth import KeyAuthorizer, KeyRefused, verify_password
from conchcmd.policy.authorized_keys import (
    AuthorizedKeysFiles,
    KeyOptions,
    OptionError,
    OptionsSyntaxError,
    interpret_options,
    parse_authorized_keys,
    parse_expiry,
    parse_options,
)
from conchcmd.policy.certs import RevokedKeys, TrustedCAs

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBPsUyXmMVKVpG1ELXNg7KyYVaQS5YUWxyw5ApwB45Dv k"


def options_of(line: str, **kwargs: bool) -> KeyOptions:
    options, _ = parse_options(line)
    return interpret_options(options, **kwargs)


# -- the parser: OpenSSH's quoting quirks ------------------------------------------------------


def test_quoted_commas_stay_inside_the_value() -> None:
    options, rest = parse_options(f'command="echo a,b",no-pty {KEY}')
    assert options == [("command", "echo a,b"), ("no-pty", None)]
    assert rest == KEY


def test_quoted_value_keeps_spaces_and_the_line_goes_on_after_it() -> None:
    options, rest = parse_options(f'from="10.0.0.1,10.0.0.2",command="lastlog -n 3"\t{KEY}')
    assert options == [("from", "10.0.0.1,10.0.0.2"), ("command", "lastlog -n 3")]
    assert rest == KEY


def test_escaped_quotes_inside_a_value() -> None:
    options, rest = parse_options(f'command="say \\"hi\\"" {KEY}')
    assert options == [("command", 'say "hi"')]
    assert rest == KEY


def test_escaped_quote_followed_by_comma_is_still_inside() -> None:
    options, _ = parse_options(f'command="a \\",b",pty {KEY}')
    assert options == [("command", 'a ",b'), ("pty", None)]


def test_backslash_before_anything_but_a_quote_is_kept() -> None:
    options, _ = parse_options(f'command="comphash C:\\\\x \\n" {KEY}')
    assert options == [("command", "comphash C:\\\\x \\n")]


@pytest.mark.parametrize(
    ("text", "names"),
    [
        (f"NO-PTY {KEY}", ["no-pty"]),
        (f'Command="lastlog" {KEY}', ["command"]),
        (f'RESTRICT,Pty,FROM="10.0.0.1" {KEY}', ["restrict", "pty", "from"]),
        (f"No-X11-Forwarding,Cert-Authority {KEY}", ["no-x11-forwarding", "cert-authority"]),
    ],
)
def test_option_names_in_any_case(text: str, names: list[str]) -> None:
    options, _ = parse_options(text)
    assert [name for name, _ in options] == names


def test_option_names_in_any_case_mean_the_same() -> None:
    meaning = options_of(f'NO-PTY,Command="lastlog -n 1",FROM="10.0.0.1" {KEY}')
    assert meaning == KeyOptions(command="lastlog -n 1", from_patterns=("10.0.0.1",), pty=False)


def test_values_keep_their_case() -> None:
    assert options_of(f'COMMAND="Help Lastlog" {KEY}').command == "Help Lastlog"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"command=lastlog {KEY}", "missing start quote"),
        (f'command="lastlog {KEY}', "unterminated quote"),
        (f'command="x"no-pty {KEY}', "unknown key option 'command'"),
        (f"no-pty;pty {KEY}", "unknown key option 'no-pty;pty'"),
        ("no-pty,", "unexpected end-of-options"),
    ],
)
def test_syntax_errors(text: str, message: str) -> None:
    with pytest.raises(OptionsSyntaxError, match=message):
        parse_options(text)


@pytest.mark.parametrize(
    ("text", "names"),
    [(f"no-pty, {KEY}", ["no-pty"]), (f",no-pty {KEY}", ["no-pty"]), (f"restrict,,pty {KEY}", ["restrict", "pty"])],
)
def test_empty_items_are_skipped_as_sshd_skips_them(text: str, names: list[str]) -> None:
    options, rest = parse_options(text)
    assert [name for name, _ in options] == names and rest == KEY


@pytest.mark.parametrize("flag", ["no-pty", "pty", "restrict", "cert-authority", "no-port-forwarding", "no-user-rc"])
def test_flags_given_a_value_are_refused(flag: str) -> None:
    with pytest.raises(OptionsSyntaxError, match="unknown key option"):
        options_of(f'{flag}="yes" {KEY}')


@pytest.mark.parametrize("name", ["command", "from", "expiry-time", "principals", "environment", "permitopen"])
def test_value_options_without_a_value_are_refused(name: str) -> None:
    with pytest.raises(OptionsSyntaxError, match="unknown key option"):
        options_of(f"{name} {KEY}")


@pytest.mark.parametrize(
    "text",
    [
        f'command="lastlog",command="help" {KEY}',
        f'command="lastlog",COMMAND="lastlog" {KEY}',
        f'from="10.0.0.1",from="10.0.0.2" {KEY}',
        f'principals="a",principals="b" {KEY}',
    ],
)
def test_options_given_twice_are_refused(text: str) -> None:
    with pytest.raises(OptionError, match="multiple"):
        options_of(text)


def test_expiry_time_given_twice_keeps_the_earlier_as_sshd_does() -> None:
    assert options_of(f'expiry-time="20310101Z",expiry-time="20300101Z" {KEY}').expiry == parse_expiry("20300101Z")


@pytest.mark.parametrize(
    ("options", "pty"),
    [
        ("", True),
        ("restrict", False),
        ("restrict,pty", True),
        ("pty,restrict", False),
        ("no-pty", False),
        ("no-pty,pty", True),
        ("pty,no-pty", False),
        ("restrict,pty,no-pty", False),
        ("RESTRICT,PTY", True),
    ],
)
def test_restrict_and_pty_apply_in_order(options: str, pty: bool) -> None:
    parsed, _ = parse_options(f"{options} {KEY}") if options else ([], KEY)
    assert interpret_options(parsed).pty is pty


def test_cert_authority_with_principals() -> None:
    meaning = options_of(f'cert-authority,principals="ops, dev,,admin" {KEY}')
    assert meaning.cert_authority is True
    assert meaning.principals == "ops, dev,,admin"  # kept as written: sshd's match_list splits it


def test_cert_authority_alone_has_no_principals_option() -> None:
    meaning = options_of(f"cert-authority {KEY}")
    assert meaning.cert_authority is True and meaning.principals is None


def test_environment_is_refused_unless_permitted() -> None:
    with pytest.raises(OptionError, match="environment= is not permitted"):
        options_of(f'environment="LANG=C" {KEY}')
    meaning = options_of(f'environment="LANG=C",environment="TZ=UTC" {KEY}', permit_environment=True)
    assert meaning.environment == ("LANG=C", "TZ=UTC")


@pytest.mark.parametrize(
    "options",
    [
        'permitopen="db.example.com:5432"',
        'permitopen="127.0.0.1:80",permitopen="[::1]:443"',
        'permitlisten="localhost:8080"',
        "no-port-forwarding",
        "no-agent-forwarding",
        "no-X11-forwarding",
        "no-user-rc",
        "port-forwarding,agent-forwarding,x11-forwarding,user-rc",
        'tunnel="0"',
        'tunnel="any"',
        'permitopen="host:ssh"',
        'permitlisten="8080"',
    ],
)
def test_forwarding_options_are_accepted_and_change_nothing(options: str) -> None:
    assert options_of(f"{options} {KEY}") == KeyOptions()


@pytest.mark.parametrize(
    ("options", "no_touch", "verify"),
    [
        ("no-touch-required", True, False),
        ("no-touch-required,touch-required", False, False),  # in order, as sshd applies them
        ("verify-required", False, True),
        ("verify-required,no-verify-required", False, False),
        ("restrict,no-touch-required,verify-required", True, True),
    ],
)
def test_security_key_options_are_kept(options: str, no_touch: bool, verify: bool) -> None:
    meaning = options_of(f"{options} {KEY}")
    assert (meaning.no_touch_required, meaning.verify_required) == (no_touch, verify)


@pytest.mark.parametrize("name", ["tunnel-device", "foo", "no-pty-please", "restricted"])
def test_unknown_options_are_refused_by_name(name: str) -> None:
    with pytest.raises(OptionError, match=f"unknown key option '{name}'"):
        options_of(f"no-pty,{name} {KEY}")


@pytest.mark.parametrize(
    "option",
    ['permitopen="host"', 'permitopen="host:0"', 'permitopen="host:99999"', 'tunnel="x"', 'environment="A-B=c"'],
)
def test_malformed_values_are_refused_as_sshd_refuses_them(option: str) -> None:
    with pytest.raises(OptionError):
        options_of(f"{option} {KEY}", permit_environment=True)


def test_a_whole_file_keeps_the_meaning_of_each_line(ssh_key) -> None:
    a, b = ssh_key("ed25519").public_line, ssh_key("ecdsa256").public_line
    text = f'restrict,pty,command="echo a,b",from="10.0.0.0/8,!10.0.0.5" {a}\nNO-PTY,Environment="X=1" {b}\n'
    parsed = parse_authorized_keys(text, "ak")
    first, second = parsed.entries
    assert first.meaning == KeyOptions(command="echo a,b", from_patterns=("10.0.0.0/8", "!10.0.0.5"), pty=True)
    assert first.refused is None
    assert second.refused == "environment= is not permitted (permit_user_environment is off)"
    assert parsed.problems == ("ak:2: line refused: environment= is not permitted (permit_user_environment is off)",)
    assert parse_authorized_keys(text, "ak", permit_environment=True).problems == ()


# -- from= ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patterns", "host", "admitted"),
    [
        ("192.0.2.7", "192.0.2.7", True),
        ("192.0.2.7", "192.0.2.8", False),
        ("192.0.2.7,192.0.2.8", "192.0.2.8", True),
        ("2001:db8::1", "2001:db8::1", True),
        ("2001:db8::1", "2001:db8::2", False),
        ("2001:db8:0:0:0:0:0:1", "2001:db8::1", True),
        ("10.0.0.0/8", "10.255.1.2", True),
        ("10.0.0.0/8", "11.0.0.1", False),
        ("192.0.2.128/25", "192.0.2.127", False),
        ("192.0.2.128/25", "192.0.2.200", True),
        ("2001:db8::/32", "2001:db8:ffff::1", True),
        ("2001:db8::/32", "2001:db9::1", False),
        ("10.0.0.0/8", "2001:db8::1", False),
        ("2001:db8::/32", "10.0.0.1", False),
        ("10.0.0.*", "10.0.0.5", True),
        ("10.0.0.*", "10.0.0.255", True),
        ("10.0.0.*", "10.0.1.5", False),
        ("10.0.0.?", "10.0.0.5", True),
        ("10.0.0.?", "10.0.0.15", False),
        ("10.0.?.*", "10.0.7.99", True),
        ("*", "203.0.113.9", True),
        ("*", "2001:db8::1", True),
        ("2001:db8::*", "2001:db8::abcd", True),
        ("2001:db8::*", "2001:db9::1", False),
    ],
)
def test_from_positive_patterns(patterns: str, host: str, admitted: bool) -> None:
    assert match_address_list(host, split_patterns(patterns)) is admitted


@pytest.mark.parametrize(
    ("patterns", "host", "admitted"),
    [
        ("!10.0.0.5,10.0.0.0/24", "10.0.0.5", False),
        ("!10.0.0.5,10.0.0.0/24", "10.0.0.6", True),
        ("10.0.0.0/24,!10.0.0.5", "10.0.0.5", False),
        ("*,!10.0.0.*", "10.0.0.9", False),
        ("*,!10.0.0.*", "10.0.1.9", True),
        ("!192.0.2.0/24,*", "192.0.2.1", False),
        ("!2001:db8::/32,*", "2001:db8::7", False),
        ("!2001:db8::/32,*", "2001:db9::7", True),
        ("!10.0.0.5", "10.0.0.6", False),  # only negations: nobody is admitted
        ("!10.0.0.5", "10.0.0.5", False),
    ],
)
def test_from_negation_refuses_even_when_a_positive_pattern_matches(patterns: str, host: str, admitted: bool) -> None:
    assert match_address_list(host, split_patterns(patterns)) is admitted


@pytest.mark.parametrize(
    ("patterns", "admitted"),
    [
        ("10.0.0.5", True),
        ("10.0.0.0/24", True),
        ("10.0.0.*", True),
        ("10.0.0.?", True),
        ("10.0.1.0/24", False),
        ("!10.0.0.5,*", False),
        ("!10.0.0.0/24,*", False),
        ("!10.0.0.*,*", False),
    ],
)
def test_from_ipv4_mapped_ipv6_peer_is_matched_as_its_ipv4_address(patterns: str, admitted: bool) -> None:
    """A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; sshd normalises those to IPv4
    before matching, so every IPv4 pattern (wildcards too) applies to them."""
    assert match_address_list("::ffff:10.0.0.5", split_patterns(patterns)) is admitted


@pytest.mark.parametrize(
    "pattern",
    [
        "host.example.com",
        "*.example.com",
        "localhost",
        "!evil.example.com",
        "bastion",
        "*.cafe.be",  # only hex letters: still a host name pattern, not an address
        "!*.dead.beef",
    ],
)
def test_from_host_name_patterns_are_refused_at_parse_time(pattern: str) -> None:
    with pytest.raises(PatternError, match="host names are not resolved"):
        split_patterns(f"10.0.0.1,{pattern}")
    with pytest.raises(OptionError, match=r"from=: .*host names are not resolved"):
        options_of(f'from="{pattern}" {KEY}')


@pytest.mark.parametrize("value", ["", "10.0.0.1,", ",10.0.0.1", "!", "10.0.0.1,,10.0.0.2"])
def test_from_empty_patterns_are_refused(value: str) -> None:
    with pytest.raises(OptionError, match="from=: empty pattern"):
        options_of(f'from="{value}" {KEY}')


def test_from_host_name_line_is_refused_with_a_log_line_naming_it(tmp_path: Path, ssh_key) -> None:
    pair = ssh_key("ed25519")
    (tmp_path / "alice").write_text(f'from="*.example.com" {pair.public_line}\n')
    (tmp_path / "alice").chmod(0o600)
    files = AuthorizedKeysFiles(f"{tmp_path}/%u")
    with capturedLogs() as events:
        entry = files.find("alice", _blob(pair.public_line))
    assert entry is not None and entry.refused is not None
    lines = [formatEvent(e) for e in events]
    assert any("alice:1: line refused: from=" in line and "*.example.com" in line for line in lines), lines


# -- expiry-time ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20300101Z", datetime(2030, 1, 1, tzinfo=UTC)),
        ("203001021234Z", datetime(2030, 1, 2, 12, 34, tzinfo=UTC)),
        ("20300102123456Z", datetime(2030, 1, 2, 12, 34, 56, tzinfo=UTC)),
        ("20240229Z", datetime(2024, 2, 29, tzinfo=UTC)),
        ("19991231235959Z", datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC)),
    ],
)
def test_expiry_time_in_utc(value: str, expected: datetime) -> None:
    assert parse_expiry(value) == expected.timestamp()


@pytest.mark.parametrize(
    ("value", "fields"),
    [
        ("20300101", (2030, 1, 1, 0, 0, 0)),
        ("203007021234", (2030, 7, 2, 12, 34, 0)),
        ("20300702123456", (2030, 7, 2, 12, 34, 56)),
    ],
)
def test_expiry_time_without_z_is_local_time(value: str, fields: tuple[int, ...]) -> None:
    assert parse_expiry(value) == time.mktime((*fields, 0, 0, -1))


def test_expiry_time_local_time_follows_tz(monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(time, "tzset"):
        pytest.skip("no time.tzset")
    monkeypatch.setenv("TZ", "Pacific/Auckland")
    time.tzset()
    try:
        # sshd's parse_absolute_time hands mktime a tm_isdst of 0 (strptime never sets it), so in
        # summer a local expiry-time is read as standard time: 2030-01-01 00:00 NZST, 12 h before
        # midnight UTC (measured with glibc's strptime and mktime, TZ=Pacific/Auckland).
        local = parse_expiry("20300101")
        assert local == time.mktime((2030, 1, 1, 0, 0, 0, 0, 0, 0)) == 1893412800
        assert parse_expiry("20300101Z") - local == 12 * 3600
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize(
    "value",
    [
        "",
        "2030",
        "2030010",
        "203001011",  # 9 digits
        "2030010112",  # 10 digits: HH without MM
        "2030010112345",  # 13 digits
        "203001011234567",  # 15 digits
        "20301301",  # month 13
        "203001012400",  # hour 24
        "203001011260",  # minute 60
        "2030-01-01",
        "20300101T1200",
        "20300101ZZ",
        "Z",
        " 20300101",
        "20300101 ",
    ],
)
def test_invalid_expiry_times_are_refused(value: str) -> None:
    with pytest.raises(OptionError, match="expiry-time"):
        parse_expiry(value)
    with pytest.raises(OptionError, match="expiry-time"):
        options_of(f'expiry-time="{value}" {KEY}')


@pytest.mark.parametrize(("value", "normalised"), [("20300230Z", "20300302Z"), ("20230229Z", "20230301Z")])
def test_days_past_the_end_of_the_month_roll_over_as_mktime_does(value: str, normalised: str) -> None:
    assert parse_expiry(value) == parse_expiry(normalised)


@pytest.mark.parametrize("value", ["20300101utc", "20300101UTC", "20300101z"])
def test_expiry_time_utc_suffixes_in_any_case(value: str) -> None:
    assert parse_expiry(value) == parse_expiry("20300101Z")


def test_expiry_time_option_sets_the_expiry() -> None:
    assert options_of(f'EXPIRY-TIME="20300101Z" {KEY}').expiry == datetime(2030, 1, 1, tzinfo=UTC).timestamp()


# -- KeyAuthorizer applies the options -----------------------------------------------------------


def _blob(public_line: str) -> bytes:
    import base64

    return base64.b64decode(public_line.split()[1])


@pytest.fixture
def authorize(tmp_path: Path, ssh_key):
    """authorize(options, peer=..., now=...) -> the Identity for alice's ed25519 key on that line."""
    directory = tmp_path / "ak"
    directory.mkdir()
    clock = Clock()
    authorizer = KeyAuthorizer(AuthorizedKeysFiles(f"{directory}/%u"), TrustedCAs(None), RevokedKeys(None), clock)
    pair = ssh_key("ed25519")

    def run(options: str, *, peer: str | None = "10.0.0.5", now: float = 1_900_000_000.0):
        path = directory / "alice"
        path.write_text(f"{options} {pair.public_line}\n".lstrip())
        path.chmod(0o600)
        clock.advance(now - clock.seconds())
        return authorizer.authorize("alice", b"ssh-ed25519", _blob(pair.public_line), peer).identity

    run.clock = clock  # type: ignore[attr-defined]
    return run


def test_key_before_its_expiry_time_logs_in_and_after_it_is_refused(authorize) -> None:
    expiry = datetime(2030, 1, 1, tzinfo=UTC).timestamp()
    assert authorize('expiry-time="20300101Z"', now=expiry - 1).user == "alice"
    with pytest.raises(KeyRefused, match=r"key expired \(expiry-time, .*alice:1\)"):
        authorize('expiry-time="20300101Z"', now=expiry + 1)


def test_expiry_is_checked_at_each_login_on_the_clock(authorize) -> None:
    expiry = datetime(2030, 1, 1, tzinfo=UTC).timestamp()
    authorize('expiry-time="20300101Z"', now=expiry - 60)
    authorize.clock.advance(120)
    with pytest.raises(KeyRefused, match="key expired"):
        authorize('expiry-time="20300101Z"', now=authorize.clock.seconds())


def test_local_expiry_time_is_enforced_in_local_time(authorize) -> None:
    expiry = time.mktime((2030, 6, 1, 12, 0, 0, 0, 0, -1))
    authorize('expiry-time="203006011200"', now=expiry - 1)
    with pytest.raises(KeyRefused, match="key expired"):
        authorize('expiry-time="203006011200"', now=expiry + 1)


def test_invalid_expiry_time_refuses_the_line(authorize) -> None:
    with pytest.raises(KeyRefused, match="authorized_keys line refused: expiry-time"):
        authorize('expiry-time="20301301"')


def test_from_allows_listed_peers_and_refuses_others(authorize) -> None:
    options = 'from="10.0.0.0/24,!10.0.0.9"'
    assert authorize(options, peer="10.0.0.5").user == "alice"
    with pytest.raises(KeyRefused, match=r"from= does not allow 10\.0\.0\.9"):
        authorize(options, peer="10.0.0.9")
    with pytest.raises(KeyRefused, match=r"from= does not allow 192\.0\.2\.1"):
        authorize(options, peer="192.0.2.1")
    with pytest.raises(KeyRefused, match="from= does not allow None"):
        authorize(options, peer=None)


def test_from_with_a_host_name_refuses_the_key(authorize) -> None:
    with pytest.raises(KeyRefused, match=r"authorized_keys line refused: from=.*host names"):
        authorize('from="bastion.example.com"', peer="10.0.0.5")


def test_grant_carries_command_and_pty(authorize) -> None:
    identity = authorize('restrict,command="lastlog -n 5"')
    assert identity.grant.forced_command == "lastlog -n 5"
    assert identity.grant.pty is False
    assert identity.grant.source.startswith("authorized_keys ") and identity.grant.source.endswith("alice:1")
    assert authorize("restrict,pty").grant.pty is True
    assert authorize("pty,restrict").grant.pty is False
    plain = authorize("no-port-forwarding,no-agent-forwarding").grant
    assert (plain.forced_command, plain.pty) == (None, True)


def test_environment_line_is_refused_unless_permitted(tmp_path: Path, ssh_key) -> None:
    pair = ssh_key("ed25519")
    path = tmp_path / "alice"
    path.write_text(f'environment="A=b" {pair.public_line}\n')
    path.chmod(0o600)
    for permit, ok in ((False, False), (True, True)):
        keys = AuthorizedKeysFiles(f"{tmp_path}/%u", permit_environment=permit)
        authorizer = KeyAuthorizer(keys, TrustedCAs(None), RevokedKeys(None), Clock())
        if ok:
            authorizer.authorize("alice", b"ssh-ed25519", _blob(pair.public_line), "10.0.0.1")
        else:
            with pytest.raises(KeyRefused, match="environment= is not permitted"):
                authorizer.authorize("alice", b"ssh-ed25519", _blob(pair.public_line), "10.0.0.1")


def test_cert_authority_line_does_not_authorize_its_key_as_a_plain_key(authorize) -> None:
    with pytest.raises(KeyRefused, match="key not in authorized_keys"):
        authorize("cert-authority")


def test_revoked_plain_key_is_refused(tmp_path: Path, ssh_key) -> None:
    pair = ssh_key("ed25519")
    (tmp_path / "alice").write_text(pair.public_line + "\n")
    (tmp_path / "alice").chmod(0o600)
    revoked = tmp_path / "revoked"
    revoked.write_text(f"# revoked\n{pair.public_line}\n")
    authorizer = KeyAuthorizer(
        AuthorizedKeysFiles(f"{tmp_path}/%u"), TrustedCAs(None), RevokedKeys(str(revoked)), Clock()
    )
    with pytest.raises(KeyRefused, match=re.escape(f"key {pair.fingerprint} is revoked")):
        authorizer.authorize("alice", b"ssh-ed25519", _blob(pair.public_line), "10.0.0.1")


def test_a_key_on_several_lines_is_authorized_by_any_line_that_passes(tmp_path: Path, ssh_key) -> None:
    """sshd reads every line and accepts the key on the first line whose options pass (from=,
    expiry-time), so one key may have different terms from different networks."""
    pair = ssh_key("ed25519")
    (tmp_path / "alice").write_text(
        f'from="10.0.0.0/8" {pair.public_line}\nfrom="192.168.0.0/16",command="lastlog -n 1" {pair.public_line}\n'
    )
    (tmp_path / "alice").chmod(0o600)
    authorizer = KeyAuthorizer(AuthorizedKeysFiles(f"{tmp_path}/%u"), TrustedCAs(None), RevokedKeys(None), Clock())
    blob = _blob(pair.public_line)
    first = authorizer.authorize("alice", b"ssh-ed25519", blob, "10.1.2.3").identity
    assert first.grant.forced_command is None and first.grant.source.endswith("alice:1")
    second = authorizer.authorize("alice", b"ssh-ed25519", blob, "192.168.7.7").identity
    assert second.grant.forced_command == "lastlog -n 1" and second.grant.source.endswith("alice:2")
    with pytest.raises(KeyRefused, match=r"from= does not allow 172\.16\.0\.1"):
        authorizer.authorize("alice", b"ssh-ed25519", blob, "172.16.0.1")


def test_an_expired_line_does_not_hide_a_later_line_for_the_same_key(tmp_path: Path, ssh_key) -> None:
    pair = ssh_key("ed25519")
    (tmp_path / "alice").write_text(
        f'expiry-time="20200101Z",command="help" {pair.public_line}\nexpiry-time="20990101Z" {pair.public_line}\n'
    )
    (tmp_path / "alice").chmod(0o600)
    clock = Clock()
    clock.advance(datetime(2030, 1, 1, tzinfo=UTC).timestamp())
    authorizer = KeyAuthorizer(AuthorizedKeysFiles(f"{tmp_path}/%u"), TrustedCAs(None), RevokedKeys(None), clock)
    identity = authorizer.authorize("alice", b"ssh-ed25519", _blob(pair.public_line), "10.0.0.1").identity
    assert identity.grant.forced_command is None and identity.grant.source.endswith("alice:2")


# -- conchcmd check and hash-password ----------------------------------------------------------------


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ssh_key):
    """A config dir with users alice (lastlog only) and bob (everything); returns a helper."""
    monkeypatch.chdir(tmp_path)
    ak = tmp_path / "ak"
    ak.mkdir()
    (tmp_path / "conchcmd.toml").write_text(
        "\n".join(
            [
                'authorized_keys = "ak/%u"',
                "[users.alice]",
                'commands = ["lastlog"]',
                "",
            ]
        )
    )

    def users(name: str, *lines: str) -> None:
        path = ak / name
        path.write_text("".join(line + "\n" for line in lines))
        path.chmod(0o600)

    return users


def run_check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["check", *args])
    return code, capsys.readouterr().out


def test_check_allowed_key(site, ssh_key, capsys) -> None:
    pair = ssh_key("ed25519")
    site("bob", pair.public_line)
    code, out = run_check(capsys, "--user", "bob", "--key", str(pair.public))
    assert code == 0
    assert out.startswith("login: allowed for bob from any address (by authorized_keys ")
    assert "pty allowed" in out


def test_check_refused_key_gives_the_reason(site, ssh_key, capsys) -> None:
    site("bob", ssh_key("ed25519").public_line)
    code, out = run_check(capsys, "--user", "bob", "--key", str(ssh_key("ecdsa256").public))
    assert (code, out) == (1, "login: REFUSED: key not in authorized_keys\n")


def test_check_from_outside_from_is_refused(site, ssh_key, capsys) -> None:
    pair = ssh_key("ed25519")
    site("bob", f'from="10.0.0.0/8" {pair.public_line}')
    code, out = run_check(capsys, "--user", "bob", "--key", str(pair.public), "--from", "10.1.2.3")
    assert code == 0 and "login: allowed for bob from 10.1.2.3" in out
    code, out = run_check(capsys, "--user", "bob", "--key", str(pair.public), "--from", "192.0.2.1")
    assert code == 1
    assert out.startswith("login: REFUSED: from= does not allow 192.0.2.1")


def test_check_forced_command_and_no_pty(site, ssh_key, capsys) -> None:
    pair = ssh_key("ed25519")
    site("bob", f'no-pty,command="lastlog -n 2" {pair.public_line}')
    code, out = run_check(capsys, "--user", "bob", "--key", str(pair.public), "--command", "comphash /etc/hosts")
    assert code == 0
    assert "forced command 'lastlog -n 2'" in out and "no pty" in out
    assert out.endswith("command: allowed: lastlog -n 2 (forced; the client's command is ignored)\n")


def test_check_command_not_permitted_for_the_user(site, ssh_key, capsys) -> None:
    pair = ssh_key("ed25519")
    site("alice", pair.public_line)
    code, out = run_check(capsys, "--user", "alice", "--key", str(pair.public), "--command", "comphash /etc/hosts")
    assert code == 1
    assert out.splitlines()[-1] == "command: REFUSED: comphash: not permitted (status 126)"
    code, out = run_check(capsys, "--user", "alice", "--key", str(pair.public), "--command", "lastlog -n 1")
    assert code == 0 and out.endswith("command: allowed: lastlog -n 1\n")
    code, out = run_check(capsys, "--user", "alice", "--key", str(pair.public), "--command", "help")
    assert code == 0


def test_check_forced_command_the_user_may_not_run(site, ssh_key, capsys) -> None:
    pair = ssh_key("ed25519")
    site("alice", f'command="comphash /etc/hosts" {pair.public_line}')
    code, out = run_check(capsys, "--user", "alice", "--key", str(pair.public))
    assert code == 1
    assert out.splitlines()[-1] == "command: REFUSED: comphash: not permitted (status 126)"


def test_check_unknown_command(site, ssh_key, capsys) -> None:
    pair = ssh_key("ed25519")
    site("bob", pair.public_line)
    code, out = run_check(capsys, "--user", "bob", "--key", str(pair.public), "--command", "rm -rf /")
    assert code == 1 and out.splitlines()[-1] == "command: REFUSED: rm: command not found (status 127)"


def test_check_line_with_an_unknown_option(site, ssh_key, capsys) -> None:
    pair = ssh_key("ed25519")
    site("bob", f"no-pty,verify-requiredx {pair.public_line}")
    code, out = run_check(capsys, "--user", "bob", "--key", str(pair.public))
    assert code == 1
    assert out == "login: REFUSED: authorized_keys line refused: unknown key option 'verify-requiredx'\n"


def test_hash_password_from_stdin(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret pass\n"))
    assert main(["hash-password", "--rounds", "4"]) == 0
    hashed = capsys.readouterr().out.strip().encode()
    assert hashed.startswith(b"$2b$04$")
    assert bcrypt.checkpw(b"s3cret pass", hashed)
    assert not bcrypt.checkpw(b"s3cret pass\n", hashed)


def test_hash_password_output_is_accepted_by_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from conchcmd.core.config import parse_config

    monkeypatch.setattr("sys.stdin", io.StringIO("pw\n"))
    assert main(["hash-password", "--rounds", "4"]) == 0
    hashed = capsys.readouterr().out.strip()
    config = parse_config(f'[users.carol]\npassword_bcrypt = "{hashed}"\n', base_dir=tmp_path)
    assert config.users["carol"].password_bcrypt == hashed.encode()


@pytest.mark.parametrize("cost", ["00", "03", "32", "99"])
def test_a_bcrypt_cost_bcrypt_refuses_is_refused_by_the_config(tmp_path: Path, cost: str) -> None:
    """bcrypt takes costs 04-31 only: any other made every password check raise "Invalid salt",
    which once read as a wrong password (an operator locked out, a "Failed password" per try)."""
    from conchcmd.core.config import ConfigError, parse_config

    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    with pytest.raises(ConfigError, match="is not a bcrypt hash"):
        parse_config(f'[users.carol]\npassword_bcrypt = "{hashed[:4]}{cost}{hashed[6:]}"\n', base_dir=tmp_path)
    for good in ("04", "12", "31"):  # parsed only: no hashing at cost 31
        config = parse_config(f'[users.carol]\npassword_bcrypt = "{hashed[:4]}{good}{hashed[6:]}"\n', base_dir=tmp_path)
        assert config.users["carol"].password_bcrypt == f"{hashed[:4]}{good}{hashed[6:]}".encode()


def test_verify_password_refuses_a_long_password_and_raises_for_an_unusable_hash() -> None:
    hashed = bcrypt.hashpw(b"x" * 72, bcrypt.gensalt(rounds=4))
    assert verify_password(b"x" * 72, hashed, True)
    assert not verify_password(b"x" * 73, hashed, True)  # never truncated to the 72 that match
    with pytest.raises(ValueError, match="Invalid salt"):  # the server's hash: not a wrong password
        verify_password(b"x", hashed[:7] + b"!" + hashed[8:], True)


@pytest.mark.parametrize(("stdin", "args"), [("\n", []), ("", []), ("pw\n", ["--rounds", "3"])])
def test_hash_password_refuses_empty_passwords_and_bad_rounds(
    monkeypatch: pytest.MonkeyPatch, capsys, stdin: str, args: list[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    assert main(["hash-password", *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("conchcmd: ")


def test_wildcard_matching_agrees_with_a_regex_and_never_backtracks_exponentially() -> None:
    """match_pattern is the linear greedy matcher; a regex gives the same answers (on short inputs,
    where its backtracking is harmless) and took minutes on `1*1*...*2` (found by tests/fuzz)."""
    import random
    import re

    from conchcmd.core.hostmatch import match_pattern

    def by_regex(string: str, pattern: str) -> bool:
        regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in re.sub(r"\*+", "*", pattern))
        return re.fullmatch(regex, string, re.S) is not None

    rng = random.Random(10)
    for _ in range(20000):
        string = "".join(rng.choice("ab1.") for _ in range(rng.randint(0, 8)))
        pattern = "".join(rng.choice("ab1.*?") for _ in range(rng.randint(0, 8)))
        assert match_pattern(string, pattern) == by_regex(string, pattern), (string, pattern)
    assert not match_pattern("1" * 60, "1*" * 30 + "2")  # returns at once
    assert match_pattern("1" * 60, "1*" * 30)


@pytest.mark.parametrize(
    ("options", "shown"),
    [
        ("", "security key: touch required"),
        ("no-touch-required", "security key: no touch required"),
        ("verify-required", "security key: touch and user verification required"),
        ("no-touch-required,verify-required", "security key: user verification required"),
    ],
)
def test_check_names_what_a_security_keys_signature_must_show(site, tmp_path, capsys, options, shown) -> None:
    from support.skauth import SoftwareAuthenticator

    token = SoftwareAuthenticator.generate("ecdsa")
    site("bob", token.public_line(options=options).rstrip("\n"))
    (tmp_path / "sk.pub").write_text(token.public_line(comment="token"))
    code, out = run_check(capsys, "--user", "bob", "--key", str(tmp_path / "sk.pub"))
    assert code == 0 and out.rstrip("\n").endswith(f"pty allowed; {shown})"), out
