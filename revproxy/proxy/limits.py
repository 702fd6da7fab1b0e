# -*- test-case-name: tests.test_http1 -*-
"""
The limits and deadlines of a client connection (L{ConnectionLimits}), as
the client-side protocols read them.
"""

from __future__ import annotations

import attrs

from revproxy.config import ServerConfig

_SERVER = ServerConfig()


@attrs.frozen
class ConnectionLimits:
    """
    The limits and deadlines of a client connection, from C{[server]} (see
    L{revproxy.config.ServerConfig} for each field); the defaults are its
    defaults.
    """

    max_request_line_bytes: int = _SERVER.max_request_line_bytes
    max_header_bytes: int = _SERVER.max_header_bytes
    max_headers_total_bytes: int = _SERVER.max_headers_total_bytes
    max_header_fields: int = _SERVER.max_header_fields
    header_timeout_secs: float = _SERVER.header_timeout_secs
    body_timeout_secs: float = _SERVER.body_timeout_secs
    min_body_rate_bytes_per_sec: int = _SERVER.min_body_rate_bytes_per_sec
    keepalive_timeout_secs: float = _SERVER.keepalive_timeout_secs
    send_timeout_secs: float = _SERVER.send_timeout_secs
    max_requests_per_connection: int = _SERVER.max_requests_per_connection
    lingering_close_secs: float = _SERVER.lingering_close_secs

    @classmethod
    def fromServer(cls, server: ServerConfig) -> ConnectionLimits:
        """
        The limits a C{[server]} table sets.
        """
        return cls(
            **{field.name: getattr(server, field.name) for field in attrs.fields(cls)}
        )


#: The limits of a front end built without any: C{[server]}'s defaults.
DEFAULT_LIMITS = ConnectionLimits()
