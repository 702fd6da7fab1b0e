# -*- test-case-name: tests.test_cluster -*-
"""
The connection to the fleet's Redis (C{[cluster] redis_url}), on
txredisapi with hiredis, chosen by measurement (docs/performance.md, "The
Redis client (#19)"): AUTH, SELECT, TLS with a CA, reconnection with
back-off, and whether it is up, for the parts that must not wait for a
Redis that is down.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.logger import Logger
from zope.interface import implementer

from revproxy.config import ClusterConfig
from revproxy.interfaces import IRevProxyReactor
from revproxy.private.txredisapi import connected

_log = Logger()

#: A command not answered this long closes the connection (it is opened
#: again): a Redis that hangs is a Redis that is down.
REPLY_TIMEOUT_SECS = 2.0


@implementer(IStreamClientEndpoint)
class _TLSEndpoint:
    """
    TLS over another endpoint, giving the protocol inside (what txredisapi
    expects of an endpoint), verified against the cluster's CA.
    """

    def __init__(self, wrapped: IStreamClientEndpoint, host: str, caPEM: bytes) -> None:
        trust = Certificate.loadPEM(caPEM) if caPEM else None
        self._endpoint = wrapClientTLS(
            optionsForClientTLS(host, trustRoot=trust)
            if trust is not None
            else optionsForClientTLS(host),
            wrapped,
        )

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        connecting: Deferred[Any] = self._endpoint.connect(factory)
        return connecting.addCallback(lambda tls: tls.wrappedProtocol)


class RedisLink(Service):
    """
    One connection to the cluster's Redis, opened at start and kept open
    (reconnected with back-off) until stop (named C{"redis"}).

    @ivar up: whether a connection is open now.
    """

    name = "redis"

    def __init__(self, reactor: IRevProxyReactor, cluster: ClusterConfig) -> None:
        self._reactor = reactor
        self.cluster = cluster
        self._factory: Any = None

    @property
    def up(self) -> bool:
        factory = self._factory
        return factory is not None and connected(factory)

    def startService(self) -> None:
        super().startService()
        # txredisapi imports the global reactor: only when it is used.
        import txredisapi  # type: ignore[import-untyped]

        cluster = self.cluster
        factory = txredisapi.RedisFactory(
            f"{cluster.redis_host}:{cluster.redis_port}",
            cluster.redis_db,
            1,
            isLazy=True,
            handler=txredisapi.ConnectionHandler,
            password=cluster.redis_password or None,
            replyTimeout=REPLY_TIMEOUT_SECS,
            convertNumbers=True,
        )
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            self._reactor, cluster.redis_host, cluster.redis_port, timeout=5
        )
        if cluster.redis_tls:
            caPEM = b""
            if cluster.redis_ca_file:
                with open(cluster.redis_ca_file, "rb") as f:
                    caPEM = f.read()
            endpoint = _TLSEndpoint(endpoint, cluster.redis_host, caPEM)
        factory.startConnecting(endpoint)
        self._factory = factory

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        factory, self._factory = self._factory, None
        if factory is None:
            return None
        stopped: Deferred[Any] = factory.disconnect()
        return stopped.addBoth(lambda _: None)

    def evalsha(
        self, sha: str, script: str, keys: list[str], args: list[Any]
    ) -> Deferred[Any]:
        """
        Run the Lua C{script} by its C{sha} (loaded again, by C{EVAL}, when
        Redis does not have it).  Only call while L{up}: a call made while
        Redis is down waits for it to come back.
        """
        import txredisapi

        handler = self._factory.handler
        d: Deferred[Any] = handler.evalsha(sha, keys, args)

        def missing(reason: Any) -> Any:
            reason.trap(txredisapi.ScriptDoesNotExist)
            return handler.eval(script, keys, args)

        return d.addErrback(missing)
