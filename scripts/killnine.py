#!/usr/bin/env python3
"""kill -9 `mamoru provision` at random moments and check that nothing is ever half done.

    python scripts/killnine.py --count 200 [--seed N] [--workdir DIR] [--json]

Starts a real Pebble (tests/servers/pebble.py) on loopback, provisions one site once, then
`count` times: runs `python -m mamoru.cli provision --force` as a separate process, sends it
SIGKILL after a random delay, and checks `live/<site>` the way a web server would use it
(tests/reliability/checks.py: the symlink resolves to a complete version, privkey.pem matches
cert.pem, fullchain.pem = cert.pem + chain.pem, meta.json names the same serial; the event log
is whole JSON lines; state.json parses). Then it runs provision again without a kill and checks
that it completes with a new certificate.

Half the kills come after a delay uniform over the whole run (0 .. 1.1 x a measured run);
the other half are aimed at the end of the run, where the new version is stored and live/ is
flipped: the script watches the event log until the run reports "validated", then kills
after a delay uniform over the time an unkilled run takes from there to "installed" (+10 ms),
so the few milliseconds that matter most are hit often. The report gives, per kill, the last
event the killed run wrote (how far it got).

Exit status 0 when every state was consistent and every following run completed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from tests.reliability.checks import Inconsistent, check_jsonl, check_live  # noqa: E402
from tests.servers.pebble import Pebble  # noqa: E402
from tests.servers.ports import free_port  # noqa: E402

SITE = "clinic"
NAMES = ["clinic.example", "www.clinic.example"]


@dataclass
class Report:
    count: int
    seed: int
    consistent: int = 0
    completed_after: int = 0
    killed: int = 0  # the process was still running when SIGKILL came
    old_pair: int = 0  # live/ still held the previous certificate after the kill
    new_pair: int = 0  # the killed run had already flipped live/ to its new certificate
    stages: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    run_seconds: float = 0.0
    tail_seconds: float = 0.0  # from "validated" to "installed" in an unkilled run
    aimed: int = 0  # kills aimed at the store-and-flip end of the run
    pebble_orders: int = 0
    command: str = ""

    def ok(self) -> bool:
        return (not self.failures and self.consistent == self.count
                and self.completed_after == self.count)

    def summary(self) -> str:
        stages = ", ".join(f"{k} {v}" for k, v in sorted(self.stages.items(),
                                                            key=lambda kv: -kv[1]))
        return (f"kill -9: {self.consistent}/{self.count} consistent, "
                f"{self.completed_after}/{self.count} following runs completed; "
                f"{self.killed} killed mid-run ({self.old_pair} left the old pair live, "
                f"{self.new_pair} the new pair); last event before the kill: {stages}; "
                f"a run takes {self.run_seconds:.2f} s, {self.tail_seconds * 1000:.0f} ms from "
                f"validated to installed; {self.aimed} kills aimed there; Pebble orders "
                f"{self.pebble_orders}; seed {self.seed}")


def _config(workdir: Path, pebble: Pebble) -> Path:
    config = {
        "acme": {"directory": pebble.directory_url, "ca_bundle": pebble.ca_bundle,
                 "contact": "admin@clinic.example"},
        "paths": {"state": str(workdir / "state"), "live": str(workdir / "live"),
                  "event_log": str(workdir / "log" / "events.jsonl")},
        "sites": {SITE: {"domains": NAMES,
                         "challenge": {"standalone": f"127.0.0.1:{pebble.http_port}"}}},
    }
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def _events_since(log: Path, offset: int) -> list[dict[str, object]]:
    try:
        with open(log, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return []
    out = []
    for line in data.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"kind": "<partial line>"})
    return out


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _when(event: dict[str, object]) -> float:
    return datetime.fromisoformat(str(event["time"]).replace("Z", "+00:00")).timestamp()


def _wait_for_event(log: Path, offset: int, kind: str, proc: subprocess.Popen[bytes],
                    timeout: float = 30.0) -> None:
    """Poll the event log (every millisecond) until the run writes an event of `kind`."""
    deadline = time.monotonic() + timeout
    marker = f'"kind": "{kind}"'.encode()
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with open(log, "rb") as handle:
                handle.seek(offset)
                if marker in handle.read():
                    return
        except FileNotFoundError:
            pass
        time.sleep(0.001)


def run(count: int = 200, *, seed: int | None = None, workdir: Path | None = None,
        echo: bool = True) -> Report:
    """Run the experiment; returns its Report (see the module docstring)."""
    seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="mamoru-killnine-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report = Report(count=count, seed=seed)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with Pebble(workdir / "pebble", http_port=free_port()) as pebble:
        config = _config(workdir, pebble)
        argv = [sys.executable, "-m", "mamoru.cli", "provision", "--force", "-c", str(config)]
        report.command = " ".join(argv)
        log = workdir / "log" / "events.jsonl"
        live = workdir / "live"

        tails: list[float] = []

        def complete() -> str:
            """An unkilled run; also measures how long its end (validated -> installed) took."""
            offset = _size(log)
            result = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
            if result.returncode != 0:
                raise Inconsistent(f"provision exited {result.returncode}: {result.stderr}")
            times = {str(e.get("kind")): _when(e) for e in _events_since(log, offset)}
            if "validated" in times and "installed" in times:
                tails.append(times["installed"] - times["validated"])
            return check_live(live, SITE)

        # Two unkilled runs: the first makes the live pair, the second (a renewal) measures
        # how long a run takes.
        complete()
        started = time.monotonic()
        complete()
        report.run_seconds = time.monotonic() - started

        for index in range(count):
            before = check_live(live, SITE)
            offset = _size(log)
            aimed = rng.random() < 0.5
            tail = sorted(tails[-9:])[len(tails[-9:]) // 2] if tails else 0.02  # median
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    env=env)
            if aimed:
                report.aimed += 1
                _wait_for_event(log, offset, "validated", proc)
                delay = rng.uniform(0, tail + 0.01)
            else:
                delay = rng.uniform(0, report.run_seconds * 1.1)
            time.sleep(delay)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                report.killed += 1
            proc.wait()
            events = _events_since(log, offset)
            stage = str(events[-1]["kind"]) if events else "(none)"
            if proc.returncode != -signal.SIGKILL:
                stage = f"finished ({proc.returncode})"
            report.stages[stage] += 1
            try:
                check_jsonl(log)
                state = workdir / "state" / "sites" / SITE / "state.json"
                if state.exists():
                    json.loads(state.read_text())
                after = check_live(live, SITE)
                report.consistent += 1
                if after == before:
                    report.old_pair += 1
                else:
                    report.new_pair += 1
            except (Inconsistent, ValueError) as error:
                report.failures.append(f"kill {index + 1} (delay {delay:.3f} s, last event "
                                       f"{stage}): {error}")
                continue
            try:
                if complete() == after:
                    raise Inconsistent("the following run did not install a new certificate")
                report.completed_after += 1
            except (Inconsistent, subprocess.TimeoutExpired) as error:
                report.failures.append(f"run after kill {index + 1}: {error}")
            if echo and (index + 1) % 10 == 0:
                print(f"  {index + 1}/{count}: {report.consistent} consistent, "
                      f"{len(report.failures)} failures", file=sys.stderr)
        report.tail_seconds = sorted(tails)[len(tails) // 2] if tails else 0.0
        report.pebble_orders = pebble.order_count()
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="number of kills (default 200)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    started = time.monotonic()
    report = run(args.count, seed=args.seed, workdir=args.workdir)
    if args.json:
        out = asdict(report)
        out["stages"] = dict(report.stages)
        print(json.dumps(out, indent=2))
    else:
        print(report.summary())
        for failure in report.failures:
            print(f"  FAILED {failure}")
    print(f"({time.monotonic() - started:.0f} s)", file=sys.stderr)
    return 0 if report.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
