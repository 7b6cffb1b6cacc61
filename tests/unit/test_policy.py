"""The renewal decision (mamoru.renewal.policy): table-driven, with an injected clock.

Every row gives the certificate (times relative to T, the certificate's notBefore), the clock,
and optionally an ARI window; the decision's `due`, `rule` and `at` (or its bounds) are checked.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest

from mamoru.renewal.policy import (
    CertFacts,
    Decision,
    Wanted,
    Window,
    decide,
    lifetime_due_at,
    min_age,
    next_check,
    usable_window,
)

T = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
DAY, HOUR, MINUTE, SECOND = (timedelta(days=1), timedelta(hours=1), timedelta(minutes=1),
                             timedelta(seconds=1))
NAMES = frozenset({"clinic.example", "www.clinic.example"})
WANTED = Wanted(NAMES, "ec-p256", None)


def cert(lifetime: timedelta = 90 * DAY, *, stored: timedelta | None = timedelta(0),
         names: frozenset[str] = NAMES, key: str | None = "ec-p256",
         profile: str | None = None, start: datetime = T) -> CertFacts:
    """A certificate valid from `start` for `lifetime`, stored `stored` after its notBefore."""
    return CertFacts(names=names, key=key, profile=profile, not_before=start,
                     not_after=start + lifetime,
                     stored_at=None if stored is None else start + stored)


@dataclass(frozen=True)
class Row:
    id: str
    cert: CertFacts | None
    now: datetime
    due: bool
    rule: str
    at: datetime | tuple[datetime, datetime] | None = None  # exact, or (earliest, latest)
    window: Window | None = None
    pick: float | None = None
    served: bool = True
    wanted: Wanted = WANTED
    why: str | None = None  # a fragment of the reason


# 90-day certificate: 1/3 left at day 60; jitter (10 %) moves it up to 3 days earlier.
# 6-day (160 h) "shortlived": 1/2 left at 80 h; jitter up to 8 h earlier.
SHORT = timedelta(hours=160)
ROWS = [
    Row("missing", None, T, True, "missing", T),
    Row("names added", cert(names=frozenset({"clinic.example"})), T + DAY, True, "changed",
        T + DAY, why="added www.clinic.example"),
    Row("names removed", cert(names=NAMES | {"old.example"}), T + DAY, True, "changed",
        why="removed old.example"),
    Row("key type changed", cert(key="rsa-2048"), T + DAY, True, "changed",
        why="from rsa-2048 to ec-p256"),
    Row("key unknown (rebuilt meta) is not a change", cert(key=None), T + DAY, False, "lifetime"),
    Row("profile changed", cert(profile="classic"), T + DAY, True, "changed",
        wanted=replace(WANTED, profile="tlsserver"), why="to tlsserver"),
    Row("profile dropped from the config", cert(profile="tlsserver"), T + DAY, True, "changed"),
    Row("profile unchanged", cert(profile="tlsserver"), T + DAY, False, "lifetime",
        wanted=replace(WANTED, profile="tlsserver")),
    Row("changed names are due even when fresh", cert(names=frozenset({"a.example"})),
        T + SECOND, True, "changed"),
    Row("not served", cert(), T + DAY, True, "not-served", T + DAY),
    Row("expired", cert(), T + 91 * DAY, True, "expired", T + 91 * DAY),
    Row("expired the moment it was stored (clock ahead)", cert(stored=90 * DAY + HOUR),
        T + 90 * DAY + HOUR + MINUTE, False, "expired", T + 90 * DAY + 2 * HOUR,
        why="is the clock right"),
    Row("fresh: lifetime rule", cert(), T + HOUR, False, "lifetime", (T + 57 * DAY, T + 60 * DAY)),
    Row("day 56: not yet", cert(), T + 56 * DAY, False, "lifetime", (T + 57 * DAY, T + 60 * DAY)),
    Row("day 60 + 1 s: due", cert(), T + 60 * DAY + SECOND, True, "lifetime",
        (T + 57 * DAY, T + 60 * DAY)),
    Row("short-lived: half the lifetime", cert(SHORT), T + HOUR, False, "lifetime",
        (T + 72 * HOUR, T + 80 * HOUR), why="1/2"),
    Row("short-lived: due after half", cert(SHORT), T + 80 * HOUR + SECOND, True, "lifetime"),
    Row("60-second certificate", cert(60 * SECOND), T + 10 * SECOND, False, "lifetime",
        (T + 27 * SECOND, T + 30 * SECOND)),
    Row("ARI window in the future", cert(), T + DAY, False, "ari", T + 50 * DAY + 12 * HOUR,
        window=Window(T + 50 * DAY, T + 51 * DAY), pick=0.5),
    Row("ARI window later than the lifetime rule is followed", cert(), T + DAY, False, "ari",
        T + 70 * DAY, window=Window(T + 70 * DAY, T + 71 * DAY), pick=0.0),
    Row("ARI window past: due now", cert(), T + 30 * DAY, True, "ari", T + 20 * DAY,
        window=Window(T + 20 * DAY, T + 21 * DAY), pick=0.0),
    Row("ARI window end before start: ignored", cert(), T + 30 * DAY, False, "lifetime",
        (T + 57 * DAY, T + 60 * DAY), window=Window(T + 21 * DAY, T + 20 * DAY), pick=0.0),
    Row("ARI window wholly before the certificate was stored: ignored", cert(stored=HOUR),
        T + 2 * HOUR, False, "lifetime", window=Window(T - 2 * HOUR, T - HOUR), pick=0.5),
    Row("ARI 'now' for a fresh certificate waits min_age", cert(), T + 10 * MINUTE, False,
        "ari", T + HOUR, window=Window(T - 300 * DAY, T + DAY), pick=0.0),
    Row("ARI 'now' after min_age", cert(), T + HOUR + SECOND, True, "ari", T + HOUR,
        window=Window(T - 300 * DAY, T + DAY), pick=0.0),
    Row("ARI window past the safety margin is pulled in", cert(), T + DAY, False, "ari",
        T + 81 * DAY, window=Window(T + 85 * DAY, T + 100 * DAY), pick=0.5),
    Row("ARI pick outside 0..1 is clamped", cert(), T + DAY, False, "ari", T + 51 * DAY,
        window=Window(T + 50 * DAY, T + 51 * DAY), pick=7.0),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_decide(row: Row) -> None:
    decision = decide(row.wanted, row.cert, row.now, window=row.window, window_pick=row.pick,
                      served=row.served if row.rule != "not-served" else False,
                      rng=random.Random(1))
    assert (decision.due, decision.rule) == (row.due, row.rule), decision
    if isinstance(row.at, datetime):
        assert decision.at == row.at, decision
    elif row.at is not None:
        assert row.at[0] <= decision.at <= row.at[1], decision
    if row.why:
        assert row.why in decision.why
    assert decision.due == (decision.at <= row.now)


def test_row_with_clock_ahead_waits_exactly_min_age() -> None:
    # stored 1 h after its notAfter (the local clock runs ahead of the CA's)
    facts = cert(stored=90 * DAY + HOUR)
    decision = decide(WANTED, facts, T + 90 * DAY + HOUR + MINUTE)
    assert decision.at == T + 90 * DAY + HOUR + min_age(facts)
    assert decide(WANTED, facts, decision.at).due


SKEWS = [timedelta(seconds=s) for s in (-40 * 86400, -86400, -3600, -60, -1, 0, 1, 60, 3600,
                                        86400, 40 * 86400, 95 * 86400)]


@pytest.mark.parametrize("lifetime", [60 * SECOND, 2 * MINUTE, SHORT, 90 * DAY],
                         ids=["60s", "2min", "6d", "90d"])
@pytest.mark.parametrize("skew", SKEWS, ids=[f"{s.total_seconds():+.0f}s" for s in SKEWS])
def test_a_fresh_certificate_is_never_due_whatever_the_skew(lifetime: timedelta,
                                                             skew: timedelta) -> None:
    """The CA's clock (notBefore/notAfter) is `skew` off ours; we stored the certificate now.
    Whatever the window the CA suggests, nothing is due until min_age has passed."""
    now = T
    facts = cert(lifetime, start=now + skew, stored=-skew)  # stored_at == now
    assert facts.stored_at == now
    windows = [None, Window(now - 2 * DAY, now - DAY), Window(now - DAY, now + DAY),
               Window(now, now)]
    for window in windows:
        for later in (timedelta(0), min_age(facts) - timedelta(microseconds=1)):
            decision = decide(WANTED, facts, now + later, window=window, window_pick=0.0)
            assert not decision.due, (window, later, decision)
            assert decision.at >= now + min_age(facts)


@pytest.mark.parametrize(("lifetime", "expected"), [
    (90 * DAY, HOUR), (SHORT, HOUR), (5 * HOUR, 30 * MINUTE), (2 * MINUTE, 12 * SECOND),
    (60 * SECOND, 6 * SECOND), (timedelta(0), timedelta(0)), (-DAY, timedelta(0))])
def test_min_age(lifetime: timedelta, expected: timedelta) -> None:
    assert min_age(cert(lifetime)) == expected


def test_lifetime_jitter_is_bounded_and_stable() -> None:
    """Across 500 certificates the renewal time stays inside [ideal - 10 % of the span, ideal]
    and spreads over it; for one certificate it never changes, whatever rng the caller has."""
    ats = []
    for i in range(500):
        facts = cert(start=T + i * 17 * SECOND)
        ideal = facts.not_after - facts.lifetime / 3
        first = decide(WANTED, facts, facts.not_before + DAY, rng=random.Random(i))
        again = decide(WANTED, facts, facts.not_before + 2 * DAY, rng=random.Random(i + 999))
        assert first.at == again.at  # stable across re-checks
        assert ideal - facts.lifetime / 3 * 0.1 <= first.at <= ideal
        ats.append((ideal - first.at) / (facts.lifetime / 3 * 0.1))
    assert min(ats) < 0.05 and max(ats) > 0.95  # really spread over the whole jitter span
    assert len({round(a, 6) for a in ats}) > 450  # different per certificate


@pytest.mark.parametrize("jitter", [0.0, 0.1, 0.5])
def test_lifetime_due_at_bounds(jitter: float) -> None:
    for seed in range(50):
        at = lifetime_due_at(T, T + 90 * DAY, jitter, random.Random(seed))
        assert T + 60 * DAY - 30 * DAY * jitter <= at <= T + 60 * DAY


def test_ari_pick_is_drawn_when_not_given_and_stays_inside_the_window() -> None:
    window = Window(T + 40 * DAY, T + 42 * DAY)
    for seed in range(100):
        decision = decide(WANTED, cert(), T + DAY, window=window, rng=random.Random(seed))
        assert window.start <= decision.at <= window.end
        assert decision.rule == "ari"


@pytest.mark.parametrize(("window", "usable"), [
    (Window(T + DAY, T + 2 * DAY), True),
    (Window(T + DAY, T + DAY), True),  # a single moment is a valid window
    (Window(T + 2 * DAY, T + DAY), False),  # end before start
    (Window(T - 2 * DAY, T - DAY), False),  # ended before the certificate was stored
    (Window(T - 2 * DAY, T + MINUTE), True),  # started before, still open afterwards
])
def test_usable_window(window: Window, usable: bool) -> None:
    assert (usable_window(window, cert()) is not None) is usable


NOW = T + 10 * DAY


@pytest.mark.parametrize(("at", "retry_after", "expected"), [
    (NOW + 30 * DAY, None, NOW + 12 * HOUR),  # periodic check
    (NOW + 2 * HOUR, None, NOW + 2 * HOUR),  # the renewal time comes first
    (NOW + 30 * DAY, NOW + 6 * HOUR, NOW + 6 * HOUR),  # ARI Retry-After: ask again then
    (NOW + 30 * DAY, NOW - HOUR, NOW + 12 * HOUR),  # a Retry-After already past is ignored
    (NOW + 3 * HOUR, NOW + 6 * HOUR, NOW + 3 * HOUR),
    (NOW - HOUR, None, NOW),  # never in the past
], ids=["interval", "renewal", "retry-after", "retry-after-past", "renewal-first", "past"])
def test_next_check(at: datetime, retry_after: datetime | None, expected: datetime) -> None:
    assert next_check(at, NOW, interval=12 * HOUR, retry_after=retry_after) == expected


def test_decision_is_a_plain_value() -> None:
    decision = decide(WANTED, None, T)
    assert decision == Decision(True, T, "no certificate yet", "missing")
