"""
Tests for L{revproxy.cluster.reloads}: fleet reloads over a fake Redis
link and subscription, on a L{Clock} (two real nodes' objects on a real
Redis are in L{tests.integration.test_cluster_reloads}).
"""

from __future__ import annotations

import json
from typing import Any, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from revproxy.cluster.reloads import (
    ANSWER_SECS,
    FleetReloads,
    combine,
    reloadHereWith,
)
from revproxy.reload import Refused, ReloadResult
from revproxy.runtime import RuntimeHolder
from tests.clusterfakes import FakeNodes, FakeSubscription

OK: dict[str, Any] = {"status": "ok", "generation": 3, "warnings": []}
REFUSED: dict[str, Any] = {
    "status": "error",
    "code": "config_invalid",
    "message": "bad",
}
PARTIAL: dict[str, Any] = {
    "status": "partially applied",
    "generation": 3,
    "code": "followers_failed",
    "failed": ["TLS certificates"],
    "message": "the new config serves, but ...",
}


class FakeLink:
    """
    A Redis link that records what is published; C{PUBLISH} succeeds
    while up, fails at once while down (as L{RedisLink.command}).
    """

    def __init__(self) -> None:
        self.up = True
        self.published: list[tuple[str, dict[str, Any]]] = []
        self.failWith: Exception | None = None

    def command(self, *args: Any) -> Deferred[Any]:
        if not self.up:
            return fail(ConnectionError("Redis is down"))
        if self.failWith is not None:
            return fail(self.failWith)
        name, channel, text = args
        assert name == "PUBLISH"
        self.published.append((channel, json.loads(text)))
        return succeed(1)


@implementer(ILogObserver)
class Events:
    """
    The log events emitted while it is installed.
    """

    def __init__(self, case: SynchronousTestCase) -> None:
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self)
        case.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: LogEvent) -> None:
        self.events.append(event)

    def at(self, level: LogLevel) -> list[LogEvent]:
        return [e for e in self.events if e["log_level"] is level]


class FleetReloadsTests(SynchronousTestCase):
    """
    L{FleetReloads} as node C{a} of a fleet of C{a}, C{b} and C{c}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.link = FakeLink()
        self.subscription = FakeSubscription()
        self.nodes = FakeNodes("a", ("a", "b", "c"))
        self.reloads: list[Deferred[dict[str, Any]]] = []
        self.fleet = FleetReloads(
            self.clock,
            self.link,
            self.subscription,
            self.nodes,
            "rp:",
            self.reloadHere,
        )
        self.events = Events(self)

    def reloadHere(self) -> Deferred[dict[str, Any]]:
        d: Deferred[dict[str, Any]] = Deferred()
        self.reloads.append(d)
        return d

    def send(self, message: object) -> None:
        """
        Deliver C{message} (JSON-encoded unless a string) on the channel.
        """
        text = message if isinstance(message, str) else json.dumps(message)
        self.subscription.deliver("rp:reloads", text)

    def answer(self, requestId: str, node: str, answer: dict[str, Any]) -> None:
        self.send({"op": "answer", "id": requestId, "node": node, "answer": answer})

    def ask(self, local: dict[str, Any] = OK) -> tuple[list[Any], str]:
        """
        Start a fleet reload; the list its answer lands in, and its id.
        """
        results: list[Any] = []
        self.fleet.reloadFleet(local).addBoth(results.append)
        channel, request = self.link.published[-1]
        self.assertEqual(channel, "rp:reloads")
        return results, request["id"]

    def test_listens(self) -> None:
        """
        It listens on C{{prefix}reloads} from the start.
        """
        self.assertEqual(list(self.subscription.handlers), ["rp:reloads"])

    def test_requestPublished(self) -> None:
        """
        A fleet reload publishes one request naming this node, with a fresh
        random hex id each time.
        """
        self.ask()
        self.ask()
        (_, first), (_, second) = self.link.published
        self.assertEqual(set(first), {"op", "id", "from"})
        self.assertEqual((first["op"], first["from"]), ("request", "a"))
        self.assertEqual(len(first["id"]), 32)
        int(first["id"], 16)
        self.assertNotEqual(first["id"], second["id"])

    def test_allAnswered(self) -> None:
        """
        Once every other live node answered, the answer is this node's
        fields, with every node's answer, none silent, status C{ok}.
        """
        results, requestId = self.ask()
        self.answer(requestId, "b", OK)
        self.assertEqual(results, [])
        self.answer(requestId, "c", dict(OK, generation=9))
        self.assertEqual(
            results,
            [
                dict(
                    OK,
                    nodes={"a": OK, "b": OK, "c": dict(OK, generation=9)},
                    silent=[],
                    failed_nodes=[],
                    fleet="all 3 node(s) answered ok",
                )
            ],
        )
        self.assertFalse(self.clock.getDelayedCalls())

    def test_silentAfterTimeout(self) -> None:
        """
        A node that has not answered within 10 s is named silent, and the
        status is C{partially applied} with a code and message.
        """
        results, requestId = self.ask()
        self.answer(requestId, "c", OK)
        self.clock.advance(ANSWER_SECS - 0.1)
        self.assertEqual(results, [])
        self.clock.advance(0.1)
        [answer] = results
        self.assertEqual(answer["status"], "partially applied")
        self.assertEqual(answer["code"], "fleet_incomplete")
        self.assertEqual(answer["silent"], ["b"])
        self.assertEqual(answer["nodes"], {"a": OK, "c": OK})
        self.assertEqual(
            answer["message"],
            "this node reloaded, but not every node reloaded: b: no answer within 10 s",
        )
        self.assertEqual(answer["generation"], 3)
        # A late answer changes nothing.
        self.answer(requestId, "b", OK)
        self.assertEqual(len(results), 1)
        [warning] = self.events.at(LogLevel.warn)
        self.assertEqual(warning["nodes"], "b")

    def test_otherNodeFailed(self) -> None:
        """
        A node whose reload failed makes the status C{partially applied},
        naming it in C{failed_nodes}.
        """
        results, requestId = self.ask()
        self.answer(requestId, "b", REFUSED)
        self.answer(requestId, "c", OK)
        [answer] = results
        self.assertEqual(answer["status"], "partially applied")
        self.assertEqual(answer["failed_nodes"], ["b"])
        self.assertEqual(answer["nodes"]["b"], REFUSED)
        self.assertEqual(
            answer["fleet"], "not every node reloaded: b: error (config_invalid)"
        )

    def test_localFailed(self) -> None:
        """
        When this node's own reload failed the status stays C{error},
        whatever the others did; the others are still asked.
        """
        results, requestId = self.ask(REFUSED)
        self.answer(requestId, "b", OK)
        self.answer(requestId, "c", OK)
        [answer] = results
        self.assertEqual({k: answer[k] for k in REFUSED}, REFUSED)
        self.assertEqual(answer["nodes"], {"a": REFUSED, "b": OK, "c": OK})

    def test_localPartialKeepsItsCode(self) -> None:
        """
        This node's own C{partially applied} answer keeps its code and
        message; the fleet's trouble is in C{fleet}.
        """
        results, requestId = self.ask(PARTIAL)
        self.answer(requestId, "b", OK)
        self.clock.advance(ANSWER_SECS)
        [answer] = results
        self.assertEqual(
            (answer["status"], answer["code"], answer["message"]),
            ("partially applied", "followers_failed", PARTIAL["message"]),
        )
        self.assertEqual(answer["silent"], ["c"])

    def test_aloneAnswersAtOnce(self) -> None:
        """
        With no other live node the request is still published (a node not
        seen yet may hear it) and the answer comes at once.
        """
        self.nodes.live = ("a",)
        results, _ = self.ask()
        self.assertEqual(results[0]["status"], "ok")
        self.assertEqual(results[0]["nodes"], {"a": OK})
        self.assertFalse(self.clock.getDelayedCalls())

    def test_redisDown(self) -> None:
        """
        While Redis is down the answer is this node's, at once, with the
        other nodes silent and C{fleet} saying they were not told.
        """
        self.link.up = False
        results: list[Any] = []
        self.fleet.reloadFleet(OK).addBoth(results.append)
        [answer] = results
        self.assertEqual(self.link.published, [])
        self.assertEqual(
            answer["fleet"], "Redis is down: the other nodes were not told to reload"
        )
        self.assertEqual(answer["silent"], ["b", "c"])
        self.assertEqual(answer["status"], "partially applied")
        self.assertEqual(answer["nodes"], {"a": OK})
        self.assertFalse(self.clock.getDelayedCalls())

    def test_publishFails(self) -> None:
        """
        A request Redis refuses to publish answers at once, saying why.
        """
        self.link.failWith = RuntimeError("OOM")
        results: list[Any] = []
        self.fleet.reloadFleet(OK).addBoth(results.append)
        [answer] = results
        self.assertIsInstance(answer, dict)
        self.assertEqual(
            answer["fleet"],
            "Redis failed: the other nodes were not told to reload: OOM",
        )
        self.assertEqual(answer["silent"], ["b", "c"])
        self.assertFalse(self.clock.getDelayedCalls())

    def test_ownRequestIgnored(self) -> None:
        """
        This node's own request, echoed by Redis, reloads nothing here, and
        an answer naming this node is not counted.
        """
        results, requestId = self.ask()
        self.send({"op": "request", "id": requestId, "from": "a"})
        self.send({"op": "request", "id": "fresh", "from": "a"})
        self.assertEqual(self.reloads, [])
        self.answer(requestId, "a", REFUSED)
        self.answer(requestId, "b", OK)
        self.answer(requestId, "c", OK)
        self.assertEqual(results[0]["nodes"]["a"], OK)
        self.assertEqual(results[0]["status"], "ok")

    def test_duplicateAnswerIgnored(self) -> None:
        """
        A node's second answer to one request is ignored.
        """
        results, requestId = self.ask()
        self.answer(requestId, "b", OK)
        self.answer(requestId, "b", REFUSED)
        self.answer(requestId, "c", OK)
        self.assertEqual(results[0]["nodes"]["b"], OK)

    def test_otherRequestsAnswersIgnored(self) -> None:
        """
        Answers to another node's request (or an unknown id) are not
        counted.
        """
        results, _ = self.ask()
        self.answer("other", "b", OK)
        self.answer("other", "c", OK)
        self.assertEqual(results, [])
        self.clock.advance(ANSWER_SECS)
        self.assertEqual(results[0]["silent"], ["b", "c"])

    def test_remoteRequest(self) -> None:
        """
        A request from another node runs this node's reload and publishes
        its answer under the request's id.
        """
        self.send({"op": "request", "id": "r1", "from": "b"})
        self.assertEqual(len(self.reloads), 1)
        self.assertEqual(self.link.published, [])
        self.reloads[0].callback(OK)
        self.assertEqual(
            self.link.published,
            [("rp:reloads", {"op": "answer", "id": "r1", "node": "a", "answer": OK})],
        )

    def test_duplicateRequestIgnored(self) -> None:
        """
        A request id seen before is not reloaded again.
        """
        self.send({"op": "request", "id": "r1", "from": "b"})
        self.send({"op": "request", "id": "r1", "from": "c"})
        self.assertEqual(len(self.reloads), 1)
        self.send({"op": "request", "id": "r2", "from": "b"})
        self.assertEqual(len(self.reloads), 2)

    def test_remoteReloadFails(self) -> None:
        """
        A local reload that fails (a bug) publishes an error answer, logged,
        instead of crashing.
        """
        self.send({"op": "request", "id": "r1", "from": "b"})
        self.reloads[0].errback(ZeroDivisionError("boom"))
        [(_, message)] = self.link.published
        self.assertEqual(
            message["answer"],
            {
                "status": "error",
                "code": "internal",
                "message": "internal error: ZeroDivisionError: boom",
            },
        )
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_remoteReloadRaises(self) -> None:
        """
        A local reload that raises at once is an error answer too.
        """

        def raising() -> Deferred[dict[str, Any]]:
            raise ValueError("no")

        self.fleet._reloadHere = raising
        self.send({"op": "request", "id": "r1", "from": "b"})
        [(_, message)] = self.link.published
        self.assertEqual(message["answer"]["status"], "error")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_answerUnpublished(self) -> None:
        """
        An answer that cannot be published (Redis gone meanwhile) is a
        warning, not a failure.
        """
        self.send({"op": "request", "id": "r1", "from": "b"})
        self.link.up = False
        self.reloads[0].callback(OK)
        [warning] = self.events.at(LogLevel.warn)
        self.assertIn("could not be published", warning["log_format"])

    def test_badMessages(self) -> None:
        """
        Messages that are not JSON objects, lack an id, sender, node or
        answer, or have an unknown op are logged and ignored.
        """
        results, requestId = self.ask()
        bad: list[object] = [
            "not json",
            "[1, 2]",
            {"op": "request", "from": "b"},
            {"op": "request", "id": 7, "from": "b"},
            {"op": "request", "id": "x"},
            {"op": "answer", "id": requestId, "answer": OK},
            {"op": "answer", "id": requestId, "node": "b", "answer": "ok"},
            {"op": "answer", "id": requestId, "node": "b", "answer": {}},
            {"op": "shutdown", "id": "x"},
        ]
        for message in bad:
            self.send(message)
        self.assertEqual(len(self.events.at(LogLevel.warn)), len(bad))
        self.assertEqual(self.reloads, [])
        self.assertEqual(results, [])
        self.clock.advance(ANSWER_SECS)
        self.assertEqual(results[0]["silent"], ["b", "c"])

    def test_stop(self) -> None:
        """
        L{FleetReloads.stop} answers the reloads still collecting, with
        what came, and leaves no timer.
        """
        results, requestId = self.ask()
        self.answer(requestId, "b", OK)
        self.fleet.stop()
        self.assertEqual(results[0]["silent"], ["c"])
        self.assertFalse(self.clock.getDelayedCalls())


class CombineTests(SynchronousTestCase):
    """
    L{combine}: the status of a fleet reload.
    """

    def test_status(self) -> None:
        for local, others, silent, status in [
            (OK, {"b": OK}, [], "ok"),
            (OK, {"b": REFUSED}, [], "partially applied"),
            (OK, {"b": PARTIAL}, [], "partially applied"),
            (OK, {}, ["b"], "partially applied"),
            (PARTIAL, {"b": OK}, [], "partially applied"),
            (REFUSED, {"b": OK}, [], "error"),
            (REFUSED, {}, ["b"], "error"),
        ]:
            answer = combine(local, "a", others, silent)
            self.assertEqual(answer["status"], status, (local, others, silent))
            self.assertIs(answer["nodes"]["a"], local)
            # Whatever the fleet did, this node's answer is unchanged.
            self.assertNotIn("nodes", local)


class ReloadHereWithTests(SynchronousTestCase):
    """
    L{reloadHereWith}: this node's reload for the fleet.
    """

    def test_reloads(self) -> None:
        """
        It reloads with the source C{"fleet"} and answers as the admin
        C{reload} does.
        """
        sources: list[str] = []

        class Reloader:
            holder = cast(RuntimeHolder, None)

            def reload(self, source: str) -> Deferred[ReloadResult]:
                sources.append(source)
                return succeed(Refused("config_invalid", "bad"))

            def check(self) -> Deferred[ReloadResult]:
                raise NotImplementedError()

        answers: list[Any] = []
        reloadHereWith(Reloader())().addCallback(answers.append)
        self.assertEqual(sources, ["fleet"])
        self.assertEqual(
            answers,
            [{"status": "error", "code": "config_invalid", "message": "bad"}],
        )
