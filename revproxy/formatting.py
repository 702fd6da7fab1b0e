# -*- test-case-name: tests.test_formatting -*-
"""
How revproxy writes a time and shortens a text in its messages, answers and
records: L{isoTime} (ISO 8601, UTC, to the second) and L{shorten} (cut with
C{"..."}), with L{oneLine} (whitespace runs made one space, then shortened).

Pure: no reactor, no I/O.
"""

from __future__ import annotations

from datetime import UTC, datetime


def isoTime(seconds: float, outOfRange: str | None = None) -> str:
    """
    C{seconds} since the epoch as an ISO 8601 UTC time to the second:
    C{"2026-11-27T09:20:18Z"}.

    @param outOfRange: For a time out of C{datetime}'s range, a format of
        the number instead (C{"{:.0f}"}; C{""} for nothing); L{None}: raise.
    @raise OverflowError: (or L{ValueError}, L{OSError}) C{seconds} is out
        of range and C{outOfRange} is L{None}.
    """
    try:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError, OSError):
        if outOfRange is None:
            raise
        return outOfRange.format(seconds)


def shorten(text: str, limit: int | None) -> str:
    """
    C{text}, cut to C{limit} characters (the last three C{"..."}) when it
    is longer; whole when C{limit} is L{None}.
    """
    if limit is not None and len(text) > limit:
        return text[: limit - 3] + "..."
    return text


def oneLine(text: str, limit: int | None = None) -> str:
    """
    C{text} on one line (each run of whitespace one space, none at either
    end), shortened to C{limit} characters.
    """
    return shorten(" ".join(text.split()), limit)
