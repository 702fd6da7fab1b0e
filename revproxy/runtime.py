# -*- test-case-name: tests.test_runtime -*-
"""
The immutable snapshot every request reads, and the one reference a reload
swaps: L{Runtime}, whose routing table holds each site as the request path
sees it (L{SiteRoute}), and L{RuntimeHolder}.

A L{Runtime} is built whole from a L{Config} off to the side; requests take
C{holder.current} once, when their head is read, and keep it.  State that must outlive a
reload (upstream selectors with their back-off) is carried over by key from
the previous snapshot.
"""

from __future__ import annotations

import attrs
from attrs import frozen
from twisted.internet.interfaces import IReactorTime

from revproxy.config import (
    AccessRules,
    Config,
    HeaderRules,
    RouteConfig,
    SiteConfig,
    Upstream,
    endpointPort,
)
from revproxy.hostnames import RoutingTable, isWildcard
from revproxy.proxy.pool import UpstreamSelector
from revproxy.proxy.upstream import PoolKey
from revproxy.proxy.upstreamtls import SYSTEM_TRUST, UpstreamTLS
from revproxy.tls import NO_TLS_FILES, TLSFiles, loadTLSFiles


class SiteRoute:
    """
    A site as the request path sees it, or one of its routes: the config
    requests are answered by (for a route, its site's with the route's
    upstreams and limits), the upstream selector and pool keys, and what the
    route changes.  The site's own (L{rule} L{None}) satisfies
    L{revproxy.hostnames.HasHosts} and picks the route of a request with
    L{match}.

    @ivar rule: the route's config, or L{None} for the site itself.
    @ivar site: the site's own L{SiteRoute} (itself for the site).
    @ivar requestHeaders: the header rules for the request sent upstream,
        the site's then the route's.
    @ivar responseHeaders: the same for the response sent to the client.
    @ivar upstreamHost: the C{Host} sent upstream instead of the client's,
        or L{None}.
    """

    __slots__ = (
        "access",
        "config",
        "errorPages",
        "fallbackHost",
        "hsts",
        "keys",
        "limitKey",
        "requestHeaders",
        "responseHeaders",
        "routes",
        "rule",
        "selector",
        "site",
        "upstreamHost",
    )

    def __init__(
        self,
        config: SiteConfig,
        selector: UpstreamSelector[Upstream],
        upstreamTLS: UpstreamTLS = SYSTEM_TRUST,
        rule: RouteConfig | None = None,
        site: SiteRoute | None = None,
    ) -> None:
        """
        @param upstreamTLS: How the site's https:// upstreams are verified.
        @param rule: For a route, its config; C{config} is then the site's
            with the route's upstreams and limits.
        @param site: For a route, its site's own L{SiteRoute}.
        """
        self.config = config
        self.selector = selector
        self.rule = rule
        self.site = self if site is None else site
        #: The pages of the answers revproxy makes itself, by status.
        self.errorPages: dict[int, bytes] | None = (
            dict(config.error_pages) if config.error_pages else None
        )
        #: The access rules requests meet (a route's own when it sets any,
        #: else its site's), or L{None} when there are none.
        rules = (
            rule.access
            if rule is not None and _restricts(rule.access)
            else config.access
        )
        self.access: AccessRules | None = rules if _restricts(rules) else None
        #: The rate limiter's key: the site's, or a route's own when it
        #: sets its own rate_limit (its buckets are apart).
        self.limitKey = (
            config.name
            if rule is None or rule.rate_limit is None
            else f"{config.name}/routes[{rule.index}]"
        )
        host = rule.upstream_host if rule is not None else config.upstream_host
        self.upstreamHost = host.encode("idna") if host else None
        # The name an https upstream is asked for and verified against: the
        # upstream_host without its port (none for an IP literal).
        serverName = "" if host.startswith("[") else host.split(":", 1)[0]
        self.keys: dict[Upstream, PoolKey] = {
            u: (
                u.scheme,
                u.host,
                u.port,
                (
                    attrs.evolve(upstreamTLS, serverName=serverName)
                    if serverName
                    else upstreamTLS
                )
                if u.scheme == "https"
                else None,
            )
            for u in config.upstreams
        }
        #: The Strict-Transport-Security value for HTTPS responses, if any.
        self.hsts = (
            b"max-age=%d" % (config.hsts_max_age_secs,)
            if config.hsts_max_age_secs
            else None
        )
        siteHeaders = (config.request_headers, config.response_headers)
        if rule is None:
            self.requestHeaders = _rules(siteHeaders[0])
            self.responseHeaders = _rules(siteHeaders[1])
        else:
            self.requestHeaders = _rules(siteHeaders[0], rule.request_headers)
            self.responseHeaders = _rules(siteHeaders[1], rule.response_headers)
        exact = [h for h in config.hosts if not isWildcard(h)]
        if exact:
            fallback = exact[0]
        elif config.upstreams:
            first = config.upstreams[0]
            host = f"[{first.host}]" if ":" in first.host else first.host
            default = 443 if first.scheme == "https" else 80
            fallback = host if first.port == default else f"{host}:{first.port}"
        else:
            fallback = "localhost"
        #: The Host sent upstream for a request that came without one.
        self.fallbackHost = fallback.encode("ascii")
        #: The site's routes (the site's own L{SiteRoute} only).
        self.routes: RouteRules | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def hosts(self) -> tuple[str, ...]:
        return self.config.hosts

    @property
    def default(self) -> bool:
        return self.config.default

    def match(self, method: bytes, target: bytes) -> SiteRoute:
        """
        The route of a request for C{target} (origin form; its query is not
        matched) with C{method}: the exact C{path} route, else the longest
        matching C{path_prefix}, else the site's own (among equals, the
        first written).  A site without routes answers at once, without
        looking at the target.
        """
        routes = self.routes
        if routes is None:
            return self
        return routes.match(method, target.split(b"?", 1)[0]) or self


def _restricts(rules: AccessRules) -> bool:
    """
    Whether C{rules} restrict anything.
    """
    return bool(rules.allow or rules.deny or rules.basic_auth or rules.forward_auth)


def _rules(*rules: HeaderRules) -> tuple[HeaderRules, ...]:
    """
    The header rules that apply, in order, without the empty ones.
    """
    return tuple(r for r in rules if r.set or r.add or r.remove)


class RouteRules:
    """
    The routes of one site, as L{SiteRoute.match} reads them: exact paths
    in a dict; prefixes that end a first path segment (C{/api/},
    C{/api/v2/}) grouped by that segment, so a request looks only at its
    own group, and the others (C{/}, C{/static}) apart; each list longest
    first, equals in written order.
    """

    __slots__ = ("_exact", "_groups", "_loose")

    def __init__(self, routes: list[SiteRoute]) -> None:
        self._exact: dict[bytes, list[SiteRoute]] = {}
        groups: dict[bytes, list[tuple[bytes, SiteRoute]]] = {}
        loose: list[tuple[bytes, SiteRoute]] = []
        for route in routes:
            rule = route.rule
            assert rule is not None
            if rule.path is not None:
                self._exact.setdefault(rule.path.encode("utf-8"), []).append(route)
            elif rule.path_prefix is not None:
                prefix = rule.path_prefix.encode("utf-8")
                key = _firstSegment(prefix)
                if key is None:
                    loose.append((prefix, route))
                else:
                    groups.setdefault(key, []).append((prefix, route))
        # Longest first; sorted() is stable, so equals stay in written order.
        self._groups = {
            key: sorted(group, key=lambda item: -len(item[0]))
            for key, group in groups.items()
        }
        self._loose = sorted(loose, key=lambda item: -len(item[0]))

    def all(self) -> list[SiteRoute]:
        """
        Every route, exact ones first.
        """
        routes = [r for group in self._exact.values() for r in group]
        for group in self._groups.values():
            routes += [route for _, route in group]
        return routes + [route for _, route in self._loose]

    def match(self, method: bytes, path: bytes) -> SiteRoute | None:
        exact = self._exact.get(path)
        if exact is not None:
            for route in exact:
                if _allows(route, method):
                    return route
        found: tuple[bytes, SiteRoute] | None = None
        key = _firstSegment(path)
        if key is not None:
            for prefix, route in self._groups.get(key, ()):
                if path.startswith(prefix) and _allows(route, method):
                    found = (prefix, route)
                    break
        for prefix, route in self._loose:
            if found is not None and len(prefix) < len(found[0]):
                break
            if path.startswith(prefix) and _allows(route, method):
                if found is None or (
                    len(prefix) == len(found[0]) and _index(route) < _index(found[1])
                ):
                    found = (prefix, route)
                break
        return None if found is None else found[1]


def _firstSegment(path: bytes) -> bytes | None:
    """
    C{path} up to the end of its first segment, slash included
    (C{/api/} of C{/api/v2/x}), or L{None} when it has no second slash.
    """
    end = path.find(b"/", 1)
    return None if end < 0 else path[: end + 1]


def _index(route: SiteRoute) -> int:
    rule = route.rule
    assert rule is not None
    return rule.index


def _allows(route: SiteRoute, method: bytes) -> bool:
    rule = route.rule
    assert rule is not None
    methods = rule.methods
    return not methods or method.decode("latin-1") in methods


@frozen
class Runtime:
    """
    One generation of the proxy's dynamic state.
    """

    config: Config
    table: RoutingTable[SiteRoute]
    generation: int
    sha256: str = ""
    tls: TLSFiles = NO_TLS_FILES
    #: The names of the sites served over HTTPS: those with certificate
    #: files, and ACME sites.
    secured: frozenset[str] = frozenset()
    #: The port HTTP requests are redirected to (the first listen_https).
    httpsPort: int | None = None

    @property
    def errorPages(self) -> dict[int, bytes] | None:
        """
        The C{[defaults]} error pages, for a request no site takes.
        """
        pages = self.config.defaults.error_pages
        return dict(pages) if pages else None


def buildRuntime(
    config: Config,
    clock: IReactorTime,
    previous: Runtime | None = None,
    tls: TLSFiles | None = None,
) -> Runtime:
    """
    Build the snapshot for C{config}, reusing the upstream selectors of sites
    whose upstreams did not change.

    @param tls: The config's certificate and CA files, already read; when
        L{None}, they are read now.
    @raise ConfigError: A certificate, key or CA file cannot be used.
    """
    if tls is None:
        tls = loadTLSFiles(config, clock.seconds())
    carried: dict[tuple[str, tuple[Upstream, ...]], UpstreamSelector[Upstream]] = {}
    if previous is not None:
        for route in previous.table.sites:
            carried[(route.name, route.selector.upstreams)] = route.selector
            for child in route.routes.all() if route.routes is not None else ():
                carried.setdefault(
                    (route.name, child.selector.upstreams), child.selector
                )

    routes = []

    def selectorFor(
        site: SiteConfig, upstreams: tuple[Upstream, ...]
    ) -> UpstreamSelector[Upstream]:
        # A site and its routes with the same upstreams share one selector
        # (round robin and back-off), and keep it across reloads.
        selector = carried.get((site.name, upstreams))
        if selector is None:
            selector = carried[(site.name, upstreams)] = UpstreamSelector(
                upstreams, clock
            )
        return selector

    for site in config.sites:
        upstreamTLS = tls.upstreamTLS.get(site.name, SYSTEM_TRUST)
        route = SiteRoute(site, selectorFor(site, site.upstreams), upstreamTLS)
        if site.routes:
            route.routes = RouteRules(
                [
                    SiteRoute(
                        _routeConfig(site, rule),
                        selectorFor(site, rule.upstreams),
                        upstreamTLS,
                        rule=rule,
                        site=route,
                    )
                    for rule in site.routes
                ]
            )
        routes.append(route)
    generation = previous.generation + 1 if previous is not None else 1
    return Runtime(
        config=config,
        table=RoutingTable(routes),
        generation=generation,
        sha256=config.source_sha256,
        tls=tls,
        # ACME sites are served over HTTPS from the start (with a
        # placeholder until their certificate is issued).
        secured=frozenset(name for names in tls.sites.values() for name in names)
        | {site.name for site in config.sites if site.tls == "acme"},
        httpsPort=(
            endpointPort(config.server.listen_https[0])
            if config.server.listen_https
            else None
        ),
    )


def _routeConfig(site: SiteConfig, rule: RouteConfig) -> SiteConfig:
    """
    The config a request of route C{rule} is answered by: its site's, with
    the route's upstreams and whatever limits the route sets.
    """
    return attrs.evolve(
        site,
        upstreams=rule.upstreams,
        max_body_bytes=(
            site.max_body_bytes if rule.max_body_bytes is None else rule.max_body_bytes
        ),
        rate_limit=site.rate_limit if rule.rate_limit is None else rule.rate_limit,
        connect_timeout_secs=(
            site.connect_timeout_secs
            if rule.connect_timeout_secs is None
            else rule.connect_timeout_secs
        ),
        response_timeout_secs=(
            site.response_timeout_secs
            if rule.response_timeout_secs is None
            else rule.response_timeout_secs
        ),
    )


class RuntimeHolder:
    """
    The single mutable reference to the current L{Runtime}.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.current = runtime
