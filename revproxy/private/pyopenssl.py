# -*- test-case-name: tests.test_private_names -*-
"""
pyOpenSSL's private names: the OpenSSL binding it uses itself
(C{OpenSSL._util.lib}), a context's OpenSSL pointer (C{Context._context})
and the type of C{SSL.NO_OVERLAPPING_PROTOCOLS}
(C{SSL._NoOverlappingProtocols}).
"""

from __future__ import annotations

from typing import TypeAlias

from OpenSSL import SSL

NoOverlappingProtocols: TypeAlias = "SSL._NoOverlappingProtocols"
"""
The type of C{SSL.NO_OVERLAPPING_PROTOCOLS}, what an ALPN callback returns
to select no protocol (an annotation only: never looked up at run time).
"""


def setCurvesList(context: SSL.Context, groups: bytes) -> bool:
    """
    Call OpenSSL's C{SSL_CTX_set1_curves_list} on C{context}: restrict its
    key exchange groups to C{groups} (as C{b"X25519:P-256"}).

    pyOpenSSL has no C{set_groups}, and C{set_tmp_ecdh} allows a single
    curve (no X25519 then), so this goes through the OpenSSL binding
    pyOpenSSL itself uses.  The binding is imported here, on first use,
    not when revproxy starts.

    @return: Whether OpenSSL accepted C{groups}.
    """
    from OpenSSL._util import lib

    return bool(lib.SSL_CTX_set1_curves_list(context._context, groups) == 1)
