# -*- test-case-name: tests.test_metrics -*-
"""
The ops listener: C{/healthz} for load balancers and C{/metrics} for
Prometheus, on twisted.web (loopback by default).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from prometheus_client.exposition import choose_encoder
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import Request
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from revproxy.admin import healthzBody
from revproxy.metrics import Metrics

_NOT_FOUND = b"404 Not Found: this listener serves /healthz and /metrics\n"
_NOT_ALLOWED = b"405 Method Not Allowed: use GET or HEAD\n"
_TEXT = b"text/plain; charset=utf-8"
_JSON = b"application/json"

_log = Logger()


class OpsResource(Resource):
    """
    The resource of the ops listener: C{GET /healthz} and C{GET /metrics}
    (and C{HEAD}).

    C{/healthz} answers C{200} while serving and C{503} once L{draining}
    says so (L{revproxy.admin.healthzBody} writes the body), so that a load
    balancer stops sending new clients during a graceful shutdown.
    C{/metrics} answers the Prometheus text format, or OpenMetrics when the
    client's C{Accept} asks for it (as prometheus_client's own server
    chooses).  Any other path is C{404}, any other method C{405}.  No
    answer may be cached.
    """

    isLeaf = True

    def __init__(
        self,
        metrics: Metrics | None,
        draining: Callable[[], bool],
        collect: Callable[[], Deferred[Any]] | None = None,
    ) -> None:
        """
        @param draining: whether the proxy is shutting down.
        @param collect: gathers the registry to answer C{/metrics} from,
            when it is not C{metrics}' own (a supervisor's, summed from its
            workers).
        """
        super().__init__()
        self.metrics = metrics
        self.draining = draining
        self.collect = collect

    def render(self, request: IRequest) -> bytes | int:
        """
        Answer C{request}.
        """
        request.setHeader(b"cache-control", b"no-store")
        path = request.path
        if path != b"/healthz" and path != b"/metrics":
            return self._answer(request, 404, _TEXT, _NOT_FOUND)
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return self._answer(request, 405, _TEXT, _NOT_ALLOWED)
        if path == b"/healthz":
            if self.draining():
                return self._answer(request, 503, _JSON, healthzBody(draining=True))
            return self._answer(request, 200, _JSON, healthzBody(draining=False))
        accept = request.getHeader(b"accept")
        encoder, contentType = choose_encoder(
            "" if accept is None else accept.decode("latin-1")
        )
        if self.collect is None:
            assert self.metrics is not None
            body = encoder(self.metrics.registry)
            return self._answer(request, 200, contentType.encode("ascii"), body)

        gone: list[bool] = []
        cast(Request, request).notifyFinish().addErrback(lambda _: gone.append(True))

        def collected(registry: Any) -> None:
            if gone:
                return
            body = self._answer(
                request, 200, contentType.encode("ascii"), encoder(registry)
            )
            request.write(body)
            request.finish()

        def failed(reason: Failure) -> None:
            _log.failure("Collecting the metrics failed", reason)
            if gone:
                return
            request.write(
                self._answer(request, 503, _TEXT, b"503: metrics unavailable\n")
            )
            request.finish()

        self.collect().addCallback(collected).addErrback(failed)
        return NOT_DONE_YET

    def _answer(
        self, request: IRequest, code: int, contentType: bytes, body: bytes
    ) -> bytes:
        """
        Set the status and headers of the answer and give its body (none for
        C{HEAD}, with the C{Content-Length} of the C{GET}).
        """
        request.setResponseCode(code)
        request.setHeader(b"content-type", contentType)
        request.setHeader(b"content-length", b"%d" % (len(body),))
        if request.method == b"HEAD":
            return b""
        return body


class _OpsSite(Site):
    """
    The L{Site} of the ops listener: no access log (probes and scrapes every
    few seconds would flood it), no form parsing.
    """

    noisy = False

    def log(self, request: Request) -> None:
        """
        Log nothing.
        """


def opsSite(
    metrics: Metrics | None,
    draining: Callable[[], bool],
    reactor: Any,
    collect: Callable[[], Deferred[Any]] | None = None,
) -> Site:
    """
    The L{Site} to serve on C{ops_listen}.

    @param draining: whether the proxy is shutting down (C{/healthz} then
        answers 503).
    @param reactor: the reactor, for the site's clock (idle timeouts).
    @param collect: see L{OpsResource}.
    """
    return _OpsSite(
        OpsResource(metrics, draining, collect),
        reactor=reactor,
        parsePOSTFormSubmission=False,
    )
