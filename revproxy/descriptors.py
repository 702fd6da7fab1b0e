# -*- test-case-name: tests.test_descriptors -*-
"""
The process's file descriptor limit (C{RLIMIT_NOFILE}).

Every client connection, upstream connection and open file takes a
descriptor, and the usual soft limit (1024) is far below what a proxy
needs; the hard limit is what the administrator allows.  So the running
proxy raises its soft limit to its hard limit once, at start, as nginx's
C{worker_rlimit_nofile} or Go's runtime do, and logs both.

C{getrlimit} and C{setrlimit} are parameters, so that tests call the
logic without changing their own process.
"""

from __future__ import annotations

import resource
from collections.abc import Callable

import attrs
from twisted.logger import Logger

_log = Logger()

#: Linux's default C{fs.nr_open}: the most descriptors a process may have
#: when the real value cannot be read.
DEFAULT_CEILING = 1048576

#: Where Linux says how high C{RLIMIT_NOFILE} may go.
NR_OPEN_PATH = "/proc/sys/fs/nr_open"

GetLimit = Callable[[int], tuple[int, int]]
SetLimit = Callable[[int, tuple[int, int]], None]


@attrs.frozen
class DescriptorLimit:
    """
    The file descriptor limit around L{raiseDescriptorLimit}.  An unlimited
    value (C{RLIM_INFINITY}) is counted as the ceiling, C{fs.nr_open}: it is
    the most a Linux process can open anyway.

    @ivar before: the soft limit at start.
    @ivar soft: the soft limit after the raise (C{before} if it failed).
    @ivar hard: the hard limit.
    @ivar error: why the raise failed, or L{None}.
    """

    before: int
    soft: int
    hard: int
    error: str | None = None


def nrOpen(path: str = NR_OPEN_PATH) -> int:
    """
    The kernel's C{fs.nr_open} (Linux refuses an C{RLIMIT_NOFILE} above
    it), or L{DEFAULT_CEILING} if it cannot be read.
    """
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return DEFAULT_CEILING


def raiseDescriptorLimit(
    getrlimit: GetLimit = resource.getrlimit,
    setrlimit: SetLimit = resource.setrlimit,
    ceiling: Callable[[], int] = nrOpen,
) -> DescriptorLimit:
    """
    Raise the soft C{RLIMIT_NOFILE} to the hard limit (to C{ceiling()} when
    the hard limit is unlimited: Linux refuses C{RLIM_INFINITY} for it),
    never lower it, and log one line with the soft limit before and after
    and the hard limit.  A refused C{setrlimit} is a warning, and the soft
    limit stays as it was.

    glibc's C{setrlimit()} is the C{prlimit64} system call, which the
    unit's C{SystemCallFilter=} allows (C{@default}); the C{setrlimit}
    system call itself is in C{@resources}, which the unit denies.
    """
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    cap = ceiling() if unlimited in (soft, hard) else 0
    before = cap if soft == unlimited else soft
    target = cap if hard == unlimited else hard
    hardText = (
        f"unlimited (counted as fs.nr_open, {cap})" if hard == unlimited else str(hard)
    )
    if before < target:
        try:
            setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as e:
            reason = (e.strerror if isinstance(e, OSError) else None) or str(e)
            _log.warn(
                "File descriptor limit (RLIMIT_NOFILE): soft {before} -> {before}, "
                "hard {hard}: cannot raise the soft limit to {target} ({reason}); "
                "keeping {before}",
                before=before,
                hard=hardText,
                target=target,
                reason=reason,
            )
            return DescriptorLimit(before, before, target, reason)
    result = DescriptorLimit(before, max(before, target), target)
    _log.info(
        "File descriptor limit (RLIMIT_NOFILE): soft {before} -> {soft}, hard {hard}",
        before=result.before,
        soft=result.soft,
        hard=hardText,
    )
    return result


def currentDescriptorLimit(
    getrlimit: GetLimit = resource.getrlimit, ceiling: Callable[[], int] = nrOpen
) -> int:
    """
    The soft C{RLIMIT_NOFILE} now: how many descriptors this process may
    have open (an unlimited one counted as C{ceiling()}).
    """
    soft, _ = getrlimit(resource.RLIMIT_NOFILE)
    return ceiling() if soft == resource.RLIM_INFINITY else soft
