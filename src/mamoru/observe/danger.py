"""What counts against a site, for status, metrics and alerts alike: which failed attempts
are the site's failures, and how close to expiry a certificate puts its site in danger.

Imports nothing of mamoru's.
"""

from __future__ import annotations

from datetime import timedelta

# Not a failure of the site: the run was stopped on request, or another mamoru run holds it.
NOT_FAILURES = frozenset({"Cancelled", "LockBusy"})

# Under this fraction of its lifetime left, a certificate's site is in danger (15 days of a
# 90-day certificate, a day of a 6-day one): by then a healthy site has renewed long ago.
DANGER_FRACTION = 1 / 6


def is_failure(error_class: str | None) -> bool:
    """Does a failed attempt with this error class count as the site failing?"""
    return error_class not in NOT_FAILURES


def danger_threshold(lifetime: timedelta) -> timedelta:
    """Below this much time left, a certificate of `lifetime` puts its site in danger."""
    return lifetime * DANGER_FRACTION
