"""mamoru's HTTP client: CPU per request against a real Pebble on loopback, the import cost of
`mamoru.protocol.session`, and what the system trust store costs a process.

    .venv/bin/python bench/http_client.py [--n 2000] [--runs 5] [--tree NAME=SRC ...]

Each `--tree` is a source directory holding a `mamoru` package (default: this checkout's src);
give two to compare, e.g. an older commit's `git archive HEAD src | tar -x -C /tmp/old`:

    .venv/bin/python bench/http_client.py --tree before=/tmp/old/src --tree after=src

For each tree, in processes of its own (PYTHONPATH=SRC):
- CPU per request: one thread, one `ConnectionPool` (kept-alive TLS connection to Pebble),
  `--n` requests of each kind — `HEAD newNonce` (no body) and `GET directory` (a JSON body) —
  `time.process_time()` of the loop, the minimum of `--runs` loops (after a warm-up), in µs;
- import: `python -X importtime -c "import mamoru.protocol.session"`, that module's
  cumulative time, and the peak RSS of `python -c "import mamoru.protocol.session"` (min of
  `--runs` processes each);
- trust: the time and RSS growth of making a verifying context on the system's roots,
  `ssl.create_default_context()` beside `mamoru.tlstrust.system_trust_context()` when the tree
  has it (without SSL_CERT_FILE in the environment, which makes both parse the bundle).

Pebble is Debian's package, started by the test launcher (tests/servers/pebble.py).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORKER = """
import json, sys, time
from mamoru.protocol.transport import ConnectionPool
directory_url, ca_bundle, n, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
pool = ConnectionPool(ca_bundle=ca_bundle, timeout=30, headers={"User-Agent": "bench"})
nonce_url = pool.request("GET", directory_url).json()["newNonce"]
kinds = {"HEAD newNonce": ("HEAD", nonce_url), "GET directory": ("GET", directory_url)}
result = {}
for label, (method, url) in kinds.items():
    for _ in range(100):
        assert pool.request(method, url).status == 200
    best = None
    for _ in range(runs):
        started = time.process_time()
        for _ in range(n):
            pool.request(method, url)
        spent = time.process_time() - started
        best = spent if best is None else min(best, spent)
    result[label] = best / n * 1e6
pool.close()
print(json.dumps(result))
"""

TRUST = """
import ssl, sys, time
def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0])
if sys.argv[1] == "tlstrust":
    from mamoru.tlstrust import system_trust_context as make
else:
    make = ssl.create_default_context
before = rss()
started = time.perf_counter()
context = make()
print(time.perf_counter() - started, rss() - before, context.cert_store_stats()["x509_ca"])
"""


def _env(tree: str, *, drop: tuple[str, ...] = ()) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in drop}
    env["PYTHONPATH"] = tree
    return env


def _peak_rss_kib(argv: list[str], env: dict[str, str]) -> int:
    if os.path.exists("/usr/bin/time"):
        # Forked from a small process: the child's peak is its own. (A child of this process
        # reports at least this process's size: Linux keeps the peak across exec.)
        done = subprocess.run(["/usr/bin/time", "-f", "%M", *argv], env=env, check=True,
                              capture_output=True, text=True)
        return int(done.stderr.split()[-1])
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"{argv} failed")
    return usage.ru_maxrss


def measure_imports(tree: str, runs: int) -> dict[str, float]:
    env = _env(tree)
    times = []
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-X", "importtime", "-c",
                               "import mamoru.protocol.session"], env=env, check=True,
                              capture_output=True, text=True)
        line = [line for line in done.stderr.splitlines()
                if line.rstrip().endswith("| mamoru.protocol.session")][-1]
        times.append(int(line.split("|")[1]) / 1000)
    rss = [_peak_rss_kib([sys.executable, "-c", "import mamoru.protocol.session"], env)
           for _ in range(runs)]
    modules = subprocess.run(
        [sys.executable, "-c", "import sys, mamoru.protocol.session; print(len([m for m in "
         "sys.modules if m.startswith(('http', 'email'))]))"],
        env=env, check=True, capture_output=True, text=True).stdout.strip()
    return {"import ms": min(times), "peak RSS MiB": min(rss) / 1024,
            "http*/email* modules": float(modules)}


def measure_trust(tree: str, runs: int) -> dict[str, str]:
    env = _env(tree, drop=("SSL_CERT_FILE",))
    has_tlstrust = (Path(tree) / "mamoru" / "tlstrust.py").exists()
    result = {}
    for way in ("create_default_context", "tlstrust") if has_tlstrust else (
            "create_default_context",):
        samples = []
        for _ in range(runs):
            done = subprocess.run([sys.executable, "-c", TRUST, way], env=env, check=True,
                                  capture_output=True, text=True)
            seconds, grown, roots = done.stdout.split()
            samples.append((float(seconds) * 1000, int(grown) / 1024, int(roots)))
        best = min(samples)
        result[way] = (f"{best[0]:.1f} ms, +{min(s[1] for s in samples):.2f} MiB RSS, "
                       f"{best[2]} roots parsed")
    return result


def measure_requests(tree: str, pebble: Any, n: int, runs: int) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", WORKER, pebble.directory_url,
                           str(pebble.ca_bundle), str(n), str(runs)],
                          env=_env(tree), check=True, capture_output=True, text=True)
    result: dict[str, float] = json.loads(done.stdout)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tree", action="append", default=[],
                        help="NAME=SRC: a directory holding a mamoru package (repeatable)")
    args = parser.parse_args()
    trees = dict(item.split("=", 1) for item in args.tree) or {"this": str(ROOT / "src")}
    for name, tree in trees.items():
        if not re.fullmatch(r"[\w.-]+", name) or not (Path(tree) / "mamoru").is_dir():
            parser.error(f"--tree {name}={tree}: no mamoru package there")

    from tests.servers.pebble import Pebble
    from tests.servers.ports import free_port

    for tree in trees.values():
        # As installed by pip: byte code cached, so no tree pays for compiling its modules
        # (a checkout run with PYTHONDONTWRITEBYTECODE has none).
        compileall.compile_dir(str(Path(tree) / "mamoru"), quiet=1)
    report: dict[str, dict[str, Any]] = {name: {} for name in trees}
    with tempfile.TemporaryDirectory(prefix="mamoru-bench-http-") as work, \
            Pebble(Path(work) / "pebble", http_port=free_port()) as pebble:
        for name, tree in trees.items():
            report[name].update(measure_requests(tree, pebble, args.n, args.runs))
    for name, tree in trees.items():
        report[name].update(measure_imports(tree, args.runs))
        report[name].update(measure_trust(tree, args.runs))
    for name, figures in report.items():
        print(f"[{name}] {trees[name]}")
        for label, value in figures.items():
            shown = f"{value:.1f} µs CPU/request" if label.startswith(("HEAD", "GET")) else (
                f"{value:.1f}" if isinstance(value, float) else value)
            print(f"  {label:<24} {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
