# -*- test-case-name: tests.test_service -*-
"""
revproxy's own interfaces.
"""

from __future__ import annotations

from twisted.internet.interfaces import (
    IReactorCore,
    IReactorFromThreads,
    IReactorSSL,
    IReactorTCP,
    IReactorTime,
    IReactorUNIX,
)


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
