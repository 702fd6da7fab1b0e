"""
Integration tests: how a real C{twistd revproxy} process starts, refuses to
start, checks a config file and describes itself.
"""

from __future__ import annotations

import os
import socket

from twisted.trial.unittest import TestCase

from tests.integration.support import (
    START_TIMEOUT,
    ProxyProcess,
    closedPort,
    getReactor,
    writeConfig,
)


def _site(port: int) -> dict[str, object]:
    """
    A valid site forwarding to C{127.0.0.1:port}.
    """
    return {
        "name": "main",
        "hosts": ["127.0.0.1"],
        "upstreams": [f"http://127.0.0.1:{port}"],
    }


class _ProcessTestCase(TestCase):
    """
    Runs C{twistd revproxy} to its end.
    """

    timeout = 20

    def setUp(self) -> None:
        self.reactor = getReactor()
        self.directory = os.path.abspath(str(self.mktemp()))
        os.makedirs(self.directory)

    async def runProxy(self, *args: str) -> tuple[int, ProxyProcess]:
        """
        Run C{twistd revproxy ARGS} until it exits on its own; its exit
        status and the process.
        """
        proxy = ProxyProcess(self.reactor, args, self.directory)
        self.addCleanup(proxy.waitExit)
        self.addCleanup(proxy.kill)
        code = await proxy.waitExit(START_TIMEOUT)
        return code, proxy

    def assertOneLineFailure(self, code: int, proxy: ProxyProcess) -> str:
        """
        The process failed with exactly one line on standard error and no
        traceback anywhere; return that line.
        """
        self.assertNotEqual(code, 0, proxy.output)
        self.assertNotIn("Traceback", proxy.output)
        lines = proxy.stderrLines
        self.assertEqual(len(lines), 1, f"not one line on stderr:\n{proxy.output}")
        return lines[0]


class StartupFailureTests(_ProcessTestCase):
    """
    A proxy that cannot do its job exits non-zero with one clear line.
    """

    async def test_portInUse(self) -> None:
        """
        A listen port already taken on 127.0.0.1 stops start-up: exit
        status 1 and one line naming the address, instead of running deaf.
        """
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            path = writeConfig(
                self.directory,
                [_site(closedPort())],
                listen=[f"tcp:{port}:interface=127.0.0.1"],
            )
            code, proxy = await self.runProxy("--config", path)
        line = self.assertOneLineFailure(code, proxy)
        self.assertEqual(code, 1)
        self.assertIn(str(port), line)
        self.assertIn("in use", line.lower())

    async def test_portInUseWithWorkers(self) -> None:
        """
        With workers, a listen port already taken stops start-up as with
        one process, whether the socket that has it uses C{SO_REUSEPORT}
        (another supervisor's: the two would silently share its
        connections) or not.
        """
        for reuse in (False, True):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
                if reuse:
                    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                taken.bind(("127.0.0.1", 0))
                taken.listen(1)
                port = taken.getsockname()[1]
                path = writeConfig(
                    self.directory,
                    [_site(closedPort())],
                    listen=[f"tcp:{port}:interface=127.0.0.1"],
                    server={"workers": 2},
                )
                code, proxy = await self.runProxy("--config", path)
            line = self.assertOneLineFailure(code, proxy)
            self.assertEqual(code, 1)
            self.assertIn(str(port), line)
            self.assertIn("in use", line.lower())
            self.assertNotIn("worker 1", proxy.output)

    async def test_missingConfig(self) -> None:
        """
        A config file that does not exist: exit status 1 and one line
        naming the path.
        """
        path = os.path.join(self.directory, "absent.toml")
        code, proxy = await self.runProxy("--config", path)
        # Regression test for a fixed bug (revproxy.tap.Options.postOptions,
        # which sent it to _exitWithErrors): an unreadable file goes through
        # _exitWithErrors like an invalid one, so stderr has two lines:
        # "configuration PATH is invalid (1 error):" and "  PATH: cannot read
        # the config file: ...".  The file is missing, not invalid.
        line = self.assertOneLineFailure(code, proxy)
        self.assertEqual(code, 1)
        self.assertIn(path, line)

    async def test_invalidConfig(self) -> None:
        """
        A config file with one problem: exit status 1, no traceback, and
        the problem on one line that names its key path; any other line is
        only the summary naming the file.
        """
        site = _site(closedPort())
        site["upstreams"] = ["ftp://127.0.0.1:21"]
        path = writeConfig(self.directory, [site])
        code, proxy = await self.runProxy("--config", path)
        self.assertEqual(code, 1, proxy.output)
        self.assertNotIn("Traceback", proxy.output)
        lines = proxy.stderrLines
        problems = [line for line in lines if "sites[0].upstreams[0]" in line]
        self.assertEqual(len(problems), 1, proxy.output)
        for line in lines:
            if line not in problems:
                self.assertIn(path, line)
        self.assertLessEqual(len(lines), 2, proxy.output)


class CheckTests(_ProcessTestCase):
    """
    C{--check} validates a config file and exits 0 or 1, like C{nginx -t}.
    """

    async def test_good(self) -> None:
        """
        A good file: exit status 0, success on standard output, nothing on
        standard error, and nothing listens.
        """
        path = writeConfig(self.directory, [_site(closedPort())])
        code, proxy = await self.runProxy("--config", path, "--check")
        self.assertEqual(code, 0, proxy.output)
        self.assertIn(b"successful", proxy.protocol.stdout)
        self.assertEqual(proxy.stderrLines, [])
        self.assertNotIn(b"starting on", proxy.protocol.stdout)

    async def test_bad(self) -> None:
        """
        A bad file: exit status 1 and every problem on standard error, each
        naming its key path.
        """
        site = _site(closedPort())
        site["upstreams"] = ["ftp://127.0.0.1:21"]
        site["bogus"] = 1
        path = writeConfig(self.directory, [site])
        code, proxy = await self.runProxy("--config", path, "--check")
        self.assertEqual(code, 1, proxy.output)
        stderr = "\n".join(proxy.stderrLines)
        self.assertIn("sites[0].upstreams[0]", stderr)
        self.assertIn("sites[0].bogus", stderr)
        self.assertNotIn("Traceback", proxy.output)


class HelpTests(_ProcessTestCase):
    """
    C{twistd revproxy --help} describes the options.
    """

    async def test_help(self) -> None:
        """
        The help lists --config, --check, --listen and --to, and exits 0.
        """
        code, proxy = await self.runProxy("--help")
        self.assertEqual(code, 0, proxy.output)
        text = proxy.protocol.stdout.decode("utf-8")
        for option in ("--config", "--check", "--listen", "--to"):
            self.assertIn(option, text)
