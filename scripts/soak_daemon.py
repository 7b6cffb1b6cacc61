#!/usr/bin/env python3
"""Soak `mamoru run`: a real Pebble issuing short certificates, a real nginx serving the sites,
and the daemon left alone; check that every site is always served a valid certificate, renewed
when the policy says, with no extra orders.

    python scripts/soak_daemon.py [--validity 120] [--duration 600] [--sites 2] [--workdir DIR]
                                  [--json]

What it runs: Pebble (certificateValidityPeriod = --validity seconds, no nonce rejection, no
authorization reuse), one nginx (its own default server answers http-01 from a webroot on the
port Pebble dials; mamoru writes each site's HTTPS server there, site mode), and
`python -m mamoru.cli run -c config.yaml` as a separate process with $NOTIFY_SOCKET pointing at
a datagram socket of this script. Every `--sample` seconds it handshakes with nginx for every
site (SNI = the site's name) and records the certificate served.

Checked (each failure is listed in the report; exit status 1 if any):
- every sample after a site's first install got a certificate that was valid at that moment
  (no gap), and every certificate mamoru issued was seen served by nginx;
- each renewal's order came when the policy says: after half the previous certificate's
  lifetime minus the jitter (10 % of that half), and no later than half + `--late` seconds;
- orders at Pebble == certificates issued == 1 + renewals per site (no storms, no retries);
- READY=1, STATUS= and, after SIGTERM at the end, STOPPING=1 arrived on the notify socket, and
  the daemon exited 0 within a few seconds.

The harness classes (NotifySocket, Daemon, read_events) are also used by tests/e2e/test_daemon.py.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from cryptography import x509  # noqa: E402
from tests.servers.nginx import Nginx  # noqa: E402
from tests.servers.pebble import Pebble  # noqa: E402
from tests.servers.ports import free_port  # noqa: E402

from mamoru.install.verify import fetch_leaf  # noqa: E402

MAMORU = [sys.executable, "-m", "mamoru.cli"]
JITTER = 0.1  # renewal.jitter_fraction's default


# --- harness ------------------------------------------------------------------------------


class NotifySocket:
    """An AF_UNIX datagram socket in the abstract namespace, standing in for systemd's notify
    socket: `address` goes into $NOTIFY_SOCKET; every datagram is kept with its arrival time."""

    def __init__(self) -> None:
        self.name = f"mamoru-notify-{os.getpid()}-{secrets.token_hex(4)}"
        self.address = "@" + self.name
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def snapshot(self) -> list[tuple[float, dict[str, str]]]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, key: str, value: str | None = None, *, after: int = 0,
                 timeout: float = 30.0) -> tuple[int, dict[str, str]]:
        """The first message from index `after` on that has `key` (= `value`); its index."""
        deadline = time.monotonic() + timeout
        while True:
            for index, (_, fields) in enumerate(self.snapshot()[after:], start=after):
                if key in fields and (value is None or fields[key] == value):
                    return index, fields
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {key}={value or '*'} notification within {timeout} s; "
                                   f"got {[m for _, m in self.snapshot()]}")
            time.sleep(0.02)

    def close(self) -> None:
        self._closed.set()
        self.sock.close()
        self._thread.join(2)


class Daemon:
    """`mamoru run -c CONFIG` as a child process (its own session), output in `log_path`."""

    def __init__(self, config: Path, log_path: Path, *, notify: NotifySocket | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = log_path
        self.notify = notify
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        env = {**os.environ, **self.env}
        env.pop("NOTIFY_SOCKET", None)
        env.pop("WATCHDOG_USEC", None)
        if self.notify is not None:
            env["NOTIFY_SOCKET"] = self.notify.address
        env.update(self.env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([*MAMORU, "run", "-c", str(self.config)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=env, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signum)

    def stop(self, timeout: float = 20.0) -> tuple[int, float]:
        """SIGTERM; returns (exit status, seconds it took)."""
        assert self.proc is not None
        started = time.monotonic()
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - started

    def kill9(self) -> None:
        assert self.proc is not None
        self.signal(signal.SIGKILL)
        self.proc.wait(10)

    def cleanup(self) -> None:
        """Whatever happened, no daemon is left behind (by PID)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every event in the JSONL log so far (a line being written is skipped)."""
    out = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def wait_events(path: Path, predicate: Any, *, count: int = 1, timeout: float = 30.0,
                daemon: Daemon | None = None) -> list[dict[str, Any]]:
    """Wait until `count` events satisfy `predicate`; returns them."""
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in read_events(path) if predicate(e)]
        if len(found) >= count:
            return found
        if daemon is not None and not daemon.alive():
            code = daemon.proc.returncode if daemon.proc else None
            raise AssertionError(f"mamoru run exited ({code}):\n{daemon.output()[-4000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(found)}/{count} matching events in {timeout} s; "
                               f"last events: {[e['kind'] for e in read_events(path)][-30:]}")
        time.sleep(0.05)


def when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# --- the soak -------------------------------------------------------------------------------


@dataclass
class Served:
    time: float  # epoch seconds
    serial: str | None
    not_before: float | None = None
    not_after: float | None = None
    error: str | None = None


@dataclass
class SiteReport:
    name: str
    issued: list[dict[str, Any]] = field(default_factory=list)  # serial, order/issued times
    renewals: int = 0
    # For each renewal: when its order came, as a fraction of the previous lifetime.
    renewed_at_fraction: list[float] = field(default_factory=list)
    samples: int = 0
    gaps: list[str] = field(default_factory=list)
    min_left_fraction: float = 1.0  # the least lifetime left seen served
    served_serials: list[str] = field(default_factory=list)


@dataclass
class Report:
    validity: int
    duration: float
    sites: dict[str, SiteReport] = field(default_factory=dict)
    orders: int = 0
    issued: int = 0
    failed_events: int = 0
    notify: list[str] = field(default_factory=list)
    stop_seconds: float = 0.0
    exit_code: int | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        lines = [f"soak: {len(self.sites)} sites, {self.validity} s certificates, "
                 f"{self.duration:.0f} s of `mamoru run`: {self.orders} orders at Pebble, "
                 f"{self.issued} certificates issued, {self.failed_events} failed attempts; "
                 f"stopped in {self.stop_seconds:.2f} s (exit {self.exit_code})"]
        for site in self.sites.values():
            fractions = ", ".join(f"{f:.3f}" for f in site.renewed_at_fraction)
            lines.append(f"  {site.name}: {site.renewals} renewals (ordered at {fractions} of the "
                         f"previous lifetime), {site.samples} samples, {len(site.gaps)} gaps, "
                         f"least lifetime left while served {site.min_left_fraction:.3f}")
        lines += [f"  FAIL: {failure}" for failure in self.failures]
        return "\n".join(lines)


def site_names(count: int) -> list[str]:
    return [f"clinic{i}" for i in range(1, count + 1)]


def write_soak_config(workdir: Path, pebble: Pebble, nginx: Nginx, https: int, webroot: Path,
                      docroot: Path, names: list[str]) -> Path:
    sites = {name: {
        "domains": [f"{name}.example"],
        "challenge": {"webroot": str(webroot)},
        "server": {"type": "nginx", "mode": "site", "conf_dir": str(nginx.conf_dir),
                   "listen": {"https": f"127.0.0.1:{https}",
                              "http": f"127.0.0.1:{pebble.http_port}"},
                   "root": str(docroot), "test": nginx.test_argv, "reload": nginx.reload_argv,
                   "verify_timeout": 5},
    } for name in names}
    config = {
        "acme": {"directory": pebble.directory_url, "ca_bundle": pebble.ca_bundle,
                 "contact": "admin@clinic.example"},
        "paths": {"state": str(workdir / "state"), "live": str(workdir / "live"),
                  "event_log": str(workdir / "log" / "events.jsonl")},
        "check": {"after_install": False},
        "sites": sites,
    }
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def start_nginx(workdir: Path, http_port: int, webroot: Path) -> Nginx:
    """nginx whose own default server answers http-01 from `webroot` on `http_port` (what a
    clinic's server does before mamoru writes the site's config)."""
    nginx = Nginx(workdir)
    nginx.write_conf("000-default", f"server {{\n    listen 127.0.0.1:{http_port} "
                     f"default_server;\n    root {webroot};\n}}\n")
    return nginx.start(wait_ports=(http_port,))


def sample(https: int, name: str) -> Served:
    now = time.time()
    served = fetch_leaf(("127.0.0.1", https), name, timeout=2.0)
    if served.der is None:
        return Served(now, None, error=served.error)
    cert = x509.load_der_x509_certificate(served.der)
    return Served(now, format(cert.serial_number, "x"),
                  cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp())


def run(validity: int = 120, duration: float = 600.0, sites: int = 2,
        workdir: Path | None = None, *, sample_every: float = 0.5, late: float = 3.0,
        echo: bool = True) -> Report:
    """The soak (see the module doc). Returns the report; never raises for a failed check."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="mamoru-soak-")).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    names = site_names(sites)
    report = Report(validity=validity, duration=duration,
                    sites={n: SiteReport(n) for n in names})
    webroot, docroot = workdir / "acme", workdir / "www"
    (webroot / ".well-known" / "acme-challenge").mkdir(parents=True, exist_ok=True)
    docroot.mkdir(exist_ok=True)
    https = free_port()
    pebble = Pebble(workdir / "pebble", http_port=free_port(), validity_seconds=validity)
    nginx: Nginx | None = None
    notify = NotifySocket()
    daemon: Daemon | None = None
    samples: dict[str, list[Served]] = {n: [] for n in names}
    try:
        pebble.start()
        nginx = start_nginx(workdir / "nginx", pebble.http_port, webroot)
        config = write_soak_config(workdir, pebble, nginx, https, webroot, docroot, names)
        daemon = Daemon(config, workdir / "mamoru.log", notify=notify).start()
        started = time.monotonic()
        next_echo = started
        while time.monotonic() - started < duration:
            if not daemon.alive():
                report.failures.append(f"mamoru run exited early:\n{daemon.output()[-3000:]}")
                break
            for name in names:
                samples[name].append(sample(https, f"{name}.example"))
            if echo and time.monotonic() >= next_echo:
                served = ", ".join(f"{n} {samples[n][-1].serial or '-'}" for n in names)
                print(f"[{time.monotonic() - started:6.1f} s] orders {pebble.order_count()}; "
                      f"served: {served}", flush=True)
                next_echo += 30
            time.sleep(sample_every)
        if daemon.alive():
            report.exit_code, report.stop_seconds = daemon.stop()
        report.orders = pebble.order_count()
    finally:
        if daemon is not None:
            daemon.cleanup()
        notify.close()
        if nginx is not None:
            nginx.stop()
        pebble.stop()
    analyse(report, read_events(workdir / "log" / "events.jsonl"), samples, notify, late)
    if echo:
        print(report.summary())
    return report


def analyse(report: Report, events: list[dict[str, Any]], samples: dict[str, list[Served]],
            notify: NotifySocket, late: float) -> None:
    """Fill in the report's figures and failures from the event log, samples and messages."""
    report.notify = [";".join(f"{k}={v}" for k, v in m.items()) for _, m in notify.snapshot()]
    kinds = [set(m) for _, m in notify.snapshot()]
    for key in ("READY", "STATUS", "STOPPING"):
        if not any(key in k for k in kinds):
            report.failures.append(f"no {key}= notification")
    if report.exit_code != 0:
        report.failures.append(f"mamoru run exited with {report.exit_code}")
    if report.stop_seconds > 5:
        report.failures.append(f"SIGTERM took {report.stop_seconds:.1f} s")
    report.failed_events = sum(1 for e in events if e["kind"] == "failed")
    if report.failed_events:
        report.failures.append(f"{report.failed_events} failed attempts: " + "; ".join(
            e["message"] for e in events if e["kind"] == "failed")[:2000])

    for name, site in report.sites.items():
        mine = [e for e in events if e.get("site") == name]
        orders = [e for e in mine if e["kind"] == "order"]
        issued = [e for e in mine if e["kind"] == "issued"]
        verified = {e.get("serial") for e in mine if e["kind"] == "verified"}
        site.issued = [{"serial": e["serial"], "issued": e["time"], "not_after": e["not_after"]}
                       for e in issued]
        site.renewals = max(len(issued) - 1, 0)
        report.issued += len(issued)
        if len(orders) != len(issued):
            report.failures.append(f"{name}: {len(orders)} orders but {len(issued)} issued")
        # The validity of each issued certificate, from what nginx served (every certificate
        # is served for longer than the sampling interval).
        seen = {s.serial: s for s in samples[name] if s.serial}
        site.served_serials = list(dict.fromkeys(s.serial for s in samples[name] if s.serial))
        for entry in issued:
            if entry["serial"] not in seen:
                report.failures.append(f"{name}: certificate {entry['serial']} was never "
                                       "seen served by nginx")
            if entry["serial"] not in verified:
                report.failures.append(f"{name}: no `verified` event for {entry['serial']}")
        for previous, order in zip(issued, orders[1:], strict=False):
            cert = seen.get(previous["serial"])
            if cert is None or cert.not_before is None or cert.not_after is None:
                continue
            lifetime = cert.not_after - cert.not_before
            fraction = (when(order["time"]).timestamp() - cert.not_before) / lifetime
            site.renewed_at_fraction.append(fraction)
            earliest = 0.5 - 0.5 * JITTER
            latest = 0.5 + late / lifetime
            if not earliest - 0.01 <= fraction <= latest:
                report.failures.append(
                    f"{name}: renewal of {previous['serial']} ordered at {fraction:.3f} of its "
                    f"lifetime (policy: {earliest:.3f} .. 0.5)")
        first_ok = next((i for i, s in enumerate(samples[name]) if s.serial), None)
        if first_ok is None:
            report.failures.append(f"{name}: never served a certificate")
            continue
        for s in samples[name][first_ok:]:
            site.samples += 1
            if s.serial is None or s.not_after is None or s.not_before is None:
                site.gaps.append(f"{datetime.fromtimestamp(s.time, UTC):%H:%M:%S}: {s.error}")
                continue
            if s.time >= s.not_after:
                site.gaps.append(f"{datetime.fromtimestamp(s.time, UTC):%H:%M:%S}: served "
                                 f"{s.serial}, expired")
            left = (s.not_after - s.time) / (s.not_after - s.not_before)
            site.min_left_fraction = min(site.min_left_fraction, left)
        if site.gaps:
            report.failures.append(f"{name}: {len(site.gaps)} samples without a valid "
                                   f"certificate: {site.gaps[:5]}")
    if report.orders != report.issued:
        report.failures.append(f"Pebble saw {report.orders} orders; mamoru issued "
                               f"{report.issued} certificates")


def expected_renewals(validity: float, duration: float) -> int:
    """Renewals a site gets in `duration` seconds: one per (about) half a lifetime, counting
    from the first certificate, less one for safety at the edges."""
    step = (validity - 1) * 0.5  # Pebble's notAfter is notBefore + validity - 1 s
    return max(int(duration // step) - 1, 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--validity", type=int, default=120, help="certificate lifetime (s)")
    parser.add_argument("--duration", type=float, default=600, help="how long to watch (s)")
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--sample", type=float, default=0.5, help="seconds between handshakes")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    report = run(args.validity, args.duration, args.sites, args.workdir,
                 sample_every=args.sample, echo=not args.json)
    if args.json:
        print(json.dumps(asdict(report), indent=2, default=str))
    expected = expected_renewals(args.validity, args.duration)
    short = [s.name for s in report.sites.values() if s.renewals < expected]
    if short:
        print(f"FAIL: fewer than {expected} renewals for {', '.join(short)}", file=sys.stderr)
    return 0 if report.ok and not short else 1


if __name__ == "__main__":
    sys.exit(main())
