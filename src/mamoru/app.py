"""The one place that picks concrete parts: storage, ACME session, solvers, event sinks, clock.

Tests build an `App` with their own parts (a memory event sink, a fixed clock)."""

from __future__ import annotations

import dataclasses
import random
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from mamoru.clock import Clock, utcnow
from mamoru.config.model import Settings
from mamoru.observe.events import Events, EventSink, JsonlSink, StderrSink
from mamoru.storage import FileStorage

if TYPE_CHECKING:
    from mamoru.protocol.errors import AccountGone
    from mamoru.protocol.session import AcmeSession


@dataclass
class App:
    settings: Settings
    storage: FileStorage
    events: Events
    clock: Clock = utcnow
    stop: threading.Event = field(default_factory=threading.Event)
    rng: random.Random = field(default_factory=random.Random)
    dry_run_finalizes: bool = False  # a dry run at this CA may obtain the certificate
    _session: AcmeSession | None = None
    _account_ready: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _order_slots: threading.BoundedSemaphore | None = None

    def order_slots(self) -> threading.BoundedSemaphore:
        """At most `acme.max_concurrent_orders` orders of this process at the CA at once,
        however many sites are at work (a site's due check, storage and install need no
        slot, so they overlap other sites' orders)."""
        with self._lock:
            if self._order_slots is None:
                self._order_slots = threading.BoundedSemaphore(
                    max(1, self.settings.acme.max_concurrent_orders))
            return self._order_slots

    def session(self) -> AcmeSession:
        """The shared ACME session (one keep-alive pool for every order of this process)."""
        with self._lock:
            if self._session is None:
                from mamoru.protocol.account import directory_cache
                from mamoru.protocol.session import AcmeSession

                acme = self.settings.acme
                self._session = AcmeSession(
                    acme.directory, ca_bundle=acme.ca_bundle, timeout=acme.timeout,
                    pool_size=acme.max_concurrent_orders, stop=self.stop,
                    directory_cache=directory_cache(self.settings.paths.state, acme.directory))
            return self._session

    def account_session(self) -> AcmeSession:
        """The shared session with the account loaded or registered (once per process).
        A stored account the CA says is deactivated is replaced at once (`_replace_account`)."""
        session = self.session()
        with self._lock:
            if not self._account_ready:
                from mamoru.protocol.account import open_account
                from mamoru.protocol.errors import AccountGone

                try:
                    opened = open_account(session, self.settings.acme,
                                          self.settings.paths.state)
                except AccountGone as gone:
                    self._replace_account(session, gone)
                else:
                    if opened.forgotten:
                        self.events.emit(
                            "account", None, account=opened.url, previous=opened.forgotten,
                            why="the CA does not know the account", replaced=True,
                            new_key=False)
                    else:
                        self.events.emit("account", None, account=opened.url)
                self._account_ready = True
        return session

    def recover_account(self, gone: AccountGone) -> AcmeSession:
        """The CA refused the account that signed a request (`gone`): register a new account,
        once however many orders met the refusal at the same time (those that come late find
        the session already on a new account), and return the session to retry with."""
        session = self.account_session()
        with self._lock:
            if gone.account_url is None or session.account_url == gone.account_url:
                self._replace_account(session, gone)
        return session

    def _replace_account(self, session: AcmeSession, gone: AccountGone) -> None:
        """With `_lock` held: move the stored account aside, register a new one, say so."""
        from mamoru.protocol.account import replace_account

        opened = replace_account(session, self.settings.acme, self.settings.paths.state)
        old = gone.account_url or opened.forgotten
        self.events.emit("account", None, account=opened.url, previous=old or "(not recorded)",
                         why=gone.why, replaced=True, new_key=True)

    def session_stats(self) -> dict[str, int]:
        """Requests made to the CA and badNonce retries, for summaries and benchmarks."""
        if self._session is None:
            return {"requests": 0, "bad_nonce_retries": 0}
        return {"requests": self._session.requests_made,
                "bad_nonce_retries": self._session.bad_nonces}

    def reset_session(self) -> None:
        """Forget the session (after a config reload, or when the CA forgot our account)."""
        with self._lock:
            if self._session is not None:
                self._session.close()
            self._session = None
            self._account_ready = False


@dataclass(frozen=True)
class DryRun:
    """How a dry run goes with this CA: the settings it uses, whether it finalizes, and what
    to tell the user before it starts."""

    settings: Settings
    finalizes: bool
    note: str


def dry_run(settings: Settings) -> DryRun:
    """A dry run must cost the clinic nothing at its real CA. Against Let's Encrypt it runs at
    Let's Encrypt staging (as certbot does): a whole order, certificate included, with no
    production rate limit touched. Any other CA: the order and its validations are real, but
    it is not finalized, so no certificate is issued."""
    from mamoru.config.defaults import DIRECTORIES
    from mamoru.i18n import _

    production, staging = DIRECTORIES["letsencrypt"], DIRECTORIES["letsencrypt-staging"]
    directory = settings.acme.directory
    if directory == production:
        moved = dataclasses.replace(settings, acme=dataclasses.replace(settings.acme,
                                                                       directory=staging))
        return DryRun(moved, True, _(
            "dry run: using Let's Encrypt staging instead of production ({staging}); the "
            "staging certificate is obtained and discarded, and no production rate limit is "
            "touched").format(staging=staging))
    if directory == staging:
        return DryRun(settings, True, _("dry run at Let's Encrypt staging: the certificate is "
                                        "obtained and discarded"))
    return DryRun(settings, False, _(
        "dry run: the order at {host} is validated but not finalized, so no certificate is "
        "issued and nothing changes").format(host=urlsplit(directory).netloc))


def build_app(settings: Settings, *, sinks: list[EventSink] | None = None,
              stderr: bool = True, event_log: bool = True, observers: bool = True,
              serve_metrics: bool = False, push_fleet: bool | None = None,
              clock: Clock = utcnow) -> App:
    """The App for `settings`. `observers`: add the metrics sink (textfile) and the alert
    sink when the config sets them up; `serve_metrics`: also start the metrics HTTP endpoint
    (the daemon only: one-shot commands must not take its port). With `fleet:` configured,
    every event also goes into the fleet outbox; `push_fleet` (default: with
    `serve_metrics`, i.e. the daemon) also starts the thread that pushes it. Whoever builds
    an App calls `app.events.close()` when done, so queued alerts go out and the textfile is
    final."""
    events = Events(sinks or [], clock=clock)
    if stderr:
        events.add(StderrSink())
    if event_log:
        paths = settings.paths
        events.add(JsonlSink(paths.event_log, paths.event_log_max_bytes, paths.event_log_keep))
    storage = FileStorage(settings.paths.state, settings.paths.live, settings.paths.key_group,
                          clock=clock)
    if observers and (settings.metrics.textfile or settings.metrics.listen):
        from mamoru.observe.metrics import (
            MetricsSink,  # also counts one-shot runs' failures on disk
        )

        events.add(MetricsSink(settings, storage, serve=serve_metrics))
    if observers and (settings.alerts.email or settings.alerts.webhook):
        from mamoru.observe.alerts import (
            build_alert_sink,  # smtplib & co.: only when alerts are set up
        )

        alerts = build_alert_sink(settings.alerts, storage, events)
        if alerts is not None:
            events.add(alerts)
    if observers and settings.fleet is not None:
        from mamoru.observe.outbox import (
            FleetSink,  # requests & co.: only when fleet reporting is set up
        )

        events.add(FleetSink(settings, storage, clock=clock,
                             push=serve_metrics if push_fleet is None else push_fleet))
    return App(settings=settings, storage=storage, events=events, clock=clock)
