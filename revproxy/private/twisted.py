# -*- test-case-name: tests.test_private_names,tests.integration.test_eager -*-
"""
Twisted's private names: the write buffer of its TCP transport, the
addresses its server endpoints will listen on, a spawned process's pipes,
and C{IOpenSSLTrustRoot}
(only in the private C{twisted.internet._sslverify}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet._sslverify import IOpenSSLTrustRoot

__all__ = [
    "IOpenSSLTrustRoot",
    "canSendNow",
    "flushToChild",
    "tcpBacklog",
    "tcpInterface",
    "tcpPort",
    "unixPath",
]


def canSendNow(connection: Any) -> bool:
    """
    Whether bytes sent straight to the socket of C{connection}, a
    C{twisted.internet.tcp.Connection}, come in order: nothing waits in its
    write buffer and it can still write.

    That buffer is only in private attributes of
    C{twisted.internet.abstract.FileDescriptor}: C{_tempDataLen} (bytes
    written since the last send), C{dataBuffer} and C{offset} (what the
    last send left), and C{_writeDisconnected}.
    """
    return bool(
        not connection._tempDataLen
        and connection.offset == len(connection.dataBuffer)
        and connection.connected
        and not connection.disconnecting
        and not connection._writeDisconnected
    )


def flushToChild(process: object, childFD: int) -> None:
    """
    Write what C{process} (a C{twisted.internet.process.Process}) has
    buffered for the child's descriptor C{childFD} now, instead of when the
    reactor next finds the pipe writable.

    The pipes are only in C{Process.pipes} (not part of
    C{IProcessTransport}), each a C{ProcessWriter} whose C{doWrite} sends.
    """
    pipe = getattr(process, "pipes", {}).get(childFD)
    if pipe is not None and not (pipe.disconnecting or pipe.disconnected):
        pipe.doWrite()


def tcpPort(endpoint: object, default: object = None) -> Any:
    """
    The port a C{TCP4ServerEndpoint} or C{TCP6ServerEndpoint} will listen
    on (its private C{_port}), or C{default} for another endpoint.
    """
    return getattr(endpoint, "_port", default)


def tcpInterface(endpoint: object) -> Any:
    """
    The interface a C{TCP4ServerEndpoint} or C{TCP6ServerEndpoint} will
    listen on (its private C{_interface}; C{""} for all), or C{""} for
    another endpoint.
    """
    return getattr(endpoint, "_interface", "")


def tcpBacklog(endpoint: object) -> Any:
    """
    The listen backlog of a C{TCP4ServerEndpoint} or C{TCP6ServerEndpoint}
    (its private C{_backlog}), or 50 (Twisted's default) for another
    endpoint.
    """
    return getattr(endpoint, "_backlog", 50)


def unixPath(endpoint: object) -> Any:
    """
    The path a C{UNIXServerEndpoint} will listen on (its private
    C{_address}), or L{None} for another endpoint.
    """
    return getattr(endpoint, "_address", None)
