"""`mamoru check --browser`: load a name in a real headless Chromium, as a patient would, and
report what the browser itself says.

Debian's `chromium` is driven through the DevTools protocol over `--remote-debugging-pipe`
(JSON messages separated by NUL bytes on file descriptors 3 and 4), so no websocket library,
no debugging port and no Playwright download are needed: the standard library is enough.

What one load reports (:class:`BrowserView`): the final URL after typing `http://name/`, the
security state from the DevTools `Security` domain, the certificate error of the page
(`ERR_CERT_COMMON_NAME_INVALID`...), mixed content the browser blocked, auto-upgraded, broke or
warned about (from the `Audits` issues, the console and the network, including what a script
inserts after load), and whether HSTS was stored (a second `http://` load is turned into
https inside the browser, a 307 "Internal Redirect" with `Non-Authoritative-Reason: HSTS`).

Every browser runs in a new, empty profile removed afterwards. `ca_bundle` roots are trusted
through that profile's own NSS database (`certutil` from libnss3-tools, under
`<profile>/.pki/nssdb`, with HOME pointing at the profile), exactly as a clinic's own root
would be trusted on a patient's computer. Names reach test servers through
`--host-resolver-rules` (`MAP name:80 127.0.0.1:8080`).

Imported only for `--browser` (and `check.browser: true`): the plain check never loads this.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import re
import select
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mamoru.check.report import Finding, TargetReport
from mamoru.errors import MamoruError, UsageError
from mamoru.i18n import N_, _

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
"""Executables tried in order on PATH (Debian's package installs /usr/bin/chromium)."""

INSTALL_HINT = ("install Chromium: apt-get install --no-install-recommends chromium "
                "libnss3-tools (or run scripts/setup.sh), or check without --browser")

LAUNCH_FLAGS: tuple[str, ...] = (
    "--headless",
    "--no-sandbox",  # mamoru's check often runs as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-pipe",
    "--window-size=1024,768",
)

SETTLE_SECONDS = 1.0
"""Quiet time after the load event, for what a script inserts after load."""


class BrowserMissing(UsageError):
    """No Chromium (or no certutil for --ca-bundle) on this machine: exit 2 with how to
    install it."""


class BrowserError(MamoruError):
    """Chromium started but could not be driven (it crashed, or did not answer in time)."""

    retryable = True


@dataclass
class MixedItem:
    """One insecure subresource as Chromium handled it. ``resolution`` is ``blocked``
    (never loaded), ``upgraded`` (fetched over https instead), ``warned`` (a form: a warning at
    Send) or ``allowed``; ``broken`` is true when the upgraded request failed too."""

    url: str
    kind: str
    resolution: str
    broken: bool = False


@dataclass
class BrowserView:
    """What Chromium showed for one name. ``security_state`` is the DevTools value
    (``secure``, ``neutral``, ``insecure``, ``insecure-broken``); ``cert_error`` a net error
    name without ``net::`` or ``""``; ``load_error`` any other failure of the page itself."""

    start_url: str
    final_url: str = ""
    security_state: str = ""
    cert_error: str = ""
    load_error: str = ""
    title: str = ""
    mixed: list[MixedItem] = field(default_factory=list)
    hsts_stored: bool = False
    console: list[str] = field(default_factory=list)
    seconds: float = 0.0
    version: str = ""
    screenshot: bytes = b""

    def details(self) -> dict[str, object]:
        return {"start_url": self.start_url, "final_url": self.final_url,
                "security_state": self.security_state, "cert_error": self.cert_error,
                "load_error": self.load_error, "hsts_stored": self.hsts_stored,
                "mixed": [{"url": m.url, "kind": m.kind, "resolution": m.resolution,
                           "broken": m.broken} for m in self.mixed],
                "browser": self.version, "seconds": round(self.seconds, 2)}


def find_chromium() -> str:
    """The Chromium executable, or :class:`BrowserMissing` saying how to install it."""
    override = os.environ.get("MAMORU_CHROMIUM")
    if override:
        if shutil.which(override):
            return override
        raise BrowserMissing(f"MAMORU_CHROMIUM={override} is not an executable",
                             hint=INSTALL_HINT)
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    raise BrowserMissing("mamoru check --browser needs Chromium, which is not installed",
                         hint=INSTALL_HINT)


def _pem_blocks(text: str) -> list[str]:
    return re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.S)


def make_profile(ca_bundle: str | None) -> Path:
    """A new empty profile directory (0700); with `ca_bundle`, its NSS database trusts every
    certificate of the bundle as a CA for web sites."""
    profile = Path(tempfile.mkdtemp(prefix="mamoru-browser-"))
    if not ca_bundle:
        return profile
    certutil = shutil.which("certutil")
    if certutil is None:
        shutil.rmtree(profile, ignore_errors=True)
        raise BrowserMissing("--ca-bundle with --browser needs certutil, which is not installed",
                             hint="apt-get install --no-install-recommends libnss3-tools")
    nssdb = profile / ".pki" / "nssdb"
    nssdb.mkdir(parents=True, mode=0o700)
    try:
        blocks = _pem_blocks(Path(ca_bundle).read_text())
    except OSError as error:
        shutil.rmtree(profile, ignore_errors=True)
        raise BrowserMissing(f"cannot read the CA bundle {ca_bundle}: {error.strerror}",
                             hint="give --ca-bundle a readable PEM file") from None
    run = [certutil, "-d", f"sql:{nssdb}"]
    subprocess.run([*run, "-N", "--empty-password"], check=True, capture_output=True)
    for number, block in enumerate(blocks):
        pem = profile / f"ca-{number}.pem"
        pem.write_text(block + "\n")
        subprocess.run([*run, "-A", "-n", f"mamoru-ca-{number}", "-t", "C,,", "-i", str(pem)],
                       check=True, capture_output=True)
        pem.unlink()
    return profile


def resolver_rules(http_connect: tuple[str, int] | None,
                   connect: tuple[str, int] | None) -> str:
    """`--host-resolver-rules` sending every name's port 80 and 443 where the plain check
    connects (`--http-connect`, `--connect`), so what the page loads from other names reaches
    that server too, as the plain check's connections do; without them DNS decides."""
    rules: list[str] = []
    if http_connect:
        rules.append(f"MAP *:80 {http_connect[0]}:{http_connect[1]}")
    if connect:
        rules.append(f"MAP *:443 {connect[0]}:{connect[1]}")
    return ", ".join(rules)


class Chromium:
    """One headless Chromium in its own profile, spoken to over the DevTools pipe."""

    def __init__(self, *, ca_bundle: str | None = None, rules: str = "",
                 timeout: float = 15.0) -> None:
        self.executable = find_chromium()
        self.timeout = timeout
        self.profile = make_profile(ca_bundle)
        self.tabs: dict[str, str] = {}  # session id -> target id
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        argv = [self.executable, *LAUNCH_FLAGS, f"--user-data-dir={self.profile / 'chrome'}"]
        if rules:
            argv.append(f"--host-resolver-rules={rules}")
        argv.append("about:blank")
        env = {"HOME": str(self.profile), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "LANG": "C.UTF-8"}
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            self.pid = os.posix_spawn(self.executable, argv, env, file_actions=[
                (os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, devnull, 1),
                (os.POSIX_SPAWN_DUP2, devnull, 2), (os.POSIX_SPAWN_DUP2, to_child_r, 3),
                (os.POSIX_SPAWN_DUP2, from_child_w, 4)])
        except OSError as error:
            for fd in (self._to_child, self._from_child):
                os.close(fd)
            shutil.rmtree(self.profile, ignore_errors=True)
            raise BrowserMissing(f"cannot start {self.executable}: {error.strerror}",
                                 hint=INSTALL_HINT) from None
        finally:
            for fd in (devnull, to_child_r, from_child_w):
                os.close(fd)
        self._next_id = 0
        self._replies: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self.version = str(self.call("Browser.getVersion").get("product", ""))
        except BaseException:
            self.close()  # never leave a browser or its profile behind
            raise

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_child, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                self.events.put({"method": "mamoru.closed"})
                with self._lock:
                    for pending in self._replies.values():
                        pending.put({"error": {"message": "Chromium closed the connection"}})
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message:
                    with self._lock:
                        waiting = self._replies.pop(int(message["id"]), None)
                    if waiting is not None:
                        waiting.put(message)
                else:
                    self.events.put(message)

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Send one command and wait for its reply (BrowserError on an error or timeout)."""
        reply: queue.Queue[dict[str, Any]] = queue.Queue()
        with self._lock:
            self._next_id += 1
            number = self._next_id
            self._replies[number] = reply
        message: dict[str, Any] = {"id": number, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        try:
            _, writable, _ = select.select([], [self._to_child], [], self.timeout)
            if not writable:
                raise BrowserError(f"Chromium did not take {method} within {self.timeout:g} s")
            os.write(self._to_child, data)
            answer = reply.get(timeout=self.timeout)
        except queue.Empty:
            raise BrowserError(f"Chromium did not answer {method} within "
                               f"{self.timeout:g} s") from None
        except OSError as error:
            raise BrowserError(f"Chromium is gone ({error.strerror})") from None
        if "error" in answer:
            raise BrowserError(f"Chromium refused {method}: {answer['error'].get('message')}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    def close(self) -> None:
        """Ask Chromium to quit (killed after 5 s), reap it, remove the profile."""
        with contextlib.suppress(Exception):
            self.call("Browser.close")
        reaper = threading.Thread(target=os.waitpid, args=(self.pid, 0), daemon=True)
        reaper.start()
        reaper.join(5)
        if reaper.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, 9)
            reaper.join()
        for fd in (self._to_child, self._from_child):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def drain(self, session: str, seconds: float) -> Iterator[dict[str, Any]]:
        """Events of `session` until `seconds` pass (or Chromium closes)."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                return
            if event.get("method") == "mamoru.closed":
                raise BrowserError("Chromium exited while loading the page")
            if event.get("sessionId") == session:
                yield event


_MIXED_LINE = re.compile(r"requested an insecure (\w[\w ]*?) '(http://[^']+)'\. (.+)")


class _Load:
    """What the events of one page load said."""

    def __init__(self) -> None:
        self.security_state = ""
        self.main_request = ""
        self.final_url = ""
        self.main_error = ""
        self.hsts_redirect = False
        self.mixed: dict[str, MixedItem] = {}
        self.failed: dict[str, str] = {}  # request url -> error text
        self.bad_status: dict[str, int] = {}
        self.urls: dict[str, str] = {}  # request id -> url
        self.console: list[str] = []
        self.loaded = False
        self.frame = ""  # the tab's main frame: its Document requests are the page

    def feed(self, event: dict[str, Any]) -> None:
        """Take one DevTools event; an event of an unexpected shape is ignored."""
        with contextlib.suppress(KeyError, TypeError, ValueError, AttributeError):
            self._feed(event)

    def _feed(self, event: dict[str, Any]) -> None:
        method = event.get("method", "")
        params: dict[str, Any] = event.get("params", {})
        if method == "Security.visibleSecurityStateChanged":
            self.security_state = params["visibleSecurityState"].get("securityState", "")
        elif method == "Network.requestWillBeSent":
            request = params["request"]
            self.urls[params["requestId"]] = request["url"]
            redirect = params.get("redirectResponse")
            if params.get("type") == "Document" and params.get("frameId") == self.frame:
                self.main_request = params["requestId"]
                self.final_url = request["url"]
                if redirect and redirect.get("headers", {}).get(
                        "Non-Authoritative-Reason") == "HSTS":
                    self.hsts_redirect = True
        elif method == "Network.loadingFailed":
            url = self.urls.get(params["requestId"], "")
            self.failed[url] = params.get("errorText", "")
            if params["requestId"] == self.main_request:
                self.main_error = params.get("errorText", "")
        elif method == "Network.responseReceived":
            status = int(params["response"].get("status", 0))
            if status >= 400:
                self.bad_status[params["response"]["url"]] = status
        elif method == "Audits.issueAdded":
            issue = params["issue"]
            if issue.get("code") == "MixedContentIssue":
                d = issue["details"]["mixedContentIssueDetails"]
                resolution = {"MixedContentBlocked": "blocked",
                              "MixedContentAutomaticallyUpgraded": "upgraded",
                              "MixedContentWarning": "warned"}.get(d.get("resolutionStatus", ""),
                                                                  "allowed")
                url = d.get("insecureURL", "")
                kind = str(d.get("resourceType", "")).lower() or "resource"
                self.mixed[url] = MixedItem(url, kind, resolution)
        elif method == "Log.entryAdded":
            entry = params["entry"]
            text = str(entry.get("text", ""))
            self.console.append(text)
            match = _MIXED_LINE.search(text)
            if match and match.group(2) not in self.mixed:
                what, url, rest = match.groups()
                resolution = ("blocked" if "has been blocked" in rest else
                              "upgraded" if "upgraded" in rest else
                              "warned" if "form" in what else "allowed")
                self.mixed[url] = MixedItem(url, what.replace("element", "resource").strip(),
                                            resolution)
        elif method == "Page.loadEventFired":
            self.loaded = True


def new_tab(browser: Chromium) -> str:
    """A new tab with the domains a check listens to enabled; returns its session id."""
    target = browser.call("Target.createTarget", url="about:blank")["targetId"]
    session = str(browser.call("Target.attachToTarget", targetId=target,
                               flatten=True)["sessionId"])
    browser.tabs[session] = str(target)
    for domain in ("Page", "Network", "Security", "Log", "Audits", "Runtime"):
        browser.call(f"{domain}.enable", session)
    browser.call("Network.setCacheDisabled", session, cacheDisabled=True)
    return session


def navigate(browser: Chromium, session: str, url: str, *, settle: float) -> _Load:
    """Load `url` in the tab and collect its events until `settle` seconds after the load
    event (or after a failed navigation)."""
    load = _Load()
    answer = browser.call("Page.navigate", session, url=url)
    load.frame = str(answer.get("frameId", ""))
    if answer.get("errorText"):
        load.main_error = str(answer["errorText"])
    deadline = time.monotonic() + browser.timeout
    quiet_until: float | None = None
    while time.monotonic() < deadline:
        for event in browser.drain(session, 0.1):
            load.feed(event)
            if event.get("method") == "Page.loadEventFired":
                quiet_until = time.monotonic() + settle
        if load.main_error and quiet_until is None:
            quiet_until = time.monotonic() + min(settle, 0.5)
        if quiet_until is not None and time.monotonic() >= quiet_until:
            break
    return load


def evaluate(browser: Chromium, session: str, expression: str) -> str:
    """The value of a JavaScript expression in the tab, as text ("" on failure)."""
    with contextlib.suppress(BrowserError):
        answer = browser.call("Runtime.evaluate", session, expression=expression,
                              returnByValue=True)
        return str(answer.get("result", {}).get("value", ""))
    return ""


def load_site(browser: Chromium, host: str, *, path: str = "/", settle: float = SETTLE_SECONDS,
              screenshot: bool = False) -> BrowserView:
    """Type `http://host/path` into a new tab, as a patient would, and say what happened."""
    started = time.monotonic()
    view = BrowserView(start_url=f"http://{host}{path}", version=browser.version)
    session = new_tab(browser)
    load = navigate(browser, session, view.start_url, settle=settle)
    shown = evaluate(browser, session, "location.href")
    # An error page lives at chrome-error://; the address bar still shows the URL that failed.
    view.final_url = load.final_url if shown.startswith("chrome-error:") or not shown else shown
    view.title = evaluate(browser, session, "document.title")
    error = load.main_error.removeprefix("net::")
    if error.startswith("ERR_CERT_") or error in {"ERR_SSL_PROTOCOL_ERROR",
                                                  "ERR_BAD_SSL_CLIENT_AUTH_CERT"}:
        view.cert_error = error
    elif error and error != "ERR_ABORTED":
        view.load_error = error
    view.security_state = load.security_state
    if view.cert_error and not view.security_state:
        view.security_state = "insecure-broken"
    for item in load.mixed.values():
        if item.resolution == "upgraded":
            upgraded = "https://" + item.url.removeprefix("http://")
            item.broken = upgraded in load.failed or upgraded in load.bad_status
        view.mixed.append(item)
    view.console = load.console
    if screenshot:
        shot = browser.call("Page.captureScreenshot", session, format="png")
        view.screenshot = base64.b64decode(shot["data"])
    if not view.cert_error and not view.load_error and view.final_url.startswith("https://"):
        again = navigate(browser, session, view.start_url, settle=0.2)
        view.hsts_stored = again.hsts_redirect
    with contextlib.suppress(BrowserError):
        browser.call("Target.closeTarget", targetId=browser.tabs.pop(session))
    view.seconds = time.monotonic() - started
    return view


def browse(host: str, *, ca_bundle: str | None, connect: tuple[str, int] | None,
           http_connect: tuple[str, int] | None, timeout: float = 15.0, path: str = "/",
           screenshot: bool = False) -> BrowserView:
    """Start a browser in a new profile, load `host` once as a patient would, stop it."""
    rules = resolver_rules(http_connect, connect)
    with Chromium(ca_bundle=ca_bundle, rules=rules, timeout=timeout) as browser:
        return load_site(browser, host, path=path, screenshot=screenshot)


_KINDS = {"script": N_("script"), "image": N_("image"), "stylesheet": N_("stylesheet"),
          "media": N_("media file"), "font": N_("font"), "frame": N_("frame"),
          "iframe": N_("frame"), "form": N_("form"), "resource": N_("resource")}


def browser_finding(view: BrowserView) -> Finding:
    """The `browser` finding: what Chromium showed, in the words a patient would use."""
    details = view.details()
    number = view.version.partition("/")[2].split(".")[0]
    who = f"Chromium {number}" if number else "Chromium"
    if view.cert_error:
        return Finding("browser", "problem",
                       _("{browser} shows a full-page error instead of the site: \"Your "
                         "connection is not private\" ({error}). Patients can go no further "
                         "without clicking through a warning.").format(
                             browser=who, error=view.cert_error),
                       _("Fix the certificate problem named above, then check again."),
                       details)
    if view.load_error:
        return Finding("browser", "problem",
                       _("{browser} could not open {url}: {error}.").format(
                           browser=who, url=view.start_url, error=view.load_error),
                       _("Make sure the web server is running and the name points to it."),
                       details)
    if not view.final_url.startswith("https://"):
        return Finding("browser", "problem",
                       _("{browser} stays on {url}: the address bar shows \"Not secure\" and "
                         "what patients type is sent unencrypted.").format(
                             browser=who, url=view.final_url or view.start_url),
                       _("Redirect http:// to https:// (mamoru's generated config does this: "
                         "return 301 https://$host$request_uri;)."), details)
    blocked = [m for m in view.mixed if m.resolution == "blocked"]
    broken = [m for m in view.mixed if m.resolution == "upgraded" and m.broken]
    warned = [m for m in view.mixed if m.resolution == "warned"]
    parts: list[str] = []
    for item in blocked[:3]:
        kind = _KINDS.get(item.kind)
        parts.append(_("blocks the insecure {kind} {url}, so that part of the page does not "
                       "work").format(kind=_(kind) if kind else item.kind, url=item.url))
    if broken:
        parts.append(_("upgrades {urls} to https://, where it does not load: patients see a "
                       "broken image").format(urls=_(", ").join(m.url for m in broken[:3])))
    if warned:
        parts.append(_("warns at Send on {urls}: \"The information you're about to submit is "
                       "not secure\" (with \"Send anyway\", after which it travels "
                       "unencrypted)").format(urls=_(", ").join(m.url for m in warned[:3])))
    state = view.security_state or "unknown"
    if parts:
        # A form is a problem like in the plain check: after "Send anyway" it goes unencrypted.
        return Finding("browser", "problem",
                       _("{browser} opens {url} (security state {state}) but {what}.").format(
                           browser=who, url=view.final_url, state=state,
                           what=_("; ").join(parts)),
                       _("Load every script, image and form target over https:// (or from "
                         "the site itself), including what analytics or chat snippets add."),
                       details)
    if state != "secure":
        return Finding("browser", "warning",
                       _("{browser} opens {url}, but its security state is {state}, not "
                         "secure.").format(browser=who, url=view.final_url, state=state),
                       _("Look at the other findings for the cause."), details)
    if view.hsts_stored:
        said = _("{browser} opens {url} with the lock (security state secure). HSTS is "
                 "stored.")
    else:
        said = _("{browser} opens {url} with the lock (security state secure). HSTS was not "
                 "stored.")
    return Finding("browser", "ok", said.format(browser=who, url=view.final_url),
                   details=details)


def add_browser_findings(reports: list[TargetReport], *, ca_bundle: str | None,
                         connect: tuple[str, int] | None, http_connect: tuple[str, int] | None,
                         timeout: float = 15.0, missing_is_problem: bool = True) -> None:
    """Load each report's name in Chromium (one after the other: 2 cores are plenty for one
    browser, not for eight) and add its `browser` finding. Without Chromium: raise
    :class:`BrowserMissing` (`missing_is_problem`, the CLI's --browser: exit 2), or add a
    warning saying how to install it (the check after an install must not fail the run)."""
    for report in reports:
        parts = urlsplit(report.url)
        try:
            view = browse(report.host, ca_bundle=ca_bundle, connect=connect,
                          http_connect=http_connect, timeout=timeout, path=parts.path or "/")
        except BrowserMissing as error:
            if missing_is_problem:
                raise
            report.findings.append(Finding("browser", "warning", f"{error}.",
                                           error.hint.capitalize() + "."))
            continue
        except BrowserError as error:
            report.findings.append(Finding("browser", "warning",
                                           f"The real-browser check could not run: {error}.",
                                           "Run mamoru check --browser again; if it keeps "
                                           "failing, check without --browser."))
            continue
        report.findings.append(browser_finding(view))
