"""
Tests for L{revproxy.admin_client}: the C{revproxy-admin} command against a
real Unix socket served by a thread, in a temporary directory.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import tempfile
import threading
from contextlib import redirect_stderr, redirect_stdout

from twisted.trial.unittest import SynchronousTestCase

from revproxy import admin_client
from revproxy.admin_client import DEFAULT_SOCKET, ENV_SOCKET, main


class _CannedServer:
    """
    A Unix socket server on a thread that reads one line per connection and
    answers it with C{answer}, then closes.

    @ivar lines: the lines received, without their newline.
    """

    def __init__(self, path: str, answer: bytes | None) -> None:
        """
        @param answer: the bytes to send back, or L{None} to send nothing and
            keep the connection open until the server stops.
        """
        self.path = path
        self.answer = answer
        self.lines: list[bytes] = []
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(5)
        self._listener.settimeout(0.05)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(5)
                data = b""
                while b"\n" not in data:
                    chunk = connection.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                self.lines.append(data.split(b"\n", 1)[0])
                if self.answer is None:
                    self._stop.wait(10)
                else:
                    connection.sendall(self.answer)

    def stop(self) -> None:
        """
        Stop serving and wait for the thread.
        """
        self._stop.set()
        self._thread.join(10)
        self._listener.close()


class MainTests(SynchronousTestCase):
    """
    Tests for L{main}.
    """

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="rpc")
        self.addCleanup(shutil.rmtree, self.dir)
        self.path = os.path.join(self.dir, "admin.sock")
        self.addCleanup(os.environ.pop, ENV_SOCKET, None)
        os.environ.pop(ENV_SOCKET, None)

    def serve(self, answer: bytes | None) -> _CannedServer:
        """
        Answer every connection to C{self.path} with C{answer}.
        """
        server = _CannedServer(self.path, answer)
        self.addCleanup(server.stop)
        return server

    def invoke(self, *argv: str) -> tuple[int, str, str]:
        """
        Run L{main} with C{argv}; return its exit status, standard output
        and standard error.
        """
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            status = main(list(argv))
        return status, out.getvalue(), err.getvalue()

    def test_ok(self) -> None:
        """
        An C{ok} answer is printed and exits 0; the command is sent as one
        line.
        """
        server = self.serve(b'{"status": "ok", "sites": 2}\n')
        status, out, err = self.invoke("--socket", self.path, "status")
        self.assertEqual((status, out, err), (0, '{"status": "ok", "sites": 2}\n', ""))
        self.assertEqual(server.lines, [b"status"])

    def test_arguments(self) -> None:
        """
        Arguments follow the command on the same line, even ones that look
        like options.
        """
        server = self.serve(b'{"status": "ok"}\n')
        status, _, _ = self.invoke(
            "--socket", self.path, "route", "a.example", "/--x", "10.0.0.1"
        )
        self.assertEqual(status, 0)
        self.assertEqual(server.lines, [b"route a.example /--x 10.0.0.1"])

    def test_error(self) -> None:
        """
        An C{error} answer is printed and exits 1.
        """
        answer = '{"status": "error", "code": "config_invalid", "message": "bad"}'
        self.serve(answer.encode() + b"\n")
        status, out, err = self.invoke("--socket", self.path, "reload")
        self.assertEqual((status, out, err), (1, answer + "\n", ""))

    def test_environment(self) -> None:
        """
        Without C{--socket}, C{REVPROXY_ADMIN_SOCKET} names the socket.
        """
        server = self.serve(b'{"status": "ok"}\n')
        os.environ[ENV_SOCKET] = self.path
        self.assertEqual(self.invoke("help")[0], 0)
        self.assertEqual(server.lines, [b"help"])

    def test_defaultSocket(self) -> None:
        """
        With neither, the socket is C{/run/revproxy/admin.sock} (asked
        through a stand-in for L{admin_client.ask}, so that a revproxy
        running on this machine is not disturbed).
        """
        asked: list[str] = []

        def ask(path: str, line: str, timeout: float = 0) -> bytes:
            asked.append(path)
            return b'{"status": "ok"}\n'

        self.patch(admin_client, "ask", ask)
        status, _, _ = self.invoke("status")
        self.assertEqual((status, asked), (0, [DEFAULT_SOCKET]))
        self.assertEqual(DEFAULT_SOCKET, "/run/revproxy/admin.sock")

    def test_notJSON(self) -> None:
        """
        An answer that is not JSON exits 2, naming the socket.
        """
        self.serve(b"hello\n")
        status, out, err = self.invoke("--socket", self.path, "status")
        self.assertEqual((status, out), (2, ""))
        self.assertIn(self.path, err)
        self.assertIn("not JSON", err)

    def test_noStatus(self) -> None:
        """
        JSON without a C{status} of C{ok} or C{error} exits 2.
        """
        self.serve(b'{"status": "maybe"}\n')
        status, out, err = self.invoke("--socket", self.path, "status")
        self.assertEqual((status, out), (2, ""))
        self.assertIn('"status"', err)

    def test_closedWithoutAnswer(self) -> None:
        """
        A server that closes without answering exits 2.
        """
        self.serve(b"")
        status, _, err = self.invoke("--socket", self.path, "status")
        self.assertEqual(status, 2)
        self.assertIn("without an answer", err)

    def test_timeout(self) -> None:
        """
        A server that does not answer in time exits 2.
        """
        self.serve(None)
        status, _, err = self.invoke(
            "--socket", self.path, "--timeout", "0.2", "reload"
        )
        self.assertEqual(status, 2)
        self.assertIn("no answer", err)
        self.assertIn(self.path, err)

    def test_nothingThere(self) -> None:
        """
        A socket path where nothing exists exits 2 with a clear message.
        """
        status, out, err = self.invoke("--socket", self.path, "status")
        self.assertEqual((status, out), (2, ""))
        self.assertIn(f"cannot reach the admin socket {self.path}", err)
        self.assertIn("does not exist", err)

    def test_nothingListening(self) -> None:
        """
        A socket file nobody listens on (left by a dead process) exits 2.
        """
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(self.path)
        stale.close()
        status, _, err = self.invoke("--socket", self.path, "status")
        self.assertEqual(status, 2)
        self.assertIn("connection refused", err)

    def test_usage(self) -> None:
        """
        A missing command is a usage error, exit 2.
        """
        status, _, err = self.invoke("--socket", self.path)
        self.assertEqual(status, 2)
        self.assertIn("usage: revproxy-admin", err)

    def test_lineBreak(self) -> None:
        """
        A command with a line break in it is refused before connecting.
        """
        server = self.serve(b'{"status": "ok"}\n')
        status, _, err = self.invoke("--socket", self.path, "status\nreload")
        self.assertEqual(status, 2)
        self.assertIn("line break", err)
        self.assertEqual(server.lines, [])
