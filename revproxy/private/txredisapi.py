# -*- test-case-name: tests.test_private_names -*-
"""
txredisapi's undocumented names: whether a connection factory has an open
connection (its C{pool} of connected protocols).
"""

from __future__ import annotations

from typing import Any

__all__ = ["connected"]


def connected(factory: Any) -> bool:
    """
    Whether the txredisapi C{RedisFactory} C{factory} has a connection
    open now (its C{pool}, the protocols connected and not yet lost).
    """
    return bool(factory.pool)
