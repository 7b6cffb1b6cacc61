"""A site's renewal bookkeeping (mamoru.renewal.schedule) on real storage, with an injected
clock: the ARI cache and its Retry-After, ARI failures, the web server's view, the persisted
backoff, interrupted attempts, and where a restarted daemon picks up."""

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
from mamoru.protocol.session import RenewalInfo
from mamoru.renewal import schedule
from mamoru.storage import CertVersion, FileStorage

NAMES = ["clinic.example", "www.clinic.example"]
SITE = Site("clinic", tuple(NAMES), challenge=Challenge(webroot="/srv/www"))
DAY, HOUR = timedelta(days=1), timedelta(hours=1)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class StubCA:
    """Stands in for the ACME session's ARI calls (the protocol layer has its own tests)."""

    window: tuple[datetime, datetime] | None
    retry_after: timedelta = 6 * HOUR
    fail: bool = False
    calls: list[datetime] = field(default_factory=list)
    clock: Clock | None = None

    @property
    def supports_ari(self) -> bool:
        return self.window is not None

    def renewal_info(self, cert_pem: bytes, now: datetime) -> RenewalInfo | None:
        self.calls.append(now)
        if self.fail:
            raise CAUnavailable("cannot reach the CA at ca.test (renewal info)")
        assert self.window is not None
        return RenewalInfo(self.window[0], self.window[1], "https://ca.test/why",
                           now + self.retry_after)


@dataclass
class Rig:
    app: App
    clock: Clock
    memory: MemorySink
    storage: FileStorage
    version: CertVersion | None = None

    def state(self) -> dict[str, Any]:
        return self.storage.load_state(SITE.name)


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
    rig.app._session = ca  # type: ignore[assignment]
    return ca


# -- ARI -----------------------------------------------------------------------------------


def test_ari_window_is_cached_until_retry_after_and_the_pick_is_kept(rig: Rig) -> None:
    version = with_cert(rig)
    start = rig.clock.now + 20 * DAY
    ca = use_ca(rig, StubCA((start, start + 2 * DAY), retry_after=6 * HOUR))
    first = schedule.check_due(SITE, version, rig.app)
    assert (first.due, first.rule) == (False, "ari")
    assert start <= first.at <= start + 2 * DAY
    assert len(ca.calls) == 1
    cached = rig.state()["ari"]
    assert cached["explanation_url"] == "https://ca.test/why"
    assert cached["serial"] == version.meta["serial"]

    rig.clock.now += 5 * HOUR  # before Retry-After: no request, same answer
    assert schedule.check_due(SITE, version, rig.app).at == first.at
    assert len(ca.calls) == 1

    rig.clock.now += 2 * HOUR  # after Retry-After: asked again; the moment in the window stays
    again = schedule.check_due(SITE, version, rig.app)
    assert len(ca.calls) == 2
    assert again.at == first.at
    assert rig.state()["ari"]["pick"] == cached["pick"]

    # the record of a skip: next check at the Retry-After, not at the renewal time
    schedule.record_skip(SITE, rig.app, again)
    state = rig.state()
    assert datetime.fromisoformat(state["next_check"]) == rig.clock.now + 6 * HOUR
    assert datetime.fromisoformat(state["next_due"]) == again.at


def test_ari_window_in_the_past_makes_the_site_due(rig: Rig) -> None:
    version = with_cert(rig, age=30 * DAY)
    past = rig.clock.now - 2 * HOUR
    use_ca(rig, StubCA((past, past + HOUR)))
    decision = schedule.check_due(SITE, version, rig.app)
    assert (decision.due, decision.rule) == (True, "ari")
    ari = [e for e in rig.memory.events if e.kind == "ari"]
    assert ari and ari[0].get("explanation_url") == "https://ca.test/why"


def test_ari_failure_never_blocks_a_renewal(rig: Rig) -> None:
    version = with_cert(rig, age=61 * DAY)  # past the lifetime rule
    use_ca(rig, StubCA((rig.clock.now, rig.clock.now + DAY), fail=True))
    decision = schedule.check_due(SITE, version, rig.app)
    assert (decision.due, decision.rule) == (True, "lifetime")
    warning = [e for e in rig.memory.events if e.kind == "warning"]
    assert warning and "lifetime rule" in warning[0].message
    assert warning[0].get("error_class") == "CAUnavailable"


def test_no_ari_no_request(rig: Rig) -> None:
    version = with_cert(rig)
    ca = use_ca(rig, StubCA(None))
    assert schedule.check_due(SITE, version, rig.app).rule == "lifetime"
    assert ca.calls == []


# -- the web server's view -----------------------------------------------------------------


def served_site(port: int) -> Site:
    return replace(SITE, server=Server(type="nginx", conf_dir="/tmp/none",
                                       listen_https=f"127.0.0.1:{port}"))


def test_a_certificate_the_server_does_not_serve_is_due(rig: Rig) -> None:
    site = served_site(free_port())  # nothing listens there: not served
    version = with_cert(rig, site=site)
    use_ca(rig, StubCA(None))
    decision = schedule.check_due(site, version, rig.app)
    assert (decision.due, decision.rule) == (True, "not-served")
    assert decision.rule in schedule.REINSTALL_RULES
    # answered for the test: served, so not due
    assert not schedule.check_due(site, version, rig.app, served_now=True).due


def test_no_handshake_when_due_anyway_or_without_a_server(rig: Rig) -> None:
    version = with_cert(rig, age=89 * DAY)
    use_ca(rig, StubCA(None))
    site = served_site(free_port())
    assert schedule.check_due(site, version, rig.app).rule == "lifetime"  # not "not-served"
    rig.clock.now -= 80 * DAY
    assert not schedule.check_due(SITE, version, rig.app).due  # type none: never asked


def test_changed_server_settings_reinstall_without_an_order(rig: Rig) -> None:
    site = served_site(free_port())
    version = with_cert(rig, site=site)
    use_ca(rig, StubCA(None))
    schedule.record_success(site, rig.app, version, verified=True)
    assert not schedule.check_due(site, version, rig.app, served_now=True).due
    hsts = replace(site, server=replace(site.server, hsts=31536000))
    decision = schedule.check_due(hsts, version, rig.app, served_now=True)
    assert (decision.due, decision.rule) == (True, "reinstall")


# -- success, failure, backoff -------------------------------------------------------------


def test_failures_back_off_and_success_resets(rig: Rig) -> None:
    version = with_cert(rig)
    now = rig.clock.now
    first = schedule.record_failure(SITE, rig.app, CAUnavailable("down"))
    assert first is not None and 54 <= (first - now).total_seconds() <= 66
    second = schedule.record_failure(SITE, rig.app, CAUnavailable("down"))
    assert second is not None and 108 <= (second - now).total_seconds() <= 132
    state = rig.state()
    assert state["attempts"] == 2 and state["next_attempt"] == second.isoformat()
    assert state["last_attempt"]["error_class"] == "CAUnavailable"
    assert schedule.backoff_until(SITE, rig.app) == second
    assert schedule.next_run(SITE.name, rig.app) == second

    limited = RateLimited("slow down", retry_after=now + 3 * HOUR)
    third = schedule.record_failure(SITE, rig.app, limited)
    assert third is not None and now + 3 * HOUR <= third <= now + 3 * HOUR + 5 * timedelta(
        seconds=1)
    permanent = schedule.record_failure(SITE, rig.app, OrderFailed("rejectedIdentifier"))
    assert permanent is not None and 10.8 <= (permanent - now) / HOUR <= 13.2

    due_at = schedule.record_success(SITE, rig.app, version, verified=False)
    state = rig.state()
    assert state["attempts"] == 0 and state["next_attempt"] is None
    assert schedule.backoff_until(SITE, rig.app) is None
    assert datetime.fromisoformat(state["next_due"]) == due_at
    assert schedule.planned(SITE.name, rig.app) == (due_at, False)


def test_interrupted_attempt_counts_as_a_failure_once(rig: Rig) -> None:
    with_cert(rig)
    schedule.record_start(SITE, rig.app)
    assert "in_flight" in rig.state()
    recovered = schedule.recover_interrupted(SITE, rig.app)
    assert recovered is not None
    retry, since = recovered
    assert 54 <= (retry - rig.clock.now).total_seconds() <= 66
    state = rig.state()
    assert "in_flight" not in state and state["attempts"] == 1
    assert state["last_attempt"]["outcome"] == "interrupted"
    assert state["last_attempt"]["error_class"] == "Interrupted"
    assert since in state["last_attempt"]["message"]
    assert schedule.recover_interrupted(SITE, rig.app) is None  # once


def test_a_running_attempt_is_not_taken_for_an_interrupted_one(rig: Rig) -> None:
    with_cert(rig)
    schedule.record_start(SITE, rig.app)
    with rig.storage.lock(SITE.name):  # another process (or thread) is working on it
        assert schedule.recover_interrupted(SITE, rig.app) is None
    assert "in_flight" in rig.state()


def test_a_stopped_or_dry_run_attempt_leaves_no_marker(rig: Rig) -> None:
    with_cert(rig)
    schedule.record_start(SITE, rig.app)
    schedule.record_cancelled(SITE, rig.app)
    assert "in_flight" not in rig.state()
    assert schedule.recover_interrupted(SITE, rig.app) is None


def test_first_run_after_a_restart(rig: Rig) -> None:
    version = with_cert(rig)
    now = rig.clock.now
    assert schedule.first_run(SITE, rig.app) == (now, "new or changed in the config")
    decision = schedule.check_due(SITE, version, rig.app, served_now=True)
    schedule.record_skip(SITE, rig.app, decision)
    when, why = schedule.first_run(SITE, rig.app)
    assert why == "next check" and when == now + 12 * HOUR  # the periodic check comes first
    retry = schedule.record_failure(SITE, rig.app, CAUnavailable("down"))
    assert schedule.first_run(SITE, rig.app) == (retry, "backoff after a failed attempt")
    # the persisted time has passed while the daemon was down: now
    rig.clock.now += DAY
    assert schedule.first_run(SITE, rig.app)[0] == rig.clock.now
    # the site's config changed while the daemon was down: now, whatever the backoff
    rig.clock.now = now
    changed = replace(SITE, domains=(*SITE.domains, "new.clinic.example"))
    assert schedule.first_run(changed, rig.app) == (now, "new or changed in the config")
    moved = replace(SITE, line=99)  # only its place in the file: not a change
    assert schedule.first_run(moved, rig.app)[1] == "backoff after a failed attempt"


def test_profile_asked_for_is_what_counts(rig: Rig) -> None:
    """A CA without profiles issues without one: the site must not look changed forever."""
    version = with_cert(rig)
    meta = {**version.meta, "profile": None, "profile_wanted": "tlsserver"}
    facts = schedule.facts(replace(version, meta=meta))
    assert facts.profile == "tlsserver"
    assert schedule.facts(version).profile is None  # older metadata: what was issued
