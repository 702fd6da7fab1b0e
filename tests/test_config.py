"""
Tests for L{revproxy.config}.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import os
import re
import socket
from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from revproxy.config import (
    AccessRules,
    AcmeConfig,
    BasicAuth,
    ClusterConfig,
    Config,
    ConfigError,
    Defaults,
    ForwardAuth,
    HeaderRules,
    HealthCheck,
    LoggingConfig,
    RateLimit,
    Redirect,
    Respond,
    RouteConfig,
    ServerConfig,
    SiteConfig,
    Upstream,
    checkConfig,
    endpointPort,
    loadConfig,
    parseConfig,
    quickConfig,
    routeWarnings,
)
from revproxy.placeholders import parseTemplate
from revproxy.reload import configWarnings

_BARE = re.compile(r"[A-Za-z0-9_-]+")

# What a site without upstreams needs instead, as the errors say.
_ALTERNATIVES = (
    "unless the site answers every request without them: a site-level "
    'redirect or respond, or a route with path_prefix = "/"'
)


def _tomlString(text: str) -> str:
    """
    Write C{text} as a TOML basic string.
    """
    escaped = "".join(
        f"\\u{ord(c):04x}" if c in '"\\' or ord(c) < 0x20 or ord(c) == 0x7F else c
        for c in text
    )
    return f'"{escaped}"'


def _tomlKey(key: str) -> str:
    """
    Write C{key} as a TOML key, quoted unless it is bare.
    """
    return key if _BARE.fullmatch(key) else _tomlString(key)


def _tomlValue(value: object) -> str:
    """
    Write C{value} as a TOML value; tables become inline tables.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _tomlString(value)
    if isinstance(value, list):
        return "[" + ", ".join(_tomlValue(item) for item in value) + "]"
    if isinstance(value, dict):
        items = (f"{_tomlKey(k)} = {_tomlValue(v)}" for k, v in value.items())
        return "{ " + ", ".join(items) + " }"
    raise TypeError(value)


def dumps(document: dict[str, Any]) -> str:
    """
    A tiny TOML serializer, enough for these tests: one C{key = value} line
    per top-level key.
    """
    return "".join(f"{_tomlKey(k)} = {_tomlValue(v)}\n" for k, v in document.items())


def site(**keys: Any) -> dict[str, Any]:
    """
    A valid minimal C{[[sites]]} entry, changed by C{keys}.
    """
    entry: dict[str, Any] = {
        "name": "app",
        "hosts": ["example.com"],
        "upstreams": ["http://127.0.0.1:8000"],
    }
    entry.update(keys)
    return entry


def document(*sites: dict[str, Any], **tables: Any) -> str:
    """
    A config document with C{sites} (one minimal site by default) and the
    given top-level tables.
    """
    return dumps({**tables, "sites": list(sites) or [site()]})


FULL = """\
[server]
listen_http  = ["tcp:80"]
listen_https = ["tcp:443", "tcp6:443"]
admin_socket_path = "/run/revproxy/admin.sock"
ops_listen = "tcp:9901:interface=127.0.0.1"
state_dir = "/var/lib/revproxy"
shutdown_timeout_secs = 30
trusted_proxies = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]

[acme]
email = "ops@example.com"
directory_url = "https://acme-v02.api.letsencrypt.org/directory"
ca_file = "ca.pem"
challenge = "tls-alpn-01"
renew_before_days = 20
key_type = "rsa2048"

[logging]
access_log = "-"
access_log_format = "combined"

[defaults]
max_body_bytes = 10485760
rate_limit = { requests_per_second = 50, burst = 100 }
connect_timeout_secs = 5
response_timeout_secs = 60

[[sites]]
name = "app"
hosts = ["Example.COM.", "Bücher.example"]
upstreams = ["http://10.0.0.1:8000", "HTTP://10.0.0.2:8000/"]
tls = "acme"
redirect_http = true
health_check = { path = "/healthz", interval_secs = 10 }

[[sites]]
name = "static"
hosts = ["*.example.com", "*.bücher.example", "[2001:DB8::1]"]
upstreams = ["https://[::1]", "https://static.internal:8443"]
tls = "files"
cert_file = "certs/static.pem"
key_file = "/etc/revproxy/keys/static.key"
default = true
max_body_bytes = 1024
rate_limit = { requests_per_second = 0.5, burst = 1 }
connect_timeout_secs = 1.5
response_timeout_secs = 600
"""


class ConfigErrorTests(SynchronousTestCase):
    """
    Tests for L{ConfigError}.
    """

    def test_strJoinsErrors(self) -> None:
        """
        The string of a L{ConfigError} is its errors, one per line.
        """
        error = ConfigError(["a: one", "b: two"])
        self.assertEqual(error.errors, ("a: one", "b: two"))
        self.assertEqual(str(error), "a: one\nb: two")

    def test_singleString(self) -> None:
        """
        A L{ConfigError} made from one string holds that one error.
        """
        self.assertEqual(ConfigError("a: one").errors, ("a: one",))


class ParseTestCase(SynchronousTestCase):
    """
    Helpers for tests of L{parseConfig}.
    """

    def errorsOf(self, text: str, baseDir: str | None = None) -> tuple[str, ...]:
        """
        Parse C{text}, which must fail, and return its errors.
        """
        error: ConfigError = self.assertRaises(
            ConfigError, parseConfig, text, baseDir=baseDir
        )
        self.assertEqual(str(error), "\n".join(error.errors))
        return error.errors

    def assertErrors(self, text: str, *expected: str) -> None:
        """
        Parsing C{text} fails with exactly the C{expected} errors, in order.
        """
        self.assertEqual(self.errorsOf(text), expected)


class FullDocumentTests(ParseTestCase):
    """
    Tests for valid documents.
    """

    def setUp(self) -> None:
        self.config = parseConfig(FULL, baseDir="/etc/revproxy")

    def test_server(self) -> None:
        """
        The C{[server]} table is parsed, proxies into networks.
        """
        self.assertEqual(
            self.config.server,
            ServerConfig(
                listen_http=("tcp:80",),
                listen_https=("tcp:443", "tcp6:443"),
                admin_socket_path="/run/revproxy/admin.sock",
                ops_listen="tcp:9901:interface=127.0.0.1",
                state_dir="/var/lib/revproxy",
                shutdown_timeout_secs=30.0,
                trusted_proxies=(
                    ipaddress.IPv4Network("10.0.0.0/8"),
                    ipaddress.IPv6Network("2001:db8::/32"),
                    ipaddress.IPv4Network("192.0.2.7/32"),
                ),
            ),
        )

    def test_acmeAndLogging(self) -> None:
        """
        The C{[acme]} and C{[logging]} tables are parsed, a relative
        C{ca_file} resolved against the base directory.
        """
        self.assertEqual(
            self.config.acme,
            AcmeConfig(
                email="ops@example.com",
                directory_url="https://acme-v02.api.letsencrypt.org/directory",
                ca_file="/etc/revproxy/ca.pem",
                challenge="tls-alpn-01",
                renew_before_days=20.0,
                key_type="rsa2048",
            ),
        )
        self.assertEqual(
            self.config.logging,
            LoggingConfig(access_log="-", access_log_format="combined"),
        )

    def test_defaults(self) -> None:
        """
        The C{[defaults]} table is parsed.
        """
        self.assertEqual(
            self.config.defaults,
            Defaults(
                max_body_bytes=10485760,
                rate_limit=RateLimit(50.0, 100),
                connect_timeout_secs=5.0,
                response_timeout_secs=60.0,
            ),
        )

    def test_siteInheritsDefaults(self) -> None:
        """
        A site without its own limits gets those of C{[defaults]}; its hosts
        are normalized, IDN to punycode, and its upstreams too.
        """
        self.assertEqual(
            self.config.sites[0],
            SiteConfig(
                name="app",
                hosts=("example.com", "xn--bcher-kva.example"),
                upstreams=(
                    Upstream("http://10.0.0.1:8000", "http", "10.0.0.1", 8000),
                    Upstream("http://10.0.0.2:8000", "http", "10.0.0.2", 8000),
                ),
                tls="acme",
                redirect_http=True,
                health_check=HealthCheck("/healthz", 10.0),
                max_body_bytes=10485760,
                rate_limit=RateLimit(50.0, 100),
                connect_timeout_secs=5.0,
                response_timeout_secs=60.0,
            ),
        )

    def test_siteOverridesDefaults(self) -> None:
        """
        A site's own limits override C{[defaults]}; wildcards and IPv6 hosts
        are normalized, relative certificate paths resolved.
        """
        self.assertEqual(
            self.config.sites[1],
            SiteConfig(
                name="static",
                hosts=("*.example.com", "*.xn--bcher-kva.example", "2001:db8::1"),
                upstreams=(
                    Upstream("https://[::1]:443", "https", "::1", 443),
                    Upstream(
                        "https://static.internal:8443", "https", "static.internal", 8443
                    ),
                ),
                tls="files",
                cert_file="/etc/revproxy/certs/static.pem",
                key_file="/etc/revproxy/keys/static.key",
                default=True,
                max_body_bytes=1024,
                rate_limit=RateLimit(0.5, 1),
                connect_timeout_secs=1.5,
                response_timeout_secs=600.0,
            ),
        )

    def test_noSourceWithoutFile(self) -> None:
        """
        A parsed document has no path or hash: only L{loadConfig} sets them.
        """
        self.assertEqual((self.config.path, self.config.source_sha256), ("", ""))

    def test_immutableAndHashable(self) -> None:
        """
        A L{Config} cannot be changed, and hashes equal to an equal one.
        """
        self.assertRaises(
            attrs.exceptions.FrozenInstanceError,
            setattr,
            self.config,
            "sites",
            (),
        )
        again = parseConfig(FULL, baseDir="/etc/revproxy")
        self.assertEqual(hash(self.config), hash(again))

    def test_missingTablesGetDefaults(self) -> None:
        """
        Every table but C{[[sites]]} is optional and defaults as documented.
        """
        config = parseConfig(document())
        self.assertEqual(config.server, ServerConfig())
        self.assertEqual(config.acme, AcmeConfig())
        self.assertEqual(config.logging, LoggingConfig())
        self.assertEqual(config.defaults, Defaults())
        self.assertEqual(config.server.listen_http, ("tcp:80",))
        self.assertIsNone(config.acme.renew_before_days)
        self.assertEqual(
            config.sites,
            (
                SiteConfig(
                    name="app",
                    hosts=("example.com",),
                    upstreams=(
                        Upstream("http://127.0.0.1:8000", "http", "127.0.0.1", 8000),
                    ),
                ),
            ),
        )
        self.assertEqual(config.sites[0].max_body_bytes, 10485760)
        self.assertFalse(config.sites[0].rate_limit.enabled)

    def test_relativePathsKeptWithoutBaseDir(self) -> None:
        """
        Without a base directory, relative file paths are kept as written.
        """
        config = parseConfig(
            document(site(tls="files", cert_file="c.pem", key_file="k.pem"))
        )
        self.assertEqual(
            (config.sites[0].cert_file, config.sites[0].key_file), ("c.pem", "k.pem")
        )

    def test_rateLimitEnabled(self) -> None:
        """
        A rate limit is enabled when it is not C{(0, 0)}.
        """
        self.assertTrue(RateLimit(1, 1).enabled)
        self.assertFalse(RateLimit(0, 0).enabled)


class SyntaxTests(ParseTestCase):
    """
    Tests for documents that are not TOML.
    """

    def test_lineAndColumn(self) -> None:
        """
        A TOML syntax error is one error giving its line and column.
        """
        self.assertErrors(
            "[server]\nstate_dir = /x\n",
            "TOML syntax error at line 2, column 13: Invalid value",
        )

    def test_endOfDocument(self) -> None:
        """
        A document cut short says so.
        """
        self.assertErrors(
            "[server]\nlisten_http = [",
            "TOML syntax error at end of document: Invalid value",
        )

    def test_integerTooLong(self) -> None:
        """
        An integer too long for Python to read is a config error, not a crash.
        """
        (error,) = self.errorsOf("[defaults]\nmax_body_bytes = " + "9" * 5000)
        self.assertTrue(error.startswith("TOML error: "), error)


class UnknownKeyTests(ParseTestCase):
    """
    Tests for keys that revproxy does not know.
    """

    def test_suggestsClosestKey(self) -> None:
        """
        An unknown key is an error that suggests the closest known key.
        """
        self.assertErrors(
            document(server={"listn_http": ["tcp:80"]}),
            'server.listn_http: unknown key (did you mean "listen_http"?)',
        )

    def test_topLevel(self) -> None:
        """
        An unknown top-level table is an error too.
        """
        self.assertErrors(
            document(sitez={}),
            'sitez: unknown key (did you mean "sites"?)',
        )

    def test_noSuggestion(self) -> None:
        """
        With nothing close, the error says only that the key is unknown.
        """
        self.assertErrors(document(logging={"zzz": 1}), "logging.zzz: unknown key")

    def test_keyOfAnotherTable(self) -> None:
        """
        A key put under the wrong table says where it belongs.
        """
        self.assertErrors(
            document(site(access_log="-")),
            "sites[0].access_log: unknown key (it belongs in [logging])",
        )

    def test_inlineTables(self) -> None:
        """
        Unknown keys inside C{rate_limit} and C{health_check} are errors.
        """
        self.assertErrors(
            document(
                site(
                    rate_limit={"requests_per_second": 1, "burst": 1, "brust": 2},
                    health_check={"path": "/", "interval": 5},
                )
            ),
            'sites[0].health_check.interval: unknown key (did you mean "interval_secs"?)',
            'sites[0].rate_limit.brust: unknown key (did you mean "burst"?)',
        )

    def test_quotedKey(self) -> None:
        """
        A key that is not bare is quoted in the key path.
        """
        self.assertErrors(document(server={"a b": 1}), 'server."a b": unknown key')


class TypeTests(ParseTestCase):
    """
    Tests for values of the wrong type.
    """

    def test_stringForNumber(self) -> None:
        """
        A string where a number belongs is an error showing the string.
        """
        self.assertErrors(
            document(server={"shutdown_timeout_secs": "x"}),
            'server.shutdown_timeout_secs: expected a number, got string "x"',
        )

    def test_booleanForNumber(self) -> None:
        """
        A boolean is not a number, although Python's bool is an int.
        """
        self.assertErrors(
            document(defaults={"max_body_bytes": True, "connect_timeout_secs": False}),
            "defaults.max_body_bytes: expected an integer, got boolean true",
            "defaults.connect_timeout_secs: expected a number, got boolean false",
        )

    def test_numberForBoolean(self) -> None:
        """
        A number is not a boolean.
        """
        self.assertErrors(
            document(site(default=1)),
            "sites[0].default: expected true or false, got integer 1",
        )

    def test_floatForInteger(self) -> None:
        """
        Byte counts and bursts are integers; a float is an error, even a
        whole one.
        """
        self.assertErrors(
            document(
                site(
                    max_body_bytes=1.5,
                    rate_limit={"requests_per_second": 1, "burst": 2.0},
                )
            ),
            "sites[0].max_body_bytes: expected an integer, got float 1.5",
            "sites[0].rate_limit.burst: expected an integer, got float 2",
        )

    def test_integerForSeconds(self) -> None:
        """
        An integer is accepted where seconds are a float.
        """
        config = parseConfig(document(site(connect_timeout_secs=2)))
        self.assertEqual(config.sites[0].connect_timeout_secs, 2.0)
        self.assertIsInstance(config.sites[0].connect_timeout_secs, float)

    def test_notFinite(self) -> None:
        """
        NaN and infinities are rejected.
        """
        self.assertErrors(
            document(
                defaults={
                    "connect_timeout_secs": math.nan,
                    "response_timeout_secs": math.inf,
                },
                server={"shutdown_timeout_secs": -math.inf},
            ),
            "server.shutdown_timeout_secs: expected a finite number, got float -inf",
            "defaults.connect_timeout_secs: expected a finite number, got float nan",
            "defaults.response_timeout_secs: expected a finite number, got float inf",
        )

    def test_tableExpected(self) -> None:
        """
        A top-level key that must be a table but is not is an error.
        """
        self.assertErrors(
            document(server=5, logging="x"),
            "server: expected a table, got integer 5",
            'logging: expected a table, got string "x"',
        )

    def test_arrayExpected(self) -> None:
        """
        A single string where an array belongs is an error.
        """
        self.assertErrors(
            document(server={"listen_http": "tcp:80"}),
            'server.listen_http: expected an array, got string "tcp:80"',
        )

    def test_arrayItems(self) -> None:
        """
        Each item of an array of strings is checked, and all are reported.
        """
        self.assertErrors(
            document(site(hosts=["a.example", 1, ["b"]])),
            "sites[0].hosts[1]: expected a string, got integer 1",
            "sites[0].hosts[2]: expected a string, got array",
        )

    def test_dateTime(self) -> None:
        """
        TOML dates are described as such.
        """
        self.assertErrors(
            document() + "[acme]\nemail = 2024-01-02\n",
            "acme.email: expected a string, got date 2024-01-02",
        )

    def test_controlCharacter(self) -> None:
        """
        A string with a control character is rejected.
        """
        self.assertErrors(
            document(logging={"access_log": "/var/log/a\x00b"}),
            'logging.access_log: "/var/log/a\\u0000b" contains a control character',
        )


class EndpointTests(ParseTestCase):
    """
    Tests for the listener endpoint strings of C{[server]}.
    """

    def test_invalid(self) -> None:
        """
        A string Twisted cannot parse is an error with Twisted's reason.
        """
        self.assertErrors(
            document(server={"listen_http": ["tcp:80", "tcpp:80"]}),
            'server.listen_http[1]: invalid endpoint "tcpp:80": '
            "Unknown endpoint type: 'tcpp'",
        )

    def test_invalidOps(self) -> None:
        """
        The ops listener is an endpoint string too.
        """
        self.assertErrors(
            document(server={"ops_listen": "tcp:x"}),
            'server.ops_listen: invalid endpoint "tcp:x": '
            "invalid literal for int() with base 10: 'x'",
        )

    def test_portRange(self) -> None:
        """
        A TCP port above 65535 is rejected.
        """
        self.assertErrors(
            document(server={"listen_https": ["tcp:70000"]}),
            'server.listen_https[0]: invalid endpoint "tcp:70000": '
            "the port must be between 0 and 65535",
        )

    def test_httpsMustBePlainTCP(self) -> None:
        """
        HTTPS listeners are plain TCP, since revproxy adds TLS itself.
        """
        self.assertErrors(
            document(server={"listen_https": ["ssl:443", "unix:/tmp/s", "tcp6:443"]}),
            'server.listen_https[0]: "ssl:443" must be a plain tcp: or tcp6: '
            "endpoint (revproxy adds TLS itself)",
            'server.listen_https[1]: "unix:/tmp/s" must be a plain tcp: or tcp6: '
            "endpoint (revproxy adds TLS itself)",
        )

    def test_otherEndpointsForHTTP(self) -> None:
        """
        Plain HTTP may listen on any endpoint, such as a UNIX socket.
        """
        config = parseConfig(document(server={"listen_http": ["unix:/run/a.sock"]}))
        self.assertEqual(config.server.listen_http, ("unix:/run/a.sock",))

    def test_sameAddressTwice(self) -> None:
        """
        Two listeners on the same port and interface are an error, whichever
        keys they are under.
        """
        self.assertErrors(
            document(
                server={
                    "listen_http": ["tcp:8080", "tcp:81:interface=127.0.0.1"],
                    "listen_https": ["tcp:8080", "tcp:8443"],
                    "ops_listen": "tcp:port=81:interface=127.0.0.1",
                }
            ),
            'server.listen_https[0]: "tcp:8080" listens on the same address as '
            "server.listen_http[0]",
            'server.ops_listen: "tcp:port=81:interface=127.0.0.1" listens on the '
            "same address as server.listen_http[1]",
        )
        self.assertErrors(
            document(
                server={
                    "listen_http": ["tcp6:8443"],
                    "listen_https": ["tcp6:8443:interface=\\:\\:0"],
                }
            ),
            'server.listen_https[0]: "tcp6:8443:interface=\\\\:\\\\:0" listens on the '
            "same address as server.listen_http[0]",
        )

    def test_sameSocketTwice(self) -> None:
        """
        Two listeners on the same UNIX socket are an error.
        """
        self.assertErrors(
            document(server={"listen_http": ["unix:/a", "unix:/a"]}),
            'server.listen_http[1]: "unix:/a" listens on the same address as '
            "server.listen_http[0]",
        )

    def test_differentInterfaces(self) -> None:
        """
        The same port on different interfaces, or port 0, may repeat.
        """
        config = parseConfig(
            document(
                server={
                    "listen_http": ["tcp:0", "tcp:0", "tcp:80:interface=127.0.0.1"],
                    "listen_https": ["tcp:80:interface=127.0.0.2"],
                }
            )
        )
        self.assertEqual(len(config.server.listen_http), 3)

    def test_disabled(self) -> None:
        """
        Empty C{ops_listen}, C{admin_socket_path} and C{listen_https} disable
        those listeners.
        """
        config = parseConfig(
            document(
                server={"ops_listen": "", "admin_socket_path": "", "listen_https": []}
            )
        )
        self.assertEqual(config.server.ops_listen, "")
        self.assertEqual(config.server.admin_socket_path, "")
        self.assertEqual(config.server.listen_https, ())

    def test_nowhereToListen(self) -> None:
        """
        A config with neither HTTP nor HTTPS listeners is an error.
        """
        self.assertErrors(
            document(server={"listen_http": [], "listen_https": []}),
            "server.listen_http: listen_http and listen_https are both empty, so "
            "revproxy would not listen anywhere",
        )


class LimitTests(ParseTestCase):
    """
    Tests for the ranges of numbers.
    """

    def test_maxBodyBytes(self) -> None:
        """
        C{max_body_bytes} is from 1 to 1 TiB.
        """
        self.assertErrors(
            document(
                site(max_body_bytes=0),
                site(name="b", hosts=["b.example"], max_body_bytes=2**40 + 1),
                defaults={"max_body_bytes": -1},
            ),
            "defaults.max_body_bytes: must be between 1 and 1099511627776, got -1",
            "sites[0].max_body_bytes: must be between 1 and 1099511627776, got 0",
            "sites[1].max_body_bytes: must be between 1 and 1099511627776, "
            "got 1099511627777",
        )
        config = parseConfig(document(site(max_body_bytes=2**40)))
        self.assertEqual(config.sites[0].max_body_bytes, 2**40)

    def test_hugeInteger(self) -> None:
        """
        An integer too big for a float is a range error, not an overflow.
        """
        self.assertErrors(
            document(defaults={"connect_timeout_secs": 10**400}),
            "defaults.connect_timeout_secs: must be greater than 0 and at most "
            "86400, got 10000000000000000000...00000",
        )

    def test_timeouts(self) -> None:
        """
        Timeouts are above 0 and at most a day.
        """
        self.assertErrors(
            document(
                site(connect_timeout_secs=0, response_timeout_secs=86400.5),
                defaults={"response_timeout_secs": -1},
            ),
            "defaults.response_timeout_secs: must be greater than 0 and at most "
            "86400, got -1",
            "sites[0].connect_timeout_secs: must be greater than 0 and at most "
            "86400, got 0",
            "sites[0].response_timeout_secs: must be greater than 0 and at most "
            "86400, got 86400.5",
        )

    def test_queueTimeout(self) -> None:
        """
        C{queue_timeout_secs} is 5 by default, set in C{[defaults]} or per
        site, above 0 and at most a day.
        """
        config = parseConfig(
            document(
                site(),
                site(name="b", hosts=["b.example"], queue_timeout_secs=1),
                defaults={"queue_timeout_secs": 2.5},
            )
        )
        self.assertEqual(Defaults().queue_timeout_secs, 5.0)
        self.assertEqual(config.defaults.queue_timeout_secs, 2.5)
        self.assertEqual([s.queue_timeout_secs for s in config.sites], [2.5, 1.0])
        self.assertErrors(
            document(site(queue_timeout_secs=0)),
            "sites[0].queue_timeout_secs: must be greater than 0 and at most "
            "86400, got 0",
        )

    def test_connectionLimits(self) -> None:
        """
        C{max_connections} is not set by default (80 % of the descriptor
        limit, found at start), else at least 1; the upstream connection
        and line limits default to 512 and 1024.
        """
        default = parseConfig(document()).server
        self.assertEqual(
            (
                default.max_connections,
                default.upstream_max_connections,
                default.upstream_max_queue,
            ),
            (None, 512, 1024),
        )
        server = parseConfig(
            document(
                server={
                    "max_connections": 2000,
                    "upstream_max_connections": 64,
                    "upstream_max_queue": 0,
                }
            )
        ).server
        self.assertEqual(
            (
                server.max_connections,
                server.upstream_max_connections,
                server.upstream_max_queue,
            ),
            (2000, 64, 0),
        )
        self.assertErrors(
            document(
                server={
                    "max_connections": 0,
                    "upstream_max_connections": 0,
                    "upstream_max_queue": -1,
                }
            ),
            "server.upstream_max_connections: must be between 1 and 1000000, got 0",
            "server.upstream_max_queue: must be between 0 and 10000000, got -1",
            "server.max_connections: must be between 1 and 100000000, got 0",
        )

    def test_shutdownTimeout(self) -> None:
        """
        C{shutdown_timeout_secs} is from 0 to an hour.
        """
        self.assertErrors(
            document(server={"shutdown_timeout_secs": 3601}),
            "server.shutdown_timeout_secs: must be between 0 and 3600, got 3601",
        )
        config = parseConfig(document(server={"shutdown_timeout_secs": 0}))
        self.assertEqual(config.server.shutdown_timeout_secs, 0.0)

    def test_rateLimitRanges(self) -> None:
        """
        The rate is at most a million a second, the burst at most ten million.
        """
        self.assertErrors(
            document(
                defaults={
                    "rate_limit": {"requests_per_second": 1e6 + 1, "burst": 10**7 + 1}
                }
            ),
            "defaults.rate_limit.requests_per_second: must be between 0 and "
            "1000000, got 1000001",
            "defaults.rate_limit.burst: must be between 0 and 10000000, got 10000001",
        )

    def test_rateWithoutBurst(self) -> None:
        """
        A rate with a burst of 0 is an error.
        """
        self.assertErrors(
            document(defaults={"rate_limit": {"requests_per_second": 5, "burst": 0}}),
            "defaults.rate_limit.burst: burst must be >= 1 when "
            "requests_per_second > 0",
        )

    def test_burstWithoutRate(self) -> None:
        """
        A burst with a rate of 0 is an error.
        """
        self.assertErrors(
            document(site(rate_limit={"requests_per_second": 0, "burst": 5})),
            "sites[0].rate_limit.requests_per_second: must be > 0 when burst > 0 "
            "(set both to 0 to turn rate limiting off)",
        )

    def test_rateLimitNeedsBothKeys(self) -> None:
        """
        A rate limit gives both its rate and its burst.
        """
        self.assertErrors(
            document(site(rate_limit={"requests_per_second": 5})),
            "sites[0].rate_limit.burst: required (set both to 0 to turn rate "
            "limiting off)",
        )

    def test_rateLimitOffOverridesDefaults(self) -> None:
        """
        A site may turn off the rate limit of C{[defaults]}.
        """
        config = parseConfig(
            document(
                site(rate_limit={"requests_per_second": 0, "burst": 0}),
                defaults={"rate_limit": {"requests_per_second": 5, "burst": 10}},
            )
        )
        self.assertEqual(config.defaults.rate_limit, RateLimit(5.0, 10))
        self.assertEqual(config.sites[0].rate_limit, RateLimit(0.0, 0))

    def test_healthCheck(self) -> None:
        """
        A health check's path starts with C{/}, its interval is 1 second to a
        day.
        """
        self.assertErrors(
            document(site(health_check={"path": "healthz", "interval_secs": 0.5})),
            'sites[0].health_check.path: "healthz" must start with "/"',
            "sites[0].health_check.interval_secs: must be between 1 and 86400, got 0.5",
        )

    def test_healthCheckPathRequired(self) -> None:
        """
        A health check names its path; its interval defaults to 10 seconds.
        """
        self.assertErrors(
            document(site(health_check={"interval_secs": 5})),
            'sites[0].health_check.path: required (the path to GET, such as "/healthz")',
        )
        config = parseConfig(document(site(health_check={"path": "/up"})))
        self.assertEqual(config.sites[0].health_check, HealthCheck("/up", 10.0))


class TunnelConfigTests(ParseTestCase):
    """
    Tests for the keys of Upgrade tunnels (WebSocket and others):
    C{upgrade_protocols}, C{tunnel_idle_timeout_secs}, C{max_tunnels} and
    C{tunnel_drain_secs}, set in C{[defaults]} or per site.
    """

    def test_defaults(self) -> None:
        """
        Without the keys (and in a L{SiteConfig} built without them), a site
        tunnels WebSocket only, closes a tunnel idle for an hour, allows
        10000 tunnels and drains for 30 seconds.
        """
        expected = (("websocket",), 3600.0, 10000, 30.0)
        config = parseConfig(document())
        built = SiteConfig(name="x", hosts=(), upstreams=())
        for limits in (Defaults(), built, config.defaults, config.sites[0]):
            self.assertEqual(
                (
                    limits.upgrade_protocols,
                    limits.tunnel_idle_timeout_secs,
                    limits.max_tunnels,
                    limits.tunnel_drain_secs,
                ),
                expected,
            )
        self.assertIsInstance(config.sites[0].tunnel_idle_timeout_secs, float)
        self.assertIsInstance(config.sites[0].tunnel_drain_secs, float)

    def test_inheritedAndOverridden(self) -> None:
        """
        A site without the keys inherits those of C{[defaults]}; a site's own
        value wins, key by key.
        """
        config = parseConfig(
            document(
                site(),
                site(
                    name="b",
                    hosts=["b.example"],
                    upgrade_protocols=["websocket", "h2"],
                    max_tunnels=7,
                ),
                site(
                    name="c",
                    hosts=["c.example"],
                    tunnel_idle_timeout_secs=0.5,
                    tunnel_drain_secs=0,
                ),
                defaults={
                    "upgrade_protocols": ["tls"],
                    "tunnel_idle_timeout_secs": 60,
                    "max_tunnels": 100,
                    "tunnel_drain_secs": 5,
                },
            )
        )
        self.assertEqual(
            (
                config.defaults.upgrade_protocols,
                config.defaults.tunnel_idle_timeout_secs,
                config.defaults.max_tunnels,
                config.defaults.tunnel_drain_secs,
            ),
            (("tls",), 60.0, 100, 5.0),
        )
        self.assertEqual(
            [
                (
                    s.upgrade_protocols,
                    s.tunnel_idle_timeout_secs,
                    s.max_tunnels,
                    s.tunnel_drain_secs,
                )
                for s in config.sites
            ],
            [
                (("tls",), 60.0, 100, 5.0),
                (("websocket", "h2"), 60.0, 7, 5.0),
                (("tls",), 0.5, 100, 0.0),
            ],
        )

    def test_emptyList(self) -> None:
        """
        An empty C{upgrade_protocols} is valid: no upgrade is tunnelled for
        that site, even when C{[defaults]} names some.
        """
        config = parseConfig(
            document(
                site(upgrade_protocols=[]),
                defaults={"upgrade_protocols": ["websocket", "foo"]},
            )
        )
        self.assertEqual(config.sites[0].upgrade_protocols, ())
        config = parseConfig(document(defaults={"upgrade_protocols": []}))
        self.assertEqual(config.defaults.upgrade_protocols, ())
        self.assertEqual(config.sites[0].upgrade_protocols, ())

    def test_caseFolded(self) -> None:
        """
        Protocol names are compared case-insensitively and kept lowercased,
        in the order given; any RFC 9110 token character is allowed.
        """
        config = parseConfig(
            document(
                site(upgrade_protocols=["WebSocket", "My-Proto_1.0", "a!#$%&'*+^`|~"])
            )
        )
        self.assertEqual(
            config.sites[0].upgrade_protocols,
            ("websocket", "my-proto_1.0", "a!#$%&'*+^`|~"),
        )

    def test_duplicates(self) -> None:
        """
        The same protocol twice, in any case, is an error naming both
        indexes.
        """
        self.assertErrors(
            document(
                site(upgrade_protocols=["websocket", "foo", "WEBSOCKET", "Foo"]),
                defaults={"upgrade_protocols": ["a", "a"]},
            ),
            'defaults.upgrade_protocols[1]: duplicate protocol "a" '
            "(also upgrade_protocols[0])",
            'sites[0].upgrade_protocols[2]: duplicate protocol "websocket" '
            "(also upgrade_protocols[0])",
            'sites[0].upgrade_protocols[3]: duplicate protocol "foo" '
            "(also upgrade_protocols[1])",
        )

    def test_h2cRefused(self) -> None:
        """
        C{h2c}, in any case, is refused, and the error says why.
        """
        smuggling = (
            "is refused: an h2c upgrade is a known way past a proxy's checks "
            "(request smuggling: the tunnel carries HTTP/2 requests that "
            "revproxy never reads); revproxy serves HTTP/2 itself (server.http2)"
        )
        self.assertErrors(
            document(
                site(upgrade_protocols=["websocket", "H2C"]),
                defaults={"upgrade_protocols": ["h2c"]},
            ),
            f'defaults.upgrade_protocols[0]: "h2c" {smuggling}',
            f'sites[0].upgrade_protocols[1]: "H2C" {smuggling}',
        )

    def test_versionRefused(self) -> None:
        """
        A protocol is named without its version: a C{/} is an error.
        """
        self.assertErrors(
            document(site(upgrade_protocols=["websocket/13", "/2"])),
            'sites[0].upgrade_protocols[0]: "websocket/13" has a version; give '
            'the protocol name only (such as "websocket")',
            'sites[0].upgrade_protocols[1]: "/2" has a version; give the '
            'protocol name only (such as "websocket")',
        )

    def test_badToken(self) -> None:
        """
        A protocol name is an RFC 9110 token: not empty, no spaces,
        separators or non-ASCII letters; and the list is of strings.
        """
        problem = (
            "is not a protocol name (an RFC 9110 token: letters, digits and "
            "!#$%&'*+-.^_`|~)"
        )
        self.assertErrors(
            document(
                site(upgrade_protocols=["", "web socket", "a,b", "wébsocket", 1]),
                defaults={"upgrade_protocols": "websocket"},
            ),
            'defaults.upgrade_protocols: expected an array, got string "websocket"',
            "sites[0].upgrade_protocols[4]: expected a string, got integer 1",
            f'sites[0].upgrade_protocols[0]: "" {problem}',
            f'sites[0].upgrade_protocols[1]: "web socket" {problem}',
            f'sites[0].upgrade_protocols[2]: "a,b" {problem}',
            f'sites[0].upgrade_protocols[3]: "wébsocket" {problem}',
        )

    def test_tunnelIdleTimeoutRange(self) -> None:
        """
        C{tunnel_idle_timeout_secs} is above 0 and at most 7 days.
        """
        self.assertErrors(
            document(
                site(tunnel_idle_timeout_secs=0),
                site(name="b", hosts=["b.example"], tunnel_idle_timeout_secs=604800.5),
                defaults={"tunnel_idle_timeout_secs": -1},
            ),
            "defaults.tunnel_idle_timeout_secs: must be greater than 0 and at "
            "most 604800, got -1",
            "sites[0].tunnel_idle_timeout_secs: must be greater than 0 and at "
            "most 604800, got 0",
            "sites[1].tunnel_idle_timeout_secs: must be greater than 0 and at "
            "most 604800, got 604800.5",
        )
        config = parseConfig(
            document(
                site(tunnel_idle_timeout_secs=604800),
                site(name="b", hosts=["b.example"], tunnel_idle_timeout_secs=0.001),
            )
        )
        self.assertEqual(
            [s.tunnel_idle_timeout_secs for s in config.sites], [604800.0, 0.001]
        )

    def test_maxTunnelsRange(self) -> None:
        """
        C{max_tunnels} is an integer from 0 (no tunnel) to ten million.
        """
        self.assertErrors(
            document(
                site(max_tunnels=-1),
                site(name="b", hosts=["b.example"], max_tunnels=10**7 + 1),
                site(name="c", hosts=["c.example"], max_tunnels=5.0),
                defaults={"max_tunnels": -5},
            ),
            "defaults.max_tunnels: must be between 0 and 10000000, got -5",
            "sites[0].max_tunnels: must be between 0 and 10000000, got -1",
            "sites[1].max_tunnels: must be between 0 and 10000000, got 10000001",
            "sites[2].max_tunnels: expected an integer, got float 5",
        )
        config = parseConfig(
            document(
                site(max_tunnels=0),
                site(name="b", hosts=["b.example"], max_tunnels=10**7),
            )
        )
        self.assertEqual([s.max_tunnels for s in config.sites], [0, 10**7])

    def test_tunnelDrainRange(self) -> None:
        """
        C{tunnel_drain_secs} is from 0 to an hour.
        """
        self.assertErrors(
            document(
                site(tunnel_drain_secs=-0.5),
                site(name="b", hosts=["b.example"], tunnel_drain_secs=3601),
                defaults={"tunnel_drain_secs": math.inf},
            ),
            "defaults.tunnel_drain_secs: expected a finite number, got float inf",
            "sites[0].tunnel_drain_secs: must be between 0 and 3600, got -0.5",
            "sites[1].tunnel_drain_secs: must be between 0 and 3600, got 3601",
        )
        config = parseConfig(
            document(
                site(tunnel_drain_secs=0),
                site(name="b", hosts=["b.example"], tunnel_drain_secs=3600),
            )
        )
        self.assertEqual([s.tunnel_drain_secs for s in config.sites], [0.0, 3600.0])

    def test_unknownKeyNearTunnelKeys(self) -> None:
        """
        A misspelt tunnel key is still an unknown key, with a suggestion.
        """
        self.assertErrors(
            document(site(max_tunnel=5)),
            'sites[0].max_tunnel: unknown key (did you mean "max_tunnels"?)',
        )


class SiteTests(ParseTestCase):
    """
    Tests for C{[[sites]]}.
    """

    def test_sitesRequired(self) -> None:
        """
        A config has at least one site.
        """
        self.assertErrors(
            "[server]\n", "sites: at least one [[sites]] table is required"
        )
        self.assertErrors(
            "sites = []\n", "sites: at least one [[sites]] table is required"
        )

    def test_sitesIsArrayOfTables(self) -> None:
        """
        C{sites} written as C{[sites]} rather than C{[[sites]]} is an error.
        """
        self.assertErrors(
            "[sites]\nname = 'a'\n",
            "sites: expected an array of tables ([[sites]]), got table",
        )
        self.assertErrors(
            "sites = [1]\n",
            "sites: expected an array of tables ([[sites]]), got array",
        )

    def test_nameRequired(self) -> None:
        """
        Every site has a name.
        """
        entry = site()
        del entry["name"]
        self.assertErrors(document(entry), "sites[0].name: required")

    def test_nameSyntax(self) -> None:
        """
        A site name is 1 to 64 letters, digits, C{_}, C{.} or C{-}.
        """
        self.assertErrors(
            document(site(name=""), site(name="a/b", hosts=["b.example"])),
            "sites[0].name: \"\" must be 1-64 letters, digits, '_', '.' or '-'",
            "sites[1].name: \"a/b\" must be 1-64 letters, digits, '_', '.' or '-'",
        )

    def test_nameNoLeadingDot(self) -> None:
        """
        A site name does not start with C{.}: it names a directory under
        C{state_dir}, and C{..} would climb out of it.
        """
        self.assertErrors(
            document(
                site(name=".."),
                site(name=".hidden", hosts=["b.example"]),
                site(name="a.b", hosts=["c.example"]),
            ),
            "sites[0].name: \"..\" must not start with '.'",
            "sites[1].name: \".hidden\" must not start with '.'",
        )

    def test_duplicateName(self) -> None:
        """
        Two sites with the same name are an error naming both.
        """
        self.assertErrors(
            document(
                site(),
                site(name="b", hosts=["b.example"]),
                site(hosts=["c.example"]),
            ),
            'sites[2].name: duplicate site name "app" (also sites[0])',
        )

    def test_hostsNormalized(self) -> None:
        """
        Hosts are lowercased, IDN encoded to punycode, trailing dots dropped,
        IPv6 brackets removed.
        """
        config = parseConfig(
            document(
                site(
                    hosts=[
                        "WWW.Example.COM.",
                        "bücher.example",
                        "*.Bücher.example",
                        "xn--zca.de",
                        "127.0.0.1",
                        "[::1]",
                        "2001:DB8::0:1",
                        "localhost",
                    ]
                )
            )
        )
        self.assertEqual(
            config.sites[0].hosts,
            (
                "www.example.com",
                "xn--bcher-kva.example",
                "*.xn--bcher-kva.example",
                "xn--zca.de",
                "127.0.0.1",
                "::1",
                "2001:db8::1",
                "localhost",
            ),
        )

    def test_invalidHosts(self) -> None:
        """
        Each invalid host is an error with its index.
        """
        errors = self.errorsOf(
            document(
                site(
                    hosts=[
                        "a.*.example",
                        "*",
                        "example.com:8080",
                        "http://example.com/",
                        "under_score.example",
                        "-a.example",
                        "a" * 64 + ".example",
                        ".".join(["a" * 60] * 5),
                        "a..example",
                        "1.2.3.256",
                        "[1.2.3.4]",
                        "",
                    ]
                )
            )
        )
        self.assertEqual(
            [e.split(":", 1)[0] for e in errors],
            [f"sites[0].hosts[{i}]" for i in range(12)],
        )
        self.assertEqual(
            errors[0],
            'sites[0].hosts[0]: "a.*.example" is not a valid hostname: a wildcard '
            'is only allowed as the whole first label, as in "*.example.com"',
        )
        self.assertEqual(
            errors[1],
            'sites[0].hosts[1]: "*" is not a valid host; to catch every other '
            "host, set default = true",
        )
        self.assertEqual(
            errors[2],
            'sites[0].hosts[2]: "example.com:8080" is not a valid hostname (hosts '
            "are matched without a port)",
        )
        self.assertIn("Domain too long", errors[7])
        self.assertIn("its last label is all digits", errors[9])

    def test_hostsRequired(self) -> None:
        """
        A site that is not the default needs at least one host.
        """
        entry = site()
        del entry["hosts"]
        self.assertErrors(
            document(entry, site(name="b", hosts=[])),
            "sites[0].hosts: required (a list of hostnames) unless default = true",
            "sites[1].hosts: must not be empty unless default = true",
        )

    def test_defaultSiteWithoutHosts(self) -> None:
        """
        The default site may have no hosts.
        """
        entry = site(default=True)
        del entry["hosts"]
        config = parseConfig(document(entry, site(name="b", hosts=["b.example"])))
        self.assertEqual(config.sites[0].hosts, ())
        self.assertTrue(config.sites[0].default)

    def test_onlyOneDefault(self) -> None:
        """
        At most one site is the default.
        """
        self.assertErrors(
            document(
                site(default=True),
                site(name="b", hosts=["b.example"]),
                site(name="c", hosts=[], default=True),
            ),
            "sites[2].default: only one site may have default = true (also sites[0])",
        )

    def test_hostClaimedTwice(self) -> None:
        """
        A host in two sites, after normalization, is an error naming both.
        """
        self.assertErrors(
            document(
                site(hosts=["bücher.example"]),
                site(name="b", hosts=["b.example", "XN--BCHER-KVA.example."]),
            ),
            'sites[1].hosts[1]: host "xn--bcher-kva.example" is already claimed by '
            'sites[0] ("app")',
        )

    def test_duplicateHostInSite(self) -> None:
        """
        The same host twice in one site is an error.
        """
        self.assertErrors(
            document(site(hosts=["a.example", "A.example."])),
            'sites[0].hosts[1]: duplicate host "a.example" (also hosts[0])',
        )

    def test_upstreamsNormalized(self) -> None:
        """
        Upstream URLs get their default port and lose their trailing slash.
        """
        config = parseConfig(
            document(
                site(
                    upstreams=[
                        "http://backend",
                        "HTTPS://Backend.Internal/",
                        "http://[::1]:8000",
                        "https://10.0.0.1:9443",
                        "http://bücher.example:81",
                    ]
                )
            )
        )
        self.assertEqual(
            config.sites[0].upstreams,
            (
                Upstream("http://backend:80", "http", "backend", 80),
                Upstream(
                    "https://backend.internal:443", "https", "backend.internal", 443
                ),
                Upstream("http://[::1]:8000", "http", "::1", 8000),
                Upstream("https://10.0.0.1:9443", "https", "10.0.0.1", 9443),
                Upstream(
                    "http://xn--bcher-kva.example:81",
                    "http",
                    "xn--bcher-kva.example",
                    81,
                ),
            ),
        )

    def test_badUpstreams(self) -> None:
        """
        Each upstream is an http(s) URL with a host and nothing but a port.
        """
        self.assertErrors(
            document(
                site(
                    upstreams=[
                        "htp://x",
                        "10.0.0.1:8000",
                        "http://user:pw@x",
                        "http://",
                        "http://x/api",
                        "http://x/?a=1",
                        "http://x:0",
                        "http://x:65536",
                        "http://x y",
                        "http://*.x",
                    ]
                )
            ),
            'sites[0].upstreams[0]: "htp://x" is not an http(s) URL',
            'sites[0].upstreams[1]: "10.0.0.1:8000" is not an http(s) URL',
            'sites[0].upstreams[2]: "http://user:pw@x": an upstream URL must not '
            "contain user info",
            'sites[0].upstreams[3]: "http://": the URL has no host',
            'sites[0].upstreams[4]: "http://x/api": an upstream URL must not have a '
            'path (got "/api"); the request path is forwarded as it is',
            'sites[0].upstreams[5]: "http://x/?a=1": an upstream URL must not have '
            "a query or fragment",
            'sites[0].upstreams[6]: "http://x:0": the port must be between 1 and 65535',
            'sites[0].upstreams[7]: "http://x:65536" is not an http(s) URL: Port out '
            "of range 0-65535",
            'sites[0].upstreams[8]: "http://x y" is not an http(s) URL: it contains '
            "whitespace",
            'sites[0].upstreams[9]: "*.x": a wildcard is not allowed here',
        )

    def test_upstreamsRequired(self) -> None:
        """
        Every site has at least one upstream.
        """
        entry = site()
        del entry["upstreams"]
        self.assertErrors(
            document(entry, site(name="b", hosts=["b.example"], upstreams=[])),
            'sites[0].upstreams: required (a list of URLs like "http://10.0.0.1:8000"), '
            + _ALTERNATIVES,
            "sites[1].upstreams: must not be empty, " + _ALTERNATIVES,
        )

    def test_duplicateUpstream(self) -> None:
        """
        The same upstream twice in a site, after normalization, is an error.
        """
        self.assertErrors(
            document(site(upstreams=["http://a", "http://A:80/"])),
            'sites[0].upstreams[1]: duplicate upstream "http://a:80" (also '
            "upstreams[0])",
        )


class TLSTests(ParseTestCase):
    """
    Tests for the C{tls} of sites and what it needs.
    """

    acme = {"email": "ops@example.com"}

    def test_choice(self) -> None:
        """
        C{tls} is C{"acme"}, C{"files"} or C{"none"}.
        """
        self.assertErrors(
            document(site(tls="yes")),
            'sites[0].tls: "yes" is not one of "acme", "files", "none"',
        )

    def test_filesNeedsCertAndKey(self) -> None:
        """
        C{tls = "files"} requires C{cert_file} and C{key_file}.
        """
        self.assertErrors(
            document(site(tls="files", key_file="")),
            'sites[0].cert_file: required when tls = "files"',
            'sites[0].key_file: required when tls = "files"',
        )

    def test_filesOnlyWithFiles(self) -> None:
        """
        C{cert_file} and C{key_file} are errors unless C{tls = "files"}.
        """
        self.assertErrors(
            document(site(cert_file="c.pem", key_file="k.pem")),
            'sites[0].cert_file: only used with tls = "files" (this site has tls = '
            '"none")',
            'sites[0].key_file: only used with tls = "files" (this site has tls = '
            '"none")',
        )

    def test_acmeWildcard(self) -> None:
        """
        A wildcard host cannot get a certificate over ACME.
        """
        self.assertErrors(
            document(
                site(tls="acme", hosts=["a.example", "*.a.example"]), acme=self.acme
            ),
            "sites[0].hosts[1]: wildcard hosts need DNS-01, which revproxy does not "
            'do; use tls = "files"',
        )

    def test_acmeNeedsEmail(self) -> None:
        """
        A site with C{tls = "acme"} needs C{acme.email}.
        """
        self.assertErrors(
            document(site(tls="acme")),
            'acme.email: required when a site uses tls = "acme"',
        )
        self.assertErrors(
            document(site(tls="acme"), acme={"email": ""}),
            'acme.email: required when a site uses tls = "acme"',
        )

    def test_emailLooksLikeEmail(self) -> None:
        """
        C{acme.email} must look like an email address, and is then not also
        reported as missing.
        """
        self.assertErrors(
            document(site(tls="acme"), acme={"email": "ops"}),
            'acme.email: "ops" does not look like an email address',
        )
        self.assertErrors(
            document(site(tls="acme"), acme={"email": 5}),
            "acme.email: expected a string, got integer 5",
        )

    def test_acmeNeedsHost(self) -> None:
        """
        A default site without hosts cannot get a certificate over ACME.
        """
        self.assertErrors(
            document(site(tls="acme", hosts=[], default=True), acme=self.acme),
            'sites[0].tls: tls = "acme" needs at least one host to get a certificate '
            "for",
        )

    def test_tlsNeedsHTTPSListener(self) -> None:
        """
        A site with TLS needs an HTTPS listener.
        """
        self.assertErrors(
            document(
                site(tls="files", cert_file="c", key_file="k"),
                server={"listen_https": []},
            ),
            'sites[0].tls: tls = "files" needs server.listen_https, which is empty',
        )

    def test_redirectNeedsTLS(self) -> None:
        """
        Redirecting to HTTPS needs TLS.
        """
        self.assertErrors(
            document(site(redirect_http=True)),
            'sites[0].redirect_http: needs tls = "acme" or "files"',
        )

    def test_http01NeedsHTTPListener(self) -> None:
        """
        The http-01 challenge needs a plain HTTP listener.
        """
        self.assertErrors(
            document(site(tls="acme"), acme=self.acme, server={"listen_http": []}),
            'acme.challenge: "http-01" needs server.listen_http, which is empty (or '
            'use "tls-alpn-01")',
        )
        config = parseConfig(
            document(
                site(tls="acme"),
                acme={**self.acme, "challenge": "tls-alpn-01"},
                server={"listen_http": []},
            )
        )
        self.assertEqual(config.acme.challenge, "tls-alpn-01")

    def test_relativeCertPaths(self) -> None:
        """
        Relative certificate and key paths are resolved against the base
        directory; absolute ones are kept.
        """
        config = parseConfig(
            document(site(tls="files", cert_file="../c.pem", key_file="/k/k.pem")),
            baseDir="/etc/revproxy",
        )
        self.assertEqual(config.sites[0].cert_file, "/etc/c.pem")
        self.assertEqual(config.sites[0].key_file, "/k/k.pem")


class ServerTLSSettingsTests(ParseTestCase):
    """
    Tests for C{server.tls_min_version} and C{server.http2}.
    """

    def test_defaults(self) -> None:
        """
        Without the keys, the minimum TLS version is 1.2 and HTTP/2 is
        offered.
        """
        server = parseConfig(document(server={})).server
        self.assertEqual((server.tls_min_version, server.http2), ("1.2", True))

    def test_validValues(self) -> None:
        """
        C{tls_min_version} may be C{"1.2"} or C{"1.3"}, and C{http2} may be
        turned off.
        """
        for version in ("1.2", "1.3"):
            for http2 in (True, False):
                server = parseConfig(
                    document(server={"tls_min_version": version, "http2": http2})
                ).server
                self.assertEqual(
                    (server.tls_min_version, server.http2), (version, http2)
                )

    def test_tlsMinVersionChoices(self) -> None:
        """
        Another version, or a number instead of a string, is an error that
        lists the choices or names the type.
        """
        self.assertErrors(
            document(server={"tls_min_version": "1.1"}),
            'server.tls_min_version: "1.1" is not one of "1.2", "1.3"',
        )
        self.assertErrors(
            document(server={"tls_min_version": "TLSv1.3"}),
            'server.tls_min_version: "TLSv1.3" is not one of "1.2", "1.3"',
        )
        self.assertErrors(
            document(server={"tls_min_version": 1.3}),
            "server.tls_min_version: expected a string, got float 1.3",
        )

    def test_http2Boolean(self) -> None:
        """
        C{http2} is C{true} or C{false}.
        """
        self.assertErrors(
            document(server={"http2": "yes"}),
            'server.http2: expected true or false, got string "yes"',
        )
        self.assertErrors(
            document(server={"http2": 1}),
            "server.http2: expected true or false, got integer 1",
        )

    def test_serverKeysNotInSites(self) -> None:
        """
        The two keys belong in C{[server]}; written in a site they are
        unknown keys that say where they belong.
        """
        self.assertErrors(
            document(site(tls_min_version="1.3", http2=False)),
            "sites[0].tls_min_version: unknown key (it belongs in [server])",
            "sites[0].http2: unknown key (it belongs in [server])",
        )


class WorkersTests(ParseTestCase):
    """
    Tests for C{server.workers}: a count from 1 to 256, or C{"auto"}.
    """

    def test_default(self) -> None:
        """
        Without the key, there is one process, not written as C{"auto"}.
        """
        for text in (document(), document(server={})):
            server = parseConfig(text).server
            self.assertEqual((server.workers, server.workers_auto), (1, False))

    def test_count(self) -> None:
        """
        An integer is the count of workers, from 1 to 256.
        """
        for count in (1, 4, 256):
            server = parseConfig(document(server={"workers": count})).server
            self.assertEqual((server.workers, server.workers_auto), (count, False))

    def test_auto(self) -> None:
        """
        C{"auto"} is resolved at parse time to the usable cores,
        C{len(os.sched_getaffinity(0))}, and remembered as written.
        """
        server = parseConfig(document(server={"workers": "auto"})).server
        self.assertEqual(
            (server.workers, server.workers_auto),
            (min(len(os.sched_getaffinity(0)), 256), True),
        )

    def test_autoAffinity(self) -> None:
        """
        C{"auto"} counts the cores the process may run on, not all of them.
        """
        self.patch(os, "sched_getaffinity", lambda pid: {0, 2, 5})
        self.patch(os, "cpu_count", lambda: 64)
        self.assertEqual(
            parseConfig(document(server={"workers": "auto"})).server.workers, 3
        )

    def test_autoWithoutAffinity(self) -> None:
        """
        Where C{os.sched_getaffinity} does not exist, C{"auto"} is
        C{os.cpu_count()}, or 1 when that is unknown.
        """
        self.patch(os, "sched_getaffinity", None)
        for cpus, expected in ((6, 6), (None, 1)):
            self.patch(os, "cpu_count", lambda cpus=cpus: cpus)
            server = parseConfig(document(server={"workers": "auto"})).server
            self.assertEqual((server.workers, server.workers_auto), (expected, True))

    def test_autoCapped(self) -> None:
        """
        C{"auto"} on a machine with more than 256 usable cores is 256.
        """
        self.patch(os, "sched_getaffinity", lambda pid: set(range(300)))
        self.assertEqual(
            parseConfig(document(server={"workers": "auto"})).server.workers, 256
        )

    def test_outOfRange(self) -> None:
        """
        A count outside 1 to 256 is one error naming the key, the range and
        C{"auto"}.
        """
        for count in (0, 257, -1):
            self.assertErrors(
                document(server={"workers": count}),
                f'server.workers: must be between 1 and 256 or "auto", got {count}',
            )

    def test_wrongType(self) -> None:
        """
        A boolean, a float or another string is one error naming the key and
        the value.
        """
        for value, described in (
            (True, "boolean true"),
            (1.5, "float 1.5"),
            (4.0, "float 4"),
            ("many", 'string "many"'),
            ("AUTO", 'string "AUTO"'),
            ([4], "array"),
        ):
            self.assertErrors(
                document(server={"workers": value}),
                f'server.workers: expected an integer or "auto", got {described}',
            )

    def test_onlyInServer(self) -> None:
        """
        Written in a site, C{workers} is an unknown key that says where it
        belongs.
        """
        self.assertErrors(
            document(site(workers=4)),
            "sites[0].workers: unknown key (it belongs in [server])",
        )


class HSTSTests(ParseTestCase):
    """
    Tests for a site's C{hsts_max_age_secs}.
    """

    https = {"listen_https": ["tcp:443"]}

    def test_defaultZero(self) -> None:
        """
        Without the key, HSTS is off (0).
        """
        self.assertEqual(parseConfig(document()).sites[0].hsts_max_age_secs, 0)

    def test_withTLS(self) -> None:
        """
        A site with TLS (files or ACME) may send HSTS, up to 2**31 - 1
        seconds.
        """
        for value in (1, 31536000, 2**31 - 1):
            config = parseConfig(
                document(
                    site(
                        tls="files",
                        cert_file="c",
                        key_file="k",
                        hsts_max_age_secs=value,
                    ),
                    server=self.https,
                )
            )
            self.assertEqual(config.sites[0].hsts_max_age_secs, value)
        config = parseConfig(
            document(
                site(tls="acme", hsts_max_age_secs=63072000),
                acme={"email": "ops@example.com"},
            )
        )
        self.assertEqual(config.sites[0].hsts_max_age_secs, 63072000)

    def test_zeroWithoutTLS(self) -> None:
        """
        An explicit 0 (HSTS off) is fine on a site without TLS.
        """
        config = parseConfig(document(site(hsts_max_age_secs=0)))
        self.assertEqual(config.sites[0].hsts_max_age_secs, 0)

    def test_needsTLS(self) -> None:
        """
        HSTS on a site without TLS is an error: it is only sent over HTTPS.
        """
        self.assertErrors(
            document(
                site(), site(name="b", hosts=["b.example"], hsts_max_age_secs=300)
            ),
            'sites[1].hsts_max_age_secs: needs tls = "acme" or "files" (HSTS is only '
            "sent over HTTPS)",
        )

    def test_range(self) -> None:
        """
        The value is an integer between 0 and 2**31 - 1.
        """
        for value, error in [
            (-1, "must be between 0 and 2147483647, got -1"),
            (2**31, "must be between 0 and 2147483647, got 2147483648"),
            (1.5, "expected an integer, got float 1.5"),
            (True, "expected an integer, got boolean true"),
            ("1y", 'expected an integer, got string "1y"'),
        ]:
            self.assertErrors(
                document(
                    site(
                        tls="files",
                        cert_file="c",
                        key_file="k",
                        hsts_max_age_secs=value,
                    ),
                    server=self.https,
                ),
                f"sites[0].hsts_max_age_secs: {error}",
            )

    def test_misspelled(self) -> None:
        """
        A misspelled key suggests C{hsts_max_age_secs}; in C{[server]} it is
        said to belong in C{[[sites]]}.
        """
        self.assertErrors(
            document(site(hsts_max_age=1)),
            'sites[0].hsts_max_age: unknown key (did you mean "hsts_max_age_secs"?)',
        )
        self.assertErrors(
            document(server={"hsts_max_age_secs": 1}),
            "server.hsts_max_age_secs: unknown key (it belongs in [[sites]])",
        )


class StrictSNIHostTests(ParseTestCase):
    """
    Tests for a site's C{strict_sni_host}.
    """

    https = {"listen_https": ["tcp:443"]}
    files = {"tls": "files", "cert_file": "c", "key_file": "k"}

    def test_defaultTrueWithTLS(self) -> None:
        """
        Without the key, a site with TLS (files or ACME) is strict.
        """
        config = parseConfig(document(site(**self.files), server=self.https))
        self.assertIs(config.sites[0].strict_sni_host, True)
        config = parseConfig(
            document(site(tls="acme"), acme={"email": "ops@example.com"})
        )
        self.assertIs(config.sites[0].strict_sni_host, True)

    def test_falseWithoutTLS(self) -> None:
        """
        A site without TLS is never strict: it is not served over HTTPS.
        """
        self.assertIs(parseConfig(document()).sites[0].strict_sni_host, False)

    def test_set(self) -> None:
        """
        A site with TLS takes C{true} or C{false}.
        """
        for value in (True, False):
            config = parseConfig(
                document(site(strict_sni_host=value, **self.files), server=self.https)
            )
            self.assertIs(config.sites[0].strict_sni_host, value)

    def test_needsTLS(self) -> None:
        """
        Setting it, to either value, on a site without TLS is an error
        naming the key: it could never take effect.
        """
        for value in (True, False):
            self.assertErrors(
                document(
                    site(),
                    site(name="b", hosts=["b.example"], strict_sni_host=value),
                ),
                'sites[1].strict_sni_host: only used with tls = "acme" or '
                '"files" (this site has tls = "none")',
            )

    def test_notBoolean(self) -> None:
        """
        The value is a boolean.
        """
        for value, shown in [(1, "integer 1"), ("yes", 'string "yes"')]:
            self.assertErrors(
                document(site(strict_sni_host=value, **self.files), server=self.https),
                f"sites[0].strict_sni_host: expected true or false, got {shown}",
            )

    def test_misspelled(self) -> None:
        """
        A misspelled key suggests C{strict_sni_host}.
        """
        self.assertErrors(
            document(site(strict_sni=True, **self.files), server=self.https),
            'sites[0].strict_sni: unknown key (did you mean "strict_sni_host"?)',
        )


class UpstreamTLSTests(ParseTestCase):
    """
    Tests for a site's C{upstream_ca_file} and C{upstream_tls_verify}.
    """

    httpsUpstreams = ["https://10.0.0.1:8443", "https://backend.internal"]

    def test_defaults(self) -> None:
        """
        Without the keys, upstream certificates are verified against the
        system store.
        """
        [entry] = parseConfig(document(site(upstreams=self.httpsUpstreams))).sites
        self.assertEqual(
            (entry.upstream_ca_file, entry.upstream_tls_verify), ("", True)
        )
        [plain] = parseConfig(document()).sites
        self.assertEqual(
            (plain.upstream_ca_file, plain.upstream_tls_verify), ("", True)
        )

    def test_caFileResolved(self) -> None:
        """
        A relative C{upstream_ca_file} is resolved against the base
        directory like C{cert_file}; an absolute one is kept.
        """
        config = parseConfig(
            document(
                site(upstreams=self.httpsUpstreams, upstream_ca_file="ca/internal.pem"),
                site(
                    name="b",
                    hosts=["b.example"],
                    upstreams=["https://10.0.0.2"],
                    upstream_ca_file="/srv/ca.pem",
                ),
                site(
                    name="c",
                    hosts=["c.example"],
                    upstreams=["https://10.0.0.3"],
                    upstream_ca_file="../ca.pem",
                ),
            ),
            baseDir="/etc/revproxy",
        )
        self.assertEqual(
            [s.upstream_ca_file for s in config.sites],
            ["/etc/revproxy/ca/internal.pem", "/srv/ca.pem", "/etc/ca.pem"],
        )
        self.assertEqual([s.upstream_tls_verify for s in config.sites], [True] * 3)

    def test_caFileKeptWithoutBaseDir(self) -> None:
        """
        Without a base directory, a relative C{upstream_ca_file} is kept as
        written.
        """
        config = parseConfig(
            document(site(upstreams=self.httpsUpstreams, upstream_ca_file="ca.pem"))
        )
        self.assertEqual(config.sites[0].upstream_ca_file, "ca.pem")

    def test_mixedUpstreams(self) -> None:
        """
        One https:// upstream among http:// ones is enough for the keys.
        """
        config = parseConfig(
            document(
                site(
                    upstreams=["http://10.0.0.1", "https://10.0.0.2"],
                    upstream_ca_file="/ca.pem",
                    upstream_tls_verify=True,
                )
            )
        )
        self.assertEqual(config.sites[0].upstream_ca_file, "/ca.pem")

    def test_verifyOff(self) -> None:
        """
        C{upstream_tls_verify = false} turns verification off for a site
        with https:// upstreams.
        """
        config = parseConfig(
            document(site(upstreams=self.httpsUpstreams, upstream_tls_verify=False))
        )
        self.assertIs(config.sites[0].upstream_tls_verify, False)

    def test_onlyWithHTTPSUpstreams(self) -> None:
        """
        Either key on a site whose upstreams are all http:// is an error, even
        C{upstream_tls_verify = true}.
        """
        self.assertErrors(
            document(site(upstream_ca_file="/ca.pem")),
            "sites[0].upstream_ca_file: only used with https:// upstreams",
        )
        for verify in (True, False):
            self.assertErrors(
                document(
                    site(),
                    site(name="b", hosts=["b.example"], upstream_tls_verify=verify),
                ),
                "sites[1].upstream_tls_verify: only used with https:// upstreams",
            )
        self.assertErrors(
            document(site(upstream_ca_file="/ca.pem", upstream_tls_verify=False)),
            "sites[0].upstream_ca_file: only used with https:// upstreams",
            "sites[0].upstream_tls_verify: only used with https:// upstreams",
        )

    def test_caFileWithVerifyOff(self) -> None:
        """
        A CA file with verification off is a contradiction, reported on the
        CA file.
        """
        self.assertErrors(
            document(
                site(
                    upstreams=self.httpsUpstreams,
                    upstream_ca_file="/ca.pem",
                    upstream_tls_verify=False,
                )
            ),
            "sites[0].upstream_ca_file: has no effect with upstream_tls_verify = "
            "false; remove one of them",
        )

    def test_types(self) -> None:
        """
        C{upstream_ca_file} is a string and C{upstream_tls_verify} a boolean.
        """
        self.assertErrors(
            document(
                site(
                    upstreams=self.httpsUpstreams,
                    upstream_ca_file=5,
                    upstream_tls_verify="no",
                )
            ),
            "sites[0].upstream_ca_file: expected a string, got integer 5",
            'sites[0].upstream_tls_verify: expected true or false, got string "no"',
        )


class AcmeTests(ParseTestCase):
    """
    Tests for C{[acme]}.
    """

    def test_directoryURL(self) -> None:
        """
        The directory is an https URL, or http on loopback for tests.
        """
        self.assertErrors(
            document(acme={"directory_url": "http://ca.example/dir"}),
            'acme.directory_url: "http://ca.example/dir" must be an https:// URL '
            "(http:// only for 127.0.0.1 or localhost)",
        )
        self.assertErrors(
            document(acme={"directory_url": "ca.example"}),
            'acme.directory_url: "ca.example" must be an https:// URL (http:// only '
            "for 127.0.0.1 or localhost)",
        )
        for url in ("https://127.0.0.1:14000/dir", "http://localhost:4001/directory"):
            config = parseConfig(document(acme={"directory_url": url}))
            self.assertEqual(config.acme.directory_url, url)

    def test_choices(self) -> None:
        """
        C{challenge} and C{key_type} are each one of a few values.
        """
        self.assertErrors(
            document(acme={"challenge": "dns-01", "key_type": "rsa4096"}),
            'acme.challenge: "dns-01" is not one of "http-01", "tls-alpn-01"',
            'acme.key_type: "rsa4096" is not one of "ec-p256", "rsa2048"',
        )

    def test_renewBeforeDays(self) -> None:
        """
        C{renew_before_days} is above 0 and below 365.
        """
        self.assertErrors(
            document(acme={"renew_before_days": 0}),
            "acme.renew_before_days: must be greater than 0 and less than 365, got 0",
        )
        self.assertErrors(
            document(acme={"renew_before_days": 365}),
            "acme.renew_before_days: must be greater than 0 and less than 365, got 365",
        )
        config = parseConfig(document(acme={"renew_before_days": 0.5}))
        self.assertEqual(config.acme.renew_before_days, 0.5)


class LoggingAndProxiesTests(ParseTestCase):
    """
    Tests for C{[logging]} and C{server.trusted_proxies}.
    """

    def test_accessLogFormat(self) -> None:
        """
        The access log format is C{"json"} or C{"combined"}.
        """
        self.assertErrors(
            document(logging={"access_log_format": "clf"}),
            'logging.access_log_format: "clf" is not one of "json", "combined"',
        )

    def test_accessLogOff(self) -> None:
        """
        An empty C{access_log} turns the access log off.
        """
        config = parseConfig(document(logging={"access_log": ""}))
        self.assertEqual(config.logging, LoggingConfig("", "json"))

    def test_trustedProxies(self) -> None:
        """
        Trusted proxies are networks; host bits and bare addresses are
        accepted.
        """
        config = parseConfig(
            document(server={"trusted_proxies": ["10.1.2.3/8", "::1", "fd00::/8"]})
        )
        self.assertEqual(
            config.server.trusted_proxies,
            (
                ipaddress.ip_network("10.0.0.0/8"),
                ipaddress.ip_network("::1/128"),
                ipaddress.ip_network("fd00::/8"),
            ),
        )

    def test_badTrustedProxy(self) -> None:
        """
        A trusted proxy that is not a network is an error naming its index.
        """
        self.assertErrors(
            document(server={"trusted_proxies": ["10.0.0.0/8", "10.0.0.0/33", "x"]}),
            'server.trusted_proxies[1]: "10.0.0.0/33" is not an IP address or '
            "network (CIDR)",
            'server.trusted_proxies[2]: "x" is not an IP address or network (CIDR)',
        )

    def test_stateDirRequired(self) -> None:
        """
        The state directory cannot be empty.
        """
        self.assertErrors(
            document(server={"state_dir": ""}), "server.state_dir: must not be empty"
        )


class AllErrorsTests(ParseTestCase):
    """
    Tests that every problem is reported at once.
    """

    def test_allReported(self) -> None:
        """
        Problems in several tables and sites are all reported, in document
        order.
        """
        self.assertErrors(
            document(
                site(upstreams=["htp://x"]),
                site(name="b", hosts=["b.example"], tls="acme", redirect_http=1),
                server={"listen_http": ["tcpp:80"], "shutdown_timeout_secs": "x"},
                logging={"access_log_format": "xml"},
                defaults={"max_body_bytes": 0},
            ),
            'server.listen_http[0]: invalid endpoint "tcpp:80": Unknown endpoint '
            "type: 'tcpp'",
            'server.shutdown_timeout_secs: expected a number, got string "x"',
            'logging.access_log_format: "xml" is not one of "json", "combined"',
            "defaults.max_body_bytes: must be between 1 and 1099511627776, got 0",
            'sites[0].upstreams[0]: "htp://x" is not an http(s) URL',
            "sites[1].redirect_http: expected true or false, got integer 1",
            'acme.email: required when a site uses tls = "acme"',
        )


class LoadConfigTests(SynchronousTestCase):
    """
    Tests for L{loadConfig}.
    """

    def write(self, data: bytes) -> str:
        """
        Write C{data} to a new config file in a new directory; return its
        path.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "config.toml")
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_missingFile(self) -> None:
        """
        A missing file is one error naming the path.
        """
        path = os.path.abspath(self.mktemp())
        error = self.assertRaises(ConfigError, loadConfig, path)
        self.assertEqual(
            error.errors,
            (f"{path}: cannot read the config file: No such file or directory",),
        )

    def test_directory(self) -> None:
        """
        A directory is not a config file.
        """
        path = self.mktemp()
        os.makedirs(path)
        error = self.assertRaises(ConfigError, loadConfig, path)
        self.assertEqual(
            error.errors, (f"{path}: cannot read the config file: Is a directory",)
        )

    def test_notUTF8(self) -> None:
        """
        A file that is not UTF-8 is an error naming the path.
        """
        path = self.write(b"a = '\xff'\n")
        error = self.assertRaises(ConfigError, loadConfig, path)
        self.assertEqual(
            error.errors,
            (f"{path}: the config file is not UTF-8 text (bad byte at offset 5)",),
        )

    def test_pathAndHash(self) -> None:
        """
        A loaded config records its path and the SHA-256 of its bytes, and
        resolves relative paths against the file's directory.
        """
        data = (
            "\ufeff"
            + document(site(tls="files", cert_file="c.pem", key_file="keys/k.pem"))
        ).encode("utf-8")
        path = self.write(data)
        config = loadConfig(path)
        self.assertEqual(config.path, path)
        self.assertEqual(config.source_sha256, hashlib.sha256(data).hexdigest())
        directory = os.path.dirname(os.path.abspath(path))
        self.assertEqual(config.sites[0].cert_file, os.path.join(directory, "c.pem"))
        self.assertEqual(
            config.sites[0].key_file, os.path.join(directory, "keys", "k.pem")
        )

    def test_upstreamCAFileResolved(self) -> None:
        """
        A relative C{upstream_ca_file} is resolved against the config
        file's directory, as C{cert_file} is.
        """
        path = self.write(
            document(
                site(
                    upstreams=["https://10.0.0.1:8443"],
                    upstream_ca_file="pki/upstream-ca.pem",
                )
            ).encode()
        )
        config = loadConfig(path)
        directory = os.path.dirname(os.path.abspath(path))
        self.assertEqual(
            config.sites[0].upstream_ca_file,
            os.path.join(directory, "pki", "upstream-ca.pem"),
        )

    def test_invalidDocument(self) -> None:
        """
        An invalid file raises the errors of its document.
        """
        path = self.write(document().encode() + b"[server]\nlisten_htp = []\n")
        error = self.assertRaises(ConfigError, loadConfig, path)
        self.assertEqual(
            error.errors,
            ('server.listen_htp: unknown key (did you mean "listen_http"?)',),
        )


class CheckConfigTests(SynchronousTestCase):
    """
    Tests for L{checkConfig}.
    """

    def configWith(self, certFile: str, keyFile: str, caFile: str = "") -> Config:
        """
        A config whose one site reads its certificate from files.
        """
        return parseConfig(
            document(
                site(tls="files", cert_file=certFile, key_file=keyFile),
                acme={"ca_file": caFile},
            )
        )

    def existingFile(self) -> str:
        """
        The path of a new readable file.
        """
        path: str = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\n")
        return path

    def test_readable(self) -> None:
        """
        Readable files pass.
        """
        present = self.existingFile()
        self.assertEqual(checkConfig(self.configWith(present, present, present)), [])

    def test_unreadableCertFile(self) -> None:
        """
        A certificate file that cannot be read is reported with its key path.
        """
        missing = os.path.abspath(self.mktemp())
        present = self.existingFile()
        self.assertEqual(
            checkConfig(self.configWith(missing, present)),
            [f'sites[0].cert_file: cannot read "{missing}": No such file or directory'],
        )

    def test_unreadableKeyAndCA(self) -> None:
        """
        Every unreadable file is reported, the key and the ACME CA included.
        """
        missing = os.path.abspath(self.mktemp())
        present = self.existingFile()
        self.assertEqual(
            checkConfig(self.configWith(present, missing, missing)),
            [
                f'acme.ca_file: cannot read "{missing}": No such file or directory',
                f'sites[0].key_file: cannot read "{missing}": No such file or directory',
            ],
        )

    def test_directory(self) -> None:
        """
        A directory is not a certificate file.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        present = self.existingFile()
        self.assertEqual(
            checkConfig(self.configWith(directory, present)),
            [f'sites[0].cert_file: "{directory}" is not a regular file'],
        )

    def test_upstreamCAFile(self) -> None:
        """
        A site's C{upstream_ca_file} must be readable too; a readable one
        passes.
        """
        missing = os.path.abspath(self.mktemp())
        present = self.existingFile()

        def configWith(caFile: str) -> Config:
            return parseConfig(
                document(
                    site(upstreams=["http://10.0.0.1"]),
                    site(
                        name="b",
                        hosts=["b.example"],
                        upstreams=["https://10.0.0.2"],
                        upstream_ca_file=caFile,
                    ),
                )
            )

        self.assertEqual(checkConfig(configWith(present)), [])
        self.assertEqual(
            checkConfig(configWith(missing)),
            [
                f'sites[1].upstream_ca_file: cannot read "{missing}": '
                "No such file or directory"
            ],
        )


class QuickConfigTests(SynchronousTestCase):
    """
    Tests for L{quickConfig}.
    """

    def test_quick(self) -> None:
        """
        The quick config listens where told and sends everything to one
        upstream, with nothing else listening.
        """
        config = quickConfig("tcp:8080", "http://127.0.0.1:8000")
        self.assertEqual(config.server.listen_http, ("tcp:8080",))
        self.assertEqual(config.server.listen_https, ())
        self.assertEqual(config.server.admin_socket_path, "")
        self.assertEqual(config.server.ops_listen, "")
        self.assertEqual(config.server.workers, 1)
        self.assertEqual(
            config.sites,
            (
                SiteConfig(
                    name="default",
                    hosts=(),
                    upstreams=(
                        Upstream("http://127.0.0.1:8000", "http", "127.0.0.1", 8000),
                    ),
                    default=True,
                ),
            ),
        )

    def test_badListen(self) -> None:
        """
        An invalid C{--listen} is an error naming the option.
        """
        error = self.assertRaises(
            ConfigError, quickConfig, "tcp:http", "http://127.0.0.1:8000"
        )
        self.assertEqual(
            error.errors,
            (
                '--listen: invalid endpoint "tcp:http": invalid literal for int() '
                "with base 10: 'http'",
            ),
        )

    def test_badTo(self) -> None:
        """
        An invalid C{--to} is an error naming the option, reported with a bad
        C{--listen}.
        """
        error = self.assertRaises(ConfigError, quickConfig, "nope:1", "127.0.0.1:8000")
        self.assertEqual(
            error.errors,
            (
                "--listen: invalid endpoint \"nope:1\": Unknown endpoint type: 'nope'",
                '--to: "127.0.0.1:8000" is not an http(s) URL',
            ),
        )


class EndpointPortTests(SynchronousTestCase):
    """
    Tests for L{endpointPort}.
    """

    def test_tcp(self) -> None:
        """
        The port of a C{tcp:} or C{tcp6:} endpoint, whatever its other
        arguments.
        """
        self.assertEqual(endpointPort("tcp:443"), 443)
        self.assertEqual(endpointPort("tcp:8443:interface=127.0.0.1"), 8443)
        self.assertEqual(endpointPort("tcp6:port=9443:interface=\\:\\:"), 9443)
        self.assertEqual(endpointPort("tcp:0"), 0)

    def test_notTCP(self) -> None:
        """
        Another kind of endpoint, or an invalid description, has no port.
        """
        for description in (
            "unix:/run/revproxy.sock",
            "tcp:https",
            "nope:443",
            "",
            "ssl:443:privateKey=/nonexistent.pem",
        ):
            self.assertIsNone(endpointPort(description), description)


_KNOWN_KEYS = [
    "server",
    "acme",
    "logging",
    "defaults",
    "sites",
    "listen_http",
    "listen_https",
    "admin_socket_path",
    "ops_listen",
    "state_dir",
    "shutdown_timeout_secs",
    "trusted_proxies",
    "email",
    "directory_url",
    "ca_file",
    "challenge",
    "renew_before_days",
    "key_type",
    "access_log",
    "access_log_format",
    "max_body_bytes",
    "rate_limit",
    "connect_timeout_secs",
    "response_timeout_secs",
    "queue_timeout_secs",
    "upgrade_protocols",
    "tunnel_idle_timeout_secs",
    "max_tunnels",
    "tunnel_drain_secs",
    "name",
    "hosts",
    "upstreams",
    "tls",
    "cert_file",
    "key_file",
    "redirect_http",
    "hsts_max_age_secs",
    "upstream_ca_file",
    "upstream_tls_verify",
    "tls_min_version",
    "http2",
    "workers",
    "health_check",
    "default",
    "requests_per_second",
    "burst",
    "path",
    "interval_secs",
]

_PLAUSIBLE_STRINGS = [
    "",
    "-",
    "tcp:80",
    "tcp:0",
    "tcp6:443",
    "tcp:8080:interface=127.0.0.1",
    "unix:/tmp/revproxy.sock",
    "ssl:443",
    "tcpp:80",
    "http://127.0.0.1:8000",
    "https://[::1]/",
    "htp://x",
    "acme",
    "files",
    "none",
    "json",
    "combined",
    "http-01",
    "tls-alpn-01",
    "ec-p256",
    "1.2",
    "1.3",
    "ca.pem",
    "example.com",
    "*.example.com",
    "bücher.example",
    "[::1]",
    "/healthz",
    "10.0.0.0/8",
    "ops@example.com",
    "https://acme.example/dir",
    "websocket",
    "WebSocket",
    "h2c",
    "websocket/13",
]

_scalars = st.one_of(
    st.sampled_from(_PLAUSIBLE_STRINGS),
    st.text(max_size=20),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.booleans(),
)
_keys = st.one_of(st.sampled_from(_KNOWN_KEYS), st.text(max_size=10))
_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(_keys, children, max_size=5),
    ),
    max_leaves=12,
)
_sites = st.lists(st.dictionaries(_keys, _values, max_size=8), max_size=3)
_documents = st.dictionaries(
    _keys,
    st.one_of(st.dictionaries(_keys, _values, max_size=8), _values),
    max_size=6,
).flatmap(
    lambda d: st.one_of(st.just(d), _sites.map(lambda sites: {**d, "sites": sites}))
)


class PropertyTests(SynchronousTestCase):
    """
    Whatever the input, L{parseConfig} returns a L{Config} or raises
    L{ConfigError}, and nothing else.
    """

    def parse(self, text: str) -> None:
        """
        Parse C{text}, accepting only the two allowed outcomes.
        """
        try:
            result = parseConfig(text)
        except ConfigError as e:
            self.assertTrue(e.errors)
            for error in e.errors:
                self.assertIsInstance(error, str)
        else:
            self.assertIsInstance(result, Config)

    @settings(max_examples=200, deadline=None)
    @given(_documents)
    def test_randomDocuments(self, doc: dict[str, Any]) -> None:
        """
        Random documents of known and unknown keys and values parse or fail
        cleanly.
        """
        self.parse(dumps(doc))

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(st.one_of(st.sampled_from(_PLAUSIBLE_STRINGS), st.text()), max_size=4),
        st.lists(st.one_of(st.sampled_from(_PLAUSIBLE_STRINGS), st.text()), max_size=4),
    )
    def test_randomHostsAndUpstreams(
        self, hosts: list[str], upstreams: list[str]
    ) -> None:
        """
        Random hosts and upstream URLs in an otherwise valid site parse or
        fail cleanly.
        """
        self.parse(document(site(hosts=hosts, upstreams=upstreams)))

    @settings(max_examples=200, deadline=None)
    @given(st.text())
    def test_randomText(self, text: str) -> None:
        """
        Arbitrary text parses or fails cleanly.
        """
        self.parse(text)

    @settings(max_examples=200, deadline=None)
    @given(st.integers(min_value=0, max_value=len(FULL)), st.text(max_size=10))
    def test_damagedDocument(self, position: int, insert: str) -> None:
        """
        The full example with random text inserted parses or fails cleanly.
        """
        self.parse(FULL[:position] + insert + FULL[position:])


class OperationsLimitTests(ParseTestCase):
    """
    Tests for the connection limits and deadlines of C{[server]}, the rate
    limit's C{dry_run} and the health check's thresholds.
    """

    def test_serverDefaults(self) -> None:
        """
        Without the keys, the limits are nginx-like: 8 KiB request line and
        header field, 32 KiB of headers, 100 fields, a 10 s head deadline.
        """
        server = parseConfig(document(site())).server
        self.assertEqual(
            (
                server.max_request_line_bytes,
                server.max_header_bytes,
                server.max_headers_total_bytes,
                server.max_header_fields,
                server.header_timeout_secs,
                server.max_tracked_clients,
                server.rate_limit_ipv6_prefix,
            ),
            (8192, 8192, 32768, 100, 10.0, 100000, 64),
        )

    def test_serverValues(self) -> None:
        """
        Each key is read into the server config.
        """
        server = parseConfig(
            document(
                site(),
                server={
                    "max_request_line_bytes": 4096,
                    "max_header_fields": 50,
                    "keepalive_timeout_secs": 5,
                    "max_requests_per_connection": 0,
                    "lingering_close_secs": 0,
                    "min_body_rate_bytes_per_sec": 0,
                    "rate_limit_ipv6_prefix": 56,
                },
            )
        ).server
        self.assertEqual(server.max_request_line_bytes, 4096)
        self.assertEqual(server.max_header_fields, 50)
        self.assertEqual(server.keepalive_timeout_secs, 5.0)
        self.assertEqual(server.max_requests_per_connection, 0)
        self.assertEqual(server.lingering_close_secs, 0.0)
        self.assertEqual(server.min_body_rate_bytes_per_sec, 0)
        self.assertEqual(server.rate_limit_ipv6_prefix, 56)

    def test_serverRanges(self) -> None:
        """
        Out-of-range values name their key; a header field may not be larger
        than all headers together.
        """
        self.assertErrors(
            document(
                site(),
                server={
                    "max_request_line_bytes": 10,
                    "header_timeout_secs": 0,
                    "rate_limit_ipv6_prefix": 129,
                    "max_header_bytes": 65536,
                },
            ),
            "server.max_request_line_bytes: must be between 256 and 1048576, got 10",
            "server.rate_limit_ipv6_prefix: must be between 1 and 128, got 129",
            "server.header_timeout_secs: must be greater than 0 and at most "
            "86400, got 0",
            "server.max_header_bytes: must not be larger than "
            "max_headers_total_bytes (32768)",
        )

    def test_dryRun(self) -> None:
        """
        C{rate_limit.dry_run} is optional and must be a boolean.
        """
        config = parseConfig(
            document(
                site(rate_limit={"requests_per_second": 1, "burst": 2, "dry_run": True})
            )
        )
        self.assertTrue(config.sites[0].rate_limit.dry_run)
        self.assertErrors(
            document(
                site(rate_limit={"requests_per_second": 1, "burst": 2, "dry_run": 1})
            ),
            "sites[0].rate_limit.dry_run: expected true or false, got integer 1",
        )

    def test_healthCheckThresholds(self) -> None:
        """
        C{timeout_secs}, C{fails} and C{passes} default to 2 s, 3 and 2; the
        timeout may not exceed the interval.
        """
        config = parseConfig(document(site(health_check={"path": "/h"})))
        check = config.sites[0].health_check
        assert check is not None
        self.assertEqual((check.timeout_secs, check.fails, check.passes), (2.0, 3, 2))
        self.assertErrors(
            document(
                site(
                    health_check={
                        "path": "/h",
                        "interval_secs": 1,
                        "timeout_secs": 5,
                        "fails": 0,
                    }
                )
            ),
            "sites[0].health_check.fails: must be between 1 and 1000, got 0",
            "sites[0].health_check.timeout_secs: must not be longer than "
            "interval_secs (1)",
        )


def route(**keys: Any) -> dict[str, Any]:
    """
    A valid minimal C{[[sites.routes]]} entry, changed by C{keys}.
    """
    entry: dict[str, Any] = {
        "path_prefix": "/api/",
        "upstreams": ["http://127.0.0.1:9000"],
    }
    entry.update(keys)
    return entry


def _write(case: SynchronousTestCase, name: str, data: bytes) -> str:
    """
    Write C{data} to a new file C{name} in a new directory; return the
    directory.
    """
    directory: str = case.mktemp()
    os.makedirs(directory)
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)
    return directory


class RouteTests(ParseTestCase):
    """
    C{[[sites.routes]]}: one matcher, one action, and modifiers that fit.
    """

    def routes(self, *routes: dict[str, Any], **keys: Any) -> tuple[RouteConfig, ...]:
        """
        The routes of a valid one-site document.
        """
        config = parseConfig(document(site(routes=list(routes), **keys)))
        return config.sites[0].routes

    def test_noRoutes(self) -> None:
        """
        A site without routes has none, and the defaults of the new keys.
        """
        [s] = parseConfig(document()).sites
        self.assertEqual(s.routes, ())
        self.assertIsNone(s.redirect)
        self.assertIsNone(s.respond)
        self.assertEqual(s.request_headers, HeaderRules())
        self.assertEqual(s.response_headers, HeaderRules())
        self.assertEqual(s.upstream_host, "")
        self.assertEqual(s.error_pages, ())

    def test_upstreamsRoute(self) -> None:
        """
        A prefix route to upstreams, with every modifier.
        """
        [r] = self.routes(
            route(
                methods=["get", "Post"],
                strip_prefix=True,
                rewrite_redirects=True,
                upstream_host="App.Internal:8443",
                upstreams=["https://10.0.0.5"],
                max_body_bytes=1024,
                rate_limit={"requests_per_second": 5, "burst": 10},
                connect_timeout_secs=1,
                response_timeout_secs=2.5,
            )
        )
        self.assertEqual(
            r,
            RouteConfig(
                index=0,
                path_prefix="/api/",
                methods=("GET", "POST"),
                upstreams=(Upstream("https://10.0.0.5:443", "https", "10.0.0.5", 443),),
                strip_prefix=True,
                upstream_host="app.internal:8443",
                rewrite_redirects=True,
                max_body_bytes=1024,
                rate_limit=RateLimit(5.0, 10),
                connect_timeout_secs=1.0,
                response_timeout_secs=2.5,
            ),
        )

    def test_exactRedirectAndRespond(self) -> None:
        """
        An exact route with a redirect, and one with a fixed answer, in
        order, with their indexes.
        """
        a, b = self.routes(
            {"path": "/old", "redirect": {"to": "/new", "status": 301}},
            {"path": "/ping", "respond": {"status": 200, "body": "pong {host}"}},
        )
        self.assertEqual(a.index, 0)
        self.assertEqual(a.path, "/old")
        self.assertIsNone(a.path_prefix)
        self.assertEqual(a.redirect, Redirect(parseTemplate("/new"), 301))
        self.assertEqual(b.index, 1)
        self.assertEqual(
            b.respond, Respond(status=200, body=parseTemplate("pong {host}"))
        )

    def test_upstreamHostEmpty(self) -> None:
        """
        C{upstream_host = ""} is the default: the client's Host.
        """
        [r] = self.routes(route(upstream_host=""))
        self.assertEqual(r.upstream_host, "")

    def test_upstreamHostIPv6(self) -> None:
        """
        An IPv6 C{upstream_host} keeps its brackets.
        """
        [r] = self.routes(route(upstream_host="[2001:DB8::1]:8443"))
        self.assertEqual(r.upstream_host, "[2001:db8::1]:8443")

    def test_notAnArrayOfTables(self) -> None:
        """
        C{routes} is an array of tables.
        """
        self.assertErrors(
            document(site(routes="x")),
            'sites[0].routes: expected an array of tables ([[sites.routes]]), got string "x"',
        )

    def test_unknownKey(self) -> None:
        """
        An unknown key of a route is an error naming it.
        """
        self.assertErrors(
            document(site(routes=[route(path_prefx="/a")])),
            'sites[0].routes[0].path_prefx: unknown key (did you mean "path_prefix"?)',
        )

    def test_routeKeyInSite(self) -> None:
        """
        A route's key written in the site is pointed to its table.
        """
        self.assertErrors(
            document(site(path_prefix="/a")),
            "sites[0].path_prefix: unknown key (it belongs in [[sites.routes]])",
        )

    def test_matcher(self) -> None:
        """
        A route has exactly one matcher, a path starting with "/", without
        whitespace, query or fragment.
        """
        missing = route()
        del missing["path_prefix"]
        self.assertErrors(
            document(
                site(
                    routes=[
                        missing,
                        route(path="/a"),
                        route(path_prefix="api/"),
                        route(path_prefix="/a b"),
                        {"path": "/a?b=1", "respond": {"status": 200}},
                        route(path_prefix=""),
                    ]
                )
            ),
            "sites[0].routes[0]: needs a matcher: path (exact) or path_prefix",
            "sites[0].routes[1].path_prefix: a route has one matcher; it also has path",
            'sites[0].routes[2].path_prefix: "api/" must start with "/"',
            'sites[0].routes[3].path_prefix: "/a b" must not contain whitespace',
            'sites[0].routes[4].path: "/a?b=1" must not have a query or fragment '
            "(routes match the path alone)",
            'sites[0].routes[5].path_prefix: "" must start with "/"',
        )

    def test_action(self) -> None:
        """
        A route has exactly one action.
        """
        self.assertErrors(
            document(
                site(
                    routes=[
                        {"path": "/a"},
                        route(redirect={"to": "/b"}),
                        {
                            "path": "/c",
                            "redirect": {"to": "/"},
                            "respond": {"status": 200},
                        },
                        route(upstreams=[]),
                    ]
                )
            ),
            "sites[0].routes[0]: needs an action: upstreams, redirect or respond",
            "sites[0].routes[1].redirect: a route has one action; it also has upstreams",
            "sites[0].routes[2].respond: a route has one action; it also has redirect",
            "sites[0].routes[3].upstreams: must not be empty",
        )

    def test_routeUpstreamErrors(self) -> None:
        """
        A route's upstreams are checked as a site's.
        """
        self.assertErrors(
            document(
                site(routes=[route(upstreams=["ftp://x", "http://a", "HTTP://a:80"])])
            ),
            'sites[0].routes[0].upstreams[0]: "ftp://x" is not an http(s) URL',
            'sites[0].routes[0].upstreams[2]: duplicate upstream "http://a:80" '
            "(also upstreams[1])",
        )

    def test_methods(self) -> None:
        """
        C{methods}: tokens, no duplicates whatever their case, not empty.
        """
        self.assertErrors(
            document(
                site(
                    routes=[
                        route(methods=["GET", "get"]),
                        route(methods=["GE T"]),
                        route(methods=[]),
                        route(methods="GET"),
                    ]
                )
            ),
            'sites[0].routes[0].methods[1]: duplicate method "GET" (also methods[0])',
            'sites[0].routes[1].methods[0]: "GE T" is not a method name (an RFC 9110 '
            "token: letters, digits and !#$%&'*+-.^_`|~)",
            "sites[0].routes[2].methods: must not be empty (leave it out to match "
            "every method)",
            'sites[0].routes[3].methods: expected an array, got string "GET"',
        )

    def test_stripPrefixAndRewrite(self) -> None:
        """
        C{strip_prefix} needs C{path_prefix} and C{upstreams};
        C{rewrite_redirects} needs C{strip_prefix}.
        """
        self.assertErrors(
            document(
                site(
                    routes=[
                        {"path": "/a", "upstreams": ["http://b"], "strip_prefix": True},
                        {
                            "path_prefix": "/b/",
                            "respond": {"status": 200},
                            "strip_prefix": True,
                        },
                        route(rewrite_redirects=True),
                        route(strip_prefix=False, rewrite_redirects=True),
                    ]
                )
            ),
            "sites[0].routes[0].strip_prefix: only used with path_prefix",
            "sites[0].routes[1].strip_prefix: only used with upstreams (it changes "
            "what is forwarded)",
            "sites[0].routes[2].rewrite_redirects: needs strip_prefix = true",
            "sites[0].routes[3].rewrite_redirects: needs strip_prefix = true",
        )

    def test_upstreamOnlyKeys(self) -> None:
        """
        C{upstream_host}, C{request_headers}, C{max_body_bytes} and the
        timeouts only go with C{upstreams}; C{rate_limit} and
        C{response_headers} go with any action.
        """
        answer = {"path": "/a", "respond": {"status": 200}}
        text = document(
            site(
                routes=[
                    {
                        **answer,
                        "upstream_host": "a.internal",
                        "request_headers": {"set": {"X-A": "1"}},
                        "max_body_bytes": 10,
                        "connect_timeout_secs": 1,
                        "response_timeout_secs": 1,
                    }
                ]
            )
        )
        problem = "only used with upstreams (a redirect or respond forwards nothing)"
        self.assertErrors(
            text,
            *(
                f"sites[0].routes[0].{key}: {problem}"
                for key in (
                    "upstream_host",
                    "request_headers",
                    "max_body_bytes",
                    "connect_timeout_secs",
                    "response_timeout_secs",
                )
            ),
        )
        [r] = self.routes(
            {
                **answer,
                "rate_limit": {"requests_per_second": 1, "burst": 1},
                "response_headers": {"set": {"Cache-Control": "no-store"}},
            }
        )
        self.assertEqual(r.rate_limit, RateLimit(1.0, 1))

    def test_limitRanges(self) -> None:
        """
        A route's limits have the ranges of a site's.
        """
        self.assertErrors(
            document(
                site(
                    routes=[
                        route(
                            max_body_bytes=0,
                            rate_limit={"requests_per_second": 1, "burst": 0},
                            connect_timeout_secs=0,
                            response_timeout_secs=86401,
                        )
                    ]
                )
            ),
            "sites[0].routes[0].rate_limit.burst: burst must be >= 1 when "
            "requests_per_second > 0",
            "sites[0].routes[0].max_body_bytes: must be between 1 and "
            "1099511627776, got 0",
            "sites[0].routes[0].connect_timeout_secs: must be greater than 0 and "
            "at most 86400, got 0",
            "sites[0].routes[0].response_timeout_secs: must be greater than 0 and "
            "at most 86400, got 86401",
        )

    def test_upstreamHostErrors(self) -> None:
        """
        C{upstream_host} is a hostname or address with maybe a port.
        """
        self.assertErrors(
            document(
                site(
                    routes=[
                        route(upstream_host="http://a"),
                        route(upstream_host="a:99999"),
                        route(upstream_host="a b"),
                        route(upstream_host="*.a"),
                    ]
                )
            ),
            'sites[0].routes[0].upstream_host: "http://a" is not a hostname[:port]',
            'sites[0].routes[1].upstream_host: "a:99999" is not a hostname[:port]',
            'sites[0].routes[2].upstream_host: "a b" is not a hostname[:port]',
            'sites[0].routes[3].upstream_host: "*.a" is not a hostname[:port]',
        )

    def test_httpsUpstreamInRoute(self) -> None:
        """
        An https upstream of a route lets the site set C{upstream_ca_file}.
        """
        config = parseConfig(
            document(
                site(
                    upstream_ca_file="/ca.pem",
                    routes=[route(upstreams=["https://a"])],
                )
            )
        )
        self.assertEqual(config.sites[0].upstream_ca_file, "/ca.pem")


class SiteAnswerTests(ParseTestCase):
    """
    A site's own C{redirect} or C{respond} instead of C{upstreams}, and when
    a site may have no upstreams.
    """

    def siteWithout(self, **keys: Any) -> dict[str, Any]:
        """
        A site without upstreams, with C{keys}.
        """
        entry = site(**keys)
        del entry["upstreams"]
        return entry

    def test_siteRedirect(self) -> None:
        """
        A site that redirects everything needs no upstreams: three lines.
        """
        [s] = parseConfig(
            document(self.siteWithout(redirect={"to": "https://example.org{uri}"}))
        ).sites
        self.assertEqual(s.upstreams, ())
        self.assertEqual(
            s.redirect, Redirect(parseTemplate("https://example.org{uri}"))
        )
        assert s.redirect is not None
        self.assertEqual(s.redirect.status, 308)

    def test_siteRespond(self) -> None:
        """
        A site that answers everything itself needs no upstreams, even with
        an empty list.
        """
        [s] = parseConfig(
            document(site(upstreams=[], respond={"status": 503, "body": "later"}))
        ).sites
        self.assertEqual(s.respond, Respond(503, parseTemplate("later")))

    def test_catchAllRoute(self) -> None:
        """
        A route with C{path_prefix = "/"} and no C{methods} catches every
        request, so the site needs no upstreams.
        """
        [s] = parseConfig(
            document(self.siteWithout(routes=[route(path_prefix="/")]))
        ).sites
        self.assertEqual(s.upstreams, ())

    def test_routesThatDoNotCatchAll(self) -> None:
        """
        Routes that leave some requests without an answer (another prefix,
        or "/" for some methods only) still need the site's upstreams.
        """
        self.assertErrors(
            document(
                self.siteWithout(
                    routes=[route(), route(path_prefix="/", methods=["GET"])]
                )
            ),
            'sites[0].upstreams: required (a list of URLs like "http://10.0.0.1:8000"), '
            + _ALTERNATIVES,
        )

    def test_upstreamsAndOwnAnswer(self) -> None:
        """
        A site with upstreams and its own redirect or respond is an error:
        which one would answer?
        """
        for key, value in (("redirect", {"to": "/"}), ("respond", {"status": 200})):
            self.assertErrors(
                document(site(**{key: value})),
                f"sites[0].{key}: a site with upstreams cannot also have {key}: "
                f"which would answer? Remove upstreams, or put the {key} in a "
                "[[sites.routes]] entry",
            )

    def test_redirectAndRespond(self) -> None:
        """
        A site has one answer of its own.
        """
        self.assertErrors(
            document(self.siteWithout(redirect={"to": "/"}, respond={"status": 200})),
            "sites[0].respond: a site has one answer of its own; it also has redirect",
        )

    def test_upstreamHost(self) -> None:
        """
        A site's C{upstream_host} goes with its own upstreams.
        """
        [s] = parseConfig(document(site(upstream_host="app.internal"))).sites
        self.assertEqual(s.upstream_host, "app.internal")
        self.assertErrors(
            document(
                self.siteWithout(
                    upstream_host="app.internal", routes=[route(path_prefix="/")]
                )
            ),
            "sites[0].upstream_host: only used with the site's own upstreams (a "
            "route with upstreams sets its own)",
        )

    def test_healthCheckNeedsUpstreams(self) -> None:
        """
        A site with no upstreams anywhere has nothing to health-check.
        """
        self.assertErrors(
            document(
                self.siteWithout(
                    respond={"status": 200}, health_check={"path": "/healthz"}
                )
            ),
            "sites[0].health_check: only used with upstreams (this site has none)",
        )


class RedirectTests(ParseTestCase):
    """
    C{redirect = { to = "...", status = N }}, on a site or a route.
    """

    def redirectErrors(self, *redirects: dict[str, Any]) -> tuple[str, ...]:
        """
        The errors of routes with these redirects.
        """
        return self.errorsOf(
            document(site(routes=[{"path": "/a", "redirect": r} for r in redirects]))
        )

    def test_statuses(self) -> None:
        """
        Every redirect status is taken; 308 by default.
        """
        for status in (301, 302, 303, 307, 308):
            config = parseConfig(
                document(
                    site(
                        routes=[
                            {"path": "/a", "redirect": {"to": "/b", "status": status}}
                        ]
                    )
                )
            )
            redirect = config.sites[0].routes[0].redirect
            assert redirect is not None
            self.assertEqual(redirect.status, status)

    def test_errors(self) -> None:
        """
        C{to} is required, an absolute http(s) URL or a path, with known
        placeholders; C{status} is a redirect status.
        """
        self.assertEqual(
            self.redirectErrors(
                {"status": 301},
                {"to": "/b", "status": 304},
                {"to": "example.com/b"},
                {"to": "ftp://example.com/"},
                {"to": "/b{foo}"},
                {"to": ""},
                {"to": "/b", "code": 301},
                {"to": "/a b{path}"},
            ),
            (
                "sites[0].routes[0].redirect.to: required (where to send, such as "
                '"https://example.com{uri}")',
                "sites[0].routes[1].redirect.status: must be 301, 302, 303, 307 or "
                "308, got 304",
                'sites[0].routes[2].redirect.to: "example.com/b" must be an absolute '
                'http(s) URL or a path starting with "/"',
                'sites[0].routes[3].redirect.to: "ftp://example.com/" must be an '
                'absolute http(s) URL or a path starting with "/"',
                'sites[0].routes[4].redirect.to: "/b{foo}": {foo} is not a '
                "placeholder; these are: {host}, {uri}, {path}, {query}, {scheme}, "
                "{client_ip}, {request_id}, {path_suffix} (write {{ and }} for "
                "literal braces)",
                "sites[0].routes[5].redirect.to: must not be empty",
                "sites[0].routes[6].redirect.code: unknown key",
                'sites[0].routes[7].redirect.to: "/a b{path}" must not contain '
                "whitespace (write %20)",
            ),
        )

    def test_placeholderFirst(self) -> None:
        """
        A C{to} may start with a placeholder (C{{scheme}://...}).
        """
        config = parseConfig(
            document(
                site(
                    routes=[
                        {
                            "path_prefix": "/old/",
                            "redirect": {"to": "{scheme}://{host}/new/{path_suffix}"},
                        }
                    ]
                )
            )
        )
        redirect = config.sites[0].routes[0].redirect
        assert redirect is not None
        self.assertEqual(
            redirect.to.names(), frozenset({"scheme", "host", "path_suffix"})
        )


class RespondTests(ParseTestCase):
    """
    C{respond = { status = N, body = "..." | file = "...", content_type }}.
    """

    def respond(self, baseDir: str | None = None, **keys: Any) -> Respond | None:
        """
        The C{respond} of a route with C{keys}.
        """
        config = parseConfig(
            document(site(routes=[{"path": "/a", "respond": keys}])), baseDir=baseDir
        )
        return config.sites[0].routes[0].respond

    def test_body(self) -> None:
        """
        A body template, plain text by default, or another content type.
        """
        self.assertEqual(
            self.respond(status=200, body="hi {client_ip}"),
            Respond(200, parseTemplate("hi {client_ip}")),
        )
        self.assertEqual(
            self.respond(status=404, body="<p>no</p>", content_type="text/html"),
            Respond(404, parseTemplate("<p>no</p>"), content_type="text/html"),
        )

    def test_bodyLines(self) -> None:
        """
        A body may have tabs and lines, but no other control character.
        """
        self.assertEqual(
            self.respond(status=200, body="a\r\n\tb\n"),
            Respond(200, parseTemplate("a\r\n\tb\n")),
        )
        self.assertErrors(
            document(
                site(
                    routes=[{"path": "/a", "respond": {"status": 200, "body": "\x01"}}]
                )
            ),
            'sites[0].routes[0].respond.body: "\\u0001" contains a control '
            "character other than tab, CR and LF",
        )

    def test_emptyBody(self) -> None:
        """
        Neither body nor file is an empty answer; 204 takes no body.
        """
        self.assertEqual(self.respond(status=204), Respond(204))

    def test_file(self) -> None:
        """
        A file relative to the config's directory is read at load; a
        C{.html} file is HTML by default.
        """
        directory = _write(self, "maintenance.html", b"<h1>Back soon</h1>")
        self.assertEqual(
            self.respond(
                os.path.abspath(directory), status=503, file="maintenance.html"
            ),
            Respond(
                503,
                file=os.path.join(os.path.abspath(directory), "maintenance.html"),
                content=b"<h1>Back soon</h1>",
                content_type="text/html; charset=utf-8",
            ),
        )
        txt = _write(self, "a.txt", b"x")
        result = self.respond(status=200, file=os.path.join(txt, "a.txt"))
        assert result is not None
        self.assertEqual(result.content_type, "text/plain; charset=utf-8")

    def test_fileErrors(self) -> None:
        """
        A missing, non-regular or too large file is a config error naming
        the key.
        """
        directory = _write(self, "big.html", b"x" * (1048576 + 1))
        missing = os.path.join(directory, "missing.html")
        big = os.path.join(directory, "big.html")
        self.assertErrors(
            document(
                site(
                    routes=[
                        {"path": "/a", "respond": {"status": 200, "file": missing}},
                        {"path": "/b", "respond": {"status": 200, "file": directory}},
                        {"path": "/c", "respond": {"status": 200, "file": big}},
                    ]
                )
            ),
            f'sites[0].routes[0].respond.file: cannot read "{missing}": No such '
            "file or directory",
            f'sites[0].routes[1].respond.file: "{directory}" is not a regular file',
            f'sites[0].routes[2].respond.file: "{big}" is larger than 1 MiB '
            "(1048576 bytes)",
        )

    def test_errors(self) -> None:
        """
        C{status} is required and 200-599; body and file exclude each other;
        204 and 304 have no body.
        """
        directory = _write(self, "a.txt", b"x")
        path = os.path.join(directory, "a.txt")
        self.assertErrors(
            document(
                site(
                    routes=[
                        {"path": "/a", "respond": {"body": "x"}},
                        {"path": "/b", "respond": {"status": 101}},
                        {
                            "path": "/c",
                            "respond": {"status": 200, "body": "x", "file": path},
                        },
                        {"path": "/d", "respond": {"status": 304, "body": "x"}},
                        {"path": "/e", "respond": {"status": 204, "file": path}},
                        {"path": "/f", "respond": {"status": 200, "body": "{x}"}},
                        {"path": "/g", "respond": {"status": 200, "content_type": ""}},
                    ]
                )
            ),
            "sites[0].routes[0].respond.status: required (the status to answer, "
            "such as 200)",
            "sites[0].routes[1].respond.status: must be between 200 and 599, got 101",
            "sites[0].routes[2].respond.file: a respond has body or file, not both",
            "sites[0].routes[3].respond.body: a 304 answer has no body",
            "sites[0].routes[4].respond.file: a 204 answer has no body",
            'sites[0].routes[5].respond.body: "{x}": {x} is not a placeholder; '
            "these are: {host}, {uri}, {path}, {query}, {scheme}, {client_ip}, "
            "{request_id}, {path_suffix} (write {{ and }} for literal braces)",
            "sites[0].routes[6].respond.content_type: must not be empty",
        )

    def test_rereadOnReload(self) -> None:
        """
        L{loadConfig} reads the file each time: a reload serves the new page.
        """
        directory = _write(self, "page.txt", b"one")
        configPath = os.path.join(directory, "config.toml")
        with open(configPath, "w") as f:
            f.write(
                document(
                    site(
                        routes=[
                            {
                                "path": "/a",
                                "respond": {"status": 200, "file": "page.txt"},
                            }
                        ]
                    )
                )
            )
        first = loadConfig(configPath).sites[0].routes[0].respond
        with open(os.path.join(directory, "page.txt"), "wb") as f:
            f.write(b"two")
        second = loadConfig(configPath).sites[0].routes[0].respond
        assert first is not None and second is not None
        self.assertEqual((first.content, second.content), (b"one", b"two"))


class HeaderRuleTests(ParseTestCase):
    """
    C{request_headers} and C{response_headers} on a site or a route.
    """

    def test_rules(self) -> None:
        """
        C{set} and C{add} keep names as written with value templates;
        C{remove} lowercases.
        """
        [s] = parseConfig(
            document(
                site(
                    response_headers={
                        "set": {"X-Frame-Options": "DENY", "X-Id": "{request_id}"},
                        "add": {"Link": "</a.css>; rel=preload"},
                        "remove": ["Server", "X-Powered-By"],
                    },
                    request_headers={"set": {"X-Client": "{client_ip}"}},
                )
            )
        ).sites
        self.assertEqual(
            s.response_headers,
            HeaderRules(
                set=(
                    ("X-Frame-Options", parseTemplate("DENY")),
                    ("X-Id", parseTemplate("{request_id}")),
                ),
                add=(("Link", parseTemplate("</a.css>; rel=preload")),),
                remove=("server", "x-powered-by"),
            ),
        )
        self.assertEqual(
            s.request_headers,
            HeaderRules(set=(("X-Client", parseTemplate("{client_ip}")),)),
        )

    def test_routeRules(self) -> None:
        """
        A route has its own rules.
        """
        [r] = (
            parseConfig(
                document(site(routes=[route(response_headers={"remove": ["ETag"]})]))
            )
            .sites[0]
            .routes
        )
        self.assertEqual(r.response_headers, HeaderRules(remove=("etag",)))

    def test_managedFields(self) -> None:
        """
        No rule touches a hop-by-hop or framing field, nor Host.
        """
        managed = (
            "Connection",
            "keep-alive",
            "Proxy-Connection",
            "TE",
            "Trailer",
            "Transfer-Encoding",
            "Upgrade",
            "Content-Length",
            "Host",
        )
        self.assertErrors(
            document(site(response_headers={"remove": list(managed)})),
            *(
                f'sites[0].response_headers.remove[{index}]: "{name}" is a '
                "hop-by-hop or framing field, which revproxy manages itself"
                for index, name in enumerate(managed)
            ),
        )
        self.assertErrors(
            document(
                site(request_headers={"set": {"Host": "x"}, "add": {"Connection": "x"}})
            ),
            'sites[0].request_headers.set.Host: "Host": the Host sent upstream is '
            "set by upstream_host",
            'sites[0].request_headers.add.Connection: "Connection" is a hop-by-hop '
            "or framing field, which revproxy manages itself",
        )

    def test_errors(self) -> None:
        """
        Names are tokens with one rule each; values are strings with known
        placeholders; unknown keys are errors.
        """
        self.assertErrors(
            document(
                site(
                    response_headers={
                        "set": {"X A": "1", "X-B": 2, "X-C": "{nope}", "X-D": "1"},
                        "add": {"x-d": "2"},
                        "remove": ["X-d", 3],
                        "rename": {},
                    },
                    request_headers={"set": "X-A: 1"},
                )
            ),
            'sites[0].request_headers.set: expected a table, got string "X-A: 1"',
            'sites[0].response_headers.rename: unknown key (did you mean "remove"?)',
            'sites[0].response_headers.set."X A": "X A" is not a header field name '
            "(an RFC 9110 token: letters, digits and !#$%&'*+-.^_`|~)",
            "sites[0].response_headers.set.X-B: expected a string, got integer 2",
            'sites[0].response_headers.set.X-C: "{nope}": {nope} is not a '
            "placeholder; these are: {host}, {uri}, {path}, {query}, {scheme}, "
            "{client_ip}, {request_id}, {path_suffix} (write {{ and }} for literal "
            "braces)",
            'sites[0].response_headers.add.x-d: "x-d" already has a rule (in set); '
            "give each field one rule",
            "sites[0].response_headers.remove[1]: expected a string, got integer 3",
            'sites[0].response_headers.remove[0]: "X-d" already has a rule (in '
            "set); give each field one rule",
        )

    def test_controlCharacter(self) -> None:
        """
        A value with a control character (a literal CR LF) is an error.
        """
        self.assertErrors(
            document(site(response_headers={"set": {"X-A": "a\r\nB: c"}})),
            'sites[0].response_headers.set.X-A: "a\\r\\nB: c" contains a control '
            "character",
        )


class ErrorPageTests(ParseTestCase):
    """
    C{error_pages}, in C{[defaults]} or a site.
    """

    def test_defaultsInherited(self) -> None:
        """
        Pages in C{[defaults]}, relative to the config's directory, are read
        and inherited, sorted by status; a site's table replaces them whole.
        """
        directory = _write(self, "502.html", b"<h1>down</h1>")
        with open(os.path.join(directory, "503.html"), "wb") as f:
            f.write(b"<h1>busy</h1>")
        with open(os.path.join(directory, "429.html"), "wb") as f:
            f.write(b"<h1>slow down</h1>")
        base = os.path.abspath(directory)
        config = parseConfig(
            document(
                site(),
                site(name="b", hosts=["b.example"], error_pages={"429": "429.html"}),
                defaults={"error_pages": {"503": "503.html", "502": "502.html"}},
            ),
            baseDir=base,
        )
        a, b = config.sites
        self.assertEqual(
            config.defaults.error_pages,
            ((502, b"<h1>down</h1>"), (503, b"<h1>busy</h1>")),
        )
        self.assertEqual(a.error_pages, config.defaults.error_pages)
        self.assertEqual(
            a.error_page_files,
            (
                (502, os.path.join(base, "502.html")),
                (503, os.path.join(base, "503.html")),
            ),
        )
        self.assertEqual(b.error_pages, ((429, b"<h1>slow down</h1>"),))
        self.assertEqual(b.error_page_files, ((429, os.path.join(base, "429.html")),))

    def test_errors(self) -> None:
        """
        Only the answers revproxy makes itself have pages; each a readable
        file of at most 1 MiB.
        """
        directory = _write(self, "big.html", b"x" * (1048576 + 1))
        base = os.path.abspath(directory)
        self.assertEqual(
            self.errorsOf(
                document(
                    site(
                        error_pages={
                            "404": "a.html",
                            "0502": "a.html",
                            "502": "missing.html",
                            "503": "big.html",
                            "504": "",
                            "413": 1,
                        }
                    ),
                    defaults={"error_pages": ["502.html"]},
                ),
                baseDir=base,
            ),
            (
                "defaults.error_pages: expected a table, got array",
                "sites[0].error_pages.404: not an answer revproxy makes itself; "
                "error_pages takes 401, 403, 413, 421, 429, 502, 503, 504",
                "sites[0].error_pages.0502: not an answer revproxy makes itself; "
                "error_pages takes 401, 403, 413, 421, 429, 502, 503, 504",
                f'sites[0].error_pages.502: cannot read "{base}/missing.html": No '
                "such file or directory",
                f'sites[0].error_pages.503: "{base}/big.html" is larger than 1 MiB '
                "(1048576 bytes)",
                "sites[0].error_pages.504: must not be empty",
                "sites[0].error_pages.413: expected a string, got integer 1",
            ),
        )


class RouteWarningTests(SynchronousTestCase):
    """
    L{routeWarnings}: unreachable routes and redirect loops.
    """

    def warnings(self, *sites: dict[str, Any], **tables: Any) -> list[str]:
        """
        The route warnings of a valid document.
        """
        return routeWarnings(parseConfig(document(*sites, **tables)))

    def test_none(self) -> None:
        """
        Routes that each can be reached, and redirects elsewhere, warn of
        nothing.
        """
        self.assertEqual(
            self.warnings(
                site(
                    routes=[
                        route(),
                        route(path_prefix="/api"),
                        route(path_prefix="/v1/", methods=["POST"]),
                        route(path_prefix="/v1/", methods=["GET"]),
                        route(path_prefix="/v1/"),
                        {"path": "/api/", "respond": {"status": 200}},
                        {"path": "/old", "redirect": {"to": "/new"}},
                        {"path": "/x", "redirect": {"to": "https://example.com/x"}},
                        {
                            "path_prefix": "/y/",
                            "redirect": {"to": "https://other.example{uri}"},
                        },
                    ]
                )
            ),
            [],
        )

    def test_shadowed(self) -> None:
        """
        A route after an equal matcher that takes all its methods is never
        reached.
        """
        self.assertEqual(
            self.warnings(
                site(
                    routes=[
                        route(),
                        route(methods=["GET"]),
                        {
                            "path": "/a",
                            "methods": ["GET", "HEAD"],
                            "respond": {"status": 200},
                        },
                        {"path": "/a", "methods": ["head"], "respond": {"status": 200}},
                        {"path": "/a", "respond": {"status": 200}},
                    ]
                )
            ),
            [
                "sites[0].routes[1]: no request reaches this route: routes[0] has "
                'the same path_prefix "/api/" and takes every method',
                "sites[0].routes[3]: no request reaches this route: routes[2] has "
                'the same path "/a" and takes all its methods',
            ],
        )

    def test_catchAllHidesUpstreams(self) -> None:
        """
        A route with C{path_prefix = "/"} and no methods leaves the site's
        upstreams unused.
        """
        self.assertEqual(
            self.warnings(site(routes=[route(), route(path_prefix="/")])),
            [
                "sites[0].upstreams: no request reaches them: routes[1] has "
                'path_prefix = "/" and takes every method'
            ],
        )

    def test_selfRedirects(self) -> None:
        """
        A redirect to C{{scheme}://{host}{uri}} or C{{path}}, or to its own
        exact path on one of the site's hosts, loops.
        """
        entry = site(
            routes=[
                {"path_prefix": "/a/", "redirect": {"to": "{scheme}://{host}{uri}"}},
                {"path": "/b", "redirect": {"to": "{scheme}://{host}{path}"}},
                {"path": "/c", "redirect": {"to": "http://EXAMPLE.com:80/c"}},
                {"path": "/d", "redirect": {"to": "/d"}},
                {"path": "/e", "redirect": {"to": "{uri}"}},
            ]
        )
        self.assertEqual(
            self.warnings(entry),
            [
                'sites[0].routes[0].redirect.to: "{scheme}://{host}{uri}" sends '
                "http://example.com/a/ back to itself: a redirect loop",
                'sites[0].routes[1].redirect.to: "{scheme}://{host}{path}" sends '
                "http://example.com/b back to itself: a redirect loop",
                'sites[0].routes[2].redirect.to: "http://EXAMPLE.com:80/c" sends '
                "http://example.com/c back to itself: a redirect loop",
                'sites[0].routes[3].redirect.to: "/d" sends http://example.com/d '
                "back to itself: a redirect loop",
                'sites[0].routes[4].redirect.to: "{uri}" sends http://example.com/e '
                "back to itself: a redirect loop",
            ],
        )

    def test_siteRedirectToHTTPSOfItself(self) -> None:
        """
        A site-level redirect to C{https://<own host>{uri}} loops for HTTPS
        requests when the site is served over HTTPS; without TLS it is the
        usual move to HTTPS elsewhere.
        """
        redirect = {"to": "https://www.example.com{uri}"}
        entry = site(hosts=["example.com", "www.example.com"], redirect=redirect)
        del entry["upstreams"]
        self.assertEqual(self.warnings(entry), [])
        self.assertEqual(
            self.warnings({**entry, "tls": "acme"}, acme={"email": "ops@example.com"}),
            [
                'sites[0].redirect.to: "https://www.example.com{uri}" sends '
                "https://www.example.com/ back to itself: a redirect loop"
            ],
        )

    def test_inConfigWarnings(self) -> None:
        """
        The reload's and C{--check}'s warnings include the route warnings.
        """
        from revproxy.reload import configWarnings

        config = parseConfig(
            document(site(routes=[{"path": "/d", "redirect": {"to": "/d"}}]))
        )
        self.assertEqual(configWarnings(config), routeWarnings(config))
        self.assertEqual(len(routeWarnings(config)), 1)


_HASH = "$2b$04$" + "a" * 53


def _usersDir(case: SynchronousTestCase, text: str = f"alice:{_HASH}\n") -> str:
    """
    A new directory with an htpasswd file C{users} holding C{text}.
    """
    return os.path.abspath(_write(case, "users", text.encode("utf-8")))


class AccessTests(ParseTestCase):
    """
    The access keys of a site or route: C{allow}, C{deny}, C{basic_auth},
    C{forward_auth}.
    """

    def test_none(self) -> None:
        """
        A site and route without access keys let every request through.
        """
        [s] = parseConfig(document(site(routes=[route()]))).sites
        self.assertEqual(s.access, AccessRules())
        self.assertEqual(s.routes[0].access, AccessRules())
        self.assertFalse(s.access.enabled)

    def test_networks(self) -> None:
        """
        C{allow} and C{deny} are addresses or networks, host bits allowed;
        C{allow_first} records which list is written first.
        """
        [s] = parseConfig(
            document(
                site(
                    allow=["10.1.2.3/8", "2001:db8::/32", "192.0.2.7"],
                    deny=["::ffff:10.0.0.0/104"],
                )
            )
        ).sites
        self.assertEqual(
            s.access.allow,
            (
                ipaddress.ip_network("10.0.0.0/8"),
                ipaddress.ip_network("2001:db8::/32"),
                ipaddress.ip_network("192.0.2.7/32"),
            ),
        )
        self.assertEqual(s.access.deny, (ipaddress.ip_network("::ffff:a00:0/104"),))
        self.assertTrue(s.access.allow_first)
        self.assertTrue(s.access.enabled)
        [s] = parseConfig(document(site(deny=["10.0.0.1"], allow=["10.0.0.0/8"]))).sites
        self.assertFalse(s.access.allow_first)
        [s] = parseConfig(document(site(deny=["10.0.0.1"]))).sites
        self.assertFalse(s.access.allow_first)

    def test_networkErrors(self) -> None:
        """
        A list must not be empty; each item is a network, given once.
        """
        self.assertErrors(
            document(
                site(
                    allow=[],
                    deny=["10.0.0.0/8", "nope", 3, "10.0.0.1/8"],
                    routes=[route(allow="10.0.0.0/8")],
                )
            ),
            "sites[0].allow: must not be empty (leave allow out instead)",
            "sites[0].deny[2]: expected a string, got integer 3",
            'sites[0].deny[1]: "nope" is not an IP address or network (CIDR, such '
            'as "10.0.0.0/8" or "2001:db8::/32")',
            'sites[0].deny[3]: duplicate network "10.0.0.0/8" (also deny[0])',
            'sites[0].routes[0].allow: expected an array, got string "10.0.0.0/8"',
        )

    def test_routeInheritsOrReplaces(self) -> None:
        """
        A route without access keys has its site's rules; one with any
        has its own only.
        """
        [s] = parseConfig(
            document(
                site(
                    allow=["10.0.0.0/8"],
                    routes=[route(), route(path_prefix="/b/", deny=["10.0.0.1"])],
                )
            )
        ).sites
        self.assertEqual(s.routes[0].access, s.access)
        self.assertEqual(
            s.routes[1].access,
            AccessRules(deny=(ipaddress.ip_network("10.0.0.1/32"),), allow_first=False),
        )

    def test_basicAuth(self) -> None:
        """
        C{basic_auth} reads its users file, relative to the config file, at
        parse time.
        """
        base = _usersDir(self, f"# users\nalice:{_HASH}\nbob:{_HASH}\n")
        [s] = parseConfig(
            document(site(basic_auth={"realm": "admin area", "users_file": "users"})),
            baseDir=base,
        ).sites
        self.assertEqual(
            s.access.basic_auth,
            BasicAuth(
                realm="admin area",
                users_file=os.path.join(base, "users"),
                users=(("alice", _HASH), ("bob", _HASH)),
            ),
        )
        [s] = parseConfig(
            document(
                site(
                    basic_auth={
                        "users_file": os.path.join(base, "users"),
                        "pass_authorization": True,
                        "user_header": "",
                    }
                )
            )
        ).sites
        auth = s.access.basic_auth
        assert auth is not None
        self.assertEqual(
            (auth.realm, auth.pass_authorization, auth.user_header),
            ("restricted", True, ""),
        )

    def test_basicAuthErrors(self) -> None:
        """
        A realm must fit a quoted-string, a users file is required and
        readable, and the user header is a field name revproxy does not
        manage.
        """
        base = _usersDir(self)
        self.assertEqual(
            self.errorsOf(
                document(
                    site(
                        basic_auth={
                            "realm": 'say "hi"',
                            "user_header": "Bad Name",
                            "users": [],
                        },
                        routes=[
                            route(basic_auth={"users_file": "missing", "realm": ""}),
                            route(path_prefix="/x/", basic_auth={"users_file": ""}),
                        ],
                    )
                ),
                baseDir=base,
            ),
            (
                'sites[0].basic_auth.users: unknown key (did you mean "users_file"?)',
                'sites[0].basic_auth.realm: "say \\"hi\\"" must be printable ASCII '
                'without " or \\',
                "sites[0].basic_auth.users_file: required (an htpasswd file of "
                "bcrypt or argon2 hashes; make one with `revproxy hash-password`)",
                'sites[0].basic_auth.user_header: "Bad Name" is not a header field '
                "name (an RFC 9110 token: letters, digits and !#$%&'*+-.^_`|~)",
                "sites[0].routes[0].basic_auth.realm: must not be empty",
                f'sites[0].routes[0].basic_auth.users_file: cannot read "{base}/'
                'missing": No such file or directory',
                "sites[0].routes[1].basic_auth.users_file: must not be empty",
            ),
        )

    def test_usersFileErrors(self) -> None:
        """
        Every problem of the users file is an error at C{users_file}, with
        its line; a file without users is one too.
        """
        base = _usersDir(self, f"alice:{_HASH}\nbob:hunter2\nalice:{_HASH}\n")
        errors = self.errorsOf(
            document(site(basic_auth={"users_file": "users"})), baseDir=base
        )
        path = os.path.join(base, "users")
        self.assertEqual(len(errors), 2)
        self.assertTrue(
            errors[0].startswith(
                f"sites[0].basic_auth.users_file: {path}, line 2: user 'bob': "
                "this looks like a password in plain text"
            ),
            errors[0],
        )
        self.assertNotIn("hunter2", errors[0])
        self.assertEqual(
            errors[1],
            f"sites[0].basic_auth.users_file: {path}, line 3: user 'alice' is "
            "already given on line 1",
        )
        empty = _usersDir(self, "# nobody\n")
        self.assertErrors(
            document(site(basic_auth={"users_file": os.path.join(empty, "users")})),
            f'sites[0].basic_auth.users_file: "{empty}/users" has no users (add '
            "one: NAME:HASH, the hash from `revproxy hash-password`)",
        )

    def test_usersFileReread(self) -> None:
        """
        The users file is read at each parse, so a reload sees its changes.
        """
        base = _usersDir(self)
        text = document(site(basic_auth={"users_file": "users"}))
        [s] = parseConfig(text, baseDir=base).sites
        self.assertEqual(
            s.access.basic_auth and s.access.basic_auth.users[0][0], "alice"
        )
        with open(os.path.join(base, "users"), "w") as f:
            f.write(f"carol:{_HASH}\n")
        [s] = parseConfig(text, baseDir=base).sites
        self.assertEqual(
            s.access.basic_auth and s.access.basic_auth.users[0][0], "carol"
        )

    def test_forwardAuth(self) -> None:
        """
        C{forward_auth} has an http(s) URL with a path, the fields to copy
        (as written) and a timeout.
        """
        [s] = parseConfig(
            document(
                site(
                    forward_auth={
                        "url": "http://127.0.0.1:9091/api/authz/forward-auth?a=b",
                        "copy_headers": ["Remote-User", "Remote-Groups"],
                        "timeout_secs": 2.5,
                    },
                    routes=[
                        route(forward_auth={"url": "https://Auth.Example.com"}),
                    ],
                )
            )
        ).sites
        self.assertEqual(
            s.access.forward_auth,
            ForwardAuth(
                url="http://127.0.0.1:9091/api/authz/forward-auth?a=b",
                upstream=Upstream("http://127.0.0.1:9091", "http", "127.0.0.1", 9091),
                path="/api/authz/forward-auth?a=b",
                copy_headers=("Remote-User", "Remote-Groups"),
                timeout_secs=2.5,
            ),
        )
        self.assertEqual(
            s.routes[0].access.forward_auth,
            ForwardAuth(
                url="https://Auth.Example.com",
                upstream=Upstream(
                    "https://auth.example.com:443", "https", "auth.example.com", 443
                ),
            ),
        )

    def test_forwardAuthErrors(self) -> None:
        """
        The URL is required and an http(s) URL without a fragment; the
        fields are tokens, once each, not managed by revproxy; the timeout
        is above 0 and at most 300 seconds.
        """
        self.assertErrors(
            document(
                site(
                    forward_auth={
                        "copy_headers": ["Remote-User", "remote-user", "Host", "a b"],
                        "timeout_secs": 0,
                    },
                    routes=[
                        route(forward_auth={"url": "ftp://x", "timeout_secs": 301}),
                        route(path_prefix="/f/", forward_auth={"url": "http://a/b#c"}),
                    ],
                )
            ),
            "sites[0].forward_auth.url: required (the auth service's URL, such as "
            '"http://127.0.0.1:9091/api/verify")',
            'sites[0].forward_auth.copy_headers[1]: "remote-user" already has a '
            "rule (in copy_headers[0]); give each field one rule",
            'sites[0].forward_auth.copy_headers[2]: "Host": the Host sent upstream '
            "is set by upstream_host",
            'sites[0].forward_auth.copy_headers[3]: "a b" is not a header field '
            "name (an RFC 9110 token: letters, digits and !#$%&'*+-.^_`|~)",
            "sites[0].forward_auth.timeout_secs: must be greater than 0 and at "
            "most 300, got 0",
            'sites[0].routes[0].forward_auth.url: "ftp://x" is not an http(s) URL',
            "sites[0].routes[0].forward_auth.timeout_secs: must be greater than 0 "
            "and at most 300, got 301",
            'sites[0].routes[1].forward_auth.url: "http://a/b#c": the URL must not '
            "have a fragment",
        )

    def test_notBoth(self) -> None:
        """
        A site or route has basic_auth or forward_auth, not both.
        """
        base = _usersDir(self)
        self.assertEqual(
            self.errorsOf(
                document(
                    site(
                        basic_auth={"users_file": "users"},
                        forward_auth={"url": "http://127.0.0.1:9091/"},
                    )
                ),
                baseDir=base,
            ),
            (
                "sites[0].forward_auth: a site or route has basic_auth or "
                "forward_auth, not both",
            ),
        )

    def test_routeWithOwnAuth(self) -> None:
        """
        A route may set basic_auth where its site has forward_auth: its
        rules replace the site's.
        """
        base = _usersDir(self)
        [s] = parseConfig(
            document(
                site(
                    forward_auth={"url": "http://127.0.0.1:9091/"},
                    routes=[route(basic_auth={"users_file": "users"})],
                )
            ),
            baseDir=base,
        ).sites
        self.assertIsNotNone(s.access.forward_auth)
        self.assertIsNone(s.routes[0].access.forward_auth)
        self.assertIsNotNone(s.routes[0].access.basic_auth)

    def test_errorPages(self) -> None:
        """
        401 and 403 may have error pages.
        """
        base = os.path.abspath(_write(self, "denied.html", b"<h1>no</h1>"))
        [s] = parseConfig(
            document(site(error_pages={"401": "denied.html", "403": "denied.html"})),
            baseDir=base,
        ).sites
        self.assertEqual(s.error_pages, ((401, b"<h1>no</h1>"), (403, b"<h1>no</h1>")))

    def test_usersNotInRepr(self) -> None:
        """
        The hashes of a C{basic_auth} are not in its C{repr}, so that no log
        line or traceback shows them.
        """
        auth = BasicAuth(users_file="/f", users=(("alice", _HASH),))
        self.assertNotIn(_HASH, repr(auth))
        self.assertIn("/f", repr(auth))


class ClusterTests(ParseTestCase):
    """
    Tests for C{[cluster]}: the Redis server a fleet shares, read and
    checked (nothing acts on it yet).
    """

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.secret = self.file("cluster.key", b"k" * 32)

    def file(self, name: str, data: bytes, mode: int = 0o600) -> str:
        """
        Write C{data} to C{name} in the test's directory, with C{mode}.
        """
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
        return path

    def text(self, **keys: Any) -> str:
        """
        A document with a C{[cluster]} table of C{keys}, over a valid
        minimal one (C{redis_url} and C{secret_file}); a key given as
        L{None} is left out.
        """
        table: dict[str, Any] = {
            "redis_url": "redis://127.0.0.1",
            "secret_file": "cluster.key",
        }
        table.update(keys)
        table = {key: value for key, value in table.items() if value is not None}
        return document(cluster=table)

    def parse(self, **keys: Any) -> ClusterConfig:
        """
        The C{[cluster]} of L{text}, parsed relative to the test's
        directory.
        """
        config = parseConfig(self.text(**keys), baseDir=self.dir)
        assert config.cluster is not None
        return config.cluster

    def errors(self, **keys: Any) -> tuple[str, ...]:
        """
        The errors of L{text}.
        """
        return self.errorsOf(self.text(**keys), baseDir=self.dir)

    def test_absent(self) -> None:
        """
        Without C{[cluster]}, the config has no cluster, and the rest is as
        it always was.
        """
        config = parseConfig(document())
        self.assertIsNone(config.cluster)
        self.assertIsNone(quickConfig("tcp:8080", "http://127.0.0.1:1").cluster)

    def test_minimal(self) -> None:
        """
        C{redis_url} and C{secret_file} are enough; the rest has its
        defaults, the node name being the host name.
        """
        self.patch(socket, "gethostname", lambda: "web-1.example")
        cluster = self.parse()
        self.assertEqual(
            cluster,
            ClusterConfig(
                redis_url="redis://127.0.0.1",
                redis_host="127.0.0.1",
                redis_port=6379,
                redis_db=0,
                redis_tls=False,
                secret_file=self.secret,
                secret=b"k" * 32,
                node_name="web-1.example",
            ),
        )
        self.assertEqual(cluster.key_prefix, "revproxy:")
        self.assertEqual(cluster.redis_password, "")
        self.assertEqual(cluster.redis_password_file, "")
        self.assertFalse(cluster.reload_channel)

    def test_full(self) -> None:
        """
        Every key, read; the URL's parts are kept beside it, relative files
        are resolved against the config file's directory, and the password
        is the file's content without its trailing newline.
        """
        password = self.file("redis.pw", b"s3cret pass\n")
        ca = self.file("redis-ca.pem", b"")
        cluster = self.parse(
            redis_url="rediss://Redis.Example:6380/3",
            redis_password_file="redis.pw",
            redis_ca_file="redis-ca.pem",
            key_prefix="shop:prod:",
            node_name="web-2",
            secret_file="./cluster.key",
            reload_channel=True,
        )
        self.assertEqual(
            (
                cluster.redis_url,
                cluster.redis_host,
                cluster.redis_port,
                cluster.redis_db,
                cluster.redis_tls,
            ),
            ("rediss://Redis.Example:6380/3", "redis.example", 6380, 3, True),
        )
        self.assertEqual(cluster.redis_password_file, password)
        self.assertEqual(cluster.redis_password, "s3cret pass")
        self.assertEqual(cluster.redis_ca_file, ca)
        self.assertEqual(cluster.key_prefix, "shop:prod:")
        self.assertEqual(cluster.node_name, "web-2")
        self.assertEqual(cluster.secret_file, self.secret)
        self.assertEqual(cluster.secret, b"k" * 32)
        self.assertTrue(cluster.reload_channel)

    def test_urls(self) -> None:
        """
        The host may be a name, IPv4 or IPv6 in brackets; the port and the
        database are optional, the database 0 to 15.
        """
        for url, parts in (
            ("redis://10.0.0.5", ("10.0.0.5", 6379, 0, False)),
            ("redis://10.0.0.5:7000/", ("10.0.0.5", 7000, 0, False)),
            ("REDIS://cache.internal/15", ("cache.internal", 6379, 15, False)),
            ("rediss://[2001:DB8::7]:6390/2", ("2001:db8::7", 6390, 2, True)),
        ):
            cluster = self.parse(redis_url=url)
            self.assertEqual(
                (
                    cluster.redis_host,
                    cluster.redis_port,
                    cluster.redis_db,
                    cluster.redis_tls,
                ),
                parts,
                url,
            )

    def test_redisURLRequired(self) -> None:
        """
        C{redis_url} must be given.
        """
        self.assertEqual(
            self.errors(redis_url=None),
            (
                "cluster.redis_url: required in [cluster] (such as "
                '"redis://127.0.0.1:6379/0")',
            ),
        )

    def test_badRedisURLs(self) -> None:
        """
        A bad Redis URL is an error saying what is wrong with it.
        """
        for url, problem in (
            ("http://cache:6379/0", " is not a redis:// or rediss:// URL"),
            ("cache:6379", " is not a redis:// or rediss:// URL"),
            ("redis://cache:0/0", ": the port must be between 1 and 65535"),
            (
                "redis://cache:70000/0",
                ": the port must be a number between 1 and 65535",
            ),
            ("redis://cache:port/0", ": the port must be a number between 1 and 65535"),
            ("redis://cache:/0", ": the port is empty"),
            (
                "redis://cache/16",
                ': the path must be a database number between 0 and 15 (got "/16")',
            ),
            (
                "redis://cache/zero",
                ': the path must be a database number between 0 and 15 (got "/zero")',
            ),
            (
                "redis://cache/0?timeout=1",
                ": the URL must not have a query or fragment",
            ),
            ("redis://cache/0?", ": the URL must not have a query or fragment"),
            ("redis:///0", ": the URL has no host"),
            ("redis://::1/0", ": an IPv6 address must be in brackets"),
            (
                "redis://cache .internal/0",
                " is not a Redis URL: it contains whitespace",
            ),
        ):
            self.assertEqual(
                self.errors(redis_url=url),
                (f"cluster.redis_url: {_tomlString(url)}{problem}",),
                url,
            )

    def test_noCredentialsInURL(self) -> None:
        """
        A user or password in the URL is an error that points to
        C{redis_password_file}, and does not repeat the password.
        """
        for url in (
            "redis://:hunter2@cache/0",
            "rediss://revproxy:hunter2@cache:6380",
            "redis://revproxy:hunter2 @cache/0?x",
        ):
            self.assertEqual(
                self.errors(redis_url=url),
                (
                    "cluster.redis_url: the URL must not hold a user or password; "
                    "put the password in a file named by redis_password_file "
                    "instead, so that it is not in the config file, which is often "
                    "world-readable",
                ),
            )

    def test_passwordFileErrors(self) -> None:
        """
        The password file must be readable, UTF-8 and not empty (a lone
        newline is empty).
        """
        missing = os.path.join(self.dir, "missing.pw")
        self.file("empty.pw", b"")
        self.file("newline.pw", b"\n")
        self.file("binary.pw", b"\xff\xfe")
        self.assertEqual(
            self.errors(redis_password_file="missing.pw"),
            (
                f"cluster.redis_password_file: cannot read {_tomlString(missing)}: "
                "No such file or directory",
            ),
        )
        for name in ("empty.pw", "newline.pw"):
            path = _tomlString(os.path.join(self.dir, name))
            self.assertEqual(
                self.errors(redis_password_file=name),
                (
                    f"cluster.redis_password_file: {path} is empty (it holds the "
                    "Redis password, on one line)",
                ),
            )
        path = _tomlString(os.path.join(self.dir, "binary.pw"))
        self.assertEqual(
            self.errors(redis_password_file="binary.pw"),
            (f"cluster.redis_password_file: {path} is not UTF-8 text",),
        )

    def test_passwordCRLF(self) -> None:
        """
        Only the trailing newline is taken off, also a CRLF one.
        """
        self.file("crlf.pw", b" pass word \r\n")
        cluster = self.parse(redis_password_file="crlf.pw")
        self.assertEqual(cluster.redis_password, " pass word ")

    def test_absolutePathsKept(self) -> None:
        """
        An absolute path is used as written.
        """
        cluster = self.parse(secret_file=self.secret)
        self.assertEqual(cluster.secret_file, self.secret)

    def test_secretFileRequired(self) -> None:
        """
        C{secret_file} must be given, and the error says how to make one.
        """
        self.assertEqual(
            self.errors(secret_file=None),
            (
                "cluster.secret_file: required in [cluster]: a file of at least 32 "
                "random bytes (make one with: head -c 32 /dev/urandom > "
                "/etc/revproxy/cluster.key; chmod 600 /etc/revproxy/cluster.key)",
            ),
        )
        (error,) = self.errors(secret_file="")
        self.assertTrue(error.startswith("cluster.secret_file: must not be empty"))

    def test_secretFileMissing(self) -> None:
        """
        A secret file that cannot be read is an error.
        """
        missing = os.path.join(self.dir, "nope.key")
        self.assertEqual(
            self.errors(secret_file="nope.key"),
            (
                f"cluster.secret_file: cannot read {_tomlString(missing)}: "
                "No such file or directory",
            ),
        )

    def test_secretFileShort(self) -> None:
        """
        A secret of fewer than 32 bytes is an error saying how to make one.
        """
        short = self.file("short.key", b"k" * 31)
        self.assertEqual(
            self.errors(secret_file="short.key"),
            (
                f"cluster.secret_file: {_tomlString(short)} holds 31 byte(s); at "
                "least 32 are needed (make one with: head -c 32 /dev/urandom > "
                "/etc/revproxy/cluster.key; chmod 600 /etc/revproxy/cluster.key)",
            ),
        )

    def test_secretIsRawBytes(self) -> None:
        """
        The secret is the file's bytes as they are, a newline included.
        """
        data = bytes(range(256))[:40] + b"\n"
        self.file("raw.key", data)
        self.assertEqual(self.parse(secret_file="raw.key").secret, data)

    def test_keyPrefix(self) -> None:
        """
        C{key_prefix} is 1 to 64 printable ASCII characters without spaces.
        """
        self.assertEqual(self.parse(key_prefix="a" * 64).key_prefix, "a" * 64)
        for prefix in ("", "a b", "a" * 65, "é:"):
            self.assertEqual(
                self.errors(key_prefix=prefix),
                (
                    f"cluster.key_prefix: {_tomlString(prefix)} must be 1 to 64 "
                    "printable ASCII characters without spaces",
                ),
                prefix,
            )
        self.assertEqual(
            self.errors(key_prefix=1),
            ("cluster.key_prefix: expected a string, got integer 1",),
        )

    def test_nodeName(self) -> None:
        """
        C{node_name} is 1 to 64 letters, digits, dots, hyphens or
        underscores.
        """
        self.assertEqual(self.parse(node_name="a_b.c-9").node_name, "a_b.c-9")
        for name in ("", "web 1", "web/1", "n" * 65):
            self.assertEqual(
                self.errors(node_name=name),
                (
                    f"cluster.node_name: {_tomlString(name)} must be 1 to 64 "
                    "letters, digits, dots, hyphens or underscores",
                ),
                name,
            )

    def test_hostNameNotANodeName(self) -> None:
        """
        When the host name does not fit, leaving C{node_name} out is an
        error that says to set it.
        """
        self.patch(socket, "gethostname", lambda: "bad host")
        self.assertEqual(
            self.errors(),
            (
                'cluster.node_name: the host name "bad host" is not a valid node '
                "name (1 to 64 letters, digits, dots, hyphens or underscores); "
                "set node_name",
            ),
        )
        self.assertEqual(self.parse(node_name="web-1").node_name, "web-1")

    def test_caFileOnlyWithTLS(self) -> None:
        """
        C{redis_ca_file} with a C{redis://} URL is an error.
        """
        self.assertEqual(
            self.errors(redis_ca_file="ca.pem"),
            (
                "cluster.redis_ca_file: only used with a rediss:// redis_url "
                "(Redis over TLS)",
            ),
        )

    def test_caFileChecked(self) -> None:
        """
        L{checkConfig} reports a C{redis_ca_file} that cannot be read.
        """
        config = parseConfig(
            self.text(redis_url="rediss://cache", redis_ca_file="ca.pem"),
            baseDir=self.dir,
        )
        path = _tomlString(os.path.join(self.dir, "ca.pem"))
        self.assertEqual(
            checkConfig(config),
            [f"cluster.redis_ca_file: cannot read {path}: No such file or directory"],
        )

    def test_reloadChannel(self) -> None:
        """
        C{reload_channel} is a boolean.
        """
        self.assertTrue(self.parse(reload_channel=True).reload_channel)
        self.assertEqual(
            self.errors(reload_channel="yes"),
            ('cluster.reload_channel: expected true or false, got string "yes"',),
        )

    def test_unknownKey(self) -> None:
        """
        An unknown key of C{[cluster]} is an error, with the key it may
        have meant; a cluster key elsewhere says where it belongs.
        """
        self.assertEqual(
            self.errors(redis_uri="redis://x"),
            ('cluster.redis_uri: unknown key (did you mean "redis_url"?)',),
        )
        self.assertEqual(
            self.errorsOf(document(server={"key_prefix": "x:"})),
            ("server.key_prefix: unknown key (it belongs in [cluster])",),
        )
        self.assertEqual(
            self.errorsOf("cluster = 1\n" + document()),
            ("cluster: expected a table, got integer 1",),
        )

    def test_allErrorsAtOnce(self) -> None:
        """
        Every problem of the table is reported at once.
        """
        self.assertEqual(
            len(
                self.errors(
                    redis_url="http://x",
                    key_prefix="",
                    node_name="",
                    secret_file=None,
                )
            ),
            4,
        )

    def test_secretsNotInRepr(self) -> None:
        """
        Neither the Redis password nor the secret shows in the repr of the
        config (logs, tracebacks).
        """
        self.file("redis.pw", b"hunter2-password\n")
        self.file("secret.key", b"S" * 40)
        config = parseConfig(
            self.text(redis_password_file="redis.pw", secret_file="secret.key"),
            baseDir=self.dir,
        )
        assert config.cluster is not None
        self.assertEqual(config.cluster.redis_password, "hunter2-password")
        self.assertEqual(config.cluster.secret, b"S" * 40)
        for text in (repr(config), repr(config.cluster), str(config)):
            self.assertNotIn("hunter2", text)
            self.assertNotIn("SSSS", text)
            self.assertIn("redis.pw", text)

    def test_worldReadablePasswordWarned(self) -> None:
        """
        A Redis password file that group or others may read is a config
        warning too.
        """
        password = self.file("redis.pw", b"hunter2\n")
        text = self.text(redis_password_file="redis.pw")
        self.assertEqual(configWarnings(parseConfig(text, baseDir=self.dir)), [])
        os.chmod(password, 0o644)
        self.assertEqual(
            configWarnings(parseConfig(text, baseDir=self.dir)),
            [
                f"cluster.redis_password_file: {password} can be read by group "
                f"or others (mode 0644): chmod 600 {password}"
            ],
        )

    def test_worldReadableSecretWarned(self) -> None:
        """
        A secret file that group or others may read is a config warning;
        one only its owner may read is not.
        """
        self.assertEqual(configWarnings(parseConfig(self.text(), baseDir=self.dir)), [])
        for mode in (0o640, 0o604, 0o644):
            os.chmod(self.secret, mode)
            self.assertEqual(
                configWarnings(parseConfig(self.text(), baseDir=self.dir)),
                [
                    f"cluster.secret_file: {self.secret} can be read by group or "
                    f"others (mode {mode:04o}): chmod 600 {self.secret}"
                ],
            )
