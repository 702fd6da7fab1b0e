"""
Tests for L{revproxy.acme.schedule}: renewal times and back-off delays.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from revproxy.acme.schedule import (
    BACKOFF_FIRST_SECS,
    BACKOFF_MAX_SECS,
    LIFETIME_JITTER,
    OVERRIDE_JITTER,
    backoffDelay,
    renewalTime,
)

DAY = 86400.0
HOUR = 3600.0
# 2026-01-01T00:00:00Z
T0 = 1767225600.0

# Derandomized and without an example database, so every run checks the
# same examples and writes nothing.
_PROPERTIES = settings(max_examples=300, deadline=None, derandomize=True, database=None)

_LIFETIMES = st.floats(min_value=60.0, max_value=20 * 365 * DAY)
_NOT_BEFORES = st.floats(min_value=0.0, max_value=4e9)
_SEEDS = st.integers(min_value=0, max_value=2**64)


class _Fixed(random.Random):
    """
    A L{random.Random} whose C{random()} always returns C{value}, to reach
    the ends of the jitter band.
    """

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value
        self.calls = 0

    def random(self) -> float:
        self.calls += 1
        return self.value


#: The largest value C{random.random()} can return.
_ALMOST_ONE = 1.0 - 2.0**-53


def _renew(
    notBefore: float,
    lifetime: float,
    rng: random.Random,
    now: float | None = None,
    **kwargs: object,
) -> tuple[float, str]:
    return renewalTime(
        notBefore,
        notBefore + lifetime,
        now=notBefore if now is None else now,
        rng=rng,
        **kwargs,  # type: ignore[arg-type]  # the keyword arguments under test
    )


class LifetimeRuleTests(SynchronousTestCase):
    """
    L{renewalTime} without an ARI window or override: 1/3 (or 1/2) of the
    lifetime left, up to 5% of the lifetime earlier.
    """

    def assertBand(
        self, lifetime: float, fraction: float, reason: str, seed: int = 1
    ) -> None:
        """
        The renewal time is C{notAfter - fraction * lifetime} with no
        jitter, 5% of the lifetime earlier with the most, between those with
        a seeded generator, and the reason is C{reason} in every case.
        """
        notAfter = T0 + lifetime
        threshold = notAfter - fraction * lifetime
        latest, why = _renew(T0, lifetime, _Fixed(0.0))
        self.assertEqual((latest, why), (threshold, reason))
        earliest, why = _renew(T0, lifetime, _Fixed(1.0))
        self.assertEqual((earliest, why), (threshold - 0.05 * lifetime, reason))
        almost, _ = _renew(T0, lifetime, _Fixed(_ALMOST_ONE))
        self.assertTrue(earliest <= almost < latest)
        seeded, why = _renew(T0, lifetime, random.Random(seed))
        self.assertEqual(why, reason)
        self.assertTrue(earliest < seeded < latest, (earliest, seeded, latest))
        # The same seed gives the same time.
        self.assertEqual(_renew(T0, lifetime, random.Random(seed))[0], seeded)

    def test_ninetyDays(self) -> None:
        """
        A 90-day certificate renews 30 days before expiry, up to 4.5 days
        earlier.
        """
        self.assertBand(90 * DAY, 1 / 3, "1/3 of the 90-day lifetime left")
        self.assertEqual(
            _renew(T0, 90 * DAY, _Fixed(0.0))[0], T0 + 60 * DAY, "exactly day 60"
        )
        self.assertEqual(_renew(T0, 90 * DAY, _Fixed(1.0))[0], T0 + 55.5 * DAY)

    def test_letsEncryptNinetyDays(self) -> None:
        """
        Let's Encrypt's 90-day certificates (one second short of 90 days)
        are described as 90-day.
        """
        self.assertBand(90 * DAY - 1, 1 / 3, "1/3 of the 90-day lifetime left")

    def test_sixtyFourDays(self) -> None:
        """
        A 64-day certificate renews with 1/3 of its lifetime left.
        """
        self.assertBand(64 * DAY, 1 / 3, "1/3 of the 64-day lifetime left")

    def test_fortyFiveDays(self) -> None:
        """
        A 45-day certificate renews 15 days before expiry, up to 2.25 days
        earlier.
        """
        self.assertBand(45 * DAY, 1 / 3, "1/3 of the 45-day lifetime left")
        self.assertEqual(_renew(T0, 45 * DAY, _Fixed(1.0))[0], T0 + 27.75 * DAY)

    def test_sixDays(self) -> None:
        """
        A 6-day certificate renews with half its lifetime left, up to 7.2
        hours earlier.
        """
        reason = "1/2 of the 6-day lifetime left (lifetime under 10 days)"
        self.assertBand(6 * DAY, 1 / 2, reason)
        self.assertEqual(_renew(T0, 6 * DAY, _Fixed(0.0))[0], T0 + 3 * DAY)
        self.assertEqual(_renew(T0, 6 * DAY, _Fixed(1.0))[0], T0 + 3 * DAY - 7.2 * HOUR)

    def test_shortLivedHours(self) -> None:
        """
        Let's Encrypt's 160-hour certificates renew with half their lifetime
        left, described to a tenth of a day.
        """
        reason = "1/2 of the 6.7-day lifetime left (lifetime under 10 days)"
        self.assertBand(160 * HOUR, 1 / 2, reason)

    def test_tenDayBoundary(self) -> None:
        """
        The 1/2 rule is for lifetimes under 10 days: exactly 10 days uses
        1/3.
        """
        self.assertBand(10 * DAY, 1 / 3, "1/3 of the 10-day lifetime left")
        self.assertBand(
            10 * DAY - 1,
            1 / 2,
            "1/2 of the 10-day lifetime left (lifetime under 10 days)",
        )

    def test_fiveYears(self) -> None:
        """
        A 5-year certificate (pebble's default) renews with 1/3 left.
        """
        lifetime = 5 * 365.25 * DAY
        self.assertBand(lifetime, 1 / 3, "1/3 of the 1826.2-day lifetime left")

    def test_pastIsReturnedAsIs(self) -> None:
        """
        A renewal time already past is returned unchanged ("renew now"), not
        moved to C{now}.
        """
        now = T0 + 80 * DAY
        when, _ = _renew(T0, 90 * DAY, _Fixed(0.0), now=now)
        self.assertEqual(when, T0 + 60 * DAY)

    def test_oneRandomDraw(self) -> None:
        """
        Each call draws exactly one random number, so a shared generator
        stays reproducible.
        """
        rng = _Fixed(0.5)
        _renew(T0, 90 * DAY, rng)
        self.assertEqual(rng.calls, 1)

    def test_badLifetime(self) -> None:
        """
        A C{notAfter} not after C{notBefore} is a L{ValueError}.
        """
        for lifetime in (0.0, -DAY):
            self.assertRaises(ValueError, _renew, T0, lifetime, random.Random(1))

    @_PROPERTIES
    @given(_NOT_BEFORES, _LIFETIMES, _SEEDS)
    def test_withinBand(self, notBefore: float, lifetime: float, seed: int) -> None:
        """
        For any lifetime and seed, the time is between C{notBefore} and
        C{notAfter}, and in the documented band: at most the threshold and
        at most 5% of the lifetime before it.
        """
        notAfter = notBefore + lifetime
        lifetime = notAfter - notBefore
        when, reason = renewalTime(
            notBefore, notAfter, now=notBefore, rng=random.Random(seed)
        )
        self.assertTrue(notBefore <= when <= notAfter)
        fraction = 1 / 2 if lifetime < 10 * DAY else 1 / 3
        threshold = notAfter - lifetime * fraction
        self.assertLessEqual(when, threshold)
        self.assertGreaterEqual(when, threshold - LIFETIME_JITTER * lifetime)
        self.assertEqual(reason.startswith("1/2 "), lifetime < 10 * DAY)


class OverrideTests(SynchronousTestCase):
    """
    L{renewalTime} with C{renew_before_days}.
    """

    def test_override(self) -> None:
        """
        C{renew_before_days = 20} renews 20 days before expiry, up to 1% of
        the lifetime earlier, and says so.
        """
        notAfter = T0 + 90 * DAY
        latest, why = _renew(T0, 90 * DAY, _Fixed(0.0), renewBeforeDays=20)
        self.assertEqual((latest, why), (notAfter - 20 * DAY, "renew_before_days = 20"))
        earliest, _ = _renew(T0, 90 * DAY, _Fixed(1.0), renewBeforeDays=20)
        self.assertEqual(earliest, notAfter - 20 * DAY - 0.9 * DAY)
        seeded, _ = _renew(T0, 90 * DAY, random.Random(7), renewBeforeDays=20)
        self.assertTrue(earliest < seeded < latest)

    def test_fractionalDays(self) -> None:
        """
        A fractional override is shown as given.
        """
        _, why = _renew(T0, 6 * DAY, _Fixed(0.0), renewBeforeDays=1.5)
        self.assertEqual(why, "renew_before_days = 1.5")

    def test_overrideNotShorterThanLifetime(self) -> None:
        """
        An override not shorter than the lifetime (30 days for a 6-day
        certificate) would make every new certificate due at once; the
        lifetime rule applies instead and the reason says why.
        """
        for days in (30.0, 6.0):
            when, why = _renew(T0, 6 * DAY, _Fixed(0.0), renewBeforeDays=days)
            self.assertEqual(when, T0 + 3 * DAY)
            self.assertEqual(
                why,
                "1/2 of the 6-day lifetime left (lifetime under 10 days) "
                f"(renew_before_days = {days:g} ignored: not shorter than the "
                "lifetime)",
            )

    def test_overrideNearLifetimeNotBeforeNotBefore(self) -> None:
        """
        An override just under the lifetime, with the most jitter, is
        clamped to C{notBefore}.
        """
        when, _ = _renew(T0, 90 * DAY, _Fixed(1.0), renewBeforeDays=89.999)
        self.assertEqual(when, T0)

    def test_nonPositive(self) -> None:
        """
        An override of zero or less is a L{ValueError}.
        """
        for days in (0.0, -1.0):
            self.assertRaises(
                ValueError, _renew, T0, 90 * DAY, _Fixed(0.0), renewBeforeDays=days
            )

    @_PROPERTIES
    @given(
        _NOT_BEFORES,
        _LIFETIMES,
        st.floats(min_value=0.001, max_value=365.0),
        _SEEDS,
    )
    def test_withinBand(
        self, notBefore: float, lifetime: float, days: float, seed: int
    ) -> None:
        """
        For any override shorter than the lifetime, the time is between
        C{notBefore} and C{notAfter}, at most C{days} before expiry and at
        most 1% of the lifetime earlier than that.
        """
        notAfter = notBefore + lifetime
        lifetime = notAfter - notBefore
        when, reason = renewalTime(
            notBefore,
            notAfter,
            now=notBefore,
            rng=random.Random(seed),
            renewBeforeDays=days,
        )
        self.assertTrue(notBefore <= when <= notAfter)
        if days * DAY < lifetime:
            self.assertEqual(reason, f"renew_before_days = {days:g}")
            threshold = notAfter - days * DAY
            self.assertLessEqual(when, threshold)
            self.assertGreaterEqual(
                when, min(threshold - OVERRIDE_JITTER * lifetime, threshold)
            )
        else:
            self.assertIn("ignored", reason)


class ARITests(SynchronousTestCase):
    """
    L{renewalTime} with an ARI window, which wins over everything else.
    """

    start = T0 + 50 * DAY  # 2026-02-20T00:00:00Z
    end = T0 + 51 * DAY

    def test_window(self) -> None:
        """
        The time is uniformly random in the window: its start with 0, its
        end with 1, in between with a seed; the reason gives the window.
        """
        reason = "ARI window 2026-02-20T00:00:00Z to 2026-02-21T00:00:00Z"
        window = (self.start, self.end)
        self.assertEqual(
            _renew(T0, 90 * DAY, _Fixed(0.0), ariWindow=window), (self.start, reason)
        )
        self.assertEqual(
            _renew(T0, 90 * DAY, _Fixed(1.0), ariWindow=window), (self.end, reason)
        )
        self.assertEqual(
            _renew(T0, 90 * DAY, _Fixed(0.25), ariWindow=window),
            (self.start + 6 * HOUR, reason),
        )
        seeded, _ = _renew(T0, 90 * DAY, random.Random(3), ariWindow=window)
        self.assertTrue(self.start < seeded < self.end)

    def test_winsOverOverride(self) -> None:
        """
        An ARI window takes precedence over C{renew_before_days}.
        """
        when, why = _renew(
            T0,
            90 * DAY,
            _Fixed(0.0),
            renewBeforeDays=20,
            ariWindow=(self.start, self.end),
        )
        self.assertEqual(when, self.start)
        self.assertTrue(why.startswith("ARI window "), why)

    def test_windowEnded(self) -> None:
        """
        A window that has ended means now, and the reason says it ended.
        """
        for now in (self.end, self.end + DAY):
            when, why = _renew(
                T0, 90 * DAY, _Fixed(0.0), now=now, ariWindow=(self.start, self.end)
            )
            self.assertEqual(when, now)
            self.assertEqual(
                why, "ARI window 2026-02-20T00:00:00Z to 2026-02-21T00:00:00Z (ended)"
            )

    def test_endedAfterExpiry(self) -> None:
        """
        With an ended window and an expired certificate the time is
        C{notAfter}, never later.
        """
        notAfter = T0 + 90 * DAY
        when, _ = _renew(
            T0, 90 * DAY, _Fixed(0.0), now=notAfter + DAY, ariWindow=(T0, T0 + DAY)
        )
        self.assertEqual(when, notAfter)

    def test_windowPastExpiry(self) -> None:
        """
        A window reaching past C{notAfter} is cut at C{notAfter}.
        """
        notAfter = T0 + 90 * DAY
        when, _ = _renew(
            T0, 90 * DAY, _Fixed(1.0), ariWindow=(notAfter - DAY, notAfter + DAY)
        )
        self.assertEqual(when, notAfter)

    def test_invalidWindowIgnored(self) -> None:
        """
        A window that ends before it starts is ignored: the next rule
        applies and the reason mentions the ignored window.
        """
        when, why = _renew(
            T0,
            90 * DAY,
            _Fixed(0.0),
            renewBeforeDays=20,
            ariWindow=(self.end, self.start),
        )
        self.assertEqual(when, T0 + 70 * DAY)
        self.assertEqual(
            why,
            "renew_before_days = 20; ignored an ARI window that ends before it "
            "starts (2026-02-21T00:00:00Z to 2026-02-20T00:00:00Z)",
        )

    @_PROPERTIES
    @given(
        _NOT_BEFORES,
        _LIFETIMES,
        st.floats(min_value=-1.0, max_value=2.0),
        st.floats(min_value=0.0, max_value=30 * DAY),
        st.floats(min_value=-2.0, max_value=2.0),
        _SEEDS,
    )
    def test_withinWindow(
        self,
        notBefore: float,
        lifetime: float,
        startAt: float,
        length: float,
        nowAt: float,
        seed: int,
    ) -> None:
        """
        For any window, the time is C{now} (or C{notAfter}, if earlier)
        once the window has ended, and otherwise in the window cut at
        C{notAfter}.
        """
        notAfter = notBefore + lifetime
        start = notBefore + startAt * lifetime
        end = start + length
        now = notBefore + nowAt * lifetime
        when, reason = renewalTime(
            notBefore,
            notAfter,
            now=now,
            rng=random.Random(seed),
            ariWindow=(start, end),
        )
        self.assertTrue(reason.startswith("ARI window "))
        self.assertLessEqual(when, notAfter)
        if end <= now:
            self.assertEqual(when, min(now, notAfter))
        elif start <= notAfter:
            self.assertTrue(start <= when <= min(end, notAfter))
        else:
            self.assertEqual(when, notAfter)


class BackoffTests(SynchronousTestCase):
    """
    L{backoffDelay}.
    """

    def test_doubling(self) -> None:
        """
        Without jitter (the top of the band) the delay is 60 seconds,
        doubling with each failure, up to a day from the twelfth failure.
        """
        expected = [60.0 * 2**n for n in range(11)] + [DAY] * 5
        self.assertEqual(
            [backoffDelay(failures, _Fixed(1.0)) for failures in range(1, 17)],
            expected,
        )
        self.assertEqual(expected[10], 61440.0)

    def test_halfWithMostJitter(self) -> None:
        """
        With the most jitter the delay is half the base: 30 seconds after
        the first failure, half a day at the cap.
        """
        self.assertEqual(backoffDelay(1, _Fixed(0.0)), 30.0)
        self.assertEqual(backoffDelay(3, _Fixed(0.0)), 120.0)
        self.assertEqual(backoffDelay(50, _Fixed(0.0)), DAY / 2)

    def test_seeded(self) -> None:
        """
        A seeded generator gives a delay inside the band, the same each time.
        """
        delay = backoffDelay(4, random.Random(11))
        self.assertTrue(240.0 < delay < 480.0, delay)
        self.assertEqual(backoffDelay(4, random.Random(11)), delay)

    def test_hugeCount(self) -> None:
        """
        An enormous failure count is capped, not an overflow.
        """
        self.assertEqual(backoffDelay(10**9, _Fixed(1.0)), BACKOFF_MAX_SECS)

    def test_badCount(self) -> None:
        """
        Fewer than one failure is a L{ValueError}.
        """
        for failures in (0, -1):
            self.assertRaises(ValueError, backoffDelay, failures, random.Random(1))

    @_PROPERTIES
    @given(st.integers(min_value=1, max_value=10_000), _SEEDS)
    def test_bounds(self, failures: int, seed: int) -> None:
        """
        Any delay is between 30 seconds and a day, and between half the
        base and the base.
        """
        delay = backoffDelay(failures, random.Random(seed))
        base = backoffDelay(failures, _Fixed(1.0))
        self.assertTrue(BACKOFF_FIRST_SECS / 2 <= delay <= BACKOFF_MAX_SECS)
        self.assertTrue(base / 2 <= delay <= base)

    @_PROPERTIES
    @given(st.integers(min_value=1, max_value=100))
    def test_monotone(self, failures: int) -> None:
        """
        The base delay never shrinks as failures add up, and doubles until
        it reaches the cap.
        """
        before = backoffDelay(failures, _Fixed(1.0))
        after = backoffDelay(failures + 1, _Fixed(1.0))
        self.assertGreaterEqual(after, before)
        self.assertEqual(after, min(2 * before, BACKOFF_MAX_SECS))
