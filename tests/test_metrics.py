"""
Tests for L{revproxy.metrics}: the counters, the exposition read back with
prometheus_client's own parsers, the C{stats} windows driven by a L{Clock},
and the ops listener's resource through a real L{Site}.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable
from typing import Any

import attrs
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import parser as openmetrics
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest

import revproxy
from revproxy.metrics import (
    DURATION_BUCKETS,
    LATENCY_MIN,
    LATENCY_RELATIVE_ERROR,
    REFUSAL_CODES,
    STATUS_CLASSES,
    Metrics,
)
from revproxy.opslistener import OpsResource, opsSite

SITE = "app"
UPSTREAM = "http://10.0.0.1:8000"

Labels = frozenset[tuple[str, str]]


def families(metrics: Metrics) -> dict[str, Metric]:
    """
    The metric families of C{metrics}' registry as a scraper reads them:
    exposed in the Prometheus text format and parsed back with
    prometheus_client's own parser.
    """
    text = generate_latest(metrics.registry).decode("utf-8")
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(metrics: Metrics, name: str) -> dict[Labels, float]:
    """
    The samples called C{name} in the exposition of C{metrics}, by labels.
    """
    found: dict[Labels, float] = {}
    for family in families(metrics).values():
        for sample in family.samples:
            if sample.name == name:
                found[frozenset(sample.labels.items())] = sample.value
    return found


def dummyRequest(path: bytes) -> Any:
    """
    A L{DummyRequest} for C{GET path}: it has no C{path} of its own, and is
    not typed as an L{IRequest}.
    """
    request: Any = DummyRequest(path.lstrip(b"/").split(b"/"))
    request.path = path
    return request


def labels(**values: str) -> Labels:
    """
    A label set, as L{samples} keys them.
    """
    return frozenset(values.items())


class CountingTests(SynchronousTestCase):
    """
    L{Metrics} counts what the request path reports, and exposes it.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = Metrics(self.clock)

    def finish(self, status: int, upstreamSeconds: float | None = None) -> None:
        """
        Start and finish one request of L{SITE} with C{status}.
        """
        self.metrics.requestStarted(SITE)
        self.metrics.requestFinished(SITE, status, 0.02, upstreamSeconds)

    def test_requestsByStatusClass(self) -> None:
        """
        Finished requests are counted by site and status class.
        """
        for status in (101, 200, 204, 301, 404, 404, 503):
            self.finish(status)
        self.assertEqual(
            samples(self.metrics, "revproxy_requests_total"),
            {
                labels(site=SITE, code_class="1xx"): 1,
                labels(site=SITE, code_class="2xx"): 2,
                labels(site=SITE, code_class="3xx"): 1,
                labels(site=SITE, code_class="4xx"): 2,
                labels(site=SITE, code_class="5xx"): 1,
            },
        )

    def test_oddStatusesClamped(self) -> None:
        """
        A status below 100 counts as C{1xx}, one of 600 or more as C{5xx}.
        """
        for status in (0, 99, 600, 999):
            self.finish(status)
        self.assertEqual(self.metrics.stats(SITE)["status"]["1xx"], 2)
        self.assertEqual(self.metrics.stats(SITE)["status"]["5xx"], 2)

    def test_durationHistogram(self) -> None:
        """
        Each request's duration is observed in its site's histogram; a
        bucket's bound is inclusive.
        """
        for seconds in (0.0005, 0.001, 0.3, 100.0):
            self.metrics.requestStarted(SITE)
            self.metrics.requestFinished(SITE, 200, seconds)
        buckets = {
            dict(key)["le"]: value
            for key, value in samples(
                self.metrics, "revproxy_request_duration_seconds_bucket"
            ).items()
        }
        self.assertEqual(len(buckets), len(DURATION_BUCKETS) + 1)
        self.assertEqual(buckets["0.001"], 2)
        self.assertEqual(buckets["0.25"], 2)
        self.assertEqual(buckets["0.5"], 3)
        self.assertEqual(buckets["60.0"], 3)
        self.assertEqual(buckets["+Inf"], 4)
        site = labels(site=SITE)
        self.assertEqual(
            samples(self.metrics, "revproxy_request_duration_seconds_count")[site], 4
        )
        self.assertAlmostEqual(
            samples(self.metrics, "revproxy_request_duration_seconds_sum")[site],
            100.3015,
        )

    def test_upstreamHistogram(self) -> None:
        """
        The upstream's response time is observed when given, and only then.
        """
        self.finish(200, 0.004)
        self.finish(200, 0.2)
        self.finish(502)
        site = labels(site=SITE)
        self.assertEqual(
            samples(self.metrics, "revproxy_upstream_response_seconds_count")[site],
            2,
        )
        self.assertAlmostEqual(
            samples(self.metrics, "revproxy_upstream_response_seconds_sum")[site],
            0.204,
        )
        buckets = samples(self.metrics, "revproxy_upstream_response_seconds_bucket")
        self.assertEqual(buckets[labels(site=SITE, le="0.0025")], 0)
        self.assertEqual(buckets[labels(site=SITE, le="0.005")], 1)
        self.assertEqual(buckets[labels(site=SITE, le="0.25")], 2)
        self.assertEqual(
            samples(self.metrics, "revproxy_request_duration_seconds_count")[site],
            3,
        )

    def test_inFlight(self) -> None:
        """
        Requests are in flight from L{Metrics.requestStarted} to
        L{Metrics.requestFinished}; more finishes than starts never make the
        gauge negative.
        """
        inFlight = "revproxy_in_flight_requests"
        self.metrics.requestStarted(SITE)
        self.metrics.requestStarted(SITE)
        self.assertEqual(samples(self.metrics, inFlight), {labels(site=SITE): 2})
        self.metrics.requestFinished(SITE, 200, 0.01)
        self.assertEqual(samples(self.metrics, inFlight), {labels(site=SITE): 1})
        self.assertEqual(self.metrics.stats(SITE)["in_flight"], 1)
        self.metrics.requestFinished(SITE, 200, 0.01)
        self.metrics.requestFinished(SITE, 200, 0.01)
        self.assertEqual(samples(self.metrics, inFlight), {labels(site=SITE): 0})

    def test_refusalsByCode(self) -> None:
        """
        The proxy's own 400, 408, 413, 414, 429 and 431 are counted as
        refusals by site and code; other statuses are not.
        """
        for status in (*REFUSAL_CODES, 429, 404, 421, 502):
            self.finish(status)
        refusals = samples(self.metrics, "revproxy_refusals_total")
        self.assertEqual(
            refusals,
            {
                labels(site=SITE, code=str(code)): 2 if code == 429 else 1
                for code in REFUSAL_CODES
            },
        )
        stats = self.metrics.stats(SITE)
        self.assertEqual(stats["rate_limited"], 2)
        self.assertEqual(stats["too_large"], 1)
        self.assertEqual(
            stats["refused"],
            {"400": 1, "408": 1, "413": 1, "414": 1, "429": 2, "431": 1},
        )

    def test_upstreamStatusIsNoRefusal(self) -> None:
        """
        A 429 or 413 that the upstream answered counts as a 4xx, not as the
        proxy's refusal.
        """
        self.finish(429, 0.01)
        self.finish(413, 0.01)
        self.assertEqual(
            set(samples(self.metrics, "revproxy_refusals_total").values()), {0}
        )
        self.assertEqual(self.metrics.stats(SITE)["status"]["4xx"], 2)

    def test_refused(self) -> None:
        """
        An early refusal counts as a request and as a refusal, with its
        duration, and is never in flight.
        """
        self.metrics.refused("", 431)
        self.metrics.refused(SITE, 408, 10.0)
        self.metrics.refused(SITE, 503)
        self.assertEqual(
            samples(self.metrics, "revproxy_in_flight_requests"),
            {labels(site=""): 0, labels(site=SITE): 0},
        )
        requests = samples(self.metrics, "revproxy_requests_total")
        self.assertEqual(requests[labels(site="", code_class="4xx")], 1)
        self.assertEqual(requests[labels(site=SITE, code_class="4xx")], 1)
        self.assertEqual(requests[labels(site=SITE, code_class="5xx")], 1)
        refusals = samples(self.metrics, "revproxy_refusals_total")
        self.assertEqual(refusals[labels(site="", code="431")], 1)
        self.assertEqual(refusals[labels(site=SITE, code="408")], 1)
        self.assertEqual(sum(refusals.values()), 2)
        self.assertEqual(
            samples(self.metrics, "revproxy_request_duration_seconds_count"),
            {labels(site=""): 1, labels(site=SITE): 2},
        )
        self.assertEqual(
            samples(self.metrics, "revproxy_request_duration_seconds_sum")[
                labels(site=SITE)
            ],
            10.0,
        )

    def test_rateLimitDryRun(self) -> None:
        """
        Would-be 429s of a rate limit in dry-run mode are counted by site.
        """
        self.metrics.rateLimitDryRun(SITE)
        self.metrics.rateLimitDryRun(SITE)
        self.assertEqual(
            samples(self.metrics, "revproxy_rate_limit_dry_run_total"),
            {labels(site=SITE): 2},
        )
        self.assertEqual(self.metrics.stats(SITE)["rate_limit_dry_run"], 2)

    def test_upstreamErrors(self) -> None:
        """
        Upstream errors are counted by site, upstream and kind; an unknown
        kind counts as C{other}.
        """
        self.metrics.upstreamError(SITE, UPSTREAM, "connect")
        self.metrics.upstreamError(SITE, UPSTREAM, "connect")
        self.metrics.upstreamError(SITE, UPSTREAM, "response_timeout")
        self.metrics.upstreamError(SITE, "", "unavailable")
        self.metrics.upstreamError(SITE, UPSTREAM, "tea kettle")
        self.assertEqual(
            samples(self.metrics, "revproxy_upstream_errors_total"),
            {
                labels(site=SITE, upstream=UPSTREAM, kind="connect"): 2,
                labels(site=SITE, upstream=UPSTREAM, kind="response_timeout"): 1,
                labels(site=SITE, upstream="", kind="unavailable"): 1,
                labels(site=SITE, upstream=UPSTREAM, kind="other"): 1,
            },
        )

    def test_reloads(self) -> None:
        """
        Reloads are counted by result, both results exposed from the start.
        """
        reloads = "revproxy_reloads_total"
        self.assertEqual(
            samples(self.metrics, reloads),
            {labels(result="ok"): 0, labels(result="failed"): 0},
        )
        self.metrics.reloaded(True)
        self.metrics.reloaded(True)
        self.metrics.reloaded(False)
        self.assertEqual(
            samples(self.metrics, reloads),
            {labels(result="ok"): 2, labels(result="failed"): 1},
        )

    def test_noCreatedSeries(self) -> None:
        """
        Counters and histograms expose no C{_created} series.
        """
        self.finish(200, 0.01)
        self.metrics.reloaded(True)
        text = generate_latest(self.metrics.registry).decode("utf-8")
        self.assertNotIn("_created", text)


class RetainSitesTests(SynchronousTestCase):
    """
    L{Metrics.retainSites} keeps the label sets of configured sites only.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = Metrics(self.clock)

    def sites(self, name: str = "revproxy_in_flight_requests") -> set[str]:
        """
        The sites exposed in metric C{name}.
        """
        return {dict(key)["site"] for key in samples(self.metrics, name)}

    def test_dropsRemovedSites(self) -> None:
        """
        The series and stats of a site that is gone are dropped; those of
        unrouted requests stay.
        """
        for site in ("a", "b", ""):
            self.metrics.requestStarted(site)
            self.metrics.requestFinished(site, 200, 0.01, 0.005)
        self.metrics.upstreamError("b", UPSTREAM, "reset")
        self.metrics.rateLimitDryRun("b")
        self.metrics.retainSites(["a"])
        for name in (
            "revproxy_requests_total",
            "revproxy_request_duration_seconds_count",
            "revproxy_upstream_response_seconds_count",
            "revproxy_in_flight_requests",
            "revproxy_refusals_total",
            "revproxy_rate_limit_dry_run_total",
        ):
            self.assertEqual(self.sites(name), {"a", ""}, name)
        self.assertEqual(samples(self.metrics, "revproxy_upstream_errors_total"), {})
        self.assertRaises(KeyError, self.metrics.stats, "b")
        self.assertEqual(set(self.metrics.stats()["sites"]), {"a", ""})

    def test_addsNewSites(self) -> None:
        """
        Configured sites are exposed with zeros before their first request.
        """
        self.metrics.retainSites(["a", "b"])
        self.assertEqual(self.sites(), {"a", "b"})
        self.assertEqual(
            samples(self.metrics, "revproxy_requests_total")[
                labels(site="b", code_class="2xx")
            ],
            0,
        )
        self.assertEqual(self.metrics.stats("b")["status"]["2xx"], 0)

    def test_keepsSiteUntilRequestsInFlightEnd(self) -> None:
        """
        A removed site with requests in flight stays until the last ends.
        """
        self.metrics.requestStarted("old")
        self.metrics.requestStarted("old")
        self.metrics.retainSites(["new"])
        self.assertEqual(self.sites(), {"old", "new"})
        self.metrics.requestFinished("old", 200, 0.01)
        self.assertEqual(self.metrics.stats("old")["in_flight"], 1)
        self.metrics.requestFinished("old", 200, 0.01)
        self.assertEqual(self.sites(), {"new"})

    def test_siteAddedBackKeepsCounting(self) -> None:
        """
        A site removed while busy and configured again before its requests
        ended is not dropped when they end.
        """
        self.metrics.requestStarted(SITE)
        self.metrics.retainSites([])
        self.metrics.retainSites([SITE])
        self.metrics.requestFinished(SITE, 200, 0.01)
        self.assertEqual(self.sites(), {SITE})
        self.assertEqual(self.metrics.stats(SITE)["status"]["2xx"], 1)

    def test_statsStartAgainForSiteAddedBack(self) -> None:
        """
        A site removed and added again counts from zero.
        """
        self.metrics.requestStarted(SITE)
        self.metrics.requestFinished(SITE, 200, 0.01)
        self.metrics.retainSites([])
        self.metrics.retainSites([SITE])
        self.assertEqual(self.metrics.stats(SITE)["status"]["2xx"], 0)

    def test_dropsErrorsOfRemovedUpstreams(self) -> None:
        """
        Given each site's upstreams, the error counters of upstreams a site
        no longer has are dropped.
        """
        other = "http://10.0.0.2:8000"
        self.metrics.upstreamError(SITE, UPSTREAM, "connect")
        self.metrics.upstreamError(SITE, other, "connect")
        self.metrics.retainSites([SITE], upstreams={SITE: [other]})
        self.assertEqual(
            samples(self.metrics, "revproxy_upstream_errors_total"),
            {labels(site=SITE, upstream=other, kind="connect"): 1},
        )


class LiveValuesTests(SynchronousTestCase):
    """
    The live values are read from their callables at scrape time.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = Metrics(self.clock)

    def test_defaults(self) -> None:
        """
        Before the callables are assigned, the gauges read zero or nothing.
        """
        for name in (
            "revproxy_connections",
            "revproxy_config_generation",
            "revproxy_rate_limit_tracked_clients",
        ):
            self.assertEqual(samples(self.metrics, name), {labels(): 0}, name)
        for name in (
            "revproxy_certificate_expiry_timestamp_seconds",
            "revproxy_upstream_healthy",
            "revproxy_upstream_pool_connections",
        ):
            self.assertEqual(samples(self.metrics, name), {}, name)
            self.assertIn(name, families(self.metrics))

    def test_connectionGate(self) -> None:
        """
        The cap on client connections, whether the listeners are paused at
        it and how many times they were; nothing without a cap.
        """
        names = (
            "revproxy_connections_max",
            "revproxy_listeners_paused",
            "revproxy_connection_limit_reached_total",
        )
        for name in names:
            self.assertEqual(samples(self.metrics, name), {}, name)
        state = [(819, 10, False, 0)]
        self.metrics.sources = attrs.evolve(
            self.metrics.sources, connectionGate=lambda: state[0]
        )
        self.assertEqual(
            [samples(self.metrics, name) for name in names],
            [{labels(): 819}, {labels(): 0}, {labels(): 0}],
        )
        state[0] = (819, 819, True, 2)
        self.assertEqual(
            [samples(self.metrics, name) for name in names],
            [{labels(): 819}, {labels(): 1}, {labels(): 2}],
        )

    def test_readAtScrapeTime(self) -> None:
        """
        Each scrape calls the callables again.
        """
        state = {"connections": 3, "generation": 7, "tracked": 12}
        healthy = {UPSTREAM: True}
        self.metrics.sources = attrs.evolve(
            self.metrics.sources, connections=lambda: state["connections"]
        )
        self.metrics.sources = attrs.evolve(
            self.metrics.sources, generation=lambda: state["generation"]
        )
        self.metrics.sources = attrs.evolve(
            self.metrics.sources, trackedClients=lambda: state["tracked"]
        )
        self.metrics.sources = attrs.evolve(
            self.metrics.sources,
            certificates=lambda: [
                (SITE, "acme", 1_800_000_000.0),
                ("other", "files", 1_700_000_000.0),
            ],
        )
        self.metrics.sources = attrs.evolve(
            self.metrics.sources,
            upstreamHealth=lambda: [(SITE, url, up) for url, up in healthy.items()],
        )
        self.metrics.sources = attrs.evolve(
            self.metrics.sources, poolSizes=lambda: [(UPSTREAM, 2, 5)]
        )
        self.assertEqual(samples(self.metrics, "revproxy_connections"), {labels(): 3})
        self.assertEqual(
            samples(self.metrics, "revproxy_config_generation"), {labels(): 7}
        )
        self.assertEqual(
            samples(self.metrics, "revproxy_rate_limit_tracked_clients"),
            {labels(): 12},
        )
        self.assertEqual(
            samples(self.metrics, "revproxy_certificate_expiry_timestamp_seconds"),
            {
                labels(site=SITE, source="acme"): 1_800_000_000.0,
                labels(site="other", source="files"): 1_700_000_000.0,
            },
        )
        self.assertEqual(
            samples(self.metrics, "revproxy_upstream_healthy"),
            {labels(site=SITE, upstream=UPSTREAM): 1},
        )
        self.assertEqual(
            samples(self.metrics, "revproxy_upstream_pool_connections"),
            {
                labels(upstream=UPSTREAM, state="idle"): 2,
                labels(upstream=UPSTREAM, state="active"): 5,
            },
        )
        state.update(connections=0, generation=8, tracked=0)
        healthy[UPSTREAM] = False
        self.assertEqual(samples(self.metrics, "revproxy_connections"), {labels(): 0})
        self.assertEqual(
            samples(self.metrics, "revproxy_config_generation"), {labels(): 8}
        )
        self.assertEqual(
            samples(self.metrics, "revproxy_upstream_healthy"),
            {labels(site=SITE, upstream=UPSTREAM): 0},
        )

    def test_duplicatesMerged(self) -> None:
        """
        A label set given twice is exposed once: the soonest certificate
        expiry, unhealthy if either says so, pool sizes summed.
        """
        self.metrics.sources = attrs.evolve(
            self.metrics.sources,
            certificates=lambda: [
                (SITE, "files", 2_000_000_000.0),
                (SITE, "files", 1_900_000_000.0),
            ],
        )
        self.metrics.sources = attrs.evolve(
            self.metrics.sources,
            upstreamHealth=lambda: [
                (SITE, UPSTREAM, True),
                (SITE, UPSTREAM, False),
            ],
        )
        self.metrics.sources = attrs.evolve(
            self.metrics.sources, poolSizes=lambda: [(UPSTREAM, 1, 2), (UPSTREAM, 3, 4)]
        )
        self.assertEqual(
            samples(self.metrics, "revproxy_certificate_expiry_timestamp_seconds"),
            {labels(site=SITE, source="files"): 1_900_000_000.0},
        )
        self.assertEqual(
            samples(self.metrics, "revproxy_upstream_healthy"),
            {labels(site=SITE, upstream=UPSTREAM): 0},
        )
        self.assertEqual(
            samples(self.metrics, "revproxy_upstream_pool_connections"),
            {
                labels(upstream=UPSTREAM, state="idle"): 4,
                labels(upstream=UPSTREAM, state="active"): 6,
            },
        )

    def test_failingSourceLoggedOnce(self) -> None:
        """
        A callable that raises leaves its metric empty and the rest of the
        scrape whole; it is logged once until it works again.
        """
        broken = [True]

        def connections() -> int:
            if broken[0]:
                raise RuntimeError("no tracker")
            return 4

        def certificates() -> Iterable[tuple[str, str, float]]:
            yield (SITE, "acme", 1.0)
            raise RuntimeError("store gone")

        self.metrics.sources = attrs.evolve(
            self.metrics.sources, connections=connections
        )
        self.metrics.sources = attrs.evolve(
            self.metrics.sources, certificates=certificates
        )
        self.metrics.sources = attrs.evolve(self.metrics.sources, generation=lambda: 2)
        self.assertEqual(samples(self.metrics, "revproxy_connections"), {})
        self.assertEqual(
            samples(self.metrics, "revproxy_certificate_expiry_timestamp_seconds"),
            {},
        )
        self.assertEqual(
            samples(self.metrics, "revproxy_config_generation"), {labels(): 2}
        )
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        families(self.metrics)
        self.assertEqual(self.flushLoggedErrors(RuntimeError), [])
        broken[0] = False
        self.assertEqual(samples(self.metrics, "revproxy_connections"), {labels(): 4})
        broken[0] = True
        families(self.metrics)
        # The certificates never worked: still not logged again.
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_buildInfo(self) -> None:
        """
        C{revproxy_build_info} carries the version.
        """
        self.assertEqual(
            samples(self.metrics, "revproxy_build_info"),
            {labels(version=revproxy.__version__): 1},
        )

    def test_tunnels(self) -> None:
        """
        Each site's tunnels: open now, opened and closed by reason since
        start, and bytes each way.
        """
        from revproxy.proxy.tunnel import TunnelCounts

        self.metrics.sources = attrs.evolve(
            self.metrics.sources,
            tunnels=lambda: [
                TunnelCounts(
                    site=SITE,
                    open=2,
                    opened=5,
                    closed={"client closed": 2, "idle timeout": 1},
                    bytesUp=100,
                    bytesDown=200,
                )
            ],
        )
        self.assertEqual(
            samples(self.metrics, "revproxy_tunnels_open"), {labels(site=SITE): 2}
        )
        self.assertEqual(
            samples(self.metrics, "revproxy_tunnels_opened_total"),
            {labels(site=SITE): 5},
        )
        self.assertEqual(
            samples(self.metrics, "revproxy_tunnels_closed_total"),
            {
                labels(site=SITE, reason="client closed"): 2,
                labels(site=SITE, reason="idle timeout"): 1,
            },
        )
        self.assertEqual(
            samples(self.metrics, "revproxy_tunnel_bytes_total"),
            {
                labels(site=SITE, direction="up"): 100,
                labels(site=SITE, direction="down"): 200,
            },
        )


class RegistryTests(SynchronousTestCase):
    """
    Which registry L{Metrics} exposes.
    """

    def test_ownRegistry(self) -> None:
        """
        Without a registry, L{Metrics} makes its own, never the global one,
        with the process and platform collectors.
        """
        metrics = Metrics(Clock())
        self.assertIsNot(metrics.registry, REGISTRY)
        self.assertIsNot(Metrics(Clock()).registry, metrics.registry)
        self.assertIn("python_info", families(metrics))
        self.assertIsNone(REGISTRY.get_sample_value("revproxy_connections"))

    def test_givenRegistry(self) -> None:
        """
        A given registry gets the revproxy metrics only; a second L{Metrics}
        in it is refused as a duplicate.
        """
        registry = CollectorRegistry()
        metrics = Metrics(Clock(), registry=registry)
        self.assertIs(metrics.registry, registry)
        self.assertEqual(registry.get_sample_value("revproxy_connections"), 0)
        self.assertNotIn("python_info", families(metrics))
        self.assertRaises(ValueError, Metrics, Clock(), registry=registry)

    def test_openMetrics(self) -> None:
        """
        The OpenMetrics exposition parses with prometheus_client's
        OpenMetrics parser.
        """
        metrics = Metrics(Clock(), registry=CollectorRegistry())
        metrics.requestStarted(SITE)
        metrics.requestFinished(SITE, 200, 0.01, 0.005)
        resource = OpsResource(metrics, lambda: False)
        request = dummyRequest(b"/metrics")
        request.requestHeaders.addRawHeader(
            b"accept", b"application/openmetrics-text; version=1.0.0"
        )
        body = resource.render(request)
        assert isinstance(body, bytes)
        self.assertTrue(body.endswith(b"# EOF\n"))
        parsed = {
            family.name: family
            for family in openmetrics.text_string_to_metric_families(
                body.decode("utf-8")
            )
        }
        self.assertEqual(parsed["revproxy_requests"].type, "counter")
        self.assertEqual(parsed["revproxy_build"].type, "info")
        values = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for s in parsed["revproxy_requests"].samples
        }
        self.assertEqual(
            values[
                ("revproxy_requests_total", (("code_class", "2xx"), ("site", SITE)))
            ],
            1,
        )


class WindowTests(SynchronousTestCase):
    """
    The request rates of C{stats} over 1, 10 and 60 whole seconds, as the
    clock moves.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = Metrics(self.clock)

    def requests(self, count: int, site: str = SITE) -> None:
        """
        Start and finish C{count} requests now.
        """
        for _ in range(count):
            self.metrics.requestStarted(site)
            self.metrics.requestFinished(site, 200, 0.01)

    def rates(self, site: str = SITE) -> dict[str, float]:
        return dict(self.metrics.stats(site)["requests_per_sec"])

    def test_wholeSeconds(self) -> None:
        """
        Rates are over whole seconds: the current one is left out until it
        ends.
        """
        self.requests(5)
        self.assertEqual(self.rates(), {"1s": 0, "10s": 0, "60s": 0})
        self.clock.advance(1)
        self.requests(3)
        self.clock.advance(0.5)
        self.assertEqual(self.rates(), {"1s": 5, "10s": 0.5, "60s": round(5 / 60, 3)})
        self.clock.advance(0.5)
        self.assertEqual(self.rates(), {"1s": 3, "10s": 0.8, "60s": round(8 / 60, 3)})

    def test_slidesOut(self) -> None:
        """
        Requests leave the 10 s window after 10 s and the 60 s one after
        60 s.
        """
        self.requests(10)
        self.clock.advance(10)
        self.assertEqual(self.rates()["10s"], 1)
        self.clock.advance(1)
        self.assertEqual(self.rates()["10s"], 0)
        self.assertEqual(self.rates()["60s"], round(10 / 60, 3))
        self.clock.advance(50)
        self.assertEqual(self.rates()["60s"], 0)

    def test_gapLongerThanWindow(self) -> None:
        """
        After more than 60 idle seconds every window is empty, and counting
        starts afresh.
        """
        self.clock.advance(0.5)
        self.requests(50)
        self.clock.advance(100)
        self.assertEqual(self.rates(), {"1s": 0, "10s": 0, "60s": 0})
        self.requests(2)
        self.clock.advance(1)
        self.assertEqual(self.rates(), {"1s": 2, "10s": 0.2, "60s": round(2 / 60, 3)})

    def test_gapOfExactlyTheRing(self) -> None:
        """
        Requests 61 s apart share a slot of the ring; the older one is gone.
        """
        self.requests(7)
        self.clock.advance(61)
        self.requests(1)
        self.clock.advance(1)
        self.assertEqual(self.rates(), {"1s": 1, "10s": 0.1, "60s": round(1 / 60, 3)})

    def test_gapShorterThanWindow(self) -> None:
        """
        Seconds skipped by a gap are emptied: a slot reused after the ring
        wrapped does not keep its old count.
        """
        self.requests(4)
        self.clock.advance(30)
        self.requests(6)
        self.clock.advance(31)
        self.requests(1)
        self.clock.advance(1)
        # now = 62: the 60 s window is seconds 2 to 61.
        self.assertEqual(self.rates()["60s"], round(7 / 60, 3))
        self.assertEqual(self.rates()["1s"], 1)

    def test_clockBackwards(self) -> None:
        """
        A clock that goes backwards counts in the latest second seen.
        """
        self.clock.advance(10)
        self.requests(1)
        self.clock.rightNow = 5.0
        self.requests(2)
        self.clock.rightNow = 11.0
        self.assertEqual(self.rates()["1s"], 3)

    def test_refusedCountsInRate(self) -> None:
        """
        Early refusals count in their site's rate.
        """
        self.metrics.refused("", 400)
        self.metrics.refused("", 408)
        self.clock.advance(1)
        self.assertEqual(self.rates("")["1s"], 2)

    def test_sitesApart(self) -> None:
        """
        Each site has its own windows.
        """
        self.requests(4, "a")
        self.requests(2, "b")
        self.clock.advance(1)
        self.assertEqual(self.rates("a")["1s"], 4)
        self.assertEqual(self.rates("b")["1s"], 2)


def nearestRank(values: list[float], q: float) -> float:
    """
    The nearest-rank C{q} percentile of C{values}.
    """
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered) - 1e-9)) - 1]


class LatencyTests(SynchronousTestCase):
    """
    The upstream latency percentiles of C{stats}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = Metrics(self.clock)

    def observe(self, seconds: Iterable[float]) -> None:
        for value in seconds:
            self.metrics.requestStarted(SITE)
            self.metrics.requestFinished(SITE, 200, value + 0.001, value)

    def latency(self) -> dict[str, float | None]:
        return dict(self.metrics.stats(SITE)["upstream_latency_ms"])

    def assertClose(self, approximate: float | None, exact: float) -> None:
        """
        C{approximate} milliseconds is within the stated relative error of
        C{exact} (and the rounding to a microsecond).
        """
        self.assertIsNotNone(approximate)
        assert approximate is not None
        bound = LATENCY_RELATIVE_ERROR * exact + 0.0005 + 1e-9
        self.assertTrue(
            abs(approximate - exact) <= bound,
            f"{approximate} ms is not within {bound} of {exact} ms",
        )

    def test_knownSamples(self) -> None:
        """
        Over 1 ms, 2 ms, ... 100 ms, p50 is 50 ms and p99 is 99 ms, within
        the error bound.
        """
        self.observe(n / 1000 for n in range(1, 101))
        latency = self.latency()
        self.assertEqual(latency["samples"], 100)
        self.assertClose(latency["p50"], 50)
        self.assertClose(latency["p99"], 99)

    def test_skewed(self) -> None:
        """
        One slow answer in a hundred shows in p99 only.
        """
        self.observe([0.002] * 99 + [3.0])
        latency = self.latency()
        self.assertClose(latency["p50"], 2)
        self.assertClose(latency["p99"], 2)
        self.observe([3.0])
        self.assertClose(self.latency()["p99"], 3000)

    def test_noSamples(self) -> None:
        """
        Without upstream answers, the percentiles are null.
        """
        self.metrics.requestStarted(SITE)
        self.metrics.requestFinished(SITE, 502, 0.01)
        self.assertEqual(self.latency(), {"p50": None, "p99": None, "samples": 0})

    def test_window(self) -> None:
        """
        Latencies count for 60 s: the current second and the 59 before it.
        """
        self.clock.advance(0.5)
        self.observe([0.01])
        self.clock.advance(30)
        self.observe([0.02, 0.02])
        self.clock.advance(29.4)
        self.assertEqual(self.latency()["samples"], 3)
        self.clock.advance(0.1)
        self.assertEqual(self.latency()["samples"], 2)
        self.assertClose(self.latency()["p50"], 20)
        self.clock.advance(100)
        self.assertEqual(self.latency(), {"p50": None, "p99": None, "samples": 0})

    def test_tinyLatencies(self) -> None:
        """
        Latencies below the smallest bucket (a zero from a test clock) are
        counted as that bucket.
        """
        self.observe([0.0, -1.0])
        latency = self.latency()
        self.assertEqual(latency["samples"], 2)
        self.assertClose(latency["p50"], LATENCY_MIN * 1000)

    @given(
        st.lists(
            st.floats(min_value=LATENCY_MIN, max_value=60.0),
            min_size=1,
            max_size=300,
        )
    )
    def test_errorBound(self, values: list[float]) -> None:
        """
        For any samples, p50 and p99 are within the stated relative error of
        the exact nearest-rank percentiles.
        """
        metrics = Metrics(Clock())
        for value in values:
            metrics.requestStarted(SITE)
            metrics.requestFinished(SITE, 200, value, value)
        latency = metrics.stats(SITE)["upstream_latency_ms"]
        self.assertEqual(latency["samples"], len(values))
        self.assertClose(latency["p50"], nearestRank(values, 0.5) * 1000)
        self.assertClose(latency["p99"], nearestRank(values, 0.99) * 1000)


class StatsTests(SynchronousTestCase):
    """
    L{Metrics.stats}, the answer of the admin command C{stats [SITE]}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = Metrics(self.clock)
        self.metrics.retainSites(["b", "a"])

    def test_allSites(self) -> None:
        """
        Without a site, every site's stats, by name; JSON-able.
        """
        self.metrics.requestStarted("a")
        self.metrics.requestStarted("b")
        self.metrics.requestFinished("b", 200, 0.01, 0.008)
        self.metrics.refused("", 414)
        answer = self.metrics.stats()
        self.assertEqual(list(answer), ["sites", "connections"])
        self.assertEqual(list(answer["sites"]), ["", "a", "b"])
        self.assertEqual(json.loads(json.dumps(answer, allow_nan=False)), answer)
        self.assertEqual(answer["sites"]["a"]["in_flight"], 1)
        self.assertEqual(answer["sites"][""]["refused"]["414"], 1)

    def test_connections(self) -> None:
        """
        Without a site, the open client connections, the upstream ones the
        cap counts too, the cap, whether the listeners are paused at it,
        and how many times they were.
        """
        self.metrics.sources = attrs.evolve(
            self.metrics.sources, connections=lambda: 12
        )
        self.assertEqual(self.metrics.stats()["connections"], {"open": 12})
        self.metrics.sources = attrs.evolve(
            self.metrics.sources, connectionGate=lambda: (819, 20, True, 3)
        )
        self.assertEqual(
            self.metrics.stats()["connections"],
            {"open": 12, "upstream": 8, "max": 819, "paused": True, "limit_reached": 3},
        )

    def test_accessDenied(self) -> None:
        """
        Requests refused by access rules are counted by site and reason, in
        C{stats} and in C{revproxy_access_denied_total}.
        """
        self.metrics.requestStarted("a")
        self.metrics.accessDenied("a", "basic_auth")
        self.metrics.accessDenied("a", "basic_auth")
        self.metrics.accessDenied("a", "address")
        self.assertEqual(
            self.metrics.stats("a")["access_denied"], {"address": 1, "basic_auth": 2}
        )
        self.assertEqual(
            samples(self.metrics, "revproxy_access_denied_total"),
            {
                labels(site="a", reason="address"): 1,
                labels(site="a", reason="basic_auth"): 2,
            },
        )

    def test_oneSite(self) -> None:
        """
        With a site, that site's stats: the shape the admin command answers.
        """
        self.metrics.requestStarted("a")
        self.metrics.requestFinished("a", 429, 0.001)
        self.metrics.requestStarted("a")
        self.metrics.requestFinished("a", 200, 0.01, 0.008)
        self.clock.advance(1)
        answer = self.metrics.stats("a")
        self.assertEqual(answer, self.metrics.stats()["sites"]["a"])
        latency = answer.pop("upstream_latency_ms")
        self.assertEqual(latency["samples"], 1)
        self.assertEqual(
            answer,
            {
                "requests_per_sec": {"1s": 2, "10s": 0.2, "60s": 0.033},
                "in_flight": 0,
                "status": {"1xx": 0, "2xx": 1, "3xx": 0, "4xx": 1, "5xx": 0},
                "rate_limited": 1,
                "too_large": 0,
                "refused": {
                    "400": 0,
                    "408": 0,
                    "413": 0,
                    "414": 0,
                    "429": 1,
                    "431": 0,
                },
                "access_denied": {},
                "rate_limit_dry_run": 0,
                "upstreams": {},
            },
        )
        self.assertEqual(set(answer["status"]), set(STATUS_CLASSES))

    def test_unknownSite(self) -> None:
        """
        A site that is not known raises L{KeyError}.
        """
        self.assertRaises(KeyError, self.metrics.stats, "nope")

    def test_upstreams(self) -> None:
        """
        Each site lists its upstreams with their health, pool sizes and
        errors.
        """
        other = "http://10.0.0.2:8000"
        self.metrics.sources = attrs.evolve(
            self.metrics.sources,
            upstreamHealth=lambda: [
                ("a", UPSTREAM, True),
                ("a", other, False),
                ("b", other, True),
            ],
        )
        self.metrics.sources = attrs.evolve(
            self.metrics.sources, poolSizes=lambda: [(UPSTREAM, 3, 1)]
        )
        self.metrics.upstreamError("a", other, "connect_timeout")
        self.metrics.upstreamError("b", "", "unavailable")
        self.assertEqual(
            self.metrics.stats("a")["upstreams"],
            {
                UPSTREAM: {"healthy": True, "idle": 3, "active": 1, "errors": {}},
                other: {
                    "healthy": False,
                    "idle": None,
                    "active": None,
                    "errors": {"connect_timeout": 1},
                },
            },
        )
        self.assertEqual(
            self.metrics.stats("b")["upstreams"],
            {
                "": {
                    "healthy": None,
                    "idle": None,
                    "active": None,
                    "errors": {"unavailable": 1},
                },
                other: {"healthy": True, "idle": None, "active": None, "errors": {}},
            },
        )


class Response:
    """
    An HTTP response as read from the wire.

    @ivar code: The status.
    @ivar headers: Header values by lower-case name.
    @ivar body: What followed the head.
    """

    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.code = int(lines[0].split()[1])
        self.headers: dict[bytes, list[bytes]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            self.headers.setdefault(name.strip().lower(), []).append(value.strip())

    def header(self, name: bytes) -> bytes:
        """
        The one value of header C{name}.
        """
        values = self.headers[name]
        assert len(values) == 1, values
        return values[0]


class OpsResourceTests(SynchronousTestCase):
    """
    L{OpsResource} served by L{opsSite}, driven through Twisted's HTTP
    parser with a L{StringTransport}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = Metrics(self.clock, registry=CollectorRegistry())
        self.draining = False
        self.site = opsSite(self.metrics, lambda: self.draining, self.clock)

    def get(
        self, path: bytes, method: bytes = b"GET", headers: bytes = b""
    ) -> Response:
        """
        Send one request on a new connection and read the answer.
        """
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 51234))
        assert channel is not None
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(
            method
            + b" "
            + path
            + b" HTTP/1.1\r\nHost: localhost:9901\r\n"
            + headers
            + b"\r\n"
        )
        raw = transport.value()
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        return Response(raw)

    def test_healthz(self) -> None:
        """
        While serving, C{/healthz} answers 200 C{{"status": "ok"}} as JSON,
        not to be cached.
        """
        response = self.get(b"/healthz")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header(b"content-type"), b"application/json")
        self.assertEqual(response.header(b"cache-control"), b"no-store")
        self.assertEqual(json.loads(response.body), {"status": "ok"})
        self.assertEqual(int(response.header(b"content-length")), len(response.body))

    def test_healthzDraining(self) -> None:
        """
        Once draining, C{/healthz} answers 503 C{{"status": "draining"}}.
        """
        self.assertEqual(self.get(b"/healthz").code, 200)
        self.draining = True
        response = self.get(b"/healthz")
        self.assertEqual(response.code, 503)
        self.assertEqual(response.header(b"content-type"), b"application/json")
        self.assertEqual(json.loads(response.body), {"status": "draining"})

    def test_healthzQueryIgnored(self) -> None:
        """
        A query string does not change the path.
        """
        self.assertEqual(self.get(b"/healthz?probe=1").code, 200)

    def test_metrics(self) -> None:
        """
        C{/metrics} answers the Prometheus text format with its content
        type, and the values read back.
        """
        self.metrics.sources = attrs.evolve(self.metrics.sources, connections=lambda: 9)
        self.metrics.requestStarted(SITE)
        self.metrics.requestFinished(SITE, 204, 0.003, 0.002)
        response = self.get(b"/metrics")
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.header(b"content-type"),
            b"text/plain; version=0.0.4; charset=utf-8",
        )
        self.assertEqual(response.header(b"cache-control"), b"no-store")
        parsed = {
            family.name: family
            for family in text_string_to_metric_families(response.body.decode("utf-8"))
        }
        self.assertEqual(parsed["revproxy_connections"].samples[0].value, 9)
        requests = {
            tuple(sorted(s.labels.items())): s.value
            for s in parsed["revproxy_requests"].samples
        }
        self.assertEqual(requests[(("code_class", "2xx"), ("site", SITE))], 1)

    def test_metricsOpenMetrics(self) -> None:
        """
        A client that accepts OpenMetrics (as Prometheus does) gets it.
        """
        response = self.get(
            b"/metrics",
            headers=b"Accept: application/openmetrics-text;version=1.0.0;q=0.6,"
            b"text/plain;version=0.0.4;q=0.3\r\n",
        )
        self.assertEqual(response.code, 200)
        self.assertTrue(
            response.header(b"content-type").startswith(
                b"application/openmetrics-text; version=1.0.0"
            )
        )
        self.assertTrue(response.body.endswith(b"# EOF\n"))
        names = {
            family.name
            for family in openmetrics.text_string_to_metric_families(
                response.body.decode("utf-8")
            )
        }
        self.assertIn("revproxy_requests", names)

    def test_notFound(self) -> None:
        """
        Any other path is 404, in plain text.
        """
        for path in (b"/", b"/healthz/", b"/metrics/x", b"/favicon.ico"):
            response = self.get(path)
            self.assertEqual(response.code, 404, path)
            self.assertEqual(
                response.header(b"content-type"), b"text/plain; charset=utf-8"
            )
            self.assertEqual(response.header(b"cache-control"), b"no-store")
        self.assertEqual(self.get(b"/nope", b"POST").code, 404)

    def test_methodNotAllowed(self) -> None:
        """
        Methods other than GET and HEAD are 405, with C{Allow}.
        """
        for method in (b"POST", b"PUT", b"DELETE", b"OPTIONS"):
            for path in (b"/healthz", b"/metrics"):
                response = self.get(path, method)
                self.assertEqual(response.code, 405, (method, path))
                self.assertEqual(response.header(b"allow"), b"GET, HEAD")

    def test_head(self) -> None:
        """
        C{HEAD} answers as C{GET} does, without the body (and without
        Twisted's warning about a body to eat).
        """
        events = EventLoggingObserver()
        globalLogPublisher.addObserver(events)
        self.addCleanup(globalLogPublisher.removeObserver, events)
        for path in (b"/healthz", b"/metrics", b"/nope"):
            get = self.get(path)
            head = self.get(path, b"HEAD")
            self.assertEqual(head.code, get.code)
            self.assertEqual(head.body, b"")
            self.assertEqual(head.header(b"content-type"), get.header(b"content-type"))
            self.assertEqual(
                head.header(b"content-length"), get.header(b"content-length")
            )
        self.draining = True
        self.assertEqual(self.get(b"/healthz", b"HEAD").code, 503)
        self.assertEqual(len(events), 0)

    def test_noAccessLog(self) -> None:
        """
        The ops site writes no access log line.
        """
        self.site.doStart()
        self.addCleanup(self.site.doStop)
        log = io.StringIO()
        self.site.logFile = log
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 51234))
        assert channel is not None
        channel.makeConnection(StringTransport())
        channel.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(log.getvalue(), "")

    def test_idleTimeoutOnGivenReactor(self) -> None:
        """
        The site times idle connections out on the reactor it was given.
        """
        self.assertIsInstance(self.site, Site)
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 51234))
        assert channel is not None
        transport = StringTransport()
        channel.makeConnection(transport)
        assert self.site.timeOut is not None
        self.clock.advance(self.site.timeOut)
        self.assertTrue(transport.disconnecting)
        channel.connectionLost(Failure(ConnectionDone()))

    def test_dummyRequest(self) -> None:
        """
        Rendered directly, the resource sets its headers and gives the body.
        """
        resource = OpsResource(self.metrics, lambda: False)
        request = dummyRequest(b"/healthz")
        body = resource.render(request)
        assert isinstance(body, bytes)
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(json.loads(body), {"status": "ok"})
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"cache-control"), [b"no-store"]
        )
