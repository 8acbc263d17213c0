"""The running server as a Twisted Service: shared by `conchcmd serve` and `twistd conchcmd`.

Starting loads host keys, opens the audit log, starts the thread pool and listens on every
endpoint; it then tells systemd it is ready (sd_notify, no dependency). Stopping stops
accepting, tells clients why, and closes what it opened. `reload` re-reads the configuration
(SIGHUP): users, keys and policy change for new logins, running sessions keep theirs. Start,
stop and reload each write a log line and an audit record (`server_start`, `server_stop`,
`reload`) with a digest of the configuration.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any, TextIO

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.selectreactor import SelectReactor
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from conchcmd import __version__
from conchcmd.app import Server, build_server
from conchcmd.core.audit import AuditLog
from conchcmd.core.config import Config, ConfigError, audit_group_id, load_config
from conchcmd.core.endpoints import proxied_description, proxy_problem
from conchcmd.core.fdlimit import FD_SETSIZE, DescriptorLimit, limit_warning, raise_soft_limit
from conchcmd.core.filetrust import FileTrust
from conchcmd.core.logtargets import LOG_NAMESPACE
from conchcmd.core.metrics import Metrics
from conchcmd.core.peer import format_peer, host_and_port
from conchcmd.core.threads import ThreadRunner
from conchcmd.core.twistedprivate import accept_as_closing_servers, keep_port_logger
from conchcmd.edge.configdiff import applies_on_reload, changed_settings, config_digest
from conchcmd.policy.authorized_keys import fingerprint
from conchcmd.server.proxied import ProxyHeaderFactory, ProxySettings
from conchcmd.server.transport import set_listener_options
from conchcmd.wire.hostkeys import HostKeyError, HostKeys, ensure_host_keys, load_host_keys

log = Logger(namespace=LOG_NAMESPACE)


#: CPU priority of the password threads: guessing load yields to the reactor and the commands.
PASSWORD_THREADS_NICE = 10
#: CPU priority of the threads hashing big files: they yield to the reactor and short commands.
BULK_THREADS_NICE = 10


class StartupError(Exception):
    """The server cannot start (a bad host key, an endpoint that cannot listen, ...)."""


def sd_notify(state: bytes, environ: dict[str, str] | None = None) -> bool:
    """Send a state line to systemd's NOTIFY_SOCKET, if there is one (Type=notify units)."""
    address = (environ if environ is not None else os.environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # the abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(state)
        except OSError as e:
            log.warn("sd_notify to {address} failed: {error}", address=address, error=e.strerror)
            return False
    return True


class ConchcmdService(Service):
    """One conchcmd server: the factory listening on its endpoints, and what it owns."""

    def __init__(
        self,
        config: Config,
        reactor: Any,
        out: TextIO,
        *,
        listen: tuple[str, ...] | None = None,
        config_path: Path | None = None,
    ):
        self.config = config
        self.started_config = config  # what the parts built once at start were built from
        self.reactor = reactor
        self.out = out
        self.listen = listen or config.listen
        self.config_path = config_path
        self.ports: list[Any] = []
        self.proxy_factories: list[ProxyHeaderFactory] = []  # of the haproxy: endpoints
        self.metrics_ports: list[Any] = []  # `metrics_listen`'s
        self._binding: defer.Deferred[Any] | None = None  # the endpoints' listen, once started
        self.server: Server | None = None
        self.ready: defer.Deferred[None] = defer.Deferred()
        self.host_keys: HostKeys | None = None
        self.started_at: float | None = None
        self.fd_limit: DescriptorLimit | None = None
        #: Why the server stops, for the stop line and `server_stop` (the caller may say better).
        self.stop_reason = "shutdown"

    def say(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def prepare(self) -> None:
        """Everything that can fail before the reactor runs: keys, audit log, the object graph."""
        config = self.config
        # Each connection is a descriptor: the soft limit (1024 under systemd) would cap max_clients.
        self.fd_limit = raise_soft_limit(cap=FD_SETSIZE if isinstance(self.reactor, SelectReactor) else None)
        trust = FileTrust(strict=config.strict_modes)
        try:
            for path in ensure_host_keys(config.host_keys_dir, trust=trust):
                self.say(f"conchcmd: created host key {path}")
            host_keys = self.host_keys = load_host_keys(config.host_keys_dir, trust=trust)
        except HostKeyError as e:
            raise StartupError(f"refusing to start: {e}") from None
        hostname = socket.gethostname()
        group = audit_group_id(config.audit_group) if config.audit_group else None
        if config.audit_group and group is None:
            raise StartupError(f"audit_group {config.audit_group!r}: no such group")
        try:
            self.audit = AuditLog.open(
                config.audit_log,
                self.reactor,
                failure_mode=config.audit_failure,
                host=hostname,
                group=group,
                syslog_address=config.log.syslog_address,
            )
        except OSError as e:
            raise StartupError(f"cannot open audit log {config.audit_log}: {e.strerror}") from None
        self.pool = ThreadPool(minthreads=0, maxthreads=config.comphash.max_concurrent + 2, name="conchcmd")
        # Big files are hashed in threads of their own, at a lower priority (see Hasher).
        self.bulk_pool = ThreadPool(minthreads=0, maxthreads=config.comphash.max_concurrent, name="conchcmd-hash")
        # Password checks get threads of their own, as many as may run at once (max_password_checks).
        self.password_pool = ThreadPool(
            minthreads=0, maxthreads=config.limits.max_password_checks, name="conchcmd-passwords"
        )
        self.runners = (
            ThreadRunner(self.reactor, self.pool),
            ThreadRunner(self.reactor, self.password_pool, nice=PASSWORD_THREADS_NICE),
            ThreadRunner(self.reactor, self.bulk_pool, nice=BULK_THREADS_NICE),
        )
        self.server = build_server(
            config,
            self.reactor,
            host_keys=host_keys,
            audit=self.audit,
            runner=self.runners[0],
            password_runner=self.runners[1],
            hostname=hostname,
            bulk_runner=self.runners[2],
        )

    def privilegedStartService(self) -> None:
        """Bind the endpoints now: twistd calls this before `--uid`/`--gid` drop privileges, so
        an unprivileged server can serve port 22. Readiness waits for startService."""
        super().privilegedStartService()
        self._bind()

    def _bind(self) -> defer.Deferred[Any]:
        if self._binding is None:
            if self.server is None:
                self.prepare()
            listening = [self._listen(description) for description in self.listen]
            if self.server is not None and self.server.metrics is not None and self.config.metrics_listen:
                listening.append(self._serve_metrics(self.config.metrics_listen, self.server.metrics))
            self._binding = defer.gatherResults(listening, consumeErrors=True)
        return self._binding

    def startService(self) -> None:
        super().startService()
        binding = self._bind()  # bound already under twistd (privilegedStartService)
        self.pool.start()
        self.bulk_pool.start()
        self.password_pool.start()
        binding.addCallbacks(self._listening, self._failed_to_listen).addErrback(
            lambda failure: log.failure("Starting the server failed", failure)
        )

    def _listen(self, description: str) -> defer.Deferred[Any]:
        assert self.server is not None
        factory: Any = self.server.factory
        inner = proxied_description(description)
        if inner is not None:  # haproxy:, served by conchcmd's PROXY reader (server/proxied.py)
            problem = proxy_problem(description)
            if problem is not None:
                return defer.fail(StartupError(f"cannot listen on {description}: {problem}"))
            factory = ProxyHeaderFactory.serving(factory, ProxySettings.from_config(self.config))
            self.proxy_factories.append(factory)
        return self._open(description, inner or description, factory, self.ports, "listen on", "listening on")

    def _serve_metrics(self, description: str, metrics: Metrics) -> defer.Deferred[Any]:
        """Listen on `metrics_listen` for Prometheus's scrapes, as on a `listen` endpoint."""
        # twisted.web costs every process 4 MiB: imported only by a server that serves metrics
        from conchcmd.edge.metricsweb import MetricsSite

        site = MetricsSite(metrics, self.reactor)
        return self._open(description, description, site, self.metrics_ports, "serve metrics on", "serving metrics on")

    def _open(
        self, description: str, endpoint_description: str, factory: Any, ports: list[Any], verb: str, doing: str
    ) -> defer.Deferred[Any]:
        """Listen with `factory` on the endpoint `endpoint_description` (`description` less any
        `haproxy:`), adding the port to `ports`; the messages name `description`."""
        try:
            endpoint = serverFromString(self.reactor, endpoint_description)
        except Exception as e:  # any bad description, e.g. `systemd:` with no inherited socket
            return defer.fail(StartupError(f"cannot {verb} {description}: bad endpoint: {e}"))
        d = endpoint.listen(factory)

        def listening(port: Any) -> None:
            ports.append(port)
            ip = host_and_port(port.getHost())
            where = f"{ip[0]}:{ip[1]}" if ip is not None else ":"
            self.say(f"conchcmd: {doing} {description} ({where})")

        def failed(failure: Any) -> None:
            raise StartupError(f"cannot {verb} {description}: {failure.getErrorMessage()}")

        return d.addCallbacks(listening, failed)

    def _listening(self, _: object) -> None:
        if self.server is not None and self.ports:
            # Options set once on each listening socket, not on each connection (until all are
            # set, connections set them themselves).
            keepalive = self.server.factory.settings.tcp_keepalive
            done = [set_listener_options(port, keepalive=keepalive) for port in self.ports]
            for port in self.ports:
                keep_port_logger(port)
                accept_as_closing_servers(port)
            self.server.factory.listener_options = all(done)
        ip = host_and_port(self.ports[0].getHost()) if self.ports else None
        port = ip[1] if ip is not None else None
        hint = no_users_hint(self.config, port)
        if hint:
            self.say(hint)
        self.started_at = self.reactor.seconds()
        listening = [format_peer(port.getHost()) for port in self.ports]
        host_keys = host_key_fingerprints(self.host_keys)
        if self.fd_limit is not None:
            log.info("File descriptor limit {limit}", limit=self.fd_limit.describe())
            warning = limit_warning(self.config, self.fd_limit.soft)
            if warning is not None:
                log.warn("{warning}: raise LimitNOFILE= (systemd) or ulimit -Hn", warning=warning)
        log.info(
            "Server started: conchcmd {version} listening on {listen}; host keys {host_keys}",
            version=__version__,
            listen=", ".join(listening),
            host_keys=", ".join(host_keys),
        )
        self.audit.record(
            "server_start",
            version=__version__,
            listen=listening,
            host_keys=host_keys,
            config_digest=config_digest(self.config),
        )
        sd_notify(b"READY=1\nSTATUS=listening")
        self.ready.callback(None)

    def _failed_to_listen(self, failure: Any) -> None:
        error = failure.value.subFailure.value if isinstance(failure.value, defer.FirstError) else failure.value
        self.stop_reason = f"startup failed: {error}"
        self.ready.errback(error)
        self.reactor.stop()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        sd_notify(b"STOPPING=1")
        started_at = self.started_at
        if started_at is not None:
            uptime = self.reactor.seconds() - started_at
            log.info("Server stopping ({reason}) after {uptime:.0f} s", reason=self.stop_reason, uptime=uptime)
        for port in self.ports + self.metrics_ports:
            port.stopListening()
        for proxied in self.proxy_factories:
            proxied.close_pending()
        closing = self.server.factory.close_all(b"server shutting down") if self.server else defer.succeed(None)

        def release(_: object) -> Any:
            for runner in self.runners:  # their waiting workers give their threads back at once
                runner.stop()
            for pool in (self.pool, self.bulk_pool, self.password_pool):
                if pool.started:
                    pool.stop()
            if started_at is not None:  # the last record: after the clients' disconnects
                uptime = round(self.reactor.seconds() - started_at, 3)
                self.audit.record("server_stop", reason=self.stop_reason, uptime=uptime)
            return self.audit.close()  # a syslog over TCP: shutdown waits until it has the records

        return closing.addBoth(release)

    def reload(self) -> bool:
        """Reopen the audit file (after log rotation) and re-read the configuration file; keep
        the old configuration if the new one is bad.

        Logs and audits which changed settings took effect and which need a restart (those
        differing from what the server was started with, including ones changed by an earlier
        reload)."""
        if self.server is not None:
            self.audit.reopen()  # whatever becomes of the configuration
        if self.config_path is None or self.server is None:
            log.warn("SIGHUP: no configuration file to reload")
            return False
        # MONOTONIC_USEC: systemd's notify-reload protocol wants it; plain notify accepts it.
        sd_notify(b"RELOADING=1\nMONOTONIC_USEC=%d" % (time.monotonic_ns() // 1000))
        try:
            config = load_config(self.config_path, cwd=Path.cwd())
        except ConfigError as e:
            log.warn("Reload rejected, keeping the running configuration: {error}", error=str(e))
            self.audit.record("reload", ok=False, reason=str(e), config_digest=config_digest(self.config))
            sd_notify(b"READY=1\nSTATUS=reload rejected")
            return False
        self.server.reload(config)
        self.password_pool.adjustPoolsize(maxthreads=config.limits.max_password_checks)
        changed = changed_settings(self.config, config)
        pending = [s for s in changed_settings(self.started_config, config) if not applies_on_reload(s)]
        self.config = config
        applied = [s for s in changed if applies_on_reload(s)]
        log.info(
            "Reloaded users, keys and policy from {path}: {applied}; {pending}",
            path=str(self.config_path),
            applied=f"took effect: {', '.join(applied)}" if applied else "no change took effect",
            pending=f"need a restart: {', '.join(pending)}" if pending else "nothing needs a restart",
        )
        self.audit.record(
            "reload", ok=True, config_digest=config_digest(config), changed=changed, restart_needed=pending
        )
        sd_notify(b"READY=1\nSTATUS=listening")
        return True


def host_key_fingerprints(host_keys: HostKeys | None) -> list[str]:
    """`TYPE SHA256:...` of each host key, as `ssh-keygen -lf` names them."""
    if host_keys is None:
        return []
    return [f"{kind.decode()} {fingerprint(key.blob())}" for kind, key in sorted(host_keys.public.items())]


def no_users_hint(config: Config, port: int | None = None) -> str | None:
    """How to add a user, if the authorized_keys pattern's directory has no user files yet and no
    CA is trusted (with `trusted_user_ca_keys` users come with their certificates)."""
    if config.trusted_user_ca_keys:
        return None
    pattern = Path(config.authorized_keys)
    if "%u" not in pattern.name or "%u" in str(pattern.parent):
        return None
    directory = pattern.parent
    try:
        if directory.is_dir() and any(p.is_file() for p in directory.iterdir()):
            return None
    except OSError:  # e.g. not searchable by the user twistd --uid switched to: no hint
        return None
    config_arg = f" --config {config.source}" if config.source else ""
    return (
        "No users are configured yet. Authorize a key, for example:\n"
        f"    conchcmd adduser{config_arg} admin ~/.ssh/id_ed25519.pub\n"
        f"then connect with: ssh -p {port or 'PORT'} admin@{'localhost' if port else 'HOST'}"
    )
