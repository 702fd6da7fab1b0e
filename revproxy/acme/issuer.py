# -*- test-case-name: tests.test_acme_issuer,tests.integration.test_acme_issuer -*-
"""
The ACME issuer: certbot's blocking C{acme} library, run off the reactor
thread, behind L{revproxy.interfaces.IIssuer}.

How it works: docs/internals.md, "The ACME issuer".
"""

from __future__ import annotations

import base64
import ipaddress
import math
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, cast

import requests
from acme import challenges, messages
from acme import client as acmeClient
from acme import errors as acmeErrors
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from josepy.b64 import b64encode
from josepy.errors import DeserializationError
from josepy.jwa import ES256, ES384, ES512, JWASignature
from josepy.jwk import JWKEC
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import (
    IReactorFromThreads,
    IReactorThreads,
    IReactorTime,
)
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from revproxy.acme import AcmeError
from revproxy.formatting import oneLine
from revproxy.interfaces import IChallengeResponder, IIssuer
from revproxy.private.acme import postAsGet

if TYPE_CHECKING:
    from revproxy.certificates import PrivateKey

__all__ = [
    "AcmeCalls",
    "AcmeIssuer",
    "ChallengeType",
    "LibraryCalls",
    "ThreadRunner",
    "ariCertID",
    "describeFailure",
    "makeCSR",
    "parseRenewalInfo",
    "splitChain",
]

_log = Logger()

_T = TypeVar("_T")

ChallengeType = Literal["http-01", "tls-alpn-01"]
CHALLENGE_TYPES: tuple[ChallengeType, ...] = ("http-01", "tls-alpn-01")

#: Polling of authorizations and orders: first wait, growth, longest wait;
#: a C{Retry-After} from the CA wins, up to its own limit, within the
#: deadline.
POLL_FIRST = 0.25
POLL_FACTOR = 1.5
POLL_LONGEST = 10.0
RETRY_AFTER_LONGEST = 60.0

#: The longest message an L{AcmeError} carries.
MESSAGE_LIMIT = 600

_TOKEN = re.compile(r"\A[A-Za-z0-9_-]{16,256}\Z")
_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----", re.DOTALL
)
_ERRNO = re.compile(r"\[Errno -?\d+\] [^'\")\]]+")
_VERIFY = re.compile(r"certificate verify failed: [^'\"()\]]+")
_FRACTION = re.compile(r"(\.\d{6})\d+")


class ThreadRunner(Protocol):
    """
    Runs a blocking function in a thread; the L{Deferred} fires on the
    reactor thread with its result (L{deferToThreadPool}'s contract).
    """

    def __call__(self, f: Callable[[], _T], /) -> Deferred[_T]: ...


class AcmeCalls(Protocol):
    """
    The blocking ACME operations the issuer needs, one or a few HTTP
    requests each; L{LibraryCalls} does them with certbot's C{acme}
    library.  Used by one coroutine at a time, always from a thread.
    """

    def directory(self) -> Mapping[str, Any]:
        """
        The directory object (fetched once, then remembered).
        """

    def register(self, email: str) -> str:
        """
        Register the account key, agreeing to the terms of service, or
        find the account it already has; return the account URL.
        """

    def useAccount(self, uri: str) -> None:
        """
        Sign later requests as the account at C{uri} (no request).
        """

    def newOrder(self, csrPEM: bytes) -> messages.OrderResource:
        """
        Create an order for the CSR's names, with its authorizations.
        """

    def answer(self, challenge: messages.ChallengeBody) -> None:
        """
        Tell the CA that C{challenge} is ready to be validated.
        """

    def authorization(self, uri: str) -> tuple[messages.Authorization, float | None]:
        """
        The authorization at C{uri} and the C{Retry-After} seconds, if any.
        """

    def finalize(self, order: messages.OrderResource) -> messages.Order:
        """
        Send the CSR to the order's C{finalize} URL.
        """

    def order(self, uri: str) -> tuple[messages.Order, float | None]:
        """
        The order at C{uri} and the C{Retry-After} seconds, if any.
        """

    def certificate(self, url: str) -> str:
        """
        Download the certificate chain (PEM) at C{url}.
        """

    def getJSON(self, url: str) -> Any:
        """
        An unauthenticated GET of a JSON document (ARI).
        """

    def close(self) -> None:
        """
        Close the HTTP connections.
        """


class _ChallengeAnswer(challenges.ChallengeResponse):
    """
    The answer C{{}} to a challenge (RFC 8555 section 7.5.1), of any type.

    The library (5.x) has no tls-alpn-01 classes any more; and an empty
    L{challenges.ChallengeResponse} is falsy, so the library would send a
    POST-as-GET (an empty body), which does not start the validation.
    This one is always true.  Its C{typ} is never sent.
    """

    typ = "tls-alpn-01"

    def __bool__(self) -> bool:
        return True


def _retryAfter(response: requests.Response, now: float) -> float | None:
    """
    The C{Retry-After} of a response in seconds from C{now} (delay seconds
    or an HTTP date), or L{None} when absent or unreadable.

    @param now: The current time (C{clock.seconds()}).
    """
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def _signatureAlgorithm(key: ec.EllipticCurvePrivateKey) -> JWASignature:
    """
    The JWS algorithm for an account key's curve.
    """
    curve = key.curve.name
    algorithms = {"secp256r1": ES256, "secp384r1": ES384, "secp521r1": ES512}
    if curve not in algorithms:
        raise ValueError(
            f"unsupported account key curve {curve} (use P-256, P-384 or P-521)"
        )
    return algorithms[curve]


class LibraryCalls:
    """
    L{AcmeCalls} over certbot's C{acme} library (C{ClientV2} and
    C{ClientNetwork}, which uses C{requests}).

    @ivar net: The library's signing HTTP client.
    """

    def __init__(
        self,
        directoryURL: str,
        accountKey: ec.EllipticCurvePrivateKey,
        caFile: str = "",
        timeout: float = 30.0,
        directory: Mapping[str, Any] | None = None,
        *,
        clock: IReactorTime,
    ) -> None:
        """
        @param caFile: A PEM file of the CAs to trust for the directory's
            HTTPS, instead of the system's.
        @param timeout: Seconds each connect, and each read, may take.
        @param directory: The directory object, if already known.
        @param clock: What an HTTP date in C{Retry-After} is counted from
            (the reactor; read in the calling thread).
        """
        self._clock = clock
        self.directoryURL = directoryURL
        self.jwk = JWKEC(key=accountKey)
        self.net = acmeClient.ClientNetwork(
            key=self.jwk,
            alg=_signatureAlgorithm(accountKey),
            user_agent="revproxy (acme-python)",
            timeout=max(1, math.ceil(timeout)),
        )
        # requests takes a CA bundle's path where the library says bool.
        if caFile:
            self.net.verify_ssl = caFile  # type: ignore[assignment]
        self._directory = directory
        self._client: acmeClient.ClientV2 | None = None

    def _v2(self) -> acmeClient.ClientV2:
        """
        The library's client, once the directory is known.
        """
        if self._client is None:
            directory = messages.Directory.from_json(dict(self.directory()))
            self._client = acmeClient.ClientV2(directory, self.net)
        return self._client

    def directory(self) -> Mapping[str, Any]:
        if self._directory is None:
            answer = self.net.get(self.directoryURL).json()
            if not isinstance(answer, dict) or "newOrder" not in answer:
                raise ValueError(f"{self.directoryURL} is not an ACME directory")
            self._directory = answer
        return self._directory

    def register(self, email: str) -> str:
        client = self._v2()
        # newAccount is signed with the key itself (jwk), never a kid.
        self.net.account = None
        registration = messages.NewRegistration.from_data(
            email=email or None, terms_of_service_agreed=True
        )
        try:
            regr = client.new_account(registration)
        except acmeErrors.ConflictError as existing:
            # 200 and Location: the key already has this account.
            uri = str(existing.location)
            self.useAccount(uri)
            return uri
        if not regr.uri:
            raise ValueError("the CA gave the new account no URL")
        return str(regr.uri)

    def useAccount(self, uri: str) -> None:
        self.net.account = messages.RegistrationResource(
            uri=uri, body=messages.Registration()
        )

    def newOrder(self, csrPEM: bytes) -> messages.OrderResource:
        return self._v2().new_order(csrPEM)

    def answer(self, challenge: messages.ChallengeBody) -> None:
        self._v2().answer_challenge(challenge, _ChallengeAnswer())

    def _postAsGet(self, url: str) -> requests.Response:
        """
        A POST-as-GET (RFC 8555 section 6.3) of C{url}.
        """
        return postAsGet(self._v2(), url)

    def authorization(self, uri: str) -> tuple[messages.Authorization, float | None]:
        response = self._postAsGet(uri)
        return (
            messages.Authorization.from_json(response.json()),
            _retryAfter(response, self._clock.seconds()),
        )

    def finalize(self, order: messages.OrderResource) -> messages.Order:
        updated = self._v2().begin_finalization(order)
        return updated.body

    def order(self, uri: str) -> tuple[messages.Order, float | None]:
        response = self._postAsGet(uri)
        return (
            messages.Order.from_json(response.json()),
            _retryAfter(response, self._clock.seconds()),
        )

    def certificate(self, url: str) -> str:
        return self._postAsGet(url).text

    def getJSON(self, url: str) -> Any:
        return self.net.get(url, content_type="application/json").json()

    def close(self) -> None:
        self.net.session.close()


# -- pure helpers


def _b64url(data: bytes) -> str:
    """
    Unpadded base64url.
    """
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def ariCertID(certificate: x509.Certificate) -> str:
    """
    The ARI certificate identifier (RFC 9773 section 4.1): the base64url
    of the Authority Key Identifier's keyIdentifier, a dot, and the
    base64url of the serial number's DER content octets.

    @raise ValueError: The certificate has no keyIdentifier.
    """
    try:
        aki = certificate.extensions.get_extension_for_class(
            x509.AuthorityKeyIdentifier
        ).value
    except x509.ExtensionNotFound:
        raise ValueError("the certificate has no Authority Key Identifier") from None
    if aki.key_identifier is None:
        raise ValueError("the Authority Key Identifier has no keyIdentifier")
    serial = certificate.serial_number
    # A DER INTEGER: big-endian two's complement, shortest form (a leading
    # zero octet when the high bit is set).
    serialBytes = serial.to_bytes(serial.bit_length() // 8 + 1, "big", signed=True)
    return f"{_b64url(aki.key_identifier)}.{_b64url(serialBytes)}"


def _rfc3339(value: object, what: str) -> float:
    """
    Seconds since the epoch of an RFC 3339 timestamp with a time zone.
    """
    if not isinstance(value, str):
        raise ValueError(f"{what} is not a timestamp: {value!r}")
    text = _FRACTION.sub(r"\1", value.strip())
    text = text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text
    try:
        when = datetime.fromisoformat(text.replace("t", "T"))
    except ValueError:
        raise ValueError(f"{what} is not an RFC 3339 timestamp: {value!r}") from None
    if when.tzinfo is None:
        raise ValueError(f"{what} has no time zone: {value!r}")
    return when.timestamp()


def parseRenewalInfo(document: object) -> tuple[float, float]:
    """
    The suggested window of a RenewalInfo object (RFC 9773 section 4.2),
    as (start, end) in seconds since the epoch.

    @raise ValueError: The document is not a valid RenewalInfo object.
    """
    if not isinstance(document, dict):
        raise ValueError("the renewal info is not a JSON object")
    window = document.get("suggestedWindow")
    if not isinstance(window, dict):
        raise ValueError("the renewal info has no suggestedWindow")
    start = _rfc3339(window.get("start"), "suggestedWindow.start")
    end = _rfc3339(window.get("end"), "suggestedWindow.end")
    if end < start:
        raise ValueError("the suggested window ends before it starts")
    return start, end


def splitChain(fullchain: str | bytes) -> list[bytes]:
    """
    The PEM certificates of a chain, in order, each ending in a newline.

    @raise ValueError: There is none, or one does not parse.
    """
    data = fullchain.encode("ascii") if isinstance(fullchain, str) else fullchain
    chain = [
        m.group(0).replace(b"\r\n", b"\n") + b"\n"
        for m in _PEM_CERTIFICATE.finditer(data)
    ]
    if not chain:
        raise ValueError("the CA sent no certificate")
    for pem in chain:
        x509.load_pem_x509_certificate(pem)
    return chain


def makeCSR(key: PrivateKey, names: Sequence[str]) -> bytes:
    """
    A PEM certificate signing request for C{names} (DNS names, or IP
    addresses), all as subject alternative names, with an empty subject.
    """
    alternatives: list[x509.GeneralName] = []
    for name in names:
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alternatives.append(x509.DNSName(name))
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
    )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


def _problem(error: messages.Error) -> str:
    """
    An ACME problem document as C{type: detail}, and its subproblems.
    """
    detail = error.detail or error.title or error.description or ""
    text = f"{error.typ}: {detail}" if detail else str(error.typ)
    for sub in error.subproblems or ():
        who = f"{sub.identifier.value}: " if sub.identifier is not None else ""
        text += f"; {who}{sub.typ}: {sub.detail or sub.title or ''}"
    return text


def _requestURL(error: requests.RequestException) -> str:
    """
    The URL a failed request was for, or C{"the CA"}.
    """
    request = error.request
    url = getattr(request, "url", None)
    return str(url) if url else "the CA"


def describeFailure(error: BaseException) -> str:
    """
    What went wrong in an ACME call, on one line, for an L{AcmeError}.
    """
    text: str
    if isinstance(error, AcmeError):
        text = str(error)
    elif isinstance(error, messages.Error):
        text = _problem(error)
    elif isinstance(error, acmeErrors.ValidationError):
        text = "; ".join(
            _problem(c.error)
            for authzr in error.failed_authzrs
            for c in authzr.body.challenges
            if c.error is not None
        )
    elif isinstance(error, acmeErrors.IssuanceError):
        text = _problem(error.error)
    elif isinstance(error, acmeErrors.ClientError) and error.args:
        first = error.args[0]
        if isinstance(first, tuple) and first:
            first = first[0]
        if isinstance(first, requests.Response):
            text = f"HTTP {first.status_code} {first.reason} from {first.url}"
        else:
            text = f"{type(error).__name__}: {error}"
    elif isinstance(error, requests.exceptions.SSLError):
        found = _VERIFY.search(str(error))
        reason = found.group(0).strip() if found else "handshake failed"
        text = f"TLS to {_requestURL(error)} failed: {reason}"
    elif isinstance(error, requests.exceptions.Timeout):
        text = f"no answer from {_requestURL(error)} in time"
    elif isinstance(error, requests.exceptions.ConnectionError):
        found = _ERRNO.search(str(error))
        reason = found.group(0).strip() if found else "connection failed"
        text = f"cannot reach {_requestURL(error)}: {reason}"
    elif isinstance(error, requests.RequestException):
        text = f"request to {_requestURL(error)} failed: {type(error).__name__}"
    elif isinstance(error, DeserializationError):
        text = f"unexpected answer from the CA: {error}"
    else:
        text = f"{type(error).__name__}: {error}"
    return oneLine(text or type(error).__name__, MESSAGE_LIMIT)


class _Deadline(Exception):
    """
    The order's deadline passed during C{step}.
    """

    def __init__(self, step: str) -> None:
        super().__init__(step)
        self.step = step


def _challengeType(challenge: messages.ChallengeBody) -> str:
    """
    A challenge's type, even one the library does not know.
    """
    return str(challenge.chall.to_partial_json().get("type", ""))


def _challengeToken(challenge: messages.ChallengeBody) -> str:
    """
    A challenge's token (RFC 8555 section 8.1), checked to be base64url.
    """
    token = challenge.chall.to_partial_json().get("token")
    if not isinstance(token, str) or _TOKEN.match(token) is None:
        raise AcmeError(f"the CA sent a malformed challenge token {token!r}")
    return token


@implementer(IIssuer)
class AcmeIssuer:
    """
    Obtains certificates from an ACME CA (RFC 8555) for one account.

    @ivar accountURI: The account's URL once known (given, registered or
        looked up).
    """

    def __init__(
        self,
        reactor: IReactorTime,
        directoryURL: str,
        email: str,
        accountKey: ec.EllipticCurvePrivateKey,
        *,
        caFile: str = "",
        accountURI: str | None = None,
        onAccount: Callable[[str], None] | None = None,
        challenge: ChallengeType = "http-01",
        timeout: float = 30.0,
        orderDeadline: float = 300.0,
        threadpool: ThreadPool | None = None,
        runInThread: ThreadRunner | None = None,
        newCalls: Callable[[], AcmeCalls] | None = None,
    ) -> None:
        """
        @param reactor: The reactor; without C{threadpool} or
            C{runInThread} it must also provide L{IReactorThreads}.
        @param directoryURL: The CA's directory.
        @param email: The account's contact (C{mailto:}), or C{""}.
        @param accountKey: The account key (P-256, P-384 or P-521).
        @param caFile: PEM CAs to trust for the CA's HTTPS instead of the
            system's (a test CA).
        @param accountURI: The account's URL from an earlier run: used as
            is, without a request (and registered again if the CA no
            longer knows it).
        @param onAccount: Called on the reactor thread with the account
            URL whenever it becomes known or changes, to persist it.
        @param challenge: The challenge type to answer.
        @param timeout: Seconds each connect or read may take.
        @param orderDeadline: Seconds one L{issue} may take in all.
        @param threadpool: Where the blocking calls run (default: the
            reactor's).
        @param runInThread: Runs a blocking call (overrides C{threadpool};
            tests run calls inline).
        @param newCalls: Makes the blocking ACME layer for one operation
            (tests pass a fake; default: L{LibraryCalls}).
        """
        if challenge not in CHALLENGE_TYPES:
            raise ValueError(f"unsupported challenge type {challenge!r}")
        _signatureAlgorithm(accountKey)
        self._reactor = reactor
        self.directoryURL = directoryURL
        self.email = email
        self._accountKey = accountKey
        self._jwk = JWKEC(key=accountKey)
        self.caFile = caFile
        self.accountURI = accountURI
        self._onAccount = onAccount
        self.challenge: ChallengeType = challenge
        self.timeout = timeout
        self.orderDeadline = orderDeadline
        self._directory: Mapping[str, Any] | None = None
        if runInThread is None:
            runInThread = self._threadRunner(threadpool)
        self._runInThread = runInThread
        self._newCalls = newCalls or self._libraryCalls

    def _threadRunner(self, threadpool: ThreadPool | None) -> ThreadRunner:
        """
        Run calls in C{threadpool}, else in the reactor's pool.
        """
        reactor = self._reactor

        def run(f: Callable[[], _T]) -> Deferred[_T]:
            pool = threadpool
            if pool is None:
                pool = cast(IReactorThreads, reactor).getThreadPool()
            return deferToThreadPool(cast(IReactorFromThreads, reactor), pool, f)

        return run

    def _libraryCalls(self) -> AcmeCalls:
        return LibraryCalls(
            self.directoryURL,
            self._accountKey,
            caFile=self.caFile,
            timeout=self.timeout,
            directory=self._directory,
            clock=self._reactor,
        )

    def keyAuthorization(self, token: str) -> str:
        """
        The key authorization for C{token} (RFC 8555 section 8.1).
        """
        thumbprint = self._jwk.thumbprint(hash_function=hashes.SHA256)
        return f"{token}.{b64encode(thumbprint).decode('ascii')}"

    # -- steps

    async def _call(self, deadline: float, step: str, f: Callable[[], _T]) -> _T:
        """
        Run C{f} in a thread; give up on it when the deadline passes (the
        thread runs on, and its result is dropped).
        """
        remaining = deadline - self._reactor.seconds()
        if remaining <= 0:
            raise _Deadline(step)
        d = self._runInThread(f)
        d.addTimeout(remaining, self._reactor)
        try:
            return await d
        except DeferredTimeoutError:
            raise _Deadline(step) from None

    async def _sleep(self, deadline: float, step: str, seconds: float) -> None:
        """
        Wait C{seconds} on the reactor, or until the deadline if sooner.
        """
        remaining = deadline - self._reactor.seconds()
        if remaining <= 0:
            raise _Deadline(step)
        await deferLater(self._reactor, min(seconds, remaining), lambda: None)

    def _nextWait(self, wait: float, retryAfter: float | None) -> tuple[float, float]:
        """
        The wait before the next poll, and the one after it.
        """
        if retryAfter is not None:
            return min(max(retryAfter, POLL_FIRST), RETRY_AFTER_LONGEST), wait
        return wait, min(wait * POLL_FACTOR, POLL_LONGEST)

    def _accountChanged(self, uri: str) -> None:
        """
        Remember the account URL and tell C{onAccount} if it is new.
        """
        if uri == self.accountURI:
            return
        self.accountURI = uri
        _log.info("ACME account {uri}", uri=uri)
        if self._onAccount is not None:
            try:
                self._onAccount(uri)
            except Exception:
                _log.failure("onAccount failed for {uri}", uri=uri)

    async def _prepare(self, calls: AcmeCalls, deadline: float) -> None:
        """
        Fetch the directory and register or look up the account, unless
        they are known.
        """
        if self._directory is None:
            self._directory = await self._call(
                deadline, "the directory", calls.directory
            )
        if self.accountURI is None:
            uri = await self._call(
                deadline, "the account", lambda: calls.register(self.email)
            )
            self._accountChanged(uri)
        else:
            calls.useAccount(self.accountURI)

    async def _newOrder(
        self, calls: AcmeCalls, deadline: float, csrPEM: bytes
    ) -> messages.OrderResource:
        """
        Create the order; register again once if the CA forgot the account.
        """
        try:
            return await self._call(
                deadline, "the new order", lambda: calls.newOrder(csrPEM)
            )
        except messages.Error as e:
            if e.code != "accountDoesNotExist":
                raise
        _log.warn(
            "ACME account {uri} is unknown to the CA; registering again",
            uri=self.accountURI,
        )
        uri = await self._call(
            deadline, "the account", lambda: calls.register(self.email)
        )
        self._accountChanged(uri)
        return await self._call(
            deadline, "the new order", lambda: calls.newOrder(csrPEM)
        )

    def _pick(
        self, authorization: messages.AuthorizationResource
    ) -> messages.ChallengeBody:
        """
        The authorization's challenge of the configured type.
        """
        body = authorization.body
        offered = [_challengeType(c) for c in body.challenges]
        for challenge, kind in zip(body.challenges, offered, strict=True):
            if kind == self.challenge:
                return challenge
        name = body.identifier.value
        raise AcmeError(
            f"{name}: the CA offers no {self.challenge} challenge"
            f" (offers: {', '.join(offered) or 'none'})"
        )

    async def _validate(
        self,
        calls: AcmeCalls,
        deadline: float,
        order: messages.OrderResource,
        responder: IChallengeResponder,
    ) -> None:
        """
        Publish the answers of the pending authorizations, wait until the
        responder says they are published everywhere, ask the CA to
        validate them, and wait until each is valid; remove the answers
        afterwards whatever happens.
        """
        todo: list[tuple[str, str, messages.ChallengeBody]] = []
        for authorization in order.authorizations:
            body = authorization.body
            name = str(body.identifier.value)
            status = body.status
            if status == messages.STATUS_VALID:
                continue
            if status != messages.STATUS_PENDING:
                raise AcmeError(f"{name}: the authorization is {status.name}")
            todo.append((name, str(authorization.uri), self._pick(authorization)))
        removals: list[Callable[[], None]] = []
        try:
            for name, _, challenge in todo:
                keyAuthorization = self.keyAuthorization(_challengeToken(challenge))
                if self.challenge == "http-01":
                    token = _challengeToken(challenge)
                    responder.addHTTP01(token, keyAuthorization)
                    removals.append(partial(responder.removeHTTP01, token))
                else:
                    responder.addTLSALPN01(name, keyAuthorization)
                    removals.append(partial(responder.removeTLSALPN01, name))
            if todo:
                await self._published(deadline, responder)
            for name, _, challenge in todo:
                if challenge.status in (messages.STATUS_PENDING, None):
                    await self._call(
                        deadline, f"answering {name}", partial(calls.answer, challenge)
                    )
            for name, uri, _ in todo:
                await self._waitValid(calls, deadline, name, uri)
        finally:
            for remove in removals:
                try:
                    remove()
                except Exception:
                    _log.failure("removing a challenge answer failed")

    async def _published(self, deadline: float, responder: IChallengeResponder) -> None:
        """
        Wait until C{responder} says its answers can be served wherever the
        CA may connect (a fleet's nodes acknowledged them), or until the
        deadline.
        """
        step = "publishing the challenge answers"
        remaining = deadline - self._reactor.seconds()
        if remaining <= 0:
            raise _Deadline(step)
        d = responder.published()
        d.addTimeout(remaining, self._reactor)
        try:
            await d
        except DeferredTimeoutError:
            raise _Deadline(step) from None

    async def _waitValid(
        self, calls: AcmeCalls, deadline: float, name: str, uri: str
    ) -> None:
        """
        Poll the authorization of C{name} until it is no longer pending.
        """
        wait = POLL_FIRST
        step = f"validating {name} ({self.challenge})"
        for _ in range(100_000):  # the deadline ends it long before
            authorization, retryAfter = await self._call(
                deadline, step, lambda: calls.authorization(uri)
            )
            status = authorization.status
            if status == messages.STATUS_VALID:
                return
            if status not in (messages.STATUS_PENDING, messages.STATUS_PROCESSING):
                errors = [
                    c.error for c in authorization.challenges if c.error is not None
                ]
                reason = "; ".join(_problem(e) for e in errors) or "no reason given"
                raise AcmeError(f"{name} ({self.challenge}): {status.name}: {reason}")
            now, wait = self._nextWait(wait, retryAfter)
            await self._sleep(deadline, step, now)
        raise _Deadline(step)

    async def _finalize(
        self, calls: AcmeCalls, deadline: float, order: messages.OrderResource
    ) -> str:
        """
        Finalize the order, wait until it is valid, and return the
        certificate's URL.
        """
        orderURI = str(order.uri)
        step = "finalizing"
        finalizations = 0
        body: messages.Order | None = None
        retryAfter: float | None = None
        wait = POLL_FIRST
        for _ in range(100_000):  # the deadline ends it long before
            if body is None or (
                body.status == messages.STATUS_READY and finalizations < 3
            ):
                finalizations += 1
                try:
                    body = await self._call(
                        deadline, step, lambda: calls.finalize(order)
                    )
                except messages.Error as e:
                    if e.code != "orderNotReady":
                        raise
            if body is not None:
                if body.status == messages.STATUS_VALID and body.certificate:
                    return str(body.certificate)
                if body.status == messages.STATUS_INVALID:
                    reason = _problem(body.error) if body.error else "no reason given"
                    raise AcmeError(f"the CA refused to issue: {reason}")
            now, wait = self._nextWait(wait, retryAfter)
            await self._sleep(deadline, step, now)
            body, retryAfter = await self._call(
                deadline, step, lambda: calls.order(orderURI)
            )
        raise _Deadline(step)

    def _checkLeaf(
        self, chain: list[bytes], key: PrivateKey, names: Sequence[str]
    ) -> None:
        """
        The leaf must be for C{key} and name every one of C{names}.
        """
        leaf = x509.load_pem_x509_certificate(chain[0])
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        if leaf.public_key().public_bytes(der, spki) != key.public_key().public_bytes(
            der, spki
        ):
            raise AcmeError("the CA issued a certificate for another key")
        try:
            san = leaf.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value
        except x509.ExtensionNotFound:
            raise AcmeError(
                "the issued certificate has no subject alternative names"
            ) from None
        present = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
        present |= {str(a) for a in san.get_values_for_type(x509.IPAddress)}
        missing = [n for n in names if n.lower() not in present]
        if missing:
            raise AcmeError(f"the issued certificate lacks {', '.join(missing)}")

    async def _issue(
        self, names: list[str], key: PrivateKey, responder: IChallengeResponder
    ) -> list[bytes]:
        """
        L{issue}, raising what it raises.
        """
        deadline = self._reactor.seconds() + self.orderDeadline
        calls = self._newCalls()
        try:
            await self._prepare(calls, deadline)
            csrPEM = makeCSR(key, names)
            order = await self._newOrder(calls, deadline, csrPEM)
            await self._validate(calls, deadline, order, responder)
            url = await self._finalize(calls, deadline, order)
            fullchain = await self._call(
                deadline, "downloading the certificate", lambda: calls.certificate(url)
            )
            chain = splitChain(fullchain)
            self._checkLeaf(chain, key, names)
            return chain
        finally:
            self._runInThread(calls.close).addErrback(lambda _: None)

    def issue(
        self, names: Sequence[str], key: PrivateKey, responder: IChallengeResponder
    ) -> Deferred[list[bytes]]:
        """
        Order one certificate for all of C{names}.  See L{IIssuer.issue}.

        Cancelling the result stops the order: the answers are removed at
        once, and the thread's current request ends on its own.
        """
        unique = list(dict.fromkeys(names))
        what = f"order for {', '.join(unique)}"

        async def run() -> list[bytes]:
            if not unique:
                raise AcmeError("order failed: no names")
            try:
                chain = await self._issue(unique, key, responder)
            except CancelledError:
                raise
            except _Deadline as e:
                raise AcmeError(
                    f"{what} failed: deadline of {self.orderDeadline:g} s passed"
                    f" ({e.step})"
                ) from None
            except Exception as e:
                raise AcmeError(
                    oneLine(f"{what} failed: {describeFailure(e)}", MESSAGE_LIMIT)
                ) from None
            _log.info("ACME {what}: issued", what=what)
            return chain

        return Deferred.fromCoroutine(run())

    def renewalWindow(self, leafPEM: bytes) -> Deferred[tuple[float, float] | None]:
        """
        The CA's suggested renewal window (ARI, RFC 9773), or L{None} when
        its directory has no C{renewalInfo}.  See L{IIssuer.renewalWindow}.
        """

        async def run() -> tuple[float, float] | None:
            what = "renewal info"
            try:
                certificate = x509.load_pem_x509_certificate(leafPEM)
                what = f"renewal info for serial {certificate.serial_number:x}"
                deadline = self._reactor.seconds() + self.timeout * 2
                calls = self._newCalls()
                try:
                    if self._directory is None:
                        self._directory = await self._call(
                            deadline, "the directory", calls.directory
                        )
                    base = self._directory.get("renewalInfo")
                    if not isinstance(base, str) or not base:
                        return None
                    url = base.rstrip("/") + "/" + ariCertID(certificate)
                    document = await self._call(
                        deadline, what, lambda: calls.getJSON(url)
                    )
                finally:
                    self._runInThread(calls.close).addErrback(lambda _: None)
                return parseRenewalInfo(document)
            except CancelledError:
                raise
            except _Deadline:
                raise AcmeError(f"{what} failed: no answer in time") from None
            except Exception as e:
                raise AcmeError(
                    oneLine(f"{what} failed: {describeFailure(e)}", MESSAGE_LIMIT)
                ) from None

        return Deferred.fromCoroutine(run())
