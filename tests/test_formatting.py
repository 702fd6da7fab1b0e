"""
Tests for L{revproxy.formatting}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from revproxy.formatting import isoTime, oneLine, shorten


class IsoTimeTests(SynchronousTestCase):
    """
    Tests for L{isoTime}.
    """

    def test_utcToTheSecond(self) -> None:
        """
        A time is written in UTC, to the second, with a C{Z}.
        """
        self.assertEqual(isoTime(1795771218.9), "2026-11-27T09:20:18Z")

    def test_outOfRange(self) -> None:
        """
        A time out of range raises, or is written with the format given.
        """
        self.assertRaises((OverflowError, ValueError, OSError), isoTime, 1e20)
        self.assertEqual(isoTime(1e20, ""), "")
        self.assertEqual(isoTime(1e20, "{:.0f}"), "100000000000000000000")


class ShortenTests(SynchronousTestCase):
    """
    Tests for L{shorten} and L{oneLine}.
    """

    def test_shorten(self) -> None:
        """
        A text longer than the limit is cut to it, ending in C{...}; a
        shorter one, or any without a limit, is kept whole.
        """
        self.assertEqual(shorten("abcdefgh", 6), "abc...")
        self.assertEqual(shorten("abcdef", 6), "abcdef")
        self.assertEqual(shorten("abcdefgh", None), "abcdefgh")

    def test_oneLine(self) -> None:
        """
        Whitespace runs become one space before the text is shortened.
        """
        self.assertEqual(oneLine("  a\n\tb  c "), "a b c")
        self.assertEqual(oneLine("a\nbcdefgh", 6), "a b...")
