"""When to try again after a failed attempt: one documented table, pure and clock-injected.

| error                                      | next attempt                                   |
|--------------------------------------------|------------------------------------------------|
| transient (network, 5xx, badNonce,         | 1 min, 2, 4, 8 ... doubling to 6 h, +-10 %     |
|   rateLimited, disk full, lock busy,       | jitter; never before the CA's Retry-After      |
|   install failures, interrupted runs)      | (itself capped at MAX_RETRY_AFTER)             |
| failed validation (the CA could not reach  | 15 min, 30, 60 ... doubling to 6 h, never less |
|   the challenge: firewall, DNS, port 80)   | than 15 min after jitter (see below)           |
| permanent (unauthorized, caa,              | every 12 h, +-10 % (the failure event is what  |
|   rejectedIdentifier, config, account)     | alerts a person)                               |

Failed validations have their own row because CAs limit them: Let's Encrypt allows 5 failed
validations per account, hostname and hour. At one attempt per 15 minutes or slower the daemon
can fail at most 4 times in any hour, leaving one for a person trying a fix by hand; the
transient row's 1, 2, 4, 8 minutes would lock the clinic out for an hour after a broken port 80.

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


# Let's Encrypt: 5 failed validations per account, hostname and hour. The floor keeps the daemon
# at 4 an hour at most, whatever the jitter.
FAILED_VALIDATIONS_PER_HOUR = 5
VALIDATION_RETRY_SECONDS = 3600.0 / (FAILED_VALIDATIONS_PER_HOUR - 1)


def delay_seconds(*, retryable: bool, attempt: int, settings: RenewalSettings,
                  validation: bool = False) -> float:
    """The delay before attempt `attempt + 1`, before jitter (see the table above)."""
    if not retryable:
        return settings.permanent_retry_seconds
    doublings = min(max(attempt - 1, 0), 62)  # years of failures must not overflow a float
    first = max(settings.retry_first_seconds, VALIDATION_RETRY_SECONDS) if validation else (
        settings.retry_first_seconds)
    return float(min(first * (2 ** doublings), max(settings.retry_max_seconds, first)))


def next_attempt(
    *,
    retryable: bool,
    attempt: int,
    now: datetime,
    settings: RenewalSettings,
    retry_after: datetime | None = None,
    rng: random.Random | None = None,
    validation: bool = False,
) -> datetime:
    """The time of attempt number `attempt + 1`, after `attempt` consecutive failures (>= 1).

    Always later than `now`; never before `retry_after` (when the CA named one within
    MAX_RETRY_AFTER; a later one counts as that cap). `validation`: the CA could not validate
    a name (the failed-validation row)."""
    rng = rng or random.Random()
    delay = delay_seconds(retryable=retryable, attempt=attempt, settings=settings,
                          validation=validation)
    delay *= 1 + settings.jitter_fraction * (2 * rng.random() - 1)
    floor = VALIDATION_RETRY_SECONDS if validation and retryable else 1.0
    when = now + timedelta(seconds=max(delay, floor))
    if retry_after is not None:
        retry_after = min(retry_after, now + MAX_RETRY_AFTER)
        if retry_after > when:
            when = retry_after + timedelta(seconds=rng.uniform(0, RETRY_AFTER_SPREAD_SECONDS))
    return when
