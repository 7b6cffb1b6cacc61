"""Helpers shared by tests: write a mamoru config for a test CA, run the CLI, inspect certs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store

MAMORU = [sys.executable, "-m", "mamoru.cli"]


def write_config(tmp_path: Path, directory_url: str, ca_bundle: str | None,
                 sites: dict[str, Any], *, acme: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None, name: str = "config.yaml") -> Path:
    """A config file with paths under tmp_path; returns its path."""
    config: dict[str, Any] = {
        "acme": {"directory": directory_url, "contact": "admin@clinic.example", **(acme or {})},
        "paths": {"state": str(tmp_path / "state"), "live": str(tmp_path / "live"),
                  "event_log": str(tmp_path / "log" / "events.jsonl")},
        "sites": sites,
        **(extra or {}),
    }
    if ca_bundle:
        config["acme"]["ca_bundle"] = ca_bundle
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def run_mamoru(*args: str, timeout: float = 120, env: dict[str, str] | None = None,
               check: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run `mamoru ARGS` as a whole process (as a user would)."""
    full_env = {**os.environ, **(env or {})}
    result = subprocess.run([*MAMORU, *args], capture_output=True, text=True, timeout=timeout,
                            env=full_env)
    if check is not None:
        assert result.returncode == check, (
            f"exit {result.returncode}, wanted {check}\nstdout:\n{result.stdout}\n"
            f"stderr:\n{result.stderr}")
    return result


def provision_json(*args: str, check: int = 0) -> dict[str, Any]:
    result = run_mamoru("provision", "--json", *args, check=check)
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def load_certs(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def verify_chain(fullchain: bytes, root_pem: str | bytes, name: str) -> x509.Certificate:
    """Verify `fullchain` (leaf first) for `name` up to `root_pem`; returns the leaf."""
    certs = load_certs(fullchain)
    root = x509.load_pem_x509_certificate(root_pem.encode() if isinstance(root_pem, str)
                                          else root_pem)
    verifier = PolicyBuilder().store(Store([root])).build_server_verifier(x509.DNSName(name))
    verifier.verify(certs[0], certs[1:])
    return certs[0]


def key_matches(key_pem: bytes, cert: x509.Certificate) -> bool:
    key = serialization.load_pem_private_key(key_pem, password=None)
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return bool(key.public_key().public_bytes(*fmt) == cert.public_key().public_bytes(*fmt))


def dedent(text: str) -> str:
    return textwrap.dedent(text)
