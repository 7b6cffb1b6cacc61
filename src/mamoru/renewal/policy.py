"""The renewal decision: pure, clock-injected, no I/O.

Order of reasons (the first that applies wins):
1. no certificate, or one for other names, key type or profile than the config now asks for
   -> due now;
2. one the web server is not serving -> due now (the pipeline puts the stored certificate back
   in service; it orders a new one only when that one is itself due);
3. expired -> due now;
4. the CA's ARI window (RFC 9773), when it has one: a uniform random moment inside it (a window
   already past means now). A window that ends before start, or that ended before this
   certificate was even stored, is nonsense for this certificate and is ignored (rule 5);
5. otherwise the lifetime rule the field settled on: renew when 1/3 of the lifetime is left,
   1/2 when the lifetime is under 10 days, moved earlier by up to `jitter` of that span so a
   fleet of clinics does not hit the CA in the same second. The jitter is drawn from the
   certificate itself: stable across re-checks, different across certificates.

Never in a loop: whatever the reason from 3-5, a certificate stored less than `min_age` ago is
not due (a clock that runs ahead, a CA that backdates notBefore, or an ARI window that says
"now" for every certificate must never turn into one order after another). `min_age` is a tenth
of the lifetime, at most an hour: short enough to follow a CA that really asks for early
renewal (a revocation incident gives days of notice), long enough that a misbehaving CA gets
at most one order an hour — and its own rate limits then slow that further through backoff.
Nothing from rule 4 or 5 is planned later than `margin` (a tenth of the lifetime) before
expiry, or earlier than `min_age` after the certificate was stored.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

SHORT_LIFETIME = timedelta(days=10)
MAX_MIN_AGE = timedelta(hours=1)


@dataclass(frozen=True)
class CertFacts:
    """What the policy needs to know about the current certificate.

    `stored_at` is when mamoru stored it, on this machine's clock (None for certificates whose
    metadata was rebuilt); `profile` is the profile the config asked for when it was ordered."""

    names: frozenset[str]
    key: str | None
    profile: str | None
    not_before: datetime
    not_after: datetime
    stored_at: datetime | None = None

    @property
    def lifetime(self) -> timedelta:
        return self.not_after - self.not_before

    @property
    def born(self) -> datetime:
        """When this certificate came to us: stored_at (our clock, so comparisons with `now`
        are immune to skew between us and the CA), else its notBefore."""
        return self.stored_at or self.not_before


@dataclass(frozen=True)
class Wanted:
    names: frozenset[str]
    key: str
    profile: str | None


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime


@dataclass(frozen=True)
class Decision:
    due: bool
    at: datetime  # when to renew (<= now when due)
    why: str  # in plain words, for status and events
    rule: str  # missing | changed | not-served | expired | ari | lifetime (| reinstall)


def lifetime_due_at(not_before: datetime, not_after: datetime, jitter: float,
                    rng: random.Random) -> datetime:
    """The lifetime rule: 1/3 of the lifetime left (1/2 under SHORT_LIFETIME), moved earlier
    by `jitter` x rng.random() of that remaining span."""
    lifetime = not_after - not_before
    fraction = 0.5 if lifetime < SHORT_LIFETIME else 1 / 3
    left = lifetime * fraction
    return not_after - left - left * (jitter * rng.random())


def min_age(cert: CertFacts) -> timedelta:
    """How long a freshly stored certificate is never due by time (see the module doc)."""
    return max(min(cert.lifetime / 10, MAX_MIN_AGE), timedelta(0))


def usable_window(window: Window | None, cert: CertFacts) -> Window | None:
    """`window` if it can apply to `cert`: start <= end, and not wholly before the certificate
    was stored (a CA cannot mean that a certificate was due before it existed)."""
    if window is None or window.end < window.start or window.end <= cert.born:
        return None
    return window


def decide(
    wanted: Wanted,
    cert: CertFacts | None,
    now: datetime,
    *,
    window: Window | None = None,
    window_pick: float | None = None,
    served: bool = True,
    jitter: float = 0.1,
    rng: random.Random | None = None,
) -> Decision:
    """Is the site due, and if not, when? `window_pick` (0..1) fixes the moment chosen inside
    the ARI window, so re-deciding does not re-roll it; `rng` draws it when it is None.
    `served`: False when the web server was seen serving another certificate."""
    if cert is None:
        return Decision(True, now, "no certificate yet", "missing")
    if cert.names != wanted.names:
        added = sorted(wanted.names - cert.names)
        removed = sorted(cert.names - wanted.names)
        what = "; ".join(filter(None, [f"added {', '.join(added)}" if added else "",
                                       f"removed {', '.join(removed)}" if removed else ""]))
        return Decision(True, now, f"the site's names changed ({what})", "changed")
    if cert.key is not None and cert.key != wanted.key:
        return Decision(True, now, f"key type changed from {cert.key} to {wanted.key}", "changed")
    if (wanted.profile or None) != (cert.profile or None):
        return Decision(True, now, f"profile changed from {cert.profile or 'none'} to "
                        f"{wanted.profile or 'none'}", "changed")
    if not served:
        return Decision(True, now, "the web server does not serve the stored certificate",
                        "not-served")

    earliest = cert.born + min_age(cert)
    if now >= cert.not_after:
        if now >= earliest:
            return Decision(True, now, "the certificate has expired", "expired")
        # Stored moments ago yet already past its notAfter: the clocks disagree. Ordering
        # again would bring another such certificate, so wait like for any fresh one.
        return Decision(False, earliest, "the certificate looks expired but was stored "
                        "moments ago (is the clock right?)", "expired")

    margin = cert.lifetime / 10  # never plan a renewal in the last tenth of the lifetime
    usable = usable_window(window, cert)
    if usable is not None:
        pick = window_pick if window_pick is not None else (rng or random.Random()).random()
        at = usable.start + (usable.end - usable.start) * min(max(pick, 0.0), 1.0)
        why, rule = "inside the CA's renewal window (ARI)", "ari"
    else:
        seeded = random.Random(f"{cert.not_before.isoformat()}|{sorted(cert.names)}")
        at = lifetime_due_at(cert.not_before, cert.not_after, jitter, seeded)
        fraction = "1/2" if cert.lifetime < SHORT_LIFETIME else "1/3"
        why, rule = f"{fraction} of the lifetime left", "lifetime"
    at = max(min(at, cert.not_after - margin), earliest)
    return Decision(at <= now, at, why, rule)


def next_check(at: datetime, now: datetime, *, interval: timedelta,
               retry_after: datetime | None = None) -> datetime:
    """When to look at a site again after deciding it is not due (or after renewing it): the
    renewal time `at`, but no later than the CA's ARI `retry_after` (its window may move) or
    the periodic `interval` (a lost certificate, a server serving something else); never in
    the past."""
    candidates = [at, now + interval]
    if retry_after is not None and retry_after > now:
        candidates.append(retry_after)
    return max(min(candidates), now)
