"""
The fakes of revproxy's zope interfaces (L{revproxy.interfaces}), one for
each, for every test to share.  L{tests.test_fakes} holds each to its
interface with C{verifyObject}.

  - L{FakeReactor}: L{IRevProxyReactor}, a L{MemoryReactorClock} that keeps
    what is called from threads.
  - L{FakeCertificateStore}: L{ICertificateStore}, names to certificates in
    a dict, recording what was looked up.
  - L{FakeChallengeResponder}: L{IChallengeResponder}, the answers published
    now and a log of every call.
  - L{FakeIssuer}: L{IIssuer}, orders the test grants or refuses, with
    chains from a fake CA (L{signed}).
  - L{FakeReloadFollower}: L{revproxy.reload.IReloadFollower}, a log of
    every step of every reload, failing after the swap when told to.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.testing import MemoryReactorClock
from twisted.python import threadable
from zope.interface import implementer

from revproxy.acme import AcmeError
from revproxy.certificates import LoadedCertificate, PrivateKey
from revproxy.interfaces import (
    ICertificateStore,
    IChallengeResponder,
    IIssuer,
    IRevProxyReactor,
)
from revproxy.reload import IReloadFollower, ReloadResult
from revproxy.runtime import Runtime

#: Seconds in a day.
DAY = 86400.0


@implementer(IRevProxyReactor)
class FakeReactor(MemoryReactorClock):
    """
    A L{MemoryReactorClock} that provides all of L{IRevProxyReactor}: what
    is called from other threads (L{callFromThread}) is kept in
    L{fromThreads}, for the test to run.

    @ivar fromThreads: The calls made through L{callFromThread}, in order,
        not yet run.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fromThreads: list[Callable[[], object]] = []

    def callFromThread(
        self, callable: Callable[..., Any], *args: object, **kwargs: object
    ) -> None:
        """
        Keep C{callable(*args, **kwargs)} in L{fromThreads}.
        """
        self.fromThreads.append(lambda: callable(*args, **kwargs))


@implementer(ICertificateStore)
class FakeCertificateStore:
    """
    Names to certificates, exactly (no wildcards), with a default.

    @ivar lookups: The names L{lookup} was asked for, in order.
    """

    def __init__(
        self,
        byName: Mapping[str, LoadedCertificate],
        default: LoadedCertificate | None = None,
    ) -> None:
        self.byName = dict(byName)
        self.default = default
        self.lookups: list[str | None] = []

    def lookup(self, serverName: str | None) -> LoadedCertificate | None:
        """
        See L{ICertificateStore.lookup}.
        """
        self.lookups.append(serverName)
        if serverName is None:
            return self.default
        return self.byName.get(serverName, self.default)

    def all(self) -> list[LoadedCertificate]:
        """
        See L{ICertificateStore.all}.
        """
        every: list[LoadedCertificate] = []
        for cert in [*self.byName.values(), self.default]:
            if cert is not None and all(cert is not seen for seen in every):
                every.append(cert)
        return every


#: The methods of L{IChallengeResponder}, as L{FakeChallengeResponder} logs
#: them.
RESPONDER_METHODS = frozenset(
    {"addHTTP01", "removeHTTP01", "addTLSALPN01", "removeTLSALPN01"}
)


@implementer(IChallengeResponder)
class FakeChallengeResponder:
    """
    The challenge answers published now, and a log of every call.

    @ivar log: Every call in order, as C{(method, token or name)} plus the
        key authorization for the adds.  It may be a list shared with
        others (a fake CA's), so that the order of both shows.
    @ivar http01: Token to key authorization, for the http-01 answers
        published now.
    @ivar tlsalpn01: Name to key authorization, for the tls-alpn-01 answers
        published now.
    @ivar offThread: The methods called other than on the reactor thread,
        once the reactor has run.
    @ivar failRemove: When true, each remove (after taking its answer
        away) raises L{RuntimeError}.
    @ivar onAdd: Called after each add, if not L{None} (a test cancels an
        order from there).
    @ivar publishing: What L{published} returns, if not L{None} (a test
        holds the order there); else it fires at once.
    """

    def __init__(self, log: list[tuple[Any, ...]] | None = None) -> None:
        self.log: list[tuple[Any, ...]] = [] if log is None else log
        self.http01: dict[str, str] = {}
        self.tlsalpn01: dict[str, str] = {}
        self.offThread: list[str] = []
        self.failRemove = False
        self.onAdd: Callable[[], object] | None = None
        self.publishing: Deferred[None] | None = None

    @property
    def calls(self) -> list[tuple[str, str]]:
        """
        This responder's calls in order, as C{(method, token or name)}.
        """
        return [
            (entry[0], entry[1]) for entry in self.log if entry[0] in RESPONDER_METHODS
        ]

    def _record(self, *entry: Any) -> None:
        # Before the reactor first runs (in a unit test) there is no reactor
        # thread to be off.
        if threadable.ioThread is not None and not threadable.isInIOThread():
            self.offThread.append(entry[0])
        self.log.append(entry)

    def addHTTP01(self, token: str, keyAuthorization: str) -> None:
        """
        See L{IChallengeResponder.addHTTP01}.
        """
        self._record("addHTTP01", token, keyAuthorization)
        self.http01[token] = keyAuthorization
        if self.onAdd is not None:
            self.onAdd()

    def removeHTTP01(self, token: str) -> None:
        """
        See L{IChallengeResponder.removeHTTP01}.
        """
        self._record("removeHTTP01", token)
        self.http01.pop(token, None)
        if self.failRemove:
            raise RuntimeError("responder broke")

    def addTLSALPN01(self, name: str, keyAuthorization: str) -> None:
        """
        See L{IChallengeResponder.addTLSALPN01}.
        """
        self._record("addTLSALPN01", name, keyAuthorization)
        self.tlsalpn01[name] = keyAuthorization
        if self.onAdd is not None:
            self.onAdd()

    def removeTLSALPN01(self, name: str) -> None:
        """
        See L{IChallengeResponder.removeTLSALPN01}.
        """
        self._record("removeTLSALPN01", name)
        self.tlsalpn01.pop(name, None)
        if self.failRemove:
            raise RuntimeError("responder broke")

    def published(self) -> Deferred[None]:
        """
        See L{IChallengeResponder.published}: logged as C{("published",)}
        (not one of L{calls}).
        """
        self._record("published")
        if self.publishing is not None:
            return self.publishing
        return succeed(None)


_CA_KEY = ec.generate_private_key(ec.SECP256R1())
_CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])


def signed(
    names: Sequence[str], key: PrivateKey, notBefore: float, lifetime: float
) -> list[bytes]:
    """
    A chain (leaf, CA) from the fake CA for C{names} and C{key}'s public
    key, valid from C{notBefore} for C{lifetime} seconds.
    """
    start = datetime.fromtimestamp(notBefore, UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(_CA_NAME)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(seconds=lifetime))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
            critical=False,
        )
        .sign(_CA_KEY, hashes.SHA256())
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(_CA_NAME)
        .issuer_name(_CA_NAME)
        .public_key(_CA_KEY.public_key())
        .serial_number(1)
        .not_valid_before(start - timedelta(days=1))
        .not_valid_after(start + timedelta(days=3650))
        .sign(_CA_KEY, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return [leaf.public_bytes(pem), ca.public_bytes(pem)]


@attrs.define
class Order:
    """
    One order placed with a L{FakeIssuer}.
    """

    names: tuple[str, ...]
    key: PrivateKey
    responder: IChallengeResponder
    result: Deferred[list[bytes]]


@implementer(IIssuer)
class FakeIssuer:
    """
    An issuer whose orders the test answers (L{grant}, L{refuse}).

    @ivar orders: Every order placed, in order.
    @ivar windows: The leaves whose renewal window was asked for.
    @ivar window: What L{renewalWindow} answers.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.orders: list[Order] = []
        self.windows: list[bytes] = []
        self.window: tuple[float, float] | None = None

    def issue(
        self, names: Sequence[str], key: PrivateKey, responder: IChallengeResponder
    ) -> Deferred[list[bytes]]:
        """
        See L{IIssuer.issue}: the order waits for the test.
        """
        d: Deferred[list[bytes]] = Deferred()
        self.orders.append(Order(tuple(names), key, responder, d))
        return d

    def renewalWindow(self, leafPEM: bytes) -> Deferred[tuple[float, float] | None]:
        """
        See L{IIssuer.renewalWindow}: L{window}, at once.
        """
        self.windows.append(leafPEM)
        return succeed(self.window)

    def grant(self, index: int = -1, lifetime: float = 90 * DAY) -> None:
        """
        Fulfil an order (the last by default) with a chain valid from now
        for C{lifetime} seconds.
        """
        order = self.orders[index]
        order.result.callback(
            signed(order.names, order.key, self.clock.seconds(), lifetime)
        )

    def refuse(self, index: int = -1, message: str = "connection refused") -> None:
        """
        Fail an order (the last by default) with an L{AcmeError}.
        """
        self.orders[index].result.errback(AcmeError(message))


@implementer(IReloadFollower)
class FakeReloadFollower:
    """
    Records each step of every reload in C{steps}, as C{(what, value)}:
    C{"NAME starting"} with the source, C{"NAME prepare"} and
    C{"NAME follow"} with the runtime's generation, C{"NAME ended"} with
    whether the reload was all applied.  Raises from C{follow} when
    C{failFollow} is set.
    """

    def __init__(
        self, name: str, steps: list[tuple[str, object]], failFollow: bool = False
    ) -> None:
        self.name = self.part = name
        self.steps = steps
        self.failFollow = failFollow

    def reloadStarting(self, source: str) -> None:
        self.steps.append((f"{self.name} starting", source))

    def prepare(self, runtime: Runtime) -> None:
        self.steps.append((f"{self.name} prepare", runtime.generation))

    def follow(self, runtime: Runtime) -> None:
        self.steps.append((f"{self.name} follow", runtime.generation))
        if self.failFollow:
            raise RuntimeError(f"{self.name} cannot follow")

    def reloadEnded(self, result: ReloadResult) -> None:
        self.steps.append((f"{self.name} ended", result.ok))
