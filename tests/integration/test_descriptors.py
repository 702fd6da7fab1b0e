"""
Integration test: more idle keep-alive clients than the proxy has
descriptors.  A real C{twistd revproxy} runs with C{RLIMIT_NOFILE} 1,024
(soft and hard, so revproxy cannot raise it) and 1,100 clients connect:
700 make one request each and keep their connection, 400 more connect and
stay idle.  With C{max_connections} at its default (80 % of 1,024: 819,
counting upstream connections too, as nginx's C{worker_connections}) the
listeners stop accepting at the cap, the clients beyond it wait in the
backlog, the proxy never runs out of descriptors, the upstream stays
healthy (its checks still get descriptors) and nothing counts against it,
and once the clients go a normal client is served.

And L{revproxy.descriptors.raiseDescriptorLimit} once for real, in a child
process whose soft limit was lowered first.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.integration.support import (
    ProxyProcess,
    RawResponse,
    Upstream,
    closedPort,
    configText,
    connectRaw,
    getReactor,
    replaceFile,
    spawnProxy,
    waitFor,
)

_log = Logger()

#: The proxy's descriptor limit, and what max_connections defaults to.
NOFILE = 1024
CAP = int(NOFILE * 0.8)
REQUESTING = 700
IDLE = 400
BATCH = 50

GET = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


class _Client(Protocol):
    """
    Sends one keep-alive GET if asked, notes when its whole answer came,
    then stays connected doing nothing.
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.data = b""
        self.code: int | None = None
        self.lost = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        if self.request:
            self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        end = self.data.find(b"\r\n\r\n")
        if self.code is None and end >= 0:
            head = self.data[:end].lower()
            length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
            if len(self.data) >= end + 4 + length:
                self.code = int(self.data.split(b" ", 2)[1])

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True


def _samples(text: str) -> dict[str, float]:
    """
    Every sample of a Prometheus exposition, keyed C{name{k="v",...}}.
    """
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


class DescriptorTests(TestCase):
    """
    1,100 idle keep-alive clients against 1,024 descriptors.
    """

    timeout = 120

    async def setUp(self) -> None:  # type: ignore[override]
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < 4096 and (hard == resource.RLIM_INFINITY or hard >= 4096):
            resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))
            self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        self.reactor = getReactor()
        self.directory = tempfile.mkdtemp(prefix="rpx-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.upstream = Upstream(self.reactor)
        await self.upstream.start()
        self.addCleanup(self.upstream.stop)
        self.opsPort = closedPort()
        url = f"http://127.0.0.1:{self.upstream.port}"
        self.site = f'site="app",upstream="{url}"'
        text = configText(
            [
                {
                    "name": "app",
                    "hosts": ["127.0.0.1"],
                    "upstreams": [url],
                    "health_check": "CHECK",
                }
            ],
            os.path.join(self.directory, "state"),
            server={
                "ops_listen": f"tcp:{self.opsPort}:interface=127.0.0.1",
                # The idle clients that never send a request stay for the
                # whole test.
                "header_timeout_secs": 120,
            },
        ).replace('"CHECK"', '{ path = "/small", interval_secs = 1 }')
        path = os.path.join(self.directory, "revproxy.toml")
        replaceFile(path, text)
        self.proxy: ProxyProcess
        self.proxy, self.port = await spawnProxy(
            self.reactor, ["--config", path], self.directory, nofile=NOFILE
        )
        self.addCleanup(self._stop)
        self.clients: list[_Client] = []
        self.addCleanup(self._closeClients)
        self.peak = 0
        sampler = LoopingCall(self._sample)
        sampler.clock = self.reactor
        sampler.start(0.02)
        self.addCleanup(sampler.stop)

    def _sample(self) -> None:
        """
        Note the most descriptors the proxy has had open.
        """
        try:
            self.peak = max(self.peak, len(os.listdir(f"/proc/{self.proxy.pid}/fd")))
        except OSError:
            pass

    async def _stop(self) -> None:
        code = await self.proxy.terminate()
        self.assertEqual(code, 0, self.proxy.output)

    async def _closeClients(self) -> None:
        for client in self.clients:
            if client.transport is not None and not client.lost:
                client.transport.loseConnection()
        await waitFor(
            lambda: all(c.lost for c in self.clients), 30, "the clients closing"
        )

    async def metrics(self) -> dict[str, float]:
        client = await connectRaw(self.reactor, self.opsPort)
        try:
            response: RawResponse = await client.request(
                b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            )
        finally:
            await client.close()
        self.assertEqual(response.code, 200)
        return _samples(response.body.decode("utf-8"))

    async def connect(self, request: bytes) -> _Client:
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port, timeout=10)
        client: _Client = await connectProtocol(endpoint, _Client(request))
        self.clients.append(client)
        return client

    def answered(self) -> int:
        return sum(1 for c in self.clients if c.code is not None)

    async def test_idleClientsBeyondDescriptors(self) -> None:
        """
        The clients up to the cap are kept, the rest wait in the backlog;
        the proxy's descriptors never run out, the upstream stays healthy
        and blameless; once the clients go, a normal client is served.
        """
        while len(self.clients) < REQUESTING:
            for _ in range(BATCH):
                await self.connect(GET)
            count = len(self.clients)
            await waitFor(
                lambda n=count: self.answered() >= n,  # type: ignore[misc]
                10,
                f"{count} answers",
            )
        for _ in range(IDLE):
            await self.connect(b"")
        samples: dict[str, float] = {}

        async def capped() -> bool:
            nonlocal samples
            samples = await self.metrics()
            return samples.get("revproxy_connections{}", 0) >= CAP or (
                len(self.proxy.output) > 0 and "EMFILE" in self.proxy.output
            )

        # The cap counts the pool's idle upstream connections too: the last
        # idle clients get in once those are closed (after 4 s).
        deadline = self.reactor.seconds() + 20
        while not await capped():
            self.assertLess(self.reactor.seconds(), deadline, samples)
            await self._sleep(0.5)
        # A few health checks while at the cap.
        await self._sleep(2.5)
        samples = await self.metrics()
        codes = {c.code for c in self.clients if c.code is not None}
        errors = {k: v for k, v in samples.items() if "upstream_errors" in k}
        figures = (
            f"{len(self.clients)} clients, {self.answered()} answered "
            f"{sorted(codes)}, connections {samples.get('revproxy_connections{}')}, "
            f"paused {samples.get('revproxy_listeners_paused{}')}, "
            f"peak descriptors {self.peak} of {NOFILE}, upstream healthy "
            f"{samples.get(f'revproxy_upstream_healthy{{{self.site}}}')}, "
            f"upstream errors {errors}, "
            f"EMFILE lines {self.proxy.output.count('EMFILE')}"
        )
        _log.info("descriptor test: {figures}", figures=figures)
        self.assertEqual(self.answered(), REQUESTING, figures)
        self.assertEqual(codes, {200}, figures)
        self.assertEqual(samples["revproxy_connections_max{}"], CAP, figures)
        self.assertEqual(samples["revproxy_connections{}"], CAP, figures)
        self.assertEqual(samples["revproxy_listeners_paused{}"], 1, figures)
        self.assertEqual(samples[f"revproxy_upstream_healthy{{{self.site}}}"], 1)
        self.assertEqual(sum(errors.values()), 0, errors)
        self.assertLess(self.peak, NOFILE, figures)
        self.assertNotIn("Too many open files", self.proxy.output)
        self.assertNotIn("EMFILE", self.proxy.output)

        await self._closeClients()
        client = await connectRaw(self.reactor, self.port)
        started = self.reactor.seconds()
        try:
            answer = await client.request(GET)
        finally:
            await client.close()
        waited = self.reactor.seconds() - started
        _log.info(
            "descriptor test: a normal client after they left: {code} in {waited} s",
            code=answer.code,
            waited=round(waited, 3),
        )
        self.assertEqual(answer.code, 200)
        self.assertLess(waited, 5)
        samples = await self.metrics()
        self.assertEqual(samples["revproxy_listeners_paused{}"], 0)
        self.assertGreaterEqual(samples["revproxy_connection_limit_reached_total{}"], 1)
        self.assertEqual(samples[f"revproxy_upstream_healthy{{{self.site}}}"], 1)
        errors = {k: v for k, v in samples.items() if "upstream_errors" in k}
        self.assertEqual(sum(errors.values()), 0, errors)

    async def _sleep(self, seconds: float) -> None:
        start = self.reactor.seconds()
        await waitFor(
            lambda: self.reactor.seconds() - start >= seconds,
            seconds + 5,
            "sleeping",
        )


#: A child that lowers its soft limit, then raises it with the defaults.
_CHILD = """
import json, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
from revproxy.descriptors import currentDescriptorLimit, raiseDescriptorLimit
limit = raiseDescriptorLimit()
print(json.dumps([limit.before, limit.soft, limit.hard, currentDescriptorLimit(),
                  resource.getrlimit(resource.RLIMIT_NOFILE)]))
"""


class RealLimitTests(SynchronousTestCase):
    """
    L{raiseDescriptorLimit} with its defaults, in a child process (this
    one's limit is left alone).
    """

    def test_raises(self) -> None:
        """
        A soft limit of 256 is raised to the hard limit.
        """
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        child = subprocess.run(
            [sys.executable, "-c", _CHILD],
            capture_output=True,
            check=True,
            timeout=60,
        )
        before, soft, reported, current, now = json.loads(child.stdout)
        self.assertEqual(
            (before, soft, reported, current), (min(256, hard), hard, hard, hard)
        )
        self.assertEqual(now, [hard, hard])
