"""Is a site due, when to look at it next, and where a restarted daemon picks it up: plain
values in, plain values out. No App, no I/O: the pipeline fetches the CA's window and asks the
web server, then hands the answers here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections.abc import Callable
from datetime import datetime, timedelta

from mamoru.clock import parse_time
from mamoru.config.model import RenewalSettings, Site
from mamoru.renewal.policy import CertFacts, Decision, Wanted, Window, decide
from mamoru.renewal.policy import next_check as plan_check
from mamoru.storage.lineage import CertVersion
from mamoru.storage.sitestate import SiteState

# Decisions the pipeline answers by installing the stored certificate again, without an order.
REINSTALL_RULES = frozenset({"not-served", "reinstall"})


def facts(version: CertVersion) -> CertFacts:
    """What the policy needs to know of a stored version."""
    meta = version.meta
    # The profile the config asked for when ordering (a CA without profiles issues without
    # one; comparing with what was issued would make such a site due forever).
    profile = meta["profile_wanted"] if "profile_wanted" in meta else meta.get("profile")
    return CertFacts(names=frozenset(version.names), key=meta.get("key"), profile=profile,
                     not_before=version.not_before, not_after=version.not_after,
                     stored_at=parse_time(meta.get("stored_at")))


def wanted(site: Site, default_profile: str | None) -> Wanted:
    return Wanted(names=frozenset(site.domains), key=site.key,
                  profile=site.profile or default_profile)


def fingerprint(site: Site, default_profile: str | None) -> str:
    """A short hash of everything in the config that shapes this site's certificate and its
    installation (not the line it sits on)."""
    data = dataclasses.asdict(site)
    data.pop("line", None)
    data["acme_profile"] = default_profile
    return _hash(data)


def install_fingerprint(site: Site, live_dir: str) -> str:
    """A short hash of what the installer writes for this site: when it changes, the stored
    certificate is installed again (no order)."""
    return _hash({"server": dataclasses.asdict(site.server), "names": site.domains,
                  "webroot": site.challenge.webroot, "live": live_dir})


def _hash(data: object) -> str:
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_due(*, want: Wanted, cert: CertFacts | None, now: datetime,
              window: Window | None, pick: float | None, settings: RenewalSettings,
              rng: random.Random, install_changed: bool = False,
              served: Callable[[], bool] | None = None, revoked: bool = False) -> Decision:
    """The renewal decision. `served` is asked only when nothing else makes the site due
    (it costs a TLS handshake per name); None means the site has no server to ask.
    `install_changed`: the site's server settings differ from those its live certificate was
    installed with. `revoked`: mamoru revoked the live certificate (always due: browsers may
    refuse it)."""
    if revoked and cert is not None:
        return Decision(True, now, "the live certificate was revoked", "revoked")

    def decide_now(is_served: bool) -> Decision:
        return decide(want, cert, now, window=window, window_pick=pick, served=is_served,
                      jitter=settings.jitter_fraction, rng=rng)

    decision = decide_now(True)
    if decision.due or cert is None or served is None:
        return decision
    if install_changed:
        return Decision(True, now, "the site's web server settings changed", "reinstall")
    return decision if served() else decide_now(False)


def after_success(*, want: Wanted, cert: CertFacts, now: datetime, settings: RenewalSettings,
                  rng: random.Random) -> Decision:
    """When the certificate just put in service is due (no ARI window yet: it is new)."""
    return decide(want, cert, now, jitter=settings.jitter_fraction, rng=rng)


def next_check(decision: Decision, now: datetime, settings: RenewalSettings,
               ari_retry_after: datetime | None = None) -> datetime:
    """When to look at the site again after `decision` (never later than the CA's ARI
    Retry-After or the periodic check)."""
    return plan_check(decision.at, now, interval=timedelta(hours=settings.check_interval_hours),
                      retry_after=ari_retry_after)


def first_run(state: SiteState, site_fingerprint: str, now: datetime) -> tuple[datetime, str]:
    """When a (re)started daemon should first look at a site, and why: the persisted backoff
    or next check when the site's config is the one they were computed for; now when the site
    is new, its config changed, or nothing is known."""
    if state.site_config != site_fingerprint:
        return now, "new or changed in the config"
    when = state.next_run()
    if when is None:
        return now, "nothing scheduled yet"
    return max(when, now), "backoff after a failed attempt" if state.failing else "next check"
