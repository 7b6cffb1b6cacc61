"""How long `mamoru status` takes for a vendor with 1,000 clinic sites (goal: under 1 s).

Builds, in a temporary directory, a config with 1,000 sites and their state exactly as mamoru
stores it (real certificates made with `cryptography`, signed by a throwaway CA, written
through FileStorage: versions/0001 + meta.json, live/<site> symlink, state.json), with a mix
of healthy sites, sites whose last attempt failed and sites close to expiry. Then it runs
`mamoru status` as a whole process (interpreter start, config load, every site read, table
printed) 5 times and prints the median, for the table and for --json.

    /tmp/venv/bin/python bench/status_1000.py [--sites 1000] [--runs 5] [--keep DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mamoru.storage import FileStorage
from mamoru.storage.sitestate import SiteState

MAMORU = [sys.executable, "-m", "mamoru.cli"]


def make_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench intermediate CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_leaf(ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, names: list[str],
              not_before: dt.datetime, not_after: dt.datetime) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    chain = (cert.public_bytes(serialization.Encoding.PEM)
             + ca.public_bytes(serialization.Encoding.PEM))
    return key_pem, chain


def build(root: Path, count: int) -> Path:
    """Config + state for `count` sites under `root`; returns the config path."""
    ca_key, ca = make_ca()
    storage = FileStorage(str(root / "state"), str(root / "live"))
    now = dt.datetime.now(dt.UTC)
    sites = {}
    for index in range(count):
        site = f"clinic{index:04d}"
        names = [f"{site}.example", f"www.{site}.example"]
        sites[site] = {"domains": names, "challenge": {"webroot": str(root / "www")}}
        if index % 50 == 7:  # a few close to expiry: 5 of 90 days left
            not_before = now - dt.timedelta(days=85)
        else:
            not_before = now - dt.timedelta(days=index % 40)
        key_pem, chain = make_leaf(ca_key, ca, names, not_before,
                                   not_before + dt.timedelta(days=90))
        version = storage.store(site, key_pem, chain, {"key": "ec-p256", "profile": None,
                                                       "order": f"https://ca.example/o/{index}"})
        storage.activate(version)
        due = version.not_before + (version.not_after - version.not_before) * 2 / 3
        state: dict[str, object] = {
            "attempts": 0, "next_attempt": None, "next_due": due.isoformat(),
            "next_check": (now + dt.timedelta(hours=12)).isoformat(),
            "why": "1/3 of the lifetime left",
            "last_success": version.meta["stored_at"],
            "last_attempt": {"time": version.meta["stored_at"], "outcome": "ok",
                             "serial": version.meta["serial"]},
            "installed": {"serial": version.meta["serial"], "verified": True},
        }
        if index % 100 == 3:  # a few failing
            state.update(attempts=2, next_attempt=(now + dt.timedelta(minutes=4)).isoformat(),
                         last_attempt={"time": now.isoformat(), "outcome": "failed",
                                       "error_class": "ChallengeFailed",
                                       "message": "validating the name: connection refused",
                                       "problem_type": "urn:ietf:params:acme:error:connection",
                                       "detail": "connection refused"})
        storage.save_state(site, SiteState.from_json(state))
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump({
        "acme": {"directory": "https://ca.example/directory"},
        "paths": {"state": str(root / "state"), "live": str(root / "live"),
                  "event_log": str(root / "log" / "events.jsonl")},
        "sites": sites}, sort_keys=False))
    config.chmod(0o600)
    return config


def time_status(config: Path, runs: int, *extra: str
                ) -> tuple[float, subprocess.CompletedProcess[str]]:
    timings = []
    result = None
    for _ in range(runs):
        started = time.perf_counter()
        result = subprocess.run([*MAMORU, "status", "-c", str(config), *extra],
                                capture_output=True, text=True, check=False)
        timings.append(time.perf_counter() - started)
        if result.returncode not in (0, 1):
            sys.exit(f"mamoru status failed ({result.returncode}):\n{result.stderr}")
    assert result is not None
    return statistics.median(timings), result


def main() -> None:
    # mamoru keeps validated configs in a cache directory (config/cache.py): this run's own,
    # as a user's would be (kept between the commands of the run), not the machine's.
    os.environ.setdefault("MAMORU_CACHE_DIR", tempfile.mkdtemp(prefix="mamoru-cache-"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--keep", metavar="DIR", help="build here and keep it (default: temp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mamoru-bench-") as temp:
        root = Path(args.keep or temp)
        root.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        config = build(root, args.sites)
        print(f"built {args.sites} sites in {time.perf_counter() - started:.1f} s "
              f"({os.cpu_count()} CPUs)")
        table, result = time_status(config, args.runs)
        rows = len(result.stdout.splitlines())
        danger = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
        as_json, result = time_status(config, args.runs, "--json")
        sites = json.loads(result.stdout)["sites"]
        assert len(sites) == args.sites, len(sites)
        print(f"mamoru status          {args.sites} sites: median of {args.runs} = "
              f"{table:.3f} s ({rows} lines, exit {result.returncode})")
        print(f"mamoru status --json   {args.sites} sites: median of {args.runs} = "
              f"{as_json:.3f} s")
        print(f"danger line: {danger[:160]}")
        verdict = "ok" if max(table, as_json) < 1.0 else "TOO SLOW"
        print(f"goal < 1 s: {verdict}")


if __name__ == "__main__":
    main()
