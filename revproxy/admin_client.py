# -*- test-case-name: tests.integration.test_admin_client -*-
"""
C{revproxy-admin}: send one command to the admin socket and print the answer.

    revproxy-admin [--socket PATH] [--timeout SECS] COMMAND [ARGS...]

The exit status says how it went, for scripts and systemd
(C{ExecReload=revproxy-admin reload}): 0 when the answer's C{status} is
C{"ok"}, 1 when it is C{"error"} or C{"partially applied"} (a reload whose
new config serves but some part of the proxy could not follow it), 2 when there is no usable answer (the socket
cannot be reached, it times out, or the answer is not the expected JSON).

A plain blocking client, on purpose: no reactor, nothing but the standard
library.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Sequence

DEFAULT_SOCKET = "/run/revproxy/admin.sock"
"""
Where the admin socket is unless C{--socket} or C{REVPROXY_ADMIN_SOCKET} says
otherwise.
"""

ENV_SOCKET = "REVPROXY_ADMIN_SOCKET"

DEFAULT_TIMEOUT = 15.0
"""
Seconds to wait for the whole answer: a reload may take a while.
"""

EXIT_OK = 0
EXIT_ERROR = 1

#: The statuses an answer can have.
STATUSES = ("ok", "error", "partially applied")
EXIT_UNREACHABLE = 2

_MAX_ANSWER = 64 * 1024 * 1024


class AdminClientError(Exception):
    """
    No usable answer came from the admin socket; the message says why.
    """


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="revproxy-admin",
        description=(
            "Send one command to revproxy's admin socket and print the JSON "
            "answer. Exit status: 0 ok, 1 error answer, 2 no usable answer."
        ),
        epilog="Try 'revproxy-admin help' for the commands the server knows.",
    )
    parser.add_argument(
        "--socket",
        metavar="PATH",
        default=None,
        help=(f"the admin socket (default: ${ENV_SOCKET}, else {DEFAULT_SOCKET})"),
    )
    parser.add_argument(
        "--timeout",
        metavar="SECS",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds to wait for the answer (default: {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument("command", metavar="COMMAND")
    parser.add_argument("args", metavar="ARGS", nargs=argparse.REMAINDER)
    return parser


def ask(path: str, line: str, timeout: float = DEFAULT_TIMEOUT) -> bytes:
    """
    Send C{line} and a newline to the admin socket at C{path} and return
    every byte the server sends back before it closes.

    @raise AdminClientError: the socket cannot be reached, or the answer
        does not come within C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise AdminClientError(
                f"cannot reach the admin socket {path}: it does not exist "
                "(is revproxy running, with this admin_socket_path?)"
            ) from None
        except ConnectionRefusedError:
            raise AdminClientError(
                f"cannot reach the admin socket {path}: connection refused "
                "(nothing is listening on it)"
            ) from None
        except TimeoutError:
            raise AdminClientError(
                f"cannot reach the admin socket {path}: timed out connecting"
            ) from None
        except OSError as e:
            raise AdminClientError(
                f"cannot reach the admin socket {path}: {e.strerror or e}"
            ) from None
        chunks: list[bytes] = []
        size = 0
        try:
            sock.sendall(line.encode("utf-8") + b"\n")
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError()
                sock.settimeout(remaining)
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > _MAX_ANSWER:
                    raise AdminClientError(
                        f"the answer from the admin socket {path} is too long"
                    )
        except TimeoutError:
            raise AdminClientError(
                f"no answer from the admin socket {path} within {timeout:g} seconds"
            ) from None
        except OSError as e:
            if not chunks:
                raise AdminClientError(
                    f"the admin socket {path} failed: {e.strerror or e}"
                ) from None
        return b"".join(chunks)
    finally:
        sock.close()


def parseAnswer(path: str, data: bytes) -> tuple[str, dict[str, object]]:
    """
    Check that C{data} is one JSON object with a C{status} of C{"ok"} or
    C{"error"}.

    @return: the answer's line, without its newline, and the object.
    @raise AdminClientError: it is not.
    """
    text = data.decode("utf-8", "replace").strip()
    if not text:
        raise AdminClientError(
            f"the admin socket {path} closed the connection without an answer"
        )
    try:
        answer = json.loads(text)
    except ValueError:
        raise AdminClientError(
            f"the answer from the admin socket {path} is not JSON: {text[:200]!r}"
        ) from None
    if not isinstance(answer, dict) or answer.get("status") not in STATUSES:
        raise AdminClientError(
            f'the answer from the admin socket {path} has no "status" of '
            f'"ok", "error" or "partially applied": {text[:200]!r}'
        )
    return text, answer


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run C{revproxy-admin} with C{argv} (the process's arguments if
    L{None}).

    @return: the exit status.
    """
    parser = _parser()
    try:
        options = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_UNREACHABLE
    path = options.socket or os.environ.get(ENV_SOCKET) or DEFAULT_SOCKET
    words = [options.command, *options.args]
    if any(c in word for word in words for c in "\r\n"):
        parser.print_usage(sys.stderr)
        print(
            "revproxy-admin: error: a command cannot contain a line break",
            file=sys.stderr,
        )
        return EXIT_UNREACHABLE
    if not options.timeout > 0:
        parser.print_usage(sys.stderr)
        print("revproxy-admin: error: --timeout must be positive", file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        line, answer = parseAnswer(path, ask(path, " ".join(words), options.timeout))
    except AdminClientError as e:
        print(f"revproxy-admin: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(line)
    sys.stdout.flush()
    return EXIT_OK if answer["status"] == "ok" else EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
