"""When to try again after a failed attempt: one documented table, pure and clock-injected.

| error                                      | next attempt                                   |
|--------------------------------------------|------------------------------------------------|
| transient (network, 5xx, badNonce,         | 1 min, 2, 4, 8 ... doubling to 6 h, +-10 %     |
|   rateLimited, disk full, lock busy)       | jitter; never before the CA's Retry-After      |
| permanent (unauthorized, caa,              | every 12 h (and an alert)                      |
|   rejectedIdentifier, config, account)     |                                                |
Retrying never stops by itself: an expired certificate is retried on the same schedule.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from mamoru.config.model import RenewalSettings


def next_attempt(
    *,
    retryable: bool,
    attempt: int,
    now: datetime,
    settings: RenewalSettings,
    retry_after: datetime | None = None,
    rng: random.Random | None = None,
) -> datetime:
    """The time of attempt number `attempt + 1`, after `attempt` consecutive failures (>= 1)."""
    rng = rng or random.Random()
    if retryable:
        base = settings.retry_first_seconds * (2 ** max(attempt - 1, 0))
        delay = min(base, settings.retry_max_seconds)
    else:
        delay = settings.permanent_retry_seconds
    delay *= 1 + settings.jitter_fraction * (2 * rng.random() - 1)
    when = now + timedelta(seconds=delay)
    if retry_after is not None and retry_after > when:
        # The CA named a time; a little after it, so a fleet does not return in one second.
        when = retry_after + timedelta(seconds=rng.uniform(0, 5))
    return when
