"""What mamoru's standalone http-01 responder costs: the CPU of serving fetches, the latency of
the last cleanup() (the responder's stop, on the critical path of every order), and what
importing it adds to a process (import time, peak RSS).

    PYTHONPATH=<tree>/src .venv/bin/python bench/responder.py [--requests 3000] [--runs 5]

Run it once with PYTHONPATH=/work/main/src (or any other checkout) and once with the tree under
test, with the same interpreter: the same script measures both. Figures are the minimum of
`--runs` runs (the machine is shared: compare within one sitting, prefer the minimum).

* CPU: a client in another process (so its CPU is not counted) fetches the token `--requests`
  times from `--clients` threads at once (three, like a CA's vantage points), either each fetch
  on a new connection with `Connection: close` (as Let's Encrypt's validator does) or over
  kept-alive connections (reconnecting whenever the server closes, as an HTTP/1.0 server
  does). The server side's CPU is `time.process_time()` of this process, which does nothing
  else meanwhile.
* stop: present() then, after a random pause, cleanup() of the only token, `--stops` times;
  the time cleanup() takes.
* import: `python -X importtime -c "import mamoru.challenges.standalone"`: the module's
  cumulative import time, and the peak RSS of that process (`/usr/bin/time -f %M`), beside the
  same for `mamoru.challenges.base` (which it imports, and every http-01 solver needs).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from mamoru.challenges.base import ChallengeTask
from mamoru.challenges.standalone import StandaloneSolver

CLIENT = r"""
import socket, sys, threading
host, port, token, total, clients, keepalive = (sys.argv[1], int(sys.argv[2]), sys.argv[3],
                                               int(sys.argv[4]), int(sys.argv[5]),
                                               sys.argv[6] == "1")
head = (f"GET /.well-known/acme-challenge/{token} HTTP/1.1\r\nHost: clinic.example\r\n"
        f"User-Agent: bench\r\nAccept: */*\r\n")
request = (head + ("" if keepalive else "Connection: close\r\n") + "\r\n").encode()
failures = []

def response(sock, buf):
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before a response")
        buf += data
    end = buf.index(b"\r\n\r\n") + 4
    lines = buf[:end].decode("latin-1").lower().split("\r\n")
    length = next(int(l.split(":", 1)[1]) for l in lines if l.startswith("content-length:"))
    while len(buf) < end + length:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed in the body")
        buf += data
    if not lines[0].startswith("http/1.1 200") and not lines[0].startswith("http/1.0 200"):
        failures.append(lines[0])
    closes = lines[0].startswith("http/1.0") or "connection: close" in lines
    return closes, buf[end + length:]

def fetcher(count):
    sock, buf = None, b""
    for _ in range(count):
        if sock is None:
            sock, buf = socket.create_connection((host, port)), b""
        sock.sendall(request)
        closes, buf = response(sock, buf)
        if closes or not keepalive:
            sock.close()
            sock = None
    if sock is not None:
        sock.close()

threads = [threading.Thread(target=fetcher, args=(total // clients,)) for _ in range(clients)]
for t in threads: t.start()
for t in threads: t.join()
if failures:
    sys.exit(f"{len(failures)} failed fetches, e.g. {failures[0]}")
"""

TOKEN = "bench-token-0123456789abcdefghij"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_cpu(requests: int, clients: int, keepalive: bool) -> tuple[float, float, int]:
    """(server CPU s, wall s, threads started) for `requests` fetches by a client process."""
    port = free_port()
    solver = StandaloneSolver("127.0.0.1", port)
    task = ChallengeTask("clinic.example", "http-01", TOKEN, TOKEN + ".thumbprint-of-the-key")
    solver.present(task)
    started_threads = 0
    original_start = threading.Thread.start

    def counting_start(thread: threading.Thread) -> None:
        nonlocal started_threads
        started_threads += 1
        original_start(thread)

    threading.Thread.start = counting_start  # type: ignore[method-assign]
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        subprocess.run([sys.executable, "-c", CLIENT, "127.0.0.1", str(port), TOKEN,
                        str(requests), str(clients), "1" if keepalive else "0"], check=True)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        threading.Thread.start = original_start  # type: ignore[method-assign]
        solver.cleanup(task)
    return cpu, wall, started_threads


def stop_latency(stops: int) -> list[float]:
    port = free_port()
    solver = StandaloneSolver("127.0.0.1", port)
    samples = []
    pace = random.Random(stops)
    for i in range(stops):
        task = ChallengeTask("clinic.example", "http-01", f"{TOKEN}{i}", "x")
        solver.present(task)
        # The server thread is in its wait, as when the CA has fetched; at a random phase, so
        # that a polling loop is not always caught just after (or just before) its wake-up.
        time.sleep(pace.uniform(0.005, 0.03))
        started = time.perf_counter()
        solver.cleanup(task)
        samples.append(time.perf_counter() - started)
    return samples


def import_figures(module: str, runs: int) -> tuple[float, int]:
    """(cumulative import time of `module` in ms, peak RSS in kB), minimum of `runs`. Byte
    code is cached under a prefix of its own (written by a first run, not in the trees), as an
    installed mamoru has it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = os.path.join(tempfile.gettempdir(), "mamoru-bench-pycache")
    subprocess.run([sys.executable, "-c", f"import {module}"], env=env, check=True)
    times, peaks = [], []
    for _ in range(runs):
        err = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                             capture_output=True, text=True, check=True, env=env).stderr
        for line in err.splitlines():
            fields = [f.strip() for f in line.removeprefix("import time:").split("|")]
            if len(fields) == 3 and fields[2] == module:
                times.append(int(fields[1]) / 1000)
        out = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-c",
                              f"import {module}"], capture_output=True, text=True, check=True,
                             env=env)
        peaks.append(int(re.findall(r"\d+", out.stderr)[-1]))
    return min(times), min(peaks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--stops", type=int, default=30)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}; PYTHONPATH={os.environ.get('PYTHONPATH', '')}")
    for keepalive in (False, True):
        samples = [serve_cpu(args.requests, args.clients, keepalive) for _ in range(args.runs)]
        cpu = min(s[0] for s in samples)
        wall = min(s[1] for s in samples)
        label = "kept-alive connections" if keepalive else "a connection per fetch"
        print(f"serving {args.requests} fetches, {args.clients} clients, {label}: "
              f"server CPU {cpu * 1000:.0f} ms ({cpu / args.requests * 1e6:.0f} µs a fetch), "
              f"wall {wall * 1000:.0f} ms, threads started {samples[0][2]}")
    stops = [stop_latency(args.stops) for _ in range(args.runs)]
    flat = [s for run in stops for s in run]
    print(f"cleanup() that stops the responder: min {min(flat) * 1000:.2f} ms, "
          f"median {statistics.median(flat) * 1000:.2f} ms, max {max(flat) * 1000:.2f} ms "
          f"({len(flat)} stops)")
    for module in ("mamoru.challenges.base", "mamoru.challenges.standalone"):
        ms, kb = import_figures(module, args.runs)
        print(f"import {module}: cumulative {ms:.1f} ms, peak RSS {kb / 1024:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
