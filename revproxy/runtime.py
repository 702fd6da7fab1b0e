# -*- test-case-name: tests.test_runtime -*-
"""
The immutable snapshot every request reads, and the one reference a reload
swaps.

A L{Runtime} is built whole from a L{Config} off to the side; requests take
C{holder.current} once at their start and keep it.  State that must outlive a
reload (upstream selectors with their back-off) is carried over by key from
the previous snapshot.
"""

from __future__ import annotations

from attrs import frozen
from twisted.internet.interfaces import IReactorTime

from revproxy.config import Config, endpointPort
from revproxy.hostnames import RoutingTable
from revproxy.proxy.forwarder import SiteRoute
from revproxy.proxy.pool import UpstreamSelector
from revproxy.proxy.upstreamtls import SYSTEM_TRUST
from revproxy.tls import NO_TLS_FILES, TLSFiles, loadTLSFiles


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
    carried: dict[tuple[str, tuple[object, ...]], UpstreamSelector] = {}
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
