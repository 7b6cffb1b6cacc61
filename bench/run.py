"""mamoru's benchmark, side by side with certbot and lego, against a real Pebble on loopback.

    sudo bash scripts/bench.sh                 # installs what it needs, then runs this
    .venv/bin/python bench/run.py [--runs 5] [--peer-runs 1] [--only a,b,c,g,e,f] ...

It starts its own Pebble (Debian's package, `PEBBLE_VA_NOSLEEP=1`, no nonce rejection, no
authorization reuse) and measures whole processes, from exec to exit, as a user or a vendor's
script runs them; every certificate is for fresh names, so every order needs its challenges:

(a) one certificate for one name;
(b) 20 sites of one name each: one `mamoru provision`; the peers, which have one certificate
    per process, run 20 times in a row;
(c) one certificate with 20 names;
(d) the peak RSS of each of those processes (the largest of the 20 in (b) for the peers);
(g) how (b) grows: one `mamoru provision` of 1, 10, 50 and 100 sites;
(e) `mamoru run` with 1,000 configured sites whose certificates are valid (provisioned from
    Pebble once, by one `mamoru provision`, so the state is exactly what mamoru writes): time
    to READY=1 (sd_notify), RSS after start, CPU time and context switches of all its threads
    over `--idle` seconds; the same with 1 site gives the memory per site;
(f) `mamoru status` with those 1,000 sites;
(h) `mamoru --help` (the CLI imports only what a verb needs).

Each figure is the median of `--runs` runs (`--peer-runs` for the peers' (b) and (c), which
take minutes each); the tools take turns within each round, so background load falls on all
of them alike. An account per tool is registered by an unmeasured warm-up run first, as on a
real server. The standalone http-01 responder of each tool answers on Pebble's port.

Prints a table with the ratios mamoru/peer and each target of issue 7; `--json FILE` keeps
every sample. Peers that are not installed are skipped, and the table says so.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

import mamoru
from mamoru import __version__ as mamoru_version

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers.nginx import Nginx  # noqa: E402
from tests.servers.pebble import Pebble  # noqa: E402  (the repository's launcher)
from tests.servers.ports import free_port  # noqa: E402

CONCURRENCY = 4  # acme.max_concurrent_orders, the default
GROWTH = (1, 10, 50, 100)
TARGETS = {  # issue 7, on a 2-core machine
    "a": 0.6, "b": 2.0, "c": 1.0, "rss": 45.0, "start": 3.0, "status": 1.0, "daemon_base": 40.0,
}
CLK_TCK = os.sysconf("SC_CLK_TCK")
RATIO_GOALS = {  # mamoru/peer, measured in the same run
    "a": "< 1 for every peer", "bp": "<= 0.8 x acme-tiny", "c": "< 1 for every peer"}


# -- measuring one process ---------------------------------------------------------------------


@dataclass
class Sample:
    seconds: float
    rss_mb: float  # peak resident set size (ru_maxrss)
    ok: bool
    note: str = ""


# A child's ru_maxrss counts the memory it had between fork and exec, i.e. this (large)
# process's: GNU time, small, forks the measured process itself and reports its own peak.
GNU_TIME = "/usr/bin/time"


def measure(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 900,
            check: Callable[[int, str, str], str | None] | None = None) -> Sample:
    """Run `argv` to its end; wall time, peak RSS, and whether it succeeded.
    `check(returncode, stdout, stderr)` returns None when the run did what it should, else why
    not."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile(mode="r") as rss:
        started = time.perf_counter()
        process = subprocess.Popen([GNU_TIME, "-q", "-f", "%M", "-o", rss.name, *argv],
                                   stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                   env={**os.environ, **(env or {})}, start_new_session=True)
        # A blocking wait: Popen.wait(timeout=...) polls every 50 ms, too coarse to time a
        # process that lives a few hundred. A timer kills GNU time and the process it measures.
        timer = threading.Timer(timeout, os.killpg, (process.pid, signal.SIGKILL))
        timer.start()
        try:
            code = process.wait()
        finally:
            timer.cancel()
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        peak = rss.read().strip().splitlines()
    problem = check(code, stdout, stderr) if check else (
        None if code == 0 else f"exit {code}: {stderr.strip()[-300:]}")
    return Sample(seconds, int(peak[-1]) / 1024 if peak else 0.0, problem is None,
                  problem or "")


def combine(samples: list[Sample]) -> Sample:
    """Processes run one after another (a peer's 20 certificates): total time, largest RSS."""
    notes = [s.note for s in samples if s.note]
    return Sample(sum(s.seconds for s in samples), max(s.rss_mb for s in samples),
                  all(s.ok for s in samples), notes[0] if notes else "")


@dataclass
class Figure:
    """The samples of one workload for one tool, and their medians."""

    samples: list[Sample] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return statistics.median(s.seconds for s in self.samples)

    @property
    def rss_mb(self) -> float:
        return statistics.median(s.rss_mb for s in self.samples)

    @property
    def ok(self) -> bool:
        return bool(self.samples) and all(s.ok for s in self.samples)


# -- the clients -------------------------------------------------------------------------------


def names_for(tag: str, count: int) -> list[str]:
    return [f"{tag}-{index:03d}.bench.example" for index in range(count)]


class Mamoru:
    label = "mamoru"

    def __init__(self, work: Path, pebble: Pebble) -> None:
        self.work = work
        self.pebble = pebble
        self.work.mkdir(parents=True, exist_ok=True)
        sibling = Path(sys.executable).with_name("mamoru")  # the console script users run
        # As installed by pip: byte code cached (a checkout run with PYTHONDONTWRITEBYTECODE,
        # as CI does, would otherwise compile all of mamoru at every start).
        compileall.compile_dir(str(Path(mamoru.__file__).parent), quiet=1)
        self.argv = [str(sibling)] if sibling.exists() else [sys.executable, "-m", "mamoru.cli"]
        self.version = mamoru_version

    def config(self, name: str, sites: dict[str, list[str]], root: Path | None = None) -> Path:
        """A config for `sites` (site name -> names) sharing one state directory (so one
        account), answered by mamoru's own http-01 responder on Pebble's port."""
        root = root or self.work
        root.mkdir(parents=True, exist_ok=True)
        config = {
            "acme": {"directory": self.pebble.directory_url, "ca_bundle": self.pebble.ca_bundle,
                     "max_concurrent_orders": CONCURRENCY},
            "paths": {"state": str(root / "state"), "live": str(root / "live"),
                      "event_log": str(root / "log" / "events.jsonl")},
            "sites": {site: {"domains": names, "challenge": {
                "standalone": f"127.0.0.1:{self.pebble.http_port}"}}
                for site, names in sites.items()},
        }
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        return path

    def provision(self, tag: str, sites: int, names: int, root: Path | None = None) -> Sample:
        wanted = {f"{tag}-s{index:03d}": names_for(f"{tag}-s{index:03d}", names)
                  for index in range(sites)}
        config = self.config(tag, wanted, root)

        def check(code: int, stdout: str, stderr: str) -> str | None:
            try:
                summary = json.loads(stdout)
            except ValueError:
                return f"exit {code}, no JSON summary: {stderr.strip()[-300:]}"
            issued = [s for s in summary["sites"] if s["status"] == "issued"]
            if code != 0 or len(issued) != sites:
                failed = [s for s in summary["sites"] if s["status"] != "issued"]
                return f"exit {code}, {len(issued)}/{sites} issued: {failed[:1]}"
            return None

        return measure([*self.argv, "provision", "--json", "-c", str(config)], check=check)

    # Every sample gets a fresh state directory (its own `tag`), so registering the account
    # and fetching the directory are inside the timed work, as on a new server.
    def a(self, tag: str) -> Sample:
        return self.provision(tag, 1, 1, self.work / tag)

    def b(self, tag: str) -> Sample:
        return self.provision(tag, 20, 1, self.work / tag)

    def bp(self, tag: str) -> Sample:
        """(b') 20 sites, `mamoru provision SITE` once per site, in a row (a vendor's script):
        one state directory, so the first process registers the account."""
        root = self.work / tag
        wanted = {f"{tag}-s{index:03d}": names_for(f"{tag}-s{index:03d}", 1)
                  for index in range(20)}
        config = self.config(tag, wanted, root)

        def check(code: int, stdout: str, stderr: str) -> str | None:
            try:
                issued = [s for s in json.loads(stdout)["sites"] if s["status"] == "issued"]
            except ValueError:
                return f"exit {code}, no JSON summary: {stderr.strip()[-300:]}"
            return None if code == 0 and len(issued) == 1 else f"exit {code}: {stdout[-300:]}"

        return combine([measure([*self.argv, "provision", "--json", "-c", str(config), site],
                                check=check) for site in wanted])

    def c(self, tag: str) -> Sample:
        return self.provision(tag, 1, 20, self.work / tag)


class Peer:
    """A client with one certificate per process: (b) is 20 processes in a row."""

    label = ""
    binary = ""

    def __init__(self, work: Path, pebble: Pebble) -> None:
        self.work = work
        self.pebble = pebble
        self.work.mkdir(parents=True, exist_ok=True)
        self.version = package_version(self.binary)

    def certonly(self, tag: str, names: list[str]) -> Sample:
        raise NotImplementedError

    # Every sample starts from a fresh state (`self.state(tag)`): the account is registered
    # inside the timed work; (b')'s 20 processes share one state, as a script's would.
    def state(self, tag: str) -> Path:
        root = self.work / tag.split("-s")[0]
        root.mkdir(parents=True, exist_ok=True)
        return root

    def a(self, tag: str) -> Sample:
        return self.certonly(tag, names_for(tag, 1))

    def bp(self, tag: str) -> Sample:
        return combine([self.certonly(f"{tag}-s{index:03d}", names_for(f"{tag}-s{index:03d}", 1))
                        for index in range(20)])

    def c(self, tag: str) -> Sample:
        return self.certonly(tag, names_for(tag, 20))


class Certbot(Peer):
    label = "certbot"
    binary = "certbot"

    def certonly(self, tag: str, names: list[str]) -> Sample:
        argv = ["certbot", "certonly", "--non-interactive", "--agree-tos",
                "--register-unsafely-without-email", "--server", self.pebble.directory_url,
                "--standalone", "--http-01-address", "127.0.0.1",
                "--http-01-port", str(self.pebble.http_port),
                "--key-type", "ecdsa", "--elliptic-curve", "secp256r1",
                "--config-dir", str(self.state(tag) / "config"),
                "--work-dir", str(self.state(tag) / "work"),
                "--logs-dir", str(self.state(tag) / "logs"), "--cert-name", tag]
        for name in names:
            argv += ["-d", name]
        return measure(argv, env={"REQUESTS_CA_BUNDLE": self.pebble.ca_bundle})


class Lego(Peer):
    label = "lego"
    binary = "lego"

    def certonly(self, tag: str, names: list[str]) -> Sample:
        argv = ["lego", "--server", self.pebble.directory_url, "--accept-tos",
                "--email", "bench@bench.example", "--path", str(self.state(tag)),
                "--key-type", "ec256",
                "--http", "--http.port", f"127.0.0.1:{self.pebble.http_port}"]
        for name in names:
            argv += ["--domains", name]
        return measure([*argv, "run"], env={"LEGO_CA_CERTIFICATES": self.pebble.ca_bundle})


class AcmeTiny(Peer):
    """Debian's acme-tiny, run the way its README says: an RSA account key (`openssl genrsa
    4096`, once per state), a key and CSR per certificate made by openssl (ECDSA P-256 here, as
    for the other tools, instead of the README's RSA 4096 domain key), the challenge file
    written into --acme-dir and served by a web server: a private nginx on Pebble's http-01
    port, started for acme-tiny's turn only (the other tools' responders use that port).
    acme-tiny talks to the CA with urllib's default TLS context: SSL_CERT_FILE makes it trust
    Pebble. Its `--disable-check` skips its self-check (fetching http://NAME/.well-known/...
    before answering the challenge; the bench names do not resolve here), not TLS checks.
    Making the keys and the CSR is not timed; acme-tiny's run (directory, account, order,
    challenge, finalize, download) is."""

    label = "acme-tiny"
    binary = "acme-tiny"

    def certonly(self, tag: str, names: list[str]) -> Sample:
        state = self.state(tag)
        account = state / "account.key"
        if not account.exists():
            subprocess.run(["openssl", "genrsa", "-out", str(account), "4096"],
                           check=True, capture_output=True)
        key, csr = state / f"{tag}.key", state / f"{tag}.csr"
        subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout",
                        "-out", str(key)], check=True, capture_output=True)
        subprocess.run(["openssl", "req", "-new", "-sha256", "-key", str(key), "-subj", "/",
                        "-addext", "subjectAltName = " + ", ".join(f"DNS:{n}" for n in names),
                        "-out", str(csr)], check=True, capture_output=True)
        webroot = self.work / "webroot"
        challenges = webroot / ".well-known" / "acme-challenge"
        challenges.mkdir(parents=True, exist_ok=True)
        nginx = Nginx(self.work / "nginx")
        nginx.write_conf("acme.conf", f"server {{ listen 127.0.0.1:{self.pebble.http_port};"
                         f" root {webroot}; }}\n")
        nginx.start(wait_ports=(self.pebble.http_port,))
        try:
            sample = measure(["acme-tiny", "--account-key", str(account), "--csr", str(csr),
                              "--acme-dir", str(challenges), "--directory-url",
                              self.pebble.directory_url, "--disable-check", "--quiet"],
                             env={"SSL_CERT_FILE": self.pebble.ca_bundle})
        finally:
            nginx.stop()
        return sample


def package_version(package: str) -> str:
    result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True,
                            text=True, check=False)
    return result.stdout.strip() or "?"


# -- the daemon (e) and status (f) -------------------------------------------------------------


@dataclass
class DaemonFigures:
    sites: int
    variant: str = ""
    provision_seconds: float = 0.0
    ready_seconds: float | None = None  # the median of ready_samples
    ready_samples: list[float] = field(default_factory=list)
    rss_mb_ready: float = 0.0
    rss_mb_idle: float = 0.0
    cpu_seconds_idle: float = 0.0
    context_switches_idle: int = 0
    switches_by_thread: dict[str, int] = field(default_factory=dict)
    notifications_idle: list[str] = field(default_factory=list)
    exit_code: int | None = None
    stop_seconds: float = 0.0
    note: str = ""


def _status_field(task: Path, key: str) -> int:
    """A number from /proc/<pid>[/task/<tid>]/status (kB for sizes)."""
    for line in (task / "status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _rss_mb(pid: int) -> float:
    return _status_field(Path(f"/proc/{pid}"), "VmRSS") / 1024


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def _switches(pid: int) -> dict[str, int]:
    """Context switches (voluntary + involuntary) per thread: each wake-up of a sleeping thread
    is one voluntary switch when it sleeps again."""
    out: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            name = (task / "comm").read_text().strip()
            total = (_status_field(task, "voluntary_ctxt_switches")
                     + _status_field(task, "nonvoluntary_ctxt_switches"))
            out[f"{task.name} {name}"] = total
    return out


@contextlib.contextmanager
def notify_socket(path: Path) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield sock
    finally:
        sock.close()
        path.unlink(missing_ok=True)


def _receive(sock: socket.socket, until: float) -> list[str]:
    messages: list[str] = []
    while True:
        left = until - time.monotonic()
        if left <= 0:
            return messages
        sock.settimeout(left)
        try:
            messages.append(sock.recv(4096).decode(errors="replace"))
        except TimeoutError:
            return messages


def run_daemon(mamoru: Mamoru, config: Path, sites: int, idle: float, work: Path,
               env: dict[str, str] | None = None) -> DaemonFigures:
    """Start `mamoru run`, wait for READY=1, then watch it idle for `idle` seconds."""
    figures = DaemonFigures(sites)
    with notify_socket(work / f"notify-{sites}.sock") as sock:
        log = (work / f"daemon-{sites}.log").open("wb")
        started = time.perf_counter()
        process = subprocess.Popen([*mamoru.argv, "run", "-c", str(config)], stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, **(env or {}),
                                        "NOTIFY_SOCKET": str(sock.getsockname())})
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and process.poll() is None:
                sock.settimeout(0.2)  # wakes to notice a daemon that died before READY
                try:
                    message = sock.recv(4096).decode(errors="replace")
                except TimeoutError:
                    continue
                if "READY=1" in message.split("\n"):
                    figures.ready_seconds = time.perf_counter() - started
                    break
            if figures.ready_seconds is None:
                figures.note = ("no READY=1 within 60 s" if process.poll() is None else
                                f"exited {process.returncode} before READY=1")
                return figures
            # Let start-up work that follows READY (first status, thread pools) settle.
            _receive(sock, time.monotonic() + 2.0)
            figures.rss_mb_ready = _rss_mb(process.pid)
            if idle > 0:
                cpu, switches = _cpu_seconds(process.pid), _switches(process.pid)
                figures.notifications_idle = _receive(sock, time.monotonic() + idle)
                after = _switches(process.pid)
                figures.cpu_seconds_idle = _cpu_seconds(process.pid) - cpu
                figures.switches_by_thread = {
                    thread: count - switches.get(thread, 0) for thread, count in after.items()
                    if count - switches.get(thread, 0)}
                figures.context_switches_idle = sum(figures.switches_by_thread.values())
                figures.rss_mb_idle = _rss_mb(process.pid)
        finally:
            stopping = time.perf_counter()
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                figures.exit_code = process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                figures.exit_code = process.wait()
                figures.note = "did not stop within 30 s of SIGTERM"
            figures.stop_seconds = time.perf_counter() - stopping
            log.close()
    return figures


def daemon_and_status(mamoru: Mamoru, args: argparse.Namespace, work: Path,
                      results: dict[str, Any]) -> None:
    figures = []
    for count in (1, args.daemon_sites):
        root = work / f"daemon-{count}"
        root.mkdir(parents=True, exist_ok=True)
        say(f"(e) provisioning {count} site{'s' if count > 1 else ''} for the daemon ...")
        provisioned = mamoru.provision(f"d{count}", count, 1, root)
        if not provisioned.ok:
            results["daemon"] = {"error": f"provisioning {count} sites failed: "
                                          f"{provisioned.note}"}
            return
        config = root / f"d{count}.yaml"
        say(f"(e) mamoru run with {count} site{'s' if count > 1 else ''}"
            + (f", idle {args.idle:g} s ..." if count > 1 else " ..."))
        figure = run_daemon(mamoru, config, count, args.idle if count > 1 else 0, work)
        figure.provision_seconds = provisioned.seconds
        if figure.ready_seconds is not None:
            # Start-up again, without the idle watch, for a median like the other figures.
            starts = [figure.ready_seconds] + [
                run_daemon(mamoru, config, count, 0, work).ready_seconds
                for _ in range(args.runs - 1)]
            figure.ready_samples = [start for start in starts if start is not None]
            figure.ready_seconds = statistics.median(figure.ready_samples)
        figures.append(figure)
        if count > 1 and "f" in args.only:
            status = Figure()
            for _ in range(args.runs):
                status.samples.append(measure(
                    [*mamoru.argv, "status", "-c", str(config)],
                    check=lambda code, out, err: None if code in (0, 1) and out.count("\n")
                    >= args.daemon_sites else f"exit {code}: {err.strip()[-200:]}"))
            results["status"] = {"sites": count, "samples": [asdict(s) for s in status.samples],
                                 "seconds": status.seconds, "rss_mb": status.rss_mb,
                                 "ok": status.ok}
        if count > 1 and args.idle > 0:
            # What a vendor runs: the Prometheus endpoint and the textfile on as well.
            with_metrics = yaml.safe_load(config.read_text())
            with_metrics["metrics"] = {"listen": f"127.0.0.1:{free_port()}",
                                       "textfile": str(root / "mamoru.prom")}
            metrics_config = root / f"d{count}-metrics.yaml"
            metrics_config.write_text(yaml.safe_dump(with_metrics, sort_keys=False))
            metrics_config.chmod(0o600)
            # And as mamoru.service runs it: systemd's watchdog (WatchdogSec=120) asks for a
            # ping every minute, by design.
            variants = [("metrics endpoint + textfile", metrics_config, {}),
                        ("systemd watchdog, WatchdogSec=120", config,
                         {"WATCHDOG_USEC": "120000000"})]
            for variant, variant_config, env in variants:
                say(f"(e) mamoru run with {count} sites, {variant}, idle {args.idle:g} s ...")
                figure = run_daemon(mamoru, variant_config, count, args.idle, work, env)
                figure.variant = variant
                figures.append(figure)
    results["daemon"] = [asdict(f) for f in figures]


# -- the run -----------------------------------------------------------------------------------


def say(text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def environment() -> dict[str, Any]:
    return {"date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "cpus": os.cpu_count(),
            "machine": platform.platform(terse=True),
            "load": [round(x, 2) for x in os.getloadavg()],
            "python": sys.version.split()[0], "pebble": package_version("pebble")}


class Pebbles:
    """One Pebble at a time, a fresh one for each workload. Pebble 2.4 looks through every
    authorization it holds at each new order (its CPU per order grows as a run goes on), and
    its memory store can deadlock under concurrent new orders once it holds a few thousand
    (seen here: newOrder never answers). A fresh Pebble per workload keeps each one's
    figures comparable and the run whole."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.current: Pebble | None = None
        self.count = 0

    def fresh(self, tools: list[Any]) -> Pebble:
        """Stop the running Pebble, start a new one, and point every tool at it."""
        self.close()
        self.count += 1
        pebble = Pebble(self.work / f"pebble{self.count}", http_port=free_port())
        pebble.__enter__()
        self.current = pebble
        for tool in tools:
            tool.pebble = pebble
        return pebble

    def close(self) -> None:
        if self.current is not None:
            self.current.__exit__(None, None, None)
            self.current = None

    def __enter__(self) -> Pebbles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mamoru-bench-"))
    # mamoru keeps validated configs in a cache directory (config/cache.py): this run's own,
    # as a user's would be (kept between the commands of the run), not the machine's.
    os.environ.setdefault("MAMORU_CACHE_DIR", tempfile.mkdtemp(prefix="mamoru-cache-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"environment": environment(), "runs": args.runs,
                               "peer_runs": args.peer_runs, "figures": {}, "skipped": {}}
    pebbles = Pebbles(work)
    with pebbles:
        pebble = pebbles.fresh([])
        mamoru = Mamoru(work / "mamoru", pebble)
        tools: list[Mamoru | Peer] = [mamoru]
        for peer_class in (AcmeTiny, Certbot, Lego):
            if peer_class.label not in args.peers:
                continue
            if shutil.which(peer_class.binary) is None:
                results["skipped"][peer_class.label] = (
                    "not installed (scripts/bench.sh installs Debian's package)")
                continue
            tools.append(peer_class(work / peer_class.label, pebble))
        results["versions"] = {t.label: t.version for t in tools}
        figures: dict[str, dict[str, Figure]] = {}
        workloads = [w for w in ("a", "b", "bp", "c") if w in args.only]
        if workloads:
            # Not a measurement: checks that each tool works and fills the page cache (and
            # mamoru's byte code). Its state is not reused: every sample starts fresh.
            for tool in tools:
                say(f"warm-up: {tool.label}")
                warm = tool.a("warm")
                if not warm.ok:
                    raise SystemExit(f"{tool.label} cannot get a certificate: {warm.note}")
        for workload in workloads:
            pebbles.fresh(tools)
            for round_number in range(args.runs):
                for tool in tools:
                    if not hasattr(tool, workload):
                        continue  # (b), one process for 20 sites, is mamoru's alone
                    if isinstance(tool, Peer) and workload in ("bp", "c") and \
                            tool.label != "acme-tiny" and round_number >= args.peer_runs:
                        continue
                    tag = f"{workload}{round_number}"
                    sample = getattr(tool, workload)(tag)
                    say(f"({workload}) round {round_number + 1}: {tool.label} "
                        f"{sample.seconds:.2f} s, {sample.rss_mb:.0f} MB"
                        + ("" if sample.ok else f" FAILED: {sample.note}"))
                    figures.setdefault(workload, {}).setdefault(tool.label, Figure()
                                                                 ).samples.append(sample)
        if "g" in args.only:
            pebbles.fresh(tools)
            for round_number in range(args.runs):
                for count in GROWTH:
                    sample = mamoru.provision(f"g{count}r{round_number}", count, 1)
                    say(f"(g) round {round_number + 1}: {count} sites {sample.seconds:.2f} s"
                        + ("" if sample.ok else f" FAILED: {sample.note}"))
                    figures.setdefault(f"g{count}", {}).setdefault(
                        "mamoru", Figure()).samples.append(sample)
        results["figures"] = {
            workload: {tool: {"seconds": figure.seconds, "rss_mb": figure.rss_mb,
                              "ok": figure.ok, "samples": [asdict(s) for s in figure.samples]}
                       for tool, figure in by_tool.items()}
            for workload, by_tool in figures.items()}
        if "h" in args.only:
            helps = Figure([measure([*mamoru.argv, "--help"]) for _ in range(args.runs)])
            results["help"] = {"seconds": helps.seconds, "rss_mb": helps.rss_mb, "ok": helps.ok}
        if "e" in args.only or "f" in args.only:
            pebbles.fresh(tools)
            daemon_and_status(mamoru, args, work, results)
    results["environment"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        results["workdir"] = str(work)
    return results


# -- the table ---------------------------------------------------------------------------------


def _sites(count: int) -> str:
    return "sites" if count != 1 else "site"


def verdict(value: float | None, limit: float) -> str:
    return "  ?" if value is None else ("  ok" if value <= limit else "  MISSED")


def table(results: dict[str, Any]) -> str:
    env, versions, figures = results["environment"], results["versions"], results["figures"]
    peers = [tool for tool in versions if tool != "mamoru"]
    lines = [f"mamoru {versions['mamoru']} benchmark, {env['date']}: {env['cpus']} CPUs, load "
             f"{env['load'][0]:.2f} before / {env.get('load_after', ['?'])[0]} after; Pebble "
             f"{env['pebble']} (PEBBLE_VA_NOSLEEP=1); Python {env['python']}"]
    lines.append(f"medians of {results['runs']} runs (certbot's and lego's (b') and (c): "
                 f"{results['peer_runs']}); time of the whole process(es); peak RSS; "
                 "every sample from a fresh state dir (account registration timed)")
    if results.get("command"):
        lines.append(f"command: {results['command']}")
    for tool, why in results["skipped"].items():
        lines.append(f"{tool}: skipped: {why}")
    head = f"{'':26}{'mamoru':>17}" + "".join(
        f"{tool + ' ' + versions[tool]:>32}" for tool in peers)
    lines += ["", head, f"{'':26}{'time':>9}{'RSS':>8}" + "".join(
        f"{'time':>10}{'RSS':>8}{'mamoru/peer':>14}" for _ in peers)]
    titles = {"a": "(a) 1 certificate, 1 name", "b": "(b) 20 sites, one provision",
              "bp": "(b') 20 certs, 1 process each", "c": "(c) 1 certificate, 20 names"}
    for workload, title in titles.items():
        if workload not in figures:
            continue
        ours = figures[workload]["mamoru"]
        row = f"{title:26}{ours['seconds']:>8.2f}s{ours['rss_mb']:>6.0f}MB"
        for tool in peers:
            theirs = figures[workload].get(tool)
            if theirs is None:
                row += f"{'-':>32}"
                continue
            ratio = ours["seconds"] / theirs["seconds"]
            row += (f"{theirs['seconds']:>9.2f}s{theirs['rss_mb']:>6.0f}MB"
                    f"{ratio:>13.2f}x ")
        bad = [tool for tool, fig in figures[workload].items() if not fig["ok"]]
        row += f"   goal: {RATIO_GOALS[workload]}" if workload in RATIO_GOALS else ""
        lines.append(row + (f"   FAILED: {', '.join(bad)}" if bad else ""))
    growth = [(n, figures[f"g{n}"]["mamoru"]) for n in GROWTH if f"g{n}" in figures]
    if growth:
        lines += ["", "(g) one `mamoru provision` of N sites (1 name each), "
                  f"{CONCURRENCY} orders at once:"]
        base = growth[0][1]["seconds"]
        for n, fig in growth:
            waves = (n - 1) / CONCURRENCY
            per_wave = (fig["seconds"] - base) / waves if waves else 0.0
            lines.append(f"    {n:>4} {_sites(n)} {fig['seconds']:>7.2f} s  "
                         f"{fig['rss_mb']:>4.0f} MB"
                         + (f"   {per_wave * 1000:>5.0f} ms per {CONCURRENCY} more sites"
                            if waves else "") + ("" if fig["ok"] else "   FAILED"))
    daemon = results.get("daemon")
    if isinstance(daemon, dict):
        lines += ["", f"(e) daemon: {daemon['error']}"]
    elif daemon:
        plain = [fig for fig in daemon if not fig.get("variant")]
        small, big = plain[0], plain[-1]
        per_site = ((big["rss_mb_ready"] - small["rss_mb_ready"]) * 1024
                    / max(1, big["sites"] - small["sites"]))
        lines += ["", f"(e) `mamoru run` with {big['sites']} valid sites (provisioned by one "
                  f"`mamoru provision` in {big['provision_seconds']:.1f} s):"]
        for fig in daemon:
            label = f"    {fig['sites']:>4} {_sites(fig['sites'])}" + (
                f" ({fig['variant']})" if fig.get("variant") else "")
            if fig["ready_seconds"] is None:
                lines.append(f"{label}: {fig['note']}")
                continue
            lines.append(f"{label}: READY=1 after {fig['ready_seconds']:.2f} s"
                         f", RSS {fig['rss_mb_ready']:.1f} MB; SIGTERM -> exit "
                         f"{fig['exit_code']} in {fig['stop_seconds']:.2f} s")
        lines.append(f"    memory per site: {per_site:.1f} kB; base "
                     f"{small['rss_mb_ready']:.1f} MB")
        for fig in daemon:
            if fig["sites"] == 1 or fig["ready_seconds"] is None:
                continue
            by_thread = fig["switches_by_thread"]
            lines.append(f"    idle {results['idle']:g} s"
                         + (f" ({fig['variant']})" if fig.get("variant") else "")
                         + f": CPU {fig['cpu_seconds_idle']:.2f} s, "
                         f"{fig['context_switches_idle']} context switches"
                         f"{f' {by_thread}' if by_thread else ''}, "
                         f"{len(fig['notifications_idle'])} sd_notify messages; RSS after "
                         f"{fig['rss_mb_idle']:.1f} MB")
    if results.get("help"):
        lines += ["", f"`mamoru --help`: {results['help']['seconds']:.3f} s, "
                  f"{results['help']['rss_mb']:.0f} MB"]
    status = results.get("status")
    if status:
        lines += ["", f"(f) `mamoru status` with {status['sites']} sites: "
                  f"{status['seconds']:.2f} s, {status['rss_mb']:.0f} MB"
                  + ("" if status["ok"] else "  FAILED")]
    lines += ["", "targets (issue 7):"]
    checks = []
    for workload in ("a", "b", "c"):
        if workload in figures:
            seconds = figures[workload]["mamoru"]["seconds"]
            checks.append((f"({workload}) <= {TARGETS[workload]} s", seconds, TARGETS[workload],
                           f"{seconds:.2f} s"))
    provisions = [fig["rss_mb"] for key, by_tool in figures.items()
                  for tool, fig in by_tool.items() if tool == "mamoru"]
    if provisions:
        checks.append(("peak RSS of a provision <= 45 MB", max(provisions), TARGETS["rss"],
                       f"{max(provisions):.1f} MB (largest median)"))
    plain = [fig for fig in daemon if not fig.get("variant")] if isinstance(daemon, list) else []
    if plain and plain[-1]["ready_seconds"] is not None:
        big, small = plain[-1], plain[0]
        checks.append((f"daemon start with {big['sites']} sites <= 3 s", big["ready_seconds"],
                       TARGETS["start"], f"{big['ready_seconds']:.2f} s"))
        checks.append(("idle daemon base RSS <= 40 MB (+ per site)", small["rss_mb_ready"],
                       TARGETS["daemon_base"], f"{small['rss_mb_ready']:.1f} MB + "
                       f"{per_site:.1f} kB/site"))
        checks.append((f"no wake-ups in {results['idle']:g} idle s",
                       big["context_switches_idle"], 0, str(big["context_switches_idle"])))
        for fig in daemon or []:
            # The watchdog's pings are asked for by systemd: counted, not a miss.
            if fig.get("variant") and "watchdog" not in fig["variant"] \
                    and fig["ready_seconds"] is not None:
                checks.append((f"  ... with {fig['variant']}", fig["context_switches_idle"], 0,
                               str(fig["context_switches_idle"])))
    if status:
        checks.append((f"status with {status['sites']} sites <= 1 s", status["seconds"],
                       TARGETS["status"], f"{status['seconds']:.2f} s"))
    for text, value, limit, shown in checks:
        lines.append(f"    {text:48} {shown:>32}{verdict(value, limit)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (default 5)")
    parser.add_argument("--peer-runs", type=int, default=1,
                        help="runs of the peers' (b) and (c), minutes each (default 1)")
    parser.add_argument("--peers", default="acme-tiny,certbot,lego",
                        help="comma-separated peers to run beside mamoru ('' for none)")
    parser.add_argument("--only", default="a,b,bp,c,g,h,e,f",
                        help="workloads to run (h: `mamoru --help`)")
    parser.add_argument("--daemon-sites", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=60.0, help="idle seconds watched in (e)")
    parser.add_argument("--json", metavar="FILE", help="also write every sample here")
    parser.add_argument("--workdir", metavar="DIR", help="work here (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--show", metavar="FILE", help="print the table of a --json FILE again")
    args = parser.parse_args(argv)
    if args.show:
        print(table(json.loads(Path(args.show).read_text())))
        return 0
    if not os.access(GNU_TIME, os.X_OK):
        parser.error(f"{GNU_TIME} (GNU time, Debian package `time`) is needed to measure peak "
                     "memory; scripts/bench.sh installs it")
    args.only = set(args.only.split(","))
    args.peers = {p for p in args.peers.split(",") if p}
    args.peer_runs = min(args.peer_runs, args.runs)
    results = run(args)
    results["idle"] = args.idle
    results["command"] = " ".join(["bench/run.py", *(argv if argv is not None else sys.argv[1:])])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
