"""Requests/s of the GCRA rate-limit script (EVALSHA) from one Twisted process.

Three ways a Twisted app can call Redis:

  tx       txredisapi on the reactor, one connection; N callers in flight
           (txredisapi pipelines them on the one connection).
  threads  redis-py, blocking calls through deferToThreadPool on a pool of
           T threads, each taking a connection from a redis-py ConnectionPool.
  pipe     redis-py with explicit batching: calls from the reactor queue up,
           one worker thread sends up to B of them as one pipeline (one round
           trip), results fire the callers' Deferreds on the reactor.
  raw      for reference, not a library: a ~40-line Twisted protocol using
           hiredis.pack_command / hiredis.Reader on one connection.

Each run: warm-up, then a measured window; prints one JSON line with calls/s,
per-call latency (p50/p99, ms, caller-visible: from issuing to the Deferred
firing), process CPU per call (user+sys of the whole process, all threads),
and the share of allowed calls. 10,000 client keys are used round-robin.

  python bench_redis_client.py --port P --mode tx --n 200
  python bench_redis_client.py --port P --mode threads --threads 16 --n 200
  python bench_redis_client.py --port P --mode pipe --batch 64 --n 200
  ... --no-hiredis   (hide hiredis: both clients fall back to pure Python)

It needs a redis-server of its own (see docs/performance.md, "The Redis
client (#19)", for the exact commands) and, for the redis-py modes, redis-py
(not a dependency of revproxy: install it in a venv of its own).  Issue #19
chose txredisapi with hiredis from these figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sys
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IReactorCore,
    IReactorFromThreads,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

SCRIPT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gcra.lua")
KEY_COUNT = 10_000
SITE = "bench.example"
INTERVAL_MS = 100  # rate: 10 requests/s per client
TAU_MS = 1_900  # burst: 20


class IBenchReactor(IReactorCore, IReactorTime, IReactorTCP, IReactorFromThreads):
    """
    What the bench uses of the global reactor.
    """


def getReactor() -> IBenchReactor:
    """
    The global reactor (installed by L{run} as epoll first).
    """
    from twisted.internet import reactor

    return cast(IBenchReactor, reactor)


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def now_ms() -> int:
    return int(time.time() * 1000)


class Keys:
    """Round-robin over KEY_COUNT distinct (site, client) keys."""

    def __init__(self) -> None:
        self.keys = [
            f"revproxy:rl:{SITE}:198.51.{i // 256}.{i % 256}" for i in range(KEY_COUNT)
        ]
        self.i = 0

    def next(self) -> str:
        k = self.keys[self.i]
        self.i = (self.i + 1) % KEY_COUNT
        return k


class Stats:
    def __init__(self) -> None:
        self.measuring = False
        self.calls = 0
        self.allowed = 0
        self.errors = 0
        self.latencies: list[float] = []

    def record(self, started: float, result: Any) -> None:
        if not self.measuring:
            return
        self.calls += 1
        self.latencies.append(time.perf_counter() - started)
        if isinstance(result, (list, tuple)) and result and int(result[0]) == 1:
            self.allowed += 1


def percentile(sorted_values: Sequence[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    idx = min(len(sorted_values) - 1, round(p / 100.0 * (len(sorted_values) - 1)))
    return sorted_values[idx]


# --------------------------------------------------------------------------
# Clients. Each provides: setup() -> Deferred, limit(key) -> Deferred[list].


class TxRedisClient:
    """txredisapi, one connection on the reactor."""

    def __init__(self, port: int, script: str) -> None:
        self.port = port
        self.script = script
        self.sha = hashlib.sha1(script.encode()).hexdigest()
        self.conn: Any = None

    def setup(self) -> Deferred[None]:
        import txredisapi  # type: ignore[import-untyped]

        async def go() -> None:
            self.conn = await txredisapi.Connection(
                "127.0.0.1", self.port, reconnect=False
            )
            sha = await self.conn.script_load(self.script)
            assert sha == self.sha, (sha, self.sha)

        return Deferred.fromCoroutine(go())

    def limit(self, key: str) -> Deferred[Any]:
        import txredisapi

        d: Deferred[Any] = self.conn.evalsha(
            self.sha, [key], [now_ms(), INTERVAL_MS, TAU_MS]
        )

        def noscript(f: Failure) -> Deferred[Any]:
            f.trap(txredisapi.ScriptDoesNotExist)
            result: Deferred[Any] = self.conn.eval(
                self.script, [key], [now_ms(), INTERVAL_MS, TAU_MS]
            )
            return result

        d.addErrback(noscript)
        return d

    def close(self) -> Deferred[None]:
        result: Deferred[None] = self.conn.disconnect()
        return result


def make_raw_protocol() -> type[Any]:
    """A minimal RESP client protocol on the reactor: hiredis.pack_command to
    encode, hiredis.Reader to parse, a FIFO of Deferreds. Everything written
    in one reactor turn goes out in one write (Twisted buffers until the next
    doWrite), so concurrent callers are pipelined for free."""
    import hiredis
    from twisted.internet import defer, protocol

    class _Raw(protocol.Protocol):
        def __init__(self) -> None:
            self.reader = hiredis.Reader()
            self.waiting: deque[Deferred[Any]] = deque()

        def command(self, *args: Any) -> Deferred[Any]:
            d: Deferred[Any] = defer.Deferred()
            self.waiting.append(d)
            assert self.transport is not None
            self.transport.write(hiredis.pack_command(args))
            return d

        def dataReceived(self, data: bytes) -> None:
            self.reader.feed(data)
            while True:
                reply = self.reader.gets()
                if reply is False:
                    return
                d = self.waiting.popleft()
                if isinstance(reply, hiredis.ReplyError):
                    d.errback(reply)
                else:
                    d.callback(reply)

        def connectionLost(self, reason: Failure = connectionDone) -> None:
            while self.waiting:
                self.waiting.popleft().errback(reason)

    return _Raw


class RawHiredisClient:
    """(d) Not a library: the floor for a Twisted-native client (~40 lines)."""

    def __init__(self, port: int, script: str) -> None:
        self.port = port
        self.script = script
        self.sha = hashlib.sha1(script.encode()).hexdigest()
        self.proto: Any = None

    def setup(self) -> Deferred[None]:
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        async def go() -> None:
            self.proto = await connectProtocol(
                TCP4ClientEndpoint(getReactor(), "127.0.0.1", self.port),
                make_raw_protocol()(),
            )
            self.proto.transport.setTcpNoDelay(True)
            sha = await self.proto.command("SCRIPT", "LOAD", self.script)
            assert sha.decode() == self.sha

        return Deferred.fromCoroutine(go())

    def limit(self, key: str) -> Deferred[Any]:
        args = (now_ms(), INTERVAL_MS, TAU_MS)
        d: Deferred[Any] = self.proto.command("EVALSHA", self.sha, 1, key, *args)

        def noscript(f: Failure) -> Failure | Deferred[Any]:
            if not str(f.value).startswith("NOSCRIPT"):
                return f
            result: Deferred[Any] = self.proto.command(
                "EVAL", self.script, 1, key, *args
            )
            return result

        d.addErrback(noscript)
        return d


class RedisPyBase:
    def __init__(self, port: int, script: str, max_connections: int) -> None:
        import redis  # type: ignore[import-not-found, unused-ignore]  # not a dependency

        self.redis = redis
        self.script = script
        self.sha = hashlib.sha1(script.encode()).hexdigest()
        self.pool = redis.ConnectionPool(
            host="127.0.0.1", port=port, max_connections=max_connections
        )
        self.client = redis.Redis(connection_pool=self.pool)

    def load(self) -> None:
        sha = self.client.script_load(self.script)
        assert sha == self.sha

    def call_blocking(self, key: str) -> Any:
        """One EVALSHA; EVAL on NOSCRIPT (after a SCRIPT FLUSH or a restart)."""
        args = (now_ms(), INTERVAL_MS, TAU_MS)
        try:
            return self.client.evalsha(self.sha, 1, key, *args)
        except self.redis.exceptions.NoScriptError:
            return self.client.eval(self.script, 1, key, *args)

    def close(self) -> None:
        self.pool.disconnect()


class RedisPyThreadsClient(RedisPyBase):
    """redis-py blocking calls in a Twisted ThreadPool of T threads."""

    def __init__(self, port: int, script: str, threads: int) -> None:
        from twisted.python.threadpool import ThreadPool

        super().__init__(port, script, max_connections=threads)
        self.threadpool = ThreadPool(
            minthreads=threads, maxthreads=threads, name="redis"
        )

    def setup(self) -> Deferred[None]:
        from twisted.internet import threads

        reactor = getReactor()
        self.threadpool.start()
        reactor.addSystemEventTrigger("during", "shutdown", self.threadpool.stop)
        return threads.deferToThreadPool(reactor, self.threadpool, self.load)

    def limit(self, key: str) -> Deferred[Any]:
        from twisted.internet import threads

        return threads.deferToThreadPool(
            getReactor(), self.threadpool, self.call_blocking, key
        )


class RedisPyPipelineClient(RedisPyBase):
    """Batching layer: up to `batch` queued calls go in one redis-py pipeline,
    run in one worker thread; one batch in flight at a time."""

    def __init__(self, port: int, script: str, batch: int) -> None:
        from twisted.python.threadpool import ThreadPool

        super().__init__(port, script, max_connections=2)
        self.batch = batch
        self.pending: deque[tuple[str, Deferred[Any]]] = deque()
        self.in_flight = False
        self.threadpool = ThreadPool(minthreads=1, maxthreads=1, name="redis-pipe")
        self.batch_sizes: list[int] = []

    def setup(self) -> Deferred[None]:
        from twisted.internet import threads

        reactor = getReactor()
        self.threadpool.start()
        reactor.addSystemEventTrigger("during", "shutdown", self.threadpool.stop)
        return threads.deferToThreadPool(reactor, self.threadpool, self.load)

    def limit(self, key: str) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append((key, d))
        if not self.in_flight:
            self._send()
        return d

    def _run_batch(self, keys: list[str]) -> list[Any]:
        now = now_ms()
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.evalsha(self.sha, 1, key, now, INTERVAL_MS, TAU_MS)
        results: list[Any] = pipe.execute(raise_on_error=False)
        retry = [
            i
            for i, r in enumerate(results)
            if isinstance(r, self.redis.exceptions.NoScriptError)
        ]
        if retry:
            pipe = self.client.pipeline(transaction=False)
            for i in retry:
                pipe.eval(self.script, 1, keys[i], now, INTERVAL_MS, TAU_MS)
            for i, r in zip(retry, pipe.execute(raise_on_error=False), strict=True):
                results[i] = r
        return results

    def _send(self) -> None:
        from twisted.internet import threads

        reactor = getReactor()

        n = min(self.batch, len(self.pending))
        items = [self.pending.popleft() for _ in range(n)]
        self.batch_sizes.append(n)
        self.in_flight = True
        d = threads.deferToThreadPool(
            reactor, self.threadpool, self._run_batch, [k for k, _ in items]
        )

        def done(results: list[Any]) -> None:
            self.in_flight = False
            for (_, cd), r in zip(items, results, strict=True):
                if isinstance(r, Exception):
                    cd.errback(r)
                else:
                    cd.callback(r)
            if self.pending and not self.in_flight:
                self._send()

        def failed(f: Failure) -> None:
            self.in_flight = False
            for _, cd in items:
                cd.errback(f)
            if self.pending and not self.in_flight:
                self._send()

        d.addCallbacks(done, failed)


# --------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    from twisted.internet import epollreactor

    epollreactor.install()
    reactor = getReactor()

    with open(SCRIPT_PATH) as f:
        script = f.read()
    if args.mode == "tx":
        if args.tx_pack_command:
            # Exploratory: replace txredisapi's pure-Python command encoder
            # (the top of its profile) with hiredis.pack_command.
            import hiredis
            import txredisapi

            def _build(self: Any, *a: Any, **kw: Any) -> bytes:
                return cast(bytes, hiredis.pack_command(a))

            txredisapi.BaseRedisProtocol._build_command = _build
        client: Any = TxRedisClient(args.port, script)
    elif args.mode == "threads":
        client = RedisPyThreadsClient(args.port, script, args.threads)
    elif args.mode == "pipe":
        client = RedisPyPipelineClient(args.port, script, args.batch)
    elif args.mode == "raw":
        client = RawHiredisClient(args.port, script)
    else:
        raise SystemExit(f"unknown mode {args.mode}")

    keys = Keys()
    stats = Stats()
    state = {"stop": False}

    def caller() -> None:
        if state["stop"]:
            return
        started = time.perf_counter()
        d = client.limit(keys.next())

        def ok(r: Any) -> None:
            stats.record(started, r)
            caller()

        def err(f: Failure) -> None:
            stats.errors += 1
            if stats.errors < 5:
                print("error:", f.getErrorMessage(), file=sys.stderr)
            caller()

        d.addCallbacks(ok, err)

    marks: dict[str, float] = {}

    def start_measuring() -> None:
        stats.measuring = True
        marks["t0"] = time.perf_counter()
        marks["cpu0"] = cpu_seconds()

    def stop_measuring() -> None:
        stats.measuring = False
        marks["t1"] = time.perf_counter()
        marks["cpu1"] = cpu_seconds()
        state["stop"] = True
        reactor.callLater(0.5, reactor.stop)

    async def main() -> None:
        await client.setup()
        for _ in range(args.n):
            caller()
        reactor.callLater(args.warmup, start_measuring)
        reactor.callLater(args.warmup + args.duration, stop_measuring)

    def fail(f: Failure) -> None:
        f.printTraceback()
        reactor.stop()

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(main()).addErrback(fail))
    reactor.run()

    elapsed = marks["t1"] - marks["t0"]
    lat = sorted(stats.latencies)
    result: dict[str, Any] = {
        "mode": args.mode,
        "n": args.n,
        "threads": args.threads if args.mode == "threads" else None,
        "batch": args.batch if args.mode == "pipe" else None,
        "hiredis": not args.no_hiredis,
        "tx_pack_command": args.tx_pack_command,
        "calls": stats.calls,
        "errors": stats.errors,
        "seconds": round(elapsed, 3),
        "calls_per_s": round(stats.calls / elapsed, 1),
        "p50_ms": round(percentile(lat, 50) * 1000, 3),
        "p99_ms": round(percentile(lat, 99) * 1000, 3),
        "cpu_us_per_call": round(
            (marks["cpu1"] - marks["cpu0"]) / max(stats.calls, 1) * 1e6, 1
        ),
        "cpu_share": round((marks["cpu1"] - marks["cpu0"]) / elapsed, 3),
        "allowed_share": round(stats.allowed / max(stats.calls, 1), 3),
    }
    if args.mode == "pipe" and client.batch_sizes:
        result["mean_batch"] = round(
            sum(client.batch_sizes) / len(client.batch_sizes), 1
        )
    result["versions"] = {
        "python": sys.version.split()[0],
        "twisted": __import__("twisted").__version__,
        "txredisapi": _version("txredisapi"),
        "hiredis": None if args.no_hiredis else _version("hiredis"),
        "redis-py": _version("redis"),
    }
    return result


def _version(distribution: str) -> str | None:
    """
    The installed version of C{distribution}, or None.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", choices=["tx", "threads", "pipe", "raw"], required=True)
    p.add_argument("--n", type=int, default=1, help="callers in flight")
    p.add_argument(
        "--threads", type=int, default=4, help="thread pool size (threads mode)"
    )
    p.add_argument(
        "--batch", type=int, default=64, help="max calls per pipeline (pipe mode)"
    )
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument(
        "--tx-pack-command",
        action="store_true",
        help="tx mode: encode commands with hiredis.pack_command (monkeypatch)",
    )
    p.add_argument(
        "--no-hiredis", action="store_true", help="hide hiredis from both clients"
    )
    args = p.parse_args()
    if args.no_hiredis:
        sys.modules["hiredis"] = None  # type: ignore[assignment]  # import hiredis -> ImportError
    print(json.dumps(run(args)), flush=True)


if __name__ == "__main__":
    main()
