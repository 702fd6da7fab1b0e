# -*- test-case-name: tests.test_aggregate -*-
"""
What the supervisor shows of its workers (C{workers = N}): one C{/metrics}
exposition and one admin C{stats} and C{tunnels} answer, merged from each
worker's own.  Pure functions: the supervisor asks, these merge.

C{/metrics} (L{mergeExpositions}):

  - counters, histograms (buckets, C{_sum}, C{_count}), summaries and
    gauges: samples of the same name and labels are summed across workers
    (so C{revproxy_listeners_paused} counts the workers paused at
    C{max_connections});
  - except the gauges of L{SHARED_GAUGES}, which describe the
    configuration or state every worker shares, not its traffic: the
    largest value is taken;
  - open client connections are also shown per worker, as the gauge
    C{revproxy_worker_connections{worker="1"}}, next to the summed
    C{revproxy_connections}: an uneven spread of connections between
    workers is what a sum hides and an operator needs to see.  Nothing
    else gets a C{worker} label: the per-worker detail of the other
    families is noise next to the fleet's total;
  - the C{process_*} families of prometheus_client are summed too (all the
    workers' memory, CPU time, open files), except the two of
    L{SHARED_GAUGES};
  - a worker whose exposition cannot be parsed is left out, logged.

Admin C{stats} (L{mergeStats}) and C{tunnels} (L{mergeTunnels}), merged
field by field, recursively:

  - numbers that count or rate (requests, rates, in flight, status
    classes, refusals, errors, pool sizes, tunnels and their bytes) are
    summed;
  - the latency percentiles C{p50}, C{p99} and the age C{oldest_secs} take
    the largest value of the workers that have one: for the percentiles an
    upper bound, not the fleet's percentile, which cannot be made from the
    workers' percentiles;
  - booleans, strings and an upstream's C{health} (its checks' state, the
    same in every worker) come from the first worker that has them;
  - lists of upstreams (dicts with a C{url}) are merged upstream by
    upstream, by URL;
  - C{generation} is the oldest one serving; C{generations} lists the
    distinct ones only while workers serve different generations (during a
    reload);
  - answers that are not C{"ok"} (a worker that does not know the site yet)
    are left out; when no answer is C{"ok"}, the first is the answer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from prometheus_client.samples import Sample
from twisted.logger import Logger

_log = Logger()

SHARED_GAUGES = frozenset(
    {
        # Every worker loads the same configuration file: the same generation
        # once a reload is through (the largest while one is underway).
        "revproxy_config_generation",
        # max_connections, from the configuration.
        "revproxy_connections_max",
        # Every worker serves the same certificate files and ACME state.
        "revproxy_certificate_expiry_timestamp_seconds",
        # 1 or 0 per upstream: a sum would count workers, not upstreams.
        "revproxy_upstream_healthy",
        # The version running (an info family: 1 per version), the same binary.
        "revproxy_build_info",
        # The interpreter (1 per version), the same in every worker.
        "python_info",
        # The limit on open files, inherited from the supervisor.
        "process_max_fds",
        # A timestamp: a sum means nothing; the largest is the latest start.
        "process_start_time_seconds",
        # The fleet's limiting processes, counted in Redis: every worker
        # reads the same count.
        "revproxy_cluster_limiting_processes",
    }
)
"""
The gauges that are the same in every worker, because they describe the
configuration or shared state rather than the worker's traffic: merged by
taking the largest value, not the sum.
"""

CONNECTIONS = "revproxy_connections"
"""
The family of open client connections, also shown per worker.
"""

WORKER_CONNECTIONS = "revproxy_worker_connections"
"""
The family of open client connections by worker (label C{worker}).
"""

# Fields of stats and tunnels answers merged by their largest value: the
# latency percentiles, the oldest tunnel's age, and the connection cap
# (max_connections, in Metrics.stats() without a site).
_MAX_FIELDS = frozenset({"p50", "p99", "oldest_secs", "max"})

# Fields taken whole from the first worker that has them: an upstream's
# health-check state (its consecutive fails and passes are not counts to sum).
_FIRST_FIELDS = frozenset({"health"})

_SampleKey = tuple[str, tuple[tuple[str, str], ...]]


class _Family:
    """
    One metric family being merged: its samples by name and labels.

    @ivar shared: whether it is one of L{SHARED_GAUGES} (merged by max).
    """

    def __init__(self, name: str, documentation: str, typ: str, unit: str) -> None:
        self.name = name
        self.documentation = documentation
        self.typ = typ
        self.unit = unit
        self.shared = typ == "gauge" and name in SHARED_GAUGES
        self.samples: dict[_SampleKey, Sample] = {}

    def add(self, samples: Iterable[Sample]) -> None:
        """
        Merge C{samples} (of one worker) into this family's.
        """
        for sample in samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            old = self.samples.get(key)
            value = sample.value
            if old is not None:
                value = max(old.value, value) if self.shared else old.value + value
            self.samples[key] = Sample(sample.name, dict(sample.labels), value)

    def metric(self) -> Metric:
        """
        The merged family, to expose.
        """
        metric = Metric(self.name, self.documentation, self.typ, self.unit)
        metric.samples = list(self.samples.values())
        return metric


class _Fixed:
    """
    A collector of metric families made once.
    """

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        """
        The families, the same at every scrape.
        """
        return iter(self._families)


def _parse(worker: str, text: str) -> list[Metric] | None:
    """
    The metric families of one worker's exposition, or L{None}, logged, if
    it cannot be parsed.
    """
    try:
        return list(text_string_to_metric_families(text))
    except Exception as e:
        _log.warn(
            "Metrics of worker {worker} could not be parsed, left out: {error}",
            worker=worker,
            error=repr(e),
        )
        return None


def _family(merged: dict[str, _Family], metric: Metric) -> _Family:
    """
    The merged family of C{metric}'s name, made (like C{metric}) if new.
    """
    family = merged.get(metric.name)
    if family is None:
        family = merged[metric.name] = _Family(
            metric.name, metric.documentation, metric.type, metric.unit
        )
    return family


def _perWorker(worker: str, connections: Metric) -> Metric:
    """
    The samples of C{connections} of one worker, labelled with the worker.
    """
    metric = Metric(WORKER_CONNECTIONS, "Open client connections, by worker.", "gauge")
    for sample in connections.samples:
        metric.add_sample(
            WORKER_CONNECTIONS, {**sample.labels, "worker": worker}, sample.value
        )
    return metric


def mergeExpositions(texts: Sequence[tuple[str, str]]) -> CollectorRegistry:
    """
    One registry exposing the metrics of every worker, merged (see the
    module's docstring for how).

    @param texts: C{(worker, exposition)} for each worker that answered:
        its index (C{"1"}, C{"2"}, ...) and its registry in the Prometheus
        text format (0.0.4).  One that cannot be parsed is left out.
    @return: a registry (C{auto_describe=False}) of one collector, which
        C{prometheus_client.exposition.choose_encoder} encodes; empty
        without workers.
    """
    merged: dict[str, _Family] = {}
    for worker, text in texts:
        for metric in _parse(worker, text) or ():
            _family(merged, metric).add(metric.samples)
            if metric.name == CONNECTIONS and metric.type == "gauge":
                perWorker = _perWorker(worker, metric)
                _family(merged, perWorker).add(perWorker.samples)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed([family.metric() for family in merged.values()]))
    return registry


def _isNumber(value: object) -> bool:
    """
    Whether C{value} is a number (a L{bool} is not).
    """
    return isinstance(value, int | float) and not isinstance(value, bool)


def _sum(numbers: Sequence[int | float]) -> int | float:
    """
    The sum of C{numbers}: an L{int} if they all are, else a L{float}
    without the noise of binary fractions (C{0.1 + 0.2} is C{0.3}).
    """
    if all(isinstance(n, int) for n in numbers):
        return sum(numbers)
    return round(math.fsum(numbers), 6)


def _isUpstreamList(lists: list[Any]) -> bool:
    """
    Whether C{lists} are all lists of dicts with a C{url}.
    """
    return all(
        isinstance(items, list)
        and all(isinstance(item, Mapping) and "url" in item for item in items)
        for items in lists
    )


def _mergeByUrl(lists: list[list[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """
    Lists of upstreams merged upstream by upstream, in the order their URLs
    first appear.
    """
    byUrl: dict[Any, list[Mapping[str, Any]]] = {}
    for items in lists:
        for item in items:
            byUrl.setdefault(item["url"], []).append(item)
    return [_mergeFields(same) for same in byUrl.values()]


def _mergeFields(mappings: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """
    Dicts merged key by key, with the keys in the order they first appear.
    """
    keys = dict.fromkeys(key for mapping in mappings for key in mapping)
    return {
        key: _mergeValue(key, [m[key] for m in mappings if key in m]) for key in keys
    }


def _mergeValue(key: str, values: list[Any]) -> Any:
    """
    The merge of the values of field C{key} of the workers' answers.
    """
    present = [value for value in values if value is not None]
    if not present:
        return None
    first = present[0]
    if key in _FIRST_FIELDS or isinstance(first, bool | str):
        return first
    if _isNumber(first):
        numbers = [value for value in present if _isNumber(value)]
        return max(numbers) if key in _MAX_FIELDS else _sum(numbers)
    if isinstance(first, Mapping):
        return _mergeFields([value for value in present if isinstance(value, Mapping)])
    if _isUpstreamList(present):
        return _mergeByUrl(present)
    return first


def _okAnswers(answers: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """
    The answers whose status is C{"ok"}.
    """
    return [answer for answer in answers if answer.get("status") == "ok"]


def _header(answers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """
    The status and generation of a merged answer: the oldest generation,
    and all of them when they differ.
    """
    generations = sorted({int(answer.get("generation", 0)) for answer in answers})
    header: dict[str, Any] = {"status": "ok", "generation": min(generations, default=0)}
    if len(generations) > 1:
        header["generations"] = generations
    return header


def _mergeSites(answers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """
    The C{sites} of the answers merged site by site.  Site names are not
    fields: a site called C{health} is merged like any other.
    """
    sites = [answer.get("sites") or {} for answer in answers]
    names = dict.fromkeys(name for each in sites for name in each)
    return {
        name: _mergeFields([each[name] for each in sites if name in each])
        for name in names
    }


def mergeStats(answers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """
    One admin C{stats} answer made from the workers' (see the module's
    docstring for how).

    @param answers: each worker's answer (L{revproxy.admin.AdminFactory.stats}).
    @return: C{{"status": "ok", "generation": N, "sites": {...}}}, with
        C{"generations"} when workers serve different ones; the first
        answer when none is C{"ok"}.
    """
    ok = _okAnswers(answers)
    if answers and not ok:
        return dict(answers[0])
    merged = _header(ok)
    merged["sites"] = _mergeSites(ok)
    return merged


def mergeTunnels(answers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """
    One admin C{tunnels} answer made from the workers': open tunnels, their
    bytes and their counts by generation summed, the oldest's age the
    largest.

    @param answers: each worker's answer
        (L{revproxy.admin.AdminFactory.tunnels}).
    @return: C{{"status": "ok", "generation": N, "total": N, "sites":
        {...}}}, as L{mergeStats}.
    """
    ok = _okAnswers(answers)
    if answers and not ok:
        return dict(answers[0])
    merged = _header(ok)
    merged["total"] = _sum([answer.get("total") or 0 for answer in ok])
    merged["sites"] = _mergeSites(ok)
    return merged
