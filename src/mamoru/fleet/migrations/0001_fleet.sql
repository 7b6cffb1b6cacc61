-- mamoru fleet schema, version 1: clinics, their events, each site's last known state, the
-- people who may read the page, and the alerts the vendor side has sent.

CREATE TABLE clinic (
    id             bigserial PRIMARY KEY,
    name           text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'),
    token_hash     bytea NOT NULL UNIQUE,          -- sha256 of the clinic's token; never the token
    db_role        text UNIQUE,                    -- the direct path's login role, if any
    created        timestamptz NOT NULL DEFAULT now(),
    last_report    timestamptz,                    -- last authenticated request or insert
    silent_alerted timestamptz                     -- the dead man's switch fired (NULL: not silent)
);

CREATE TABLE event (
    clinic_id bigint NOT NULL REFERENCES clinic (id) ON DELETE CASCADE,
    event_id  uuid NOT NULL,                       -- chosen by the clinic: ingest is idempotent
    seq       bigint NOT NULL,                     -- the clinic outbox's order
    time      timestamptz NOT NULL,
    kind      text NOT NULL,
    site      text,
    body      jsonb NOT NULL,
    received  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic_id, event_id)
);
CREATE INDEX event_history ON event (clinic_id, site, time DESC);

CREATE TABLE site (
    clinic_id            bigint NOT NULL REFERENCES clinic (id) ON DELETE CASCADE,
    site                 text NOT NULL,
    snapshot             jsonb NOT NULL,           -- what the clinic's `status --json` showed
    reported             timestamptz NOT NULL,
    not_before           timestamptz,
    not_after            timestamptz,
    last_renewal         timestamptz,
    next_renewal         timestamptz,
    consecutive_failures integer NOT NULL DEFAULT 0,
    failing_since        timestamptz,
    failure              text,                     -- the CA's problem detail, or the error
    problem_type         text,
    expiry_alerted       timestamptz,              -- the not_after an expiry alert was sent for
    failing_alerted      timestamptz,              -- the failing_since an alert was sent for
    PRIMARY KEY (clinic_id, site)
);
CREATE INDEX site_not_after ON site (not_after);
CREATE INDEX site_failing ON site (failing_since) WHERE failing_since IS NOT NULL;

CREATE TABLE fleet_user (
    name          text PRIMARY KEY,
    password_hash text NOT NULL,                   -- scrypt$n$r$p$salt$hash
    created       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE fleet_secret (
    name  text PRIMARY KEY,
    value bytea NOT NULL
);

CREATE TABLE fleet_alert (
    id      bigserial PRIMARY KEY,
    time    timestamptz NOT NULL DEFAULT now(),
    kind    text NOT NULL,                         -- silent | expiring | failing | digest
    clinics text[] NOT NULL,
    summary text NOT NULL,
    payload jsonb NOT NULL
);

-- Text to timestamp/integer, NULL when the clinic sent something else.
CREATE FUNCTION mamoru_ts(value text) RETURNS timestamptz LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN value::timestamptz;
EXCEPTION WHEN others THEN
    RETURN NULL;
END $$;

CREATE FUNCTION mamoru_int(value text) RETURNS integer LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN coalesce(value::integer, 0);
EXCEPTION WHEN others THEN
    RETURN 0;
END $$;

-- New events: the clinic is alive; snapshots update each site's last known state (newest
-- wins, whichever order batches arrive in). One statement-level pass per insert.
CREATE FUNCTION mamoru_event_inserted() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public AS $$
BEGIN
    UPDATE clinic c SET last_report = greatest(c.last_report, x.received), silent_alerted = NULL
      FROM (SELECT clinic_id, max(received) AS received FROM new_rows GROUP BY clinic_id) x
     WHERE c.id = x.clinic_id;
    INSERT INTO site AS s (clinic_id, site, snapshot, reported, not_before, not_after,
                           last_renewal, next_renewal, consecutive_failures, failing_since,
                           failure, problem_type)
    SELECT DISTINCT ON (n.clinic_id, n.site)
           n.clinic_id, n.site, n.body, n.time,
           mamoru_ts(n.body ->> 'not_before'), mamoru_ts(n.body ->> 'not_after'),
           mamoru_ts(n.body ->> 'last_success'), mamoru_ts(n.body ->> 'next_renewal'),
           mamoru_int(n.body ->> 'consecutive_failures'),
           CASE WHEN mamoru_int(n.body ->> 'consecutive_failures') > 0
                THEN coalesce(mamoru_ts(n.body -> 'last_attempt' ->> 'time'), n.time) END,
           CASE WHEN mamoru_int(n.body ->> 'consecutive_failures') > 0
                THEN left(coalesce(n.body -> 'last_attempt' ->> 'detail',
                                   n.body -> 'last_attempt' ->> 'message',
                                   n.body -> 'last_attempt' ->> 'error_class'), 1000) END,
           CASE WHEN mamoru_int(n.body ->> 'consecutive_failures') > 0
                THEN left(coalesce(n.body -> 'last_attempt' ->> 'problem_type',
                                   n.body -> 'last_attempt' ->> 'error_class'), 200) END
      FROM new_rows n
     WHERE n.kind = 'snapshot' AND n.site IS NOT NULL
     ORDER BY n.clinic_id, n.site, n.time DESC
    ON CONFLICT (clinic_id, site) DO UPDATE SET
           snapshot = excluded.snapshot, reported = excluded.reported,
           not_before = excluded.not_before, not_after = excluded.not_after,
           last_renewal = excluded.last_renewal, next_renewal = excluded.next_renewal,
           consecutive_failures = excluded.consecutive_failures,
           failing_since = CASE WHEN excluded.consecutive_failures > 0
                                THEN coalesce(s.failing_since, excluded.failing_since) END,
           failure = excluded.failure, problem_type = excluded.problem_type
     WHERE s.reported <= excluded.reported;
    RETURN NULL;
END $$;

CREATE TRIGGER event_inserted AFTER INSERT ON event REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION mamoru_event_inserted();

-- The direct path (a vendor with a VPN): each clinic's own login role is a member of
-- mamoru_clinic, which may only insert events, and row-level security lets it insert only
-- rows of the clinic whose db_role it logged in as.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mamoru_clinic') THEN
        CREATE ROLE mamoru_clinic NOLOGIN;
    END IF;
END $$;

CREATE FUNCTION mamoru_clinic_id() RETURNS bigint LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = public AS $$
    SELECT id FROM clinic WHERE db_role = session_user
$$;
REVOKE ALL ON FUNCTION mamoru_clinic_id() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION mamoru_clinic_id() TO mamoru_clinic;

ALTER TABLE event ENABLE ROW LEVEL SECURITY;
CREATE POLICY clinic_inserts_its_own ON event FOR INSERT TO mamoru_clinic
    WITH CHECK (clinic_id = mamoru_clinic_id());
GRANT USAGE ON SCHEMA public TO mamoru_clinic;
GRANT INSERT ON event TO mamoru_clinic;
