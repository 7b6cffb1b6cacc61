"""The one story: config -> due? -> account -> order -> challenges -> certificate -> install
-> verify -> schedule. Run once per site by `mamoru provision`/`renew`, again and again by the
daemon. Each step's detail lives in the module named after it; this file reads top to bottom.

The site's state (storage/sitestate.py) is loaded once, under the site's lock, and saved after
each step that changes it; every state write happens with the lock held. Nothing below this
module takes the App: the steps get plain values (the site, a session, the clock's "now").
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mamoru.app import App
from mamoru.config.model import Site
from mamoru.errors import Cancelled, ChallengeFailed, IssuanceError, LockBusy, MamoruError
from mamoru.renewal import due
from mamoru.renewal.backoff import (
    FAILED_VALIDATIONS_PER_HOUR,
    VALIDATION_RETRY_SECONDS,
    next_attempt,
)
from mamoru.renewal.policy import Decision, Window
from mamoru.storage import CertVersion
from mamoru.storage.sitestate import AriWindow, SiteState

if TYPE_CHECKING:  # the ACME stack is imported by the first order, not by importing this
    # module (the daemon's resident process uses recover_interrupted and nothing else)
    from mamoru.install.bootstrap import Bootstrap
    from mamoru.issuance import Issued
    from mamoru.protocol.session import AcmeSession

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


@dataclass
class Run:
    """One walk of one site through the story: its state as last saved, and the clock."""

    site: Site
    app: App
    state: SiteState = field(default_factory=SiteState)
    started: float = field(default_factory=time.monotonic)
    dry_run: bool = False  # a dry run changes nothing: its state is never saved
    attempt: int = 1  # this run's number among consecutive attempts (1 = the first try)

    def __post_init__(self) -> None:
        self.attempt = self.state.attempts + 1

    def load(self) -> None:
        """Read the site's state (with its lock held) and number this attempt."""
        self.state = self.app.storage.load_state(self.site.name)
        self.attempt = self.state.attempts + 1

    def save(self, state: SiteState, *, durable: bool = True) -> None:
        self.state = state
        if not self.dry_run:
            self.app.storage.save_state(self.site.name, state, durable=durable)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def outcome(self, status: str, **kw: Any) -> Outcome:
        return Outcome(self.site.name, status, duration=self.elapsed(), **kw)


def provision(site: Site, app: App, *, force: bool = False, dry_run: bool = False,
              honour_backoff: bool = False) -> Outcome:
    """Bring `site` to a valid, served certificate if it is due (or `force`). Never raises for
    a site's own failure: the Outcome carries the error, and the state records the retry.
    `honour_backoff`: skip a site whose next attempt after failures is still to come (a `renew`
    pass; the daemon schedules by that time itself, and `provision` is an explicit request)."""
    run = Run(site, app, dry_run=dry_run)
    try:
        lock = app.storage.lock(site.name, timeout=LOCK_WAIT)
    except Exception as error:  # busy or unwritable: another run owns the state, or nobody can
        return failed(run, error, record=False)
    with lock:
        run.load()
        return locked_story(run, force=force, dry_run=dry_run, honour_backoff=honour_backoff)


def locked_story(run: Run, *, force: bool, dry_run: bool, honour_backoff: bool) -> Outcome:
    """The story with the site's lock held: any failure is recorded in its state."""
    try:
        return story(run, force=force, dry_run=dry_run, honour_backoff=honour_backoff)
    except Exception as error:  # one site's bug must not stop the others
        return failed(run, error, record=not dry_run)


def revoke(site: Site, app: App, *, reason: str, reason_code: int, replace: bool = True
           ) -> Outcome | None:
    """Revoke the site's live certificate at the CA, under the site's lock, and (unless
    `replace` is False) order and install a replacement at once, with a new key, so the site
    does not go on serving a revoked certificate. Returns the replacement's Outcome (None
    without one). Raises what the revocation raises (nothing is changed then)."""
    with app.storage.lock(site.name, timeout=LOCK_WAIT):
        current = app.storage.live(site.name)
        if current is None:
            from mamoru.errors import UsageError

            raise UsageError(f"site {site.name} has no live certificate to revoke")
        serial = str(current.meta.get("serial"))
        app.account_session().revoke(current.read("cert.pem"), reason_code)
        run = Run(site, app, app.storage.load_state(site.name))
        run.save(run.state.with_revoked(serial, app.clock(), reason))
        app.events.emit("revoked", site.name, serial=serial, reason=reason, replace=replace)
        if not replace:
            return None
        return locked_story(run, force=True, dry_run=False, honour_backoff=False)


def story(run: Run, *, force: bool, dry_run: bool, honour_backoff: bool) -> Outcome:
    site, app, events, storage = run.site, run.app, run.app.events, run.app.storage
    current = storage.live(site.name)
    storage.check_live_path(site.name)  # a live path we cannot flip: fail before ordering
    retry_at = run.state.backoff_until(app.clock()) if honour_backoff and not force else None
    if retry_at is not None:
        events.emit("skipped", site.name, next_due=retry_at, why="backoff",
                    attempt=run.attempt, outcome="skipped")
        return run.outcome("skipped", version=current, next_due=retry_at)

    decision = due_check(run, current, ask_server=not force)
    events.emit("due-check", site.name, due=decision.due, why=decision.why, rule=decision.rule,
                at=decision.at, names=list(site.domains), attempt=run.attempt)
    if not decision.due and not force:
        not_due(run, decision)
        events.emit("skipped", site.name, next_due=decision.at, why=decision.why,
                    outcome="skipped", serial=current.meta.get("serial") if current else None)
        return run.outcome("skipped", decision=decision, version=current,
                           next_due=decision.at)
    if decision.rule in due.REINSTALL_RULES and current is not None and not force and not dry_run:
        return reinstall(run, current, decision)

    ordered = time.monotonic()
    # A killed run counts as failed. The marker outlives a killed process without an fsync;
    # only a power cut in the next seconds could lose it (and with it, one failure's count).
    run.save(run.state.started(app.clock(), os.getpid()), durable=False)
    from mamoru.install.bootstrap import kept_until_replaced
    from mamoru.install.transaction import install

    with kept_until_replaced(port80(run, current)) as port80_server:
        issued = order(run, current, finalize=not dry_run or app.dry_run_finalizes)
        if dry_run:
            if port80_server is not None:
                port80_server.take_down()
            events.emit("dry-run", site.name, order=issued.order_url,
                        finalized=bool(issued.chain_pem))
            return run.outcome("dry-run", decision=decision)

        version = storage.store(site.name, issued.key_pem, issued.chain_pem,
                                issued.meta(site.key))
        events.emit("issued", site.name, serial=version.meta["serial"],
                    not_after=version.not_after, names=version.names, order=issued.order_url,
                    version=version.number, duration=round(time.monotonic() - ordered, 3))
        stored_at = time.monotonic()
        result = install(site, version, storage, events, stop=app.stop)
    timings = {"stored_to_verified": time.monotonic() - stored_at, **result.timings}
    storage.prune(site.name)
    planned = succeeded(run, version, result.verified)
    if site.server.type != "none" and app.settings.check.after_install:
        browser_check(site, app, version)
    status = "renewed" if current else "issued"
    events.emit("renewed" if current else "provisioned", site.name,
                serial=version.meta["serial"], names=version.names, not_after=version.not_after,
                next_due=planned.at, why=planned.why, attempt=run.attempt, outcome=status,
                duration=round(run.elapsed(), 3), verified=result.verified)
    return run.outcome(status, decision=decision, version=version, next_due=planned.at,
                       timings=timings)


def reinstall(run: Run, current: CertVersion, decision: Decision) -> Outcome:
    """Put the stored, still-good certificate back in service (the server serves another one,
    or the site's server settings changed): the install transaction, without an order.
    Raises what `install` raises; `provision` records it as a failed attempt."""
    from mamoru.install.transaction import install

    site, app = run.site, run.app
    result = install(site, current, app.storage, app.events, stop=app.stop)
    planned = succeeded(run, current, result.verified)
    app.events.emit("reinstalled", site.name, serial=current.meta.get("serial"),
                    why=decision.why, next_due=planned.at, outcome="reinstalled",
                    verified=result.verified, duration=round(run.elapsed(), 3))
    return run.outcome("reinstalled", decision=decision, version=current,
                       next_due=planned.at, timings=dict(result.timings))


def order(run: Run, current: CertVersion | None, *, finalize: bool) -> Issued:
    """One order for the run's site on the shared account. A CA that forgot or deactivated
    the account gets a new one, once, and the order goes again."""
    from mamoru.issuance import obtain_for_site
    from mamoru.protocol.errors import AccountGone

    site, app = run.site, run.app

    def attempt(session: AcmeSession) -> Issued:
        return obtain_for_site(site, session, app.events, current,
                               default_profile=app.settings.acme.profile,
                               timeout=app.settings.acme.order_timeout, finalize=finalize,
                               dns_journal=_dns_journal(app, site))

    with app.order_slots():  # acme.max_concurrent_orders at the CA at once, at most
        session = app.account_session()
        signed_by = session.account_url
        try:
            return attempt(session)
        except AccountGone as gone:  # the CA forgot or deactivated the account: a new one
            return attempt(app.recover_account(gone))
        except IssuanceError:
            if session.account_url == signed_by:
                raise
            # Another order found the account gone and replaced it while this one was under
            # way: this order's requests were refused for that; it goes once more, as theirs.
            return attempt(session)


# -- the steps' glue: App-held parts in, plain values down -----------------------------------


def port80(run: Run, current: CertVersion | None) -> Bootstrap | None:
    """mamoru's own plain-HTTP server for the site's names, up and answering, when its first
    certificate needs one (install/bootstrap.py says when); None otherwise. Raises
    ConfigTestFailed or ReloadFailed having put everything back."""
    from mamoru.install import bootstrap

    site = run.site
    if not bootstrap.needed(site, current is not None):
        return None
    import secrets

    from mamoru.challenges.base import ChallengeTask
    from mamoru.challenges.webroot import WebrootSolver
    from mamoru.install.base import ACME_CHALLENGE_PATH
    from mamoru.install.transaction import installer_for

    assert site.challenge.webroot is not None  # needed() requires one
    solver = WebrootSolver(site.challenge.webroot)
    token = "mamoru-probe-" + secrets.token_urlsafe(18)
    task = ChallengeTask(site.domains[0], "http-01", token, secrets.token_urlsafe(18))

    def probe() -> tuple[str, bytes]:
        solver.present(task)
        return ACME_CHALLENGE_PATH + token, task.key_authorization.encode("ascii")

    server = bootstrap.Bootstrap(site, installer_for(site), run.app.events)
    server.put_up(probe, lambda: solver.cleanup(task))
    return server


def fingerprint(run: Run) -> str:
    return due.fingerprint(run.site, run.app.settings.acme.profile)


def due_check(run: Run, current: CertVersion | None, *, served_now: bool | None = None,
              ask_server: bool = True) -> Decision:
    """The renewal decision for the run's site now. Asks the CA for its ARI window when the
    cached one is stale, and, only when nothing else makes the site due, asks the web server
    whether it serves the stored certificate (`served_now` answers that instead, for tests;
    `ask_server` False skips the question: a forced run orders anyway)."""
    site, app = run.site, run.app
    window, pick = (ari_window(run, current) if current is not None else (None, None))
    installed = run.state.installed
    install_changed = bool(
        current is not None and installed is not None and installed.config
        and installed.serial == current.meta.get("serial")
        and installed.config != due.install_fingerprint(site, app.settings.paths.live))

    def served() -> bool:
        if served_now is not None:
            return served_now
        assert current is not None
        return is_served(site, current)

    return due.check_due(
        want=due.wanted(site, app.settings.acme.profile),
        cert=due.facts(current) if current else None, now=app.clock(), window=window,
        pick=pick, settings=app.settings.renewal, rng=app.rng, install_changed=install_changed,
        served=None if site.server.type == "none" or not ask_server else served,
        revoked=current is not None and run.state.is_revoked(current.meta.get("serial")))


def ari_window(run: Run, version: CertVersion) -> tuple[Window | None, float | None]:
    """The ARI window for the live certificate, from the state while fresh, else from the CA
    (then cached in the state). ARI is advisory: any failure means (None, None) and the
    lifetime rule applies."""
    site, app = run.site, run.app
    now = app.clock()
    serial = version.meta.get("serial")
    cached = run.state.ari_for(serial, now)
    if cached is not None:
        return Window(cached.start, cached.end), cached.pick
    from mamoru.protocol.ari import renewal_info

    try:
        session = app.session()
        if not session.supports_ari:
            return None, None
        info = renewal_info(session, version.read("cert.pem"), now)
    except (MamoruError, OSError, ValueError) as error:
        kind = error.kind if isinstance(error, MamoruError) else type(error).__name__
        app.events.emit("warning", site.name, warning="ari-unavailable", error=str(error),
                        error_class=kind)
        return None, None
    if info is None:
        return None, None
    old = run.state.ari
    pick = old.pick if old is not None and old.serial == serial else app.rng.random()
    run.save(run.state.with_ari(AriWindow(serial, info.start, info.end, info.retry_after,
                                          info.explanation_url, pick)))
    app.events.emit("ari", site.name, ari_start=info.start, ari_end=info.end,
                    explanation_url=info.explanation_url, retry_after=info.retry_after)
    return Window(info.start, info.end), pick


def is_served(site: Site, version: CertVersion) -> bool:
    """Is the web server serving `version` on every name? One handshake per name (no waiting);
    True when the site has no server mamoru could ask, or when the answer cannot be had.
    Raises ServerUnreachable when nothing answers at all: a server that is down is not one
    serving another certificate, and reinstalling would reload (so start) it."""
    from mamoru.errors import ServerUnreachable
    from mamoru.install.verify import UNREACHABLE, served_state, verify_address

    try:
        answer = served_state(site, version)
    except (OSError, ValueError):
        return True  # cert.pem unreadable: the renewal decision must not hinge on this
    if answer == UNREACHABLE:
        address = verify_address(site)
        where = f"{address[0]}:{address[1]}" if address else "its address"
        raise ServerUnreachable(f"the web server does not answer at {where} for "
                                f"{', '.join(site.domains)}: it looks down; mamoru will not "
                                "reload or restart it")
    return answer is None or answer == "served"


def not_due(run: Run, decision: Decision) -> datetime:
    """Record a check that found the site not due; returns when to look again."""
    app = run.app
    check = due.next_check(decision, app.clock(), app.settings.renewal, run.state.ari_retry_after)
    run.save(run.state.skipped(due_at=decision.at, next_check=check, why=decision.why,
                               site_config=fingerprint(run)))
    return check


def succeeded(run: Run, version: CertVersion, verified: bool | None) -> Decision:
    """Record a certificate put in service; returns when it is due."""
    site, app = run.site, run.app
    now = app.clock()
    decision = due.after_success(want=due.wanted(site, app.settings.acme.profile),
                                 cert=due.facts(version), now=now,
                                 settings=app.settings.renewal, rng=app.rng)
    run.save(run.state.succeeded(
        now=now, serial=version.meta["serial"], verified=verified,
        install_config=due.install_fingerprint(site, app.settings.paths.live),
        due_at=decision.at, next_check=due.next_check(decision, now, app.settings.renewal),
        why=decision.why, site_config=fingerprint(run)))
    return decision


def failed(run: Run, unexpected: BaseException, *, record: bool) -> Outcome:
    """The run ended in `unexpected`. `record`: the site's lock is held, so the failure (or a
    cancellation) goes into its state and the next attempt is planned; without the lock
    (another run holds it, or it could not be taken) nothing is written."""
    site, app, events = run.site, run.app, run.app.events
    if isinstance(unexpected, MamoruError):
        error = unexpected
    else:
        log.error("unexpected error for site %s", site.name, exc_info=unexpected)
        error = MamoruError(f"unexpected error: {type(unexpected).__name__}: {unexpected}",
                            hint="This is a bug in mamoru; the log has the details.")
    attempt = run.attempt if record else None
    next_try = None
    if record and isinstance(error, Cancelled):
        _try_save(run, run.state.cancelled())
    elif record:
        now = app.clock()
        when = next_attempt(retryable=error.retryable, attempt=run.attempt, now=now,
                            settings=app.settings.renewal,
                            retry_after=getattr(error, "retry_after", None), rng=app.rng,
                            validation=failed_validation(error))
        if _try_save(run, run.state.failed(
                now=now, next_attempt=when, error_class=error.kind, message=str(error),
                retryable=error.retryable, problem=error.fields(),
                site_config=fingerprint(run))):
            next_try = when
    events.emit("failed", site.name, error=str(error), hint=error.hint,
                error_class=error.kind, retryable=error.retryable, next_attempt=next_try,
                attempt=attempt, outcome="failed", duration=round(run.elapsed(), 3),
                **{"names": list(site.domains), **error.fields()})  # VerifyFailed: its names
    if next_try is not None:
        count = attempt or 1
        why = (f"backoff after {count} consecutive failed attempt{'s' if count > 1 else ''}"
               f"{'' if error.retryable else ' (needs a fix; retried slowly)'}"
               f"{VALIDATION_WHY if failed_validation(error) else ''}")
        events.emit("backoff", site.name, next_due=next_try, why=why, attempt=attempt,
                    error_class=error.kind)
    return run.outcome("failed", error=error, next_due=next_try)


VALIDATION_WHY = (f" (the CA could not validate a name; CAs allow only "
                  f"{FAILED_VALIDATIONS_PER_HOUR} failed validations per name and hour, so "
                  f"mamoru retries every {VALIDATION_RETRY_SECONDS / 60:g} minutes or slower)")


def failed_validation(error: MamoruError) -> bool:
    """The CA tried the challenge and it failed (its verdict, with a problem document): a
    failure that counts against the CA's failed-validation limit."""
    return isinstance(error, ChallengeFailed) and error.problem_type is not None


def _try_save(run: Run, state: SiteState) -> bool:
    """Save `state`; False when the disk refuses (the failure event still goes out)."""
    try:
        run.save(state)
    except MamoruError:
        return False
    return True


class Interrupted(MamoruError):
    """An attempt began ordering and never recorded its end: the process was killed, the
    machine lost power, or mamoru crashed. Counted as a transient failure."""

    retryable = True
    hint = ("If this repeats, look for crashes in the journal (`journalctl -u mamoru`); "
            "mamoru backs off meanwhile.")


class RunLost(MamoruError):
    """A site's run ended without reporting how: the process doing it (the daemon's worker)
    died before it finished. Counted as a transient failure."""

    retryable = True
    hint = Interrupted.hint


def recover_interrupted(site: Site, app: App) -> tuple[datetime, str] | None:
    """If the site's last attempt was interrupted, record it as a failed attempt (backoff) and
    return (next attempt, since when it was in flight); else None. Does nothing when another
    process holds the site's lock (its attempt is not interrupted, it is running)."""
    recorded = _record_interrupted(site, app, None)
    return None if recorded is None else (recorded[1], recorded[2] or "?")


def record_lost_run(site: Site, app: App, error: MamoruError
                    ) -> tuple[str, datetime, str | None] | None:
    """The run of `site` ended without reporting (its worker process died). An attempt that
    was ordering is recorded as interrupted (as `recover_interrupted` does at a start); a run
    that had not begun to order as a failed attempt with `error`. Either way the next attempt
    backs off, so a crashing run never orders again at once. Returns (error class, next
    attempt, since when the order was in flight or None), or None when the site's lock is held
    (a run of it is alive) or its state cannot be written."""
    return _record_interrupted(site, app, error)


def _record_interrupted(site: Site, app: App, lost: MamoruError | None
                        ) -> tuple[str, datetime, str | None] | None:
    try:
        with app.storage.lock(site.name, timeout=0):
            run = Run(site, app, app.storage.load_state(site.name))
            marker = run.state.in_flight
            if marker is None and lost is None:
                return None
            now = app.clock()
            when = next_attempt(retryable=True, attempt=run.attempt, now=now,
                                settings=app.settings.renewal, rng=app.rng)
            if marker is None:
                assert lost is not None
                run.save(run.state.failed(
                    now=now, next_attempt=when, error_class=lost.kind, message=str(lost),
                    retryable=True, problem={}, site_config=fingerprint(run)))
                return lost.kind, when, None
            since = marker.since.isoformat() if marker.since.year > 1 else "?"
            error = Interrupted(f"the attempt started at {since} never finished (the process "
                                "was stopped mid-way)")
            run.save(run.state.interrupted(now=now, next_attempt=when, message=str(error),
                                           site_config=fingerprint(run)))
            return error.kind, when, since
    except (LockBusy, MamoruError):
        return None


def browser_check(site: Site, app: App, version: CertVersion) -> None:
    """Look at the freshly installed site as a patient's browser would; one `check` event.
    Advisory: the certificate is installed and verified already, so findings never fail the
    run, but a problem is logged as an error (and so reaches alerts)."""
    from mamoru.check.site import check_site

    settings = app.settings.check
    reports = check_site(site, version, ca_bundle=settings.ca_bundle, timeout=settings.timeout,
                         local=True, browser=settings.browser)
    findings = [{"name": r.host, "check": f.check, "status": f.status, "message": f.message,
                 "fix": f.fix} for r in reports for f in r.findings if f.status != "ok"]
    worst = max((r.worst for r in reports), key=["ok", "warning", "problem"].index, default="ok")
    level = {"ok": 6, "warning": 4, "problem": 3}[worst]
    app.events.emit("check", site.name, worst=worst, findings=findings, level=level)


def _dns_journal(app: App, site: Site) -> str | None:
    """Where the site's dns-01 values in flight are noted, beside its state.json (under the
    site lock), so the next run removes what a killed one left in the zone."""
    if site.challenge.dns01 is None:
        return None
    return os.path.join(app.settings.paths.state, "sites", site.name, "dns01-journal.json")
