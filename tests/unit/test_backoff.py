"""The retry schedule after failures (mamoru.renewal.backoff): one table, pure, clock-injected."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from mamoru.config.model import RenewalSettings
from mamoru.renewal.backoff import MAX_RETRY_AFTER, delay_seconds, next_attempt

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
DEFAULTS = RenewalSettings()  # 60 s first, 6 h max, 12 h permanent, 10 % jitter


class Fixed(random.Random):
    """An rng whose random() always returns `value` (uniform() follows from it)."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.mark.parametrize(("retryable", "attempt", "seconds"), [
    (True, 1, 60), (True, 2, 120), (True, 3, 240), (True, 4, 480), (True, 5, 960),
    (True, 8, 7680), (True, 9, 15360), (True, 10, 21600), (True, 11, 21600),
    (True, 1000, 21600), (True, 10**6, 21600),  # years of failures: capped, no overflow
    (True, 0, 60),  # defensive: "0 failures" means the first delay
    (False, 1, 43200), (False, 7, 43200), (False, 10**6, 43200),
])
def test_delay_table(retryable: bool, attempt: int, seconds: float) -> None:
    assert delay_seconds(retryable=retryable, attempt=attempt, settings=DEFAULTS) == seconds


@pytest.mark.parametrize(("draw", "factor"), [(0.0, 0.9), (0.5, 1.0), (1.0, 1.1)])
@pytest.mark.parametrize("attempt", [1, 4, 12])
def test_jitter_bounds(draw: float, factor: float, attempt: int) -> None:
    base = delay_seconds(retryable=True, attempt=attempt, settings=DEFAULTS)
    when = next_attempt(retryable=True, attempt=attempt, now=NOW, settings=DEFAULTS,
                        rng=Fixed(draw))
    assert when - NOW == pytest.approx(timedelta(seconds=base * factor), abs=timedelta(
        microseconds=10))


def test_jitter_spreads_a_fleet_within_ten_percent() -> None:
    rng = random.Random(7)
    delays = [(next_attempt(retryable=True, attempt=3, now=NOW, settings=DEFAULTS, rng=rng)
               - NOW).total_seconds() for _ in range(1000)]
    assert 240 * 0.9 <= min(delays) < 240 * 0.92
    assert 240 * 1.08 < max(delays) <= 240 * 1.1


@pytest.mark.parametrize(("retry_after", "earliest", "latest"), [
    # the CA's time is later than our backoff: a little after it
    (NOW + timedelta(hours=3), NOW + timedelta(hours=3), NOW + timedelta(hours=3, seconds=5)),
    # earlier than our backoff: ours wins (1 min +- 10 %)
    (NOW + timedelta(seconds=5), NOW + timedelta(seconds=54), NOW + timedelta(seconds=66)),
    # in the past: ignored
    (NOW - timedelta(hours=1), NOW + timedelta(seconds=54), NOW + timedelta(seconds=66)),
    # absurdly far: capped at a week
    (NOW + timedelta(days=400), NOW + MAX_RETRY_AFTER,
     NOW + MAX_RETRY_AFTER + timedelta(seconds=5)),
], ids=["later", "earlier", "past", "capped"])
def test_retry_after_is_honoured(retry_after: datetime, earliest: datetime,
                                 latest: datetime) -> None:
    for seed in range(20):
        when = next_attempt(retryable=True, attempt=1, now=NOW, settings=DEFAULTS,
                            retry_after=retry_after, rng=random.Random(seed))
        assert earliest <= when <= latest


def test_retry_after_applies_to_permanent_errors_too() -> None:
    far = NOW + timedelta(days=2)
    when = next_attempt(retryable=False, attempt=1, now=NOW, settings=DEFAULTS, retry_after=far)
    assert far <= when <= far + timedelta(seconds=5)


def test_configured_table_and_floor() -> None:
    settings = RenewalSettings(retry_first_seconds=1, retry_max_seconds=8,
                               permanent_retry_seconds=30, jitter_fraction=0.0)
    delays = [(next_attempt(retryable=True, attempt=n, now=NOW, settings=settings) - NOW)
              .total_seconds() for n in range(1, 7)]
    assert delays == [1, 2, 4, 8, 8, 8]
    tiny = RenewalSettings(retry_first_seconds=1, jitter_fraction=0.5)
    when = next_attempt(retryable=True, attempt=1, now=NOW, settings=tiny, rng=Fixed(0.0))
    assert when - NOW == timedelta(seconds=1)  # never sooner than a second
