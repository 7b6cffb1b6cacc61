"""The fleet at scale, on this machine: 1,000 clinics x 5 sites and a year of their events in
a real PostgreSQL (Debian's postgresql-15, started here as for the tests), then

- ingestion: events per second one `mamoru fleet serve` process stores, from clinics posting
  500-event batches over HTTPS (goal >= 2,000/s);
- `mamoru fleet status --failing` as a whole process (goal <= 0.5 s);
- the page's time to first byte, logged in (goal <= 0.5 s);
- the database's size per clinic-year.

A clinic-year of events is what a real daemon writes: a due check twice a day per site
(`skipped`), six renewals per site (started, ordered, issued, installed, verified, renewed),
a failure now and then, and a snapshot whenever a site changes.

    .venv/bin/python bench/fleet.py [--clinics 1000] [--sites 5] [--seconds 15] [--keep]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

import psycopg  # noqa: E402
from tests.servers.fleet import Collector  # noqa: E402
from tests.servers.postgres import Postgres  # noqa: E402

from mamoru.fleet.db import token_hash  # noqa: E402

MAMORU = [sys.executable, "-m", "mamoru.cli"]

GENERATE = """
INSERT INTO event (clinic_id, event_id, seq, time, kind, site, body, received)
SELECT c.id, gen_random_uuid(), row_number() OVER (PARTITION BY c.id ORDER BY t, s),
       t, k.kind, 'site' || s,
       jsonb_build_object('time', t, 'kind', k.kind, 'level', 'info', 'site', 'site' || s,
                          'message', k.message, 'next_due', t + interval '12 hours',
                          'why', '1/3 of the lifetime left'),
       t
  FROM clinic c
 CROSS JOIN generate_series(1, %(sites)s) s
 CROSS JOIN generate_series(now() - interval '365 days', now(), interval '12 hours') t
 CROSS JOIN LATERAL (SELECT * FROM (VALUES
       ('skipped', 'not due: 1/3 of the lifetime left at the next check', 0),
       ('renewed', 'renewed: the new certificate is served', 1),
       ('issued', 'issued a certificate valid for 90 days', 1),
       ('installed', 'installed and the web server reloaded', 1),
       ('verified', 'every name serves the new certificate', 1),
       ('started', 'ordering a certificate for the names', 1),
       ('ordered', 'order created at the CA', 1)) v(kind, message, renewal)
       WHERE v.renewal = 0 OR (extract(doy FROM t)::int + s) %% 60 = 0) k
 WHERE c.id BETWEEN %(first)s AND %(last)s
"""

SNAPSHOTS = """
INSERT INTO event (clinic_id, event_id, seq, time, kind, site, body)
SELECT c.id, gen_random_uuid(), 1000000 + s, now(), 'snapshot', 'site' || s,
       jsonb_build_object('site', 'site' || s,
         'names', jsonb_build_array('site' || s || '.example'),
         'not_before', now() - (c.id %% 80) * interval '1 day',
         'not_after', now() + (90 - c.id %% 80) * interval '1 day',
         'last_success', now() - (c.id %% 80) * interval '1 day',
         'next_renewal', now() + (60 - c.id %% 80) * interval '1 day',
         'consecutive_failures', CASE WHEN c.id %% 97 = 0 THEN 2 ELSE 0 END,
         'last_attempt', jsonb_build_object('time', now() - interval '3 hours',
            'outcome', CASE WHEN c.id %% 97 = 0 THEN 'failed' ELSE 'ok' END,
            'problem_type', 'urn:ietf:params:acme:error:unauthorized',
            'detail', 'Invalid response: 404'))
  FROM clinic c CROSS JOIN generate_series(1, %(sites)s) s
"""


def build_fleet(url: str, clinics: int, sites: int) -> dict[str, str]:
    tokens = {}
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.cursor() as cur:
            rows = []
            for i in range(clinics):
                token = f"mamoru-fleet-bench-{i}-{uuid.uuid4()}"
                tokens[f"clinic-{i:04d}"] = token
                rows.append((f"clinic-{i:04d}", token_hash(token)))
            cur.executemany("INSERT INTO clinic (name, token_hash, last_report) "
                            "VALUES (%s, %s, now())", rows)
        started = time.monotonic()
        step = 50
        for first in range(1, clinics + 1, step):
            conn.execute(GENERATE, {"sites": sites, "first": first, "last": first + step - 1})
        conn.execute(SNAPSHOTS, {"sites": sites})
        conn.execute("VACUUM ANALYZE")
        count = conn.execute("SELECT count(*) FROM event").fetchone()
        print(f"generated {count[0] if count else 0:,} events in "
              f"{time.monotonic() - started:.0f} s")
    return tokens


def ingest(collector: Collector, tokens: list[str], seconds: float, threads: int) -> float:
    context = ssl.create_default_context(cafile=str(collector.ca_pem))
    stored = [0] * threads
    stop = time.monotonic() + seconds

    def client(index: int) -> None:
        conn = http.client.HTTPSConnection("127.0.0.1", collector.port, context=context,
                                           timeout=30)
        token = tokens[index]
        seq = 0
        while time.monotonic() < stop:
            events = []
            for _ in range(500):
                seq += 1
                events.append({"id": str(uuid.uuid4()), "seq": seq,
                               "time": "2026-12-01T00:00:00Z", "kind": "skipped",
                               "site": "site1", "body": {
                                   "kind": "skipped", "site": "site1", "level": "info",
                                   "message": "not due: 1/3 of the lifetime left"}})
            body = json.dumps({"events": events})
            conn.request("POST", "/v1/report", body, {"Authorization": f"Bearer {token}",
                                                      "Content-Type": "application/json"})
            response = conn.getresponse()
            data = json.loads(response.read())
            if response.status == 200:
                stored[index] += data["accepted"]
            elif response.status != 429:
                raise RuntimeError(f"{response.status}: {data}")
        conn.close()

    started = time.monotonic()
    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(stored) / (time.monotonic() - started)


def status_time(url: str, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.monotonic()
        result = subprocess.run([*MAMORU, "fleet", "status", "--failing", "--json",
                                 "--database", url], capture_output=True, text=True)
        times.append(time.monotonic() - started)
        assert result.returncode in (0, 1), result.stderr
    print(f"  fleet status --failing lists "
          f"{len(json.loads(result.stdout)['clinics'])} clinics")
    return statistics.median(times)


def query_time(url: str, runs: int) -> float:
    """The same --failing query in this process (no interpreter start, no imports)."""
    from datetime import UTC, datetime

    from mamoru.fleet.query import Filters, fleet

    times = []
    with psycopg.connect(url) as conn:
        for _ in range(runs):
            started = time.monotonic()
            fleet(conn, datetime.now(UTC), Filters(failing=True))
            times.append(time.monotonic() - started)
        started = time.monotonic()
        everything = fleet(conn, datetime.now(UTC))
        whole = time.monotonic() - started
    print(f"  the whole fleet ({len(everything)} clinics) in {whole:.2f} s in-process")
    return statistics.median(times)


def page_ttfb(collector: Collector, user: str, password: str, runs: int) -> float:
    context = ssl.create_default_context(cafile=str(collector.ca_pem))
    conn = http.client.HTTPSConnection("127.0.0.1", collector.port, context=context)
    conn.request("POST", "/login", urllib.parse.urlencode({"name": user, "password": password}),
                 {"Content-Type": "application/x-www-form-urlencoded"})
    response = conn.getresponse()
    response.read()
    cookie = response.headers["Set-Cookie"].split(";")[0]
    times = []
    for _ in range(runs):
        started = time.monotonic()
        conn.request("GET", "/", headers={"Cookie": cookie})
        response = conn.getresponse()
        response.read(1)
        times.append(time.monotonic() - started)
        size = len(response.read()) + 1
        assert response.status == 200
    print(f"  the page is {size / 1024:.0f} KiB")
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clinics", type=int, default=1000)
    parser.add_argument("--sites", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the database directory")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="mamoru-bench-fleet-"))
    os.chmod(workdir, 0o755)
    postgres = Postgres(workdir / "pg").start()
    collector = None
    try:
        url = postgres.create_database("fleet")
        subprocess.run([*MAMORU, "fleet", "migrate", "--database", url], check=True)
        tokens = build_fleet(url, args.clinics, args.sites)
        with psycopg.connect(url) as conn:
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        per_clinic_year = (size[0] if size else 0) / args.clinics
        password = subprocess.run([*MAMORU, "fleet", "add-user", "bench", "--database", url],
                                  capture_output=True, text=True, check=True).stdout.strip()
        collector = Collector(workdir, url, "--rate", "1000").start()
        status = status_time(url, 5)
        query = query_time(url, 5)
        ttfb = page_ttfb(collector, "bench", password, 5)
        rate = ingest(collector, list(tokens.values())[:args.threads], args.seconds,
                      args.threads)
        print(f"clinics {args.clinics} x {args.sites} sites, a year of events")
        print(f"ingestion, one collector process: {rate:,.0f} events/s (goal >= 2,000)")
        print(f"fleet status --failing: {status:.2f} s as a whole process (goal <= 0.5), "
              f"its query {query * 1000:.0f} ms")
        print(f"page time to first byte: {ttfb:.2f} s (goal <= 0.5)")
        print(f"database size per clinic-year: {per_clinic_year / 1024 / 1024:.2f} MiB")
    finally:
        if collector is not None:
            collector.stop()
        postgres.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
