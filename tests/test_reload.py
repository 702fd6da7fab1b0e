"""
Tests for L{revproxy.reload}: the one reload path of SIGHUP and the admin
socket, driven with a L{Clock} and config files in a temporary directory.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import trustme
from cryptography import x509
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from revproxy.admin import reloadAnswer
from revproxy.certificates import LoadedCertificate
from revproxy.config import Config, loadConfig, parseConfig
from revproxy.reload import (
    Applied,
    IReloadFollower,
    Reloader,
    ReloadFollower,
    ReloadResult,
    SiteChanges,
    configWarnings,
    siteChanges,
    staticChanges,
)
from revproxy.runtime import Runtime, RuntimeHolder, buildRuntime
from tests.fakes import FakeReloadFollower

BASE = """\
[server]
listen_http = ["tcp:8080:interface=127.0.0.1"]
listen_https = []
admin_socket_path = ""
ops_listen = ""

[[sites]]
name = "a"
hosts = ["a.example"]
upstreams = ["http://127.0.0.1:9001"]

[[sites]]
name = "b"
hosts = ["b.example"]
upstreams = ["http://127.0.0.1:9002"]
"""


def answerOf(case: SynchronousTestCase, result: Deferred[ReloadResult]) -> Any:
    """
    The JSON answer (as the admin socket gives it) of the reload or check
    C{result}, which must have fired.
    """
    return reloadAnswer(case.successResultOf(result))


class Preparing(ReloadFollower):
    """
    A follower whose C{prepare} calls C{hook}.
    """

    part = "preparing"

    def __init__(self, hook: Callable[[Runtime], object]) -> None:
        self.hook = hook

    def prepare(self, runtime: Runtime) -> None:
        self.hook(runtime)


class ReloaderCase(SynchronousTestCase):
    """
    A L{Reloader} of the config L{BASE} in a file.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.path = os.path.abspath(self.mktemp())
        self.write(BASE)
        config = loadConfig(self.path)
        self.holder = RuntimeHolder(buildRuntime(config, self.clock))
        self.reloader = Reloader(self.path, self.holder, self.clock)

    def write(self, text: str) -> None:
        """
        Replace the config file.
        """
        with open(self.path, "w") as f:
            f.write(text)

    def reload(self) -> dict[str, Any]:
        """
        Reload and return the answer, which must be there at once.
        """
        answer: dict[str, Any] = answerOf(self, self.reloader.reload("test"))
        return answer


class ReloaderTests(ReloaderCase):
    """
    L{Reloader.reload} and L{Reloader.check}.
    """

    def test_appliesNewUpstream(self) -> None:
        """
        A changed upstream is in the new runtime, with the next generation and
        the file's sha256, and the answer names the changed site.
        """
        text = BASE.replace("127.0.0.1:9002", "127.0.0.1:9003")
        self.write(text)
        answer = self.reload()
        self.assertEqual(answer["status"], "ok")
        self.assertEqual(answer["generation"], 2)
        self.assertEqual(
            answer["config_sha256"], hashlib.sha256(text.encode()).hexdigest()
        )
        self.assertEqual(
            answer["sites"],
            {"added": [], "removed": [], "changed": ["b"], "unchanged": 1},
        )
        self.assertEqual(answer["restart_required"], [])
        runtime = self.holder.current
        self.assertEqual(runtime.generation, 2)
        route = runtime.table.match("b.example")
        assert route is not None
        self.assertEqual(
            [u.url for u in route.config.upstreams], ["http://127.0.0.1:9003"]
        )

    def test_invalidKeepsOldRuntime(self) -> None:
        """
        An invalid file answers C{config_invalid} with every error and leaves
        the very same runtime serving.
        """
        before = self.holder.current
        self.write(BASE.replace('"http://127.0.0.1:9002"', '"htp://x"') + "bogus = 1\n")
        answer = self.reload()
        self.assertEqual(answer["status"], "error")
        self.assertEqual(answer["code"], "config_invalid")
        self.assertEqual(len(answer["errors"]), 2)
        self.assertIn("sites[1].upstreams[0]", answer["message"])
        self.assertIs(self.holder.current, before)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_missingFile(self) -> None:
        """
        A file that vanished answers C{config_unreadable}; nothing changes.
        """
        before = self.holder.current
        os.remove(self.path)
        answer = self.reload()
        self.assertEqual(answer["code"], "config_unreadable")
        self.assertIn("No such file", answer["message"])
        self.assertIs(self.holder.current, before)

    def test_siteDiff(self) -> None:
        """
        Added, removed and changed sites are named; the rest counted.
        """
        text = BASE.replace('name = "b"', 'name = "c"').replace(
            'hosts = ["a.example"]', 'hosts = ["a.example", "www.a.example"]'
        )
        self.write(text)
        answer = self.reload()
        self.assertEqual(
            answer["sites"],
            {"added": ["c"], "removed": ["b"], "changed": ["a"], "unchanged": 0},
        )

    def test_staticChangeWaitsForRestart(self) -> None:
        """
        A changed static key is listed as waiting for a restart and keeps its
        running value, while the dynamic part is applied.
        """
        text = BASE.replace("tcp:8080:", "tcp:8081:").replace("9001", "9005")
        self.write(text)
        answer = self.reload()
        self.assertEqual(answer["status"], "ok")
        self.assertEqual(answer["restart_required"], ["server.listen_http"])
        runtime = self.holder.current
        self.assertEqual(
            runtime.config.server.listen_http, ("tcp:8080:interface=127.0.0.1",)
        )
        route = runtime.table.match("a.example")
        assert route is not None
        self.assertEqual(route.config.upstreams[0].port, 9005)

    def test_workersWaitForRestart(self) -> None:
        """
        A changed C{workers} is listed once, as C{server.workers}, and keeps
        its running value until a restart.
        """
        self.write(BASE.replace('ops_listen = ""', 'ops_listen = ""\nworkers = 4'))
        answer = self.reload()
        self.assertEqual(answer["status"], "ok")
        self.assertEqual(answer["restart_required"], ["server.workers"])
        self.assertEqual(self.holder.current.config.server.workers, 1)

    def clusterTable(self, **keys: str) -> str:
        """
        A C{[cluster]} table with C{keys} (TOML values as written) over
        C{redis_url} and a 32-byte C{secret_file} beside the config file.
        """
        secret = os.path.join(os.path.dirname(self.path), "cluster.key")
        if not os.path.exists(secret):
            with open(secret, "wb") as f:
                f.write(b"k" * 32)
            os.chmod(secret, 0o600)
        table = {
            "redis_url": '"redis://127.0.0.1:6379/0"',
            "secret_file": '"cluster.key"',
        }
        table.update(keys)
        return "\n[cluster]\n" + "".join(f"{k} = {v}\n" for k, v in table.items())

    def test_clusterChangeWaitsForRestart(self) -> None:
        """
        A changed C{[cluster]} key is listed as C{cluster.KEY} and keeps its
        running value, while the dynamic part is applied; a new URL is one
        change (C{cluster.redis_url}), not one per part.
        """
        self.write(BASE + self.clusterTable())
        self.reloader = Reloader(
            self.path,
            RuntimeHolder(buildRuntime(loadConfig(self.path), self.clock)),
            self.clock,
        )
        self.holder = self.reloader.holder
        running = self.holder.current.config.cluster
        assert running is not None
        self.write(
            BASE.replace("9001", "9005")
            + self.clusterTable(
                redis_url='"rediss://cache.internal:6380/2"',
                node_name='"web-9"',
                reload_channel="true",
            )
        )
        answer = self.reload()
        self.assertEqual(answer["status"], "ok")
        self.assertEqual(
            answer["restart_required"],
            ["cluster.redis_url", "cluster.node_name", "cluster.reload_channel"],
        )
        runtime = self.holder.current
        self.assertEqual(runtime.generation, 2)
        self.assertIs(runtime.config.cluster, running)
        self.assertEqual(running.redis_port, 6379)
        route = runtime.table.match("a.example")
        assert route is not None
        self.assertEqual(route.config.upstreams[0].port, 9005)

    def test_clusterAddedOrRemoved(self) -> None:
        """
        Adding C{[cluster]} to a running config, or removing it, is listed
        as C{cluster}; the running config keeps what it had.
        """
        self.write(BASE + self.clusterTable())
        answer = self.reload()
        self.assertEqual(answer["restart_required"], ["cluster"])
        self.assertIsNone(self.holder.current.config.cluster)

        self.write(BASE + self.clusterTable())
        self.holder.current = buildRuntime(loadConfig(self.path), self.clock)
        self.write(BASE)
        answer = self.reload()
        self.assertEqual(answer["restart_required"], ["cluster"])
        self.assertIsNotNone(self.holder.current.config.cluster)

    def test_checkChangesNothing(self) -> None:
        """
        C{check} answers the same diff as a reload would, without swapping.
        """
        before = self.holder.current
        self.write(BASE.replace("9002", "9003"))
        answer = answerOf(self, self.reloader.check())
        self.assertEqual(answer["status"], "ok")
        self.assertEqual(answer["sites"]["changed"], ["b"])
        self.assertEqual(answer["generation"], 1)
        self.assertEqual(answer["would_be_generation"], 2)
        self.assertIs(self.holder.current, before)

    def test_waitingReloadReadsLatestFile(self) -> None:
        """
        Reloads are serialized; one that waited reads the file when its turn
        comes, so both queued reloads apply the latest version.
        """
        lock = self.reloader._lock
        self.successResultOf(lock.acquire())
        first = self.reloader.reload("one")
        second = self.reloader.reload("two")
        self.assertNoResult(first)
        self.assertNoResult(second)
        self.write(BASE.replace("9002", "9007"))
        lock.release()
        one = answerOf(self, first)
        two = answerOf(self, second)
        self.assertEqual((one["generation"], two["generation"]), (2, 3))
        self.assertEqual(one["config_sha256"], two["config_sha256"])
        route = self.holder.current.table.match("b.example")
        assert route is not None
        self.assertEqual(route.config.upstreams[0].port, 9007)

    def test_selectorCarriedOver(self) -> None:
        """
        An unchanged site keeps its upstream selector (and its back-off
        state); a changed one gets a new one.
        """
        old = self.holder.current.table
        self.write(BASE.replace("9002", "9003"))
        self.reload()
        new = self.holder.current.table
        oldA, newA = old.match("a.example"), new.match("a.example")
        oldB, newB = old.match("b.example"), new.match("b.example")
        assert oldA and newA and oldB and newB
        self.assertIs(newA.selector, oldA.selector)
        self.assertIsNot(newB.selector, oldB.selector)

    def test_quickModeHasNothingToReload(self) -> None:
        """
        Without a config file (quick mode) a reload answers an error.
        """
        reloader = Reloader("", self.holder, self.clock)
        answer = answerOf(self, reloader.reload("test"))
        self.assertEqual(answer["code"], "no_config_file")

    def test_unexpectedErrorAnswered(self) -> None:
        """
        A bug in loading answers C{internal} and is logged; the lock is
        released for the next reload.
        """

        def broken(path: str) -> Config:
            raise RuntimeError("boom")

        reloader = Reloader(self.path, self.holder, self.clock, load=broken)
        answer = answerOf(self, reloader.reload("test"))
        self.assertEqual(answer["code"], "internal")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertFalse(reloader._lock.locked)


class FollowerTests(ReloaderCase):
    """
    L{Reloader} tells its L{IReloadFollower}s every step of a reload.
    """

    def setUp(self) -> None:
        super().setUp()
        self.steps: list[tuple[str, object]] = []

    def test_interface(self) -> None:
        """
        L{ReloadFollower}, the base of the followers, provides
        L{IReloadFollower}.
        """
        self.assertTrue(verifyObject(IReloadFollower, ReloadFollower()))

    def test_order(self) -> None:
        """
        A reload tells each follower, in order: its start, then C{prepare}
        (the old runtime still current), then C{follow} (the new one
        current), then its end.
        """
        self.reloader.followers = (
            FakeReloadFollower("one", self.steps),
            FakeReloadFollower("two", self.steps),
        )
        self.write(BASE.replace("9002", "9003"))
        self.assertEqual(answerOf(self, self.reloader.reload("admin"))["status"], "ok")
        self.assertEqual(
            self.steps,
            [
                ("one starting", "admin"),
                ("two starting", "admin"),
                ("one prepare", 2),
                ("two prepare", 2),
                ("one follow", 2),
                ("two follow", 2),
                ("one ended", True),
                ("two ended", True),
            ],
        )

    def test_checkTellsNobody(self) -> None:
        """
        A check changes nothing, so no follower hears of it.
        """
        self.reloader.followers = (FakeReloadFollower("one", self.steps),)
        self.write(BASE.replace("9002", "9003"))
        self.assertEqual(answerOf(self, self.reloader.check())["status"], "ok")
        self.assertEqual(self.steps, [])

    def test_refusedReload(self) -> None:
        """
        A reload refused for an invalid file is started and ended, with
        nothing prepared or followed.
        """
        self.reloader.followers = (FakeReloadFollower("one", self.steps),)
        self.write(BASE + "bogus = 1\n")
        self.assertEqual(
            answerOf(self, self.reloader.reload("SIGHUP"))["code"], "config_invalid"
        )
        self.assertEqual(self.steps, [("one starting", "SIGHUP"), ("one ended", False)])

    def test_failedFollowerPartiallyApplied(self) -> None:
        """
        A follower that fails after the swap does not stop the others, is
        logged, and makes the reload I{partially applied}: the answer says
        so and names it, instead of C{"ok"}.
        """
        self.reloader.followers = (
            FakeReloadFollower("health checks", self.steps, failFollow=True),
            FakeReloadFollower("certificates", self.steps),
        )
        self.write(BASE.replace("9002", "9003"))
        result = self.successResultOf(self.reloader.reload("admin"))
        assert isinstance(result, Applied)
        self.assertEqual(result.failed, ("health checks",))
        self.assertFalse(result.ok)
        self.assertEqual(self.holder.current.generation, 2)
        self.assertIn(("certificates follow", 2), self.steps)
        self.assertIn(("certificates ended", False), self.steps)
        answer = reloadAnswer(result)
        self.assertEqual(answer["status"], "partially applied")
        self.assertEqual(answer["code"], "followers_failed")
        self.assertEqual(answer["failed"], ["health checks"])
        self.assertEqual(
            answer["message"],
            "the new config serves, but these parts could not follow it: health checks",
        )
        self.assertEqual(answer["generation"], 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_failingEndsAreLogged(self) -> None:
        """
        A follower that fails as a reload starts or ends is logged; the
        reload is applied as if it had not.
        """

        class Broken(ReloadFollower):
            part = "broken"

            def reloadStarting(self, source: str) -> None:
                raise RuntimeError("start")

            def reloadEnded(self, result: ReloadResult) -> None:
                raise RuntimeError("end")

        self.reloader.followers = (Broken(),)
        self.write(BASE.replace("9002", "9003"))
        self.assertEqual(answerOf(self, self.reloader.reload("admin"))["status"], "ok")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)


class DiffTests(SynchronousTestCase):
    """
    The pure diff functions.
    """

    def test_staticChanges(self) -> None:
        """
        Every changed key of C{[server]} and C{[acme]} is named.
        """
        from revproxy.config import parseConfig

        old = parseConfig(BASE)
        new = parseConfig(
            BASE.replace('admin_socket_path = ""', 'admin_socket_path = "/tmp/x.sock"')
            + '\n[acme]\nemail = "ops@example.com"\n'
        )
        self.assertEqual(
            staticChanges(old, new), ["server.admin_socket_path", "acme.email"]
        )

    def test_workersChanged(self) -> None:
        """
        A changed C{workers} is named C{server.workers}, also when it goes
        to or from C{"auto"}; C{workers_auto} is never named on its own.
        """
        from revproxy.config import parseConfig

        def withWorkers(value: str) -> Config:
            self.patch(os, "sched_getaffinity", lambda pid: {0, 1, 2})
            return parseConfig(
                BASE.replace('ops_listen = ""', f'ops_listen = ""\nworkers = {value}')
            )

        one, four, auto = parseConfig(BASE), withWorkers("4"), withWorkers('"auto"')
        self.assertEqual(staticChanges(one, four), ["server.workers"])
        self.assertEqual(staticChanges(four, auto), ["server.workers"])
        self.assertEqual(staticChanges(auto, one), ["server.workers"])

    def test_workersAutoSameCount(self) -> None:
        """
        C{"auto"} and the count it resolves to run the same workers: no
        restart is asked for when one replaces the other.
        """
        from revproxy.config import parseConfig

        self.patch(os, "sched_getaffinity", lambda pid: {0, 1, 2})
        auto = parseConfig(
            BASE.replace('ops_listen = ""', 'ops_listen = ""\nworkers = "auto"')
        )
        three = parseConfig(
            BASE.replace('ops_listen = ""', 'ops_listen = ""\nworkers = 3')
        )
        self.assertTrue(auto.server.workers_auto)
        self.assertEqual(staticChanges(auto, three), [])
        self.assertEqual(staticChanges(three, auto), [])

    def test_clusterFileContents(self) -> None:
        """
        A password or secret rotated in the same file is named by the key
        of its file; the secret file's permissions are not compared.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)

        def configWith(password: bytes, secret: bytes, mode: int) -> Config:
            for name, data in (("pw", password), ("key", secret)):
                path = os.path.join(directory, name)
                with open(path, "wb") as f:
                    f.write(data)
                os.chmod(path, mode)
            return parseConfig(
                BASE
                + '[cluster]\nredis_url = "redis://h"\nsecret_file = "key"\n'
                + 'redis_password_file = "pw"\n',
                baseDir=directory,
            )

        one = configWith(b"one\n", b"a" * 32, 0o600)
        self.assertEqual(staticChanges(one, configWith(b"one\n", b"a" * 32, 0o644)), [])
        self.assertEqual(
            staticChanges(one, configWith(b"two\n", b"b" * 32, 0o600)),
            ["cluster.redis_password_file", "cluster.secret_file"],
        )

    def test_noChanges(self) -> None:
        """
        The same config has no changes.
        """
        from revproxy.config import parseConfig

        config = parseConfig(BASE)
        self.assertEqual(staticChanges(config, config), [])
        self.assertEqual(
            siteChanges(config, config),
            SiteChanges(added=(), removed=(), changed=(), unchanged=2),
        )


# Site "a" (sites[0]) is served over HTTPS from a.pem and a.key, relative to
# the config file; site "b" (sites[1]) reaches its upstream over HTTPS.
TLS = """\
[server]
listen_http = ["tcp:8080:interface=127.0.0.1"]
listen_https = ["tcp:8443:interface=127.0.0.1"]
admin_socket_path = ""
ops_listen = ""

[[sites]]
name = "a"
hosts = ["a.example"]
upstreams = ["http://127.0.0.1:9001"]
tls = "files"
cert_file = "a.pem"
key_file = "a.key"

[[sites]]
name = "b"
hosts = ["b.example"]
upstreams = ["https://127.0.0.1:9002"]
"""

#: The reloader's clock reads this time in these tests.
NOW = datetime(2030, 6, 1, tzinfo=UTC)

_CA = trustme.CA()


class ReloadCertificatesTests(SynchronousTestCase):
    """
    A reload (or check) reads the certificate, key and CA files again, and
    one that cannot be used changes nothing.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW.timestamp())
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "revproxy.toml")
        self.writeConfig(TLS)
        self.cert, self.key = self.leaf("a", "a.example")
        self.holder = RuntimeHolder(buildRuntime(loadConfig(self.path), self.clock))
        self.reloader = Reloader(self.path, self.holder, self.clock)
        self.swapped: list[Runtime] = []
        self.current: list[Runtime] = []

    def write(self, name: str, data: bytes) -> str:
        """
        Write a file beside the config; return its path.
        """
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def writeConfig(self, text: str) -> None:
        """
        Replace the config file.
        """
        self.write("revproxy.toml", text.encode())

    def leaf(self, prefix: str, *names: str, days: float = 90) -> tuple[str, str]:
        """
        Issue a certificate for C{names} valid from a day before L{NOW} until
        C{days} after it; write it to C{PREFIX.pem} and its key to
        C{PREFIX.key}, replacing them, and return both paths.
        """
        leaf = _CA.issue_cert(
            *names,
            not_before=NOW - timedelta(days=1),
            not_after=NOW + timedelta(days=days),
        )
        chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
        return (
            self.write(f"{prefix}.pem", chain),
            self.write(f"{prefix}.key", leaf.private_key_pem.bytes()),
        )

    def served(self) -> LoadedCertificate:
        """
        The certificate the current runtime serves for C{a.example}.
        """
        cert = self.holder.current.tls.certificates.lookup("a.example")
        assert cert is not None
        return cert

    def serial(self, path: str) -> int:
        """
        The serial number of the certificate in the file at C{path}.
        """
        with open(path, "rb") as f:
            return x509.load_pem_x509_certificate(f.read()).serial_number

    def recordSwap(self, runtime: Runtime) -> None:
        """
        A follower's C{prepare} that records its runtime and the current one.
        """
        self.swapped.append(runtime)
        self.current.append(self.holder.current)

    def test_newCertificateApplied(self) -> None:
        """
        A reload after the certificate and key are replaced serves the new
        certificate, though the config file did not change.
        """
        old = self.served()
        self.assertEqual(old.chain[0].serial_number, self.serial(self.cert))
        self.leaf("a", "a.example", days=200)
        answer = answerOf(self, self.reloader.reload("test"))
        self.assertEqual(answer["status"], "ok")
        self.assertEqual(answer["generation"], 2)
        self.assertEqual(
            answer["sites"],
            {"added": [], "removed": [], "changed": [], "unchanged": 2},
        )
        self.assertEqual(answer["warnings"], [])
        new = self.served()
        self.assertEqual(new.chain[0].serial_number, self.serial(self.cert))
        self.assertNotEqual(new.chain[0].serial_number, old.chain[0].serial_number)
        self.assertEqual(new.not_after, (NOW + timedelta(days=200)).timestamp())
        self.assertEqual(old.not_after, (NOW + timedelta(days=90)).timestamp())
        self.assertEqual(self.holder.current.tls.sitesOf(new), ("a",))
        self.assertEqual(self.holder.current.secured, frozenset({"a"}))

    def test_mismatchedKeyKeepsOld(self) -> None:
        """
        A reload after the key is replaced by another certificate's answers
        C{certificate_invalid} naming C{sites[0].key_file}, and the old
        runtime, with its certificate, keeps serving.
        """
        before = self.holder.current
        old = self.served()
        _, otherKey = self.leaf("other", "a.example")
        os.replace(otherKey, self.key)
        error = f"sites[0].key_file: {self.key} does not match the certificate in {self.cert}"
        self.assertEqual(
            answerOf(self, self.reloader.reload("test")),
            {
                "status": "error",
                "code": "certificate_invalid",
                "message": f"a certificate, key or CA file cannot be used: {error}",
                "errors": [error],
            },
        )
        self.assertIs(self.holder.current, before)
        self.assertIs(self.served(), old)

    def test_brokenCertificateKeepsOld(self) -> None:
        """
        A certificate file replaced by one that is not PEM answers
        C{certificate_invalid} naming C{sites[0].cert_file}; nothing changes.
        """
        before = self.holder.current
        self.write("a.pem", b"-----BEGIN GARBAGE-----\n")
        answer = answerOf(self, self.reloader.reload("test"))
        self.assertEqual(answer["code"], "certificate_invalid")
        self.assertEqual(
            answer["errors"],
            [f"sites[0].cert_file: {self.cert}: no PEM certificate found"],
        )
        self.assertIs(self.holder.current, before)
        self.assertEqual(self.holder.current.generation, 1)

    def test_expiredCertificateKeepsOld(self) -> None:
        """
        A reload once the certificate has expired (by the reloader's clock)
        answers C{certificate_invalid}, and the runtime is kept.
        """
        before = self.holder.current
        self.clock.advance(91 * 86400)
        answer = answerOf(self, self.reloader.reload("test"))
        self.assertEqual(
            answer["errors"],
            [
                f"sites[0].cert_file: {self.cert}: certificate expired 2030-08-30T00:00:00Z"
            ],
        )
        self.assertIs(self.holder.current, before)

    def test_badUpstreamCAKeepsOld(self) -> None:
        """
        A new C{upstream_ca_file} that holds no certificate answers
        C{certificate_invalid} naming C{sites[1].upstream_ca_file}.
        """
        before = self.holder.current
        ca = self.write("ca.pem", b"not a CA\n")
        self.writeConfig(TLS + 'upstream_ca_file = "ca.pem"\n')
        answer = answerOf(self, self.reloader.reload("test"))
        self.assertEqual(answer["code"], "certificate_invalid")
        self.assertEqual(
            answer["errors"],
            [f"sites[1].upstream_ca_file: {ca}: no PEM certificate found"],
        )
        self.assertIs(self.holder.current, before)

    def test_upstreamCAApplied(self) -> None:
        """
        A valid new C{upstream_ca_file} is read into the new runtime's route
        of the site.
        """
        ca = self.write("ca.pem", _CA.cert_pem.bytes())
        self.writeConfig(TLS + 'upstream_ca_file = "ca.pem"\n')
        answer = answerOf(self, self.reloader.reload("test"))
        self.assertEqual(answer["sites"]["changed"], ["b"])
        self.assertEqual(self.holder.current.tls.upstreamTLS["b"].caFile, ca)

    def test_checkBrokenCertificate(self) -> None:
        """
        C{check} with a certificate that cannot be used answers the same
        error, and changes nothing.
        """
        before = self.holder.current
        self.write("a.pem", b"")
        error = f"sites[0].cert_file: {self.cert}: no PEM certificate found"
        self.assertEqual(
            answerOf(self, self.reloader.check()),
            {
                "status": "error",
                "code": "certificate_invalid",
                "message": f"a certificate, key or CA file cannot be used: {error}",
                "errors": [error],
            },
        )
        self.assertIs(self.holder.current, before)

    def test_checkNewCertificateChangesNothing(self) -> None:
        """
        C{check} reads a new valid certificate and says so, but the old one
        stays served and no hook runs.
        """
        self.reloader.followers += (Preparing(self.recordSwap),)
        old = self.served()
        self.leaf("a", "a.example", days=3)
        answer = answerOf(self, self.reloader.check())
        self.assertEqual(answer["status"], "ok")
        self.assertEqual(
            answer["warnings"],
            [
                f"sites[0].cert_file: {self.cert}: certificate expires 2030-06-04T00:00:00Z"
            ],
        )
        self.assertIs(self.served(), old)
        self.assertEqual(self.swapped, [])

    def test_beforeSwapSeesNewRuntime(self) -> None:
        """
        Each C{beforeSwap} hook is called once, in order, with the new
        runtime while the old one is still current; then the new one is.
        """
        before = self.holder.current
        order: list[str] = []
        self.reloader.followers += (Preparing(self.recordSwap),)
        self.reloader.followers += (Preparing(lambda runtime: order.append("second")),)
        self.leaf("a", "a.example", days=200)
        answer = answerOf(self, self.reloader.reload("test"))
        self.assertEqual(answer["status"], "ok")
        self.assertEqual(self.swapped, [self.holder.current])
        self.assertEqual(self.current, [before])
        self.assertEqual(order, ["second"])
        [runtime] = self.swapped
        self.assertEqual(runtime.generation, 2)
        cert = runtime.tls.certificates.lookup("a.example")
        assert cert is not None
        self.assertEqual(cert.chain[0].serial_number, self.serial(self.cert))

    def test_beforeSwapNotCalledOnFailure(self) -> None:
        """
        No hook is called when the reload fails: a certificate that cannot
        be used, or an invalid file.
        """
        self.reloader.followers += (Preparing(self.recordSwap),)
        self.write("a.key", b"")
        self.assertEqual(
            answerOf(self, self.reloader.reload("test"))["code"],
            "certificate_invalid",
        )
        self.writeConfig(TLS + "bogus = 1\n")
        self.assertEqual(
            answerOf(self, self.reloader.reload("test"))["code"],
            "config_invalid",
        )
        self.assertEqual(self.swapped, [])

    def test_raisingHookSwapsNothing(self) -> None:
        """
        A hook that raises fails the reload with C{internal}, logged; the
        old runtime stays, later hooks are not called, and the next reload
        works.
        """
        before = self.holder.current

        def refuse(runtime: Runtime) -> None:
            raise RuntimeError("cannot build contexts")

        refusing = Preparing(refuse)
        self.reloader.followers += (refusing, Preparing(self.recordSwap))
        self.leaf("a", "a.example", days=200)
        self.assertEqual(
            answerOf(self, self.reloader.reload("test")),
            {
                "status": "error",
                "code": "internal",
                "message": "internal error: cannot build contexts",
            },
        )
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIs(self.holder.current, before)
        self.assertEqual(self.swapped, [])
        self.reloader.followers = tuple(
            f for f in self.reloader.followers if f is not refusing
        )
        answer = answerOf(self, self.reloader.reload("test"))
        self.assertEqual((answer["status"], answer["generation"]), ("ok", 2))
        self.assertEqual(self.swapped, [self.holder.current])

    def expectedWarnings(self) -> list[str]:
        """
        The warnings of L{TLS} with C{upstream_tls_verify = false} on site
        "b" and a certificate for "a" that expires 6.5 days after L{NOW}.
        """
        return [
            'sites[1].upstream_tls_verify: false: the certificates of site "b"\'s '
            "https:// upstreams are not verified (anyone on the path can read and "
            "change its traffic)",
            f"sites[0].cert_file: {self.cert}: certificate expires "
            "2030-06-07T12:00:00Z",
        ]

    def test_warnings(self) -> None:
        """
        The answer's warnings are the config's (upstream verification off)
        and then the certificates' (expiring within 7 days).
        """
        self.writeConfig(TLS + "upstream_tls_verify = false\n")
        self.leaf("a", "a.example", days=6.5)
        answer = answerOf(self, self.reloader.check())
        self.assertEqual(answer["status"], "ok")
        self.assertEqual(answer["warnings"], self.expectedWarnings())

    def test_reloadWarningsLogged(self) -> None:
        """
        A reload that applies a config with warnings answers them and logs
        each at the warn level, as a plain log event rather than one that
        looks like a Python warning.
        """
        events = EventLoggingObserver()
        globalLogPublisher.addObserver(events)
        self.addCleanup(globalLogPublisher.removeObserver, events)
        self.writeConfig(TLS + "upstream_tls_verify = false\n")
        self.leaf("a", "a.example", days=6.5)
        answer = answerOf(self, self.reloader.reload("test"))
        self.assertEqual(answer["status"], "ok")
        self.assertEqual(answer["warnings"], self.expectedWarnings())
        warned = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual([formatEvent(e) for e in warned], self.expectedWarnings())
        for event in warned:
            self.assertNotIn("warning", event)

    def test_namesWarning(self) -> None:
        """
        A new certificate that does not cover the site's hosts is accepted,
        with a warning naming what it covers and what it misses.
        """
        self.leaf("a", "www.a.example")
        answer = answerOf(self, self.reloader.check())
        self.assertEqual(answer["status"], "ok")
        self.assertEqual(
            answer["warnings"],
            [
                f"sites[0].cert_file: {self.cert}: certificate names (www.a.example) "
                "do not cover a.example"
            ],
        )


class ConfigWarningsTests(SynchronousTestCase):
    """
    L{configWarnings}: valid settings an operator should know about.
    """

    def test_none(self) -> None:
        """
        A plain config has no warnings.
        """
        self.assertEqual(configWarnings(parseConfig(BASE)), [])

    def test_acmeAndVerifyOff(self) -> None:
        """
        A site with upstream verification off is named; a C{tls = "acme"}
        site is no reason for a warning.
        """
        config = parseConfig(
            BASE.replace("listen_https = []", 'listen_https = ["tcp:8443"]')
            .replace('hosts = ["a.example"]', 'hosts = ["a.example"]\ntls = "acme"')
            .replace(
                '"http://127.0.0.1:9002"',
                '"https://127.0.0.1:9002"]\nupstream_tls_verify = false\n#',
            )
            + '\n[acme]\nemail = "ops@example.com"\n'
        )
        self.assertEqual(
            configWarnings(config),
            [
                'sites[1].upstream_tls_verify: false: the certificates of site "b"\'s '
                "https:// upstreams are not verified (anyone on the path can read and "
                "change its traffic)",
            ],
        )


class Elsewhere(ReloadFollower):
    """
    A follower that applies each reload elsewhere (as the worker processes'
    follower does): C{follow} returns a L{Deferred} the test fires.
    """

    part = "elsewhere"

    def __init__(self) -> None:
        self.pending: list[Deferred[Sequence[str]]] = []

    def follow(self, runtime: Runtime) -> Deferred[Sequence[str]]:
        d: Deferred[Sequence[str]] = Deferred()
        self.pending.append(d)
        return d


class ElsewhereTests(ReloaderCase):
    """
    A follower that applies the reload elsewhere makes the answer wait for
    it and names what failed there.
    """

    def setUp(self) -> None:
        super().setUp()
        self.elsewhere = Elsewhere()
        self.steps: list[tuple[str, object]] = []
        self.reloader.followers = (
            self.elsewhere,
            FakeReloadFollower("after", self.steps),
        )
        self.write(BASE.replace("127.0.0.1:9002", "127.0.0.1:9003"))

    def test_waits(self) -> None:
        """
        The answer comes once the follower's L{Deferred} fires; the swap
        and the other followers did not wait; the next reload waits for
        the lock.
        """
        result = self.reloader.reload("test")
        self.assertNoResult(result)
        self.assertEqual(self.holder.current.generation, 2)
        self.assertIn(("after follow", 2), self.steps)
        self.assertNotIn(("after ended", True), self.steps)
        second = self.reloader.reload("test")
        self.assertNoResult(second)
        self.elsewhere.pending[0].callback([])
        self.assertEqual(reloadAnswer(self.successResultOf(result))["status"], "ok")
        self.assertIn(("after ended", True), self.steps)
        self.elsewhere.pending[1].callback([])
        self.assertEqual(reloadAnswer(self.successResultOf(second))["generation"], 3)

    def test_failedThere(self) -> None:
        """
        What failed there makes the reload partially applied, by name.
        """
        result = self.reloader.reload("test")
        self.elsewhere.pending[0].callback(["worker 2 (pid 7): no such file"])
        answer = reloadAnswer(self.successResultOf(result))
        self.assertEqual(answer["status"], "partially applied")
        self.assertEqual(answer["failed"], ["worker 2 (pid 7): no such file"])

    def test_deferredFails(self) -> None:
        """
        A L{Deferred} that fails makes the follower's whole part failed,
        logged.
        """
        result = self.reloader.reload("test")
        self.elsewhere.pending[0].errback(RuntimeError("lost"))
        answer = reloadAnswer(self.successResultOf(result))
        self.assertEqual(answer["failed"], ["elsewhere"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
