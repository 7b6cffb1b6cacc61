"""The parts of `mamoru check --browser` that need no browser: resolver rules, reading
DevTools events, the words of the browser finding, and that the plain check never imports
the browser driver. The browser itself is tested in tests/browser/."""

from __future__ import annotations

import subprocess
import sys

from mamoru.check.browser import BrowserView, MixedItem, _Load, browser_finding, resolver_rules


def test_resolver_rules_map_every_name_where_the_check_connects() -> None:
    assert resolver_rules(("127.0.0.1", 8080), ("127.0.0.1", 8443)) == (
        "MAP *:80 127.0.0.1:8080, MAP *:443 127.0.0.1:8443")
    assert resolver_rules(None, None) == ""


def test_events_become_a_load() -> None:
    load = _Load()
    load.frame = "F"
    load.feed({"method": "Network.requestWillBeSent", "params": {
        "requestId": "1", "loaderId": "1", "frameId": "F", "type": "Document",
        "request": {"url": "https://clinic.example/"},
        "redirectResponse": {"headers": {"Non-Authoritative-Reason": "HSTS"}}}})
    load.feed({"method": "Audits.issueAdded", "params": {"issue": {
        "code": "MixedContentIssue", "details": {"mixedContentIssueDetails": {
            "resolutionStatus": "MixedContentBlocked", "insecureURL": "http://cdn.example/a.js",
            "resourceType": "Script"}}}}})
    load.feed({"method": "Security.visibleSecurityStateChanged",
               "params": {"visibleSecurityState": {"securityState": "secure"}}})
    load.feed({"method": "Network.loadingFailed", "params": {}})  # odd shape: ignored
    assert load.final_url == "https://clinic.example/" and load.hsts_redirect
    assert load.security_state == "secure"
    assert [(m.url, m.kind, m.resolution) for m in load.mixed.values()] == [
        ("http://cdn.example/a.js", "script", "blocked")]


def test_console_mixed_content_lines_are_understood() -> None:
    load = _Load()
    load.feed({"method": "Log.entryAdded", "params": {"entry": {"text": (
        "Mixed Content: The page at 'https://c.example/' was loaded over HTTPS, but requested "
        "an insecure element 'http://cdn.example/p.png'. This request was automatically "
        "upgraded to HTTPS, For more information see https://blog.chromium.org/")}}})
    assert load.mixed["http://cdn.example/p.png"].resolution == "upgraded"


def test_finding_words() -> None:
    view = BrowserView("http://c.example/", final_url="https://c.example/",
                       security_state="secure", version="Chrome/156.0.1.2", hsts_stored=True)
    ok = browser_finding(view)
    assert ok.status == "ok" and ok.message.startswith("Chromium 156 opens")
    view.mixed = [MixedItem("http://cdn.example/p.png", "image", "upgraded", broken=True)]
    broken = browser_finding(view)
    assert broken.status == "problem" and "broken image" in broken.message
    error = browser_finding(BrowserView("http://c.example/", final_url="https://c.example/",
                                        cert_error="ERR_CERT_DATE_INVALID"))
    assert error.status == "problem" and "full-page error" in error.message
    assert "ERR_CERT_DATE_INVALID" in error.message


def test_plain_check_never_imports_the_browser_driver() -> None:
    code = ("import sys, mamoru.cli, mamoru.check.site, mamoru.check.url;"
            "mamoru.cli.build_parser();"
            "print('mamoru.check.browser' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"
