"""The collector (`mamoru fleet serve`) over real HTTPS against a real PostgreSQL: ingest is
idempotent, the clinic is the token's, bad input is a 4xx, bodies and rates are bounded,
`fleet status --json` keeps its contract, and the direct path's row-level security refuses a
clinic writing another's rows."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.fleet.conftest import snapshot
from tests.helpers import run_mamoru
from tests.servers.fleet import Collector
from tests.servers.postgres import Postgres

pytestmark = pytest.mark.e2e


def event(seq: int, kind: str = "renewed", site: str | None = "www",
          body: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "seq": seq, "time": "2026-12-01T00:00:00Z", "kind": kind,
            "site": site, "body": body or {"message": f"event {seq}"}, **extra}


def post(collector: Collector, token: str, payload: Any, raw: bytes | None = None
         ) -> tuple[int, Any]:
    status, body = collector.request(
        "POST", "/v1/report", raw if raw is not None else json.dumps(payload).encode(),
        {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode(errors="replace")


def count(database: str, sql: str = "SELECT count(*) FROM event", *params: Any) -> int:
    with psycopg.connect(database) as conn:
        row = conn.execute(sql, params).fetchone()
        assert row is not None
        return int(row[0])


def test_a_batch_sent_twice_is_stored_once_under_the_tokens_clinic(
        database: str, add_clinic: Callable[..., str],
        collectors: Callable[..., Collector]) -> None:
    token = add_clinic("tanaka-clinic")
    collector = collectors()
    batch = {"events": [event(1), event(2), event(3, "snapshot", body=snapshot("www"))]}
    assert post(collector, token, batch) == (200, {
        "ok": True, "clinic": "tanaka-clinic", "accepted": 3, "duplicates": 0, "through": 3})
    status, again = post(collector, token, batch)
    assert status == 200 and again["accepted"] == 0 and again["duplicates"] == 3
    assert count(database) == 3
    assert count(database, "SELECT count(*) FROM event e JOIN clinic c ON c.id = e.clinic_id "
                 "WHERE c.name = %s", "tanaka-clinic") == 3
    with psycopg.connect(database) as conn:
        stored = conn.execute("SELECT token_hash FROM clinic").fetchone()
    assert stored is not None and token.encode() not in bytes(stored[0])


def test_status_json_lists_clinics_with_their_sites(
        database: str, add_clinic: Callable[..., str],
        collectors: Callable[..., Collector]) -> None:
    token = add_clinic("tanaka-clinic")
    add_clinic("sato-dental")
    collector = collectors()
    post(collector, token, {"events": [
        event(1, "snapshot", body=snapshot("www")),
        event(2, "snapshot", site="booking", body=snapshot(
            "booking", consecutive_failures=2, last_attempt={
                "time": "2026-11-30T10:00:00Z", "outcome": "failed",
                "error_class": "AcmeProblem", "problem_type":
                "urn:ietf:params:acme:error:rateLimited", "detail": "too many certificates"}))]})
    result = run_mamoru("fleet", "status", "--json", env={"MAMORU_FLEET_DATABASE": database})
    assert result.returncode == 1, result.stderr  # a failing site is danger
    data = json.loads(result.stdout)
    clinics = {c["clinic"]: c for c in data["clinics"]}
    assert set(clinics) == {"tanaka-clinic", "sato-dental"}
    assert clinics["sato-dental"]["sites"] == [] and clinics["sato-dental"]["last_report"] is None
    sites = {s["site"]: s for s in clinics["tanaka-clinic"]["sites"]}
    for site in sites.values():
        assert {"site", "days_left", "not_after", "last_renewal", "failing_since",
                "last_report"} <= set(site)
    assert sites["www"]["failing_since"] is None and sites["www"]["days_left"] > 0
    assert sites["booking"]["failing_since"] == "2026-11-30T10:00:00Z"
    assert sites["booking"]["failure"] == "too many certificates"
    assert clinics["tanaka-clinic"]["sites"][0]["site"] == "booking"  # danger first
    failing = json.loads(run_mamoru("fleet", "status", "--json", "--failing", "--database",
                                    database).stdout)
    assert [(c["clinic"], [s["site"] for s in c["sites"]]) for c in failing["clinics"]] == [
        ("tanaka-clinic", ["booking"])]
    silent = json.loads(run_mamoru("fleet", "status", "--json", "--silent", "1h",
                                   "--database", database).stdout)
    assert [c["clinic"] for c in silent["clinics"]] == ["sato-dental"]
    table = run_mamoru("fleet", "status", "--database", database).stdout
    assert "booking" in table and "rateLimited" in table


def test_one_clinics_token_cannot_write_another_clinics_rows(
        database: str, add_clinic: Callable[..., str],
        collectors: Callable[..., Collector]) -> None:
    tanaka = add_clinic("tanaka-clinic")
    add_clinic("sato-dental")
    collector = collectors()
    status, body = post(collector, tanaka, {"clinic": "sato-dental", "events": [event(1)]})
    assert status == 403 and "tanaka-clinic" in body["error"]
    status, body = post(collector, tanaka, {"events": [event(1, clinic="sato-dental")]})
    assert status == 403
    assert count(database) == 0


def test_the_direct_path_role_inserts_only_its_own_clinics_rows(
        postgres: Postgres, database: str) -> None:
    tanaka = run_mamoru("fleet", "add-clinic", "tanaka-clinic", "--db-role", "--database",
                        database, check=0)
    run_mamoru("fleet", "add-clinic", "sato-dental", "--database", database, check=0)
    lines = dict(line.split(": ", 1) for line in tanaka.stderr.splitlines() if ": " in line)
    role, password = lines["database role"], lines["database password"]
    with psycopg.connect(database) as conn:
        ids = dict(conn.execute("SELECT name, id FROM clinic").fetchall())
    dbname = database.rsplit("/", 1)[1]
    insert = ("INSERT INTO event (clinic_id, event_id, seq, time, kind, site, body) "
              "VALUES (%s, %s, 1, now(), 'snapshot', 'www', %s)")
    with psycopg.connect(postgres.url(dbname, role, password), autocommit=True) as conn:
        conn.execute(insert, (ids["tanaka-clinic"], uuid.uuid4(),
                              json.dumps(snapshot("www"))))
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            conn.execute(insert, (ids["sato-dental"], uuid.uuid4(),
                                  json.dumps(snapshot("www"))))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM event")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE clinic SET last_report = NULL")
    assert count(database) == 1
    # the direct path's snapshot updated the site like the collector's would
    assert count(database, "SELECT count(*) FROM site WHERE clinic_id = %s",
                 ids["tanaka-clinic"]) == 1


MALFORMED = [
    (b"{not json", 400),
    (b"[]", 422),
    (b'{"events": {}}', 422),
    (b'{"events": [1]}', 422),
    (json.dumps({"events": [{"id": "x", "seq": 1}]}).encode(), 422),
    (json.dumps({"events": [dict(event(1), seq=-1)]}).encode(), 422),
    (json.dumps({"events": [dict(event(1), time="yesterday")]}).encode(), 422),
    (json.dumps({"events": [dict(event(1), kind="x" * 300)]}).encode(), 422),
    (json.dumps({"events": [dict(event(1), body=[1])]}).encode(), 422),
    (b"\xff\xfe", 400),
]


def test_malformed_input_is_a_4xx_with_a_reason_never_a_traceback(
        database: str, add_clinic: Callable[..., str],
        collectors: Callable[..., Collector]) -> None:
    token = add_clinic("tanaka-clinic")
    collector = collectors()
    for raw, status in MALFORMED:
        got, body = post(collector, token, None, raw)
        assert got == status and body["ok"] is False and body["error"], raw
    assert "Traceback" not in collector.log.read_text()
    assert count(database) == 0


def test_requests_are_authenticated_bounded_and_rate_limited(
        add_clinic: Callable[..., str], collectors: Callable[..., Collector]) -> None:
    token = add_clinic("tanaka-clinic")
    collector = collectors("--rate", "1")
    assert post(collector, "mamoru-fleet-not-a-token", {"events": []})[0] == 401
    assert collector.request("POST", "/v1/report", b"{}", {})[0] == 401
    page = collector.request("GET", "/clinic/tanaka-clinic", None)
    assert page[0] in (303, 200) and b"tanaka" not in page[1]  # strangers go to /login
    big = {"events": [event(i, body={"message": "x" * 2000}) for i in range(600)]}
    assert post(collector, token, big)[0] == 413
    many = {"events": [event(i) for i in range(1001)]}
    assert post(collector, token, many)[0] == 413
    statuses = [post(collector, token, {"events": []})[0] for _ in range(40)]
    assert 429 in statuses and statuses[0] == 200
    status, health = collector.get("/health")
    assert status == 200 and json.loads(health) == {"ok": True, "database": "ok"}


def test_the_collector_is_https_only(collectors: Callable[..., Collector]) -> None:
    import http.client

    collector = collectors()
    plain = http.client.HTTPConnection("127.0.0.1", collector.port, timeout=5)
    answered = None
    try:
        plain.request("GET", "/health")
        answered = plain.getresponse().status
    except (http.client.HTTPException, OSError):
        pass
    finally:
        plain.close()
    assert answered is None or answered >= 400
