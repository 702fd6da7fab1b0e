"""
Tests for L{revproxy.cluster.resp}: the request path's lean Redis client,
on a fake endpoint whose connections are L{StringTransport}s (what the
client writes is parsed as RESP; the test writes Redis's replies) and a
L{MemoryReactorClock} (reply timeouts, reconnection back-off).  The same
client against a real Redis: L{tests.integration.test_cluster_resp}.
"""

from __future__ import annotations

from typing import Any, cast

import hiredis
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from revproxy.cluster.ratelimit import GCRA, GCRA_SHA, SharedRateLimiter
from revproxy.cluster.redis import REPLY_TIMEOUT_SECS
from revproxy.cluster.resp import RedisReplyError, RespLink
from revproxy.config import ClusterConfig, RateLimit
from revproxy.interfaces import IRevProxyReactor
from revproxy.ratelimit import ALLOWED, Decision, RateLimiter

PASSWORD = "s3cret-Pa55"


def cluster(password: str = "", db: int = 0) -> ClusterConfig:
    """
    A cluster config with C{password} and C{db} (nothing connects to its
    address: the tests give the link their endpoint).
    """
    return ClusterConfig(
        redis_url=f"redis://127.0.0.1:6379/{db}",
        redis_host="127.0.0.1",
        redis_port=6379,
        redis_password=password,
        redis_db=db,
        key_prefix="t:",
        node_name="node",
        secret_file="/nonexistent/cluster.key",
        secret=b"k" * 32,
    )


class FakeConnection(StringTransport):
    """
    One connection to the fake Redis: what the client writes stays in
    L{value}; closing it (either way) delivers C{connectionLost} at the
    next turn of the clock, as a real transport does.
    """

    def __init__(self, clock: MemoryReactorClock, protocol: IProtocol) -> None:
        super().__init__()
        self.clock = clock
        self.protocol = protocol
        self.reader = hiredis.Reader(encoding="utf-8")
        self.aborted = False
        self.closed = False

    def commands(self) -> list[list[str]]:
        """
        The commands written since the last call, each as its words.
        """
        self.reader.feed(self.value())
        self.clear()
        found = []
        while (command := self.reader.gets()) is not False:
            found.append(command)
        return found

    def reply(self, data: bytes) -> None:
        """
        Redis writes C{data} (raw RESP).
        """
        self.protocol.dataReceived(data)

    def lose(self, reason: Failure | None = None) -> None:
        """
        The connection ends now (the server closed it).
        """
        if self.closed:
            return
        self.closed = True
        self.protocol.connectionLost(reason or Failure(ConnectionDone()))

    def loseConnection(self) -> None:
        super().loseConnection()
        self.clock.callLater(0, self.lose)

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """
    Connects at once to a new L{FakeConnection} (or is refused while
    C{refusing}).
    """

    def __init__(self, clock: MemoryReactorClock) -> None:
        self.clock = clock
        self.connections: list[FakeConnection] = []
        self.refusing = False
        self.attempts = 0

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        self.attempts += 1
        if self.refusing:
            return fail(ConnectionRefusedError())
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 6379))
        assert protocol is not None
        connection = FakeConnection(self.clock, protocol)
        self.connections.append(connection)
        protocol.makeConnection(connection)
        return succeed(protocol)

    @property
    def last(self) -> FakeConnection:
        return self.connections[-1]


class RespLinkTests(SynchronousTestCase):
    """
    L{RespLink}: commands pipelined on one connection, replies in order,
    errors, timeouts and losses failing what waits, AUTH and SELECT before
    it is up, reconnection with back-off, and a clean stop.
    """

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.endpoint = FakeEndpoint(self.clock)
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def link(self, config: ClusterConfig | None = None) -> RespLink:
        """
        A started link on the fake endpoint (retries after as many seconds
        as attempts failed in a row), stopped at the end of the test, which
        then checks that no timer is left.
        """
        link = RespLink(
            cast(IRevProxyReactor, self.clock),
            config or cluster(),
            endpoint=self.endpoint,
            retryPolicy=lambda attempts: float(attempts),
        )
        link.startService()
        self.addCleanup(self.stopClean, link)
        return link

    def stopClean(self, link: RespLink) -> None:
        if link.running:
            stopped = link.stopService()
            self.clock.advance(0)
            if stopped is not None:
                self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_pipelined(self) -> None:
        """
        Commands are written as they are made, without waiting for a reply;
        the replies, however they are split, go to them in order.
        """
        link = self.link()
        self.assertTrue(link.up)
        first = link.command("GET", "a")
        second = link.command("INCR", "b")
        third = link.command("LRANGE", "c", 0, -1)
        self.assertEqual(
            self.endpoint.last.commands(),
            [["GET", "a"], ["INCR", "b"], ["LRANGE", "c", "0", "-1"]],
        )
        self.assertNoResult(first)
        self.endpoint.last.reply(b"$5\r\nhel")
        self.assertNoResult(first)
        self.endpoint.last.reply(b"lo\r\n:7\r\n*2\r\n$1\r\nx\r\n$-1\r\n")
        self.assertEqual(self.successResultOf(first), "hello")
        self.assertEqual(self.successResultOf(second), 7)
        self.assertEqual(self.successResultOf(third), ["x", None])

    def test_errorReply(self) -> None:
        """
        An error reply fails its command with L{RedisReplyError} (its
        text), and only that one.
        """
        link = self.link()
        bad = link.command("NOPE")
        good = link.command("PING")
        self.endpoint.last.reply(b"-ERR unknown command 'NOPE'\r\n+PONG\r\n")
        error = self.failureResultOf(bad, RedisReplyError)
        self.assertEqual(str(error.value), "ERR unknown command 'NOPE'")
        self.assertEqual(self.successResultOf(good), "PONG")
        self.assertTrue(link.up)

    def test_evalsha(self) -> None:
        """
        L{RespLink.evalsha} sends C{EVALSHA sha numkeys keys... args...}.
        """
        link = self.link()
        d = link.evalsha(GCRA_SHA, GCRA, ["t:rl:site:1.2.3.4"], [100000, 300000])
        self.assertEqual(
            self.endpoint.last.commands(),
            [["EVALSHA", GCRA_SHA, "1", "t:rl:site:1.2.3.4", "100000", "300000"]],
        )
        self.endpoint.last.reply(b"*2\r\n:1\r\n:0\r\n")
        self.assertEqual(self.successResultOf(d), [1, 0])

    def test_noscript(self) -> None:
        """
        When Redis does not have the script (C{NOSCRIPT}), it is sent in
        full by C{EVAL}, once, and that answer is the call's.
        """
        link = self.link()
        d = link.evalsha(GCRA_SHA, GCRA, ["k"], [1, 2])
        self.endpoint.last.commands()
        self.endpoint.last.reply(b"-NOSCRIPT No matching script.\r\n")
        self.assertEqual(
            self.endpoint.last.commands(), [["EVAL", GCRA, "1", "k", "1", "2"]]
        )
        self.assertNoResult(d)
        self.endpoint.last.reply(b"*2\r\n:0\r\n:250\r\n")
        self.assertEqual(self.successResultOf(d), [0, 250])

        # Once only: an EVAL that fails fails the call.
        again = link.evalsha(GCRA_SHA, GCRA, ["k"], [1, 2])
        self.endpoint.last.reply(b"-NOSCRIPT No matching script.\r\n")
        self.endpoint.last.reply(b"-ERR script error\r\n")
        self.assertEqual(len(self.endpoint.last.commands()), 2)
        self.failureResultOf(again, RedisReplyError)

    def test_otherErrorNoEval(self) -> None:
        """
        An error other than C{NOSCRIPT} fails the call, without C{EVAL}.
        """
        link = self.link()
        d = link.evalsha(GCRA_SHA, GCRA, ["k"], [1, 2])
        self.endpoint.last.commands()
        self.endpoint.last.reply(b"-BUSY Redis is busy running a script\r\n")
        self.failureResultOf(d, RedisReplyError)
        self.assertEqual(self.endpoint.last.commands(), [])

    def test_replyTimeout(self) -> None:
        """
        The oldest command unanswered for L{REPLY_TIMEOUT_SECS} closes the
        connection; every command waiting fails with L{ConnectionError},
        and the link connects again.
        """
        link = self.link()
        first = link.command("GET", "a")
        self.clock.advance(REPLY_TIMEOUT_SECS - 0.5)
        second = link.command("GET", "b")
        self.clock.advance(0.4)
        self.assertFalse(self.endpoint.last.aborted)
        self.clock.advance(0.1)
        self.assertTrue(self.endpoint.last.aborted)
        # Nothing more goes out on it, though it is not closed yet.
        self.failureResultOf(link.command("PING"), ConnectionError)
        self.clock.advance(0)
        for d in (first, second):
            reason = self.failureResultOf(d, ConnectionError)
            self.assertIn("did not answer within 2 s", str(reason.value))
        self.assertFalse(link.up)
        self.failureResultOf(link.command("PING"), ConnectionError)

        # Connected again after the back-off (1 s for one failure).
        self.clock.advance(1.0)
        self.assertEqual(len(self.endpoint.connections), 2)
        self.assertTrue(link.up)

    def test_replyTimeoutFromOldest(self) -> None:
        """
        The timeout counts from the oldest command still unanswered: one
        answered in time does not close the connection, the next one's
        clock starts when it was sent.
        """
        link = self.link()
        first = link.command("GET", "a")
        self.clock.advance(1.0)
        self.endpoint.last.reply(b"$-1\r\n")
        self.assertIsNone(self.successResultOf(first))
        self.clock.advance(0.5)
        second = link.command("GET", "b")
        self.clock.advance(REPLY_TIMEOUT_SECS - 0.1)
        self.assertFalse(self.endpoint.last.aborted)
        self.clock.advance(0.1)
        self.assertTrue(self.endpoint.last.aborted)
        self.clock.advance(0)
        self.failureResultOf(second, ConnectionError)

    def test_idleNoTimer(self) -> None:
        """
        An idle connection keeps no timer.
        """
        link = self.link()
        d = link.command("PING")
        self.endpoint.last.reply(b"+PONG\r\n")
        self.successResultOf(d)
        self.clock.advance(REPLY_TIMEOUT_SECS)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertTrue(link.up)

    def test_connectionLost(self) -> None:
        """
        A lost connection fails every command waiting on it with
        L{ConnectionError}; the link is down (commands fail at once) until
        it connected again, which is logged once, at info (the rate
        limiter deciding alone is the warning an operator gets).
        """
        link = self.link()
        waiting = [link.command("GET", "a"), link.command("GET", "b")]
        self.endpoint.last.lose()
        for d in waiting:
            reason = self.failureResultOf(d, ConnectionError)
            self.assertIn("connection lost", str(reason.value))
        self.assertFalse(link.up)
        self.failureResultOf(link.command("PING"), ConnectionError)
        self.failureResultOf(
            link.evalsha(GCRA_SHA, GCRA, ["k"], [1, 2]), ConnectionError
        )
        self.assertEqual(
            [e for e in self.events if e["log_level"] == LogLevel.warn], []
        )
        lost = [
            e
            for e in self.events
            if e["log_level"] == LogLevel.info and "was lost" in e["log_format"]
        ]
        self.assertEqual(len(lost), 1)
        self.assertEqual(len(self.endpoint.connections), 1)
        self.clock.advance(1.0)
        self.assertEqual(len(self.endpoint.connections), 2)
        self.assertTrue(link.up)

    def test_malformedReply(self) -> None:
        """
        A reply stream hiredis cannot read closes the connection; what
        waited fails.
        """
        link = self.link()
        d = link.command("GET", "a")
        self.endpoint.last.reply(b"?what\r\n")
        self.assertTrue(self.endpoint.last.aborted)
        self.clock.advance(0)
        reason = self.failureResultOf(d, ConnectionError)
        self.assertIn("malformed", str(reason.value))
        self.assertFalse(link.up)

    def test_replyToNothing(self) -> None:
        """
        A reply when no command waits closes the connection.
        """
        self.link()
        self.endpoint.last.reply(b"+OK\r\n")
        self.assertTrue(self.endpoint.last.aborted)

    def test_upAfterAuthAndSelect(self) -> None:
        """
        With a password and a database, AUTH and SELECT are written at once
        (pipelined); the link is up only once both are answered, and
        L{RespLink.whenUp} fires then.
        """
        link = self.link(cluster(PASSWORD, 3))
        self.assertEqual(
            self.endpoint.last.commands(), [["AUTH", PASSWORD], ["SELECT", "3"]]
        )
        self.assertFalse(link.up)
        self.failureResultOf(link.command("PING"), ConnectionError)
        ready = link.whenUp(5.0)
        self.endpoint.last.reply(b"+OK\r\n")
        self.assertFalse(link.up)
        self.assertNoResult(ready)
        self.endpoint.last.reply(b"+OK\r\n")
        self.assertTrue(link.up)
        self.assertIs(self.successResultOf(ready), True)
        # The reply timer, not needed any more, ends when it is due.
        self.clock.advance(REPLY_TIMEOUT_SECS)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertTrue(link.up)

    def test_selectOnly(self) -> None:
        """
        Without a password, only SELECT; with database 0, nothing: up at
        once.
        """
        link = self.link(cluster("", 2))
        self.assertEqual(self.endpoint.last.commands(), [["SELECT", "2"]])
        self.assertFalse(link.up)
        self.endpoint.last.reply(b"+OK\r\n")
        self.assertTrue(link.up)

    def test_authRefused(self) -> None:
        """
        A refused AUTH logs one clear error (not the password), closes the
        connection and tries again with a growing back-off; later refusals
        are not logged again; once accepted the link is up.
        """
        link = self.link(cluster(PASSWORD))
        self.endpoint.last.commands()
        self.endpoint.last.reply(
            b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
        )
        self.assertTrue(self.endpoint.last.aborted)
        self.clock.advance(0)
        self.assertFalse(link.up)
        errors = [e for e in self.events if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 1)
        text = formatEvent(errors[0])
        self.assertIn("WRONGPASS", text)
        self.assertIn("AUTH", text)
        for event in self.events:
            self.assertNotIn(PASSWORD, formatEvent(event))
            self.assertNotIn(PASSWORD, repr(event))

        # One failed attempt, plus one refusal: 2 s.
        self.clock.advance(1.9)
        self.assertEqual(len(self.endpoint.connections), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.endpoint.connections), 2)
        self.endpoint.last.reply(b"-WRONGPASS invalid\r\n")
        self.clock.advance(0)
        # Then 3 s.
        self.clock.advance(2.9)
        self.assertEqual(len(self.endpoint.connections), 2)
        self.clock.advance(0.1)
        self.assertEqual(len(self.endpoint.connections), 3)
        errors = [e for e in self.events if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 1)

        self.endpoint.last.reply(b"+OK\r\n")
        self.assertTrue(link.up)

    def test_connectRefusedRetries(self) -> None:
        """
        While nothing listens, the link retries with back-off; it is up as
        soon as a connection is made.
        """
        self.endpoint.refusing = True
        link = self.link()
        self.assertFalse(link.up)
        self.clock.advance(1.0)
        self.clock.advance(2.0)
        self.assertEqual(self.endpoint.attempts, 3)
        self.endpoint.refusing = False
        self.clock.advance(3.0)
        self.assertTrue(link.up)

    def test_commandWhileDown(self) -> None:
        """
        Before the first connection, and while Redis is down, a command
        fails at once and writes nothing.
        """
        self.endpoint.refusing = True
        link = self.link()
        self.failureResultOf(link.command("PING"), ConnectionError)
        self.failureResultOf(link.evalsha(GCRA_SHA, GCRA, ["k"], [1]), ConnectionError)
        stopped = RespLink(cast(IRevProxyReactor, self.clock), cluster())
        self.assertFalse(stopped.up)
        self.failureResultOf(stopped.command("PING"), ConnectionError)

    def test_whenUp(self) -> None:
        """
        L{RespLink.whenUp} is C{True} at once while up; else it waits at most
        its timeout for a connection, and leaves no timer behind.
        """
        self.endpoint.refusing = True
        link = self.link()
        waited = link.whenUp(0.5)
        self.assertNoResult(waited)
        self.clock.advance(0.5)
        self.assertIs(self.successResultOf(waited), False)

        waited = link.whenUp(5.0)
        self.endpoint.refusing = False
        self.clock.advance(1.0)
        self.assertIs(self.successResultOf(waited), True)
        self.assertIs(self.successResultOf(link.whenUp(1.0)), True)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_whenUpStopped(self) -> None:
        """
        Stopping the link answers L{RespLink.whenUp} (C{False}) at once.
        """
        self.endpoint.refusing = True
        link = self.link()
        waited = link.whenUp(5.0)
        link.stopService()
        self.assertIs(self.successResultOf(waited), False)
        self.assertIs(self.successResultOf(link.whenUp(1.0)), False)

    def test_stop(self) -> None:
        """
        Stopping closes the connection (the Deferred fires once it is
        closed), fails what waited, and connects no more.
        """
        link = self.link()
        d = link.command("GET", "a")
        stopped = link.stopService()
        assert stopped is not None
        self.assertFalse(link.up)
        self.assertNoResult(stopped)
        self.clock.advance(0)
        self.successResultOf(stopped)
        self.failureResultOf(d, ConnectionError)
        self.clock.advance(60)
        self.assertEqual(len(self.endpoint.connections), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopWhileRetrying(self) -> None:
        """
        Stopping while waiting to retry cancels the retry.
        """
        self.endpoint.refusing = True
        link = self.link()
        stopped = link.stopService()
        assert stopped is not None
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopWhileAuthenticating(self) -> None:
        """
        Stopping while AUTH is unanswered closes that connection; it is
        never up.
        """
        link = self.link(cluster(PASSWORD))
        stopped = link.stopService()
        assert stopped is not None
        self.clock.advance(0)
        self.successResultOf(stopped)
        self.assertTrue(self.endpoint.last.closed)
        self.assertFalse(link.up)

    def test_neverStarted(self) -> None:
        """
        Stopping a link never started does nothing.
        """
        link = RespLink(cast(IRevProxyReactor, self.clock), cluster())
        self.assertIsNone(link.stopService())

    def test_sharedRateLimiter(self) -> None:
        """
        L{SharedRateLimiter} on a L{RespLink}: the script's answer is the
        decision (integers, as the script returns them).
        """
        link = self.link()
        shared = SharedRateLimiter(
            self.clock, link, RateLimiter(self.clock), "t:", "node:1"
        )
        limit = RateLimit(10.0, 4)
        allowed = shared.allow("site", limit, "192.0.2.1")
        denied = shared.allow("site", limit, "192.0.2.1")
        assert isinstance(allowed, Deferred) and isinstance(denied, Deferred)
        commands = self.endpoint.last.commands()
        self.assertEqual([c[0] for c in commands], ["EVALSHA", "EVALSHA"])
        self.endpoint.last.reply(b"*2\r\n:1\r\n:0\r\n*2\r\n:0\r\n:2500000\r\n")
        self.assertEqual(self.successResultOf(allowed), ALLOWED)
        self.assertEqual(self.successResultOf(denied), Decision(False, 3))
        self.assertEqual(shared.fallbacks, 0)
