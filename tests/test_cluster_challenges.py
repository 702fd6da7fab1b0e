"""
Tests for L{revproxy.cluster.challenges}: the fleet's pending challenge
answers, with a fake Redis (the few commands used, on a dictionary
expiring on the test's clock, its messages delivered when the test says)
shared by the nodes of the test, each with its own L{ChallengeStore} (the
same against a real Redis in L{tests.integration.test_cluster_challenges}).
"""

from __future__ import annotations

import json
from typing import Any, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from revproxy.acme.challenges import ChallengeStore
from revproxy.cluster.challenges import (
    ACK_POLL_SECS,
    ANSWER_TTL_MS,
    PUBLISH_WAIT_SECS,
    RESYNC_RETRY_SECS,
    RESYNC_SECS,
    SharedChallenges,
)
from revproxy.interfaces import IChallengeResponder
from tests.clusterfakes import FakeNodes

PREFIX = "rp:"
CHANNEL = "rp:challenges"
INDEX = "rp:challenges"


class FakeRedis:
    """
    The commands L{SharedChallenges} sends, on C{data} (key to value and
    when it expires, or L{None}); C{PUBLISH} queues the message for
    L{deliver}.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.data: dict[str, tuple[Any, float | None]] = {}
        self.subscriptions: list[FakeSubscription] = []
        self.queued: list[tuple[str, str]] = []
        self.published: list[dict[str, Any]] = []

    def get(self, key: str) -> Any:
        entry = self.data.get(key)
        if entry is None:
            return None
        if entry[1] is not None and entry[1] <= self.clock.seconds():
            del self.data[key]
            return None
        return entry[0]

    def ttl(self, key: str) -> float | None:
        self.get(key)
        return self.data[key][1] if key in self.data else None

    def execute(self, command: str, *args: Any) -> Any:
        now = self.clock.seconds()
        if command == "SET":
            key, value, px, ms = args
            assert px == "PX"
            self.data[key] = (value, now + ms / 1000)
            return "OK"
        if command == "MGET":
            return [self.get(key) for key in args]
        if command == "DEL":
            return sum(1 for key in args if self.data.pop(key, None) is not None)
        if command in ("SADD", "SREM"):
            key, *members = args
            current = set(self.get(key) or ())
            before = len(current)
            if command == "SADD":
                current |= set(members)
            else:
                current -= set(members)
            expires = self.data[key][1] if key in self.data else None
            if current:
                self.data[key] = (current, expires)
            else:
                self.data.pop(key, None)
            return abs(len(current) - before)
        if command == "SMEMBERS":
            return sorted(self.get(args[0]) or ())
        if command == "PEXPIRE":
            key, ms = args
            if self.get(key) is None:
                return 0
            self.data[key] = (self.data[key][0], now + ms / 1000)
            return 1
        if command == "PUBLISH":
            channel, message = args
            self.queued.append((channel, message))
            self.published.append(json.loads(message))
            return len(self.subscriptions)
        raise AssertionError(f"unexpected command {command}")

    def deliver(self) -> None:
        """
        Deliver the queued messages to every subscription up now.
        """
        queued, self.queued = self.queued, []
        for channel, message in queued:
            for subscription in list(self.subscriptions):
                if subscription.subscribed and channel in subscription.handlers:
                    subscription.handlers[channel](message)


class FakeLink:
    """
    One node's connection to the L{FakeRedis}: answers at once, fails at
    once while down, or with an error while C{failing}; while C{holding},
    each command's answer waits in C{held}.
    """

    def __init__(self, redis: FakeRedis) -> None:
        self.redis = redis
        self.up = True
        self.failing = False
        self.holding = False
        self.held: list[tuple[Deferred[Any], Any]] = []
        self.commands: list[tuple[Any, ...]] = []

    def command(self, *args: Any) -> Deferred[Any]:
        if not self.up:
            return fail(ConnectionError("Redis is down"))
        self.commands.append(args)
        if self.failing:
            return fail(RuntimeError("ERR broken"))
        reply = self.redis.execute(*args)
        if self.holding:
            d: Deferred[Any] = Deferred()
            self.held.append((d, reply))
            return d
        return succeed(reply)

    def release(self) -> None:
        held, self.held = self.held, []
        for d, reply in held:
            d.callback(reply)


class FakeSubscription:
    def __init__(self, redis: FakeRedis) -> None:
        self.handlers: dict[str, Any] = {}
        self.resyncs: list[Any] = []
        self.subscribed = False
        redis.subscriptions.append(self)

    def listen(self, channel: str, handler: Any) -> None:
        self.handlers[channel] = handler

    def onSubscribed(self, resync: Any) -> None:
        self.resyncs.append(resync)

    def subscribe(self) -> None:
        self.subscribed = True
        for resync in self.resyncs:
            resync()


class RecordingStore(ChallengeStore):
    """
    A L{ChallengeStore} that records every add and remove.
    """

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.calls: list[tuple[str, str]] = []

    def addHTTP01(self, token: str, keyAuthorization: str) -> None:
        self.calls.append(("addHTTP01", token))
        super().addHTTP01(token, keyAuthorization)

    def removeHTTP01(self, token: str) -> None:
        self.calls.append(("removeHTTP01", token))
        super().removeHTTP01(token)

    def addTLSALPN01(self, name: str, keyAuthorization: str) -> None:
        self.calls.append(("addTLSALPN01", name))
        super().addTLSALPN01(name, keyAuthorization)

    def removeTLSALPN01(self, name: str) -> None:
        self.calls.append(("removeTLSALPN01", name))
        super().removeTLSALPN01(name)


class Node:
    """
    One node of the test's fleet: its link, subscription, store and
    L{SharedChallenges}.
    """

    def __init__(
        self,
        case: SharedChallengesTests,
        name: str,
        live: tuple[str, ...],
        start: bool = True,
    ) -> None:
        self.link = FakeLink(case.redis)
        self.subscription = FakeSubscription(case.redis)
        self.nodes = FakeNodes(name, live)
        self.store = RecordingStore(case.clock)
        self.challenges = SharedChallenges(
            case.clock,
            self.link,
            self.subscription,
            self.nodes,
            PREFIX,
            self.store,
        )
        case.addCleanup(self.challenges.stop)
        if start:
            self.start()

    def start(self) -> None:
        self.challenges.start()
        self.subscription.subscribe()


class SharedChallengesTests(SynchronousTestCase):
    """
    L{SharedChallenges}: answers stored and published, mirrored and
    acknowledged by the other nodes, read again in full, and
    C{published} waiting for the acknowledgements.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        # Cleanups run last first: this one after the nodes' stop.
        self.addCleanup(self.assertNoTimers)
        self.redis = FakeRedis(self.clock)
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.live = ("node-a", "node-b")
        self.a = Node(self, "node-a", self.live)
        self.b = Node(self, "node-b", self.live)

    def assertNoTimers(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def warnings(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("log_level") == LogLevel.warn]

    def warningText(self) -> str:
        return "\n".join(formatEvent(e) for e in self.warnings())

    def acks(self, kind: str, key: str) -> set[str]:
        return set(self.redis.get(f"rp:challenge-acks:{kind}:{key}") or ())

    def test_interface(self) -> None:
        """
        L{SharedChallenges} provides L{IChallengeResponder}.
        """
        self.assertTrue(verifyObject(IChallengeResponder, self.a.challenges))

    def test_addStoresAndPublishes(self) -> None:
        """
        An add is served locally at once, stored in Redis for 10 minutes
        with this node's name, listed in the index and published.
        """
        self.a.challenges.addHTTP01("tok", "tok.thumb")
        self.a.challenges.addTLSALPN01("Shop.Test.", "shop.auth")
        self.assertEqual(self.a.store.http01("tok"), b"tok.thumb")
        self.assertIsNotNone(self.a.store.tlsALPN01("shop.test"))
        key = "rp:challenge:http-01:tok"
        self.assertEqual(
            json.loads(self.redis.get(key)),
            {"node": "node-a", "authorization": "tok.thumb"},
        )
        self.assertEqual(self.redis.ttl(key), ANSWER_TTL_MS / 1000)
        self.assertEqual(
            json.loads(self.redis.get("rp:challenge:tls-alpn-01:shop.test")),
            {"node": "node-a", "authorization": "shop.auth"},
        )
        self.assertEqual(
            self.redis.get(INDEX), {"http-01:tok", "tls-alpn-01:shop.test"}
        )
        self.assertEqual(
            self.redis.published,
            [
                {
                    "op": "add",
                    "kind": "http-01",
                    "key": "tok",
                    "authorization": "tok.thumb",
                    "node": "node-a",
                },
                {
                    "op": "add",
                    "kind": "tls-alpn-01",
                    "key": "shop.test",
                    "authorization": "shop.auth",
                    "node": "node-a",
                },
            ],
        )

    def test_addRefused(self) -> None:
        """
        An answer the local store refuses raises to the issuer, and
        nothing of it reaches Redis.
        """
        self.assertRaises(
            ValueError, self.a.challenges.addHTTP01, "bad/token", "bad.thumb"
        )
        self.assertEqual(self.redis.published, [])
        self.assertIsNone(self.redis.get(INDEX))

    def test_remoteAddMirroredAndAcked(self) -> None:
        """
        Another node's add is served here and acknowledged, the
        acknowledgements expiring with the answer.
        """
        self.a.challenges.addHTTP01("tok", "tok.thumb")
        self.a.challenges.addTLSALPN01("shop.test", "shop.auth")
        self.assertIsNone(self.b.store.http01("tok"))
        self.redis.deliver()
        self.assertEqual(self.b.store.http01("tok"), b"tok.thumb")
        self.assertIsNotNone(self.b.store.tlsALPN01("shop.test"))
        self.assertEqual(self.acks("http-01", "tok"), {"node-b"})
        self.assertEqual(self.acks("tls-alpn-01", "shop.test"), {"node-b"})
        self.assertEqual(
            self.redis.ttl("rp:challenge-acks:http-01:tok"), ANSWER_TTL_MS / 1000
        )

    def test_echoIgnored(self) -> None:
        """
        A node's own message, coming back to it, changes nothing there and
        is not acknowledged.
        """
        self.a.challenges.addHTTP01("tok", "tok.thumb")
        self.redis.deliver()
        self.assertEqual(self.a.store.calls, [("addHTTP01", "tok")])
        self.assertNotIn("node-a", self.acks("http-01", "tok"))
        self.a.challenges.removeHTTP01("tok")
        self.redis.deliver()
        self.assertEqual(
            self.a.store.calls, [("addHTTP01", "tok"), ("removeHTTP01", "tok")]
        )

    def test_remoteRemove(self) -> None:
        """
        A remove takes the answer away from every node, and from Redis
        with its acknowledgements.
        """
        self.a.challenges.addHTTP01("tok", "tok.thumb")
        self.a.challenges.addTLSALPN01("shop.test", "shop.auth")
        self.redis.deliver()
        self.a.challenges.removeHTTP01("tok")
        self.a.challenges.removeTLSALPN01("shop.test")
        self.assertIsNone(self.a.store.http01("tok"))
        self.redis.deliver()
        self.assertIsNone(self.b.store.http01("tok"))
        self.assertIsNone(self.b.store.tlsALPN01("shop.test"))
        self.assertEqual(self.redis.data, {})
        self.assertEqual(
            [(m["op"], m["key"]) for m in self.redis.published[2:]],
            [("remove", "tok"), ("remove", "shop.test")],
        )

    def test_ownAnswerKeptFromRemoteRemove(self) -> None:
        """
        A remove from another node never takes away this node's own answer
        for the same key, and this node's remove of a key it did not add
        never takes away another node's answer mirrored here.
        """
        self.b.challenges.addTLSALPN01("shop.test", "b.auth")
        self.b.challenges.received(
            json.dumps(
                {
                    "op": "remove",
                    "kind": "tls-alpn-01",
                    "key": "shop.test",
                    "authorization": "",
                    "node": "node-a",
                }
            )
        )
        self.assertIsNotNone(self.b.store.tlsALPN01("shop.test"))

        self.a.challenges.addHTTP01("tok", "tok.thumb")
        self.redis.deliver()
        self.b.challenges.removeHTTP01("tok")
        self.assertEqual(self.b.store.http01("tok"), b"tok.thumb")
        self.assertIsNotNone(self.redis.get("rp:challenge:http-01:tok"))

    def test_ownAnswerWinsThenMirroredServedAgain(self) -> None:
        """
        With an own answer and another node's for the same name, this
        node serves its own; once it removes it, the other node's answer is
        served again.
        """
        self.b.challenges.received(
            json.dumps(
                {
                    "op": "add",
                    "kind": "http-01",
                    "key": "tok",
                    "authorization": "tok.a",
                    "node": "node-a",
                }
            )
        )
        self.b.challenges.addHTTP01("tok", "tok.b")
        self.assertEqual(self.b.store.http01("tok"), b"tok.b")
        self.b.challenges.removeHTTP01("tok")
        self.assertEqual(self.b.store.http01("tok"), b"tok.a")

    def test_resyncAdds(self) -> None:
        """
        A node that starts (or subscribes again) after an add reads it from
        Redis, serves and acknowledges it.
        """
        self.a.challenges.addHTTP01("tok", "tok.thumb")
        self.redis.deliver()
        c = Node(self, "node-c", ("node-a", "node-b", "node-c"), start=False)
        self.assertIsNone(c.store.http01("tok"))
        c.start()
        self.assertEqual(c.store.http01("tok"), b"tok.thumb")
        self.assertEqual(self.acks("http-01", "tok"), {"node-b", "node-c"})

    def test_resyncOnSubscribed(self) -> None:
        """
        Messages missed while a node's subscription was down are made up
        for when it is made again.
        """
        self.b.subscription.subscribed = False
        self.a.challenges.addHTTP01("tok", "tok.thumb")
        self.redis.deliver()
        self.assertIsNone(self.b.store.http01("tok"))
        self.b.subscription.subscribe()
        self.assertEqual(self.b.store.http01("tok"), b"tok.thumb")

    def test_resyncDropsAndForgetsExpired(self) -> None:
        """
        Every 30 s, answers found in Redis are mirrored and acknowledged,
        mirrored answers no longer there are dropped, and index members
        whose answer expired are forgotten.
        """
        value = json.dumps({"node": "node-x", "authorization": "gone.thumb"})
        now = self.clock.seconds()
        self.redis.data["rp:challenge:http-01:gone"] = (value, now + 600)
        self.redis.data[INDEX] = ({"http-01:gone", "http-01:expired"}, None)
        self.clock.advance(RESYNC_SECS)
        self.assertEqual(self.b.store.http01("gone"), b"gone.thumb")
        self.assertEqual(self.acks("http-01", "gone"), {"node-a", "node-b"})
        self.assertEqual(self.redis.get(INDEX), {"http-01:gone"})
        del self.redis.data["rp:challenge:http-01:gone"]
        self.clock.advance(RESYNC_SECS)
        self.assertIsNone(self.b.store.http01("gone"))
        self.assertIsNone(self.a.store.http01("gone"))
        self.assertIsNone(self.redis.get(INDEX))

    def test_resyncWritesOwnAgain(self) -> None:
        """
        An own answer Redis lost (expired, or flushed) is written again by
        the next full read.
        """
        self.a.challenges.addHTTP01("tok", "tok.thumb")
        self.redis.data.clear()
        self.clock.advance(RESYNC_SECS)
        self.assertIsNotNone(self.redis.get("rp:challenge:http-01:tok"))
        self.assertEqual(self.redis.get(INDEX), {"http-01:tok"})
        self.redis.deliver()
        self.assertEqual(self.b.store.http01("tok"), b"tok.thumb")

    def test_resyncWaitsForLink(self) -> None:
        """
        A subscription made while the command connection is still down
        reads everything once that connection is up.
        """
        self.a.challenges.addHTTP01("tok", "tok.thumb")
        self.b.link.up = False
        self.b.subscription.subscribe()
        self.clock.advance(RESYNC_RETRY_SECS)
        self.assertIsNone(self.b.store.http01("tok"))
        self.b.link.up = True
        self.clock.advance(RESYNC_RETRY_SECS)
        self.assertEqual(self.b.store.http01("tok"), b"tok.thumb")

    def test_resyncKeepsNewerMessage(self) -> None:
        """
        A full read sent before a message arrived does not undo what the
        message did.
        """
        self.b.link.holding = True
        self.clock.advance(RESYNC_SECS)  # B's read is sent; its answer waits
        self.a.challenges.addHTTP01("tok", "tok.thumb")
        self.redis.deliver()
        self.assertEqual(self.b.store.http01("tok"), b"tok.thumb")
        self.b.link.holding = False
        self.b.link.release()
        self.b.link.release()
        self.assertEqual(self.b.store.http01("tok"), b"tok.thumb")

    def test_downThenBack(self) -> None:
        """
        An answer added while Redis is down is served locally, and
        written to Redis by the read made when it is back.
        """
        self.a.link.up = False
        self.a.challenges.addHTTP01("tok", "tok.thumb")
        self.assertEqual(self.a.store.http01("tok"), b"tok.thumb")
        self.assertIsNone(self.redis.get(INDEX))
        self.a.link.up = True
        self.a.subscription.subscribe()
        self.redis.deliver()
        self.assertEqual(self.b.store.http01("tok"), b"tok.thumb")

    def test_publishedWaitsForAcks(self) -> None:
        """
        C{published} fires once every live node acknowledged every own
        answer, looking every 100 ms.
        """
        c = Node(self, "node-c", ("node-a", "node-b", "node-c"))
        self.a.nodes.live = ("node-a", "node-b", "node-c")
        self.a.challenges.addHTTP01("tok", "tok.thumb")
        self.a.challenges.addHTTP01("tok2", "tok2.thumb")
        d = self.a.challenges.published()
        self.assertNoResult(d)
        self.b.challenges.received(self.redis.queued[0][1])
        self.b.challenges.received(self.redis.queued[1][1])
        self.clock.advance(ACK_POLL_SECS)
        self.assertNoResult(d)
        # C acknowledges one answer only.
        c.challenges.received(self.redis.queued[0][1])
        self.clock.advance(ACK_POLL_SECS)
        self.assertNoResult(d)
        self.redis.deliver()
        self.clock.advance(ACK_POLL_SECS)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.warnings(), [])

    def test_publishedSeesJoinedNodes(self) -> None:
        """
        C{published} reads the live nodes afresh: a node that said it is
        there since this node's last heartbeat (the fleet starting
        together) is waited for too.
        """
        self.a.nodes.live = ("node-a",)
        self.a.nodes.joining = ("node-b",)
        self.a.challenges.addHTTP01("tok", "tok.thumb")
        d = self.a.challenges.published()
        self.assertEqual(self.a.nodes.refreshed, 1)
        self.assertNoResult(d)
        self.redis.deliver()
        self.clock.advance(ACK_POLL_SECS)
        self.assertIsNone(self.successResultOf(d))

    def test_publishedTimesOut(self) -> None:
        """
        After 5 s, C{published} logs one warning naming the nodes that did
        not acknowledge, and fires anyway.
        """
        self.a.nodes.live = ("node-a", "node-b", "node-silent")
        self.a.challenges.addHTTP01("tok", "tok.thumb")
        d = self.a.challenges.published()
        self.redis.deliver()
        self.clock.advance(PUBLISH_WAIT_SECS - ACK_POLL_SECS)
        self.assertNoResult(d)
        self.clock.advance(ACK_POLL_SECS)
        self.assertIsNone(self.successResultOf(d))
        warnings = self.warnings()
        self.assertEqual(len(warnings), 1)
        self.assertIn("node-silent", self.warningText())
        self.assertNotIn("node-b", self.warningText())

    def test_publishedRedisFailing(self) -> None:
        """
        Redis errors while waiting are logged (once a minute) and the wait
        ends at 5 s all the same, naming every other node.
        """
        self.a.challenges.addHTTP01("tok", "tok.thumb")
        self.a.link.failing = True
        d = self.a.challenges.published()
        self.clock.advance(PUBLISH_WAIT_SECS)
        self.assertIsNone(self.successResultOf(d))
        text = self.warningText()
        self.assertEqual(len(self.warnings()), 2, text)
        self.assertIn("ERR broken", text)
        self.assertIn("node-b", text)

    def test_publishedAtOnce(self) -> None:
        """
        C{published} fires at once without own answers, while Redis is
        down, or when this node is the only live one; a node that leaves
        the fleet while it waits is no longer waited for.
        """
        self.assertIsNone(self.successResultOf(self.a.challenges.published()))
        self.a.challenges.addHTTP01("tok", "tok.thumb")
        self.a.link.up = False
        self.assertIsNone(self.successResultOf(self.a.challenges.published()))
        self.a.link.up = True
        self.a.nodes.live = ("node-a",)
        self.assertIsNone(self.successResultOf(self.a.challenges.published()))
        self.a.nodes.live = ()
        self.assertIsNone(self.successResultOf(self.a.challenges.published()))
        self.a.nodes.live = self.live
        d = self.a.challenges.published()
        self.assertNoResult(d)
        self.a.nodes.live = ("node-a",)
        self.clock.advance(ACK_POLL_SECS)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.warnings(), [])

    def test_publishedCancelledAndStopped(self) -> None:
        """
        Cancelling a wait stops its timers; stopping fires every wait.
        """
        self.a.challenges.addHTTP01("tok", "tok.thumb")
        d = self.a.challenges.published()
        d.cancel()
        self.failureResultOf(d)
        d = self.a.challenges.published()
        self.a.challenges.stop()
        self.assertIsNone(self.successResultOf(d))

    def test_badMessages(self) -> None:
        """
        Messages that are not JSON objects, lack a field, or carry an
        answer the store refuses are logged and ignored.
        """
        good = {
            "op": "add",
            "kind": "http-01",
            "key": "tok",
            "authorization": "tok.thumb",
            "node": "node-a",
        }
        bad: list[str] = [
            "not json",
            "[1, 2]",
            json.dumps({**good, "op": "replace"}),
            json.dumps({**good, "kind": "dns-01"}),
            json.dumps({k: v for k, v in good.items() if k != "key"}),
            json.dumps({**good, "node": 7}),
            json.dumps({**good, "authorization": ""}),
            json.dumps({**good, "key": "bad/token"}),
            json.dumps({**good, "kind": "tls-alpn-01", "key": "*.wild.test"}),
        ]
        for message in bad:
            self.b.challenges.received(message)
            self.clock.advance(60)
        self.assertIsNone(self.b.store.http01("tok"))
        self.assertIsNone(self.b.store.http01("bad/token"))
        self.assertIsNone(self.b.store.tlsALPN01("*.wild.test"))
        self.assertEqual(
            [k for k in self.redis.data if k.startswith("rp:challenge-acks:")], []
        )
        self.assertEqual(len(self.warnings()), len(bad))
        self.b.challenges.received(json.dumps(good))
        self.assertEqual(self.b.store.http01("tok"), b"tok.thumb")

    def test_redisErrorsLogged(self) -> None:
        """
        Redis errors never raise to the issuer; they are logged at most
        once a minute.
        """
        self.a.link.failing = True
        self.a.challenges.addHTTP01("tok", "tok.thumb")
        self.a.challenges.removeHTTP01("tok")
        self.assertEqual(len(self.warnings()), 1)
        self.clock.advance(60)
        self.a.challenges.addHTTP01("tok", "tok.thumb")
        self.assertEqual(len(self.warnings()), 2)
        self.assertIn("more such errors", self.warningText())
