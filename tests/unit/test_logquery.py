"""`mamoru log`: --since spans and dates, rotated files read in order, filters, output forms."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest
from tests.helpers import run_mamoru, write_config

from mamoru.observe.events import Events
from mamoru.observe.logquery import Query, Reader, log_files, parse_since, render_line
from mamoru.observe.sinks import JsonlSink

NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(("text", "expected"), [
    ("30m", NOW - dt.timedelta(minutes=30)),
    ("90s", NOW - dt.timedelta(seconds=90)),
    ("12h", NOW - dt.timedelta(hours=12)),
    ("7d", NOW - dt.timedelta(days=7)),
    ("2w", NOW - dt.timedelta(days=14)),
    ("1.5d", NOW - dt.timedelta(hours=36)),
    ("2026-11-01", dt.datetime(2026, 11, 1, tzinfo=dt.UTC)),
    ("2026-11-01T09:30", dt.datetime(2026, 11, 1, 9, 30, tzinfo=dt.UTC)),
    ("2026-11-01T09:30:00Z", dt.datetime(2026, 11, 1, 9, 30, tzinfo=dt.UTC)),
    ("2026-11-01T18:30:00+09:00", dt.datetime(2026, 11, 1, 9, 30, tzinfo=dt.UTC)),
])
def test_parse_since(text: str, expected: dt.datetime) -> None:
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "7 days", "-3d", "2026-13-01", ""])
def test_parse_since_refuses_with_a_hint(text: str) -> None:
    with pytest.raises(ValueError, match="30m, 12h, 7d"):
        parse_since(text, NOW)


def fill_log(path: Path, days: int = 10, keep: int = 20) -> None:
    """Two sites taking turns, one event per hour over `days` days; each fails once a day
    (clinic at 12:00, dental at 13:00). Small
    max_bytes, so the history spans several rotated files."""
    clock = {"now": NOW - dt.timedelta(days=days)}
    events = Events([JsonlSink(str(path), max_bytes=8000, keep=keep)],
                    clock=lambda: clock["now"])
    for hour in range(days * 24):
        clock["now"] = NOW - dt.timedelta(days=days) + dt.timedelta(hours=hour)
        site = "clinic" if hour % 2 == 0 else "dental"
        if hour % 24 in (12, 13):
            events.emit("failed", site, f"attempt at hour {hour} failed",
                        error_class="ChallengeFailed", detail=f"refused {hour}",
                        problem_type="urn:ietf:params:acme:error:connection", hour=hour)
        else:
            events.emit("due-check", site, f"not due (hour {hour})", hour=hour)


def test_reader_reads_rotated_files_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    fill_log(path)
    assert len(log_files(str(path))) > 3
    hours = [e["hour"] for e in Reader(str(path)).events()]
    assert hours == list(range(240))  # newest last, nothing missing
    failed = [e["hour"] for e in Reader(str(path)).events(Query(failed=True))]
    assert failed == sorted([12 + 24 * d for d in range(10)] + [13 + 24 * d for d in range(10)])
    dental = list(Reader(str(path)).events(Query(site="dental", failed=True)))
    assert [e["hour"] for e in dental] == [13 + 24 * d for d in range(10)]
    since = list(Reader(str(path)).events(Query(since=NOW - dt.timedelta(hours=5))))
    assert [e["hour"] for e in since] == [235, 236, 237, 238, 239]


def test_damaged_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"time": "2026-11-20T10:00:00Z", "kind": "a", "site": "s"}\n'
                    '{"time": "2026-11-20T10:0\n'  # a line torn by a full disk
                    '[1, 2]\n\n'
                    '{"time": "2026-11-20T11:00:00Z", "kind": "b", "site": "s"}\n')
    reader = Reader(str(path))
    assert [e["kind"] for e in reader.events()] == ["a", "b"]
    assert reader.skipped == 2


def test_render_line_shows_the_problem() -> None:
    line = render_line({"time": "2026-11-20T10:00:00.5Z", "kind": "failed", "level": "error",
                        "site": "clinic", "message": "validation failed",
                        "problem_type": "urn:ietf:params:acme:error:connection",
                        "detail": "connection refused"})
    assert line.startswith("2026-11-20 10:00:00  ERR   clinic")
    assert "urn:ietf:params:acme:error:connection" in line
    assert "connection refused" in line


def test_cli_log_table_json_failed_site_since(tmp_path: Path) -> None:
    config = write_config(tmp_path, "https://ca.test/directory", None, {
        "clinic": {"domains": ["clinic.example"], "challenge": {"webroot": "/srv/www"}},
        "dental": {"domains": ["dental.example"], "challenge": {"webroot": "/srv/www"}}})
    log = tmp_path / "log" / "events.jsonl"
    log.parent.mkdir()
    fill_log(log)
    # the rotated files' mtimes say "now"; make the oldest look old, to exercise the skip
    for name in log_files(str(log))[:-1]:
        os.utime(name, (NOW.timestamp() - 86400 * 9, NOW.timestamp() - 86400 * 9))

    table = run_mamoru("log", "-c", str(config), check=0).stdout.splitlines()
    assert len(table) == 240
    assert "not due (hour 0)" in table[0] and "not due (hour 239)" in table[-1]

    failed = run_mamoru("log", "--failed", "--json", "-c", str(config), check=0)
    rows = [json.loads(line) for line in failed.stdout.splitlines()]
    assert len(rows) == 20 and rows[0]["hour"] == 12 and rows[-1]["hour"] == 229
    assert all(r["kind"] == "failed" and r["detail"].startswith("refused") for r in rows)

    dental = run_mamoru("log", "--site", "dental", "--failed", "-c", str(config), check=0)
    assert len(dental.stdout.splitlines()) == 10
    assert all(" dental " in line and "refused" in line for line in dental.stdout.splitlines())

    # --since with an absolute time far after the touched-old rotated files: they're skipped
    recent = run_mamoru("log", "--since", (NOW - dt.timedelta(hours=2)).isoformat(), "--json",
                        "-c", str(config), check=0)
    assert [json.loads(x)["hour"] for x in recent.stdout.splitlines()] == [238, 239]

    bad = run_mamoru("log", "--since", "last tuesday", "-c", str(config), check=2)
    assert "30m, 12h, 7d" in bad.stderr


def test_cli_log_without_a_log_file_prints_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path, "https://ca.test/directory", None, {
        "clinic": {"domains": ["clinic.example"], "challenge": {"webroot": "/srv/www"}}})
    result = run_mamoru("log", "-c", str(config), check=0)
    assert result.stdout == ""
