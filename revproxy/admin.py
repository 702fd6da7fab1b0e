# -*- test-case-name: tests.test_admin -*-
"""
The admin socket: one command per connection over a Unix socket, one JSON
line back, then the server closes (C{echo status | nc -U PATH}).

L{AdminFactory} holds the command table, a dict of small functions from the
command's arguments to an answer (a dict, or a L{Deferred} of one); they read
the current L{Runtime} and touch no socket.  L{AdminProtocol} is the framing
around them, and L{AdminSocket} the service that listens.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import stat
from collections.abc import Callable, Hashable
from ipaddress import ip_address
from typing import TYPE_CHECKING, Any, TypeVar
from typing import Protocol as TypingProtocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IListeningPort,
    IReactorTime,
    IReactorUNIX,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from revproxy.access import addressAllowed
from revproxy.certificates import LoadedCertificate
from revproxy.formatting import isoTime
from revproxy.hostnames import claims, normalizeHostHeader
from revproxy.proxy.headers import clientAddress, isTrusted
from revproxy.proxy.pool import UpstreamSelector
from revproxy.proxy.rules import mountPoint, stripPrefix
from revproxy.reload import Refused, ReloadResult
from revproxy.runtime import RuntimeHolder, SiteRoute
from revproxy.tls import TLSFiles

if TYPE_CHECKING:
    from revproxy.acme.renewal import AcmeSiteDescription, RenewalResult
    from revproxy.cluster.ratelimit import SharedRateLimiter
    from revproxy.config import AccessRules, RateLimit
    from revproxy.metrics import Metrics
    from revproxy.proxy.tunnel import SiteTunnels, TunnelRegistry
    from revproxy.ratelimit import RateLimiter
    from revproxy.upstreamhealth import HealthMonitor, UpstreamHealthDescription

_log = Logger()

Answer = dict[str, object]

_U = TypeVar("_U", bound=Hashable)
"""
One answer of the admin socket, sent as one JSON line.
"""

Command = Callable[[list[str]], "Answer | Deferred[Answer]"]
"""
A command of the table: its arguments (the words after its name) to its
answer, now or later.
"""

IDLE_TIMEOUT = 10
"""
Seconds a client has to send its whole command line.
"""

MAX_LINE = 4096
"""
The longest command line, in bytes, counting a trailing CR.
"""

_INVALID: Answer = {"status": "error", "message": "invalid input"}

# C0 controls but tab, DEL and C1 controls: nothing a person or a script
# means to send in a command.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")

_USAGE = {
    "reload": "reload",
    "check": "check",
    "status": "status",
    "sites": "sites",
    "route": "route HOST [PATH] [METHOD] [CLIENT_IP]",
    "certs": "certs",
    "renew": "renew SITE",
    "ratelimit": "ratelimit [reset] SITE IP",
    "stats": "stats [SITE]",
    "tunnels": "tunnels [SITE]",
    "reopen-logs": "reopen-logs",
    "help": "help",
}

_DESCRIPTIONS = {
    "tunnels": "open tunnels (WebSocket and other Upgrades) per site: how many, by config generation, the oldest's age, bytes each way",
    "reload": "re-read the config file and apply it; answers what changed",
    "check": "validate the config file on disk and answer what a reload would change, without applying it",
    "status": "uptime, number of sites, config generation and sha256",
    "sites": "each site's hosts and upstreams, and which upstreams are in back-off",
    "route": "route HOST [PATH] [[XFF,...,]CLIENT_IP]: the site, upstream, limits, certificate and client IP a request would get",
    "certs": "each certificate served: its sites, names, source, file, issuer and expiry; for ACME also the next renewal and why, and the last error",
    "renew": "renew SITE: order a new ACME certificate for SITE now; answers when the order ends",
    "ratelimit": "ratelimit SITE IP: the rate-limit bucket of IP on SITE; ratelimit reset SITE IP: refill it",
    "stats": "stats [SITE]: requests/s over 1, 10 and 60 s, in flight, status classes, 429 and 413 counts, upstream latency p50/p99, upstream health and pool sizes",
    "reopen-logs": "reopen the access log file (after logrotate renamed it); as SIGUSR1",
    "help": "this list",
}


#: What C{help} adds about C{reload} with a fleet.
_FLEET_RELOAD = (
    "; then tells the other live nodes ([cluster] reload_channel) to re-read "
    "their own files, and answers with each node's result (nodes, silent); "
    "SIGHUP reloads this node only"
)


class Operations:
    """
    What the operations commands (C{ratelimit}, C{stats}, C{reopen-logs},
    the health in C{sites}) read; each part L{None} when not kept.
    """

    def __init__(
        self,
        limiter: RateLimiter | None = None,
        metrics: Metrics | None = None,
        health: HealthMonitor | None = None,
        reopenLogs: Callable[[], None] | None = None,
        poolSizes: Callable[[], list[tuple[str, int, int]]] | None = None,
        tunnels: TunnelRegistry | None = None,
        shared: SharedRateLimiter | None = None,
        fleet: SupportsFleetReload | None = None,
        cluster: Callable[[], dict[str, object]] | None = None,
    ) -> None:
        """
        @param shared: the fleet's rate limiter (with C{[cluster]}): its
            buckets, in Redis, are the ones C{ratelimit} shows.
        @param fleet: the fleet's reloads (with C{[cluster] reload_channel
            = true}): C{reload} then asks the other nodes too, and answers
            with every node's result.
        @param cluster: the fleet as this node sees it (with
            C{[cluster]}), C{status}'s C{"cluster"}.
        """
        self.shared = shared
        self.fleet = fleet
        self.cluster = cluster
        self.limiter = limiter
        self.metrics = metrics
        self.health = health
        self.reopenLogs = reopenLogs
        self.poolSizes = poolSizes
        self.tunnels = tunnels


class SupportsFleetReload(TypingProtocol):
    """
    What the admin socket needs of
    L{revproxy.cluster.reloads.FleetReloads}.
    """

    def reloadFleet(self, localAnswer: Answer) -> Deferred[Answer]:
        """
        Ask the other nodes to reload, after this one did (its answer:
        C{localAnswer}); fires with every node's answer, never fails.
        """


class UsageError(Exception):
    """
    A command was given the wrong arguments.

    @ivar usage: the command's synopsis, as C{route HOST [PATH] [CLIENT_IP]}.
    """

    def __init__(self, usage: str) -> None:
        super().__init__(usage)
        self.usage = usage


class SupportsReload(TypingProtocol):
    """
    What the admin socket needs of L{revproxy.reload.Reloader}.
    """

    @property
    def holder(self) -> RuntimeHolder:
        """
        The reference to the current L{Runtime}.
        """

    def reload(self, source: str) -> Deferred[ReloadResult]:
        """
        Reload the config file; fires with the result, never fails.
        """

    def check(self) -> Deferred[ReloadResult]:
        """
        Validate the config file without applying it; fires with the answer,
        never fails.
        """


class SupportsRenewal(TypingProtocol):
    """
    What the admin socket needs of L{revproxy.acme.renewal.AcmeManager}.
    """

    def describeAll(self) -> list[AcmeSiteDescription]:
        """
        Each managed certificate with its schedule.
        """

    def renew(self, site: str) -> Deferred[RenewalResult]:
        """
        Renew C{site}'s certificate now; fires with how it ended.
        """


#: The status of a reload that swapped the runtime but some of whose
#: followers failed.
PARTIALLY_APPLIED = "partially applied"


def reloadAnswer(result: ReloadResult) -> Answer:
    """
    The JSON answer to C{reload} or C{check} for C{result}.
    """
    if isinstance(result, Refused):
        refused: Answer = {
            "status": "error",
            "code": result.code,
            "message": result.message,
        }
        if result.errors is not None:
            refused["errors"] = list(result.errors)
        return refused
    answer: Answer = {
        "status": "ok" if result.ok else PARTIALLY_APPLIED,
        "generation": result.generation,
        "config_sha256": result.configSHA256,
        "sites": {
            "added": list(result.sites.added),
            "removed": list(result.sites.removed),
            "changed": list(result.sites.changed),
            "unchanged": result.sites.unchanged,
        },
        "restart_required": list(result.restartRequired),
        "warnings": list(result.warnings),
    }
    if result.wouldBeGeneration is not None:
        answer["would_be_generation"] = result.wouldBeGeneration
    if result.failed:
        answer["code"] = "followers_failed"
        answer["failed"] = list(result.failed)
        answer["message"] = (
            "the new config serves, but these parts could not follow it: "
            + ", ".join(result.failed)
        )
    return answer


def renderTunnels(tunnels: SiteTunnels) -> Answer:
    """
    One site's open tunnels in an answer.
    """
    return {
        "open": tunnels.open,
        "by_generation": {
            str(generation): count
            for generation, count in sorted(tunnels.byGeneration.items())
        },
        "oldest_secs": tunnels.oldestSecs,
        "bytes_up": tunnels.bytesUp,
        "bytes_down": tunnels.bytesDown,
    }


def _bucketAnswer(
    answer: Answer, limit: RateLimit, bucket: tuple[float, float] | None
) -> Answer:
    """
    C{answer} with a bucket's C{tokens} and C{capacity} (L{None}: not
    tracked, full), and the seconds until a request would be admitted (0:
    now) and until it is full again.
    """
    tokens, capacity = (
        (float(limit.burst), float(limit.burst)) if bucket is None else bucket
    )
    answer["tokens"] = round(tokens, 3)
    answer["capacity"] = capacity
    answer["tracked"] = bucket is not None
    answer["wait_secs"] = (
        0.0 if tokens >= 1.0 else round((1.0 - tokens) / limit.requests_per_second, 3)
    )
    answer["full_in_secs"] = round((capacity - tokens) / limit.requests_per_second, 3)
    return answer


def explainAccess(access: AccessRules | None, clientIP: str | None) -> Answer | None:
    """
    The access rules a request meets, and what they would decide for
    C{clientIP} (for admin C{route}); L{None} when there are none.
    """
    if access is None:
        return None
    described: Answer = {
        "allow": [str(n) for n in access.allow],
        "deny": [str(n) for n in access.deny],
        "basic_auth": None
        if access.basic_auth is None
        else {"realm": access.basic_auth.realm, "users": len(access.basic_auth.users)},
        "forward_auth": None
        if access.forward_auth is None
        else access.forward_auth.url,
    }
    if clientIP is None:
        decision = "give a client address to see the decision"
    elif not addressAllowed(access, clientIP):
        decision = "denied (403): the address rules do not allow this client"
    elif access.basic_auth is not None:
        decision = "the address may pass; a user and password are needed (401 without)"
    elif access.forward_auth is not None:
        decision = "the address may pass; the auth service is asked"
    else:
        decision = "allowed"
    described["decision"] = decision
    return described


def explainRule(site: SiteRoute, rule: SiteRoute, path: str) -> Answer:
    """
    Which rule of C{site} a request for C{path} meets, why, and what the
    rule does (for admin C{route}).
    """
    config = rule.rule
    explained: Answer = {}
    matched: Answer
    if config is None:
        matched = {
            "kind": "site",
            "why": "no route of the site matches: the site's own rules"
            if site.config.routes
            else "the site has no routes",
        }
    elif config.path is not None:
        matched = {
            "kind": "exact",
            "index": config.index,
            "path": config.path,
            "why": f"exact path {config.path}",
        }
    else:
        prefix = config.path_prefix or ""
        matched = {
            "kind": "prefix",
            "index": config.index,
            "path_prefix": prefix,
            "why": f"longest matching prefix {prefix}",
        }
    if config is not None and config.methods:
        matched["methods"] = list(config.methods)
    explained["rule"] = matched
    rewrites: list[str] = []
    action = site.config if config is None else config
    if config is not None and config.strip_prefix and config.path_prefix:
        rest = stripPrefix(path.encode(), config.path_prefix.encode()).decode()
        rewrites.append(
            f"prefix {config.path_prefix} stripped: {rest} sent upstream, with "
            f"X-Forwarded-Prefix: {mountPoint(config.path_prefix.encode()).decode()}"
        )
        if config.rewrite_redirects:
            rewrites.append(
                "Location, Content-Location, Refresh and Set-Cookie Path from "
                "the upstream written back under the prefix"
            )
    proxied = action.redirect is None and action.respond is None
    sides = [("response", rule.responseHeaders)]
    if proxied:
        # What is forwarded: a redirect or fixed answer forwards nothing.
        if rule.upstreamHost is not None:
            rewrites.append(f"Host set to {rule.upstreamHost.decode()}")
        sides.insert(0, ("request", rule.requestHeaders))
    for side, rules in sides:
        for headerRules in rules:
            for name, template in headerRules.set:
                rewrites.append(f"{side} header {name} set to {template.source}")
            for name, template in headerRules.add:
                rewrites.append(f"{side} header {name} added: {template.source}")
            for name in headerRules.remove:
                rewrites.append(f"{side} header {name} removed")
    explained["rewrites"] = rewrites
    if action.redirect is not None:
        explained["action"] = {
            "redirect": {
                "to": action.redirect.to.source,
                "status": action.redirect.status,
            }
        }
    elif action.respond is not None:
        respond = action.respond
        explained["action"] = {
            "respond": {
                "status": respond.status,
                "content_type": respond.content_type,
                "file": respond.file or None,
            }
        }
    else:
        explained["action"] = "proxy"
    return explained


def peekUpstream(selector: UpstreamSelector[_U]) -> _U | None:
    """
    The upstream that C{selector.pick()} would return now, without advancing
    the round robin.
    """
    return selector.peek()


def _describeCertificate(
    cert: LoadedCertificate, sites: tuple[str, ...], now: float
) -> Answer:
    """
    One certificate, for C{certs}.
    """
    return {
        "sites": list(sites),
        "names": list(cert.names),
        "source": cert.source,
        "path": cert.path,
        "issuer": cert.issuer,
        "not_after": isoTime(cert.not_after),
        "expires_in_days": round((cert.not_after - now) / 86400, 1),
    }


def renderAcmeSite(site: AcmeSiteDescription) -> Answer:
    """
    One acme site's certificate and schedule, for C{certs} and C{renew}.
    """
    return {
        "sites": [site.site],
        "names": list(site.names),
        "source": site.source,
        "issuer": site.issuer,
        "not_after": isoTime(site.notAfter),
        "expires_in_days": round((site.notAfter - site.at) / 86400, 1),
        "ordering": site.ordering,
        "last_error": site.lastError,
        "next_renewal": None if site.nextRenewal is None else isoTime(site.nextRenewal),
        "next_renewal_reason": site.nextRenewalReason,
    }


def renderRenewal(result: RenewalResult) -> Answer:
    """
    The answer of C{renew SITE}.
    """
    answer: Answer = (
        {"status": "ok"}
        if result.error is None
        else {"status": "error", "message": result.error}
    )
    if result.site is not None:
        answer["certificate"] = renderAcmeSite(result.site)
    return answer


def renderUpstreamHealth(health: UpstreamHealthDescription) -> Answer:
    """
    An upstream's health, under its URL in C{sites} and C{stats}.
    """
    return {
        "healthy": health.healthy,
        "fails": health.fails,
        "passes": health.passes,
        "last_error": health.lastError,
        "last_check": None if health.lastCheck is None else isoTime(health.lastCheck),
        "last_status": health.lastStatus,
    }


def healthzBody(draining: bool) -> bytes:
    """
    The body of an answer of the ops listener's C{/healthz}
    (L{revproxy.opslistener.OpsResource}): C{ok} while serving, C{draining}
    once the proxy is shutting down.
    """
    status = "draining" if draining else "ok"
    return json.dumps({"status": status}).encode("ascii") + b"\n"


def _describeRateLimit(limit: RateLimit) -> Answer | None:
    """
    A site's rate limit in an answer, or L{None} when it has none.
    """
    if not limit.enabled:
        return None
    return {
        "requests_per_second": limit.requests_per_second,
        "burst": limit.burst,
        "dry_run": limit.dry_run,
    }


class AdminFactory(Factory["AdminProtocol"]):
    """
    Builds L{AdminProtocol}s and holds the command table they share.

    @ivar commands: the command table, name to function.
    @ivar descriptions: one line about each command, for C{help}.
    """

    noisy = False

    def __init__(
        self,
        reloader: SupportsReload,
        clock: IReactorTime,
        startTime: float | None = None,
        certificates: SupportsRenewal | None = None,
        servedTLS: Callable[[], TLSFiles] | None = None,
        operations: Operations | None = None,
    ) -> None:
        """
        @param startTime: when the process started, in C{clock.seconds()};
            now, if not given.
        @param certificates: the ACME certificates, for C{certs} and
            C{renew}; none without HTTPS listeners.
        @param servedTLS: the certificates the HTTPS listeners serve now
            (files and ACME), for C{route}; the runtime's files if not
            given.
        """
        self.servedTLS = servedTLS
        self.operations = Operations() if operations is None else operations
        self.reloader = reloader
        self.certificateManager = certificates
        self.clock = clock
        self.startTime = clock.seconds() if startTime is None else startTime
        self.commands: dict[str, Command] = {
            "reload": self.reload,
            "check": self.check,
            "status": self.status,
            "sites": self.sites,
            "route": self.route,
            "certs": self.certs,
            "renew": self.renew,
            "ratelimit": self.ratelimit,
            "stats": self.stats,
            "tunnels": self.tunnels,
            "reopen-logs": self.reopenLogs,
            "help": self.help,
        }
        self.descriptions: dict[str, str] = dict(_DESCRIPTIONS)
        if self.operations.fleet is not None:
            self.descriptions["reload"] += _FLEET_RELOAD

    def buildProtocol(self, addr: IAddress | None) -> AdminProtocol:
        return AdminProtocol(self)

    def run(self, name: str, args: list[str]) -> Deferred[Answer]:
        """
        Run the command C{name} with C{args}.

        @return: a L{Deferred} that fires with the answer, and fails only
            when the command raised something other than L{UsageError}.
        """
        command = self.commands.get(name)
        if command is None:
            return succeed({"status": "error", "message": f"unknown command: {name}"})

        try:
            result = command(args)
        except UsageError as e:
            return succeed({"status": "error", "message": f"usage: {e.usage}"})
        except Exception:
            return fail()
        if isinstance(result, Deferred):
            return result
        return succeed(result)

    # -- the commands

    def _noArguments(self, name: str, args: list[str]) -> None:
        if args:
            raise UsageError(_USAGE[name])

    def reload(self, args: list[str]) -> Deferred[Answer]:
        """
        Reload the config file, through the same lock as SIGHUP; with a
        fleet (L{Operations.fleet}), then ask the other nodes to reload
        theirs, and answer with every node's result.
        """
        self._noArguments("reload", args)
        answered = self.reloader.reload("admin").addCallback(reloadAnswer)
        fleet = self.operations.fleet
        if fleet is not None:
            answered.addCallback(fleet.reloadFleet)
        return answered

    def check(self, args: list[str]) -> Deferred[Answer]:
        """
        Validate the config file on disk; a dry-run reload.
        """
        self._noArguments("check", args)
        return self.reloader.check().addCallback(reloadAnswer)

    def status(self, args: list[str]) -> Answer:
        """
        How long the process has run, and which config it serves.
        """
        self._noArguments("status", args)
        runtime = self.reloader.holder.current
        answer: Answer = {
            "status": "ok",
            "uptime_secs": max(0, int(self.clock.seconds() - self.startTime)),
            "pid": os.getpid(),
            "sites": len(runtime.table.sites),
            "generation": runtime.generation,
            "config_sha256": runtime.sha256,
            "config_path": runtime.config.path,
        }
        if self.operations.cluster is not None:
            answer["cluster"] = self.operations.cluster()
        return answer

    def sites(self, args: list[str]) -> Answer:
        """
        Each site's hosts and upstreams, with the upstreams in back-off.
        """
        self._noArguments("sites", args)
        runtime = self.reloader.holder.current
        return {
            "status": "ok",
            "generation": runtime.generation,
            "sites": [
                {
                    "name": route.name,
                    "hosts": list(route.hosts),
                    "upstreams": self._upstreams(route),
                    "default": route.default,
                }
                for route in runtime.table.sites
            ],
        }

    def _upstreams(self, route: SiteRoute) -> list[Answer]:
        """
        Each upstream of C{route}: whether it is in back-off and, for a
        site with health checks, its health.
        """
        health = self.operations.health
        checked: dict[str, UpstreamHealthDescription] = {}
        if health is not None and route.config.health_check is not None:
            checked = {d.url: d for d in health.describe(route.name)}
        upstreams: list[Answer] = []
        for u in route.selector.upstreams:
            url = u.url
            answer: Answer = {"url": url, "down": route.selector.isDown(u)}
            state = checked.get(url)
            if state is not None:
                answer["health"] = renderUpstreamHealth(state)
            upstreams.append(answer)
        return upstreams

    def ratelimit(self, args: list[str]) -> Answer | Deferred[Answer]:
        """
        Show (C{ratelimit SITE IP}) or refill (C{ratelimit reset SITE IP})
        the rate-limit bucket of a client on a site.
        """
        reset = len(args) == 3 and args[0] == "reset"
        if reset:
            args = args[1:]
        if len(args) != 2:
            raise UsageError(_USAGE["ratelimit"])
        siteName, ip = args
        try:
            ip = str(ip_address(ip))
        except ValueError:
            return {"status": "error", "message": f"invalid client ip: {ip}"}
        runtime = self.reloader.holder.current
        site = next((s for s in runtime.config.sites if s.name == siteName), None)
        if site is None:
            return {"status": "error", "message": f"unknown site: {siteName}"}
        limit = site.rate_limit
        limiter = self.operations.limiter
        answer: Answer = {
            "status": "ok",
            "site": siteName,
            "client_ip": ip,
            "rate_limit": _describeRateLimit(limit),
        }
        if limiter is None or not limit.enabled:
            answer["tokens"] = None
            return answer
        shared = self.operations.shared
        if shared is not None and shared.redis.up:
            answer["shared"] = True

            def read(bucket: tuple[float | None, bool]) -> Answer:
                tokens, deleted = bucket
                if reset:
                    answer["reset"] = deleted
                return _bucketAnswer(
                    answer,
                    limit,
                    (tokens, float(limit.burst)) if tokens is not None else None,
                )

            def failed(reason: Failure) -> Answer:
                return {
                    "status": "error",
                    "message": f"Redis: {reason.getErrorMessage()}",
                }

            return shared.bucket(siteName, limit, ip, reset).addCallbacks(read, failed)
        if reset:
            answer["reset"] = limiter.reset(siteName, ip)
        return _bucketAnswer(answer, limit, limiter.bucket(siteName, ip))

    def stats(self, args: list[str]) -> Answer:
        """
        Traffic, latency, upstream health and pool sizes, per site.
        """
        if len(args) > 1:
            raise UsageError(_USAGE["stats"])
        operations = self.operations
        metrics = operations.metrics
        if metrics is None:
            return {"status": "error", "message": "no statistics are kept"}
        runtime = self.reloader.holder.current
        routes = {route.name: route for route in runtime.table.sites}
        if args:
            if args[0] not in routes:
                return {"status": "error", "message": f"unknown site: {args[0]}"}
            names = [args[0]]
        else:
            names = list(routes)
        pools = {
            url: {"idle": idle, "active": active}
            for url, idle, active in (
                operations.poolSizes() if operations.poolSizes is not None else []
            )
        }
        sites: dict[str, Answer] = {}
        for name in names:
            try:
                stats: Answer = dict(metrics.stats(name))
            except KeyError:
                stats = {}
            counted: Any = stats.get("upstreams") or {}
            upstreams = self._upstreams(routes[name])
            for upstream in upstreams:
                url = str(upstream["url"])
                upstream["pool"] = pools.get(url)
                upstream["errors"] = dict(counted.get(url, {}).get("errors", {}))
            stats["upstreams"] = upstreams
            sites[name] = stats
        return {"status": "ok", "generation": runtime.generation, "sites": sites}

    def tunnels(self, args: list[str]) -> Answer:
        """
        The open tunnels, per site (or of one site).
        """
        if len(args) > 1:
            raise UsageError(_USAGE["tunnels"])
        registry = self.operations.tunnels
        runtime = self.reloader.holder.current
        site = args[0] if args else None
        known = {route.name for route in runtime.table.sites}
        if site is not None and site not in known:
            if registry is None or not registry.count(site):
                return {"status": "error", "message": f"unknown site: {site}"}
        described = {} if registry is None else registry.describe(site)
        sites: dict[str, Answer] = {
            name: renderTunnels(tunnels) for name, tunnels in described.items()
        }
        return {
            "status": "ok",
            "generation": runtime.generation,
            "total": sum(t.open for t in described.values()),
            "sites": sites,
        }

    def reopenLogs(self, args: list[str]) -> Answer:
        """
        Reopen the access log (for logrotate); as SIGUSR1.
        """
        self._noArguments("reopen-logs", args)
        reopen = self.operations.reopenLogs
        if reopen is None:
            return {"status": "error", "message": "no log files here"}
        try:
            reopen()
        except Exception as e:
            return {"status": "error", "message": f"reopen failed: {e}"}
        return {"status": "ok"}

    def route(self, args: list[str]) -> Answer:
        """
        Where a request for C{HOST} (and C{PATH} with C{METHOD}, from
        C{CLIENT_IP}) would go, which rule of its site it would meet and why,
        and what that rule would do.

        C{CLIENT_IP} is the TCP peer's address, optionally preceded by the
        comma-separated C{X-Forwarded-For} entries the peer would send
        (C{203.0.113.7,10.0.0.2}).  The arguments after C{HOST} are told
        apart by their shape: a path starts with C{/}, an address has a
        C{.}, C{:} or C{,}, a method is an upper-case word (C{GET} if
        none).
        """
        if not 1 <= len(args) <= 4:
            raise UsageError(_USAGE["route"])
        rawHost = args[0]
        path = "/"
        method = "GET"
        client: str | None = None
        for arg in args[1:]:
            if arg.startswith("/") or arg == "*":
                path = arg
            elif any(c in arg for c in ".:,"):
                client = arg
            elif arg.isalpha() and arg.isupper():
                method = arg
            else:
                return {
                    "status": "error",
                    "message": f"invalid path: {arg} (it must start with /)",
                }
        if not (path.startswith("/") or path == "*"):
            return {
                "status": "error",
                "message": f"invalid path: {path} (it must start with /)",
            }
        host = normalizeHostHeader(rawHost.encode("utf-8"))
        if host is None:
            return {"status": "error", "message": f"invalid host: {rawHost}"}

        runtime = self.reloader.holder.current
        # [server] is static: a reload keeps the running value, so this is
        # what the forwarder uses.
        trusted = runtime.config.server.trusted_proxies
        peer: str | None = None
        clientIP: str | None = None
        peerTrusted: bool | None = None
        if client is not None:
            *forwarded, peer = [entry.strip() for entry in client.split(",")]
            try:
                ip_address(peer)
            except ValueError:
                return {
                    "status": "error",
                    "message": f"invalid client ip: {peer}",
                }
            headers = (
                [(b"X-Forwarded-For", ", ".join(forwarded).encode("utf-8"))]
                if forwarded
                else []
            )
            peerTrusted = isTrusted(peer, trusted)
            clientIP = clientAddress(peer, headers, trusted)

        answer: Answer = {
            "status": "ok",
            "generation": runtime.generation,
            "host": host,
            "path": path,
            "peer": peer,
            "client_ip": clientIP,
            "peer_trusted": peerTrusted,
        }
        route = runtime.table.match(host)
        if route is None:
            answer.update(
                site=None,
                default_site=False,
                upstream=None,
                answer=421,
            )
            return answer
        rule = route.match(method.encode("ascii"), path.encode())
        answer["method"] = method
        answer.update(explainRule(route, rule, path))
        answer["access"] = explainAccess(rule.access, clientIP)
        site = rule.config
        upstream = peekUpstream(rule.selector) if site.upstreams else None
        rateLimit = site.rate_limit
        served = self.servedTLS() if self.servedTLS is not None else runtime.tls
        certificate = served.certificates.lookup(host)
        answer.update(
            site=route.name,
            default_site=route.default and not claims(route.hosts, host),
            certificate=(
                None
                if certificate is None
                else {
                    "sites": list(served.sitesOf(certificate)),
                    "source": certificate.source,
                    "names": list(certificate.names),
                    "not_after": isoTime(certificate.not_after),
                }
            ),
            upstream=None if upstream is None else upstream.url,
            upstream_down=upstream is not None and rule.selector.isDown(upstream),
            tls=site.tls,
            strict_sni_host=site.strict_sni_host,
            timeouts={
                "connect_timeout_secs": site.connect_timeout_secs,
                "response_timeout_secs": site.response_timeout_secs,
            },
            limits={
                "max_body_bytes": site.max_body_bytes,
                "rate_limit": _describeRateLimit(rateLimit),
            },
        )
        return answer

    def certs(self, args: list[str]) -> Answer:
        """
        Every certificate served over HTTPS, soonest expiry first.
        """
        self._noArguments("certs", args)
        runtime = self.reloader.holder.current
        now = self.clock.seconds()
        tls = runtime.tls
        certificates = sorted(tls.certificates.all(), key=lambda c: c.not_after)
        described = [
            _describeCertificate(cert, tls.sitesOf(cert), now) for cert in certificates
        ]
        if self.certificateManager is not None:
            described += map(renderAcmeSite, self.certificateManager.describeAll())
            described.sort(key=lambda answer: str(answer["not_after"]))
        return {
            "status": "ok",
            "generation": runtime.generation,
            "certificates": described,
        }

    def renew(self, args: list[str]) -> Answer | Deferred[Answer]:
        """
        Renew one ACME site's certificate now.
        """
        if len(args) != 1:
            raise UsageError(_USAGE["renew"])
        if self.certificateManager is None:
            return {
                "status": "error",
                "message": "no ACME certificates here (no HTTPS listener)",
            }
        return self.certificateManager.renew(args[0]).addCallback(renderRenewal)

    def help(self, args: list[str]) -> Answer:
        """
        The commands, each with one line about it.
        """
        self._noArguments("help", args)
        return {
            "status": "ok",
            "commands": {
                name: self.descriptions.get(name, "") for name in self.commands
            },
        }


@implementer(IHalfCloseableProtocol)
class AdminProtocol(LineReceiver, TimeoutMixin):
    """
    One admin connection: read one command line, answer one JSON line,
    close.

    The line ends in C{\\n}, with an optional C{\\r} before it.  Anything
    after the first line is ignored.  A client that has not sent a whole
    line within L{IDLE_TIMEOUT} seconds is disconnected.  A client that
    half-closes its side after the command (C{socat} does) still gets the
    answer; a last line without C{\\n} before that half-close counts.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE
    factory: AdminFactory

    def __init__(self, factory: AdminFactory) -> None:
        self.factory = factory
        self._received = False
        self._gone = False

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:
        """
        Schedule with the factory's clock, not the global reactor.
        """
        return self.factory.clock.callLater(period, func)

    def connectionMade(self) -> None:
        # A total deadline for the line, not reset by data: a client
        # trickling bytes is closed as one sending none.
        self.setTimeout(IDLE_TIMEOUT)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._gone = True
        self.setTimeout(None)

    def timeoutConnection(self) -> None:
        self._received = True
        if self.transport is not None:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._received:
            return
        super().dataReceived(data)

    def readConnectionLost(self) -> None:
        if self._received:
            return
        rest = self.clearLineBuffer()
        if rest:
            self.lineReceived(rest)
        else:
            self._received = True
            self.setTimeout(None)
            if self.transport is not None:
                self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._received:
            return
        self._received = True
        self.setTimeout(None)
        self._send(_INVALID)

    def lineReceived(self, line: bytes) -> None:
        if self._received:
            return
        self._received = True
        self.clearLineBuffer()
        self.setTimeout(None)
        words = _parseLine(line)
        if words is None:
            self._send(_INVALID)
            return
        name, args = words[0], words[1:]

        def failed(failure: Failure) -> Answer:
            _log.failure(
                "Admin command {command!r} failed", failure, command=" ".join(words)
            )
            return {
                "status": "error",
                "code": "internal",
                "message": (
                    f"internal error in {name!r}: "
                    f"{type(failure.value).__name__}: {failure.getErrorMessage()}"
                ),
            }

        def unsent(failure: Failure) -> None:
            _log.failure("Could not send the admin answer", failure)

        self.factory.run(name, args).addErrback(failed).addCallback(
            self._send
        ).addErrback(unsent)

    def _send(self, answer: Answer) -> None:
        """
        Send C{answer} as one JSON line and close, unless the client has
        gone.
        """
        if self._gone or self.transport is None:
            return
        try:
            if not isinstance(answer, dict):
                raise TypeError(f"a command answered {type(answer).__name__}")
            text = json.dumps(answer, allow_nan=False)
        except (TypeError, ValueError):
            _log.failure("An admin answer could not be encoded")
            text = json.dumps(
                {
                    "status": "error",
                    "code": "internal",
                    "message": "internal error: the answer could not be encoded",
                }
            )
        self.sendLine(text.encode("ascii"))
        self.transport.loseConnection()


def _parseLine(line: bytes) -> list[str] | None:
    """
    The words of a command line, or L{None} when it is not one: empty, not
    UTF-8, or with control characters other than tab.
    """
    if line.endswith(b"\r"):
        line = line[:-1]
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if _CONTROL.search(text):
        return None
    words = text.split()
    return words or None


def socketDirectoryProblem(status: os.stat_result, uid: int) -> str | None:
    """
    Why a directory with C{status} is not a safe place for the admin socket
    of a process whose effective user id is C{uid}, or L{None} if it is.

    Safe is what OpenSSH's C{StrictModes} asks of the directories above
    C{authorized_keys}: owned by root or by the process's own user, and
    writable by nobody else, except that a sticky directory (C{/tmp}) may be
    writable by all, since then only an entry's owner can remove or rename
    it.  Write access for the group is refused whatever the group, the
    process's own included: a member could replace the socket, or turn it
    into a symlink between the C{bind} and the C{chmod} that C{listenUNIX}
    does, making revproxy C{chmod 0660} any file of its own.

    Pure: no I/O, so it can be tested with made-up C{stat} results.
    """
    if not stat.S_ISDIR(status.st_mode):
        return "it is not a directory"
    if status.st_uid not in (0, uid):
        return (
            f"it is owned by uid {status.st_uid}, not by root or by uid {uid} "
            "(this process)"
        )
    mode = stat.S_IMODE(status.st_mode)
    if mode & stat.S_ISVTX:
        return None
    if mode & stat.S_IWOTH:
        return f"it is writable by other users (mode {mode:04o}) and has no sticky bit"
    if mode & stat.S_IWGRP:
        return (
            f"it is writable by group {status.st_gid} (mode {mode:04o}) and has "
            "no sticky bit"
        )
    return None


def unsafeSocketDirectory(
    path: str,
    uid: int,
    statPath: Callable[[str], os.stat_result] = os.stat,
) -> tuple[str, str] | None:
    """
    The first directory, from the one that would hold the socket C{path} up
    to C{/}, that fails L{socketDirectoryProblem}, with the reason; or
    L{None} when all pass.  Whoever can write to any of them can rename
    the ones below it away and put their own in place.

    The path is resolved first (C{/var/run} is C{/run}); directories that
    do not exist yet are skipped, since revproxy creates them itself.  A
    socket in the abstract namespace (C{\\0name}) has no directory.
    """
    if path.startswith("\0"):
        return None
    directory = os.path.realpath(os.path.dirname(path) or os.curdir)
    while True:
        try:
            status: os.stat_result | None = statPath(directory)
        except FileNotFoundError:
            status = None
        except OSError as e:
            return directory, f"it cannot be checked: {e.strerror or e}"
        if status is not None:
            problem = socketDirectoryProblem(status, uid)
            if problem is not None:
                return directory, problem
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory = parent


class AdminSocket(Service):
    """
    Listens on the admin socket while running.

    The socket is created mode 0660 with Twisted's lock file beside it
    (C{PATH.lock}), which tells a stale socket (removed and replaced) from
    one a live process owns.  A socket that cannot be had is a warning, not
    a failed start: the proxy runs without it.  So is a socket directory
    that another user could write to (L{unsafeSocketDirectory}).
    """

    def __init__(self, path: str, factory: Factory[Any], reactor: IReactorUNIX) -> None:
        """
        @raise ValueError: C{path} is empty (no admin socket: make no
            service at all).
        """
        if not path:
            raise ValueError("AdminSocket needs a path")
        self.path = path
        self.factory = factory
        self._reactor = reactor
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.port is not None:
            return
        # Checked before a missing directory is made, so that nothing is
        # created under a directory that fails.
        unsafe = unsafeSocketDirectory(self.path, os.geteuid())
        if unsafe is not None:
            directory, problem = unsafe
            _log.warn(
                "Running without the admin socket {path}: {directory} is not a "
                "safe place for it: {problem}",
                path=self.path,
                directory=directory,
                problem=problem,
            )
            return
        parent = os.path.dirname(self.path)
        if parent and not self.path.startswith("\0"):
            try:
                os.makedirs(parent, mode=0o750, exist_ok=True)
            except OSError as e:
                _log.warn(
                    "Running without the admin socket: cannot create its "
                    "directory {directory}: {reason}",
                    directory=parent,
                    reason=e.strerror or str(e),
                )
                return
        _removeDeadSocket(self.path)
        try:
            self.port = self._reactor.listenUNIX(
                self.path, self.factory, backlog=1024, mode=0o660, wantPID=True
            )
        except CannotListenError as e:
            _log.warn(
                "Running without the admin socket {path}: {reason}",
                path=self.path,
                reason=_cannotListenReason(self.path, e),
            )
        except OSError as e:
            _log.warn(
                "Running without the admin socket {path}: {reason}",
                path=self.path,
                reason=e.strerror or str(e),
            )

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return None
        # Twisted removes the socket file and its lock once it has stopped.
        return port.stopListening()


def _removeDeadSocket(path: str) -> None:
    """
    Remove a socket file at C{path} that has no lock file beside it and that
    nobody answers on (left by a crash or copied in): Twisted's own
    stale-socket check only covers a socket with a stale lock file.
    """
    if path.startswith("\0") or os.path.lexists(path + ".lock"):
        return
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return
    except OSError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1)
        probe.connect(path)
    except ConnectionRefusedError:
        _log.info("Removing the dead admin socket {path}", path=path)
        try:
            os.unlink(path)
        except OSError:
            pass
    except OSError:
        pass
    finally:
        probe.close()


def _cannotListenReason(path: str, error: CannotListenError) -> str:
    """
    Say why C{listenUNIX} on C{path} failed, in an operator's words.
    """
    why = error.socketError
    if why == "Cannot acquire lock":
        return (
            f"another running process holds {path}.lock (is another revproxy "
            "running with this admin_socket_path?)"
        )
    if isinstance(why, OSError):
        if why.errno == errno.EADDRINUSE:
            return (
                f"{path} already exists and is not a stale revproxy socket "
                "(no lock file beside it, or not a socket); remove it if "
                "nothing uses it"
            )
        return why.strerror or str(why)
    return str(why)
