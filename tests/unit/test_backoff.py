"""The retry schedule after failures (mamoru.renewal.backoff): one table, pure, clock-injected."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

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


@pytest.mark.parametrize("draw", [0.0, 0.5, 0.999])
def test_failed_validations_stay_under_the_cas_hourly_limit(draw: float) -> None:
    """Let's Encrypt allows 5 failed validations per account, hostname and hour: a broken
    port 80 retried on the transient row (1, 2, 4, 8 min) would use them all in 15 minutes.
    However the jitter falls, no hour holds more than 4 of the daemon's attempts."""
    rng = Fixed(draw)
    times = [NOW]
    for attempt in range(1, 12):
        times.append(next_attempt(retryable=True, attempt=attempt, now=times[-1],
                                  settings=DEFAULTS, rng=rng, validation=True))
    for start in times:
        in_hour = [t for t in times if start <= t < start + timedelta(hours=1)]
        assert len(in_hour) <= 4, in_hour
    assert all(b - a >= timedelta(minutes=15) for a, b in itertools.pairwise(times))
    assert times[-1] - times[-2] <= timedelta(hours=6, minutes=37)  # still capped near 6 h
    # the transient row is unchanged
    assert next_attempt(retryable=True, attempt=1, now=NOW, settings=DEFAULTS,
                        rng=Fixed(0.5)) == NOW + timedelta(seconds=60)


def test_a_failed_validation_says_why_its_retry_is_slow(tmp_path: Path) -> None:
    from mamoru.app import App
    from mamoru.config.model import AcmeSettings, Paths, Settings, Site
    from mamoru.errors import ChallengeFailed
    from mamoru.observe.events import Events, MemorySink
    from mamoru.pipeline import Run, failed
    from mamoru.storage import FileStorage

    site = Site("clinic", ("clinic.example",))
    settings = Settings(config_file=str(tmp_path / "c.yaml"),
                        acme=AcmeSettings("https://ca.test/directory"),
                        paths=Paths(str(tmp_path / "s"), str(tmp_path / "l"),
                                    str(tmp_path / "e.jsonl")), sites=(site,))
    memory = MemorySink()
    app = App(settings=settings, storage=FileStorage(str(tmp_path / "s"), str(tmp_path / "l")),
              events=Events([memory]), clock=lambda: NOW, rng=Fixed(0.0))
    error = ChallengeFailed("the CA could not fetch the challenge", detail="connection refused",
                            problem_type="urn:ietf:params:acme:error:connection")
    outcome = failed(Run(site, app), error, record=True)
    assert outcome.next_due is not None and outcome.next_due >= NOW + timedelta(minutes=15)
    backoff = [e for e in memory.events if e.kind == "backoff"][-1]
    assert "5 failed validations" in str(backoff.get("why"))
    # a local failure to present (no CA verdict) is retried on the transient row
    local = failed(Run(site, app, app.storage.load_state("clinic")),
                   ChallengeFailed("webroot not writable"), record=True)
    assert local.next_due is not None and local.next_due < NOW + timedelta(minutes=15)
