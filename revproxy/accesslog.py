# -*- test-case-name: tests.test_accesslog -*-
"""
The access log: one line per request, as JSON or as nginx's C{combined}
format, buffered in memory and written at most a second later.

The formatters are pure (no clock, no I/O).  L{AccessLog} does the
writing: lines go to a list of bytes, and a flush writes them out every
second or as soon as more than L{FLUSH_BYTES} wait, so a request never
waits for a disk.  A log that cannot be written drops lines rather than
grow without bound, and says how many it dropped once writing works again.
"""

from __future__ import annotations

import errno
import json
import re
import sys
import time
from collections.abc import Callable
from typing import BinaryIO

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

_log = Logger()

#: Seconds a line may wait in memory before it is written.
FLUSH_INTERVAL = 1.0

#: Write at once when more than this many bytes wait.
FLUSH_BYTES = 64 * 1024

#: While the log cannot be written, keep at most this many bytes and drop
#: further lines.
MAX_BUFFER_BYTES = 1024 * 1024

#: L{LoggingConfig.access_log} values with a special meaning.
STDOUT = "-"
OFF = ""

_MONTHS = (
    "Jan",
    "Feb",
    "Mar",
    "Apr",
    "May",
    "Jun",
    "Jul",
    "Aug",
    "Sep",
    "Oct",
    "Nov",
    "Dec",
)


@attrs.frozen(kw_only=True)
class AccessRecord:
    """
    What the access log knows about one finished request.  Field names are
    the JSON keys.

    @ivar ts: When the request started, in seconds since the epoch.
    @ivar client_ip: The client's address: the peer, or the address taken
        from a trusted X-Forwarded-For.  C{combined} logs it as
        C{$remote_addr} (as nginx with the realip module does).
    @ivar peer: The address of the TCP peer.
    @ivar path: The request path as the client sent it, without the query.
    @ivar query: The query string without the C{"?"}; C{""} when none.
    @ivar protocol: C{"HTTP/1.1"}, C{"HTTP/2.0"}, ...
    @ivar bytes_sent: Body bytes sent to the client (nginx's
        C{$body_bytes_sent}).
    @ivar duration_ms: From the start of the request to the last byte of
        the response.
    @ivar site: The name of the site that answered; C{""} when none.
    @ivar upstream: The upstream the request went to; C{""} when none.
    @ivar upstream_status: The upstream's status, or L{None} when no
        upstream answered.
    @ivar upstream_ms: How long the upstream took to answer, or L{None}.
    @ivar user_agent: The User-Agent header; C{""} when absent.
    @ivar referer: The Referer header; C{""} when absent.
    @ivar tls_version: C{"TLSv1.3"} and the like, or L{None} for plain HTTP.
    @ivar generation: The config generation that served the request.
    @ivar bytes_received: For a tunnel (WebSocket and other Upgrades), the
        bytes the client sent through it; L{None} for other requests.
    @ivar close_reason: For a tunnel, why it ended (C{"client closed"},
        C{"upstream closed"}, C{"idle timeout"}, C{"site removed"},
        C{"shutdown"}); L{None} for other requests.
    """

    ts: float
    client_ip: str
    peer: str
    method: str
    host: str
    path: str
    query: str
    protocol: str
    status: int
    bytes_sent: int
    duration_ms: float
    site: str
    upstream: str
    upstream_status: int | None
    upstream_ms: float | None
    request_id: str
    user_agent: str
    referer: str
    tls_version: str | None
    generation: int
    bytes_received: int | None = None
    close_reason: str | None = None


_FIELDS = tuple(a.name for a in attrs.fields(AccessRecord))


def _milliseconds(ts: float) -> tuple[int, int]:
    """
    Split C{ts} into whole seconds and milliseconds, rounding to the
    nearest millisecond.
    """
    return divmod(round(ts * 1000), 1000)


def formatJSON(record: AccessRecord) -> bytes:
    """
    One JSON object and a newline.

    Non-ASCII and control characters are escaped (C{ensure_ascii}), so no
    value can end the line or forge another one.
    """
    seconds, millis = _milliseconds(record.ts)
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    values = {name: getattr(record, name) for name in _FIELDS}
    values["ts"] = f"{when}.{millis:03d}Z"
    text = json.dumps(values, ensure_ascii=True, separators=(",", ":"))
    if "\x7f" in text:
        # The one control character JSON leaves as it is.
        text = text.replace("\x7f", "\\u007f")
    return text.encode("ascii") + b"\n"


#: What must not reach a log line from a client: C0 controls (VT, FF, CR,
#: LF...), DEL, C1 controls (NEL U+0085 among them), and the Unicode line
#: and paragraph separators; any of them may end a line for some reader
#: (Python's splitlines, journald, a terminal, an editor).
_UNSAFE_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escapeChar(match: re.Match[str]) -> str:
    code = ord(match[0])
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def logText(value: bytes | str) -> str:
    """
    C{value}, which came from a client, as it may appear in a log line:
    bytes read as Latin-1 (so every byte is one character, and UTF-8's
    U+2028 shows as its bytes), control characters and line separators
    written C{\\xHH} or C{\\uHHHH}.
    """
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return _UNSAFE_TEXT.sub(_escapeChar, value)


_NGINX_UNSAFE = re.compile(rb'[\x00-\x1f"\\\x7f-\xff]')
_NGINX_ESCAPES = {i: b"\\x%02X" % (i,) for i in range(256)}


def _escapeNginx(value: str) -> bytes:
    """
    Escape C{value} as nginx's C{ngx_http_log_escape} does (C{log_format}
    with C{escape=default}): C{"}, C{\\}, bytes below 0x20 and from 0x7f
    up become C{\\xHH}, hex digits upper-case.  An empty value is C{"-"}.

    Text is escaped as its UTF-8 bytes; surrogate escapes (undecodable
    bytes read with C{surrogateescape}) become the original bytes again.
    """
    if not value:
        return b"-"
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = value.encode("utf-8", "backslashreplace")
    return _NGINX_UNSAFE.sub(lambda m: _NGINX_ESCAPES[m[0][0]], raw)


def formatCombined(record: AccessRecord) -> bytes:
    """
    One line in nginx's C{combined} format, byte for byte::

        $remote_addr - $remote_user [$time_local] "$request" $status
        $body_bytes_sent "$http_referer" "$http_user_agent"

    with the time in UTC and a remote user that is always C{"-"}.
    """
    seconds, _ = _milliseconds(record.ts)
    t = time.gmtime(seconds)
    timeLocal = (
        f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year:04d}"
        f":{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
    )
    if record.method or record.path:
        target = f"{record.path}?{record.query}" if record.query else record.path
        request = f"{record.method} {target} {record.protocol}"
    else:
        # No request line (a bad request, a timeout): nginx logs "-".
        request = ""
    return b"".join(
        [
            _escapeNginx(record.client_ip),
            b" - - [",
            timeLocal.encode("ascii"),
            b'] "',
            _escapeNginx(request),
            b'" ',
            b"%d %d" % (record.status, record.bytes_sent),
            b' "',
            _escapeNginx(record.referer),
            b'" "',
            _escapeNginx(record.user_agent),
            b'"\n',
        ]
    )


_FORMATTERS: dict[str, Callable[[AccessRecord], bytes]] = {
    "json": formatJSON,
    "combined": formatCombined,
}


def _describe(error: OSError) -> str:
    """
    A short, stable description of C{error}, to log each distinct error once.
    """
    name = errno.errorcode.get(error.errno or 0, type(error).__name__)
    return f"{name}: {error.strerror or error}"


def wholeLines(data: memoryview | bytes, limit: int | None) -> int:
    """
    How many bytes of C{data} to write at once: all of them without a
    C{limit}; else the whole lines that fit in C{limit} bytes, or the first
    line alone when it is longer.
    """
    if limit is None or len(data) <= limit:
        return len(data)
    chunk = bytes(data[:limit])
    cut = chunk.rfind(b"\n") + 1
    if cut:
        return cut
    end = bytes(data).find(b"\n", limit) + 1
    return end or len(data)


class AccessLog:
    """
    Writes access log lines to a file or to standard output, off the
    request path.

    L{log} only formats and buffers.  Once started, a buffered line is
    written within L{FLUSH_INTERVAL} seconds, or at once when more than
    L{FLUSH_BYTES} wait.  L{stop} writes what is left and closes the file.

    The file is opened in append mode and never truncated.  L{reopen}
    closes and reopens it at the same path, so C{logrotate} can rename the
    file and then ask for a reopen (C{SIGUSR1}, admin C{reopen-logs}).

    When the file cannot be opened or written, each distinct error is
    logged once, up to L{MAX_BUFFER_BYTES} wait for a later retry, and
    further lines are dropped and counted; the count is logged when writing
    works again.

    @ivar dropped: Lines dropped since writing last worked.
    """

    def __init__(
        self,
        clock: IReactorTime,
        path: str,
        format: str,
        stdout: BinaryIO | None = None,
        writeLimit: int | None = None,
    ) -> None:
        """
        @param path: A file path, C{"-"} for C{stdout}, or C{""} for no log.
        @param format: C{"json"} or C{"combined"}.
        @param stdout: Where C{"-"} writes; by default C{sys.stdout.buffer}.
        @param writeLimit: When several processes write the same file or
            pipe (worker processes): the most bytes of one C{write}, in
            whole lines (C{PIPE_BUF}: a pipe writes that much at once, so
            lines never interleave; a longer line is written alone).
        @raise ValueError: For an unknown C{format}.
        """
        try:
            self._format = _FORMATTERS[format]
        except KeyError:
            raise ValueError(f"unknown access log format: {format!r}") from None
        self._formatName = format
        self._clock = clock
        self._path = path
        self._writeLimit = writeLimit
        self._stream: BinaryIO | None = None
        if path == STDOUT:
            self._stream = sys.stdout.buffer if stdout is None else stdout
        self._buffer: list[bytes] = []
        self._bufferedBytes = 0
        self._running = False
        self._call: IDelayedCall | None = None
        self._failing = False
        self._errorsLogged: set[str] = set()
        self.dropped = 0

    @property
    def path(self) -> str:
        """
        The configured path: a file, C{"-"} or C{""}.
        """
        return self._path

    @property
    def format(self) -> str:
        """
        The configured format: C{"json"} or C{"combined"}.
        """
        return self._formatName

    @property
    def enabled(self) -> bool:
        """
        Whether lines are logged at all.
        """
        return self._path != OFF

    def log(self, record: AccessRecord) -> None:
        """
        Format C{record} and buffer the line.  Never raises for I/O errors
        and never blocks on a slow disk, except for the write that a full
        buffer (over L{FLUSH_BYTES}) starts.
        """
        if self._path == OFF:
            return
        line = self._format(record)
        if self._bufferedBytes + len(line) > MAX_BUFFER_BYTES:
            self.dropped += 1
            return
        self._buffer.append(line)
        self._bufferedBytes += len(line)
        if self._bufferedBytes > FLUSH_BYTES and not self._failing:
            # While failing, only the timer retries: not one failing
            # system call per request.
            self.flush()
        if self._buffer:
            self._arm()

    def start(self) -> None:
        """
        Start writing buffered lines every L{FLUSH_INTERVAL} seconds.
        """
        self._running = True
        if self._buffer:
            self._arm()

    def stop(self) -> None:
        """
        Write what is buffered, close the file and stop the timer.  Lines
        that still cannot be written are dropped, and the count is logged.
        """
        self._running = False
        self._disarm()
        self.flush()
        if self._buffer:
            # Every line ends with a newline; a line written in part
            # counts as dropped too.
            self.dropped += sum(chunk.count(b"\n") for chunk in self._buffer)
            self._buffer = []
            self._bufferedBytes = 0
        if self.dropped:
            _log.warn(
                "Access log {path}: dropped {count} lines",
                path=self._path,
                count=self.dropped,
            )
            self.dropped = 0
        self._close()

    def reopen(self) -> None:
        """
        Write what is buffered, close the file and open the same path
        again; for log rotation.  Standard output is only flushed.
        """
        self.flush()
        if self._path in (OFF, STDOUT):
            return
        self._close()
        self._open()

    def flush(self) -> None:
        """
        Write the buffered lines now.  On an error, what was not written
        stays buffered for the next try.
        """
        if not self._buffer:
            return
        if self._stream is None and not self._open():
            return
        stream = self._stream
        assert stream is not None
        data = memoryview(b"".join(self._buffer))
        try:
            while data:
                # Unbuffered files may write part of the data; BinaryIO's
                # write is annotated int, but raw streams may return None.
                written: int | None = stream.write(
                    data[: wholeLines(data, self._writeLimit)]
                )
                if not written:
                    break
                data = data[written:]
            if self._path == STDOUT:
                stream.flush()
        except OSError as e:
            self._failed(e)
            self._keep(data)
            return
        self._keep(data)
        if not data:
            self._recovered()

    def _keep(self, data: memoryview) -> None:
        """
        Keep only the bytes not written yet.
        """
        self._buffer = [bytes(data)] if data else []
        self._bufferedBytes = len(data)

    def _open(self) -> bool:
        """
        Open the file for appending.

        @return: Whether it is open.
        """
        if self._path == STDOUT:
            return self._stream is not None
        try:
            # Unbuffered: this class buffers, and a write that fails
            # half-way must say how much was written.
            self._stream = open(self._path, "ab", buffering=0)
        except OSError as e:
            self._failed(e)
            return False
        return True

    def _close(self) -> None:
        """
        Close the file; standard output stays open.
        """
        if self._path == STDOUT or self._stream is None:
            return
        stream, self._stream = self._stream, None
        try:
            stream.close()
        except OSError as e:
            self._failed(e)

    def _failed(self, error: OSError) -> None:
        """
        Note a failed open or write, and log it unless it was logged already.
        """
        self._failing = True
        description = _describe(error)
        if description in self._errorsLogged:
            return
        self._errorsLogged.add(description)
        _log.error(
            "Access log {path}: cannot write, dropping lines: {error}",
            path=self._path,
            error=description,
        )

    def _recovered(self) -> None:
        """
        Writing works (again): report what was dropped meanwhile.
        """
        if self._failing or self.dropped:
            _log.info(
                "Access log {path}: writing again; dropped {count} lines",
                path=self._path,
                count=self.dropped,
            )
        self._failing = False
        self._errorsLogged.clear()
        self.dropped = 0

    def _arm(self) -> None:
        """
        Make sure a flush is due within L{FLUSH_INTERVAL}.
        """
        if self._running and self._call is None:
            self._call = self._clock.callLater(FLUSH_INTERVAL, self._timedFlush)

    def _disarm(self) -> None:
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def _timedFlush(self) -> None:
        self._call = None
        try:
            self.flush()
        except Exception:
            # A timed call that raises would go to the reactor's log and
            # the lines would never be retried.
            _log.failure("Access log {path}: flush failed", path=self._path)
        if self._buffer:
            self._arm()
