# -*- test-case-name: tests.test_throttle -*-
"""
At most one log line per interval for an event that may repeat as fast as
clients or the machine make it (a local connect error, the connection cap
reached), with a count of the lines held back.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime


class LogThrottle:
    """
    Says when a repeating event may be logged again.

    @ivar held: How many events were held back since the last one logged.
    """

    def __init__(self, clock: IReactorTime, interval: float) -> None:
        self._clock = clock
        self._interval = interval
        self._last: float | None = None
        self.held = 0

    def due(self) -> int | None:
        """
        One more event: whether to log it.

        @return: L{None} to hold it back (it is counted), else how many were
            held back before it (the count starts again).
        """
        now = self._clock.seconds()
        last = self._last
        if last is not None and now - last < self._interval:
            self.held += 1
            return None
        self._last = now
        held, self.held = self.held, 0
        return held
