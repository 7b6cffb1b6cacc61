"""Delivering off the critical path: one queue and one thread per channel.

Putting an alert in the queue takes microseconds, so a renewal never waits for a mail server.
Each channel's thread sends, retrying with backoff (`retry_delays`); `close` cuts the waits
short when the process has to go. What happens after a send (an `alert` event) or after giving
up (an `alert-failed` event and a rolled-back record) is the caller's, through `on_sent` and
`on_failed`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

from mamoru.observe.alerts.channels import AlertDeliveryError, Channel, Delivery

log = logging.getLogger(__name__)

# Seconds between delivery attempts of one alert on one channel (after the first try).
RETRY_DELAYS: tuple[float, ...] = (2.0, 10.0, 30.0, 120.0, 600.0)

Sent = Callable[[Channel, Delivery, int], None]  # channel, delivery, tries it took
Failed = Callable[[Channel, Delivery, str], None]  # channel, delivery, why


class Deliveries:
    """The channels' queues and threads (started at once, stopped by `close`)."""

    def __init__(self, channels: Sequence[Channel], on_sent: Sent, on_failed: Failed,
                 retry_delays: Sequence[float] = RETRY_DELAYS) -> None:
        self.channels = {channel.name: channel for channel in channels}
        self.on_sent = on_sent
        self.on_failed = on_failed
        self.retry_delays = tuple(retry_delays)
        self._queues: dict[str, queue.Queue[Delivery | None]] = {}
        self._workers: list[threading.Thread] = []
        self._closing = threading.Event()
        self._abort = threading.Event()
        self._deadline = float("inf")
        self._pending = 0
        self._idle = threading.Condition()
        for channel in channels:
            self._queues[channel.name] = queue.Queue()
            worker = threading.Thread(target=self._work, args=(channel,), daemon=True,
                                      name=f"alerts-{channel.name}")
            worker.start()
            self._workers.append(worker)

    def put(self, delivery: Delivery) -> None:
        """Queue `delivery` on its channel's thread (returns at once)."""
        with self._idle:
            self._pending += 1
        self._queues[delivery.channel].put(delivery)

    def _work(self, channel: Channel) -> None:
        jobs = self._queues[channel.name]
        while True:
            delivery = jobs.get()
            if delivery is None:
                return
            try:
                if self._abort.is_set():
                    self.on_failed(channel, delivery, "mamoru stopped before it could be sent")
                else:
                    self._deliver(channel, delivery)
            except Exception:  # a bug here must not kill the channel's thread
                log.exception("alert delivery on %s failed", channel.name)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _deliver(self, channel: Channel, delivery: Delivery) -> None:
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
            self.on_sent(channel, delivery, tries)
            return
        self.on_failed(channel, delivery, str(error) if error else "gave up")

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
