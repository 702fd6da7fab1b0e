# -*- test-case-name: tests.test_metrics -*-
"""
Metrics: what C{/metrics} exposes to Prometheus and what the admin command
C{stats [SITE]} answers.  The ops listener that serves them is
L{revproxy.opslistener}.

How it works: docs/internals.md, "Metrics".
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import attrs
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

import revproxy
from revproxy.config import Upstream

if TYPE_CHECKING:
    from revproxy.proxy.tunnel import TunnelCounts

_log = Logger()

_T = TypeVar("_T")

STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
"""
The values of the C{code_class} label.  A status below 200 counts as
C{1xx}, one of 500 and above as C{5xx}.
"""

REFUSAL_CODES = (400, 408, 413, 414, 429, 431)
"""
The statuses counted as refusals (C{revproxy_refusals_total}) when the
proxy answers them itself.
"""

UPSTREAM_ERROR_KINDS = (
    "connect",
    "connect_timeout",
    "response_timeout",
    "reset",
    "protocol",
    "unavailable",
    "queue_timeout",
    "queue_full",
    "local",
)
"""
The values of the C{kind} label of C{revproxy_upstream_errors_total}; any
other kind is counted as C{"other"}, so the label stays bounded.
"""

DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
"""
Upper bounds, in seconds, of the buckets of both duration histograms (and
C{+Inf}): from 1 ms to the default C{response_timeout_secs}.
"""

WINDOW = 60
"""
Seconds of history kept per site for C{stats}: request rates over the last
1, 10 and 60 whole seconds, latency percentiles over the last 60 s.
"""

# Slots of the per-second ring: WINDOW whole seconds and the current one.
_RING = WINDOW + 1

LATENCY_GAMMA = 1.05
"""
The ratio between the bounds of two neighbouring buckets of the latency
histogram: bucket C{i} holds the latencies in C{(GAMMA ** (i - 1), GAMMA **
i]} seconds.
"""

LATENCY_RELATIVE_ERROR = (LATENCY_GAMMA - 1) / (LATENCY_GAMMA + 1)
"""
The bound on the relative error of a latency percentile in C{stats} (about
2.4%): a bucket answers with the value C{2 * GAMMA ** i / (GAMMA + 1)}, which
is within this fraction of every value the bucket holds.  Percentiles use
the nearest-rank definition, so p99 is within this error of the sample of
rank C{ceil(0.99 * n)}.  Latencies below L{LATENCY_MIN} or above
L{LATENCY_MAX} are counted as those bounds.
"""

LATENCY_MIN = 1e-5
"""
The smallest latency, in seconds, the percentiles tell apart (10 µs).
"""

LATENCY_MAX = 3600.0
"""
The largest latency, in seconds, the percentiles tell apart.
"""

_INV_LOG_GAMMA = 1.0 / math.log(LATENCY_GAMMA)
_MIN_INDEX = math.ceil(math.log(LATENCY_MIN) * _INV_LOG_GAMMA)
_MAX_INDEX = math.ceil(math.log(LATENCY_MAX) * _INV_LOG_GAMMA)

_REFUSALS = frozenset(REFUSAL_CODES)
_KINDS = frozenset(UPSTREAM_ERROR_KINDS)
_LE = [floatToGoString(bound) for bound in DURATION_BUCKETS] + ["+Inf"]
_BUILD_VERSION = str(getattr(revproxy, "__version__", "unknown"))


def _latencyIndex(seconds: float) -> int:
    """
    The latency-histogram bucket of C{seconds}.
    """
    if seconds <= LATENCY_MIN:
        return _MIN_INDEX
    index = math.ceil(math.log(seconds) * _INV_LOG_GAMMA)
    return index if index < _MAX_INDEX else _MAX_INDEX


def _latencyValue(index: int) -> float:
    """
    The value, in seconds, that latency-histogram bucket C{index} answers
    with: within L{LATENCY_RELATIVE_ERROR} of anything in it.
    """
    return 2.0 * LATENCY_GAMMA**index / (LATENCY_GAMMA + 1.0)


def _percentiles(
    counts: Mapping[int, int], quantiles: Iterable[float]
) -> list[float | None]:
    """
    Nearest-rank percentiles of samples counted by latency-histogram bucket.

    @param counts: how many samples each bucket holds.
    @param quantiles: the quantiles wanted, each in C{(0, 1]}, ascending.
    @return: one value in seconds per quantile, or L{None}s when there
        are no samples.
    """
    wanted = list(quantiles)
    total = sum(counts.values())
    if total == 0:
        return [None] * len(wanted)
    answers: list[float | None] = []
    seen = 0
    buckets = iter(sorted(counts.items()))
    index = _MIN_INDEX
    for q in wanted:
        rank = max(1, math.ceil(q * total - 1e-9))
        while seen < rank:
            index, count = next(buckets)
            seen += count
        answers.append(_latencyValue(index))
    return answers


class _SiteStats:
    """
    Everything counted for one site (the name C{""} is for requests that
    were never routed).

    @ivar inFlight: Requests started and not finished.
    @ivar classes: Finished requests by status class, C{1xx} first.
    @ivar refusals: Refusals by status.
    @ivar duration: Request durations by L{DURATION_BUCKETS} bucket, not
        cumulative, C{+Inf} last.
    @ivar durationSum: The sum of all request durations.
    @ivar upstream: Upstream response times by bucket, as C{duration}.
    @ivar upstreamSum: The sum of all upstream response times.
    @ivar dryRun: Requests a rate limit in dry-run mode would have refused.
    @ivar upstreamErrors: Upstream errors by C{(upstream, kind)}.
    @ivar second: The latest second the ring holds (C{int(clock.seconds())}).
    @ivar perSecond: Requests by second, at C{second % _RING}.
    @ivar latency: Upstream latencies by second, at C{second % _RING}: a
        count by latency-histogram bucket, or L{None} when there were none.
    @ivar retired: A reload removed this site while requests were in
        flight: it goes when the last one finishes.
    """

    __slots__ = (
        "classes",
        "dryRun",
        "duration",
        "durationSum",
        "inFlight",
        "latency",
        "perSecond",
        "refusals",
        "retired",
        "second",
        "upstream",
        "upstreamErrors",
        "upstreamSum",
    )

    def __init__(self, second: int) -> None:
        self.inFlight = 0
        self.classes = [0] * len(STATUS_CLASSES)
        self.refusals = dict.fromkeys(REFUSAL_CODES, 0)
        self.duration = [0] * (len(DURATION_BUCKETS) + 1)
        self.durationSum = 0.0
        self.upstream = [0] * (len(DURATION_BUCKETS) + 1)
        self.upstreamSum = 0.0
        self.dryRun = 0
        self.upstreamErrors: dict[tuple[str, str], int] = {}
        self.second = second
        self.perSecond = [0] * _RING
        self.latency: list[dict[int, int] | None] = [None] * _RING
        self.retired = False

    def advance(self, second: int) -> int:
        """
        Move the ring on to C{second}, emptying the slots of the seconds in
        between (all of them after a gap of a whole ring).

        @return: the second to count in: C{second}, or the ring's latest
            second if the clock went backwards.
        """
        last = self.second
        if second <= last:
            return last
        perSecond = self.perSecond
        latency = self.latency
        if second - last >= _RING:
            for slot in range(_RING):
                perSecond[slot] = 0
                latency[slot] = None
        else:
            for s in range(last + 1, second + 1):
                slot = s % _RING
                perSecond[slot] = 0
                latency[slot] = None
        self.second = second
        return second

    def rate(self, seconds: int) -> float:
        """
        Requests per second over the last C{seconds} whole seconds (the
        current second, still counting, is left out).
        """
        now = self.second
        total = sum(self.perSecond[s % _RING] for s in range(now - seconds, now))
        return round(total / seconds, 3)

    def latencyCounts(self) -> dict[int, int]:
        """
        Upstream latencies of the last L{WINDOW} seconds (the current one
        and those before it), by latency-histogram bucket.
        """
        merged: dict[int, int] = {}
        now = self.second
        for s in range(now - WINDOW + 1, now + 1):
            counts = self.latency[s % _RING]
            if counts is not None:
                for index, count in counts.items():
                    merged[index] = merged.get(index, 0) + count
        return merged


def _cumulative(counts: list[int]) -> list[tuple[str, float]]:
    """
    Histogram buckets for a metric family: C{(le, cumulative count)}.
    """
    buckets: list[tuple[str, float]] = []
    total = 0
    for le, count in zip(_LE, counts, strict=True):
        total += count
        buckets.append((le, total))
    return buckets


def _nothing() -> tuple[()]:
    return ()


def _zero() -> int:
    return 0


@attrs.frozen
class LiveSources:
    """
    Where L{Metrics} reads the values that are not counted as requests
    pass, but read as they are now: at scrape time and by L{Metrics.stats}.

    @ivar connections: Open client connections.
    @ivar connectionGate: C{(max_connections, counted, paused, pauses)}:
        the cap on connections, the connections it counts now (clients'
        and upstreams'), whether the listeners are paused at it, and how
        many times they were.
    @ivar generation: The config generation serving.
    @ivar certificates: C{(site, source, not_after)} for each certificate
        served; C{source} is C{"files"}, C{"acme"} or C{"placeholder"},
        C{not_after} in seconds since the epoch.  When a C{(site, source)}
        appears twice, the soonest expiry is exposed.
    @ivar upstreamHealth: C{(site, upstream url, healthy)} for every
        upstream of every site (C{True} when it has no health check and is
        not in back-off).
    @ivar poolSizes: C{(upstream url, idle, active)} for each upstream pool.
    @ivar trackedClients: How many buckets the rate limiter tracks.
    @ivar tunnels: Each site's tunnels (WebSocket and other Upgrades): open
        now, opened and closed (by reason) since start, bytes each way.
    """

    connections: Callable[[], int] = _zero
    connectionGate: Callable[[], tuple[int, int, bool, int]] | None = None
    generation: Callable[[], int] = _zero
    certificates: Callable[[], Iterable[tuple[str, str, float]]] = _nothing
    upstreamHealth: Callable[[], Iterable[tuple[str, str, bool]]] = _nothing
    poolSizes: Callable[[], Iterable[tuple[str, int, int]]] = _nothing
    trackedClients: Callable[[], int] = _zero
    tunnels: Callable[[], Iterable[TunnelCounts]] = _nothing


class Metrics:
    """
    Counters of the request path, and a prometheus_client collector that
    exposes them with the live values at scrape time.

    Each live value is a callable that the service assigns once it has
    what it reads; they are called at scrape time and by L{stats}, on the
    reactor thread.  One that raises is logged (once until it works again)
    and its metric left empty, so one broken source never breaks a scrape.

    @ivar registry: The registry to expose: this collector, and, when
        L{Metrics} made the registry, the process and platform collectors
        of prometheus_client (C{process_*}, C{python_info}).
    @ivar sources: where the live values come from.
    """

    def __init__(
        self,
        clock: IReactorTime,
        *,
        sources: LiveSources | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        """
        @param clock: where the time comes from, for the per-second windows.
        @param sources: the live values; none (zeros, empty lists) if not
            given.
        @param registry: the registry to register with; a new one, never
            prometheus_client's global C{REGISTRY}, if not given.
        """
        self._clock = clock
        self._sites: dict[str, _SiteStats] = {}
        self._reloads = {True: 0, False: 0}
        self._denied: dict[tuple[str, str], int] = {}
        self._failing: set[str] = set()
        self.sources = LiveSources() if sources is None else sources
        if registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
        self.registry = registry
        registry.register(self)

    def _site(self, site: str) -> _SiteStats:
        """
        The stats of C{site}, made if new.
        """
        stats = self._sites.get(site)
        if stats is None:
            stats = self._sites[site] = _SiteStats(int(self._clock.seconds()))
        return stats

    # -- the request path

    def requestStarted(self, site: str) -> None:
        """
        A request routed to C{site} (C{""} when not routed) began: one more
        in flight.
        """
        stats = self._sites.get(site)
        if stats is None:
            stats = self._site(site)
        stats.inFlight += 1

    def requestFinished(
        self,
        site: str,
        status: int,
        seconds: float,
        upstreamSeconds: float | None = None,
    ) -> None:
        """
        A request of C{site} that L{requestStarted} counted ended.

        Its status is counted by class, its duration observed.  A status of
        L{REFUSAL_CODES} is also counted as a refusal, unless the upstream
        answered it (C{upstreamSeconds} is given): an upstream's own 429 is
        not the proxy's refusal.

        @param status: the status sent (C{499} when the client left first).
        @param seconds: from the start of the request to its end.
        @param upstreamSeconds: from sending the request upstream to the
            upstream's response head, if one came.
        """
        stats = self._sites.get(site)
        if stats is None:
            stats = self._site(site)
        if stats.inFlight > 0:
            stats.inFlight -= 1
        now = int(self._clock.seconds())
        if now != stats.second:
            now = stats.advance(now)
        slot = now % _RING
        stats.perSecond[slot] += 1
        cls = status // 100 - 1
        stats.classes[cls if 0 <= cls < 5 else (0 if cls < 0 else 4)] += 1
        stats.duration[bisect_left(DURATION_BUCKETS, seconds)] += 1
        stats.durationSum += seconds
        if upstreamSeconds is None:
            if status in _REFUSALS:
                stats.refusals[status] += 1
        else:
            stats.upstream[bisect_left(DURATION_BUCKETS, upstreamSeconds)] += 1
            stats.upstreamSum += upstreamSeconds
            counts = stats.latency[slot]
            if counts is None:
                counts = stats.latency[slot] = {}
            index = _latencyIndex(upstreamSeconds)
            counts[index] = counts.get(index, 0) + 1
        if stats.retired and not stats.inFlight:
            del self._sites[site]

    def refused(self, site: str, code: int, seconds: float = 0.0) -> None:
        """
        A request was refused before it started (by the connection layer:
        400, 408, 413, 414, 431), never counted in flight.

        It counts as a request (status class, duration, rate) and as a
        refusal if C{code} is one of L{REFUSAL_CODES}.

        @param site: its site, or C{""} when not known.
        @param seconds: how long it took, C{0.0} when not known; observed
            anyway, so that each histogram's count equals
            C{revproxy_requests_total}.
        """
        stats = self._sites.get(site)
        if stats is None:
            stats = self._site(site)
        now = int(self._clock.seconds())
        if now != stats.second:
            now = stats.advance(now)
        stats.perSecond[now % _RING] += 1
        cls = code // 100 - 1
        stats.classes[cls if 0 <= cls < 5 else (0 if cls < 0 else 4)] += 1
        stats.duration[bisect_left(DURATION_BUCKETS, seconds)] += 1
        stats.durationSum += seconds
        if code in _REFUSALS:
            stats.refusals[code] += 1

    def rateLimitDryRun(self, site: str) -> None:
        """
        C{site}'s rate limit in dry-run mode would have refused a request.
        """
        self._site(site).dryRun += 1

    def upstreamError(self, site: str, upstream: str, kind: str) -> None:
        """
        A request of C{site} failed at C{upstream}.

        @param kind: one of L{UPSTREAM_ERROR_KINDS}; any other is counted
            as C{"other"}.
        """
        key = (upstream, kind if kind in _KINDS else "other")
        errors = self._site(site).upstreamErrors
        errors[key] = errors.get(key, 0) + 1

    # -- operations

    def accessDenied(self, site: str, reason: str) -> None:
        """
        A request to C{site} was refused by its access rules (C{reason}:
        C{"address"}, C{"basic_auth"}, C{"forward_auth"}).
        """
        key = (site, reason)
        self._denied[key] = self._denied.get(key, 0) + 1

    def reloaded(self, ok: bool) -> None:
        """
        A reload ended, applied (C{ok}) or not.
        """
        self._reloads[bool(ok)] += 1

    def retainSites(
        self,
        names: Collection[str],
        upstreams: Mapping[str, Collection[str]] | None = None,
    ) -> None:
        """
        Keep the stats and label sets of the sites in C{names} only (and of
        unrouted requests), after a reload: a removed site's series go.  A
        removed site with requests in flight stays until the last one ends.
        Sites of C{names} not seen yet are added, so they are exposed (with
        zeros) and known to C{stats} from the start.

        @param upstreams: if given, each site's upstream URLs: the error
            counters of upstreams a site no longer has go too.
        """
        keep = set(names)
        for name, stats in list(self._sites.items()):
            if name in keep or name == "":
                stats.retired = False
            elif stats.inFlight:
                stats.retired = True
            else:
                del self._sites[name]
        for name in keep:
            self._site(name)
        if upstreams is not None:
            for name, urls in upstreams.items():
                kept = self._sites.get(name)
                if kept is None:
                    continue
                current = set(urls)
                errors = kept.upstreamErrors
                for key in [key for key in errors if key[0] not in current]:
                    del errors[key]

    # -- the admin command "stats"

    def stats(self, site: str | None = None) -> dict[str, Any]:
        """
        Rates, requests in flight, statuses, refusals, upstream latency and
        upstreams, for the admin command C{stats [SITE]}.

        @param site: one site, or L{None} for all of them.
        @return: with C{site}, its stats; without, C{{"sites": {name:
            stats}}}.  JSON-able: refusal codes are strings.
        @raise KeyError: C{site} is not known.
        """
        if site is not None and site not in self._sites:
            raise KeyError(site)
        now = int(self._clock.seconds())
        health: dict[str, dict[str, bool]] = {}
        for name, url, healthy in self._live(
            "upstreamHealth", self.sources.upstreamHealth
        ):
            health.setdefault(name, {})[url] = bool(healthy)
        pools = {
            url: (idle, active)
            for url, idle, active in self._live("poolSizes", self.sources.poolSizes)
        }
        if site is not None:
            return self._siteStats(site, self._sites[site], now, health, pools)
        answer: dict[str, Any] = {
            "sites": {
                name: self._siteStats(name, self._sites[name], now, health, pools)
                for name in sorted(self._sites)
            }
        }
        connections: dict[str, Any] = {}
        for value in self._liveNumber("connections", self.sources.connections):
            connections["open"] = int(value)
        for limit, counted, paused, pauses in self._live("connectionGate", self._gate):
            connections.update(
                upstream=counted - connections.get("open", 0),
                max=limit,
                paused=paused,
                limit_reached=pauses,
            )
        answer["connections"] = connections
        return answer

    def _gate(self) -> Iterable[tuple[int, int, bool, int]]:
        """
        The connection cap's state, as one item, or none without a cap.
        """
        gate = self.sources.connectionGate
        return () if gate is None else (gate(),)

    def _siteStats(
        self,
        name: str,
        stats: _SiteStats,
        now: int,
        health: Mapping[str, Mapping[str, bool]],
        pools: Mapping[str, tuple[int, int]],
    ) -> dict[str, Any]:
        """
        The C{stats} answer for one site.
        """
        stats.advance(now)
        latency = stats.latencyCounts()
        p50, p99 = _percentiles(latency, (0.5, 0.99))
        siteHealth = health.get(name, {})
        urls = set(siteHealth) | {url for url, _ in stats.upstreamErrors}
        upstreams: dict[str, Any] = {}
        for url in sorted(urls):
            idle, active = pools.get(url, (None, None))
            upstreams[url] = {
                "healthy": siteHealth.get(url),
                "idle": idle,
                "active": active,
                "errors": {
                    kind: count
                    for (upstream, kind), count in sorted(stats.upstreamErrors.items())
                    if upstream == url
                },
            }
        return {
            "requests_per_sec": {
                "1s": stats.rate(1),
                "10s": stats.rate(10),
                "60s": stats.rate(60),
            },
            "in_flight": stats.inFlight,
            "status": dict(zip(STATUS_CLASSES, stats.classes, strict=True)),
            "rate_limited": stats.refusals[429],
            "too_large": stats.refusals[413],
            "refused": {str(code): n for code, n in stats.refusals.items()},
            "access_denied": {
                reason: count
                for (site, reason), count in sorted(self._denied.items())
                if site == name
            },
            "rate_limit_dry_run": stats.dryRun,
            "upstream_latency_ms": {
                "p50": None if p50 is None else round(p50 * 1000, 3),
                "p99": None if p99 is None else round(p99 * 1000, 3),
                "samples": sum(latency.values()),
            },
            "upstreams": upstreams,
        }

    # -- the prometheus_client collector

    def _live(self, name: str, source: Callable[[], Iterable[_T]]) -> list[_T]:
        """
        What the live-value callable C{source} yields now; nothing, logged,
        if it fails.
        """
        try:
            values = list(source())
        except Exception:
            if name not in self._failing:
                self._failing.add(name)
                _log.failure("Metrics: reading {name} failed", name=name)
            return []
        self._failing.discard(name)
        return values

    def _liveNumber(self, name: str, source: Callable[[], float]) -> list[float]:
        """
        The live number C{source} gives now, in a list; empty, logged, if it
        fails.
        """
        return self._live(name, lambda: (float(source()),))

    def describe(self) -> Iterator[Metric]:
        """
        The metric families L{collect} yields, without samples: how a
        registry learns their names.
        """
        return self._families()

    def collect(self) -> Iterator[Metric]:
        """
        Every metric family with its samples now.
        """
        families = self._families()
        requests = next(families)
        durations = next(families)
        upstreamTimes = next(families)
        inFlight = next(families)
        refusals = next(families)
        dryRun = next(families)
        upstreamErrors = next(families)
        for name in sorted(self._sites):
            stats = self._sites[name]
            site = [name]
            for cls, count in zip(STATUS_CLASSES, stats.classes, strict=True):
                requests.add_metric([name, cls], count)
            durations.add_metric(site, _cumulative(stats.duration), stats.durationSum)
            upstreamTimes.add_metric(
                site, _cumulative(stats.upstream), stats.upstreamSum
            )
            inFlight.add_metric(site, stats.inFlight)
            for code, count in stats.refusals.items():
                refusals.add_metric([name, str(code)], count)
            dryRun.add_metric(site, stats.dryRun)
            for (upstream, kind), count in sorted(stats.upstreamErrors.items()):
                upstreamErrors.add_metric([name, upstream, kind], count)
        yield from (
            requests,
            durations,
            upstreamTimes,
            inFlight,
            refusals,
            dryRun,
            upstreamErrors,
        )

        reloads = next(families)
        reloads.add_metric(["ok"], self._reloads[True])
        reloads.add_metric(["failed"], self._reloads[False])
        yield reloads

        connections = next(families)
        for value in self._liveNumber("connections", self.sources.connections):
            connections.add_metric([], value)
        yield connections

        limit, paused, pauses = next(families), next(families), next(families)
        for gate in self._live("connectionGate", self._gate):
            limit.add_metric([], gate[0])
            paused.add_metric([], 1.0 if gate[2] else 0.0)
            pauses.add_metric([], gate[3])
        yield from (limit, paused, pauses)

        generation = next(families)
        for value in self._liveNumber("generation", self.sources.generation):
            generation.add_metric([], value)
        yield generation

        certificates = next(families)
        expiries: dict[tuple[str, str], float] = {}
        for name, source, notAfter in self._live(
            "certificates", self.sources.certificates
        ):
            key = (name, source)
            expiries[key] = min(float(notAfter), expiries.get(key, math.inf))
        for key, notAfter in sorted(expiries.items()):
            certificates.add_metric(list(key), notAfter)
        yield certificates

        healthy = next(families)
        states: dict[tuple[str, str], bool] = {}
        for name, url, up in self._live("upstreamHealth", self.sources.upstreamHealth):
            key = (name, url)
            states[key] = bool(up) and states.get(key, True)
        for key, up in sorted(states.items()):
            healthy.add_metric(list(key), 1.0 if up else 0.0)
        yield healthy

        pool = next(families)
        sizes: dict[str, tuple[int, int]] = {}
        for url, idle, active in self._live("poolSizes", self.sources.poolSizes):
            oldIdle, oldActive = sizes.get(url, (0, 0))
            sizes[url] = (oldIdle + idle, oldActive + active)
        for url, (idle, active) in sorted(sizes.items()):
            pool.add_metric([url, "idle"], idle)
            pool.add_metric([url, "active"], active)
        yield pool

        tracked = next(families)
        for value in self._liveNumber("trackedClients", self.sources.trackedClients):
            tracked.add_metric([], value)
        yield tracked

        denied = next(families)
        for (deniedSite, reason), count in sorted(self._denied.items()):
            denied.add_metric([deniedSite, reason], count)
        yield denied

        tunnelsOpen = next(families)
        tunnelsOpened = next(families)
        tunnelsClosed = next(families)
        tunnelBytes = next(families)
        for counts in self._live("tunnels", self.sources.tunnels):
            tunnelsOpen.add_metric([counts.site], counts.open)
            tunnelsOpened.add_metric([counts.site], counts.opened)
            for reason, count in sorted(counts.closed.items()):
                tunnelsClosed.add_metric([counts.site, reason], count)
            tunnelBytes.add_metric([counts.site, "up"], counts.bytesUp)
            tunnelBytes.add_metric([counts.site, "down"], counts.bytesDown)
        yield tunnelsOpen
        yield tunnelsOpened
        yield tunnelsClosed
        yield tunnelBytes

        build = next(families)
        build.add_metric([], {"version": _BUILD_VERSION})
        yield build

    def _families(self) -> Iterator[Any]:
        """
        Every metric family, empty, in the order L{collect} fills them.
        """
        yield CounterMetricFamily(
            "revproxy_requests",
            "Requests answered, by site and status class.",
            labels=["site", "code_class"],
        )
        yield HistogramMetricFamily(
            "revproxy_request_duration_seconds",
            "Time from the start of a request to the end of its answer.",
            labels=["site"],
        )
        yield HistogramMetricFamily(
            "revproxy_upstream_response_seconds",
            "Time from sending a request upstream to the upstream's response head.",
            labels=["site"],
        )
        yield GaugeMetricFamily(
            "revproxy_in_flight_requests",
            "Requests being answered.",
            labels=["site"],
        )
        yield CounterMetricFamily(
            "revproxy_refusals",
            "Requests the proxy refused itself, by site and status.",
            labels=["site", "code"],
        )
        yield CounterMetricFamily(
            "revproxy_rate_limit_dry_run",
            "Requests a rate limit in dry-run mode would have refused.",
            labels=["site"],
        )
        yield CounterMetricFamily(
            "revproxy_upstream_errors",
            "Failed upstream exchanges, by site, upstream and kind.",
            labels=["site", "upstream", "kind"],
        )
        yield CounterMetricFamily(
            "revproxy_reloads",
            "Configuration reloads, by result.",
            labels=["result"],
        )
        yield GaugeMetricFamily(
            "revproxy_connections", "Open client connections.", labels=[]
        )
        yield GaugeMetricFamily(
            "revproxy_connections_max",
            "The cap on open connections, client and upstream (max_connections).",
            labels=[],
        )
        yield GaugeMetricFamily(
            "revproxy_listeners_paused",
            "Whether the listeners stopped accepting at max_connections (1) or not.",
            labels=[],
        )
        yield CounterMetricFamily(
            "revproxy_connection_limit_reached",
            "How many times the listeners stopped accepting at max_connections.",
            labels=[],
        )
        yield GaugeMetricFamily(
            "revproxy_config_generation",
            "The generation of the configuration serving.",
            labels=[],
        )
        yield GaugeMetricFamily(
            "revproxy_certificate_expiry_timestamp_seconds",
            "When a site's certificate expires, in seconds since the epoch.",
            labels=["site", "source"],
        )
        yield GaugeMetricFamily(
            "revproxy_upstream_healthy",
            "Whether an upstream of a site is healthy (1) or not (0).",
            labels=["site", "upstream"],
        )
        yield GaugeMetricFamily(
            "revproxy_upstream_pool_connections",
            "Connections to an upstream, by state.",
            labels=["upstream", "state"],
        )
        yield GaugeMetricFamily(
            "revproxy_rate_limit_tracked_clients",
            "Client buckets the rate limiter tracks.",
            labels=[],
        )
        yield CounterMetricFamily(
            "revproxy_access_denied",
            "Requests refused by access rules (401, 403, 429 after failed "
            "logins, or the forward-auth service's answer), by site and reason.",
            labels=["site", "reason"],
        )
        yield GaugeMetricFamily(
            "revproxy_tunnels_open",
            "Open tunnels (WebSocket and other Upgrades), by site.",
            labels=["site"],
        )
        yield CounterMetricFamily(
            "revproxy_tunnels_opened",
            "Tunnels opened, by site.",
            labels=["site"],
        )
        yield CounterMetricFamily(
            "revproxy_tunnels_closed",
            "Tunnels closed, by site and reason.",
            labels=["site", "reason"],
        )
        yield CounterMetricFamily(
            "revproxy_tunnel_bytes",
            "Bytes carried by tunnels, by site and direction (up: from "
            "clients, down: from upstreams).",
            labels=["site", "direction"],
        )
        yield InfoMetricFamily(
            "revproxy_build",
            "The revproxy version running.",
            labels=[],
        )


_K = TypeVar("_K")
_KeyIn = TypeVar("_KeyIn", contravariant=True)
_KeyOut = TypeVar("_KeyOut", covariant=True)


class PoolCounts(Protocol[_KeyIn]):
    """
    The upstream pool's counts (L{revproxy.proxy.pool.ConnectionPool}).
    """

    def idleCount(self, key: _KeyIn) -> int: ...

    def activeCount(self, key: _KeyIn) -> int: ...


class PooledRoute(Protocol[_KeyOut]):
    """
    A site's route, as far as its pools go
    (L{revproxy.proxy.forwarder.SiteRoute}).
    """

    @property
    def keys(self) -> Mapping[Upstream, _KeyOut]: ...


def poolSizes(
    pool: PoolCounts[_K], routes: Iterable[PooledRoute[_K]]
) -> list[tuple[str, int, int]]:
    """
    C{(upstream url, idle, active)} for every upstream of C{routes}, as
    L{LiveSources.poolSizes} and the admin C{stats} want them.
    """
    seen: dict[str, tuple[str, int, int]] = {}
    for route in routes:
        for upstream, key in route.keys.items():
            url = upstream.url
            if url not in seen:
                seen[url] = (url, pool.idleCount(key), pool.activeCount(key))
    return list(seen.values())
