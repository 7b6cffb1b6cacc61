"""Where the time of one `mamoru provision` of N sites goes, against bench/run.py's Pebble.

    .venv/bin/python bench/profile_provision.py [--sites 1000] [--profile out.prof]

Runs one `mamoru provision --json` of N fresh sites (one name each, a fresh state directory)
and prints its wall time, its own CPU time (user + system, from wait4), Pebble's and
pebble-challtestsrv's CPU over the same span (/proc/<pid>/stat) and the load average. With
`--profile FILE` the provision runs under cProfile (slower: compare the shares, not the wall
time) and the 25 costliest functions by cumulative and own time are printed.
"""

from __future__ import annotations

import argparse
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import CLK_TCK, Mamoru  # noqa: E402
from tests.servers.pebble import Pebble  # noqa: E402
from tests.servers.ports import free_port  # noqa: E402


def cpu_of(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--profile", metavar="FILE", help="run under cProfile, stats here "
                        "(the main thread only: the sites' work runs in a pool)")
    parser.add_argument("--py-spy", metavar="FILE", help="sample every thread with py-spy "
                        "(`pip install py-spy` anywhere on PATH), collapsed stacks here; prints "
                        "the samples by mamoru function (only the thread holding the GIL: "
                        "Python's CPU)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mamoru-profile-"))
    # mamoru keeps validated configs in a cache directory (config/cache.py): this run's own,
    # as a user's would be (kept between the commands of the run), not the machine's.
    os.environ.setdefault("MAMORU_CACHE_DIR", tempfile.mkdtemp(prefix="mamoru-cache-"))
    with Pebble(work / "pebble", http_port=free_port()) as pebble:
        mamoru = Mamoru(work / "mamoru", pebble)
        sites = {f"p-s{i:04d}": [f"p-s{i:04d}.bench.example"] for i in range(args.sites)}
        root = work / "mamoru" / "p"  # a fresh state directory: the account is registered
        root.mkdir(parents=True)
        config = mamoru.config("p", sites, root)
        argv = [*mamoru.argv, "provision", "--json", "-c", str(config)]
        if args.profile:
            argv = [sys.executable, "-m", "cProfile", "-o", args.profile, "-m", "mamoru.cli",
                    *argv[argv.index("provision"):]]
        if args.py_spy:
            argv = ["py-spy", "record", "-r", "250", "--gil", "-f", "raw", "-o", args.py_spy, "--",
                    *argv]
        procs = {"pebble": pebble_pid(pebble, "pebble"),
                 "challtestsrv": pebble_pid(pebble, "challtestsrv")}
        before = {name: cpu_of(pid) for name, pid in procs.items()}
        load = os.getloadavg()[0]
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = child.communicate()
        wall = time.perf_counter() - started
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # Pebble is not reaped yet
        user, system = usage.ru_utime - reaped.ru_utime, usage.ru_stime - reaped.ru_stime
        after = {name: cpu_of(pid) for name, pid in procs.items()}
    issued = out.decode().count('"issued"')
    print(f"{args.sites} sites: exit {child.returncode}, {issued} issued, wall {wall:.2f} s, "
          f"load {load:.2f} -> {os.getloadavg()[0]:.2f}")
    print(f"  mamoru CPU {user + system:.2f} s (user {user:.2f}, system {system:.2f})")
    for name in procs:
        print(f"  {name} CPU {after[name] - before[name]:.2f} s")
    if child.returncode != 0:
        print(err.decode()[-2000:])
    if args.py_spy:
        by_module(Path(args.py_spy))
    if args.profile:
        stats = pstats.Stats(args.profile)
        stats.sort_stats("cumulative").print_stats(25)
        stats.sort_stats("tottime").print_stats(25)
    return 0


def by_module(collapsed: Path) -> None:
    """The samples by the innermost frame of mamoru's own code (or the outermost module when
    none is mamoru's), and by the innermost frame of all."""
    ours: dict[str, int] = {}
    leaf: dict[str, int] = {}
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        total += count
        frames = stack.split(";")
        mine = [f for f in frames if "mamoru/" in f]
        key = mine[-1] if mine else frames[min(1, len(frames) - 1)]
        ours[key] = ours.get(key, 0) + count
        leaf[frames[-1]] = leaf.get(frames[-1], 0) + count
    print(f"py-spy: {total} samples with CPU")
    for title, table in (("innermost mamoru frame", ours), ("innermost frame", leaf)):
        print(f"  by {title}:")
        for key, count in sorted(table.items(), key=lambda kv: -kv[1])[:30]:
            print(f"    {count * 100 / max(1, total):5.1f}%  {key}")


def pebble_pid(pebble: Pebble, which: str) -> int | None:
    proc = getattr(pebble, f"_{which}", None)  # the launcher's Popen objects
    return int(proc.pid) if proc is not None else None


if __name__ == "__main__":
    sys.exit(main())
