"""Renewal visibility end to end against a real Pebble: a provision, then a failed renewal
(the challenge cannot be reached), seen through `mamoru log`, `mamoru status`, a real SMTP
server and webhook receiver, the metrics textfile and HTTP endpoint; then the recovery."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from mamoru.app import build_app
from mamoru.config import load_config
from mamoru.observe.metrics import MetricsSink
from tests.helpers import run_mamoru, write_config
from tests.servers.pebble import Pebble
from tests.servers.ports import free_port
from tests.servers.receivers import SmtpReceiver, WebhookReceiver
from tests.servers.webroot_http import WebrootServer

pytestmark = pytest.mark.e2e

EAB_HMAC = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"
HOOK_SECRET = "whsec-e2e-31c9"
CONNECTION = "urn:ietf:params:acme:error:connection"


def not_after_samples(text: str) -> dict[tuple[str, str], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "mamoru_certificate_not_after_timestamp_seconds":
                found[(sample.labels["site"], sample.labels["name"])] = sample.value
    return found


def secret_file(path: Path, text: str) -> str:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return str(path)


def test_failed_renewal_is_logged_shown_alerted_and_measured(
        tmp_path: Path, pebble_factory: Callable[..., Pebble]) -> None:
    pebble = pebble_factory(eab_keys={"kid-1": EAB_HMAC})
    webroot = tmp_path / "webroot"
    names = ["clinic.example", "www.clinic.example"]
    textfile = tmp_path / "prom" / "mamoru.prom"
    textfile.parent.mkdir()
    metrics_port = free_port()
    with SmtpReceiver(tmp_path / "smtp") as smtp, WebhookReceiver() as hook:
        config = write_config(
            tmp_path, pebble.directory_url, pebble.ca_bundle,
            {"clinic": {"domains": names, "challenge": {"webroot": str(webroot)}}},
            acme={"eab": {"kid": "kid-1",
                          "hmac_key_file": secret_file(tmp_path / "eab.key", EAB_HMAC)}},
            extra={
                "alerts": {
                    "after_failures": 1,
                    "email": {"host": "127.0.0.1", "port": smtp.port,
                              "from": "mamoru@clinic.example", "to": ["support@vendor.example"],
                              "username": smtp.username,
                              "password_file": secret_file(tmp_path / "smtp.pass",
                                                           smtp.password),
                              "ca_bundle": smtp.ca_bundle, "timeout": 5},
                    "webhook": {"url": hook.url, "timeout": 5,
                                "secret_file": secret_file(tmp_path / "hook.secret",
                                                           HOOK_SECRET)}},
                "metrics": {"listen": f"127.0.0.1:{metrics_port}", "textfile": str(textfile)},
                "check": {"after_install": False}})

        # 1. provision: a healthy site, nothing to alert about
        with WebrootServer(webroot, pebble.http_port) as server:
            run_mamoru("provision", "-c", str(config), check=0)
            tokens = {r.path.rsplit("/", 1)[-1] for r in server.requests_for(
                "/.well-known/acme-challenge/")}
        assert tokens
        run_mamoru("status", "-c", str(config), check=0)
        assert smtp.messages == [] and hook.requests == []

        # 2. a renewal whose challenge nobody answers: the CA says "connection"
        result = run_mamoru("renew", "--force", "-c", str(config), check=1)
        assert "clinic" in result.stderr

        failed = run_mamoru("log", "--failed", "--json", "-c", str(config), check=0)
        rows = [json.loads(line) for line in failed.stdout.splitlines()]
        assert [(r["kind"], r["site"]) for r in rows] == [("failed", "clinic")]
        failure = rows[0]
        assert failure["error_class"] == "ChallengeFailed"
        assert failure["problem_type"] == CONNECTION
        state = json.loads((tmp_path / "state" / "sites" / "clinic" / "state.json").read_text())
        ca_detail = state["last_attempt"]["detail"]  # what Pebble's problem document said
        assert ca_detail and failure["detail"] == re.sub(
            r"acme-challenge/[A-Za-z0-9_-]+", "acme-challenge/[token]", ca_detail)
        assert failure["attempt"] == 1 and failure["duration"] > 0
        assert failure["names"] == names and failure["next_attempt"]
        table = run_mamoru("log", "--site", "clinic", "--since", "1h", "-c", str(config),
                           check=0).stdout
        assert "backoff" in table and "issued" in table and "provisioned" in table

        status = run_mamoru("status", "-c", str(config), check=1)
        assert "mamoru: 1 site in danger: clinic (last attempt failed: ChallengeFailed)" \
            in status.stderr
        assert "failed: ChallengeFailed" in status.stdout

        # exactly one alert on each channel (the command waited for them before exiting)
        assert len(smtp.messages) == 1 and len(hook.requests) == 1
        payload = hook.requests[0].json
        assert payload["alert"] == "failing" and payload["site"] == "clinic"
        assert payload["problem_type"] == CONNECTION and payload["detail"] == failure["detail"]
        assert hook.requests[0].headers["X-Mamoru-Signature"].startswith("sha256=")
        assert "ChallengeFailed" in " ".join(str(smtp.messages[0]["Subject"]).split())
        assert failure["detail"] in smtp.messages[0].get_content().replace("\n", " ") or \
            "Connection refused" in smtp.messages[0].get_content()

        # the same failure again: still one alert each (the record is on disk)
        run_mamoru("renew", "--force", "-c", str(config), check=1)
        assert len(smtp.messages) == 1 and len(hook.requests) == 1

        # 3. metrics: the textfile (written by the one-shot commands) and the endpoint
        cert = x509.load_pem_x509_certificate(
            (tmp_path / "live" / "clinic" / "cert.pem").read_bytes())
        expiry = cert.not_valid_after_utc.timestamp()
        from_file = not_after_samples(textfile.read_text())
        assert from_file == {("clinic", name): expiry for name in names}
        assert "mamoru_renewal_failures_total{error_class=\"ChallengeFailed\",site=\"clinic\"}" \
            " 2.0" in textfile.read_text()
        app = build_app(load_config(str(config)), stderr=False, event_log=False,
                        serve_metrics=True)  # what the daemon does at start
        try:
            assert any(isinstance(s, MetricsSink) for s in app.events.sinks)
            scraped = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        finally:
            app.events.close(5)
        assert not_after_samples(scraped) == {("clinic", name): expiry for name in names}

        # 4. the challenge is reachable again: renewed, and one recovery alert each
        with WebrootServer(webroot, pebble.http_port) as server:
            run_mamoru("renew", "--force", "-c", str(config), check=0)
            tokens |= {r.path.rsplit("/", 1)[-1] for r in server.requests_for(
                "/.well-known/acme-challenge/")}
        run_mamoru("status", "-c", str(config), check=0)
        assert len(smtp.messages) == 2 and len(hook.requests) == 2
        assert hook.requests[1].json["alert"] == "recovered"
        assert hook.requests[1].json["resolved"] == ["failing"]

        # 5. the whole run's event log: one JSON object per line, no secret anywhere
        text = (tmp_path / "log" / "events.jsonl").read_text()
        events: list[dict[str, Any]] = [json.loads(line) for line in text.splitlines()]
        kinds = [e["kind"] for e in events]
        for kind in ("due-check", "order", "challenge", "issued", "installed", "provisioned",
                     "failed", "backoff", "renewed", "alert"):
            assert kind in kinds, kind
        assert {e.get("channel") for e in events if e["kind"] == "alert"} == {"email", "webhook"}
        assert "PRIVATE KEY" not in text
        assert EAB_HMAC not in text and HOOK_SECRET not in text and smtp.password not in text
        assert "url-secret-9c1d" not in text
        for token in tokens:
            assert token not in text
        assert not re.search(r"acme-challenge/[A-Za-z0-9_-]{16,}", text)
