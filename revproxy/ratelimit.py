# -*- test-case-name: tests.test_ratelimit -*-
"""
A token bucket per site and client address.

How it works: docs/internals.md, "Rate limiting".
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from functools import lru_cache
from ipaddress import IPv6Address, ip_address
from math import ceil
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton

import attrs
from twisted.internet.interfaces import IReactorTime

from revproxy.config import RateLimit

_EPSILON = 1e-9
"""
Tokens of slack in comparisons, so that float rounding in C{1 / rate}
steps never refuses a request that arrives exactly when its token does.
"""

_SWEEP_PER_CALL = 2
"""
How many full buckets L{RateLimiter.allow} drops at most from the cold end
of the LRU order per call: more than the one bucket a call can add, so idle
buckets drain, and few enough that no call stalls.
"""

_IPV6_CACHE_SIZE = 16384


@attrs.frozen
class Decision:
    """
    The limiter's answer for one request.

    @ivar allowed: Whether the request is admitted.
    @ivar retryAfter: When refused, whole seconds (at least 1) until the
        bucket holds a token again: the value for C{Retry-After}.  C{0}
        when admitted.
    """

    allowed: bool
    retryAfter: int = 0


ALLOWED = Decision(True, 0)
"""
The one L{Decision} for an admitted request.
"""


_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"


@lru_cache(maxsize=_IPV6_CACHE_SIZE)
def _ipv6Key(ip: str, prefix: int) -> str:
    """
    The bucket key for C{ip}, a string with a colon in it.

    @param prefix: the IPv6 prefix length that clients are grouped by.
    @return: C{"network/prefix"} for an IPv6 address; the IPv4 address for
        an IPv4-mapped one; C{ip} itself if it is not an address.
    """
    try:
        packed = inet_pton(AF_INET6, ip)
    except (OSError, ValueError):
        # Not an address, or one with a zone (fe80::1%eth0) that inet_pton
        # does not take.
        try:
            address = ip_address(ip)
        except ValueError:
            return ip
        if not isinstance(address, IPv6Address):  # pragma: no cover
            return str(address)
        packed = address.packed
    if packed[:12] == _MAPPED_PREFIX:
        return inet_ntop(AF_INET, packed[12:])
    shift = 128 - prefix
    masked = ((int.from_bytes(packed) >> shift) << shift).to_bytes(16)
    return f"{inet_ntop(AF_INET6, masked)}/{prefix}"


def shareLimit(limit: RateLimit, parts: int) -> RateLimit:
    """
    One of C{parts}' share of C{limit} (worker processes, or the fleet's
    limiting processes while Redis is down): the rate and the burst
    divided among them (the burst at least 1), so that together they admit
    no more than the limit.
    """
    if parts <= 1 or not limit.enabled:
        return limit
    return attrs.evolve(
        limit,
        requests_per_second=limit.requests_per_second / parts,
        burst=max(1, limit.burst // parts),
    )


def clientKey(ip: str, ipv6Prefix: int) -> str:
    """
    The bucket key of the client C{ip}: itself for an IPv4 address, its
    C{/ipv6Prefix} network for an IPv6 one (see L{RateLimiter}).
    """
    return _ipv6Key(ip, ipv6Prefix) if ":" in ip else ip


class RateLimiter:
    """
    Token buckets per C{(site, client address)}.

    IPv4 clients are keyed by their address as given (L{clientAddress
    <revproxy.proxy.headers.clientAddress>} gives it in canonical form),
    IPv6 clients by their C{/ipv6Prefix} network, IPv4-mapped IPv6 clients
    by their IPv4 address, and a string that is not an address as it is.

    @ivar _buckets: C{tat} by C{(site, key)}, least recently used first.
    @ivar _limits: The limit each site's buckets were last used with, for
        L{bucket} and L{retain}.
    """

    def __init__(
        self,
        clock: IReactorTime,
        maxTrackedClients: int = 100_000,
        ipv6Prefix: int = 64,
    ) -> None:
        """
        @param clock: where the time comes from.
        @param maxTrackedClients: how many buckets to keep at most.
        @param ipv6Prefix: the prefix length (0 to 128) IPv6 clients are
            grouped by.
        """
        if maxTrackedClients < 1:
            raise ValueError(f"maxTrackedClients must be >= 1: {maxTrackedClients}")
        if not 0 <= ipv6Prefix <= 128:
            raise ValueError(f"ipv6Prefix must be 0 to 128: {ipv6Prefix}")
        self._clock = clock
        self._maxTracked = maxTrackedClients
        self._ipv6Prefix = ipv6Prefix
        self._buckets: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._limits: dict[str, RateLimit] = {}

    def __len__(self) -> int:
        """
        How many buckets are tracked (some may have refilled to full since).
        """
        return len(self._buckets)

    def _key(self, site: str, clientIP: str) -> tuple[str, str]:
        """
        The bucket key of C{clientIP} on C{site}.
        """
        if ":" in clientIP:
            return (site, _ipv6Key(clientIP, self._ipv6Prefix))
        return (site, clientIP)

    def allow(self, site: str, limit: RateLimit, clientIP: str) -> Decision:
        """
        Take a token from the bucket of C{clientIP} on C{site}, if it has one.

        @param limit: the site's limit; a zero rate or burst means off.
        @param clientIP: the client's address, as L{clientAddress
            <revproxy.proxy.headers.clientAddress>} returns it.
        """
        rate = limit.requests_per_second
        burst = limit.burst
        if rate <= 0 or burst <= 0:
            return ALLOWED
        if self._limits.get(site) is not limit:
            self._limits[site] = limit
        key = (
            (site, _ipv6Key(clientIP, self._ipv6Prefix))
            if ":" in clientIP
            else (site, clientIP)
        )
        now = self._clock.seconds()
        buckets = self._buckets
        tat = buckets.get(key)
        if tat is None:
            if len(buckets) >= self._maxTracked:
                buckets.popitem(last=False)
            buckets[key] = now + 1.0 / rate
            self._sweep(now)
            return ALLOWED
        if tat < now:
            tat = now
        # Tokens taken and not yet refilled: (tat - now) * rate.
        if (tat - now) * rate <= burst - 1 + _EPSILON:
            buckets[key] = tat + 1.0 / rate
            buckets.move_to_end(key)
            self._sweep(now)
            return ALLOWED
        ceiling = now + burst / rate
        if tat > ceiling:
            # The clock went backwards: no more than an empty bucket.
            tat = ceiling
            buckets[key] = tat
        buckets.move_to_end(key)
        self._sweep(now)
        # A token is back when (tat - t) * rate <= burst - 1.
        wait = tat - (burst - 1) / rate - now
        return Decision(False, max(1, ceil(wait - _EPSILON / rate)))

    def _sweep(self, now: float) -> None:
        """
        Drop a few full buckets from the cold end of the LRU order.
        """
        buckets = self._buckets
        for _ in range(_SWEEP_PER_CALL):
            if not buckets:
                return
            key = next(iter(buckets))
            if buckets[key] > now:
                return
            del buckets[key]

    def bucket(self, site: str, clientIP: str) -> tuple[float, float] | None:
        """
        The state of the bucket of C{clientIP} on C{site}, for the admin
        command C{ratelimit SITE IP}.

        @return: C{(tokens now, capacity)}, or L{None} if no bucket is
            tracked or it has refilled to full (it is then dropped).
        """
        key = self._key(site, clientIP)
        tat = self._buckets.get(key)
        limit = self._limits.get(site)
        if tat is None or limit is None:
            return None
        now = self._clock.seconds()
        if tat <= now:
            del self._buckets[key]
            return None
        tokens = limit.burst - (tat - now) * limit.requests_per_second
        return (max(0.0, tokens), float(limit.burst))

    def reset(self, site: str, clientIP: str) -> bool:
        """
        Forget the bucket of C{clientIP} on C{site}, so it is full again.

        @return: whether there was a bucket below capacity to forget.
        """
        tat = self._buckets.pop(self._key(site, clientIP), None)
        return tat is not None and tat > self._clock.seconds()

    def retain(self, limits: Mapping[str, RateLimit]) -> None:
        """
        Keep buckets across a reload: drop those of sites that are gone, or
        whose limit changed; buckets of unchanged sites survive.

        @param limits: the new configuration's limit by site name.
        """
        gone = {
            site for site, limit in self._limits.items() if limits.get(site) != limit
        }
        if not gone:
            return
        for site in gone:
            del self._limits[site]
        doomed = [key for key in self._buckets if key[0] in gone]
        for key in doomed:
            del self._buckets[key]
