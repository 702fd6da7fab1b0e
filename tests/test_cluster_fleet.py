# -*- test-case-name: tests.test_cluster_fleet -*-
"""
Tests for L{revproxy.cluster.fleet}: how a node's fleet part is built and
wired into the service tree (with C{[cluster]}) or left out (without).
"""

from __future__ import annotations

import os
from typing import cast

import attrs
from twisted.application.service import MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from revproxy.acme.renewal import AcmeManager
from revproxy.admin import AdminFactory, AdminSocket
from revproxy.cluster.challenges import SharedChallenges
from revproxy.cluster.fleet import Fleet, buildFleet
from revproxy.cluster.orders import FleetOrders
from revproxy.config import Config, loadConfig
from revproxy.interfaces import IRevProxyReactor
from revproxy.service import RequestPath, RevProxyService, buildService
from revproxy.workers.supervisor import MirroredChallenges, buildSupervisor


class FleetWiringTests(SynchronousTestCase):
    """
    With C{[cluster]} the service tree has the node's fleet part
    (C{"cluster"}): the ACME manager orders through it and publishes its
    challenges through it, the admin C{status} shows it, and C{reload}
    asks the fleet only with C{reload_channel}.  Without C{[cluster]},
    nothing of it is there.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.secret = os.path.join(self.directory, "cluster.key")
        with open(self.secret, "wb") as f:
            f.write(b"s" * 32)
        os.chmod(self.secret, 0o600)

    def config(self, cluster: bool = True, reloadChannel: bool = False) -> Config:
        text = f"""\
[server]
listen_http = ["tcp:8080:interface=127.0.0.1"]
listen_https = ["tcp:8443:interface=127.0.0.1"]
admin_socket_path = "{self.directory}/admin.sock"
ops_listen = ""
state_dir = "{self.directory}/state"

[[sites]]
name = "auto"
hosts = ["auto.example"]
upstreams = ["http://127.0.0.1:9000"]
tls = "acme"

[acme]
email = "ops@example.com"
"""
        if cluster:
            text += f"""
[cluster]
redis_url = "redis://127.0.0.1:6379/0"
secret_file = "{self.secret}"
node_name = "node-a"
reload_channel = {"true" if reloadChannel else "false"}
"""
        path = os.path.join(self.directory, "revproxy.toml")
        with open(path, "w") as f:
            f.write(text)
        return loadConfig(path)

    def build(self, config: Config) -> tuple[RevProxyService, AdminFactory]:
        top = buildService(
            config, config.path, cast(IRevProxyReactor, MemoryReactorClock())
        )
        operations = cast(MultiService, top.getServiceNamed("operations"))
        admin = cast(AdminSocket, operations.getServiceNamed("admin"))
        return top, cast(AdminFactory, admin.factory)

    def test_withoutCluster(self) -> None:
        """
        Without C{[cluster]}: no fleet part, orders are the process's own,
        the challenges go to the local store only, C{status} has no
        C{cluster}.
        """
        config = self.config(cluster=False)
        self.assertIsNone(buildFleet(config, cast(IRevProxyReactor, None)))
        top, factory = self.build(config)
        names = [service.name for service in top]
        self.assertNotIn("cluster", names)
        manager = cast(AcmeManager, top.getServiceNamed("acme"))
        self.assertNotIsInstance(manager._orders, FleetOrders)
        self.assertNotIsInstance(manager._challenges, SharedChallenges)
        self.assertNotIn("cluster", factory.status([]))
        self.assertIsNone(factory.operations.fleet)

    def test_withCluster(self) -> None:
        """
        With C{[cluster]}: the fleet part, started before the ACME manager,
        orders and challenges through it, and C{status} shows the node and
        Redis (down until connected).
        """
        top, factory = self.build(self.config())
        names = [service.name for service in top]
        self.assertLess(names.index("cluster"), names.index("acme"))
        fleet = cast(Fleet, top.getServiceNamed("cluster"))
        manager = cast(AcmeManager, top.getServiceNamed("acme"))
        self.assertIs(manager._orders, fleet.orders)
        self.assertIs(fleet.orders.manager, manager)
        self.assertIs(manager._challenges, fleet.challenges)
        self.assertEqual(
            factory.status([])["cluster"],
            {"node": "node-a", "redis": "down", "nodes": []},
        )
        # Without reload_channel, reload stays this node's.
        self.assertIsNone(factory.operations.fleet)
        self.assertIsNone(fleet.reloads)

    def test_reloadChannel(self) -> None:
        """
        With C{reload_channel = true}, the admin C{reload} goes through the
        fleet's reloads.
        """
        top, factory = self.build(self.config(reloadChannel=True))
        fleet = cast(Fleet, top.getServiceNamed("cluster"))
        self.assertIsNotNone(fleet.reloads)
        self.assertIs(factory.operations.fleet, fleet.reloads)

    def test_withWorkers(self) -> None:
        """
        With workers, the supervisor holds the node's fleet part: its
        manager orders through it, and the shared challenges wrap the ones
        mirrored to the workers.
        """
        config = self.config()
        config = attrs.evolve(config, server=attrs.evolve(config.server, workers=2))
        top = buildSupervisor(
            config, config.path, cast(IRevProxyReactor, MemoryReactorClock())
        )
        fleet = cast(Fleet, top.getServiceNamed("cluster"))
        manager = cast(AcmeManager, top.getServiceNamed("acme"))
        self.assertIs(manager._orders, fleet.orders)
        challenges = fleet.challenges
        assert challenges is not None
        self.assertIs(manager._challenges, challenges)
        self.assertIsInstance(challenges.local, MirroredChallenges)

    def test_metrics(self) -> None:
        """
        C{/metrics} of a node in the fleet has whether its own connection
        is up and subscribed, and how many nodes it sees live.
        """
        from prometheus_client import generate_latest

        top, _ = self.build(self.config())
        fleet = cast(Fleet, top.getServiceNamed("cluster"))
        path = cast(RequestPath, top.getServiceNamed("request-path"))
        fleet.nodes.live = ("node-a", "node-b", "node-c")
        text = generate_latest(path.metrics.registry).decode("utf-8")
        self.assertIn("revproxy_cluster_nodes 3.0", text)
        self.assertIn("revproxy_cluster_control_up 0.0", text)
