"""
Tests for L{revproxy.workers.aggregate}: the workers' C{/metrics}, C{stats}
and C{tunnels} merged into one, from the answers of real L{Metrics} driven
by a L{Clock}.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from types import SimpleNamespace
from typing import Any, cast

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.openmetrics import parser as openmetrics
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from revproxy.admin import renderTunnels
from revproxy.cluster.ratelimit import ClusterCollector, SharedRateLimiter
from revproxy.metrics import LATENCY_RELATIVE_ERROR, LiveSources, Metrics
from revproxy.proxy.tunnel import SiteTunnels, TunnelCounts
from revproxy.ratelimit import RateLimiter
from revproxy.workers.aggregate import (
    SHARED_GAUGES,
    mergeExpositions,
    mergeStats,
    mergeTunnels,
)

UP1 = "http://10.0.0.1:8000"
UP2 = "http://10.0.0.2:8000"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"

Labels = frozenset[tuple[str, str]]


def worker(
    connections: int = 0,
    generation: int = 1,
    healthy: bool = True,
    pools: Iterable[tuple[str, int, int]] = (),
    notAfter: float = 1.8e9,
    processCollectors: bool = False,
) -> Metrics:
    """
    A worker's L{Metrics} of the site C{app}, with live values, at second
    1000 of its clock; with prometheus_client's process and platform
    collectors if C{processCollectors}.
    """
    clock = Clock()
    clock.advance(1000)
    sources = LiveSources(
        connections=lambda: connections,
        connectionGate=lambda: (500, connections, False, 2),
        generation=lambda: generation,
        certificates=lambda: [("app", "files", notAfter)],
        upstreamHealth=lambda: [("app", UP1, healthy), ("app", UP2, True)],
        poolSizes=lambda: list(pools),
        trackedClients=lambda: 4,
        tunnels=lambda: [TunnelCounts("app", 1, 3, {"client": 2}, 10, 20)],
    )
    metrics = Metrics(
        clock,
        sources=sources,
        registry=None if processCollectors else CollectorRegistry(),
    )
    metrics.retainSites(["app"])
    return metrics


def traffic(metrics: Metrics, requests: int, latency: float) -> None:
    """
    C{requests} requests to C{app} answered with 200 in second 1000 of
    C{metrics}' clock, each with C{latency} upstream, then a refusal, an
    upstream error, a denial and one request left in flight; then one
    second passes, so the rates count them.
    """
    for _ in range(requests):
        metrics.requestStarted("app")
        metrics.requestFinished("app", 200, latency * 2, latency)
    metrics.refused("app", 429)
    metrics.upstreamError("app", UP1, "connect")
    metrics.accessDenied("app", "address")
    metrics.rateLimitDryRun("app")
    metrics.requestStarted("app")
    clock: Any = metrics._clock
    clock.advance(1)


def exposition(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode("utf-8")


def encode(registry: CollectorRegistry, accept: str = "") -> str:
    encoder, _ = choose_encoder(accept)
    return encoder(registry).decode("utf-8")


def samples(registry: CollectorRegistry, name: str) -> dict[Labels, float]:
    """
    The samples called C{name} in the text exposition of C{registry}, read
    back by prometheus_client's parser.
    """
    found: dict[Labels, float] = {}
    for family in text_string_to_metric_families(encode(registry)):
        for sample in family.samples:
            if sample.name == name:
                found[frozenset(sample.labels.items())] = sample.value
    return found


def lines(text: str, without: str = "") -> set[str]:
    """
    The lines of an exposition, as a set, leaving out those that mention
    C{without}.
    """
    return {line for line in text.splitlines() if not without or without not in line}


def statsAnswer(
    metrics: Metrics,
    generation: int = 1,
    down: bool = False,
    health: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """
    An admin C{stats} answer as L{revproxy.admin.AdminFactory.stats} makes it
    from C{metrics} for the site C{app} with upstreams L{UP1} (with a health
    check) and L{UP2}, read back from JSON as the supervisor gets it.
    """
    pools = {
        url: {"idle": idle, "active": active}
        for url, idle, active in metrics.sources.poolSizes()
    }
    stats = dict(metrics.stats("app"))
    counted = stats["upstreams"]
    upstreams: list[dict[str, Any]] = []
    for url in (UP1, UP2):
        upstream: dict[str, Any] = {"url": url, "down": down}
        if url == UP1 and health is not None:
            upstream["health"] = dict(health)
        upstream["pool"] = pools.get(url)
        upstream["errors"] = dict(counted.get(url, {}).get("errors", {}))
        upstreams.append(upstream)
    stats["upstreams"] = upstreams
    answer = {"status": "ok", "generation": generation, "sites": {"app": stats}}
    loaded: dict[str, Any] = json.loads(json.dumps(answer))
    return loaded


def tunnelsAnswer(generation: int, sites: Mapping[str, SiteTunnels]) -> dict[str, Any]:
    """
    An admin C{tunnels} answer as L{revproxy.admin.AdminFactory.tunnels}
    makes it.
    """
    return {
        "status": "ok",
        "generation": generation,
        "total": sum(t.open for t in sites.values()),
        "sites": {name: renderTunnels(t) for name, t in sites.items()},
    }


class MergeExpositionsTests(SynchronousTestCase):
    """
    L{mergeExpositions}: one C{/metrics} from the workers'.
    """

    def observe(self) -> EventLoggingObserver:
        """
        The events logged until the end of the test.
        """
        events = EventLoggingObserver()
        globalLogPublisher.addObserver(events)
        self.addCleanup(globalLogPublisher.removeObserver, events)
        return events

    def test_noWorkers(self) -> None:
        """
        Without workers, the registry encodes to an empty exposition.
        """
        registry = mergeExpositions([])
        self.assertEqual(encode(registry), "")
        self.assertEqual(encode(registry, OPENMETRICS), "# EOF\n")

    def test_oneWorkerUnchanged(self) -> None:
        """
        The merge of one worker's exposition (with prometheus_client's own
        process and platform collectors) encodes to the same HELP, TYPE and
        sample lines, plus that worker's connections by worker.
        """
        metrics = worker(connections=3, processCollectors=True)
        traffic(metrics, 2, 0.01)
        text = exposition(metrics)
        self.assertIn("process_cpu_seconds_total", text)
        merged = encode(mergeExpositions([("1", text)]))
        self.assertEqual(
            sorted(lines(merged, "revproxy_worker_connections")), sorted(lines(text))
        )
        self.assertEqual(
            sorted(lines(merged) - lines(text)),
            [
                "# HELP revproxy_worker_connections Open client connections, by worker.",
                "# TYPE revproxy_worker_connections gauge",
                'revproxy_worker_connections{worker="1"} 3.0',
            ],
        )

    def test_countersAndHistogramsSummed(self) -> None:
        """
        Counters and histograms (buckets, count, sum) are summed across
        workers, sample by sample; a site only one worker has is kept.
        """
        one, two = worker(), worker()
        traffic(one, 2, 0.01)
        traffic(two, 3, 0.2)
        two.requestStarted("other")
        two.requestFinished("other", 503, 0.1)
        registry = mergeExpositions([("1", exposition(one)), ("2", exposition(two))])
        requests = samples(registry, "revproxy_requests_total")
        self.assertEqual(
            requests[frozenset({("site", "app"), ("code_class", "2xx")})], 5.0
        )
        self.assertEqual(
            requests[frozenset({("site", "app"), ("code_class", "4xx")})], 2.0
        )
        self.assertEqual(
            requests[frozenset({("site", "other"), ("code_class", "5xx")})], 1.0
        )
        buckets = samples(registry, "revproxy_upstream_response_seconds_bucket")
        self.assertEqual(buckets[frozenset({("site", "app"), ("le", "0.01")})], 2.0)
        self.assertEqual(buckets[frozenset({("site", "app"), ("le", "0.25")})], 5.0)
        self.assertEqual(buckets[frozenset({("site", "app"), ("le", "+Inf")})], 5.0)
        self.assertEqual(
            samples(registry, "revproxy_upstream_response_seconds_count"),
            {frozenset({("site", "app")}): 5.0, frozenset({("site", "other")}): 0.0},
        )
        [total] = [
            v
            for k, v in samples(
                registry, "revproxy_upstream_response_seconds_sum"
            ).items()
            if ("site", "app") in k
        ]
        self.assertAlmostEqual(total, 0.62)
        self.assertEqual(
            samples(registry, "revproxy_upstream_errors_total"),
            {frozenset({("site", "app"), ("upstream", UP1), ("kind", "connect")}): 2.0},
        )
        self.assertEqual(
            samples(registry, "revproxy_tunnel_bytes_total"),
            {
                frozenset({("site", "app"), ("direction", "up")}): 20.0,
                frozenset({("site", "app"), ("direction", "down")}): 40.0,
            },
        )

    def test_trafficGaugesSummed(self) -> None:
        """
        Gauges of a worker's traffic (connections, requests in flight, pool
        connections, open tunnels) are summed.
        """
        one = worker(connections=3, pools=[(UP1, 1, 2)])
        two = worker(connections=4, pools=[(UP1, 5, 0)])
        traffic(one, 1, 0.01)
        traffic(two, 1, 0.01)
        registry = mergeExpositions([("1", exposition(one)), ("2", exposition(two))])
        self.assertEqual(samples(registry, "revproxy_connections"), {frozenset(): 7.0})
        self.assertEqual(
            samples(registry, "revproxy_in_flight_requests"),
            {frozenset({("site", "app")}): 2.0},
        )
        self.assertEqual(
            samples(registry, "revproxy_upstream_pool_connections"),
            {
                frozenset({("upstream", UP1), ("state", "idle")}): 6.0,
                frozenset({("upstream", UP1), ("state", "active")}): 2.0,
            },
        )
        self.assertEqual(
            samples(registry, "revproxy_tunnels_open"),
            {frozenset({("site", "app")}): 2.0},
        )

    def test_sharedGaugesMax(self) -> None:
        """
        The gauges of L{SHARED_GAUGES} take the largest value, not the sum.
        """
        one = worker(generation=3, healthy=False, notAfter=1.7e9)
        two = worker(generation=4, healthy=True, notAfter=1.8e9)
        registry = mergeExpositions([("1", exposition(one)), ("2", exposition(two))])
        self.assertEqual(
            samples(registry, "revproxy_config_generation"), {frozenset(): 4.0}
        )
        self.assertEqual(
            samples(registry, "revproxy_connections_max"), {frozenset(): 500.0}
        )
        self.assertEqual(
            samples(registry, "revproxy_upstream_healthy"),
            {
                frozenset({("site", "app"), ("upstream", UP1)}): 1.0,
                frozenset({("site", "app"), ("upstream", UP2)}): 1.0,
            },
        )
        self.assertEqual(
            list(
                samples(
                    registry, "revproxy_certificate_expiry_timestamp_seconds"
                ).values()
            ),
            [1.8e9],
        )
        self.assertEqual(list(samples(registry, "revproxy_build_info").values()), [1.0])

    def test_sharedGaugesAreGauges(self) -> None:
        """
        Every name of L{SHARED_GAUGES} is a gauge family of a worker's
        exposition: none is misspelt or was renamed.
        """
        families = {
            family.name: family.type
            for family in text_string_to_metric_families(
                exposition(worker(processCollectors=True))
            )
        }
        # With [cluster], a worker's registry also has the fleet's metrics.
        cluster = CollectorRegistry(auto_describe=False)
        cluster.register(
            ClusterCollector(
                SharedRateLimiter(
                    Clock(),
                    cast(Any, SimpleNamespace(up=False)),
                    RateLimiter(Clock()),
                    "rp:",
                    "n:1",
                )
            )
        )
        for family in text_string_to_metric_families(generate_latest(cluster).decode()):
            families[family.name] = family.type
        self.assertEqual({families.get(name) for name in SHARED_GAUGES}, {"gauge"})

    def test_connectionsByWorker(self) -> None:
        """
        Open client connections are shown both summed and by worker.
        """
        texts = [
            ("1", exposition(worker(connections=3))),
            ("2", exposition(worker(connections=0))),
        ]
        registry = mergeExpositions(texts)
        self.assertEqual(
            samples(registry, "revproxy_worker_connections"),
            {frozenset({("worker", "1")}): 3.0, frozenset({("worker", "2")}): 0.0},
        )
        self.assertEqual(samples(registry, "revproxy_connections"), {frozenset(): 3.0})

    def test_openMetrics(self) -> None:
        """
        The merged registry encodes in OpenMetrics too, which
        prometheus_client's strict OpenMetrics parser reads back, with
        counters' samples named C{_total} and families named without it.
        """
        one, two = worker(), worker()
        traffic(one, 2, 0.01)
        traffic(two, 1, 0.01)
        registry = mergeExpositions([("1", exposition(one)), ("2", exposition(two))])
        text = encode(registry, OPENMETRICS)
        self.assertTrue(text.endswith("# EOF\n"))
        self.assertIn("# TYPE revproxy_requests counter\n", text)
        families = {
            family.name: family
            for family in openmetrics.text_string_to_metric_families(text)
        }
        requests = families["revproxy_requests"]
        self.assertEqual(requests.type, "counter")
        self.assertEqual(
            {s.name for s in requests.samples}, {"revproxy_requests_total"}
        )
        self.assertEqual(sum(s.value for s in requests.samples), 5.0)
        self.assertEqual(families["revproxy_worker_connections"].type, "gauge")

    def test_encodedTwice(self) -> None:
        """
        The registry encodes the same at every scrape.
        """
        registry = mergeExpositions([("1", exposition(worker(connections=1)))])
        self.assertEqual(encode(registry), encode(registry))

    def test_unparseableLeftOut(self) -> None:
        """
        A worker whose exposition cannot be parsed is left out, with a
        warning naming it; the others are merged.
        """
        events = self.observe()
        good = exposition(worker(connections=2))
        registry = mergeExpositions(
            [("1", good), ("2", "revproxy_connections{ 1\n"), ("3", good)]
        )
        self.assertEqual(samples(registry, "revproxy_connections"), {frozenset(): 4.0})
        self.assertEqual(
            set(samples(registry, "revproxy_worker_connections")),
            {frozenset({("worker", "1")}), frozenset({("worker", "3")})},
        )
        warned = [e for e in events if e.get("worker") == "2"]
        self.assertEqual(len(warned), 1)
        self.assertEqual(warned[0]["log_level"].name, "warn")

    def test_onlyUnparseable(self) -> None:
        """
        When no worker's exposition can be parsed, the exposition is empty.
        """
        events = self.observe()
        registry = mergeExpositions([("1", "nonsense here\n")])
        self.assertEqual(encode(registry), "")
        self.assertEqual(len(events), 1)


class MergeStatsTests(SynchronousTestCase):
    """
    L{mergeStats}: one admin C{stats} answer from the workers'.
    """

    def assertNear(self, milliseconds: float, expected: float) -> None:
        """
        C{milliseconds}, a percentile, is within the percentiles' relative
        error of C{expected}.
        """
        self.assertLessEqual(
            abs(milliseconds - expected), expected * LATENCY_RELATIVE_ERROR
        )

    def test_noWorkers(self) -> None:
        """
        Without answers, the answer is empty but valid.
        """
        self.assertEqual(mergeStats([]), {"status": "ok", "generation": 0, "sites": {}})

    def test_oneWorkerUnchanged(self) -> None:
        """
        The merge of one answer is that answer.
        """
        metrics = worker(pools=[(UP1, 1, 2)])
        traffic(metrics, 3, 0.01)
        health = {"healthy": True, "fails": 0, "passes": 2, "last_error": None}
        answer = statsAnswer(metrics, health=health)
        self.assertEqual(mergeStats([answer]), answer)

    def test_merged(self) -> None:
        """
        Counts and rates are summed, percentiles take the largest value,
        booleans and health come from the first worker, upstreams are
        merged by URL; the result is JSON-able.
        """
        one = worker(pools=[(UP1, 1, 2)])
        two = worker(pools=[(UP1, 3, 0)])
        traffic(one, 2, 0.01)
        traffic(two, 3, 0.2)
        first = {"healthy": False, "fails": 3, "passes": 0, "last_error": "HTTP 503"}
        second = {"healthy": True, "fails": 0, "passes": 5, "last_error": None}
        merged = mergeStats(
            [
                statsAnswer(one, down=True, health=first),
                statsAnswer(two, down=False, health=second),
            ]
        )
        self.assertEqual(json.loads(json.dumps(merged)), merged)
        self.assertEqual((merged["status"], merged["generation"]), ("ok", 1))
        self.assertNotIn("generations", merged)
        site = merged["sites"]["app"]
        self.assertEqual(
            site["requests_per_sec"], {"1s": 7.0, "10s": 0.7, "60s": 0.117}
        )
        self.assertEqual(site["in_flight"], 2)
        self.assertEqual(
            site["status"], {"1xx": 0, "2xx": 5, "3xx": 0, "4xx": 2, "5xx": 0}
        )
        self.assertEqual((site["rate_limited"], site["too_large"]), (2, 0))
        self.assertEqual(site["refused"]["429"], 2)
        self.assertEqual(site["access_denied"], {"address": 2})
        self.assertEqual(site["rate_limit_dry_run"], 2)
        latency = site["upstream_latency_ms"]
        self.assertEqual(latency["samples"], 5)
        self.assertNear(latency["p50"], 200)
        self.assertNear(latency["p99"], 200)
        self.assertEqual(
            site["upstreams"],
            [
                {
                    "url": UP1,
                    "down": True,
                    "health": first,
                    "pool": {"idle": 4, "active": 2},
                    "errors": {"connect": 2},
                },
                {"url": UP2, "down": True, "pool": None, "errors": {}},
            ],
        )

    def test_percentileOfWorkersWithOne(self) -> None:
        """
        A worker without upstream latencies (percentiles L{None}) does not
        hide the others'.
        """
        idle, busy = worker(), worker()
        traffic(busy, 1, 0.05)
        merged = mergeStats([statsAnswer(idle), statsAnswer(busy)])
        latency = merged["sites"]["app"]["upstream_latency_ms"]
        self.assertNear(latency["p99"], 50)
        self.assertEqual(latency["samples"], 1)
        both = mergeStats([statsAnswer(idle), statsAnswer(worker())])
        self.assertEqual(
            both["sites"]["app"]["upstream_latency_ms"],
            {"p50": None, "p99": None, "samples": 0},
        )

    def test_upstreamsByUrl(self) -> None:
        """
        Upstreams are merged by URL whatever their order in each answer; one
        only a worker has is kept.
        """
        answers: list[dict[str, Any]] = [
            {
                "status": "ok",
                "generation": 1,
                "sites": {
                    "app": {
                        "upstreams": [
                            {"url": UP1, "pool": {"idle": 1, "active": 0}},
                            {"url": UP2, "pool": {"idle": 2, "active": 0}},
                        ]
                    }
                },
            },
            {
                "status": "ok",
                "generation": 1,
                "sites": {
                    "app": {
                        "upstreams": [
                            {"url": "http://new", "pool": None},
                            {"url": UP2, "pool": {"idle": 10, "active": 1}},
                        ]
                    }
                },
            },
        ]
        self.assertEqual(
            mergeStats(answers)["sites"]["app"]["upstreams"],
            [
                {"url": UP1, "pool": {"idle": 1, "active": 0}},
                {"url": UP2, "pool": {"idle": 12, "active": 1}},
                {"url": "http://new", "pool": None},
            ],
        )

    def test_generations(self) -> None:
        """
        While workers serve different generations, the answer's is the
        oldest, and C{generations} lists them.
        """
        merged = mergeStats(
            [
                statsAnswer(worker(), 5),
                statsAnswer(worker(), 4),
                statsAnswer(worker(), 5),
            ]
        )
        self.assertEqual((merged["generation"], merged["generations"]), (4, [4, 5]))

    def test_sitesUnion(self) -> None:
        """
        A site only some workers have is kept; a site called C{health} is
        merged as any other, not taken from the first worker.
        """
        one = {"status": "ok", "generation": 1, "sites": {"health": {"in_flight": 1}}}
        two = {
            "status": "ok",
            "generation": 1,
            "sites": {"health": {"in_flight": 2}, "b": {"in_flight": 3}},
        }
        self.assertEqual(
            mergeStats([one, two])["sites"],
            {"health": {"in_flight": 3}, "b": {"in_flight": 3}},
        )

    def test_errors(self) -> None:
        """
        An answer that is not C{"ok"} is left out; when none is, the first
        is the answer.
        """
        error = {"status": "error", "message": "unknown site: app"}
        good = statsAnswer(worker())
        self.assertEqual(mergeStats([error, good]), good)
        self.assertEqual(mergeStats([error, {"status": "error"}]), error)


class MergeTunnelsTests(SynchronousTestCase):
    """
    L{mergeTunnels}: one admin C{tunnels} answer from the workers'.
    """

    def test_noWorkers(self) -> None:
        """
        Without answers, the answer is empty but valid.
        """
        self.assertEqual(
            mergeTunnels([]),
            {"status": "ok", "generation": 0, "total": 0, "sites": {}},
        )

    def test_merged(self) -> None:
        """
        Open tunnels, their counts by generation and their bytes are
        summed; the oldest's age is the largest; the generation the oldest.
        """
        answers: Sequence[dict[str, Any]] = [
            tunnelsAnswer(
                3,
                {
                    "app": SiteTunnels(2, {2: 1, 3: 1}, 40.5, 100, 200),
                    "idle": SiteTunnels(0, {}, None, 0, 0),
                },
            ),
            tunnelsAnswer(
                2,
                {
                    "app": SiteTunnels(1, {2: 1}, 90.0, 1, 2),
                    "idle": SiteTunnels(0, {}, None, 0, 0),
                    "ws": SiteTunnels(1, {2: 1}, 5.0, 7, 8),
                },
            ),
        ]
        self.assertEqual(
            mergeTunnels(answers),
            {
                "status": "ok",
                "generation": 2,
                "generations": [2, 3],
                "total": 4,
                "sites": {
                    "app": {
                        "open": 3,
                        "by_generation": {"2": 2, "3": 1},
                        "oldest_secs": 90.0,
                        "bytes_up": 101,
                        "bytes_down": 202,
                    },
                    "idle": {
                        "open": 0,
                        "by_generation": {},
                        "oldest_secs": None,
                        "bytes_up": 0,
                        "bytes_down": 0,
                    },
                    "ws": {
                        "open": 1,
                        "by_generation": {"2": 1},
                        "oldest_secs": 5.0,
                        "bytes_up": 7,
                        "bytes_down": 8,
                    },
                },
            },
        )

    def test_oneWorkerUnchanged(self) -> None:
        """
        The merge of one answer is that answer.
        """
        answer = tunnelsAnswer(1, {"app": SiteTunnels(2, {1: 2}, 3.5, 4, 5)})
        self.assertEqual(mergeTunnels([answer]), answer)
