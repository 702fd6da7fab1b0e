"""
Tests for L{revproxy.cli}, the C{revproxy} command: real C{--check} runs in
child processes compared with C{twistd revproxy --check}.
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.integration.support import REPO_ROOT

GOOD = """\
[server]
listen_http = ["tcp:8080:interface=127.0.0.1"]
listen_https = []
admin_socket_path = ""
ops_listen = ""

[[sites]]
name = "demo"
hosts = ["localhost"]
upstreams = ["http://127.0.0.1:8081"]
"""


# Two problems, in two places.
BAD = GOOD.replace('ops_listen = ""', 'ops_listen = ""\nbogus = 1').replace(
    "http://127.0.0.1:8081", "ftp://127.0.0.1:21"
)


def run(argv: list[str], cwd: str) -> subprocess.CompletedProcess[str]:
    """
    Run C{argv} with this interpreter on this checkout, and wait for it.
    """
    env = {
        "PYTHONPATH": REPO_ROOT,
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
    }
    return subprocess.run(
        [sys.executable, *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class CheckProcessTests(SynchronousTestCase):
    """
    C{revproxy --check} in a child process exits and prints exactly as
    C{twistd revproxy --config F --check} does.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def check(self, path: str) -> subprocess.CompletedProcess[str]:
        """
        Run C{revproxy --check --config PATH}; assert that C{twistd}
        answers the same; return the result.
        """
        revproxy = run(
            ["-m", "revproxy.cli", "--check", "--config", path], self.directory
        )
        twistd = run(
            [
                "-c",
                "from twisted.scripts.twistd import run; run()",
                "revproxy",
                "--config",
                path,
                "--check",
            ],
            self.directory,
        )
        self.assertEqual(
            (revproxy.returncode, revproxy.stdout, revproxy.stderr),
            (twistd.returncode, twistd.stdout, twistd.stderr),
        )
        return revproxy

    def test_good(self) -> None:
        """
        A valid file: exit 0, and the verdict on standard output.
        """
        path = self.write("good.toml", GOOD)
        result = self.check(path)
        self.assertEqual(result.returncode, 0, result)
        self.assertEqual(
            result.stdout,
            f"revproxy: the configuration file {path} syntax is ok; 1 site(s)\n"
            "revproxy: configuration test is successful\n",
        )
        self.assertEqual(result.stderr, "")

    def test_bad(self) -> None:
        """
        An invalid file: exit 1, and every error, with its key path, on
        standard error.
        """
        path = self.write("bad.toml", BAD)
        result = self.check(path)
        self.assertEqual(result.returncode, 1, result)
        self.assertEqual(result.stdout, "")
        self.assertIn(
            f"revproxy: configuration {path} is invalid (2 errors):", result.stderr
        )
        self.assertIn("server.bogus", result.stderr)
        self.assertIn("sites[0].upstreams[0]", result.stderr)

    def test_missing(self) -> None:
        """
        A file that does not exist: exit 1, saying so.
        """
        path = os.path.join(self.directory, "missing.toml")
        result = self.check(path)
        self.assertEqual(result.returncode, 1, result)
        self.assertIn(path, result.stderr)
