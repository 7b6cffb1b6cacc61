"""Alerts by email and webhook, so a failing renewal reaches a person before a patient does.

The parts: rules.py decides (which events and states raise, resolve and remind), record.py
keeps the de-duplication record on disk (`state/alerts.json`, shared by the daemon, one-shot
commands and restarts), delivery.py sends off the critical path (a queue and a thread per
channel, retries with backoff), channels.py says what an alert is and delivers it once (email,
signed webhook). `AlertSink` here joins them into an event sink; `build_alert_sink` makes one
for the configured channels.

Delivery never slows a renewal: `emit` decides and queues in microseconds. An alert that could
not be delivered is logged as an `alert-failed` event and its record is rolled back, so it is
sent when the problem is next seen. A delivered one is logged as an `alert` event.

May import: config, errors, storage, observe (events, sinks, danger). Nothing else.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from mamoru.config.model import AlertSettings
from mamoru.i18n import translations
from mamoru.observe.alerts.channels import (
    SIGNATURE_HEADER,
    Alert,
    AlertDeliveryError,
    Channel,
    Delivery,
    EmailChannel,
    WebhookChannel,
    channels_for,
    sign,
    verify_signature,
)
from mamoru.observe.alerts.delivery import RETRY_DELAYS, Deliveries
from mamoru.observe.alerts.record import AlertRecord
from mamoru.observe.alerts.rules import OWN_KINDS, decide, expiry_threshold, judge
from mamoru.observe.events import Event, Events
from mamoru.storage import FileStorage

__all__ = ["RETRY_DELAYS", "SIGNATURE_HEADER", "Alert", "AlertDeliveryError", "AlertSink",
           "Channel", "EmailChannel", "WebhookChannel", "build_alert_sink", "channels_for",
           "expiry_threshold", "sign", "verify_signature"]


def _failed_attempts(storage: FileStorage, site: str) -> int:
    """The one read of the site's renewal state: its consecutive failed attempts."""
    return storage.load_state(site).attempts


class AlertSink:
    """The alerting event sink. `events` receives the sink's own `alert` / `alert-failed`
    records; `channels` default to those configured."""

    def __init__(self, settings: AlertSettings, storage: FileStorage, *,
                 events: Events | None = None, channels: Sequence[Channel] | None = None,
                 retry_delays: Sequence[float] = RETRY_DELAYS) -> None:
        self.settings = settings
        self.storage = storage
        self.events = events
        self.channels = list(channels if channels is not None else channels_for(settings))
        self.record = AlertRecord(storage.state_dir)
        self.deliveries = Deliveries(self.channels, self._sent, self._failed, retry_delays)

    def emit(self, event: Event) -> None:
        if not self.channels or event.site is None or event.kind in OWN_KINDS:
            return
        site = event.site
        seen = judge(event, self.settings, self.storage.live(site),
                     lambda: _failed_attempts(self.storage, site))
        if not seen.problems and not seen.resolved:
            return
        if not seen.problems and not self.record.has_open(site, seen.resolved):
            return  # the common case: a healthy site's event; no lock, no write
        remind = timedelta(hours=self.settings.remind_hours)
        names = [channel.name for channel in self.channels]
        deliveries: list[Delivery] = self.record.update(
            lambda data: decide(data, event, seen, names, remind,
                                self.settings.language))
        for delivery in deliveries:
            self.deliveries.put(delivery)

    def _sent(self, channel: Channel, delivery: Delivery, tries: int) -> None:
        self._note("alert", delivery.alert, channel=channel.name, tries=tries,
                   summary=delivery.alert.summary, level=5)

    def _failed(self, channel: Channel, delivery: Delivery, why: str) -> None:
        if delivery.problem is not None and delivery.alert.site is not None:
            self.record.roll_back(delivery.alert.site, delivery.problem, channel.name,
                                  delivery.stamp, delivery.previous)
        self._note("alert-failed", delivery.alert, channel=channel.name, error=why)

    def _note(self, kind: str, alert: Alert, **fields: Any) -> None:
        if self.events is not None:
            self.events.emit(kind, alert.site, alert=alert.kind, reminder=alert.reminder,
                             **fields)

    def flush(self, timeout: float) -> bool:
        """Wait until every queued alert is delivered or given up; False on timeout."""
        return self.deliveries.flush(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (retrying only while `timeout` allows), then stop."""
        self.deliveries.close(timeout)

    def send_test(self, now: datetime | None = None) -> list[tuple[str, str | None]]:
        """Send a test alert through every channel now, once each, bypassing de-duplication.
        Returns (channel, error or None) per channel."""
        now = now or datetime.now(UTC)
        _ = translations(self.settings.language).gettext
        alert = Alert("test", None, _("test alert from mamoru on {host}").format(
                          host=socket.gethostname()), now,
                      details={"message": _("If you can read this, mamoru's alerts reach you.")},
                      language=self.settings.language)
        results: list[tuple[str, str | None]] = []
        for channel in self.channels:
            try:
                channel.send(alert)
                results.append((channel.name, None))
            except AlertDeliveryError as error:
                results.append((channel.name, str(error)))
        return results


def build_alert_sink(settings: AlertSettings, storage: FileStorage, events: Events,
                     channel_factory: Callable[[AlertSettings], list[Channel]] = channels_for
                     ) -> AlertSink | None:
    """The alert sink for the configured channels, or None when none is configured."""
    channels = channel_factory(settings)
    if not channels:
        return None
    return AlertSink(settings, storage, events=events, channels=channels)
