# -*- test-case-name: tests.test_cluster_fleet -*-
"""
This node's part in the fleet (C{[cluster]}): one per proxy (the
supervisor's, with workers), apart from the request path's rate limits.

It holds a Redis connection for the fleet's state (not the one the rate
limits use on the request path), the subscription to the fleet's
messages, the node heartbeat, and the ACME orders shared through Redis
(L{revproxy.cluster.orders}).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults

from revproxy.acme.storage import AcmeStorage
from revproxy.cluster.locks import OrderLock
from revproxy.cluster.nodes import Nodes
from revproxy.cluster.orders import FleetOrders
from revproxy.cluster.redis import RedisLink, RedisSubscription
from revproxy.cluster.secrets import SealedKeys
from revproxy.cluster.storage import SharedAcmeState
from revproxy.config import ClusterConfig, Config
from revproxy.interfaces import IRevProxyReactor


class Fleet(Service):
    """
    This node in the fleet (named C{"cluster"}).

    @ivar link: The connection for the fleet's state.
    @ivar subscription: The fleet's messages.
    @ivar nodes: The heartbeat and the live nodes.
    @ivar orders: The ACME orders, shared.
    """

    name = "cluster"

    def __init__(
        self, reactor: IRevProxyReactor, cluster: ClusterConfig, stateDir: str
    ) -> None:
        self.cluster = cluster
        prefix = cluster.key_prefix
        node = cluster.node_name
        self.link = RedisLink(reactor, cluster)
        self.subscription = RedisSubscription(reactor, cluster)
        self.nodes = Nodes(reactor, self.link, prefix, node)
        self.shared = SharedAcmeState(
            self.link, prefix, SealedKeys(cluster.secret), node
        )
        self.orders = FleetOrders(
            reactor,
            self.link,
            self.subscription,
            self.shared,
            OrderLock(reactor, self.link, prefix, f"{node}:{os.getpid()}"),
            AcmeStorage(stateDir),
        )

    def startService(self) -> None:
        super().startService()
        self.link.startService()
        self.subscription.startService()
        self.nodes.start()
        self.orders.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.orders.stop()
        self.nodes.stop()
        stopping: list[Deferred[Any]] = []
        for part in (self.subscription, self.link):
            d = part.stopService()
            if d is not None:
                stopping.append(d)
        return gatherResults(stopping, consumeErrors=True).addBoth(lambda _: None)

    def status(self) -> dict[str, object]:
        """
        The fleet as this node sees it (admin C{status}).
        """
        return {
            "node": self.cluster.node_name,
            "redis": "up" if self.link.up else "down",
            "nodes": list(self.nodes.live),
        }


def buildFleet(config: Config, reactor: IRevProxyReactor) -> Fleet | None:
    """
    This node's fleet part, or L{None} without C{[cluster]}.
    """
    if config.cluster is None:
        return None
    return Fleet(reactor, config.cluster, config.server.state_dir)
