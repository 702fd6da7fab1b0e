# -*- test-case-name: tests.test_acme_renewal -*-
"""
The ACME manager: one certificate per C{tls = "acme"} site, issued on first
start, stored, reused after restarts, renewed before expiry, never at the
cost of serving.

Each site is in one of these states: served with a self-signed placeholder
(no certificate yet, an order due), served with its issued certificate
(renewal scheduled), and possibly backing off after a failed order (retry at
a persisted time).  One order per site at a time.  The manager runs its
checks from one timer that it re-arms after each check (at the soonest due
time, at most an hour away); a check catches and logs its own errors.

All state is touched on the reactor thread; the issuer does its blocking
work elsewhere.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from revproxy.acme import AcmeBackoff, AcmeError
from revproxy.acme.schedule import backoffDelay, renewalTime
from revproxy.acme.storage import AcmeStorage, BackoffRecord, CertificateRecord
from revproxy.certificates import LoadedCertificate, PrivateKey
from revproxy.config import AcmeConfig, SiteConfig
from revproxy.formatting import isoTime
from revproxy.interfaces import IChallengeResponder, IIssuer
from revproxy.tls import CertificateError, keyMatches

_log = Logger()

#: The longest time between two checks.
CHECK_INTERVAL = 3600.0
#: How often the CA's renewal window (ARI) is asked for, per certificate.
ARI_INTERVAL = 6 * 3600.0
#: How far apart the clocks of a fleet's nodes may be: a forced renewal
#: takes a certificate another node issued up to this long before it was
#: asked for (its C{issuedAt} is that node's clock).
CLOCK_SKEW_SECS = 60.0
#: How long a placeholder certificate is valid.
PLACEHOLDER_DAYS = 30

_PEM = serialization.Encoding.PEM


def newKey(keyType: str) -> PrivateKey:
    """
    A fresh certificate key: C{"ec-p256"} or C{"rsa2048"}.
    """
    if keyType == "rsa2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def placeholderCertificate(
    site: str, names: Sequence[str], now: float
) -> LoadedCertificate:
    """
    A self-signed certificate for C{names}, served until the CA issues the
    real one (clients will not trust it; it keeps the handshake possible, as
    tls-alpn-01 validation and operators' curl -k need).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    start = datetime.fromtimestamp(now, UTC) - timedelta(hours=1)
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"revproxy placeholder for {site}")]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=PLACEHOLDER_DAYS))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return LoadedCertificate(
        chain=[cert],
        key=key,
        names=tuple(names),
        not_after=cert.not_valid_after_utc.timestamp(),
        issuer=cert.issuer.rfc4514_string(),
        source="placeholder",
        path="",
    )


def loadRecord(record: CertificateRecord) -> LoadedCertificate:
    """
    Turn a stored record into a certificate to serve.

    @raise CertificateError: The chain or key does not parse or match.
    """
    try:
        chain = x509.load_pem_x509_certificates(record.chainPEM)
        key = serialization.load_pem_private_key(record.keyPEM, password=None)
    except (ValueError, TypeError) as e:
        raise CertificateError(f"stored certificate unusable: {e}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertificateError("stored key is neither EC nor RSA")
    leaf = chain[0]
    if not keyMatches(leaf, key):
        raise CertificateError("stored key does not match the stored certificate")
    return LoadedCertificate(
        chain=chain,
        key=key,
        names=record.names,
        not_after=leaf.not_valid_after_utc.timestamp(),
        issuer=leaf.issuer.rfc4514_string(),
        source="acme",
        path="",
    )


class Orders(Protocol):
    """
    Who runs an order: this process alone (L{LocalOrders}), or the fleet
    (L{revproxy.cluster.orders.FleetOrders}: one order per site across the
    nodes, the others take its certificate).
    """

    def order(
        self,
        site: str,
        names: tuple[str, ...],
        issue: Callable[[], Deferred[CertificateRecord]],
        wanted: Callable[[CertificateRecord], bool],
        forced: bool,
    ) -> Deferred[tuple[CertificateRecord, str]]:
        """
        Get a certificate for C{site}'s C{names}: by calling C{issue} (an
        order with the CA), or, when another node got one that is
        C{wanted}, that one.

        @param forced: The admin asked for a new certificate (C{renew}):
            no shared back-off applies.
        @return: Fires with the record and where it comes from (C{""}:
            issued for this node's order, else for the log, such as
            C{"node b of the fleet"}); fails with L{AcmeError} (an
            L{AcmeBackoff} when the back-off was decided there).
        """


class LocalOrders:
    """
    Every order is this process's own (no C{[cluster]}).
    """

    def order(
        self,
        site: str,
        names: tuple[str, ...],
        issue: Callable[[], Deferred[CertificateRecord]],
        wanted: Callable[[CertificateRecord], bool],
        forced: bool,
    ) -> Deferred[tuple[CertificateRecord, str]]:
        return issue().addCallback(lambda record: (record, ""))


@attrs.frozen
class AcmeSiteDescription:
    """
    One acme site's certificate and schedule, as the manager describes them
    (the admin C{certs}, and C{renew}'s answer).

    @ivar site: The site's name.
    @ivar names: The names the site has now.
    @ivar source: C{"acme"} (issued by the CA) or C{"placeholder"}.
    @ivar issuer: The certificate's issuer (RFC 4514).
    @ivar notAfter: When the certificate expires (seconds since the epoch).
    @ivar at: When this was described, by the manager's clock: what the
        expiry is counted from.
    @ivar ordering: Whether an order is in progress.
    @ivar lastError: Why the last order failed, or L{None}.
    @ivar nextRenewal: When the next order is due, or L{None} while one is
        in progress.
    @ivar nextRenewalReason: Why then, for an operator.
    """

    site: str
    names: tuple[str, ...]
    source: str
    issuer: str
    notAfter: float
    at: float
    ordering: bool
    lastError: str | None
    nextRenewal: float | None
    nextRenewalReason: str


@attrs.frozen
class RenewalResult:
    """
    How a forced renewal (the admin C{renew SITE}) ended.

    @ivar error: Why it failed (the order's error, or that there is no such
        acme site), or L{None} when the certificate was issued.
    @ivar site: The site after the order, or L{None} when there is no such
        acme site.
    """

    error: str | None
    site: AcmeSiteDescription | None


@attrs.define(eq=False)
class _Site:
    """
    What the manager knows of one acme site.
    """

    name: str
    names: tuple[str, ...]
    certificate: LoadedCertificate
    record: CertificateRecord | None = None
    renewAt: float | None = None
    renewReason: str = ""
    ariCheckedAt: float | None = None
    ariWindow: tuple[float, float] | None = None
    backoff: BackoffRecord | None = None
    ordering: Deferred[None] | None = None
    lastError: str | None = None

    @property
    def issued(self) -> bool:
        """
        Whether the site has a certificate from the CA for its names.
        """
        return self.record is not None and self.record.names == self.names


class AcmeManager(Service):
    """
    Keeps a certificate for every C{tls = "acme"} site.

    @ivar onChange: Called (no arguments) whenever a site's certificate
        changes: the service rebuilds the TLS certificate store.
    """

    def __init__(
        self,
        clock: IReactorTime,
        storage: AcmeStorage,
        issuerFactory: Callable[[], IIssuer],
        config: AcmeConfig,
        challenges: IChallengeResponder,
        rng: random.Random | None = None,
        onChange: Callable[[], None] | None = None,
        orders: Orders | None = None,
    ) -> None:
        """
        @param issuerFactory: Builds the issuer (account key, directory) on
            first need; an L{AcmeError} it raises fails that order and is
            retried with back-off.
        @param onChange: Called (no arguments) whenever a site's certificate
            changes.
        @param orders: Who runs the orders (the fleet's, with
            C{[cluster]}); this process alone by default.
        """
        self._orders: Orders = LocalOrders() if orders is None else orders
        self._clock = clock
        self._storage = storage
        self._issuerFactory = issuerFactory
        self._issuerInstance: IIssuer | None = None
        self._config = config
        self._challenges = challenges
        self._rng = rng or random.SystemRandom()
        self._sites: dict[str, _Site] = {}
        self._timer: IDelayedCall | None = None
        self.onChange: Callable[[], None] = (
            (lambda: None) if onChange is None else onChange
        )

    # -- the sites

    def updateSites(self, sites: Sequence[SiteConfig]) -> None:
        """
        Follow the config's acme sites: new ones are loaded from storage or
        get a placeholder (and an order), removed ones are forgotten (their
        files are kept), ones whose hosts changed get a new order.  An
        order in progress is never doubled.
        """
        wanted = {site.name: site for site in sites if site.tls == "acme"}
        changed = False
        for name in list(self._sites):
            if name not in wanted:
                del self._sites[name]
                changed = True
        for name, site in wanted.items():
            names = tuple(site.hosts)
            state = self._sites.get(name)
            if state is None:
                self._sites[name] = self._load(name, names)
                changed = True
            elif state.names != names:
                state.names = names
                if not state.issued:
                    state.certificate = placeholderCertificate(
                        name, names, self._clock.seconds()
                    )
                    state.renewAt = None
                changed = True
        if changed:
            self.onChange()
        if self.running:
            self._arm(0)

    def _load(self, name: str, names: tuple[str, ...]) -> _Site:
        """
        The state of a site new to this process: its stored certificate if
        it is still valid and covers the names, else a placeholder.
        """
        now = self._clock.seconds()
        state = _Site(name, names, placeholderCertificate(name, names, now))
        problems: list[str] = []
        try:
            state.backoff = self._storage.loadBackoff(name)
        except AcmeError as e:
            problems.append(str(e))
        try:
            record = self._storage.loadCertificate(name)
        except AcmeError as e:
            problems.append(str(e))
            record = None
        if problems:
            # One line, whatever the number of files that could not be read.
            _log.warn(
                "ACME: site {site}: cannot use its stored state, ordering a new "
                "certificate: {problems}",
                site=name,
                problems="; ".join(dict.fromkeys(problems)),
            )
        if record is not None:
            try:
                certificate = loadRecord(record)
            except CertificateError as e:
                _log.warn(
                    "ACME: site {site}: {error}; ordering a new one",
                    site=name,
                    error=str(e),
                )
            else:
                if certificate.not_after <= now:
                    _log.info(
                        "ACME: site {site}: stored certificate expired {when}; "
                        "ordering a new one",
                        site=name,
                        when=isoTime(certificate.not_after),
                    )
                elif record.names != names:
                    # Serve it for the names it has while a new one comes.
                    state.certificate = certificate
                    _log.info(
                        "ACME: site {site}: stored certificate is for "
                        "{old}, the site now has {new}; ordering a new one",
                        site=name,
                        old=", ".join(record.names),
                        new=", ".join(names),
                    )
                else:
                    state.certificate = certificate
                    state.record = record
                    self._schedule(state)
                    _log.info(
                        "ACME: site {site}: serving the stored certificate "
                        "(expires {when}); renewal {renewAt} ({reason})",
                        site=name,
                        when=isoTime(certificate.not_after),
                        renewAt=isoTime(state.renewAt or now),
                        reason=state.renewReason,
                    )
                    return state
        if state.certificate.source == "placeholder":
            _log.info(
                "ACME: site {site}: no certificate yet; serving a self-signed "
                "placeholder until the CA issues one",
                site=name,
            )
        return state

    def certificates(self) -> dict[str, LoadedCertificate]:
        """
        The certificate each acme site serves now (issued or placeholder),
        by site name.
        """
        return {name: state.certificate for name, state in self._sites.items()}

    def isIssued(self, site: str) -> bool:
        """
        Whether C{site} has its certificate from the CA (not a
        placeholder).
        """
        state = self._sites.get(site)
        return state is not None and state.certificate.source == "acme"

    # -- scheduling

    def _schedule(self, state: _Site) -> None:
        """
        Work out when an issued certificate is renewed.
        """
        record = state.record
        if record is None:
            state.renewAt, state.renewReason = None, "no certificate yet"
            return
        state.renewAt, state.renewReason = renewalTime(
            record.notBefore,
            record.notAfter,
            now=self._clock.seconds(),
            rng=self._rng,
            renewBeforeDays=self._config.renew_before_days,
            ariWindow=state.ariWindow,
        )

    def _dueAt(self, state: _Site) -> float:
        """
        When the site's next order is due (now or earlier: due).
        """
        if state.ordering is not None:
            return float("inf")
        due = float("-inf")
        if state.issued and state.renewAt is not None:
            due = state.renewAt
        if state.backoff is not None:
            due = max(due, state.backoff.retryAt)
        return due

    def startService(self) -> None:
        super().startService()
        self._arm(0)

    def stopService(self) -> None:
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _arm(self, delay: float) -> None:
        """
        Check in C{delay} seconds, or sooner if already armed sooner.
        """
        delay = max(0.0, min(delay, CHECK_INTERVAL))
        timer = self._timer
        if timer is not None and timer.active():
            if timer.getTime() <= self._clock.seconds() + delay:
                return
            timer.cancel()
        self._timer = self._clock.callLater(delay, self._check)

    def _check(self) -> None:
        """
        Order what is due, then re-arm.  Never raises: a failing check is
        logged and the next one still comes.
        """
        self._timer = None
        delay = CHECK_INTERVAL
        try:
            now = self._clock.seconds()
            for state in list(self._sites.values()):
                if self._dueAt(state) <= now:
                    self._order(state)
                elif (
                    state.issued
                    and state.ordering is None
                    and (
                        state.ariCheckedAt is None
                        or now - state.ariCheckedAt >= ARI_INTERVAL
                    )
                ):
                    self._askRenewalWindow(state)
            delay = self._nextDelay()
        except Exception:
            _log.failure("ACME: the certificate check failed; next check in an hour")
        if self.running:
            # Never sooner than a second: nothing here may spin.
            self._arm(max(1.0, delay))

    def _nextDelay(self) -> float:
        now = self._clock.seconds()
        delays = [self._dueAt(state) - now for state in self._sites.values()]
        return min([CHECK_INTERVAL, *delays])

    # -- orders

    def renew(self, site: str) -> Deferred[RenewalResult]:
        """
        Order a new certificate for C{site} now, whatever its schedule or
        back-off (the admin's C{renew SITE}).

        @return: Fires with how the order ended when it ends.
        """
        state = self._sites.get(site)
        if state is None:
            return succeed(RenewalResult(f"no acme site named {site}", None))
        ordering = state.ordering
        if ordering is None:
            ordering = self._order(state, forced=True)
        done: Deferred[RenewalResult] = Deferred()

        def report(result: object) -> object:
            done.callback(RenewalResult(state.lastError, self.describe(state)))
            return result

        ordering.addBoth(report)
        return done

    def _issuer(self) -> IIssuer:
        if self._issuerInstance is None:
            self._issuerInstance = self._issuerFactory()
        return self._issuerInstance

    def _order(self, state: _Site, forced: bool = False) -> Deferred[None]:
        """
        Start an order for C{state}'s names (through the fleet, with
        C{[cluster]}); its outcome is recorded on the state, never raised.

        @param forced: The admin asked for it: only a certificate issued
            from now on will do.
        @return: Fires (with L{None}) when the order has ended.
        """
        names = state.names
        current = state.record
        since = self._clock.seconds()

        def issue() -> Deferred[CertificateRecord]:
            key = newKey(self._config.key_type)
            _log.info(
                "ACME: site {site}: ordering a certificate for {names}",
                site=state.name,
                names=", ".join(names),
            )
            d: Deferred[list[bytes]] = maybeDeferred(
                lambda: self._issuer().issue(names, key, self._challenges)
            )
            return d.addCallback(lambda chain: self._record(names, key, chain))

        def wanted(record: CertificateRecord) -> bool:
            if record.names != names or record.notAfter <= self._clock.seconds():
                return False
            newer = current is None or record.issuedAt > current.issuedAt
            if forced:
                return newer and record.issuedAt >= since - CLOCK_SKEW_SECS
            return newer

        d: Deferred[tuple[CertificateRecord, str]] = maybeDeferred(
            self._orders.order, state.name, names, issue, wanted, forced
        )
        # An error while taking the certificate in is a failed order too.
        ordering: Deferred[None] = d.addCallback(
            lambda got: self._issued(state, *got)
        ).addErrback(lambda failure: self._failed(state, failure))
        state.ordering = ordering

        def finished(result: object) -> object:
            state.ordering = None
            if self._sites.get(state.name) is state and state.names != names:
                # The hosts changed during the order: order again.
                self._arm(0)
            elif self.running:
                self._arm(self._nextDelay())
            return result

        ordering.addBoth(finished)
        return ordering

    def _record(
        self, names: tuple[str, ...], key: PrivateKey, chain: list[bytes]
    ) -> CertificateRecord:
        """
        The record of a certificate the CA just issued.
        """
        keyPEM = key.private_bytes(
            _PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        leaf = x509.load_pem_x509_certificate(chain[0])
        return CertificateRecord(
            names=names,
            chainPEM=b"".join(chain),
            keyPEM=keyPEM,
            notBefore=leaf.not_valid_before_utc.timestamp(),
            notAfter=leaf.not_valid_after_utc.timestamp(),
            issuedAt=self._clock.seconds(),
            directoryURL=self._config.directory_url,
        )

    def adopt(self, site: str, record: CertificateRecord, origin: str) -> bool:
        """
        Serve C{record}, a certificate another node of the fleet got for
        C{site}, if it is for the site's names, still valid, and newer
        than the one served (and no order of this node is running: it
        takes the fleet's certificate itself).

        @param origin: Where it comes from, for the log.
        @return: Whether it is served now.
        """
        state = self._sites.get(site)
        if state is None or state.ordering is not None:
            return False
        if record.names != state.names or record.notAfter <= self._clock.seconds():
            return False
        if state.record is not None and record.issuedAt <= state.record.issuedAt:
            return False
        try:
            self._issued(state, record, origin)
        except CertificateError as e:
            _log.warn(
                "ACME: site {site}: the certificate from {origin} is unusable: {error}",
                site=site,
                origin=origin,
                error=str(e),
            )
            return False
        if self.running:
            self._arm(self._nextDelay())
        return True

    def acmeSites(self) -> list[str]:
        """
        The acme sites' names.
        """
        return list(self._sites)

    def resetIssuer(self) -> None:
        """
        Build the issuer again at the next order (the account key changed:
        the fleet's replaced this node's).
        """
        self._issuerInstance = None

    def _issued(self, state: _Site, record: CertificateRecord, origin: str) -> None:
        """
        Serve C{record} and keep it: issued for this node's order, or
        taken from C{origin} (another node of the fleet) when not empty.
        """
        now = self._clock.seconds()
        certificate = loadRecord(record)
        try:
            self._storage.saveCertificate(state.name, record)
            self._storage.saveBackoff(state.name, None)
        except AcmeError as e:
            _log.error(
                "ACME: site {site}: the new certificate is served but could not "
                "be stored (it will be ordered again after a restart): {error}",
                site=state.name,
                error=str(e),
            )
        if self._sites.get(state.name) is not state:
            return
        state.record = record
        state.certificate = certificate
        state.backoff = None
        state.lastError = None
        state.ariWindow = None
        state.ariCheckedAt = None
        self._schedule(state)
        _log.info(
            "ACME: site {site}: certificate {how} for {names}, expires {when}; "
            "renewal {renewAt} ({reason})",
            site=state.name,
            how=f"from {origin}" if origin else "issued",
            names=", ".join(record.names),
            when=isoTime(certificate.not_after),
            renewAt=isoTime(state.renewAt or now),
            reason=state.renewReason,
        )
        self.onChange()

    def _failed(self, state: _Site, failure: Failure) -> None:
        now = self._clock.seconds()
        if isinstance(failure.value, AcmeBackoff):
            self._backingOff(state, failure.value)
            return
        if failure.check(AcmeError):
            error = str(failure.value)
        else:
            _log.failure(
                "ACME: site {site}: unexpected error in an order",
                failure,
                site=state.name,
            )
            error = f"internal error: {failure.getErrorMessage()}"
        failures = state.backoff.failures + 1 if state.backoff is not None else 1
        delay = backoffDelay(failures, self._rng)
        backoff = BackoffRecord(
            failures=failures, retryAt=now + delay, lastError=error, lastErrorAt=now
        )
        state.backoff = backoff
        state.lastError = error
        unsaved = ""
        try:
            self._storage.saveBackoff(state.name, backoff)
        except AcmeError as e:
            if str(e) not in error:
                unsaved = f" (and the back-off could not be stored: {e})"
        _log.error(
            "ACME: site {site}: order failed ({failures} in a row), retrying at "
            "{when}; still serving the {what}: {error}{unsaved}",
            unsaved=unsaved,
            site=state.name,
            failures=failures,
            when=isoTime(backoff.retryAt),
            what=(
                "current certificate"
                if state.certificate.source == "acme"
                else "self-signed placeholder"
            ),
            error=error,
        )

    def _backingOff(self, state: _Site, decided: AcmeBackoff) -> None:
        """
        Wait out a back-off the fleet decided (this node's order failed,
        or another node's did).
        """
        backoff = decided.backoff
        assert isinstance(backoff, BackoffRecord)
        state.backoff = backoff
        state.lastError = backoff.lastError
        try:
            self._storage.saveBackoff(state.name, backoff)
        except AcmeError as e:
            _log.warn(
                "ACME: site {site}: cannot store the back-off: {error}",
                site=state.name,
                error=str(e),
            )
        _log.error(
            "ACME: site {site}: {what}, retrying at {when}; "
            "still serving the {serving}: {error}",
            site=state.name,
            what=(
                f"order failed ({backoff.failures} in a row)"
                if decided.ordered
                else str(decided)
            ),
            when=isoTime(backoff.retryAt),
            serving=(
                "current certificate"
                if state.certificate.source == "acme"
                else "self-signed placeholder"
            ),
            error=backoff.lastError,
        )

    def _askRenewalWindow(self, state: _Site) -> None:
        """
        Ask the CA for its renewal window (ARI); when it moves, reschedule.
        """
        record = state.record
        if record is None:
            return
        state.ariCheckedAt = self._clock.seconds()
        leafPEM = x509.load_pem_x509_certificates(record.chainPEM)[0].public_bytes(_PEM)
        d = maybeDeferred(lambda: self._issuer().renewalWindow(leafPEM))

        def got(window: tuple[float, float] | None) -> None:
            if window is not None and window != state.ariWindow:
                state.ariWindow = window
                self._schedule(state)
                if self.running:
                    self._arm(self._nextDelay())

        def failed(failure: Failure) -> None:
            _log.warn(
                "ACME: site {site}: cannot get the CA's renewal window: {error}",
                site=state.name,
                error=failure.getErrorMessage(),
            )

        d.addCallbacks(got, failed)

    # -- the admin socket

    def describe(self, state: _Site) -> AcmeSiteDescription:
        """
        One acme site's certificate and schedule, for the admin C{certs}.
        """
        now = self._clock.seconds()
        nextRenewal: float | None
        if state.ordering is not None:
            nextRenewal, reason = None, "ordering now"
        elif state.backoff is not None and state.backoff.retryAt > now:
            nextRenewal = state.backoff.retryAt
            reason = (
                f"back-off until {isoTime(state.backoff.retryAt)} after error: "
                f"{state.backoff.lastError}"
            )
        elif state.issued and state.renewAt is not None:
            nextRenewal, reason = state.renewAt, state.renewReason
        else:
            nextRenewal, reason = now, "no certificate yet"
        cert = state.certificate
        return AcmeSiteDescription(
            site=state.name,
            names=state.names,
            source=cert.source,
            issuer=cert.issuer,
            notAfter=cert.not_after,
            at=now,
            ordering=state.ordering is not None,
            lastError=state.lastError,
            nextRenewal=nextRenewal,
            nextRenewalReason=reason,
        )

    def describeAll(self) -> list[AcmeSiteDescription]:
        """
        L{describe} for every acme site.
        """
        return [self.describe(state) for state in self._sites.values()]
