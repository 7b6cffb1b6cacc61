"""A site's renewal bookkeeping (pipeline steps over renewal/due.py and SiteState) on real
storage, with an injected clock: the ARI cache and its Retry-After, ARI failures, the web
server's view, the persisted backoff, interrupted attempts, and where a restarted daemon
picks up."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.servers.ports import free_port
from tests.servers.sitestate import install_site

from mamoru.app import App
from mamoru.config.model import AcmeSettings, Challenge, Paths, Server, Settings, Site
from mamoru.errors import CAUnavailable, OrderFailed, RateLimited
from mamoru.observe.events import Events, MemorySink
from mamoru.pipeline import Run, due_check, failed, not_due, recover_interrupted, succeeded
from mamoru.renewal import due
from mamoru.storage import CertVersion, FileStorage
from mamoru.storage.sitestate import SiteState

NAMES = ["clinic.example", "www.clinic.example"]
SITE = Site("clinic", tuple(NAMES), challenge=Challenge(webroot="/srv/www"))
DAY, HOUR = timedelta(days=1), timedelta(hours=1)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class StubResponse:
    body: dict[str, Any]
    headers: dict[str, str]

    def json(self) -> dict[str, Any]:
        return self.body


@dataclass
class StubCA:
    """Stands in for the ACME session's renewalInfo endpoint (the protocol layer has its own
    tests); mamoru.protocol.ari parses what it answers."""

    window: tuple[datetime, datetime] | None
    retry_after: timedelta = 6 * HOUR
    fail: bool = False
    calls: list[datetime] = field(default_factory=list)
    clock: Clock | None = None

    @property
    def supports_ari(self) -> bool:
        return self.window is not None

    def directory(self) -> dict[str, str]:
        return {"renewalInfo": "https://ca.test/ari"} if self.window else {}

    def fetch(self, url: str, context: str = "") -> StubResponse:
        assert self.clock is not None
        self.calls.append(self.clock.now)
        if self.fail:
            raise CAUnavailable("cannot reach the CA at ca.test (renewal info)")
        assert self.window is not None
        return StubResponse({"suggestedWindow": {"start": self.window[0].isoformat(),
                                                 "end": self.window[1].isoformat()},
                             "explanationURL": "https://ca.test/why"},
                            {"Retry-After": str(int(self.retry_after.total_seconds()))})


@dataclass
class Rig:
    app: App
    clock: Clock
    memory: MemorySink
    storage: FileStorage
    version: CertVersion | None = None

    def state(self) -> SiteState:
        return self.storage.load_state(SITE.name)

    def run(self, site: Site = SITE) -> Run:
        """A pipeline run of `site` holding its state as stored now."""
        return Run(site, self.app, self.storage.load_state(site.name))


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    storage = FileStorage(str(tmp_path / "state"), str(tmp_path / "live"))
    settings = Settings(config_file=str(tmp_path / "config.yaml"),
                        acme=AcmeSettings("https://ca.test/directory"),
                        paths=Paths(str(tmp_path / "state"), str(tmp_path / "live"),
                                    str(tmp_path / "events.jsonl")),
                        sites=(SITE,))
    memory = MemorySink()
    clock = Clock(datetime.now(UTC))
    app = App(settings=settings, storage=storage, events=Events([memory]), clock=clock,
              rng=random.Random(3))
    return Rig(app, clock, memory, storage)


def with_cert(rig: Rig, age: timedelta = 10 * DAY, lifetime: timedelta = 90 * DAY,
              site: Site = SITE) -> CertVersion:
    """A live 90-day certificate issued `age` ago; the clock is set to its stored time + age."""
    now = datetime.now(UTC).replace(microsecond=0)
    version = install_site(rig.storage, site.name, list(site.domains), now, now + lifetime)
    rig.clock.now = datetime.fromisoformat(version.meta["stored_at"]) + age
    rig.version = version
    return version


def use_ca(rig: Rig, ca: StubCA) -> StubCA:
    ca.clock = rig.clock
    rig.app._session = ca  # type: ignore[assignment]
    return ca


# -- ARI -----------------------------------------------------------------------------------


def test_ari_window_is_cached_until_retry_after_and_the_pick_is_kept(rig: Rig) -> None:
    version = with_cert(rig)
    start = rig.clock.now + 20 * DAY
    ca = use_ca(rig, StubCA((start, start + 2 * DAY), retry_after=6 * HOUR))
    first = due_check(rig.run(), version)
    assert (first.due, first.rule) == (False, "ari")
    assert start <= first.at <= start + 2 * DAY
    assert len(ca.calls) == 1
    cached = rig.state().ari
    assert cached is not None and cached.explanation_url == "https://ca.test/why"
    assert cached.serial == version.meta["serial"]

    rig.clock.now += 5 * HOUR  # before Retry-After: no request, same answer
    assert due_check(rig.run(), version).at == first.at
    assert len(ca.calls) == 1

    rig.clock.now += 2 * HOUR  # after Retry-After: asked again; the moment in the window stays
    again = due_check(rig.run(), version)
    assert len(ca.calls) == 2
    assert again.at == first.at
    again_cached = rig.state().ari
    assert again_cached is not None and again_cached.pick == cached.pick

    # the record of a skip: next check at the Retry-After, not at the renewal time
    not_due(rig.run(), again)
    state = rig.state()
    assert state.next_check == rig.clock.now + 6 * HOUR
    assert state.next_due == again.at


def test_ari_window_in_the_past_makes_the_site_due(rig: Rig) -> None:
    version = with_cert(rig, age=30 * DAY)
    past = rig.clock.now - 2 * HOUR
    use_ca(rig, StubCA((past, past + HOUR)))
    decision = due_check(rig.run(), version)
    assert (decision.due, decision.rule) == (True, "ari")
    ari = [e for e in rig.memory.events if e.kind == "ari"]
    assert ari and ari[0].get("explanation_url") == "https://ca.test/why"


def test_ari_failure_never_blocks_a_renewal(rig: Rig) -> None:
    version = with_cert(rig, age=61 * DAY)  # past the lifetime rule
    use_ca(rig, StubCA((rig.clock.now, rig.clock.now + DAY), fail=True))
    decision = due_check(rig.run(), version)
    assert (decision.due, decision.rule) == (True, "lifetime")
    warning = [e for e in rig.memory.events if e.kind == "warning"]
    assert warning and "lifetime rule" in warning[0].message
    assert warning[0].get("error_class") == "CAUnavailable"


def test_no_ari_no_request(rig: Rig) -> None:
    version = with_cert(rig)
    ca = use_ca(rig, StubCA(None))
    assert due_check(rig.run(), version).rule == "lifetime"
    assert ca.calls == []


# -- the web server's view -----------------------------------------------------------------


def served_site(port: int) -> Site:
    return replace(SITE, server=Server(type="nginx", conf_dir="/tmp/none",
                                       listen_https=f"127.0.0.1:{port}"))


def test_a_certificate_the_server_does_not_serve_is_due(rig: Rig) -> None:
    site = served_site(free_port())
    version = with_cert(rig, site=site)
    use_ca(rig, StubCA(None))
    decision = due_check(rig.run(site), version, served_now=False)
    assert (decision.due, decision.rule) == (True, "not-served")
    assert decision.rule in due.REINSTALL_RULES
    # answered for the test: served, so not due
    assert not due_check(rig.run(site), version, served_now=True).due


def test_a_server_that_is_down_is_not_taken_for_one_serving_another_certificate(
        rig: Rig) -> None:
    """Nothing listens at the site's TLS or HTTP address: the server is down. Reinstalling
    would reload it (`apachectl -k graceful` starts a stopped Apache), so the check reports
    it instead (a failure with backoff and alerts, like any other)."""
    from mamoru.errors import ServerUnreachable

    site = served_site(free_port())  # nothing listens there
    version = with_cert(rig, site=site)
    use_ca(rig, StubCA(None))
    with pytest.raises(ServerUnreachable, match="does not answer"):
        due_check(rig.run(site), version)


def test_no_handshake_when_due_anyway_or_without_a_server(rig: Rig) -> None:
    version = with_cert(rig, age=89 * DAY)
    use_ca(rig, StubCA(None))
    site = served_site(free_port())
    assert due_check(rig.run(site), version).rule == "lifetime"  # not "not-served"
    rig.clock.now -= 80 * DAY
    assert not due_check(rig.run(), version).due  # type none: never asked


def test_changed_server_settings_reinstall_without_an_order(rig: Rig) -> None:
    site = served_site(free_port())
    version = with_cert(rig, site=site)
    use_ca(rig, StubCA(None))
    succeeded(rig.run(site), version, True)
    assert not due_check(rig.run(site), version, served_now=True).due
    hsts = replace(site, server=replace(site.server, hsts=31536000))
    decision = due_check(rig.run(hsts), version, served_now=True)
    assert (decision.due, decision.rule) == (True, "reinstall")


# -- success, failure, backoff -------------------------------------------------------------


def test_failures_back_off_and_success_resets(rig: Rig) -> None:
    version = with_cert(rig)
    now = rig.clock.now
    first = failed(rig.run(), CAUnavailable("down"), record=True).next_due
    assert first is not None and 54 <= (first - now).total_seconds() <= 66
    second = failed(rig.run(), CAUnavailable("down"), record=True).next_due
    assert second is not None and 108 <= (second - now).total_seconds() <= 132
    state = rig.state()
    assert state.attempts == 2 and state.next_attempt == second
    assert state.last_attempt is not None and state.last_attempt.error_class == "CAUnavailable"
    assert rig.state().backoff_until(rig.clock.now) == second
    assert rig.state().next_run() == second

    limited = RateLimited("slow down", retry_after=now + 3 * HOUR)
    third = failed(rig.run(), limited, record=True).next_due
    assert third is not None and now + 3 * HOUR <= third <= now + 3 * HOUR + 5 * timedelta(
        seconds=1)
    permanent = failed(rig.run(), OrderFailed("rejectedIdentifier"), record=True).next_due
    assert permanent is not None and 10.8 <= (permanent - now) / HOUR <= 13.2

    due_at = succeeded(rig.run(), version, False).at
    state = rig.state()
    assert state.attempts == 0 and state.next_attempt is None
    assert rig.state().backoff_until(rig.clock.now) is None
    assert state.next_due == due_at
    assert rig.state().planned() == (due_at, False)


def test_interrupted_attempt_counts_as_a_failure_once(rig: Rig) -> None:
    with_cert(rig)
    rig.run().save(rig.state().started(rig.clock.now, 1))
    assert rig.state().in_flight is not None
    recovered = recover_interrupted(SITE, rig.app)
    assert recovered is not None
    retry, since = recovered
    assert 54 <= (retry - rig.clock.now).total_seconds() <= 66
    state = rig.state()
    assert state.in_flight is None and state.attempts == 1
    last = state.last_attempt
    assert last is not None and last.outcome == "interrupted"
    assert last.error_class == "Interrupted"
    assert last.message is not None and since in last.message
    assert recover_interrupted(SITE, rig.app) is None  # once


def test_a_running_attempt_is_not_taken_for_an_interrupted_one(rig: Rig) -> None:
    with_cert(rig)
    rig.run().save(rig.state().started(rig.clock.now, 1))
    with rig.storage.lock(SITE.name):  # another process (or thread) is working on it
        assert recover_interrupted(SITE, rig.app) is None
    assert rig.state().in_flight is not None


def test_a_stopped_or_dry_run_attempt_leaves_no_marker(rig: Rig) -> None:
    with_cert(rig)
    rig.run().save(rig.state().started(rig.clock.now, 1))
    rig.run().save(rig.state().cancelled())
    assert rig.state().in_flight is None
    assert recover_interrupted(SITE, rig.app) is None


def first_run(rig: Rig, site: Site) -> tuple[datetime, str]:
    return due.first_run(rig.state(), due.fingerprint(site, None), rig.clock.now)


def test_first_run_after_a_restart(rig: Rig) -> None:
    version = with_cert(rig)
    now = rig.clock.now
    assert first_run(rig, SITE) == (now, "new or changed in the config")
    decision = due_check(rig.run(), version, served_now=True)
    not_due(rig.run(), decision)
    when, why = first_run(rig, SITE)
    assert why == "next check" and when == now + 12 * HOUR  # the periodic check comes first
    retry = failed(rig.run(), CAUnavailable("down"), record=True).next_due
    assert first_run(rig, SITE) == (retry, "backoff after a failed attempt")
    # the persisted time has passed while the daemon was down: now
    rig.clock.now += DAY
    assert first_run(rig, SITE)[0] == rig.clock.now
    # the site's config changed while the daemon was down: now, whatever the backoff
    rig.clock.now = now
    changed = replace(SITE, domains=(*SITE.domains, "new.clinic.example"))
    assert first_run(rig, changed) == (now, "new or changed in the config")
    moved = replace(SITE, line=99)  # only its place in the file: not a change
    assert first_run(rig, moved)[1] == "backoff after a failed attempt"


def test_profile_asked_for_is_what_counts(rig: Rig) -> None:
    """A CA without profiles issues without one: the site must not look changed forever."""
    version = with_cert(rig)
    meta = {**version.meta, "profile": None, "profile_wanted": "tlsserver"}
    facts = due.facts(replace(version, meta=meta))
    assert facts.profile == "tlsserver"
    assert due.facts(version).profile is None  # older metadata: what was issued


# -- the two defects the typed state closed ----------------------------------------------------


def test_a_not_due_check_after_a_failure_ends_the_backoff(rig: Rig) -> None:
    """A failure (here a forced run while the CA was down) followed by a check that finds the
    certificate good: the stale retry time must not stay behind, or the daemon re-checks the
    site every minute for ever while status calls it failing."""
    from mamoru.pipeline import provision

    with_cert(rig)
    use_ca(rig, StubCA(None))
    failed(rig.run(), CAUnavailable("down"), record=True)
    assert rig.state().failing
    rig.clock.now += 10 * timedelta(minutes=1)  # past the retry time
    outcome = provision(SITE, rig.app)
    assert outcome.status == "skipped"
    state = rig.state()
    assert not state.failing and state.next_attempt is None
    when = state.next_run()
    assert when is not None and when > rig.clock.now
    assert state.planned() == (state.next_due, False)
    assert state.last_attempt is not None and state.last_attempt.error_class == "CAUnavailable"


def test_a_busy_site_lock_writes_no_state(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another run holds the site: this one gives up after its wait and must not touch the
    state the holder is writing (no failure counted, no retry time planted)."""
    import mamoru.pipeline
    from mamoru.errors import LockBusy

    with_cert(rig)
    failed(rig.run(), CAUnavailable("down"), record=True)
    path = Path(rig.storage.site_dir(SITE.name), "state.json")
    before = path.read_bytes()
    monkeypatch.setattr(mamoru.pipeline, "LOCK_WAIT", 0.2)
    with rig.storage.lock(SITE.name):
        outcome = mamoru.pipeline.provision(SITE, rig.app, force=True)
    assert outcome.status == "failed" and isinstance(outcome.error, LockBusy)
    assert outcome.next_due is None
    assert path.read_bytes() == before
    failures = [e for e in rig.memory.events if e.kind == "failed"]
    assert failures[-1].get("error_class") == "LockBusy"
