"""SiteState: every transition, pure, and what survives the trip through state.json."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from mamoru.storage.sitestate import AriWindow, SiteState

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)


def roundtrip(state: SiteState) -> SiteState:
    """Through JSON text exactly as FileStorage writes and reads it."""
    return SiteState.from_json(json.loads(json.dumps(state.to_json(), sort_keys=True)))


def test_walk_through_every_transition() -> None:
    fresh = SiteState()
    assert (fresh.failing, fresh.next_run(), fresh.planned()) == (False, None, (None, False))

    skipped = fresh.skipped(due_at=NOW + 30 * 24 * 60 * MIN, next_check=NOW + 12 * 60 * MIN,
                            why="1/3 of the lifetime left", site_config="abc")
    assert skipped.next_run() == NOW + 12 * 60 * MIN and not skipped.failing
    assert roundtrip(skipped) == skipped

    started = skipped.started(NOW, 4242)
    assert started.in_flight is not None and started.in_flight.pid == 4242
    assert roundtrip(started) == started

    failed = started.failed(now=NOW, next_attempt=NOW + MIN, error_class="CAUnavailable",
                            message="down" * 1000, retryable=True,
                            problem={"detail": "503", "status": 503, "other": "dropped"},
                            site_config="abc")
    assert failed.attempts == 1 and failed.in_flight is None and failed.failing
    assert failed.next_run() == NOW + MIN == failed.backoff_until(NOW)
    assert failed.backoff_until(NOW + 2 * MIN) is None  # the retry time has come
    assert failed.planned() == (NOW + MIN, True)
    assert failed.last_attempt is not None
    assert failed.last_attempt.problem == {"detail": "503", "status": 503}
    assert len(failed.last_attempt.message or "") == 2000
    assert roundtrip(failed) == failed

    again = failed.started(NOW + MIN, 4243).failed(
        now=NOW + MIN, next_attempt=NOW + 3 * MIN, error_class="CAUnavailable",
        message="down", retryable=True, problem={}, site_config="abc")
    assert again.attempts == 2

    cancelled = again.started(NOW + 3 * MIN, 1).cancelled()
    assert cancelled.in_flight is None and cancelled.attempts == 2  # neither success nor failure

    interrupted = cancelled.started(NOW + 4 * MIN, 7).interrupted(
        now=NOW + 5 * MIN, next_attempt=NOW + 9 * MIN, message="never finished",
        site_config="abc")
    assert interrupted.attempts == 3 and interrupted.in_flight is None
    assert interrupted.last_attempt is not None
    assert (interrupted.last_attempt.outcome, interrupted.last_attempt.error_class) == (
        "interrupted", "Interrupted")

    window = AriWindow("0a", NOW, NOW + 60 * MIN, NOW + 360 * MIN, "https://ca.test/why", 0.25)
    with_ari = interrupted.with_ari(window)
    assert with_ari.ari_for("0a", NOW) == window
    assert with_ari.ari_for("0b", NOW) is None  # another certificate's window
    assert with_ari.ari_for("0a", NOW + 361 * MIN) is None  # past its Retry-After
    assert with_ari.ari_retry_after == NOW + 360 * MIN
    assert roundtrip(with_ari) == with_ari

    done = with_ari.succeeded(now=NOW + 10 * MIN, serial="0c", verified=True,
                              install_config="inst", due_at=NOW + 40 * 24 * 60 * MIN,
                              next_check=NOW + 12 * 60 * MIN, why="1/3 of the lifetime left",
                              site_config="abc")
    assert (done.attempts, done.next_attempt, done.ari, done.in_flight) == (0, None, None, None)
    assert done.installed is not None and done.installed.serial == "0c"
    assert done.installed.verified is True and done.installed.config == "inst"
    assert done.last_success == NOW + 10 * MIN and done.planned() == (done.next_due, False)
    assert roundtrip(done) == done

    back = done.failed(now=NOW, next_attempt=NOW + MIN, error_class="X", message="m",
                       retryable=False, problem={}, site_config="abc").skipped(
        due_at=NOW + 50 * MIN, next_check=NOW + 50 * MIN, why="w", site_config="abc")
    assert not back.failing and back.next_attempt is None  # a good check ends the failure
    assert back.last_attempt is not None and back.last_attempt.error_class == "X"  # history


def test_transitions_do_not_change_the_state_they_start_from() -> None:
    state = SiteState()
    state.started(NOW, 1)
    state.failed(now=NOW, next_attempt=NOW, error_class="X", message="m", retryable=True,
                 problem={}, site_config="c")
    assert state == SiteState()


def test_the_file_format_is_the_one_vendors_read() -> None:
    done = SiteState().succeeded(now=NOW, serial="0c", verified=None, install_config="i",
                                 due_at=NOW, next_check=NOW, why="w", site_config="c")
    data = done.to_json()
    assert data["attempts"] == 0 and data["next_attempt"] is None
    assert data["last_success"] == NOW.isoformat() and data["why"] == "w"
    assert data["last_attempt"] == {"time": NOW.isoformat(), "outcome": "ok", "serial": "0c"}
    assert data["installed"] == {"time": NOW.isoformat(), "serial": "0c", "verified": None,
                                 "config": "i"}


def test_damaged_fields_are_dropped_and_unknown_keys_kept() -> None:
    state = SiteState.from_json({
        "attempts": -3, "next_attempt": "garbage", "next_check": 17,
        "last_attempt": ["not", "a", "map"], "ari": {"serial": "0a", "start": "x"},
        "installed": "no", "in_flight": {"since": "never", "pid": "x"},
        "next_due": "2026-12-01T09:00:00",  # no offset: taken as UTC
        "future_key": {"kept": True},
    })
    assert state.attempts == 0 and state.next_attempt is None and state.next_check is None
    assert state.last_attempt is None and state.ari is None and state.installed is None
    assert state.in_flight is not None and state.in_flight.pid is None  # still a marker
    assert state.next_due == NOW
    assert state.to_json()["future_key"] == {"kept": True}
    assert SiteState.from_json([1, 2]) == SiteState()
    bad_pick = {"serial": "0a", "start": NOW.isoformat(), "end": NOW.isoformat(),
                "retry_after": NOW.isoformat(), "pick": 7}
    assert SiteState.from_json({"ari": bad_pick}).ari is None
    assert SiteState.from_json({"ari": {**bad_pick, "pick": True}}).ari is None
