# -*- test-case-name: tests.test_cluster_locks -*-
"""
Order locks shared by the fleet (#19): one lease per name set in Redis, so
that one node at a time orders a certificate for those names.  A lease is
taken with C{SET NX PX}, renewed while the order runs by a compare-and-set
script, and released by a compare-and-delete script; a holder that dies
lets its lease expire.  Every command is a Lua script run through
C{EVALSHA} (L{ScriptRunner}).
"""

from __future__ import annotations

import hashlib
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from revproxy.cluster.ratelimit import ScriptRunner

_log = Logger()

#: Take the lease: KEYS[1] the lock, ARGV[1] the owner, ARGV[2] the lease in
#: ms.  Returns 1 when taken (or already this owner's, its lease made
#: whole again), 0 when another owner holds it.
ACQUIRE = """\
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', tonumber(ARGV[2])) then
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  return 1
end
return 0
"""

ACQUIRE_SHA = hashlib.sha1(ACQUIRE.encode("utf-8")).hexdigest()

#: Renew the lease (compare and set): KEYS[1] the lock, ARGV[1] the owner,
#: ARGV[2] the lease in ms.  Returns 1 when renewed, 0 when the lock is
#: another owner's or gone.
RENEW = """\
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return 0
"""

RENEW_SHA = hashlib.sha1(RENEW.encode("utf-8")).hexdigest()

#: Release the lease (compare and delete): KEYS[1] the lock, ARGV[1] the
#: owner.  Returns 1 when deleted, 0 when it was not this owner's.
RELEASE = """\
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

RELEASE_SHA = hashlib.sha1(RELEASE.encode("utf-8")).hexdigest()

#: Who holds the lock: KEYS[1] the lock.  Returns the owner or nil.
HOLDER = """\
return redis.call('GET', KEYS[1])
"""

HOLDER_SHA = hashlib.sha1(HOLDER.encode("utf-8")).hexdigest()

#: How long a lease lasts without a renewal, and how often it is renewed.
LEASE_MS = 30_000
RENEW_SECS = 10.0


@attrs.define(eq=False)
class _Lease:
    """
    One lease this process holds.

    @ivar expires: when the lease expires at the latest without another
        renewal, on this process's clock (the time a successful call was
        sent, plus the lease: Redis ran it later, so its lease lasts at least
        that long).
    @ivar renewing: whether a renewal is waiting for its answer.
    """

    loop: LoopingCall
    expires: float
    renewing: bool = False


class OrderLock:
    """
    The fleet's order locks: one lease per name (a site's names joined, or
    any string the caller gives), held by C{owner} (this node and process)
    under C{{prefix}}C{lock:order:{name}}.

    While a lease is held it is renewed every C{renew_secs}; a renewal that
    finds it another owner's or gone, or no successful renewal before it
    expired (Redis down), logs an error and marks it lost: L{held} is then
    C{False} and the caller must stop the work the lease guards.
    """

    def __init__(
        self,
        clock: IReactorTime,
        redis: ScriptRunner,
        prefix: str,
        owner: str,
        lease_ms: int = LEASE_MS,
        renew_secs: float = RENEW_SECS,
    ) -> None:
        """
        @param prefix: the cluster's key prefix.
        @param owner: this holder, as stored in the lock (C{node:pid}).
        @param lease_ms: how long a lease lasts without a renewal.
        @param renew_secs: how often a held lease is renewed (well under
            C{lease_ms}).
        """
        self._clock = clock
        self.redis = redis
        self._prefix = prefix
        self.owner = owner
        self.lease_ms = lease_ms
        self.renew_secs = renew_secs
        self._leases: dict[str, _Lease] = {}
        self._stopped = False

    def key(self, name: str) -> str:
        """
        The Redis key of C{name}'s lock.
        """
        return f"{self._prefix}lock:order:{name}"

    def held(self, name: str) -> bool:
        """
        Whether this process holds C{name}'s lease (not released, not lost).
        """
        return name in self._leases

    def acquire(self, name: str) -> Deferred[bool]:
        """
        Take C{name}'s lease: C{True} when this process holds it now (it is
        then renewed until L{release}), C{False} when another owner does.
        A lease this process already holds is C{True} without asking Redis.

        While Redis is down (or after L{stop}) this is C{False} at once, as
        when the lock is another's: the caller waits and tries again later.
        An outage never lets two nodes order the same names; it only delays
        the order.  An error from Redis is C{False} too.
        """
        if self._stopped or not self.redis.up:
            return succeed(False)
        if name in self._leases:
            return succeed(True)
        sent = self._clock.seconds()

        def answered(reply: Any) -> bool:
            if reply != 1:
                return False
            if self._stopped:
                # Stopped while asking: let the lease expire.
                return False
            if name not in self._leases:
                self._hold(name, sent)
            return True

        def failed(reason: Any) -> bool:
            _log.warn(
                "Order lock {name}: not taken, Redis failed: {why}",
                name=name,
                why=reason.getErrorMessage(),
            )
            return False

        d: Deferred[Any] = self.redis.evalsha(
            ACQUIRE_SHA, ACQUIRE, [self.key(name)], [self.owner, self.lease_ms]
        )
        return d.addCallbacks(answered, failed)

    def _hold(self, name: str, sent: float) -> None:
        """
        Hold C{name}'s lease, taken by a call sent at C{sent}: renew it
        every L{renew_secs}.
        """
        loop = LoopingCall(self._renew, name)
        loop.clock = self._clock
        lease = _Lease(loop, sent + self.lease_ms / 1000)
        self._leases[name] = lease
        loop.start(self.renew_secs, now=False)

    def _renew(self, name: str) -> None:
        """
        One renewal of C{name}'s lease (compare and set).
        """
        lease = self._leases.get(name)
        if lease is None:
            return
        now = self._clock.seconds()
        if now >= lease.expires:
            self._lose(name, lease, "no renewal succeeded before it expired")
            return
        if lease.renewing or not self.redis.up:
            return
        lease.renewing = True

        def answered(reply: Any) -> None:
            lease.renewing = False
            if self._leases.get(name) is not lease:
                return
            if reply == 1:
                lease.expires = now + self.lease_ms / 1000
            else:
                self._lose(name, lease, "another owner holds it, or it expired")

        def failed(reason: Any) -> None:
            lease.renewing = False
            _log.warn(
                "Order lock {name}: renewal failed ({why}); trying again",
                name=name,
                why=reason.getErrorMessage(),
            )

        self.redis.evalsha(
            RENEW_SHA, RENEW, [self.key(name)], [self.owner, self.lease_ms]
        ).addCallbacks(answered, failed)

    def _lose(self, name: str, lease: _Lease, why: str) -> None:
        """
        Mark C{name}'s lease lost: stop renewing it and forget it.
        """
        _log.error(
            "Order lock {name}: lease lost ({why}); the order it guards must stop",
            name=name,
            why=why,
        )
        self._forget(name, lease)

    def _forget(self, name: str, lease: _Lease) -> None:
        if self._leases.get(name) is lease:
            del self._leases[name]
        if lease.loop.running:
            lease.loop.stop()

    def release(self, name: str) -> Deferred[None]:
        """
        Give C{name}'s lease back (compare and delete: only if this owner
        still holds it) and stop renewing it.  While Redis is down, or when
        Redis fails, the lease is only forgotten here and expires by itself.
        """
        lease = self._leases.get(name)
        if lease is not None:
            self._forget(name, lease)
        if not self.redis.up:
            return succeed(None)

        def failed(reason: Any) -> None:
            _log.warn(
                "Order lock {name}: release failed ({why}); the lease expires "
                "by itself",
                name=name,
                why=reason.getErrorMessage(),
            )

        d: Deferred[Any] = self.redis.evalsha(
            RELEASE_SHA, RELEASE, [self.key(name)], [self.owner]
        )
        return d.addCallbacks(lambda _: None, failed)

    def holder(self, name: str) -> Deferred[str | None]:
        """
        Who holds C{name}'s lock now (for the admin), or L{None}.  Fails
        (L{ConnectionError}) at once while Redis is down, and when Redis
        fails.
        """
        if not self.redis.up:
            return fail(ConnectionError("Redis is down"))
        d: Deferred[Any] = self.redis.evalsha(HOLDER_SHA, HOLDER, [self.key(name)], [])

        def owner(reply: Any) -> str | None:
            if reply is None:
                return None
            if isinstance(reply, bytes):
                return reply.decode("utf-8", "replace")
            return str(reply)

        return d.addCallback(owner)

    def stop(self) -> None:
        """
        Stop renewing every lease, without releasing them: they expire by
        themselves within the lease.  A process that stops cannot be sure
        its orders are done (it may be stopping because it is broken, and a
        release that needs Redis may not get there); a graceful end of an
        order releases its lease with L{release} first, by the caller.
        """
        self._stopped = True
        for name, lease in list(self._leases.items()):
            self._forget(name, lease)
