"""
Tests for L{revproxy.proxy.pool}: upstream selection and the connection
pool, driven by a L{Clock} and a recording connector; no sockets.
"""

from __future__ import annotations

from typing import cast

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IConnector
from twisted.internet.protocol import ClientFactory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from revproxy.proxy.pool import (
    SERVED,
    ConnectionPool,
    QueueFull,
    UpstreamSelector,
)
from revproxy.proxy.upstream import PoolKey, UpstreamConnection
from revproxy.upstreamhealth import UpstreamHealth

KEY: PoolKey = ("http", "a.example", 8080, None)
OTHER: PoolKey = ("https", "b.example", 443, None)


class SelectorTests(SynchronousTestCase):
    """
    Tests for L{UpstreamSelector}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.selector = UpstreamSelector(["a", "b", "c"], self.clock, backoff=5.0)

    def picks(self, n: int, exclude: tuple[str, ...] = ()) -> list[str | None]:
        """
        The next C{n} picks.
        """
        return [self.selector.pick(exclude) for _ in range(n)]

    def test_roundRobin(self) -> None:
        """
        Picks go round the upstreams in config order.
        """
        self.assertEqual(self.picks(7), ["a", "b", "c", "a", "b", "c", "a"])

    def test_exclude(self) -> None:
        """
        An excluded upstream is never picked; the others still alternate.
        """
        self.assertEqual(self.picks(4, exclude=("b",)), ["a", "c", "a", "c"])

    def test_excludeAllButOne(self) -> None:
        """
        With all upstreams but one excluded, that one is picked every time.
        """
        self.assertEqual(self.picks(3, exclude=("a", "c")), ["b", "b", "b"])

    def test_excludeAll(self) -> None:
        """
        With every upstream excluded there is nothing to pick.
        """
        self.assertIsNone(self.selector.pick(["a", "b", "c"]))

    def test_markDownSkipped(self) -> None:
        """
        An upstream marked down is skipped for the back-off period.
        """
        self.selector.markDown("b")
        self.assertTrue(self.selector.isDown("b"))
        self.assertEqual(self.picks(4), ["a", "c", "a", "c"])
        self.clock.advance(4.9)
        self.assertEqual(self.picks(2), ["a", "c"])

    def test_markDownComesBack(self) -> None:
        """
        After the back-off the upstream is picked again in its turn.
        """
        self.selector.markDown("b")
        self.assertEqual(self.picks(1), ["a"])
        self.clock.advance(5.0)
        self.assertFalse(self.selector.isDown("b"))
        self.assertEqual(self.picks(4), ["b", "c", "a", "b"])

    def test_markUp(self) -> None:
        """
        An upstream that answered is out of back-off at once.
        """
        self.selector.markDown("a")
        self.selector.markUp("a")
        self.assertFalse(self.selector.isDown("a"))
        self.assertEqual(self.picks(3), ["a", "b", "c"])

    def test_allDownFallback(self) -> None:
        """
        When every upstream is in back-off, a down one is still returned so
        that a dead pool is probed.
        """
        for upstream in ["a", "b", "c"]:
            self.selector.markDown(upstream)
        picked = self.selector.pick()
        self.assertIn(picked, ["a", "b", "c"])

    def test_allOthersDownOrExcluded(self) -> None:
        """
        The fallback never returns an excluded upstream.
        """
        self.selector.markDown("a")
        self.selector.markDown("b")
        self.assertEqual(self.selector.pick(["a", "c"]), "b")
        self.assertIsNone(self.selector.pick(["a", "b", "c"]))

    def test_singleUpstream(self) -> None:
        """
        A single upstream is picked even when down, and not when excluded.
        """
        selector = UpstreamSelector(["only"], self.clock)
        self.assertEqual(selector.pick(), "only")
        selector.markDown("only")
        self.assertEqual(selector.pick(), "only")
        self.assertIsNone(selector.pick(["only"]))

    def test_noUpstreams(self) -> None:
        """
        A selector without upstreams picks nothing.
        """
        self.assertIsNone(UpstreamSelector([], self.clock).pick())

    def test_noDelayedCalls(self) -> None:
        """
        Back-off is measured with the clock and schedules nothing.
        """
        self.selector.markDown("a")
        self.assertEqual(self.clock.getDelayedCalls(), [])


class FakeConnector:
    """
    The connector returned by L{RecordingConnect}; counts disconnects.
    """

    def __init__(self) -> None:
        self.disconnects = 0

    def disconnect(self) -> None:
        self.disconnects += 1


class Attempt:
    """
    One connection attempt the pool made.
    """

    def __init__(self, key: PoolKey, factory: ClientFactory, timeout: float) -> None:
        self.key = key
        self.factory = factory
        self.timeout = timeout
        self.connector = FakeConnector()

    def succeed(self) -> tuple[UpstreamConnection, StringTransport]:
        """
        Complete the attempt: build the protocol and connect it.
        """
        connection = self.factory.buildProtocol(
            IPv4Address("TCP", "192.0.2.1", self.key[2])
        )
        assert isinstance(connection, UpstreamConnection)
        transport = StringTransport()
        connection.makeConnection(transport)
        return connection, transport

    def fail(self) -> Failure:
        """
        Fail the attempt with a refused connection.
        """
        reason = Failure(ConnectionRefusedError())
        self.factory.clientConnectionFailed(cast(IConnector, self.connector), reason)
        return reason


class RecordingConnect:
    """
    An L{UpstreamConnector} that records each attempt and leaves it pending.
    """

    def __init__(self) -> None:
        self.attempts: list[Attempt] = []

    def __call__(
        self, key: PoolKey, factory: ClientFactory, timeout: float
    ) -> IConnector:
        attempt = Attempt(key, factory, timeout)
        self.attempts.append(attempt)
        return cast(IConnector, attempt.connector)


class RecordingWaiter:
    """
    An L{ConnectionWaiter} that records what it gets.
    """

    def __init__(self) -> None:
        self.ready: list[UpstreamConnection] = []
        self.failed: list[Failure] = []
        self.opening = 0

    def connectionReady(self, connection: UpstreamConnection) -> None:
        self.ready.append(connection)

    def connectionFailed(self, reason: Failure) -> None:
        self.failed.append(reason)

    def connectionOpening(self) -> None:
        self.opening += 1


class PoolTestMixin:
    """
    A L{ConnectionPool} with a L{Clock} and a L{RecordingConnect}.
    """

    maxIdle = 8
    maxConnections = 16

    def setUp(self) -> None:
        self.clock = Clock()
        self.connect = RecordingConnect()
        self.pool = ConnectionPool(
            self.clock,
            self.connect,
            idleTimeout=4.0,
            maxIdle=self.maxIdle,
            maxConnections=self.maxConnections,
        )

    def openConnection(
        self, key: PoolKey = KEY
    ) -> tuple[UpstreamConnection, StringTransport]:
        """
        Acquire a new connection and let it connect; return it busy.
        """
        waiter = RecordingWaiter()
        self.pool.acquire(key, waiter, 3.0, fresh=True)
        connection, transport = self.connect.attempts[-1].succeed()
        assert waiter.ready == [connection]
        return connection, transport

    def idleConnection(
        self, key: PoolKey = KEY
    ) -> tuple[UpstreamConnection, StringTransport]:
        """
        Open a connection and release it to the pool.
        """
        connection, transport = self.openConnection(key)
        self.pool.release(connection)
        return connection, transport


class AcquireTests(PoolTestMixin, SynchronousTestCase):
    """
    Getting connections from L{ConnectionPool.acquire}.
    """

    def test_opensWithTimeout(self) -> None:
        """
        With nothing idle, C{acquire} calls C{connect} with the key, a factory
        and the timeout given, and counts the attempt as active.
        """
        waiter = RecordingWaiter()
        self.pool.acquire(KEY, waiter, 7.5)
        [attempt] = self.connect.attempts
        self.assertEqual(attempt.key, KEY)
        self.assertEqual(attempt.timeout, 7.5)
        self.assertIsInstance(attempt.factory, ClientFactory)
        self.assertEqual(waiter.ready, [])
        self.assertEqual(self.pool.activeCount(KEY), 1)

    def test_connectionMadeHandsToWaiter(self) -> None:
        """
        When the connection is made, the waiter gets it, fresh and for the
        key asked.
        """
        waiter = RecordingWaiter()
        self.pool.acquire(KEY, waiter, 3.0)
        connection, _ = self.connect.attempts[0].succeed()
        self.assertEqual(waiter.ready, [connection])
        self.assertEqual(connection.key, KEY)
        self.assertFalse(connection.reused)
        self.assertIs(connection.pool, self.pool)
        self.assertEqual(self.pool.activeCount(KEY), 1)
        self.assertEqual(self.pool.idleCount(KEY), 0)

    def test_releaseThenReuse(self) -> None:
        """
        A released connection goes idle and the next waiter gets the same
        object without a new connect.
        """
        connection, transport = self.openConnection()
        self.pool.release(connection)
        self.assertEqual(self.pool.idleCount(KEY), 1)
        self.assertEqual(self.pool.activeCount(KEY), 0)
        self.assertFalse(transport.disconnecting)
        waiter = RecordingWaiter()
        self.pool.acquire(KEY, waiter, 3.0)
        self.assertEqual(waiter.ready, [connection])
        self.assertEqual(len(self.connect.attempts), 1)
        self.assertEqual(self.pool.idleCount(KEY), 0)
        self.assertEqual(self.pool.activeCount(KEY), 1)

    def test_realExchangeReleases(self) -> None:
        """
        A connection that completes a keep-alive exchange is reused by the
        next waiter, marked reused.
        """
        connection, _ = self.openConnection()

        class Sink:
            def responseStarted(
                self, code: int, reason: bytes, headers: list[tuple[bytes, bytes]]
            ) -> None:
                pass

            def responseBody(self, data: bytes) -> None:
                pass

            def responseDone(self) -> None:
                pass

            def responseFailed(self, reason: Exception) -> None:
                pass

        connection.send(Sink(), b"GET / HTTP/1.1\r\n\r\n", False)
        connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(self.pool.idleCount(KEY), 1)
        waiter = RecordingWaiter()
        self.pool.acquire(KEY, waiter, 3.0)
        self.assertEqual(waiter.ready, [connection])
        self.assertTrue(connection.reused)

    def test_lifo(self) -> None:
        """
        The most recently released idle connection is reused first.
        """
        first, _ = self.openConnection()
        second, _ = self.openConnection()
        self.pool.release(first)
        self.pool.release(second)
        waiter = RecordingWaiter()
        self.pool.acquire(KEY, waiter, 3.0)
        self.pool.acquire(KEY, waiter, 3.0)
        self.assertEqual(waiter.ready, [second, first])

    def test_keysSeparate(self) -> None:
        """
        An idle connection to one upstream is not handed out for another.
        """
        self.idleConnection(KEY)
        waiter = RecordingWaiter()
        self.pool.acquire(OTHER, waiter, 3.0)
        self.assertEqual(waiter.ready, [])
        self.assertEqual(self.connect.attempts[-1].key, OTHER)
        self.assertEqual(self.pool.idleCount(KEY), 1)

    def test_freshSkipsIdle(self) -> None:
        """
        C{fresh=True} opens a new connection and leaves the idle one alone.
        """
        connection, transport = self.idleConnection()
        waiter = RecordingWaiter()
        self.pool.acquire(KEY, waiter, 3.0, fresh=True)
        self.assertEqual(waiter.ready, [])
        self.assertEqual(len(self.connect.attempts), 2)
        new, _ = self.connect.attempts[1].succeed()
        self.assertEqual(waiter.ready, [new])
        self.assertIsNot(new, connection)
        self.assertEqual(self.pool.idleCount(KEY), 1)
        self.assertFalse(transport.disconnecting)

    def test_expiredIdleNotReused(self) -> None:
        """
        An idle connection older than C{idleTimeout} that the sweep has not
        reached yet is closed, not reused, and a new one is opened.
        """
        keeper, _ = self.idleConnection()
        self.clock.advance(3.5)
        waiter = RecordingWaiter()
        self.pool.acquire(KEY, waiter, 3.0)
        self.assertEqual(waiter.ready, [keeper])
        # Released at 3.5: the sweeps at 4 and 6 keep it, the one at 8
        # would close it.  Clock.advance runs every due call at the final
        # time, so step through the sweeps.
        self.pool.release(keeper)
        self.clock.pump([0.5, 2.0, 1.5])
        self.assertEqual(self.clock.seconds(), 7.5)
        self.assertEqual(self.pool.idleCount(KEY), 1)
        attempts = len(self.connect.attempts)
        waiter = RecordingWaiter()
        self.pool.acquire(KEY, waiter, 3.0)
        self.assertEqual(waiter.ready, [])
        self.assertEqual(len(self.connect.attempts), attempts + 1)
        transport = keeper.transport
        assert isinstance(transport, StringTransport)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.pool.idleCount(KEY), 0)
        self.clock.advance(10)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_expiredThenFreshIdleReused(self) -> None:
        """
        Expired idle connections are closed until one that is still fresh
        enough is found.
        """
        old, oldTransport = self.openConnection()
        young, _ = self.openConnection()
        self.pool.release(young)
        self.clock.advance(3.5)
        # "young" is now older; release "old" last so it is popped first.
        self.pool.release(old)
        self.assertEqual(self.pool.idleCount(KEY), 2)
        waiter = RecordingWaiter()
        self.pool.acquire(KEY, waiter, 3.0)
        self.assertEqual(waiter.ready, [old])
        self.assertFalse(oldTransport.disconnecting)

    def test_lostIdleConnectionNotReused(self) -> None:
        """
        An idle connection whose transport is gone is removed, and the next
        waiter gets a new connection.
        """
        connection, _ = self.idleConnection()
        connection.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.pool.idleCount(KEY), 0)
        self.assertEqual(self.pool.activeCount(KEY), 0)
        waiter = RecordingWaiter()
        self.pool.acquire(KEY, waiter, 3.0)
        self.assertEqual(waiter.ready, [])
        self.assertEqual(len(self.connect.attempts), 2)


class IdleTests(PoolTestMixin, SynchronousTestCase):
    """
    Idle connections: the sweep, C{maxIdle} and L{ConnectionPool.close}.
    """

    maxIdle = 2

    def test_sweepClosesIdle(self) -> None:
        """
        The sweep closes connections idle for C{idleTimeout} and leaves no
        timer behind.
        """
        _, transport = self.idleConnection()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(3.9)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.pool.idleCount(KEY), 1)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.pool.idleCount(KEY), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_sweepKeepsYoungOnes(self) -> None:
        """
        The sweep keeps connections not idle long enough, sweeps again, and
        stops once the pool has no idle connection.
        """
        older, olderTransport = self.openConnection()
        younger, youngerTransport = self.openConnection()
        self.pool.release(older)
        self.clock.advance(3.0)
        self.pool.release(younger)
        self.clock.advance(1.0)
        self.assertTrue(olderTransport.disconnecting)
        self.assertFalse(youngerTransport.disconnecting)
        self.assertEqual(self.pool.idleCount(KEY), 1)
        self.clock.advance(10)
        self.assertTrue(youngerTransport.disconnecting)
        self.assertEqual(self.pool.idleCount(KEY), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_sweptConnectionLossIgnored(self) -> None:
        """
        The loss of a swept connection changes no count.
        """
        connection, _ = self.idleConnection()
        self.openConnection()
        self.clock.advance(4.0)
        connection.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.pool.activeCount(KEY), 1)
        self.assertEqual(self.pool.idleCount(KEY), 0)

    def test_sweepAfterReuseLeavesNoTimer(self) -> None:
        """
        A sweep that finds nothing idle schedules nothing.
        """
        self.idleConnection()
        waiter = RecordingWaiter()
        self.pool.acquire(KEY, waiter, 3.0)
        self.clock.advance(4.0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.pool.activeCount(KEY), 1)

    def test_maxIdle(self) -> None:
        """
        A connection released when C{maxIdle} are already idle is closed.
        """
        opened = [self.openConnection() for _ in range(3)]
        for connection, _ in opened:
            self.pool.release(connection)
        self.assertEqual(self.pool.idleCount(KEY), 2)
        self.assertEqual(self.pool.activeCount(KEY), 0)
        closed = [t for _, t in opened if t.disconnecting]
        self.assertEqual(len(closed), 1)
        # The surplus one's loss must not be counted as an active one's.
        for connection, transport in opened:
            if transport.disconnecting:
                connection.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.pool.activeCount(KEY), 0)
        self.assertEqual(self.pool.idleCount(KEY), 2)

    def test_close(self) -> None:
        """
        C{close} closes every idle connection and cancels the sweep.
        """
        _, firstTransport = self.idleConnection(KEY)
        _, secondTransport = self.idleConnection(OTHER)
        self.assertNotEqual(self.clock.getDelayedCalls(), [])
        self.pool.close()
        self.assertTrue(firstTransport.disconnecting)
        self.assertTrue(secondTransport.disconnecting)
        self.assertEqual(self.pool.idleCount(KEY), 0)
        self.assertEqual(self.pool.idleCount(OTHER), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_releaseAfterClose(self) -> None:
        """
        A busy connection released after C{close} is closed, not kept.
        """
        connection, transport = self.openConnection()
        self.pool.close()
        self.pool.release(connection)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.pool.idleCount(KEY), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class LimitTests(PoolTestMixin, SynchronousTestCase):
    """
    C{maxConnections}, waiting in line, withdrawing and failures.
    """

    maxConnections = 1

    def test_waitsForRelease(self) -> None:
        """
        At C{maxConnections} a waiter waits without a new connect, and gets
        the next released connection.
        """
        connection, _ = self.openConnection()
        waiter = RecordingWaiter()
        self.pool.acquire(KEY, waiter, 3.0)
        self.assertEqual(len(self.connect.attempts), 1)
        self.assertEqual(waiter.ready, [])
        self.pool.release(connection)
        self.assertEqual(waiter.ready, [connection])
        self.assertEqual(self.pool.idleCount(KEY), 0)
        self.assertEqual(self.pool.activeCount(KEY), 1)

    def test_waitersServedInOrder(self) -> None:
        """
        Waiters in line are served first come, first served.
        """
        connection, _ = self.openConnection()
        first = RecordingWaiter()
        second = RecordingWaiter()
        self.pool.acquire(KEY, first, 3.0)
        self.pool.acquire(KEY, second, 3.0)
        self.pool.release(connection)
        self.assertEqual((first.ready, second.ready), ([connection], []))
        self.pool.release(connection)
        self.assertEqual(second.ready, [connection])

    def test_connectingCountsTowardLimit(self) -> None:
        """
        A connection still being opened counts toward C{maxConnections}.
        """
        self.pool.acquire(KEY, RecordingWaiter(), 3.0)
        self.pool.acquire(KEY, RecordingWaiter(), 3.0)
        self.assertEqual(len(self.connect.attempts), 1)

    def test_limitPerKey(self) -> None:
        """
        The limit applies to each upstream on its own.
        """
        self.openConnection(KEY)
        waiter = RecordingWaiter()
        self.pool.acquire(OTHER, waiter, 3.0)
        self.assertEqual(self.connect.attempts[-1].key, OTHER)
        self.assertEqual(len(self.connect.attempts), 2)

    def test_withdrawFromLine(self) -> None:
        """
        A withdrawn waiter leaves the line: the released connection goes to
        the next one.
        """
        connection, _ = self.openConnection()
        gone = RecordingWaiter()
        staying = RecordingWaiter()
        withdraw = self.pool.acquire(KEY, gone, 3.0)
        self.pool.acquire(KEY, staying, 3.0)
        withdraw()
        withdraw()
        self.pool.release(connection)
        self.assertEqual(gone.ready, [])
        self.assertEqual(staying.ready, [connection])

    def test_withdrawLastInLine(self) -> None:
        """
        With the line empty after a withdrawal, the released connection goes
        idle.
        """
        connection, _ = self.openConnection()
        gone = RecordingWaiter()
        self.pool.acquire(KEY, gone, 3.0)()
        self.pool.release(connection)
        self.assertEqual(gone.ready, [])
        self.assertEqual(self.pool.idleCount(KEY), 1)

    def test_withdrawAfterServedIsHarmless(self) -> None:
        """
        Withdrawing after the connection was handed out changes nothing.
        """
        waiter = RecordingWaiter()
        withdraw = self.pool.acquire(KEY, waiter, 3.0)
        connection, transport = self.connect.attempts[0].succeed()
        withdraw()
        self.assertEqual(self.connect.attempts[0].connector.disconnects, 0)
        self.assertEqual(waiter.ready, [connection])
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.pool.activeCount(KEY), 1)

    def test_withdrawDuringConnect(self) -> None:
        """
        Withdrawing while connecting disconnects the connector; a connection
        that still completes goes idle, not to the waiter.
        """
        waiter = RecordingWaiter()
        withdraw = self.pool.acquire(KEY, waiter, 3.0)
        withdraw()
        attempt = self.connect.attempts[0]
        self.assertEqual(attempt.connector.disconnects, 1)
        connection, transport = attempt.succeed()
        self.assertEqual(waiter.ready, [])
        self.assertEqual(self.pool.idleCount(KEY), 1)
        self.assertEqual(self.pool.activeCount(KEY), 0)
        self.assertFalse(transport.disconnecting)
        other = RecordingWaiter()
        self.pool.acquire(KEY, other, 3.0)
        self.assertEqual(other.ready, [connection])
        self.assertFalse(connection.reused)

    def test_withdrawDuringConnectThenFailure(self) -> None:
        """
        A withdrawn attempt that then fails tells nobody and frees its slot.
        """
        waiter = RecordingWaiter()
        self.pool.acquire(KEY, waiter, 3.0)()
        self.connect.attempts[0].fail()
        self.assertEqual(waiter.failed, [])
        self.assertEqual(self.pool.activeCount(KEY), 0)
        other = RecordingWaiter()
        self.pool.acquire(KEY, other, 3.0)
        self.assertEqual(len(self.connect.attempts), 2)

    def test_withdrawnConnectServesLine(self) -> None:
        """
        A connection that completes after its waiter withdrew goes to the
        next waiter in line, not idle while that waiter keeps waiting.
        """
        # Regression test for a fixed bug
        # (revproxy.proxy.pool.ConnectionPool.connectionMade): with no
        # waiter the new connection is put idle by _keepIdle, which never
        # looks at host.waiting; the waiter in line (queued because this
        # attempt filled maxConnections) is never served, although an idle
        # connection sits unused, until its own connect timeout.
        withdraw = self.pool.acquire(KEY, RecordingWaiter(), 3.0)
        inLine = RecordingWaiter()
        self.pool.acquire(KEY, inLine, 3.0)
        withdraw()
        connection, _ = self.connect.attempts[0].succeed()
        self.assertEqual(inLine.ready, [connection])
        self.assertEqual(self.pool.idleCount(KEY), 0)

    def test_connectFailure(self) -> None:
        """
        A failed connect is reported to its waiter and frees the slot.
        """
        waiter = RecordingWaiter()
        self.pool.acquire(KEY, waiter, 3.0)
        reason = self.connect.attempts[0].fail()
        self.assertEqual(waiter.failed, [reason])
        self.assertEqual(waiter.ready, [])
        self.assertEqual(self.pool.activeCount(KEY), 0)

    def test_connectFailureServesLine(self) -> None:
        """
        A failed connect lets the next waiter in line connect, with its own
        timeout.
        """
        first = RecordingWaiter()
        second = RecordingWaiter()
        self.pool.acquire(KEY, first, 3.0)
        self.pool.acquire(KEY, second, 9.0)
        self.assertEqual(len(self.connect.attempts), 1)
        self.connect.attempts[0].fail()
        self.assertEqual(len(first.failed), 1)
        self.assertEqual(len(self.connect.attempts), 2)
        self.assertEqual(self.connect.attempts[1].timeout, 9.0)
        connection, _ = self.connect.attempts[1].succeed()
        self.assertEqual(second.ready, [connection])
        self.assertEqual(second.failed, [])
        self.assertEqual(first.ready, [])

    def test_activeLossServesLine(self) -> None:
        """
        The loss of a busy connection frees its slot for the next waiter.
        """
        connection, _ = self.openConnection()
        waiter = RecordingWaiter()
        self.pool.acquire(KEY, waiter, 5.0)
        connection.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(self.connect.attempts), 2)
        self.assertEqual(self.connect.attempts[1].timeout, 5.0)
        self.assertEqual(self.pool.activeCount(KEY), 1)
        new, _ = self.connect.attempts[1].succeed()
        self.assertEqual(waiter.ready, [new])

    def test_activeLossFreesSlot(self) -> None:
        """
        With no one waiting, the loss of a busy connection lowers the count
        so the next acquire connects at once.
        """
        connection, _ = self.openConnection()
        connection.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.pool.activeCount(KEY), 0)
        waiter = RecordingWaiter()
        self.pool.acquire(KEY, waiter, 3.0)
        self.assertEqual(len(self.connect.attempts), 2)

    def test_lossCountedOnce(self) -> None:
        """
        A second loss report for the same connection changes nothing.
        """
        connection, _ = self.openConnection()
        self.pool.connectionLost(connection)
        self.pool.connectionLost(connection)
        self.assertEqual(self.pool.activeCount(KEY), 0)

    def test_idleLossKeepsLimit(self) -> None:
        """
        The loss of an idle connection does not lower the active count.
        """
        connection, _ = self.idleConnection()
        busy = RecordingWaiter()
        self.pool.acquire(KEY, busy, 3.0, fresh=True)
        self.assertEqual(self.pool.activeCount(KEY), 1)
        connection.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.pool.idleCount(KEY), 0)
        self.assertEqual(self.pool.activeCount(KEY), 1)


class LineTests(PoolTestMixin, SynchronousTestCase):
    """
    The line of waiters when an upstream has its most connections: bounded,
    and left in constant time from anywhere.
    """

    maxConnections = 1

    def setUp(self) -> None:
        super().setUp()
        self.pool.maxQueue = 3
        self.busy, _ = self.openConnection()

    def test_pendingStates(self) -> None:
        """
        C{acquire} answers L{SERVED} when it served the waiter at once, else
        a pending request that says whether it is in line.
        """
        self.pool.release(self.busy)
        self.assertIs(self.pool.acquire(KEY, RecordingWaiter(), 3.0), SERVED)
        self.assertFalse(self.pool.acquire(OTHER, RecordingWaiter(), 3.0).queued)
        self.assertTrue(self.pool.acquire(KEY, RecordingWaiter(), 3.0).queued)

    def test_lineBounded(self) -> None:
        """
        Beyond C{maxQueue} waiters, the next one fails at once with
        L{QueueFull}, and nothing is tried for it.
        """
        for _ in range(3):
            self.pool.acquire(KEY, RecordingWaiter(), 3.0)
        refused = RecordingWaiter()
        self.assertIs(self.pool.acquire(KEY, refused, 3.0), SERVED)
        [reason] = refused.failed
        self.assertTrue(reason.check(QueueFull))
        self.assertEqual(self.pool.waitingCount(KEY), 3)
        self.assertEqual(len(self.connect.attempts), 1)

    def test_noLine(self) -> None:
        """
        With C{maxQueue} 0 nobody waits.
        """
        self.pool.maxQueue = 0
        refused = RecordingWaiter()
        self.pool.acquire(KEY, refused, 3.0)
        self.assertEqual(len(refused.failed), 1)

    def test_leavingDoesNotSearch(self) -> None:
        """
        Leaving the line from its middle or end never compares waiters: it
        does not search the line, however long (with a list or deque it
        would compare half of it on average).
        """
        self.pool.maxQueue = 1000
        compared = []

        class Waiter(RecordingWaiter):
            def __eq__(self, other: object) -> bool:
                compared.append(1)
                return self is other

            __hash__ = object.__hash__

        pending = [self.pool.acquire(KEY, Waiter(), 3.0) for _ in range(1000)]
        for withdraw in reversed(pending[1:]):
            withdraw()
        self.assertEqual(self.pool.waitingCount(KEY), 1)
        self.assertEqual(compared, [])

    def test_servedLeavesLine(self) -> None:
        """
        A waiter served from the line is no longer in it: withdrawing then
        changes nothing.
        """
        waiter = RecordingWaiter()
        pending = self.pool.acquire(KEY, waiter, 3.0)
        self.pool.release(self.busy)
        self.assertEqual(waiter.ready, [self.busy])
        self.assertFalse(pending.queued)
        pending()
        self.assertEqual(self.pool.activeCount(KEY), 1)

    def test_turnOpensConnection(self) -> None:
        """
        When a waiter's turn comes with a slot free (the busy connection was
        lost), a connection is opened for it, it is told so (its connect
        timeout starts), and withdrawing then calls that connect off.
        """
        waiter = RecordingWaiter()
        pending = self.pool.acquire(KEY, waiter, 3.0)
        self.assertEqual(waiter.opening, 0)
        self.busy.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(waiter.opening, 1)
        self.assertFalse(pending.queued)
        attempt = self.connect.attempts[-1]
        pending()
        self.assertEqual(attempt.connector.disconnects, 1)


class Counter:
    """
    Counts the sockets the pool says it opened and closed.
    """

    def __init__(self) -> None:
        self.open = 0
        self.events: list[str] = []

    def opened(self) -> None:
        self.open += 1
        self.events.append("opened")

    def closed(self) -> None:
        self.open -= 1
        self.events.append("closed")


class CounterTests(PoolTestMixin, SynchronousTestCase):
    """
    The pool tells its counter (the connection cap) of every upstream
    socket, from the connect attempt until the connection is lost.
    """

    def setUp(self) -> None:
        super().setUp()
        self.counter = Counter()
        self.pool.counter = self.counter

    def test_connectedThenLost(self) -> None:
        """
        Counted from the attempt; uncounted once, when the connection made
        is lost (Twisted's connector tells the factory).
        """
        self.pool.acquire(KEY, RecordingWaiter(), 3.0)
        self.assertEqual(self.counter.open, 1)
        attempt = self.connect.attempts[0]
        connection, _ = attempt.succeed()
        self.assertEqual(self.counter.open, 1)
        reason = Failure(ConnectionDone())
        connection.connectionLost(reason)
        attempt.factory.clientConnectionLost(
            cast(IConnector, attempt.connector), reason
        )
        attempt.factory.clientConnectionLost(
            cast(IConnector, attempt.connector), reason
        )
        self.assertEqual(self.counter.events, ["opened", "closed"])

    def test_failedAttempt(self) -> None:
        """
        A failed connect is uncounted.
        """
        self.pool.acquire(KEY, RecordingWaiter(), 3.0)
        self.connect.attempts[0].fail()
        self.assertEqual(self.counter.events, ["opened", "closed"])

    def test_connectorRaises(self) -> None:
        """
        A connector that raises leaves nothing counted.
        """

        def raising(key: PoolKey, factory: ClientFactory, timeout: float) -> IConnector:
            raise ValueError("bad address")

        pool = ConnectionPool(self.clock, raising, counter=self.counter)
        waiter = RecordingWaiter()
        pool.acquire(KEY, waiter, 3.0)
        self.assertEqual(len(waiter.failed), 1)
        self.assertEqual(self.counter.events, ["opened", "closed"])

    def test_idleReuseNotCounted(self) -> None:
        """
        Reusing an idle connection opens no socket.
        """
        self.pool.counter = None
        self.idleConnection()
        self.pool.counter = self.counter
        self.pool.acquire(KEY, RecordingWaiter(), 3.0)
        self.assertEqual(self.counter.events, [])


class VerifyTests(PoolTestMixin, SynchronousTestCase):
    """
    C{acquire(verify=True)}: for a request that must not be sent twice, an
    idle connection is used only if it is verified alive.
    """

    def test_unverifiedClosed(self) -> None:
        """
        An idle connection that fails verification is closed and a new one
        opened.
        """
        connection, transport = self.idleConnection()
        connection.verified = lambda: False  # type: ignore[method-assign]
        waiter = RecordingWaiter()
        self.pool.acquire(KEY, waiter, 3.0, verify=True)
        self.assertEqual(waiter.ready, [])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.connect.attempts), 2)
        self.assertEqual(self.pool.idleCount(KEY), 0)

    def test_verifiedUsed(self) -> None:
        """
        An idle connection that passes verification is handed out.
        """
        connection, _ = self.idleConnection()
        waiter = RecordingWaiter()
        self.pool.acquire(KEY, waiter, 3.0, verify=True)
        self.assertEqual(waiter.ready, [connection])

    def test_notVerifiedWithout(self) -> None:
        """
        Without C{verify} an idle connection is handed out unasked.
        """
        connection, _ = self.idleConnection()
        connection.verified = lambda: False  # type: ignore[method-assign]
        waiter = RecordingWaiter()
        self.pool.acquire(KEY, waiter, 3.0)
        self.assertEqual(waiter.ready, [connection])


class FakeHealth:
    """
    An upstream's health state as the selector sees it; records the
    passive failures it is told of.
    """

    def __init__(self, healthy: bool = True) -> None:
        self.healthy = healthy
        self.failures: list[tuple[float, str]] = []

    def passiveFailure(self, now: float, error: str) -> bool:
        self.failures.append((now, error))
        return False


class SelectorHealthTests(SynchronousTestCase):
    """
    Tests for L{UpstreamSelector} with health states attached (a site with
    health checks).
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.selector = UpstreamSelector(["a", "b", "c"], self.clock, backoff=5.0)
        self.states = {u: FakeHealth() for u in ("a", "b", "c")}
        self.selector.health = self.states

    def picks(self, n: int, exclude: tuple[str, ...] = ()) -> list[str | None]:
        """
        The next C{n} picks.
        """
        return [self.selector.pick(exclude) for _ in range(n)]

    def test_noHealthByDefault(self) -> None:
        """
        A new selector has no health states and is always available.
        """
        selector = UpstreamSelector(["a"], self.clock)
        self.assertIsNone(selector.health)
        self.assertTrue(selector.available())

    def test_allHealthyRoundRobin(self) -> None:
        """
        With every upstream healthy, picks go round as without health.
        """
        self.assertEqual(self.picks(4), ["a", "b", "c", "a"])

    def test_unhealthySkipped(self) -> None:
        """
        An unhealthy upstream is never picked.
        """
        self.states["b"].healthy = False
        self.assertEqual(self.picks(4), ["a", "c", "a", "c"])

    def test_unhealthyNotAFallback(self) -> None:
        """
        When the healthy upstreams are in back-off, one of them is the
        fallback, never an unhealthy one.
        """
        self.states["a"].healthy = False
        self.selector.markDown("b")
        self.selector.markDown("c")
        self.assertEqual(set(self.picks(3)), {"b"})
        self.states["b"].healthy = False
        self.assertEqual(self.picks(3), ["c", "c", "c"])

    def test_unhealthyExcludedFallback(self) -> None:
        """
        Exclusions apply as without health: the healthy ones not excluded,
        else nothing.
        """
        self.states["c"].healthy = False
        self.assertEqual(self.picks(2, exclude=("a",)), ["b", "b"])
        self.assertIsNone(self.selector.pick(["a", "b"]))

    def test_allUnhealthy(self) -> None:
        """
        With every upstream unhealthy nothing is picked and the selector is
        not available.
        """
        for state in self.states.values():
            state.healthy = False
        self.assertEqual(self.picks(2), [None, None])
        self.assertIsNone(self.selector.peek())
        self.assertFalse(self.selector.available())

    def test_available(self) -> None:
        """
        One healthy upstream, even in back-off, keeps the selector
        available.
        """
        self.states["a"].healthy = False
        self.states["b"].healthy = False
        self.selector.markDown("c")
        self.assertTrue(self.selector.available())
        self.selector.health = None
        self.states["c"].healthy = False
        self.assertTrue(self.selector.available())

    def test_singleUnhealthy(self) -> None:
        """
        A site's only upstream is not picked while unhealthy.
        """
        selector = UpstreamSelector(["only"], self.clock)
        state = FakeHealth(healthy=False)
        selector.health = {"only": state}
        self.assertIsNone(selector.pick())
        self.assertIsNone(selector.peek())
        self.assertFalse(selector.available())
        state.healthy = True
        self.assertEqual(selector.pick(), "only")
        selector.markDown("only")
        self.assertEqual(selector.pick(), "only")
        self.assertEqual(selector.peek(), "only")

    def test_unknownUpstreamHealthy(self) -> None:
        """
        An upstream missing from the health map counts as healthy.
        """
        del self.states["b"]
        self.states["a"].healthy = False
        self.assertEqual(self.picks(2), ["b", "c"])
        self.assertTrue(self.selector.available())

    def test_markDownReportsToHealth(self) -> None:
        """
        A connection failure is one passive failure for the upstream's
        health, on top of the back-off.
        """
        self.clock.advance(7.0)
        self.selector.markDown("b")
        self.selector.markDown("b", "connect timeout")
        self.assertEqual(
            self.states["b"].failures,
            [(7.0, "connection failed"), (7.0, "connect timeout")],
        )
        self.assertEqual(self.states["a"].failures, [])
        self.assertTrue(self.selector.isDown("b"))

    def test_markUpLeavesHealth(self) -> None:
        """
        An answer takes an upstream out of back-off but does not make an
        unhealthy one healthy.
        """
        self.states["b"].healthy = False
        self.selector.markDown("b")
        self.selector.markUp("b")
        self.assertFalse(self.selector.isDown("b"))
        self.assertFalse(self.states["b"].healthy)
        self.assertNotIn("b", self.picks(4))

    def test_realHealthState(self) -> None:
        """
        With L{revproxy.upstreamhealth.UpstreamHealth} states, C{fails} connection
        failures take an upstream out until checks bring it back.
        """
        states = {u: UpstreamHealth("app", u, fails=2, passes=1) for u in "abc"}
        self.selector.health = states
        self.selector.markDown("a")
        self.assertTrue(states["a"].healthy)
        self.selector.markDown("a")
        self.assertFalse(states["a"].healthy)
        self.clock.advance(5.0)
        self.assertNotIn("a", self.picks(6))
        states["a"].passed(self.clock.seconds(), 200)
        self.assertIn("a", self.picks(3))

    def test_noHealthUnchanged(self) -> None:
        """
        Without health states, markDown only backs off, as before.
        """
        self.selector.health = None
        self.selector.markDown("b")
        self.assertEqual(self.states["b"].failures, [])
        self.assertEqual(self.picks(2), ["a", "c"])

    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["down", "up", "sick", "well", "wait", "pick"]),
                st.sampled_from(["a", "b", "c"]),
            ),
            max_size=40,
        )
    )
    def test_peekAgreesWithPick(self, steps: list[tuple[str, str]]) -> None:
        """
        Whatever the back-offs and health, L{UpstreamSelector.peek} names
        the upstream that L{UpstreamSelector.pick} then returns.
        """
        clock = Clock()
        selector = UpstreamSelector(["a", "b", "c"], clock, backoff=5.0)
        states = {u: FakeHealth() for u in "abc"}
        selector.health = states
        for action, upstream in steps:
            if action == "down":
                selector.markDown(upstream)
            elif action == "up":
                selector.markUp(upstream)
            elif action == "sick":
                states[upstream].healthy = False
            elif action == "well":
                states[upstream].healthy = True
            elif action == "wait":
                clock.advance(2.0)
            expected = selector.peek()
            self.assertEqual(selector.pick(), expected)
            if expected is not None:
                self.assertTrue(states[expected].healthy)
            self.assertEqual(
                selector.available(), any(s.healthy for s in states.values())
            )
