"""Each verb imports only what it needs: `--help`, `status` and `check-config` never load the
ACME stack or cryptography (what a provision pays for), and `--help` not even the YAML loader."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers import write_config
from tests.servers.sitestate import install_site, succeeded

from mamoru.storage import FileStorage

HEAVY = ("acme", "josepy", "cryptography", "OpenSSL", "requests", "apscheduler",
         "prometheus_client", "http.server", "email.mime", "mamoru.protocol", "mamoru.install",
         "mamoru.check", "mamoru.pipeline", "mamoru.app")

PROBE = """
import json, sys
from mamoru.cli import main
heavy = json.loads(sys.argv[2])
sys.argv = ["mamoru", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit:
    pass
loaded = sorted({h for h in heavy for m in sys.modules if m == h or m.startswith(h + ".")})
print(json.dumps(loaded), file=sys.stderr)
"""


def loaded_by(*argv: str) -> list[str]:
    """The HEAVY modules a whole `mamoru ARGV` process has imported when it is done."""
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv), json.dumps(HEAVY)],
                            capture_output=True, text=True, timeout=120)
    last = result.stderr.strip().splitlines()[-1]
    found: list[str] = json.loads(last)
    return found


@pytest.fixture
def config(tmp_path: Path) -> Path:
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    storage = FileStorage(str(tmp_path / "state"), str(tmp_path / "live"))
    version = install_site(storage, "clinic", ["clinic.example"], now - dt.timedelta(days=10),
                           now + dt.timedelta(days=80))
    succeeded(storage, "clinic", version, at=now - dt.timedelta(days=10),
              next_due=now + dt.timedelta(days=50))
    return write_config(tmp_path, "https://ca.test/directory", None,
                        {"clinic": {"domains": ["clinic.example"],
                                    "challenge": {"webroot": str(tmp_path / "www")}}})


def test_help_imports_nothing_heavy() -> None:
    assert loaded_by("--help") == []
    assert loaded_by("--lang", "ja", "--help") == []


def test_help_does_not_load_yaml() -> None:
    code = ("import sys\nfrom mamoru.cli import main\nsys.argv = ['mamoru', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('yaml' in sys.modules, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.stderr.strip().splitlines()[-1] == "False"


def test_status_reads_local_state_without_the_acme_stack(config: Path) -> None:
    assert loaded_by("-c", str(config), "status") == []
    assert loaded_by("-c", str(config), "status", "--json") == []


def test_check_config_without_the_acme_stack(config: Path) -> None:
    assert loaded_by("-c", str(config), "check-config") == []


def test_the_probe_sees_what_a_provision_needs(config: Path) -> None:
    # The probe itself can fail: a dry run against an unreachable CA still loads the stack.
    assert "mamoru.protocol" in loaded_by("-c", str(config), "provision", "--dry-run")


# What a verb that only reads local files and prints does not need either: logging (set up
# for verbs that log), shutil (argparse imports it to measure the terminal; mamoru measures it
# itself), secrets, idna for ASCII names, the vendor's fleet code.
QUIET = ("logging", "shutil", "secrets", "idna", "mamoru.fleet")


def quiet_loaded_by(*argv: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv), json.dumps(QUIET)],
                            capture_output=True, text=True, timeout=120)
    found: list[str] = json.loads(result.stderr.strip().splitlines()[-1])
    return found


def test_reading_verbs_load_no_logging_shutil_idna_or_fleet(config: Path) -> None:
    assert quiet_loaded_by("--help") == []
    assert quiet_loaded_by("-c", str(config), "status") == []
    assert quiet_loaded_by("-c", str(config), "status", "--json") == []
    assert quiet_loaded_by("-c", str(config), "check-config") == []
    # -v asks for the log lines: then logging is set up.
    assert quiet_loaded_by("-v", "-c", str(config), "status") == ["logging"]
