"""The log targets' formats and delivery, byte for byte: sd-daemon prefixes, syslog PRI values and
headers (RFC 3164 locally, RFC 5424 over the network, RFC 6587 octet counting on a stream), the
journal's native protocol (with a value that holds a newline, and the memfd path for big entries),
and what happens when a target is down or full: lines are dropped and counted, nothing blocks."""

from __future__ import annotations

import array
import io
import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger, LogLevel, LogPublisher, capturedLogs, formatEvent
from twisted.python.failure import Failure

from conchcmd.core import logtargets as lt
from conchcmd.core.audit import AuditLog
from conchcmd.core.config import ConfigError, LogConfig, parse_config
from conchcmd.core.logtargets import AUTH_LOG_NAMESPACE, LOG_NAMESPACE

WHEN = 1_764_453_045.25  # 2025-11-29 21:50:45.25 UTC


def event(text: str, level: LogLevel = LogLevel.info, namespace: str = LOG_NAMESPACE, **fields: Any) -> dict:
    return {"log_format": text, "log_level": level, "log_namespace": namespace, "log_time": WHEN, **fields}


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def bound_dgram(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    return sock


# -- levels, facilities, priorities ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("namespace", "level", "expected"),
    [
        (AUTH_LOG_NAMESPACE, LogLevel.info, 86),  # authpriv.info: 10*8+6
        (AUTH_LOG_NAMESPACE, LogLevel.warn, 84),
        (AUTH_LOG_NAMESPACE, LogLevel.error, 83),
        (LOG_NAMESPACE, LogLevel.info, 30),  # daemon.info: 3*8+6
        (LOG_NAMESPACE, LogLevel.warn, 28),
        (LOG_NAMESPACE, LogLevel.error, 27),
        (LOG_NAMESPACE, LogLevel.critical, 26),
        (LOG_NAMESPACE, LogLevel.debug, 31),
        ("twisted.conch.ssh.transport", LogLevel.warn, 28),  # anything not authentication is daemon
    ],
)
def test_pri_is_facility_times_eight_plus_severity(namespace: str, level: LogLevel, expected: int) -> None:
    e = event("x", level, namespace)
    assert lt.pri(lt.facility(e), lt.severity(e)) == expected


# -- stdout under systemd ------------------------------------------------------------------------


def test_sd_daemon_prefixes_each_line_and_has_no_timestamp() -> None:
    assert lt.sd_daemon_lines(event("Client connection from {peer}", peer="10.0.0.1:5")) == (
        "<6>Client connection from 10.0.0.1:5\n"
    )
    assert lt.sd_daemon_lines(event("full disk", LogLevel.error)) == "<3>full disk\n"
    assert lt.sd_daemon_lines(event("ignoring", LogLevel.warn)) == "<4>ignoring\n"
    assert lt.sd_daemon_lines(event("chatter", LogLevel.debug)) == "<7>chatter\n"
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        failure = Failure()
    lines = lt.sd_daemon_lines(event("Command crashed", LogLevel.critical, log_failure=failure)).splitlines()
    assert lines[0] == "<2>Command crashed"
    assert len(lines) > 3 and all(line.startswith("<2>") for line in lines), lines  # journald: one entry a line
    assert lines[-1] == "<2>| builtins.RuntimeError: boom"
    assert all(line.startswith("<2>| ") for line in lines[1:]), lines


def test_a_continuation_line_under_journal_stream_cannot_pass_for_a_failure(tmp_path: Path) -> None:
    """An exception message carrying client text with a newline: journald makes each line an entry;
    the shipped fail2ban filter, reading them forwarded to syslog, counts none of them."""
    from support.fail2ban import fail2ban_available, failures, install_filter

    if not fail2ban_available():
        pytest.skip("fail2ban-regex is not installed (apt fail2ban)")
    forged = "Failed password for root from 6.6.6.6 port 1 ssh2"
    text = lt.sd_daemon_lines(
        event("Protocol error from {peer}: {error}", LogLevel.warn, peer="x", error=f"a\n{forged}")
    )
    assert f"<4>| {forged}\n" in text
    # journald strips "<N>"; rsyslog then writes each entry with the syslog prefix.
    log = tmp_path / "auth.log"
    log.write_text("".join(f"Nov 29 21:00:00 myhost conchcmd[4242]: {line[3:]}\n" for line in text.splitlines()))
    filter_path = install_filter(tmp_path)
    assert failures(log, filter_path) == failures(log, filter_path, "mode=aggressive") == []


def test_the_journal_stream_is_recognised_by_device_and_inode(tmp_path: Path) -> None:
    with open(tmp_path / "stream", "w") as stream, open(tmp_path / "other", "w") as other:
        st = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert lt.journal_stream_matches(stream, env)
        assert not lt.journal_stream_matches(other, env)  # e.g. stdout redirected to a file under systemd
        assert not lt.journal_stream_matches(stream, {})
        assert not lt.journal_stream_matches(io.StringIO(), env)

        publisher = LogPublisher(lt.stdout_observer(stream, env))
        Logger(namespace=LOG_NAMESPACE, observer=publisher).warn("Ignoring {path}", path="/x")
        publisher2 = LogPublisher(lt.stdout_observer(other, env))
        Logger(namespace=LOG_NAMESPACE, observer=publisher2).warn("Ignoring {path}", path="/x")
    assert (tmp_path / "stream").read_text() == "<4>Ignoring /x\n"
    plain = (tmp_path / "other").read_text()
    assert plain.endswith(" [conchcmd.log#warn] Ignoring /x\n") and not plain.startswith("<")  # as before


# -- syslog formats ------------------------------------------------------------------------------


def test_rfc3164_as_glibc_writes_to_dev_log(utc: None) -> None:
    assert lt.rfc3164(86, WHEN, 4242, "Accepted publickey for alice") == (
        b"<86>Nov 29 21:50:45 conchcmd[4242]: Accepted publickey for alice"
    )
    assert lt.rfc3164(30, WHEN - 28 * 86400, 1, "x").startswith(b"<30>Nov  1 21:50:45 ")  # day padded with a space


def test_rfc5424_header() -> None:
    assert lt.rfc5424(30, WHEN, "host.example", 4242, "Cmd received", "conchcmd.log") == (
        b"<30>1 2025-11-29T21:50:45.250000Z host.example conchcmd 4242 conchcmd.log - Cmd received"
    )
    # header fields are printable ASCII without spaces; an empty one is the nil value
    assert lt.rfc5424(86, WHEN, "bad host\u00e9", 1, "caf\u00e9\nline").startswith(b"<86>1 2025-")
    assert b" badhost conchcmd 1 - - caf\xc3\xa9\nline" in lt.rfc5424(86, WHEN, "bad host\u00e9", 1, "caf\u00e9\nline")
    assert b" - conchcmd 1 " in lt.rfc5424(86, WHEN, "", 1, "x")


def test_long_messages_are_cut_at_a_character_boundary() -> None:
    data = lt.rfc5424(30, WHEN, "h", 1, "\u00e9" * 10_000)
    assert len(data) <= lt.MAX_SYSLOG_BYTES
    data.decode("utf-8")  # no half character


def test_octet_counting_frames_hold_newlines() -> None:
    assert lt.octet_counted(b"<30>1 - - - - - - a\nb") == b"21 <30>1 - - - - - - a\nb"


# -- the journal's native protocol ---------------------------------------------------------------


def test_journal_fields_plain_and_binary_safe() -> None:
    assert lt.journal_field("MESSAGE", "hello") == b"MESSAGE=hello\n"
    assert lt.journal_field("MESSAGE", "two\nlines") == b"MESSAGE\n\x09\x00\x00\x00\x00\x00\x00\x00two\nlines\n"
    assert lt.journal_field("CONCHCMD_USER", "=x") == b"CONCHCMD_USER==x\n"  # only the first '=' separates


def test_journal_entry_of_an_event_carries_the_structured_fields() -> None:
    e = event(
        "Accepted {method} for {user} from {peer}",
        namespace=AUTH_LOG_NAMESPACE,
        method="publickey",
        user="alice",
        peer="203.0.113.7:55844",
        port=55844,
        fingerprint="SHA256:abc",
        fp="SHA256:abc",
        source=None,
    )
    fields = lt.parse_journal_entry(lt.journal_entry(lt.journal_fields(e)))
    assert fields == {
        "MESSAGE": b"Accepted publickey for alice from 203.0.113.7:55844",
        "PRIORITY": b"6",
        "SYSLOG_FACILITY": b"10",
        "SYSLOG_IDENTIFIER": b"conchcmd",
        "CONCHCMD_USER": b"alice",
        "CONCHCMD_PEER": b"203.0.113.7:55844",
        "CONCHCMD_PORT": b"55844",
        "CONCHCMD_FINGERPRINT": b"SHA256:abc",
        "CONCHCMD_METHOD": b"publickey",
    }


def test_the_journal_target_sends_entries_to_the_socket(tmp_path: Path) -> None:
    receiver = bound_dgram(tmp_path / "journal.sock")
    err = io.StringIO()
    observer = lt.journal_observer(err, str(tmp_path / "journal.sock"))
    publisher = LogPublisher(observer)
    Logger(namespace=LOG_NAMESPACE, observer=publisher).error("Audit log {name}: {why}", name="a", why="x\ny")
    fields = lt.parse_journal_entry(receiver.recv(65536))
    assert fields["MESSAGE"] == b"Audit log a: x\ny"
    assert (fields["PRIORITY"], fields["SYSLOG_FACILITY"]) == (b"3", b"3")
    assert err.getvalue() == ""


def test_a_journal_entry_too_big_for_a_datagram_goes_in_a_sealed_memfd(tmp_path: Path) -> None:
    receiver = bound_dgram(tmp_path / "journal.sock")
    sender = lt.JournalSender(str(tmp_path / "journal.sock"))
    sender.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    entry = lt.journal_entry({"MESSAGE": "m" * 50_000, "PRIORITY": "6"})
    sender.send(entry)
    fds = array.array("i")
    data, ancillary, _, _ = receiver.recvmsg(16, socket.CMSG_SPACE(fds.itemsize))
    assert data == b""
    level, kind, payload = ancillary[0]
    assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
    (fd,) = struct.unpack("i", payload[:4])
    try:
        import fcntl

        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SHRINK  # journald refuses unsealed ones
        assert lt.parse_journal_entry(os.pread(fd, 1 << 20, 0)) == {"MESSAGE": b"m" * 50_000, "PRIORITY": b"6"}
    finally:
        os.close(fd)
        sender.close()


# -- delivery: a syslog that is down or full -----------------------------------------------------


def test_local_syslog_datagrams(tmp_path: Path, utc: None) -> None:
    receiver = bound_dgram(tmp_path / "log")
    err = io.StringIO()
    observer = lt.syslog_observer(lt.parse_syslog_address(f"unix:{tmp_path / 'log'}"), None, err)
    observer(event("Failed {method} for {user}", namespace=AUTH_LOG_NAMESPACE, method="publickey", user="bob"))
    observer(event("Ignoring {path}", LogLevel.warn, path="/k"))
    assert receiver.recv(9000) == b"<86>Nov 29 21:50:45 conchcmd[%d]: Failed publickey for bob" % os.getpid()
    assert receiver.recv(9000) == b"<28>Nov 29 21:50:45 conchcmd[%d]: Ignoring /k" % os.getpid()


def test_a_syslog_that_is_down_or_full_drops_lines_counted_and_never_blocks(tmp_path: Path) -> None:
    err = io.StringIO()
    path = tmp_path / "log"
    observer = lt.syslog_observer(lt.parse_syslog_address(f"unix:{path}"), None, err)
    for _ in range(3):
        observer(event("nobody listens"))  # no socket at all: syslog is not running
    assert observer.drops.dropped == 3
    assert err.getvalue().count("\n") == 1
    assert "log target syslog " + str(path) in err.getvalue() and "dropping log lines" in err.getvalue()

    receiver = bound_dgram(path)  # syslog starts, but does not read: its queue fills up
    sent = 0
    while observer.drops.total == 3 and sent < 100_000:
        observer(event("filling"))
        sent += 1
    assert observer.drops.total == 4, "a full receiver never refused a datagram"
    # (a blocking send would have hung here: the receiver never reads)
    assert "works again; 3 log line(s) were dropped" in err.getvalue()
    receiver.setblocking(False)
    while True:  # syslog catches up
        try:
            receiver.recv(9000)
        except BlockingIOError:
            break
    observer(event("back"))
    assert err.getvalue().splitlines()[-1].endswith("works again; 1 log line(s) were dropped")
    assert observer.drops.total == 4


def test_udp_syslog(utc: None) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    port = receiver.getsockname()[1]
    observer = lt.syslog_observer(lt.parse_syslog_address(f"udp:127.0.0.1:{port}"), None, io.StringIO())
    observer(event("Too many authentication failures", namespace=AUTH_LOG_NAMESPACE))
    data = receiver.recv(9000).decode()
    assert data.startswith("<86>1 2025-11-29T21:50:45.250000Z ")
    assert data.endswith(f" conchcmd {os.getpid()} conchcmd.auth - Too many authentication failures")


def test_tcp_syslog_queues_until_connected_and_reconnects() -> None:
    reactor = MemoryReactorClock()
    sender = lt.StreamSender(reactor, "tcp:127.0.0.1:6514", queue=3)
    sender.send(b"one")
    sender.send(b"two\nlines")
    host, port, factory, *_ = reactor.tcpClients[0]
    assert (host, port) == ("127.0.0.1", 6514)
    wire = StringTransport()
    factory.buildProtocol(None).makeConnection(wire)
    assert wire.value() == b"3 one9 two\nlines"
    assert sender.connected

    wire.clear()
    wire.producer.pauseProducing()  # the syslog server stops reading: frames wait, bounded
    for word in (b"a", b"b", b"c"):
        sender.send(word)
    with pytest.raises(OSError, match="queue full"):
        sender.send(b"d")
    assert wire.value() == b""
    wire.producer.resumeProducing()
    assert wire.value() == b"1 b1 c1 d"  # the oldest was dropped

    wire.clear()
    factory2_count = len(reactor.tcpClients)
    wire.protocol = None
    sender.protocol.connectionLost(Failure(ConnectionError("reset")))  # type: ignore[union-attr]
    assert not sender.connected
    sender.send(b"while down")
    reactor.advance(lt.RECONNECT_FIRST)
    assert len(reactor.tcpClients) == factory2_count + 1  # reconnected after the backoff
    wire2 = StringTransport()
    reactor.tcpClients[-1][2].buildProtocol(None).makeConnection(wire2)
    assert wire2.value() == b"10 while down"
    sender.close()


# -- addresses and configuration -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (None, lt.SyslogAddress("unix", path="/dev/log")),
        ("unix:/run/log.sock", lt.SyslogAddress("unix", path="/run/log.sock")),
        ("udp:127.0.0.1:514", lt.SyslogAddress("udp", host="127.0.0.1", port=514)),
        ("udp:[::1]:514", lt.SyslogAddress("udp", host="::1", port=514)),
        ("tcp:127.0.0.1:601", lt.SyslogAddress("stream", description="tcp:127.0.0.1:601")),
    ],
)
def test_syslog_addresses(value: str | None, kind: lt.SyslogAddress) -> None:
    assert lt.parse_syslog_address(value) == kind


@pytest.mark.parametrize(
    "value", ["/dev/log", "unix:dev/log", "udp:loghost:514", "udp:127.0.0.1", "udp:127.0.0.1:0", "tcp:1.2.3.4", "x:y"]
)
def test_bad_syslog_addresses(value: str) -> None:
    with pytest.raises(ValueError):
        lt.parse_syslog_address(value)


def test_log_config_is_parsed_strictly_and_described(tmp_path: Path) -> None:
    assert parse_config("", base_dir=tmp_path).log == LogConfig("stdout", None)
    config = parse_config(
        'audit_log = "syslog"\n[log]\ntarget = "syslog"\nsyslog_address = "udp:127.0.0.1:514"\n', base_dir=tmp_path
    )
    assert config.log == LogConfig("syslog", "udp:127.0.0.1:514")
    assert config.audit_log == "syslog"  # not a file name in base_dir
    assert '[log]\ntarget = "syslog"\nsyslog_address = "udp:127.0.0.1:514"' in config.describe()
    assert parse_config(config.describe(), base_dir=tmp_path).log == config.log
    assert '# syslog_address = "unix:/dev/log"' in parse_config("", base_dir=tmp_path).describe()
    assert parse_config('audit_log = "journal"', base_dir=tmp_path).audit_log == "journal"
    for text, message in [
        ('[log]\ntarget = "file"', "log.target: must be one of stdout, syslog, journal, not 'file'"),
        ('[log]\nsyslog_address = "udp:loghost:514"', "log.syslog_address: 'udp:loghost:514' is not udp:IP"),
        ('[log]\nsyslog_address = ""', "log.syslog_address: must not be empty"),
        ("[log]\nfacility = 3", "log.facility: unknown key"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse_config(text, base_dir=tmp_path)


# -- the audit log's syslog and journal targets --------------------------------------------------


class FixedClock:
    def seconds(self) -> float:
        return WHEN


def test_audit_records_to_syslog_are_authpriv_info_json(tmp_path: Path) -> None:
    receiver = bound_dgram(tmp_path / "log")
    audit = AuditLog.open("syslog", FixedClock(), syslog_address=f"unix:{tmp_path / 'log'}")
    audit.record("auth", user="alice", ok=True, note="a\nb")
    data = receiver.recv(9000)
    head, _, record = data.partition(b"]: ")
    assert head.startswith(b"<86>") and head.endswith(b" conchcmd[%d" % os.getpid())
    assert record == (
        b'{"ts": "2025-11-29T21:50:45.250Z", "event": "auth", "user": "alice", "ok": true, "note": "a\\nb"}'
    )
    audit.close()


def test_audit_records_to_a_syslog_that_is_down_wait_in_the_backlog(tmp_path: Path) -> None:
    audit = AuditLog.open("syslog", FixedClock(), syslog_address=f"unix:{tmp_path / 'log'}")
    audit.record("connect", peer="10.0.0.1:1")
    assert audit.failure() is not None  # commands are refused meanwhile (audit_failure = "refuse")
    receiver = bound_dgram(tmp_path / "log")
    assert audit.failure() is None  # written now
    assert b'"event": "connect"' in receiver.recv(9000)


def test_audit_records_to_the_journal(tmp_path: Path) -> None:
    receiver = bound_dgram(tmp_path / "journal.sock")
    target = lt.JournalLineTarget(str(tmp_path / "journal.sock"))
    audit = AuditLog(target, FixedClock())
    audit.record("command", user="alice", line="lastlog\n-n 1")
    fields = lt.parse_journal_entry(receiver.recv(65536))
    assert fields == {
        "MESSAGE": b'{"ts": "2025-11-29T21:50:45.250Z", "event": "command", "user": "alice", "line": "lastlog\\n-n 1"}',
        "PRIORITY": b"6",
        "SYSLOG_FACILITY": b"10",
        "SYSLOG_IDENTIFIER": b"conchcmd",
        "CONCHCMD_EVENT": b"command",
    }
    audit.close()


def test_closing_a_tcp_syslog_sends_what_waits_then_fires() -> None:
    reactor = MemoryReactorClock()
    sender = lt.StreamSender(reactor, "tcp:127.0.0.1:6514")
    factory = reactor.tcpClients[0][2]
    protocol = factory.buildProtocol(None)
    wire = StringTransport()
    protocol.makeConnection(wire)
    wire.producer.pauseProducing()
    sender.send(b"last line")  # waits: the peer is not reading
    done = sender.close()
    assert wire.value() == b"9 last line" and wire.disconnecting  # flushed, then closed
    assert not done.called
    with pytest.raises(OSError, match="closed at shutdown"):
        sender.send(b"after the end")
    protocol.connectionLost(Failure(ConnectionError("closed")))
    assert done.called
    assert reactor.getDelayedCalls() == []  # no reconnection, no abort timer left


def test_closing_a_tcp_syslog_that_does_not_take_its_data_aborts_after_a_while() -> None:
    reactor = MemoryReactorClock()
    sender = lt.StreamSender(reactor, "tcp:127.0.0.1:6514")
    wire = StringTransport()
    reactor.tcpClients[0][2].buildProtocol(None).makeConnection(wire)
    done = sender.close()
    reactor.advance(lt.DRAIN_SECONDS)
    assert wire.disconnected  # StringTransport.abortConnection
    assert not done.called  # fires when the connection is gone


def _fill(sender: lt.DatagramSender) -> int:
    """Send numbered lines until the receiver's queue is full and one waits; returns how many were sent."""
    n = 0
    while not sender.pending and n < 100_000:
        sender.send(b"%d" % n)
        n += 1
    assert sender.pending, "the receiver's queue never filled"
    return n


def test_a_busy_local_syslog_gets_its_lines_late_and_in_order(tmp_path: Path) -> None:
    clock = Clock()
    receiver = bound_dgram(tmp_path / "log")
    receiver.setblocking(False)
    sender = lt.DatagramSender(socket.AF_UNIX, str(tmp_path / "log"), "syslog", clock)
    n = _fill(sender)
    for _ in range(5):
        sender.send(b"%d" % n)
        n += 1
    assert len(sender.pending) == 6  # waiting, not dropped
    got: list[bytes] = []
    for _ in range(1000):
        while True:
            try:
                got.append(receiver.recv(100))
            except BlockingIOError:
                break
        if len(got) == n:
            break
        clock.advance(lt.RETRY_SECONDS)
    assert got == [b"%d" % i for i in range(n)]
    assert clock.getDelayedCalls() == []


def test_a_local_syslog_that_never_reads_loses_the_oldest_lines_counted(tmp_path: Path) -> None:
    clock = Clock()
    receiver = bound_dgram(tmp_path / "log")  # never reads
    observer = lt.SenderObserver(
        lt.DatagramSender(socket.AF_UNIX, str(tmp_path / "log"), "syslog", clock), lambda e: b"x", io.StringIO()
    )
    _fill(observer.sender)  # type: ignore[arg-type]
    for _ in range(lt.STREAM_QUEUE + 9):
        observer(event("x"))
    assert observer.drops.total == 10
    assert "the receiver is not reading; queue full" in observer.drops.err.getvalue()  # type: ignore[attr-defined]
    closing = observer.close()  # shutdown waits a while for it, then gives up
    clock.advance(lt.DRAIN_SECONDS - lt.RETRY_SECONDS)
    assert not closing.called
    clock.advance(lt.RETRY_SECONDS * 2)
    assert closing.called
    with pytest.raises(OSError, match="closed at shutdown"):
        observer.sender.send(b"late")
    receiver.close()


@pytest.mark.parametrize("target", ["syslog", "journal"])
def test_audit_records_to_a_full_local_socket_are_never_lost_silently(tmp_path: Path, target: str) -> None:
    """A receiver that stops reading: records queue up to STREAM_QUEUE; past that the audit log
    is told (failure(), commands refused) and keeps the rest, instead of the sender dropping
    queued records it had already said were written. Once it reads again, every record arrives
    once, in order."""
    clock = Clock()
    path = tmp_path / "log"
    receiver = bound_dgram(path)
    receiver.setblocking(False)
    sink: Any = (
        lt.SyslogLineTarget(lt.parse_syslog_address(f"unix:{path}"), clock)
        if target == "syslog"
        else lt.JournalLineTarget(str(path), clock)
    )
    audit = AuditLog(sink, clock)
    total = lt.STREAM_QUEUE + 200
    for i in range(total):
        audit.record("command", n=i)
    assert audit.failure() is not None  # told, so commands are refused
    got: list[int] = []
    for _ in range(10_000):
        while True:
            try:
                data = receiver.recv(1 << 16)
            except BlockingIOError:
                break
            message = data.split(b": ", 1)[1] if target == "syslog" else lt.parse_journal_entry(data)["MESSAGE"]
            got.append(json.loads(message)["n"])
        if len(got) == total:
            break
        clock.advance(lt.RETRY_SECONDS)
        audit.failure()  # (the dispatcher asks before each command; it retries the backlog)
    assert got == list(range(total))
    assert audit.failure() is None
    receiver.close()


def test_audit_records_still_queued_when_shutdown_gives_up_are_reported(tmp_path: Path) -> None:
    """A local syslog that never reads: at shutdown the server waits DRAIN_SECONDS for the
    queued records, then closes; how many were abandoned is logged at error level, not lost
    in silence."""
    clock = Clock()
    path = tmp_path / "log"
    receiver = bound_dgram(path)  # never reads
    audit = AuditLog(lt.SyslogLineTarget(lt.parse_syslog_address(f"unix:{path}"), clock), clock)
    sent = 0
    while not audit._target.sender.pending:  # type: ignore[attr-defined]
        audit.record("command", n=sent)
        sent += 1
    for i in range(5):
        audit.record("command", n=sent + i)
    with capturedLogs() as captured:
        closing = audit.close()
        clock.advance(lt.DRAIN_SECONDS + lt.RETRY_SECONDS * 2)
    assert closing.called
    errors = [formatEvent(e) for e in captured if e["log_level"] == LogLevel.error]
    assert any("6 audit record(s)" in text and "never delivered" in text for text in errors), errors
    receiver.close()


def test_audit_records_queued_for_a_syslog_that_restarts_arrive_once_it_is_back(tmp_path: Path) -> None:
    """Records waiting for a busy local syslog when it goes away (a restart: the socket is
    removed and bound again) are kept and sent to the new one, not dropped in silence."""
    clock = Clock()
    path = tmp_path / "log"
    receiver = bound_dgram(path)
    sink = lt.SyslogLineTarget(lt.parse_syslog_address(f"unix:{path}"), clock)
    audit = AuditLog(sink, clock)
    total = 0
    while len(sink.sender.pending) < 5:  # type: ignore[attr-defined]
        audit.record("command", n=total)
        total += 1
    receiver.close()
    path.unlink()  # the daemon stops
    clock.advance(lt.RETRY_SECONDS * 5)
    receiver = bound_dgram(path)  # and starts again
    receiver.setblocking(False)
    got: list[int] = []
    for _ in range(200):
        clock.advance(1.0)
        while True:
            try:
                got.append(json.loads(receiver.recv(1 << 16).split(b": ", 1)[1])["n"])
            except BlockingIOError:
                break
    queued_when_it_went = list(range(total - 5, total))
    assert got == queued_when_it_went
    receiver.close()


@pytest.mark.parametrize("target", ["syslog", "journal"])
def test_an_audit_record_too_big_for_one_message_stays_valid_json_and_says_what_was_cut(
    tmp_path: Path, target: str
) -> None:
    """An authenticated client can make a command record as big as it likes (many arguments):
    cut at the message limit it was half a JSON object, the arguments past the cut (the file
    that mattered, at the end) gone without a trace. It is shrunk to fit instead, marked, with
    every argument's count kept."""
    clock = Clock()
    path = tmp_path / "log"
    receiver = bound_dgram(path)
    sink: Any = (
        lt.SyslogLineTarget(lt.parse_syslog_address(f"unix:{path}"), clock)
        if target == "syslog"
        else lt.JournalLineTarget(str(path), clock)
    )
    audit = AuditLog(sink, clock)
    limit = lt.MAX_SYSLOG_BYTES if target == "syslog" else lt.MAX_JOURNAL_VALUE
    argv = ["comphash"] + [f"/srv/junk/{i:06d}" + "x" * 1000 for i in range(limit // 1000 + 10)] + ["/etc/shadow"]
    audit.record("command", user="eve", argv=argv, exit_code=0)
    data = receiver.recv(1 << 20)
    if target == "syslog":
        assert len(data) <= lt.MAX_SYSLOG_BYTES
        message = data.split(b": ", 1)[1]
    else:
        message = lt.parse_journal_entry(data)["MESSAGE"]
    record = json.loads(message)
    assert (record["event"], record["user"], record["exit_code"]) == ("command", "eve", 0)
    assert record["truncated"] is True
    assert record["argv_count"] == len(argv)
    assert record["argv"][:2] == argv[:2] and len(record["argv"]) < len(argv)
    receiver.close()


def test_a_shrunk_audit_record_keeps_escapes_escaped() -> None:
    """Undecodable bytes (lone surrogates) and line separators the audit log escaped stay escaped."""
    text = json.dumps({"ts": "t", "event": "command", "argv": ["\udcff\u2028" * 5000]})
    fitted = lt.fit_record(text, 2000)
    assert len(fitted.encode("utf-8")) <= 2000 and fitted.isascii()
    assert json.loads(fitted)["truncated"] is True


def test_direct_call_calls_an_observer_as_calling_it_does() -> None:
    """direct_call gives an object's bound __call__ (the same call, made inline) and leaves a
    function or a builtin as it is; what `filtered` builds from it still traces each hop."""
    seen: list[dict[str, object]] = []

    class Observer:
        def __call__(self, event: dict[str, object]) -> None:
            seen.append(event)

    observer = Observer()
    call = lt.direct_call(observer)
    assert call.__self__ is observer and call.__func__ is Observer.__call__  # type: ignore[attr-defined]
    append = seen.append
    assert lt.direct_call(append) is append
    assert lt.direct_call(print) is print

    def function(event: dict[str, object]) -> None:
        seen.append(event)

    assert lt.direct_call(function) is function

    publisher = LogPublisher(lt.filtered(observer))
    trace: list[object] = []
    lt.FastLogger(namespace=lt.LOG_NAMESPACE, observer=publisher).info("one {x}", x=1, log_trace=trace)
    lt.FastLogger(namespace="twisted.x", observer=publisher).info("dropped")
    assert [e["log_format"] for e in seen] == ["one {x}"]
    assert len(trace) == 3 and trace[-1][1] is observer  # type: ignore[index]  # the level filter's hop: the object


_ORDER_SCRIPT = r"""
import sys
from twisted.logger import LogPublisher
from conchcmd.core.audit import StreamTarget
from conchcmd.core.logtargets import LOG_NAMESPACE, FastLogger, stdout_observer

print("one")  # held in the text layer (stdout is a pipe: not line-buffered)
observer = stdout_observer(sys.stdout, {})
log = FastLogger(namespace=LOG_NAMESPACE, observer=LogPublisher(observer))
print("two")
log.info("three {x}", x="caf\u00e9")
sys.stdout.write("four\n")
StreamTarget(sys.stdout).write(b'{"five": 5}\n')
log.info("six")
print("seven")
sys.stdout.write("eight\n")
log.info("nine")
"""


def test_stdout_lines_keep_their_order_with_other_writers_of_stdout() -> None:
    """The stdout observer writes a line's bytes past the text layer of the process's stdout: what
    other writers left there unflushed (print, the audit log's "-") still comes first, in order,
    and the line's bytes are what the text layer would have written."""
    # A buffered stdout, as a server's is without -u: what print leaves waits in its text layer.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | {"PYTHONIOENCODING": "utf-8"}
    done = subprocess.run([sys.executable, "-c", _ORDER_SCRIPT], capture_output=True, env=env, timeout=60, check=True)
    lines = done.stdout.decode("utf-8").splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d{4} \[conchcmd\.log#info\] "
    assert lines[:2] == ["one", "two"]
    assert re.fullmatch(stamp + "three caf\u00e9", lines[2])
    assert lines[3:5] == ["four", '{"five": 5}']
    assert re.fullmatch(stamp + "six", lines[5])
    assert lines[6:8] == ["seven", "eight"]
    assert re.fullmatch(stamp + "nine", lines[8]) and len(lines) == 9
