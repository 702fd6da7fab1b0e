# -*- test-case-name: tests.test_cluster_challenges -*-
"""
The fleet's pending ACME challenge answers (#19): whichever node the CA
reaches answers the challenge.

Each answer a node adds is served from its own responder at once, written
to Redis (C{{prefix}}C{challenge:{kind}:{key}}, 10 minutes, listed in the
set C{{prefix}}C{challenges}) and published on the channel
C{{prefix}}C{challenges}.  Every node mirrors the other nodes' answers into
its own responder (so the request path and the SNI callback stay local
lookups), from the messages and from a full read when its subscription is
made and every 30 s, and acknowledges each one in
C{{prefix}}C{challenge-acks:{kind}:{key}}; L{SharedChallenges.published}
waits for those acknowledgements before the issuer tells the CA to
validate.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from revproxy.cluster.nodes import LiveNodes
from revproxy.cluster.redis import Commands, Messages
from revproxy.interfaces import IChallengeResponder
from revproxy.throttle import LogThrottle

_log = Logger()

HTTP01 = "http-01"
TLSALPN01 = "tls-alpn-01"
_KINDS = (HTTP01, TLSALPN01)

#: How long a pending answer (and its acknowledgements) stays in Redis.
ANSWER_TTL_MS = 600_000

#: How often the whole set of pending answers is read again.
RESYNC_SECS = 30.0

#: A full read asked for while the command connection is down (the
#: subscription, on a connection of its own, may be made first) is tried
#: again this often until it is up.
RESYNC_RETRY_SECS = 0.5

#: How long L{SharedChallenges.published} waits for acknowledgements at
#: most, and how often it looks.
PUBLISH_WAIT_SECS = 5.0
ACK_POLL_SECS = 0.1

#: Redis errors and bad messages are logged at most this often.
ERROR_LOG_SECS = 60.0

#: One answer: its kind (C{"http-01"} or C{"tls-alpn-01"}) and key (the
#: token, or the name).
_Answer = tuple[str, str]


def _normalizeKey(kind: str, key: str) -> str:
    """
    C{key} as answers of C{kind} are compared: a name without case or
    trailing dot (as the SNI callback compares it), a token as it is.
    """
    if kind == TLSALPN01:
        return key.lower().rstrip(".")
    return key


def _text(value: Any) -> str:
    """
    A Redis reply's string as L{str}.
    """
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


@attrs.define(eq=False)
class _Mirrored:
    """
    An answer of another node, mirrored here.

    @ivar node: the node that added it.
    @ivar served: whether the local responder holds it (not when this node
        has its own answer for the same key, which wins).
    """

    node: str
    authorization: str
    served: bool


@attrs.define(eq=False)
class _Wait:
    """
    One L{SharedChallenges.published} waiting for acknowledgements.

    @ivar missing: the live nodes that had not acknowledged every answer at
        the last look (every other live node before the first answer).
    """

    done: Deferred[None]
    deadline: IDelayedCall | None = None
    poll: IDelayedCall | None = None
    polling: bool = False
    missing: frozenset[str] = frozenset()


@implementer(IChallengeResponder)
class SharedChallenges:
    """
    An L{IChallengeResponder} for a node of the fleet: answers are served
    here at once and by every other node once it has read them from Redis.

    The answers this node added (its own) and those mirrored from the other
    nodes are kept apart: a remove from another node never takes away an
    own answer, and this node's removes never take away a mirrored one.
    While Redis is down, answers are only served here; those added then
    are written to Redis at the next full read once it is back.

    Reactor thread only; Redis errors are logged (at most once a minute)
    and never raise to the caller.
    """

    def __init__(
        self,
        clock: IReactorTime,
        link: Commands,
        subscription: Messages,
        nodes: LiveNodes,
        prefix: str,
        local: IChallengeResponder,
    ) -> None:
        """
        Listen to the fleet's challenge messages on C{subscription} (before
        it starts).

        @param link: one-off commands to Redis.
        @param subscription: the fleet's messages; each time it is made,
            the pending answers are read again.
        @param nodes: this node's name and the live nodes.
        @param prefix: the cluster's key prefix.
        @param local: this node's own responder (the L{ChallengeStore}, or
            the workers' L{MirroredChallenges}), which the listeners read.
        """
        self._clock = clock
        self.link = link
        self.nodes = nodes
        self.local = local
        self._prefix = prefix
        self.channel = f"{prefix}challenges"
        self.index = f"{prefix}challenges"
        self._own: dict[_Answer, str] = {}
        self._mirrored: dict[_Answer, _Mirrored] = {}
        self._waits: list[_Wait] = []
        self._loop: LoopingCall | None = None
        self._running = False
        # Each change made from a message or an own add or remove is
        # stamped, so that a full read sent before it does not undo it.
        self._stamp = 0
        self._touched: dict[_Answer, int] = {}
        self._resyncing: Deferred[None] | None = None
        self._retry: IDelayedCall | None = None
        self._again = False
        self._redisErrors = LogThrottle(clock, ERROR_LOG_SECS)
        self._badMessages = LogThrottle(clock, ERROR_LOG_SECS)
        subscription.listen(self.channel, self.received)
        subscription.onSubscribed(self._subscribed)

    # -- keys

    def key(self, kind: str, key: str) -> str:
        """
        The Redis key of one pending answer.
        """
        return f"{self._prefix}challenge:{kind}:{key}"

    def ackKey(self, kind: str, key: str) -> str:
        """
        The Redis set of the nodes that serve one pending answer.
        """
        return f"{self._prefix}challenge-acks:{kind}:{key}"

    # -- start and stop

    def start(self) -> None:
        """
        Mirror the other nodes' answers: read them all now (if Redis is up)
        and every L{RESYNC_SECS}, and follow the messages.
        """
        if self._running:
            return
        self._running = True
        loop = self._loop = LoopingCall(self._tick)
        loop.clock = self._clock
        loop.start(RESYNC_SECS, now=True)

    def stop(self) -> None:
        """
        Stop mirroring; every L{published} still waiting fires.  The
        answers stay where they are (the issuer removes its own).
        """
        self._running = False
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        retry, self._retry = self._retry, None
        if retry is not None and retry.active():
            retry.cancel()
        for wait in list(self._waits):
            self._finish(wait)

    # -- IChallengeResponder

    def addHTTP01(self, token: str, keyAuthorization: str) -> None:
        """
        See L{IChallengeResponder.addHTTP01}.

        @raise ValueError: the local responder refused the token.
        """
        self.local.addHTTP01(token, keyAuthorization)
        self._addOwn(HTTP01, token, keyAuthorization)

    def removeHTTP01(self, token: str) -> None:
        """
        See L{IChallengeResponder.removeHTTP01}.
        """
        self._removeOwn(HTTP01, token)

    def addTLSALPN01(self, name: str, keyAuthorization: str) -> None:
        """
        See L{IChallengeResponder.addTLSALPN01}.

        @raise ValueError: the local responder refused the name.
        """
        self.local.addTLSALPN01(name, keyAuthorization)
        self._addOwn(TLSALPN01, name, keyAuthorization)

    def removeTLSALPN01(self, name: str) -> None:
        """
        See L{IChallengeResponder.removeTLSALPN01}.
        """
        self._removeOwn(TLSALPN01, name)

    def published(self) -> Deferred[None]:
        """
        See L{IChallengeResponder.published}: fires when every live node
        acknowledged every answer this node added and has not removed,
        looking every L{ACK_POLL_SECS}; after L{PUBLISH_WAIT_SECS} it logs
        which nodes did not and fires anyway.  At once while Redis is
        down, without own answers, or when this node is the only live one.
        """
        if not self._own or not self.link.up:
            return succeed(None)
        # The live nodes as they are now: a node that joined since this
        # one's last heartbeat (the fleet starting together) is waited for.
        return self.nodes.refresh().addCallback(lambda _: self._acknowledged())

    def _acknowledged(self) -> Deferred[None]:
        """
        Fires when every other live node acknowledged this node's answers
        (see L{published}).
        """
        if not self._others() or not self._own or not self.link.up:
            return succeed(None)

        def cancel(_: Deferred[None]) -> None:
            self._finish(wait, fire=False)

        wait = _Wait(Deferred(cancel))
        wait.missing = frozenset(self._others())
        wait.deadline = self._clock.callLater(PUBLISH_WAIT_SECS, self._late, wait)
        self._waits.append(wait)
        self._poll(wait)
        return wait.done

    # -- own answers

    def _addOwn(self, kind: str, key: str, authorization: str) -> None:
        answer = (kind, _normalizeKey(kind, key))
        self._own[answer] = authorization
        self._touch(answer)
        if self.link.up:
            self._store(answer, authorization)

    def _removeOwn(self, kind: str, key: str) -> None:
        answer = (kind, _normalizeKey(kind, key))
        mirrored = self._mirrored.get(answer)
        if answer not in self._own:
            # Not added here: nothing to take back from the fleet, and
            # another node's answer mirrored here stays.
            if mirrored is None:
                self._remove(self.local, kind, key)
            return
        del self._own[answer]
        self._touch(answer)
        self._remove(self.local, kind, key)
        if mirrored is not None:
            # Another node's answer for the same key, hidden by this one's
            # until now: served again.
            mirrored.served = self._serve(answer, mirrored.authorization)
        if not self.link.up:
            return
        _, name = answer
        self._send("DEL", self.key(kind, name))
        self._send("SREM", self.index, f"{kind}:{name}")
        self._send("DEL", self.ackKey(kind, name))
        self._publish("remove", answer, "")

    def _store(self, answer: _Answer, authorization: str) -> None:
        """
        Write one own answer to Redis and tell the fleet: its earlier
        acknowledgements go first (they were of another answer).
        """
        kind, name = answer
        value = json.dumps(
            {"node": self.nodes.name, "authorization": authorization},
            separators=(",", ":"),
        )
        self._send("DEL", self.ackKey(kind, name))
        self._send("SET", self.key(kind, name), value, "PX", ANSWER_TTL_MS)
        self._send("SADD", self.index, f"{kind}:{name}")
        self._send("PEXPIRE", self.index, ANSWER_TTL_MS)
        self._publish("add", answer, authorization)

    def _publish(self, op: str, answer: _Answer, authorization: str) -> None:
        kind, name = answer
        message = {
            "op": op,
            "kind": kind,
            "key": name,
            "authorization": authorization,
            "node": self.nodes.name,
        }
        self._send("PUBLISH", self.channel, json.dumps(message, separators=(",", ":")))

    # -- the other nodes' answers

    def received(self, message: str) -> None:
        """
        One message on the challenge channel: another node's add or
        remove.  This node's own messages are ignored; bad ones are logged
        and ignored.
        """
        if not self._running:
            return
        try:
            parsed = json.loads(message)
            if not isinstance(parsed, dict):
                raise ValueError("not an object")
            op, kind, key, node = (
                parsed.get("op"),
                parsed.get("kind"),
                parsed.get("key"),
                parsed.get("node"),
            )
            authorization = parsed.get("authorization", "")
            if op not in ("add", "remove"):
                raise ValueError(f"unknown op {op!r}")
            if kind not in _KINDS:
                raise ValueError(f"unknown kind {kind!r}")
            if not isinstance(key, str) or not key:
                raise ValueError("no key")
            if not isinstance(node, str) or not node:
                raise ValueError("no node")
            if not isinstance(authorization, str) or (
                op == "add" and not authorization
            ):
                raise ValueError("no authorization")
        except ValueError as e:
            self._bad(f"{e}: {message[:200]!r}")
            return
        if node == self.nodes.name:
            return
        answer = (kind, _normalizeKey(kind, key))
        self._touch(answer)
        if op == "add":
            if self._mirror(answer, node, authorization):
                self._ack(answer)
        else:
            mirrored = self._mirrored.get(answer)
            if mirrored is not None and mirrored.node == node:
                self._drop(answer)

    def _mirror(self, answer: _Answer, node: str, authorization: str) -> bool:
        """
        Serve another node's answer here (unless this node has its own for
        the same key).  Whether it can be acknowledged.
        """
        current = self._mirrored.get(answer)
        if (
            current is not None
            and current.node == node
            and current.authorization == authorization
        ):
            return current.served
        served = False
        if answer not in self._own:
            served = self._serve(answer, authorization)
            if not served:
                if current is not None and current.served:
                    self._remove(self.local, *answer)
                self._mirrored.pop(answer, None)
                return False
        self._mirrored[answer] = _Mirrored(node, authorization, served)
        return served

    def _serve(self, answer: _Answer, authorization: str) -> bool:
        """
        Add one answer to the local responder; whether it took it.
        """
        kind, key = answer
        try:
            if kind == HTTP01:
                self.local.addHTTP01(key, authorization)
            else:
                self.local.addTLSALPN01(key, authorization)
        except ValueError as e:
            self._bad(f"{kind} answer for {key!r} refused: {e}")
            return False
        return True

    def _drop(self, answer: _Answer) -> None:
        """
        Stop serving a mirrored answer (an own one for the same key stays).
        """
        mirrored = self._mirrored.pop(answer, None)
        if mirrored is not None and mirrored.served and answer not in self._own:
            self._remove(self.local, *answer)

    def _remove(self, responder: IChallengeResponder, kind: str, key: str) -> None:
        if kind == HTTP01:
            responder.removeHTTP01(key)
        else:
            responder.removeTLSALPN01(key)

    def _ack(self, answer: _Answer) -> None:
        """
        Tell the fleet that this node serves C{answer}.
        """
        if not self.link.up:
            return
        ackKey = self.ackKey(*answer)
        self._send("SADD", ackKey, self.nodes.name)
        self._send("PEXPIRE", ackKey, ANSWER_TTL_MS)

    def _touch(self, answer: _Answer) -> None:
        self._stamp += 1
        self._touched[answer] = self._stamp

    # -- full reads

    def _subscribed(self) -> None:
        self.resync()

    def _tick(self) -> None:
        self.resync()

    def resync(self) -> Deferred[None]:
        """
        Read every pending answer from Redis: mirror what is missing here,
        drop mirrored answers no longer there, forget the index members of
        expired answers, acknowledge every mirrored answer, and write again
        the own answers Redis lost (added while it was down, or expired).
        Never fails; nothing after L{stop}.  While the command connection
        is down, it is tried again every L{RESYNC_RETRY_SECS} until it is
        up.
        """
        if not self._running:
            return succeed(None)
        if not self.link.up:
            if self._retry is None or not self._retry.active():
                self._retry = self._clock.callLater(RESYNC_RETRY_SECS, self.resync)
            return succeed(None)
        retry, self._retry = self._retry, None
        if retry is not None and retry.active():
            retry.cancel()
        if self._resyncing is not None:
            self._again = True
            return self._resyncing
        start = self._stamp
        done: Deferred[None] = Deferred()
        self._resyncing = done

        def members(reply: Any) -> Deferred[Any]:
            names = sorted({_text(m) for m in reply or ()})
            if not names:
                return succeed((names, []))
            keys = []
            for member in names:
                kind, _, key = member.partition(":")
                keys.append(self.key(kind, key))
            got: Deferred[Any] = self.link.command("MGET", *keys)
            return got.addCallback(lambda values: (names, values))

        def read(result: tuple[list[str], list[Any]]) -> None:
            if self._running:
                self._apply(start, *result)

        def failed(reason: Any) -> None:
            self._redisFailed(reason.getErrorMessage())

        def finished(_: Any) -> None:
            self._resyncing = None
            for answer, stamp in list(self._touched.items()):
                if stamp <= start:
                    del self._touched[answer]
            done.callback(None)
            if self._again:
                self._again = False
                self.resync()

        d: Deferred[Any] = self.link.command("SMEMBERS", self.index)
        d.addCallback(members).addCallback(read).addErrback(failed)
        d.addBoth(finished)
        return done

    def _apply(self, start: int, members: list[str], values: list[Any]) -> None:
        """
        Bring this node in line with a full read sent when the stamp was
        C{start}: answers changed since are left as they are.
        """
        present: dict[_Answer, tuple[str, str]] = {}
        ownStored: set[_Answer] = set()
        for member, value in zip(members, values, strict=False):
            kind, _, key = member.partition(":")
            if value is None or kind not in _KINDS or not key:
                self._send("SREM", self.index, member)
                continue
            try:
                stored = json.loads(_text(value))
                node = stored["node"]
                authorization = stored["authorization"]
                if not isinstance(node, str) or not isinstance(authorization, str):
                    raise ValueError("not strings")
            except (ValueError, KeyError, TypeError) as e:
                self._bad(f"stored {member!r}: {e}")
                continue
            answer = (kind, _normalizeKey(kind, key))
            if node == self.nodes.name:
                if self._own.get(answer) == authorization:
                    ownStored.add(answer)
                continue
            present[answer] = (node, authorization)

        def changedSince(answer: _Answer) -> bool:
            return self._touched.get(answer, 0) > start

        for answer in list(self._mirrored):
            if answer not in present and not changedSince(answer):
                self._drop(answer)
        for answer, (node, authorization) in present.items():
            if changedSince(answer):
                continue
            if self._mirror(answer, node, authorization):
                self._ack(answer)
        for answer, authorization in list(self._own.items()):
            if answer not in ownStored and not changedSince(answer):
                self._store(answer, authorization)

    # -- published

    def _others(self) -> list[str]:
        return [n for n in self.nodes.live if n != self.nodes.name]

    def _poll(self, wait: _Wait) -> None:
        """
        Look once at the acknowledgements of every own answer.
        """
        wait.poll = None
        if wait.done.called:
            return
        others = set(self._others())
        answers = list(self._own)
        if not others or not answers or not self.link.up:
            self._finish(wait)
            return
        wait.polling = True

        def seen(replies: list[Any]) -> None:
            wait.polling = False
            if wait.done.called:
                return
            acked = set(others)
            for reply in replies:
                acked &= {_text(m) for m in reply or ()}
            wait.missing = frozenset(set(self._others()) - acked)
            if not wait.missing:
                self._finish(wait)
            else:
                wait.poll = self._clock.callLater(ACK_POLL_SECS, self._poll, wait)

        def failed(reason: Any) -> None:
            wait.polling = False
            self._redisFailed(reason.value.subFailure.getErrorMessage())
            if not wait.done.called:
                wait.poll = self._clock.callLater(ACK_POLL_SECS, self._poll, wait)

        gatherResults(
            [self.link.command("SMEMBERS", self.ackKey(*a)) for a in answers],
            consumeErrors=True,
        ).addCallbacks(seen, failed)

    def _late(self, wait: _Wait) -> None:
        """
        L{PUBLISH_WAIT_SECS} passed: say who did not acknowledge, and go
        on.
        """
        wait.deadline = None
        missing = sorted(wait.missing & set(self._others()))
        if missing:
            _log.warn(
                "ACME challenges: node(s) {nodes} did not acknowledge the answers "
                "within {secs} s; the CA is told to validate anyway (a node it "
                "reaches may not answer)",
                nodes=", ".join(missing),
                secs=PUBLISH_WAIT_SECS,
            )
        self._finish(wait)

    def _finish(self, wait: _Wait, fire: bool = True) -> None:
        for call in (wait.deadline, wait.poll):
            if call is not None and call.active():
                call.cancel()
        wait.deadline = wait.poll = None
        if wait in self._waits:
            self._waits.remove(wait)
        if fire and not wait.done.called:
            wait.done.callback(None)

    # -- errors

    def _send(self, *args: Any) -> None:
        """
        One command whose reply is not needed; its failure is logged.
        """
        self.link.command(*args).addErrback(
            lambda reason: self._redisFailed(reason.getErrorMessage())
        )

    def _redisFailed(self, why: str) -> None:
        held = self._redisErrors.due()
        if held is not None:
            _log.warn(
                "ACME challenges: Redis failed ({why}); the fleet may not serve "
                "this node's answers until it is back ({held} more such errors "
                "since the last line)",
                why=why,
                held=held,
            )

    def _bad(self, why: str) -> None:
        held = self._badMessages.due()
        if held is not None:
            _log.warn(
                "ACME challenges: ignored a bad answer from the fleet: {why} "
                "({held} more since the last line)",
                why=why,
                held=held,
            )
