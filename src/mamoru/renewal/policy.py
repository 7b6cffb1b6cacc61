"""The renewal decision: pure, clock-injected, no I/O.

Order of reasons (the first that applies wins):
1. no certificate, or one for other names, key type or profile than the config now asks for,
   or one the web server is not serving -> due now;
2. expired -> due now;
3. the CA's ARI window (RFC 9773), when it has one: a uniform random moment inside it
   (a window already past means now);
4. otherwise the lifetime rule the field settled on: renew when 1/3 of the lifetime is left,
   1/2 when the lifetime is under 10 days, moved earlier by up to `jitter` of that span so a
   fleet of clinics does not hit the CA in the same second.
Whatever the reason from 3-4, a certificate younger than `min_age` is not renewed (clock skew,
a CA that backdates notBefore, or an ARI window that says "now" for every certificate must
never turn into an order loop), and nothing is planned later than `margin` before expiry.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

SHORT_LIFETIME = timedelta(days=10)


@dataclass(frozen=True)
class CertFacts:
    """What the policy needs to know about the current certificate."""

    names: frozenset[str]
    key: str | None
    profile: str | None
    not_before: datetime
    not_after: datetime
    stored_at: datetime | None = None


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
    rule: str  # machine name: missing | changed | not-served | expired | ari | lifetime


def lifetime_due_at(not_before: datetime, not_after: datetime, jitter: float,
                    rng: random.Random) -> datetime:
    lifetime = not_after - not_before
    fraction = 0.5 if lifetime < SHORT_LIFETIME else 1 / 3
    left = lifetime * fraction
    return not_after - left - left * (jitter * rng.random())


def min_age(cert: CertFacts) -> timedelta:
    return min((cert.not_after - cert.not_before) / 10, timedelta(hours=1))


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
    the ARI window, so re-deciding does not re-roll it; `rng` draws it (and the jitter)."""
    rng = rng or random.Random()
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
    if wanted.profile and cert.profile != wanted.profile:
        return Decision(True, now, f"profile changed to {wanted.profile}", "changed")
    if now >= cert.not_after:
        return Decision(True, now, "the certificate has expired", "expired")
    if not served:
        return Decision(True, now, "the web server does not serve the stored certificate",
                        "not-served")

    lifetime = cert.not_after - cert.not_before
    margin = lifetime / 10  # never plan a renewal in the last tenth of the lifetime
    if window is not None and window.start <= window.end:
        pick = window_pick if window_pick is not None else rng.random()
        at = window.start + (window.end - window.start) * pick
        why, rule = "inside the CA's renewal window (ARI)", "ari"
    else:
        # Jitter drawn from the certificate itself: stable across re-checks of one certificate,
        # spread across a fleet's certificates.
        seeded = random.Random(f"{cert.not_before.isoformat()}|{sorted(cert.names)}")
        at = lifetime_due_at(cert.not_before, cert.not_after, jitter, seeded)
        fraction = "1/2" if lifetime < SHORT_LIFETIME else "1/3"
        why, rule = f"{fraction} of the lifetime left", "lifetime"
    at = min(at, cert.not_after - margin)
    born = max(cert.not_before, cert.stored_at or cert.not_before)
    at = max(at, born + min_age(cert))
    return Decision(at <= now, at, why, rule)
