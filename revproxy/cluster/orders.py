# -*- test-case-name: tests.test_cluster_orders -*-
"""
One ACME order per site across the fleet (C{[cluster]}): the
L{revproxy.acme.renewal.Orders} of a node that shares its certificates
through Redis.

When a site's order is due on a node, that node:

  1. takes the fleet's certificate if Redis already holds one it wants
     (newer than its own, for the site's names; for a forced renewal,
     issued since the admin asked);
  2. else takes the site's order lock (L{revproxy.cluster.locks}) and,
     holding it, looks again, then waits out a back-off another node's
     failed order left (unless forced), makes sure it uses the fleet's
     account key, orders, and stores the certificate (key sealed) and
     announces it (C{certificates} channel) before giving the lock back;
     a failed order leaves the fleet's back-off;
  3. else (another node holds the lock) waits for that node's
     certificate: woken by its announcement, and looking again every
     L{POLL_SECS} in case a message was lost or the holder died (its lease
     then expires and this node takes the lock).

Every node also follows the announcements, and reads each site's
certificate again every L{RESYNC_SECS} and whenever its subscription is
made again: a renewal made by any node reaches all.

While Redis is down nothing is ordered: the node serves what it has (its
local copy) and the order fails with a back-off, to be tried again.
"""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, Protocol, TypeVar

from cryptography.hazmat.primitives import serialization
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from revproxy.acme import AcmeBackoff, AcmeError
from revproxy.acme.schedule import backoffDelay
from revproxy.acme.storage import AcmeStorage, BackoffRecord, CertificateRecord
from revproxy.cluster.locks import OrderLock
from revproxy.cluster.nodes import BEAT_SECS
from revproxy.cluster.redis import Commands, Messages
from revproxy.cluster.storage import ForeignSecret, SharedAcmeState
from revproxy.throttle import LogThrottle

_log = Logger()

#: How long an order waits for Redis to answer before giving up (at start,
#: the connection is still being made).
REDIS_WAIT_SECS = 5.0
#: How soon an order that found Redis down is tried again (a fixed delay,
#: not the growing back-off of a CA's refusal).
REDIS_RETRY_SECS = 30.0
#: How often a node waiting for another's order looks again.
POLL_SECS = 5.0
#: How long a node waits for other nodes' orders, in all.
WAIT_LIMIT_SECS = 900.0
#: How long a node is in the fleet before its first order: the nodes
#: started with it have said they are there (their first heartbeat), so the
#: order's challenges wait for them (a node the CA reaches before it has
#: the answer fails the validation).
SETTLE_SECS = BEAT_SECS + 1.0
#: How often every site's certificate is read again from Redis.
RESYNC_SECS = 30.0
#: How long a back-off record stays in Redis after it ends: the next
#: failure counts on from it.
BACKOFF_MEMORY_SECS = 86400.0


T = TypeVar("T")


class _RedisFailed(Exception):
    """
    Redis failed while an order needed it.
    """


class Link(Commands, Protocol):
    """
    What this needs of L{revproxy.cluster.redis.RedisLink}.
    """

    def whenUp(self, timeout: float) -> Deferred[bool]: ...


class Manager(Protocol):
    """
    What this needs of L{revproxy.acme.renewal.AcmeManager}.
    """

    def adopt(self, site: str, record: CertificateRecord, origin: str) -> bool: ...

    def acmeSites(self) -> list[str]: ...

    def resetIssuer(self) -> None: ...


def _waitForRedis(error: str, now: float) -> AcmeBackoff:
    """
    The back-off of an order that could not go on because Redis is down
    or failed: tried again in L{REDIS_RETRY_SECS}, whatever the count.
    """
    return AcmeBackoff(
        "the order waits for Redis",
        BackoffRecord(
            failures=1,
            retryAt=now + REDIS_RETRY_SECS,
            lastError=error,
            lastErrorAt=now,
        ),
        ordered=False,
    )


class FleetOrders:
    """
    The fleet's orders, as this node takes part in them.

    @ivar manager: The ACME manager whose sites these are (set once it is
        built: it is built with this).
    """

    def __init__(
        self,
        clock: IReactorTime,
        redis: Link,
        subscription: Messages,
        shared: SharedAcmeState,
        lock: OrderLock,
        local: AcmeStorage,
        rng: random.Random | None = None,
        joined: Callable[[], float | None] | None = None,
    ) -> None:
        """
        @param joined: When this node joined the fleet (its first heartbeat
            answered; L{None} before): its first order waits until it has
            been in the fleet for L{SETTLE_SECS}.  Without it, no wait.
        """
        self._joined = joined
        self._clock = clock
        self.redis = redis
        self.shared = shared
        self.lock = lock
        self.local = local
        self._rng = rng or random.SystemRandom()
        self.manager: Manager | None = None
        self.channel = f"{shared.prefix}certificates"
        self._waiting: dict[str, list[Deferred[None]]] = {}
        self._timers: set[IDelayedCall] = set()
        self._loop: LoopingCall | None = None
        self._logs = LogThrottle(clock, 60.0)
        subscription.listen(self.channel, self._announced)
        subscription.onSubscribed(self.resync)

    def start(self) -> None:
        loop = self._loop = LoopingCall(self.resync)
        loop.clock = self._clock
        loop.start(RESYNC_SECS, now=False)

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        for timer in list(self._timers):
            if timer.active():
                timer.cancel()
        self._timers.clear()
        waiting, self._waiting = self._waiting, {}
        for waiters in waiting.values():
            for d in waiters:
                d.errback(AcmeError("stopping"))
        self.lock.stop()

    # -- orders

    def order(
        self,
        site: str,
        names: tuple[str, ...],
        issue: Callable[[], Deferred[CertificateRecord]],
        wanted: Callable[[CertificateRecord], bool],
        forced: bool,
    ) -> Deferred[tuple[CertificateRecord, str]]:
        """
        See L{revproxy.acme.renewal.Orders.order}.
        """
        ordering = ensureDeferred(self._order(site, issue, wanted, forced))
        return ordering.addErrback(self._redisFailed)

    def _redisFailed(self, failure: Failure) -> NoReturn:
        """
        Redis failing during an order is the wait for Redis (L{_RedisFailed}
        becomes L{_waitForRedis}'s back-off); any other failure stays.
        """
        failure.trap(_RedisFailed)
        raise _waitForRedis(
            f"Redis failed during the order ({failure.value}); the current "
            f"certificate is served",
            self._clock.seconds(),
        ) from failure.value

    async def _redis(self, asked: Awaitable[T]) -> T:
        """
        What Redis answers to C{asked}; a failure of Redis (not an
        L{AcmeError}: a lost connection, an error reply) raises
        L{_RedisFailed}.
        """
        try:
            return await asked
        except AcmeError:
            raise
        except Exception as e:
            raise _RedisFailed(str(e) or type(e).__name__) from e

    async def _order(
        self,
        site: str,
        issue: Callable[[], Deferred[CertificateRecord]],
        wanted: Callable[[CertificateRecord], bool],
        forced: bool,
    ) -> tuple[CertificateRecord, str]:
        deadline = self._clock.seconds() + WAIT_LIMIT_SECS
        waitingFor: str | None = None
        while True:
            if not await self.redis.whenUp(REDIS_WAIT_SECS):
                raise _waitForRedis(
                    "Redis is down: no order without the fleet's order lock "
                    "(the current certificate is served until Redis is back)",
                    self._clock.seconds(),
                )
            found = await self._found(site, wanted)
            if found is not None:
                return found
            if await self.lock.acquire(site):
                try:
                    return await self._orderHeld(site, issue, wanted, forced)
                finally:
                    await self.lock.release(site)
            if waitingFor is None:
                waitingFor = await self._redis(self.lock.holder(site)) or (
                    "another node"
                )
                _log.info(
                    "ACME: site {site}: {holder} is ordering its certificate for "
                    "the fleet; waiting for it",
                    site=site,
                    holder=waitingFor,
                )
            if self._clock.seconds() >= deadline:
                raise AcmeError(
                    f"waited {WAIT_LIMIT_SECS:.0f} s for {waitingFor}'s order "
                    f"and no certificate came"
                )
            await self._news(site, POLL_SECS)

    async def _found(
        self, site: str, wanted: Callable[[CertificateRecord], bool]
    ) -> tuple[CertificateRecord, str] | None:
        """
        The fleet's certificate for C{site} if there is one that is
        C{wanted}, and where it comes from.
        """
        try:
            stored = await self._redis(self.shared.loadCertificate(site))
        except ForeignSecret:
            # Never ordered over: see ForeignSecret.
            raise
        except AcmeError as e:
            _log.warn(
                "ACME: site {site}: cannot use the fleet's certificate: {error}",
                site=site,
                error=str(e),
            )
            return None
        if stored is None:
            return None
        record, node = stored
        return (record, f"node {node} of the fleet") if wanted(record) else None

    async def _orderHeld(
        self,
        site: str,
        issue: Callable[[], Deferred[CertificateRecord]],
        wanted: Callable[[CertificateRecord], bool],
        forced: bool,
    ) -> tuple[CertificateRecord, str]:
        """
        Order, holding C{site}'s lock.
        """
        found = await self._found(site, wanted)
        if found is not None:
            return found
        now = self._clock.seconds()
        previous: BackoffRecord | None = None
        try:
            stored = await self._redis(self.shared.loadBackoff(site))
        except AcmeError as e:
            _log.warn("ACME: site {site}: {error}", site=site, error=str(e))
            stored = None
        if stored is not None:
            previous, node = stored
            if not forced and previous.retryAt > now:
                raise AcmeBackoff(
                    f"the fleet waits after {node}'s failed order",
                    previous,
                    ordered=False,
                )
        await self._settle(site)
        await self._useFleetAccount()
        try:
            record = await issue()
        except AcmeError as e:
            failures = 1 if previous is None else previous.failures + 1
            now = self._clock.seconds()
            backoff = BackoffRecord(
                failures=failures,
                retryAt=now + backoffDelay(failures, self._rng),
                lastError=str(e),
                lastErrorAt=now,
            )
            try:
                await self.shared.saveBackoff(
                    site, backoff, now, keep=BACKOFF_MEMORY_SECS
                )
            except Exception as why:
                _log.warn(
                    "ACME: site {site}: cannot share the back-off: {error}",
                    site=site,
                    error=str(why),
                )
            raise AcmeBackoff(str(e), backoff, ordered=True) from e
        if not self.lock.held(site):
            _log.warn(
                "ACME: site {site}: the order lock's lease was lost during the "
                "order (Redis unreachable too long); another node may have "
                "ordered too",
                site=site,
            )
        try:
            await self.shared.saveCertificate(site, record)
            await self.shared.saveBackoff(site, None, now)
            await self.redis.command(
                "PUBLISH",
                self.channel,
                json.dumps(
                    {
                        "site": site,
                        "node": self.shared.node,
                        "issuedAt": record.issuedAt,
                    }
                ),
            )
        except Exception as e:
            _log.error(
                "ACME: site {site}: the certificate is served here but could not "
                "be shared with the fleet (another node may order its own): "
                "{error}",
                site=site,
                error=str(e),
            )
        return record, ""

    async def _settle(self, site: str) -> None:
        """
        Wait until this node has been in the fleet for L{SETTLE_SECS} (at
        most that and a heartbeat more).
        """
        joined = self._joined
        if joined is None:
            return
        limit = self._clock.seconds() + SETTLE_SECS + BEAT_SECS
        for _ in range(10_000):  # the limit ends it long before
            now = self._clock.seconds()
            since = joined()
            settled = None if since is None else since + SETTLE_SECS
            if now >= limit or (settled is not None and now >= settled):
                return
            await self._news(site, min(0.5, limit - now, (settled or limit) - now))

    async def _useFleetAccount(self) -> None:
        """
        Make this node's account key the fleet's: the fleet's when there is
        one, else this node's (made now if needed) becomes it.

        @raise AcmeError: The fleet's key cannot be read or used, or this
            node's cannot be made or written.
        """
        keyPEM, uris = await self._redis(self.shared.loadAccount())
        localKey, _ = self.local.accountKey()
        localPEM = localKey.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        if keyPEM is None:
            if await self._redis(self.shared.createAccount(localPEM)):
                _log.info("ACME: this node's account key is now the fleet's")
                return
            keyPEM, uris = await self._redis(self.shared.loadAccount())
            if keyPEM is None:
                raise AcmeError("the fleet's account key disappeared from Redis")
        if keyPEM != localPEM:
            self.local.replaceAccountKey(keyPEM, uris)
            if self.manager is not None:
                self.manager.resetIssuer()
            _log.info("ACME: using the fleet's account key (from Redis)")

    def saveAccountURI(self, directory: str, uri: str) -> None:
        """
        Share the account's URI at C{directory} (best effort: a node that
        does not know it asks the CA, which answers the same account).
        """
        if not self.redis.up:
            return
        ensureDeferred(self.shared.saveAccountURI(directory, uri)).addErrback(
            lambda f: _log.warn(
                "ACME: cannot share the account URI: {error}",
                error=f.getErrorMessage(),
            )
        )

    def _news(self, site: str, timeout: float) -> Deferred[None]:
        """
        Fires when a certificate of C{site} is announced, or after
        C{timeout} seconds.
        """
        d: Deferred[None] = Deferred()
        waiters = self._waiting.setdefault(site, [])
        waiters.append(d)

        def late() -> None:
            self._timers.discard(timer)
            if d in waiters:
                waiters.remove(d)
                d.callback(None)

        timer = self._clock.callLater(timeout, late)
        self._timers.add(timer)

        def woken(result: object) -> object:
            if timer.active():
                timer.cancel()
            self._timers.discard(timer)
            return result

        return d.addBoth(woken)

    # -- following the fleet

    def _announced(self, message: str) -> None:
        try:
            value = json.loads(message)
            site = value["site"]
            node = value["node"]
        except (ValueError, TypeError, KeyError):
            _log.warn(
                "ACME: ignoring a malformed certificate announcement: {message!r}",
                message=message[:200],
            )
            return
        if not isinstance(site, str) or node == self.shared.node:
            return
        for d in self._waiting.pop(site, []):
            d.callback(None)
        self._adopt(site)

    def resync(self) -> None:
        """
        Read every site's certificate again from Redis, and serve the newer
        ones.
        """
        if self.manager is None or not self.redis.up:
            return
        for site in self.manager.acmeSites():
            self._adopt(site)

    def _adopt(self, site: str) -> None:
        async def adopt() -> None:
            stored = await self.shared.loadCertificate(site)
            if stored is None or self.manager is None:
                return
            record, node = stored
            self.manager.adopt(site, record, f"node {node} of the fleet")

        def failed(failure: Any) -> None:
            if self._logs.due() is not None:
                _log.warn(
                    "ACME: site {site}: cannot read the fleet's certificate: {error}",
                    site=site,
                    error=failure.getErrorMessage(),
                )

        ensureDeferred(adopt()).addErrback(failed)
