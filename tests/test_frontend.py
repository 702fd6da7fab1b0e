"""
What the request path is built on: revproxy's own client side, not
twisted.web's server (issue #13), and a Twisted bounded to the major
version it was tested with.
"""

from __future__ import annotations

import ast
import configparser
import os

from twisted.trial.unittest import SynchronousTestCase

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PACKAGE = os.path.join(_ROOT, "revproxy")

#: The modules a request goes through, from the listener to the upstream.
REQUEST_PATH = (
    "proxy/exchange.py",
    "proxy/frontend.py",
    "proxy/http1.py",
    "proxy/http2.py",
    "proxy/forwarder.py",
    "proxy/upstream.py",
    "proxy/pool.py",
    "proxy/headers.py",
    "routing.py",
    "observer.py",
    "drain.py",
    "listeners.py",
    "ratelimit.py",
    "accesslog.py",
)


def _imports(path: str) -> list[str]:
    """
    Every module C{path} imports, and every name it imports from one, as
    C{module} or C{module.name}.
    """
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            found.append(node.module)
            found += [f"{node.module}.{alias.name}" for alias in node.names]
    return found


class RequestPathTests(SynchronousTestCase):
    """
    twisted.web's server is gone from the request path.
    """

    def test_noTwistedWebInRequestPath(self) -> None:
        """
        No module of the request path imports anything of twisted.web.
        """
        for relative in REQUEST_PATH:
            offending = [
                name
                for name in _imports(os.path.join(_PACKAGE, relative))
                if name == "twisted.web" or name.startswith("twisted.web.")
            ]
            self.assertEqual(offending, [], relative)

    def test_noTwistedServerInternals(self) -> None:
        """
        Nothing in revproxy imports Twisted's HTTP/2 server or twisted.web's
        channels (the ops listener keeps a twisted.web C{Site} of its own,
        whose resources take its requests through the public API).
        """
        banned = (
            "twisted.web._http2",
            "twisted.web.http.HTTPChannel",
            "twisted.web.http._GenericHTTPChannelProtocol",
            "twisted.web.http.HTTPFactory",
        )
        for directory, _, files in os.walk(_PACKAGE):
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(directory, name)
                for imported in _imports(path):
                    self.assertFalse(imported.startswith(banned), (path, imported))

    def test_twistedBounded(self) -> None:
        """
        setup.cfg bounds Twisted's major version (Twisted's releases are
        named by year: 26.x), and asks for the h2 and httptools the client
        side was written against.
        """
        parser = configparser.ConfigParser()
        with open(os.path.join(_ROOT, "setup.cfg"), encoding="utf-8") as f:
            parser.read_file(f)
        requires = {
            line.split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip(): line
            for line in parser["options"]["install_requires"].splitlines()
            if line.strip()
        }
        self.assertIn("< 27", requires["twisted"])
        self.assertIn(">= 4.4.1", requires["h2"])
        self.assertIn(">= 0.8.0", requires["httptools"])
