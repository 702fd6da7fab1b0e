# -*- test-case-name: tests.test_http1,tests.test_forwarder,tests.test_routing -*-
"""
The short responses revproxy makes itself, and the C{Date} of every
response.

An early refusal (400, 408, 413, 414, 431...), a 500, a 421, 429 or 308 of
the router, a 502, 503 or 504 of the forwarder and an ACME http-01 answer
all have the same head, built here (L{shortHeaders}); their one-line text
bodies are built here too (L{shortLine}, L{shortBody}), and
L{simpleResponse} answers an exchange with both.  L{httpDate}
is the one cached C{Date} value.

Pure: no reactor, no I/O; the time is the injected clock's.
"""

from __future__ import annotations

from collections.abc import Iterable
from email.utils import formatdate
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from revproxy.proxy.exchange import Exchange

#: The reason phrases of the answers revproxy makes itself (RFC 9110
#: section 15).
REASONS = {
    200: b"OK",
    201: b"Created",
    204: b"No Content",
    301: b"Moved Permanently",
    302: b"Found",
    303: b"See Other",
    307: b"Temporary Redirect",
    308: b"Permanent Redirect",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    410: b"Gone",
    400: b"Bad Request",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    421: b"Misdirected Request",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}

#: The C{Content-Type} of a short text answer.
TEXT = b"text/plain; charset=utf-8"
#: The C{Content-Type} of an error page (C{error_pages}).
HTML = b"text/html; charset=utf-8"

# The C{Date} value last made, and the second it is for.
_date: tuple[int, bytes] = (-1, b"")


def httpDate(seconds: float) -> bytes:
    """
    The HTTP C{Date} value for C{seconds} (the clock's C{seconds()}),
    formatted once per second.
    """
    second = int(seconds)
    global _date
    cached = _date
    if cached[0] != second:
        cached = _date = (second, formatdate(second, usegmt=True).encode("ascii"))
    return cached[1]


def shortLine(code: int, detail: str | None = None) -> str:
    """
    The one line of a short answer: its code, its reason and what happened,
    as in C{"431 Request Header Fields Too Large: ..."}, or without a
    C{detail} C{"500 Internal Server Error"}.
    """
    reason = REASONS[code].decode("ascii")
    if detail is None:
        return f"{code} {reason}"
    return f"{code} {reason}: {detail}"


def shortBody(code: int, detail: str | None = None) -> bytes:
    """
    The text body of a short answer: its L{shortLine} and a newline.
    """
    return (shortLine(code, detail) + "\n").encode("utf-8")


def refusalBody(
    exchange: Exchange | None, code: int, detail: str
) -> tuple[bytes, bytes]:
    """
    The body of an early refusal of C{exchange} and its C{Content-Type}:
    its site's error page for C{code} if there is one, else the one-line
    text.
    """
    pages = exchange.errorPages if exchange is not None else None
    page = pages.get(code) if pages else None
    if page is not None:
        return page, HTML
    return shortBody(code, detail), TEXT


def shortHeaders(
    date: bytes, length: int, contentType: bytes = TEXT
) -> list[tuple[bytes, bytes]]:
    """
    The fields of a short answer of revproxy's own (an early refusal, a
    502, a redirect, an ACME answer...) whose body is C{length} bytes.
    """
    return [
        (b"Date", date),
        (b"Content-Type", contentType),
        (b"Content-Length", b"%d" % length),
        (b"Cache-Control", b"no-store"),
    ]


def simpleResponse(
    exchange: Exchange,
    code: int,
    message: str,
    date: bytes,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """
    Answer C{exchange} with C{code} and the one-line text body C{message}
    (a L{shortLine}), unless the client already left.

    @param date: The C{Date} value.
    @param headers: Fields to add (C{Location}, C{Retry-After}).
    """
    if exchange.clientLeft or exchange.finished or exchange.startedWriting:
        return
    pages = exchange.errorPages
    page = pages.get(code) if pages else None
    if page is not None:
        body = page
        fields = shortHeaders(date, len(body), HTML)
    else:
        body = (message + "\n").encode("utf-8")
        fields = shortHeaders(date, len(body))
    fields.extend(headers)
    if exchange.requestID:
        fields.append((b"X-Request-ID", exchange.requestID.encode("ascii")))
    exchange.respond(code, b"", fields)
    exchange.write(body)
    exchange.finish()
