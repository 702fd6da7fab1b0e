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

from attrs import frozen
from twisted.internet.interfaces import IReactorTime

from revproxy.config import Config, SiteConfig, Upstream, endpointPort
from revproxy.hostnames import RoutingTable, isWildcard
from revproxy.proxy.pool import UpstreamSelector
from revproxy.proxy.upstream import PoolKey
from revproxy.proxy.upstreamtls import SYSTEM_TRUST, UpstreamTLS
from revproxy.tls import NO_TLS_FILES, TLSFiles, loadTLSFiles


class SiteRoute:
    """
    A site as the request path sees it: its config and its upstream selector.
    Satisfies L{revproxy.hostnames.HasHosts}.
    """

    __slots__ = ("config", "fallbackHost", "hsts", "keys", "selector")

    def __init__(
        self,
        config: SiteConfig,
        selector: UpstreamSelector[Upstream],
        upstreamTLS: UpstreamTLS = SYSTEM_TRUST,
    ) -> None:
        """
        @param upstreamTLS: How the site's https:// upstreams are verified.
        """
        self.config = config
        self.selector = selector
        self.keys: dict[Upstream, PoolKey] = {
            u: (u.scheme, u.host, u.port, upstreamTLS if u.scheme == "https" else None)
            for u in config.upstreams
        }
        #: The Strict-Transport-Security value for HTTPS responses, if any.
        self.hsts = (
            b"max-age=%d" % (config.hsts_max_age_secs,)
            if config.hsts_max_age_secs
            else None
        )
        exact = [h for h in config.hosts if not isWildcard(h)]
        if exact:
            fallback = exact[0]
        else:
            first = config.upstreams[0]
            host = f"[{first.host}]" if ":" in first.host else first.host
            default = 443 if first.scheme == "https" else 80
            fallback = host if first.port == default else f"{host}:{first.port}"
        #: The Host sent upstream for a request that came without one.
        self.fallbackHost = fallback.encode("ascii")

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def hosts(self) -> tuple[str, ...]:
        return self.config.hosts

    @property
    def default(self) -> bool:
        return self.config.default


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
    routes = []
    for site in config.sites:
        selector = carried.get((site.name, site.upstreams))
        if selector is None:
            selector = UpstreamSelector(site.upstreams, clock)
        routes.append(
            SiteRoute(site, selector, tls.upstreamTLS.get(site.name, SYSTEM_TRUST))
        )
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


class RuntimeHolder:
    """
    The single mutable reference to the current L{Runtime}.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.current = runtime
