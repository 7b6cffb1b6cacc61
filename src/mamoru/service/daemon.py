"""`mamoru run`: the renewal daemon, one APScheduler job per site.

How it keeps time:
- One job per site (job id = site name), each a `DateTrigger` for the site's next check. When
  a job ends, the next one is scheduled from what the pipeline recorded in the site's
  state.json: the next check (renewal time, ARI Retry-After or the periodic check), or the next
  attempt after a failure (renewal/backoff.py). No job ticks: between jobs the scheduler thread
  sleeps until the earliest one, and the main thread sleeps in read(2) on the signal pipe.
- Jobs run on one thread pool per CA whose size is `acme.max_concurrent_orders`: at most that
  many sites are checked or ordered at once; the others wait their turn (never dropped:
  misfire_grace_time is None, and a late job still runs).
- At start every site's first check comes from its state: the persisted next attempt (backoff)
  or next check when the site's config is the one they were computed for, else now. An attempt
  that was ordering when the process died counts as a failed one (schedule.recover_interrupted),
  so a crash loop backs off instead of ordering at every restart.

Signals (delivered through `signal.set_wakeup_fd`, handled on the main thread outside any signal
handler, so no lock is ever taken inside one):
- SIGHUP: re-read the config. A config with errors is reported (a `config-rejected` event, an
  error in the journal, the systemd status) and the old one keeps running. Otherwise sites
  added are scheduled, removed ones dropped, changed ones checked at once; a change of the
  `acme` section resets the ACME session and retries sites that were backing off. `paths`,
  `alerts` and `metrics` changes need a restart (reported).
- SIGTERM / SIGINT: the workers get SIGTERM (their `app.stop` is set, so every wait of the
  ACME session and of verification ends at once with `Cancelled`; challenge cleanup still
  runs, an install under way finishes); in-flight work is given STOP_GRACE_SECONDS to end and
  the workers WORKER_EXIT_SECONDS more to exit, then the process exits. A second signal kills
  the workers and exits at once (their attempts are recovered at the next start).

systemd (sdnotify.Notifier; nothing happens outside systemd): READY=1 once every site is
scheduled; STATUS= after every check ("3 sites, next renewal clinic at ..."); WATCHDOG=1 at half
of WATCHDOG_USEC from a scheduler job (so a stuck scheduler stops the pings); RELOADING=1 and
READY=1 around a reload; STOPPING=1 at shutdown.

Memory: the daemon holds the config, one small job and one (time, failing) pair per site;
it reads each site's state.json (never a certificate) to plan its next check. The work of a
job (ACME, cryptography, install, verify) runs in a short-lived worker process
(service/worker.py) whose memory goes back to the system when it exits; the daemon's job
thread waits for the worker's word and plans from the state the worker saved. The worker's
events come back to the daemon and go to its sinks (event log, journal, metrics, alerts,
outbox). A worker that dies (kill -9, a crash) costs its sites one failed attempt with backoff
(pipeline.record_lost_run): nothing is ordered again at once, and the daemon carries on.
At SIGTERM the workers get SIGTERM too (their waits end with `Cancelled`; an install under
way finishes), have STOP_GRACE_SECONDS to report, then WORKER_EXIT_SECONDS to exit; one still
running after that is killed and its attempt recovered at the next start.
`Daemon(app, isolate=False)` runs jobs on its own threads instead (tests with an injected
clock).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import select
import signal
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from mamoru.app import App
from mamoru.config.model import Settings, Site
from mamoru.errors import Cancelled, MamoruError
from mamoru.renewal import due
from mamoru.service.scheduler import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    BackgroundScheduler,
    DateTrigger,
    IntervalTrigger,
    JobEvent,
    ThreadPoolExecutor,
)
from mamoru.service.sdnotify import Notifier
from mamoru.service.worker import Workers, load_settings

log = logging.getLogger(__name__)

# After SIGTERM, in-flight work gets this long to reach a safe point (the ACME waits end at
# once; an install finishes its config test and reload) before the process exits regardless.
# Well inside mamoru.service's TimeoutStopSec=30.
STOP_GRACE_SECONDS = 10.0
# Then workers still running get this long to exit (the sum stays inside TimeoutStopSec=30).
WORKER_EXIT_SECONDS = 12.0
# How long queued alerts may take to go out at shutdown (the rest go out at the next start).
EVENTS_CLOSE_SECONDS = 5.0
# A job that could not tell when to run next (its state could not be written) runs again after
# renewal.retry_first_seconds; never sooner than this.
MIN_RESCHEDULE_SECONDS = 1.0
WATCHDOG_JOB = "mamoru-watchdog"
JOB_EVENTS = EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES
# Settings the running daemon cannot swap: its storage, event log and alert/metrics sinks are
# built from them once.
RESTART_ONLY = ("paths", "alerts", "metrics")


def _same_site(a: Site, b: Site) -> bool:
    return dataclasses.replace(a, line=None) == dataclasses.replace(b, line=None)


class Daemon:
    """The long-running service. Build it with a ready App, then call `run()` from the main
    thread (it installs signal handlers). Other methods are called by the scheduler's threads
    or by `run()`; they may run concurrently and take `self._lock` for shared state."""

    def __init__(self, app: App, *, notifier: Notifier | None = None,
                 config_path: str | None = None, isolate: bool = True) -> None:
        self.app = app
        self.workers = Workers(app) if isolate else None
        self.notifier = notifier or Notifier()
        self.config_path = config_path or app.settings.config_file
        self.scheduler = BackgroundScheduler(timezone=UTC)
        self._lock = threading.RLock()
        self._sites: dict[str, Site] = {}
        self._running: set[str] = set()
        self._rerun: set[str] = set()  # changed by a reload while their job ran
        self._plans: dict[str, tuple[datetime | None, bool]] = {}
        self._stopping = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._pool = 0
        self._executor = ""
        self._executor_object: ThreadPoolExecutor | None = None
        self._signal_pipe: tuple[int, int] | None = None
        self._hurry = False  # a second stop signal: stop at once

    # -- the main thread -------------------------------------------------------------------

    def run(self) -> int:
        """Start, serve signals until SIGTERM/SIGINT, stop. Returns the exit status (0)."""
        read_fd = self._install_signals()
        try:
            self.start()
            self._serve(read_fd)
        finally:
            self.stop()
            self._restore_signals()
        return 0

    def _install_signals(self) -> int:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(write_fd, False)
        self._signal_pipe = (read_fd, write_fd)
        # The C-level handler writes the signal number to the pipe; the Python-level handler
        # does nothing, so all the work happens in _serve, outside any signal handler.
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, _ignore)
        return read_fd

    def _restore_signals(self) -> None:
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        if self._signal_pipe is not None:
            for fd in self._signal_pipe:
                os.close(fd)
            self._signal_pipe = None

    def _serve(self, read_fd: int) -> None:
        while True:
            try:
                received = os.read(read_fd, 64)
            except InterruptedError:  # pragma: no cover - PEP 475 retries read(2) itself
                continue
            for signum in received:
                if signum == signal.SIGHUP:
                    self.reload()
                elif signum in (signal.SIGTERM, signal.SIGINT):
                    self.app.events.emit("stopping", None,
                                         signal=signal.Signals(signum).name)
                    return

    # -- start and stop --------------------------------------------------------------------

    def start(self) -> None:
        """Schedule every configured site from its persisted state and tell systemd we are
        ready."""
        settings = self.app.settings
        self.scheduler.add_listener(self._on_job_event, JOB_EVENTS)
        self._use_pool(settings.acme.max_concurrent_orders)
        self.scheduler.start()
        for site in settings.sites:
            self._add_site(site)
        interval = self.notifier.watchdog_interval()
        if interval:
            # A scheduler job, not a free-running thread: if the scheduler stops dispatching,
            # the pings stop and systemd restarts us. Its own one-thread pool, so busy renewal
            # workers never delay it.
            self.scheduler.add_executor(ThreadPoolExecutor(1), "watchdog")
            self.scheduler.add_job(self.notifier.watchdog, IntervalTrigger(
                seconds=interval / 2, timezone=UTC), id=WATCHDOG_JOB, executor="watchdog",
                coalesce=True, max_instances=1, misfire_grace_time=None,
                next_run_time=self.app.clock())
        status = self.status_text()
        self.app.events.emit("started", None, status=status, sites=len(settings.sites),
                             config=self.config_path,
                             max_concurrent_orders=settings.acme.max_concurrent_orders)
        self.notifier.ready(status)

    def stop(self) -> None:
        """Cancel in-flight work, wait up to STOP_GRACE_SECONDS for it, flush events, and exit
        the process at once if work is still running after that."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        with self._lock:
            running = sorted(self._running)
        self.notifier.stopping("stopping" + (f"; cancelling {', '.join(running)}"
                                             if running else ""))
        self.app.stop.set()
        if self.workers is not None:
            self.workers.stop()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        left = self._wait_idle(STOP_GRACE_SECONDS)
        if self.workers is not None:
            self.workers.close_all()
            if self._hurry or not self.workers.wait(WORKER_EXIT_SECONDS):
                self.workers.signal_all(signal.SIGKILL)  # recovered at the next start
                self.workers.wait(2.0)
            left = self._wait_idle(1.0)
        self.app.events.emit("stopped", None, abandoned=left or None,
                             grace=STOP_GRACE_SECONDS if left else None)
        self.app.events.close(EVENTS_CLOSE_SECONDS)
        self.notifier.close()
        if left:
            # Worker threads would keep the interpreter alive; every write they make is atomic
            # and an unfinished attempt is recovered at the next start.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)

    def _wait_idle(self, timeout: float) -> list[str]:
        """Wait until no site job runs (or `timeout`, or a second stop signal); returns the
        sites still running."""
        deadline = time.monotonic() + timeout
        read_fd = self._signal_pipe[0] if self._signal_pipe else None
        with self._lock:
            while self._running:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                # Short waits only while stopping: a second SIGTERM/SIGINT must act at once.
                self._idle.wait(min(remaining, 0.1))
                if read_fd is not None and select.select([read_fd], [], [], 0)[0]:
                    received = os.read(read_fd, 64)
                    if signal.SIGTERM in received or signal.SIGINT in received:
                        self._hurry = True
                        break
            return sorted(self._running)

    # -- scheduling ------------------------------------------------------------------------

    def _use_pool(self, size: int) -> None:
        """Run site jobs on a pool of `size` threads (replacing the previous pool, whose
        running jobs finish normally)."""
        with self._lock:
            if size == self._pool:
                return
            old, old_object = self._executor, self._executor_object
            self._pool = size
            self._executor = f"ca-{size}-{time.monotonic_ns()}"
            self._executor_object = ThreadPoolExecutor(size)
            self.scheduler.add_executor(self._executor_object, self._executor)
            if old and old_object is not None:
                # Every job moves to the new pool before the old one goes (a job left on a
                # removed executor would be dropped by the scheduler).
                for job in self.scheduler.get_jobs():
                    if job.id != WATCHDOG_JOB:
                        job.modify(executor=self._executor)
                self.scheduler.remove_executor(old, shutdown=False)
                old_object.shutdown(wait=False)  # its threads exit after their current job

    def _add_site(self, site: Site) -> None:
        """Schedule a site the daemon did not watch before, from its persisted state."""
        with self._lock:
            self._sites[site.name] = site
        from mamoru.pipeline import recover_interrupted

        recovered = recover_interrupted(site, self.app)
        if recovered is not None:
            retry, since = recovered
            self.app.events.emit(
                "failed", site.name, since=since, error_class="Interrupted", retryable=True,
                next_attempt=retry,
                outcome="failed", names=list(site.domains))
            self.app.events.emit("backoff", site.name, next_due=retry,
                                 why="backoff after an interrupted attempt",
                                 error_class="Interrupted")
        state = self.app.storage.load_state(site.name)
        when, why = due.first_run(state, due.fingerprint(site, self.app.settings.acme.profile),
                                  self.app.clock())
        with self._lock:
            self._plans[site.name] = state.planned()
        log.info("site %s: first check %s (%s)", site.name, when.isoformat(), why)
        self.schedule(site.name, when)

    def schedule(self, name: str, when: datetime) -> None:
        """Run site `name`'s job at `when`, unless it is already due earlier. Thread-safe."""
        with self._lock:
            if self._stopping.is_set() or name not in self._sites:
                return
            job = self.scheduler.get_job(name)
            if job is not None and job.next_run_time is not None and job.next_run_time <= when:
                return
            self.scheduler.add_job(
                self._run_site, DateTrigger(run_date=when, timezone=UTC), args=[name], id=name,
                name=f"site {name}", executor=self._executor, max_instances=1, coalesce=True,
                misfire_grace_time=None, replace_existing=True)

    def _on_job_event(self, event: JobEvent) -> None:
        """Scheduler listener: schedule a site's next job once its current one is over (the
        executor has released the instance by then, so the new job can never be refused)."""
        name = str(event.job_id)
        if name == WATCHDOG_JOB or self._stopping.is_set():
            return
        now = self.app.clock()
        if event.code == EVENT_JOB_EXECUTED:
            when = getattr(event, "retval", None)
            if isinstance(when, datetime):
                self.schedule(name, when)
        elif event.code == EVENT_JOB_ERROR:  # _run_site catches everything; belt and braces
            log.error("site %s: job failed: %s", name, getattr(event, "exception", None))
            self.schedule(name, now + timedelta(
                seconds=self.app.settings.renewal.retry_first_seconds))
        elif event.code == EVENT_JOB_MISSED:
            self.schedule(name, now)
        elif event.code == EVENT_JOB_MAX_INSTANCES:
            # Came due while its previous run was finishing: run again right after it.
            self.schedule(name, now + timedelta(seconds=MIN_RESCHEDULE_SECONDS))

    def _run_site(self, name: str) -> datetime | None:
        """The job: one pass of the pipeline for site `name` (in a worker process); returns
        when to run next."""
        with self._lock:
            site = self._sites.get(name)
            if site is None or self._stopping.is_set():
                return None
            self._running.add(name)
            self._rerun.discard(name)
        cancelled = ran = False
        try:
            if self.workers is None:
                from mamoru.pipeline import provision

                cancelled = isinstance(provision(site, self.app).error, Cancelled)
            else:
                result = self.workers.run(name)
                cancelled = result.status == "cancelled"
                if result.status == "lost" and not self._stopping.is_set():
                    self._lost(site, result.detail)
            state = self.app.storage.load_state(name)
            when = state.next_run()
            ran = True
        except Exception:  # provision never raises for a site's own failure; a bug here must
            log.exception("site %s: unexpected error in the daemon", name)  # not stop the site
            when = None
        finally:
            with self._lock:
                self._running.discard(name)
                rerun = name in self._rerun
                self._idle.notify_all()
        if self._stopping.is_set() or cancelled:
            return None
        now = self.app.clock()
        if rerun:
            when = now
        elif when is None or when <= now:
            when = now + timedelta(seconds=max(self.app.settings.renewal.retry_first_seconds,
                                               MIN_RESCHEDULE_SECONDS))
        if ran:
            with self._lock:
                self._plans[name] = state.planned()
        self.notifier.status(self.status_text())
        return when

    def _lost(self, site: Site, detail: str) -> None:
        """A worker died before reporting the site's run: one failed attempt, with backoff."""
        from mamoru.pipeline import RunLost, record_lost_run

        error = RunLost(f"{detail} before the run of this site finished")
        recorded = record_lost_run(site, self.app, error)
        if recorded is None:
            return  # another run holds the site (it is alive) or the disk refused
        kind, retry, since = recorded
        if since is not None:  # it was ordering: as after a crash of the whole daemon
            self.app.events.emit(
                "failed", site.name, since=since, error_class=kind, retryable=True,
                next_attempt=retry, outcome="failed", names=list(site.domains))
            self.app.events.emit("backoff", site.name, next_due=retry,
                                 why="backoff after an interrupted attempt", error_class=kind)
            return
        self.app.events.emit(
            "failed", site.name, error=str(error), hint=error.hint, error_class=kind,
            retryable=True, next_attempt=retry, outcome="failed", names=list(site.domains))
        self.app.events.emit("backoff", site.name, next_due=retry,
                             why="backoff after its worker process died", error_class=kind)

    # -- reload ------------------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: read the config again; keep the old one if the new one has errors."""
        self.notifier.reloading("reloading the config")
        try:
            new = load_settings(self.config_path)
        except MamoruError as error:
            problems = [str(p) for p in getattr(error, "problems", [])] or None
            self.app.events.emit("config-rejected", None, error=str(error), level=3,
                                 problems=problems, config=self.config_path)
            self.notifier.ready(f"config reload FAILED, previous config in force; "
                                f"{self.status_text()}")
            return
        for warning in new.warnings:
            self.app.events.emit("warning", None, warning="config", note=str(warning))
        summary = self.apply(new)
        self.app.events.emit("config-reloaded", None, summary=summary,
                             config=self.config_path)
        self.notifier.ready(self.status_text())

    def apply(self, new: Settings) -> str:
        """Switch to `new` settings; returns a one-line summary of what changed."""
        old = self.app.settings
        fixed = [name for name in RESTART_ONLY if getattr(old, name) != getattr(new, name)]
        if fixed:
            self.app.events.emit("warning", None, warning="restart-needed", settings=fixed)
            new = dataclasses.replace(new, **{name: getattr(old, name) for name in fixed})
        acme_changed = old.acme != new.acme
        self.app.settings = new
        if self.workers is not None:
            self.workers.retire()  # the next sites go to a worker with the new settings
        if acme_changed:
            self.app.reset_session()
        self._use_pool(new.acme.max_concurrent_orders)

        before = {s.name: s for s in old.sites}
        after = {s.name: s for s in new.sites}
        added = [n for n in after if n not in before]
        removed = [n for n in before if n not in after]
        changed = [n for n in after if n in before and not _same_site(before[n], after[n])]
        now = self.app.clock()
        with self._lock:
            self._sites = dict(after)
            for name in removed:
                self._plans.pop(name, None)
                if self.scheduler.get_job(name) is not None:
                    self.scheduler.remove_job(name)
        for name in added:
            self._add_site(after[name])
        retry = set(changed)
        if acme_changed:  # a new CA, URL or account: sites backing off may succeed now
            retry |= {n for n in after if n not in added and self.app.storage.load_state(n).failing}
        for name in sorted(retry):
            with self._lock:
                if name in self._running:
                    self._rerun.add(name)
                    continue
            self.schedule(name, now)
        parts = [f"{label} {', '.join(names)}" for label, names in (
            ("added", added), ("removed", removed), ("changed", changed)) if names]
        if acme_changed:
            parts.append("acme settings changed")
        return "; ".join(parts) or "no changes to sites"

    # -- status --------------------------------------------------------------------------------

    def status_text(self) -> str:
        """One line for `systemctl status`: sites, failing ones, the next renewal."""
        with self._lock:
            plans = {name: self._plans.get(name, (None, False)) for name in self._sites}
            running = len(self._running)
        count = len(plans)
        parts = [f"{count} site{'s' if count != 1 else ''}"]
        failing = sorted(name for name, (_, bad) in plans.items() if bad)
        if failing:
            parts.append(f"{len(failing)} failing ({', '.join(failing[:3])}"
                         f"{', ...' if len(failing) > 3 else ''})")
        if running:
            parts.append(f"{running} in progress")
        upcoming = [(when, name) for name, (when, _) in plans.items() if when is not None]
        text = ", ".join(parts)
        if upcoming:
            when, name = min(upcoming)
            text += f", next renewal {name} at {when.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
        elif not count:
            text += " (nothing to do until a config reload adds one)"
        return text

    def jobs(self) -> dict[str, datetime | None]:
        """Scheduled run time of every site's job (for tests and debugging)."""
        return {job.id: job.next_run_time for job in self.scheduler.get_jobs()
                if job.id != WATCHDOG_JOB}


def _ignore(_signum: int, _frame: Any) -> None:
    """Python-level signal handler: the wakeup fd carries the signal to the main loop."""


def run(app: App, *, notifier: Notifier | None = None) -> int:
    """`mamoru run`: serve until SIGTERM/SIGINT."""
    return Daemon(app, notifier=notifier).run()
