"""One `mamoru provision` of N sites (one name each, default 1,000) against a Pebble on loopback,
with where the time goes: wall time of the provision process, its CPU (user+system, from
getrusage(RUSAGE_CHILDREN) after it exits), Pebble's and challtestsrv's CPU over the
same interval (/proc/<pid>/stat), the load average, and optionally a profile of the provision
process (py-spy, which samples every thread; cProfile sees only the main thread, and the
sites are worked on by a pool).

    .venv/bin/python bench/provision_1000.py [--sites 1000] [--runs 3]
    PY_SPY=/path/to/py-spy .venv/bin/python bench/provision_1000.py --py-spy FILE [--gil]

The orders in flight never exceed acme.max_concurrent_orders (the default, 4): it is written
into the config; Pebble's log is counted afterwards (orders created = sites: no retries).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers.pebble import Pebble  # noqa: E402
from tests.servers.ports import free_port  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
CONCURRENCY = 4


def cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def config(root: Path, pebble: Pebble, sites: int, tag: str) -> Path:
    body = {
        "acme": {"directory": pebble.directory_url, "ca_bundle": pebble.ca_bundle,
                 "max_concurrent_orders": CONCURRENCY},
        "paths": {"state": str(root / "state"), "live": str(root / "live"),
                  "event_log": str(root / "log" / "events.jsonl")},
        "sites": {f"{tag}-s{i:04d}": {"domains": [f"{tag}-s{i:04d}.bench.example"],
                                       "challenge": {"standalone": f"127.0.0.1:{pebble.http_port}"}}
                  for i in range(sites)},
    }
    path = root / "provision.yaml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    path.chmod(0o600)
    return path


def summarise(collapsed: Path) -> tuple[int, list[tuple[str, int]]]:
    """py-spy's raw output (one `frame;frame;... count` a line): the samples, and per
    function the samples whose stack holds it (inclusive), most first."""
    inclusive: dict[str, int] = defaultdict(int)
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        total += int(count)
        seen = set()
        for frame in stack.split(";"):
            name, _, where = frame.partition(" (")
            where = where.split(":")[0].split("site-packages/")[-1].split("/src/")[-1]
            function = f"{name} ({where})"
            if function not in seen:
                seen.add(function)
                inclusive[function] += int(count)
    return total, sorted(inclusive.items(), key=lambda kv: -kv[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--py-spy", metavar="FILE", dest="pyspy",
                        help="sample every thread with py-spy (its path in $PY_SPY, else "
                        "`py-spy`) into FILE, collapsed stacks; its CPU counts as mamoru's")
    parser.add_argument("--gil", action="store_true",
                        help="with --py-spy: only samples of the thread holding the GIL "
                        "(Python's CPU, not waits)")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mamoru-p1000-"))
    # mamoru keeps validated configs in a cache directory (config/cache.py): this run's own,
    # as a user's would be (kept between the commands of the run), not the machine's.
    os.environ.setdefault("MAMORU_CACHE_DIR", tempfile.mkdtemp(prefix="mamoru-cache-"))
    mamoru = [sys.executable, "-m", "mamoru.cli"]
    for run in range(args.runs):
        # A fresh Pebble for every run: Pebble 2.4 scans every authorization it holds at
        # each new order (its CPU per order grows run after run), and its memory store
        # can deadlock under concurrent new orders once it holds a few thousand.
        with Pebble(work / f"pebble{run}", http_port=free_port()) as pebble:
            pids = {"pebble": pebble._pebble.pid if pebble._pebble else None,
                    "challtestsrv": pebble._challtestsrv.pid if pebble._challtestsrv else None}
            path = config(work / f"r{run}", pebble, args.sites, f"r{run}")
            argv = list(mamoru)
            spent = sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])
            if args.pyspy:
                argv = [os.environ.get("PY_SPY", "py-spy"), "record", "--format", "raw",
                        *(["--gil"] if args.gil else []), "--rate", "200", "-o", args.pyspy,
                        "--", *argv]
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            load = os.getloadavg()[0]
            started = time.perf_counter()
            process = subprocess.Popen([*argv, "provision", "--json", "-c", str(path)],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            stdout, stderr = process.communicate()
            wall = time.perf_counter() - started
            after = {name: cpu_seconds(pid) for name, pid in pids.items()}
            try:
                summary = json.loads(stdout[stdout.index(b"{"):])  # after py-spy's lines
                issued = sum(1 for s in summary["sites"] if s["status"] == "issued")
            except ValueError:
                issued = -1
            child = resource.getrusage(resource.RUSAGE_CHILDREN)
            print(json.dumps({
                "sites": args.sites, "issued": issued, "exit": process.returncode,
                "wall_s": round(wall, 2),
                "mamoru_cpu_s": round(child.ru_utime + child.ru_stime - spent, 2),
                "pebble_cpu_s": round(after["pebble"] - before["pebble"], 2),
                "challtestsrv_cpu_s": round(after["challtestsrv"] - before["challtestsrv"], 2),
                "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2),
                "orders_created": pebble.order_count(),
                "profiled": bool(args.pyspy),
            }), flush=True)
            if issued != args.sites:
                print(stderr.decode(errors="replace")[-2000:], file=sys.stderr)
            if args.pyspy:
                total, functions = summarise(Path(args.pyspy))
                print(f"py-spy: {total} samples at 200/s ({total / 200:.1f} s of threads"
                      f"{' holding the GIL' if args.gil else ' not idle'}); inclusive share:")
                for function, count in functions[:args.top]:
                    print(f"  {100 * count / total:5.1f}%  {function}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
