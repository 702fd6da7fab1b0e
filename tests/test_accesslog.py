"""
Tests for L{revproxy.accesslog}: the line formats, and the buffered writer
driven by a L{Clock}.
"""

from __future__ import annotations

import errno
import io
import json
import os
from typing import Any

import attrs
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from revproxy.accesslog import (
    FLUSH_BYTES,
    MAX_BUFFER_BYTES,
    AccessLog,
    AccessRecord,
    formatCombined,
    formatJSON,
    logText,
    wholeLines,
)

#: 2026-11-27T09:20:18.123Z
_TS = 1795771218.123

_RECORD = AccessRecord(
    ts=_TS,
    client_ip="203.0.113.7",
    peer="10.0.0.2:51234",
    method="GET",
    host="www.example.com",
    path="/index.html",
    query="a=1&b=2",
    protocol="HTTP/1.1",
    status=200,
    bytes_sent=612,
    duration_ms=12.5,
    site="example",
    upstream="10.0.1.5:8080",
    upstream_status=200,
    upstream_ms=10.25,
    request_id="0123456789abcdef0123456789abcdef",
    user_agent="curl/8.5.0",
    referer="https://ref.example/",
    tls_version="TLSv1.3",
    generation=3,
)

#: Quote, backslash, CR, LF, NUL, DEL, and UTF-8 (é, and a character
#: outside the BMP).
_NASTY = 'a"b\\c\r\nd\x00e\x7f\u00e9\U0001f600'

_STRING_FIELDS = [
    a.name
    for a in attrs.fields(AccessRecord)
    if isinstance(getattr(_RECORD, a.name), str)
]


#: Every character some reader takes for the end of a line (Python's
#: splitlines, journald, terminals, editors), and the other controls.
SEPARATORS = [
    "\n",
    "\r",
    "\x0b",
    "\x0c",
    "\x1c",
    "\x1d",
    "\x1e",
    "\x85",
    "\u2028",
    "\u2029",
    "\x00",
    "\x1b",
    "\x7f",
    "\x9b",
]


class SeparatorTests(SynchronousTestCase):
    """
    No value a client sent can end an access-log line or start another.
    """

    def test_eachFieldEachSeparator(self) -> None:
        """
        Each separator in each text field gives exactly one line, in both
        formats, however the line is split, and the separator itself is
        not in it.
        """
        for separator in SEPARATORS:
            for name in _STRING_FIELDS:
                value = f"x{separator}y"
                changes: dict[str, Any] = {name: value}
                record = attrs.evolve(_RECORD, **changes)
                for format in (formatJSON, formatCombined):
                    line = format(record)
                    self.assertTrue(line.endswith(b"\n"))
                    text = line.decode("ascii")
                    self.assertEqual(
                        len(text.splitlines()), 1, (format, name, separator)
                    )
                    self.assertNotIn(separator, text[:-1], (format, name))

    def test_logText(self) -> None:
        """
        L{logText} escapes controls and separators, and keeps what is
        printable; bytes are read byte by byte.
        """
        for separator in SEPARATORS:
            escaped = logText(f"a{separator}b")
            self.assertEqual(len(escaped.splitlines()), 1, separator)
            self.assertNotIn(separator, escaped)
        self.assertEqual(logText("/a b?c=\u00e9"), "/a b?c=\u00e9")
        self.assertEqual(logText(b"/x\x85y"), "/x\\x85y")
        self.assertEqual(logText("\u2028"), "\\u2028")
        self.assertEqual(logText("/\u2028".encode()), "/\u00e2\\x80\u00a8")


class FormatJSONTests(SynchronousTestCase):
    """
    Tests for L{formatJSON}.
    """

    def test_exactLine(self) -> None:
        """
        A record is one JSON object with every field, in field order, the
        time in ISO-8601 UTC with milliseconds, and a newline.
        """
        self.assertEqual(
            formatJSON(_RECORD),
            b'{"ts":"2026-11-27T09:20:18.123Z","client_ip":"203.0.113.7",'
            b'"peer":"10.0.0.2:51234","method":"GET","host":"www.example.com",'
            b'"path":"/index.html","query":"a=1&b=2","protocol":"HTTP/1.1",'
            b'"status":200,"bytes_sent":612,"duration_ms":12.5,'
            b'"site":"example","upstream":"10.0.1.5:8080",'
            b'"upstream_status":200,"upstream_ms":10.25,'
            b'"request_id":"0123456789abcdef0123456789abcdef",'
            b'"user_agent":"curl/8.5.0","referer":"https://ref.example/",'
            b'"tls_version":"TLSv1.3","generation":3,"bytes_received":null,"close_reason":null}\n',
        )

    def test_noUpstream(self) -> None:
        """
        A missing upstream status, upstream time and TLS version are
        C{null}.
        """
        record = attrs.evolve(
            _RECORD, upstream_status=None, upstream_ms=None, tls_version=None
        )
        parsed = json.loads(formatJSON(record))
        self.assertIsNone(parsed["upstream_status"])
        self.assertIsNone(parsed["upstream_ms"])
        self.assertIsNone(parsed["tls_version"])

    def test_millisecondsRounded(self) -> None:
        """
        The milliseconds are rounded, not cut off by float error, and keep
        their leading zeros.
        """
        self.assertEqual(
            json.loads(formatJSON(attrs.evolve(_RECORD, ts=1795771218.0499)))["ts"],
            "2026-11-27T09:20:18.050Z",
        )
        self.assertEqual(
            json.loads(formatJSON(attrs.evolve(_RECORD, ts=1795771218.007)))["ts"],
            "2026-11-27T09:20:18.007Z",
        )

    def test_escaping(self) -> None:
        """
        Quotes, backslashes, control characters and non-ASCII text are
        escaped; the line is pure ASCII and parses back to the same text.
        """
        line = formatJSON(attrs.evolve(_RECORD, user_agent=_NASTY))
        self.assertIn(
            b'"user_agent":"a\\"b\\\\c\\r\\nd\\u0000e\\u007f\\u00e9\\ud83d\\ude00"',
            line,
        )
        line.decode("ascii")
        self.assertEqual(json.loads(line)["user_agent"], _NASTY)

    def test_oneLineWhateverTheValues(self) -> None:
        """
        With hostile text in every string field, the output is still exactly
        one line with no carriage return.
        """
        values: dict[str, Any] = {name: _NASTY for name in _STRING_FIELDS}
        line = formatJSON(attrs.evolve(_RECORD, **values))
        self.assertEqual(line.count(b"\n"), 1)
        self.assertTrue(line.endswith(b"\n"))
        self.assertNotIn(b"\r", line)
        self.assertNotIn(b"\x00", line)


class FormatCombinedTests(SynchronousTestCase):
    """
    Tests for L{formatCombined}.
    """

    def test_exactLine(self) -> None:
        """
        A record gives the same bytes as nginx's C{combined} format for the
        same request, in UTC.
        """
        self.assertEqual(
            formatCombined(_RECORD),
            b"203.0.113.7 - - [27/Nov/2026:09:20:18 +0000] "
            b'"GET /index.html?a=1&b=2 HTTP/1.1" 200 612 '
            b'"https://ref.example/" "curl/8.5.0"\n',
        )

    def test_noQuery(self) -> None:
        """
        Without a query the request has no C{"?"}.
        """
        line = formatCombined(attrs.evolve(_RECORD, query="", path="/"))
        self.assertIn(b'"GET / HTTP/1.1"', line)

    def test_emptyHeaders(self) -> None:
        """
        An empty Referer and User-Agent are logged as C{"-"}.
        """
        line = formatCombined(attrs.evolve(_RECORD, referer="", user_agent=""))
        self.assertTrue(line.endswith(b' 200 612 "-" "-"\n'), line)

    def test_noRequestLine(self) -> None:
        """
        A request with no method and no path (no request line was read) is
        logged as C{"-"}, as nginx does.
        """
        line = formatCombined(
            attrs.evolve(_RECORD, method="", path="", query="", status=400)
        )
        self.assertIn(b'] "-" 400 ', line)

    def test_escaping(self) -> None:
        """
        C{"}, C{\\}, control bytes, DEL and non-ASCII bytes become
        C{\\xHH} with upper-case digits, as nginx's C{ngx_http_log_escape}
        does.
        """
        line = formatCombined(
            attrs.evolve(_RECORD, user_agent=_NASTY, path='/a"b c', referer="\\")
        )
        self.assertEqual(
            line,
            b"203.0.113.7 - - [27/Nov/2026:09:20:18 +0000] "
            b'"GET /a\\x22b c?a=1&b=2 HTTP/1.1" 200 612 '
            b'"\\x5C" '
            b'"a\\x22b\\x5Cc\\x0D\\x0Ad\\x00e\\x7F\\xC3\\xA9\\xF0\\x9F\\x98\\x80"\n',
        )

    def test_surrogateEscapes(self) -> None:
        """
        Undecodable bytes kept as surrogate escapes are logged as the
        original bytes, escaped.
        """
        path = b"/caf\xe9".decode("utf-8", "surrogateescape")
        line = formatCombined(attrs.evolve(_RECORD, path=path, query=""))
        self.assertIn(b'"GET /caf\\xE9 HTTP/1.1"', line)

    def test_oneLineWhateverTheValues(self) -> None:
        """
        With hostile text in every string field, the output is one line of
        printable ASCII.
        """
        values: dict[str, Any] = {name: _NASTY for name in _STRING_FIELDS}
        line = formatCombined(attrs.evolve(_RECORD, **values))
        self.assertTrue(line.endswith(b"\n"))
        body = line[:-1]
        self.assertEqual([b for b in body if b < 0x20 or b >= 0x7F], [])
        # Only the format's own quotes are left unescaped.
        self.assertEqual(body.count(b'"'), 6)


class _FlakyStream(io.BytesIO):
    """
    A stream that raises C{error} while it is set, and writes at most
    C{limit} bytes per call before raising it when C{partial} is set.
    """

    def __init__(self) -> None:
        super().__init__()
        self.error: OSError | None = None
        self.partial = 0

    def write(self, data: Any) -> int:
        if self.partial:
            written = super().write(bytes(data)[: self.partial])
            self.partial = 0
            return written
        if self.error is not None:
            raise self.error
        return super().write(data)


def _observe(case: SynchronousTestCase) -> EventLoggingObserver:
    """
    Collect the log events emitted until C{case} ends.
    """
    events = EventLoggingObserver()
    globalLogPublisher.addObserver(events)
    case.addCleanup(globalLogPublisher.removeObserver, events)
    return events


def _errorEvents(events: EventLoggingObserver) -> list[dict[str, Any]]:
    return [
        e
        for e in events
        if e.get("log_namespace") == "revproxy.accesslog"
        and e["log_level"] == LogLevel.error
    ]


def _infoEvents(events: EventLoggingObserver) -> list[dict[str, Any]]:
    return [
        e
        for e in events
        if e.get("log_namespace") == "revproxy.accesslog"
        and e["log_level"] == LogLevel.info
    ]


class AccessLogFileTests(SynchronousTestCase):
    """
    Tests for L{AccessLog} writing to a file.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.path = self.mktemp()
        self.line = formatJSON(_RECORD)

    def makeLog(self, format: str = "json") -> AccessLog:
        accessLog = AccessLog(self.clock, self.path, format)
        accessLog.start()
        self.addCleanup(accessLog.stop)
        return accessLog

    def contents(self, path: str | None = None) -> bytes:
        try:
            with open(path or self.path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""

    def test_writtenAfterOneSecond(self) -> None:
        """
        A line is not written at once, but within a second.
        """
        accessLog = self.makeLog()
        accessLog.log(_RECORD)
        self.assertEqual(self.contents(), b"")
        self.clock.advance(0.999)
        self.assertEqual(self.contents(), b"")
        self.clock.advance(0.001)
        self.assertEqual(self.contents(), self.line)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_oneFlushPerInterval(self) -> None:
        """
        Lines logged within one interval are written by one flush, armed by
        the first of them.
        """
        accessLog = self.makeLog()
        accessLog.log(_RECORD)
        self.clock.advance(0.5)
        accessLog.log(_RECORD)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0.5)
        self.assertEqual(self.contents(), self.line * 2)
        accessLog.log(_RECORD)
        self.clock.advance(1)
        self.assertEqual(self.contents(), self.line * 3)

    def test_combinedFormat(self) -> None:
        """
        With C{"combined"}, the file gets C{combined} lines.
        """
        accessLog = self.makeLog("combined")
        accessLog.log(_RECORD)
        self.clock.advance(1)
        self.assertEqual(self.contents(), formatCombined(_RECORD))

    def test_unknownFormat(self) -> None:
        """
        An unknown format is refused.
        """
        self.assertRaises(ValueError, AccessLog, self.clock, self.path, "xml")

    def test_writtenWhenOverFlushBytes(self) -> None:
        """
        When more than L{FLUSH_BYTES} wait, they are written at once.
        """
        accessLog = self.makeLog()
        count = FLUSH_BYTES // len(self.line)
        for _ in range(count):
            accessLog.log(_RECORD)
        self.assertEqual(self.contents(), b"")
        accessLog.log(_RECORD)
        self.assertEqual(self.contents(), self.line * (count + 1))

    def test_appends(self) -> None:
        """
        An existing file is appended to, not truncated.
        """
        with open(self.path, "wb") as f:
            f.write(b"old\n")
        accessLog = self.makeLog()
        accessLog.log(_RECORD)
        self.clock.advance(1)
        self.assertEqual(self.contents(), b"old\n" + self.line)

    def test_stopFlushes(self) -> None:
        """
        L{AccessLog.stop} writes what is buffered and leaves no timer.
        """
        accessLog = AccessLog(self.clock, self.path, "json")
        accessLog.start()
        accessLog.log(_RECORD)
        accessLog.stop()
        self.assertEqual(self.contents(), self.line)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_notStartedNoTimer(self) -> None:
        """
        Before L{AccessLog.start}, lines wait without a timer; starting arms
        one.
        """
        accessLog = AccessLog(self.clock, self.path, "json")
        self.addCleanup(accessLog.stop)
        accessLog.log(_RECORD)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        accessLog.start()
        self.clock.advance(1)
        self.assertEqual(self.contents(), self.line)

    def test_reopenAfterRename(self) -> None:
        """
        After the file is renamed and L{AccessLog.reopen} is called, old
        lines stay in the renamed file and new lines go to a new file at
        the original path.
        """
        accessLog = self.makeLog()
        accessLog.log(_RECORD)
        self.clock.advance(1)
        rotated = self.path + ".1"
        os.rename(self.path, rotated)
        second = attrs.evolve(_RECORD, status=404)
        accessLog.log(second)
        accessLog.reopen()
        third = attrs.evolve(_RECORD, status=500)
        accessLog.log(third)
        self.clock.advance(1)
        self.assertEqual(self.contents(rotated), self.line + formatJSON(second))
        self.assertEqual(self.contents(), formatJSON(third))

    def test_openErrorLoggedOnceAndRecovered(self) -> None:
        """
        When the file cannot be opened, the error is logged once, lines wait
        up to L{MAX_BUFFER_BYTES} and further ones are dropped; once the
        file can be opened, the waiting lines are written and the number
        dropped is logged.
        """
        events = _observe(self)
        directory = self.mktemp()
        self.path = os.path.join(directory, "access.log")
        accessLog = self.makeLog()
        accessLog.log(_RECORD)
        self.clock.advance(1)
        self.clock.advance(1)
        [error] = _errorEvents(events)
        self.assertEqual(error["error"].split(":")[0], "ENOENT")
        kept = MAX_BUFFER_BYTES // len(self.line)
        for _ in range(kept + 4):
            accessLog.log(_RECORD)
        self.assertEqual(accessLog.dropped, 5)
        self.clock.advance(1)
        self.assertEqual(len(_errorEvents(events)), 1)
        os.mkdir(directory)
        self.clock.advance(1)
        self.assertEqual(self.contents(), self.line * kept)
        [info] = _infoEvents(events)
        self.assertEqual(info["count"], 5)
        self.assertEqual(accessLog.dropped, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_noFlushPerRequestWhileFailing(self) -> None:
        """
        While writing fails, a buffer over L{FLUSH_BYTES} does not make
        every request try again; the timer retries.
        """
        events = _observe(self)
        directory = self.mktemp()
        self.path = os.path.join(directory, "access.log")
        accessLog = self.makeLog()
        for _ in range(FLUSH_BYTES // len(self.line) + 1):
            accessLog.log(_RECORD)
        self.assertEqual(len(_errorEvents(events)), 1)
        os.mkdir(directory)
        accessLog.log(_RECORD)
        self.assertEqual(self.contents(), b"")
        self.clock.advance(1)
        self.assertEqual(
            self.contents(), self.line * (FLUSH_BYTES // len(self.line) + 2)
        )


class AccessLogStreamTests(SynchronousTestCase):
    """
    Tests for L{AccessLog} writing to standard output (C{"-"}), and with no
    log (C{""}).
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.stream = _FlakyStream()
        self.accessLog = AccessLog(self.clock, "-", "json", self.stream)
        self.accessLog.start()
        self.addCleanup(self.accessLog.stop)
        self.line = formatJSON(_RECORD)

    def test_stdout(self) -> None:
        """
        C{"-"} writes to the given stream, after the interval.
        """
        self.accessLog.log(_RECORD)
        self.assertEqual(self.stream.getvalue(), b"")
        self.clock.advance(1)
        self.assertEqual(self.stream.getvalue(), self.line)

    def test_reopenStdout(self) -> None:
        """
        Reopening standard output writes what is buffered and keeps the
        stream open.
        """
        self.accessLog.log(_RECORD)
        self.accessLog.reopen()
        self.assertEqual(self.stream.getvalue(), self.line)
        self.accessLog.stop()
        self.assertFalse(self.stream.closed)

    def test_off(self) -> None:
        """
        With C{""}, logging does nothing: no line, no timer, no file.
        """
        cwd = os.getcwd()
        before = set(os.listdir(cwd))
        accessLog = AccessLog(self.clock, "", "json", self.stream)
        accessLog.start()
        self.assertFalse(accessLog.enabled)
        accessLog.log(_RECORD)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        accessLog.reopen()
        accessLog.stop()
        self.assertEqual(self.stream.getvalue(), b"")
        self.assertEqual(set(os.listdir(cwd)), before)

    def test_writeErrorLoggedOnceAndRecovered(self) -> None:
        """
        A write error is logged once however often it recurs; lines past
        L{MAX_BUFFER_BYTES} are dropped and counted, and the count is logged
        when writing works again.
        """
        events = _observe(self)
        self.stream.error = OSError(errno.ENOSPC, "No space left on device")
        kept = MAX_BUFFER_BYTES // len(self.line)
        for _ in range(kept + 3):
            self.accessLog.log(_RECORD)
        for _ in range(5):
            self.clock.advance(1)
        [error] = _errorEvents(events)
        self.assertEqual(error["error"], "ENOSPC: No space left on device")
        self.assertEqual(self.accessLog.dropped, 3)
        self.assertEqual(self.stream.getvalue(), b"")
        self.stream.error = None
        self.clock.advance(1)
        self.assertEqual(self.stream.getvalue(), self.line * kept)
        [info] = _infoEvents(events)
        self.assertEqual(info["count"], 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_distinctErrorsLogged(self) -> None:
        """
        A different error is logged too, and after a recovery the same
        error is logged again.
        """
        events = _observe(self)
        self.stream.error = OSError(errno.ENOSPC, "No space left on device")
        self.accessLog.log(_RECORD)
        self.clock.advance(1)
        self.stream.error = OSError(errno.EIO, "Input/output error")
        self.clock.advance(1)
        self.stream.error = None
        self.clock.advance(1)
        self.stream.error = OSError(errno.ENOSPC, "No space left on device")
        self.accessLog.log(_RECORD)
        self.clock.advance(1)
        self.assertEqual(
            [e["error"] for e in _errorEvents(events)],
            [
                "ENOSPC: No space left on device",
                "EIO: Input/output error",
                "ENOSPC: No space left on device",
            ],
        )

    def test_partialWriteNotRepeated(self) -> None:
        """
        When a write fails after part of the data went out, the retry
        writes only the rest: no line is duplicated or cut.
        """
        self.stream.partial = 10
        self.stream.error = OSError(errno.ENOSPC, "No space left on device")
        self.accessLog.log(_RECORD)
        self.clock.advance(1)
        self.assertEqual(self.stream.getvalue(), self.line[:10])
        self.stream.error = None
        self.clock.advance(1)
        self.assertEqual(self.stream.getvalue(), self.line)

    def test_stopDropsWhatCannotBeWritten(self) -> None:
        """
        Lines that still cannot be written at stop are dropped and counted
        in a warning, and no timer is left.
        """
        events = _observe(self)
        self.stream.error = OSError(errno.ENOSPC, "No space left on device")
        self.accessLog.log(_RECORD)
        self.accessLog.log(_RECORD)
        self.accessLog.stop()
        [warning] = [
            e
            for e in events
            if e.get("log_namespace") == "revproxy.accesslog"
            and e["log_level"] == LogLevel.warn
        ]
        self.assertEqual(warning["count"], 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class _Writes(io.BytesIO):
    """
    A stream that records each write.
    """

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: Any) -> int:
        self.writes.append(bytes(data))
        return super().write(data)


class WholeLinesTests(SynchronousTestCase):
    """
    L{wholeLines} and an L{AccessLog} with a C{writeLimit}: what several
    worker processes writing one file or pipe need so that their lines
    never interleave.
    """

    def test_wholeLines(self) -> None:
        """
        All without a limit or when it fits; else the whole lines that fit;
        a first line longer than the limit alone.
        """
        data = b"aaaa\nbbbb\ncccc\n"
        self.assertEqual(wholeLines(data, None), 15)
        self.assertEqual(wholeLines(data, 15), 15)
        self.assertEqual(wholeLines(data, 14), 10)
        self.assertEqual(wholeLines(data, 9), 5)
        self.assertEqual(wholeLines(memoryview(data), 5), 5)
        self.assertEqual(wholeLines(b"aaaaaaaa\nb\n", 4), 9)
        self.assertEqual(wholeLines(b"aaaaaaaa", 4), 8)

    def test_writesWholeLinesWithinLimit(self) -> None:
        """
        Every write is whole lines of at most the limit; together they are
        every line, in order.
        """
        clock = Clock()
        stream = _Writes()
        line = formatJSON(_RECORD)
        limit = 3 * len(line) + 1
        accessLog = AccessLog(clock, "-", "json", stream, writeLimit=limit)
        accessLog.start()
        self.addCleanup(accessLog.stop)
        for _ in range(10):
            accessLog.log(_RECORD)
        clock.advance(1)
        self.assertEqual(stream.getvalue(), line * 10)
        self.assertEqual([len(w) // len(line) for w in stream.writes], [3, 3, 3, 1])
        self.assertTrue(all(w.endswith(b"\n") for w in stream.writes))
