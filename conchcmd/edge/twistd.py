"""`twistd conchcmd`: the same server as `conchcmd serve`, the Twisted way (twistd handles
daemonising, pid files and logging). Under `twistd --uid/--gid` the service binds its endpoints in
privilegedStartService, before the switch; host keys and the audit log are opened in makeService."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

from conchcmd.core.config import ConfigError, load_config


class Options(usage.Options):
    optParameters = [["config", "c", None, "config file (default: ./conchcmd.toml if present)"]]
    optFlags: list[list[str]] = []


@implementer(IServiceMaker, IPlugin)
class ServiceMaker:
    tapname = "conchcmd"
    description = "A hardened SSH server for ops commands (lastlog, comphash)."
    options = Options

    def makeService(self, options: Options) -> Any:
        import sys

        from twisted.internet import reactor

        from conchcmd.edge.service import ConchcmdService, StartupError

        path = Path(options["config"]) if options["config"] else None
        try:
            config = load_config(path, cwd=Path.cwd())
        except ConfigError as e:
            raise SystemExit(f"conchcmd: configuration error: {e}") from None
        if config.log.target != "stdout":  # twistd keeps its own log file (or --syslog) as well
            from twisted.logger import globalLogPublisher

            from conchcmd.core.logtargets import filtered, log_observer

            target = log_observer(config.log.target, config.log.syslog_address, reactor, sys.stdout, sys.stderr)
            globalLogPublisher.addObserver(filtered(target))
        service = ConchcmdService(config, reactor, sys.stdout, config_path=config.source)
        try:
            service.prepare()
        except StartupError as e:
            raise SystemExit(f"conchcmd: {e}") from None
        # twistd leaves SIGHUP at its default, which ends the process: reopen and reload, as serve does.
        signal.signal(signal.SIGHUP, lambda *_: service.reactor.callFromThread(service.reload))
        return service


service_maker = ServiceMaker()
