"""
The Redis helper of the integration tests (L{support.startRedis}, for #19):
Debian's C{redis-server} started on a loopback port with a directory of its
own, answering C{PING}, stopped, and started again on the same port, as the
fleet's tests of Redis going away and coming back will do.  That it runs at
all proves that C{redis-server} is installed (C{make debian-deps}, CI).
"""

from __future__ import annotations

import os
import tempfile

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError
from twisted.trial.unittest import TestCase

from tests.integration import support


class StartRedisTests(TestCase):
    """
    L{support.startRedis} and L{support.RedisServer}.
    """

    async def test_startPingStopRestart(self) -> None:
        """
        The server answers C{+PONG} on its port once started; after C{stop}
        (exit 0) nothing listens there; C{start} again brings it back on the
        same port, and C{stop} ends it again.
        """
        reactor = support.getReactor()
        directory = tempfile.mkdtemp(prefix="revproxy-redis-")
        self.addCleanup(os.rmdir, directory)
        server = await support.startRedis(reactor, directory)
        self.addCleanup(self._killIfRunning, server)
        port = server.port
        self.assertEqual(await support.pingRedis(reactor, port), support.REDIS_PONG)
        self.assertEqual(await server.stop(), 0, server.output)
        with self.assertRaises(ConnectError):
            await support.pingRedis(reactor, port)

        await server.start()
        self.assertEqual(server.port, port)
        self.assertEqual(await support.pingRedis(reactor, port), support.REDIS_PONG)
        self.assertEqual(await server.stop(), 0, server.output)
        self.assertFalse(server.running)
        # --save '' and --appendonly no: nothing written to its directory.
        self.assertEqual(os.listdir(directory), [])

    def _killIfRunning(self, server: support.RedisServer) -> Deferred[object]:
        """
        Stop C{server} if a failed test left it running.
        """

        async def stop() -> None:
            if server.running:
                await server.stop()

        return Deferred.fromCoroutine(stop())
