"""When to try again after a failed attempt: one documented table, pure and clock-injected.

| error                                      | next attempt                                   |
|--------------------------------------------|------------------------------------------------|
| transient (network, 5xx, badNonce,         | 1 min, 2, 4, 8 ... doubling to 6 h, +-10 %     |
|   rateLimited, disk full, lock busy,       | jitter; never before the CA's Retry-After      |
|   install failures, interrupted runs)      | (itself capped at MAX_RETRY_AFTER)             |
| permanent (unauthorized, caa,              | every 12 h, +-10 % (the failure event is what  |
|   rejectedIdentifier, config, account)     | alerts a person)                               |

The numbers are the defaults of `renewal.retry_first_seconds`, `retry_max_seconds`,
`permanent_retry_seconds` and `jitter_fraction`. Retrying never stops by itself: an expired
certificate is retried on the same schedule, because a clinic with an expired certificate
needs a new one more, not less. The attempt count lives in the site's state.json, so a restart
or a crash loop continues the schedule instead of starting it over.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from mamoru.config.model import RenewalSettings

# A CA's Retry-After beyond this is treated as this (a garbage HTTP date must not park a site
# for years); a week covers every rate-limit window Let's Encrypt documents.
MAX_RETRY_AFTER = timedelta(days=7)
# The CA's named time plus up to this much, so a fleet told the same second does not return
# in that second.
RETRY_AFTER_SPREAD_SECONDS = 5.0


def delay_seconds(*, retryable: bool, attempt: int, settings: RenewalSettings) -> float:
    """The delay before attempt `attempt + 1`, before jitter (see the table above)."""
    if not retryable:
        return settings.permanent_retry_seconds
    doublings = min(max(attempt - 1, 0), 62)  # years of failures must not overflow a float
    return float(min(settings.retry_first_seconds * (2 ** doublings), settings.retry_max_seconds))


def next_attempt(
    *,
    retryable: bool,
    attempt: int,
    now: datetime,
    settings: RenewalSettings,
    retry_after: datetime | None = None,
    rng: random.Random | None = None,
) -> datetime:
    """The time of attempt number `attempt + 1`, after `attempt` consecutive failures (>= 1).

    Always later than `now`; never before `retry_after` (when the CA named one within
    MAX_RETRY_AFTER; a later one counts as that cap)."""
    rng = rng or random.Random()
    delay = delay_seconds(retryable=retryable, attempt=attempt, settings=settings)
    delay *= 1 + settings.jitter_fraction * (2 * rng.random() - 1)
    when = now + timedelta(seconds=max(delay, 1.0))
    if retry_after is not None:
        retry_after = min(retry_after, now + MAX_RETRY_AFTER)
        if retry_after > when:
            when = retry_after + timedelta(seconds=rng.uniform(0, RETRY_AFTER_SPREAD_SECONDS))
    return when
