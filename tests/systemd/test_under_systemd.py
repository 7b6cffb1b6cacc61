"""mamoru the way a clinic runs it: Debian 12 under a real systemd, installed from its .deb.

One container is booted for the whole module (tests/systemd/container.py) and the tests run in
order, each building on the one before, like one administrator's afternoon:
install the package; `mamoru init` + `mamoru provision` for a site on Debian's nginx and one on
Debian's Apache (both systemd services, on 127.0.0.1 / 127.0.0.2 ports nothing else uses);
`systemctl enable --now mamoru` with 45-second Pebble certificates, so the daemon renews every
30 seconds or so; what the host sees over TLS after each renewal; `systemctl reload mamoru`
picking up the Apache site; the journal; the sandbox; the watchdog; an upgrade over the
running daemon; the timer; `systemctl stop`; `apt purge`.

Needs root, systemd-nspawn (systemd-container), debootstrap, and Debian's pebble on the host
(scripts/setup.sh installs them). Nothing here is skipped: a missing tool fails.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509

from tests.servers.pebble import Pebble
from tests.servers.ports import free_port, tcp_port_is_free
from tests.systemd.container import REPO, Container, rootfs

pytestmark = pytest.mark.systemd

VALIDITY = 45  # seconds; mamoru renews with a third left, so about every 30 s
NGINX_NAME, APACHE_NAME = "nginx-site.test", "apache-site.test"
NGINX_SITE, APACHE_SITE = "nginx-site-test", "apache-site-test"
NGINX_IP, APACHE_IP = "127.0.0.1", "127.0.0.2"
CACHE = Path("/var/cache/mamoru-test")
DEB_INPUTS = ("src", "systemd", "packaging", "pyproject.toml", "config.example.yaml",
              "README.md", "scripts/build-deb.sh")


def package() -> Path:
    """dist/mamoru_*.deb from scripts/build-deb.sh, cached by the hash of what goes into it."""
    digest = hashlib.sha256()
    for name in DEB_INPUTS:
        base = REPO / name
        for path in sorted([base] if base.is_file() else base.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    cached = CACHE / f"deb-{digest.hexdigest()[:12]}"
    found = sorted(cached.glob("mamoru_*.deb"))
    if found:
        return found[0]
    out = subprocess.run(["bash", str(REPO / "scripts/build-deb.sh")], cwd=REPO, check=False,
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, f"build-deb.sh failed:\n{out.stderr[-4000:]}"
    built = REPO / out.stdout.strip().splitlines()[-1]
    for stale in CACHE.glob("deb-*"):  # packages of sources that are gone
        shutil.rmtree(stale, ignore_errors=True)
    cached.mkdir(parents=True, exist_ok=True)
    shutil.copy2(built, cached / built.name)
    return cached / built.name


def served(ip: str, port: int, name: str) -> int | None:
    """The serial of the certificate served for `name` at ip:port, seen from the host."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((ip, port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname=name) as tls:
            der = tls.getpeercert(binary_form=True)
    except OSError:
        return None
    return x509.load_der_x509_certificate(der).serial_number if der else None


@dataclass
class Box:
    machine: Container
    pebble: Pebble
    http_port: int
    nginx_https: int
    apache_https: int
    deb: Path
    timings: dict[str, float] = field(default_factory=dict)
    seen: dict[str, list[int]] = field(default_factory=dict)

    def sh(self, *argv: str, check: bool = True, timeout: float = 180
           ) -> subprocess.CompletedProcess[str]:
        return self.machine.run(list(argv), check=check, timeout=timeout)

    def live_serial(self, site: str) -> int:
        pem = self.machine.read(f"/etc/mamoru/live/{site}/cert.pem").encode()
        return x509.load_pem_x509_certificate(pem).serial_number

    def events(self) -> list[dict[str, object]]:
        text = self.machine.read("/var/log/mamoru/events.jsonl")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def record(self) -> None:
        for site, (ip, port, name) in self.sites().items():
            serial = served(ip, port, name)
            history = self.seen.setdefault(site, [])
            if serial is not None and (not history or history[-1] != serial):
                history.append(serial)

    def sites(self) -> dict[str, tuple[str, int, str]]:
        return {NGINX_SITE: (NGINX_IP, self.nginx_https, NGINX_NAME),
                APACHE_SITE: (APACHE_IP, self.apache_https, APACHE_NAME)}

    def main_pid(self) -> int:
        return int(self.machine.show("mamoru.service", "MainPID"))


def _port_free_on_both() -> int:
    for _ in range(50):
        port = free_port()
        if tcp_port_is_free(port, APACHE_IP):
            return port
    raise RuntimeError("no port free on both 127.0.0.1 and 127.0.0.2")


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    started = time.monotonic()
    work = tmp_path_factory.mktemp("systemd")
    root = rootfs()
    deb = package()
    ready = time.monotonic()
    http_port = _port_free_on_both()
    with Pebble(work / "pebble", validity_seconds=VALIDITY, http_port=http_port) as pebble, \
            Container(root, work / "nspawn.log") as machine:
        pebble.add_a(APACHE_NAME, [APACHE_IP])
        result = Box(machine, pebble, http_port, free_port(), _port_free_on_both(), deb)
        result.timings["rootfs+deb"] = ready - started
        result.timings["boot"] = time.monotonic() - ready
        yield result
        print(f"\nsystemd suite timings: {result.timings}; served serials: {result.seen}")


# ---- install and first certificates --------------------------------------------------------


def test_apt_installs_the_package_with_its_units_and_directories(box: Box) -> None:
    box.machine.path("/root").mkdir(exist_ok=True)
    shutil.copy2(box.deb, box.machine.path(f"/root/{box.deb.name}"))
    out = box.sh("apt-get", "install", "-y", "--no-install-recommends", f"/root/{box.deb.name}")
    assert "mamoru init" in out.stdout, out.stdout  # postinst tells what to do next
    for path in ("/lib/systemd/system/mamoru.service", "/lib/systemd/system/mamoru-renew.timer",
                 "/etc/mamoru/config.example.yaml", "/usr/bin/mamoru"):
        # Tested inside: /usr/bin/mamoru is an absolute link, which the host would resolve.
        assert box.sh("test", "-e", path, check=False).returncode == 0, path
    modes = box.sh("stat", "-c", "%n %a", "/var/lib/mamoru", "/var/log/mamoru",
                   "/etc/mamoru/live").stdout.split("\n")
    assert modes[:3] == ["/var/lib/mamoru 711", "/var/log/mamoru 750", "/etc/mamoru/live 755"]
    assert "mamoru" in box.sh("mamoru", "--help").stdout
    # Not enabled by the package: it needs a config first.
    assert box.sh("systemctl", "is-enabled", "mamoru", check=False).stdout.strip() == "disabled"


def test_the_distributions_web_servers_run_as_services(box: Box) -> None:
    m = box.machine
    m.write("/etc/hosts", f"127.0.0.1 localhost\n{NGINX_IP} {NGINX_NAME}\n"
            f"{APACHE_IP} {APACHE_NAME}\n")
    # nginx without its default site, as on a server whose default site was removed: no
    # port-80 server at all, so mamoru puts up its own for the first certificate.
    box.sh("rm", "/etc/nginx/sites-enabled/default")
    m.write("/etc/apache2/ports.conf", f"Listen {APACHE_IP}:{box.http_port}\n")
    vhost = m.read("/etc/apache2/sites-available/000-default.conf")
    m.write("/etc/apache2/sites-available/000-default.conf",
            vhost.replace("<VirtualHost *:80>", f"<VirtualHost {APACHE_IP}:{box.http_port}>"))
    box.sh("a2enmod", "-q", "ssl", "rewrite", "headers")
    box.sh("systemctl", "enable", "--now", "nginx.service", "apache2.service")
    for unit in ("nginx.service", "apache2.service"):
        assert m.show(unit, "ActiveState") == "active", unit
    # The CA's TLS root, where mamoru's sandbox can read it.
    m.write("/etc/mamoru/pebble-ca.pem", Path(box.pebble.ca_bundle).read_text())


def init_and_provision(box: Box, server: str, name: str, ip: str, https: int,
                       config: str, *, default_site: bool = True) -> None:
    # Both Debian services run: init will not guess which one serves the site.
    guess = box.sh("mamoru", "init", "-d", name, "-c", config, check=False)
    assert guess.returncode == 2 and "both run" in guess.stderr, guess.stderr
    assert not box.machine.path(config).exists()
    # Without a default site, init cannot find the plain-HTTP address: the administrator
    # gives it.
    http = [] if default_site else ["--http-listen", f"{ip}:{box.http_port}"]
    out = box.sh("mamoru", "init", "-d", name, "--contact", "it@clinic.test", "--server", server,
                 "--directory", box.pebble.directory_url, "--ca-bundle",
                 "/etc/mamoru/pebble-ca.pem", "--https-listen", f"{ip}:{https}", *http,
                 "-c", config)
    assert "written" in out.stdout
    if not default_site:
        assert "mamoru puts up its own" in out.stdout + out.stderr, out
    text = box.machine.read(config)
    # What init found: the default site's plain-HTTP address and webroot.
    assert f'http: "{ip}:{box.http_port}"' in text and '"/var/www/html"' in text, text
    box.sh("mamoru", "check-config", "-c", config)
    again = box.sh("mamoru", "init", "-d", name, "-c", config, check=False)
    assert again.returncode == 2 and "never replaces" in again.stderr
    box.sh("mamoru", "provision", "-c", config, timeout=300)


def test_init_and_provision_an_nginx_site_on_an_nginx_with_no_port80_server(box: Box) -> None:
    with pytest.raises(ConnectionRefusedError):  # nothing answers plain HTTP for the name
        socket.create_connection((NGINX_IP, box.http_port), timeout=5).close()
    init_and_provision(box, "nginx", NGINX_NAME, NGINX_IP, box.nginx_https,
                       "/etc/mamoru/config.yaml", default_site=False)
    assert served(NGINX_IP, box.nginx_https, NGINX_NAME) == box.live_serial(NGINX_SITE)
    kinds = [e["kind"] for e in box.events() if e.get("site") == NGINX_SITE]
    assert "port80-up" in kinds and "port80-down" not in kinds, kinds
    # The site's own plain-HTTP server (the redirect) now answers on the port.
    with socket.create_connection((NGINX_IP, box.http_port), timeout=5) as plain:
        plain.sendall(f"GET / HTTP/1.0\r\nHost: {NGINX_NAME}\r\n\r\n".encode())
        assert plain.recv(200).split(b"\r\n")[0].endswith(b"301 Moved Permanently")


def test_init_and_provision_an_apache_site(box: Box) -> None:
    init_and_provision(box, "apache", APACHE_NAME, APACHE_IP, box.apache_https,
                       "/root/apache.yaml")
    assert served(APACHE_IP, box.apache_https, APACHE_NAME) == box.live_serial(APACHE_SITE)


# ---- the daemon ------------------------------------------------------------------------------


def test_the_daemon_starts_from_a_fresh_webroot_and_renews(box: Box) -> None:
    m = box.machine
    # The daemon makes .well-known/acme-challenge itself, under UMask=0077; nginx's www-data
    # workers must still read the answers (Pebble validates through them).
    box.sh("rm", "-rf", "/var/www/html/.well-known")
    # The watchdog test below must not wait 2 minutes: a drop-in, as an administrator would.
    m.write("/etc/systemd/system/mamoru.service.d/test.conf",
            "[Service]\nWatchdogSec=6\nRestartSec=1\n")
    box.sh("systemctl", "daemon-reload")
    box.sh("systemctl", "enable", "--now", "mamoru.service")
    assert m.show("mamoru.service", "ActiveState") == "active"
    box.record()
    deadline = time.monotonic() + 3 * VALIDITY
    while time.monotonic() < deadline and len(box.seen.get(NGINX_SITE, [])) < 3:
        box.record()
        time.sleep(1)
    assert len(box.seen[NGINX_SITE]) >= 3, box.seen  # provisioned + two renewals, all served
    assert served(NGINX_IP, box.nginx_https, NGINX_NAME) == box.live_serial(NGINX_SITE)
    modes = box.sh("stat", "-c", "%a", "/var/www/html/.well-known",
                   "/var/www/html/.well-known/acme-challenge").stdout.split()
    assert modes == ["755", "755"]


def test_reload_picks_up_an_added_site(box: Box) -> None:
    m = box.machine
    site_block = m.read("/root/apache.yaml").split("\nsites:\n", 1)[1]
    config = m.read("/etc/mamoru/config.yaml")
    m.write("/etc/mamoru/config.yaml", config.rstrip("\n") + "\n" + site_block, mode=0o600)
    before = box.main_pid()
    box.sh("systemctl", "reload", "mamoru.service")
    assert box.main_pid() == before and m.show("mamoru.service", "ActiveState") == "active"
    deadline = time.monotonic() + 3 * VALIDITY
    while time.monotonic() < deadline and len(box.seen.get(APACHE_SITE, [])) < 3:
        box.record()
        time.sleep(1)
    # Provisioned from the shell, then renewed twice by the daemon, and Apache served each.
    assert len(box.seen[APACHE_SITE]) >= 3, box.seen
    assert served(APACHE_IP, box.apache_https, APACHE_NAME) == box.live_serial(APACHE_SITE)
    journal = box.sh("journalctl", "-u", "apache2", "--no-pager").stdout
    assert "Reloaded" in journal or "Reloading" in journal, journal[-2000:]


def test_the_journal_has_the_events_with_their_priorities(box: Box) -> None:
    out = box.sh("journalctl", "-u", "mamoru.service", "-o", "json", "--no-pager").stdout
    entries = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    ours = [e for e in entries if e.get("SYSLOG_IDENTIFIER") == "mamoru"]
    renewed = [e for e in ours if str(e.get("MESSAGE", "")).startswith(f"{NGINX_SITE}: ")
               and e.get("PRIORITY") == "5"]
    assert len(renewed) >= 2, [(e.get("PRIORITY"), e.get("MESSAGE")) for e in ours][-30:]
    assert any(str(e.get("MESSAGE", "")).startswith(f"{APACHE_SITE}: ") and
               e.get("PRIORITY") == "5" for e in ours)
    # No line arrives with its "<N>" prefix unparsed.
    assert not [e for e in ours if str(e.get("MESSAGE", "")).startswith("<")]


def test_the_sandbox_is_really_applied(box: Box) -> None:
    pid = box.main_pid()
    status = box.machine.read(f"/proc/{pid}/status")
    assert "NoNewPrivs:\t1" in status and "Seccomp:\t2" in status

    def write(path: str) -> bool:
        code = ("import os, sys\n"
                "p = os.path.join(sys.argv[1], '.mamoru-sandbox-probe')\n"
                "try:\n    open(p, 'w').close()\nexcept OSError:\n    sys.exit(1)\n"
                "os.unlink(p)\n")
        # Into the daemon's own mount namespace: its view of the file systems.
        result = box.sh("nsenter", "-t", str(pid), "-m", "python3", "-c", code, path,
                        check=False)
        return result.returncode == 0

    for path in ("/", "/run", "/run/systemd/system", "/usr", "/etc", "/etc/mamoru", "/opt",
                 "/var/lib", "/etc/systemd/system"):
        assert not write(path), f"{path} is writable inside mamoru.service"
    for path in ("/var/lib/mamoru", "/etc/mamoru/live", "/var/log/mamoru", "/etc/nginx/conf.d",
                 "/etc/apache2/sites-enabled", "/var/www/html"):
        assert write(path), f"{path} is not writable inside mamoru.service"


def probe_unit(box: Box, name: str, exec_start: str, drop: str = "",
               kind: str = "simple") -> None:
    """A copy of mamoru.service's sandbox running `exec_start` instead of mamoru."""
    lines = []
    for line in box.machine.read("/lib/systemd/system/mamoru.service").splitlines():
        key = line.partition("=")[0]
        if key in ("Type", "NotifyAccess", "ExecStart", "ExecReload", "WatchdogSec", "Restart"):
            continue
        if drop and line.startswith(drop):
            continue
        lines.append(line.replace("[Service]", f"[Service]\nType={kind}\nExecStart={exec_start}"))
    box.machine.write(f"/etc/systemd/system/{name}", "\n".join(lines) + "\n")
    box.sh("systemctl", "daemon-reload")


def test_without_readonlypaths_run_the_sandbox_leaves_run_writable(box: Box) -> None:
    # What the suite found: systemd 252 leaves /run writable under ProtectSystem=strict once
    # ProtectKernelTunables=/ProtectControlGroups=/ProtectProc= are set; the probe above would
    # catch a unit that lost ReadOnlyPaths=/run.
    probe_unit(box, "probe-run.service", "/usr/bin/sleep infinity", drop="ReadOnlyPaths=/run")
    box.sh("systemctl", "start", "probe-run.service")
    try:
        pid = box.machine.show("probe-run.service", "MainPID")
        result = box.sh("nsenter", "-t", pid, "-m", "python3", "-c",
                        "open('/run/.mamoru-probe', 'w').close()", check=False)
        assert result.returncode == 0, "systemd now keeps /run read-only by itself"
    finally:
        box.sh("systemctl", "stop", "probe-run.service")
        box.sh("rm", "-f", "/run/.mamoru-probe")


def test_a_plain_nginx_t_fails_inside_the_sandbox_and_through_pid1_works(box: Box) -> None:
    # Why `mamoru init` writes server.test as systemd-run ... nginx -t for nginx under systemd.
    probe_unit(box, "probe-nginx-t.service", "/usr/sbin/nginx -t", kind="oneshot")
    plain = box.sh("systemctl", "start", "probe-nginx-t.service", check=False)
    assert plain.returncode != 0
    probe_unit(box, "probe-nginx-t.service", "/usr/bin/systemd-run --quiet --wait --pipe "
               "--collect --service-type=exec /usr/sbin/nginx -t", kind="oneshot")
    box.sh("systemctl", "start", "probe-nginx-t.service")


def test_systemd_analyze_security_inside(box: Box) -> None:
    out = box.sh("systemd-analyze", "security", "--no-pager", "mamoru.service").stdout
    line = [x for x in out.splitlines() if "Overall exposure level" in x][-1]
    assert float(line.split(":")[1].split()[0]) <= 2.5, line


def renewals(box: Box, site: str) -> list[float]:
    from datetime import datetime

    return [datetime.fromisoformat(str(e["time"])).timestamp() for e in box.events()
            if e.get("site") == site and e.get("kind") in ("renewed", "provisioned")]


def assert_nothing_ordered_twice(box: Box) -> None:
    # Renewals of one site are at least most of a third of the lifetime apart: a restart
    # (watchdog, upgrade) never orders again for a certificate that is not due.
    for site in box.sites():
        times = renewals(box, site)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(gap > VALIDITY / 3 * 0.6 for gap in gaps), (site, gaps)


def test_a_stopped_daemon_is_restarted_by_the_watchdog_and_orders_nothing_twice(
        box: Box) -> None:
    pid = box.main_pid()
    box.sh("python3", "-c", f"import os, signal; os.kill({pid}, signal.SIGSTOP)")
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        now = box.main_pid()
        if now not in (0, pid) and box.machine.show("mamoru.service", "ActiveState") == "active":
            break
        time.sleep(0.5)
    assert box.main_pid() not in (0, pid)
    assert int(box.machine.show("mamoru.service", "NRestarts")) >= 1
    journal = box.sh("journalctl", "-u", "mamoru.service", "--no-pager").stdout
    assert "Watchdog timeout" in journal, journal[-2000:]
    time.sleep(VALIDITY / 2)
    box.record()
    assert_nothing_ordered_twice(box)


def test_an_upgrade_over_the_running_daemon_restarts_it_and_keeps_its_state(box: Box) -> None:
    work = box.machine.path("/root/upgrade")
    box.sh("dpkg-deb", "-R", f"/root/{box.deb.name}", "/root/upgrade")
    control = work / "DEBIAN/control"
    text = control.read_text()
    old = next(x for x in text.splitlines() if x.startswith("Version: ")).split()[1]
    control.write_text(text.replace(f"Version: {old}", f"Version: {old}+upgrade1"))
    box.sh("dpkg-deb", "-b", "/root/upgrade", "/root/mamoru-upgrade.deb")
    account = box.sh("find", "/var/lib/mamoru/accounts", "-type", "f").stdout
    pid = box.main_pid()
    box.sh("apt-get", "install", "-y", "/root/mamoru-upgrade.deb")
    assert box.main_pid() not in (0, pid)
    assert box.machine.show("mamoru.service", "ActiveState") == "active"
    assert box.sh("find", "/var/lib/mamoru/accounts", "-type", "f").stdout == account
    time.sleep(VALIDITY / 2)
    box.record()
    assert_nothing_ordered_twice(box)
    for site, (ip, port, name) in box.sites().items():
        assert served(ip, port, name) == box.live_serial(site)


def test_systemctl_stop_exits_cleanly(box: Box) -> None:
    box.sh("systemctl", "stop", "mamoru.service")
    assert box.machine.show("mamoru.service", "Result") == "success"
    assert box.machine.show("mamoru.service", "ExecMainStatus") == "0"
    journal = box.sh("journalctl", "-u", "mamoru.service", "--no-pager", "-n", "30").stdout
    assert "Traceback" not in journal.split("Stopping")[-1], journal


def test_the_timer_mode_renews(box: Box) -> None:
    box.sh("systemctl", "disable", "mamoru.service")
    box.sh("systemctl", "enable", "--now", "mamoru-renew.timer")
    assert "mamoru-renew.timer" in box.sh("systemctl", "list-timers", "--all").stdout
    time.sleep(VALIDITY * 0.75)  # both certificates are due by now
    before = {site: box.live_serial(site) for site in box.sites()}
    # What the timer starts, started now rather than at noon.
    box.sh("systemctl", "start", "mamoru-renew.service", timeout=300)
    assert box.machine.show("mamoru-renew.service", "Result") == "success"
    for site, (ip, port, name) in box.sites().items():
        assert box.live_serial(site) != before[site], site
        assert served(ip, port, name) == box.live_serial(site)


def test_purge_keeps_the_certificates_a_web_server_serves(box: Box) -> None:
    box.sh("systemctl", "disable", "--now", "mamoru-renew.timer")
    out = box.sh("apt-get", "purge", "-y", "mamoru")
    assert "kept" in out.stdout, out.stdout
    assert box.sh("test", "-e", "/usr/bin/mamoru", check=False).returncode != 0
    assert box.sh("test", "-e", "/opt/mamoru/venv", check=False).returncode != 0
    assert box.machine.path(f"/etc/mamoru/live/{NGINX_SITE}/fullchain.pem").exists()
    box.sh("systemctl", "reload", "nginx.service", "apache2.service")
    for site, (ip, port, name) in box.sites().items():
        assert served(ip, port, name) == box.live_serial(site)
