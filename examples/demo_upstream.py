"""
A demo upstream for C{make run}: serves a directory over HTTP on loopback.

    python examples/demo_upstream.py 127.0.0.1 8081 examples/www
"""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.python.failure import Failure
from twisted.web.server import Site
from twisted.web.static import File


def main(argv: list[str]) -> None:
    """
    Serve C{argv[3]} on C{argv[1]}:C{argv[2]} until interrupted.
    """
    host, port, root = argv[1], int(argv[2]), argv[3]
    site = Site(File(root))
    site.noisy = False
    endpoint = TCP4ServerEndpoint(reactor, port, interface=host)

    def failed(reason: Failure) -> None:
        print(f"demo upstream: {reason.getErrorMessage()}", file=sys.stderr)
        reactor.stop()

    endpoint.listen(site).addErrback(failed)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv)
