"""The one story: config -> due? -> account -> order -> challenges -> certificate -> install
-> verify -> schedule. Run once per site by `mamoru provision`/`renew`, again and again by the
daemon. Each step's detail lives in the module named after it; this file reads top to bottom.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mamoru.app import App
from mamoru.config.model import Site
from mamoru.errors import Cancelled, MamoruError
from mamoru.issuance import obtain_for_site
from mamoru.renewal import schedule
from mamoru.renewal.policy import Decision
from mamoru.storage import CertVersion

log = logging.getLogger(__name__)
LOCK_WAIT = 600.0  # a second run on the same site waits for the first, then re-checks


@dataclass
class Outcome:
    site: str
    status: str  # issued | renewed | reinstalled | skipped | dry-run | failed
    decision: Decision | None = None
    version: CertVersion | None = None
    error: MamoruError | None = None
    next_due: datetime | None = None
    duration: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"site": self.site, "status": self.status,
                               "duration": round(self.duration, 3)}
        if self.decision:
            out["why"] = self.decision.why
        if self.version:
            out.update(version=self.version.number, serial=self.version.meta.get("serial"),
                       names=self.version.names, not_after=self.version.meta.get("not_after"),
                       fullchain=self.version.file("fullchain.pem"))
        if self.next_due:
            out["next_due"] = self.next_due.isoformat()
        if self.error:
            out["error"] = {"class": self.error.kind, "message": str(self.error),
                            "hint": self.error.hint, **self.error.fields()}
        if self.timings:
            out["timings"] = {k: round(v, 3) for k, v in self.timings.items()}
        return out


def provision(site: Site, app: App, *, force: bool = False, dry_run: bool = False,
              honour_backoff: bool = False) -> Outcome:
    """Bring `site` to a valid, served certificate if it is due (or `force`). Never raises for
    a site's own failure: the Outcome carries the error, and the schedule records the retry.
    `honour_backoff`: skip a site whose next attempt after failures is still to come (a `renew`
    pass; the daemon schedules by that time itself, and `provision` is an explicit request)."""
    started = time.monotonic()
    events, storage = app.events, app.storage
    attempt: int | None = None  # this run's number among consecutive attempts (1 = first try)
    try:
        with storage.lock(site.name, timeout=LOCK_WAIT):
            current = storage.live(site.name)
            storage.check_live_path(site.name)  # a live path we cannot flip: fail before ordering
            attempt = int(storage.load_state(site.name).get("attempts") or 0) + 1
            retry_at = schedule.backoff_until(site, app) if honour_backoff and not force else None
            if retry_at is not None:
                events.emit("skipped", site.name, f"backing off after {attempt - 1} failed "
                            f"attempt{'s' if attempt > 2 else ''}; next attempt "
                            f"{retry_at:%Y-%m-%d %H:%M:%S} UTC", next_due=retry_at,
                            why="backoff", outcome="skipped")
                return Outcome(site.name, "skipped", None, current, next_due=retry_at,
                               duration=time.monotonic() - started)
            decision = schedule.check_due(site, current, app)
            events.emit("due-check", site.name, f"{'due' if decision.due else 'not due'}: "
                        f"{decision.why}", due=decision.due, why=decision.why, rule=decision.rule,
                        at=decision.at, names=list(site.domains), attempt=attempt)
            if not decision.due and not force:
                next_due = schedule.record_skip(site, app, decision)
                events.emit("skipped", site.name, f"certificate still good; next renewal "
                            f"{next_due:%Y-%m-%d %H:%M} UTC ({decision.why})", next_due=next_due,
                            why=decision.why, outcome="skipped",
                            serial=current.meta.get("serial") if current else None)
                return Outcome(site.name, "skipped", decision, current, next_due=next_due,
                               duration=time.monotonic() - started)
            if (decision.rule in schedule.REINSTALL_RULES and current is not None and not force
                    and not dry_run):
                return reinstall(site, app, current, decision, started)

            ordered = time.monotonic()
            schedule.record_start(site, app)  # a killed run counts as a failed attempt
            issued = obtain_for_site(site, app, current)
            if dry_run:
                schedule.record_cancelled(site, app)
                events.emit("dry-run", site.name, "dry run: certificate obtained and discarded; "
                            "nothing changed in live/", order=issued.order_url)
                return Outcome(site.name, "dry-run", decision,
                               duration=time.monotonic() - started)

            version = storage.store(site.name, issued.key_pem, issued.chain_pem, {
                "key": site.key, "profile": issued.profile, "order": issued.order_url,
                "profile_wanted": schedule.wanted(site, app).profile,
                "replaced": issued.replaced, "ari_cert_id": schedule.cert_id(issued.chain_pem)})
            events.emit("issued", site.name, f"certificate {version.meta['serial']} issued, valid "
                        f"until {version.not_after:%Y-%m-%d %H:%M} UTC", serial=version.meta[
                            "serial"], not_after=version.not_after, names=version.names,
                        order=issued.order_url, version=version.number,
                        duration=round(time.monotonic() - ordered, 3))

            from mamoru.install.transaction import install

            stored_at = time.monotonic()
            result = install(site, version, storage, events, stop=app.stop)
            timings = {"stored_to_verified": time.monotonic() - stored_at, **result.timings}
            storage.prune(site.name)
            next_due = schedule.record_success(site, app, version, verified=result.verified)
            why = storage.load_state(site.name).get("why")
            if site.server.type != "none" and app.settings.check.after_install:
                browser_check(site, app, version)
            status = "renewed" if current else "issued"
            events.emit("renewed" if current else "provisioned", site.name,
                        f"done in {time.monotonic() - started:.2f} s; next renewal "
                        f"{next_due:%Y-%m-%d %H:%M} UTC ({why})", serial=version.meta["serial"],
                        names=version.names, not_after=version.not_after, next_due=next_due,
                        why=why, attempt=attempt, outcome=status,
                        duration=round(time.monotonic() - started, 3), verified=result.verified)
            return Outcome(site.name, status, decision, version, next_due=next_due,
                           duration=time.monotonic() - started, timings=timings)
    except Exception as unexpected:  # one site's bug must not stop the others
        if isinstance(unexpected, MamoruError):
            error = unexpected
        else:
            log.exception("unexpected error for site %s", site.name)
            error = MamoruError(f"unexpected error: {type(unexpected).__name__}: {unexpected}",
                                hint="This is a bug in mamoru; the log has the details.")
        if isinstance(error, Cancelled):
            schedule.record_cancelled(site, app)
        next_try = None if isinstance(error, Cancelled) else schedule.record_failure(site, app,
                                                                                     error)
        duration = round(time.monotonic() - started, 3)
        events.emit("failed", site.name, f"{error}" + (f" — {error.hint}" if error.hint else ""),
                    error_class=error.kind, retryable=error.retryable, next_attempt=next_try,
                    attempt=attempt, outcome="failed", duration=duration,
                    **{"names": list(site.domains), **error.fields()})  # VerifyFailed: its names
        if next_try is not None:
            why = (f"backoff after {attempt or 1} consecutive failed attempt"
                   f"{'s' if (attempt or 1) > 1 else ''}"
                   f"{'' if error.retryable else ' (needs a fix; retried slowly)'}")
            events.emit("backoff", site.name, f"next attempt {next_try:%Y-%m-%d %H:%M:%S} UTC "
                        f"({why})", next_due=next_try, why=why, attempt=attempt,
                        error_class=error.kind)
        return Outcome(site.name, "failed", error=error, next_due=next_try,
                       duration=time.monotonic() - started)


def reinstall(site: Site, app: App, current: CertVersion, decision: Decision, started: float
              ) -> Outcome:
    """Put the stored, still-good certificate back in service (the server serves another one,
    or the site's server settings changed): the install transaction, without an order.
    Raises what `install` raises; `provision` records it as a failed attempt."""
    from mamoru.install.transaction import install

    result = install(site, current, app.storage, app.events, stop=app.stop)
    next_due = schedule.record_success(site, app, current, verified=result.verified)
    app.events.emit("reinstalled", site.name, f"certificate {current.meta.get('serial')} put back "
                    f"in service ({decision.why}); next renewal {next_due:%Y-%m-%d %H:%M} UTC",
                    serial=current.meta.get("serial"), why=decision.why, next_due=next_due,
                    outcome="reinstalled", verified=result.verified,
                    duration=round(time.monotonic() - started, 3))
    return Outcome(site.name, "reinstalled", decision, current, next_due=next_due,
                   duration=time.monotonic() - started, timings=dict(result.timings))


def browser_check(site: Site, app: App, version: CertVersion) -> None:
    """Look at the freshly installed site as a patient's browser would; one `check` event.
    Advisory: the certificate is installed and verified already, so findings never fail the
    run, but a problem is logged as an error (and so reaches alerts)."""
    from mamoru.check.site import check_site

    settings = app.settings.check
    reports = check_site(site, version, ca_bundle=settings.ca_bundle, timeout=settings.timeout,
                         local=True)
    findings = [{"name": r.host, "check": f.check, "status": f.status, "message": f.message,
                 "fix": f.fix} for r in reports for f in r.findings if f.status != "ok"]
    worst = max((r.worst for r in reports), key=["ok", "warning", "problem"].index, default="ok")
    level = {"ok": 6, "warning": 4, "problem": 3}[worst]
    summary = "; ".join(f"{f['name']} {f['check']}: {f['message']}" for f in findings[:3])
    app.events.emit("check", site.name, f"browser check: {worst}" + (f" — {summary}"
                    if summary else " (every name: certificate, redirect, HSTS, mixed content)"),
                    worst=worst, findings=findings, level=level)
