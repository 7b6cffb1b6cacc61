"""Alerts reach a real SMTP server (STARTTLS + AUTH) and a real webhook receiver: failure after
N attempts, expiry threshold, verify mismatch, recovery; no duplicates (also across processes),
reminders, signatures, retries with backoff, and never a stalled renewal."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import run_mamoru, write_config
from tests.servers.ports import free_port
from tests.servers.receivers import SmtpReceiver, WebhookReceiver
from tests.servers.sitestate import install_site

from mamoru.config import load_config
from mamoru.config.model import Settings
from mamoru.observe.alerts import AlertSink, expiry_threshold, sign, verify_signature
from mamoru.observe.events import Events
from mamoru.observe.sinks import MemorySink
from mamoru.storage import FileStorage
from mamoru.storage.sitestate import SiteState

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
DAY, HOUR = dt.timedelta(days=1), dt.timedelta(hours=1)
SECRET = "whsec-5d1f0c9a7b"
FAST = (0.05, 0.1, 0.2)


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[SmtpReceiver]:
    with SmtpReceiver(tmp_path / "smtp") as receiver:
        yield receiver


@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


def subject(mail: Any) -> str:
    """The Subject unfolded (a long one is folded across lines on the wire)."""
    return " ".join(str(mail["Subject"]).split())


def alert_config(tmp_path: Path, smtp: SmtpReceiver, webhook_url: str, *,
                 password: str | None = None, **alerts: Any) -> Path:
    (tmp_path / "smtp.pass").write_text((password or smtp.password) + "\n")
    (tmp_path / "smtp.pass").chmod(0o600)
    (tmp_path / "hook.secret").write_text(SECRET)
    (tmp_path / "hook.secret").chmod(0o600)
    return write_config(tmp_path, "https://ca.test/directory", None, {
        "clinic": {"domains": ["clinic.example", "www.clinic.example"],
                   "challenge": {"webroot": "/srv/www"}}},
        extra={"alerts": {
            "email": {"host": "127.0.0.1", "port": smtp.port, "from": "mamoru@clinic.example",
                      "to": ["support@vendor.example", "oncall@vendor.example"],
                      "starttls": True, "username": smtp.username,
                      "password_file": str(tmp_path / "smtp.pass"),
                      "ca_bundle": smtp.ca_bundle, "timeout": 5},
            "webhook": {"url": webhook_url, "secret_file": str(tmp_path / "hook.secret"),
                        "timeout": 5},
            **alerts}})


class Rig:
    """A site, an event bus with an injected clock, and an AlertSink (like one process)."""

    def __init__(self, settings: Settings, retry_delays: tuple[float, ...] = FAST) -> None:
        self.settings = settings
        self.storage = FileStorage(settings.paths.state, settings.paths.live)
        self.now = NOW
        self.memory = MemorySink()
        self.retry_delays = retry_delays
        self.events, self.sink = self.process()

    def process(self) -> tuple[Events, AlertSink]:
        """A fresh Events + AlertSink, as a new process (or a restart) would have."""
        events = Events([self.memory], clock=lambda: self.now)
        sink = AlertSink(self.settings.alerts, self.storage, events=events,
                         retry_delays=self.retry_delays)
        events.add(sink)
        return events, sink

    def restart(self) -> None:
        self.sink.close(5)
        self.events, self.sink = self.process()

    def emit(self, kind: str, **fields: Any) -> None:
        self.events.emit(kind, "clinic", fields.pop("message", f"{kind} happened"), **fields)
        assert self.sink.flush(10)


def failed(rig: Rig, attempt: int) -> None:
    rig.emit("failed", message="validating clinic.example: the CA answered connection: "
             "Fetching http://clinic.example/.well-known/acme-challenge/"
             "Xq3dfT5kz8YbVhU1rLwZp0aXcE4sN6mJ2oIiGyHtRqK9: Connection refused",
             error_class="ChallengeFailed", attempt=attempt,
             problem_type="urn:ietf:params:acme:error:connection",
             detail="127.0.0.1: Fetching http://clinic.example/.well-known/acme-challenge/"
                    "Xq3dfT5kz8YbVhU1rLwZp0aXcE4sN6mJ2oIiGyHtRqK9: Connection refused",
             names=["clinic.example", "www.clinic.example"],
             next_attempt=rig.now + 10 * dt.timedelta(minutes=1))


def test_failure_reminder_recovery_without_duplicates(tmp_path: Path, smtp: SmtpReceiver,
                                                      hook: WebhookReceiver) -> None:
    settings = load_config(str(alert_config(tmp_path, smtp, hook.url, after_failures=2)))
    rig = Rig(settings)
    install_site(rig.storage, "clinic", ["clinic.example", "www.clinic.example"], NOW - DAY,
                 NOW + 89 * DAY)

    rig.emit("due-check")  # healthy: nothing
    failed(rig, 1)  # below after_failures
    assert smtp.messages == [] and hook.requests == []

    failed(rig, 2)
    mails, posts = smtp.wait_for(1), hook.wait_for(1)
    assert len(mails) == 1 and len(posts) == 1
    rig.now += HOUR
    failed(rig, 3)  # same problem, within remind_hours: nothing new
    rig.restart()  # another process, or the daemon restarted: the record is on disk
    rig.now += HOUR
    failed(rig, 4)
    assert len(smtp.messages) == 1 and len(hook.requests) == 1

    mail = smtp.messages[0]
    assert subject(mail) == ("[mamoru] clinic: certificate renewal failing (ChallengeFailed, "
                               "attempt 2)")
    assert mail["X-Test-TLS"] == "yes"  # STARTTLS happened before AUTH and DATA
    assert smtp.logins == [("mamoru", True)]
    assert mail["X-Test-Envelope-To"] == "support@vendor.example, oncall@vendor.example"
    body = mail.get_content()
    assert "problem type: urn:ietf:params:acme:error:connection" in body
    assert "Connection refused" in body
    assert "Xq3dfT5kz8YbVhU1rLwZp0aXcE4sN6mJ2oIiGyHtRqK9" not in body  # token scrubbed

    post = hook.requests[0]
    assert post.headers["Content-Type"] == "application/json"
    assert verify_signature(post.body, post.headers["X-Mamoru-Signature"], SECRET)
    assert not verify_signature(post.body + b" ", post.headers["X-Mamoru-Signature"], SECRET)
    payload = post.json
    assert payload["version"] == 1 and payload["alert"] == "failing"
    assert payload["reminder"] is False
    assert payload["site"] == "clinic"
    assert payload["names"] == ["clinic.example", "www.clinic.example"]
    assert payload["error_class"] == "ChallengeFailed" and payload["attempt"] == 2
    assert payload["problem_type"] == "urn:ietf:params:acme:error:connection"
    assert "acme-challenge/[token]" in payload["detail"]
    assert payload["since"] == payload["time"] == NOW.isoformat().replace("+00:00", "Z")

    rig.now += 25 * HOUR  # the problem goes on past remind_hours: one reminder each
    failed(rig, 5)
    assert len(smtp.wait_for(2)) == 2 and len(hook.wait_for(2)) == 2
    assert hook.requests[1].json["reminder"] is True
    assert hook.requests[1].json["since"] == NOW.isoformat().replace("+00:00", "Z")
    assert subject(smtp.messages[1]).startswith("[mamoru] reminder: clinic:")

    rig.now += HOUR
    rig.emit("renewed", message="done in 2.1 s; next renewal 2027-01-01", serial="abc")
    assert len(smtp.wait_for(3)) == 3 and len(hook.wait_for(3)) == 3
    recovered = hook.requests[2].json
    assert recovered["alert"] == "recovered" and recovered["resolved"] == ["failing"]
    assert subject(smtp.messages[2]).startswith("[mamoru] clinic: recovered")
    rig.emit("renewed")  # nothing open any more
    rig.sink.close(5)
    assert len(smtp.messages) == 3 and len(hook.requests) == 3

    sent = [e for e in rig.memory.events if e.kind == "alert"]
    assert len(sent) == 6 and {e.get("channel") for e in sent} == {"email", "webhook"}
    log = json.dumps([e.to_json() for e in rig.memory.events])
    assert smtp.password not in log and SECRET not in log
    assert "url-secret-9c1d" not in log  # the hook URL's own token is never logged


def test_expiry_threshold_and_its_recovery(tmp_path: Path, smtp: SmtpReceiver,
                                           hook: WebhookReceiver) -> None:
    settings = load_config(str(alert_config(tmp_path, smtp, hook.url, days_left=7)))
    rig = Rig(settings)
    install_site(rig.storage, "clinic", ["clinic.example"], NOW - 80 * DAY, NOW + 10 * DAY)
    rig.emit("due-check")
    assert smtp.messages == [] and hook.requests == []  # 10 days left: above 7

    rig.now += 4 * DAY  # 6 days left
    rig.emit("due-check")
    rig.now += 12 * HOUR
    rig.emit("due-check")  # the next check: no duplicate
    assert len(smtp.wait_for(1)) == 1 and len(hook.wait_for(1)) == 1
    payload = hook.requests[0].json
    assert payload["alert"] == "expiring"
    assert payload["days_left"] == 6.0
    assert payload["not_after"] == (NOW + 10 * DAY).isoformat().replace("+00:00", "Z")
    assert "expires in 6.0 days" in subject(smtp.messages[0])

    install_site(rig.storage, "clinic", ["clinic.example"], rig.now, rig.now + 90 * DAY)
    rig.emit("renewed")
    rig.sink.close(5)
    assert len(hook.requests) == 2 and len(smtp.messages) == 2
    assert hook.requests[1].json["alert"] == "recovered"
    assert hook.requests[1].json["resolved"] == ["expiring"]


def test_expiry_threshold_scales_down_for_short_lived_certificates() -> None:
    assert expiry_threshold(7, dt.timedelta(days=90)) == dt.timedelta(days=7)
    assert expiry_threshold(20, dt.timedelta(days=90)) == dt.timedelta(days=15)
    assert expiry_threshold(7, dt.timedelta(hours=160)) == dt.timedelta(hours=160) / 6


def test_verify_mismatch_alerts_at_once(tmp_path: Path, smtp: SmtpReceiver,
                                        hook: WebhookReceiver) -> None:
    settings = load_config(str(alert_config(tmp_path, smtp, hook.url, after_failures=3)))
    rig = Rig(settings)
    install_site(rig.storage, "clinic", ["clinic.example"], NOW - DAY, NOW + 89 * DAY)
    rig.emit("verify-failed", message="www.clinic.example still serves serial 01",
             names=["www.clinic.example"])
    failed(rig, 1)  # the ChallengeFailed is below after_failures=3: no failing alert
    rig.emit("failed", error_class="VerifyFailed", attempt=1, names=["www.clinic.example"])
    rig.sink.close(5)
    assert [p.json["alert"] for p in hook.requests] == ["verify-failed"]
    assert len(smtp.messages) == 1
    assert "does not serve the new certificate" in subject(smtp.messages[0])


def test_browser_check_problem_alerts_once_and_recovers(tmp_path: Path, smtp: SmtpReceiver,
                                                        hook: WebhookReceiver) -> None:
    settings = load_config(str(alert_config(tmp_path, smtp, hook.url)))
    rig = Rig(settings)
    install_site(rig.storage, "clinic", ["clinic.example"], NOW - DAY, NOW + 89 * DAY)
    rig.emit("check", message="browser check: warning", worst="warning")
    for _ in range(2):  # the same problem twice: one alert
        rig.emit("check", message="browser check: problem — clinic.example http.redirect: "
                 "plain HTTP is served without a redirect", worst="problem")
    rig.emit("check", message="browser check: ok", worst="ok")
    rig.sink.close(5)
    assert [p.json["alert"] for p in hook.requests] == ["site-check", "recovered"]
    assert "without a redirect" in hook.requests[0].json["message"]
    assert len(smtp.messages) == 2


def test_stops_and_lock_waits_are_not_failures(tmp_path: Path, smtp: SmtpReceiver,
                                               hook: WebhookReceiver) -> None:
    settings = load_config(str(alert_config(tmp_path, smtp, hook.url)))
    rig = Rig(settings)
    install_site(rig.storage, "clinic", ["clinic.example"], NOW - DAY, NOW + 89 * DAY)
    rig.emit("failed", error_class="Cancelled", attempt=1)
    rig.emit("failed", error_class="LockBusy", attempt=2)
    rig.sink.close(5)
    assert smtp.messages == [] and hook.requests == []


def test_an_interrupted_attempt_counts_as_a_failure(tmp_path: Path, smtp: SmtpReceiver,
                                                    hook: WebhookReceiver) -> None:
    settings = load_config(str(alert_config(tmp_path, smtp, hook.url)))
    rig = Rig(settings)
    install_site(rig.storage, "clinic", ["clinic.example"], NOW - DAY, NOW + 89 * DAY)
    rig.storage.save_state("clinic", SiteState(attempts=1))  # recorded by the daemon at start
    rig.emit("backoff", error_class="Interrupted", why="backoff after an interrupted attempt")
    rig.sink.close(5)
    assert [p.json["alert"] for p in hook.requests] == ["failing"]
    assert hook.requests[0].json["error_class"] == "Interrupted"
    assert len(smtp.messages) == 1


def test_slow_webhook_never_stalls_the_emitter(tmp_path: Path, smtp: SmtpReceiver) -> None:
    with WebhookReceiver(delay=1.5) as slow:
        settings = load_config(str(alert_config(tmp_path, smtp, slow.url)))
        rig = Rig(settings)
        install_site(rig.storage, "clinic", ["clinic.example"], NOW - DAY, NOW + 89 * DAY)
        started = time.monotonic()
        rig.events.emit("failed", "clinic", "boom", error_class="ChallengeFailed", attempt=1)
        rig.events.emit("backoff", "clinic", "next attempt soon")
        assert time.monotonic() - started < 0.5  # queued, not sent, on the renewal's thread
        assert len(smtp.wait_for(1, timeout=10)) == 1  # email is not stuck behind the webhook
        rig.sink.close(10)
        assert len(slow.requests) == 1


def test_webhook_retried_with_backoff_then_delivered(tmp_path: Path, smtp: SmtpReceiver) -> None:
    with WebhookReceiver(statuses=[500, 503]) as flaky:
        settings = load_config(str(alert_config(tmp_path, smtp, flaky.url)))
        rig = Rig(settings)
        install_site(rig.storage, "clinic", ["clinic.example"], NOW - DAY, NOW + 89 * DAY)
        failed(rig, 1)
        rig.sink.close(5)
        assert flaky.attempts == 3 and len(flaky.requests) == 1
    sent = [e for e in rig.memory.events if e.kind == "alert" and e.get("channel") == "webhook"]
    assert [e.get("tries") for e in sent] == [3]


def test_undelivered_alert_is_sent_when_the_problem_is_next_seen(
        tmp_path: Path, smtp: SmtpReceiver) -> None:
    port = free_port()  # nothing listens here yet
    settings = load_config(str(alert_config(
        tmp_path, smtp, f"http://127.0.0.1:{port}/hook")))
    rig = Rig(settings, retry_delays=(0.05, 0.05))
    install_site(rig.storage, "clinic", ["clinic.example"], NOW - DAY, NOW + 89 * DAY)
    failed(rig, 1)
    failures = [e for e in rig.memory.events if e.kind == "alert-failed"]
    assert len(failures) == 1 and failures[0].get("channel") == "webhook"
    assert "could not reach the webhook at http://127.0.0.1:" in failures[0].message
    assert len(smtp.messages) == 1  # the other channel is unaffected

    receiver = WebhookReceiver()
    receiver.start()
    try:
        receiver_url = f"http://127.0.0.1:{receiver.port}/hook"
        settings = load_config(str(alert_config(tmp_path, smtp, receiver_url)))
        rig.settings = settings
        rig.restart()
        rig.now += HOUR
        failed(rig, 2)  # the same problem, seen again: webhook gets it now, email does not
        rig.sink.close(5)
        assert len(receiver.requests) == 1
        assert receiver.requests[0].json["reminder"] is False
        assert len(smtp.messages) == 1
    finally:
        receiver.stop()


def test_signature_format() -> None:
    body = b'{"alert": "test"}'
    assert sign(body, "k") == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert verify_signature(body, sign(body, "k"), "k")
    assert not verify_signature(body, None, "k")
    assert not verify_signature(body, sign(body, "other"), "k")


def test_alert_test_command(tmp_path: Path, smtp: SmtpReceiver, hook: WebhookReceiver) -> None:
    config = alert_config(tmp_path, smtp, hook.url)
    result = run_mamoru("alert-test", "-c", str(config), check=0)
    assert result.stdout.splitlines() == ["email: sent", "webhook: sent"]
    assert hook.requests[0].json["alert"] == "test"
    assert verify_signature(hook.requests[0].body, hook.requests[0].headers[
        "X-Mamoru-Signature"], SECRET)
    assert subject(smtp.messages[0]).startswith("[mamoru] test alert from mamoru on ")

    wrong = alert_config(tmp_path, smtp, hook.url, password="not-the-password")
    result = run_mamoru("alert-test", "-c", str(wrong), check=1)
    assert "email: FAILED: the mail server 127.0.0.1:" in result.stdout
    assert "refused the login for mamoru (535)" in result.stdout
    assert "webhook: sent" in result.stdout
    assert "not-the-password" not in result.stdout + result.stderr


def test_alert_test_without_channels_is_a_usage_error(tmp_path: Path) -> None:
    config = write_config(tmp_path, "https://ca.test/directory", None, {
        "clinic": {"domains": ["clinic.example"], "challenge": {"webroot": "/srv/www"}}})
    result = run_mamoru("alert-test", "-c", str(config), check=2)
    assert "no alert channel" in result.stderr


def test_email_over_implicit_tls(tmp_path: Path) -> None:
    """`tls: true` (port 465): TLS from the first byte, the login inside it."""
    with SmtpReceiver(tmp_path / "smtps", implicit_tls=True) as smtps, WebhookReceiver() as hook:
        config = alert_config(tmp_path, smtps, hook.url)
        text = config.read_text().replace("starttls: true", "tls: true")
        config.write_text(text)
        run_mamoru("alert-test", "-c", str(config), check=0)
        mail = smtps.wait_for(1)[0]
        assert mail["X-Test-TLS"] == "yes"
        assert smtps.logins == [(smtps.username, True)]


@pytest.mark.parametrize(("host", "accepted"), [("smtp.vendor.example", False),
                                                ("192.0.2.10", False), ("127.0.0.1", True),
                                                ("localhost", True), ("::1", True)])
def test_a_password_is_never_sent_in_the_clear_except_to_this_machine(
        tmp_path: Path, host: str, accepted: bool) -> None:
    (tmp_path / "smtp.pass").write_text("s3cret-smtp\n")
    (tmp_path / "smtp.pass").chmod(0o600)
    config = write_config(tmp_path, "https://ca.test/directory", None, {
        "clinic": {"domains": ["clinic.example"], "challenge": {"webroot": "/srv/www"}}},
        extra={"alerts": {"email": {
            "host": host, "port": 25, "from": "mamoru@clinic.example",
            "to": ["support@vendor.example"], "starttls": False, "username": "mamoru",
            "password_file": str(tmp_path / "smtp.pass")}}})
    result = run_mamoru("check-config", "-c", str(config), check=0 if accepted else 2)
    if not accepted:
        line = next(i for i, text in enumerate(config.read_text().splitlines(), 1)
                    if "starttls" in text)
        assert f"{config}:{line}: alerts.email.starttls: would send the SMTP password" in (
            result.stderr)
        assert "s3cret-smtp" not in result.stderr
    # both at once is a mistake too
    config.write_text(config.read_text().replace("starttls: false", "starttls: true\n"
                                                  "    tls: true"))
    run_mamoru("check-config", "-c", str(config), check=2)
