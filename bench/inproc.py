"""
The request path's own cost, without sockets: one kept-alive client
connection and one pooled upstream connection on string transports, the
proxy wired as service.py wires it (router, forwarder, pool, metrics,
observer), a 1 KiB response.  Prints microseconds per request; with
C{--profile}, cProfile's top functions.  Used to find where revproxy's
per-request time goes (docs/performance.md, #13).

    PYTHONPATH=. taskset -c 1 .venv/bin/python bench/inproc.py [N] [--profile]
        [--config bench/revproxy-routes50.toml.in]
"""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
import time
from typing import Any

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.testing import (
    MemoryReactorClock,
    StringTransportWithDisconnection,
)

from revproxy.accesslog import AccessLog
from revproxy.config import parseConfig
from revproxy.metrics import Metrics
from revproxy.observer import RequestObserver
from revproxy.proxy.connector import reactorConnector
from revproxy.proxy.forwarder import Forwarder
from revproxy.proxy.frontend import ConnectionLimits, FrontEnd
from revproxy.proxy.pool import ConnectionPool
from revproxy.ratelimit import RateLimiter
from revproxy.routing import Router
from revproxy.runtime import RuntimeHolder, buildRuntime

HERE = os.path.dirname(os.path.abspath(__file__))
REQUEST = (
    b"GET /small HTTP/1.1\r\nHost: 127.0.0.1:18120\r\nUser-Agent: wrk\r\n"
    b"Accept: */*\r\n\r\n"
)
RESPONSE = (
    # nginx's answer for a static file, as the benchmark's upstream sends it.
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n"
    b"Date: Mon, 07 Dec 2026 05:40:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n"
    b"Last-Modified: Mon, 07 Dec 2026 05:28:09 GMT\r\n"
    b'Connection: keep-alive\r\nETag: "6b166009-400"\r\n'
    b"Accept-Ranges: bytes\r\n\r\n" + b"x" * 1024
)


def main(argv: list[str]) -> None:
    count = int(argv[1]) if len(argv) > 1 and argv[1].isdigit() else 20000
    path = os.path.join(HERE, "revproxy.toml.in")
    if "--config" in argv:
        path = argv[argv.index("--config") + 1]
    with open(path, encoding="utf-8") as f:
        text = (
            f.read()
            .replace("@PORT@", "18120")
            .replace("@UPSTREAM_URL@", "http://127.0.0.1:18080")
        )
    config = parseConfig(text)
    reactor: Any = MemoryReactorClock()
    holder = RuntimeHolder(buildRuntime(config, reactor))
    pool = ConnectionPool(reactor, reactorConnector(reactor))
    metrics = Metrics(reactor)
    forwarder = Forwarder(pool, reactor, config.server.trusted_proxies, metrics)
    observer = RequestObserver(reactor, AccessLog(reactor, "", "json"), metrics, 1)
    router = Router(holder, forwarder, limiter=RateLimiter(reactor), observer=observer)
    limits = attrs.evolve(
        ConnectionLimits.fromServer(config.server), max_requests_per_connection=0
    )
    front = FrontEnd(
        router, reactor, limits, observer=observer, refused=observer.refused
    )
    address = IPv4Address("TCP", "127.0.0.1", 40000)
    client: Any = front.buildProtocol(address)
    clientTransport = StringTransportWithDisconnection(peerAddress=address)
    clientTransport.protocol = client
    client.makeConnection(clientTransport)
    client.dataReceived(REQUEST)
    _, _, factory, _, _ = reactor.tcpClients[0]
    upstream: Any = factory.buildProtocol(None)
    upstreamTransport = StringTransportWithDisconnection()
    upstreamTransport.protocol = upstream
    upstream.makeConnection(upstreamTransport)
    upstream.dataReceived(RESPONSE)

    def one() -> None:
        clientTransport.clear()
        upstreamTransport.clear()
        client.dataReceived(REQUEST)
        upstream.dataReceived(RESPONSE)

    for _ in range(2000):
        one()
    assert clientTransport.value().endswith(b"x" * 16), clientTransport.value()
    assert len(reactor.tcpClients) == 1, "the upstream connection was not reused"
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(count):
            one()
        best = min(best, (time.perf_counter() - started) / count)
    print(f"{best * 1e6:.1f} us per request, best of 5 x {count}")
    if "--profile" in argv:
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(count):
            one()
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(
            int(os.environ.get("TOP", "30"))
        )


if __name__ == "__main__":
    main(sys.argv)
