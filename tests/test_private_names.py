"""
The private names of other libraries that revproxy uses before #13 and
that no other test names, each wrapped in one place: a release that
changes one fails here instead of in production.  (Twisted's TCP buffer
names are named in L{tests.integration.test_eager}; h2's
C{_expected_content_length} in L{tests.test_http2}; pyOpenSSL's
C{SSL_CTX_set1_curves_list} in L{tests.test_tls}.)
"""

from __future__ import annotations

from acme.client import ClientV2
from OpenSSL import SSL
from twisted.internet import _sslverify
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.interface import InterfaceClass


class PrivateNamesTests(SynchronousTestCase):
    """
    Each private name still is what revproxy takes it for.
    """

    def test_acmePostAsGet(self) -> None:
        """
        C{acme}'s C{ClientV2._post_as_get}, the POST-as-GET of RFC 8555
        section 6.3, wrapped in L{revproxy.acme.client}'s C{_postAsGet}.
        """
        self.assertTrue(callable(ClientV2._post_as_get))

    def test_noOverlappingProtocols(self) -> None:
        """
        pyOpenSSL's C{_NoOverlappingProtocols}, the type of what an ALPN
        callback returns to select nothing, named in the annotation of
        L{revproxy.tls}'s ALPN callback.
        """
        self.assertIsInstance(SSL.NO_OVERLAPPING_PROTOCOLS, SSL._NoOverlappingProtocols)

    def test_trustRootInterface(self) -> None:
        """
        Twisted's C{IOpenSSLTrustRoot} (only in its private C{_sslverify}),
        the type of what the public C{trustRootFromCertificates} returns,
        named in the annotation of L{revproxy.proxy.upstreamtls}'s
        C{UpstreamTLS.trustRoot}.
        """
        self.assertIsInstance(_sslverify.IOpenSSLTrustRoot, InterfaceClass)
        self.assertIn("_addCACertsToContext", _sslverify.IOpenSSLTrustRoot.names())
