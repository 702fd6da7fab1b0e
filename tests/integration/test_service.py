"""
Tests for L{revproxy.service} on real sockets: the tree tells systemd (a
real C{AF_UNIX} datagram socket) what it does, and the admin socket's
directory check runs the tree on the real reactor (a loopback listener and
a real socket file), because what matters there is the file.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import tempfile
from typing import Any, cast

from twisted.internet import reactor as globalReactor
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from revproxy.admin import reloadAnswer
from revproxy.config import loadConfig
from revproxy.interfaces import IRevProxyReactor
from revproxy.sdnotify import Notifier
from revproxy.service import RevProxyService, SignalRelay, buildService
from tests.test_service import CONFIG, config, reloaderOf, runWhenRunningHooks


class SystemdNotifyTests(SynchronousTestCase):
    """
    The tree tells systemd (C{$NOTIFY_SOCKET}, here a real datagram socket)
    that it is ready once the reactor runs, brackets every reload (not a
    check) with C{RELOADING=1} and C{READY=1}, and says C{STOPPING=1} as a
    shutdown begins.
    """

    def setUp(self) -> None:
        directory = tempfile.mkdtemp(prefix="rpx-notify-", dir="/tmp")
        self.addCleanup(shutil.rmtree, directory, True)
        self.systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(self.systemd.close)
        self.systemd.bind(os.path.join(directory, "notify"))
        self.systemd.setblocking(False)
        notifier = Notifier(
            {"NOTIFY_SOCKET": os.path.join(directory, "notify")},
            monotonic=lambda: 123456,
        )
        self.reactor = MemoryReactorClock()
        self.path = self.mktemp()
        self.write(CONFIG)
        self.top = buildService(
            loadConfig(self.path),
            self.path,
            cast(IRevProxyReactor, self.reactor),
            notifier=notifier,
        )
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            self.addCleanup(signal.signal, signum, signal.getsignal(signum))

    def write(self, text: str) -> None:
        with open(self.path, "w", encoding="utf-8") as f:
            f.write(text)

    def received(self) -> list[dict[str, str]]:
        """
        The datagrams systemd got since the last call, each as its fields.
        """
        messages: list[dict[str, str]] = []
        while True:
            try:
                datagram = self.systemd.recv(65536)
            except BlockingIOError:
                return messages
            lines = datagram.decode("utf-8").splitlines()
            messages.append(dict(line.split("=", 1) for line in lines))

    def start(self) -> None:
        """
        Start the tree and let the reactor "run".
        """
        self.top.privilegedStartService()
        self.top.startService()
        self.addCleanup(self.stop)
        runWhenRunningHooks(self.reactor)
        self.reactor.advance(0)

    def stop(self) -> None:
        if self.top.running:
            self.top.stopService()
        cast(SignalRelay, self.top.getServiceNamed("signals")).restore()

    def reload(self) -> dict[str, Any]:
        result: dict[str, Any] = reloadAnswer(
            self.successResultOf(reloaderOf(self.top).reload("test"))
        )
        return result

    def test_readyOnceRunning(self) -> None:
        """
        Nothing is sent when the tree starts; C{READY=1} with the number of
        sites and the generation once the reactor runs.
        """
        self.top.privilegedStartService()
        self.top.startService()
        self.addCleanup(self.stop)
        self.assertEqual(self.received(), [])
        runWhenRunningHooks(self.reactor)
        self.reactor.advance(0)
        self.assertEqual(
            self.received(),
            [{"READY": "1", "STATUS": "Serving 1 site(s), config generation 1"}],
        )

    def test_stoppedBeforeRunning(self) -> None:
        """
        A tree stopped before the reactor runs never says C{READY=1}, and
        leaves no timer behind.
        """
        self.top.privilegedStartService()
        self.top.startService()
        self.top.stopService()
        self.addCleanup(self.stop)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual([next(iter(m)) for m in self.received()], ["STOPPING"])

    def test_reload(self) -> None:
        """
        A reload sends C{RELOADING=1} with C{MONOTONIC_USEC}, then
        C{READY=1} with the new generation.
        """
        self.start()
        self.received()
        self.write(CONFIG.replace('hosts = ["localhost"]', 'hosts = ["b.example"]'))
        self.assertEqual(self.reload()["status"], "ok")
        self.assertEqual(
            self.received(),
            [
                {
                    "RELOADING": "1",
                    "MONOTONIC_USEC": "123456",
                    "STATUS": "Reloading the config (test)",
                },
                {
                    "READY": "1",
                    "STATUS": "Reloaded: serving 1 site(s), config generation 2",
                },
            ],
        )

    def test_failedReload(self) -> None:
        """
        A reload that fails is over too: C{READY=1}, with the error and
        the generation still served, on one line.
        """
        self.start()
        self.received()
        self.write(CONFIG + "bogus = 1\nother = 2\n")
        self.assertEqual(self.reload()["status"], "error")
        [reloading, ready] = self.received()
        self.assertEqual(reloading["RELOADING"], "1")
        self.assertEqual(ready["READY"], "1")
        self.assertTrue(
            ready["STATUS"].startswith(
                "Reload failed, serving 1 site(s), config generation 1: "
            ),
            ready,
        )
        self.assertIn("sites[0].bogus", ready["STATUS"])

    def test_checkSendsNothing(self) -> None:
        """
        The admin C{check} (a dry run) tells systemd nothing.
        """
        self.start()
        self.received()
        self.successResultOf(reloaderOf(self.top).check())
        self.assertEqual(self.received(), [])

    def test_queuedReloadsInOrder(self) -> None:
        """
        Reloads that wait for each other are each bracketed, in turn:
        systemd never sees two C{RELOADING=1} in a row.
        """
        self.start()
        self.received()
        # Hold the reload lock, as a reload in progress would.
        lock = reloaderOf(self.top)._lock
        self.successResultOf(lock.acquire())
        first = reloaderOf(self.top).reload("first")
        second = reloaderOf(self.top).reload("second")
        self.assertEqual(self.received(), [])
        lock.release()
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual(
            [next(iter(m)) for m in self.received()],
            ["RELOADING", "READY", "RELOADING", "READY"],
        )

    def test_stopping(self) -> None:
        """
        Stopping the tree (a graceful shutdown) sends C{STOPPING=1} with
        the drain's deadline.
        """
        self.start()
        self.received()
        self.top.stopService()
        self.assertEqual(
            self.received(),
            [
                {
                    "STOPPING": "1",
                    "STATUS": "Shutting down: finishing requests in flight "
                    "(up to 30 s)",
                }
            ],
        )

    def test_defaultNotifier(self) -> None:
        """
        Without a notifier, the tree uses one for the process's
        C{$NOTIFY_SOCKET}: none here, so it is disabled.
        """
        self.patch(os, "environ", {})
        top = buildService(config(), "", cast(IRevProxyReactor, MemoryReactorClock()))
        notice = top.getServiceNamed("systemd-notify")
        self.assertFalse(notice.notifier.enabled)


class AdminSocketDirectoryTests(TestCase):
    """
    The whole tree, on the real reactor, creates its admin socket only in a
    directory that no other user can write to, or that has the sticky bit;
    elsewhere it warns and serves without it.
    """

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="rpx-admin-dir-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.directory, True)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            self.addCleanup(signal.signal, signum, signal.getsignal(signum))
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def socketDirectory(self, mode: int) -> str:
        """
        A new directory of C{mode} (set after the umask) in the test's.
        """
        path = os.path.join(self.directory, f"run-{mode:o}")
        os.mkdir(path)
        os.chmod(path, mode)
        return path

    def start(self, socketPath: str) -> RevProxyService:
        """
        Start the tree of a config whose admin socket is C{socketPath}, on
        a loopback port; it is stopped after the test.
        """
        configPath = os.path.join(self.directory, "config.toml")
        with open(configPath, "w", encoding="utf-8") as f:
            f.write(
                CONFIG.replace(
                    'admin_socket_path = ""', f'admin_socket_path = "{socketPath}"'
                ).replace(
                    '"tcp:8080:interface=127.0.0.1", "tcp:8081:interface=127.0.0.2"',
                    '"tcp:0:interface=127.0.0.1"',
                )
                + '\n[logging]\naccess_log = ""\n'
            )
        top = buildService(
            loadConfig(configPath),
            configPath,
            cast(IRevProxyReactor, globalReactor),
            notifier=Notifier({}),
        )
        top.privilegedStartService()
        top.startService()

        def stop() -> object:
            cast(SignalRelay, top.getServiceNamed("signals")).restore()
            return top.stopService()

        self.addCleanup(stop)
        return top

    def warnings(self) -> list[str]:
        """
        The text of the warnings logged so far.
        """
        return [formatEvent(e) for e in self.events if e["log_level"] == LogLevel.warn]

    def test_worldWritableDirectory(self) -> None:
        """
        In a directory anyone can write to, without the sticky bit, there is
        no socket file, a warning names the directory and why, and the rest
        of the tree runs.
        """
        directory = self.socketDirectory(0o777)
        path = os.path.join(directory, "admin.sock")
        top = self.start(path)
        self.assertFalse(os.path.lexists(path))
        self.assertFalse(os.path.lexists(path + ".lock"))
        [warning] = self.warnings()
        self.assertEqual(
            warning,
            f"Running without the admin socket {path}: {directory} is not a safe "
            "place for it: it is writable by other users (mode 0777) and has no "
            "sticky bit",
        )
        self.assertTrue(top.running)

    def test_stickyDirectory(self) -> None:
        """
        In a directory anyone can write to but with the sticky bit, as
        C{/tmp}, the socket is created, mode 0660.
        """
        path = os.path.join(self.socketDirectory(0o1777), "admin.sock")
        self.start(path)
        status = os.lstat(path)
        self.assertTrue(stat.S_ISSOCK(status.st_mode))
        self.assertEqual(stat.S_IMODE(status.st_mode), 0o660)
        self.assertEqual(self.warnings(), [])
