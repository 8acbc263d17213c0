"""The `/metrics` endpoint Prometheus scrapes (`metrics_listen`): twisted.web, GET /metrics only.

prometheus_client.twisted.MetricsResource is not used: it imports the global reactor and collects
in the reactor's thread pool, where the live state (the factory's connections) would be read while
the reactor changes it. Here the text is made on the reactor thread, as the state is.
"""

from __future__ import annotations

import io
from typing import Any

from twisted.web import resource, server

from conchcmd.core.metrics import CONTENT_TYPE, Metrics

PATH = b"/metrics"
#: Seconds an HTTP connection may stay idle (Twisted's default is 60).
IDLE_TIMEOUT = 30


class _Discarded(io.BytesIO):
    """A request body is never kept: GET /metrics has none, and no other request is served."""

    def write(self, data: Any) -> int:
        return len(data)


class _Request(server.Request):
    def gotLength(self, length: int | None) -> None:
        # Twisted keeps a body in memory, or a temporary file past 100 kB, whatever the request.
        self.content = _Discarded()


class _Metrics(resource.Resource):
    isLeaf = True

    def __init__(self, metrics: Metrics):
        super().__init__()
        self.metrics = metrics

    def render(self, request: server.Request) -> bytes:
        request.setHeader(b"server", b"conchcmd")  # not Twisted's name and version
        if request.method != b"GET" or request.path != PATH:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"Not found: only GET /metrics is served\n"
        request.setHeader(b"content-type", CONTENT_TYPE.encode("ascii"))
        return self.metrics.exposition()


class MetricsSite(server.Site):
    """The HTTP factory serving one server's metrics; no access log (Prometheus scrapes often)."""

    noisy = False
    requestFactory = _Request

    def __init__(self, metrics: Metrics, reactor: Any):
        super().__init__(_Metrics(metrics), timeout=IDLE_TIMEOUT, reactor=reactor)

    def getResourceFor(self, request: server.Request) -> resource.Resource:
        return self.resource  # every path: the resource answers 404 to all but /metrics

    def log(self, request: Any) -> None:
        pass
