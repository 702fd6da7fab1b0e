"""
Integration tests: C{[server] workers = N} with a real C{twistd revproxy}
supervisor and its worker processes (issue #18): status, the spread of
connections, a worker killed, reloads under load and broken ones, SIGTERM,
SIGHUP and SIGUSR1, the rate limit's bound across workers, the merged
C{/metrics} and admin C{stats}, and C{workers = 1} staying one process.

Finding which worker holds a client connection reads C{/proc} (Linux).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.trial.unittest import SkipTest, TestCase

from tests.integration.support import (
    ProxyProcess,
    RawClient,
    RawResponse,
    Upstream,
    askAdmin,
    closedPort,
    configText,
    connectionOwners,
    connectRaw,
    getReactor,
    replaceFile,
    spawnProxy,
    waitFor,
    whoamiBody,
    withTimeout,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(text: str) -> Samples:
    """
    Every sample of a Prometheus exposition, by name and sorted labels.
    """
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _request(
    path: bytes = b"/whoami", host: bytes = b"main.test", close: bool = False
) -> bytes:
    return (
        b"GET " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n"
        b"User-Agent: workers-test\r\n"
        + (b"Connection: close\r\n" if close else b"")
        + b"\r\n"
    )


async def _all(awaitables: Iterable[Any]) -> list[Any]:
    """
    Await every one of C{awaitables} (coroutines or Deferreds) together;
    their results in order.
    """
    results: list[Any] = await gatherResults(
        [ensureDeferred(a) for a in awaitables], consumeErrors=True
    )
    return results


def _clientPort(client: RawClient) -> int:
    assert client.transport is not None
    return int(cast(Any, client.transport).getHost().port)


def _processGone(pid: int) -> bool:
    """
    Whether no process C{pid} runs (none, or only its zombie).
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            stat = f.read()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _children(pid: int) -> list[tuple[int, str]]:
    """
    The processes whose parent is C{pid}: their pid and command line.
    """
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii") as f:
                stat = f.read()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append((int(name), cmdline))
    return found


class WorkersTests(TestCase):
    """
    A proxy with C{workers = 2} (unless a test says otherwise), an admin
    socket and an ops listener, forwarding C{main.test} to an in-process
    upstream with a response header rule whose value names the config
    version.
    """

    timeout = 60

    async def setUp(self) -> None:  # type: ignore[override]
        if not os.path.exists("/proc/net/tcp"):
            raise SkipTest("needs Linux's /proc")
        self.reactor = getReactor()
        self.directory = tempfile.mkdtemp(prefix="rpx-", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.upstream = Upstream(self.reactor, "U")
        await self.upstream.start()
        self.addCleanup(self.upstream.stop)
        self.other = Upstream(self.reactor, "V")
        await self.other.start()
        self.addCleanup(self.other.stop)
        self.socketPath = os.path.join(self.directory, "admin.sock")
        self.configPath = os.path.join(self.directory, "revproxy.toml")
        self.opsPort = closedPort()
        self.clients: list[RawClient] = []
        self.addCleanup(self._closeClients)

    def writeConfig(
        self,
        version: str = "a",
        workers: int = 2,
        rateLimit: Mapping[str, object] | None = None,
        accessLog: str | None = None,
        upstream: Upstream | None = None,
    ) -> None:
        """
        Write the config: C{main.test} answers with C{X-Version: version}.
        """
        site: dict[str, object] = {
            "name": "main",
            "hosts": ["main.test"],
            "upstreams": [f"http://127.0.0.1:{(upstream or self.upstream).port}"],
            "response_headers": {"set": {"X-Version": version}},
        }
        if rateLimit is not None:
            site["rate_limit"] = dict(rateLimit)
        text = configText(
            [site],
            os.path.join(self.directory, "state"),
            server={
                "workers": workers,
                "admin_socket_path": self.socketPath,
                "ops_listen": f"tcp:{self.opsPort}:interface=127.0.0.1",
                "shutdown_timeout_secs": 10,
            },
        )
        if accessLog is not None:
            text = text.replace(
                'access_log = "-"\naccess_log_format = "combined"',
                f'access_log = {json.dumps(accessLog)}\naccess_log_format = "json"',
            )
        replaceFile(self.configPath, text)

    async def startProxy(self, workers: int = 2) -> None:
        """
        Start the proxy on the config written; with workers, wait until
        every worker serves.
        """
        self.proxy: ProxyProcess
        self.proxy, self.port = await spawnProxy(
            self.reactor, ["--config", self.configPath], self.directory
        )
        self.addCleanup(self._stopProxy)
        if workers > 1:
            await self.waitWorkers(
                lambda ws: (
                    len(ws) == workers and all(w["state"] == "serving" for w in ws)
                ),
                "every worker serving",
            )

    async def _stopProxy(self) -> None:
        running = self.proxy.running
        code = await self.proxy.terminate()
        if running:
            self.assertEqual(code, 0, f"SIGTERM gave {code}\n{self.proxy.output}")
        self.assertNotIn("Traceback", self.proxy.output, self.proxy.output)

    async def _closeClients(self) -> None:
        clients, self.clients = self.clients, []
        await _all([c.close() for c in clients])

    async def admin(self, command: str) -> dict[str, Any]:
        answer: dict[str, Any] = await askAdmin(self.reactor, self.socketPath, command)
        return answer

    async def workers(self) -> list[dict[str, Any]]:
        status = await self.admin("status")
        self.assertEqual(status["status"], "ok", status)
        found: list[dict[str, Any]] = status["workers"]
        return found

    async def waitWorkers(
        self, predicate: Any, what: str, seconds: float = 10.0
    ) -> list[dict[str, Any]]:
        """
        Poll admin C{status} until C{predicate(workers)}; its workers.
        """
        deadline = self.reactor.seconds() + seconds
        while True:
            workers = await self.workers()
            if predicate(workers):
                return workers
            if self.reactor.seconds() > deadline:
                raise AssertionError(
                    f"{what}: not after {seconds} s: {workers}\n{self.proxy.output}"
                )
            await self.pause(0.1)

    async def pause(self, seconds: float) -> None:
        from twisted.internet.task import deferLater

        await deferLater(self.reactor, seconds, lambda: None)

    async def connect(self, port: int | None = None) -> RawClient:
        client = await connectRaw(self.reactor, self.port if port is None else port)
        self.clients.append(client)
        return client

    async def get(
        self,
        path: bytes = b"/whoami",
        host: bytes = b"main.test",
        port: int | None = None,
    ) -> RawResponse:
        """
        One request on a fresh connection, closed after.
        """
        client = await connectRaw(self.reactor, self.port if port is None else port)
        try:
            return await client.request(_request(path, host, close=True))
        finally:
            await client.close()

    async def metrics(self) -> Samples:
        response = await self.get(b"/metrics", b"127.0.0.1", port=self.opsPort)
        self.assertEqual(response.code, 200, response.body)
        return _samples(response.body.decode("utf-8"))

    async def spreadClients(
        self, pids: Sequence[int], batch: int = 8, batches: int = 5
    ) -> tuple[list[RawClient], dict[int, int | None]]:
        """
        Keep-alive connections, each with one request answered, opened
        C{batch} at a time until each of the workers C{pids} holds some
        (at most C{batches} times); them, and the worker holding each (by
        the client's port).
        """
        clients: list[RawClient] = []
        owners: dict[int, int | None] = {}
        for _ in range(batches):
            more = await _all([self.connect() for _ in range(batch)])
            responses = await _all([c.request(_request()) for c in more])
            self.assertEqual([r.code for r in responses], [200] * len(more))
            clients += more
            owners = connectionOwners(
                self.port, [_clientPort(c) for c in clients], pids
            )
            if all(pid in owners.values() for pid in pids):
                break
        self.assertNotIn(None, owners.values(), owners)
        self.assertTrue(
            all(pid in owners.values() for pid in pids),
            f"one worker holds all {len(clients)} connections: {owners}",
        )
        return clients, owners

    # -- the tests

    async def test_serve(self) -> None:
        """
        With C{workers = 2}, status lists two serving workers with their own
        pids (not the supervisor's), generation 1 and an uptime; requests
        are answered.
        """
        self.writeConfig()
        await self.startProxy()
        status = await self.admin("status")
        workers = status["workers"]
        self.assertEqual([w["worker"] for w in workers], [1, 2], workers)
        pids = [w["pid"] for w in workers]
        self.assertEqual(len(set(pids)), 2, workers)
        self.assertNotIn(status["pid"], pids)
        self.assertNotIn(self.proxy.pid, pids)
        self.assertEqual(status["pid"], self.proxy.pid)
        for worker in workers:
            self.assertEqual(
                (worker["state"], worker["generation"], worker["restarts"]),
                ("serving", 1, 0),
                worker,
            )
            self.assertIsInstance(worker["uptime_secs"], int)
            self.assertGreaterEqual(worker["uptime_secs"], 0)
            self.assertFalse(_processGone(worker["pid"]), worker)
        children = {pid for pid, _ in _children(self.proxy.pid)}
        self.assertEqual(children, set(pids))
        for _ in range(6):
            response = await self.get()
            self.assertEqual(response.code, 200)
            self.assertEqual(response.body, whoamiBody("U"))
            self.assertEqual(response.header(b"x-version"), [b"a"])

    async def test_connectionsLandOnBoth(self) -> None:
        """
        Twenty keep-alive connections, each with one request answered and
        kept open, are spread over both workers: /metrics counts each
        worker's, and they add up to twenty.
        """
        self.writeConfig()
        await self.startProxy()
        count = 20
        clients = await _all([self.connect() for _ in range(count)])
        responses = await _all([c.request(_request()) for c in clients])
        self.assertEqual([r.code for r in responses], [200] * count)
        samples = await self.metrics()
        perWorker = {
            worker: samples.get(
                ("revproxy_worker_connections", (("worker", worker),)), -1.0
            )
            for worker in ("1", "2")
        }
        pids = [w["pid"] for w in await self.workers()]
        owners = connectionOwners(self.port, [_clientPort(c) for c in clients], pids)
        byPid = {pid: sum(1 for o in owners.values() if o == pid) for pid in pids}
        message = f"/metrics: {perWorker}; /proc: {byPid}"
        self.assertEqual(
            list(byPid.values()), [perWorker["1"], perWorker["2"]], message
        )
        self.assertEqual(perWorker["1"] + perWorker["2"], count, message)
        self.assertGreater(perWorker["1"], 0, message)
        self.assertGreater(perWorker["2"], 0, message)

    async def test_killedWorker(self) -> None:
        """
        A worker killed with SIGKILL: the other worker's connections are
        still served, a new connection is served at once, and the slot is
        serving again with a new pid and one restart; the supervisor logged
        the death.
        """
        self.writeConfig()
        await self.startProxy()
        pids = [w["pid"] for w in await self.workers()]
        clients, owners = await self.spreadClients(pids)
        ports = [_clientPort(c) for c in clients]
        victim, survivor = pids
        os.kill(victim, signal.SIGKILL)
        killedAt = self.reactor.seconds()
        await waitFor(lambda: _processGone(victim), 5, "the killed worker gone")
        response = await self.get()
        self.assertEqual(response.code, 200)
        for client, port in zip(clients, ports, strict=True):
            owner = owners[port]
            if owner == survivor:
                response = await client.request(_request())
                self.assertEqual(response.code, 200)
            else:
                await withTimeout(client.lost, 5, "the killed worker's connection lost")
        workers = await self.waitWorkers(
            lambda ws: ws[0]["state"] == "serving" and ws[0]["pid"] not in pids,
            "worker 1 serving again",
            seconds=5 - (self.reactor.seconds() - killedAt),
        )
        self.assertEqual(
            [(w["worker"], w["restarts"], w["state"]) for w in workers],
            [(1, 1, "serving"), (2, 0, "serving")],
        )
        self.assertEqual(workers[1]["pid"], survivor)
        self.assertIn(
            f"worker 1 (pid {victim}) exited (killed by signal 9)", self.proxy.output
        )
        for _ in range(6):
            self.assertEqual((await self.get()).code, 200)

    async def test_reloadUnderLoad(self) -> None:
        """
        Ten admin reloads, alternating the response header and the
        upstream, while eight keep-alive connections send requests: none
        fails, each reload answers ok, and both workers end on the last
        generation; the answers follow the reloads.
        """
        self.writeConfig()
        await self.startProxy()
        pids = [w["pid"] for w in await self.workers()]
        clients, _ = await self.spreadClients(pids)
        failures: list[str] = []
        codes: dict[int, int] = {}
        seen: set[tuple[bytes, bytes]] = set()
        done = [False]
        least = -(-300 // len(clients))

        async def load(client: RawClient) -> None:
            # Until the reloads are done, and at least its share of 300.
            for sent in range(2000):
                if done[0] and sent >= least:
                    return
                try:
                    response = await client.request(_request())
                except Exception as e:
                    failures.append(repr(e))
                    return
                codes[response.code] = codes.get(response.code, 0) + 1
                seen.add((response.body, b"".join(response.header(b"x-version"))))

        loads = ensureDeferred(_all([load(c) for c in clients]))
        answers = []
        for index in range(10):
            version = "b" if index % 2 == 0 else "a"
            upstream = self.other if index % 4 in (0, 1) else self.upstream
            self.writeConfig(version, upstream=upstream)
            answers.append(await self.admin("reload"))
            await self.pause(0.05)
        done[0] = True
        await withTimeout(loads, 20, "the client loops")
        self.assertEqual(failures, [])
        self.assertEqual(set(codes), {200}, codes)
        self.assertGreaterEqual(sum(codes.values()), 300)
        self.assertEqual(
            [(a["status"], a["generation"]) for a in answers],
            [("ok", g) for g in range(2, 12)],
            answers,
        )
        workers = await self.workers()
        self.assertEqual([w["generation"] for w in workers], [11, 11], workers)
        self.assertGreater(len(seen), 1, seen)
        # The last config (index 9): version "a", upstream V.
        for client in clients:
            response = await client.request(_request())
            self.assertEqual(
                (response.code, response.body, response.header(b"x-version")),
                (200, whoamiBody("V"), [b"a"]),
            )

    async def test_brokenReload(self) -> None:
        """
        A reload of a broken file answers an error, and both workers keep
        serving the old config (generation 1, the old header).
        """
        self.writeConfig("a")
        await self.startProxy()
        replaceFile(self.configPath, "[server\nworkers = 2\n")
        answer = await self.admin("reload")
        self.assertEqual(
            (answer["status"], answer["code"]), ("error", "config_invalid"), answer
        )
        workers = await self.workers()
        self.assertEqual([w["generation"] for w in workers], [1, 1], workers)
        self.assertEqual((await self.admin("status"))["generation"], 1)
        for _ in range(6):
            response = await self.get()
            self.assertEqual(
                (response.code, response.header(b"x-version")), (200, [b"a"])
            )

    async def test_sigtermDrains(self) -> None:
        """
        SIGTERM with a slow request in flight: it is answered 200, the
        supervisor exits 0 and no worker process remains.
        """
        self.writeConfig()
        await self.startProxy()
        pids = [w["pid"] for w in await self.workers()]
        client = await self.connect()
        assert client.transport is not None
        answer = client.request(_request(b"/slow?delay=1", close=True))
        await waitFor(
            lambda: len(self.upstream.site.channels) > 0, 5, "the slow request upstream"
        )
        self.proxy.transport.signalProcess("TERM")
        response = await answer
        self.assertEqual((response.code, response.body), (200, b"slow\n"))
        code = await self.proxy.waitExit()
        self.assertEqual(code, 0, self.proxy.output)
        for pid in pids:
            self.assertTrue(_processGone(pid), f"worker pid {pid} still runs")
        for index, pid in enumerate(pids, 1):
            self.assertIn(
                f"worker {index} (pid {pid}) exited (exit status 0)", self.proxy.output
            )

    async def test_signals(self) -> None:
        """
        SIGHUP reloads every worker; SIGUSR1 makes them reopen the access
        log: after a rename, new requests go to the new file, and every
        line of both files is one whole JSON object.
        """
        logPath = os.path.join(self.directory, "access.log")
        self.writeConfig("a", accessLog=logPath)
        await self.startProxy()
        self.writeConfig("b", accessLog=logPath)
        self.proxy.transport.signalProcess(signal.SIGHUP)
        workers = await self.waitWorkers(
            lambda ws: [w["generation"] for w in ws] == [2, 2],
            "generation 2 everywhere",
        )
        self.assertEqual([w["state"] for w in workers], ["serving", "serving"])
        response = await self.get()
        self.assertEqual(response.header(b"x-version"), [b"b"])

        sent: list[str] = []
        pids = [w["pid"] for w in workers]
        #: The worker that served each connection of each burst.
        owners: dict[str, set[int | None]] = {}

        async def burst(tag: str, clients: int = 8, each: int = 15) -> None:
            async def one(n: int) -> None:
                client = await self.connect()
                for i in range(each):
                    path = f"/whoami?{tag}-{n}-{i}"
                    sent.append(path)
                    response = await client.request(_request(path.encode()))
                    self.assertEqual(response.code, 200)
                    if i == 0:
                        port = _clientPort(client)
                        owner = connectionOwners(self.port, [port], pids)[port]
                        owners.setdefault(tag, set()).add(owner)
                await client.close()

            await _all([one(n) for n in range(clients)])

        def lines(path: str) -> list[dict[str, Any]]:
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except FileNotFoundError:
                return []
            self.assertTrue(text == "" or text.endswith("\n"), text[-200:])
            parsed = []
            for line in text.splitlines():
                entry = json.loads(line)
                self.assertIsInstance(entry, dict)
                parsed.append(entry)
            return parsed

        def paths(path: str) -> list[str]:
            return [
                e.get("path", "") + ("?" + e["query"] if e.get("query") else "")
                for e in lines(path)
                if e.get("status") != 400
            ]

        def logged() -> int:
            return len(paths(logPath)) + len(paths(logPath + ".1"))

        await burst("before")
        await waitFor(lambda: logged() >= len(sent) + 1, 5, "the requests logged")
        os.rename(logPath, logPath + ".1")
        self.proxy.transport.signalProcess(signal.SIGUSR1)
        await self.proxy.waitOutput("SIGUSR1")
        # The workers are told over AMP once the supervisor logged that.
        await self.pause(0.5)
        # Until both workers served some (a burst of connections may all
        # go to one): at most three bursts.
        served: set[int | None] = set()
        for attempt in range(3):
            await burst(f"after{attempt}")
            served |= owners[f"after{attempt}"]
            if served >= set(pids):
                break
        await waitFor(lambda: logged() >= len(sent) + 1, 5, "every request logged")
        old, new = paths(logPath + ".1"), paths(logPath)
        self.assertEqual(
            sorted(p for p in old + new if "before" in p or "after" in p),
            sorted(sent),
        )
        self.assertTrue(all("before" in p for p in old if "whoami?" in p), old)
        self.assertTrue(all("after" in p for p in new if "whoami?" in p), new)
        # Both workers served the requests that went to the new file.
        self.assertEqual(served, set(pids), owners)

    async def test_rateLimitAcrossWorkers(self) -> None:
        """
        A client spread over many fresh connections, as fast as it can for
        three seconds, is admitted no more than the limit's burst plus its
        rate over the window (with 10 % slack), and more than one worker's
        share could admit: both workers admitted.
        """
        rate, burst = 5.0, 10
        self.writeConfig(rateLimit={"requests_per_second": rate, "burst": burst})
        await self.startProxy()
        codes: dict[int, int] = {}
        start = self.reactor.seconds()
        window = 3.0

        async def loop() -> None:
            while self.reactor.seconds() - start < window:
                response = await self.get()
                codes[response.code] = codes.get(response.code, 0) + 1

        await _all([loop() for _ in range(4)])
        elapsed = self.reactor.seconds() - start
        admitted = codes.get(200, 0)
        self.assertEqual(set(codes) - {200, 429}, set(), codes)
        self.assertGreater(codes.get(429, 0), 0, codes)
        bound = (burst + rate * elapsed) * 1.1
        self.assertLessEqual(admitted, bound, f"{codes} in {elapsed:.2f} s")
        oneWorker = (burst // 2 + rate / 2 * elapsed) * 1.1
        self.assertGreater(admitted, oneWorker, f"{codes} in {elapsed:.2f} s")
        stats = await self.admin("stats main")
        site = stats["sites"]["main"]
        self.assertEqual(site["rate_limited"], codes.get(429, 0), site)

    async def test_metricsSum(self) -> None:
        """
        After K requests spread over both workers, /metrics counts K 2xx
        for the site and two serving workers; admin stats counts K 2xx too.
        """
        self.writeConfig()
        await self.startProxy()
        pids = [w["pid"] for w in await self.workers()]
        clients, owners = await self.spreadClients(pids)
        for _ in range(2):
            responses = await _all([c.request(_request()) for c in clients])
            self.assertEqual([r.code for r in responses], [200] * len(clients))
        count = 3 * len(clients)
        samples = await self.metrics()
        key = ("revproxy_requests_total", (("code_class", "2xx"), ("site", "main")))
        self.assertEqual(samples.get(key), float(count), f"owners {owners}")
        self.assertEqual(samples[("revproxy_workers", (("state", "serving"),))], 2.0)
        stats = await self.admin("stats main")
        self.assertEqual(stats["sites"]["main"]["status"]["2xx"], count, stats)
        self.assertEqual(stats["workers"], 2)

    async def test_oneWorker(self) -> None:
        """
        With C{workers = 1} (the default) the proxy stays one process:
        status has no workers and it has no child process.
        """
        self.writeConfig(workers=1)
        await self.startProxy(workers=1)
        status = await self.admin("status")
        self.assertEqual(status["status"], "ok")
        self.assertNotIn("workers", status)
        self.assertEqual(status["pid"], self.proxy.pid)
        self.assertEqual(_children(self.proxy.pid), [])
        self.assertEqual((await self.get()).code, 200)
        self.assertNotIn("Listener for the workers", self.proxy.output)
