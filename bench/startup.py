"""What a `mamoru` process pays before it does its verb's work: `mamoru --help`, `mamoru
status` over an existing config (e.g. one kept by `bench/status_1000.py --keep DIR`), and the
memory a provision's imports take (VmHWM after importing what `mamoru provision` imports).

    .venv/bin/python bench/startup.py [--runs 25] [--status-config DIR/config.yaml]

Times are whole processes (exec to exit); the minimum and the median of `--runs` runs are
printed, beside a bare `python -c pass` measured in the same run (the machine is shared: compare
within one run, and prefer the minimum under load). Run it with PYTHONPATH=<tree>/src to
measure another checkout with the same interpreter.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

# What a provision of an nginx site imports (cryptography.x509 comes during its order).
IMPORTS_OF_A_PROVISION = ("import mamoru.cli, mamoru.app, mamoru.pipeline, mamoru.issuance, "
                          "mamoru.install.nginx, mamoru.install.verify, "
                          "mamoru.challenges.standalone, mamoru.protocol.session, "
                          "cryptography.x509")


def timed(argv: list[str], runs: int) -> tuple[float, float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        samples.append(time.perf_counter() - start)
    return min(samples), statistics.median(samples)


def peak_kb(code: str) -> int:
    probe = (f"{code}\nfor line in open('/proc/self/status'):\n"
             "    if line.startswith('VmHWM:'):\n        print(line.split()[1])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    return int(out.split()[-1])


def main() -> int:
    # mamoru keeps validated configs in a cache directory (config/cache.py): this run's own,
    # as a user's would be (kept between the commands of the run), not the machine's.
    os.environ.setdefault("MAMORU_CACHE_DIR", tempfile.mkdtemp(prefix="mamoru-cache-"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=25)
    parser.add_argument("--status-config", metavar="FILE")
    args = parser.parse_args()
    mamoru = [sys.executable, "-m", "mamoru.cli"]
    print(f"load average {os.getloadavg()[0]:.2f}; PYTHONPATH={os.environ.get('PYTHONPATH', '')}")
    rows = [("python -c pass", [sys.executable, "-c", "pass"]),
            ("mamoru --help", [*mamoru, "--help"]),
            ("mamoru --lang ja --help", [*mamoru, "--lang", "ja", "--help"])]
    if args.status_config:
        rows.append(("mamoru status", [*mamoru, "-c", args.status_config, "status"]))
        rows.append(("mamoru status --json", [*mamoru, "-c", args.status_config, "status",
                                              "--json"]))
    for title, argv in rows:
        runs = args.runs if "status" not in title else max(3, args.runs // 5)
        low, mid = timed(argv, runs)
        print(f"{title:26} min {low:.3f} s  median {mid:.3f} s  ({runs} runs)")
    print(f"{'peak RSS, bare python':26} {peak_kb('pass') / 1024:.1f} MB")
    print(f"{'peak RSS, provision imports':26} {peak_kb(IMPORTS_OF_A_PROVISION) / 1024:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
