# -*- test-case-name: tests.test_service -*-
"""
Opening upstream connections for the pool: plain TCP or verified TLS.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IConnector
from twisted.internet.protocol import ClientFactory

from revproxy.interfaces import IRevProxyReactor
from revproxy.proxy.pool import UpstreamConnector
from revproxy.proxy.upstream import PoolKey
from revproxy.proxy.upstreamtls import ClientCreators


def reactorConnector(reactor: IRevProxyReactor) -> UpstreamConnector:
    """
    Open upstream connections with C{reactor}: plain TCP for http://, TLS
    verified as the site says (system trust store, its own CA file, or not
    at all) for https://.
    """
    creators = ClientCreators()

    def connect(key: PoolKey, factory: ClientFactory, timeout: float) -> IConnector:
        _scheme, host, port, settings = key
        if settings is not None:
            creator: Any = creators.creatorFor(settings.serverName or host, settings)
            return reactor.connectSSL(
                host, port, factory, creator, timeout=timeout, bindAddress=None
            )
        return reactor.connectTCP(host, port, factory, timeout=timeout)

    return connect
