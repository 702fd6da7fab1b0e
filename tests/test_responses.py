"""
Tests for L{revproxy.proxy.responses}.
"""

from __future__ import annotations

from email.utils import formatdate

from twisted.trial.unittest import SynchronousTestCase

from revproxy.proxy.responses import httpDate, shortBody, shortHeaders, shortLine


class ShortAnswerTests(SynchronousTestCase):
    """
    Tests for L{shortLine}, L{shortBody} and L{shortHeaders}.
    """

    def test_line(self) -> None:
        """
        A short answer's line is its code, its reason and, if given, what
        happened.
        """
        self.assertEqual(
            shortLine(502, "the upstream failed"),
            "502 Bad Gateway: the upstream failed",
        )
        self.assertEqual(shortLine(500), "500 Internal Server Error")

    def test_body(self) -> None:
        """
        A short answer's body is its line and a newline, in UTF-8.
        """
        self.assertEqual(
            shortBody(400, "caf\u00e9"), "400 Bad Request: caf\u00e9\n".encode()
        )

    def test_headers(self) -> None:
        """
        A short answer is plain text by default, never cached.
        """
        self.assertEqual(
            shortHeaders(b"D", 3),
            [
                (b"Date", b"D"),
                (b"Content-Type", b"text/plain; charset=utf-8"),
                (b"Content-Length", b"3"),
                (b"Cache-Control", b"no-store"),
            ],
        )


class HTTPDateTests(SynchronousTestCase):
    """
    Tests for L{httpDate}.
    """

    def test_perSecond(self) -> None:
        """
        The C{Date} is the second's, whatever the fraction, and changes with
        the second.
        """
        first = httpDate(1_700_000_000.1)
        self.assertIs(httpDate(1_700_000_000.9), first)
        self.assertEqual(first, formatdate(1_700_000_000, usegmt=True).encode())
        self.assertEqual(
            httpDate(1_700_000_001), formatdate(1_700_000_001, usegmt=True).encode()
        )
