"""
Run the conformance cases against a server, or against a revproxy this
runner starts (C{--spawn}: an upstream on a thread, revproxy over TLS with
C{http2 = true} in front of it, both on loopback ports the kernel picks).

    python -m tests.h2conformance --spawn [-k 6.5]
    python -m tests.h2conformance --port 8443 [--host 127.0.0.1]

Prints a line a case and ends with "N passed, N failed"; exits 1 when a
case failed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.h2conformance import core

ROOT = Path(__file__).resolve().parents[2]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        elif "chunked" in (self.headers.get("Transfer-Encoding") or ""):
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                self.rfile.read(size + 2)
                if size == 0:
                    break
        # Longer than 5 bytes: h2spec 6.9.2/2 needs a body that size.
        body = b"revproxy HTTP/2 conformance upstream\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = do_OPTIONS = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Upstream(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # The proxy drops upstream connections when a case resets a
        # stream: expected, not worth a traceback.
        pass


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(directory: str) -> tuple[subprocess.Popen[bytes], int]:
    """
    An upstream thread and a revproxy child; return the child and its
    HTTPS port once it accepts connections.
    """
    import trustme

    upstream = _Upstream(("127.0.0.1", 0), _Handler)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    issued.cert_chain_pems[0].write_to_path(cert)
    issued.private_key_pem.write_to_path(key)
    port = _freePort()
    config = os.path.join(directory, "revproxy.toml")
    with open(config, "w", encoding="utf-8") as f:
        f.write(
            f"""
[server]
listen_http = []
listen_https = ["tcp:{port}:interface=127.0.0.1"]
http2 = true
admin_socket_path = ""
ops_listen = ""
state_dir = "{directory}/state"

[logging]
access_log = ""

[[sites]]
name = "conformance"
hosts = ["127.0.0.1", "localhost"]
upstreams = ["http://127.0.0.1:{upstream.server_address[1]}"]
default = true
tls = "files"
cert_file = "{cert}"
key_file = "{key}"
"""
        )
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = subprocess.Popen(
        [twistd, "-n", "--pidfile=", "revproxy", "--config", config],
        cwd=directory,
        env=env,
        stdout=open(os.path.join(directory, "revproxy.log"), "wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return child, port
        except OSError:
            if child.poll() is not None:
                break
            time.sleep(0.1)
    child.kill()
    raise SystemExit(f"revproxy did not start; see {directory}/revproxy.log")


def _load() -> None:
    for module in pkgutil.iter_modules(
        core.__file__ and [os.path.dirname(core.__file__)]
    ):
        if module.name.startswith("cases_"):
            importlib.import_module(f"tests.h2conformance.{module.name}")


def run(target: core.Target, only: str | None = None, verbose: bool = False) -> int:
    _load()
    passed = failed = 0
    for c in core.CASES:
        name = f"{c.section}/{c.number}"
        if only and only not in name:
            continue
        conn = None
        try:
            conn = core.Conn(target)
            if not c.raw:
                conn.handshake()
            c.run(conn)
        except (core.Failed, core.Closed, OSError) as e:
            failed += 1
            print(f"FAIL {name}: {c.description}: {type(e).__name__}: {e}")
            if verbose:
                traceback.print_exc()
        else:
            passed += 1
            print(f"ok   {name}: {c.description}")
        finally:
            if conn is not None:
                conn.close()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int)
    parser.add_argument("--spawn", action="store_true")
    parser.add_argument("-k", dest="only", help="run cases whose name contains this")
    parser.add_argument("-v", dest="verbose", action="store_true")
    args = parser.parse_args()
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        raise SystemExit("only loopback targets")
    if args.spawn:
        with tempfile.TemporaryDirectory() as directory:
            child, port = spawn(directory)
            try:
                code = run(core.Target("127.0.0.1", port), args.only, args.verbose)
            finally:
                child.terminate()
                child.wait(10)
            raise SystemExit(code)
    if args.port is None:
        raise SystemExit("--port or --spawn")
    raise SystemExit(run(core.Target(args.host, args.port), args.only, args.verbose))


if __name__ == "__main__":
    main()
