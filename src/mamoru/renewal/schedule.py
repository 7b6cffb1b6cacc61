"""A site's renewal bookkeeping in state/sites/<site>/state.json: the due check (with the CA's
ARI window, cached until its Retry-After, and the web server's view), and what a success, a
skip, a failure or an interrupted run means for the next attempt.

The schedule survives restarts, so a crash loop cannot hammer the CA: `next_attempt` and
`attempts` persist the backoff, and `in_flight` marks an attempt that has started ordering;
an attempt that never recorded its end (the process was killed) counts as a failed one
(`recover_interrupted`). `site_config` is a fingerprint of the site's settings at the last
record, so a restarted daemon knows whether the config changed meanwhile (`first_run`).

The check_due/record_* functions are called with the site's lock held (the pipeline's);
`next_run`, `first_run`, `backoff_until` and `planned` only read; `recover_interrupted` takes
the lock itself, without waiting.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from datetime import datetime, timedelta
from typing import Any

from mamoru.app import App
from mamoru.config.model import Site
from mamoru.errors import LockBusy, MamoruError
from mamoru.renewal.backoff import next_attempt
from mamoru.renewal.policy import CertFacts, Decision, Wanted, Window, decide
from mamoru.renewal.policy import next_check as plan_check
from mamoru.storage import CertVersion


def cert_id(chain_pem: bytes) -> str | None:
    """The ARI certificate id of the leaf in `chain_pem` (None if it has no AKI)."""
    from mamoru.protocol.session import ari_cert_id

    try:
        return ari_cert_id(chain_pem)
    except Exception:  # any unparsable certificate: no ARI for it, never a failed renewal
        return None


def facts(version: CertVersion) -> CertFacts:
    meta = version.meta
    stored = _when(meta.get("stored_at"))
    # The profile the config asked for when ordering (a CA without profiles issues without
    # one; comparing with what was issued would make such a site due forever).
    profile = meta["profile_wanted"] if "profile_wanted" in meta else meta.get("profile")
    return CertFacts(
        names=frozenset(version.names),
        key=meta.get("key"),
        profile=profile,
        not_before=version.not_before,
        not_after=version.not_after,
        stored_at=stored,
    )


def wanted(site: Site, app: App) -> Wanted:
    return Wanted(names=frozenset(site.domains), key=site.key,
                  profile=site.profile or app.settings.acme.profile)


def fingerprint(site: Site, app: App) -> str:
    """A short hash of everything in the config that shapes this site's certificate and its
    installation (not the line it sits on)."""
    data = dataclasses.asdict(site)
    data.pop("line", None)
    data["acme_profile"] = app.settings.acme.profile
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def install_fingerprint(site: Site, app: App) -> str:
    """A short hash of what the installer writes for this site: when it changes, the stored
    certificate is installed again (no order)."""
    data = {"server": dataclasses.asdict(site.server), "names": site.domains,
            "webroot": site.challenge.webroot, "live": app.settings.paths.live}
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# Decisions the pipeline answers by installing the stored certificate again, without an order.
REINSTALL_RULES = frozenset({"not-served", "reinstall"})


def _when(value: Any) -> datetime | None:
    try:
        when = datetime.fromisoformat(value) if value else None
    except (TypeError, ValueError):
        return None
    return when if when is None or when.tzinfo is not None else None


def ari_window(site: Site, version: CertVersion, app: App, state: dict[str, Any]
               ) -> tuple[Window | None, float | None]:
    """The ARI window for the live certificate, from state while fresh, else from the CA.
    ARI is advisory: any failure means (None, None) and the lifetime rule applies."""
    now = app.clock()
    serial = version.meta.get("serial")
    cached = state.get("ari") or {}
    if cached.get("serial") == serial and (_when(cached.get("retry_after")) or now) > now:
        start, end = _when(cached.get("start")), _when(cached.get("end"))
        if start and end:
            return Window(start, end), cached.get("pick")
        return None, None
    try:
        session = app.session()
        if not session.supports_ari:
            return None, None
        info = session.renewal_info(version.read("cert.pem"), now)
    except (MamoruError, OSError, ValueError) as error:
        kind = error.kind if isinstance(error, MamoruError) else type(error).__name__
        app.events.emit("warning", site.name, f"could not fetch the CA's renewal window ({error});"
                        " using the lifetime rule", error_class=kind)
        return None, None
    if info is None:
        return None, None
    pick = cached.get("pick") if cached.get("serial") == serial else None
    if pick is None:
        pick = app.rng.random()
    state["ari"] = {"serial": serial, "start": info.start.isoformat(),
                    "end": info.end.isoformat(), "retry_after": info.retry_after.isoformat(),
                    "explanation_url": info.explanation_url, "pick": pick}
    app.events.emit("ari", site.name, f"CA renewal window {info.start:%Y-%m-%d %H:%M} to "
                    f"{info.end:%Y-%m-%d %H:%M} UTC", ari_start=info.start, ari_end=info.end,
                    explanation_url=info.explanation_url, retry_after=info.retry_after)
    return Window(info.start, info.end), pick


def served(site: Site, version: CertVersion) -> bool:
    """Is the web server serving `version` on every name? One handshake per name (no waiting);
    True when the site has no server mamoru could ask, or when the answer cannot be had."""
    from mamoru.install.verify import served_matches

    try:
        return served_matches(site, version) is not False
    except (OSError, ValueError):
        return True  # cert.pem unreadable: the renewal decision must not hinge on this


def check_due(site: Site, current: CertVersion | None, app: App, *, served_now: bool | None = None
              ) -> Decision:
    """The renewal decision for `site` now. Asks the CA for its ARI window when the cached one
    is stale, and, only when nothing else makes the site due, asks the web server whether it
    serves the stored certificate (`served_now` answers that instead, for tests)."""
    state = app.storage.load_state(site.name)
    window, pick = (None, None)
    if current is not None:
        window, pick = ari_window(site, current, app, state)
        app.storage.save_state(site.name, state)
    cert = facts(current) if current else None
    settings = app.settings.renewal

    def decide_now(is_served: bool) -> Decision:
        return decide(wanted(site, app), cert, app.clock(), window=window, window_pick=pick,
                      served=is_served, jitter=settings.jitter_fraction, rng=app.rng)

    decision = decide_now(True)
    if decision.due or current is None or site.server.type == "none":
        return decision
    installed = state.get("installed")
    if (isinstance(installed, dict) and installed.get("config")
            and installed.get("serial") == current.meta.get("serial")
            and installed["config"] != install_fingerprint(site, app)):
        return Decision(True, app.clock(), "the site's web server settings changed", "reinstall")
    is_served = served_now if served_now is not None else served(site, current)
    return decision if is_served else decide_now(False)


def _next_check(decision: Decision, state: dict[str, Any], app: App) -> datetime:
    retry = _when((state.get("ari") or {}).get("retry_after"))
    return plan_check(decision.at, app.clock(),
                      interval=timedelta(hours=app.settings.renewal.check_interval_hours),
                      retry_after=retry)


def record_skip(site: Site, app: App, decision: Decision) -> datetime:
    """Record a check that found the site not due; returns the renewal time."""
    state = app.storage.load_state(site.name)
    check = _next_check(decision, state, app)
    state.update(next_due=decision.at.isoformat(), next_check=check.isoformat(),
                 why=decision.why, site_config=fingerprint(site, app))
    app.storage.save_state(site.name, state)
    return decision.at


def record_start(site: Site, app: App) -> None:
    """Mark an attempt that is about to order: if the process dies before `record_success` or
    `record_failure`, the next start counts it as failed (see `recover_interrupted`)."""
    state = app.storage.load_state(site.name)
    state["in_flight"] = {"since": app.clock().isoformat(), "pid": os.getpid()}
    app.storage.save_state(site.name, state)


def record_cancelled(site: Site, app: App) -> None:
    """The attempt was stopped on request (or was a dry run): not a failure, nothing to retry
    sooner than planned."""
    try:
        state = app.storage.load_state(site.name)
        if state.pop("in_flight", None) is not None:
            app.storage.save_state(site.name, state)
    except MamoruError:
        pass  # the disk is gone: the marker costs one backoff step at worst


def record_success(site: Site, app: App, version: CertVersion, *, verified: bool | None = None
                   ) -> datetime:
    """Record a certificate put in service (`verified`: proven served by the web server).
    Returns its renewal time."""
    state = app.storage.load_state(site.name)
    state.pop("ari", None)  # belongs to the old certificate
    state.pop("in_flight", None)
    decision = decide(wanted(site, app), facts(version), app.clock(),
                      jitter=app.settings.renewal.jitter_fraction, rng=app.rng)
    now = app.clock()
    state.update(
        attempts=0,
        next_attempt=None,
        last_success=now.isoformat(),
        last_attempt={"time": now.isoformat(), "outcome": "ok", "serial": version.meta["serial"]},
        installed={"time": now.isoformat(), "serial": version.meta["serial"],
                   "verified": verified, "config": install_fingerprint(site, app)},
        next_due=decision.at.isoformat(),
        next_check=_next_check(decision, state, app).isoformat(),
        why=decision.why,
        site_config=fingerprint(site, app),
    )
    app.storage.save_state(site.name, state)
    return decision.at


def record_failure(site: Site, app: App, error: MamoruError, *, outcome: str = "failed"
                   ) -> datetime | None:
    """Record a failed attempt; returns the time of the next one (None when the state cannot
    be written: the failure event still goes out)."""
    try:
        state = app.storage.load_state(site.name)
        state.pop("in_flight", None)
        attempts = int(state.get("attempts") or 0) + 1
        now = app.clock()
        when = next_attempt(retryable=error.retryable, attempt=attempts, now=now,
                            settings=app.settings.renewal,
                            retry_after=getattr(error, "retry_after", None), rng=app.rng)
        state.update(
            attempts=attempts,
            next_attempt=when.isoformat(),
            next_check=when.isoformat(),
            site_config=fingerprint(site, app),
            last_attempt={"time": now.isoformat(), "outcome": outcome, "error_class": error.kind,
                          "message": str(error)[:2000], "retryable": error.retryable,
                          **{k: v for k, v in error.fields().items()
                             if k in ("problem_type", "detail", "status")}},
        )
        app.storage.save_state(site.name, state)
        return when
    except MamoruError:
        return None


class Interrupted(MamoruError):
    """An attempt began ordering and never recorded its end: the process was killed, the
    machine lost power, or mamoru crashed. Counted as a transient failure."""

    retryable = True
    hint = ("If this repeats, look for crashes in the journal (`journalctl -u mamoru`); "
            "mamoru backs off meanwhile.")


def recover_interrupted(site: Site, app: App) -> tuple[datetime, str] | None:
    """If the site's last attempt was interrupted, record it as a failed attempt (backoff) and
    return (next attempt, since when it was in flight); else None. Does nothing when another
    process holds the site's lock (its attempt is not interrupted, it is running)."""
    try:
        with app.storage.lock(site.name, timeout=0):
            state = app.storage.load_state(site.name)
            marker = state.get("in_flight")
            if not isinstance(marker, dict):
                return None
            since = str(marker.get("since") or "?")
            error = Interrupted(f"the attempt started at {since} never finished (the process "
                                "was stopped mid-way)")
            when = record_failure(site, app, error, outcome="interrupted")
            return (when, since) if when is not None else None
    except LockBusy:
        return None
    except MamoruError:
        return None


def next_run(site: str, app: App) -> datetime | None:
    """When the site's state says to look at it next: the next attempt while backing off after
    failures, else the next check; None when the state has neither."""
    state = app.storage.load_state(site)
    retry = _when(state.get("next_attempt"))
    if int(state.get("attempts") or 0) > 0 and retry is not None:
        return retry
    return _when(state.get("next_check"))


def first_run(site: Site, app: App) -> tuple[datetime, str]:
    """When a (re)started daemon should first look at `site`, and why: the persisted backoff
    or next check when the site's config is the one they were computed for; now when the site
    is new, its config changed, or nothing is known."""
    now = app.clock()
    state = app.storage.load_state(site.name)
    if state.get("site_config") != fingerprint(site, app):
        return now, "new or changed in the config"
    when = next_run(site.name, app)
    if when is None:
        return now, "nothing scheduled yet"
    failing = int(state.get("attempts") or 0) > 0
    return max(when, now), "backoff after a failed attempt" if failing else "next check"


def backoff_until(site: Site, app: App) -> datetime | None:
    """The time of the next attempt while the site is backing off after failures (a one-shot
    `renew` pass leaves it alone until then); None when it is not backing off."""
    state = app.storage.load_state(site.name)
    retry = _when(state.get("next_attempt"))
    if int(state.get("attempts") or 0) > 0 and retry is not None and retry > app.clock():
        return retry
    return None


def planned(site: str, app: App) -> tuple[datetime | None, bool]:
    """(next renewal or retry time, failing?) from the site's state, for status lines."""
    state = app.storage.load_state(site)
    failing = int(state.get("attempts") or 0) > 0
    when = _when(state.get("next_attempt")) if failing else _when(state.get("next_due"))
    return when, failing
