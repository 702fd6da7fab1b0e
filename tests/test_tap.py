"""
Tests for L{revproxy.tap}: the options of C{twistd revproxy} and
L{makeService}.  No process, no socket: errors and C{--check} output go to
L{io.StringIO} objects set on the options.
"""

from __future__ import annotations

import io
import os
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import trustme
from twisted.application.service import IService
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from revproxy import __version__
from revproxy.config import Config
from revproxy.descriptors import DescriptorLimit
from revproxy.interfaces import IRevProxyReactor
from revproxy.service import RevProxyService
from revproxy.tap import Options, makeService
from revproxy.tls import TLSFiles

GOOD = """\
[server]
listen_http = ["tcp:8080:interface=127.0.0.1"]
listen_https = []
admin_socket_path = ""
ops_listen = ""

[logging]
access_log = "-"

[[sites]]
name = "demo"
hosts = ["localhost", "127.0.0.1"]
upstreams = ["http://127.0.0.1:8081"]
default = true

[[sites]]
name = "other"
hosts = ["other.example"]
upstreams = ["http://127.0.0.1:8082"]
"""

# Three problems, in three places.
BAD = """\
[server]
listen_http = ["tcp:8080:interface=127.0.0.1"]
listen_https = []
admin_socket_path = ""
ops_listen = ""
bogus = 1

[[sites]]
name = "demo"
hosts = ["localhost"]
upstreams = ["ftp://127.0.0.1:21"]
response_timeout_secs = -1
"""


# GOOD with an HTTPS listener and the site "other" (sites[1]) served from
# other.pem and other.key, relative to the config file.
TLS = GOOD.replace("listen_https = []", 'listen_https = ["tcp:8443"]') + (
    'tls = "files"\ncert_file = "other.pem"\nkey_file = "other.key"\n'
)

#: The time C{postOptions} checks certificates against in these tests.
NOW = datetime(2030, 6, 1, tzinfo=UTC)

_CA = trustme.CA()


class _OptionsTestCase(SynchronousTestCase):
    """
    Builds L{Options} that print into strings, and config files.
    """

    def options(self) -> Options:
        """
        Options whose standard output and error are L{io.StringIO}, and
        whose clock says L{NOW}.
        """
        options = Options()
        options.stdout = io.StringIO()
        options.stderr = io.StringIO()
        options.clock = clock = Clock()
        clock.advance(NOW.timestamp())
        return options

    def writeFile(self, text: str) -> str:
        """
        Write C{text} to a new file; return its path.
        """
        path = os.path.abspath(str(self.mktemp()))
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def exitCode(self, options: Options, args: list[str]) -> object:
        """
        Parse C{args}, which must exit; return the exit code.
        """
        e = self.assertRaises(SystemExit, options.parseOptions, args)
        code: object = e.code
        return code

    def out(self, options: Options) -> str:
        """
        What the options printed on standard output.
        """
        return str(cast(io.StringIO, options.stdout).getvalue())

    def err(self, options: Options) -> str:
        """
        What the options printed on standard error.
        """
        return str(cast(io.StringIO, options.stderr).getvalue())


class CheckTests(_OptionsTestCase):
    """
    C{--check} validates the file and exits, like C{nginx -t}.
    """

    def test_good(self) -> None:
        """
        A valid file: success on standard output, exit 0, nothing on
        standard error.
        """
        path = self.writeFile(GOOD)
        options = self.options()
        self.assertEqual(self.exitCode(options, ["--config", path, "--check"]), 0)
        self.assertIn("successful", self.out(options))
        self.assertIn(path, self.out(options))
        self.assertIn("2 site(s)", self.out(options))
        self.assertEqual(self.err(options), "")

    def test_routeWarnings(self) -> None:
        """
        A valid file with a route no request reaches and a redirect to
        itself: exit 0, each warning on standard output with its key path.
        """
        path = self.writeFile(
            GOOD
            + '[[sites.routes]]\npath = "/a"\nredirect = { to = "/a" }\n'
            + '[[sites.routes]]\npath = "/a"\nrespond = { status = 200 }\n'
        )
        options = self.options()
        self.assertEqual(self.exitCode(options, ["--config", path, "--check"]), 0)
        lines = self.out(options).splitlines()
        self.assertEqual(
            lines[:2],
            [
                "revproxy: warning: sites[1].routes[1]: no request reaches this "
                'route: routes[0] has the same path "/a" and takes every method',
                'revproxy: warning: sites[1].routes[0].redirect.to: "/a" sends '
                "http://other.example/a back to itself: a redirect loop",
            ],
        )
        self.assertIn("configuration test is successful", lines[-1])

    def test_workers(self) -> None:
        """
        With more than one worker, the success output says how many, and
        C{(auto)} when the file says C{"auto"}.
        """
        server = 'ops_listen = ""\n'
        for setting, line in (
            ("workers = 4\n", "revproxy: 4 worker processes"),
            ('workers = "auto"\n', "revproxy: 3 worker processes (auto)"),
        ):
            self.patch(os, "sched_getaffinity", lambda pid: {0, 1, 2})
            path = self.writeFile(GOOD.replace(server, server + setting))
            options = self.options()
            self.assertEqual(self.exitCode(options, ["--config", path, "--check"]), 0)
            lines = self.out(options).splitlines()
            self.assertIn(line, lines)
            self.assertIn("configuration test is successful", lines[-1])
            self.assertEqual(self.err(options), "")

    def test_oneWorkerNotMentioned(self) -> None:
        """
        One worker (the default, or C{"auto"} on one usable core) adds no
        line to the success output.
        """
        server = 'ops_listen = ""\n'
        self.patch(os, "sched_getaffinity", lambda pid: {0})
        for setting in ("", "workers = 1\n", 'workers = "auto"\n'):
            path = self.writeFile(GOOD.replace(server, server + setting))
            options = self.options()
            self.assertEqual(self.exitCode(options, ["--config", path, "--check"]), 0)
            self.assertNotIn("worker", self.out(options))

    def test_cluster(self) -> None:
        """
        With C{[cluster]}, the success output names the node and its Redis
        server, C{(tls)} for C{rediss://}, and never the password or the
        secret.
        """
        directory = os.path.dirname(self.writeFile(""))
        with open(os.path.join(directory, "cluster.key"), "wb") as f:
            f.write(b"S" * 32)
        os.chmod(os.path.join(directory, "cluster.key"), 0o600)
        with open(os.path.join(directory, "redis.pw"), "w") as f:
            f.write("hunter2\n")
        os.chmod(os.path.join(directory, "redis.pw"), 0o600)
        for url, line in (
            (
                "redis://10.0.0.5",
                "revproxy: cluster node web-1, redis 10.0.0.5:6379/0",
            ),
            (
                "rediss://[2001:db8::7]:6380/3",
                "revproxy: cluster node web-1, redis [2001:db8::7]:6380/3 (tls)",
            ),
        ):
            path = os.path.join(directory, "revproxy.toml")
            with open(path, "w") as f:
                f.write(
                    GOOD
                    + f'[cluster]\nredis_url = "{url}"\nnode_name = "web-1"\n'
                    + 'secret_file = "cluster.key"\nredis_password_file = "redis.pw"\n'
                )
            options = self.options()
            self.assertEqual(self.exitCode(options, ["--config", path, "--check"]), 0)
            lines = self.out(options).splitlines()
            self.assertEqual(lines[0], line)
            self.assertIn("configuration test is successful", lines[-1])
            self.assertNotIn("hunter2", self.out(options))
            self.assertNotIn("SSSS", self.out(options))
            self.assertEqual(self.err(options), "")

    def test_clusterSecretReadableByOthers(self) -> None:
        """
        A cluster secret file that others may read is a warning; the check
        still passes.
        """
        path = self.writeFile("")
        secret = os.path.join(os.path.dirname(path), "cluster.key")
        with open(secret, "wb") as f:
            f.write(b"S" * 32)
        os.chmod(secret, 0o644)
        with open(path, "w") as f:
            f.write(
                GOOD + '[cluster]\nredis_url = "redis://127.0.0.1"\n'
                'node_name = "n1"\nsecret_file = "cluster.key"\n'
            )
        options = self.options()
        self.assertEqual(self.exitCode(options, ["--config", path, "--check"]), 0)
        self.assertEqual(
            self.out(options).splitlines()[:2],
            [
                f"revproxy: warning: cluster.secret_file: {secret} can be read by "
                f"group or others (mode 0644): chmod 600 {secret}",
                "revproxy: cluster node n1, redis 127.0.0.1:6379/0",
            ],
        )

    def test_noClusterNotMentioned(self) -> None:
        """
        Without C{[cluster]}, no cluster line.
        """
        path = self.writeFile(GOOD)
        options = self.options()
        self.assertEqual(self.exitCode(options, ["--config", path, "--check"]), 0)
        self.assertNotIn("cluster node", self.out(options))

    def test_bad(self) -> None:
        """
        An invalid file: exit 1, and each problem on its own line of
        standard error, naming its key path.
        """
        path = self.writeFile(BAD)
        options = self.options()
        self.assertEqual(self.exitCode(options, ["--config", path, "--check"]), 1)
        self.assertEqual(self.out(options), "")
        lines = self.err(options).splitlines()
        for keyPath in (
            "server.bogus",
            "sites[0].upstreams[0]",
            "sites[0].response_timeout_secs",
        ):
            matching = [line for line in lines if keyPath in line]
            self.assertEqual(len(matching), 1, (keyPath, lines))

    def test_unreadableFiles(self) -> None:
        """
        C{--check} also finds certificate files that cannot be read, which
        parsing alone does not.
        """
        text = (
            GOOD.replace("listen_https = []", 'listen_https = ["tcp:8443"]')
            + 'tls = "files"\n'
            + 'cert_file = "absent-cert.pem"\n'
            + 'key_file = "absent-key.pem"\n'
        )
        path = self.writeFile(text)
        options = self.options()
        self.assertEqual(self.exitCode(options, ["--config", path, "--check"]), 1)
        self.assertIn("sites[1].cert_file", self.err(options))
        self.assertIn("sites[1].key_file", self.err(options))


class ConfigFileTests(_OptionsTestCase):
    """
    C{--config FILE} without C{--check}.
    """

    def test_valid(self) -> None:
        """
        A valid file is parsed into C{options["parsed"]}, and nothing is
        printed.
        """
        path = self.writeFile(GOOD)
        options = self.options()
        options.parseOptions(["--config", path])
        config = options["parsed"]
        self.assertIsInstance(config, Config)
        self.assertEqual(config.path, path)
        self.assertEqual([s.name for s in config.sites], ["demo", "other"])
        self.assertEqual((self.out(options), self.err(options)), ("", ""))

    def test_shortOption(self) -> None:
        """
        C{-c} is C{--config}.
        """
        path = self.writeFile(GOOD)
        options = self.options()
        options.parseOptions(["-c", path])
        self.assertEqual(options["parsed"].path, path)

    def test_invalid(self) -> None:
        """
        An invalid file: exit 1 with every problem on standard error, each
        naming its key path.
        """
        path = self.writeFile(BAD)
        options = self.options()
        self.assertEqual(self.exitCode(options, ["--config", path]), 1)
        err = self.err(options)
        self.assertIn(path, err)
        for keyPath in (
            "server.bogus",
            "sites[0].upstreams[0]",
            "sites[0].response_timeout_secs",
        ):
            self.assertIn(keyPath, err)
        self.assertNotIn("Traceback", err)

    def test_syntaxError(self) -> None:
        """
        A TOML syntax error: exit 1, with the line number.
        """
        path = self.writeFile("[server\n")
        options = self.options()
        self.assertEqual(self.exitCode(options, ["--config", path]), 1)
        self.assertIn("line 1", self.err(options))

    def test_missing(self) -> None:
        """
        A file that does not exist: exit 1 and one line on standard error,
        naming the path.
        """
        path = os.path.abspath(str(self.mktemp()))
        options = self.options()
        self.assertEqual(self.exitCode(options, ["--config", path]), 1)
        lines = self.err(options).splitlines()
        # Regression test for a fixed bug (revproxy.tap.Options.postOptions,
        # which sent it to _exitWithErrors): the missing file is reported
        # through _exitWithErrors as "configuration PATH is invalid (1
        # error):" plus an indented second line: two lines, and a missing
        # file called invalid.
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(path, lines[0])
        self.assertIn("No such file", lines[0])

    def test_missingWithCheck(self) -> None:
        """
        C{--check} of a file that does not exist exits 1.
        """
        options = self.options()
        path = os.path.abspath(str(self.mktemp()))
        self.assertEqual(self.exitCode(options, ["--config", path, "--check"]), 1)
        self.assertIn(path, self.err(options))


class UsageTests(_OptionsTestCase):
    """
    Options that do not go together are usage errors (twistd prints the
    usage and exits 1).
    """

    def test_nothing(self) -> None:
        """
        Neither C{--config} nor C{--listen}/C{--to}.
        """
        self.assertRaises(UsageError, self.options().parseOptions, [])

    def test_listenWithoutTo(self) -> None:
        """
        C{--listen} without C{--to}.
        """
        self.assertRaises(
            UsageError, self.options().parseOptions, ["--listen", "tcp:8080"]
        )

    def test_toWithoutListen(self) -> None:
        """
        C{--to} without C{--listen}.
        """
        self.assertRaises(
            UsageError,
            self.options().parseOptions,
            ["--to", "http://127.0.0.1:8000"],
        )

    def test_configAndListen(self) -> None:
        """
        C{--config} together with quick mode.
        """
        path = self.writeFile(GOOD)
        e = self.assertRaises(
            UsageError,
            self.options().parseOptions,
            ["--config", path, "--listen", "tcp:8080", "--to", "http://a:1"],
        )
        self.assertIn("--config", str(e))

    def test_version(self) -> None:
        """
        C{--version} prints the version and exits 0.
        """
        options = self.options()
        self.assertEqual(self.exitCode(options, ["--version"]), 0)
        self.assertIn(__version__, self.out(options))


class QuickModeTests(_OptionsTestCase):
    """
    C{--listen ENDPOINT --to URL}: one listener, one default site.
    """

    def test_config(self) -> None:
        """
        Quick mode builds a config with the one listener and a single
        default site forwarding to the one upstream.
        """
        options = self.options()
        options.parseOptions(
            ["--listen", "tcp:0:interface=127.0.0.1", "--to", "http://127.0.0.1:8000"]
        )
        config = options["parsed"]
        self.assertIsInstance(config, Config)
        self.assertEqual(config.server.listen_http, ("tcp:0:interface=127.0.0.1",))
        self.assertEqual(config.server.listen_https, ())
        self.assertEqual(config.server.admin_socket_path, "")
        self.assertEqual(config.server.ops_listen, "")
        [site] = config.sites
        self.assertTrue(site.default)
        self.assertEqual(site.hosts, ())
        self.assertEqual([u.url for u in site.upstreams], ["http://127.0.0.1:8000"])

    def test_badTo(self) -> None:
        """
        An upstream URL that is not one: exit 1, naming C{--to}.
        """
        options = self.options()
        code = self.exitCode(
            options, ["--listen", "tcp:8080", "--to", "ftp://127.0.0.1:21"]
        )
        self.assertEqual(code, 1)
        self.assertIn("--to", self.err(options))

    def test_badListen(self) -> None:
        """
        An endpoint that is not one: exit 1, naming C{--listen}.
        """
        options = self.options()
        code = self.exitCode(
            options, ["--listen", "nonsense:8080", "--to", "http://127.0.0.1:1"]
        )
        self.assertEqual(code, 1)
        self.assertIn("--listen", self.err(options))


class MakeServiceTests(_OptionsTestCase):
    """
    L{makeService} builds the service tree without starting it.
    """

    def test_fromFile(self) -> None:
        """
        From a config file: an L{IService} that does not listen yet.
        """
        options = self.options()
        options.parseOptions(["--config", self.writeFile(GOOD)])
        reactor = MemoryReactorClock()
        service = makeService(options, reactor=cast(IRevProxyReactor, reactor))
        self.assertTrue(IService.providedBy(service))
        self.assertFalse(service.running)
        self.assertEqual(reactor.tcpServers, [])

    def test_workers(self) -> None:
        """
        With C{workers} above 1 the tree is the supervisor's: the sockets
        and the workers, and no request path of its own.
        """
        options = self.options()
        options.parseOptions(
            [
                "--config",
                self.writeFile(GOOD.replace("[logging]", "workers = 2\n\n[logging]")),
            ]
        )
        reactor = MemoryReactorClock()
        service = makeService(options, reactor=cast(IRevProxyReactor, reactor))
        names = {child.name for child in cast(Any, service)}
        self.assertIn("workers", names)
        self.assertIn("sockets", names)
        self.assertNotIn("request-path", names)
        self.assertFalse(service.running)

    def test_raisesDescriptorLimitInTheRealProcess(self) -> None:
        """
        As twistd calls it (no reactor given: the real process), it raises
        the descriptor limit once, before anything listens, and the tree
        keeps the result.
        """
        options = self.options()
        options.parseOptions(["--config", self.writeFile(GOOD)])
        raised = DescriptorLimit(1024, 65536, 65536)
        calls: list[None] = []

        def raiseLimit() -> DescriptorLimit:
            calls.append(None)
            return raised

        service = makeService(options, raiseLimit=raiseLimit)
        self.assertEqual(calls, [None])
        self.assertIs(cast(RevProxyService, service).descriptors, raised)
        self.assertFalse(service.running)

    def test_descriptorLimitLeftAloneWithOwnReactor(self) -> None:
        """
        Given a reactor (tests, embedders), it leaves the process's limit
        alone.
        """
        options = self.options()
        options.parseOptions(["--config", self.writeFile(GOOD)])
        calls: list[None] = []

        def raiseLimit() -> DescriptorLimit:
            calls.append(None)
            return DescriptorLimit(1, 1, 1)

        service = makeService(
            options,
            reactor=cast(IRevProxyReactor, MemoryReactorClock()),
            raiseLimit=raiseLimit,
        )
        self.assertEqual(calls, [])
        self.assertIsNone(cast(RevProxyService, service).descriptors)

    def test_quickMode(self) -> None:
        """
        In quick mode: an L{IService} whose listener is the C{--listen}
        endpoint once started.
        """
        options = self.options()
        options.parseOptions(
            ["--listen", "tcp:8123:interface=127.0.0.1", "--to", "http://127.0.0.1:1"]
        )
        reactor = MemoryReactorClock()
        service = makeService(options, reactor=cast(IRevProxyReactor, reactor))
        self.assertTrue(IService.providedBy(service))
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(
            [(port, interface) for port, _, _, interface in reactor.tcpServers],
            [(8123, "127.0.0.1")],
        )


class TLSFilesTests(_OptionsTestCase):
    """
    Start-up and C{--check} read every certificate, key and upstream CA
    file, so that a file that cannot be used stops the proxy before it
    serves.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.config = self.write("revproxy.toml", TLS)

    def write(self, name: str, text: str | bytes) -> str:
        """
        Write a file into the config's directory; return its path.
        """
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
        return path

    def leaf(
        self,
        prefix: str,
        *names: str,
        notBefore: datetime = NOW - timedelta(days=1),
        notAfter: datetime = NOW + timedelta(days=90),
    ) -> tuple[str, str]:
        """
        Issue a certificate for C{names}; write it to C{PREFIX.pem} and its
        key to C{PREFIX.key}, and return both paths.
        """
        leaf = _CA.issue_cert(*names, not_before=notBefore, not_after=notAfter)
        chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
        return (
            self.write(f"{prefix}.pem", chain),
            self.write(f"{prefix}.key", leaf.private_key_pem.bytes()),
        )

    def invalid(self, *errors: str) -> str:
        """
        What C{_exitWithErrors} prints for the config file and C{errors}.
        """
        count = {1: "1 error", 2: "2 errors"}[len(errors)]
        head = f"revproxy: configuration {self.config} is invalid ({count}):"
        return "\n".join([head, *(f"  {error}" for error in errors)]) + "\n"

    def success(self, *warnings: str) -> str:
        """
        What C{--check} prints on success after C{warnings}.
        """
        lines = [f"revproxy: warning: {warning}" for warning in warnings]
        lines += [
            f"revproxy: the configuration file {self.config} syntax is ok; 2 site(s)",
            "revproxy: configuration test is successful",
        ]
        return "\n".join(lines) + "\n"

    def test_checkMismatchedKey(self) -> None:
        """
        C{--check} with a key that belongs to another certificate exits 1,
        naming the site's C{key_file} and both files.
        """
        cert, key = self.leaf("other", "other.example")
        _, strangerKey = self.leaf("stranger", "other.example")
        os.replace(strangerKey, key)
        options = self.options()
        self.assertEqual(self.exitCode(options, ["-c", self.config, "--check"]), 1)
        self.assertEqual(
            self.err(options),
            self.invalid(
                f"sites[1].key_file: {key} does not match the certificate in {cert}"
            ),
        )
        self.assertEqual(self.out(options), "")

    def test_checkExpired(self) -> None:
        """
        C{--check} with an expired certificate exits 1, saying when it
        expired.
        """
        cert, _ = self.leaf(
            "other",
            "other.example",
            notBefore=datetime(2019, 1, 1, tzinfo=UTC),
            notAfter=datetime(2020, 1, 1, tzinfo=UTC),
        )
        options = self.options()
        self.assertEqual(self.exitCode(options, ["-c", self.config, "--check"]), 1)
        self.assertEqual(
            self.err(options),
            self.invalid(
                f"sites[1].cert_file: {cert}: certificate expired 2020-01-01T00:00:00Z"
            ),
        )
        self.assertEqual(self.out(options), "")

    def test_checkExpiringSoon(self) -> None:
        """
        A certificate that expires in 3 days passes C{--check} (exit 0) with
        a warning line before the success lines, and nothing on standard
        error.
        """
        cert, _ = self.leaf("other", "other.example", notAfter=NOW + timedelta(days=3))
        options = self.options()
        self.assertEqual(self.exitCode(options, ["-c", self.config, "--check"]), 0)
        self.assertEqual(
            self.out(options),
            self.success(
                f"sites[1].cert_file: {cert}: certificate expires 2030-06-04T00:00:00Z"
            ),
        )
        self.assertEqual(self.err(options), "")

    def test_checkNamesNotCovering(self) -> None:
        """
        A certificate whose names do not cover the site's hosts passes
        C{--check} with a warning naming what it covers and what it misses.
        """
        cert, _ = self.leaf("other", "else.example", "*.other.example")
        options = self.options()
        self.assertEqual(self.exitCode(options, ["-c", self.config, "--check"]), 0)
        self.assertEqual(
            self.out(options),
            self.success(
                f"sites[1].cert_file: {cert}: certificate names (else.example, "
                "*.other.example) do not cover other.example"
            ),
        )

    def test_checkGood(self) -> None:
        """
        A valid certificate that covers the site's hosts passes C{--check}
        without warnings.
        """
        self.leaf("other", "other.example")
        options = self.options()
        self.assertEqual(self.exitCode(options, ["-c", self.config, "--check"]), 0)
        self.assertEqual(self.out(options), self.success())
        self.assertEqual(self.err(options), "")

    def test_checkConfigWarnings(self) -> None:
        """
        C{--check} prints the config's own warnings (upstream verification
        off) before the certificate warnings.
        """
        self.config = self.write(
            "revproxy.toml",
            TLS.replace('"http://127.0.0.1:8082"', '"https://127.0.0.1:8082"').replace(
                'tls = "files"', 'upstream_tls_verify = false\ntls = "files"'
            ),
        )
        cert, _ = self.leaf("other", "other.example", notAfter=NOW + timedelta(days=3))
        options = self.options()
        self.assertEqual(self.exitCode(options, ["-c", self.config, "--check"]), 0)
        self.assertEqual(
            self.out(options),
            self.success(
                'sites[1].upstream_tls_verify: false: the certificates of site "other"'
                "'s https:// upstreams are not verified (anyone on the path can read "
                "and change its traffic)",
                f"sites[1].cert_file: {cert}: certificate expires 2030-06-04T00:00:00Z",
            ),
        )

    def test_startupBadCertificate(self) -> None:
        """
        Without C{--check}, a certificate file that is not PEM stops start-up
        (exit 1) with the same error list, and nothing is parsed.
        """
        self.leaf("other", "other.example")
        cert = self.write("other.pem", "this is not a certificate\n")
        options = self.options()
        self.assertEqual(self.exitCode(options, ["-c", self.config]), 1)
        self.assertEqual(
            self.err(options),
            self.invalid(f"sites[1].cert_file: {cert}: no PEM certificate found"),
        )
        self.assertEqual(self.out(options), "")
        self.assertNotIn("parsed", options)
        self.assertNotIn("tls", options)

    def test_startupMissingKey(self) -> None:
        """
        Without C{--check} (so without L{checkConfig}), a key file that does
        not exist still stops start-up, naming the site's C{key_file}.
        """
        _, key = self.leaf("other", "other.example")
        os.remove(key)
        options = self.options()
        self.assertEqual(self.exitCode(options, ["-c", self.config]), 1)
        self.assertEqual(
            self.err(options),
            self.invalid(
                f"sites[1].key_file: {key}: cannot read: No such file or directory"
            ),
        )

    def test_clock(self) -> None:
        """
        The expiry is checked against L{Options.clock}: a certificate that
        expires in 3 days at L{NOW} has expired 4 days later.
        """
        cert, _ = self.leaf("other", "other.example", notAfter=NOW + timedelta(days=3))
        options = self.options()
        clock = cast(Clock, options.clock)
        clock.advance(timedelta(days=4).total_seconds())
        self.assertEqual(self.exitCode(options, ["-c", self.config]), 1)
        self.assertEqual(
            self.err(options),
            self.invalid(
                f"sites[1].cert_file: {cert}: certificate expired 2030-06-04T00:00:00Z"
            ),
        )

    def test_startupExpired(self) -> None:
        """
        Without C{--check}, an expired certificate stops start-up.
        """
        cert, _ = self.leaf(
            "other",
            "other.example",
            notBefore=NOW - timedelta(days=91),
            notAfter=NOW - timedelta(seconds=1),
        )
        options = self.options()
        self.assertEqual(self.exitCode(options, ["-c", self.config]), 1)
        self.assertEqual(
            self.err(options),
            self.invalid(
                f"sites[1].cert_file: {cert}: certificate expired 2030-05-31T23:59:59Z"
            ),
        )

    def test_upstreamCANotPEM(self) -> None:
        """
        An C{upstream_ca_file} that holds no PEM certificate fails both
        C{--check} and start-up, naming the site's C{upstream_ca_file}.
        """
        self.config = self.write(
            "revproxy.toml",
            GOOD.replace('"http://127.0.0.1:8082"', '"https://127.0.0.1:8082"')
            + 'upstream_ca_file = "ca.pem"\n',
        )
        ca = self.write("ca.pem", "not PEM at all\n")
        for args in (["-c", self.config, "--check"], ["-c", self.config]):
            options = self.options()
            self.assertEqual(self.exitCode(options, args), 1)
            self.assertEqual(
                self.err(options),
                self.invalid(
                    f"sites[1].upstream_ca_file: {ca}: no PEM certificate found"
                ),
            )
            self.assertEqual(self.out(options), "")

    def test_allErrorsAtOnce(self) -> None:
        """
        Every unusable file is reported, in site order, not only the first.
        """
        self.config = self.write(
            "revproxy.toml",
            TLS.replace('"http://127.0.0.1:8082"', '"https://127.0.0.1:8082"')
            + 'upstream_ca_file = "ca.pem"\n',
        )
        cert = self.write("other.pem", "")
        self.write("other.key", "")
        ca = self.write("ca.pem", "")
        options = self.options()
        self.assertEqual(self.exitCode(options, ["-c", self.config]), 1)
        self.assertEqual(
            self.err(options),
            self.invalid(
                f"sites[1].cert_file: {cert}: no PEM certificate found",
                f"sites[1].upstream_ca_file: {ca}: no PEM certificate found",
            ),
        )

    def test_tlsOnSuccess(self) -> None:
        """
        On success, C{options["tls"]} holds the loaded files: the site's
        certificate for its hosts, and its upstream CA; nothing is printed.
        """
        self.config = self.write(
            "revproxy.toml",
            TLS.replace('"http://127.0.0.1:8082"', '"https://127.0.0.1:8082"')
            + 'upstream_ca_file = "ca.pem"\n',
        )
        cert, _ = self.leaf("other", "other.example")
        ca = self.write("ca.pem", _CA.cert_pem.bytes())
        options = self.options()
        options.parseOptions(["-c", self.config])
        tls = options["tls"]
        self.assertIsInstance(tls, TLSFiles)
        loaded = tls.certificates.lookup("other.example")
        assert loaded is not None
        self.assertEqual((loaded.path, loaded.names), (cert, ("other.example",)))
        self.assertEqual(tls.sitesOf(loaded), ("other",))
        self.assertIsNone(tls.certificates.lookup("localhost"))
        self.assertEqual(tls.upstreamTLS["other"].caFile, ca)
        self.assertEqual(tls.warnings, ())
        self.assertEqual((self.out(options), self.err(options)), ("", ""))

    def test_startupWarningsNotPrinted(self) -> None:
        """
        At start-up (no C{--check}), a certificate expiring soon does not
        stop the proxy and prints nothing; its warning is kept in
        C{options["tls"]}.
        """
        cert, _ = self.leaf("other", "other.example", notAfter=NOW + timedelta(days=3))
        options = self.options()
        options.parseOptions(["-c", self.config])
        self.assertEqual(
            options["tls"].warnings,
            (f"sites[1].cert_file: {cert}: certificate expires 2030-06-04T00:00:00Z",),
        )
        self.assertEqual((self.out(options), self.err(options)), ("", ""))

    def test_quickModeNoTLS(self) -> None:
        """
        Quick mode has no certificate: C{options["tls"]} is empty.
        """
        options = self.options()
        options.parseOptions(["--listen", "tcp:8080", "--to", "http://127.0.0.1:1"])
        self.assertEqual(options["tls"].certificates.all(), [])
        self.assertEqual(options["tls"].upstreamTLS, {})
