"""
Tests for L{revproxy.sdnotify}: the notifier sends to a real C{AF_UNIX}
datagram socket bound in a temporary directory, as systemd's would be.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from typing import cast

from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from revproxy.sdnotify import Notifier


class NotifySocket:
    """
    A datagram socket standing in for systemd's notification socket.
    """

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)

    def received(self) -> list[bytes]:
        """
        Every datagram received so far, in order.
        """
        datagrams = []
        while True:
            try:
                datagrams.append(self.sock.recv(65536))
            except BlockingIOError:
                return datagrams

    def close(self) -> None:
        self.sock.close()


def notifySocket(case: SynchronousTestCase) -> tuple[str, NotifySocket]:
    """
    Bind a L{NotifySocket} in a short temporary directory (a socket path
    must stay under about 100 bytes); return its path and it.  Both go at
    the end of C{case}.
    """
    directory = tempfile.mkdtemp(prefix="rpx-notify-", dir="/tmp")
    case.addCleanup(shutil.rmtree, directory, True)
    path = os.path.join(directory, "notify")
    listener = NotifySocket(path)
    case.addCleanup(listener.close)
    return path, listener


def captureLog(case: SynchronousTestCase) -> list[LogEvent]:
    """
    Collect the events logged until the end of C{case}.
    """
    events: list[LogEvent] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    case.addCleanup(globalLogPublisher.removeObserver, observer)
    return events


class NotifierTests(SynchronousTestCase):
    """
    L{Notifier} sends one datagram per call, only with C{$NOTIFY_SOCKET}.
    """

    def setUp(self) -> None:
        self.path, self.systemd = notifySocket(self)
        self.notifier = Notifier({"NOTIFY_SOCKET": self.path}, monotonic=lambda: 4242)

    def test_ready(self) -> None:
        """
        C{ready} sends C{READY=1} and the status.
        """
        self.assertTrue(self.notifier.enabled)
        self.notifier.ready("Serving 2 site(s)")
        self.assertEqual(
            self.systemd.received(), [b"READY=1\nSTATUS=Serving 2 site(s)\n"]
        )

    def test_readyWithoutStatus(self) -> None:
        """
        C{ready} without a status sends C{READY=1} alone.
        """
        self.notifier.ready()
        self.assertEqual(self.systemd.received(), [b"READY=1\n"])

    def test_reloading(self) -> None:
        """
        C{reloading} sends C{RELOADING=1} with C{MONOTONIC_USEC} from the
        clock, as systemd 253 and later want.
        """
        self.notifier.reloading("Reloading")
        self.assertEqual(
            self.systemd.received(),
            [b"RELOADING=1\nMONOTONIC_USEC=4242\nSTATUS=Reloading\n"],
        )

    def test_monotonicClock(self) -> None:
        """
        By default C{MONOTONIC_USEC} is C{CLOCK_MONOTONIC} in microseconds.
        """
        notifier = Notifier({"NOTIFY_SOCKET": self.path})
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notifier.reloading()
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        [datagram] = self.systemd.received()
        fields = dict(line.split("=", 1) for line in datagram.decode().splitlines())
        self.assertEqual(fields["RELOADING"], "1")
        self.assertTrue(before <= int(fields["MONOTONIC_USEC"]) <= after, fields)

    def test_stopping(self) -> None:
        """
        C{stopping} sends C{STOPPING=1}.
        """
        self.notifier.stopping("Shutting down")
        self.assertEqual(
            self.systemd.received(), [b"STOPPING=1\nSTATUS=Shutting down\n"]
        )

    def test_status(self) -> None:
        """
        C{status} sends one C{STATUS=} line, line breaks flattened.
        """
        self.notifier.status("Reload failed:\nREADY=1")
        self.assertEqual(self.systemd.received(), [b"STATUS=Reload failed: READY=1\n"])

    def test_sequence(self) -> None:
        """
        Each call is its own datagram, received in order.
        """
        self.notifier.ready()
        self.notifier.reloading()
        self.notifier.ready()
        self.notifier.stopping()
        self.assertEqual(
            [d.split(b"\n", 1)[0] for d in self.systemd.received()],
            [b"READY=1", b"RELOADING=1", b"READY=1", b"STOPPING=1"],
        )

    def test_abstractSocket(self) -> None:
        """
        An C{@name} address reaches the abstract socket C{\\0name}.
        """
        name = f"revproxy-test-{os.getpid()}-{id(self)}"
        systemd = NotifySocket(b"\0" + name.encode())
        self.addCleanup(systemd.close)
        Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        self.assertEqual(systemd.received(), [b"READY=1\n"])

    def test_environmentReadOnce(self) -> None:
        """
        C{$NOTIFY_SOCKET} is read when the notifier is made, not later.
        """
        environ = {"NOTIFY_SOCKET": self.path}
        notifier = Notifier(environ)
        del environ["NOTIFY_SOCKET"]
        notifier.ready()
        self.assertEqual(self.systemd.received(), [b"READY=1\n"])

    def test_processEnvironment(self) -> None:
        """
        Without a mapping, the notifier reads the process's environment.
        """
        self.patch(os, "environ", {"NOTIFY_SOCKET": self.path})
        Notifier().stopping()
        self.assertEqual(self.systemd.received(), [b"STOPPING=1\n"])


class DisabledNotifierTests(SynchronousTestCase):
    """
    Without a usable C{$NOTIFY_SOCKET}, a L{Notifier} does nothing, and it
    never raises.
    """

    def test_noSocket(self) -> None:
        """
        Without C{NOTIFY_SOCKET} every method is a no-op, and nothing is
        logged.
        """
        logged = captureLog(self)
        notifier = Notifier({})
        self.assertFalse(notifier.enabled)
        notifier.ready("x")
        notifier.reloading("x")
        notifier.stopping("x")
        notifier.status("x")
        self.assertEqual(len(logged), 0)

    def test_unsupportedAddress(self) -> None:
        """
        An address this module cannot use disables the notifier, with one
        warning naming it.
        """
        logged = captureLog(self)
        notifier = Notifier({"NOTIFY_SOCKET": "vsock:2:1234"})
        self.assertFalse(notifier.enabled)
        notifier.ready()
        self.assertEqual(len(logged), 1)
        self.assertIn("vsock:2:1234", logged[0]["log_format"].format(**logged[0]))

    def test_sendFailsOnce(self) -> None:
        """
        A socket that is gone makes sends fail silently after one warning.
        """
        logged = captureLog(self)
        path = os.path.join(tempfile.mkdtemp(prefix="rpx-notify-", dir="/tmp"), "gone")
        self.addCleanup(shutil.rmtree, os.path.dirname(path), True)
        notifier = Notifier({"NOTIFY_SOCKET": path})
        self.assertTrue(notifier.enabled)
        notifier.ready()
        notifier.reloading()
        notifier.stopping()
        self.assertEqual(len(logged), 1)
        self.assertIn("Cannot notify systemd", logged[0]["log_format"])

    def test_sendRecoversLater(self) -> None:
        """
        After a failed send, a later one still goes out once the socket is
        there again.
        """
        directory = tempfile.mkdtemp(prefix="rpx-notify-", dir="/tmp")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "notify")
        notifier = Notifier({"NOTIFY_SOCKET": path})
        logged = captureLog(self)
        notifier.ready()
        self.assertEqual(len(logged), 1)
        systemd = NotifySocket(path)
        self.addCleanup(systemd.close)
        notifier.stopping()
        self.assertEqual(systemd.received(), [b"STOPPING=1\n"])
