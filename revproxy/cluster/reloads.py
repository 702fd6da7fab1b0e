# -*- test-case-name: tests.test_cluster_reloads -*-
"""
Fleet reloads (C{[cluster] reload_channel = true}): an admin C{reload} on
one node tells the others, over Redis pub/sub (C{{prefix}reloads}), to
re-read their own config file, and answers with each node's result.

Two kinds of message, each one JSON object::

    {"op": "request", "id": "<hex>", "from": "<node>"}
    {"op": "answer", "id": "<hex>", "node": "<node>", "answer": {...}}

The node that was asked reloads itself first (as without a fleet), then
publishes a request and collects the answers of the other live nodes for
at most L{ANSWER_SECS}.  A node that gets a request from another runs its
own reload (source C{"fleet"}) and publishes its admin answer.  SIGHUP
stays local: only the admin C{reload} asks the fleet.
"""

from __future__ import annotations

import json
import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from revproxy.admin import PARTIALLY_APPLIED, SupportsReload, reloadAnswer
from revproxy.cluster.nodes import LiveNodes
from revproxy.cluster.redis import Commands, Messages

_log = Logger()

#: How long the asking node waits for the other nodes' answers.
ANSWER_SECS = 10.0

#: How many request ids a node remembers, to answer each request once.
SEEN_IDS = 1000

#: The code of a fleet reload that this node applied but where some other
#: node failed or did not answer (its status: L{PARTIALLY_APPLIED}, which
#: C{revproxy-admin} knows, exit status 1), when this node's own answer
#: has no code.
FLEET_INCOMPLETE = "fleet_incomplete"

Answer = dict[str, Any]


@attrs.define(eq=False)
class _Collecting:
    """
    One fleet reload this node asked for, collecting the answers.

    @ivar expected: the other nodes live when it was asked.
    @ivar answers: each node's answer that came, by node.
    """

    local: Answer
    expected: tuple[str, ...]
    done: Deferred[Answer]
    answers: dict[str, Answer] = attrs.Factory(dict)
    timer: IDelayedCall | None = None


def errorAnswer(code: str, message: str) -> Answer:
    """
    An admin error answer.
    """
    return {"status": "error", "code": code, "message": message}


def _describe(answer: Answer) -> str:
    """
    A node's answer in a few words: its status, and its code if any.
    """
    status = str(answer.get("status"))
    code = answer.get("code")
    return f"{status} ({code})" if code else status


def combine(
    local: Answer,
    name: str,
    answers: dict[str, Answer],
    silent: list[str],
    fleet: str | None = None,
) -> Answer:
    """
    The admin answer of a fleet reload: this node's own answer's fields,
    plus C{nodes} (every answer, this node's included), C{silent} (the
    nodes that did not answer), C{failed_nodes} (the other nodes whose
    answer is not C{"ok"}) and C{fleet} (one line saying how it went).

    The status: C{"error"} when this node's reload failed (whatever the
    others did); C{"ok"} when this node's and every other node's reload
    were; else C{"partially applied"}, with this node's code and message
    or, when it has none, C{"code": "fleet_incomplete"} and a message
    naming the nodes that failed or did not answer.

    @param fleet: why the others were not all asked (Redis down), when
        they were not.
    """
    others = {n: a for n, a in sorted(answers.items()) if n != name}
    failed = [n for n, a in others.items() if a.get("status") != "ok"]
    silent = sorted(silent)
    if fleet is None:
        problems = [f"{n}: {_describe(others[n])}" for n in failed] + [
            f"{n}: no answer within {ANSWER_SECS:g} s" for n in silent
        ]
        if problems:
            fleet = "not every node reloaded: " + ", ".join(problems)
        else:
            fleet = f"all {len(others) + 1} node(s) answered ok"
    combined: Answer = dict(local)
    combined["nodes"] = {name: local, **others}
    combined["silent"] = silent
    combined["failed_nodes"] = failed
    combined["fleet"] = fleet
    localStatus = local.get("status")
    if localStatus != "error" and (failed or silent):
        combined["status"] = PARTIALLY_APPLIED
        if "message" not in local:
            combined["code"] = FLEET_INCOMPLETE
            combined["message"] = f"this node reloaded, but {fleet}"
    return combined


def reloadHereWith(reloader: SupportsReload) -> Callable[[], Deferred[Answer]]:
    """
    The C{reloadHere} of L{FleetReloads} for this node's C{reloader}: a
    reload with the source C{"fleet"} (through the same lock as SIGHUP and
    the admin), answered as the admin C{reload} answers.
    """

    def reloadHere() -> Deferred[Answer]:
        return reloader.reload("fleet").addCallback(reloadAnswer)

    return reloadHere


class FleetReloads:
    """
    Fleet reloads through Redis pub/sub: L{reloadFleet} asks the other
    nodes for the admin C{reload}, and each request from another node runs
    this node's own reload and publishes its answer.

    Made before the subscription starts: it listens on its channel when
    made.
    """

    def __init__(
        self,
        clock: IReactorTime,
        link: Commands,
        subscription: Messages,
        nodes: LiveNodes,
        prefix: str,
        reloadHere: Callable[[], Deferred[Answer]],
        timeout: float = ANSWER_SECS,
    ) -> None:
        """
        @param link: the connection to publish on.
        @param subscription: the fleet's messages; not started yet.
        @param nodes: this node's name and the live nodes.
        @param prefix: the cluster's key prefix (C{[cluster] key_prefix}).
        @param reloadHere: run this node's own reload (source C{"fleet"})
            and fire with its admin answer
            (L{revproxy.admin.reloadAnswer}).
        @param timeout: how long L{reloadFleet} waits for the answers.
        """
        self._clock = clock
        self.link = link
        self.nodes = nodes
        self.channel = f"{prefix}reloads"
        self._reloadHere = reloadHere
        self.timeout = timeout
        self._asked: dict[str, _Collecting] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        subscription.listen(self.channel, self.received)

    # -- asking

    def reloadFleet(self, localAnswer: Answer) -> Deferred[Answer]:
        """
        Ask the other nodes to reload, after this node did (its admin
        answer: C{localAnswer}); fires with the combined answer
        (L{combine}) once every other live node answered, or after
        L{timeout} seconds.  Never fails: while Redis is down it fires at
        once with this node's answer, the others named silent.
        """
        name = self.nodes.name
        expected = tuple(sorted(set(self.nodes.live) - {name}))
        if not self.link.up:
            return succeed(
                combine(
                    localAnswer,
                    name,
                    {},
                    list(expected),
                    "Redis is down: the other nodes were not told to reload",
                )
            )
        requestId = secrets.token_hex(16)
        self._remember(requestId)
        collecting = _Collecting(localAnswer, expected, Deferred())
        self._asked[requestId] = collecting
        collecting.timer = self._clock.callLater(self.timeout, self._end, requestId)

        def unsent(reason: Failure) -> None:
            _log.warn(
                "Fleet reload {id}: the request could not be published: {why}",
                id=requestId,
                why=reason.getErrorMessage(),
            )
            self._end(
                requestId,
                "Redis failed: the other nodes were not told to reload: "
                + reason.getErrorMessage(),
            )

        self._publish({"op": "request", "id": requestId, "from": name}).addCallbacks(
            lambda _: None, unsent
        )
        if not expected:
            self._end(requestId)
        return collecting.done

    def _end(self, requestId: str, fleet: str | None = None) -> None:
        """
        Answer the fleet reload C{requestId} with what came.
        """
        collecting = self._asked.pop(requestId, None)
        if collecting is None:
            return
        if collecting.timer is not None and collecting.timer.active():
            collecting.timer.cancel()
        silent = [n for n in collecting.expected if n not in collecting.answers]
        if silent and fleet is None:
            _log.warn(
                "Fleet reload {id}: no answer within {secs} s from {nodes}",
                id=requestId,
                secs=self.timeout,
                nodes=", ".join(silent),
            )
        collecting.done.callback(
            combine(
                collecting.local,
                self.nodes.name,
                collecting.answers,
                silent,
                fleet,
            )
        )

    def stop(self) -> None:
        """
        Answer every fleet reload still collecting with what came so far
        (the process is stopping).
        """
        for requestId in list(self._asked):
            self._end(requestId)

    # -- messages

    def received(self, text: str) -> None:
        """
        One message on the channel: a request from another node, or an
        answer to a request of this node's.  Anything else is logged and
        ignored.
        """
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            self._bad(text, "not a JSON object")
            return
        op = message.get("op")
        requestId = message.get("id")
        if not isinstance(requestId, str) or not requestId:
            self._bad(text, "no id")
            return
        if op == "request":
            sender = message.get("from")
            if not isinstance(sender, str):
                self._bad(text, "no sender")
                return
            self._requested(requestId, sender)
        elif op == "answer":
            node = message.get("node")
            answer = message.get("answer")
            if (
                not isinstance(node, str)
                or not isinstance(answer, dict)
                or not isinstance(answer.get("status"), str)
            ):
                self._bad(text, "no node, or no answer with a status")
                return
            self._answered(requestId, node, answer)
        else:
            self._bad(text, "unknown op")

    def _bad(self, text: str, why: str) -> None:
        _log.warn(
            "Fleet reload: ignoring a message on {channel} ({why}): {text}",
            channel=self.channel,
            why=why,
            text=text[:200],
        )

    def _remember(self, requestId: str) -> bool:
        """
        Remember C{requestId}; whether it was new.
        """
        if requestId in self._seen:
            return False
        self._seen[requestId] = None
        while len(self._seen) > SEEN_IDS:
            self._seen.popitem(last=False)
        return True

    def _answered(self, requestId: str, node: str, answer: Answer) -> None:
        collecting = self._asked.get(requestId)
        if collecting is None:
            # Another node's request, or one that is over.  (An answer
            # naming this node is kept but not shown: L{combine} shows this
            # node's own.)
            return
        if node in collecting.answers:
            return
        collecting.answers[node] = answer
        if all(n in collecting.answers for n in collecting.expected):
            self._end(requestId)

    def _requested(self, requestId: str, sender: str) -> None:
        if sender == self.nodes.name or not self._remember(requestId):
            return
        _log.info(
            "Fleet reload {id} asked by node {node}: reloading",
            id=requestId,
            node=sender,
        )

        def failed(reason: Failure) -> Answer:
            _log.failure("Fleet reload {id} failed here", reason, id=requestId)
            return errorAnswer(
                "internal",
                f"internal error: {type(reason.value).__name__}: "
                f"{reason.getErrorMessage()}",
            )

        def publish(answer: Answer) -> Deferred[Any]:
            return self._publish(
                {
                    "op": "answer",
                    "id": requestId,
                    "node": self.nodes.name,
                    "answer": answer,
                }
            )

        def unsent(reason: Failure) -> None:
            _log.warn(
                "Fleet reload {id}: this node's answer could not be published: {why}",
                id=requestId,
                why=reason.getErrorMessage(),
            )

        maybeDeferred(self._reloadHere).addErrback(failed).addCallback(
            publish
        ).addErrback(unsent)

    def _publish(self, message: Answer) -> Deferred[Any]:
        """
        Publish C{message} on the channel (fails while Redis is down).
        """
        return maybeDeferred(
            self.link.command,
            "PUBLISH",
            self.channel,
            json.dumps(message, allow_nan=False),
        )
