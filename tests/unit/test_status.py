"""`mamoru status`: rows from local state, danger rules, exit code (as a whole process)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from tests.helpers import run_mamoru, write_config
from tests.servers.sitestate import failed_attempt, install_site, succeeded

from mamoru.config.model import Server, Site
from mamoru.observe.status import SiteStatus, exit_code, render_table, site_status
from mamoru.storage import FileStorage
from mamoru.storage.sitestate import SiteState

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
DAY = dt.timedelta(days=1)


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    """healthy, failing, expiring, expired, never provisioned, short-lived; returns config."""
    storage = FileStorage(str(tmp_path / "state"), str(tmp_path / "live"))
    names = {s: [f"{s}.example", f"www.{s}.example"]
             for s in ("healthy", "failing", "expiring", "expired", "fresh", "short")}

    version = install_site(storage, "healthy", names["healthy"], NOW - 10 * DAY, NOW + 80 * DAY)
    succeeded(storage, "healthy", version, at=NOW - 10 * DAY, next_due=NOW + 50 * DAY,
              ari={"serial": version.meta["serial"], "start": (NOW + 40 * DAY).isoformat(),
                   "end": (NOW + 42 * DAY).isoformat(), "retry_after": NOW.isoformat(),
                   "explanation_url": None, "pick": 0.5})

    version = install_site(storage, "failing", names["failing"], NOW - 70 * DAY, NOW + 20 * DAY)
    succeeded(storage, "failing", version, at=NOW - 70 * DAY, next_due=NOW - 10 * DAY)
    failed_attempt(storage, "failing", at=NOW - DAY, attempts=3, retry_at=NOW + 3 * 3600 * DAY
                   / 86400, detail="Fetching http://failing.example/.well-known/acme-challenge/"
                   "Q3dfT5kz8YbVhU1rLwZp0aXcE4sN6mJ2oIiGyHtRqK9: connection refused")

    version = install_site(storage, "expiring", names["expiring"], NOW - 80 * DAY, NOW + 10 * DAY)
    succeeded(storage, "expiring", version, at=NOW - 80 * DAY, next_due=NOW - 20 * DAY)

    version = install_site(storage, "expired", names["expired"], NOW - 95 * DAY, NOW - 5 * DAY)
    succeeded(storage, "expired", version, at=NOW - 95 * DAY, next_due=NOW - 35 * DAY)

    # a 6-day certificate one day old: 5 days left is fine (1/6 of its lifetime is 1 day)
    version = install_site(storage, "short", names["short"], NOW - DAY, NOW + 5 * DAY)
    succeeded(storage, "short", version, at=NOW - DAY, next_due=NOW + 2 * DAY,
              why="1/2 of the lifetime left")

    sites = {s: {"domains": n, "challenge": {"webroot": str(tmp_path / "www")}}
             for s, n in names.items()}
    return write_config(tmp_path, "https://ca.test/directory", None, sites)


def test_status_rows_and_exit_code_as_a_process(fleet: Path) -> None:
    result = run_mamoru("status", "-c", str(fleet), check=1)
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["SITE", "NAMES", "SERIAL"]
    rows = {line.split()[0]: line for line in lines[1:7]}
    assert set(rows) == {"healthy", "failing", "expiring", "expired", "fresh", "short"}
    assert rows["healthy"].rstrip().endswith("ok")
    assert "(1/3 of the lifetime left)" in rows["healthy"]
    assert "status test intermediate" in rows["healthy"]
    assert "healthy.example +1" in rows["healthy"]
    assert f"{NOW + 80 * DAY:%Y-%m-%d} (80 d)" in rows["healthy"]
    assert "failed: ChallengeFailed" in rows["failing"]
    assert "(backoff: retry after 3 failed attempts)" in rows["failing"]
    assert rows["short"].rstrip().endswith("ok")
    for bad in ("failing", "expiring", "expired", "fresh"):
        assert rows[bad].rstrip().endswith("DANGER"), rows[bad]
    # the monitoring line names every site in danger, and only those
    danger = result.stderr.strip().splitlines()[-1]
    assert danger.startswith("mamoru: 4 sites in danger:")
    for bad in ("failing", "expiring", "expired", "fresh"):
        assert f"{bad} (" in danger
    assert "healthy" not in danger and "short" not in danger
    # the CA's detail is shown for the failing site, without the challenge token
    assert "connection refused" in result.stdout
    assert "Q3dfT5kz8YbVhU1rLwZp0aXcE4sN6mJ2oIiGyHtRqK9" not in result.stdout + result.stderr


def test_status_json(fleet: Path) -> None:
    result = run_mamoru("status", "--json", "-c", str(fleet), check=1)
    data = json.loads(result.stdout)
    assert data["ok"] is False
    assert sorted(data["in_danger"]) == ["expired", "expiring", "failing", "fresh"]
    sites = {s["site"]: s for s in data["sites"]}
    healthy = sites["healthy"]
    assert healthy["names"] == ["healthy.example", "www.healthy.example"]
    assert healthy["issuer"] == "CN=status test intermediate"
    assert healthy["not_after"] == (NOW + 80 * DAY).isoformat().replace("+00:00", "Z")
    assert 79.9 < healthy["days_left"] <= 80
    assert healthy["next_renewal"] == (NOW + 50 * DAY).isoformat().replace("+00:00", "Z")
    assert healthy["why"] == "1/3 of the lifetime left"
    assert healthy["installed"] is True and healthy["verified"] is None
    assert healthy["last_attempt"]["outcome"] == "ok"
    assert healthy["ari"]["start"] == (NOW + 40 * DAY).isoformat()
    assert healthy["danger"] == [] and healthy["ok"] is True
    failing = sites["failing"]
    assert failing["last_attempt"]["error_class"] == "ChallengeFailed"
    assert failing["last_attempt"]["problem_type"] == "urn:ietf:params:acme:error:connection"
    assert "acme-challenge/[token]" in failing["last_attempt"]["detail"]
    assert failing["consecutive_failures"] == 3
    assert failing["danger"] == ["last attempt failed: ChallengeFailed"]
    assert sites["expiring"]["danger"] == ["10.0 d left, under 1/6 of its lifetime"]
    assert sites["expired"]["danger"] == ["certificate expired"]
    assert sites["fresh"]["danger"] == ["no certificate"]
    assert sites["fresh"]["installed"] is False and sites["fresh"]["serial"] is None
    assert sites["fresh"]["why"] == "no certificate yet"


def test_all_healthy_exits_0(tmp_path: Path) -> None:
    storage = FileStorage(str(tmp_path / "state"), str(tmp_path / "live"))
    version = install_site(storage, "clinic", ["clinic.example"], NOW - DAY, NOW + 89 * DAY)
    succeeded(storage, "clinic", version, at=NOW - DAY, next_due=NOW + 59 * DAY)
    config = write_config(tmp_path, "https://ca.test/directory", None, {
        "clinic": {"domains": ["clinic.example"], "challenge": {"webroot": "/srv/www"}}})
    result = run_mamoru("status", "-c", str(config), check=0)
    assert "DANGER" not in result.stdout
    assert result.stderr == ""


def test_verified_follows_the_installed_serial(tmp_path: Path) -> None:
    storage = FileStorage(str(tmp_path / "state"), str(tmp_path / "live"))
    site = Site("web", ("web.example",), server=Server(type="nginx"))
    first = install_site(storage, "web", ["web.example"], NOW - DAY, NOW + 89 * DAY)
    succeeded(storage, "web", first, at=NOW - DAY, next_due=NOW + 59 * DAY, verified=True)
    assert site_status(site, storage, NOW).verified is True
    # a newer version went live but was never verified as served
    install_site(storage, "web", ["web.example"], NOW, NOW + 90 * DAY)
    row = site_status(site, storage, NOW)
    assert row.verified is False
    assert "installed, not verified" in render_table([row])
    # no web server configured: nothing to verify
    plain = site_status(Site("web", ("web.example",)), storage, NOW)
    assert plain.verified is None


@pytest.mark.parametrize(("lifetime_days", "left_days", "danger"), [
    (90, 16, False), (90, 14, True), (6, 1.1, False), (6, 0.9, True), (90, -1, True)])
def test_one_sixth_rule(tmp_path: Path, lifetime_days: float, left_days: float,
                        danger: bool) -> None:
    storage = FileStorage(str(tmp_path / "state"), str(tmp_path / "live"))
    not_after = NOW + dt.timedelta(days=left_days)
    install_site(storage, "s", ["s.example"], not_after - dt.timedelta(days=lifetime_days),
                 not_after)
    row = site_status(Site("s", ("s.example",)), storage, NOW)
    assert bool(row.danger) is danger, row.danger
    assert exit_code([row]) == (1 if danger else 0)


def test_days_left_is_computed_from_now() -> None:
    row = SiteStatus("x", [], not_after=NOW + dt.timedelta(hours=36), now=NOW)
    assert row.days_left == pytest.approx(1.5)


def test_an_interrupted_attempt_is_danger_too(tmp_path: Path) -> None:
    storage = FileStorage(str(tmp_path / "state"), str(tmp_path / "live"))
    version = install_site(storage, "s", ["s.example"], NOW - DAY, NOW + 89 * DAY)
    succeeded(storage, "s", version, at=NOW - DAY, next_due=NOW + 59 * DAY)
    state = storage.load_state("s").to_json()
    state.update(attempts=1, next_attempt=(NOW + DAY).isoformat(),
                 last_attempt={"time": NOW.isoformat(), "outcome": "interrupted",
                               "error_class": "Interrupted", "message": "never finished"})
    storage.save_state("s", SiteState.from_json(state))
    row = site_status(Site("s", ("s.example",)), storage, NOW)
    assert row.danger == ["last attempt interrupted: Interrupted"]
    assert "interrupted: Interrupted" in render_table([row])


@pytest.mark.parametrize(("lifetime_days", "why", "fraction"), [
    (90, "1/3 of the lifetime left", 1 / 3), (6, "1/2 of the lifetime left", 1 / 2)])
def test_a_certificate_without_a_schedule_follows_the_renewal_policy(
        tmp_path: Path, lifetime_days: int, why: str, fraction: float) -> None:
    """A certificate put in place by hand (no renewal recorded): the policy's lifetime rule,
    without jitter."""
    storage = FileStorage(str(tmp_path / "state"), str(tmp_path / "live"))
    lifetime = dt.timedelta(days=lifetime_days)
    not_before = NOW - dt.timedelta(hours=2)
    install_site(storage, "s", ["s.example"], not_before, not_before + lifetime)
    row = site_status(Site("s", ("s.example",)), storage, NOW)
    assert row.why == why
    assert row.next_renewal == not_before + lifetime - lifetime * fraction
