"""
Small fakes shared by the TLS unit tests.
"""

from __future__ import annotations

from types import TracebackType

from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.python.failure import Failure
from zope.interface import implementer


@implementer(ISSLTransport)
class TLSTransport(StringTransportWithDisconnection):
    """
    A client connection that arrived over TLS, as the site sees it (what
    C{TLSMemoryBIOProtocol} provides).
    """

    def getPeerCertificate(self) -> None:
        return None

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def getTcpNoDelay(self) -> bool:
        return True

    def setTcpKeepAlive(self, enabled: bool) -> None:
        pass

    def getTcpKeepAlive(self) -> bool:
        return False

    def loseWriteConnection(self) -> None:
        self.loseConnection()


class Echo(Protocol):
    """
    Writes back what it receives.
    """

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class Recorder(Protocol):
    """
    Records what it receives and why its connection was lost.
    """

    def __init__(self) -> None:
        self.data = b""
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = reason


class ExceptHookRecorder:
    """
    A C{sys.excepthook} that records the exceptions it is given (pyOpenSSL
    reports those raised in its callbacks through it).
    """

    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    def __call__(
        self,
        kind: type[BaseException],
        value: BaseException,
        tb: TracebackType | None,
    ) -> None:
        self.errors.append(value)
