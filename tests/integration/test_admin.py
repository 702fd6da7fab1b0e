"""
Tests for L{revproxy.admin}'s admin socket on real C{AF_UNIX} sockets: stale
socket files, and L{AdminSocket} on the real reactor.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from typing import Any, cast

from twisted.internet import reactor as globalReactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, MemoryReactor
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from revproxy.admin import AdminFactory, AdminProtocol, AdminSocket
from revproxy.runtime import RuntimeHolder
from tests.test_admin import CONFIG, RELOADED, RELOADED_JSON, FakeReloader, runtimeFor


class StaleSocketFileTests(SynchronousTestCase):
    """
    L{AdminSocket} tells a socket file left behind from one that another
    process still answers on, by connecting to it (a real socket file in a
    temporary directory; the listening itself is on a memory reactor).
    """

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        clock = Clock()
        self.factory = AdminFactory(
            FakeReloader(RuntimeHolder(runtimeFor(CONFIG, clock))), clock
        )

    def test_deadSocketWithoutLockRemoved(self) -> None:
        """
        A socket file nobody answers on and with no lock file beside it is
        removed before listening.
        """
        path = os.path.join(self.dir, "dead.sock")
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dead.bind(path)
        dead.close()
        self.assertTrue(os.path.exists(path))
        service = AdminSocket(path, self.factory, MemoryReactor())
        service.privilegedStartService()
        self.assertFalse(os.path.exists(path))

    def test_liveSocketWithoutLockKept(self) -> None:
        """
        A socket file that another process answers on is left alone, even
        without a lock file.
        """
        path = os.path.join(self.dir, "live.sock")
        live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(live.close)
        live.bind(path)
        live.listen(1)
        service = AdminSocket(path, self.factory, MemoryReactor())
        service.privilegedStartService()
        self.assertTrue(os.path.exists(path))


class _Collect(Protocol):
    """
    Send C{line}, maybe half-close, and collect everything until the server
    closes.
    """

    def __init__(self, data: bytes, halfClose: bool) -> None:
        self.data = data
        self.halfClose = halfClose
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.data)
        if self.halfClose:
            self.transport.loseWriteConnection()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.done.callback(self.received)


class _TrackedProtocol(AdminProtocol):
    """
    An admin protocol that reports when it has seen a half-close and when
    its connection is gone.
    """

    def readConnectionLost(self) -> None:
        super().readConnectionLost()
        cast(_TrackedFactory, self.factory).halfClosed.append(self)

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        cast(_TrackedFactory, self.factory).lost.append(self)


class _TrackedFactory(AdminFactory):
    """
    Builds L{_TrackedProtocol}s.
    """

    def __init__(self, reloader: FakeReloader, clock: IReactorTime) -> None:
        super().__init__(reloader, clock)
        self.halfClosed: list[AdminProtocol] = []
        self.lost: list[AdminProtocol] = []

    def buildProtocol(self, addr: Any) -> AdminProtocol:
        return _TrackedProtocol(self)


class RealSocketTests(TestCase):
    """
    L{AdminSocket} on the real reactor, in a temporary directory.
    """

    def setUp(self) -> None:
        self.reactor = cast(Any, globalReactor)
        self.dir = tempfile.mkdtemp(prefix="rpa")
        self.addCleanup(shutil.rmtree, self.dir)
        self.path = os.path.join(self.dir, "run", "admin.sock")
        self.reloader = FakeReloader(RuntimeHolder(runtimeFor(CONFIG, self.reactor)))
        self.factory = _TrackedFactory(self.reloader, self.reactor)
        self.service = AdminSocket(self.path, self.factory, self.reactor)
        self.service.privilegedStartService()
        self.service.startService()
        # Cleanups run last first, and before tearDown: stop listening
        # before the directory goes.
        self.addCleanup(lambda: self.service.stopService())

    async def stop(self) -> None:
        """
        Stop the running service.
        """
        stopped = self.service.stopService()
        assert stopped is not None
        await stopped

    async def talk(self, data: bytes, halfClose: bool = False) -> bytes:
        """
        Send C{data} to the admin socket and return the answer, once both
        ends have closed.
        """
        before = len(self.factory.lost)
        proto = _Collect(data, halfClose)
        await connectProtocol(UNIXClientEndpoint(self.reactor, self.path), proto)
        received = await proto.done
        while len(self.factory.lost) == before:
            await _turn(self.reactor)
        return received

    async def test_statusAndCleanShutdown(self) -> None:
        """
        A real client gets its answer; the socket is mode 0660, and it and
        its lock are removed when the service stops.
        """
        answer = json.loads(await self.talk(b"status\n"))
        self.assertEqual((answer["status"], answer["sites"]), ("ok", 2))
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o660)
        self.assertTrue(os.path.lexists(self.path + ".lock"))
        await self.stop()
        self.assertFalse(os.path.lexists(self.path))
        self.assertFalse(os.path.lexists(self.path + ".lock"))
        self.service = AdminSocket(self.path, self.factory, self.reactor)

    async def test_halfCloseGetsPendingAnswer(self) -> None:
        """
        A client that half-closes after C{reload} (C{socat}) gets the answer
        that comes after the half-close.
        """
        self.factory.halfClosed.clear()
        proto = _Collect(b"reload\n", halfClose=True)
        await connectProtocol(UNIXClientEndpoint(self.reactor, self.path), proto)
        while not self.factory.halfClosed:
            await _turn(self.reactor)
        self.reloader.reloads[0][1].callback(RELOADED)
        self.assertEqual(json.loads(await proto.done), RELOADED_JSON)
        while not self.factory.lost:
            await _turn(self.reactor)

    async def test_secondOwnerWarns(self) -> None:
        """
        A second service on the path of a running one warns and runs
        without it; the first still answers.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        other = AdminSocket(self.path, self.factory, self.reactor)
        other.privilegedStartService()
        other.startService()
        self.assertTrue(
            any("another running process" in str(e.get("reason")) for e in events)
        )
        self.assertIsNone(other.port)
        self.assertIsNone(other.stopService())
        answer = json.loads(await self.talk(b"help\n"))
        self.assertEqual(answer["status"], "ok")

    async def test_staleSocketReplaced(self) -> None:
        """
        A socket and lock left by a process that died are replaced.
        """
        await self.stop()
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(self.path)
        stale.close()
        dead = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True,
            check=True,
        )
        os.symlink(dead.stdout.decode().strip(), self.path + ".lock")
        self.service = AdminSocket(self.path, self.factory, self.reactor)
        self.service.privilegedStartService()
        self.assertIsNotNone(self.service.port)
        answer = json.loads(await self.talk(b"status\n"))
        self.assertEqual(answer["status"], "ok")


def _turn(reactor: Any) -> Deferred[None]:
    """
    A Deferred that fires on a later turn of C{reactor}.
    """
    d: Deferred[None] = Deferred()
    reactor.callLater(0.01, d.callback, None)
    return d
