# -*- test-case-name: tests.test_acme_schedule -*-
"""
When to renew a certificate, and how long to wait after a failed order.

How it works: docs/internals.md, "Renewal schedule and back-off".
"""

from __future__ import annotations

import random

from revproxy.formatting import isoTime

#: Lifetimes shorter than this renew with 1/2 of the lifetime left, not 1/3.
SHORT_LIFETIME_SECS = 10 * 86400.0

#: The lifetime rule moves the renewal earlier by up to this fraction of
#: the lifetime.
LIFETIME_JITTER = 0.05

#: C{renew_before_days} moves the renewal earlier by up to this fraction of
#: the lifetime.
OVERRIDE_JITTER = 0.01

#: The back-off after the first failed order, before jitter.
BACKOFF_FIRST_SECS = 60.0

#: The longest back-off, before jitter.
BACKOFF_MAX_SECS = 86400.0

_DAY = 86400.0

#: A time out of C{datetime}'s range is written as a plain number.
_NUMBER = "{:.0f}"


def _days(seconds: float) -> str:
    """
    A duration in days for a reason: C{"90"} for 89.99999 days (Let's
    Encrypt's 90-day certificates end one second early), C{"6.7"} for 160
    hours.
    """
    return f"{round(seconds / _DAY, 1):g}"


def _lifetimeRule(
    notBefore: float, notAfter: float, rng: random.Random
) -> tuple[float, str]:
    lifetime = notAfter - notBefore
    if lifetime < SHORT_LIFETIME_SECS:
        threshold = notAfter - lifetime / 2
        reason = (
            f"1/2 of the {_days(lifetime)}-day lifetime left (lifetime under 10 days)"
        )
    else:
        threshold = notAfter - lifetime / 3
        reason = f"1/3 of the {_days(lifetime)}-day lifetime left"
    when = threshold - rng.random() * (LIFETIME_JITTER * lifetime)
    return min(max(when, notBefore), notAfter), reason


def renewalTime(
    notBefore: float,
    notAfter: float,
    *,
    now: float,
    rng: random.Random,
    renewBeforeDays: float | None = None,
    ariWindow: tuple[float, float] | None = None,
) -> tuple[float, str]:
    """
    When to renew a certificate, and why then.

    @param notBefore: The leaf's C{notBefore}, in seconds since the epoch.
    @param notAfter: The leaf's C{notAfter}, in seconds since the epoch.
    @param now: The current time; used only when the ARI window has ended.
    @param rng: The source of the jitter; one C{rng.random()} per call.
    @param renewBeforeDays: The operator's C{renew_before_days}, if set.
    @param ariWindow: The CA's suggested window (start, end), in seconds
        since the epoch, if it gave one.  A window that ends before it
        starts is ignored, and the reason says so.
    @return: The renewal time and a one-line reason for the log and the
        admin socket:

          - C{"ARI window 2027-01-01T00:00:00Z to 2027-01-02T00:00:00Z"}: a
            uniformly random time in the window; C{now} if the window has
            ended (C{end <= now}; the reason ends with C{"(ended)"});
          - C{"renew_before_days = 20"}: C{notAfter} minus 20 days, minus
            between 0 and 1% of the lifetime;
          - C{"1/3 of the 90-day lifetime left"} (C{"1/2 of the 6-day
            lifetime left (lifetime under 10 days)"}): that threshold minus
            between 0 and 5% of the lifetime.

        Never after C{notAfter}; never before C{notBefore} except by
        following an ARI window.  It may be before C{now}: renew now.
    @raise ValueError: C{notAfter} is not after C{notBefore}, or
        C{renewBeforeDays} is not positive.
    """
    lifetime = notAfter - notBefore
    if not lifetime > 0:
        raise ValueError(
            f"notAfter ({isoTime(notAfter, _NUMBER)}) must be after notBefore ({isoTime(notBefore, _NUMBER)})"
        )
    if renewBeforeDays is not None and not renewBeforeDays > 0:
        raise ValueError(f"renewBeforeDays must be positive, not {renewBeforeDays!r}")

    note = ""
    if ariWindow is not None:
        start, end = ariWindow
        if end >= start:
            reason = f"ARI window {isoTime(start, _NUMBER)} to {isoTime(end, _NUMBER)}"
            if end <= now:
                return min(now, notAfter), f"{reason} (ended)"
            when = start + rng.random() * (end - start)
            return min(max(when, start), end, notAfter), reason
        note = f"; ignored an ARI window that ends before it starts ({isoTime(start, _NUMBER)} to {isoTime(end, _NUMBER)})"

    if renewBeforeDays is not None:
        before = renewBeforeDays * _DAY
        if before < lifetime:
            when = notAfter - before - rng.random() * (OVERRIDE_JITTER * lifetime)
            when = min(max(when, notBefore), notAfter)
            return when, f"renew_before_days = {renewBeforeDays:g}{note}"
        note = (
            f" (renew_before_days = {renewBeforeDays:g} ignored: not shorter than "
            f"the lifetime){note}"
        )

    when, reason = _lifetimeRule(notBefore, notAfter, rng)
    return when, reason + note


def backoffDelay(failures: int, rng: random.Random) -> float:
    """
    How long to wait before the next order after C{failures} failed ones in
    a row.

    The base delay is 60 seconds after the first failure and doubles with
    each further one (120, 240, ... 61440 seconds), capped at one day from
    the twelfth failure on.  The delay is a random fraction of the base
    between 1/2 and 1 ("equal jitter"), so that sites that failed together
    (a CA outage) do not all retry at the same moment, while the delay
    still grows.  It is therefore always between 30 seconds and one day.

    @param failures: Consecutive failures, including the one just now.
    @param rng: The source of the jitter; one C{rng.random()} per call.
    @raise ValueError: C{failures} is less than 1.
    """
    if failures < 1:
        raise ValueError(f"failures must be at least 1, not {failures!r}")
    # 60 * 2**11 is already over a day; a bounded exponent keeps the
    # arithmetic small for any count.
    base = min(BACKOFF_FIRST_SECS * 2.0 ** min(failures - 1, 32), BACKOFF_MAX_SECS)
    return base * (0.5 + 0.5 * rng.random())
