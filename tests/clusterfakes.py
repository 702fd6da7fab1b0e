"""
Fakes of the fleet's Redis for the unit tests of L{revproxy.cluster}: no
real Redis, no network, every reply at once, expiry on the test's clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from tests.test_cluster_locks import FakeRedis as LockScriptsRedis


class FakeRedis(LockScriptsRedis):
    """
    A Redis for L{revproxy.cluster.redis.RedisLink}'s users: the lock
    scripts (as L{tests.test_cluster_locks.FakeRedis} plays them), and the
    plain commands the fleet's state uses, on the same dictionary of
    C{key: (value, expires)} (C{inf}: no expiry) and a dictionary of
    hashes; replies are what txredisapi's C{execute_command} gives (bulk
    strings as L{str}, C{HGETALL} a flat list).

    @ivar commands: Every command sent, as sent.
    @ivar published: Every C{PUBLISH}, as C{(channel, message)}.
    @ivar waits: The timeout of every L{whenUp}.
    """

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.hashes: dict[str, dict[str, str]] = {}
        self.commands: list[tuple[Any, ...]] = []
        self.published: list[tuple[str, str]] = []
        self.waits: list[float] = []

    def whenUp(self, timeout: float) -> Deferred[bool]:
        """
        Whether Redis is up, at once (the fake never comes up meanwhile).
        """
        self.waits.append(timeout)
        return succeed(self.up)

    def command(self, *args: Any) -> Deferred[Any]:
        """
        One Redis command; fails at once with L{ConnectionError} while down
        or C{failing}, as L{revproxy.cluster.redis.RedisLink.command} does.
        """
        self.commands.append(args)
        if not self.up or self.failing:
            return fail(ConnectionError("Redis is down"))
        name, rest = args[0].upper(), list(args[1:])
        handler: Callable[..., Any] = getattr(self, f"_{name.lower()}")
        return succeed(handler(*rest))

    def ttl(self, key: str) -> float:
        """
        The seconds C{key} has left (C{inf}: no expiry).
        """
        return self.data[key][1] - self.clock.seconds()

    def sent(self, name: str) -> list[tuple[Any, ...]]:
        """
        The commands called C{name} that were sent.
        """
        return [c for c in self.commands if c[0].upper() == name]

    def _get(self, key: str) -> str | None:
        return self.get(key)

    def _set(self, key: str, value: str, *options: Any) -> str:
        assert isinstance(value, str), value
        expires = math.inf
        if options:
            assert len(options) == 2 and options[0] == "PX", options
            assert isinstance(options[1], int) and options[1] > 0, options
            expires = self.clock.seconds() + options[1] / 1000
        self.data[key] = (value, expires)
        return "OK"

    def _del(self, *keys: str) -> int:
        deleted = 0
        for key in keys:
            if self.get(key) is not None:
                del self.data[key]
                deleted += 1
            elif self.hashes.pop(key, None) is not None:
                deleted += 1
        return deleted

    def _hgetall(self, key: str) -> list[str]:
        flat: list[str] = []
        for name, value in self.hashes.get(key, {}).items():
            flat += [name, value]
        return flat

    def _hsetnx(self, key: str, field: str, value: str) -> int:
        fields = self.hashes.setdefault(key, {})
        if field in fields:
            return 0
        fields[field] = value
        return 1

    def _hset(self, key: str, field: str, value: str) -> int:
        fields = self.hashes.setdefault(key, {})
        new = field not in fields
        fields[field] = value
        return int(new)

    def _publish(self, channel: str, message: str) -> int:
        self.published.append((channel, message))
        return 0


class FakeSubscription:
    """
    A L{revproxy.cluster.redis.RedisSubscription} whose messages the test
    delivers.

    @ivar handlers: The handlers listening, by channel.
    @ivar resyncs: What is called when the subscription is made again.
    """

    def __init__(self) -> None:
        self.handlers: dict[str, list[Callable[[str], None]]] = {}
        self.resyncs: list[Callable[[], None]] = []

    def listen(self, channel: str, handler: Callable[[str], None]) -> None:
        self.handlers.setdefault(channel, []).append(handler)

    def onSubscribed(self, resync: Callable[[], None]) -> None:
        self.resyncs.append(resync)

    def deliver(self, channel: str, message: str) -> None:
        """
        A message arrives on C{channel}.
        """
        for handler in self.handlers.get(channel, []):
            handler(message)


class FakeNodes:
    """
    A L{revproxy.cluster.nodes.Nodes} whose live nodes the test sets.
    """

    def __init__(self, name: str, live: tuple[str, ...]) -> None:
        self.name = name
        self.live = live
        self.refreshed = 0
        #: Nodes whose first heartbeat the next refresh sees.
        self.joining: tuple[str, ...] = ()

    def refresh(self) -> Deferred[tuple[str, ...]]:
        self.refreshed += 1
        self.live = tuple(sorted(set(self.live) | set(self.joining)))
        return succeed(self.live)
