"""
Tests for L{revproxy.proxy.eager}'s L{plainTCP} and L{writerFor} on
in-memory transports; the eager writers on a real loopback connection are
in L{tests.integration.test_eager}.
"""

from __future__ import annotations

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.tcp import Connection
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.trial.unittest import SynchronousTestCase

from revproxy.proxy.eager import plainTCP, writerFor


class PlainTCPTests(SynchronousTestCase):
    """
    L{plainTCP} finds only a plain TCP connection.
    """

    def test_notTCP(self) -> None:
        """
        A string transport, or a wrapper around one, has no plain TCP
        connection: no eager writer.
        """
        transport = StringTransport()
        self.assertIsNone(plainTCP(transport))
        self.assertIsNone(writerFor(transport))
        wrapper = ProtocolWrapper(WrappingFactory(Factory()), Protocol())
        wrapper.makeConnection(transport)
        self.assertIsNone(plainTCP(wrapper))

    def test_wrapperThatWrites(self) -> None:
        """
        A wrapper that does something with what is written (its own
        C{write}) is not looked through.
        """

        class Counting(ProtocolWrapper):
            def write(self, data: bytes) -> None:
                super().write(data)

        wrapper = Counting(WrappingFactory(Factory()), Protocol())
        wrapper.transport = Connection.__new__(Connection)
        self.assertIsNone(plainTCP(wrapper))
