"""`mamoru init`: a first, commented config, written by looking at this machine.

What it looks at: which web server runs (its systemd unit, else its binary and config
directory), where mamoru's generated file goes (nginx: conf.d; Apache: sites-enabled), and the
distribution's default site (Debian's `default` / `000-default.conf`): its webroot answers the
first http-01 challenge and its plain-HTTP address is where the site's own HTTP server goes.
The result is checked with the config loader before it is written, and an existing file is
never replaced (the file is created with O_EXCL, mode 0600).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mamoru.config import load_config_text
from mamoru.errors import MamoruError, UsageError
from mamoru.i18n import _

SERVERS = ("nginx", "apache")
DEFAULT_WEBROOT = "/var/www/html"
# The nginx config test run through PID 1, outside mamoru's sandbox (systemd/mamoru.service
# says why a plain `nginx -t` cannot work inside it).
NGINX_TEST_VIA_PID1 = ["systemd-run", "--quiet", "--wait", "--pipe", "--collect",
                       "--service-type=exec", "/usr/sbin/nginx", "-t"]

# Listen hosts that mean "every address" (verify then uses mamoru's default, 127.0.0.1).
WILDCARDS = ("", "*", "0.0.0.0", "[::]")  # noqa: S104 - compared against, never bound

Runner = Callable[[Sequence[str]], int]


def _run(argv: Sequence[str]) -> int:
    try:
        return subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=10, check=False).returncode
    except (OSError, subprocess.TimeoutExpired):
        return 127


@dataclass
class Machine:
    """What init found; every field has a plain default for a machine it cannot read."""

    server: str
    running: bool  # a systemd unit of that server is active
    systemd: bool  # PID 1 is systemd
    conf_dir: str
    webroot: str
    http_listen: str  # the default site's plain-HTTP address ("80", "127.0.0.1:8080")
    default_site: str | None  # the file it was read from
    notes: list[str] = field(default_factory=list)


def _units(server: str) -> tuple[str, ...]:
    return ("nginx.service",) if server == "nginx" else ("apache2.service", "httpd.service")


def _installed(root: Path, server: str) -> bool:
    if server == "nginx":
        paths = ["usr/sbin/nginx", "etc/nginx"]
    else:
        paths = ["usr/sbin/apache2", "usr/sbin/httpd", "etc/apache2", "etc/httpd"]
    return any((root / p).exists() for p in paths)


def detect(server: str | None = None, *, root: Path = Path("/"),
           run: Runner = _run) -> Machine:
    """Look at the machine under `root`; `server` forces nginx or apache."""
    systemd = (root / "run/systemd/system").is_dir() and shutil.which("systemctl") is not None
    active = {s: systemd and any(run(["systemctl", "is-active", "--quiet", unit]) == 0
                                 for unit in _units(s)) for s in SERVERS}
    if server is None:
        running = [s for s in SERVERS if active[s]]
        installed = [s for s in SERVERS if _installed(root, s)]
        candidates = running or installed
        if not candidates:
            raise UsageError(_("found neither nginx nor Apache on this machine: install one, "
                               "or say which with --server nginx|apache"))
        if len(candidates) > 1:
            raise UsageError(_("nginx and Apache both run here: say which serves the site with "
                               "--server nginx|apache") if running else
                             _("nginx and Apache both are installed here: say which serves the "
                               "site with --server nginx|apache"))
        server = candidates[0]
    if server == "nginx":
        return _nginx(root, systemd, active["nginx"])
    return _apache(root, systemd, active["apache"])


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _strip_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def _nginx(root: Path, systemd: bool, running: bool) -> Machine:
    conf_dir = "/etc/nginx/conf.d" if (root / "etc/nginx/conf.d").is_dir() else \
        "/etc/nginx/sites-enabled"
    machine = Machine("nginx", running, systemd, conf_dir, DEFAULT_WEBROOT, "80", None)
    files = sorted((root / "etc/nginx/sites-enabled").glob("*")) + \
        sorted((root / "etc/nginx/conf.d").glob("*.conf"))
    for path in files:
        text = _strip_comments(_read(path))
        listens = re.findall(r"^\s*listen\s+([^;]+);", text, re.M)
        plain = [ln.split()[0] for ln in listens
                 if "default_server" in ln.split() and "ssl" not in ln.split()]
        if not plain:
            continue
        # Prefer an IPv4 or wildcard address over [::]:80 (mamoru listens on one address).
        plain.sort(key=lambda a: a.startswith("["))
        machine.http_listen = plain[0]
        found = re.search(r"^\s*root\s+([^;\s]+)\s*;", text, re.M)
        if found:
            machine.webroot = found.group(1).strip("\"'")
        machine.default_site = "/" + str(path.relative_to(root))
        break
    else:
        machine.notes.append(_(
            "no default port-80 server found in /etc/nginx: for the first certificate mamoru "
            "puts up its own for the site's names (give its address with --http-listen if it "
            "is not port 80), serving {webroot}/.well-known/acme-challenge/").format(
            webroot=machine.webroot))
    return machine


def _apache(root: Path, systemd: bool, running: bool) -> Machine:
    debian = (root / "etc/apache2").is_dir()
    conf_dir = "/etc/apache2/sites-enabled" if debian else "/etc/httpd/conf.d"
    machine = Machine("apache", running, systemd, conf_dir, DEFAULT_WEBROOT, "80", None)
    files = sorted((root / "etc/apache2/sites-enabled").glob("*")) if debian else \
        sorted((root / "etc/httpd/conf.d").glob("*.conf"))
    for path in files:
        text = _strip_comments(_read(path))
        host = re.search(r"<VirtualHost\s+([^>\s]+)", text)
        docroot = re.search(r"^\s*DocumentRoot\s+(\S+)", text, re.M)
        if not host or not docroot or "SSLEngine" in text:
            continue
        address = host.group(1)
        addr, _colon, port = address.rpartition(":")
        machine.http_listen = port if addr in ("*", "_default_", "") else address
        machine.webroot = docroot.group(1).strip("\"'")
        machine.default_site = "/" + str(path.relative_to(root))
        break
    else:
        machine.notes.append(_(
            "no port-80 VirtualHost found in {dir}: for the first certificate mamoru puts "
            "up its own for the site's names (give its address with --http-listen if it is not "
            "port 80), serving {webroot}/.well-known/acme-challenge/").format(
            dir=conf_dir, webroot=machine.webroot))
    if debian:
        missing = [m for m in ("ssl", "rewrite", "headers")
                   if not (root / f"etc/apache2/mods-enabled/{m}.load").exists()]
        if missing:
            machine.notes.append(_("Apache needs these modules for mamoru's site: a2enmod "
                                   "{modules} && systemctl restart apache2").format(
                modules=" ".join(missing)))
    return machine


def site_name(domain: str) -> str:
    """A site name (a-z, 0-9, '-') from the first domain: www.clinic.example -> clinic-example."""
    name = domain.lower().removeprefix("*.").removeprefix("www.")
    name = re.sub(r"[^a-z0-9-]+", "-", name).strip("-")[:40].strip("-")
    return name or "site"


def _q(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a YAML string


@dataclass
class Answers:
    domains: list[str]
    contact: str | None = None
    directory: str = "letsencrypt"
    ca_bundle: str | None = None
    https_listen: str = "443"
    http_listen: str | None = None  # None: the default site's


def render(answers: Answers, machine: Machine) -> str:
    """The config text: a commented first config for one site."""
    http = answers.http_listen or machine.http_listen
    https = answers.https_listen
    name = site_name(answers.domains[0])
    out = [
        "# mamoru configuration, written by `mamoru init` from what it found on this machine.",
        "# Every key, with its default: /etc/mamoru/config.example.yaml.",
        "# Check it: mamoru check-config.",
        "# Then: mamoru provision (first certificate), systemctl enable --now mamoru (renewals).",
        "",
        "acme:",
        "  # The CA: letsencrypt | letsencrypt-staging | any https:// ACME directory URL.",
        f"  directory: {_q(answers.directory)}",
    ]
    if answers.ca_bundle:
        out += ["  # The CA's own TLS certificate is trusted through this bundle (a private CA).",
                f"  ca_bundle: {_q(answers.ca_bundle)}"]
    if answers.contact:
        out += ["  # The CA may write here about this account. mamoru's own alerts warn of "
                "expiry.", f"  contact: {_q(answers.contact)}"]
    else:
        out += ["  # contact: admin@clinic.example   # an address the CA may write to"]
    out += [
        "",
        "sites:",
        f"  {name}:",
        "    # Names on the certificate (one certificate for all of them).",
        f"    domains: [{', '.join(_q(d) for d in answers.domains)}]",
        "    challenge:",
        "      type: http-01",
        "      # Served at http://NAME/.well-known/acme-challenge/ by "
        + ("the default site," if machine.default_site
           else "mamoru's own temporary port-80 server"),
        *([f"      # {machine.default_site},"] if machine.default_site else
          ["      # for the first certificate (there is no default site),"]),
        "      # and by mamoru's own port-80 server for these names once it is installed.",
        f"      webroot: {_q(machine.webroot)}",
        "    server:",
        f"      # {'nginx' if machine.server == 'nginx' else 'Apache'} "
        + ("(its systemd unit runs)" if machine.running else "(found installed)")
        + "; mamoru writes a complete site into conf_dir.",
        f"      type: {machine.server}",
        "      mode: site",
        f"      conf_dir: {_q(machine.conf_dir)}",
        "      # HTTPS for the names, and plain HTTP redirecting to it (challenges still served).",
        f"      listen: {{https: {_q(https)}, http: {_q(http)}}}",
        "      # The site's document root: change it to where the site's pages are.",
        f"      root: {_q(machine.webroot)}",
    ]
    if machine.server == "nginx" and machine.systemd:
        out += ["      # nginx -t through PID 1: inside mamoru.service's sandbox a plain",
                "      # `nginx -t` cannot open nginx's pid file and logs (see the unit).",
                f"      test: [{', '.join(NGINX_TEST_VIA_PID1)}]"]
    host, sep, _port = https.rpartition(":")
    if sep and host not in WILDCARDS:
        out += ["      # The TLS handshake that proves the new certificate is served.",
                f"      verify: {_q(https)}"]
    out += ["      redirect: true", ""]
    return "\n".join(out)


def refuse_existing(path: str) -> None:
    if os.path.lexists(path):
        raise UsageError(_("{path} exists; mamoru init never replaces a config (edit it, or "
                           "give another file with -c FILE)").format(path=path))


def write_config(path: str, text: str) -> None:
    """Write `text` to `path` only if no file is there (O_EXCL), 0600, after checking it."""
    load_config_text(text, path)
    refuse_existing(path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise UsageError(_("{path} exists; mamoru init never replaces a config").format(
            path=path)) from None
    except OSError as error:
        raise MamoruError(_("cannot create {path}: {why}").format(path=path,
                                                                  why=error.strerror)) from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def ask(prompt: str, read: Callable[[str], str] | None = None) -> str:
    """One answer from the terminal (`input`, looked up when called); empty at end of input."""
    try:
        return (read or input)(prompt).strip()
    except EOFError:
        return ""
