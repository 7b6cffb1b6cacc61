#!/usr/bin/env python3
"""The leak run: `mamoru run` with many sites against a real Pebble issuing short-lived
certificates, left alone for `--renewals` renewals; does the daemon grow?

    python scripts/leak_run.py [--sites 60] [--validity 12] [--renewals 2000]
                               [--sample 1.0] [--workdir DIR] [--json FILE]

What it runs: Pebble (certificateValidityPeriod = --validity seconds, no validation sleep),
`python -m mamoru.cli run -c config.yaml` as a separate process (standalone http-01 on the
port Pebble dials, max_concurrent_orders 4). Every site is provisioned by the daemon at start,
then renewed at about half its certificate's lifetime, again and again: with 60 sites and 12 s
certificates, about 10 renewals a second. Renewals are counted from the daemon's event log
("renewed" events).

Sampled every `--sample` seconds from /proc: the daemon's VmRSS, its thread count
(/proc/PID/status Threads), its open fds (/proc/PID/fd) and the sockets among them, and the
same for its worker processes (its children running `mamoru.service.worker`).

Verdict (exit status 1 if it fails):
- the daemon's RSS after `--renewals` renewals is within 2 MB of its RSS after 20;
- no count grows: the daemon's threads, fds and sockets over the last quarter of the run
  (after 20 renewals) have a median no higher than over the first quarter, and a maximum at
  most OVERLAP above the first half's. A worker taking over from one that is ending holds its
  two pipes and its reader thread (and the old one's linger timer) beside the old one's for a
  moment: a 1-second sample catches that peak or not, so the maxima are compared with that
  allowance; a leak of one fd or thread per worker (20-40 workers a run) or per renewal shows
  far beyond it, and in the medians;
- every renewal was a real one: orders at Pebble == provisioned + renewed events, no site
  failed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from tests.servers.pebble import Pebble  # noqa: E402
from tests.servers.ports import free_port  # noqa: E402

MAMORU = [sys.executable, "-m", "mamoru.cli"]
RSS_SLACK_MB = 2.0
OVERLAP = {"threads": 2, "fds": 2, "sockets": 0}  # one more worker's, for a moment


@dataclass
class Sample:
    t: float
    renewals: int
    rss_mb: float
    threads: int
    fds: int
    sockets: int
    workers: int
    worker_rss_mb: float  # the largest worker's


@dataclass
class Report:
    sites: int
    validity: int
    renewals_wanted: int
    seconds: float = 0.0
    renewals: int = 0
    provisioned: int = 0
    failed: int = 0
    orders: int = 0
    at_20: dict[str, Any] = field(default_factory=dict)
    at_end: dict[str, Any] = field(default_factory=dict)
    first_quarter: dict[str, float] = field(default_factory=dict)
    first_half: dict[str, float] = field(default_factory=dict)
    last_quarter: dict[str, float] = field(default_factory=dict)
    worker_rss_mb_max: float = 0.0
    workers_seen: int = 0
    exit_code: int | None = None
    stop_seconds: float = 0.0
    load: str = ""
    problems: list[str] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)


def status_field(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def fds_of(pid: int) -> tuple[int, int]:
    """(open fds, sockets among them)."""
    total = sockets = 0
    for entry in os.scandir(f"/proc/{pid}/fd"):
        total += 1
        try:
            if os.readlink(entry.path).startswith("socket:"):
                sockets += 1
        except OSError:
            continue
    return total, sockets


def children_of(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def worker_pids(pid: int) -> list[int]:
    found = []
    for child in children_of(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mamoru.service.worker" in cmdline:
            found.append(child)
    return found


class EventCounter:
    """Counts events in the daemon's JSONL log, reading only what was appended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.counts: dict[str, int] = {}

    def poll(self) -> dict[str, int]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return self.counts
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            try:
                kind = json.loads(line)["kind"]
            except (ValueError, KeyError):
                continue
            self.counts[kind] = self.counts.get(kind, 0) + 1
        return self.counts


def sample(pid: int, renewals: int, started: float, seen: set[int]) -> Sample:
    fds, sockets = fds_of(pid)
    workers = worker_pids(pid)
    seen.update(workers)
    worker_rss = 0.0
    for worker in workers:
        try:
            worker_rss = max(worker_rss, status_field(worker, "VmRSS") / 1024)
        except OSError:
            continue
    return Sample(round(time.monotonic() - started, 2), renewals,
                  status_field(pid, "VmRSS") / 1024, status_field(pid, "Threads"), fds, sockets,
                  len(workers), worker_rss)


def quarter(samples: list[Sample], which: str) -> dict[str, float]:
    n = max(1, len(samples) // 4)
    part = {"first": samples[:n], "last": samples[-n:],
            "first_half": samples[:max(1, len(samples) // 2)]}[which]
    out: dict[str, float] = {}
    for key in ("rss_mb", "threads", "fds", "sockets"):
        values = [getattr(s, key) for s in part]
        out[f"{key}_median"] = statistics.median(values)
        out[f"{key}_max"] = max(values)
    return out


def run(args: argparse.Namespace, work: Path) -> Report:
    report = Report(args.sites, args.validity, args.renewals)
    pebble = Pebble(work / "pebble", validity_seconds=args.validity, http_port=free_port())
    pebble.start()
    daemon: subprocess.Popen[bytes] | None = None
    try:
        sites = {f"s{i:03d}": {"domains": [f"s{i:03d}.leak.example"],
                               "challenge": {"standalone": f"127.0.0.1:{pebble.http_port}"}}
                 for i in range(args.sites)}
        config = {
            "acme": {"directory": pebble.directory_url, "ca_bundle": pebble.ca_bundle,
                     "contact": "admin@clinic.example", "max_concurrent_orders": 4},
            "paths": {"state": str(work / "state"), "live": str(work / "live"),
                      "event_log": str(work / "log" / "events.jsonl"),
                      "event_log_max_bytes": 2**34},
            "sites": sites,
        }
        path = work / "config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        log = (work / "daemon.log").open("ab")
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        daemon = subprocess.Popen([*MAMORU, "run", "-c", str(path)], stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=log, env=env, start_new_session=True)
        counter = EventCounter(work / "log" / "events.jsonl")
        started = time.monotonic()
        samples: list[Sample] = []
        seen: set[int] = set()
        deadline = started + args.timeout
        while True:
            time.sleep(args.sample if report.at_20 else 0.1)  # catch the 20th closely
            if daemon.poll() is not None:
                report.problems.append(f"the daemon exited ({daemon.returncode}) mid-run")
                break
            counts = counter.poll()
            renewals = counts.get("renewed", 0)
            current = sample(daemon.pid, renewals, started, seen)
            samples.append(current)
            if renewals >= 20 and not report.at_20:
                report.at_20 = asdict(current)
            if renewals >= args.renewals:
                report.at_end = asdict(current)
                break
            if time.monotonic() > deadline:
                report.problems.append(f"only {renewals} renewals within {args.timeout:g} s")
                report.at_end = asdict(current)
                break
            if report.at_20 and len(samples) % 20 == 0:
                print(f"[{current.t:7.1f} s] {renewals} renewals, RSS {current.rss_mb:.1f} MB, "
                      f"threads {current.threads}, fds {current.fds}, sockets "
                      f"{current.sockets}, workers {current.workers} "
                      f"({current.worker_rss_mb:.1f} MB)", file=sys.stderr, flush=True)
        report.seconds = round(time.monotonic() - started, 1)
        counts = counter.poll()
        report.renewals = counts.get("renewed", 0)
        report.provisioned = counts.get("provisioned", 0)
        report.failed = counts.get("failed", 0)
        after = [s for s in samples if s.renewals >= 20]
        if after:
            report.first_quarter = quarter(after, "first")
            report.first_half = quarter(after, "first_half")
            report.last_quarter = quarter(after, "last")
        report.worker_rss_mb_max = max((s.worker_rss_mb for s in samples), default=0.0)
        report.workers_seen = len(seen)
        report.samples = [asdict(s) for s in samples]
        stopping = time.monotonic()
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        try:
            report.exit_code = daemon.wait(40)
        except subprocess.TimeoutExpired:
            report.problems.append("the daemon did not stop within 40 s of SIGTERM")
        report.stop_seconds = round(time.monotonic() - stopping, 2)
        log.close()
        report.orders = pebble.order_count()
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)
        pebble.stop()
    report.load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    judge(report)
    return report


def judge(report: Report) -> None:
    if report.at_20 and report.at_end:
        grew = report.at_end["rss_mb"] - report.at_20["rss_mb"]
        if grew > RSS_SLACK_MB:
            report.problems.append(f"RSS grew {grew:.1f} MB between 20 and {report.renewals} "
                                   "renewals")
    elif not report.problems:
        report.problems.append("too few renewals to judge")
    first, half, last = report.first_quarter, report.first_half, report.last_quarter
    for key in ("threads", "fds", "sockets"):
        if first and (last[f"{key}_median"] > first[f"{key}_median"]
                      or last[f"{key}_max"] > half[f"{key}_max"] + OVERLAP[key]):
            report.problems.append(
                f"{key} grew: median {first[key + '_median']:g} in the first quarter, "
                f"{last[key + '_median']:g} in the last; max {half[key + '_max']:g} in the "
                f"first half, {last[key + '_max']:g} in the last quarter")
    if report.failed:
        report.problems.append(f"{report.failed} failed events")
    # Orders stop being counted when the last sample is taken; a few more may finish while
    # the daemon stops (they are cancelled or complete): allow the ones in flight.
    issued = report.provisioned + report.renewals
    if not issued <= report.orders <= issued + 8:
        report.problems.append(f"{report.orders} orders at Pebble for {issued} certificates")
    if report.exit_code not in (0, None):
        report.problems.append(f"the daemon exited {report.exit_code} after SIGTERM")


def describe(report: Report) -> str:
    a, b = report.at_20, report.at_end
    lines = [f"leak run: {report.sites} sites, {report.validity} s certificates, "
             f"{report.renewals} renewals (+{report.provisioned} first issuances) in "
             f"{report.seconds:g} s; orders at Pebble {report.orders}; load {report.load}"]
    if a and b:
        for key, unit in (("rss_mb", " MB"), ("threads", ""), ("fds", ""), ("sockets", "")):
            lines.append(f"  daemon {key:8} after {a['renewals']:>5} renewals: {a[key]:>7.1f}"
                         f"{unit}   after {b['renewals']:>5}: {b[key]:>7.1f}{unit}")
    if report.first_quarter:
        f, h, last = report.first_quarter, report.first_half, report.last_quarter
        lines.append("  median first quarter / last quarter, max first half / last quarter: "
                     + ", ".join(
                         f"{key} {f[key + '_median']:g} / {last[key + '_median']:g}, "
                         f"{h[key + '_max']:g} / {last[key + '_max']:g}"
                         for key in ("rss_mb", "threads", "fds", "sockets")))
    lines.append(f"  workers: {report.workers_seen} started and gone, largest "
                 f"{report.worker_rss_mb_max:.1f} MB")
    lines.append(f"  SIGTERM -> exit {report.exit_code} in {report.stop_seconds:g} s")
    lines.append("verdict: " + ("ok (RSS within 2 MB of RSS after 20 renewals; no count grew)"
                                if not report.problems else "FAIL: " + "; ".join(report.problems)))
    return "\n".join(lines)


def rejudge(path: str) -> Report:
    """The verdict again from a saved --json report (e.g. after changing the criteria)."""
    data = json.loads(Path(path).read_text())
    samples = [Sample(**s) for s in data.pop("samples")]
    report = Report(**{k: v for k, v in data.items() if k in Report.__dataclass_fields__})
    report.problems = []
    after = [s for s in samples if s.renewals >= 20]
    report.first_quarter = quarter(after, "first")
    report.first_half = quarter(after, "first_half")
    report.last_quarter = quarter(after, "last")
    report.samples = [asdict(s) for s in samples]
    judge(report)
    return report


def main() -> int:
    # mamoru keeps validated configs in a cache directory (config/cache.py): this run's own,
    # as a user's would be (kept between the commands of the run), not the machine's.
    os.environ.setdefault("MAMORU_CACHE_DIR", tempfile.mkdtemp(prefix="mamoru-cache-"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=60)
    parser.add_argument("--validity", type=int, default=12,
                        help="certificate lifetime in seconds (Pebble)")
    parser.add_argument("--renewals", type=int, default=2000)
    parser.add_argument("--sample", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--workdir", metavar="DIR")
    parser.add_argument("--json", metavar="FILE", help="write the report with every sample")
    parser.add_argument("--rejudge", metavar="FILE", help="print the verdict of a --json FILE")
    args = parser.parse_args()
    if args.rejudge:
        report = rejudge(args.rejudge)
        print(describe(report))
        return 1 if report.problems else 0
    if args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
        report = run(args, work)
    else:
        with tempfile.TemporaryDirectory(prefix="mamoru-leak-") as tmp:
            report = run(args, Path(tmp))
    print(describe(report))
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(report), indent=2) + "\n")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
