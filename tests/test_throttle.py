"""
Tests for L{revproxy.throttle}.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from revproxy.throttle import LogThrottle


class LogThrottleTests(SynchronousTestCase):
    """
    L{LogThrottle}: one line per interval, with the count held back.
    """

    def test_firstThenHeldThenCount(self) -> None:
        """
        The first event is due at once; the next ones within the interval
        are held back and counted; the first after it is due with that
        count, which starts again.
        """
        clock = Clock()
        throttle = LogThrottle(clock, 60.0)
        self.assertEqual(throttle.due(), 0)
        clock.advance(59.9)
        self.assertIsNone(throttle.due())
        self.assertIsNone(throttle.due())
        self.assertEqual(throttle.held, 2)
        clock.advance(0.1)
        self.assertEqual(throttle.due(), 2)
        self.assertEqual(throttle.held, 0)
        self.assertIsNone(throttle.due())
        clock.advance(60)
        self.assertEqual(throttle.due(), 1)

    def test_atTimeZero(self) -> None:
        """
        A clock that starts at 0 does not hold the first event back.
        """
        throttle = LogThrottle(Clock(), 1.0)
        self.assertEqual(throttle.due(), 0)
        self.assertIsNone(throttle.due())
