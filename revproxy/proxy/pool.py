# -*- test-case-name: tests.test_pool -*-
"""
Upstream selection and connection pooling.

L{UpstreamSelector} is pure: round robin over a site's upstreams, skipping
one that refused a connection for a short back-off, and, for a site with
health checks, every upstream its checks found unhealthy (the states come
from L{revproxy.upstreamhealth}).  L{ConnectionPool} keeps
idle keep-alive connections per upstream, retires them before a typical
upstream idle timeout, and caps the connections to each upstream.
"""

from __future__ import annotations

import errno
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from typing import Generic, TypeVar
from typing import Protocol as TypingProtocol

from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IConnector, IDelayedCall, IReactorTime
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from revproxy.proxy.upstream import ConnectionOwner, PoolKey, UpstreamConnection

_log = Logger()

# Most upstream servers close idle keep-alive connections after a few seconds
# (Node.js 5 s, gunicorn 2 s... nginx 75 s); retiring ours first keeps the
# race where both ends close at once rare, and the one-retry on a reused
# connection covers the rest.
DEFAULT_IDLE_TIMEOUT = 4.0
DEFAULT_MAX_IDLE = 256
DEFAULT_MAX_CONNECTIONS = 512
DEFAULT_MAX_QUEUE = 1024
DEFAULT_BACKOFF = 5.0


_U = TypeVar("_U", bound=Hashable)


class UpstreamHealthState(TypingProtocol):
    """
    What the selector reads and tells of one upstream's health
    (L{revproxy.upstreamhealth.UpstreamHealth}).
    """

    @property
    def healthy(self) -> bool:
        """
        Whether the upstream may get traffic.
        """

    def passiveFailure(self, now: float, error: str) -> object:
        """
        A proxied request could not connect to the upstream.
        """


class UpstreamSelector(Generic[_U]):
    """
    Round robin over upstreams, skipping those in back-off.

    @ivar upstreams: the upstreams, in config order (L{revproxy.config.Upstream}s;
        any hashable values will do).
    @ivar health: For a site with health checks, each upstream's state (set
        by L{revproxy.upstreamhealth.HealthMonitor}): unhealthy upstreams are never
        picked, not even as a last resort.  L{None} without health checks.
    """

    def __init__(
        self,
        upstreams: Sequence[_U],
        clock: IReactorTime,
        backoff: float = DEFAULT_BACKOFF,
    ) -> None:
        self.upstreams = tuple(upstreams)
        self._clock = clock
        self._backoff = backoff
        self._next = 0
        self._downUntil: dict[_U, float] = {}
        self.health: Mapping[_U, UpstreamHealthState] | None = None

    def pick(self, exclude: Sequence[_U] = ()) -> _U | None:
        """
        The next upstream to try, or L{None} when every upstream not in
        C{exclude} is gone or unhealthy.  Upstreams in back-off are used only
        when all others are in back-off too (a dead pool must still be
        probed); unhealthy ones are not used at all.
        """
        upstreams = self.upstreams
        if self.health is None and len(upstreams) == 1:
            only = upstreams[0]
            return None if only in exclude else only
        return self._roundRobin(exclude, advance=True)

    def peek(self) -> _U | None:
        """
        The upstream that L{pick} would return now, without advancing the
        round robin (for the admin C{route} command).
        """
        return self._roundRobin((), advance=False)

    def _roundRobin(self, exclude: Sequence[_U], advance: bool) -> _U | None:
        """
        The one round robin of L{pick} and L{peek}: the first upstream from
        where the last pick left off that is not in C{exclude}, not
        unhealthy and not in back-off, else the first one in back-off.

        @param advance: Whether to move the round robin past the upstream
            found, and forget the back-offs found over (L{pick}).
        """
        upstreams = self.upstreams
        n = len(upstreams)
        health = self.health
        down = self._downUntil
        now = self._clock.seconds() if down else 0.0
        fallback = None
        for i in range(n):
            candidate = upstreams[(self._next + i) % n]
            if candidate in exclude:
                continue
            if health is not None:
                state = health.get(candidate)
                if state is not None and not state.healthy:
                    continue
            until = down.get(candidate)
            if until is not None:
                if until > now:
                    if fallback is None:
                        fallback = candidate
                    continue
                if advance:
                    del down[candidate]
            if advance:
                self._next = (self._next + i + 1) % n
            return candidate
        return fallback

    def available(self) -> bool:
        """
        Whether any upstream may get traffic: L{False} only when the site
        has health checks and every upstream is unhealthy (the request is
        then answered 503 without trying any).
        """
        health = self.health
        if health is None:
            return True
        for upstream in self.upstreams:
            state = health.get(upstream)
            if state is None or state.healthy:
                return True
        return False

    def markDown(self, upstream: _U, reason: str = "connection failed") -> None:
        """
        C{upstream} refused a connection: skip it for the back-off period,
        and, for a site with health checks, count one failure against its
        health (only checks bring an unhealthy upstream back).

        @param reason: Why, for the upstream's health state.
        """
        now = self._clock.seconds()
        self._downUntil[upstream] = now + self._backoff
        health = self.health
        if health is not None:
            state = health.get(upstream)
            if state is not None:
                state.passiveFailure(now, reason)

    def markUp(self, upstream: _U) -> None:
        """
        C{upstream} answered: take it out of back-off.  Its health is not
        changed: only checks bring an unhealthy upstream back.
        """
        if self._downUntil:
            self._downUntil.pop(upstream, None)

    def isDown(self, upstream: _U) -> bool:
        """
        Whether C{upstream} is in back-off now.
        """
        until = self._downUntil.get(upstream)
        return until is not None and until > self._clock.seconds()


class ConnectionWaiter(TypingProtocol):
    """
    Who asked the pool for a connection.
    """

    def connectionReady(self, connection: UpstreamConnection) -> None:
        """
        Here is a connection, fresh or reused (see C{connection.reused}).
        """

    def connectionFailed(self, reason: Failure) -> None:
        """
        No connection could be made (L{QueueFull}: the line for one was
        full, nothing was tried).
        """

    def connectionOpening(self) -> None:
        """
        The waiter's turn in line came: a new connection is being opened for
        it now (its connect timeout starts).
        """


#: Errors of a connect attempt that say this process or host is short of a
#: resource (descriptors, buffers, memory, local ports), not that the
#: upstream is down.
LOCAL_CONNECT_ERRORS = frozenset(
    [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL]
)


def localConnectError(reason: Failure) -> int | None:
    """
    The errno of C{reason} when it is a connect failure for a local
    reason (L{LOCAL_CONNECT_ERRORS}), else L{None}.
    """
    value = reason.value
    if isinstance(value, ConnectError):
        number = value.osError
        if number in LOCAL_CONNECT_ERRORS:
            return int(number)
    return None


class QueueFull(Exception):
    """
    The upstream has its most connections and its line of waiters is full:
    nothing was tried, and the upstream is not to blame.
    """


class UpstreamConnector(TypingProtocol):
    """
    How the pool opens a connection: C{reactor.connectTCP} or C{connectSSL}
    with the timeout and TLS options bound in.
    """

    def __call__(
        self, key: PoolKey, factory: ClientFactory, timeout: float
    ) -> IConnector: ...


class ConnectionCounter(TypingProtocol):
    """
    Told of every upstream socket opened and closed: the cap on the
    process's connections (L{revproxy.listeners.ConnectionGate}) counts
    upstream connections with the clients', as nginx's
    C{worker_connections} does.
    """

    def opened(self) -> None: ...
    def closed(self) -> None: ...


class _ConnectionFactory(ClientFactory):
    """
    Builds one L{UpstreamConnection} for one waiter and reports failure to it;
    tells the pool's counter when its socket closes (the connect failed, or
    the connection it made is lost).
    """

    noisy = False

    def __init__(
        self, pool: ConnectionPool, key: PoolKey, waiter: ConnectionWaiter
    ) -> None:
        self.pool = pool
        self.key = key
        self.waiter: ConnectionWaiter | None = waiter
        self.connector: IConnector | None = None
        self.counter: ConnectionCounter | None = None

    def buildProtocol(self, addr: object) -> UpstreamConnection:
        connection = UpstreamConnection(self.pool, self.key, self.pool.clock)
        connection.factory = self
        return connection

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        self.uncount()
        self.pool.connectFailed(self, reason)

    def clientConnectionLost(self, connector: IConnector, reason: Failure) -> None:
        self.uncount()

    def uncount(self) -> None:
        counter = self.counter
        if counter is not None:
            self.counter = None
            counter.closed()


class _Host:
    """
    The pool's state for one upstream.

    @ivar waiting: The line of waiters, first come first served; an
        L{OrderedDict} so that leaving it from anywhere is O(1).
    """

    __slots__ = ("active", "connecting", "idle", "waiting")

    def __init__(self) -> None:
        self.idle: list[UpstreamConnection] = []
        self.active = 0
        self.connecting: set[_ConnectionFactory] = set()
        self.waiting: OrderedDict[Pending, None] = OrderedDict()


class Pending:
    """
    A request for a connection that could not be served at once: in line
    (L{queued}) or being connected.  Calling it withdraws the request (the
    client left, or a deadline passed), whatever its state; a second call
    does nothing.

    @ivar queued: Whether it waits in line (else a connection is being
        opened for it, or it was served).
    """

    __slots__ = ("factory", "host", "queued", "timeout", "waiter")

    def __init__(
        self, host: _Host | None, waiter: ConnectionWaiter | None, timeout: float
    ) -> None:
        self.host = host
        self.waiter = waiter
        self.timeout = timeout
        self.queued = False
        self.factory: _ConnectionFactory | None = None

    def __call__(self) -> None:
        if self.queued:
            self.queued = False
            host = self.host
            if host is not None:
                host.waiting.pop(self, None)
            return
        factory = self.factory
        if factory is not None and factory.waiter is self.waiter:
            factory.waiter = None
            if factory.connector is not None:
                factory.connector.disconnect()


#: What L{ConnectionPool.acquire} returns when it served the waiter at once
#: (or failed it): nothing to withdraw.
SERVED = Pending(None, None, 0.0)


class ConnectionPool:
    """
    Keep-alive connections to upstreams, keyed by L{PoolKey}.

    A waiter asks with L{acquire}; it gets the most recently used idle
    connection (so surplus ones age out), else a new one, else waits in line
    when the upstream already has C{maxConnections}.
    """

    def __init__(
        self,
        clock: IReactorTime,
        connect: UpstreamConnector,
        idleTimeout: float = DEFAULT_IDLE_TIMEOUT,
        maxIdle: int = DEFAULT_MAX_IDLE,
        maxConnections: int = DEFAULT_MAX_CONNECTIONS,
        maxQueue: int = DEFAULT_MAX_QUEUE,
        counter: ConnectionCounter | None = None,
    ) -> None:
        """
        @param maxConnections: The most connections open (busy, idle or
            being opened) to one upstream.
        @param maxQueue: The most waiters in line for a connection to one
            upstream; beyond, L{QueueFull} at once.
        @param counter: Told of every upstream socket opened and closed.
        """
        self.counter = counter
        self.clock = clock
        self._connect = connect
        self.idleTimeout = idleTimeout
        self.maxIdle = maxIdle
        self.maxConnections = maxConnections
        self.maxQueue = maxQueue
        self._hosts: dict[PoolKey, _Host] = {}
        self._sweep: IDelayedCall | None = None
        self._closed = False

    def _host(self, key: PoolKey) -> _Host:
        host = self._hosts.get(key)
        if host is None:
            host = self._hosts[key] = _Host()
        return host

    def acquire(
        self,
        key: PoolKey,
        waiter: ConnectionWaiter,
        timeout: float,
        fresh: bool = False,
        verify: bool = False,
    ) -> Pending:
        """
        Get a connection to C{key} for C{waiter}: the most recently used
        idle one, else a new one (connecting within C{timeout}), else a
        place in line when the upstream already has C{maxConnections}
        (L{QueueFull} when the line is full too).

        @param fresh: Skip idle connections: open a new one.
        @param verify: Hand out an idle connection only if it is verified
            alive now (L{UpstreamConnection.verified}), for a request that
            must never be sent twice; others are closed.
        @return: L{SERVED} when the waiter was answered at once, else its
            L{Pending} request (call it to withdraw).
        """
        host = self._host(key)
        if not fresh:
            idle = host.idle
            now = self.clock.seconds()
            while idle:
                connection = idle.pop()
                if (
                    now - connection.idleSince < self.idleTimeout
                    and connection.connected
                    and (not verify or connection.verified())
                ):
                    host.active += 1
                    waiter.connectionReady(connection)
                    return SERVED
                connection.pool = _DETACHED
                connection.close()
        pending = Pending(host, waiter, timeout)
        if host.active + len(host.connecting) >= self.maxConnections:
            if len(host.waiting) >= self.maxQueue:
                waiter.connectionFailed(
                    Failure(
                        QueueFull(
                            f"{self.maxConnections} connections busy and "
                            f"{self.maxQueue} requests waiting"
                        )
                    )
                )
                return SERVED
            pending.queued = True
            host.waiting[pending] = None
            return pending
        pending.factory = self._open(key, host, waiter, timeout)
        return pending

    def waitingCount(self, key: PoolKey) -> int:
        """
        How many requests wait in line for a connection to C{key}.
        """
        host = self._hosts.get(key)
        return len(host.waiting) if host else 0

    def _open(
        self, key: PoolKey, host: _Host, waiter: ConnectionWaiter, timeout: float
    ) -> _ConnectionFactory:
        factory = _ConnectionFactory(self, key, waiter)
        host.connecting.add(factory)
        counter = self.counter
        if counter is not None:
            factory.counter = counter
            counter.opened()
        try:
            factory.connector = self._connect(key, factory, timeout)
        except Exception:
            # A connector that raises (a bad address) must not leak the slot.
            factory.uncount()
            self.connectFailed(factory, Failure())
        return factory

    # -- called by connections and factories

    def connectionMade(self, connection: UpstreamConnection) -> None:
        factory: _ConnectionFactory = connection.factory
        host = self._host(connection.key)
        host.connecting.discard(factory)
        waiter = factory.waiter
        factory.waiter = None
        if waiter is None:
            # The client left while we were connecting: the connection serves
            # the next in line, or waits idle.
            host.active += 1
            self.release(connection)
            return
        host.active += 1
        waiter.connectionReady(connection)

    def connectFailed(self, factory: _ConnectionFactory, reason: Failure) -> None:
        """
        C{factory}'s connect failed (its factory tells the pool): its waiter
        learns why, and the next in line gets a try.
        """
        host = self._host(factory.key)
        host.connecting.discard(factory)
        waiter = factory.waiter
        factory.waiter = None
        if waiter is not None:
            waiter.connectionFailed(reason)
        self._serveWaiting(factory.key, host)

    def release(self, connection: UpstreamConnection) -> None:
        """
        C{connection} finished an exchange and may be reused.
        """
        host = self._hosts.get(connection.key)
        if host is None or connection.pool is not self:
            return
        host.active -= 1
        stream = connection.stream
        if stream is not None:
            # The client's backpressure may have paused it mid-response.
            stream.resumeProducing()
        waiting = host.waiting
        if waiting:
            pending, _ = waiting.popitem(last=False)
            pending.queued = False
            waiter = pending.waiter
            assert waiter is not None
            host.active += 1
            waiter.connectionReady(connection)
            return
        self._keepIdle(host, connection)

    def _keepIdle(self, host: _Host, connection: UpstreamConnection) -> None:
        if self._closed or len(host.idle) >= self.maxIdle:
            connection.pool = _DETACHED
            connection.close()
            return
        connection.idleSince = self.clock.seconds()
        host.idle.append(connection)
        if self._sweep is None:
            self._sweep = self.clock.callLater(self.idleTimeout, self._sweepIdle)

    def detach(self, connection: UpstreamConnection) -> None:
        """
        C{connection}, busy, leaves the pool for good (it became a tunnel):
        it no longer counts against the upstream's connections, and the
        next request in line, if any, gets a connection.
        """
        if connection.pool is not self:
            return
        connection.pool = _DETACHED
        host = self._hosts.get(connection.key)
        if host is None:
            return
        host.active -= 1
        self._serveWaiting(connection.key, host)

    def connectionLost(self, connection: UpstreamConnection) -> None:
        """
        C{connection} closed, idle or busy.
        """
        if connection.pool is not self:
            return
        connection.pool = _DETACHED
        host = self._hosts.get(connection.key)
        if host is None:
            return
        try:
            host.idle.remove(connection)
        except ValueError:
            host.active -= 1
            self._serveWaiting(connection.key, host)

    def _serveWaiting(self, key: PoolKey, host: _Host) -> None:
        waiting = host.waiting
        while waiting and host.active + len(host.connecting) < self.maxConnections:
            pending, _ = waiting.popitem(last=False)
            pending.queued = False
            waiter = pending.waiter
            assert waiter is not None
            pending.factory = self._open(key, host, waiter, pending.timeout)
            if pending.factory.waiter is waiter:
                # Not failed at once: its connect timeout starts now.
                waiter.connectionOpening()

    def _sweepIdle(self) -> None:
        self._sweep = None
        now = self.clock.seconds()
        remaining = False
        for host in self._hosts.values():
            keep = []
            for connection in host.idle:
                if now - connection.idleSince >= self.idleTimeout:
                    connection.pool = _DETACHED
                    connection.close()
                else:
                    keep.append(connection)
            host.idle[:] = keep
            remaining = remaining or bool(keep)
        if remaining and not self._closed:
            self._sweep = self.clock.callLater(self.idleTimeout / 2, self._sweepIdle)

    def idleCount(self, key: PoolKey) -> int:
        """
        How many idle connections to C{key} the pool holds.
        """
        host = self._hosts.get(key)
        return len(host.idle) if host else 0

    def activeCount(self, key: PoolKey) -> int:
        """
        How many connections to C{key} are busy or being opened.
        """
        host = self._hosts.get(key)
        return host.active + len(host.connecting) if host else 0

    def close(self) -> None:
        """
        Close every idle connection and stop the idle sweep; busy connections
        close when their exchange ends.
        """
        self._closed = True
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        for host in self._hosts.values():
            for connection in host.idle:
                connection.pool = _DETACHED
                connection.close()
            host.idle.clear()


class _DetachedPool:
    """
    The pool of a connection that no longer belongs to any: it closes on
    release and its loss is nobody's business.
    """

    def release(self, connection: UpstreamConnection) -> None:
        connection.close()

    def connectionLost(self, connection: UpstreamConnection) -> None:
        pass

    def connectionMade(self, connection: UpstreamConnection) -> None:
        pass

    def detach(self, connection: UpstreamConnection) -> None:
        pass


_DETACHED: ConnectionOwner = _DetachedPool()
