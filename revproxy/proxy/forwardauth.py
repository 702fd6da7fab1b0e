# -*- test-case-name: tests.test_access -*-
"""
Forward auth: before a request is forwarded, ask an auth service (Authelia,
Authentik, oauth2-proxy...) over the pooled upstream client whether it may
go, and take the service's answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from revproxy.proxy.headers import relayResponseHeaders
from revproxy.proxy.upstreamtls import SYSTEM_TRUST

if TYPE_CHECKING:
    from revproxy.config import ForwardAuth
    from revproxy.proxy.exchange import Exchange
    from revproxy.proxy.pool import ConnectionPool
    from revproxy.proxy.upstream import PoolKey, UpstreamConnection

Headers = list[tuple[bytes, bytes]]

#: The most bytes of an auth service's answer relayed to a client.
MAX_ANSWER = 64 * 1024

#: The client's fields the auth service gets, as they came.
_PASSED = (b"cookie", b"authorization")


def authKey(auth: ForwardAuth) -> PoolKey:
    """
    The pool key of C{auth}'s service.
    """
    upstream = auth.upstream
    return (
        upstream.scheme,
        upstream.host,
        upstream.port,
        SYSTEM_TRUST if upstream.scheme == "https" else None,
    )


class ForwardAuthCheck:
    """
    One question to the auth service about one request: a C{GET} of the
    service's URL with what the request is (C{X-Forwarded-Method}, C{-Uri},
    C{-Host}, C{-Proto}, C{-For}) and the client's C{Cookie} and
    C{Authorization}; then L{allowed} with the service's headers (a 2xx),
    L{answer} with its answer for the client (anything else), or L{failed}
    (it could not be asked: 502, or 504 past C{timeout_secs}).
    """

    def __init__(
        self,
        pool: ConnectionPool,
        clock: IReactorTime,
        request: Exchange,
        auth: ForwardAuth,
        host: str,
        uri: bytes,
        allowed: Callable[[Headers], None],
        answer: Callable[[int, bytes, Headers, bytes], None],
        failed: Callable[[int, str], None],
    ) -> None:
        self.pool = pool
        self.clock = clock
        self.request = request
        self.auth = auth
        self.host = host
        self.uri = uri
        self.allowed = allowed
        self.answer = answer
        self.failed = failed
        self.connection: UpstreamConnection | None = None
        self.timer: IDelayedCall | None = None
        self.withdraw: Callable[[], None] | None = None
        self.done = False
        self.code = 0
        self.reason = b""
        self.headers: Headers = []
        self.body: list[bytes] = []
        self.size = 0

    def start(self) -> None:
        timeout = self.auth.timeout_secs
        self.timer = self.clock.callLater(timeout, self._timedOut)
        pending = self.pool.acquire(authKey(self.auth), self, timeout)
        if not self.done and self.connection is None:
            self.withdraw = pending

    def _head(self) -> bytes:
        request = self.request
        upstream = self.auth.upstream
        default = 443 if upstream.scheme == "https" else 80
        name = f"[{upstream.host}]" if ":" in upstream.host else upstream.host
        hostValue = name if upstream.port == default else f"{name}:{upstream.port}"
        fields: Headers = [
            (b"Host", hostValue.encode("idna")),
            (b"X-Forwarded-Method", request.method),
            (b"X-Forwarded-Uri", self.uri),
            (b"X-Forwarded-Host", self.host.encode("idna")),
            (b"X-Forwarded-Proto", b"https" if request.secure else b"http"),
            (b"X-Forwarded-For", (request.clientIP or "").encode("ascii")),
        ]
        if request.requestID:
            fields.append((b"X-Request-ID", request.requestID.encode("ascii")))
        fields += [pair for pair in request.headers if pair[0] in _PASSED]
        parts = [b"GET ", self.auth.path.encode("ascii"), b" HTTP/1.1\r\n"]
        for name_, value in fields:
            parts += (name_, b": ", value, b"\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    # -- ConnectionWaiter

    def connectionReady(self, connection: UpstreamConnection) -> None:
        self.withdraw = None
        if self.done:
            connection.pool.release(connection)
            return
        self.connection = connection
        connection.send(self, self._head(), False)

    def connectionFailed(self, reason: Failure) -> None:
        self.withdraw = None
        self._fail(502, f"the auth service is unreachable: {reason.getErrorMessage()}")

    def connectionOpening(self) -> None:
        pass

    # -- ResponseSink

    def responseStarted(self, code: int, reason: bytes, headers: Headers) -> None:
        self.code, self.reason, self.headers = code, reason, headers

    def responseBody(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > MAX_ANSWER:
            connection = self.connection
            self.connection = None
            if connection is not None:
                connection.abandon()
            self._fail(502, "the auth service's answer is too long")
            return
        self.body.append(data)

    def responseDone(self) -> None:
        if self.done:
            return
        self._stop()
        self.connection = None
        if 200 <= self.code < 300:
            self.allowed(self.headers)
            return
        out, _ = relayResponseHeaders(self.headers)
        out = [pair for pair in out if pair[0].lower() != b"content-length"]
        self.answer(self.code, self.reason, out, b"".join(self.body))

    def responseFailed(self, reason: Exception) -> None:
        self.connection = None
        self._fail(502, f"the auth service failed: {reason}")

    # -- ends

    def _timedOut(self) -> None:
        self.timer = None
        withdraw = self.withdraw
        self.withdraw = None
        if withdraw is not None:
            withdraw()
        connection = self.connection
        self.connection = None
        if connection is not None:
            connection.abandon()
        self._fail(
            504, f"the auth service did not answer in {self.auth.timeout_secs:g} s"
        )

    def _fail(self, code: int, detail: str) -> None:
        if self.done:
            return
        self._stop()
        self.failed(code, detail)

    def _stop(self) -> None:
        self.done = True
        timer = self.timer
        self.timer = None
        if timer is not None and timer.active():
            timer.cancel()
