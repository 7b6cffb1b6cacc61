"""A site's renewal bookkeeping in state/sites/<site>/state.json: the due check (with the CA's
ARI window, cached until its Retry-After), and what a success, a skip or a failure means for
the next attempt. The schedule survives restarts, so a crash loop cannot hammer the CA.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from mamoru.app import App
from mamoru.config.model import Site
from mamoru.errors import MamoruError
from mamoru.renewal.backoff import next_attempt
from mamoru.renewal.policy import CertFacts, Decision, Wanted, Window, decide
from mamoru.storage import CertVersion


def cert_id(chain_pem: bytes) -> str | None:
    """The ARI certificate id of the leaf in `chain_pem` (None if it has no AKI)."""
    from mamoru.protocol.session import ari_cert_id

    try:
        return ari_cert_id(chain_pem)
    except (ValueError, Exception):
        return None


def facts(version: CertVersion) -> CertFacts:
    meta = version.meta
    stored = meta.get("stored_at")
    return CertFacts(
        names=frozenset(version.names),
        key=meta.get("key"),
        profile=meta.get("profile"),
        not_before=version.not_before,
        not_after=version.not_after,
        stored_at=datetime.fromisoformat(stored) if stored else None,
    )


def wanted(site: Site, app: App) -> Wanted:
    return Wanted(names=frozenset(site.domains), key=site.key,
                  profile=site.profile or app.settings.acme.profile)


def _when(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if value else None
    except (TypeError, ValueError):
        return None


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
    except MamoruError as error:
        app.events.emit("warning", site.name, f"could not fetch the CA's renewal window ({error});"
                        " using the lifetime rule", error_class=error.kind)
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


def check_due(site: Site, current: CertVersion | None, app: App, *, served: bool = True
              ) -> Decision:
    state = app.storage.load_state(site.name)
    window, pick = (None, None)
    if current is not None:
        window, pick = ari_window(site, current, app, state)
        app.storage.save_state(site.name, state)
    return decide(wanted(site, app), facts(current) if current else None, app.clock(),
                  window=window, window_pick=pick, served=served,
                  jitter=app.settings.renewal.jitter_fraction, rng=app.rng)


def next_check(decision: Decision, state: dict[str, Any], app: App) -> datetime:
    """When the daemon should look at the site again: the renewal time, but no later than the
    ARI Retry-After (the window may move) or the periodic check interval."""
    now = app.clock()
    candidates = [decision.at, now + timedelta(hours=app.settings.renewal.check_interval_hours)]
    retry = _when((state.get("ari") or {}).get("retry_after"))
    if retry and retry > now:
        candidates.append(retry)
    return max(min(candidates), now)


def record_skip(site: Site, app: App, decision: Decision) -> datetime:
    state = app.storage.load_state(site.name)
    due = next_check(decision, state, app)
    state.update(next_due=decision.at.isoformat(), next_check=due.isoformat(), why=decision.why)
    app.storage.save_state(site.name, state)
    return decision.at


def record_success(site: Site, app: App, version: CertVersion) -> datetime:
    state = app.storage.load_state(site.name)
    state.pop("ari", None)  # belongs to the old certificate
    decision = decide(wanted(site, app), facts(version), app.clock(),
                      jitter=app.settings.renewal.jitter_fraction, rng=app.rng)
    now = app.clock()
    state.update(
        attempts=0,
        next_attempt=None,
        last_success=now.isoformat(),
        last_attempt={"time": now.isoformat(), "outcome": "ok", "serial": version.meta["serial"]},
        next_due=decision.at.isoformat(),
        next_check=next_check(decision, state, app).isoformat(),
        why=decision.why,
    )
    app.storage.save_state(site.name, state)
    return decision.at


def record_failure(site: Site, app: App, error: MamoruError) -> datetime | None:
    try:
        state = app.storage.load_state(site.name)
        attempts = int(state.get("attempts") or 0) + 1
        now = app.clock()
        when = next_attempt(retryable=error.retryable, attempt=attempts, now=now,
                            settings=app.settings.renewal,
                            retry_after=getattr(error, "retry_after", None), rng=app.rng)
        state.update(
            attempts=attempts,
            next_attempt=when.isoformat(),
            next_check=when.isoformat(),
            last_attempt={"time": now.isoformat(), "outcome": "failed", "error_class": error.kind,
                          "message": str(error)[:2000], "retryable": error.retryable,
                          **{k: v for k, v in error.fields().items()
                             if k in ("problem_type", "detail", "status")}},
        )
        app.storage.save_state(site.name, state)
        return when
    except MamoruError:
        return None  # the disk is full or gone: the failure event still goes out
