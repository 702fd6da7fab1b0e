# -*- test-case-name: tests.test_service -*-
"""
Building the ACME certificate manager from the config.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

from revproxy.acme.issuer import AcmeIssuer
from revproxy.acme.renewal import AcmeManager
from revproxy.acme.storage import AcmeStorage
from revproxy.cluster.orders import FleetOrders
from revproxy.config import Config
from revproxy.interfaces import IChallengeResponder, IIssuer, IRevProxyReactor

_log = Logger()


def acmeManager(
    config: Config,
    reactor: IRevProxyReactor,
    challenges: IChallengeResponder,
    onChange: Callable[[], None],
    orders: FleetOrders | None = None,
) -> AcmeManager:
    """
    The ACME manager for C{config}: certificates stored under
    C{server.state_dir}, issued by the C{[acme]} directory.  Nothing is read
    or sent until a site needs it.

    @param onChange: called whenever a site's certificate changes.
    @param orders: the fleet's orders (C{[cluster]}): one order per site
        across the nodes, the certificates shared.
    """
    storage = AcmeStorage(config.server.state_dir)
    acme = config.acme

    def issuer() -> IIssuer:
        key, created = storage.accountKey()
        if created:
            _log.info(
                "ACME: created the account key in {dir}", dir=config.server.state_dir
            )
        directory = acme.directory_url

        def remember(uri: str) -> None:
            storage.saveAccountURI(directory, uri)
            if orders is not None:
                orders.saveAccountURI(directory, uri)

        return AcmeIssuer(
            reactor,
            directory,
            acme.email,
            key,
            caFile=acme.ca_file,
            accountURI=storage.accountURI(directory),
            onAccount=remember,
            challenge="tls-alpn-01" if acme.challenge == "tls-alpn-01" else "http-01",
        )

    manager = AcmeManager(
        reactor, storage, issuer, acme, challenges, onChange=onChange, orders=orders
    )
    if orders is not None:
        orders.manager = manager
    return manager
