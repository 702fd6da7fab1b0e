"""
The operations around the forwarder, end to end with a real C{twistd
revproxy}: the rate limit's 429, X-Request-ID, the access log (written,
reopened after logrotate's rename by SIGUSR1 and by the admin socket,
moved by a reload), and the ops listener (C{/healthz}, C{/metrics} read
with prometheus_client's own parser, 503 while draining).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import TestCase

from tests.integration.support import (
    ProxyProcess,
    RawResponse,
    Upstream,
    askAdmin,
    closedPort,
    configText,
    connectRaw,
    getReactor,
    replaceFile,
    spawnProxy,
    waitFor,
)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """
    Every sample of a Prometheus exposition, by name and sorted labels.
    """
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class OperationsTests(TestCase):
    """
    A proxy with a rate-limited site, an unlimited one, an access log file,
    an admin socket and an ops listener.
    """

    timeout = 60

    async def setUp(self) -> None:  # type: ignore[override]
        self.reactor = getReactor()
        self.directory = tempfile.mkdtemp(prefix="rpx-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.upstream = Upstream(self.reactor, "U")
        await self.upstream.start()
        self.addCleanup(self.upstream.stop)
        self.logPath = os.path.join(self.directory, "access.log")
        self.socketPath = os.path.join(self.directory, "admin.sock")
        self.opsPort = closedPort()
        self.configPath = os.path.join(self.directory, "revproxy.toml")
        self.writeConfig(self.logPath)
        self.proxy: ProxyProcess
        self.proxy, self.port = await spawnProxy(
            self.reactor, ["--config", self.configPath], self.directory
        )
        self.addCleanup(self._stopProxy)

    def writeConfig(self, logPath: str, logFormat: str = "json") -> None:
        upstream = f"http://127.0.0.1:{self.upstream.port}"
        text = configText(
            [
                {
                    "name": "limited",
                    "hosts": ["limited.test"],
                    "upstreams": [upstream],
                    "rate_limit": "RATE",
                },
                {"name": "open", "hosts": ["127.0.0.1"], "upstreams": [upstream]},
            ],
            os.path.join(self.directory, "state"),
            server={
                "admin_socket_path": self.socketPath,
                "ops_listen": f"tcp:{self.opsPort}:interface=127.0.0.1",
                "shutdown_timeout_secs": 10,
            },
        )
        text = text.replace(
            '"RATE"', "{ requests_per_second = 0.5, burst = 3 }"
        ).replace(
            'access_log = "-"\naccess_log_format = "combined"',
            f"access_log = {json.dumps(logPath)}\n"
            f"access_log_format = {json.dumps(logFormat)}",
        )
        replaceFile(self.configPath, text)

    async def _stopProxy(self) -> None:
        running = self.proxy.running
        code = await self.proxy.terminate()
        if running:
            self.assertEqual(code, 0, f"SIGTERM gave {code}\n{self.proxy.output}")

    async def get(
        self, path: bytes, host: bytes = b"127.0.0.1", port: int | None = None
    ) -> RawResponse:
        client = await connectRaw(self.reactor, self.port if port is None else port)
        try:
            return await client.request(
                b"GET " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n"
                b"User-Agent: ops-test\r\nConnection: close\r\n\r\n"
            )
        finally:
            await client.close()

    def logLines(self, path: str | None = None) -> list[str]:
        """
        The lines of the access log at C{path}, but for the 400 of the
        probe that L{spawnProxy} sends to see the proxy answer.
        """
        try:
            with open(path or self.logPath, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        return [
            line
            for line in lines
            if '"status":400' not in line and '"PROBE" 400' not in line
        ]

    async def waitLines(self, count: int, path: str | None = None) -> list[str]:
        """
        The lines of the access log once it has C{count} (it is flushed
        within a second).
        """
        await waitFor(
            lambda: len(self.logLines(path)) >= count,
            5,
            f"{count} access log lines in {path or self.logPath}",
        )
        return self.logLines(path)

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        response = await self.get(b"/metrics", port=self.opsPort)
        self.assertEqual(response.code, 200)
        self.assertTrue(response.header(b"content-type")[0].startswith(b"text/plain"))
        return _samples(response.body.decode("utf-8"))

    async def test_rateLimit(self) -> None:
        """
        A client over the limit gets 429 with Retry-After; the refusal is
        in the access log and in /metrics; another site is not limited;
        the admin socket shows and refills the bucket.
        """
        for _ in range(3):
            response = await self.get(b"/whoami", b"limited.test")
            self.assertEqual(response.code, 200)
        refused = await self.get(b"/whoami", b"limited.test")
        self.assertEqual(refused.code, 429)
        self.assertEqual(refused.header(b"retry-after"), [b"2"])
        self.assertEqual((await self.get(b"/whoami")).code, 200)
        bucket = await askAdmin(
            self.reactor, self.socketPath, "ratelimit limited 127.0.0.1"
        )
        self.assertEqual((bucket["status"], bucket["tracked"]), ("ok", True))
        self.assertLess(bucket["tokens"], 1)
        reset = await askAdmin(
            self.reactor, self.socketPath, "ratelimit reset limited 127.0.0.1"
        )
        self.assertEqual((reset["reset"], reset["tokens"]), (True, 3.0))
        self.assertEqual((await self.get(b"/whoami", b"limited.test")).code, 200)
        lines = [json.loads(line) for line in await self.waitLines(6)]
        self.assertEqual(
            [(line["site"], line["status"]) for line in lines],
            [("limited", 200)] * 3
            + [("limited", 429), ("open", 200), ("limited", 200)],
        )
        samples = await self.metrics()
        self.assertEqual(
            samples[
                ("revproxy_refusals_total", (("code", "429"), ("site", "limited")))
            ],
            1.0,
        )
        self.assertEqual(
            samples[
                (
                    "revproxy_requests_total",
                    (("code_class", "2xx"), ("site", "limited")),
                )
            ],
            4.0,
        )
        stats = await askAdmin(self.reactor, self.socketPath, "stats limited")
        self.assertEqual(stats["sites"]["limited"]["rate_limited"], 1)

    async def test_requestID(self) -> None:
        """
        The X-Request-ID the client gets is the one the upstream got and
        the one in the access log line.
        """
        response = await self.get(b"/echo")
        [requestID] = response.header(b"x-request-id")
        echoed = json.loads(response.body)
        self.assertEqual(echoed["headers"]["x-request-id"], [requestID.decode()])
        [line] = await self.waitLines(1)
        record = json.loads(line)
        self.assertEqual(record["request_id"], requestID.decode())
        self.assertEqual(
            (record["client_ip"], record["user_agent"], record["upstream_status"]),
            ("127.0.0.1", "ops-test", 200),
        )
        self.assertEqual(record["generation"], 1)

    async def test_reopenAfterRename(self) -> None:
        """
        After logrotate renames the file, SIGUSR1 and then the admin
        C{reopen-logs} each start a new file; no line is lost.
        """
        await self.get(b"/whoami")
        await self.waitLines(1)
        os.rename(self.logPath, self.logPath + ".1")
        os.kill(self.proxy.pid, signal.SIGUSR1)
        await self.proxy.waitOutput("SIGUSR1: reopening the access log")
        await self.get(b"/whoami")
        await self.waitLines(1)
        os.rename(self.logPath, self.logPath + ".2")
        answer = await askAdmin(self.reactor, self.socketPath, "reopen-logs")
        self.assertEqual(answer, {"status": "ok"})
        await self.get(b"/whoami")
        await self.waitLines(1)
        self.assertEqual(len(self.logLines(self.logPath + ".1")), 1)
        self.assertEqual(len(self.logLines(self.logPath + ".2")), 1)

    async def test_reloadMovesLog(self) -> None:
        """
        A reload that changes the access log's path and format writes the
        next lines there, in that format; the generation follows.
        """
        await self.get(b"/whoami")
        await self.waitLines(1)
        newPath = os.path.join(self.directory, "combined.log")
        self.writeConfig(newPath, "combined")
        answer = await askAdmin(self.reactor, self.socketPath, "reload")
        self.assertEqual(answer["status"], "ok", answer)
        await self.get(b"/whoami")
        [line] = await self.waitLines(1, newPath)
        self.assertRegex(
            line,
            r'^127\.0\.0\.1 - - \[[^]]+\] "GET /whoami HTTP/1\.1" 200 \d+ "-" '
            r'"ops-test"$',
        )
        self.assertEqual(len(self.logLines()), 1)
        samples = await self.metrics()
        self.assertEqual(samples[("revproxy_config_generation", ())], 2.0)
        self.assertEqual(samples[("revproxy_reloads_total", (("result", "ok"),))], 1.0)

    async def test_healthzAndMetrics(self) -> None:
        """
        /healthz answers 200 with JSON; /metrics counts requests, open
        connections and upstream errors; other paths are 404.
        """
        response = await self.get(b"/healthz", port=self.opsPort)
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(response.body), {"status": "ok"})
        self.assertEqual((await self.get(b"/nope", port=self.opsPort)).code, 404)
        await self.get(b"/whoami")
        samples = await self.metrics()
        self.assertEqual(
            samples[
                ("revproxy_requests_total", (("code_class", "2xx"), ("site", "open")))
            ],
            1.0,
        )
        self.assertEqual(
            samples[("revproxy_request_duration_seconds_count", (("site", "open"),))],
            1.0,
        )
        self.assertGreaterEqual(samples[("revproxy_connections", ())], 0)

    async def test_healthzWhileDraining(self) -> None:
        """
        During a graceful shutdown /healthz answers 503 until the last
        request is done; then the proxy exits 0.
        """
        slow = await connectRaw(self.reactor, self.port)
        assert slow.transport is not None
        pending = slow.request(b"GET /slow?delay=2 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await waitFor(
            lambda: bool(self.upstream.site.channels), 5, "the slow request upstream"
        )
        os.kill(self.proxy.pid, signal.SIGTERM)
        await self.proxy.waitOutput("Shutting down")
        response = await self.get(b"/healthz", port=self.opsPort)
        self.assertEqual(response.code, 503)
        self.assertEqual(json.loads(response.body), {"status": "draining"})
        answer: Any = await pending
        self.assertEqual(answer.code, 200)
        await slow.close()
        self.assertEqual(await self.proxy.waitExit(), 0)
