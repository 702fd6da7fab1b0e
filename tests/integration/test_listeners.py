"""
Tests for L{revproxy.listeners} on real loopback sockets: the cap on client
connections holds clients beyond it in the kernel's backlog.
"""

from __future__ import annotations

import socket
from typing import Any, cast

from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from revproxy.drain import ConnectionTracker
from revproxy.listeners import ConnectionGate, Listener


class _Holder(Protocol):
    """
    Keeps its connection and tells when it is made.
    """

    def connectionMade(self) -> None:
        cast(Any, self.factory).made.append(self)


class RealSocketTests(TestCase):
    """
    The cap on loopback sockets: a client beyond it is not accepted (it
    waits in the backlog) until another leaves.
    """

    async def test_backlogUntilOneCloses(self) -> None:
        from twisted.internet import reactor

        gate = ConnectionGate(2, cast(Any, reactor))
        inner = Factory.forProtocol(_Holder)
        inner.made = []  # type: ignore[attr-defined]
        tracker = ConnectionTracker(inner, gate)
        service = Listener(
            TCP4ServerEndpoint(cast(Any, reactor), 0, interface="127.0.0.1"),
            tracker,
            gate,
        )
        service.startService()
        self.addCleanup(service.stopService)
        assert service.port is not None
        port = service.port.getHost().port  # type: ignore[attr-defined]
        clients = []
        for _ in range(3):
            client = socket.create_connection(("127.0.0.1", port))
            self.addCleanup(client.close)
            clients.append(client)
            await deferLater(cast(Any, reactor), 0.05, lambda: None)
        for _ in range(20):
            if len(inner.made) >= 2:  # type: ignore[attr-defined]
                break
            await deferLater(cast(Any, reactor), 0.05, lambda: None)
        await deferLater(cast(Any, reactor), 0.2, lambda: None)
        made = inner.made  # type: ignore[attr-defined]
        self.assertEqual(len(made), 2)
        self.assertTrue(gate.paused)
        made[0].transport.loseConnection()
        for _ in range(40):
            if len(made) == 3:
                break
            await deferLater(cast(Any, reactor), 0.05, lambda: None)
        self.assertEqual(len(made), 3)
        self.assertEqual(gate.refused, 0)
        for protocol in made:
            protocol.transport.loseConnection()
        for _ in range(40):
            if gate.open == 0:
                break
            await deferLater(cast(Any, reactor), 0.05, lambda: None)
        self.assertEqual(gate.open, 0)
        self.assertEqual(len(tracker.protocols), 0)
