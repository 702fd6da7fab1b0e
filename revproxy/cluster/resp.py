# -*- test-case-name: tests.test_cluster_resp -*-
"""
The request path's connection to the fleet's Redis: a lean RESP client
for the one thing a request asks of Redis, its rate limit's GCRA script
(L{revproxy.cluster.ratelimit.SharedRateLimiter}).

txredisapi (L{revproxy.cluster.redis.RedisLink}) costs about 65 µs of CPU
a call; this protocol, C{hiredis.pack_command} to encode and one
C{hiredis.Reader} to parse, pipelined with a FIFO of L{Deferred}s, about
14 µs (docs/performance.md, "The Redis client (#19)").  The fleet's control
connection and its subscription stay on txredisapi: they are not on the
request path.

The connection is kept open by a L{ClientService} (reconnected with
back-off); AUTH and SELECT are sent first, pipelined, and only once Redis
has answered both is the link L{up <RespLink.up>}.  A command unanswered
for L{REPLY_TIMEOUT_SECS} closes the connection (a Redis that hangs is a
Redis that is down), and every command waiting on a connection that closes
fails with L{ConnectionError}.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from typing import Any

import hiredis
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from revproxy.cluster.redis import (
    REPLY_TIMEOUT_SECS,
    RETRY_FACTOR,
    RETRY_INITIAL_SECS,
    RETRY_JITTER_SECS,
    RETRY_MAX_SECS,
    redisEndpoint,
)
from revproxy.config import ClusterConfig
from revproxy.interfaces import IRevProxyReactor

_log = Logger()


class RedisReplyError(Exception):
    """
    Redis answered a command with an error reply (C{-ERR ...},
    C{-NOSCRIPT ...}); its text is the exception's message.
    """


class RespProtocol(Protocol):
    """
    One connection to Redis: commands are written as they come (pipelined,
    never waiting for a reply), replies are matched to them in order.

    Replies are Python values as C{hiredis.Reader} makes them: integers as
    L{int}, bulk and simple strings as L{str} (UTF-8, undecodable bytes
    replaced), arrays as L{list}, nil as L{None}, error replies as a
    L{RedisReplyError} (the command's L{Deferred} fails with it).
    """

    def __init__(self, clock: IReactorTime, replyTimeout: float) -> None:
        self._clock = clock
        self._replyTimeout = replyTimeout
        self._reader = hiredis.Reader(
            replyError=RedisReplyError, encoding="utf-8", errors="replace"
        )
        #: The commands sent and not answered yet: their L{Deferred} and
        #: when they were sent, oldest first.
        self._waiting: deque[tuple[Deferred[Any], float]] = deque()
        self._timer: IDelayedCall | None = None
        #: Why this side closes the connection (the commands waiting on it
        #: fail with it); L{None} while open.
        self._closing: str | None = None
        #: Called with this protocol and C{True} once the connection is
        #: open, C{False} once it is lost.
        self.onConnection: Callable[[RespProtocol, bool], None] = lambda p, o: None

    def connectionMade(self) -> None:
        # Commands are small and pipelined: each goes out at once, not
        # after the previous one's ACK (Nagle).
        noDelay = getattr(self.transport, "setTcpNoDelay", None)
        if noDelay is not None:
            noDelay(True)
        self.onConnection(self, True)

    def execute(self, *args: Any) -> Deferred[Any]:
        """
        Send one command (C{"EVALSHA", sha, 1, key, ...}) and get its reply.
        """
        if self._closing is not None or not self.connected:
            return fail(ConnectionError("Redis connection is closed"))
        d: Deferred[Any] = Deferred()
        self._waiting.append((d, self._clock.seconds()))
        if self._timer is None:
            self._timer = self._clock.callLater(self._replyTimeout, self._checkLate)
        assert self.transport is not None
        self.transport.write(hiredis.pack_command(args))
        return d

    @property
    def pending(self) -> int:
        """
        How many commands wait for their reply.
        """
        return len(self._waiting)

    def dataReceived(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiting = self._waiting
        while self._closing is None:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as e:
                self.close(f"Redis sent a malformed reply ({e})")
                return
            if reply is False:
                return
            if not waiting:
                self.close("Redis sent a reply to no command")
                return
            d = waiting.popleft()[0]
            if isinstance(reply, RedisReplyError):
                d.errback(reply)
            else:
                d.callback(reply)

    def _checkLate(self) -> None:
        """
        Close the connection if its oldest command waited too long; else
        check again when it will have.
        """
        self._timer = None
        if not self._waiting or self._closing is not None:
            return
        due = self._waiting[0][1] + self._replyTimeout
        now = self._clock.seconds()
        if now >= due:
            self.close(f"Redis did not answer within {self._replyTimeout:g} s")
        else:
            self._timer = self._clock.callLater(due - now, self._checkLate)

    def close(self, why: str) -> None:
        """
        Close the connection at once (nothing more is read or sent); the
        commands waiting on it fail with L{ConnectionError}C{(why)}.
        """
        if self._closing is not None:
            return
        self._closing = why
        transport = self.transport
        if transport is not None:
            abort = getattr(transport, "abortConnection", transport.loseConnection)
            abort()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        why = self._closing
        if why is None:
            self._closing = why = f"Redis connection lost ({reason.getErrorMessage()})"
        waiting, self._waiting = self._waiting, deque()
        for d, _ in waiting:
            d.errback(ConnectionError(why))
        self.onConnection(self, False)


class _RespFactory(Factory):
    """
    Builds the link's protocols.
    """

    noisy = False

    def __init__(
        self,
        clock: IReactorTime,
        replyTimeout: float,
        onConnection: Callable[[RespProtocol, bool], None],
    ) -> None:
        self.clock = clock
        self.replyTimeout = replyTimeout
        self.onConnection = onConnection

    def buildProtocol(self, addr: IAddress | None) -> RespProtocol:
        protocol = RespProtocol(self.clock, self.replyTimeout)
        protocol.onConnection = self.onConnection
        return protocol


class RespLink(Service):
    """
    The request path's connection to the cluster's Redis, opened at start
    and kept open (reconnected with back-off) until stop (named
    C{"redis"}); what L{revproxy.cluster.ratelimit.SharedRateLimiter}
    needs of it, on a lean protocol (L{RespProtocol}).

    Nothing waits for a Redis that is down: while it is, every command
    fails at once with L{ConnectionError}.

    @ivar up: whether a connection is open and ready (AUTH and SELECT
        answered) now.
    @ivar replyTimeout: how long the oldest command waits for its reply
        before the connection is closed.
    """

    name = "redis"

    def __init__(
        self,
        reactor: IRevProxyReactor,
        cluster: ClusterConfig,
        endpoint: IStreamClientEndpoint | None = None,
        replyTimeout: float = REPLY_TIMEOUT_SECS,
        retryPolicy: Callable[[int], float] | None = None,
    ) -> None:
        """
        @param endpoint: where Redis is (by default L{redisEndpoint} of
            C{cluster}: TCP, or TLS with its CA).
        @param retryPolicy: seconds to wait before the next connection
            attempt, given how many failed in a row (by default an
            exponential back-off up to L{RETRY_MAX_SECS}).
        """
        self._reactor = reactor
        self.cluster = cluster
        self.replyTimeout = replyTimeout
        self._endpoint = endpoint
        self._policy = retryPolicy or backoffPolicy(
            RETRY_INITIAL_SECS,
            RETRY_MAX_SECS,
            RETRY_FACTOR,
            jitter=lambda: random.random() * RETRY_JITTER_SECS,
        )
        self._client: ClientService | None = None
        #: The connection commands go to, once ready.
        self._ready: RespProtocol | None = None
        #: Connections in a row that Redis refused (AUTH or SELECT failed):
        #: they count as failed attempts for the back-off, which
        #: ClientService itself resets at each TCP connection.
        self._refused = 0
        self._waiters: list[tuple[Deferred[bool], IDelayedCall]] = []

    @property
    def up(self) -> bool:
        return self._ready is not None

    def startService(self) -> None:
        super().startService()
        endpoint = self._endpoint
        if endpoint is None:
            endpoint = redisEndpoint(self._reactor, self.cluster)
        self._client = ClientService(
            endpoint,
            _RespFactory(self._reactor, self.replyTimeout, self._connection),
            retryPolicy=self._retryDelay,
            clock=self._reactor,
        )
        self._client.startService()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        client, self._client = self._client, None
        self._ready = None
        self._wake()
        if client is None:
            return None
        stopped: Deferred[None] = client.stopService()
        return stopped

    def _retryDelay(self, attempts: int) -> float:
        return self._policy(attempts + self._refused)

    def _connection(self, protocol: RespProtocol, opened: bool) -> None:
        """
        A connection was opened (say who we are) or lost.
        """
        if not opened:
            if self._ready is protocol:
                self._ready = None
                if self.running:
                    # Info: the rate limiter warns, once a minute, while it
                    # decides alone; one warning per event.
                    _log.info(
                        "cluster: the request path's Redis connection was lost; "
                        "reconnecting"
                    )
            return
        cluster = self.cluster
        steps: list[Deferred[Any]] = []
        if cluster.redis_password:
            steps.append(protocol.execute("AUTH", cluster.redis_password))
        if cluster.redis_db:
            steps.append(protocol.execute("SELECT", cluster.redis_db))
        if not steps:
            self._ready = protocol
            self._wake()
            return

        def ready(_: object) -> None:
            if not protocol.connected or not self.running:
                return
            if self._refused:
                _log.info("cluster: the request path's Redis accepts this node again")
            self._refused = 0
            self._ready = protocol
            self._wake()

        def refused(reason: Failure) -> None:
            error = reason.value
            if isinstance(error, RedisReplyError):
                if not self._refused:
                    _log.error(
                        "cluster: Redis refused the request path's connection "
                        "(AUTH with the configured password, or SELECT {db}): "
                        "{error}; trying again with back-off",
                        db=cluster.redis_db,
                        error=str(error),
                    )
                self._refused += 1
                protocol.close(f"Redis refused the connection: {error}")

        gatherResults(steps, consumeErrors=True).addCallbacks(
            ready, lambda f: refused(f.value.subFailure)
        )

    def _wake(self) -> None:
        """
        Answer every L{whenUp} waiting, with L{up}.
        """
        waiters, self._waiters = self._waiters, []
        for d, timer in waiters:
            if timer.active():
                timer.cancel()
            d.callback(self.up)

    def whenUp(self, timeout: float) -> Deferred[bool]:
        """
        Whether Redis is up, waiting at most C{timeout} seconds for a
        connection being opened (at start, or after a loss).
        """
        if self.up or not self.running:
            return succeed(self.up)
        d: Deferred[bool] = Deferred()

        def late() -> None:
            for i, (waiting, _) in enumerate(self._waiters):
                if waiting is d:
                    del self._waiters[i]
                    break
            d.callback(self.up)

        self._waiters.append((d, self._reactor.callLater(timeout, late)))
        return d

    def command(self, *args: Any) -> Deferred[Any]:
        """
        Send one Redis command (C{"SET", key, value, "PX", 1000}) and get
        its reply (L{RespProtocol}: bulk strings as L{str}, integers as
        L{int}, numbers in strings left as strings); an error reply fails
        with L{RedisReplyError}.  Fails at once with L{ConnectionError}
        while Redis is down (nothing waits for it to come back).
        """
        ready = self._ready
        if ready is None:
            return fail(ConnectionError("Redis is down"))
        return ready.execute(*args)

    def evalsha(
        self, sha: str, script: str, keys: list[str], args: list[Any]
    ) -> Deferred[Any]:
        """
        Run the Lua C{script} by its C{sha} (sent once more in full, by
        C{EVAL}, when Redis does not have it: C{NOSCRIPT}).  Fails at once
        with L{ConnectionError} while Redis is down.
        """
        ready = self._ready
        if ready is None:
            return fail(ConnectionError("Redis is down"))
        d = ready.execute("EVALSHA", sha, len(keys), *keys, *args)

        def missing(reason: Failure) -> Any:
            error = reason.value
            if isinstance(error, RedisReplyError) and str(error).startswith("NOSCRIPT"):
                return self.command("EVAL", script, len(keys), *keys, *args)
            return reason

        return d.addErrback(missing)
