"""
Run the hostile-client attacks of C{tests/integration/test_hostile.py}
against C{twistd revproxy} from any checkout and print their figures: the
"before and after" of issue #13 ("Hostile clients").

    PYTHONPATH=. .venv/bin/python bench/hostile.py --checkout /tmp/base --label before
    PYTHONPATH=. .venv/bin/python bench/hostile.py --checkout . --label after

Each attack runs against a fresh proxy: this venv's Python runs
C{twistd -n --pidfile= revproxy} with only C{--checkout} on its
C{PYTHONPATH} (and C{PYTHONDONTWRITEBYTECODE}, but Twisted still writes
C{twisted/plugins/dropin.cache} there: point it at an export, not at a
checkout that must stay untouched).  The upstream and the clients run in
this process, on loopback.  Nothing here asserts: the code before the issue
is expected to fail some attacks, and the figures say how.  Every wait is
bounded; the huge-windows attack stops once the proxy's RSS grew by
C{--rss-cap} MiB, and a proxy that does not exit 15 s after SIGTERM is
killed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import react
from twisted.python.failure import Failure

from tests.integration.support import (
    LOOPBACK_LISTEN,
    IIntegrationReactor,
    exitCode,
    twistdArgv,
    withTimeout,
    writeConfig,
)
from tests.integration.test_hostile import (
    HOST,
    CountingUpstream,
    MiB,
    Target,
    hugeWindows,
    rapidReset,
    sleep,
    stalledHTTP11,
    trickledBodies,
)
from tests.integration.test_tls import Authority

_TLS_STARTED = re.compile(rb"ProxySite \(TLS\) starting on (\d+)")
_STARTED = re.compile(rb"ProxySite starting on (\d+)")

#: The C{[server]} keys of the trickled-bodies attack (as its test's).
TRICKLE_SERVER = {
    "header_timeout_secs": 2,
    "body_timeout_secs": 2,
    "min_body_rate_bytes_per_sec": 1000,
    "keepalive_timeout_secs": 2,
    "lingering_close_secs": 1,
    "upstream_max_connections": 100,
}


class _Child(ProcessProtocol):
    """
    The proxy's output, and its end.
    """

    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[int] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    def errReceived(self, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(exitCode(reason))


class Proxy:
    """
    A C{twistd revproxy} child running the code of C{checkout}.
    """

    def __init__(
        self, reactor: IIntegrationReactor, checkout: str, config: str, cwd: str
    ) -> None:
        self.reactor = reactor
        self.child = _Child()
        env = {
            "PYTHONPATH": checkout,
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
        }
        self.transport = reactor.spawnProcess(
            self.child,
            sys.executable,
            twistdArgv(["--config", config]),
            env=env,
            path=cwd,
        )
        pid = self.transport.pid
        assert pid is not None
        self.pid = int(pid)

    async def port(self, logged: re.Pattern[bytes]) -> int:
        """
        The port of the listener whose start C{logged} matches, once
        logged (15 s at most).
        """
        for _ in range(300):
            match = logged.search(self.child.output)
            if match is not None:
                return int(match.group(1))
            if self.child.ended.called:
                break
            await sleep(self.reactor, 0.05)
        raise RuntimeError(f"no listener:\n{self.child.output.decode()}")

    async def stop(self) -> str:
        """
        SIGTERM, then SIGKILL after 15 s; how it ended.
        """
        if self.child.ended.called:
            return "had exited"
        self.transport.signalProcess("TERM")
        ended: Deferred[int] = Deferred()

        def relay(code: int) -> int:
            ended.callback(code)
            return code

        self.child.ended.addCallback(relay)
        try:
            code = await withTimeout(ended, 15, "the proxy's exit")
        except TimeoutError:
            self.transport.signalProcess("KILL")
            await self.child.ended
            return "killed after 15 s"
        return f"exit {code}"


async def withProxy(
    reactor: IIntegrationReactor,
    checkout: str,
    server: Mapping[str, object],
    attack: Callable[[Target], Awaitable[Any]],
    log: str = "",
) -> tuple[Any, dict[str, object]]:
    """
    Start an upstream and a proxy from C{checkout}, warm it with two
    normal requests, run C{attack} on it, stop both; the attack's figures
    and what the proxy did besides.
    """
    directory = tempfile.mkdtemp(prefix="rpx-hostile-ab-", dir="/tmp")
    upstream = CountingUpstream(reactor, "A")
    await upstream.start()
    proxy: Proxy | None = None
    extra: dict[str, object] = {}
    try:
        authority = Authority()
        caFile = authority.writeRoot(os.path.join(directory, "ca.pem"))
        certFile, keyFile = authority.issue(HOST).write(directory, "a")
        site: dict[str, object] = {
            "name": "a",
            "hosts": [HOST],
            "upstreams": [f"http://127.0.0.1:{upstream.port}"],
            "tls": "files",
            "cert_file": certFile,
            "key_file": keyFile,
        }
        keys: dict[str, object] = {"listen_https": [LOOPBACK_LISTEN], **server}
        config = writeConfig(directory, [site], server=keys)
        proxy = Proxy(reactor, os.path.abspath(checkout), config, directory)
        target = Target(
            reactor,
            proxy.pid,
            await proxy.port(_TLS_STARTED),
            caFile,
            upstream,
            await proxy.port(_STARTED),
        )
        for _ in range(2):
            answer, _seconds = await target.normalClient()
            if answer != "2 200":
                raise RuntimeError(f"the warm-up request failed: {answer}")
        figures = await attack(target)
        extra["rss_after_mib"] = round(target.rss() / MiB, 1)
    finally:
        if proxy is not None:
            extra["stop"] = await proxy.stop()
            output = proxy.child.output
            extra["tracebacks"] = output.count(b"Traceback")
            extra["log_lines"] = output.count(b"\n")
            if log:
                with open(log, "wb") as f:
                    f.write(output)
        await upstream.stop()
        shutil.rmtree(directory, True)
    return figures, extra


def mib(n: int) -> float:
    return round(n / MiB, 2)


async def run(reactor: IIntegrationReactor, options: argparse.Namespace) -> None:
    checkout: str = options.checkout
    cap = options.rss_cap * MiB
    attacks: dict[str, tuple[Mapping[str, object], Callable[[Target], Any]]] = {
        "huge-windows": (
            {},
            lambda t: hugeWindows(
                t, streams=100, size=64 * MiB, stall=6.0, probes=3, rssCap=cap
            ),
        ),
        "trickled-bodies": (
            TRICKLE_SERVER,
            lambda t: trickledBodies(
                t, connections=10, streams=100, every=1.0, limit=20.0
            ),
        ),
        "rapid-reset": (
            {},
            lambda t: rapidReset(t, total=10_000, batch=1_000, wait=10.0),
        ),
        "late-reset": (
            {},
            lambda t: rapidReset(
                t, total=10_000, batch=100, wait=10.0, resetAfter=0.05
            ),
        ),
        "stalled-http11": (
            {},
            lambda t: stalledHTTP11(t, clients=20, size=8 * MiB, stall=3.0),
        ),
        "stalled-http11-plain": (
            {},
            lambda t: stalledHTTP11(t, clients=20, size=8 * MiB, stall=3.0, tls=False),
        ),
        "stalled-http2": (
            {},
            lambda t: hugeWindows(
                t, streams=20, size=8 * MiB, stall=3.0, probes=1, rssCap=cap
            ),
        ),
    }
    names = options.only.split(",") if options.only else list(attacks)
    for name in names:
        server, attack = attacks[name]
        try:
            log = ""
            if options.logs:
                os.makedirs(options.logs, exist_ok=True)
                log = os.path.join(options.logs, f"{options.label}-{name}.log")
            f, extra = await withProxy(reactor, checkout, server, attack, log)
        except Exception as e:
            print(
                json.dumps({"label": options.label, "attack": name, "error": repr(e)})
            )
            continue
        row: dict[str, object] = {"label": options.label, "attack": name}
        if name in ("huge-windows", "stalled-http2"):
            row.update(
                alpn=repr(f.alpn),
                reached=f.reached,
                rss_before_mib=mib(f.rssBefore),
                rss_growth_mib=mib(f.rssGrowth),
                capped=f.capped,
                probes=[(a, round(s, 3)) for a, s in f.probes],
                client_open=f.clientOpen,
                seconds=round(f.seconds, 1),
            )
        elif name == "trickled-bodies":
            row.update(
                statuses=dict(f.statuses),
                resets_without_answer=f.resets,
                uncut=f.uncut,
                cut_after_s=f.cutAfter and round(f.cutAfter, 2),
                closed_after_s=f.closedAfter and round(f.closedAfter, 2),
                fds_before=f.descriptorsBefore,
                fds_most=f.descriptorsMost,
                fds_after=f.descriptorsAfter,
                new_files=sorted(f.newFiles)[:5],
                new_files_count=len(f.newFiles),
            )
        elif name in ("rapid-reset", "late-reset"):
            row.update(
                alpn=repr(f.alpn),
                written=f.written,
                upstream_requests=f.upstreamRequests,
                answered=f.answered,
                goaway=f.goAway,
                closed_after_s=f.closedAfter and round(f.closedAfter, 2),
            )
        else:
            row.update(
                alpn=sorted(repr(a) for a in f.alpn),
                reached=f.reached,
                rss_before_mib=mib(f.rssBefore),
                rss_growth_mib=mib(f.rssGrowth),
                clients_open=f.clientsOpen,
            )
        row.update(extra)
        print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", required=True, help="the revproxy to run")
    parser.add_argument("--label", default="", help="a name for the rows")
    parser.add_argument("--only", default="", help="attacks to run, comma-separated")
    parser.add_argument("--logs", default="", help="save each proxy's output here")
    parser.add_argument(
        "--rss-cap", type=int, default=1024, help="stop growing attacks at this (MiB)"
    )
    options = parser.parse_args()
    react(lambda reactor: ensureDeferred(run(reactor, options)))


if __name__ == "__main__":
    main()
