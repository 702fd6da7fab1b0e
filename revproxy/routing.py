# -*- test-case-name: tests.test_routing -*-
"""
Routing a request to a site by its C{Host}.

L{Router} is the handler every client-side protocol gives its requests to
(L{revproxy.proxy.exchange.RequestHandler}): it routes each one by the
routing table of the request's runtime (host names are read and matched in
L{revproxy.hostnames}) and hands it to the forwarder; it also answers
pending ACME http-01 challenges itself.
"""

from __future__ import annotations

import math
import random
import re
import secrets
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from revproxy.access import (
    DENIED_ADDRESS,
    DENIED_BASIC_AUTH,
    DENIED_FORWARD_AUTH,
    ChecksBusy,
    FailureLimit,
    PasswordChecks,
    addressAllowed,
    basicCredentials,
    challenge,
)
from revproxy.hostnames import (
    HasHosts,
    RoutingTable,
    isWildcard,
    normalizeHostHeader,
)
from revproxy.placeholders import renderBody, renderLocation
from revproxy.proxy.forwardauth import ForwardAuthCheck
from revproxy.proxy.headers import clientAddress, isTrusted
from revproxy.proxy.responses import (
    httpDate,
    shortBody,
    shortHeaders,
    shortLine,
    simpleResponse,
)
from revproxy.proxy.rules import applyHeaderRules, placeholderValues
from revproxy.ratelimit import ALLOWED, Decision

if TYPE_CHECKING:
    from revproxy.config import (
        AccessRules,
        BasicAuth,
        ForwardAuth,
        RateLimit,
        SiteConfig,
    )
    from revproxy.observer import RequestObserver
    from revproxy.proxy.exchange import Exchange
    from revproxy.proxy.forwarder import Forwarder
    from revproxy.runtime import Runtime, RuntimeHolder, SiteRoute


class RateLimits(Protocol):
    """
    What L{Router} asks of a rate limiter: this process's
    (L{revproxy.ratelimit.RateLimiter}, which decides at once) or a shared
    one, which answers after a round trip.
    """

    def allow(
        self, site: str, limit: RateLimit, clientIP: str
    ) -> Decision | Deferred[Decision]:
        """
        Take a token from the bucket of C{clientIP} on C{site}, if it has
        one.
        """


class HTTP01Answers(Protocol):
    """
    What L{Router} reads of the pending ACME http-01 challenges
    (L{revproxy.acme.challenges.ChallengeStore} has it).
    """

    def http01(self, token: str) -> bytes | None:
        """
        The key authorization to answer for C{token}, or L{None} when no
        challenge is pending for it.
        """


S = TypeVar("S", bound=HasHosts)

_log = Logger()

# An X-Request-ID taken from a trusted proxy: visible ASCII, no spaces or
# quotes, at most 200 bytes; anything else gets a new id.
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:+/=@-]{1,200}")

#: Request ids need to be unique, not secret: a generator seeded once from
#: the system's randomness is three times cheaper per request than reading
#: it every time.
_ids = random.Random(secrets.randbits(256))


def newRequestID() -> str:
    """
    A new request id: 128 random bits as 32 hex digits.
    """
    return f"{_ids.getrandbits(128):032x}"


def misdirectedBySNI(table: RoutingTable[S], site: S, serverName: str | None) -> bool:
    """
    Whether a request routed to C{site} by its C{Host} came on a TLS
    connection for another site: the site its SNI name routes to (exact
    name, wildcard, then the default site, as the certificate was chosen) is
    not C{site}, or there is none (a reload removed it).

    @param serverName: The connection's SNI name as
        L{revproxy.hostnames.normalizeServerName} gives it, or L{None} when
        the client sent none (it connected to an IP literal): such a
        connection is never misdirected.
    """
    return serverName is not None and table.match(serverName) is not site


def splitAbsoluteForm(uri: bytes) -> tuple[bytes, bytes] | None:
    """
    Split an absolute-form request-target (C{http://host:port/path?q}) into
    its authority and origin-form target, or L{None} when it is not one.
    """
    lowered = uri[:8].lower()
    if lowered.startswith(b"http://"):
        rest = uri[7:]
    elif lowered.startswith(b"https://"):
        rest = uri[8:]
    else:
        return None
    cut = len(rest)
    for sep in (b"/", b"?"):
        i = rest.find(sep)
        if i != -1 and i < cut:
            cut = i
    authority, target = rest[:cut], rest[cut:]
    if b"@" in authority or not authority:
        return None
    if not target.startswith(b"/"):
        target = b"/" + target
    return authority, target


class Router:
    """
    The handler of every request: route by C{Host}, then forward.

    It reads the current runtime once per request, when the request's head
    is read (L{snapshot}, kept as the exchange's C{runtime}), or when it
    handles a request that has none; a reload swaps it under requests in
    flight without touching them.

    A C{GET} or C{HEAD} of C{/.well-known/acme-challenge/TOKEN} (exactly:
    no query) for a token pending in L{challenges} is answered here with
    its key authorization, whatever the C{Host} (a new site's name has no
    route yet), over HTTP and HTTPS alike (a validator may follow a
    redirect to HTTPS), before routing and redirects.  Any other token is
    routed as usual, so an application's own ACME client still works.

    Every request gets its context here, once: the client's address (the
    peer, or behind a trusted proxy the right-most untrusted
    X-Forwarded-For hop), its X-Request-ID (the incoming one from a trusted
    peer if it is sane, else a new one; sent upstream and back), the config
    generation, and the site it was routed to.

    Over HTTPS, a request for a site with C{strict_sni_host} whose
    connection's SNI name belongs to another site (L{misdirectedBySNI}) is
    answered C{421}; a connection without SNI is not checked.

    A routed request over its site's rate limit is answered C{429} with a
    C{Retry-After} in whole seconds, and never forwarded; with the limit's
    C{dry_run}, it is forwarded and the would-be refusal is logged (at most
    one line a second per site) and counted.

    @ivar challenges: The pending http-01 challenges, or L{None}; may be
        assigned at any time.
    """

    def __init__(
        self,
        runtime: RuntimeHolder,
        forwarder: Forwarder,
        challenges: HTTP01Answers | None = None,
        issued: Callable[[str], bool] | None = None,
        limiter: RateLimits | None = None,
        observer: RequestObserver | None = None,
        inThread: Callable[[Callable[[], bool]], Deferred[bool]] | None = None,
    ) -> None:
        """
        @param issued: Whether an ACME site has its certificate from the CA
            yet; its plain HTTP requests are redirected only then (not to a
            self-signed placeholder).
        @param limiter: The rate limiter, or L{None} to limit nothing.
        @param observer: Told when a request is routed, or L{None}.
        @param inThread: Runs a password check off the reactor thread (the
            reactor's thread pool); at once, in this thread, if not given.
        """
        self.runtime = runtime
        self.forwarder = forwarder
        self.challenges = challenges
        self.issued = issued
        self.limiter = limiter
        self.observer = observer
        clock = forwarder.clock
        self.passwords = PasswordChecks(
            clock, inThread if inThread is not None else _atOnce
        )
        self.authFailures = FailureLimit(clock)
        # Each basic_auth's users as a dict, by the identity of the
        # (immutable) config value that holds them.
        self._users: dict[int, tuple[BasicAuth, dict[str, str]]] = {}
        self._dryRunLogged: dict[str, float] = {}
        # Host values seen lately and their normalized names (or None):
        # a pure function of the bytes, asked by every request.
        self._hosts: dict[bytes, str | None] = {}

    def handle(self, request: Exchange) -> None:
        """
        Route C{request} and start forwarding it; errors are answered here.
        """
        runtime: Runtime | None = request.runtime
        if runtime is None:
            runtime = request.runtime = self.runtime.current
        self._identify(request, runtime.generation)
        found = self._target(request)
        if found is None:
            return
        host, target = found
        request.routedHost = host
        site = runtime.table.match(host)
        route = None
        if site is not None:
            request.errorPages = site.errorPages
            route = site.match(request.method, target)
        else:
            request.errorPages = runtime.errorPages
        # The body limit first, before any byte of the body is asked for:
        # the route's, or the defaults' for a request no site takes (it is
        # refused, but its body must not be read without a bound either).
        if request.hasBody and not request.limitBody(
            runtime.config.defaults.max_body_bytes
            if route is None
            else route.config.max_body_bytes
        ):
            return
        if target.startswith(ACME_CHALLENGE_PREFIX) and self._answerHTTP01(
            request, target
        ):
            return
        if route is None:
            self._answer(
                request,
                421,
                "no site is configured for this host",
            )
            return
        config = route.config
        if request.secure:
            if self._misdirected(request, runtime, route.site):
                return
        elif self._redirected(request, runtime, config, host, target):
            return
        access = route.access
        if access is not None:
            self._checkAccess(request, route, access, host, target)
            return
        self._proceed(request, route, host, target)

    def _proceed(
        self, request: Exchange, route: SiteRoute, host: str | None, target: bytes
    ) -> None:
        """
        C{request} may go on (its access rules let it): rate limit, then
        its route's action.
        """
        config = route.config
        limiter = self.limiter
        if limiter is not None and config.rate_limit.enabled:
            decision = limiter.allow(
                route.limitKey, config.rate_limit, request.clientIP
            )
            if isinstance(decision, Deferred):
                # A shared limiter (the fleet's) answers after a round trip.
                args = (request, route, host, target)
                decision.addCallbacks(
                    self._decided,
                    self._undecided,
                    callbackArgs=args,
                    errbackArgs=args,
                )
                return
            if self._rateLimited(request, route, decision):
                return
        self._go(request, route, host, target)

    def _decided(
        self,
        decision: Decision,
        request: Exchange,
        route: SiteRoute,
        host: str | None,
        target: bytes,
    ) -> None:
        """
        The rate limit's decision on C{request} came: go on unless it was
        refused (or the client left meanwhile).
        """
        if request.clientLeft or request.finished:
            return
        if not self._rateLimited(request, route, decision):
            self._go(request, route, host, target)

    def _undecided(
        self,
        reason: Failure,
        request: Exchange,
        route: SiteRoute,
        host: str | None,
        target: bytes,
    ) -> None:
        """
        The rate limiter failed to decide: the request is admitted (a
        limiter's failure never fails a request), and it is logged.
        """
        _log.failure("The rate limiter failed; request admitted", reason)
        self._decided(ALLOWED, request, route, host, target)

    def _go(
        self, request: Exchange, route: SiteRoute, host: str | None, target: bytes
    ) -> None:
        """
        C{request} passed its access rules and rate limit: its route's
        action.
        """
        config = route.config
        rule = route.rule
        action = config if rule is None else rule
        if action.redirect is not None or action.respond is not None:
            self._act(request, route, host, target)
            return
        observer = self.observer
        if observer is not None:
            observer.started(request, config.name)
        else:
            request.siteName = config.name
        self.forwarder.forward(request, route, target)

    def _target(self, request: Exchange) -> tuple[str | None, bytes] | None:
        """
        The host C{request} is for (L{None}: an HTTP/1.0 request without
        one) and its target in origin form; L{None}, answered 400, when
        either is missing or invalid.  An absolute-form target's authority
        replaces any Host (RFC 9112 3.2.2).
        """
        uri = request.uri
        if uri[:1] == b"/" or uri == b"*":
            values = request.headerValues(b"host")
            if not values:
                if request.clientproto != b"HTTP/1.0":
                    self._answer(request, 400, "missing Host header")
                    return None
                return None, uri
            if len(values) != 1:
                self._answer(request, 400, "more than one Host header")
                return None
            value = values[0]
            hosts = self._hosts
            try:
                host = hosts[value]
            except KeyError:
                host = normalizeHostHeader(value)
                if len(hosts) >= _HOST_CACHE:
                    hosts.clear()
                hosts[value] = host
            if host is None:
                self._answer(request, 400, "invalid Host header")
                return None
            return host, uri
        split = splitAbsoluteForm(uri)
        if split is None:
            self._answer(request, 400, "invalid request-target")
            return None
        authority, target = split
        host = normalizeHostHeader(authority)
        if host is None:
            self._answer(request, 400, "invalid request-target")
            return None
        request.headers = [(b"host", authority)] + [
            pair for pair in request.headers if pair[0] != b"host"
        ]
        return host, target

    def _misdirected(
        self, request: Exchange, runtime: Runtime, route: SiteRoute
    ) -> bool:
        """
        Whether C{request}, which came over TLS, is for a site that must not
        answer it on this connection (answered 421): one not served over
        HTTPS, or one other than its TLS server name's (C{strict_sni_host}).
        """
        site = route.config
        if site.name not in runtime.secured:
            self._answer(
                request,
                421,
                "this site is not served over HTTPS",
                site.name,
            )
            return True
        if site.strict_sni_host and misdirectedBySNI(
            runtime.table, route, request.serverName
        ):
            # RFC 9110 15.5.20: a client that reused a connection for
            # another name (HTTP/2 coalescing) retries on a new one.
            self._answer(
                request,
                421,
                "this host is not served on a "
                "connection for that TLS server name (SNI)",
                site.name,
            )
            return True
        return False

    def _redirected(
        self,
        request: Exchange,
        runtime: Runtime,
        site: SiteConfig,
        host: str | None,
        target: bytes,
    ) -> bool:
        """
        Whether C{request}, which came in the clear, was answered with a 308
        to HTTPS (C{redirect_http}, once an ACME site has its certificate;
        never for ACME challenges).
        """
        if not (
            site.redirect_http
            and site.name in runtime.secured
            and runtime.httpsPort
            and (
                site.tls != "acme"
                or (self.issued is not None and self.issued(site.name))
            )
            and target[:1] == b"/"
            and not target.startswith(ACME_CHALLENGE_PREFIX)
        ):
            return False
        name = host or next((h for h in site.hosts if not isWildcard(h)), None)
        if name is None:
            return False
        location = httpsLocation(name, runtime.httpsPort, target)
        self._answer(
            request,
            308,
            location.decode("ascii"),
            site.name,
            [(b"Location", location)],
        )
        return True

    def _rateLimited(
        self, request: Exchange, route: SiteRoute, decision: Decision
    ) -> bool:
        """
        Whether C{request} was answered 429 for its route's rate limit's
        C{decision} (in dry run, it is only logged and counted): the
        site's, or a route's own, whose buckets are apart
        (L{SiteRoute.limitKey}).
        """
        site = route.config
        limit = site.rate_limit
        if decision.allowed:
            return False
        if limit.dry_run:
            self._dryRun(request, site.name)
            return False
        self._answer(
            request,
            429,
            f"rate limit exceeded, retry in {decision.retryAfter} s",
            site.name,
            [(b"Retry-After", b"%d" % decision.retryAfter)],
        )
        return True

    def _checkAccess(
        self,
        request: Exchange,
        route: SiteRoute,
        access: AccessRules,
        host: str | None,
        target: bytes,
    ) -> None:
        """
        Apply C{access} to C{request}: its address first, then its basic
        auth or forward auth; go on with L{_proceed} if they let it.
        """
        name = route.config.name
        if not addressAllowed(access, request.clientIP):
            self._denied(request, name, DENIED_ADDRESS)
            self._answer(request, 403, "this address may not reach this site", name)
            return
        basic = access.basic_auth
        if basic is not None:
            self._basicAuth(request, route, basic, host, target)
            return
        forward = access.forward_auth
        if forward is not None:
            self._forwardAuth(request, route, forward, host, target)
            return
        self._proceed(request, route, host, target)

    def _basicAuth(
        self,
        request: Exchange,
        route: SiteRoute,
        basic: BasicAuth,
        host: str | None,
        target: bytes,
    ) -> None:
        name = route.config.name
        client = request.clientIP
        wait = self.authFailures.blocked(client)
        if wait is not None:
            self._denied(request, name, DENIED_BASIC_AUTH)
            self._answer(
                request,
                429,
                "too many failed logins, try again later",
                name,
                [(b"Retry-After", b"%d" % max(1, math.ceil(wait)))],
            )
            return
        credentials = basicCredentials(request.header(b"authorization"))
        if credentials is None:
            self._unauthorized(request, name, basic, counted=False)
            return
        user, password = credentials

        def checked(ok: bool) -> None:
            if request.clientLeft or request.finished:
                return
            if not ok:
                self.authFailures.failed(client)
                self._unauthorized(request, name, basic, counted=True)
                return
            self.authFailures.succeeded(client)
            drop = {basic.user_header.lower().encode()} if basic.user_header else set()
            if not basic.pass_authorization:
                drop.add(b"authorization")
            headers = [pair for pair in request.headers if pair[0] not in drop]
            if basic.user_header:
                headers.append(
                    (basic.user_header.lower().encode(), user.encode("utf-8"))
                )
            request.headers = headers
            self._proceed(request, route, host, target)

        def broken(failure: Failure) -> None:
            if request.clientLeft or request.finished:
                return
            if failure.check(ChecksBusy):
                self._answer(
                    request,
                    503,
                    "too many logins at once, try again",
                    name,
                    [(b"Retry-After", b"2")],
                )
                return
            _log.failure("Checking a password failed", failure)
            self._answer(request, 500, "the password could not be checked", name)

        self.passwords.check(self._usersOf(basic), user, password).addCallbacks(
            checked, broken
        )

    def _usersOf(self, basic: BasicAuth) -> dict[str, str]:
        """
        C{basic}'s users by name, made once per config value.
        """
        entry = self._users.get(id(basic))
        if entry is not None and entry[0] is basic:
            return entry[1]
        if len(self._users) >= 64:
            self._users.clear()
        users = dict(basic.users)
        self._users[id(basic)] = (basic, users)
        return users

    def _unauthorized(
        self, request: Exchange, site: str, basic: BasicAuth, counted: bool
    ) -> None:
        if counted:
            self._denied(request, site, DENIED_BASIC_AUTH)
        self._answer(
            request,
            401,
            "credentials are needed",
            site,
            [(b"WWW-Authenticate", challenge(basic))],
        )

    def _forwardAuth(
        self,
        request: Exchange,
        route: SiteRoute,
        auth: ForwardAuth,
        host: str | None,
        target: bytes,
    ) -> None:
        name = route.config.name
        copied = [header.lower().encode("ascii") for header in auth.copy_headers]

        def allowed(headers: list[tuple[bytes, bytes]]) -> None:
            if request.clientLeft or request.finished:
                return
            # The client's own copies go first: it cannot spoof them.
            fields = [pair for pair in request.headers if pair[0] not in copied]
            for fieldName, value in headers:
                lower = fieldName.lower()
                if lower in copied:
                    fields.append((lower, value))
            request.headers = fields
            self._proceed(request, route, host, target)

        def answer(
            code: int, reason: bytes, headers: list[tuple[bytes, bytes]], body: bytes
        ) -> None:
            if request.clientLeft or request.finished or request.startedWriting:
                return
            self._denied(request, name, DENIED_FORWARD_AUTH)
            observer = self.observer
            if observer is not None:
                observer.started(request, name)
            else:
                request.siteName = name
            headers.append((b"Content-Length", b"%d" % len(body)))
            request.respond(code, reason, headers)
            if request.method != b"HEAD":
                request.write(body)
            request.finish()

        def failed(code: int, detail: str) -> None:
            _log.warn("site {site}: forward auth: {detail}", site=name, detail=detail)
            if not (request.clientLeft or request.finished):
                self._answer(request, code, "the auth service failed", name)

        ForwardAuthCheck(
            self.forwarder.pool,
            self.forwarder.clock,
            request,
            auth,
            host or route.fallbackHost.decode(),
            target,
            allowed,
            answer,
            failed,
        ).start()

    def _denied(self, request: Exchange, site: str, reason: str) -> None:
        metrics = self.forwarder.metrics
        if metrics is not None:
            metrics.accessDenied(site, reason)

    def _act(
        self, request: Exchange, route: SiteRoute, host: str | None, target: bytes
    ) -> None:
        """
        Answer C{request} with its route's (or site's) C{redirect} or
        C{respond}, placeholders filled in, the response header rules
        applied.
        """
        config = route.config
        rule = route.rule
        action = config if rule is None else rule
        values = placeholderValues(request, route, host, target)
        observer = self.observer
        if observer is not None:
            observer.started(request, config.name)
        else:
            request.siteName = config.name
        if request.clientLeft or request.finished or request.startedWriting:
            return
        date = httpDate(self.forwarder.clock.seconds())
        redirect = action.redirect
        if redirect is not None:
            location = renderLocation(redirect.to, values)
            code = redirect.status
            body = shortBody(code, location.decode("ascii"))
            headers = shortHeaders(date, len(body))
            headers.append((b"Location", location))
        else:
            respond = action.respond
            assert respond is not None
            code = respond.status
            contentType = respond.content_type.encode("latin-1")
            if respond.body is not None:
                body = renderBody(
                    respond.body, values, html=b"html" in contentType.lower()
                )
            else:
                body = respond.content
            headers = shortHeaders(date, len(body), contentType)
        if request.requestID:
            headers.append((b"X-Request-ID", request.requestID.encode("ascii")))
        headers = applyHeaderRules(headers, route.responseHeaders, values)
        request.respond(code, b"", headers)
        if request.method != b"HEAD" and code not in (204, 304):
            request.write(body)
        request.finish()

    def snapshot(self) -> Runtime:
        """
        The runtime a request is answered by, taken when its head is read
        (the front end's C{snapshot}): its route and its body limit come
        from the same generation, however long it waits for its turn or its
        body takes to come.
        """
        return self.runtime.current

    def _identify(self, request: Exchange, generation: int) -> None:
        """
        Give C{request} its context: start time, client address, request id
        and config generation.
        """
        forwarder = self.forwarder
        request.startedAt = forwarder.clock.seconds()
        request.generation = generation
        peer = request.peer
        peerIP: str = getattr(peer, "host", "") or ""
        trusted = forwarder.trustedProxies
        if trusted and isTrusted(peerIP, trusted):
            incoming = request.headerValues(b"x-request-id")
            chain = request.headerValues(b"x-forwarded-for")
            request.clientIP = (
                clientAddress(peerIP, [(b"x-forwarded-for", v) for v in chain], trusted)
                if chain
                else peerIP
            )
            if len(incoming) == 1:
                value = incoming[0]
                if _REQUEST_ID.fullmatch(value) is not None:
                    request.requestID = value.decode("ascii")
                    return
        else:
            request.clientIP = peerIP
        # An incoming one not believed is replaced: the forwarder sends
        # requestID upstream in place of every incoming X-Request-ID.
        request.requestID = newRequestID()

    def _answer(
        self,
        request: Exchange,
        code: int,
        detail: str,
        site: str = "",
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        """
        Answer C{request} here, for C{site} if it was routed, with C{code}
        and a line saying what happened (C{detail}).
        """
        observer = self.observer
        if observer is not None:
            observer.started(request, site)
        else:
            request.siteName = site
        simpleResponse(
            request,
            code,
            shortLine(code, detail),
            httpDate(self.forwarder.clock.seconds()),
            headers,
        )

    def _dryRun(self, request: Exchange, site: str) -> None:
        """
        Log and count a request that C{site}'s rate limit in dry-run mode
        would have refused; one line a second per site at most.
        """
        observer = self.observer
        metrics = observer.metrics if observer is not None else None
        if metrics is not None:
            metrics.rateLimitDryRun(site)
        now = self.forwarder.clock.seconds()
        last = self._dryRunLogged.get(site)
        if last is None or now - last >= 1.0:
            self._dryRunLogged[site] = now
            _log.info(
                "site {site}: rate limit (dry run) would refuse client {client} "
                "(request_id {request_id})",
                site=site,
                client=request.clientIP,
                request_id=request.requestID,
            )

    def _answerHTTP01(self, request: Exchange, target: bytes) -> bool:
        """
        Answer C{request}, for C{target} under L{ACME_CHALLENGE_PREFIX},
        with its key authorization if its token is pending and it is a
        C{GET} or C{HEAD}.

        @return: Whether it was answered.
        """
        challenges = self.challenges
        if challenges is None or request.method not in (b"GET", b"HEAD"):
            return False
        # Only base64url tokens are ever pending, so a target with a query,
        # a slash or any other byte is simply not found.
        token = target[len(ACME_CHALLENGE_PREFIX) :].decode("latin-1")
        body = challenges.http01(token)
        if body is None:
            return False
        observer = self.observer
        if observer is not None:
            observer.started(request, "")
        # RFC 8555 8.3: the body is the key authorization, as is.
        request.respond(
            200,
            b"",
            shortHeaders(
                httpDate(self.forwarder.clock.seconds()),
                len(body),
                b"application/octet-stream",
            ),
        )
        request.write(body)
        request.finish()
        return True


#: How many Host values L{Router} keeps normalized (then it starts over).
_HOST_CACHE = 1024

#: Paths answered over plain HTTP even for sites that redirect to HTTPS.
ACME_CHALLENGE_PREFIX = b"/.well-known/acme-challenge/"


def httpsLocation(host: str, port: int, target: bytes) -> bytes:
    """
    The https:// URL of C{target} (origin-form: path and query, as received)
    on C{host} (normalized) and C{port}, which is left out when it is 443.
    """
    authority = f"[{host}]" if ":" in host else host
    if port != 443:
        authority += f":{port}"
    return b"https://" + authority.encode("ascii") + target


def _atOnce(check: Callable[[], bool]) -> Deferred[bool]:
    """
    Run C{check} now, in this thread (tests).
    """
    return maybeDeferred(check)
