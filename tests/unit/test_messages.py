"""observe/messages.py: every event kind is put into the same words as before, from the
fields its emitter passes; an unknown kind, a missing field or a damaged value still gives a
line (render never raises); the plural helper."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from mamoru.observe.events import Events
from mamoru.observe.messages import MESSAGES, WARNINGS, plural, render
from mamoru.observe.sinks import MemorySink

AT = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
LATER = dt.datetime(2030, 3, 4, 5, 6, 7, tzinfo=dt.UTC)

# kind -> (site, the fields its emitter passes, the text written at the call site before)
CASES: list[tuple[str, str | None, dict[str, Any], str]] = [
    ("port80-up", "clinic", {"server": "nginx", "file": "/etc/nginx/conf.d/mamoru-clinic.conf",
                             "address": "127.0.0.1:80", "served": True, "duration": 0.2},
     "no certificate yet: nginx now answers plain HTTP for the site's names with mamoru's "
     "temporary server (/etc/nginx/conf.d/mamoru-clinic.conf) so the CA can validate; it serves "
     "the webroot at 127.0.0.1:80"),
    ("port80-down", "clinic", {"server": "apache", "error_class": "ChallengeFailed",
                               "reloaded": True},
     "mamoru's temporary plain-HTTP server taken back after ChallengeFailed; apache reloaded "
     "again"),
    ("server-unreachable", "clinic", {"server": "nginx", "address": "127.0.0.1:443", "level": 4},
     "nothing answers at 127.0.0.1:443: the nginx server looks down, so it was not reloaded; "
     "it serves the new certificate when it starts"),
    ("account", None, {"account": "https://ca/acct/2", "previous": "https://ca/acct/1",
                       "why": "the CA does not know the account", "replaced": True,
                       "new_key": True},
     "the CA no longer knew ACME account https://ca/acct/1 (the CA does not know the account); "
     "registered a new account https://ca/acct/2 with a new key (the old key is kept aside)"),
    ("skipped", "clinic", {"next_due": LATER, "why": "backoff", "outcome": "skipped",
                           "attempt": 4},
     "backing off after 3 failed attempts; next attempt 2030-03-04 05:06:07 UTC"),
    ("skipped", "clinic", {"next_due": LATER, "why": "backoff", "outcome": "skipped",
                           "attempt": 2},
     "backing off after 1 failed attempt; next attempt 2030-03-04 05:06:07 UTC"),
    ("skipped", "clinic", {"next_due": LATER, "why": "1/3 of the lifetime left",
                           "outcome": "skipped", "serial": "ab12"},
     "certificate still good; next renewal 2030-03-04 05:06 UTC (1/3 of the lifetime left)"),
    ("due-check", "clinic", {"due": False, "why": "1/3 of the lifetime left", "rule": "lifetime",
                             "at": LATER, "names": ["a.example"], "attempt": 1},
     "not due: 1/3 of the lifetime left"),
    ("due-check", "clinic", {"due": True, "why": "no certificate yet", "rule": "missing",
                             "at": AT, "names": ["a.example"], "attempt": 1},
     "due: no certificate yet"),
    ("dry-run", "clinic", {"order": "https://ca/o/1", "finalized": True},
     "dry run: certificate obtained and discarded; nothing changed in live/"),
    ("dry-run", "clinic", {"order": "https://ca/o/1", "finalized": False},
     "dry run: every name validated; the order was not finalized, so no certificate was "
     "issued; nothing changed in live/"),
    ("issued", "clinic", {"serial": "ab12", "not_after": LATER, "names": ["a.example"],
                          "order": "https://ca/o/1", "version": 3, "duration": 1.234},
     "certificate ab12 issued, valid until 2030-03-04 05:06 UTC"),
    ("renewed", "clinic", {"serial": "ab12", "names": ["a.example"], "not_after": LATER,
                           "next_due": LATER, "why": "1/3 of the lifetime left", "attempt": 1,
                           "outcome": "renewed", "duration": 2.345, "verified": True},
     "done in 2.35 s; next renewal 2030-03-04 05:06 UTC (1/3 of the lifetime left)"),
    ("provisioned", "clinic", {"serial": "ab12", "next_due": LATER, "why": "x", "duration": 0.5},
     "done in 0.50 s; next renewal 2030-03-04 05:06 UTC (x)"),
    ("reinstalled", "clinic", {"serial": "ab12", "why": "the web server does not serve the "
                               "stored certificate", "next_due": LATER, "outcome": "reinstalled",
                               "verified": True, "duration": 0.1},
     "certificate ab12 put back in service (the web server does not serve the stored "
     "certificate); next renewal 2030-03-04 05:06 UTC"),
    ("ari", "clinic", {"ari_start": AT, "ari_end": LATER, "explanation_url": None,
                       "retry_after": AT},
     "CA renewal window 2030-01-02 03:04 to 2030-03-04 05:06 UTC"),
    ("failed", "clinic", {"error": "validating a.example: connection refused",
                          "hint": "Is port 80 open?", "error_class": "ChallengeFailed",
                          "retryable": True, "attempt": 2, "outcome": "failed"},
     "validating a.example: connection refused — Is port 80 open?"),
    ("failed", "clinic", {"error": "the CA said no", "error_class": "OrderFailed"},
     "the CA said no"),
    ("failed", "clinic", {"since": "2030-01-02T03:04:05+00:00", "error_class": "Interrupted",
                          "retryable": True, "next_attempt": LATER, "outcome": "failed"},
     "the attempt started at 2030-01-02T03:04:05+00:00 was interrupted (the process stopped "
     "mid-way); counted as a failed attempt"),
    ("backoff", "clinic", {"next_due": LATER, "why": "backoff after 2 consecutive failed "
                           "attempts", "attempt": 2, "error_class": "ChallengeFailed"},
     "next attempt 2030-03-04 05:06:07 UTC (backoff after 2 consecutive failed attempts)"),
    ("backoff", "clinic", {"next_due": LATER, "why": "backoff after an interrupted attempt",
                           "error_class": "Interrupted"},
     "next attempt 2030-03-04 05:06:07 UTC (after an interrupted attempt)"),
    ("check", "clinic", {"worst": "ok", "findings": [], "level": 6},
     "browser check: ok (every name: certificate, redirect, HSTS, mixed content)"),
    ("check", "clinic", {"worst": "problem", "level": 3, "findings": [
        {"name": "a.example", "check": "redirect", "status": "problem", "message": "no redirect",
         "fix": "f"},
        {"name": "b.example", "check": "hsts", "status": "warning", "message": "no HSTS",
         "fix": "f"}]},
     "browser check: problem — a.example redirect: no redirect; b.example hsts: no HSTS"),
    ("revoked", "clinic", {"serial": "ab12", "reason": "keyCompromise", "replace": True},
     "certificate ab12 revoked (keyCompromise); ordering a replacement now"),
    ("revoked", "clinic", {"serial": "ab12", "reason": "superseded", "replace": False},
     "certificate ab12 revoked (superseded); the site still serves it: run `mamoru provision "
     "clinic` for a new one"),
    ("order", "clinic", {"order": "https://ca/o/1", "names": ["a.example", "b.example"],
                         "replaces": None, "profile": None},
     "order created for a.example, b.example"),
    ("challenge", "clinic", {"names": ["a.example", "b.example"], "order": "https://ca/o/1"},
     "answered 2 http-01 challenges"),
    ("challenge", "clinic", {"names": ["a.example"], "order": "https://ca/o/1"},
     "answered 1 http-01 challenge"),
    ("challenge", "clinic", {"names": ["a.example", "*.a.example", "b.example"],
                             "challenge_type": "dns-01 and http-01", "order": "https://ca/o/1"},
     "answered 3 dns-01 and http-01 challenges"),
    ("dns-published", "clinic", {"names": ["a.example", "*.a.example"], "seconds": 0.25,
                                 "order": "https://ca/o/1"},
     "dns-01 records for 2 names seen on every authoritative nameserver after 0.2 s"),
    ("validated", "clinic", {"order": "https://ca/o/1"}, "the CA validated every name"),
    ("account", None, {"account": "https://ca/acct/7"}, "using ACME account https://ca/acct/7"),
    ("installed", "clinic", {"version": 3, "serial": "ab12", "previous": "aa01"},
     "live/clinic now points at version 0003"),
    ("installed", "clinic", {"version": 12, "serial": "ab12", "files": ["/etc/nginx/m.conf"],
                             "duration": 0.01},
     "live/clinic now points at version 0012; wrote /etc/nginx/m.conf"),
    ("config-test", "clinic", {"server": "nginx", "command": "nginx -t", "duration": 0.1},
     "nginx accepted the config (`nginx -t`)"),
    ("config-test", "clinic", {"server": "command", "duration": 0.0},
     "command accepted the config (no test command)"),
    ("reloaded", "clinic", {"server": "apache", "command": "apachectl graceful",
                            "duration": 0.2},
     "apache reloaded (`apachectl graceful`)"),
    ("verified", "clinic", {"names": ["a.example"], "serial": "ab12", "address": "127.0.0.1:443",
                            "duration": 0.123, "attempts": 1},
     "every name serves certificate ab12 at 127.0.0.1:443 (0.12 s after the reload)"),
    ("rollback", "clinic", {"error_class": "VerifyFailed", "restored": "aa01", "reloaded": True,
                            "restored_version": 2, "files_restored": True},
     "rolled back after VerifyFailed: live/clinic points at version 0002 again; the generated "
     "files are as before; server reloaded again"),
    ("rollback", "clinic", {"error_class": "ConfigTestFailed", "reloaded": False,
                            "problems": ["p1", "p2"], "level": 3},
     "rolled back after ConfigTestFailed: live/clinic removed (first install); problems: p1; "
     "p2"),
    ("rollback", "clinic", {"error_class": "ConfigTestFailed", "reloaded": False,
                            "kept_new": True, "restored_version": 2, "files_restored": True,
                            "problems": ["kept"]},
     "rolled back after ConfigTestFailed: live/clinic and the new files kept; problems: kept"),
    ("verify-failed", "clinic", {
        "names": ["a.example", "b.example", "c.example"], "address": "127.0.0.1:443",
        "duration": 5.04, "old": ["a.example"],
        "other": [{"name": "b.example", "serial": "77"}],
        "unreachable": [{"name": "c.example", "error": "timed out"}],
        "explanation": "nginx serves another file"},
     "after the reload, a.example still serve the previous certificate; b.example (serial 77) "
     "serve a certificate mamoru did not install; no certificate for c.example (timed out) at "
     "127.0.0.1:443 (checked for 5.0 s); the install was rolled back. nginx serves another "
     "file"),
    ("verify-failed", "clinic", {"names": ["a.example"], "address": "[::1]:443",
                                 "duration": 3.0, "switching": True, "old": ["a.example"]},
     "after the reload, a.example kept switching between the new and another certificate; "
     "a.example still serve the previous certificate at [::1]:443 (checked for 3.0 s); the "
     "install was rolled back"),
    ("warning", "clinic", {"warning": "key-mode", "path": "/live/clinic/privkey.pem",
                           "mode": 0o644, "expected": 0o600, "level": 4},
     "/live/clinic/privkey.pem has mode 644: others may read the private key (expected 600); "
     "run `chmod 600` on it"),
    ("warning", "clinic", {"warning": "no-profiles", "profile": "shortlived"},
     "the CA offers no profiles; ordering without profile 'shortlived'"),
    ("warning", "clinic", {"warning": "ari-unavailable", "error": "HTTP 500",
                           "error_class": "CAError"},
     "could not fetch the CA's renewal window (HTTP 500); using the lifetime rule"),
    ("warning", None, {"warning": "config", "note": "alerts.days_left is low"},
     "config: alerts.days_left is low"),
    ("warning", None, {"warning": "restart-needed", "settings": ["paths", "metrics"]},
     "config: changes to paths, metrics take effect at the next restart (`systemctl restart "
     "mamoru`)"),
    ("started", None, {"status": "3 sites, next renewal 2030-03-04", "sites": 3,
                       "config": "/etc/mamoru.yaml", "max_concurrent_orders": 2},
     "mamoru run: 3 sites, next renewal 2030-03-04"),
    ("stopping", None, {"signal": "SIGTERM"},
     "SIGTERM: stopping (in-flight work is cancelled safely)"),
    ("stopped", None, {}, "mamoru run stopped"),
    ("stopped", None, {"abandoned": ["a", "b"], "grace": 30.0},
     "mamoru run stopped; abandoned a, b after 30 s"),
    ("config-rejected", None, {"error": "line 3: bad", "problems": ["x"], "level": 3,
                               "config": "/etc/mamoru.yaml"},
     "config reload failed; still running the previous config: line 3: bad"),
    ("config-reloaded", None, {"summary": "added b", "config": "/etc/mamoru.yaml"},
     "config reloaded: added b"),
    ("alert", "clinic", {"alert": "failing", "reminder": False, "channel": "email", "tries": 1,
                         "summary": "clinic: certificate renewal failing", "level": 5},
     "failing alert sent by email: clinic: certificate renewal failing"),
    ("alert-failed", "clinic", {"alert": "expiring", "reminder": True, "channel": "webhook",
                                "error": "the webhook at https://h answered 500"},
     "could not send the expiring alert by webhook: the webhook at https://h answered 500"),
]


# The daemon's events about an attempt the process never finished: its start, not an error.
INTERRUPTED_NEEDS = {"failed": ("since",), "backoff": ("next_due",)}


@pytest.mark.parametrize(("kind", "site", "fields", "text"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_every_kind_renders_todays_words_from_its_fields(
        kind: str, site: str | None, fields: dict[str, Any], text: str) -> None:
    assert render(kind, fields, site=site) == text
    # the same words from the fields as the JSON-lines log keeps them (times as ISO text)
    logged = json.loads(json.dumps(fields, default=lambda when: when.isoformat()))
    assert render(kind, logged, site=site) == text


def test_every_kind_and_warning_in_the_table_is_exercised() -> None:
    kinds = {case[0] for case in CASES}
    assert set(MESSAGES) <= kinds, set(MESSAGES) - kinds
    warnings = {case[2]["warning"] for case in CASES if case[0] == "warning"}
    assert set(WARNINGS) <= warnings, set(WARNINGS) - warnings


def test_the_needed_fields_are_enough() -> None:
    """Each entry renders from its `needs` alone (not the fallback), and without any one of
    them it falls back rather than raising."""
    for kind, site, fields, _ in CASES:
        needs = MESSAGES[kind].needs
        if fields.get("error_class") == "Interrupted":  # the daemon's interrupted attempt
            needs = INTERRUPTED_NEEDS[kind]
        assert set(needs) <= set(fields), (kind, needs)
        fallback = render(kind, {}, site=site)
        for name in needs:
            without = {k: v for k, v in fields.items() if k != name}
            assert render(kind, without, site=site) != render(kind, fields, site=site), (
                kind, name)
        if needs:
            assert fallback == kind


@pytest.mark.parametrize(("kind", "fields"), [
    ("no-such-kind", {"x": 1, "when": AT, "names": ["a", "b"]}),
    ("issued", {"serial": "ab12"}),  # no not_after
    ("issued", {"serial": "ab12", "not_after": "not a time"}),
    ("installed", {"version": "three"}),
    ("verify-failed", {"names": ["a"], "address": "x", "duration": 1, "other": ["not a dict"]}),
    ("warning", {"warning": "no-such-warning", "note": "n"}),
    ("warning", {}),
    ("check", {"worst": "problem", "findings": "not a list"}),
    ("renewed", {"duration": None, "next_due": LATER, "why": "x"}),
    # an emitter not yet passing the new fields gets the fallback, never wrong words
    ("rollback", {"error_class": "ConfigTestFailed", "restored": "aa01", "reloaded": False}),
    ("verify-failed", {"names": ["a"], "address": "127.0.0.1:443", "duration": 1.0}),
])
def test_unknown_kinds_and_missing_or_damaged_fields_still_render(
        kind: str, fields: dict[str, Any]) -> None:
    text = render(kind, fields, site="clinic")
    assert text.startswith(kind)
    for key, value in fields.items():
        if isinstance(value, str) and value:
            assert f"{key}={value}" in text


def test_events_emit_renders_when_no_message_is_given_and_keeps_the_key() -> None:
    memory = MemorySink()
    events = Events([memory], clock=lambda: AT)
    event = events.emit("issued", "clinic", serial="ab12", not_after=LATER, names=["a.example"])
    assert event.message == "certificate ab12 issued, valid until 2030-03-04 05:06 UTC"
    line = event.to_json()
    assert line["message"] == event.message and line["serial"] == "ab12"
    # an explicit message still wins (emitters not yet converted)
    assert events.emit("issued", "clinic", "by hand", serial="ab12").message == "by hand"
    # the rendered words are scrubbed like any message
    token = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"
    failed = events.emit("failed", "clinic", error=f"GET /.well-known/acme-challenge/{token}",
                         error_class="ChallengeFailed")
    assert token not in failed.message and "acme-challenge/[token]" in failed.message


def test_plural() -> None:
    assert plural(1, "site") == "1 site"
    assert plural(0, "site") == "0 sites"
    assert plural(3, "failed attempt") == "3 failed attempts"
    assert plural(2, "child", "children") == "2 children"


def test_mamoru_writes_no_event_text_outside_the_table() -> None:
    """Every `.emit(kind, site, ...)` in src/ passes fields only: an event's words are
    written once, in observe/messages.py (so they can be translated), never at the call."""
    import ast
    from pathlib import Path

    src = Path(__file__).resolve().parents[2] / "src" / "mamoru"
    offenders = []
    calls = 0
    for path in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "emit" and node.args
                    and isinstance(node.args[0], ast.Constant)):
                calls += 1
                if len(node.args) > 2 or any(k.arg == "message" for k in node.keywords):
                    offenders.append(f"{path.relative_to(src)}:{node.lineno}")
    assert calls > 30  # the scan sees the emitters
    assert offenders == []
