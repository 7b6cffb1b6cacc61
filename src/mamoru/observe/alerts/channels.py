"""What an alert says and how it travels: the `Alert` (its webhook payload, email subject and
text), the webhook signature, and the channels that deliver it once (email by SMTP submission,
webhook by HTTP POST). Retrying and threads are delivery.py's; deciding is rules.py's.

Webhook: `POST` of the JSON payload (see `Alert.payload`), `Content-Type: application/json`,
with `X-Mamoru-Signature: sha256=<hex HMAC-SHA256 of the raw body>` when a secret is set
(check it with `verify_signature`). Any 2xx answer is a delivery.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import smtplib
import socket
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any, Protocol
from urllib.parse import urlsplit

from mamoru.config.model import AlertSettings, EmailAlerts, WebhookAlerts
from mamoru.errors import MamoruError
from mamoru.i18n import translations
from mamoru.observe.events import iso, scrub
from mamoru.tlstrust import client_context

SIGNATURE_HEADER = "X-Mamoru-Signature"
PAYLOAD_VERSION = 1


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
    language: str = "en"  # of the person-readable words (alerts.language); never in the payload

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
        reminder = translations(self.language).gettext("reminder: ") if self.reminder else ""
        return f"[mamoru] {reminder}{self.summary}"

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
        lines += ["", translations(self.language).gettext(
            "Run `mamoru status` and `mamoru log --site SITE --failed` on the server for the "
            "whole story.")]
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
    """SMTP submission: implicit TLS (`tls`, port 465) or STARTTLS (port 587), verified against
    the system store or `ca_bundle`, and login when configured (the config loader refuses a
    login in the clear except to this machine); one message to every `to` address."""

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
            context = client_context(settings.ca_bundle)
            smtp: smtplib.SMTP
            if settings.tls:  # implicit TLS (SMTPS, port 465): verified from the first byte
                smtp = smtplib.SMTP_SSL(settings.host, settings.port, timeout=settings.timeout,
                                        context=context)
            else:
                smtp = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout)
            with smtp:
                smtp.ehlo()
                if settings.starttls:
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


@dataclass(frozen=True)
class Delivery:
    """One alert to send on one channel. `problem`, `stamp`, `previous`: the record entry to
    roll back if it cannot be delivered (problem None: nothing to roll back)."""

    alert: Alert
    channel: str
    problem: str | None = None
    stamp: str | None = None
    previous: str | None = None
