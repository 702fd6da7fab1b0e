"""
Tests for L{revproxy.reload}: the one reload path of SIGHUP and the admin
socket, driven with a L{Clock} and config files in a temporary directory.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from revproxy.config import Config, loadConfig
from revproxy.reload import Reloader, siteChanges, staticChanges
from revproxy.runtime import RuntimeHolder, buildRuntime

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


class ReloaderTests(SynchronousTestCase):
    """
    L{Reloader.reload} and L{Reloader.check}.
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
        return self.successResultOf(self.reloader.reload("test"))

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

    def test_checkChangesNothing(self) -> None:
        """
        C{check} answers the same diff as a reload would, without swapping.
        """
        before = self.holder.current
        self.write(BASE.replace("9002", "9003"))
        answer = self.successResultOf(self.reloader.check())
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
        one = self.successResultOf(first)
        two = self.successResultOf(second)
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
        answer = self.successResultOf(reloader.reload("test"))
        self.assertEqual(answer["code"], "no_config_file")

    def test_unexpectedErrorAnswered(self) -> None:
        """
        A bug in loading answers C{internal} and is logged; the lock is
        released for the next reload.
        """

        def broken(path: str) -> Config:
            raise RuntimeError("boom")

        reloader = Reloader(self.path, self.holder, self.clock, load=broken)
        answer = self.successResultOf(reloader.reload("test"))
        self.assertEqual(answer["code"], "internal")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertFalse(reloader._lock.locked)


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

    def test_noChanges(self) -> None:
        """
        The same config has no changes.
        """
        from revproxy.config import parseConfig

        config = parseConfig(BASE)
        self.assertEqual(staticChanges(config, config), [])
        self.assertEqual(
            siteChanges(config, config),
            {"added": [], "removed": [], "changed": [], "unchanged": 2},
        )
