"""`mamoru provision` end to end against a real Pebble (and its challtestsrv DNS)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import key_matches, provision_json, run_mamoru, verify_chain, write_config
from tests.servers.pebble import Pebble
from tests.servers.ports import free_port
from tests.servers.webroot_http import WebrootServer

pytestmark = pytest.mark.e2e


def live_files(tmp_path: Path, site: str) -> dict[str, bytes]:
    live = tmp_path / "live" / site
    return {name: (live / name).read_bytes()
            for name in ("privkey.pem", "cert.pem", "chain.pem", "fullchain.pem")}


def assert_valid_site(tmp_path: Path, pebble: Pebble, site: str, names: list[str]) -> str:
    files = live_files(tmp_path, site)
    for name in names:
        leaf = verify_chain(files["fullchain.pem"], pebble.root_pem(), name)
    assert key_matches(files["privkey.pem"], leaf)
    key_path = tmp_path / "live" / site / "privkey.pem"
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    return format(leaf.serial_number, "x")


def test_webroot_provision_then_second_run_orders_nothing(tmp_path: Path, pebble: Pebble) -> None:
    webroot = tmp_path / "webroot"
    webroot.mkdir()
    names = ["clinic.example", "www.clinic.example"]
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle, {
        "clinic": {"domains": names, "challenge": {"webroot": str(webroot)}}})
    with WebrootServer(webroot, pebble.http_port) as server:
        summary = provision_json("-c", str(config))
        assert summary["ok"] is True
        assert summary["sites"][0]["status"] == "issued"
        serial = assert_valid_site(tmp_path, pebble, "clinic", names)
        assert summary["sites"][0]["serial"] == serial
        assert pebble.order_count() == 1
        assert len(server.requests) >= 2  # the CA fetched the answers from our webroot
    # challenge files are cleaned up
    assert os.listdir(webroot / ".well-known" / "acme-challenge") == []

    again = provision_json("-c", str(config))
    assert again["sites"][0]["status"] == "skipped"
    assert pebble.order_count() == 1  # a second run orders nothing
    assert assert_valid_site(tmp_path, pebble, "clinic", names) == serial


def test_standalone_several_sites_in_one_run(tmp_path: Path, pebble: Pebble) -> None:
    sites = {f"site{i}": {"domains": [f"site{i}.example"], "key": key,
                          "challenge": {"standalone": f"127.0.0.1:{pebble.http_port}"}}
             for i, key in enumerate(["ec-p256", "ec-p384", "rsa-2048", "ec-p256"])}
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle, sites)
    summary = provision_json("-c", str(config))
    assert [s["status"] for s in summary["sites"]] == ["issued"] * 4
    for name in sites:
        assert_valid_site(tmp_path, pebble, name, [f"{name}.example"])
    assert pebble.order_count() == 4


def test_nonce_rejection_30_percent(tmp_path: Path, pebble_factory: Callable[..., Pebble]
                                    ) -> None:
    pebble = pebble_factory(nonce_reject=30)
    sites = {f"n{i}": {"domains": [f"n{i}.example", f"www.n{i}.example"],
                       "challenge": {"standalone": f"127.0.0.1:{pebble.http_port}"}}
             for i in range(6)}
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle, sites)
    summary = provision_json("-c", str(config))
    assert all(s["status"] == "issued" for s in summary["sites"]), summary
    for name in sites:
        assert_valid_site(tmp_path, pebble, name, [f"{name}.example"])
    assert summary["ca"]["bad_nonce_retries"] > 0  # the fault really happened


def test_eab_required(tmp_path: Path, pebble_factory: Callable[..., Pebble]) -> None:
    hmac = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"
    pebble = pebble_factory(eab_keys={"kid-1": hmac})
    site = {"clinic": {"domains": ["clinic.example"],
                       "challenge": {"standalone": f"127.0.0.1:{pebble.http_port}"}}}
    # no EAB: a clear error, nothing written to live/
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle, site)
    result = run_mamoru("provision", "-c", str(config), check=1)
    assert "External Account Binding" in result.stderr
    assert not (tmp_path / "live" / "clinic").exists()
    # the right EAB from a file
    key_file = tmp_path / "eab.key"
    key_file.write_text(hmac + "\n")
    key_file.chmod(0o600)
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle, site,
                          acme={"eab": {"kid": "kid-1", "hmac_key_file": str(key_file)}})
    result = run_mamoru("provision", "-c", str(config), check=0)
    assert_valid_site(tmp_path, pebble, "clinic", ["clinic.example"])
    assert hmac not in result.stderr + result.stdout
    events = (tmp_path / "log" / "events.jsonl").read_text()
    assert hmac not in events


def test_wrong_ca_url_and_unreachable_ca(tmp_path: Path, pebble: Pebble) -> None:
    site = {"clinic": {"domains": ["clinic.example"],
                       "challenge": {"standalone": f"127.0.0.1:{pebble.http_port}"}}}
    wrong = pebble.directory_url.replace("/dir", "/not-a-directory")
    config = write_config(tmp_path, wrong, pebble.ca_bundle, site)
    result = run_mamoru("provision", "-c", str(config), check=1)
    assert "not-a-directory" in result.stderr
    assert not (tmp_path / "live").exists() or os.listdir(tmp_path / "live") == []

    closed = f"https://127.0.0.1:{free_port()}/dir"
    config = write_config(tmp_path, closed, pebble.ca_bundle, site)
    result = run_mamoru("provision", "-c", str(config), "--json", check=1)
    summary = json.loads(result.stdout)
    error = summary["sites"][0]["error"]
    assert error["class"] == "CAUnavailable"
    assert "cannot reach the CA" in error["message"]
    assert "retries" in error["hint"]
    assert not (tmp_path / "live" / "clinic").exists()
    state = json.loads((tmp_path / "state" / "sites" / "clinic" / "state.json").read_text())
    assert state["attempts"] == 2 and state["next_attempt"]  # the wrong URL, then this


def test_unverified_ca_tls_is_refused(tmp_path: Path, pebble: Pebble) -> None:
    site = {"clinic": {"domains": ["clinic.example"],
                       "challenge": {"standalone": f"127.0.0.1:{pebble.http_port}"}}}
    config = write_config(tmp_path, pebble.directory_url, None, site)  # no ca_bundle
    result = run_mamoru("provision", "-c", str(config), check=1)
    assert "did not verify" in result.stderr
    assert "acme.ca_bundle" in result.stderr


def test_unreachable_challenge_names_the_url(tmp_path: Path, pebble: Pebble) -> None:
    webroot = tmp_path / "webroot"
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle, {
        "clinic": {"domains": ["clinic.example"], "challenge": {"webroot": str(webroot)}}})
    # nothing serves pebble.http_port: the CA cannot fetch the answer
    result = run_mamoru("provision", "-c", str(config), "--json", check=1)
    error = json.loads(result.stdout)["sites"][0]["error"]
    assert error["class"] == "ChallengeFailed"
    assert "clinic.example" in error["message"]
    assert "/.well-known/acme-challenge/" in error["message"]
    assert os.listdir(webroot / ".well-known" / "acme-challenge") == []  # cleaned up
    assert not (tmp_path / "live" / "clinic").exists()


def test_dry_run_force_and_revoke(tmp_path: Path, pebble: Pebble) -> None:
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle, {
        "clinic": {"domains": ["clinic.example"],
                   "challenge": {"standalone": f"127.0.0.1:{pebble.http_port}"}}})
    dry = run_mamoru("provision", "--json", "-c", str(config), "--dry-run", check=0)
    summary = json.loads(dry.stdout)
    assert summary["sites"][0]["status"] == "dry-run"
    # Not Let's Encrypt: the order and its validation are real, the finalize is not.
    assert "validated but not finalized" in dry.stderr
    assert pebble.order_count() == 1 and pebble.issued_count() == 0
    assert not (tmp_path / "live" / "clinic").exists()
    assert not (tmp_path / "state" / "sites" / "clinic" / "state.json").exists()

    first = provision_json("-c", str(config))["sites"][0]
    assert pebble.issued_count() == 1
    forced = provision_json("-c", str(config), "--force")["sites"][0]
    assert forced["status"] == "renewed" and forced["serial"] != first["serial"]
    assert_valid_site(tmp_path, pebble, "clinic", ["clinic.example"])

    run_mamoru("revoke", "clinic", "--reason", "superseded", "-c", str(config), check=0)
    assert "revoked" in (tmp_path / "log" / "events.jsonl").read_text()


def test_unknown_site_and_broken_config_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("acme:\n  directory: nope\nsites:\n  clinic:\n    domains: [a..b]\n"
                      "    challenge: {webroot: /w}\n    colour: red\n")
    result = run_mamoru("provision", "-c", str(config), check=2)
    assert f"{config}:2: acme.directory" in result.stderr
    assert f"{config}:5: sites.clinic.domains[0]" in result.stderr
    assert f"{config}:7: sites.clinic.colour: unknown key" in result.stderr
    good = write_config(tmp_path, "https://127.0.0.1:1/dir", None, {
        "clinic": {"domains": ["clinic.example"], "challenge": {"webroot": "/w"}}})
    result = run_mamoru("provision", "nosuchsite", "-c", str(good), check=2)
    assert "no site named nosuchsite" in result.stderr


def test_help_is_fast_to_import() -> None:
    result = subprocess.run([*__import__("tests.helpers").helpers.MAMORU, "--help"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert "provision" in result.stdout


def test_ctrl_c_cleans_up_challenges_and_changes_nothing(
        tmp_path: Path, pebble_factory: Callable[..., Pebble]) -> None:
    import signal
    import sys
    import time

    # Pebble sleeps 0-15 s before validating without NOSLEEP: a window to press Ctrl-C in.
    pebble = pebble_factory(extra_env={"PEBBLE_VA_NOSLEEP": "0"})
    webroot = tmp_path / "webroot"
    challenge_dir = webroot / ".well-known" / "acme-challenge"
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle, {
        "clinic": {"domains": ["clinic.example", "www.clinic.example"],
                   "challenge": {"webroot": str(webroot)}}})
    with WebrootServer(webroot, pebble.http_port):
        proc = subprocess.Popen([sys.executable, "-m", "mamoru.cli", "provision", "-c",
                                 str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if challenge_dir.is_dir() and len(os.listdir(challenge_dir)) == 2:
                break
            time.sleep(0.01)
        assert len(os.listdir(challenge_dir)) == 2, "challenges never presented"
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        _out, err = proc.communicate(timeout=10)
    assert time.monotonic() - started < 3, "Ctrl-C took too long"
    assert proc.returncode == 1, err
    assert "stopping after cleanup" in err
    assert os.listdir(challenge_dir) == []  # both challenge files removed
    assert not (tmp_path / "live" / "clinic").exists()


def test_a_failing_dry_run_changes_no_schedule_and_alerts_nobody(tmp_path: Path,
                                                                 pebble: Pebble) -> None:
    """Port 80 unreachable: the dry run fails, says why, and leaves no attempt count, no
    retry time and no alert behind (a dry run is a question, not an attempt)."""
    from tests.servers.receivers import WebhookReceiver

    with WebhookReceiver() as hook:
        config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle, {
            "clinic": {"domains": ["clinic.example"],
                       "challenge": {"standalone": f"127.0.0.1:{free_port()}"}}},
            extra={"alerts": {"webhook": {"url": hook.url}, "after_failures": 1}})
        result = run_mamoru("provision", "--json", "-c", str(config), "--dry-run", check=1)
        assert json.loads(result.stdout)["sites"][0]["status"] == "failed"
        assert not (tmp_path / "state" / "sites" / "clinic" / "state.json").exists()
        time.sleep(1.0)  # alerts go out off the critical path: give one the time to arrive
        assert hook.attempts == 0
    events = (tmp_path / "log" / "events.jsonl").read_text()
    assert '"kind": "failed"' in events and '"kind": "backoff"' not in events


def test_a_dry_run_against_lets_encrypt_goes_to_staging() -> None:
    from mamoru.app import dry_run
    from mamoru.config import load_config_text

    settings = load_config_text("acme: {directory: letsencrypt}\nsites:\n  c:\n"
                                "    domains: [clinic.example]\n    challenge: {webroot: /w}\n",
                                "/etc/mamoru/config.yaml")
    plan = dry_run(settings)
    assert plan.settings.acme.directory == (
        "https://acme-staging-v02.api.letsencrypt.org/directory")
    assert plan.finalizes and "staging instead of production" in plan.note
    assert settings.acme.directory == "https://acme-v02.api.letsencrypt.org/directory"


def test_revoke_puts_a_new_certificate_with_a_new_key_in_service(tmp_path: Path,
                                                                 pebble: Pebble) -> None:
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle, {
        "clinic": {"domains": ["clinic.example"],
                   "challenge": {"standalone": f"127.0.0.1:{pebble.http_port}"}}})
    first = provision_json("-c", str(config))["sites"][0]
    live = tmp_path / "live" / "clinic"
    old_key = (live / "privkey.pem").read_bytes()

    result = run_mamoru("revoke", "clinic", "--reason", "keyCompromise", "-c", str(config),
                        check=0)
    assert "clinic: renewed" in result.stdout
    assert (live / "privkey.pem").read_bytes() != old_key  # a new key, not the compromised one
    leaf = verify_chain((live / "fullchain.pem").read_bytes(), pebble.root_pem(), "clinic.example")
    assert format(leaf.serial_number, "x") != first["serial"]
    state = json.loads((tmp_path / "state" / "sites" / "clinic" / "state.json").read_text())
    assert state["revoked"]["serial"] == first["serial"]
    assert state["revoked"]["reason"] == "keyCompromise"

    # --no-replace: revoked and still served; the next check finds the site due at once
    second = format(leaf.serial_number, "x")
    served = (live / "fullchain.pem").read_bytes()
    run_mamoru("revoke", "clinic", "--no-replace", "-c", str(config), check=0)
    assert (live / "fullchain.pem").read_bytes() == served
    status = run_mamoru("status", "-c", str(config), check=1)  # in danger until replaced
    assert "the live certificate was revoked" in status.stdout
    again = provision_json("-c", str(config))["sites"][0]
    assert again["status"] == "renewed" and again["serial"] != second
    assert again["why"] == "the live certificate was revoked"
