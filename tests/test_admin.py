"""
Tests for L{revproxy.admin}: the protocol and its commands over
L{StringTransport} with a L{Clock}, and the service over memory reactors.
The admin socket on real Unix sockets is in L{tests.integration.test_admin}.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import attrs
import trustme
from cryptography import x509
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorTime, IReactorUNIX
from twisted.internet.task import Clock
from twisted.internet.testing import (
    EventLoggingObserver,
    MemoryReactor,
    RaisingMemoryReactor,
    StringTransport,
)
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from revproxy.acme.renewal import AcmeSiteDescription, RenewalResult
from revproxy.admin import (
    IDLE_TIMEOUT,
    AdminFactory,
    AdminProtocol,
    AdminSocket,
    Answer,
    Operations,
    healthzBody,
    peekUpstream,
    renderAcmeSite,
    renderRenewal,
    renderUpstreamHealth,
    socketDirectoryProblem,
    unsafeSocketDirectory,
)
from revproxy.config import Config, Upstream, loadConfig, parseConfig
from revproxy.proxy.pool import UpstreamSelector
from revproxy.reload import Applied, Refused, Reloader, ReloadResult, SiteChanges
from revproxy.runtime import Runtime, RuntimeHolder, buildRuntime
from revproxy.tls import loadTLSFiles
from revproxy.upstreamhealth import UpstreamHealthDescription

CONFIG = """\
[server]
listen_http = ["tcp:8080:interface=127.0.0.1"]
listen_https = []
admin_socket_path = ""
ops_listen = ""
trusted_proxies = ["10.0.0.0/8"]

[[sites]]
name = "app"
hosts = ["app.example", "*.app.example"]
upstreams = ["http://10.1.0.1:8000", "http://10.1.0.2:8000", "http://10.1.0.3:8000"]
connect_timeout_secs = 2
response_timeout_secs = 30
max_body_bytes = 1000
rate_limit = { requests_per_second = 5, burst = 10 }

[[sites]]
name = "fallback"
hosts = ["fallback.example"]
upstreams = ["http://127.0.0.1:9000"]
default = true
"""

NO_DEFAULT = """\
[server]
listen_http = ["tcp:8080"]
listen_https = []
admin_socket_path = ""
ops_listen = ""

[[sites]]
name = "only"
hosts = ["only.example"]
upstreams = ["http://127.0.0.1:9000"]
"""

SHA = "ab" * 32

RELOADED = Applied(
    generation=2,
    configSHA256=SHA,
    sites=SiteChanges(added=("new",), removed=(), changed=(), unchanged=2),
    restartRequired=(),
    warnings=(),
)

#: The JSON answer of L{RELOADED}.
RELOADED_JSON: Answer = {
    "status": "ok",
    "generation": 2,
    "config_sha256": SHA,
    "sites": {"added": ["new"], "removed": [], "changed": [], "unchanged": 2},
    "restart_required": [],
    "warnings": [],
}


def runtimeFor(text: str, clock: IReactorTime) -> Runtime:
    """
    The first L{Runtime} of the config C{text}, as if read from a file
    whose sha256 is L{SHA}.
    """
    config: Config = attrs.evolve(
        parseConfig(text), path="/etc/revproxy/revproxy.toml", source_sha256=SHA
    )
    return buildRuntime(config, clock)


class FakeReloader:
    """
    A reloader whose reloads and checks wait until the test fires them.
    """

    def __init__(self, holder: RuntimeHolder) -> None:
        self.holder = holder
        self.reloads: list[tuple[str, Deferred[ReloadResult]]] = []
        self.checks: list[Deferred[ReloadResult]] = []

    def reload(self, source: str) -> Deferred[ReloadResult]:
        d: Deferred[ReloadResult] = Deferred()
        self.reloads.append((source, d))
        return d

    def check(self) -> Deferred[ReloadResult]:
        d: Deferred[ReloadResult] = Deferred()
        self.checks.append(d)
        return d


class AdminTestsMixin:
    """
    A factory over a real runtime of L{CONFIG}, a fake reloader and a clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.holder = RuntimeHolder(runtimeFor(CONFIG, self.clock))
        self.reloader = FakeReloader(self.holder)
        self.factory = AdminFactory(self.reloader, self.clock, startTime=900.0)

    def connect(self) -> tuple[AdminProtocol, StringTransport]:
        """
        A new connection to the factory.
        """
        proto = self.factory.buildProtocol(UNIXAddress(None))
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def ask(self, data: bytes) -> tuple[Answer, StringTransport]:
        """
        Send C{data} on a new connection and return the one JSON answer
        line, checking that the server is closing.
        """
        proto, transport = self.connect()
        proto.dataReceived(data)
        return answerOf(transport), transport

    def command(self, line: str) -> Answer:
        """
        The answer to the command C{line}.
        """
        return self.ask(line.encode("utf-8") + b"\n")[0]


def answerOf(transport: StringTransport) -> Answer:
    """
    The one JSON line written to C{transport}, which must be closing.
    """
    value = transport.value()
    assert transport.disconnecting, f"not closing after {value!r}"
    assert value.endswith(b"\n") and value.count(b"\n") == 1, value
    answer = json.loads(value)
    assert isinstance(answer, dict)
    return answer


INVALID = {"status": "error", "message": "invalid input"}


class AdminProtocolTests(AdminTestsMixin, SynchronousTestCase):
    """
    Framing, limits and timeouts of L{AdminProtocol}.
    """

    def test_oneAnswerThenClose(self) -> None:
        """
        A command gets one JSON line back, and the server closes.
        """
        answer, transport = self.ask(b"status\n")
        self.assertEqual(answer["status"], "ok")
        self.assertTrue(transport.disconnecting)

    def test_crlf(self) -> None:
        """
        A line ending in CRLF is read as one ending in LF.
        """
        answer, _ = self.ask(b"status\r\n")
        self.assertEqual(answer["status"], "ok")

    def test_inPieces(self) -> None:
        """
        A line that arrives in pieces is answered once it is whole.
        """
        proto, transport = self.connect()
        proto.dataReceived(b"sta")
        proto.dataReceived(b"tu")
        self.assertEqual(transport.value(), b"")
        proto.dataReceived(b"s\n")
        self.assertEqual(answerOf(transport)["status"], "ok")

    def test_emptyLine(self) -> None:
        """
        An empty line is invalid input.
        """
        self.assertEqual(self.ask(b"\n")[0], INVALID)
        self.assertEqual(self.ask(b"\r\n")[0], INVALID)

    def test_blankLine(self) -> None:
        """
        A line of only spaces and tabs is invalid input.
        """
        self.assertEqual(self.ask(b" \t \n")[0], INVALID)

    def test_notUTF8(self) -> None:
        """
        A line that is not UTF-8 is invalid input.
        """
        self.assertEqual(self.ask(b"\xff\xfestatus\n")[0], INVALID)
        self.assertEqual(self.ask(b"stat\xc3us\n")[0], INVALID)

    def test_controlCharacters(self) -> None:
        """
        Control characters other than tab (C0, DEL, C1) are invalid input.
        """
        for line in [b"sta\x00tus\n", b"\x1b[Astatus\n", b"status\x7f\n"]:
            self.assertEqual(self.ask(line)[0], INVALID, line)
        self.assertEqual(self.ask("status\x85\n".encode())[0], INVALID)
        self.assertEqual(self.ask(b"status\r\r\n")[0], INVALID)

    def test_tabSeparates(self) -> None:
        """
        Tabs separate words as spaces do.
        """
        answer = self.command("route\tapp.example \t /x")
        self.assertEqual((answer["site"], answer["path"]), ("app", "/x"))

    def test_lineTooLong(self) -> None:
        """
        A line over 4096 bytes is invalid input, and the server closes.
        """
        self.assertEqual(self.ask(b"help " + b"x" * 4092 + b"\n")[0], INVALID)

    def test_tooLongWithoutNewline(self) -> None:
        """
        Over 4096 bytes without a newline are invalid input at once, without
        waiting for the rest.
        """
        self.assertEqual(self.ask(b"x" * 5000)[0], INVALID)

    def test_lineAtLimit(self) -> None:
        """
        A line of exactly 4096 bytes is read as a command.
        """
        answer, _ = self.ask(b"help" + b" " * 4092 + b"\n")
        self.assertEqual(answer["status"], "ok")

    def test_secondLineIgnored(self) -> None:
        """
        Only the first line is answered; later lines in the same data are
        ignored.
        """
        answer, _ = self.ask(b"status\nreload\n")
        self.assertEqual(answer["status"], "ok")
        self.assertEqual(self.reloader.reloads, [])

    def test_lineAfterPendingCommandIgnored(self) -> None:
        """
        A second line in the same data as a command whose answer is pending
        is ignored.
        """
        proto, transport = self.connect()
        proto.dataReceived(b"reload\nstatus\n")
        self.assertEqual(transport.value(), b"")
        [(_, d)] = self.reloader.reloads
        d.callback(RELOADED)
        self.assertEqual(answerOf(transport), RELOADED_JSON)

    def test_laterDataIgnored(self) -> None:
        """
        Data after the first line, while its answer is pending, is ignored,
        however long.
        """
        proto, transport = self.connect()
        proto.dataReceived(b"reload\n")
        proto.dataReceived(b"status\n" + b"x" * 10000 + b"\n")
        proto.dataReceived(b"stat")
        self.assertEqual(proto.clearLineBuffer(), b"")
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)
        [(_, d)] = self.reloader.reloads
        d.callback(RELOADED)
        self.assertEqual(answerOf(transport), RELOADED_JSON)

    def test_idleTimeout(self) -> None:
        """
        A client that sends nothing is disconnected after 10 seconds, without
        an answer.
        """
        proto, transport = self.connect()
        self.clock.advance(IDLE_TIMEOUT - 0.1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        proto.dataReceived(b"status\n")
        self.assertEqual(transport.value(), b"")

    def test_tricklingDoesNotExtend(self) -> None:
        """
        Bytes without a newline do not restart the 10 seconds.
        """
        proto, transport = self.connect()
        for _ in range(4):
            self.clock.advance(2)
            proto.dataReceived(b"s")
        self.clock.advance(2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_noTimerAfterAnswer(self) -> None:
        """
        An answered command leaves no timer behind.
        """
        self.ask(b"status\n")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_noTimerWhileAnswerPending(self) -> None:
        """
        The 10 seconds are for the command line only: a pending reload is
        not cut off.
        """
        proto, transport = self.connect()
        proto.dataReceived(b"reload\n")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(60)
        self.assertFalse(transport.disconnecting)

    def test_noTimerAfterDisconnect(self) -> None:
        """
        A client that leaves before sending a line leaves no timer behind.
        """
        proto, _ = self.connect()
        proto.connectionLost(Failure(ConnectionResetError()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_pendingReloadAnswered(self) -> None:
        """
        C{reload} is answered with the reloader's answer when it fires.
        """
        proto, transport = self.connect()
        proto.dataReceived(b"reload\n")
        [(source, d)] = self.reloader.reloads
        self.assertEqual(source, "admin")
        self.assertEqual(transport.value(), b"")
        d.callback(RELOADED)
        self.assertEqual(answerOf(transport), RELOADED_JSON)

    def test_clientGoneBeforeAnswer(self) -> None:
        """
        A client that leaves while its reload runs gets nothing, and nothing
        fails when the reload finishes.
        """
        proto, transport = self.connect()
        proto.dataReceived(b"reload\n")
        proto.connectionLost(Failure(ConnectionResetError()))
        [(_, d)] = self.reloader.reloads
        d.callback(RELOADED)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_halfCloseAfterCommand(self) -> None:
        """
        A client that half-closes after its command (as C{socat} does) still
        gets the answer of a pending reload.
        """
        proto, transport = self.connect()
        proto.dataReceived(b"reload\n")
        proto.readConnectionLost()
        self.assertFalse(transport.disconnecting)
        [(_, d)] = self.reloader.reloads
        d.callback(RELOADED)
        self.assertEqual(answerOf(transport), RELOADED_JSON)

    def test_halfCloseEndsLastLine(self) -> None:
        """
        A half-close ends a last line sent without a newline.
        """
        proto, transport = self.connect()
        proto.dataReceived(b"status")
        proto.readConnectionLost()
        self.assertEqual(answerOf(transport)["status"], "ok")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_halfCloseWithNothing(self) -> None:
        """
        A client that half-closes without sending anything is closed at once,
        without an answer.
        """
        proto, transport = self.connect()
        proto.readConnectionLost()
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_commandRaises(self) -> None:
        """
        A command that raises answers an internal error, and the failure is
        logged.
        """

        def broken(args: list[str]) -> Answer:
            return {"sites": 1 // 0}

        self.factory.commands["status"] = broken
        answer = self.command("status")
        self.assertEqual((answer["status"], answer["code"]), ("error", "internal"))
        self.assertIn("ZeroDivisionError", str(answer["message"]))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_deferredFails(self) -> None:
        """
        A command whose Deferred fails answers an internal error, and the
        failure is logged.
        """
        proto, transport = self.connect()
        proto.dataReceived(b"check\n")
        self.reloader.checks[0].errback(RuntimeError("boom"))
        answer = answerOf(transport)
        self.assertEqual((answer["status"], answer["code"]), ("error", "internal"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_unencodableAnswer(self) -> None:
        """
        An answer that is not strict JSON (NaN) is an internal error, and is
        logged.
        """
        self.factory.commands["nan"] = lambda args: {"status": "ok", "x": float("nan")}
        answer = self.command("nan")
        self.assertEqual((answer["status"], answer["code"]), ("error", "internal"))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_thousandClients(self) -> None:
        """
        A thousand connections at once, with reloads pending, each get their
        own answer, and no timer is left.
        """
        connections = [self.connect() for _ in range(1000)]
        for i, (proto, _) in enumerate(connections):
            proto.dataReceived(b"reload\n" if i % 2 else b"status\n")
        self.assertEqual(len(self.reloader.reloads), 500)
        for n, (_, d) in enumerate(self.reloader.reloads):
            d.callback(attrs.evolve(RELOADED, generation=n))
        reloads = 0
        for i, (_, transport) in enumerate(connections):
            answer = answerOf(transport)
            if i % 2:
                self.assertEqual(answer["generation"], reloads)
                reloads += 1
            else:
                self.assertEqual(answer["uptime_secs"], 100)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class CommandTests(AdminTestsMixin, SynchronousTestCase):
    """
    The commands of L{AdminFactory}.
    """

    def test_unknown(self) -> None:
        """
        An unknown command is an error naming it; commands are
        case-sensitive.
        """
        self.assertEqual(
            self.command("restart now"),
            {"status": "error", "message": "unknown command: restart"},
        )
        self.assertEqual(self.command("STATUS")["message"], "unknown command: STATUS")

    def test_usage(self) -> None:
        """
        Wrong arguments answer the command's usage, and run nothing.
        """
        for line, usage in [
            ("status now", "usage: status"),
            ("reload now", "usage: reload"),
            ("check it", "usage: check"),
            ("sites all", "usage: sites"),
            ("help me", "usage: help"),
            ("route", "usage: route HOST [PATH] [METHOD] [CLIENT_IP]"),
            (
                "route a / GET 10.0.0.1 more",
                "usage: route HOST [PATH] [METHOD] [CLIENT_IP]",
            ),
        ]:
            self.assertEqual(
                self.command(line), {"status": "error", "message": usage}, line
            )
        self.assertEqual((self.reloader.reloads, self.reloader.checks), ([], []))

    def test_status(self) -> None:
        """
        C{status} answers uptime, sites, generation and the config's sha256.
        """
        self.assertEqual(
            self.command("status"),
            {
                "status": "ok",
                "uptime_secs": 100,
                "pid": os.getpid(),
                "sites": 2,
                "generation": 1,
                "config_sha256": SHA,
                "config_path": "/etc/revproxy/revproxy.toml",
            },
        )

    def test_statusFollowsReload(self) -> None:
        """
        C{status} reads the runtime current when it is asked.
        """
        self.holder.current = buildRuntime(
            parseConfig(NO_DEFAULT), self.clock, self.holder.current
        )
        self.clock.advance(0.9)
        answer = self.command("status")
        self.assertEqual(
            (answer["generation"], answer["sites"], answer["uptime_secs"]), (2, 1, 100)
        )

    def test_startTimeDefaultsToNow(self) -> None:
        """
        Without a start time, uptime counts from the factory's creation.
        """
        self.factory = AdminFactory(self.reloader, self.clock)
        self.clock.advance(42)
        self.assertEqual(self.command("status")["uptime_secs"], 42)

    def test_check(self) -> None:
        """
        C{check} is answered with the reloader's dry run.
        """
        proto, transport = self.connect()
        proto.dataReceived(b"check\n")
        self.assertEqual(self.reloader.reloads, [])
        self.reloader.checks[0].callback(
            attrs.evolve(RELOADED, wouldBeGeneration=2, generation=1)
        )
        self.assertEqual(
            answerOf(transport),
            dict(RELOADED_JSON, would_be_generation=2, generation=1),
        )

    def test_reloadError(self) -> None:
        """
        A failed reload's answer is passed on as it is.
        """
        proto, transport = self.connect()
        proto.dataReceived(b"reload\n")
        self.reloader.reloads[0][1].callback(
            Refused("config_invalid", "bad", ("sites[0].hosts: empty",))
        )
        self.assertEqual(
            answerOf(transport),
            {
                "status": "error",
                "code": "config_invalid",
                "message": "bad",
                "errors": ["sites[0].hosts: empty"],
            },
        )

    def test_reloadPartiallyApplied(self) -> None:
        """
        A reload whose followers failed answers C{"partially applied"},
        naming them, beside the usual fields.
        """
        proto, transport = self.connect()
        proto.dataReceived(b"reload\n")
        self.reloader.reloads[0][1].callback(
            attrs.evolve(RELOADED, failed=("tls", "upstream health checks"))
        )
        self.assertEqual(
            answerOf(transport),
            dict(
                RELOADED_JSON,
                status="partially applied",
                code="followers_failed",
                failed=["tls", "upstream health checks"],
                message="the new config serves, but these parts could not "
                "follow it: tls, upstream health checks",
            ),
        )

    def test_internalErrorHasNoErrors(self) -> None:
        """
        A reload refused by a bug answers its code and message, without an
        C{errors} list.
        """
        proto, transport = self.connect()
        proto.dataReceived(b"reload\n")
        self.reloader.reloads[0][1].callback(Refused("internal", "internal error: x"))
        self.assertEqual(
            answerOf(transport),
            {"status": "error", "code": "internal", "message": "internal error: x"},
        )

    def test_sites(self) -> None:
        """
        C{sites} lists each site's hosts and upstreams, and which upstreams
        are in back-off.
        """
        route = self.holder.current.table.sites[0]
        route.selector.markDown(route.config.upstreams[1])
        self.assertEqual(
            self.command("sites"),
            {
                "status": "ok",
                "generation": 1,
                "sites": [
                    {
                        "name": "app",
                        "hosts": ["app.example", "*.app.example"],
                        "upstreams": [
                            {"url": "http://10.1.0.1:8000", "down": False},
                            {"url": "http://10.1.0.2:8000", "down": True},
                            {"url": "http://10.1.0.3:8000", "down": False},
                        ],
                        "default": False,
                    },
                    {
                        "name": "fallback",
                        "hosts": ["fallback.example"],
                        "upstreams": [{"url": "http://127.0.0.1:9000", "down": False}],
                        "default": True,
                    },
                ],
            },
        )

    def test_help(self) -> None:
        """
        C{help} describes every command of the table in one line.
        """
        answer = self.command("help")
        self.assertEqual(answer["status"], "ok")
        commands = cast(dict[str, str], answer["commands"])
        self.assertEqual(sorted(commands), sorted(self.factory.commands))
        for name, line in commands.items():
            self.assertTrue(line and "\n" not in line, name)

    def test_helpListsCerts(self) -> None:
        """
        C{help} lists C{certs} with what it answers.
        """
        commands = cast(dict[str, str], self.command("help")["commands"])
        self.assertEqual(
            commands["certs"],
            "each certificate served: its sites, names, source, file, issuer and "
            "expiry; for ACME also the next renewal and why, and the last error",
        )
        self.assertEqual(
            commands["renew"],
            "renew SITE: order a new ACME certificate for SITE now; answers when "
            "the order ends",
        )

    def test_certsWithoutTLS(self) -> None:
        """
        Without a site served from certificate files, C{certs} answers an
        empty list.
        """
        self.assertEqual(
            self.command("certs"),
            {"status": "ok", "generation": 1, "certificates": []},
        )

    def test_certsUsage(self) -> None:
        """
        C{certs} takes no arguments.
        """
        for line in ("certs extra", "certs a b"):
            self.assertEqual(
                self.command(line), {"status": "error", "message": "usage: certs"}
            )


class RouteTests(AdminTestsMixin, SynchronousTestCase):
    """
    The C{route} command.
    """

    def test_exact(self) -> None:
        """
        A host a site names gets that site, its next upstream, limits and
        timeouts; the path defaults to C{/}.
        """
        self.assertEqual(
            self.command("route APP.example:8443"),
            {
                "status": "ok",
                "generation": 1,
                "host": "app.example",
                "path": "/",
                "peer": None,
                "client_ip": None,
                "peer_trusted": None,
                "method": "GET",
                "rule": {"kind": "site", "why": "the site has no routes"},
                "rewrites": [],
                "action": "proxy",
                "access": None,
                "site": "app",
                "default_site": False,
                "certificate": None,
                "upstream": "http://10.1.0.1:8000",
                "upstream_down": False,
                "tls": "none",
                "strict_sni_host": False,
                "timeouts": {"connect_timeout_secs": 2, "response_timeout_secs": 30},
                "limits": {
                    "max_body_bytes": 1000,
                    "rate_limit": {
                        "requests_per_second": 5,
                        "burst": 10,
                        "dry_run": False,
                    },
                },
            },
        )

    def test_wildcard(self) -> None:
        """
        A host matched by a site's wildcard gets that site, not as the
        default.
        """
        answer = self.command("route a.app.example /x")
        self.assertEqual(
            (answer["site"], answer["default_site"], answer["path"]),
            ("app", False, "/x"),
        )

    def test_defaultSite(self) -> None:
        """
        A host no site names goes to the default site, and says so.
        """
        answer = self.command("route nobody.example")
        self.assertEqual((answer["site"], answer["default_site"]), ("fallback", True))
        self.assertEqual(answer["upstream"], "http://127.0.0.1:9000")
        self.assertEqual(
            answer["limits"], {"max_body_bytes": 10485760, "rate_limit": None}
        )

    def test_defaultSiteByName(self) -> None:
        """
        A host the default site names itself is not matched only as default.
        """
        answer = self.command("route fallback.example")
        self.assertEqual((answer["site"], answer["default_site"]), ("fallback", False))

    def test_noSite(self) -> None:
        """
        Without a default site, a host no site names would be answered 421.
        """
        self.holder.current = runtimeFor(NO_DEFAULT, self.clock)
        answer = self.command("route nobody.example")
        self.assertEqual(
            answer,
            {
                "status": "ok",
                "generation": 1,
                "host": "nobody.example",
                "path": "/",
                "peer": None,
                "client_ip": None,
                "peer_trusted": None,
                "site": None,
                "default_site": False,
                "upstream": None,
                "answer": 421,
            },
        )

    def test_invalidHost(self) -> None:
        """
        A host that is not a valid C{Host} is an error.
        """
        for host in ["a..b", "a.example:99999", "[::1", "-"]:
            self.assertEqual(
                self.command(f"route {host}"),
                {"status": "error", "message": f"invalid host: {host}"},
            )

    def test_idn(self) -> None:
        """
        An internationalized host is normalized to A-labels.
        """
        answer = self.command("route bücher.app.example")
        self.assertEqual(
            (answer["host"], answer["site"]), ("xn--bcher-kva.app.example", "app")
        )

    def test_invalidPath(self) -> None:
        """
        A path that does not start with C{/} is an error.
        """
        answer = self.command("route app.example x 10.0.0.1")
        self.assertEqual(answer["status"], "error")
        self.assertIn("invalid path: x", str(answer["message"]))

    def test_untrustedClient(self) -> None:
        """
        From a peer not in C{trusted_proxies}, the client is the peer, and
        its X-Forwarded-For is not believed.
        """
        answer = self.command("route app.example / 198.51.100.1,203.0.113.9")
        self.assertEqual(
            (answer["peer"], answer["client_ip"], answer["peer_trusted"]),
            ("203.0.113.9", "203.0.113.9", False),
        )

    def test_trustedProxyChain(self) -> None:
        """
        From a trusted peer, the client is the right-most untrusted address
        of X-Forwarded-For.
        """
        answer = self.command("route app.example /a 198.51.100.1,10.9.9.9,10.0.0.7")
        self.assertEqual(
            (answer["peer"], answer["client_ip"], answer["peer_trusted"]),
            ("10.0.0.7", "198.51.100.1", True),
        )

    def test_clientWithoutPath(self) -> None:
        """
        A second argument that is an address, not a path, is the client.
        """
        answer = self.command("route app.example 10.0.0.7")
        self.assertEqual(
            (answer["path"], answer["client_ip"], answer["peer_trusted"]),
            ("/", "10.0.0.7", True),
        )

    def test_invalidClient(self) -> None:
        """
        A client that is not an IP address is an error.
        """
        self.assertEqual(
            self.command("route app.example / 10.0.0.300"),
            {"status": "error", "message": "invalid client ip: 10.0.0.300"},
        )

    def test_peekDoesNotAdvance(self) -> None:
        """
        C{route} names the upstream the next request gets, and asking does
        not change it.
        """
        selector = self.holder.current.table.sites[0].selector
        self.assertEqual(
            self.command("route app.example")["upstream"], "http://10.1.0.1:8000"
        )
        self.assertEqual(
            self.command("route app.example")["upstream"], "http://10.1.0.1:8000"
        )
        picked = selector.pick()
        assert isinstance(picked, Upstream)
        self.assertEqual(picked.url, "http://10.1.0.1:8000")
        self.assertEqual(
            self.command("route app.example")["upstream"], "http://10.1.0.2:8000"
        )

    def test_downUpstreamSkipped(self) -> None:
        """
        An upstream in back-off is skipped, as the next request would skip
        it.
        """
        route = self.holder.current.table.sites[0]
        route.selector.markDown(route.config.upstreams[0])
        answer = self.command("route app.example")
        self.assertEqual(
            (answer["upstream"], answer["upstream_down"]),
            ("http://10.1.0.2:8000", False),
        )


# Sites "app" and "api" share shared.pem; "own", the default site, has its
# own certificate, which expires first; "plain" has no TLS.
TLS_CONFIG = """\
[server]
listen_http = ["tcp:8080:interface=127.0.0.1"]
listen_https = ["tcp:8443:interface=127.0.0.1"]
admin_socket_path = ""
ops_listen = ""

[[sites]]
name = "app"
hosts = ["app.example", "*.app.example"]
upstreams = ["http://10.1.0.1:8000"]
tls = "files"
cert_file = "shared.pem"
key_file = "shared.key"

[[sites]]
name = "plain"
hosts = ["plain.example"]
upstreams = ["http://10.1.0.3:8000"]

[[sites]]
name = "api"
hosts = ["api.example"]
upstreams = ["http://10.1.0.2:8000"]
tls = "files"
cert_file = "shared.pem"
key_file = "shared.key"

[[sites]]
name = "own"
hosts = ["own.example"]
upstreams = ["http://127.0.0.1:9000"]
tls = "files"
cert_file = "own.pem"
key_file = "own.key"
default = true
"""

#: When the runtime of L{TLS_CONFIG} is built.
NOW = datetime(2030, 6, 1, tzinfo=UTC)

_CA = trustme.CA()
_ISSUER = x509.load_pem_x509_certificate(_CA.cert_pem.bytes()).subject.rfc4514_string()

SHARED_NAMES = ["app.example", "*.app.example", "api.example"]


class _CertificateTestCase(AdminTestsMixin, SynchronousTestCase):
    """
    A factory over a runtime of L{TLS_CONFIG}, read from files in a
    temporary directory at L{NOW}, then three hours later.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.path = self.write("revproxy.toml", TLS_CONFIG.encode())
        self.shared = self.leaf("shared", 60, *SHARED_NAMES)
        self.own = self.leaf("own", 10, "own.example")
        self.clock = Clock()
        self.clock.advance(NOW.timestamp())
        config = loadConfig(self.path)
        self.holder = RuntimeHolder(
            buildRuntime(
                config, self.clock, tls=loadTLSFiles(config, self.clock.seconds())
            )
        )
        self.reloader = FakeReloader(self.holder)
        self.factory = AdminFactory(self.reloader, self.clock)
        self.clock.advance(3 * 3600)

    def write(self, name: str, data: bytes) -> str:
        """
        Write a file into the config's directory; return its path.
        """
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def leaf(self, prefix: str, days: float, *names: str) -> str:
        """
        Issue a certificate for C{names} that expires C{days} after L{NOW};
        write it to C{PREFIX.pem} and its key to C{PREFIX.key}, replacing
        them, and return the certificate's path.
        """
        leaf = _CA.issue_cert(
            *names,
            not_before=NOW - timedelta(days=1),
            not_after=NOW + timedelta(days=days),
        )
        self.write(f"{prefix}.key", leaf.private_key_pem.bytes())
        chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
        return self.write(f"{prefix}.pem", chain)

    def certificates(self) -> list[dict[str, Any]]:
        """
        The C{certificates} of the answer to C{certs}.
        """
        answer = self.command("certs")
        self.assertEqual(answer["status"], "ok")
        return cast(list[dict[str, Any]], answer["certificates"])


class CertsTests(_CertificateTestCase):
    """
    The C{certs} command.
    """

    def test_certs(self) -> None:
        """
        C{certs} lists each certificate once, soonest expiry first, with
        the sites it serves (two sites sharing one file are one
        certificate), its names, source, file, issuer and expiry.
        """
        self.assertEqual(
            self.command("certs"),
            {
                "status": "ok",
                "generation": 1,
                "certificates": [
                    {
                        "sites": ["own"],
                        "names": ["own.example"],
                        "source": "files",
                        "path": self.own,
                        "issuer": _ISSUER,
                        "not_after": "2030-06-11T00:00:00Z",
                        "expires_in_days": 9.9,
                    },
                    {
                        "sites": ["app", "api"],
                        "names": SHARED_NAMES,
                        "source": "files",
                        "path": self.shared,
                        "issuer": _ISSUER,
                        "not_after": "2030-07-31T00:00:00Z",
                        "expires_in_days": 59.9,
                    },
                ],
            },
        )

    def test_sortedByExpiry(self) -> None:
        """
        The certificate that expires first comes first, though its site
        comes last in the file.
        """
        certificates = self.certificates()
        self.assertEqual(certificates[0]["path"], self.own)
        self.assertEqual(
            [c["not_after"] for c in certificates],
            sorted(c["not_after"] for c in certificates),
        )
        self.assertEqual(certificates[-1]["path"], self.shared)

    def test_expiresInDaysFollowsClock(self) -> None:
        """
        C{expires_in_days} is counted from the clock's time when asked,
        rounded to a tenth of a day.
        """
        self.clock.advance(5 * 86400)
        self.assertEqual(
            {c["path"]: c["expires_in_days"] for c in self.certificates()},
            {self.own: 4.9, self.shared: 54.9},
        )
        self.clock.advance(4 * 86400 + 20 * 3600)
        self.assertEqual(
            {c["path"]: c["expires_in_days"] for c in self.certificates()},
            {self.own: 0.0, self.shared: 50.0},
        )

    def test_followsReload(self) -> None:
        """
        After a reload that reads a renewed certificate, C{certs} answers the
        new generation and the new expiry.
        """
        reloader = Reloader(self.path, self.holder, self.clock)
        self.factory = AdminFactory(reloader, self.clock)
        self.leaf("own", 30, "own.example")
        self.assertEqual(self.command("reload")["status"], "ok")
        answer = self.command("certs")
        self.assertEqual(answer["generation"], 2)
        certificates = cast(list[dict[str, Any]], answer["certificates"])
        self.assertEqual(
            [(c["path"], c["not_after"]) for c in certificates if "own" in c["sites"]],
            [(self.own, "2030-07-01T00:00:00Z")],
        )


#: An issued acme site, described at 2030-06-01T03:00:00Z.
_ACME_SITE = AcmeSiteDescription(
    site="acme",
    names=("a.example", "b.example"),
    source="acme",
    issuer="CN=Pebble Intermediate CA",
    notAfter=datetime(2030, 6, 21, tzinfo=UTC).timestamp(),
    at=datetime(2030, 6, 1, 3, tzinfo=UTC).timestamp(),
    ordering=False,
    lastError=None,
    nextRenewal=datetime(2030, 6, 15, 12, 30, 45, tzinfo=UTC).timestamp() + 0.25,
    nextRenewalReason="1/3 of the validity left",
)

#: What L{_ACME_SITE} is in an answer, as one JSON text.
_ACME_SITE_JSON = (
    '{"sites": ["acme"], "names": ["a.example", "b.example"], "source": "acme", '
    '"issuer": "CN=Pebble Intermediate CA", "not_after": "2030-06-21T00:00:00Z", '
    '"expires_in_days": 19.9, "ordering": false, "last_error": null, '
    '"next_renewal": "2030-06-15T12:30:45Z", '
    '"next_renewal_reason": "1/3 of the validity left"}'
)


class _FakeCertificateManager:
    """
    An L{revproxy.admin.SupportsRenewal} with one acme site.
    """

    def __init__(self) -> None:
        self.renewing: list[tuple[str, Deferred[RenewalResult]]] = []

    def describeAll(self) -> list[AcmeSiteDescription]:
        return [_ACME_SITE]

    def renew(self, site: str) -> Deferred[RenewalResult]:
        d: Deferred[RenewalResult] = Deferred()
        self.renewing.append((site, d))
        return d


class RenderingTests(SynchronousTestCase):
    """
    The answers the admin socket makes of the domain's values: the same
    JSON, key for key and in the same order, as the domain modules made
    before they returned values.
    """

    def test_acmeSite(self) -> None:
        """
        An acme site's description: its times in ISO 8601 UTC to the
        second, its expiry in days from when it was described, to a tenth.
        """
        self.assertEqual(json.dumps(renderAcmeSite(_ACME_SITE)), _ACME_SITE_JSON)

    def test_acmeSiteOrdering(self) -> None:
        """
        While an order is in progress there is no next renewal; the last
        error is shown.
        """
        site = attrs.evolve(
            _ACME_SITE,
            ordering=True,
            lastError="rateLimited: too many",
            nextRenewal=None,
            nextRenewalReason="ordering now",
        )
        answer = renderAcmeSite(site)
        self.assertEqual(
            (
                answer["ordering"],
                answer["last_error"],
                answer["next_renewal"],
                answer["next_renewal_reason"],
            ),
            (True, "rateLimited: too many", None, "ordering now"),
        )

    def test_renewal(self) -> None:
        """
        C{renew}'s answer: C{ok} with the site, an error with its message
        and the site, or an error alone when there is no such site.
        """
        self.assertEqual(
            json.dumps(renderRenewal(RenewalResult(None, _ACME_SITE))),
            '{"status": "ok", "certificate": ' + _ACME_SITE_JSON + "}",
        )
        self.assertEqual(
            json.dumps(renderRenewal(RenewalResult("badCSR: no", _ACME_SITE))),
            '{"status": "error", "message": "badCSR: no", "certificate": '
            + _ACME_SITE_JSON
            + "}",
        )
        self.assertEqual(
            json.dumps(renderRenewal(RenewalResult("no acme site named x", None))),
            '{"status": "error", "message": "no acme site named x"}',
        )

    def test_upstreamHealth(self) -> None:
        """
        An upstream's health, without its URL (the answer has it already),
        the last check in ISO 8601 UTC to the second.
        """
        health = UpstreamHealthDescription(
            url="http://10.1.0.1:8000",
            healthy=False,
            fails=3,
            passes=0,
            lastError="HTTP 503",
            lastCheck=1700000000.75,
            lastStatus=503,
        )
        self.assertEqual(
            json.dumps(renderUpstreamHealth(health)),
            '{"healthy": false, "fails": 3, "passes": 0, "last_error": "HTTP 503", '
            '"last_check": "2023-11-14T22:13:20Z", "last_status": 503}',
        )
        never = attrs.evolve(health, lastCheck=None, lastError=None, lastStatus=None)
        self.assertEqual(
            json.dumps(renderUpstreamHealth(never)),
            '{"healthy": false, "fails": 3, "passes": 0, "last_error": null, '
            '"last_check": null, "last_status": null}',
        )

    def test_healthz(self) -> None:
        """
        The body of C{/healthz}: C{ok} while serving, C{draining} once
        shutting down, one JSON line.
        """
        self.assertEqual(healthzBody(draining=False), b'{"status": "ok"}\n')
        self.assertEqual(healthzBody(draining=True), b'{"status": "draining"}\n')


class AcmeCommandTests(_CertificateTestCase):
    """
    C{certs} and C{renew} with ACME certificates.
    """

    def setUp(self) -> None:
        super().setUp()
        self.manager = _FakeCertificateManager()
        self.factory = AdminFactory(
            self.reloader, self.clock, certificates=self.manager
        )

    def test_certs(self) -> None:
        """
        C{certs} lists the acme sites with the certificates from files,
        soonest expiry first.
        """
        certificates = self.certificates()
        self.assertEqual(
            [c["not_after"] for c in certificates],
            ["2030-06-11T00:00:00Z", "2030-06-21T00:00:00Z", "2030-07-31T00:00:00Z"],
        )
        self.assertEqual(json.dumps(certificates[1]), _ACME_SITE_JSON)

    def test_renew(self) -> None:
        """
        C{renew SITE} answers when the order ends, with how it ended.
        """
        proto, transport = self.connect()
        proto.dataReceived(b"renew acme\n")
        [(site, d)] = self.manager.renewing
        self.assertEqual((site, transport.value()), ("acme", b""))
        d.callback(RenewalResult(None, _ACME_SITE))
        self.assertEqual(
            transport.value(),
            b'{"status": "ok", "certificate": ' + _ACME_SITE_JSON.encode() + b"}\n",
        )


class RouteCertificateTests(_CertificateTestCase):
    """
    The C{certificate} of the C{route} command: the one a TLS client
    sending C{HOST} as its server name would get.
    """

    ownCertificate = {
        "sites": ["own"],
        "source": "files",
        "names": ["own.example"],
        "not_after": "2030-06-11T00:00:00Z",
    }

    def test_ownCertificate(self) -> None:
        """
        A host of a site with its own certificate gets that certificate.
        """
        answer = self.command("route own.example")
        self.assertEqual(
            (answer["site"], answer["tls"], answer["certificate"]),
            ("own", "files", self.ownCertificate),
        )

    def test_strictSNIHost(self) -> None:
        """
        The answer says whether the site answers 421 to a request whose
        connection's SNI name belongs to another site: by default, a site
        with TLS does.
        """
        self.assertIs(self.command("route own.example")["strict_sni_host"], True)
        self.assertIs(self.command("route plain.example")["strict_sni_host"], False)

    def test_wildcardHost(self) -> None:
        """
        A host matched by a site's wildcard gets that site's certificate.
        """
        answer = self.command("route x.app.example")
        self.assertEqual(answer["site"], "app")
        certificate = cast(dict[str, Any], answer["certificate"])
        self.assertEqual(
            (certificate["names"], certificate["not_after"]),
            (SHARED_NAMES, "2030-07-31T00:00:00Z"),
        )
        self.assertIn("app", certificate["sites"])

    def test_unknownHostGetsDefault(self) -> None:
        """
        A host no site names gets the default site's certificate.
        """
        answer = self.command("route nobody.example")
        self.assertEqual(
            (answer["site"], answer["default_site"], answer["certificate"]),
            ("own", True, self.ownCertificate),
        )

    def test_plainSiteGetsDefault(self) -> None:
        """
        A host of a site without TLS has no certificate of its own: a TLS
        client naming it gets the default site's.
        """
        answer = self.command("route plain.example")
        self.assertEqual(
            (answer["site"], answer["tls"], answer["certificate"]),
            ("plain", "none", self.ownCertificate),
        )

    def test_noDefaultCertificate(self) -> None:
        """
        When the default site has no certificate, a host without one of its
        own gets none.
        """
        text = TLS_CONFIG.replace("default = true\n", "").replace(
            'name = "plain"', 'name = "plain"\ndefault = true'
        )
        config = parseConfig(text, baseDir=self.directory)
        self.holder.current = buildRuntime(
            config, self.clock, tls=loadTLSFiles(config, self.clock.seconds())
        )
        for host in ("plain.example", "nobody.example"):
            answer = self.command(f"route {host}")
            self.assertEqual(
                (answer["site"], answer["certificate"]), ("plain", None), host
            )
        self.assertEqual(
            self.command("route own.example")["certificate"], self.ownCertificate
        )


class PeekUpstreamTests(SynchronousTestCase):
    """
    L{peekUpstream} agrees with L{UpstreamSelector.pick}.
    """

    def test_agreesWithPick(self) -> None:
        """
        Whatever is down, the peeked upstream is the one C{pick} returns
        next.
        """
        clock = Clock()
        selector = UpstreamSelector(["a", "b", "c", "d"], clock, backoff=5)
        for step in range(40):
            for name in "abcd"[step % 3 :: 2]:
                selector.markDown(name)
            if step % 4 == 0:
                clock.advance(3)
            peeked = peekUpstream(selector)
            self.assertEqual(peeked, selector.pick(), step)

    def test_allDown(self) -> None:
        """
        When every upstream is in back-off, the one C{pick} falls back to is
        named.
        """
        clock = Clock()
        selector = UpstreamSelector(["a", "b"], clock)
        selector.pick()
        selector.markDown("b")
        selector.markDown("a")
        self.assertEqual(peekUpstream(selector), "b")
        self.assertEqual(selector.pick(), "b")

    def test_single(self) -> None:
        """
        A single upstream is named, down or not.
        """
        clock = Clock()
        selector = UpstreamSelector(["a"], clock)
        selector.markDown("a")
        self.assertEqual(peekUpstream(selector), "a")


class _RecordingPort:
    """
    A listening port that records that it was stopped.
    """

    def __init__(self) -> None:
        self.stopped: Deferred[None] = Deferred()
        self.stopCalls = 0

    def stopListening(self) -> Deferred[None]:
        self.stopCalls += 1
        return self.stopped


class _PortReactor(MemoryReactor):
    """
    A memory reactor whose UNIX ports are L{_RecordingPort}s.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[_RecordingPort] = []

    def listenUNIX(
        self,
        address: str,
        factory: Any,
        backlog: int = 50,
        mode: int = 0o666,
        wantPID: int = 0,
    ) -> Any:
        super().listenUNIX(address, factory, backlog, mode, wantPID)
        self.ports.append(_RecordingPort())
        return self.ports[-1]


class AdminSocketTests(SynchronousTestCase):
    """
    L{AdminSocket} with memory reactors and a temporary directory.
    """

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        clock = Clock()
        self.factory = AdminFactory(
            FakeReloader(RuntimeHolder(runtimeFor(CONFIG, clock))), clock
        )
        self.events = EventLoggingObserver()
        globalLogPublisher.addObserver(self.events)
        self.addCleanup(globalLogPublisher.removeObserver, self.events)

    def warnings(self) -> list[str]:
        """
        The text of the warnings logged so far.
        """
        return [formatEvent(e) for e in self.events if e["log_level"] == LogLevel.warn]

    def test_listens(self) -> None:
        """
        Starting listens on the path, mode 0660, with a lock file.
        """
        path = os.path.join(self.dir, "admin.sock")
        reactor = MemoryReactor()
        service = AdminSocket(path, self.factory, reactor)
        service.privilegedStartService()
        service.startService()
        self.assertEqual(reactor.unixServers, [(path, self.factory, 1024, 0o660, True)])
        self.assertEqual(self.warnings(), [])

    def test_startsOnce(self) -> None:
        """
        Starting twice listens once.
        """
        reactor = MemoryReactor()
        service = AdminSocket(os.path.join(self.dir, "a.sock"), self.factory, reactor)
        service.privilegedStartService()
        service.privilegedStartService()
        self.assertEqual(len(reactor.unixServers), 1)

    def test_createsDirectory(self) -> None:
        """
        A missing parent directory is created, mode 0750.
        """
        parent = os.path.join(self.dir, "run", "revproxy")
        reactor = MemoryReactor()
        AdminSocket(
            os.path.join(parent, "admin.sock"), self.factory, reactor
        ).privilegedStartService()
        self.assertTrue(os.path.isdir(parent))
        self.assertEqual(stat.S_IMODE(os.stat(parent).st_mode), 0o750)
        self.assertEqual(len(reactor.unixServers), 1)

    def test_directoryFails(self) -> None:
        """
        A parent directory that cannot be made is a warning naming it, and
        the service runs without the socket.
        """
        blocker = os.path.join(self.dir, "file")
        with open(blocker, "w"):
            pass
        reactor = MemoryReactor()
        service = AdminSocket(
            os.path.join(blocker, "admin.sock"), self.factory, reactor
        )
        service.privilegedStartService()
        service.startService()
        self.assertEqual(reactor.unixServers, [])
        [warning] = self.warnings()
        self.assertIn(blocker, warning)
        self.assertIn("without the admin socket", warning)
        self.assertIsNone(service.stopService())

    def test_ownedByLiveProcess(self) -> None:
        """
        When another live process holds the socket, a warning names the path
        and the reason, and start-up goes on.
        """
        path = os.path.join(self.dir, "admin.sock")
        error = CannotListenError(None, path.encode(), "Cannot acquire lock")
        service = AdminSocket(
            path, self.factory, cast(IReactorUNIX, RaisingMemoryReactor(error))
        )
        service.privilegedStartService()
        service.startService()
        [warning] = self.warnings()
        self.assertIn(path, warning)
        self.assertIn("another running process", warning)
        self.assertIsNone(service.stopService())

    def test_bindFails(self) -> None:
        """
        A bind error (a file that is not a stale socket) is a warning too.
        """
        path = os.path.join(self.dir, "admin.sock")
        inUse = OSError(errno.EADDRINUSE, "Address already in use")
        error = CannotListenError(None, path.encode(), inUse)
        service = AdminSocket(
            path, self.factory, cast(IReactorUNIX, RaisingMemoryReactor(error))
        )
        service.privilegedStartService()
        [warning] = self.warnings()
        self.assertIn(f"{path} already exists", warning)

    def test_stopStopsListening(self) -> None:
        """
        Stopping stops listening, and waits for it.
        """
        reactor = _PortReactor()
        service = AdminSocket(os.path.join(self.dir, "a.sock"), self.factory, reactor)
        service.privilegedStartService()
        service.startService()
        stopped = service.stopService()
        assert stopped is not None
        self.assertNoResult(stopped)
        reactor.ports[0].stopped.callback(None)
        self.successResultOf(stopped)
        self.assertEqual(reactor.ports[0].stopCalls, 1)

    def test_unsafeDirectory(self) -> None:
        """
        A socket directory that other users can write to without the sticky
        bit is a warning naming it and why; nothing listens.
        """
        shared = os.path.join(self.dir, "shared")
        os.mkdir(shared)
        os.chmod(shared, 0o777)
        path = os.path.join(shared, "admin.sock")
        reactor = MemoryReactor()
        service = AdminSocket(path, self.factory, reactor)
        service.privilegedStartService()
        service.startService()
        self.assertEqual(reactor.unixServers, [])
        [warning] = self.warnings()
        self.assertIn(f"Running without the admin socket {path}", warning)
        self.assertIn(
            f"{shared} is not a safe place for it: it is writable by other users",
            warning,
        )
        self.assertIsNone(service.stopService())

    def test_unsafeAncestorCreatesNothing(self) -> None:
        """
        A missing socket directory is not created under a directory that
        fails the check.
        """
        shared = os.path.join(self.dir, "shared")
        os.mkdir(shared)
        os.chmod(shared, 0o777)
        reactor = MemoryReactor()
        AdminSocket(
            os.path.join(shared, "run", "admin.sock"), self.factory, reactor
        ).privilegedStartService()
        self.assertFalse(os.path.exists(os.path.join(shared, "run")))
        self.assertEqual(reactor.unixServers, [])
        [warning] = self.warnings()
        self.assertIn(shared, warning)

    def test_stickyDirectory(self) -> None:
        """
        A directory anyone can write to but with the sticky bit (as
        C{/tmp}) is safe.
        """
        shared = os.path.join(self.dir, "sticky")
        os.mkdir(shared)
        os.chmod(shared, 0o1777)
        reactor = MemoryReactor()
        AdminSocket(
            os.path.join(shared, "admin.sock"), self.factory, reactor
        ).privilegedStartService()
        self.assertEqual(len(reactor.unixServers), 1)
        self.assertEqual(self.warnings(), [])

    def test_emptyPath(self) -> None:
        """
        An empty path is refused: no admin socket means no service.
        """
        self.assertRaises(ValueError, AdminSocket, "", self.factory, MemoryReactor())


def _directory(mode: int, uid: int = 0, gid: int = 0) -> os.stat_result:
    """
    The C{stat} of a directory with C{mode} (permission bits), owned by
    C{uid}:C{gid}.
    """
    return os.stat_result((stat.S_IFDIR | mode, 1, 1, 2, uid, gid, 4096, 0, 0, 0))


class SocketDirectoryRuleTests(SynchronousTestCase):
    """
    L{socketDirectoryProblem}: whether a directory is a safe place for the
    admin socket of a process running as a given user.
    """

    def test_safe(self) -> None:
        """
        Directories owned by root or by the process's user that nobody else
        can write to are safe, and so are those with the sticky bit.
        """
        for mode, uid in [
            (0o755, 0),  # /run
            (0o750, 1000),  # RuntimeDirectory=revproxy, RuntimeDirectoryMode=0750
            (0o755, 1000),  # RuntimeDirectory= with systemd's default mode
            (0o700, 1000),  # mkdtemp
            (0o1777, 0),  # /tmp
            (0o1770, 1000),
            (0o3777, 0),  # setgid and sticky
        ]:
            self.assertIsNone(
                socketDirectoryProblem(_directory(mode, uid, 1000), 1000),
                oct(mode),
            )

    def test_rootProcess(self) -> None:
        """
        A process running as root trusts only root's directories.
        """
        self.assertIsNone(socketDirectoryProblem(_directory(0o755, 0), 0))
        problem = socketDirectoryProblem(_directory(0o750, 1000, 1000), 0)
        self.assertEqual(
            problem, "it is owned by uid 1000, not by root or by uid 0 (this process)"
        )

    def test_otherOwner(self) -> None:
        """
        A directory owned by another user is unsafe whatever its mode: its
        owner can change the mode, and remove any entry even with the
        sticky bit.
        """
        for mode in (0o700, 0o1777):
            self.assertEqual(
                socketDirectoryProblem(_directory(mode, 1001, 1000), 1000),
                "it is owned by uid 1001, not by root or by uid 1000 (this process)",
            )

    def test_writableByOthers(self) -> None:
        """
        Write permission for others without the sticky bit is unsafe.
        """
        self.assertEqual(
            socketDirectoryProblem(_directory(0o777, 0), 1000),
            "it is writable by other users (mode 0777) and has no sticky bit",
        )
        self.assertEqual(
            socketDirectoryProblem(_directory(0o703, 1000), 1000),
            "it is writable by other users (mode 0703) and has no sticky bit",
        )

    def test_writableByGroup(self) -> None:
        """
        Write permission for the group without the sticky bit is unsafe,
        the process's own group included: its other members could replace
        the socket.
        """
        for gid in (1000, 0, 1234):
            self.assertEqual(
                socketDirectoryProblem(_directory(0o770, 1000, gid), 1000),
                f"it is writable by group {gid} (mode 0770) and has no sticky bit",
            )

    def test_notADirectory(self) -> None:
        """
        Something that is not a directory is not a place for the socket.
        """
        status = os.stat_result((stat.S_IFREG | 0o644, 1, 1, 1, 0, 0, 0, 0, 0, 0))
        self.assertEqual(socketDirectoryProblem(status, 0), "it is not a directory")


class UnsafeSocketDirectoryTests(SynchronousTestCase):
    """
    L{unsafeSocketDirectory} applies the rule to each directory from the
    socket's up to C{/}.
    """

    def setUp(self) -> None:
        self.dir = os.path.realpath(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.dir)
        self.uid = os.geteuid()

    def test_safe(self) -> None:
        """
        A private temporary directory (under C{/tmp}) is safe, and so is one
        that does not exist yet inside it.
        """
        self.assertIsNone(
            unsafeSocketDirectory(os.path.join(self.dir, "admin.sock"), self.uid)
        )
        self.assertIsNone(
            unsafeSocketDirectory(
                os.path.join(self.dir, "run", "revproxy", "admin.sock"), self.uid
            )
        )

    def test_unsafeAncestor(self) -> None:
        """
        A directory above the socket's that fails the rule is reported: its
        writers could rename the whole subtree away.
        """
        shared = os.path.join(self.dir, "shared")
        private = os.path.join(shared, "private")
        os.makedirs(private)
        os.chmod(shared, 0o777)
        self.assertEqual(
            unsafeSocketDirectory(os.path.join(private, "admin.sock"), self.uid),
            (shared, "it is writable by other users (mode 0777) and has no sticky bit"),
        )

    def test_nearestFirst(self) -> None:
        """
        The unsafe directory nearest to the socket is the one reported.
        """
        outer = os.path.join(self.dir, "outer")
        inner = os.path.join(outer, "inner")
        os.makedirs(inner)
        os.chmod(inner, 0o770)
        os.chmod(outer, 0o777)
        problem = unsafeSocketDirectory(os.path.join(inner, "a.sock"), self.uid)
        assert problem is not None
        self.assertEqual(problem[0], inner)

    def test_symlinkResolved(self) -> None:
        """
        The directories checked are those the path resolves to.
        """
        shared = os.path.join(self.dir, "shared")
        os.mkdir(shared)
        os.chmod(shared, 0o777)
        link = os.path.join(self.dir, "link")
        os.symlink(shared, link)
        self.assertEqual(
            unsafeSocketDirectory(os.path.join(link, "admin.sock"), self.uid),
            (shared, "it is writable by other users (mode 0777) and has no sticky bit"),
        )

    def test_relativePath(self) -> None:
        """
        A relative path's directory is the working directory.
        """
        os.chmod(self.dir, 0o777)
        self.addCleanup(os.chmod, self.dir, 0o700)
        cwd = os.getcwd()
        os.chdir(self.dir)
        self.addCleanup(os.chdir, cwd)
        problem = unsafeSocketDirectory("admin.sock", self.uid)
        assert problem is not None
        self.assertEqual(problem[0], self.dir)

    def test_abstractNamespace(self) -> None:
        """
        A socket in the abstract namespace has no directory to check.
        """
        self.assertIsNone(unsafeSocketDirectory("\0revproxy-admin", self.uid))


class _FakeMetrics:
    """
    Per-site statistics, as L{revproxy.metrics.Metrics.stats} gives them.
    """

    def stats(self, site: str | None = None) -> dict[str, Any]:
        if site != "app":
            raise KeyError(site)
        return {"in_flight": 2, "status": {"2xx": 5}}


class _FakeHealth:
    """
    Health states, as L{revproxy.upstreamhealth.HealthMonitor.describe} gives them.
    """

    def describe(self, site: str) -> list[UpstreamHealthDescription]:
        return [
            UpstreamHealthDescription(
                url="http://10.1.0.1:8000",
                healthy=False,
                fails=3,
                passes=0,
                lastError="HTTP 503",
                lastCheck=1700000000.5,
                lastStatus=503,
            ),
            UpstreamHealthDescription(
                url="http://10.1.0.2:8000",
                healthy=True,
                fails=0,
                passes=2,
                lastError=None,
                lastCheck=None,
                lastStatus=None,
            ),
        ]


class OperationsCommandTests(AdminTestsMixin, SynchronousTestCase):
    """
    C{ratelimit}, C{stats}, C{reopen-logs} and the health in C{sites}.
    """

    def setUp(self) -> None:
        super().setUp()
        from revproxy.ratelimit import RateLimiter

        self.limiter = RateLimiter(self.clock)
        self.reopened: list[bool] = []
        site = self.holder.current.config.sites[0]
        self.limit = site.rate_limit
        self.factory = AdminFactory(
            self.reloader,
            self.clock,
            operations=Operations(
                limiter=self.limiter,
                metrics=cast(Any, _FakeMetrics()),
                reopenLogs=lambda: self.reopened.append(True),
                poolSizes=lambda: [("http://10.1.0.2:8000", 1, 2)],
            ),
        )

    def test_ratelimitFull(self) -> None:
        """
        A client with no bucket has a full one.
        """
        answer = self.command("ratelimit app 192.0.2.1")
        self.assertEqual(
            answer,
            {
                "status": "ok",
                "site": "app",
                "client_ip": "192.0.2.1",
                "rate_limit": {
                    "requests_per_second": 5.0,
                    "burst": 10,
                    "dry_run": False,
                },
                "tokens": 10.0,
                "capacity": 10.0,
                "tracked": False,
                "wait_secs": 0.0,
                "full_in_secs": 0.0,
            },
        )

    def test_ratelimitEmptyThenReset(self) -> None:
        """
        An empty bucket shows how long until the next request is admitted;
        C{ratelimit reset} refills it.
        """
        for _ in range(10):
            self.assertTrue(self.limiter.allow("app", self.limit, "192.0.2.1").allowed)
        answer = self.command("ratelimit app 192.0.2.1")
        self.assertEqual(
            (answer["tokens"], answer["tracked"], answer["wait_secs"]),
            (0.0, True, 0.2),
        )
        self.assertEqual(answer["full_in_secs"], 2.0)
        answer = self.command("ratelimit reset app 192.0.2.1")
        self.assertEqual((answer["reset"], answer["tokens"]), (True, 10.0))
        self.assertTrue(self.limiter.allow("app", self.limit, "192.0.2.1").allowed)

    def test_ratelimitShared(self) -> None:
        """
        With the fleet's limiter and Redis up, the bucket shown (and reset)
        is the shared one; with Redis down, this process's.
        """
        asked: list[tuple[str, str, bool]] = []

        class Shared:
            redis = type("Up", (), {"up": True})()

            def bucket(
                self, site: str, limit: Any, ip: str, reset: bool = False
            ) -> Any:
                asked.append((site, ip, reset))
                return succeed((2.5, reset))

        self.factory.operations.shared = cast(Any, Shared())
        answer = self.command("ratelimit app 192.0.2.1")
        self.assertEqual(
            (answer["shared"], answer["tokens"], answer["tracked"]), (True, 2.5, True)
        )
        answer = self.command("ratelimit reset app 192.0.2.1")
        self.assertEqual(answer["reset"], True)
        self.assertEqual(
            asked, [("app", "192.0.2.1", False), ("app", "192.0.2.1", True)]
        )
        Shared.redis.up = False
        answer = self.command("ratelimit app 192.0.2.1")
        self.assertNotIn("shared", answer)
        self.assertEqual(answer["tokens"], 10.0)

    def test_ratelimitErrors(self) -> None:
        """
        An unknown site, a bad address and wrong arguments are errors; a
        site without a limit has no bucket.
        """
        self.assertEqual(
            self.command("ratelimit nope 192.0.2.1"),
            {"status": "error", "message": "unknown site: nope"},
        )
        self.assertEqual(
            self.command("ratelimit app 999.1.1.1"),
            {"status": "error", "message": "invalid client ip: 999.1.1.1"},
        )
        self.assertEqual(
            self.command("ratelimit app"),
            {"status": "error", "message": "usage: ratelimit [reset] SITE IP"},
        )
        answer = self.command("ratelimit fallback 192.0.2.1")
        self.assertEqual((answer["rate_limit"], answer["tokens"]), (None, None))

    def test_stats(self) -> None:
        """
        C{stats SITE} is the metrics' statistics, with each upstream's pool.
        """
        answer: Any = self.command("stats app")
        site = answer["sites"]["app"]
        self.assertEqual((site["in_flight"], site["status"]), (2, {"2xx": 5}))
        self.assertEqual(
            [u["pool"] for u in site["upstreams"]],
            [None, {"idle": 1, "active": 2}, None],
        )
        everything: Any = self.command("stats")
        self.assertEqual(sorted(everything["sites"]), ["app", "fallback"])
        self.assertEqual(
            self.command("stats nope"),
            {"status": "error", "message": "unknown site: nope"},
        )

    def test_reopenLogs(self) -> None:
        """
        C{reopen-logs} reopens the access log.
        """
        self.assertEqual(self.command("reopen-logs"), {"status": "ok"})
        self.assertEqual(self.reopened, [True])

    def test_sitesWithHealth(self) -> None:
        """
        For a site with health checks, C{sites} shows each upstream's
        health.
        """
        self.holder.current = buildRuntime(
            parseConfig(
                CONFIG.replace(
                    "max_body_bytes = 1000",
                    'max_body_bytes = 1000\nhealth_check = { path = "/h" }',
                )
            ),
            self.clock,
        )
        self.factory.operations.health = cast(Any, _FakeHealth())
        sites: Any = self.command("sites")
        upstreams = sites["sites"][0]["upstreams"]
        self.assertEqual(
            upstreams[0],
            {
                "url": "http://10.1.0.1:8000",
                "down": False,
                "health": {
                    "healthy": False,
                    "fails": 3,
                    "passes": 0,
                    "last_error": "HTTP 503",
                    "last_check": "2023-11-14T22:13:20Z",
                    "last_status": 503,
                },
            },
        )
        self.assertNotIn("health", upstreams[2])


class _OpenTunnel:
    """
    What the tunnel registry reads of an open tunnel.
    """

    def __init__(self, site: str, generation: int, openedAt: float) -> None:
        self.site = site
        self.generation = generation
        self.openedAt = openedAt
        self.bytesUp = 10
        self.bytesDown = 20
        self.drainTimer = None


class TunnelsCommandTests(AdminTestsMixin, SynchronousTestCase):
    """
    C{tunnels [SITE]}: the open tunnels per site.
    """

    def setUp(self) -> None:
        super().setUp()
        from revproxy.proxy.tunnel import TunnelRegistry

        self.registry = TunnelRegistry(self.clock)
        self.factory = AdminFactory(
            self.reloader, self.clock, operations=Operations(tunnels=self.registry)
        )

    def test_none(self) -> None:
        """
        Without tunnels the answer has none.
        """
        self.assertEqual(
            self.command("tunnels"),
            {"status": "ok", "generation": 1, "total": 0, "sites": {}},
        )

    def test_perSite(self) -> None:
        """
        Each site with tunnels: how many, by generation, the oldest's age,
        bytes each way; C{tunnels SITE} for one site.
        """
        now = self.clock.seconds()
        for site, generation, age in (
            ("app", 1, 30),
            ("app", 2, 5),
            ("fallback", 2, 1),
        ):
            self.registry.opened(cast(Any, _OpenTunnel(site, generation, now - age)))
        app = {
            "open": 2,
            "by_generation": {"1": 1, "2": 1},
            "oldest_secs": 30.0,
            "bytes_up": 20,
            "bytes_down": 40,
        }
        self.assertEqual(
            self.command("tunnels"),
            {
                "status": "ok",
                "generation": 1,
                "total": 3,
                "sites": {
                    "app": app,
                    "fallback": {
                        "open": 1,
                        "by_generation": {"2": 1},
                        "oldest_secs": 1.0,
                        "bytes_up": 10,
                        "bytes_down": 20,
                    },
                },
            },
        )
        self.assertEqual(
            self.command("tunnels app"),
            {"status": "ok", "generation": 1, "total": 2, "sites": {"app": app}},
        )

    def test_unknownSite(self) -> None:
        """
        A site that is not configured (and has no tunnel left) is an error.
        """
        self.assertEqual(
            self.command("tunnels nope"),
            {"status": "error", "message": "unknown site: nope"},
        )

    def test_usage(self) -> None:
        """
        More than one argument is a usage error.
        """
        self.assertEqual(
            self.command("tunnels a b"),
            {"status": "error", "message": "usage: tunnels [SITE]"},
        )


ROUTES_CONFIG = """\
[server]
listen_http = ["tcp:8080:interface=127.0.0.1"]
listen_https = []
admin_socket_path = ""
ops_listen = ""

[[sites]]
name = "shop"
hosts = ["shop.example"]
upstreams = ["http://10.1.0.1:8000"]

[[sites.routes]]
path_prefix = "/api/"
strip_prefix = true
upstreams = ["http://10.2.0.1:9000"]
upstream_host = "api.internal"
response_headers = { remove = ["server"] }

[[sites.routes]]
path = "/old"
methods = ["GET"]
redirect = { to = "https://{host}/new", status = 301 }
"""


class RouteRulesTests(AdminTestsMixin, SynchronousTestCase):
    """
    C{route} says which rule of a site a request meets, why, and what it
    does.
    """

    def setUp(self) -> None:
        super().setUp()
        self.holder.current = runtimeFor(ROUTES_CONFIG, self.clock)

    def test_prefix(self) -> None:
        """
        A path under a prefix meets that route: the prefix stripped, the
        Host set, the header rules, the route's upstream.
        """
        answer = self.command("route shop.example /api/users")
        self.assertEqual(
            answer["rule"],
            {
                "kind": "prefix",
                "index": 0,
                "path_prefix": "/api/",
                "why": "longest matching prefix /api/",
            },
        )
        self.assertEqual(
            answer["rewrites"],
            [
                "prefix /api/ stripped: /users sent upstream, with "
                "X-Forwarded-Prefix: /api",
                "Host set to api.internal",
                "response header server removed",
            ],
        )
        self.assertEqual(answer["action"], "proxy")
        self.assertEqual(answer["upstream"], "http://10.2.0.1:9000")

    def test_exactWithMethod(self) -> None:
        """
        An exact path meets its route for the methods it lists; another
        method meets the site's own rules.
        """
        answer = self.command("route shop.example /old GET")
        self.assertEqual(answer["rule"]["kind"], "exact")  # type: ignore[index]
        self.assertEqual(
            answer["action"],
            {"redirect": {"to": "https://{host}/new", "status": 301}},
        )
        self.assertIsNone(answer["upstream"])
        answer = self.command("route shop.example /old POST 10.0.0.1")
        self.assertEqual(
            answer["rule"],
            {
                "kind": "site",
                "why": "no route of the site matches: the site's own rules",
            },
        )
        self.assertEqual(
            (answer["method"], answer["upstream"]), ("POST", "http://10.1.0.1:8000")
        )


class _FakeFleet:
    """
    Fleet reloads whose answers wait until the test fires them.
    """

    def __init__(self) -> None:
        self.asked: list[tuple[Answer, Deferred[Answer]]] = []

    def reloadFleet(self, localAnswer: Answer) -> Deferred[Answer]:
        d: Deferred[Answer] = Deferred()
        self.asked.append((localAnswer, d))
        return d


class FleetReloadCommandTests(AdminTestsMixin, SynchronousTestCase):
    """
    C{reload} with a fleet (C{[cluster] reload_channel = true}).
    """

    def setUp(self) -> None:
        super().setUp()
        self.fleet = _FakeFleet()
        self.factory = AdminFactory(
            self.reloader, self.clock, operations=Operations(fleet=self.fleet)
        )

    def test_reloadAsksTheFleet(self) -> None:
        """
        This node reloads first; then the fleet is asked with this node's
        answer, and the fleet's combined answer is the command's.
        """
        proto, transport = self.connect()
        proto.dataReceived(b"reload\n")
        self.assertEqual(self.fleet.asked, [])
        [(source, reloaded)] = self.reloader.reloads
        self.assertEqual(source, "admin")
        reloaded.callback(RELOADED)
        [(local, answered)] = self.fleet.asked
        self.assertEqual(local, RELOADED_JSON)
        self.assertEqual(transport.value(), b"")
        combined = dict(
            RELOADED_JSON, nodes={"a": RELOADED_JSON, "b": RELOADED_JSON}, silent=[]
        )
        answered.callback(combined)
        self.assertEqual(answerOf(transport), combined)

    def test_refusedReloadStillAsks(self) -> None:
        """
        A refused local reload is passed to the fleet too (the other nodes
        read their own files).
        """
        proto, transport = self.connect()
        proto.dataReceived(b"reload\n")
        self.reloader.reloads[0][1].callback(Refused("config_invalid", "bad"))
        [(local, answered)] = self.fleet.asked
        self.assertEqual(local["code"], "config_invalid")
        answered.callback(dict(local, nodes={"a": local}))
        self.assertEqual(answerOf(transport)["nodes"], {"a": local})

    def test_help(self) -> None:
        """
        C{help} says that C{reload} asks the fleet, and that SIGHUP does
        not.
        """
        commands = cast(dict[str, str], self.command("help")["commands"])
        self.assertIn("reload_channel", commands["reload"])
        self.assertIn("SIGHUP reloads this node only", commands["reload"])
        plain = AdminFactory(self.reloader, self.clock)
        self.assertNotIn("reload_channel", plain.descriptions["reload"])

    def test_checkIsLocal(self) -> None:
        """
        C{check} does not ask the fleet.
        """
        proto, transport = self.connect()
        proto.dataReceived(b"check\n")
        self.reloader.checks[0].callback(RELOADED)
        self.assertEqual(self.fleet.asked, [])
        self.assertEqual(answerOf(transport)["status"], "ok")
