"""Deciding: which events and states raise an alert, which resolve one, and when to remind.

=============  ===========================================================================
failing        a renewal attempt failed and it is the `alerts.after_failures`-th consecutive
               failure or later (a stop request, or another run holding the site's lock, is
               not a failure: see observe/danger.py)
expiring       the live certificate has fewer than `alerts.days_left` days left, or, for
               certificates too short-lived for that (under 6 x days_left), under 1/6 of
               its lifetime: the point where `mamoru status` calls a site in danger
verify-failed  the web server did not serve the new certificate (a `verify-failed` event,
               or a failed attempt whose error class is VerifyFailed)
site-check     the browser's-eye check after an install found a problem a patient would see
               (a `check` event whose worst finding is a problem: wrong chain, no redirect,
               mixed content...); resolved by a later check without problems
recovered      a problem that was alerted is gone (a certificate was renewed and served,
               or the one in place is no longer close to expiry)
=============  ===========================================================================

De-duplication: one alert per problem and site, and a reminder at most every
`alerts.remind_hours` while the problem is still seen (each retry, each daily check), per
channel, decided against the record (record.py) while its lock is held.

Pure: the event, the settings and what storage says about the site come in; alerts to send
and the changed record go out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from mamoru.clock import parse_time
from mamoru.config.model import AlertSettings
from mamoru.i18n import translations
from mamoru.observe.alerts.channels import Alert, Delivery
from mamoru.observe.alerts.record import Record, drop_if_empty, site_entries
from mamoru.observe.danger import danger_threshold, is_failure
from mamoru.observe.events import Event, iso, scrub
from mamoru.observe.messages import MESSAGES, render
from mamoru.storage import CertVersion

SUCCESS_KINDS = frozenset({"renewed", "provisioned", "reinstalled"})
OWN_KINDS = frozenset({"alert", "alert-failed"})  # the alerts' own records of sending


@dataclass(frozen=True)
class Seen:
    """What one event says about a site: problems present now, problems known gone."""

    problems: dict[str, Alert]
    resolved: set[str]


def expiry_threshold(days_left: float, lifetime: timedelta) -> timedelta:
    """Below this much time left, a certificate is alerted as expiring."""
    return min(timedelta(days=days_left), danger_threshold(lifetime))


def _left(delta: timedelta, _: Callable[[str], str] = str) -> str:
    days = delta.total_seconds() / 86400
    if days >= 1:
        return _("{n} days").format(n=f"{days:.1f}")
    return _("{n} hours").format(n=f"{delta.total_seconds() / 3600:.1f}")


def facts(event: Event) -> dict[str, Any]:
    """What an alert tells of the event that raised it."""
    keys = ("names", "error_class", "problem_type", "detail", "attempt", "next_attempt",
            "serial", "not_after")
    out = {key: event.get(key) for key in keys if event.get(key) is not None}
    out["message"] = event.message
    out["event"] = event.kind
    return out


def words(event: Event, language: str) -> str:
    """The event's text for the alert's reader (the event's own `message` is English)."""
    if language == "en" or event.kind not in MESSAGES:
        return event.message
    text: str = scrub(render(event.kind, event.fields, site=event.site, lang=language))
    return text


def judge(event: Event, settings: AlertSettings, live: CertVersion | None,
          attempts: Callable[[], int]) -> Seen:
    """The problems `event` shows for its site and those it shows gone. `live`: the site's
    live certificate; `attempts()`: its consecutive failed attempts (asked only when the event
    does not say)."""
    site = str(event.site)
    problems: dict[str, Alert] = {}
    resolved: set[str] = set()
    error_class = event.get("error_class")
    _ = translations(settings.language).gettext  # the alert's reader, not the daemon's locale
    if event.kind == "verify-failed" or (event.kind == "failed"
                                         and error_class == "VerifyFailed"):
        problems["verify-failed"] = Alert(
            "verify-failed", site, _("{site}: the web server does not serve the new "
                                     "certificate").format(site=site),
            event.time, details=facts(event))
    elif (event.kind == "failed" and is_failure(error_class)) or (
            event.kind == "backoff" and error_class == "Interrupted"):
        # (an attempt the process never finished, found at the next start, counts too)
        attempt = event.get("attempt") or attempts() or 1
        if int(attempt) >= settings.after_failures:
            problems["failing"] = Alert(
                "failing", site, _("{site}: certificate renewal failing ({error}, attempt "
                                   "{attempt})").format(site=site, error=error_class,
                                                        attempt=attempt),
                event.time, details=facts(event))
    elif event.kind in SUCCESS_KINDS:
        resolved |= {"failing", "verify-failed"}
    elif event.kind == "check":
        if event.get("worst") == "problem":
            problems["site-check"] = Alert(
                "site-check", site, _("{site}: patients' browsers see a problem: "
                                      "{message}").format(site=site,
                                                          message=words(event, settings.language)),
                event.time, details=facts(event))
        else:
            resolved.add("site-check")
    if live is not None:
        left = live.not_after - event.time
        if left < expiry_threshold(settings.days_left, live.not_after - live.not_before):
            when = f"{live.not_after:%Y-%m-%d %H:%M}"
            summary = (_("{site}: certificate has expired ({when} UTC)")
                       if left.total_seconds() <= 0 else
                       _("{site}: certificate expires in {left} ({when} UTC)"))
            problems["expiring"] = Alert(
                "expiring", site, summary.format(site=site, left=_left(left, _), when=when),
                event.time,
                details={**facts(event), "serial": live.meta.get("serial"),
                         "names": live.names, "not_after": live.not_after,
                         "days_left": round(left.total_seconds() / 86400, 2)})
        else:
            resolved.add("expiring")
    return Seen(problems, resolved - set(problems))


def decide(data: Record, event: Event, seen: Seen, channels: Sequence[str],
           remind: timedelta, language: str = "en") -> list[Delivery]:
    """Under the record's lock: which alerts go out on which channel; updates `data` (open
    problems, when each was last seen and sent, problems gone). `language`: the alerts'
    (alerts.language), for the words of the recovered alert."""
    site = str(event.site)
    now = event.time
    record = site_entries(data, site)
    out: list[Delivery] = []
    for problem, alert in seen.problems.items():
        entry = record.setdefault(problem, {"since": iso(now), "sent": {}})
        entry["last_seen"] = iso(now)
        since = parse_time(entry.get("since")) or now
        for channel in channels:
            previous = entry["sent"].get(channel)
            last = parse_time(previous)
            if last is not None and now - last < remind:
                continue
            stamp = iso(now)
            entry["sent"][channel] = stamp
            reminded = Alert(alert.kind, alert.site, alert.summary, alert.time,
                             reminder=last is not None, since=since, details=alert.details,
                             language=language)
            out.append(Delivery(reminded, channel, problem, stamp, previous))
    gone = [p for p in seen.resolved if p in record]
    if gone:
        alerted = sorted(p for p in gone if record[p].get("sent"))
        for problem in gone:
            del record[problem]
        if alerted:
            details = facts(event)
            details["resolved"] = alerted
            _ = translations(language).gettext
            summary = _("{site}: recovered ({problems} resolved) — {message}").format(
                site=site, problems=", ".join(alerted), message=words(event, language))
            alert = Alert("recovered", site, summary, now, details=details, language=language)
            out += [Delivery(alert, channel) for channel in channels]
    drop_if_empty(data, site)
    return out
