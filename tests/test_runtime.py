"""
Tests for L{revproxy.runtime}: what L{buildRuntime} builds from a config
(the routing table, the TLS it records, the port redirects go to), the
generations it counts and the state it carries from the previous runtime,
and the swap of L{RuntimeHolder.current}.
"""

from __future__ import annotations

import hashlib
import os

import attrs
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from revproxy.config import ConfigError, loadConfig, parseConfig
from revproxy.proxy.upstreamtls import SYSTEM_TRUST, UpstreamTLS
from revproxy.runtime import Runtime, RuntimeHolder, buildRuntime
from revproxy.tls import NO_TLS_FILES, TLSFiles, loadTLSFiles
from tests.test_routing import _NAMES, TLS_CONFIG, _writeCertificate

#: Two plain sites; "api" has two upstreams, one over https.
CONFIG = """\
[server]
listen_http = ["tcp:8080"]
listen_https = []

[[sites]]
name = "app"
hosts = ["app.example", "*.app.example"]
upstreams = ["http://10.0.0.1:8000"]

[[sites]]
name = "api"
hosts = ["api.example"]
upstreams = ["http://10.0.0.2:8000", "https://10.0.0.3:8443"]
"""


class BuildRuntimeTests(SynchronousTestCase):
    """
    What L{buildRuntime} builds from a config.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(CONFIG)
        self.config = loadConfig(path)

    def test_fromConfig(self) -> None:
        """
        The first runtime of a config is generation 1 and keeps the config
        and the sha256 of its file; its table has one route per site, in the config's
        order, each with the site's config and a selector over its
        upstreams; every host routes to its site.
        """
        runtime = buildRuntime(self.config, self.clock, tls=NO_TLS_FILES)
        self.assertIs(runtime.config, self.config)
        self.assertEqual(runtime.generation, 1)
        self.assertEqual(runtime.sha256, hashlib.sha256(CONFIG.encode()).hexdigest())
        self.assertIs(runtime.tls, NO_TLS_FILES)
        routes = runtime.table.sites
        self.assertEqual([route.name for route in routes], ["app", "api"])
        for route, site in zip(routes, self.config.sites, strict=True):
            self.assertIs(route.config, site)
            self.assertEqual(route.selector.upstreams, site.upstreams)
        for host, name in [
            ("app.example", "app"),
            ("www.app.example", "app"),
            ("api.example", "api"),
        ]:
            match = runtime.table.match(host)
            assert match is not None
            self.assertEqual(match.name, name)
        self.assertIsNone(runtime.table.match("other.example"))

    def test_plainConfig(self) -> None:
        """
        Without certificates, ACME sites or C{listen_https}, no site is
        secured and there is no port to redirect to.
        """
        runtime = buildRuntime(self.config, self.clock)
        self.assertEqual(runtime.secured, frozenset())
        self.assertIsNone(runtime.httpsPort)

    def test_upstreamTLS(self) -> None:
        """
        A site's https upstreams are reached with the site's upstream TLS
        settings from C{tls}; a site without any gets the system trust.
        """
        pinned = UpstreamTLS(caFile="/etc/ca.pem", caDigest="00")
        tls = attrs.evolve(NO_TLS_FILES, upstreamTLS={"api": pinned})
        runtime = buildRuntime(self.config, self.clock, tls=tls)
        api = runtime.table.match("api.example")
        assert api is not None
        plain, secure = api.config.upstreams
        self.assertEqual(api.keys[secure], ("https", "10.0.0.3", 8443, pinned))
        self.assertEqual(api.keys[plain], ("http", "10.0.0.2", 8000, None))
        other = buildRuntime(self.config, self.clock, tls=NO_TLS_FILES)
        api = other.table.match("api.example")
        assert api is not None
        self.assertEqual(api.keys[secure][3], SYSTEM_TRUST)

    def test_frozen(self) -> None:
        """
        A runtime cannot be changed: a reload builds another.
        """
        runtime = buildRuntime(self.config, self.clock)
        self.assertRaises(
            attrs.exceptions.FrozenInstanceError, setattr, runtime, "generation", 7
        )


class GenerationTests(SynchronousTestCase):
    """
    L{buildRuntime} counts generations and carries what must outlive a
    reload from the previous runtime.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.config = parseConfig(CONFIG)

    def test_counted(self) -> None:
        """
        Each runtime built after another is the next generation, whatever
        its config.
        """
        first = buildRuntime(self.config, self.clock)
        second = buildRuntime(self.config, self.clock, previous=first)
        other = parseConfig(CONFIG.replace("10.0.0.1", "10.0.0.9"))
        third = buildRuntime(other, self.clock, previous=second)
        self.assertEqual(
            [r.generation for r in (first, second, third)],
            [1, 2, 3],
        )

    def test_selectorsCarried(self) -> None:
        """
        A site whose name and upstreams are unchanged keeps its upstream
        selector (with its back-off state); a site whose upstreams changed,
        or that was renamed, gets a new one.
        """
        first = buildRuntime(self.config, self.clock)
        changed = CONFIG.replace("10.0.0.2:8000", "10.0.0.4:8000").replace(
            'name = "app"', 'name = "web"'
        )
        second = buildRuntime(parseConfig(changed), self.clock, previous=first)
        same = buildRuntime(self.config, self.clock, previous=first)
        oldApp, oldAPI = first.table.sites
        newWeb, newAPI = second.table.sites
        self.assertIsNot(newWeb.selector, oldApp.selector)
        self.assertIsNot(newAPI.selector, oldAPI.selector)
        self.assertEqual(
            [route.selector for route in same.table.sites],
            [oldApp.selector, oldAPI.selector],
        )

    def test_previousUntouched(self) -> None:
        """
        Building the next runtime leaves the previous one as it was, for the
        requests that still hold it.
        """
        first = buildRuntime(self.config, self.clock)
        routes = first.table.sites
        buildRuntime(parseConfig(CONFIG.replace("app", "web")), self.clock, first)
        self.assertEqual(first.generation, 1)
        self.assertEqual(first.table.sites, routes)
        route = first.table.match("app.example")
        assert route is not None
        self.assertEqual(route.name, "app")


class RuntimeHolderTests(SynchronousTestCase):
    """
    L{RuntimeHolder} is the one reference a reload swaps.
    """

    def test_swap(self) -> None:
        """
        C{current} is the runtime it was given until another is assigned;
        whoever took the old one keeps it.
        """
        clock = Clock()
        config = parseConfig(CONFIG)
        first = buildRuntime(config, clock)
        holder = RuntimeHolder(first)
        self.assertIs(holder.current, first)
        taken: Runtime = holder.current
        second = buildRuntime(config, clock, previous=first)
        holder.current = second
        self.assertIs(holder.current, second)
        self.assertIs(taken, first)
        self.assertEqual((taken.generation, holder.current.generation), (1, 2))


class RuntimeTLSTests(SynchronousTestCase):
    """
    What L{buildRuntime} records of a config's TLS: the files read, the
    sites served over HTTPS, the port redirects go to.
    """

    def setUp(self) -> None:
        self.directory = _writeCertificate(self, *_NAMES)
        self.config = parseConfig(TLS_CONFIG, baseDir=self.directory)

    def test_securedSites(self) -> None:
        """
        The sites with certificate files and the C{"acme"} sites (served
        with a placeholder until issued) are secured; a site with C{tls =
        "none"} is not.
        """
        runtime = buildRuntime(self.config, Clock())
        self.assertEqual(
            runtime.secured, {"secure", "numeric", "wild", "both", "pending"}
        )

    def test_loadsFiles(self) -> None:
        """
        Without C{tls}, the certificate files are read: the secured sites'
        hosts have their certificate (one, as they share its files).
        """
        runtime = buildRuntime(self.config, Clock())
        cert = runtime.tls.certificates.lookup("secure.example")
        assert cert is not None
        self.assertEqual(
            runtime.tls.sitesOf(cert), ("secure", "numeric", "wild", "both")
        )
        self.assertIs(runtime.tls.certificates.lookup("www.wild.example"), cert)
        self.assertEqual(cert.path, os.path.join(self.directory, "cert.pem"))

    def test_badFilesRaise(self) -> None:
        """
        Without C{tls}, an unusable certificate file is a L{ConfigError}.
        """
        os.remove(os.path.join(self.directory, "cert.pem"))
        e = self.assertRaises(ConfigError, buildRuntime, self.config, Clock())
        self.assertEqual(len(e.errors), 4)
        self.assertTrue(e.errors[0].startswith("sites[0].cert_file: "), e.errors)

    def test_givenFilesUsed(self) -> None:
        """
        With C{tls}, nothing is read: those files are used, and their sites
        are the secured ones, with the C{"acme"} sites.
        """
        tls = loadTLSFiles(self.config, Clock().seconds())
        os.remove(os.path.join(self.directory, "cert.pem"))
        runtime = buildRuntime(self.config, Clock(), tls=tls)
        self.assertIs(runtime.tls, tls)
        self.assertEqual(
            runtime.secured, {"secure", "numeric", "wild", "both", "pending"}
        )
        only = TLSFiles(tls.certificates, {1: ("plain",)}, {}, ())
        self.assertEqual(
            buildRuntime(self.config, Clock(), tls=only).secured,
            {"plain", "pending"},
        )

    def test_reloadReadsAgain(self) -> None:
        """
        A runtime built after another reads the files again.
        """
        first = buildRuntime(self.config, Clock())
        second = buildRuntime(self.config, Clock(), previous=first)
        self.assertEqual(second.generation, first.generation + 1)
        self.assertIsNot(
            second.tls.certificates.lookup("secure.example"),
            first.tls.certificates.lookup("secure.example"),
        )

    def test_httpsPort(self) -> None:
        """
        Redirects go to the port of the first C{listen_https}; without one
        there is none.
        """
        self.assertEqual(buildRuntime(self.config, Clock()).httpsPort, 8443)
        plain = parseConfig(
            '[server]\nlisten_https = []\n[[sites]]\nname = "a"\n'
            'hosts = ["a.example"]\nupstreams = ["http://10.0.0.1:80"]\n'
        )
        runtime = buildRuntime(plain, Clock())
        self.assertIsNone(runtime.httpsPort)
        self.assertEqual(runtime.secured, frozenset())
        v6 = parseConfig(
            TLS_CONFIG.replace(
                '"tcp:8443:interface=127.0.0.1"', r'"tcp6:4443:interface=\\:\\:"'
            ),
            baseDir=self.directory,
        )
        self.assertEqual(buildRuntime(v6, Clock()).httpsPort, 4443)
