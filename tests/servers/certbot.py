"""Debian's certbot (2.1, with python3-certbot-nginx) run against a test Pebble, with its own
--config-dir/--work-dir/--logs-dir under a temp directory: a real certbot state for the
import-certbot tests.

    certbot = Certbot(tmp_path / "letsencrypt", pebble)
    certbot.certonly("standalone", ["a.example"], "--http-01-port", str(pebble.http_port))
    certbot.config_dir / "live" / "a.example" / "fullchain.pem"

Pebble's HTTPS is trusted through REQUESTS_CA_BUNDLE (certbot's HTTP client is requests).
Every run is logged to ``<root>/logs/letsencrypt.log``; a failed run raises with its output.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import configobj  # type: ignore[import-untyped]

from .pebble import Pebble
from .process import require_binary

CERTBOT_BIN = "/usr/bin/certbot"


class Certbot:
    def __init__(self, root: Path, pebble: Pebble, email: str = "admin@clinic.example") -> None:
        require_binary(CERTBOT_BIN, "certbot")
        self.root = root
        self.pebble = pebble
        self.email = email
        self.config_dir = root / "config"
        self.work_dir = root / "work"
        self.logs_dir = root / "logs"

    @property
    def dirs(self) -> list[str]:
        return ["--config-dir", str(self.config_dir), "--work-dir", str(self.work_dir),
                "--logs-dir", str(self.logs_dir)]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "REQUESTS_CA_BUNDLE": self.pebble.ca_bundle}
        result = subprocess.run([CERTBOT_BIN, *args, *self.dirs, "-n"], capture_output=True,
                                text=True, env=env, timeout=180)
        if check and result.returncode != 0:
            raise AssertionError(f"certbot {' '.join(args)} exited {result.returncode}\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def certonly(self, authenticator: str, names: list[str], *extra: str) -> None:
        self.run("certonly", f"--{authenticator}", "--agree-tos", "-m", self.email,
                 "--server", self.pebble.directory_url, "--no-random-sleep-on-renew",
                 *[arg for name in names for arg in ("-d", name)], *extra)

    def renew(self) -> subprocess.CompletedProcess[str]:
        return self.run("renew", "--no-random-sleep-on-renew", "--server",
                        self.pebble.directory_url)


def snapshot(root: Path) -> dict[str, tuple[str, str, int]]:
    """Every file and symlink under `root`: (kind, sha256 or link target, mode)."""
    out: dict[str, tuple[str, str, int]] = {}
    for directory, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(directory, d))]:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            if os.path.islink(path):
                out[path] = ("link", os.readlink(path), 0)
            else:
                with open(path, "rb") as handle:
                    out[path] = ("file", hashlib.sha256(handle.read()).hexdigest(),
                                 st.st_mode & 0o7777)
    return out


def clone_lineage(config_dir: Path, source: str, name: str) -> Path:
    """Copy lineage `source` as `name` the way certbot lays one out (archive files, relative
    live links, a renewal conf naming the new paths). Returns the new renewal conf."""
    archive, live = config_dir / "archive" / name, config_dir / "live" / name
    shutil.copytree(config_dir / "archive" / source, archive, symlinks=True)
    live.mkdir(parents=True)
    conf = configobj.ConfigObj(str(config_dir / "renewal" / f"{source}.conf"), encoding="utf-8")
    for kind in ("cert", "privkey", "chain", "fullchain"):
        target = os.readlink(config_dir / "live" / source / f"{kind}.pem")
        os.symlink(target.replace(f"/{source}/", f"/{name}/"), live / f"{kind}.pem")
        conf[kind] = str(live / f"{kind}.pem")
    conf["archive_dir"] = str(archive)
    conf.filename = str(config_dir / "renewal" / f"{name}.conf")
    conf.write()
    return Path(conf.filename)
