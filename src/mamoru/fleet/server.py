"""`mamoru fleet serve`: the collector clinics push to, and the page, on one HTTPS port.

Stateless (every replica behind a load balancer shares only the database): each request is
authenticated (a clinic's bearer token, or a page login's signed cookie; `/health` answers
only whether this replica and its database are up), request bodies and batches are bounded,
malformed input gets a 4xx with a one-line reason, each clinic is rate limited, and the
clinic is always the one its token names, never what the payload says. Ingest is idempotent:
an event id already stored is counted as a duplicate, so a clinic may resend a batch whose
answer it never saw."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from mamoru.fleet import page
from mamoru.fleet.db import token_hash
from mamoru.fleet.query import (
    HISTORY,
    Filters,
    fleet_query,
    fleet_rows,
    history_rows,
    parse_span,
)

log = logging.getLogger("mamoru.fleet")

MAX_BODY = 1024 * 1024  # bytes in one request
MAX_EVENTS = 1000  # events in one batch
MAX_FIELD = 255
SESSION_COOKIE = "mamoru_fleet"
SESSION_SECONDS = 12 * 3600


@dataclass
class ServeConfig:
    database: str
    max_body: int = MAX_BODY
    max_events: int = MAX_EVENTS
    rate: float = 5.0  # requests per second per clinic, sustained
    burst: float = 30.0
    pool_size: int = 8
    alerts: Any = None  # mamoru.fleet.alerts.FleetAlerts, when alerts are configured


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class _State:
    config: ServeConfig
    pool: AsyncConnectionPool | None = None
    buckets: dict[int, _Bucket] = field(default_factory=dict)
    clinics: dict[bytes, tuple[int, str, float]] = field(default_factory=dict)
    session_key: bytes = b""


class BadRequest(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


def _error(status: int, why: str, **headers: str) -> JSONResponse:
    return JSONResponse({"ok": False, "error": why}, status_code=status, headers=headers)


# --- clinics: authentication, limits, ingest ---------------------------------------------------


async def _clinic(state: _State, request: Request) -> tuple[int, str]:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise BadRequest(401, "a clinic token is required (Authorization: Bearer ...)")
    digest = token_hash(token)
    cached = state.clinics.get(digest)
    if cached is not None and cached[2] > time.monotonic():
        return cached[0], cached[1]
    async with _connection(state) as conn:
        row = await (await conn.execute("SELECT id, name FROM clinic WHERE token_hash = %s",
                                        (digest,))).fetchone()
    if row is None:
        raise BadRequest(401, "unknown clinic token")
    state.clinics[digest] = (int(row[0]), str(row[1]), time.monotonic() + 60)
    return int(row[0]), str(row[1])


def _allow(state: _State, clinic_id: int) -> float:
    """0 when the clinic may go on, else the seconds to wait (a token bucket per clinic)."""
    now = time.monotonic()
    config = state.config
    bucket = state.buckets.get(clinic_id)
    if bucket is None:
        bucket = state.buckets[clinic_id] = _Bucket(config.burst, now)
    bucket.tokens = min(config.burst, bucket.tokens + (now - bucket.at) * config.rate)
    bucket.at = now
    if bucket.tokens >= 1:
        bucket.tokens -= 1
        return 0.0
    return (1 - bucket.tokens) / config.rate


@contextlib.asynccontextmanager
async def _connection(state: _State) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    assert state.pool is not None
    try:
        async with state.pool.connection(timeout=5) as conn:
            yield conn
    except (PoolTimeout, psycopg.OperationalError) as error:
        log.warning("fleet database unavailable: %s", str(error).splitlines()[0:1])
        raise BadRequest(503, "the fleet database is unavailable; retry later") from None


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BadRequest(413, f"the request body is over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"the request body is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _text(record: dict[str, Any], key: str, *, required: bool) -> str | None:
    value = record.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_FIELD or "\x00" in value:
        raise BadRequest(422, f"each event needs {key!r} as a string of 1-{MAX_FIELD} "
                         "characters")
    return value


def parse_batch(raw: bytes, max_events: int, clinic: str) -> list[tuple[Any, ...]]:
    """The batch's events as rows (event_id, seq, time, kind, site, body); BadRequest for
    anything malformed (the whole batch is refused, so the clinic's outbox stays in order)."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(400, "the body is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("events"), list):
        raise BadRequest(422, 'the body must be {"events": [...]}')
    claimed = data.get("clinic")
    if claimed is not None and claimed != clinic:
        raise BadRequest(403, f"this token belongs to clinic {clinic!r}, not {claimed!r}")
    events = data["events"]
    if len(events) > max_events:
        raise BadRequest(413, f"at most {max_events} events per batch")
    rows = []
    for record in events:
        if not isinstance(record, dict):
            raise BadRequest(422, "each event must be a JSON object")
        if record.get("clinic") not in (None, clinic):
            raise BadRequest(403, f"this token belongs to clinic {clinic!r}, not "
                             f"{record.get('clinic')!r}")
        try:
            event_id = uuid.UUID(str(record.get("id")))
        except ValueError:
            raise BadRequest(422, "each event needs 'id', a UUID") from None
        seq = record.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 2**62:
            raise BadRequest(422, "each event needs 'seq', a non-negative integer")
        when_text = _text(record, "time", required=True)
        try:
            when = datetime.fromisoformat(str(when_text).replace("Z", "+00:00"))
        except ValueError:
            raise BadRequest(422, "each event needs 'time' in ISO 8601") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        kind = _text(record, "kind", required=True)
        site = _text(record, "site", required=False)
        body = record.get("body")
        if not isinstance(body, dict):
            raise BadRequest(422, "each event needs 'body', a JSON object")
        rows.append((event_id, seq, when, kind, site,
                     json.dumps(body, ensure_ascii=False).replace("\\u0000", "")))
    return rows


async def report(request: Request) -> Response:
    state: _State = request.app.state.fleet
    clinic_id, clinic = await _clinic(state, request)
    wait = _allow(state, clinic_id)
    if wait:
        return _error(429, "too many requests from this clinic", **{
            "Retry-After": str(max(1, round(wait)))})
    raw = await _body(request, state.config.max_body)
    rows = parse_batch(raw, state.config.max_events, clinic)
    async with _connection(state) as conn, conn.transaction():
        inserted = 0
        if rows:
            async with conn.cursor() as cur:
                await cur.execute(
                    "INSERT INTO event (clinic_id, event_id, seq, time, kind, site, body) "
                    "SELECT %s, u.* FROM unnest(%s::uuid[], %s::bigint[], %s::timestamptz[], "
                    "%s::text[], %s::text[], %s::jsonb[]) AS u ON CONFLICT DO NOTHING",
                    (clinic_id, *[list(column) for column in zip(*rows, strict=True)]))
                inserted = max(cur.rowcount, 0)
        await conn.execute("UPDATE clinic SET last_report = now(), silent_alerted = NULL "
                           "WHERE id = %s", (clinic_id,))
    return JSONResponse({"ok": True, "clinic": clinic, "accepted": inserted,
                         "duplicates": len(rows) - inserted,
                         "through": max((r[1] for r in rows), default=None)})


async def health(request: Request) -> Response:
    state: _State = request.app.state.fleet
    database = "ok"
    try:
        async with _connection(state) as conn:
            await conn.execute("SELECT 1")
    except BadRequest:
        database = "unavailable"
    ok = database == "ok"
    return JSONResponse({"ok": ok, "database": database}, status_code=200 if ok else 503)


# --- the page: login and views -----------------------------------------------------------------


def _sign(state: _State, value: str) -> str:
    return hmac.new(state.session_key, value.encode(), hashlib.sha256).hexdigest()


def _user(state: _State, request: Request) -> str | None:
    cookie = request.cookies.get(SESSION_COOKIE, "")
    name, _, rest = cookie.partition("|")
    expires, _, signature = rest.partition("|")
    if not (name and expires.isdigit() and signature):
        return None
    if not hmac.compare_digest(_sign(state, f"{name}|{expires}"), signature):
        return None
    return name if int(expires) > time.time() else None


async def login(request: Request) -> Response:
    from mamoru.fleet.db import check_password

    state: _State = request.app.state.fleet
    if request.method == "GET":
        return HTMLResponse(page.login_page(None))
    raw = await _body(request, 4096)
    from urllib.parse import parse_qs

    form = parse_qs(raw.decode(errors="replace"))
    name = (form.get("name") or [""])[0][:MAX_FIELD]
    password = (form.get("password") or [""])[0][:MAX_FIELD]
    async with _connection(state) as conn:
        row = await (await conn.execute("SELECT password_hash FROM fleet_user WHERE name = %s",
                                        (name,))).fetchone()
    good = row is not None and await asyncio.to_thread(check_password, password, str(row[0]))
    if not good:
        await asyncio.sleep(0.5)  # slows guessing; scrypt already costs the guesser
        return HTMLResponse(page.login_page("wrong name or password"), status_code=401)
    expires = str(int(time.time()) + SESSION_SECONDS)
    value = f"{name}|{expires}"
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(SESSION_COOKIE, f"{value}|{_sign(state, value)}",
                        max_age=SESSION_SECONDS, secure=True, httponly=True, samesite="strict")
    return response


async def logout(request: Request) -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


def _filters(request: Request) -> Filters:
    query = request.query_params
    try:
        expiring = parse_span(query["expiring"]) if query.get("expiring") else None
        silent = parse_span(query["silent"]) if query.get("silent") else None
    except ValueError as error:
        raise BadRequest(400, str(error)) from None
    return Filters(failing=query.get("failing") in ("1", "on", "true"), expiring=expiring,
                   silent=silent)


async def overview(request: Request) -> Response:
    state: _State = request.app.state.fleet
    user = _user(state, request)
    if user is None:
        return RedirectResponse("/login", status_code=303)
    filters = _filters(request)
    now = datetime.now(UTC)
    async with _connection(state) as conn:
        clinics = await _fetch(conn, now, filters)
    return HTMLResponse(page.overview(clinics, filters, user, now,
                                      everything=request.query_params.get("all") == "1"),
                        headers=page.SECURITY_HEADERS)


async def _fetch(conn: psycopg.AsyncConnection[Any], now: datetime, filters: Filters
                 ) -> list[dict[str, Any]]:
    sql, params = fleet_query(now, filters)
    return fleet_rows(await (await conn.execute(sql, params)).fetchall(), now)


async def clinic_page(request: Request) -> Response:
    state: _State = request.app.state.fleet
    user = _user(state, request)
    if user is None:
        return RedirectResponse("/login", status_code=303)
    name = request.path_params["name"]
    now = datetime.now(UTC)
    async with _connection(state) as conn:
        clinics = await _fetch(conn, now, Filters(clinic=name))
        events = history_rows(await (await conn.execute(HISTORY, (name, 200))).fetchall())
    if not clinics:
        return HTMLResponse(page.not_found(name), status_code=404)
    return HTMLResponse(page.clinic(clinics[0], events, user, now),
                        headers=page.SECURITY_HEADERS)


# --- the application ---------------------------------------------------------------------------


def build(config: ServeConfig) -> Starlette:
    state = _State(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.pool = AsyncConnectionPool(config.database, min_size=1, max_size=config.pool_size,
                                         open=False, timeout=5,
                                         kwargs={"connect_timeout": 5})
        await state.pool.open(wait=False)
        state.session_key = await _session_key(config.database)
        task = None
        if config.alerts is not None:
            task = asyncio.create_task(config.alerts.loop(config.database))
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await state.pool.close()

    async def bad(request: Request, error: Exception) -> Response:
        assert isinstance(error, BadRequest)
        return _error(error.status, error.why)

    async def failed(request: Request, error: Exception) -> Response:
        log.error("%s %s failed: %s: %s", request.method, request.url.path,
                  type(error).__name__, str(error).splitlines()[0:1])
        return _error(500, "the fleet server failed on this request; see its log")

    app = Starlette(routes=[
        Route("/v1/report", report, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST", "GET"]),
        Route("/", overview, methods=["GET"]),
        Route("/clinic/{name}", clinic_page, methods=["GET"]),
    ], exception_handlers={BadRequest: bad, Exception: failed}, lifespan=lifespan)
    app.state.fleet = state
    return app


async def _session_key(url: str) -> bytes:
    """The key that signs page logins, shared by every replica (made by `fleet migrate`)."""
    for attempt in range(60):
        try:
            async with await psycopg.AsyncConnection.connect(url, connect_timeout=5) as conn:
                row = await (await conn.execute(
                    "SELECT value FROM fleet_secret WHERE name = 'session'")).fetchone()
                if row is None:
                    raise SystemExit("the fleet database has no schema yet: run "
                                     "`mamoru fleet migrate --database URL` first")
                return bytes(row[0])
        except psycopg.OperationalError:
            if attempt == 59:
                raise
            await asyncio.sleep(1)
    raise AssertionError("unreachable")


def serve(config: ServeConfig, host: str, port: int, cert: str, key: str) -> None:
    import uvicorn

    uvicorn.run(build(config), host=host, port=port, ssl_certfile=cert, ssl_keyfile=key,
                log_level="warning", access_log=False, server_header=False,
                timeout_keep_alive=30, limit_concurrency=200, proxy_headers=False,
                h11_max_incomplete_event_size=16 * 1024)
