"""The `/metrics` endpoint Prometheus scrapes (`metrics_listen`): twisted.web, GET /metrics only.

prometheus_client.twisted.MetricsResource is not used: it imports the global reactor and collects
in the reactor's thread pool, where the live state (the factory's connections) would be read while
the reactor changes it. Here the text is made on the reactor thread, as the state is.
"""

from __future__ import annotations

import io
from typing import Any

from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web import http, resource, server

from conchcmd.core.metrics import CONTENT_TYPE, Metrics

PATH = b"/metrics"
#: Seconds a connection may live, from accept to the end of its one answer, whatever it sends:
#: Prometheus's default scrape_timeout (a slower scrape has failed on Prometheus's side anyway).
DEADLINE = 10
#: Connections served at once (Prometheus needs one or two); any more is closed at accept, so that
#: no client of this port holds the file descriptors the SSH listener needs.
MAX_CONNECTIONS = 16


class _Discarded(io.BytesIO):
    """A request body is never kept: GET /metrics has none, and no other request is served."""

    def write(self, data: Any) -> int:
        return len(data)


class _Request(server.Request):
    def gotLength(self, length: int | None) -> None:
        # Twisted keeps a body in memory, or a temporary file past 100 kB, whatever the request.
        self.content = _Discarded()


class _Channel(http.HTTPChannel):
    """One request per connection, closed at DEADLINE. Corrects HTTPChannel's keep-alive and
    pipelining (it answers every queued request in full, read or not, a response's worth of memory
    per 30 request bytes) and its idle timeout, which restarts at every byte a slowloris sends."""

    site: MetricsSite

    def connectionMade(self) -> None:
        super().connectionMade()
        self._deadline = self.callLater(DEADLINE, self._expire)

    def _expire(self) -> None:
        self.transport.abortConnection()  # type: ignore[union-attr]  # every stream transport has it

    def checkPersistence(self, request: server.Request, version: bytes) -> bool:
        request.responseHeaders.setRawHeaders(b"connection", [b"close"])
        return False

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._deadline.active():
            self._deadline.cancel()
        self.site.channels.discard(self)
        super().connectionLost(reason)


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
    protocol = _Channel  # type: ignore[assignment]  # HTTP/1.1 only (no HTTP/2 negotiation: there is no TLS)

    def __init__(self, metrics: Metrics, reactor: Any):
        super().__init__(_Metrics(metrics), timeout=None, reactor=reactor)  # idle timeout: _Channel has DEADLINE
        self.channels: set[_Channel] = set()

    def buildProtocol(self, addr: Any) -> Any:
        if len(self.channels) >= MAX_CONNECTIONS:
            return None  # the listener closes the new socket at once
        channel = super().buildProtocol(addr)
        self.channels.add(channel)
        return channel

    def getResourceFor(self, request: server.Request) -> resource.Resource:
        return self.resource  # every path: the resource answers 404 to all but /metrics

    def log(self, request: Any) -> None:
        pass
