"""
Tests for L{revproxy.cluster.nodes}: the heartbeat, with a fake Redis
that answers the C{BEAT} script as the test says, and a L{Clock}.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import (
    ILogObserver,
    LogEvent,
    formatEvent,
    globalLogPublisher,
)
from twisted.trial.unittest import SynchronousTestCase

from revproxy.cluster.nodes import BEAT, BEAT_SECS, BEAT_SHA, BEAT_TTL_MS, Nodes


class FakeScripts:
    """
    A L{revproxy.cluster.ratelimit.ScriptRunner}: records the scripts run,
    answers with C{reply} (or fails with C{error}).
    """

    def __init__(self) -> None:
        self.up = True
        self.reply: Any = []
        self.error: Exception | None = None
        self.calls: list[tuple[str, str, list[str], list[Any]]] = []

    def evalsha(
        self, sha: str, script: str, keys: list[str], args: list[Any]
    ) -> Deferred[Any]:
        self.calls.append((sha, script, keys, args))
        if self.error is not None:
            return fail(self.error)
        return succeed(self.reply)


class _NodesCase(SynchronousTestCase):
    """
    A L{Nodes} of C{node-a} on a fake Redis, its log kept.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.addCleanup(self.assertNoTimers)
        self.redis = FakeScripts()
        self.nodes = Nodes(self.clock, self.redis, "rp:", "node-a")
        self.addCleanup(self.nodes.stop)
        self.events: list[LogEvent] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def assertNoTimers(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def logged(self, text: str) -> list[str]:
        return [formatEvent(e) for e in self.events if text in formatEvent(e)]


class NodesTests(_NodesCase):
    """
    L{Nodes}: a beat every L{BEAT_SECS} while Redis is up, the live nodes
    from its reply, joins and leaves logged.
    """

    def test_beat(self) -> None:
        """
        A beat runs the C{BEAT} script on C{PREFIXnodes} with this node's
        name and the TTL in ms.
        """
        self.nodes.beat()
        self.assertEqual(
            self.redis.calls,
            [
                (
                    BEAT_SHA,
                    BEAT,
                    ["rp:nodes", "rp:node-processes"],
                    ["node-a", BEAT_TTL_MS, self.nodes.process],
                )
            ],
        )

    def test_live(self) -> None:
        """
        The live nodes are the reply's, as L{str} (from L{bytes} too),
        sorted; L{Nodes.others} leaves this one out.
        """
        self.assertEqual(self.nodes.live, ())
        self.redis.reply = [[b"node-c", "node-a", b"node-b"], None]
        self.nodes.beat()
        self.assertEqual(self.nodes.live, ("node-a", "node-b", "node-c"))
        self.assertEqual(self.nodes.others(), ("node-b", "node-c"))

    def test_badReplyKept(self) -> None:
        """
        A reply that is not a list, or a failed beat, keeps the last list.
        """
        self.redis.reply = [["node-a"], None]
        self.nodes.beat()
        self.redis.reply = None
        self.nodes.beat()
        self.assertEqual(self.nodes.live, ("node-a",))
        self.redis.error = ConnectionError("Lost connection")
        self.nodes.beat()
        self.assertEqual(self.nodes.live, ("node-a",))

    def test_joinsAndLeaves(self) -> None:
        """
        Nodes that join (after the first list) and leave are logged; the
        first list is not a join.
        """
        self.redis.reply = [["node-a", "node-b"], None]
        self.nodes.beat()
        self.assertEqual(self.logged("joined"), [])
        self.redis.reply = [["node-a", "node-b", "node-d", "node-c"], None]
        self.nodes.beat()
        self.assertEqual(
            self.logged("joined"), ["cluster: node(s) node-c, node-d joined the fleet"]
        )
        self.redis.reply = [["node-a", "node-d"], None]
        self.nodes.beat()
        self.assertEqual(
            self.logged("left"),
            [
                f"cluster: node(s) node-b, node-c left the fleet (no heartbeat "
                f"for {BEAT_TTL_MS // 1000} s)"
            ],
        )
        # The same list again: nothing more.
        self.nodes.beat()
        self.assertEqual(len(self.logged("the fleet")), 2)

    def test_downNothingSent(self) -> None:
        """
        While Redis is down no beat is sent and the last list is kept.
        """
        self.redis.reply = [["node-a", "node-b"], None]
        self.nodes.beat()
        self.redis.up = False
        self.nodes.beat()
        self.assertEqual(len(self.redis.calls), 1)
        self.assertEqual(self.nodes.live, ("node-a", "node-b"))

    def test_loop(self) -> None:
        """
        Started, it beats at once and every L{BEAT_SECS}; stopped, it
        leaves no timer and beats no more.
        """
        self.nodes.start()
        self.assertEqual(len(self.redis.calls), 1)
        self.clock.advance(BEAT_SECS - 0.1)
        self.assertEqual(len(self.redis.calls), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.redis.calls), 2)
        self.redis.up = False
        self.clock.advance(BEAT_SECS)
        self.assertEqual(len(self.redis.calls), 2)
        self.redis.up = True
        self.clock.advance(BEAT_SECS)
        self.assertEqual(len(self.redis.calls), 3)
        self.nodes.stop()
        self.assertNoTimers()
        self.clock.advance(BEAT_SECS * 3)
        self.assertEqual(len(self.redis.calls), 3)
        # Stopping again is harmless.
        self.nodes.stop()


class TwinTests(_NodesCase):
    """
    Two processes beating for one node_name (two nodes configured with the
    same name) are told, once a minute; a restart (the process before this
    one's id at the first beat) is not.
    """

    def test_restartNotTwin(self) -> None:
        """
        At the first beat the process that beat before is this node's
        previous one: nothing said.
        """
        self.redis.reply = [["node-a"], "123-old"]
        self.nodes.beat()
        self.redis.reply = [["node-a"], self.nodes.process]
        self.nodes.beat()
        self.assertEqual(self.logged("two nodes share a node_name"), [])

    def test_twin(self) -> None:
        """
        Another process beat for this name since this one's last beat: an
        error naming both, at most once a minute.
        """
        self.redis.reply = [["node-a"], None]
        self.nodes.beat()
        self.redis.reply = [["node-a"], "999-other"]
        self.nodes.beat()
        self.nodes.beat()
        [line] = self.logged("two nodes share a node_name")
        self.assertIn("999-other", line)
        self.assertIn(self.nodes.process, line)
        self.clock.advance(60.0)
        self.nodes.beat()
        self.assertEqual(len(self.logged("two nodes share a node_name")), 2)
