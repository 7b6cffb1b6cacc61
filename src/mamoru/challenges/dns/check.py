"""`mamoru check-dns SITE`, the part below the CLI: prove at setup time that mamoru can write,
see and remove a TXT record for each dns-01 name, so a wrong key or zone shows now, not at the
renewal months later.

The check runs like an order: one batch of throw-away values (one per name, never a real
key authorization), one wait until every authoritative nameserver serves them, the removal,
and one wait until no nameserver serves them any more.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

from mamoru.challenges.dns.base import DnsFailed, DnsSolver, DnsTask, Waiter, publish, record_name

CHECK_PREFIX = "mamoru-check-"


@dataclass(frozen=True)
class DnsCheckResult:
    """What the check saw. `error` is None when every step worked."""

    names: tuple[str, ...]
    records: tuple[str, ...]
    published_seconds: float | None = None  # until every nameserver served every value
    removed_seconds: float | None = None  # until no nameserver served any of them
    error: DnsFailed | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def check_dns(solver: DnsSolver, waiter: Waiter | None, identifiers: Sequence[str],
              timeout: float) -> DnsCheckResult:
    """Publish a random value for each identifier, wait until visible, remove it, wait until
    gone. Never raises DnsFailed: it is in the result. Without a waiter, visibility is not
    checked (the result says only that the writes worked)."""
    tasks = [DnsTask(name, record_name(name), CHECK_PREFIX + secrets.token_urlsafe(16))
             for name in identifiers]
    names = tuple(identifiers)
    records = tuple(sorted({task.record_name for task in tasks}))
    started = time.monotonic()
    published: float | None = None
    try:
        with contextlib.ExitStack() as cleanup:
            publish(solver, waiter, tasks, timeout, cleanup)
            published = time.monotonic() - started
        failed = solver.cleanup(tasks)  # the removal ran on exit; this says if it worked
        if failed:
            raise DnsFailed(f"could not remove the check values at "
                            f"{', '.join(sorted({t.record_name for t in failed}))}",
                            hint="The key may add but not delete records: grant it TXT "
                            "updates (both add and delete) for these names.")
        removed_start = time.monotonic()
        if waiter is not None:
            waiter.wait(tasks, timeout, gone=True)
        return DnsCheckResult(names, records, published, time.monotonic() - removed_start)
    except DnsFailed as error:
        return DnsCheckResult(names, records, published, None, error)
