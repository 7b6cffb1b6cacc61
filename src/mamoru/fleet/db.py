"""The fleet database: connecting, migrations, clinics' tokens, the page's users.

Migrations are the files `migrations/NNNN_name.sql` shipped in the package, applied in order,
each in its own transaction, under an advisory lock (replicas starting at once apply each file
once); `fleet_schema` records what is applied."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

from mamoru.errors import MamoruError

DATABASE_ENV = "MAMORU_FLEET_DATABASE"
TOKEN_PREFIX = "mamoru-fleet-"  # noqa: S105 - a marker, not a secret
_MIGRATION = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_LOCK = 0x6D616D6F  # the advisory lock id migrations take ("mamo")
CLINIC_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class FleetError(MamoruError):
    """The fleet database or its input is not what a fleet command needs."""


def database_url(given: str | None) -> str:
    url = given or os.environ.get(DATABASE_ENV)
    if not url:
        raise FleetError(f"no fleet database: pass --database postgresql://... or set "
                         f"${DATABASE_ENV}")
    return url


def connect(url: str, **kwargs: Any) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(url, connect_timeout=10, **kwargs)
    except psycopg.OperationalError as error:
        raise FleetError(f"cannot connect to the fleet database: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# --- migrations -------------------------------------------------------------------------------


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every shipped migration, in order."""
    out = []
    for entry in resources.files("mamoru.fleet").joinpath("migrations").iterdir():
        match = _MIGRATION.match(entry.name)
        if match:
            out.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(out)


def migrate(url: str) -> list[str]:
    """Apply the migrations the database lacks; returns the names applied (maybe none)."""
    applied: list[str] = []
    with connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK,))
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS fleet_schema (version integer PRIMARY KEY,"
                         " name text NOT NULL, applied timestamptz NOT NULL DEFAULT now())")
            done = {row[0] for row in conn.execute("SELECT version FROM fleet_schema")}
            for version, name, sql in migrations():
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute(sql.encode())
                    conn.execute("INSERT INTO fleet_schema (version, name) VALUES (%s, %s)",
                                 (version, name))
                applied.append(name)
            conn.execute("INSERT INTO fleet_secret (name, value) VALUES ('session', %s) "
                         "ON CONFLICT (name) DO NOTHING", (secrets.token_bytes(32),))
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK,))
    return applied


def schema_version(conn: psycopg.Connection[Any]) -> int:
    try:
        row = conn.execute("SELECT max(version) FROM fleet_schema").fetchone()
    except psycopg.errors.UndefinedTable:
        return 0
    return int(row[0] or 0) if row else 0


# --- clinics ----------------------------------------------------------------------------------


def token_hash(token: str) -> bytes:
    """What the database keeps of a token (tokens are 256 random bits: a plain hash suffices)."""
    return hashlib.sha256(token.strip().encode()).digest()


@dataclass(frozen=True)
class NewClinic:
    name: str
    token: str
    db_role: str | None = None
    db_password: str | None = None


def add_clinic(url: str, name: str, *, db_role: bool = False) -> NewClinic:
    """Register clinic `name` with a new token (only its hash is stored). With `db_role`,
    also a login role for the direct path that may insert only this clinic's rows."""
    if not CLINIC_NAME.match(name):
        raise FleetError(f"{name!r} is not a clinic name: use letters, digits, '.', '_' and "
                         "'-' (at most 63, starting with a letter or digit)")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    role = password = None
    with connect(url) as conn:
        if schema_version(conn) == 0:
            raise FleetError("the fleet database has no schema yet: run `mamoru fleet migrate`")
        try:
            row = conn.execute("INSERT INTO clinic (name, token_hash) VALUES (%s, %s) "
                               "RETURNING id", (name, token_hash(token))).fetchone()
        except psycopg.errors.UniqueViolation:
            raise FleetError(f"clinic {name!r} is already registered") from None
        if db_role:
            assert row is not None
            role = f"mamoru_clinic_{row[0]}"
            password = secrets.token_urlsafe(24)
            ident = psycopg.sql.Identifier(role)
            conn.execute(psycopg.sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE "
                                         "mamoru_clinic").format(
                ident, psycopg.sql.Literal(password)))
            conn.execute("UPDATE clinic SET db_role = %s WHERE id = %s", (role, row[0]))
    return NewClinic(name, token, role, password)


# --- the page's users -------------------------------------------------------------------------


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    n, r, p = 2**14, 8, 1
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        again = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r),
                               p=int(p), dklen=len(bytes.fromhex(digest)))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(again.hex(), digest)


def add_user(url: str, name: str) -> str:
    """A login for the page; returns the new password (only its scrypt hash is stored)."""
    if not CLINIC_NAME.match(name):
        raise FleetError(f"{name!r} is not a user name: use letters, digits, '.', '_', '-'")
    password = secrets.token_urlsafe(15)
    with connect(url) as conn:
        conn.execute("INSERT INTO fleet_user (name, password_hash) VALUES (%s, %s) "
                     "ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash",
                     (name, hash_password(password)))
    return password
