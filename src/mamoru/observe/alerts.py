"""Alerts by email and webhook, so a failing renewal reaches a person before a patient does.

When (decided from events, see `AlertSink.emit`):

=============  ===========================================================================
failing        a renewal attempt failed and it is the `alerts.after_failures`-th consecutive
               failure or later (a stop request, or another run holding the site's lock, is
               not a failure)
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
channel. The record lives on disk in `state/alerts.json` (under a lock), so the daemon, a
one-shot `mamoru renew` and a restart all share it and never send the same alert twice.

Delivery never slows a renewal: `emit` decides and queues in microseconds; each channel has
its own thread that sends, retrying with backoff (`retry_delays`). An alert that could not be
delivered is logged as an `alert-failed` event and its record is rolled back, so it is sent
when the problem is next seen. A delivered one is logged as an `alert` event.

Webhook: `POST` of the JSON payload (see `Alert.payload`), `Content-Type: application/json`,
with `X-Mamoru-Signature: sha256=<hex HMAC-SHA256 of the raw body>` when a secret is set
(check it with `verify_signature`). Any 2xx answer is a delivery.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import queue
import secrets
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any, Protocol
from urllib.parse import urlsplit

from mamoru.config.model import AlertSettings, EmailAlerts, WebhookAlerts
from mamoru.errors import MamoruError
from mamoru.observe.events import Event, Events, SinkState, iso, scrub
from mamoru.storage import FileStorage

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Mamoru-Signature"
PAYLOAD_VERSION = 1
DANGER_FRACTION = 1 / 6
# Seconds between delivery attempts of one alert on one channel (after the first try).
RETRY_DELAYS: tuple[float, ...] = (2.0, 10.0, 30.0, 120.0, 600.0)
SUCCESS_KINDS = frozenset({"renewed", "provisioned", "reinstalled"})
OWN_KINDS = frozenset({"alert", "alert-failed"})
# Not a failure of the site: the run was stopped on request, or another mamoru run holds it.
NOT_FAILURES = frozenset({"Cancelled", "LockBusy"})


class AlertDeliveryError(MamoruError):
    """A channel could not deliver an alert (the message never holds a password or secret)."""

    retryable = True


# --- the alert --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Alert:
    """One thing to tell a person. `kind`: failing | expiring | verify-failed | site-check |
    recovered | test."""

    kind: str
    site: str | None
    summary: str
    time: datetime
    reminder: bool = False
    since: datetime | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        """The webhook body (and the facts of the email): stable keys, times in ISO 8601 UTC."""
        out: dict[str, Any] = {
            "version": PAYLOAD_VERSION,
            "alert": self.kind,
            "reminder": self.reminder,
            "site": self.site,
            "summary": self.summary,
            "time": iso(self.time),
            "since": iso(self.since) if self.since else None,
            "host": socket.gethostname(),
        }
        for key, value in self.details.items():
            if key not in out and value is not None:
                out[key] = iso(value) if isinstance(value, datetime) else value
        clean: dict[str, Any] = scrub(out)
        return clean

    def body(self) -> bytes:
        return json.dumps(self.payload(), ensure_ascii=False, sort_keys=True).encode()

    def subject(self) -> str:
        return f"[mamoru] {'reminder: ' if self.reminder else ''}{self.summary}"

    def text(self) -> str:
        payload = self.payload()
        lines = [self.summary, ""]
        for key in ("site", "names", "alert", "since", "error_class", "problem_type", "detail",
                    "message", "attempt", "next_attempt", "serial", "not_after", "days_left",
                    "resolved", "host", "time"):
            value = payload.get(key)
            if value is None or value == []:
                continue
            if isinstance(value, list):
                value = ", ".join(str(v) for v in value)
            lines.append(f"{key.replace('_', ' ')}: {value}")
        lines += ["", "Run `mamoru status` and `mamoru log --site SITE --failed` on the server "
                  "for the whole story."]
        return "\n".join(lines) + "\n"


def sign(body: bytes, secret: str) -> str:
    """The X-Mamoru-Signature value for `body`: 'sha256=' + hex HMAC-SHA256."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str | None, secret: str) -> bool:
    """True when `header` is the signature of the raw `body` under `secret` (constant time)."""
    return bool(header) and hmac.compare_digest(sign(body, secret), str(header))


# --- channels ---------------------------------------------------------------------------------


class Channel(Protocol):
    name: str

    def send(self, alert: Alert) -> None:
        """Deliver `alert` once. Raises AlertDeliveryError. May block for its timeout."""


class EmailChannel:
    """SMTP submission: STARTTLS (verified against the system store or `ca_bundle`) and login
    when configured, one message to every `to` address."""

    name = "email"

    def __init__(self, settings: EmailAlerts) -> None:
        self.settings = settings

    def message(self, alert: Alert) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.settings.sender
        message["To"] = ", ".join(self.settings.to)
        message["Subject"] = alert.subject()
        message["Date"] = format_datetime(alert.time)
        message["Message-ID"] = make_msgid(domain=self.settings.sender.rpartition("@")[2]
                                           or None)
        message["X-Mamoru-Alert"] = alert.kind
        if alert.site:
            message["X-Mamoru-Site"] = alert.site
        message.set_content(alert.text())
        return message

    def send(self, alert: Alert) -> None:
        settings = self.settings
        where = f"{settings.host}:{settings.port}"
        try:
            with smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout) as smtp:
                smtp.ehlo()
                if settings.starttls:
                    context = ssl.create_default_context(cafile=settings.ca_bundle)
                    smtp.starttls(context=context)
                    smtp.ehlo()
                if settings.username:
                    password = settings.password.reveal() if settings.password else ""
                    smtp.login(settings.username, password)
                smtp.send_message(self.message(alert))
        except smtplib.SMTPAuthenticationError as error:
            raise AlertDeliveryError(f"the mail server {where} refused the login for "
                                     f"{settings.username} ({error.smtp_code})") from None
        except smtplib.SMTPResponseException as error:
            said = error.smtp_error.decode(errors="replace") if isinstance(
                error.smtp_error, bytes) else str(error.smtp_error)
            raise AlertDeliveryError(f"the mail server {where} answered {error.smtp_code} "
                                     f"{said[:200]}") from None
        except (smtplib.SMTPException, OSError) as error:
            raise AlertDeliveryError(f"could not send mail through {where}: "
                                     f"{type(error).__name__}: {error}"[:400]) from None


class WebhookChannel:
    """HTTP POST of the JSON payload, signed when a secret is set; any 2xx is a delivery."""

    name = "webhook"

    def __init__(self, settings: WebhookAlerts) -> None:
        self.settings = settings
        parts = urlsplit(settings.url)
        # Never log the path or query: hook URLs often carry their own secret token.
        self.where = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port
                                                             else "")

    def request(self, alert: Alert) -> tuple[bytes, dict[str, str]]:
        """The body and headers that `send` posts."""
        body = alert.body()
        headers = {"Content-Type": "application/json", "User-Agent": "mamoru-alerts",
                   "X-Mamoru-Alert": alert.kind,
                   "X-Mamoru-Delivery": secrets.token_hex(8)}
        if self.settings.secret is not None:
            headers[SIGNATURE_HEADER] = sign(body, self.settings.secret.reveal())
        return body, headers

    def send(self, alert: Alert) -> None:
        import requests

        body, headers = self.request(alert)
        try:
            response = requests.post(self.settings.url, data=body, headers=headers,
                                     timeout=self.settings.timeout,
                                     verify=self.settings.ca_bundle or True,
                                     allow_redirects=False)
        except requests.RequestException as error:
            raise AlertDeliveryError(f"could not reach the webhook at {self.where}: "
                                     f"{type(error).__name__}") from None
        if not 200 <= response.status_code < 300:
            raise AlertDeliveryError(f"the webhook at {self.where} answered "
                                     f"{response.status_code}")


def channels_for(settings: AlertSettings) -> list[Channel]:
    out: list[Channel] = []
    if settings.email is not None:
        out.append(EmailChannel(settings.email))
    if settings.webhook is not None:
        out.append(WebhookChannel(settings.webhook))
    return out


# --- deciding ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Seen:
    """What one event says about a site: problems present now, problems known gone."""

    problems: dict[str, Alert]
    resolved: set[str]


def expiry_threshold(days_left: float, lifetime: timedelta) -> timedelta:
    """Below this much time left, a certificate is alerted as expiring."""
    return min(timedelta(days=days_left), lifetime * DANGER_FRACTION)


def _left(delta: timedelta) -> str:
    days = delta.total_seconds() / 86400
    return f"{days:.1f} days" if days >= 1 else f"{delta.total_seconds() / 3600:.1f} hours"


@dataclass
class _Delivery:
    alert: Alert
    problem: str | None  # the dedupe key to roll back if delivery fails (None: nothing to)
    stamp: str | None
    previous: str | None


class AlertSink:
    """The alerting event sink (see the module docstring). `events` receives the sink's own
    `alert` / `alert-failed` records; `channels` default to those configured."""

    def __init__(self, settings: AlertSettings, storage: FileStorage, *,
                 events: Events | None = None, channels: Sequence[Channel] | None = None,
                 retry_delays: Sequence[float] = RETRY_DELAYS) -> None:
        self.settings = settings
        self.storage = storage
        self.events = events
        self.channels = list(channels if channels is not None else channels_for(settings))
        self.retry_delays = tuple(retry_delays)
        self.record = SinkState(os.path.join(storage.state_dir, "alerts.json"))
        self._cache: dict[str, Any] = {}
        self._cache_key: tuple[int, int, int] | None = None
        self._queues: dict[str, queue.Queue[_Delivery | None]] = {}
        self._workers: list[threading.Thread] = []
        self._closing = threading.Event()
        self._abort = threading.Event()
        self._deadline = float("inf")
        self._pending = 0
        self._idle = threading.Condition()
        for channel in self.channels:
            self._queues[channel.name] = queue.Queue()
            worker = threading.Thread(target=self._work, args=(channel,), daemon=True,
                                      name=f"alerts-{channel.name}")
            worker.start()
            self._workers.append(worker)

    # -- the sink --------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        if not self.channels or event.site is None or event.kind in OWN_KINDS:
            return
        seen = self._judge(event)
        if not seen.problems and not seen.resolved:
            return
        if not seen.problems and not self._has_open(event.site, seen.resolved):
            return  # the common case: a healthy site's event; no lock, no write
        deliveries = self.record.update(lambda data: self._decide(data, event, seen))
        for delivery, channel in deliveries:
            self._enqueue(channel, delivery)

    def _judge(self, event: Event) -> _Seen:
        site = str(event.site)
        problems: dict[str, Alert] = {}
        resolved: set[str] = set()
        error_class = event.get("error_class")
        if event.kind == "verify-failed" or (event.kind == "failed"
                                             and error_class == "VerifyFailed"):
            problems["verify-failed"] = Alert(
                "verify-failed", site, f"{site}: the web server does not serve the new "
                "certificate", event.time, details=self._facts(event))
        elif (event.kind == "failed" and error_class not in NOT_FAILURES) or (
                event.kind == "backoff" and error_class == "Interrupted"):
            # (an attempt the process never finished, found at the next start, counts too)
            attempt = event.get("attempt") or self.storage.load_state(site).attempts or 1
            if int(attempt) >= self.settings.after_failures:
                problems["failing"] = Alert(
                    "failing", site, f"{site}: certificate renewal failing ({error_class}, "
                    f"attempt {attempt})", event.time, details=self._facts(event))
        elif event.kind in SUCCESS_KINDS:
            resolved |= {"failing", "verify-failed"}
        elif event.kind == "check":
            if event.get("worst") == "problem":
                problems["site-check"] = Alert(
                    "site-check", site, f"{site}: patients' browsers see a problem: "
                    f"{event.message}", event.time, details=self._facts(event))
            else:
                resolved.add("site-check")
        version = self.storage.live(site)
        if version is not None:
            left = version.not_after - event.time
            threshold = expiry_threshold(self.settings.days_left,
                                         version.not_after - version.not_before)
            if left < threshold:
                what = "has expired" if left.total_seconds() <= 0 else f"expires in {_left(left)}"
                problems["expiring"] = Alert(
                    "expiring", site, f"{site}: certificate {what} "
                    f"({version.not_after:%Y-%m-%d %H:%M} UTC)", event.time,
                    details={**self._facts(event), "serial": version.meta.get("serial"),
                             "names": version.names, "not_after": version.not_after,
                             "days_left": round(left.total_seconds() / 86400, 2)})
            else:
                resolved.add("expiring")
        return _Seen(problems, resolved - set(problems))

    @staticmethod
    def _facts(event: Event) -> dict[str, Any]:
        keys = ("names", "error_class", "problem_type", "detail", "attempt", "next_attempt",
                "serial", "not_after")
        facts = {key: event.get(key) for key in keys if event.get(key) is not None}
        facts["message"] = event.message
        facts["event"] = event.kind
        return facts

    def _has_open(self, site: str, problems: set[str]) -> bool:
        """Is any of `problems` open for `site`? (Read without the lock: a hint that saves
        the locked write for the healthy sites' events; re-checked under the lock.)"""
        try:
            info = os.stat(self.record.path)
        except OSError:
            return False
        key = (info.st_ino, info.st_mtime_ns, info.st_size)
        if self._cache_key != key:
            self._cache, self._cache_key = self.record.read(), key
        sites = self._cache.get("sites") or {}
        open_ = sites.get(site) if isinstance(sites, dict) else None
        return isinstance(open_, dict) and bool(problems & set(open_))

    def _decide(self, data: dict[str, Any], event: Event, seen: _Seen
                ) -> list[tuple[_Delivery, Channel]]:
        """Under the record's lock: which alerts go out on which channel, and the record."""
        site = str(event.site)
        now = event.time
        remind = timedelta(hours=self.settings.remind_hours)
        record = data.setdefault("sites", {}).setdefault(site, {})
        out: list[tuple[_Delivery, Channel]] = []
        for problem, alert in seen.problems.items():
            entry = record.setdefault(problem, {"since": iso(now), "sent": {}})
            entry["last_seen"] = iso(now)
            since = _parse(entry.get("since")) or now
            for channel in self.channels:
                previous = entry["sent"].get(channel.name)
                last = _parse(previous)
                if last is not None and now - last < remind:
                    continue
                stamp = iso(now)
                entry["sent"][channel.name] = stamp
                reminded = Alert(alert.kind, alert.site, alert.summary, alert.time,
                                 reminder=last is not None, since=since, details=alert.details)
                out.append((_Delivery(reminded, problem, stamp, previous), channel))
        gone = [p for p in seen.resolved if p in record]
        if gone:
            alerted = [p for p in gone if record[p].get("sent")]
            for problem in gone:
                del record[problem]
            if alerted:
                facts = self._facts(event)
                facts["resolved"] = sorted(alerted)
                alert = Alert("recovered", site, f"{site}: recovered "
                              f"({', '.join(sorted(alerted))} resolved) — {event.message}",
                              now, details=facts)
                out += [(_Delivery(alert, None, None, None), channel)
                        for channel in self.channels]
        if not record:
            data["sites"].pop(site, None)
        return out

    # -- delivering ------------------------------------------------------------------------

    def _enqueue(self, channel: Channel, delivery: _Delivery) -> None:
        with self._idle:
            self._pending += 1
        self._queues[channel.name].put(delivery)

    def _work(self, channel: Channel) -> None:
        jobs = self._queues[channel.name]
        while True:
            delivery = jobs.get()
            if delivery is None:
                return
            try:
                if self._abort.is_set():
                    self._failed(channel, delivery, "mamoru stopped before it could be sent")
                else:
                    self._deliver(channel, delivery)
            except Exception:  # a bug here must not kill the channel's thread
                log.exception("alert delivery on %s failed", channel.name)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _deliver(self, channel: Channel, delivery: _Delivery) -> None:
        error: Exception | None = None
        for tries, delay in enumerate((0.0, *self.retry_delays), start=1):
            if delay:
                if self._closing.is_set() and time.monotonic() + delay > self._deadline:
                    break
                if self._abort.wait(delay):  # not time.sleep: close() can cut the wait short
                    break
            try:
                channel.send(delivery.alert)
            except AlertDeliveryError as failure:
                error = failure
                log.info("alert on %s, try %d: %s", channel.name, tries, failure)
                continue
            self._note("alert", delivery.alert, f"{delivery.alert.kind} alert sent by "
                       f"{channel.name}: {delivery.alert.summary}", channel=channel.name,
                       tries=tries, level=5)
            return
        self._failed(channel, delivery, str(error) if error else "gave up")

    def _failed(self, channel: Channel, delivery: _Delivery, why: str) -> None:
        if delivery.problem is not None and delivery.alert.site is not None:
            site, problem = delivery.alert.site, delivery.problem

            def roll_back(data: dict[str, Any]) -> None:
                entry = (data.get("sites") or {}).get(site, {}).get(problem)
                if entry and entry.get("sent", {}).get(channel.name) == delivery.stamp:
                    if delivery.previous is None:
                        entry["sent"].pop(channel.name, None)
                    else:
                        entry["sent"][channel.name] = delivery.previous

            try:
                self.record.update(roll_back)  # so it is sent when the problem is next seen
            except Exception as error:
                log.warning("could not update %s: %s", self.record.path, error)
        self._note("alert-failed", delivery.alert, f"could not send the {delivery.alert.kind} "
                   f"alert by {channel.name}: {why}", channel=channel.name)

    def _note(self, kind: str, alert: Alert, message: str, **fields: Any) -> None:
        if self.events is not None:
            self.events.emit(kind, alert.site, message, alert=alert.kind,
                             reminder=alert.reminder, **fields)

    def flush(self, timeout: float) -> bool:
        """Wait until every queued alert is delivered or given up; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (retrying only while `timeout` allows), then stop."""
        self._deadline = time.monotonic() + timeout
        self._closing.set()
        if not self.flush(timeout):
            self._abort.set()  # cut retry waits short; what is left is rolled back
            self.flush(2.0)
        for jobs in self._queues.values():
            jobs.put(None)
        for worker in self._workers:
            worker.join(1.0)

    # -- alert-test ------------------------------------------------------------------------

    def send_test(self, now: datetime | None = None) -> list[tuple[str, str | None]]:
        """Send a test alert through every channel now, once each, bypassing de-duplication.
        Returns (channel, error or None) per channel."""
        now = now or datetime.now(UTC)
        alert = Alert("test", None, f"test alert from mamoru on {socket.gethostname()}", now,
                      details={"message": "If you can read this, mamoru's alerts reach you."})
        results: list[tuple[str, str | None]] = []
        for channel in self.channels:
            try:
                channel.send(alert)
                results.append((channel.name, None))
            except AlertDeliveryError as error:
                results.append((channel.name, str(error)))
        return results


def _parse(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def build_alert_sink(settings: AlertSettings, storage: FileStorage, events: Events,
                     channel_factory: Callable[[AlertSettings], list[Channel]] = channels_for
                     ) -> AlertSink | None:
    """The alert sink for the configured channels, or None when none is configured."""
    channels = channel_factory(settings)
    if not channels:
        return None
    return AlertSink(settings, storage, events=events, channels=channels)
