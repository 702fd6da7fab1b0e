# -*- test-case-name: tests.test_cluster -*-
"""
The connection to the fleet's Redis (C{[cluster] redis_url}), on
txredisapi with hiredis, chosen by measurement (docs/performance.md, "The
Redis client (#19)"): AUTH, SELECT, TLS with a CA, reconnection with
back-off, and whether it is up, for the parts that must not wait for a
Redis that is down.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.logger import Logger

from revproxy.config import ClusterConfig
from revproxy.interfaces import IRevProxyReactor
from revproxy.private.txredisapi import connected

_log = Logger()

#: A command not answered this long closes the connection (it is opened
#: again): a Redis that hangs is a Redis that is down.
REPLY_TIMEOUT_SECS = 2.0

#: The reconnection back-off: the first retry after about this long...
RETRY_INITIAL_SECS = 0.2

#: ...growing by this factor at each failed attempt in a row...
RETRY_FACTOR = 2.0

#: ...up to this (plus a jitter: of at most L{RETRY_JITTER_SECS} on the
#: request path's link, a fraction of the delay on txredisapi's), so that
#: the fleet's processes do not all come back in the same instant and a
#: Redis back after an outage is used again within a few seconds.
RETRY_MAX_SECS = 4.0
RETRY_JITTER_SECS = 0.5


class Commands(Protocol):
    """
    What the fleet's parts need of the Redis connection (L{RedisLink}).
    """

    @property
    def up(self) -> bool:
        """
        Whether a connection is open now.
        """

    def command(self, *args: Any) -> Deferred[Any]:
        """
        Send one Redis command and get its reply; fails at once while Redis
        is down.
        """


class Messages(Protocol):
    """
    What the fleet's parts need of its messages (L{RedisSubscription}).
    """

    def listen(self, channel: str, handler: Callable[[str], None]) -> None:
        """
        Call C{handler} with each message published on C{channel}.
        """

    def onSubscribed(self, resync: Callable[[], None]) -> None:
        """
        Call C{resync} each time the subscriptions are made.
        """


def redisEndpoint(
    reactor: IRevProxyReactor, cluster: ClusterConfig
) -> IStreamClientEndpoint:
    """
    Where the cluster's Redis is: TCP, or TLS verified against
    C{redis_ca_file} (the system's roots without one).
    """
    endpoint: IStreamClientEndpoint = HostnameEndpoint(
        reactor, cluster.redis_host, cluster.redis_port, timeout=5
    )
    if not cluster.redis_tls:
        return endpoint
    trust = None
    if cluster.redis_ca_file:
        with open(cluster.redis_ca_file, "rb") as f:
            trust = Certificate.loadPEM(f.read())
    # wrapClientTLS's connect gives the protocol inside the TLS layer, as
    # txredisapi's and Twisted's ClientService expect.
    return wrapClientTLS(
        optionsForClientTLS(cluster.redis_host, trustRoot=trust)
        if trust is not None
        else optionsForClientTLS(cluster.redis_host),
        endpoint,
    )


def _backOff(factory: Any) -> None:
    """
    Give a txredisapi factory the reconnection back-off of L{RETRY_INITIAL_SECS}
    (its documented C{initialDelay}, C{factor} and C{maxDelay}; its own
    cap is 10 s).
    """
    factory.initialDelay = RETRY_INITIAL_SECS
    factory.factor = RETRY_FACTOR
    factory.maxDelay = RETRY_MAX_SECS


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
        _backOff(factory)
        factory.startConnecting(redisEndpoint(self._reactor, cluster))
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

    def command(self, *args: Any) -> Deferred[Any]:
        """
        Send one Redis command (C{"SET", key, value, "PX", 1000}) and get
        its reply: bulk strings as L{str}, numbers converted.  Fails at
        once with L{ConnectionError} while Redis is down (nothing waits
        for it to come back).
        """
        if not self.up:
            return _down()
        d: Deferred[Any] = self._factory.handler.execute_command(*args)
        return d

    def whenUp(self, timeout: float) -> Deferred[bool]:
        """
        Whether Redis is up, waiting at most C{timeout} seconds for a
        connection being opened (at start, or after a loss).
        """
        if self.up:
            return succeed(True)
        done: Deferred[bool] = Deferred()
        clock = self._reactor
        deadline = clock.seconds() + timeout

        def check() -> None:
            if self.up or not self.running or clock.seconds() >= deadline:
                done.callback(self.up)
            else:
                clock.callLater(0.05, check)

        clock.callLater(0.05, check)
        return done


def _down() -> Deferred[Any]:
    return fail(ConnectionError("Redis is down"))


class RedisSubscription(Service):
    """
    The fleet's messages (Redis pub/sub), on a connection of their own
    (a subscribed connection can do nothing else), opened at start and
    kept open until stop, reconnected with back-off.

    Channels are named before start (L{listen}); each time the
    subscriptions are made (at start, and again after Redis was lost),
    L{onSubscribed} is called: a message sent while this node was not
    subscribed is lost, so the parts that rely on messages read again what
    they might have missed then.
    """

    name = "redis-subscription"

    def __init__(self, reactor: IRevProxyReactor, cluster: ClusterConfig) -> None:
        self._reactor = reactor
        self.cluster = cluster
        self._handlers: dict[str, Callable[[str], None]] = {}
        self._resyncs: list[Callable[[], None]] = []
        self._factory: Any = None
        self.subscribed = False

    def listen(self, channel: str, handler: Callable[[str], None]) -> None:
        """
        Call C{handler} with each message published on C{channel}.
        """
        self._handlers[channel] = handler

    def onSubscribed(self, resync: Callable[[], None]) -> None:
        """
        Call C{resync} each time the subscriptions are made.
        """
        self._resyncs.append(resync)

    def channels(self) -> list[str]:
        """
        The channels listened to.
        """
        return list(self._handlers)

    def startService(self) -> None:
        super().startService()
        import txredisapi

        subscription = self

        class _Subscriber(txredisapi.SubscriberProtocol):
            def connectionMade(self) -> Deferred[Any]:
                made: Deferred[Any] = super().connectionMade()
                return made.addCallback(lambda _: self._subscribe())

            def _subscribe(self) -> Deferred[Any]:
                if not self.connected:
                    return succeed(None)
                channels = subscription.channels()
                if not channels:
                    return succeed(None)
                d: Deferred[Any] = self.subscribe(channels)
                return d.addCallbacks(
                    lambda _: subscription.subscriptionsMade(),
                    lambda f: _log.warn(
                        "cluster: cannot subscribe to the fleet's messages: {error}",
                        error=f.getErrorMessage(),
                    ),
                )

            def connectionLost(self, why: Any) -> None:
                subscription.subscribed = False
                super().connectionLost(why)

            def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
                subscription.received(channel, message)

        cluster = self.cluster
        factory = txredisapi.RedisFactory(
            f"{cluster.redis_host}:{cluster.redis_port}",
            None,
            1,
            isLazy=True,
            handler=txredisapi.ConnectionHandler,
            password=cluster.redis_password or None,
            replyTimeout=None,
            convertNumbers=False,
        )
        factory.protocol = _Subscriber
        _backOff(factory)
        factory.startConnecting(redisEndpoint(self._reactor, cluster))
        self._factory = factory

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self.subscribed = False
        factory, self._factory = self._factory, None
        if factory is None:
            return None
        stopped: Deferred[Any] = factory.disconnect()
        return stopped.addBoth(lambda _: None)

    def subscriptionsMade(self) -> None:
        """
        The connection subscribed to every channel: read again what may
        have been missed (the L{onSubscribed} callbacks).
        """
        self.subscribed = True
        for resync in self._resyncs:
            try:
                resync()
            except Exception:
                _log.failure("cluster: reading the fleet's state again failed")

    def received(self, channel: Any, message: Any) -> None:
        """
        A message on C{channel}: to its handler (a failing one is logged).
        """
        if isinstance(channel, bytes):
            channel = channel.decode("utf-8", "replace")
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        handler = self._handlers.get(channel)
        if handler is None:
            return
        try:
            handler(str(message))
        except Exception:
            _log.failure("cluster: a message on {channel} failed", channel=channel)
