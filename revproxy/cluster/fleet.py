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
from collections.abc import Iterator
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults

from revproxy.acme.storage import AcmeStorage
from revproxy.admin import SupportsReload
from revproxy.cluster.challenges import SharedChallenges
from revproxy.cluster.locks import OrderLock
from revproxy.cluster.nodes import Nodes
from revproxy.cluster.orders import FleetOrders
from revproxy.cluster.redis import RedisLink, RedisSubscription
from revproxy.cluster.reloads import FleetReloads, reloadHereWith
from revproxy.cluster.secrets import SealedKeys
from revproxy.cluster.storage import SharedAcmeState
from revproxy.config import ClusterConfig, Config
from revproxy.interfaces import IChallengeResponder, IRevProxyReactor


class Fleet(Service):
    """
    This node in the fleet (named C{"cluster"}).

    @ivar link: The connection for the fleet's state.
    @ivar subscription: The fleet's messages.
    @ivar nodes: The heartbeat and the live nodes.
    @ivar orders: The ACME orders, shared.
    @ivar reloads: The fleet-wide reloads (C{reload_channel}), once
        L{enableReloads} made them.
    @ivar challenges: The ACME challenge answers, shared, once
        L{shareChallenges} made them.
    """

    name = "cluster"

    def __init__(
        self, reactor: IRevProxyReactor, cluster: ClusterConfig, stateDir: str
    ) -> None:
        self.cluster = cluster
        self._reactor = reactor
        self.reloads: FleetReloads | None = None
        self.challenges: SharedChallenges | None = None
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
            joined=lambda: self.nodes.firstSeenAt,
        )
        # The first beat was skipped if Redis was not connected yet.
        self.subscription.onSubscribed(self.nodes.beat)

    def shareChallenges(self, local: IChallengeResponder) -> SharedChallenges:
        """
        The challenge answers of this node's orders, told to every node
        (and the other nodes' answers, mirrored into C{local}).  Before
        start.
        """
        self.challenges = SharedChallenges(
            self._reactor,
            self.link,
            self.subscription,
            self.nodes,
            self.cluster.key_prefix,
            local,
        )
        return self.challenges

    def enableReloads(self, reloader: SupportsReload) -> FleetReloads | None:
        """
        With C{reload_channel}, the fleet-wide reloads of C{reloader} (the
        admin C{reload} asks every node); else L{None}.  Before start.
        """
        if not self.cluster.reload_channel:
            return None
        self.reloads = FleetReloads(
            self._reactor,
            self.link,
            self.subscription,
            self.nodes,
            self.cluster.key_prefix,
            reloadHereWith(reloader),
        )
        return self.reloads

    def startService(self) -> None:
        super().startService()
        self.link.startService()
        self.subscription.startService()
        self.nodes.start()
        self.orders.start()
        if self.challenges is not None:
            self.challenges.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self.reloads is not None:
            self.reloads.stop()
        self.orders.stop()
        if self.challenges is not None:
            self.challenges.stop()
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


class FleetCollector:
    """
    The fleet as this node sees it, for C{/metrics}: whether its own
    connection to Redis (ACME, challenges, heartbeat, reloads; not the
    rate limits') is up and subscribed, and how many nodes are live.
    """

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def describe(self) -> list[Any]:
        return list(self.collect())

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        fleet = self.fleet
        yield GaugeMetricFamily(
            "revproxy_cluster_control_up",
            "Whether this node's connection to the fleet's Redis (certificates, "
            "challenges, heartbeat, reloads) is open and subscribed",
            value=1.0 if fleet.link.up and fleet.subscription.subscribed else 0.0,
        )
        yield GaugeMetricFamily(
            "revproxy_cluster_nodes",
            "The fleet's live nodes (by their heartbeats), as this node last saw them",
            value=float(len(fleet.nodes.live)),
        )


def buildFleet(config: Config, reactor: IRevProxyReactor) -> Fleet | None:
    """
    This node's fleet part, or L{None} without C{[cluster]}.
    """
    if config.cluster is None:
        return None
    return Fleet(reactor, config.cluster, config.server.state_dir)
