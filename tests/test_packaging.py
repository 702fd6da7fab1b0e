"""
Tests for the Debian package's own files in C{debian/}: the shipped config
example, the man pages, the logrotate file and what the unit allows.

They read the files as text (no package is built, nothing is installed) and
hold them to the code: the example must pass revproxy's validation, and every
config key and admin command of the code must be documented in the man pages,
so that a new key or command without documentation fails here.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
from collections.abc import Iterator

from twisted.trial.unittest import SynchronousTestCase

from revproxy import admin, admin_client, cli
from revproxy import metrics as metricsModule
from revproxy.config import (
    _ACME_KEYS,
    _BASIC_AUTH_KEYS,
    _CLUSTER_KEYS,
    _DEFAULTS_KEYS,
    _FORWARD_AUTH_KEYS,
    _HEADER_RULES_KEYS,
    _HEALTH_CHECK_KEYS,
    _LOGGING_KEYS,
    _RATE_LIMIT_KEYS,
    _REDIRECT_KEYS,
    _RESPOND_KEYS,
    _ROUTE_KEYS,
    _SERVER_KEYS,
    _SITE_KEYS,
    _TOP_KEYS,
    Config,
    checkConfig,
    loadConfig,
    parseConfig,
)
from revproxy.reload import configWarnings

_DEBIAN = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "debian"
)

# The man page's subsection (its first word) that documents each table, and
# the keys that table takes.
_TABLES: dict[str, tuple[str, ...]] = {
    "[server]": _SERVER_KEYS,
    "[acme]": _ACME_KEYS,
    "[cluster]": _CLUSTER_KEYS,
    "[logging]": _LOGGING_KEYS,
    "[defaults]": _DEFAULTS_KEYS,
    "[[sites]]": _SITE_KEYS,
    "rate_limit": _RATE_LIMIT_KEYS,
    "health_check": _HEALTH_CHECK_KEYS,
    "[[sites.routes]]": _ROUTE_KEYS,
    "redirect": _REDIRECT_KEYS,
    "respond": _RESPOND_KEYS,
    "request_headers": _HEADER_RULES_KEYS,
    "basic_auth": _BASIC_AUTH_KEYS,
    "forward_auth": _FORWARD_AUTH_KEYS,
}

# The TLS step of debian/config.toml's header comment, as an operator
# follows it: the line to delete and the commented lines to uncomment.
_TLS_DELETE = "listen_https = []"
_TLS_UNCOMMENT = ('listen_https = ["tcp:443"]', "email = ", 'tls = "acme"')

# The proxy step of the header comment: the shipped site answers every
# request itself until its respond line gives way to upstreams.
_PROXY_DELETE = "respond = "
_PROXY_UNCOMMENT = "upstreams = "

_MACRO_TAG = re.compile(r"\.(B|I|BR|RB|BI|IB|IR|RI)\s+(.*)")


def _read(name: str) -> str:
    """
    The text of C{debian/NAME}.
    """
    with open(os.path.join(_DEBIAN, name), encoding="utf-8") as f:
        return f.read()


def _unitSettings() -> dict[str, list[str]]:
    """
    Every assignment of C{debian/revproxy.service}, by key, in order (for
    keys such as C{SystemCallFilter=} that may be given more than once).
    """
    settings: dict[str, list[str]] = {}
    for line in _read("revproxy.service").splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and not key.startswith(("#", ";", "[")):
            settings.setdefault(key, []).append(value.strip())
    return settings


#: The system calls that set C{RLIMIT_NOFILE} and the names that hold them in
#: a C{SystemCallFilter=} (themselves and their groups, with the groups that
#: include those), as C{systemd-analyze syscall-filter} lists them (systemd
#: 252, bookworm).  glibc's C{setrlimit()} makes the C{prlimit64} call.
_RLIMIT_SYSCALLS = {
    "prlimit64": {"prlimit64", "@default", "@system-service", "@known"},
    "setrlimit": {"setrlimit", "@resources", "@system-service", "@known"},
}


def _syscallAllowed(filters: list[str], syscall: str) -> bool:
    """
    Whether the C{SystemCallFilter=} assignments C{filters} let C{syscall}
    through, as systemd reads them: the first assignment makes an allow
    list (or, with C{~}, a deny list); each later name adds to it or, with
    C{~}, takes away; an empty assignment starts over.
    """
    names = _RLIMIT_SYSCALLS[syscall]
    allowed = True
    first = True
    for value in filters:
        if not value:
            allowed, first = True, True
            continue
        deny = value.startswith("~")
        if first:
            allowed, first = deny, False
        if names & set(value.lstrip("~").split()):
            allowed = not deny
    return allowed


def _plain(roff: str) -> str:
    """
    C{roff} text as it reads: font changes dropped, the usual escapes
    replaced by their characters.
    """
    text = re.sub(r"\\f[BIRP]", "", roff)
    for escape, char in (
        (r"\-", "-"),
        (r"\(dq", '"'),
        (r"\(aq", "'"),
        (r"\(ha", "^"),
        (r"\&", ""),
        (r"\e", "\\"),
    ):
        text = text.replace(escape, char)
    return text


def _unmacro(line: str) -> str:
    """
    A font macro line (C{.B reload}, C{.BR SIGTERM ", " SIGINT}) as the
    text it sets; any other line unchanged.
    """
    match = _MACRO_TAG.fullmatch(line)
    if match is None:
        return line
    words = shlex.split(match.group(2))
    return " ".join(words) if len(match.group(1)) == 1 else "".join(words)


def _title(line: str) -> str:
    """
    The title of a C{.SH} or C{.SS} line, without its quotes.
    """
    return _plain(" ".join(shlex.split(line.split(None, 1)[1])))


def _tags(roff: str) -> Iterator[tuple[str, str, str]]:
    """
    Every tagged paragraph (C{.TP}) of a man page: its section, subsection
    and tag, as plain text.
    """
    lines = roff.splitlines()
    section = subsection = ""
    for index, line in enumerate(lines):
        if line.startswith(".SH "):
            section, subsection = _title(line), ""
        elif line.startswith(".SS "):
            subsection = _title(line)
        elif line == ".TP" and index + 1 < len(lines):
            yield section, subsection, _plain(_unmacro(lines[index + 1]))


def _sectionText(roff: str, name: str) -> str:
    """
    The plain text of the C{.SH} section C{name}.
    """
    match = re.search(
        rf'^\.SH "?{re.escape(name)}"?\n(.*?)(?=^\.SH |\Z)', roff, re.M | re.S
    )
    if match is None:
        raise AssertionError(f"no section {name}")
    return _plain(match.group(1))


def _documentedKeys(roff: str) -> dict[str, set[str]]:
    """
    The keys documented under each subsection of CONFIGURATION: the names
    before the first parenthesis of each tag (C{listen_http (array of
    strings, default ...)}; several are separated by commas).
    """
    keys: dict[str, set[str]] = {}
    for section, subsection, tag in _tags(roff):
        if section != "CONFIGURATION" or not subsection:
            continue
        head = tag.split(" (", 1)[0]
        keys.setdefault(subsection.split()[0], set()).update(
            name.strip() for name in head.split(",")
        )
    return keys


def _documentedDefaults(roff: str) -> Iterator[tuple[str, str, str]]:
    """
    Each table, key and default that the page gives as a value
    (C{(string, default "json")}); not the ones in words (C{default not
    set}, C{default from [defaults]}).
    """
    for section, subsection, tag in _tags(roff):
        match = re.fullmatch(r"([a-z0-9_]+) \([^,]+, default (.+)\)", tag)
        if section != "CONFIGURATION" or match is None:
            continue
        key, value = match.groups()
        if re.fullmatch(r'[0-9]+|true|false|".*"|\[.*\]', value):
            yield subsection.split()[0], key, value


def _uncomment(text: str, start: str) -> str:
    """
    C{text} with its one line C{# START...} uncommented, as an operator
    would.
    """
    pattern = re.compile(rf"^# ?({re.escape(start)}.*)$", re.M)
    found = pattern.findall(text)
    if len(found) != 1:
        raise AssertionError(f"{len(found)} commented lines start with {start!r}")
    return pattern.sub(lambda m: m.group(1), text)


def _deleteLine(text: str, line: str) -> str:
    """
    C{text} without its one line C{line} (trailing comment allowed).
    """
    pattern = re.compile(rf"^{re.escape(line)}[ \t]*(#.*)?\n", re.M)
    if len(pattern.findall(text)) != 1:
        raise AssertionError(f"no single line {line!r} to delete")
    return pattern.sub("", text)


def _deleteLineStarting(text: str, start: str) -> str:
    """
    C{text} without its one line that starts with C{start}.
    """
    pattern = re.compile(rf"^{re.escape(start)}.*\n", re.M)
    if len(pattern.findall(text)) != 1:
        raise AssertionError(f"no single line starting with {start!r} to delete")
    return pattern.sub("", text)


def _proxyVariant(text: str) -> str:
    """
    debian/config.toml after its proxy step: upstreams instead of respond.
    """
    return _uncomment(_deleteLineStarting(text, _PROXY_DELETE), _PROXY_UNCOMMENT)


def _acmeVariant(text: str) -> str:
    """
    debian/config.toml after the two documented TLS steps.
    """
    text = _deleteLine(text, _TLS_DELETE)
    for start in _TLS_UNCOMMENT:
        text = _uncomment(text, start)
    return text


class ShippedConfigTests(SynchronousTestCase):
    """
    debian/config.toml, installed as /etc/revproxy/config.toml.
    """

    def load(self, text: str) -> Config:
        """
        Parse C{text} as the config file in debian/, and check it as
        C{--check} does.
        """
        config = parseConfig(text, baseDir=_DEBIAN)
        self.assertEqual(checkConfig(config), [])
        return config

    def test_valid(self) -> None:
        """
        The file as shipped passes revproxy's validation and is the promised
        example: plain HTTP on port 80, every Host answered with a short
        page that says what to edit, nothing proxied, the admin socket,
        state and log where the package puts them, the ops listener on
        loopback.
        """
        path = os.path.join(_DEBIAN, "config.toml")
        _read("config.toml")
        config = loadConfig(path)
        self.assertEqual(checkConfig(config), [])
        server = config.server
        self.assertEqual(server.listen_http, ("tcp:80",))
        self.assertEqual(server.listen_https, ())
        self.assertEqual(server.admin_socket_path, "/run/revproxy/admin.sock")
        self.assertEqual(server.state_dir, "/var/lib/revproxy")
        self.assertEqual(server.ops_listen, "tcp:9901:interface=127.0.0.1")
        self.assertEqual(config.logging.access_log, "/var/log/revproxy/access.log")
        self.assertEqual(config.logging.access_log_format, "json")
        [site] = config.sites
        self.assertTrue(site.default)
        self.assertEqual(site.tls, "none")
        self.assertEqual(site.upstreams, ())
        self.assertEqual(site.routes, ())
        self.assertIsNotNone(site.respond)
        assert site.respond is not None
        self.assertEqual(site.respond.status, 200)
        self.assertEqual(site.respond.content_type, "text/plain; charset=utf-8")
        assert site.respond.body is not None
        self.assertTrue(site.respond.body.isLiteral)
        self.assertIn("revproxy is running", site.respond.body.source)
        self.assertIn("edit /etc/revproxy/config.toml", site.respond.body.source)
        self.assertEqual(configWarnings(config), [])

    def test_proxyVariant(self) -> None:
        """
        Following the header comment's proxy step (delete the respond line,
        uncomment upstreams) gives a valid config that sends every Host to
        the upstream, alone or with the TLS steps.
        """
        text = _read("config.toml")
        header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
        self.assertIn(_PROXY_DELETE, header)
        self.assertIn(f"# {_PROXY_UNCOMMENT}", header)
        [site] = self.load(_proxyVariant(text)).sites
        self.assertIsNone(site.respond)
        self.assertEqual([u.url for u in site.upstreams], ["http://127.0.0.1:8000"])
        [site] = self.load(_acmeVariant(_proxyVariant(text))).sites
        self.assertEqual((site.tls, len(site.upstreams)), ("acme", 1))

    def test_acmeVariant(self) -> None:
        """
        Following the two TLS steps of the file's header comment, line by
        line, gives a valid config with HTTPS on port 443 and an ACME
        certificate for the site.
        """
        text = _read("config.toml")
        header = "\n".join(
            line for line in text.splitlines() if line.startswith("#")
        ).split("\n\n")[0]
        for line in (_TLS_DELETE, *_TLS_UNCOMMENT):
            self.assertIn(line, header)
        config = self.load(_acmeVariant(text))
        self.assertEqual(config.server.listen_https, ("tcp:443",))
        self.assertEqual([site.tls for site in config.sites], ["acme"])
        self.assertTrue(config.acme.email)

    def test_acmeStepOneAlone(self) -> None:
        """
        Step 1 alone keeps the file valid too (an HTTPS listener with no
        TLS site yet); uncommenting without deleting is a TOML error that
        C{--check} reports, which is why the comment says to delete.
        """
        text = _read("config.toml")
        stepOne = _uncomment(_deleteLine(text, _TLS_DELETE), _TLS_UNCOMMENT[0])
        self.assertEqual(self.load(stepOne).server.listen_https, ("tcp:443",))

    def test_everyCommentedSettingIsValid(self) -> None:
        """
        Every commented-out setting of the file, uncommented on top of the
        ACME variant, still gives a valid config: the examples in the
        comments hold no typo.
        """
        text = _acmeVariant(_proxyVariant(_read("config.toml")))
        commented = re.findall(r"^# ?([a-z_]+ = .*)$", text, re.M)
        self.assertNotEqual(commented, [])
        for line in commented:
            text = _uncomment(text, line)
        self.load(text)


class RevproxyManPageTests(SynchronousTestCase):
    """
    debian/revproxy.8.
    """

    def test_everyTableHasASubsection(self) -> None:
        """
        Each top-level table of the config is a subsection of
        CONFIGURATION.
        """
        documented = set(_documentedKeys(_read("revproxy.8")))
        for table in _TOP_KEYS:
            self.assertTrue(
                {f"[{table}]", f"[[{table}]]"} & documented, f"[{table}] is missing"
            )

    def test_everyKeyDocumented(self) -> None:
        """
        Each table's subsection documents exactly the keys that
        L{revproxy.config} takes in that table: a new key without
        documentation, or documentation of a key that is gone, fails.
        """
        documented = _documentedKeys(_read("revproxy.8"))
        for table, keys in _TABLES.items():
            self.assertEqual(sorted(documented.get(table, set())), sorted(keys), table)

    def test_optionsDocumented(self) -> None:
        """
        OPTIONS documents every option of the C{revproxy} command, and its
        default config file.
        """
        options = _sectionText(_read("revproxy.8"), "OPTIONS")
        strings = [
            option
            for action in cli._parser()._actions
            for option in action.option_strings
        ]
        self.assertIn("--check", strings)
        for option in strings:
            self.assertRegex(
                options, rf"(?m)^{re.escape(option)}\b|[ ,]{re.escape(option)}\b"
            )
        self.assertIn(cli.DEFAULT_CONFIG, options)

    def test_defaultsAreTheDefaults(self) -> None:
        """
        Each default the page gives as a value is what revproxy uses when
        the key is left out.
        """
        site = (
            '[[sites]]\nname = "t"\nhosts = ["t.example"]\n'
            'upstreams = ["https://127.0.0.1:8443"]\n'
        )
        users = json.dumps(os.path.abspath(self.mktemp()))
        with open(json.loads(users), "w") as f:
            f.write("u:$2b$04$" + "a" * 53 + "\n")
        secret = os.path.abspath(self.mktemp())
        with open(secret, "wb") as f:
            f.write(b"s" * 32)
        clusterKeys = (
            f'redis_url = "redis://127.0.0.1"\nsecret_file = {json.dumps(secret)}\n'
        )
        checked = 0
        for table, key, value in _documentedDefaults(_read("revproxy.8")):
            setting = f"{key} = {value}\n"
            if table == "[[sites]]":
                without, with_ = site, site + setting
                attribute = "sites"
            elif table == "rate_limit":
                limit = "rate_limit = { requests_per_second = 1, burst = 1"
                without = site + limit + " }\n"
                with_ = site + f"{limit}, {key} = {value} }}\n"
                attribute = "sites"
            elif table in ("[[sites.routes]]", "redirect", "respond"):
                entry = {
                    "[[sites.routes]]": 'upstreams = ["http://127.0.0.1:9000"]',
                    "redirect": 'redirect = { to = "/" }',
                    "respond": "respond = { status = 200 }",
                }[table]
                if table == "[[sites.routes]]":
                    route = f'[[sites.routes]]\npath_prefix = "/a/"\n{entry}\n'
                    without, with_ = site + route, site + route + setting
                else:
                    route = '[[sites.routes]]\npath = "/a"\n'
                    without = site + route + entry + "\n"
                    with_ = site + route + f"{entry[:-2]}, {key} = {value} }}\n"
                attribute = "sites"
            elif table in ("health_check", "basic_auth", "forward_auth"):
                check = {
                    "health_check": 'health_check = { path = "/h"',
                    "basic_auth": f"basic_auth = {{ users_file = {users}",
                    "forward_auth": 'forward_auth = { url = "http://127.0.0.1:1/"',
                }[table]
                without = site + check + " }\n"
                with_ = site + f"{check}, {key} = {value} }}\n"
                attribute = "sites"
            elif table == "[cluster]":
                cluster = f"[cluster]\n{clusterKeys}"
                without, with_ = cluster + site, cluster + setting + site
                attribute = "cluster"
            else:
                without, with_ = site, f"{table}\n{setting}" + site
                attribute = table.strip("[]")
            self.assertEqual(
                getattr(parseConfig(with_), attribute),
                getattr(parseConfig(without), attribute),
                f"{table} {key}: documented default {value}",
            )
            checked += 1
        self.assertGreater(checked, 40)

    def test_sections(self) -> None:
        """
        The page has the sections an operator looks for, the NAME line that
        lexgrog and lintian read, and names every metric.
        """
        roff = _read("revproxy.8")
        sections = re.findall(r'^\.SH "?([^"\n]+)"?$', roff, re.M)
        for name in (
            "NAME",
            "SYNOPSIS",
            "DESCRIPTION",
            "OPTIONS",
            "CONFIGURATION",
            "SIGNALS",
            "OPS LISTENER",
            "EXIT STATUS",
            "FILES",
            "EXAMPLES",
            "SEE ALSO",
        ):
            self.assertIn(name, sections)
        self.assertRegex(roff, r"\n\.SH NAME\nrevproxy \\- \S")
        signals = {tag for section, _, tag in _tags(roff) if section == "SIGNALS"}
        self.assertEqual(signals, {"SIGHUP", "SIGTERM, SIGINT", "SIGUSR1"})
        metrics = _sectionText(roff, "OPS LISTENER")
        with open(metricsModule.__file__, encoding="utf-8") as f:
            source = f.read()
        names = set(re.findall(r'"(revproxy_[a-z_]+)"', source))
        self.assertNotEqual(names, set())
        for name in names:
            self.assertRegex(metrics, rf"\b{name}(_total|_info)?\b")


class RevproxyAdminManPageTests(SynchronousTestCase):
    """
    debian/revproxy-admin.8.
    """

    def test_everyCommandDocumented(self) -> None:
        """
        COMMANDS documents exactly the commands of L{admin._USAGE}, each
        with the arguments its usage names.
        """
        roff = _read("revproxy-admin.8")
        words: dict[str, set[str]] = {}
        for section, _, tag in _tags(roff):
            if section == "COMMANDS":
                name, *rest = tag.split()
                words.setdefault(name, set()).update(
                    re.findall(r"[A-Za-z_]+", " ".join(rest))
                )
        self.assertEqual(sorted(words), sorted(admin._USAGE))
        for name, usage in admin._USAGE.items():
            for argument in re.findall(r"[A-Za-z_]+", " ".join(usage.split()[1:])):
                self.assertIn(argument, words[name], name)

    def test_optionsAndExitStatus(self) -> None:
        """
        The page documents every option of revproxy-admin, its socket's
        environment variable and default, and its exit statuses.
        """
        roff = _read("revproxy-admin.8")
        options = _sectionText(roff, "OPTIONS")
        for action in admin_client._parser()._actions:
            for option in action.option_strings:
                self.assertIn(option, options)
        self.assertIn(admin_client.ENV_SOCKET, options)
        self.assertIn(admin_client.DEFAULT_SOCKET, options)
        statuses = {tag for section, _, tag in _tags(roff) if section == "EXIT STATUS"}
        self.assertEqual(
            statuses,
            {
                str(admin_client.EXIT_OK),
                str(admin_client.EXIT_ERROR),
                str(admin_client.EXIT_UNREACHABLE),
            },
        )
        self.assertRegex(roff, r"\n\.SH NAME\nrevproxy\\-admin \\- \S")


class ManPageLintTests(SynchronousTestCase):
    """
    What lintian complains about in both pages (what groff says about them
    is in L{tests.integration.test_packaging}).
    """

    pages = ("revproxy.8", "revproxy-admin.8")

    def test_noLintianComplaints(self) -> None:
        """
        No trailing whitespace, no option dash written as a hyphen
        (C{-x}, C{--x} instead of C{\\-x}), no line starting with C{'} (a
        control line by accident).
        """
        for page in self.pages:
            for number, line in enumerate(_read(page).splitlines(), 1):
                where = f"{page}:{number}: {line!r}"
                self.assertEqual(line, line.rstrip(), where)
                self.assertFalse(line.startswith("'"), where)
                if not line.startswith('.\\"'):
                    self.assertNotRegex(line, r"(?<![\\\w])--?[A-Za-z]", where)


class LogrotateTests(SynchronousTestCase):
    """
    debian/revproxy.logrotate, installed as /etc/logrotate.d/revproxy.
    """

    def stanza(self) -> tuple[set[str], str, str]:
        """
        The directives, the postrotate script and the path pattern of the
        file's one stanza.
        """
        text = _read("revproxy.logrotate")
        match = re.search(r"^(\S+) \{\n(.*?)^\}", text, re.M | re.S)
        assert match is not None, "no stanza"
        pattern, body = match.groups()
        script = re.search(r"postrotate\n(.*?)\n\s*endscript", body, re.S)
        assert script is not None, "no postrotate script"
        directives = {
            " ".join(line.split())
            for line in body.replace(script.group(1), "").splitlines()
            if line.strip()
        }
        return directives, script.group(1), pattern

    def test_rotatesTheAccessLog(self) -> None:
        """
        The stanza names /var/log/revproxy/*.log, which matches the access
        log of the shipped config, with the agreed policy.
        """
        directives, _, pattern = self.stanza()
        self.assertEqual(pattern, "/var/log/revproxy/*.log")
        config = loadConfig(os.path.join(_DEBIAN, "config.toml"))
        self.assertTrue(fnmatch.fnmatch(config.logging.access_log, pattern))
        self.assertTrue({"daily", "weekly"} & directives)
        for directive in (
            "rotate 14",
            "compress",
            "delaycompress",
            "missingok",
            "notifempty",
            "create 0640 revproxy revproxy",
            "sharedscripts",
            "postrotate",
            "endscript",
        ):
            self.assertIn(directive, directives)

    def test_rotatesAsTheServiceUser(self) -> None:
        """
        logrotate renames and creates files in /var/log/revproxy, which the
        service's user owns, as that user and group (the unit's C{User=}
        and C{Group=}), not as root: the service, compromised, could
        otherwise have root follow a link it put there.
        """
        directives, _, _ = self.stanza()
        unit = _unitSettings()
        user, group = unit["User"][-1], unit["Group"][-1]
        self.assertEqual(unit["LogsDirectory"], ["revproxy"])
        self.assertIn(f"su {user} {group}", directives)
        self.assertIn(f"create 0640 {user} {group}", directives)

    def test_reopens(self) -> None:
        """
        postrotate asks revproxy to reopen its log over the shipped config's
        admin socket, falls back to SIGUSR1 through systemd, and never fails
        logrotate.
        """
        _, script, _ = self.stanza()
        config = loadConfig(os.path.join(_DEBIAN, "config.toml"))
        self.assertIn(
            f"revproxy-admin --socket {config.server.admin_socket_path} reopen-logs",
            script,
        )
        self.assertRegex(script, r"systemctl kill .*--signal=USR1 revproxy\.service")
        self.assertTrue(script.rstrip().endswith("|| true"))


class UnitLimitTests(SynchronousTestCase):
    """
    debian/revproxy.service gives revproxy room for many connections, and
    its system-call filter lets the proxy raise its own soft limit.
    """

    def test_limitNOFILE(self) -> None:
        """
        The unit sets C{LimitNOFILE=65536} (soft and hard).
        """
        self.assertEqual(_unitSettings()["LimitNOFILE"], ["65536"])

    def test_filterAllowsRaisingTheLimit(self) -> None:
        """
        The unit's C{SystemCallFilter=} lets C{prlimit64} through, the call
        behind glibc's C{setrlimit()} and Python's C{resource.setrlimit}
        (the C{setrlimit} call itself is in the denied C{@resources}).
        """
        filters = _unitSettings()["SystemCallFilter"]
        self.assertTrue(_syscallAllowed(filters, "prlimit64"), filters)

    def test_filterReading(self) -> None:
        """
        The filter reading follows systemd's rules.
        """
        unit = ["@system-service", "~@privileged @resources"]
        self.assertTrue(_syscallAllowed(unit, "prlimit64"))
        self.assertFalse(_syscallAllowed(unit, "setrlimit"))
        self.assertTrue(_syscallAllowed([*unit, "setrlimit"], "setrlimit"))
        self.assertFalse(_syscallAllowed(["@basic-io"], "prlimit64"))
        self.assertFalse(_syscallAllowed(["~@default"], "prlimit64"))
        self.assertTrue(_syscallAllowed(["~@resources"], "prlimit64"))
        self.assertTrue(_syscallAllowed(["~@default", ""], "prlimit64"))
