"""
Tests for L{revproxy.descriptors}: the file descriptor limit raised at
start, with injected C{getrlimit}/C{setrlimit}.  Once for real, in a child
process: L{tests.integration.test_descriptors}.
"""

from __future__ import annotations

import errno
import os
import resource

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from revproxy.descriptors import (
    DEFAULT_CEILING,
    DescriptorLimit,
    currentDescriptorLimit,
    nrOpen,
    raiseDescriptorLimit,
)

INFINITY = resource.RLIM_INFINITY


class _Limits:
    """
    C{getrlimit} and C{setrlimit} on a made-up C{RLIMIT_NOFILE}; every
    C{setrlimit} call is recorded, and raises C{error} if set.
    """

    def __init__(self, soft: int, hard: int, error: Exception | None = None) -> None:
        self.limits = (soft, hard)
        self.error = error
        self.calls: list[tuple[int, tuple[int, int]]] = []

    def getrlimit(self, which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return self.limits

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        self.calls.append((which, limits))
        if self.error is not None:
            raise self.error
        self.limits = limits


class RaiseDescriptorLimitTests(SynchronousTestCase):
    """
    L{raiseDescriptorLimit} raises the soft limit to the hard one and logs
    one line with both.
    """

    def setUp(self) -> None:
        self.events = EventLoggingObserver()
        globalLogPublisher.addObserver(self.events)
        self.addCleanup(globalLogPublisher.removeObserver, self.events)

    def logged(self) -> list[tuple[LogLevel, str]]:
        """
        The level and text of every event logged so far.
        """
        return [(e["log_level"], formatEvent(e)) for e in self.events]

    def raiseWith(self, limits: _Limits, ceiling: int = 1048576) -> DescriptorLimit:
        return raiseDescriptorLimit(
            getrlimit=limits.getrlimit,
            setrlimit=limits.setrlimit,
            ceiling=lambda: ceiling,
        )

    def test_raisesToHard(self) -> None:
        """
        A soft limit under the hard one is raised to it; the hard limit is
        left alone; the line says before, after and hard.
        """
        limits = _Limits(1024, 65536)
        self.assertEqual(self.raiseWith(limits), DescriptorLimit(1024, 65536, 65536))
        self.assertEqual(limits.calls, [(resource.RLIMIT_NOFILE, (65536, 65536))])
        self.assertEqual(
            self.logged(),
            [
                (
                    LogLevel.info,
                    "File descriptor limit (RLIMIT_NOFILE): soft 1024 -> 65536, "
                    "hard 65536",
                )
            ],
        )

    def test_alreadyAtHard(self) -> None:
        """
        A soft limit already at the hard one is not set again (the unit's
        C{LimitNOFILE=65536} sets both), and is still logged.
        """
        limits = _Limits(65536, 65536)
        self.assertEqual(self.raiseWith(limits), DescriptorLimit(65536, 65536, 65536))
        self.assertEqual(limits.calls, [])
        self.assertEqual(
            self.logged(),
            [
                (
                    LogLevel.info,
                    "File descriptor limit (RLIMIT_NOFILE): soft 65536 -> 65536, "
                    "hard 65536",
                )
            ],
        )

    def test_unlimitedHard(self) -> None:
        """
        An unlimited hard limit (which Linux refuses for C{RLIMIT_NOFILE},
        but other systems have) raises the soft limit to the ceiling
        (C{fs.nr_open}) only, keeps the hard limit unlimited, and counts it
        as the ceiling.
        """
        limits = _Limits(1024, INFINITY)
        self.assertEqual(
            self.raiseWith(limits, ceiling=524288),
            DescriptorLimit(1024, 524288, 524288),
        )
        self.assertEqual(limits.calls, [(resource.RLIMIT_NOFILE, (524288, INFINITY))])
        self.assertEqual(
            self.logged(),
            [
                (
                    LogLevel.info,
                    "File descriptor limit (RLIMIT_NOFILE): soft 1024 -> 524288, "
                    "hard unlimited (counted as fs.nr_open, 524288)",
                )
            ],
        )

    def test_unlimitedSoft(self) -> None:
        """
        An unlimited soft limit is left alone and counted as the ceiling.
        """
        limits = _Limits(INFINITY, INFINITY)
        self.assertEqual(
            self.raiseWith(limits, ceiling=4096), DescriptorLimit(4096, 4096, 4096)
        )
        self.assertEqual(limits.calls, [])

    def test_setrlimitFails(self) -> None:
        """
        When C{setrlimit} is refused (a seccomp filter answering EPERM), the
        old soft limit stays and one warning says so, with the numbers and
        the reason.
        """
        limits = _Limits(1024, 65536, OSError(errno.EPERM, os.strerror(errno.EPERM)))
        self.assertEqual(
            self.raiseWith(limits),
            DescriptorLimit(1024, 1024, 65536, error="Operation not permitted"),
        )
        self.assertEqual(
            self.logged(),
            [
                (
                    LogLevel.warn,
                    "File descriptor limit (RLIMIT_NOFILE): soft 1024 -> 1024, "
                    "hard 65536: cannot raise the soft limit to 65536 "
                    "(Operation not permitted); keeping 1024",
                )
            ],
        )

    def test_setrlimitValueError(self) -> None:
        """
        Python's C{ValueError} from C{setrlimit} (values the kernel refuses)
        is handled the same way.
        """
        limits = _Limits(1024, 65536, ValueError("not allowed to raise maximum limit"))
        result = self.raiseWith(limits)
        self.assertEqual(
            result,
            DescriptorLimit(
                1024, 1024, 65536, error="not allowed to raise maximum limit"
            ),
        )
        [(level, _)] = self.logged()
        self.assertEqual(level, LogLevel.warn)


class CeilingTests(SynchronousTestCase):
    """
    L{nrOpen} reads the kernel's C{fs.nr_open}.
    """

    def write(self, text: str) -> str:
        path = str(self.mktemp())
        with open(path, "w", encoding="ascii") as f:
            f.write(text)
        return path

    def test_reads(self) -> None:
        """
        The number in the file.
        """
        self.assertEqual(nrOpen(self.write("2097152\n")), 2097152)

    def test_fallback(self) -> None:
        """
        Linux's default, 1048576, when the file is missing or unreadable as
        a number.
        """
        self.assertEqual(DEFAULT_CEILING, 1048576)
        self.assertEqual(nrOpen(self.mktemp()), DEFAULT_CEILING)
        self.assertEqual(nrOpen(self.write("many\n")), DEFAULT_CEILING)

    def test_thisKernel(self) -> None:
        """
        On this machine, the real value: at least the hard limit of this
        process (the kernel refuses a higher one).
        """
        self.assertGreaterEqual(nrOpen(), resource.getrlimit(resource.RLIMIT_NOFILE)[1])


class CurrentDescriptorLimitTests(SynchronousTestCase):
    """
    L{currentDescriptorLimit}: the soft limit now, as a count.
    """

    def test_soft(self) -> None:
        """
        The soft limit.
        """
        self.assertEqual(
            currentDescriptorLimit(getrlimit=_Limits(4096, 65536).getrlimit), 4096
        )

    def test_unlimited(self) -> None:
        """
        An unlimited soft limit counts as the ceiling.
        """
        self.assertEqual(
            currentDescriptorLimit(
                getrlimit=_Limits(INFINITY, INFINITY).getrlimit, ceiling=lambda: 77
            ),
            77,
        )

    def test_thisProcess(self) -> None:
        """
        By default, this process's soft limit.
        """
        self.assertEqual(
            currentDescriptorLimit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        )
