# -*- test-case-name: tests.test_service,tests.test_tls -*-
"""
revproxy's own interfaces.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    from twisted.internet.defer import Deferred

    from revproxy.certificates import LoadedCertificate, PrivateKey


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


class IChallengeResponder(Interface):
    """
    Where ACME challenge answers are published while an order is being
    validated.  Called on the reactor thread only.
    """

    def addHTTP01(token: str, keyAuthorization: str) -> None:
        """
        Answer C{GET /.well-known/acme-challenge/TOKEN} on every HTTP
        listener with C{keyAuthorization}.
        """

    def removeHTTP01(token: str) -> None:
        """
        Stop answering for C{token}; unknown tokens are ignored.
        """

    def addTLSALPN01(name: str, keyAuthorization: str) -> None:
        """
        Answer TLS connections for SNI C{name} that offer ALPN
        C{acme-tls/1} with the RFC 8737 challenge certificate for
        C{keyAuthorization}.
        """

    def removeTLSALPN01(name: str) -> None:
        """
        Stop answering tls-alpn-01 for C{name}; unknown names are ignored.
        """

    def published() -> Deferred[None]:
        """
        Fires when every answer added so far can be served wherever the CA
        may connect (every worker, every node of the fleet), or when no
        longer waiting for that makes sense; it never fails.  The issuer
        asks the CA to validate only after it fired.
        """


class IIssuer(Interface):
    """
    Obtains certificates from a CA.  Implementations run their blocking
    work off the reactor thread and put a deadline on every call.
    """

    def issue(
        names: Sequence[str], key: PrivateKey, responder: IChallengeResponder
    ) -> Deferred[list[bytes]]:
        """
        Order one certificate for all of C{names}, with a CSR signed by
        C{key}, answering the challenges through C{responder} (and removing
        the answers afterwards, whatever happens).

        @return: Fires with the chain, leaf first, one PEM certificate per
            item; fails with L{revproxy.acme.AcmeError}.
        """

    def renewalWindow(leafPEM: bytes) -> Deferred[tuple[float, float] | None]:
        """
        The CA's suggested renewal window for a certificate (ARI, RFC
        9773), as (start, end) in seconds since the epoch.

        @return: Fires with the window, or L{None} when the directory does
            not offer C{renewalInfo}; fails with L{revproxy.acme.AcmeError}.
        """
