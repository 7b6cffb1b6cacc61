"""`mamoru check` held against a real headless Chromium (Debian's `chromium`), one fault per
name on a real nginx (tests/browser/world.py).

For every name: what Chromium itself reports (through `mamoru check --browser`, whose JSON
carries the browser's facts), and that the plain check gives the matching verdict and a
message that says what the browser showed. Every statement about browser behaviour in the
check's messages is asserted here against the browser. Never skipped: CI installs chromium
and libnss3-tools (scripts/setup.sh).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mamoru.check.browser import Chromium, evaluate, load_site, navigate, new_tab, resolver_rules
from tests.browser.world import NAMES, World, start_world
from tests.helpers import run_mamoru

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    assert shutil.which("chromium"), "the browser suite needs chromium: run scripts/setup.sh"
    assert shutil.which("certutil"), "the browser suite needs certutil: run scripts/setup.sh"
    yield from start_world(tmp_path_factory.mktemp("browserworld"))


@dataclass(frozen=True)
class Case:
    """What one name must show. `plain` is (check id, status, words in its message);
    `browser` the status of the browser finding and words in its message; `cert_error`,
    `state` and `final` what Chromium itself reports."""

    plain: tuple[str, str, tuple[str, ...]]
    browser: tuple[str, tuple[str, ...]]
    cert_error: str = ""
    state: str = "secure"
    final: str = "https"
    hsts: bool = True
    mixed: tuple[tuple[str, str, bool], ...] = ()  # (url, resolution, broken)


FULL_PAGE = "full-page error"
CASES: dict[str, Case] = {
    "good.example": Case(("cert.chain", "ok", ("trusted",)), ("ok", ("with the lock",))),
    "wrongname.example": Case(
        ("cert.names", "problem", ("is for other.example", FULL_PAGE,
                                   "ERR_CERT_COMMON_NAME_INVALID")),
        ("problem", (FULL_PAGE, "ERR_CERT_COMMON_NAME_INVALID")),
        cert_error="ERR_CERT_COMMON_NAME_INVALID", state="insecure-broken", hsts=False),
    "nosan.example": Case(
        ("cert.names", "problem", ("no list of names (subjectAltName)", "browsers ignore",
                                   FULL_PAGE, "ERR_CERT_COMMON_NAME_INVALID")),
        ("problem", ("ERR_CERT_COMMON_NAME_INVALID",)),
        cert_error="ERR_CERT_COMMON_NAME_INVALID", state="insecure-broken", hsts=False),
    "nochain.example": Case(
        ("cert.chain", "problem", ("only its own certificate", FULL_PAGE,
                                   "ERR_CERT_AUTHORITY_INVALID")),
        ("problem", ("ERR_CERT_AUTHORITY_INVALID",)),
        cert_error="ERR_CERT_AUTHORITY_INVALID", state="insecure-broken", hsts=False),
    # Stricter than Chromium on purpose (other clients do not fetch), and says so.
    "aia.example": Case(
        ("cert.chain", "problem", ("only its own certificate", "Chromium browsers fetch it "
                                   "from http://files.example/intermediate.der",
                                   "show the site normally", "refuse the connection")),
        ("ok", ("with the lock",))),
    "expired.example": Case(
        ("cert.chain", "problem", ("expired", FULL_PAGE, "ERR_CERT_DATE_INVALID")),
        ("problem", ("ERR_CERT_DATE_INVALID",)),
        cert_error="ERR_CERT_DATE_INVALID", state="insecure-broken", hsts=False),
    "selfsigned.example": Case(
        ("cert.chain", "problem", ("self-signed", FULL_PAGE, "ERR_CERT_AUTHORITY_INVALID")),
        ("problem", ("ERR_CERT_AUTHORITY_INVALID",)),
        cert_error="ERR_CERT_AUTHORITY_INVALID", state="insecure-broken", hsts=False),
    "unknownca.example": Case(
        ("cert.chain", "problem", ("Somebody Else's Root", FULL_PAGE,
                                   "ERR_CERT_AUTHORITY_INVALID")),
        ("problem", ("ERR_CERT_AUTHORITY_INVALID",)),
        cert_error="ERR_CERT_AUTHORITY_INVALID", state="insecure-broken", hsts=False),
    "mixed.example": Case(
        ("mixed-content", "problem", ("scripts over insecure http://", "browsers block them",
                                      "keep the lock and fetch it over https:// instead",
                                      "the image is broken")),
        ("problem", ("blocks the insecure script http://cdn.example/app.js",
                     "upgrades http://cdn.example/logo.png", "broken image")),
        mixed=(("http://cdn.example/app.js", "blocked", False),
               ("http://cdn.example/logo.png", "upgraded", True))),
    "upgraded.example": Case(
        ("mixed-content", "warning", ("keep the lock and fetch it over https:// instead",)),
        ("ok", ("with the lock",)),
        mixed=(("http://images.example/logo.png", "upgraded", False),)),
    # The plain check cannot see what a script adds after load, and says who can.
    "inserted.example": Case(
        ("mixed-content", "ok", ("seen only by mamoru check --browser",)),
        ("problem", ("http://cdn.example/track.js", "http://cdn.example/pixel.png",
                     "broken image")),
        mixed=(("http://cdn.example/track.js", "blocked", False),
               ("http://cdn.example/pixel.png", "upgraded", True))),
    "form.example": Case(
        ("mixed-content", "problem", ("form sends to insecure http://", "keep the lock",
                                      "warn at Send", "Send anyway")),
        ("problem", ("warns at Send", "Send anyway")),
        mixed=(("http://form.example/book", "warned", False),)),
    "found.example": Case(
        ("http.redirect", "warning", ("temporary", "still follow it to https://",
                                      "stored the site's HSTS")),
        ("ok", ("with the lock", "HSTS is stored"))),
    "noredirect.example": Case(
        ("http.redirect", "problem", ("plain, unencrypted HTTP", '"Not secure"')),
        ("problem", ('"Not secure"',)), state="insecure", final="http", hsts=False),
}


def test_every_name_has_a_case() -> None:
    assert set(CASES) == set(NAMES)


def findings_of(stdout: str) -> dict[str, dict[str, Any]]:
    data = json.loads(stdout)
    return {f["check"]: f for f in data["targets"][0]["findings"]}


@pytest.mark.parametrize("name", list(CASES))
def test_browser_and_check_agree(world: World, name: str) -> None:
    case = CASES[name]
    base = ["check", f"https://{name}/", *world.connect_args(), "--timeout", "3", "--json"]
    plain = findings_of(run_mamoru(*base).stdout)
    started = time.monotonic()
    with_browser = run_mamoru(*base, "--browser")
    TIMINGS[name] = time.monotonic() - started
    both = findings_of(with_browser.stdout)

    # What Chromium itself reported.
    seen = both["browser"]["details"]
    assert seen["browser"].startswith("Chrome/"), seen
    assert seen["cert_error"] == case.cert_error, seen
    assert seen["security_state"] == case.state, seen
    assert seen["final_url"] == f"{case.final}://{name}/", seen
    assert seen["hsts_stored"] is case.hsts, seen
    assert {(m["url"], m["resolution"], m["broken"]) for m in seen["mixed"]} == set(
        case.mixed), seen

    # The plain check: same findings without the browser, the matching verdict and words.
    assert "browser" not in plain
    assert {k: v for k, v in both.items() if k != "browser"}.keys() == plain.keys()
    check, status, words = case.plain
    assert plain[check]["status"] == status, plain[check]
    for word in words:
        assert word in plain[check]["message"], (word, plain[check]["message"])

    # The browser finding.
    status, words = case.browser
    assert both["browser"]["status"] == status, both["browser"]
    for word in words:
        assert word in both["browser"]["message"], (word, both["browser"]["message"])
    worst = max((f["status"] for f in both.values()), key=["ok", "warning", "problem"].index)
    assert with_browser.returncode == (2 if worst == "problem" else 0)


def browser(world: World) -> Chromium:
    return Chromium(ca_bundle=world.root, rules=resolver_rules(
        ("127.0.0.1", world.http), ("127.0.0.1", world.https)))


def test_form_warns_at_send_and_sends_nothing(world: World) -> None:
    """What the form message says: the lock stays, Send shows a full-page warning with
    'Send anyway', and nothing reaches the http:// target before the patient agrees."""
    with browser(world) as chromium:
        tab = new_tab(chromium)
        load = navigate(chromium, tab, "https://form.example/", settle=0.3)
        assert load.security_state == "secure"
        chromium.call("Runtime.evaluate", tab, expression="document.querySelector('button')"
                      ".click()")
        deadline = time.monotonic() + 10
        text = ""
        while time.monotonic() < deadline and "Send anyway" not in text:
            list(chromium.drain(tab, 0.2))
            text = evaluate(chromium, tab, "document.body.innerText")
    assert "The information you\u2019re about to submit is not secure" in text, text
    assert "Send anyway" in text, text
    log = (world.dir / "nginx" / "access.log").read_text()
    assert "POST /book" not in log


def test_upgraded_image_shows_and_broken_image_does_not(world: World) -> None:
    """What the image messages say: an http:// image is fetched over https:// with the lock
    kept; where that host has no https it is a broken image."""
    with browser(world) as chromium:
        tab = new_tab(chromium)
        navigate(chromium, tab, "https://upgraded.example/", settle=0.5)
        assert evaluate(chromium, tab, "document.getElementById('up').naturalWidth") == "1"
        navigate(chromium, tab, "https://mixed.example/", settle=0.5)
        assert evaluate(chromium, tab, "document.images[0].naturalWidth") == "0"
        assert evaluate(chromium, tab, "document.images[0].complete") == "True"


def test_screenshots_of_a_good_and_a_bad_name(world: World, tmp_path: Path) -> None:
    with browser(world) as chromium:
        good = load_site(chromium, "good.example", screenshot=True)
        bad = load_site(chromium, "wrongname.example", screenshot=True)
    for label, view in (("good", good), ("wrongname", bad)):
        assert view.screenshot.startswith(b"\x89PNG\r\n\x1a\n"), label
        assert len(view.screenshot) > 2000, label
        (tmp_path / f"{label}.png").write_bytes(view.screenshot)
    assert good.title == "Clinic" and bad.cert_error == "ERR_CERT_COMMON_NAME_INVALID"
    assert good.screenshot != bad.screenshot
    print(f"screenshots: {tmp_path}/good.png {tmp_path}/wrongname.png")


def test_without_chromium_says_how_to_install_and_exits_2(world: World, tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    result = run_mamoru("check", "https://good.example/", *world.connect_args(), "--browser",
                        env={"PATH": str(empty)})
    assert result.returncode == 2, result
    assert "needs Chromium" in result.stderr and "apt-get install" in result.stderr, result
    assert result.stdout == ""


def test_timings(world: World) -> None:
    """How long `mamoru check --browser` takes per name (printed with -s; recorded in the
    report of the branch)."""
    assert TIMINGS, "run with the parametrized cases"
    for name, seconds in sorted(TIMINGS.items()):
        print(f"check --browser {name}: {seconds:.1f} s")
        assert seconds < 30, (name, seconds)
    print(f"mean {sum(TIMINGS.values()) / len(TIMINGS):.1f} s per name")


def test_check_after_install_with_check_browser(world: World, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`check.browser: true`: the check after an install (check_site, as the pipeline calls
    it) adds the browser finding per name; without Chromium it is a warning saying how to
    install it, never a failed run."""
    from mamoru.check.site import check_site
    from mamoru.config.load import load_config

    config = tmp_path / "config.yaml"
    config.write_text(f"""
acme: {{directory: "https://ca.invalid/dir", contact: admin@clinic.example}}
paths: {{state: {tmp_path}/state, live: {tmp_path}/live, event_log: {tmp_path}/events.jsonl}}
check: {{browser: true, ca_bundle: {world.root}}}
sites:
  clinic: {{domains: [good.example, inserted.example], challenge: {{webroot: {tmp_path}}}}}
""")
    config.chmod(0o600)
    settings = load_config(str(config))
    assert settings.check.browser is True
    site = settings.sites[0]
    args = {"ca_bundle": settings.check.ca_bundle, "timeout": 3.0,
            "connect": ("127.0.0.1", world.https), "http_connect": ("127.0.0.1", world.http),
            "browser": settings.check.browser}
    reports = check_site(site, None, **args)  # type: ignore[arg-type]
    seen = {r.host: r.get("browser") for r in reports}
    assert seen["good.example"] is not None and seen["good.example"].status == "ok"
    assert seen["inserted.example"] is not None
    assert seen["inserted.example"].status == "problem"
    assert "http://cdn.example/track.js" in seen["inserted.example"].message

    monkeypatch.setenv("PATH", str(tmp_path))
    reports = check_site(site, None, **args)  # type: ignore[arg-type]
    missing = reports[0].get("browser")
    assert missing is not None and missing.status == "warning", missing
    assert "needs Chromium" in missing.message and "apt-get install" in missing.fix
