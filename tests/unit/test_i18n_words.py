"""Every event's words and every error's hint have Japanese, placeholders all filled; the
JSON-lines log keeps English while a terminal line and an alert speak their reader's language;
argparse's own words, provision's progress and an error with its hint, as golden outputs."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mamoru import errors, i18n
from mamoru.observe.messages import MESSAGES, WARNINGS, fallback, render

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "golden"
LEFTOVER = re.compile(r"\{[a-z_]*\}|%\(\w+\)[sr]")
JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")

# A value for every field an event's words are made of (as emitters pass them).
SAMPLE: dict[str, Any] = {
    "next_due": datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC), "why": "1/3 of the lifetime left",
    "attempt": 3, "due": True, "finalized": True, "serial": "0a1b2c",
    "not_after": "2030-03-01T00:00:00+00:00", "duration": 1.25,
    "ari_start": "2030-02-01T00:00:00Z", "ari_end": "2030-02-03T00:00:00Z",
    "error": "connection refused", "hint": errors.ChallengeFailed.hint, "worst": "problem",
    "reason": "superseded", "names": ["clinic.example", "www.clinic.example"],
    "seconds": 2.5, "account": "https://ca.example/acct/1", "version": 2, "server": "nginx",
    "command": "nginx -s reload", "address": "127.0.0.1:443", "error_class": "ReloadFailed",
    "status": "1 site", "signal": "SIGTERM", "summary": "clinic: expires soon",
    "alert": "expiring", "channel": "email", "path": "/var/lib/mamoru/key.pem", "mode": 0o644,
    "expected": 0o600, "profile": "classic", "note": "unknown key x", "settings": ["paths"],
    "old": ["clinic.example"], "file": "/etc/nginx/mamoru/clinic.conf",
}

# Kinds whose words branch on a field: every branch is rendered.
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("skipped", {"why": "backoff"}),
    ("skipped", {"attempt": 2, "why": "backoff"}),
    ("due-check", {"due": False}),
    ("dry-run", {"finalized": False}),
    ("failed", {"error_class": "Interrupted", "since": "2030-01-01T00:00:00Z"}),
    ("backoff", {"error_class": "Interrupted"}),
    ("revoked", {"replace": True}),
    ("check", {"findings": [{"name": "clinic.example", "check": "hsts", "message": "no"}]}),
    ("account", {"replaced": True, "previous": "https://ca.example/acct/0", "new_key": True}),
    ("account", {"replaced": True, "previous": "https://ca.example/acct/0"}),
    ("installed", {"files": ["/etc/nginx/mamoru/clinic.conf"]}),
    ("config-test", {"command": "nginx -t"}),
    ("rollback", {"kept_new": True, "reloaded": True}),
    ("rollback", {"restored_version": 1, "files_restored": True, "problems": ["x"]}),
    ("verify-failed", {"old": None, "other": [{"name": "a.example", "serial": "99"}]}),
    ("verify-failed", {"old": None, "unreachable": [{"name": "a.example", "error": "reset"}]}),
    ("verify-failed", {"old": None, "switching": True}),
    ("stopped", {"abandoned": ["clinic"]}),
    ("stopped", {"abandoned": ["clinic"], "grace": 30}),
    ("challenge", {"names": ["clinic.example"], "challenge_type": "dns-01"}),
    ("port80-up", {"file": "/etc/nginx/mamoru/clinic.conf", "served": True}),
    ("port80-up", {"file": "/etc/nginx/mamoru/clinic.conf", "served": False}),
    ("port80-up", {"file": "/etc/nginx/mamoru/clinic.conf"}),
    ("port80-down", {"reloaded": True, "problems": ["x"]}),
    *[("warning", {"warning": name}) for name in WARNINGS],
]


def cases() -> list[tuple[str, dict[str, Any]]]:
    plain = [(kind, {}) for kind in MESSAGES if kind != "warning"]
    return plain + VARIANTS


@pytest.mark.parametrize("kind,extra", cases(), ids=lambda case: str(case))
def test_every_event_kind_has_japanese_words(kind: str, extra: dict[str, Any]) -> None:
    fields = {key: value for key, value in {**SAMPLE, **extra}.items() if value is not None}
    english = render(kind, fields, "clinic")
    japanese = render(kind, fields, "clinic", lang="ja")
    assert english != fallback(kind, fields), f"{kind}: the sample fields do not fit"
    assert japanese != english, f"{kind}: no Japanese (add it to mamoru.po)"
    assert JAPANESE.search(japanese), japanese
    assert not LEFTOVER.search(japanese), japanese
    assert render(kind, fields, "clinic") == english  # asking for Japanese leaves no trace


def test_a_language_without_a_catalog_is_english() -> None:
    fields = {"serial": "0a", "not_after": "2030-03-01T00:00:00Z"}
    assert render("issued", fields, "c", lang="fr") == render("issued", fields, "c")
    assert render("issued", fields, "c", lang="en") == render("issued", fields, "c")


def _error_classes() -> list[type[errors.MamoruError]]:
    found: list[type[errors.MamoruError]] = []
    todo: list[type[errors.MamoruError]] = [errors.MamoruError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return [cls for cls in found if cls.__module__ == "mamoru.errors"]


def test_every_error_class_hint_has_japanese() -> None:
    with_hint = [cls for cls in _error_classes() if cls.hint]
    assert len(with_hint) >= 6  # ConfigError, CAUnavailable, RateLimited, ChallengeFailed, ...
    catalog = i18n.translations("ja")
    for cls in with_hint:
        japanese = catalog.gettext(cls.hint)
        assert japanese != cls.hint, f"{cls.__name__}.hint has no Japanese"
        assert JAPANESE.search(japanese) and not LEFTOVER.search(japanese), japanese


def test_the_log_keeps_english_the_terminal_speaks_japanese(tmp_path: Path) -> None:
    """The JSONL `message` is English whatever the locale (vendors parse it); the stderr line
    of the same event is in the language mamoru.i18n chose."""
    import json

    from mamoru.observe.events import Events
    from mamoru.observe.sinks import JsonlSink, StderrSink

    stream = io.StringIO()
    log = tmp_path / "events.jsonl"
    i18n.setup("ja")
    try:
        events = Events([JsonlSink(str(log)), StderrSink(stream, journald=False)])
        events.emit("failed", "clinic", error="connection refused",
                    error_class="ServerUnreachable", hint=errors.ServerUnreachable.hint)
    finally:
        i18n.setup("en")
    line = stream.getvalue()
    assert line.startswith("clinic: エラー: connection refused — Web サーバーを起動するか")
    logged = json.loads(log.read_text())
    assert logged["message"] == ("connection refused — " + errors.ServerUnreachable.hint)
    assert logged["kind"] == "failed"


def test_recovered_and_reminder_words_are_in_alerts_language() -> None:
    from mamoru.observe.alerts.rules import Seen, decide
    from mamoru.observe.events import Event

    now = datetime(2030, 1, 2, tzinfo=UTC)
    data: dict[str, Any] = {}
    failing = Event("failed", "clinic", "boom", {"error_class": "ChallengeFailed"}, time=now)
    from mamoru.observe.alerts.channels import Alert

    problem = Alert("failing", "clinic", "clinic: 更新に失敗", now)
    first = decide(data, failing, Seen({"failing": problem}, set()), ["email"],
                   timedelta(hours=1), "ja")
    assert not first[0].alert.reminder
    later = Event("failed", "clinic", "boom", {"error_class": "ChallengeFailed"},
                  time=now.replace(hour=5))
    again = decide(data, later, Seen({"failing": problem}, set()), ["email"],
                   timedelta(hours=1), "ja")
    assert again[0].alert.subject() == "[mamoru] 再通知: clinic: 更新に失敗"
    renewed = Event("renewed", "clinic", "done in 1.00 s; ...",
                    {"duration": 1.0, "next_due": "2030-02-01T00:00:00Z", "why": "ARI"},
                    time=now.replace(hour=6))
    gone = decide(data, renewed, Seen({}, {"failing"}), ["email"],
                  timedelta(hours=1), "ja")
    summary = gone[0].alert.summary
    expected = "clinic: 回復しました（failing は解決）— 1.00 秒で完了しました"  # noqa: RUF001
    assert summary.startswith(expected), summary
    assert gone[0].alert.kind == "recovered" and gone[0].alert.details["resolved"] == ["failing"]
    assert "サーバーで `mamoru status`" in gone[0].alert.text()
    english = decide({}, failing, Seen({"failing": problem}, set()), ["email"],
                     timedelta(hours=1))
    assert english[0].alert.language == "en"


# ---- golden outputs ---------------------------------------------------------------------------


def _run(lang: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "COLUMNS")}
    env["LANG"] = lang
    env["COLUMNS"] = "100"  # argparse wraps help to the terminal's width
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "mamoru.cli", *args], capture_output=True,
                          text=True, env=env, timeout=60)


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("MAMORU_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"differs from {path} (MAMORU_UPDATE_GOLDEN=1 rewrites)"


@pytest.mark.parametrize("lang,golden", [("ja_JP.UTF-8", "help.ja.txt"),
                                         ("xx_YY.UTF-8", "help.en.txt")])
def test_help_and_usage_error_golden(lang: str, golden: str) -> None:
    shown = []
    for args in (("--help",), ("provision", "--help"), ("check-dns", "--help"),
                 ("import-certbot", "--help"), ("revoke",), ("status", "--bogus")):
        result = _run(lang, *args)
        shown.append(f"$ mamoru {' '.join(args)}  # exit {result.returncode}\n"
                     + result.stdout + result.stderr)
    _golden(golden, "\n".join(shown))


def test_help_in_japanese_by_flag_whatever_the_locale() -> None:
    result = _run("C.UTF-8", "--lang", "ja", "init", "--help")
    assert result.stdout.startswith("使い方: mamoru init")
    assert "このヘルプを表示して終了する" in result.stdout


def _progress(lang: str) -> str:
    """What `mamoru provision` prints on stderr while it runs (the events it emits, in
    order), through the real StderrSink, then the error with its hint as main prints it."""
    from mamoru.observe.events import Events
    from mamoru.observe.sinks import StderrSink

    stream = io.StringIO()
    events = Events([StderrSink(stream, journald=False)],
                    clock=lambda: datetime(2030, 1, 1, tzinfo=UTC))
    i18n.setup(lang)
    try:
        site = "clinic"
        names = ["clinic.example", "www.clinic.example"]
        events.emit("account", None, account="https://ca.example/acct/7")
        events.emit("due-check", site, due=True, why="no certificate yet")
        events.emit("order", site, names=names)
        events.emit("challenge", site, names=names, challenge_type="http-01")
        events.emit("validated", site)
        events.emit("issued", site, serial="4f2a", not_after="2030-03-31T12:00:00Z")
        events.emit("installed", site, version=1, files=["/etc/nginx/mamoru/clinic.conf"])
        events.emit("config-test", site, server="nginx", command="nginx -t")
        events.emit("reloaded", site, server="nginx", command="nginx -s reload")
        events.emit("verified", site, serial="4f2a", address="127.0.0.1:443", duration=0.31)
        events.emit("provisioned", site, duration=4.2, next_due="2030-03-01T12:00:00Z",
                    why="1/3 of the lifetime left")
        events.emit("server-unreachable", "lab", server="nginx", address="127.0.0.1:8443")
        error = errors.ServerUnreachable("nothing answers at 127.0.0.1:8443")
        events.emit("failed", "lab", error=str(error), error_class=error.kind, hint=error.hint)
        events.emit("backoff", "lab", next_due="2030-01-01T00:05:00Z", why="attempt 1")
        hint = i18n._(error.hint)
        stream.write(f"mamoru: {error}\n  {hint}\n")
    finally:
        i18n.setup("en")
    return stream.getvalue()


@pytest.mark.parametrize("lang,golden", [("ja", "provision.ja.txt"), ("xx", "provision.en.txt")])
def test_provision_progress_golden(lang: str, golden: str) -> None:
    _golden(golden, _progress(lang))


def test_config_problems_are_said_in_japanese_with_their_place(tmp_path: Path) -> None:
    """check-config's per-problem words: FILE:LINE and the key as written, the words in the
    reader's language; str(problem) (what the log and tools see) stays English."""
    from mamoru.config.load import load_config_text
    from mamoru.config.yamlnodes import localized

    text = ("acme: {directory: 42, contact: [1], ca_bundle: /nonexistent/ca.pem}\n"
            f"paths: {{state: relative/dir, live: {tmp_path}/l, event_log: {tmp_path}/e}}\n"
            "renewal: {jitter_fraction: 7}\n"
            "sites: {}\nsurprise: 1\n")
    with pytest.raises(errors.ConfigError) as caught:
        load_config_text(text)
    problems = caught.value.problems
    assert len(problems) >= 3
    i18n.setup("ja")
    try:
        shown = [localized(problem) for problem in problems]
    finally:
        i18n.setup("en")
    english = [localized(problem) for problem in problems]
    assert english == [str(problem) for problem in problems]
    for problem, japanese in zip(problems, shown, strict=True):
        where = f"{problem.file}:{problem.line}: {problem.path}: "
        assert japanese.startswith(where), japanese
        assert japanese != str(problem) and JAPANESE.search(japanese), japanese
        assert not LEFTOVER.search(japanese), japanese


def test_mamoru_log_says_logged_events_again_in_japanese() -> None:
    """`mamoru log` reads the English JSONL and puts each known event into the reader's words;
    an event the table cannot word keeps its logged message."""
    from mamoru.observe.logquery import render_line

    logged = {"time": "2030-01-01T00:00:00Z", "kind": "issued", "level": "info",
              "site": "clinic", "message": "certificate 0a issued, valid until 2030-03-01 "
              "00:00 UTC", "serial": "0a", "not_after": "2030-03-01T00:00:00Z"}
    odd = {**logged, "kind": "issued", "serial": None, "message": "as logged"}
    assert render_line(logged).endswith("certificate 0a issued, valid until 2030-03-01 00:00 UTC")
    i18n.setup("ja")
    try:
        line = render_line(logged)
        kept = render_line({k: v for k, v in odd.items() if v is not None})
    finally:
        i18n.setup("en")
    assert line.endswith("証明書 0a が発行されました。有効期限は 2030-03-01 00:00 UTC です"), line
    assert " issued " in line  # the kind stays English
    assert kept.endswith("as logged")
