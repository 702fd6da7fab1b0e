# -*- test-case-name: tests.integration -*-
"""
What the integration tests share: an in-process upstream on loopback, a
config file written for it, a real C{twistd revproxy} child process, raw
HTTP clients, an in-process admin-socket client and a runner for command-line
clients (C{nc}, C{socat}, C{revproxy-admin}); for the fleet (#19), a
C{redis-server} and an HAProxy of the test's own.

Everything listens on C{127.0.0.1} on a port the kernel picks; the proxy is
asked for its port (it logs C{"ProxySite starting on PORT"}) rather than
given one.  Every wait is bounded by a L{Deferred} timeout.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from twisted.application.service import IService
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    UNIXClientEndpoint,
    connectProtocol,
)
from twisted.internet.error import ConnectError, ProcessDone, ProcessTerminated
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProcessTransport,
    IPushProducer,
    IReactorCore,
    IReactorProcess,
    IReactorTCP,
    IReactorTime,
    IReactorUNIX,
    ITCPTransport,
)
from twisted.internet.protocol import ProcessProtocol, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from revproxy.config import ClusterConfig

#: The checkout whose C{revproxy} and C{twisted/plugins} the child runs.
REPO_ROOT = str(Path(__file__).resolve().parents[2])

#: How long a child may take to start listening, or to exit.
START_TIMEOUT = 15.0
EXIT_TIMEOUT = 10.0

LOOPBACK_LISTEN = "tcp:0:interface=127.0.0.1"

SMALL_BODY = bytes(range(256)) * 4
"""
The 1 KiB body of C{/small}: every byte value, so a mangled byte shows.
"""

_STARTED = re.compile(rb"ProxySite starting on (\d+)")


class IIntegrationReactor(
    IReactorCore, IReactorTime, IReactorTCP, IReactorProcess, IReactorUNIX
):
    """
    What the integration tests use of the global reactor.
    """


def getReactor() -> IIntegrationReactor:
    """
    The global reactor: integration tests do real I/O, which only it does.
    """
    from twisted.internet import reactor

    return cast(IIntegrationReactor, reactor)


def withTimeout(d: Deferred[Any], seconds: float, what: str) -> Deferred[Any]:
    """
    Fail C{d} with a L{TimeoutError} naming C{what} after C{seconds}.
    """

    def onTimeout(reason: Failure) -> Failure:
        if reason.check(DeferredTimeoutError):
            return Failure(TimeoutError(f"{what}: no result after {seconds} s"))
        return reason

    d.addTimeout(seconds, getReactor())
    return d.addErrback(onTimeout)


async def waitFor(
    predicate: Callable[[], bool], seconds: float, what: str, step: float = 0.05
) -> None:
    """
    Wait until C{predicate()} is true, checking every C{step} seconds;
    fail with an L{AssertionError} naming C{what} after C{seconds}.
    """
    reactor = getReactor()
    deadline = reactor.seconds() + seconds
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"{what}: not after {seconds} s")
        await deferLater(reactor, step, lambda: None)


async def sleep(seconds: float) -> None:
    """
    Let C{seconds} pass on the reactor.
    """
    await deferLater(getReactor(), seconds, lambda: None)


async def stopService(service: IService) -> None:
    """
    Stop C{service} if it runs, and wait until it has stopped.
    """
    if service.running:
        stopped = service.stopService()
        if stopped is not None:
            await stopped


def closedPort() -> int:
    """
    A loopback port nothing listens on: bound, then closed at once.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closedPorts(count: int) -> list[int]:
    """
    C{count} different loopback ports nothing listens on: all bound at once
    (so that the kernel cannot hand one out twice), then closed.
    """
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def exitCode(reason: Failure) -> int:
    """
    A process's exit status from the reason C{processEnded} got: negative
    for the signal that killed it, -1 when unknown.
    """
    value = reason.value
    if isinstance(value, ProcessDone):
        return 0
    if isinstance(value, ProcessTerminated):
        if value.exitCode is not None:
            return int(value.exitCode)
        return -int(value.signal)
    return -1


def readRSS(pid: int) -> int:
    """
    The resident set size of process C{pid}, in bytes (C{VmRSS}).
    """
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# -- the upstream


class _TrackedChannel(HTTPChannel):
    """
    An upstream connection that the L{UpstreamSite} can close and wait for.
    """

    def connectionMade(self) -> None:
        super().connectionMade()
        self.closed: Deferred[None] = Deferred()
        cast(UpstreamSite, self.factory).channels.add(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        cast(UpstreamSite, self.factory).channels.discard(self)
        self.closed.callback(None)


class UpstreamSite(Site):
    """
    The upstream's L{Site}; it knows its open connections.
    """

    protocol = _TrackedChannel  # type: ignore[assignment]

    def __init__(self, resource: Resource, reactor: IIntegrationReactor) -> None:
        super().__init__(resource, reactor=reactor, parsePOSTFormSubmission=False)
        self.channels: set[_TrackedChannel] = set()


class _Small(Resource):
    """
    C{/small}: L{SMALL_BODY} with a Content-Length.
    """

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/octet-stream")
        return SMALL_BODY


class _Echo(Resource):
    """
    C{/echo}: the request as JSON: method, URI, headers (lowercase names,
    every value), and the body's length, SHA-256 and, when short, text.
    """

    isLeaf = True

    def render(self, request: Request) -> bytes:
        content = request.content
        body = content.read() if content is not None else b""
        headers: dict[str, list[str]] = {}
        for name, values in request.requestHeaders.getAllRawHeaders():
            headers.setdefault(name.decode("latin-1").lower(), []).extend(
                v.decode("latin-1") for v in values
            )
        method = request.method or b""
        uri = request.uri or b""
        answer = {
            "method": method.decode("latin-1"),
            "uri": uri.decode("latin-1"),
            "headers": headers,
            "body_length": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "body": body.decode("latin-1") if len(body) <= 4096 else None,
        }
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(answer).encode("ascii")


class _Cookies(Resource):
    """
    C{/cookies}: two C{Set-Cookie} headers.
    """

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.responseHeaders.setRawHeaders(
            b"set-cookie", [b"a=1; Path=/", b"b=2; Path=/; HttpOnly"]
        )
        return b"cookies\n"


@implementer(IPushProducer)
class _StreamProducer:
    """
    Writes C{total} bytes to a request, and stops while the client's
    connection says it is full: a streaming producer.
    """

    _CHUNK = b"\xa5" * (256 * 1024)

    def __init__(self, request: Request, total: int) -> None:
        self.request = request
        self.remaining = total
        self.paused = False
        self.stopped = False
        self._producing = False

    def start(self) -> None:
        self.request.notifyFinish().addErrback(lambda _: self.stopProducing())
        self.request.registerProducer(self, True)
        self._produce()

    def _produce(self) -> None:
        if self._producing:
            return
        self._producing = True
        try:
            while not (self.paused or self.stopped) and self.remaining > 0:
                size = min(len(self._CHUNK), self.remaining)
                self.remaining -= size
                chunk = self._CHUNK if size == len(self._CHUNK) else self._CHUNK[:size]
                self.request.write(chunk)
        finally:
            self._producing = False
        if self.remaining == 0 and not self.stopped:
            self.stopped = True
            self.request.unregisterProducer()
            self.request.finish()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._produce()

    def stopProducing(self) -> None:
        self.stopped = True


class _Stream(Resource):
    """
    C{/stream?bytes=N}: N bytes with a Content-Length (or chunked, with
    C{&chunked=1}), written by a producer so that the upstream itself
    respects backpressure.
    """

    isLeaf = True

    def render_GET(self, request: Request) -> int:
        total = int(request.args[b"bytes"][0])
        request.setHeader(b"content-type", b"application/octet-stream")
        if b"chunked" not in request.args:
            request.setHeader(b"content-length", b"%d" % total)
        _StreamProducer(request, total).start()
        return NOT_DONE_YET


class _Slow(Resource):
    """
    C{/slow?delay=S}: answers after S seconds (5 by default), or never when
    the client leaves first.
    """

    isLeaf = True

    def __init__(self, reactor: IIntegrationReactor) -> None:
        super().__init__()
        self.reactor = reactor

    def render_GET(self, request: Request) -> int:
        delay = float(request.args.get(b"delay", [b"5"])[0])

        def answer() -> None:
            request.setHeader(b"content-length", b"5")
            request.write(b"slow\n")
            request.finish()

        call = self.reactor.callLater(delay, answer)

        def cancel(reason: Failure) -> None:
            if call.active():
                call.cancel()

        request.notifyFinish().addErrback(cancel)
        return NOT_DONE_YET


class _CloseMidBody(Resource):
    """
    C{/close-mid-body}: promises 1000 bytes, sends 10, then closes.
    """

    isLeaf = True

    def render_GET(self, request: Request) -> int:
        request.setHeader(b"content-length", b"1000")
        request.write(b"0123456789")
        transport = request.channel.transport
        assert transport is not None
        transport.loseConnection()
        return NOT_DONE_YET


def whoamiBody(name: str) -> bytes:
    """
    The body of C{/whoami} on the upstream called C{name}: its name on the
    first line, then L{SMALL_BODY}, so a truncated body shows.
    """
    return name.encode("ascii") + b"\n" + SMALL_BODY


class _WhoAmI(Resource):
    """
    C{/whoami}: L{whoamiBody} of the upstream's name, with a Content-Length.
    """

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.body = whoamiBody(name)

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain")
        return self.body


def patternBody(size: int) -> bytes:
    """
    The C{size} bytes of C{/throttled?bytes=SIZE}: every byte value in
    turn, so a lost or repeated piece shows.
    """
    block = bytes(range(256))
    return (block * (size // len(block) + 1))[:size]


class _ThrottledWriter:
    """
    Writes C{body} to a request in pieces of C{piece} bytes, one every
    C{tick} seconds, then finishes it; stops when the client leaves.
    """

    def __init__(
        self,
        reactor: IIntegrationReactor,
        request: Request,
        body: bytes,
        piece: int,
        tick: float,
    ) -> None:
        self.reactor = reactor
        self.request = request
        self.body = body
        self.piece = piece
        self.tick = tick
        self.sent = 0
        self.gone = False
        self._call: IDelayedCall | None = None

    def start(self) -> None:
        self.request.notifyFinish().addErrback(self._stop)
        self._write()

    def _write(self) -> None:
        self._call = None
        if self.gone:
            return
        start = self.sent
        self.sent = end = min(len(self.body), start + self.piece)
        self.request.write(self.body[start:end])
        if end < len(self.body):
            self._call = self.reactor.callLater(self.tick, self._write)
        else:
            self.request.finish()

    def _stop(self, reason: Failure) -> None:
        self.gone = True
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()


class _Throttled(Resource):
    """
    C{/throttled?bytes=N&secs=S}: L{patternBody} of N bytes with a
    Content-Length, written in equal pieces every L{TICK} seconds so that
    the whole takes about S seconds; it stops when the client leaves.
    """

    isLeaf = True
    TICK = 0.05

    def __init__(self, reactor: IIntegrationReactor) -> None:
        super().__init__()
        self.reactor = reactor

    def render_GET(self, request: Request) -> int:
        total = int(request.args[b"bytes"][0])
        seconds = float(request.args.get(b"secs", [b"5"])[0])
        ticks = max(1, int(seconds / self.TICK))
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", b"%d" % total)
        writer = _ThrottledWriter(
            self.reactor, request, patternBody(total), -(-total // ticks), self.TICK
        )
        writer.start()
        return NOT_DONE_YET


class Upstream:
    """
    An in-process twisted.web upstream on C{127.0.0.1}.

    @ivar name: what its C{/whoami} answers.
    @ivar port: its port, once L{start} is done.
    """

    def __init__(self, reactor: IIntegrationReactor, name: str = "upstream") -> None:
        self.reactor = reactor
        self.name = name
        root = Resource()
        root.putChild(b"whoami", _WhoAmI(name))
        root.putChild(b"throttled", _Throttled(reactor))
        root.putChild(b"small", _Small())
        root.putChild(b"echo", _Echo())
        root.putChild(b"cookies", _Cookies())
        root.putChild(b"stream", _Stream())
        root.putChild(b"slow", _Slow(reactor))
        root.putChild(b"close-mid-body", _CloseMidBody())
        self.site = UpstreamSite(root, reactor)
        self.port = 0
        self._listening: IListeningPort | None = None

    async def start(self) -> None:
        """
        Listen on a loopback port the kernel picks.
        """
        endpoint = TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1")
        self._listening = await endpoint.listen(self.site)
        self.port = cast(IPv4Address, self._listening.getHost()).port

    async def stop(self) -> None:
        """
        Stop listening, close every connection still open and wait until
        each is gone (so the reactor is clean).
        """
        if self._listening is not None:
            stopped = self._listening.stopListening()
            self._listening = None
            if stopped is not None:
                await stopped
        channels = list(self.site.channels)
        for channel in channels:
            if channel.transport is not None:
                cast(ITCPTransport, channel.transport).abortConnection()
        if channels:
            await withTimeout(
                DeferredList([c.closed for c in channels]),
                EXIT_TIMEOUT,
                "upstream connections closing",
            )


# -- the config file


def toml(value: object) -> str:
    """
    A TOML literal for a string, number, boolean, list, or table (as an
    inline table).
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return (
            "{ "
            + ", ".join(f"{json.dumps(str(k))} = {toml(v)}" for k, v in value.items())
            + " }"
        )
    raise TypeError(f"no TOML for {value!r}")


def configText(
    sites: Sequence[dict[str, object]],
    stateDir: str,
    listen: Sequence[str] = (LOOPBACK_LISTEN,),
    server: Mapping[str, object] | None = None,
) -> str:
    """
    A config document: C{listen} as the HTTP listeners, no HTTPS, no admin
    socket, no ops listener, and the given C{[[sites]]} tables.

    @param server: C{[server]} keys that replace or add to those defaults
        (C{admin_socket_path}, C{shutdown_timeout_secs}, ...).
    """
    serverKeys: dict[str, object] = {
        "listen_http": list(listen),
        "listen_https": [],
        "admin_socket_path": "",
        "ops_listen": "",
        "state_dir": stateDir,
    }
    serverKeys.update(server or {})
    lines = [
        "[server]",
        *(f"{key} = {toml(value)}" for key, value in serverKeys.items()),
        "",
        "[logging]",
        'access_log = "-"',
        'access_log_format = "combined"',
    ]
    for site in sites:
        lines += ["", "[[sites]]"]
        lines += [f"{key} = {toml(value)}" for key, value in site.items()]
    return "\n".join(lines) + "\n"


def writeConfig(
    directory: str,
    sites: Sequence[dict[str, object]],
    listen: Sequence[str] = (LOOPBACK_LISTEN,),
    name: str = "revproxy.toml",
    server: Mapping[str, object] | None = None,
) -> str:
    """
    Write L{configText} into C{directory}; return the file's path.  The
    file is replaced whole (written aside, then renamed), so a proxy
    reloading at that moment reads either version, never half of one.
    """
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    text = configText(sites, os.path.join(directory, "state"), listen, server)
    replaceFile(path, text)
    return path


def replaceFile(path: str, text: str) -> None:
    """
    Replace the file at C{path} with C{text} atomically (an editor's save,
    or a config-management tool's).
    """
    aside = path + ".new"
    with open(aside, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(aside, path)


# -- the proxy process


def twistdArgv(
    args: Sequence[str], options: Sequence[str] = (), nofile: int | None = None
) -> list[str]:
    """
    The command line of C{twistd -n --pidfile= OPTIONS revproxy ARGS} with
    this interpreter.

    @param nofile: the soft and hard C{RLIMIT_NOFILE} to run with, if given.
    """
    prelude = ""
    if nofile is not None:
        prelude = (
            "import resource; "
            f"resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile})); "
        )
    return [
        sys.executable,
        "-c",
        prelude + "from twisted.scripts.twistd import run; run()",
        "-n",
        "--pidfile=",
        *options,
        "revproxy",
        *args,
    ]


def _childEnvironment() -> dict[str, str]:
    """
    The child's environment: this checkout first on the path, unbuffered.
    """
    env = {
        "PYTHONPATH": REPO_ROOT,
        "PYTHONUNBUFFERED": "1",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
    }
    return env


class _ChildProtocol(ProcessProtocol):
    """
    Collects a child's output, and tells when it listens and when it ends.
    """

    def __init__(self) -> None:
        self.stdout = b""
        self.stderr = b""
        self.port: int | None = None
        self.listening: Deferred[int] = Deferred()
        self.ended: Deferred[int] = Deferred()
        self.exitCode: int | None = None

    def outReceived(self, data: bytes) -> None:
        self.stdout += data
        self._lookForPort()

    def errReceived(self, data: bytes) -> None:
        self.stderr += data
        self._lookForPort()

    def _lookForPort(self) -> None:
        if self.port is not None:
            return
        match = _STARTED.search(self.stdout) or _STARTED.search(self.stderr)
        if match is not None:
            self.port = int(match.group(1))
            self.listening.callback(self.port)

    def processEnded(self, reason: Failure) -> None:
        code = exitCode(reason)
        self.exitCode = code
        if not self.listening.called:
            self.listening.errback(
                RuntimeError(f"revproxy exited with {code} before listening")
            )
            self.listening.addErrback(lambda _: None)
        self.ended.callback(code)


class ProxyProcess:
    """
    One C{twistd revproxy} child process.
    """

    def __init__(
        self,
        reactor: IIntegrationReactor,
        args: Sequence[str],
        cwd: str,
        options: Sequence[str] = (),
        nofile: int | None = None,
    ):
        """
        @param options: twistd's own options, before C{revproxy}.
        @param nofile: the descriptor limit (soft and hard) to run with.
        """
        self.reactor = reactor
        self.args = list(args)
        self.protocol = _ChildProtocol()
        self.transport: IProcessTransport = reactor.spawnProcess(
            self.protocol,
            sys.executable,
            twistdArgv(args, options, nofile),
            env=_childEnvironment(),
            path=cwd,
        )

    @property
    def pid(self) -> int:
        """
        The child's process id.
        """
        pid = self.transport.pid
        assert pid is not None
        return int(pid)

    @property
    def output(self) -> str:
        """
        Everything the child wrote so far, for failure messages.
        """
        return (
            "--- stdout:\n"
            + self.protocol.stdout.decode("utf-8", "replace")
            + "--- stderr:\n"
            + self.protocol.stderr.decode("utf-8", "replace")
        )

    @property
    def stderrLines(self) -> list[str]:
        """
        The non-empty lines of the child's standard error.
        """
        text = self.protocol.stderr.decode("utf-8", "replace")
        return [line for line in text.splitlines() if line.strip()]

    @property
    def running(self) -> bool:
        """
        Whether the child has not ended yet.
        """
        return not self.protocol.ended.called

    async def waitListening(self) -> int:
        """
        The port of the child's HTTP listener, once it logs it.
        """
        try:
            port: int | None = await withTimeout(
                self.protocol.listening, START_TIMEOUT, "revproxy start-up"
            )
        except Exception as e:
            raise AssertionError(f"revproxy did not start: {e}\n{self.output}") from e
        if port is None:
            raise AssertionError(f"revproxy exited before listening\n{self.output}")
        return port

    async def waitExit(self, timeout: float = EXIT_TIMEOUT) -> int:
        """
        The child's exit status (negative: killed by that signal).  A child
        still running after C{timeout} is killed, and the wait fails.
        """
        if not self.running:
            assert self.protocol.exitCode is not None
            return self.protocol.exitCode
        ended: Deferred[int] = Deferred()
        self.protocol.ended.addBoth(_relay, ended)
        try:
            code: int = await withTimeout(ended, timeout, "revproxy exit")
        except TimeoutError as e:
            self.kill()
            await self.protocol.ended
            raise AssertionError(
                f"revproxy still running after {timeout} s: {e}\n{self.output}"
            ) from e
        return code

    async def waitOutput(self, text: str, seconds: float = START_TIMEOUT) -> None:
        """
        Wait until the child has written C{text} (to its log on standard
        output, or to standard error); fail naming it after C{seconds}.
        """
        wanted = text.encode("utf-8")
        try:
            await waitFor(
                lambda: (
                    wanted in self.protocol.stdout or wanted in self.protocol.stderr
                ),
                seconds,
                f"revproxy writing {text!r}",
            )
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.output}") from None

    def kill(self) -> None:
        """
        SIGKILL the child if it still runs.
        """
        if self.running:
            self.transport.signalProcess("KILL")

    async def terminate(self) -> int:
        """
        Send SIGTERM and wait for the exit status.
        """
        if self.running:
            self.transport.signalProcess(signal.SIGTERM.name.removeprefix("SIG"))
        return await self.waitExit()


def _relay(result: object, d: Deferred[Any]) -> object:
    """
    Pass C{result} on to C{d} too, keeping it for the original chain.
    """
    if isinstance(result, Failure):
        d.errback(result)
    else:
        d.callback(result)
    return result


async def spawnProxy(
    reactor: IIntegrationReactor,
    args: Sequence[str],
    cwd: str,
    options: Sequence[str] = (),
    nofile: int | None = None,
) -> tuple[ProxyProcess, int]:
    """
    Start C{twistd revproxy ARGS}; return it and its HTTP port once it
    listens and its reactor runs.  The caller stops it (see
    L{ProxyProcess.terminate}).

    "ProxySite starting on PORT" is logged when the port is bound, in
    C{privilegedStartService}, before the reactor runs; until the reactor
    runs, SIGTERM kills the process by the signal (exit -15, or 143 once
    the reactor's own handlers are in) instead of exiting 0, because
    revproxy installs its handler from C{callWhenRunning}.  So the port is
    only returned once the proxy has answered a request: a request line
    twisted.web rejects itself, which no upstream sees.
    """
    proxy = ProxyProcess(reactor, args, cwd, options, nofile)
    try:
        port = await proxy.waitListening()
        probe = await connectRaw(reactor, port)
        assert probe.transport is not None
        probe.transport.write(b"PROBE\r\n\r\n")
        await withTimeout(probe.lost, START_TIMEOUT, "revproxy answering a probe")
        if not probe.data.startswith(b"HTTP/1.1 400 "):
            raise AssertionError(f"probe answered {probe.data!r}")
    except BaseException:
        proxy.kill()
        await proxy.waitExit()
        raise
    return proxy, port


_TLS_STARTED = re.compile(rb"ProxySite \(TLS\) starting on (\d+)")


async def waitHTTPSPorts(
    proxy: ProxyProcess, count: int = 1, seconds: float = START_TIMEOUT
) -> list[int]:
    """
    The ports of the child's HTTPS listeners (it logs C{"ProxySite (TLS)
    starting on PORT"} for each), in the order they were logged, once it
    has logged C{count} of them; fail after C{seconds}.
    """

    def found() -> list[int]:
        output = proxy.protocol.stdout + proxy.protocol.stderr
        return [int(m.group(1)) for m in _TLS_STARTED.finditer(output)]

    try:
        await waitFor(lambda: len(found()) >= count, seconds, "the HTTPS listeners")
    except AssertionError as e:
        raise AssertionError(f"{e}\n{proxy.output}") from None
    return found()


# -- the admin socket and command-line clients


class _AdminClient(Protocol):
    """
    Sends one command line to the admin socket and keeps every byte of the
    answer until the server closes.
    """

    def __init__(self, line: bytes) -> None:
        self.line = line
        self.data = b""
        self.lost: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        transport.write(self.line)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(self.data)


def parseAdminAnswer(data: bytes) -> dict[str, Any]:
    """
    The JSON object of an admin answer, which must be exactly one line.
    """
    if not data.endswith(b"\n") or data.count(b"\n") != 1:
        raise AssertionError(f"the admin answer is not one line: {data!r}")
    answer = json.loads(data)
    if not isinstance(answer, dict):
        raise AssertionError(f"the admin answer is not an object: {data!r}")
    return answer


async def askAdmin(
    reactor: IIntegrationReactor, path: str, command: str, seconds: float = EXIT_TIMEOUT
) -> dict[str, Any]:
    """
    Send C{command} to the admin socket at C{path} with Twisted's UNIX
    client endpoint, and return the one JSON line it answers before it
    closes the connection.
    """
    endpoint = UNIXClientEndpoint(reactor, path, timeout=5)
    client = _AdminClient(command.encode("utf-8") + b"\n")
    await connectProtocol(endpoint, client)
    try:
        data: bytes = await withTimeout(
            client.lost, seconds, f"the admin answer to {command!r}"
        )
    except TimeoutError:
        if client.transport is not None:
            client.transport.abortConnection()  # type: ignore[attr-defined]
        raise
    return parseAdminAnswer(data)


class CommandResult:
    """
    How a command-line program ended: exit status (negative: killed by that
    signal), standard output and standard error.
    """

    def __init__(self, code: int, out: bytes, err: bytes) -> None:
        self.code = code
        self.out = out
        self.err = err

    def __repr__(self) -> str:
        return f"<CommandResult code={self.code} out={self.out!r} err={self.err!r}>"


class _CommandProtocol(ProcessProtocol):
    """
    Feeds a program its standard input, closes it, and collects its output.
    """

    def __init__(self, stdin: bytes) -> None:
        self.stdin = stdin
        self.out = b""
        self.err = b""
        self.ended: Deferred[int] = Deferred()

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        if self.stdin:
            transport.write(self.stdin)
        transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        code = exitCode(reason)
        self.ended.callback(code)


async def runCommand(
    reactor: IIntegrationReactor,
    argv: Sequence[str],
    stdin: bytes = b"",
    seconds: float = EXIT_TIMEOUT,
) -> CommandResult:
    """
    Run C{argv} (C{argv[0]} a path) with C{stdin}, in the children's
    environment (this checkout on C{PYTHONPATH}), and wait for its end; a
    program still running after C{seconds} is killed and the wait fails.
    """
    protocol = _CommandProtocol(stdin)
    transport = reactor.spawnProcess(
        protocol, argv[0], list(argv), env=_childEnvironment(), path=REPO_ROOT
    )
    ended: Deferred[int] = Deferred()
    protocol.ended.addBoth(_relay, ended)
    try:
        code: int = await withTimeout(ended, seconds, f"{argv[0]} ending")
    except TimeoutError as e:
        transport.signalProcess("KILL")
        await protocol.ended
        raise AssertionError(
            f"{e}: {list(argv)} out={protocol.out!r} err={protocol.err!r}"
        ) from None
    return CommandResult(code, protocol.out, protocol.err)


# -- raw clients


class RawResponse:
    """
    One HTTP response as bytes: status code, headers and body.
    """

    def __init__(self, code: int, headers: list[tuple[bytes, bytes]], body: bytes):
        self.code = code
        self.headers = headers
        self.body = body

    def header(self, name: bytes) -> list[bytes]:
        """
        Every value of the header C{name}.
        """
        return [v for n, v in self.headers if n.lower() == name.lower()]


def _parseHead(head: bytes) -> tuple[int, list[tuple[bytes, bytes]]]:
    """
    Split a response head into the status code and headers.
    """
    statusLine, *lines = head.split(b"\r\n")
    code = int(statusLine.split(b" ", 2)[1])
    headers = []
    for line in lines:
        name, _, value = line.partition(b":")
        headers.append((name.strip(), value.strip()))
    return code, headers


class RawClient(Protocol):
    """
    A client that writes bytes as given and reads whole responses framed by
    C{Content-Length} (or none, for HEAD and bodiless codes).

    @ivar data: the bytes received and not yet taken as a response.
    """

    def __init__(self) -> None:
        self.data = b""
        self.lost: Deferred[None] = Deferred()
        self.disconnected = False
        self._waiting: Deferred[RawResponse] | None = None
        self._noBody = False

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        self._check()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.disconnected = True
        waiting = self._waiting
        self._waiting = None
        if waiting is not None:
            waiting.errback(
                ConnectionError(f"closed with {len(self.data)} bytes unread")
            )
        self.lost.callback(None)

    def _check(self) -> None:
        waiting = self._waiting
        if waiting is None:
            return
        end = self.data.find(b"\r\n\r\n")
        if end < 0:
            return
        code, headers = _parseHead(self.data[:end])
        lengths = [v for n, v in headers if n.lower() == b"content-length"]
        length = 0
        if lengths and not self._noBody and code not in (204, 304):
            length = int(lengths[0])
        if len(self.data) < end + 4 + length:
            return
        body = self.data[end + 4 : end + 4 + length]
        self.data = self.data[end + 4 + length :]
        self._waiting = None
        waiting.callback(RawResponse(code, headers, body))

    def request(self, data: bytes, noBody: bool = False) -> Deferred[RawResponse]:
        """
        Write C{data} and wait for the next whole response.

        @param noBody: the request is HEAD: the response has no body whatever
            its Content-Length says.
        """
        assert self._waiting is None
        d: Deferred[RawResponse] = Deferred()
        self._waiting = d
        self._noBody = noBody
        transport = self.transport
        assert transport is not None
        transport.write(data)
        self._check()
        return withTimeout(d, EXIT_TIMEOUT, "raw response")

    async def close(self) -> None:
        """
        Close the connection and wait until it is gone.
        """
        if not self.disconnected and self.transport is not None:
            self.transport.loseConnection()
        await withTimeout(self.lost, EXIT_TIMEOUT, "raw client close")


async def connectRaw(reactor: IIntegrationReactor, port: int) -> RawClient:
    """
    Connect a L{RawClient} to C{127.0.0.1:port}.
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
    client: RawClient = await connectProtocol(endpoint, RawClient())
    return client


class SlowReader(Protocol):
    """
    Sends one GET and reads the response at no more than C{rate} bytes per
    second, by pausing its transport (so the sender sees a full window)
    and resuming it from a timer.

    @ivar bodyReceived: body bytes read so far.
    @ivar done: fires with the body length once Content-Length bytes came,
        or fails if the connection closes first.
    """

    def __init__(
        self,
        reactor: IIntegrationReactor,
        request: bytes,
        rate: float,
        tick: float = 0.02,
    ) -> None:
        self.reactor = reactor
        self.requestBytes = request
        self.rate = rate
        self.tick = tick
        self.head = b""
        self.code: int | None = None
        self.contentLength: int | None = None
        self.bodyReceived = 0
        self.received = 0
        self.paused = False
        self.pauses = 0
        self.done: Deferred[int] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self._start = 0.0
        self._timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self._start = self.reactor.seconds()
        transport = self.transport
        assert transport is not None
        transport.write(self.requestBytes)
        self._timer = self.reactor.callLater(self.tick, self._resume)

    def _allowance(self) -> float:
        return self.rate * (self.reactor.seconds() - self._start)

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.code is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            code, headers = _parseHead(self.head[:end])
            self.code = code
            lengths = [v for n, v in headers if n.lower() == b"content-length"]
            self.contentLength = int(lengths[0]) if lengths else None
            self.bodyReceived = len(self.head) - end - 4
            self.head = b""
        else:
            self.bodyReceived += len(data)
        if (
            self.contentLength is not None
            and self.bodyReceived >= self.contentLength
            and not self.done.called
        ):
            self._stopTimer()
            self.done.callback(self.bodyReceived)
            return
        if not self.paused and self.received >= self._allowance():
            self.paused = True
            self.pauses += 1
            transport = self.transport
            assert transport is not None
            cast(IPushProducer, transport).pauseProducing()

    def _resume(self) -> None:
        self._timer = self.reactor.callLater(self.tick, self._resume)
        if self.paused and self.received < self._allowance():
            self.paused = False
            transport = self.transport
            assert transport is not None
            cast(IPushProducer, transport).resumeProducing()

    def _stopTimer(self) -> None:
        timer = self._timer
        self._timer = None
        if timer is not None and timer.active():
            timer.cancel()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stopTimer()
        if not self.done.called:
            self.done.errback(
                ConnectionError(
                    f"closed after {self.bodyReceived} body bytes "
                    f"of {self.contentLength}"
                )
            )
        self.lost.callback(None)


@implementer(IBodyProducer)
class ChunkedBody:
    """
    A request body of unknown length, so the client sends it chunked; it is
    written in several pieces, one per reactor turn.
    """

    length = UNKNOWN_LENGTH

    def __init__(self, reactor: IIntegrationReactor, pieces: Sequence[bytes]):
        self.reactor = reactor
        self.pieces = list(pieces)
        self._stopped = False

    def startProducing(self, consumer: Any) -> Deferred[None]:
        async def produce() -> None:
            for piece in self.pieces:
                if self._stopped:
                    return
                consumer.write(piece)
                await deferLater(self.reactor, 0, lambda: None)

        return Deferred.fromCoroutine(produce())

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self._stopped = True


class ProxyCaseMixin:
    """
    What a test case of the real process asks of it: the admin socket's
    answers, and that it logged no traceback.  The case sets C{reactor},
    C{socketPath} and C{proxy}.
    """

    reactor: IIntegrationReactor
    socketPath: str
    configPath: str
    directory: str
    proxy: ProxyProcess
    port: int

    async def startProxy(self) -> None:
        """
        Start the real process on C{configPath}, in C{directory}; stopped
        (SIGTERM, which must give exit status 0) at the end of the test.
        """
        self.proxy, self.port = await spawnProxy(
            self.reactor, ["--config", self.configPath], self.directory
        )
        cast(Any, self).addCleanup(self.stopProxy)

    async def stopProxy(self) -> None:
        """
        Stop the process gracefully; it must exit 0 if it was running.
        """
        running = self.proxy.running
        code = await self.proxy.terminate()
        if running and code != 0:
            raise AssertionError(f"SIGTERM gave {code}\n{self.proxy.output}")

    async def admin(self, command: str) -> dict[str, Any]:
        """
        The admin socket's answer to C{command}.
        """
        answer: dict[str, Any] = await askAdmin(self.reactor, self.socketPath, command)
        return answer

    def assertNoTraceback(self) -> None:
        """
        The proxy logged no traceback so far.
        """
        output = self.proxy.output
        if "Traceback" in output:
            raise AssertionError(f"the proxy logged a traceback:\n{output}")


# -- Redis (#19): a redis-server of the test's own


#: A RESP C{PING}, and the first line of the answer a live server gives.
REDIS_PING = b"*1\r\n$4\r\nPING\r\n"
REDIS_PONG = b"+PONG"


class _RedisPing(Protocol):
    """
    Sends one C{PING} and fires L{answered} with the first line of the reply.
    """

    def __init__(self) -> None:
        self.data = b""
        self.answered: Deferred[bytes] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        transport.write(REDIS_PING)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if b"\r\n" in self.data and not self.answered.called:
            self.answered.callback(self.data.split(b"\r\n", 1)[0])

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.answered.called:
            self.answered.errback(
                ConnectionError(f"closed before a reply line: {self.data!r}")
            )
        self.lost.callback(None)


async def pingRedis(
    reactor: IIntegrationReactor, port: int, seconds: float = EXIT_TIMEOUT
) -> bytes:
    """
    The first line of a Redis server's answer to C{PING} on
    C{127.0.0.1:port}, over a plain TCP connection of its own (C{+PONG} when
    it is up); fails when it cannot connect or gets no line in C{seconds}.
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
    client: _RedisPing = await connectProtocol(endpoint, _RedisPing())
    try:
        line: bytes = await withTimeout(client.answered, seconds, "redis PING")
    finally:
        transport = client.transport
        assert transport is not None
        transport.loseConnection()
        await withTimeout(client.lost, EXIT_TIMEOUT, "redis PING close")
    return line


class ChildOutput(ProcessProtocol):
    """
    Keeps a child's output (C{redis-server}, C{haproxy}, pebble) and tells
    when it ends.
    """

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.output = b""
        self.ended: Deferred[int] = Deferred()
        self.exitCode: int | None = None

    def outReceived(self, data: bytes) -> None:
        self.output += data

    def errReceived(self, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        self.exitCode = exitCode(reason)
        self.ended.callback(self.exitCode)

    @property
    def running(self) -> bool:
        """
        Whether the child has not ended yet.
        """
        return not self.ended.called


class RedisServer:
    """
    A C{redis-server} child process (Debian's, Redis 7) on C{127.0.0.1:port}
    with its own C{directory}, no persistence (C{--save ''},
    C{--appendonly no}) and in the foreground.  L{stop} and L{start} again
    keep the port, for tests of Redis going away and coming back.

    @ivar port: the loopback port it listens on.
    @ivar directory: its working directory (C{--dir}).
    @ivar password: the password it requires (C{--requirepass}), if any.
    """

    def __init__(
        self,
        reactor: IIntegrationReactor,
        directory: str,
        port: int,
        password: str = "",
    ) -> None:
        self.reactor = reactor
        self.directory = directory
        self.port = port
        self.password = password
        self._protocol: ChildOutput | None = None
        self._transport: IProcessTransport | None = None

    @property
    def argv(self) -> list[str]:
        """
        The command line it runs.
        """
        return [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            self.directory,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            *(["--requirepass", self.password] if self.password else []),
        ]

    @property
    def running(self) -> bool:
        """
        Whether a process was started and has not ended yet.
        """
        return self._protocol is not None and not self._protocol.ended.called

    @property
    def output(self) -> str:
        """
        What the current (or last) process wrote, for failure messages.
        """
        if self._protocol is None:
            return ""
        return self._protocol.output.decode("utf-8", "replace")

    async def start(self) -> None:
        """
        Start C{redis-server} and wait until it answers C{PING} (at most
        L{START_TIMEOUT} seconds); a server that does not is killed and the
        start fails with its output.
        """
        assert not self.running, "redis-server is already running"
        executable = shutil.which("redis-server")
        if executable is None:
            raise AssertionError(
                "redis-server is not installed (Debian package redis-server;"
                " make debian-deps installs it)"
            )
        os.makedirs(self.directory, exist_ok=True)
        self._protocol = protocol = ChildOutput()
        self._transport = self.reactor.spawnProcess(
            protocol,
            executable,
            self.argv,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
            path=self.directory,
        )
        try:
            await withTimeout(
                Deferred.fromCoroutine(self._waitPong(protocol)),
                START_TIMEOUT,
                "redis-server answering PING",
            )
        except BaseException as e:
            await self._kill()
            raise AssertionError(
                f"redis-server did not start on port {self.port}: {e}\n{self.output}"
            ) from e

    async def _waitPong(self, protocol: ChildOutput) -> None:
        """
        Ping until the server answers C{+PONG}; fail at once if it ends.
        """
        while True:
            if protocol.ended.called:
                raise RuntimeError(f"redis-server exited with {protocol.exitCode}")
            try:
                line = await pingRedis(self.reactor, self.port, seconds=1.0)
            except (ConnectError, ConnectionError, TimeoutError):
                await deferLater(self.reactor, 0.05, lambda: None)
                continue
            if line == REDIS_PONG:
                return
            if self.password and line.startswith(b"-NOAUTH"):
                # It answers, and wants the password first.
                return
            # "-LOADING ..." while it loads a data set: ask again.
            await deferLater(self.reactor, 0.05, lambda: None)

    async def stop(self) -> int:
        """
        SIGTERM the server and wait for its exit status (a server still
        running after L{EXIT_TIMEOUT} is killed, and the stop fails).
        """
        protocol, transport = self._protocol, self._transport
        assert protocol is not None and transport is not None
        if self.running:
            transport.signalProcess("TERM")
        ended: Deferred[int] = Deferred()
        protocol.ended.addBoth(_relay, ended)
        try:
            code: int = await withTimeout(ended, EXIT_TIMEOUT, "redis-server exit")
        except TimeoutError as e:
            await self._kill()
            raise AssertionError(
                f"redis-server still running after {EXIT_TIMEOUT} s: {e}\n{self.output}"
            ) from e
        return code

    async def _kill(self) -> None:
        """
        SIGKILL the server if it still runs, and wait for its end.
        """
        protocol, transport = self._protocol, self._transport
        if protocol is None or transport is None:
            return
        if self.running:
            transport.signalProcess("KILL")
        ended: Deferred[int] = Deferred()
        protocol.ended.addBoth(_relay, ended)
        await ended


async def startRedis(
    reactor: IIntegrationReactor, directory: str, password: str = ""
) -> RedisServer:
    """
    A running L{RedisServer} on a free loopback port with C{directory} as its
    own (requiring C{password}, if given); the caller stops it
    (L{RedisServer.stop}, for example with C{addCleanup}).
    """
    server = RedisServer(reactor, directory, closedPort(), password)
    await server.start()
    return server


def clusterSecret(directory: str) -> str:
    """
    A new cluster secret file (32 random bytes, mode 0600) in C{directory};
    its path.
    """
    path = os.path.join(directory, "cluster.key")
    with open(path, "wb") as f:
        f.write(os.urandom(32))
    os.chmod(path, 0o600)
    return path


def clusterConfig(redis: RedisServer, directory: str, **keys: Any) -> ClusterConfig:
    """
    The C{[cluster]} of a test node on C{redis} (plain TCP, database 0,
    key prefix C{it:}), its secret file named under C{directory}; C{keys}
    override any of it.
    """
    values: dict[str, Any] = {
        "redis_url": f"redis://127.0.0.1:{redis.port}/0",
        "redis_host": "127.0.0.1",
        "redis_port": redis.port,
        "key_prefix": "it:",
        "node_name": "node",
        "secret_file": os.path.join(directory, "cluster.key"),
        "secret": b"k" * 32,
    }
    values.update(keys)
    return ClusterConfig(**values)


# -- HAProxy (#19): an L4 balancer in front of a test fleet

#: Debian's HAProxy (package haproxy); it lives in /usr/sbin, which a
#: user's PATH may lack.
HAPROXY = "/usr/sbin/haproxy"

#: A line of HAProxy's C{option tcplog}, logged when a connection ends:
#: client, date, frontend, backend/server, timers, bytes, termination state.
_TCPLOG = re.compile(
    r"^\S+ \[[^\]]+\] (?P<front>\S+) (?P<backend>[^/\s]+)/(?P<server>\S+) "
    r"\S+ (?P<bytes>\d+) (?P<state>\S\S) ",
    re.MULTILINE,
)


def listeningInodes(port: int) -> set[int]:
    """
    The inodes of the sockets listening on C{127.0.0.1:port} (Linux's
    C{/proc/net/tcp}, state C{0A}).
    """
    inodes: set[int] = set()
    with open("/proc/net/tcp", encoding="ascii") as f:
        next(f)
        for line in f:
            fields = line.split()
            ip, hexPort = fields[1].split(":")
            if fields[3] == "0A" and ip == "0100007F" and int(hexPort, 16) == port:
                inodes.add(int(fields[9]))
    return inodes


class HAProxyConnection:
    """
    One connection HAProxy forwarded (or failed to), from its log.

    @ivar front: the frontend's name (the C{fronts} key).
    @ivar port: the backend port it went to, L{None} when no server took
        it (HAProxy's C{<NOSRV>}).
    @ivar received: the bytes the client got back.
    @ivar state: HAProxy's termination state (C{--} when it ended normally).
    """

    def __init__(self, front: str, port: int | None, received: int, state: str):
        self.front = front
        self.port = port
        self.received = received
        self.state = state

    def __repr__(self) -> str:
        return (
            f"<HAProxyConnection {self.front} -> {self.port} "
            f"{self.received} bytes {self.state}>"
        )


class HAProxy:
    """
    Debian's C{haproxy}, a child process of the test's reactor in the
    foreground (C{-db}), in TCP mode: each front listens on its own free
    loopback port and hands each new connection to the next of its
    backends (C{127.0.0.1:PORT}) in turn (C{balance roundrobin}), the
    bytes relayed untouched (TLS and SNI included).

    A backend that refuses the connection (a node not started yet, or
    stopped) costs no failure: HAProxy tries again at once on another
    backend (C{option redispatch 1}), up to six times (C{retries 6}: the
    rotation is shared by concurrent connections, so with two backends of
    three refusing, two retries were seen to land on refusing ones only).  A backend that accepts
    and then fails would still fail its client, so with C{checkInterval}
    each backend is also checked (a TCP connect every C{checkInterval}
    seconds; one failure takes it out of the rotation, one success puts it
    back): a node killed mid-test leaves the rotation within that time.
    The checks are off by default: a check is a connection the node sees
    (a TLS listener would see a handshake that never starts).

    Each connection is logged on standard error when it ends
    (C{option tcplog}), and L{connections} reads them: which backend each
    went to.  The backends are named after their ports (C{port12345}).

    @ivar directory: where its config file is.
    @ivar fronts: the backend ports of each front.
    """

    def __init__(
        self,
        reactor: IIntegrationReactor,
        directory: str,
        fronts: Mapping[str, Sequence[int]],
        checkInterval: float | None = None,
    ) -> None:
        self.reactor = reactor
        self.directory = directory
        self.fronts = {name: list(ports) for name, ports in fronts.items()}
        self.checkInterval = checkInterval
        self._ports = dict(zip(self.fronts, closedPorts(len(self.fronts)), strict=True))
        self.configFile = os.path.join(directory, "haproxy.cfg")
        self._protocol: ChildOutput | None = None
        self._transport: IProcessTransport | None = None

    def port(self, front: str) -> int:
        """
        The loopback port C{front} listens on.
        """
        return self._ports[front]

    @property
    def configText(self) -> str:
        """
        Its config file: global settings, TCP defaults, and one frontend
        and backend per front.
        """
        lines = [
            "global",
            "    log stderr format raw local0 info",
            "    maxconn 512",
            "",
            "defaults",
            "    mode tcp",
            "    log global",
            "    option tcplog",
            "    timeout connect 2s",
            "    timeout client 30s",
            "    timeout server 30s",
            "    retries 6",
            "    option redispatch 1",
        ]
        if self.checkInterval is not None:
            inter = max(1, int(self.checkInterval * 1000))
            lines.append(f"    default-server check inter {inter}ms fall 1 rise 1")
        for name, ports in self.fronts.items():
            lines += [
                "",
                f"frontend {name}",
                f"    bind 127.0.0.1:{self.port(name)}",
                f"    default_backend {name}",
                "",
                f"backend {name}",
                "    balance roundrobin",
            ]
            lines += [f"    server port{p} 127.0.0.1:{p}" for p in ports]
        return "\n".join(lines) + "\n"

    @property
    def running(self) -> bool:
        """
        Whether it was started and has not ended yet.
        """
        return self._protocol is not None and not self._protocol.ended.called

    @property
    def output(self) -> str:
        """
        What it wrote (its connection log, its warnings), for failure
        messages.
        """
        if self._protocol is None:
            return ""
        return self._protocol.output.decode("utf-8", "replace")

    def connections(self, front: str | None = None) -> list[HAProxyConnection]:
        """
        The connections (of C{front}, or of all) that have ended so far, in
        the order they ended.
        """
        found = []
        for match in _TCPLOG.finditer(self.output):
            if front is not None and match["front"] != front:
                continue
            server = match["server"]
            port = int(server[len("port") :]) if server.startswith("port") else None
            found.append(
                HAProxyConnection(
                    match["front"], port, int(match["bytes"]), match["state"]
                )
            )
        return found

    async def start(self) -> None:
        """
        Write the config and start HAProxy; return once it listens on every
        front (its own sockets, in C{/proc}); fail with its output if it
        ends or takes longer than L{START_TIMEOUT}.
        """
        assert not self.running, "haproxy is already running"
        if not os.access(HAPROXY, os.X_OK):
            raise AssertionError(
                f"{HAPROXY} is not installed (Debian package haproxy;"
                " make debian-deps installs it)"
            )
        os.makedirs(self.directory, exist_ok=True)
        replaceFile(self.configFile, self.configText)
        self._protocol = protocol = ChildOutput()
        self._transport = transport = self.reactor.spawnProcess(
            protocol,
            HAPROXY,
            [HAPROXY, "-f", self.configFile, "-db"],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
            path=self.directory,
        )
        pid = transport.pid
        assert pid is not None

        def listening() -> bool:
            if not self.running:
                return True
            ours = socketInodes(pid)
            return all(listeningInodes(p) & ours for p in self._ports.values())

        try:
            await waitFor(listening, START_TIMEOUT, "haproxy listening")
        except AssertionError as e:
            await self._signal(signal.SIGKILL)
            raise AssertionError(f"{e}\n{self.configText}\n{self.output}") from None
        if not self.running:
            raise AssertionError(
                f"haproxy exited with {protocol.exitCode}\n"
                f"{self.configText}\n{self.output}"
            )

    async def stop(self) -> int:
        """
        Stop it: a soft stop (C{SIGUSR1}: it closes its listeners and ends
        once its connections have), then C{SIGTERM} after 3 s, then
        C{SIGKILL}; its exit status (0 after a soft stop).
        """
        protocol = self._protocol
        if protocol is None:
            return 0
        for signalNumber, seconds in (
            (signal.SIGUSR1, 3.0),
            (signal.SIGTERM, 3.0),
            (signal.SIGKILL, None),
        ):
            if not self.running:
                break
            await self._signal(signalNumber, seconds)
        assert protocol.exitCode is not None
        return protocol.exitCode

    async def _signal(self, number: int, seconds: float | None = None) -> None:
        """
        Send signal C{number}; wait up to C{seconds} (forever when L{None})
        for the end.
        """
        protocol, transport = self._protocol, self._transport
        assert protocol is not None and transport is not None
        if not self.running:
            return
        transport.signalProcess(number)
        ended: Deferred[int] = Deferred()
        protocol.ended.addBoth(_relay, ended)
        if seconds is None:
            await ended
            return
        try:
            await withTimeout(ended, seconds, "haproxy exit")
        except TimeoutError:
            pass


async def startHAProxy(
    reactor: IIntegrationReactor,
    directory: str,
    fronts: Mapping[str, Sequence[int]],
    checkInterval: float | None = None,
) -> HAProxy:
    """
    A running L{HAProxy} with C{fronts} (each front's backend ports), its
    config in C{directory}; the caller stops it (L{HAProxy.stop}, for
    example with C{addCleanup}).
    """
    proxy = HAProxy(reactor, directory, fronts, checkInterval)
    await proxy.start()
    return proxy


# -- which process holds a connection (Linux's /proc)


def tcpConnections() -> dict[tuple[int, int], int]:
    """
    The IPv4 TCP sockets of the machine's network namespace: the socket
    inode by C{(local port, remote port)}, for those on 127.0.0.1 at both
    ends.  A connection the kernel completed but no process accepted yet
    has no inode (0 in C{/proc/net/tcp}): it is left out.
    """
    found: dict[tuple[int, int], int] = {}
    with open("/proc/net/tcp", encoding="ascii") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], int(fields[9])
            localIP, localPort = local.split(":")
            remoteIP, remotePort = remote.split(":")
            if localIP == remoteIP == "0100007F" and inode:
                found[(int(localPort, 16), int(remotePort, 16))] = inode
    return found


def socketInodes(pid: int) -> set[int]:
    """
    The inodes of the sockets process C{pid} has open (none once it is
    gone).
    """
    inodes: set[int] = set()
    directory = f"/proc/{pid}/fd"
    try:
        names = os.listdir(directory)
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink(os.path.join(directory, name))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def connectionOwners(
    serverPort: int, clientPorts: Iterable[int], pids: Iterable[int]
) -> dict[int, int | None]:
    """
    Which of C{pids} holds the server side of each client connection to
    C{serverPort} (by the client's local port); L{None} for none of them.
    """
    tcp = tcpConnections()
    holders = {pid: socketInodes(pid) for pid in pids}
    owners: dict[int, int | None] = {}
    for clientPort in clientPorts:
        inode = tcp.get((serverPort, clientPort))
        owners[clientPort] = next(
            (pid for pid, inodes in holders.items() if inode in inodes), None
        )
    return owners


def connectionOwner(
    serverPort: int, clientPort: int, pids: Sequence[int], seconds: float = 2.0
) -> int | None:
    """
    Blocking: which of C{pids} holds the server side of the open connection
    from C{clientPort} to C{serverPort}, retried for up to C{seconds} while
    none does (the kernel completes a connection before a process accepts
    it); L{None} if none does by then.  Call it from the thread that made
    the connection, or from the reactor's once the server has answered.
    """
    deadline = time.monotonic() + seconds
    while True:
        owner = connectionOwners(serverPort, [clientPort], pids)[clientPort]
        if owner is not None or time.monotonic() > deadline:
            return owner
        time.sleep(0.01)
