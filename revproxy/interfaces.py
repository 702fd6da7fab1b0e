# -*- test-case-name: tests.test_service,tests.test_tls -*-
"""
revproxy's own interfaces.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.interfaces import (
    IReactorCore,
    IReactorFromThreads,
    IReactorSSL,
    IReactorTCP,
    IReactorTime,
    IReactorUNIX,
)
from zope.interface import Interface

if TYPE_CHECKING:
    from revproxy.tls import LoadedCertificate


class IRevProxyReactor(
    IReactorCore,
    IReactorTime,
    IReactorTCP,
    IReactorSSL,
    IReactorUNIX,
    IReactorFromThreads,
):
    """
    The reactor capabilities revproxy uses, as one type (Twisted's disttrial
    pattern): the global reactor is cast to it once, in L{revproxy.tap}.
    """


class ICertificateStore(Interface):
    """
    Server names to certificates.
    """

    def lookup(serverName: str | None) -> LoadedCertificate | None:
        """
        The certificate for a TLS server name (SNI).

        @param serverName: The name the client asked for, or L{None} when it
            sent no SNI.
        @return: The certificate for that name, else the default
            certificate, else L{None} (refuse the handshake).
        """

    def all() -> list[LoadedCertificate]:
        """
        Every certificate in the store, each once.
        """
