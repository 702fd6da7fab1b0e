"""
Automatic certificates over ACME (RFC 8555) for sites with C{tls = "acme"}.

The parts, each behind a small interface so the protocol client can be
swapped:

  - L{revproxy.acme.storage}: certificates, keys, metadata and back-off
    records under C{state_dir}, written crash-safely;
  - L{revproxy.acme.schedule}: when to renew (lifetime, ARI window,
    override) and how long to back off after a failure; pure functions;
  - L{revproxy.acme.challenges}: the challenge answers revproxy serves
    itself (http-01 on the HTTP listeners, tls-alpn-01 on the HTTPS ones);
  - L{revproxy.acme.issuer}: the issuer (L{revproxy.interfaces.IIssuer}),
    certbot's C{acme} library run off the reactor thread.
"""

from __future__ import annotations


class AcmeError(Exception):
    """
    An ACME operation failed; the message says what, for the log and the
    admin socket (one line, no traceback).
    """


class AcmeBackoff(AcmeError):
    """
    An order that ended with a back-off decided elsewhere (by the fleet's
    shared state, C{[cluster]}): the site waits until C{backoff.retryAt}.

    @ivar backoff: The back-off record (a
        L{revproxy.acme.storage.BackoffRecord}).
    @ivar ordered: Whether this node's own order failed (C{False}: another
        node's failure is being waited out, nothing was asked of the CA).
    """

    def __init__(self, message: str, backoff: object, ordered: bool) -> None:
        super().__init__(message)
        self.backoff = backoff
        self.ordered = ordered
