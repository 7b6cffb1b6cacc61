"""The disk fills up while mamoru writes: a real, small tmpfs holds paths.state and paths.live
and is filled with a real file until the kernel says ENOSPC (no mocks). The old certificate
must stay live and whole, the error must say the disk is full, and the next run after space
is freed must complete.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import run_mamoru, write_config
from tests.reliability.checks import check_live
from tests.reliability.conftest import read_events, standalone_site
from tests.servers.pebble import Pebble

pytestmark = pytest.mark.e2e

NAMES = ["clinic.example", "www.clinic.example"]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """mount(8) a tmpfs of the given size (and inode count) on a new directory; unmounted at
    teardown. Needs root (CI runs as root): fails, never skips, without it."""
    mounted: list[Path] = []

    def mount(name: str, size: str, inodes: int | None = None) -> Path:
        point = tmp_path / name
        point.mkdir()
        options = f"size={size},mode=0755" + (f",nr_inodes={inodes}" if inodes else "")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"cannot mount a tmpfs (root needed): {result.stderr}"
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], capture_output=True, timeout=30)


def fill(directory: Path, name: str = "filler") -> Path:
    """Write a file in `directory` until the filesystem is full (the real ENOSPC)."""
    path = directory / name
    chunk = b"\0" * 4096
    with open(path, "wb", buffering=0) as handle:
        while True:
            try:
                handle.write(chunk)
            except OSError as error:
                assert error.errno == errno.ENOSPC, error
                break
    return path


def fill_inodes(directory: Path) -> list[Path]:
    """Create empty files until the filesystem has no inode left (the real ENOSPC)."""
    made: list[Path] = []
    for index in range(100000):
        path = directory / f"inode-{index}"
        try:
            path.touch()
        except OSError as error:
            assert error.errno == errno.ENOSPC, error
            return made
        made.append(path)
    raise AssertionError("the inodes never ran out")


def snapshot(live: Path, site: str) -> tuple[str, dict[str, str]]:
    target = os.readlink(live / site)
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted((live / site).resolve().iterdir())}
    return target, files


def provision(config: Path, *args: str, check: int) -> dict[str, Any]:
    result = run_mamoru("provision", "--json", "-c", str(config), *args, check=check)
    assert "Traceback" not in result.stderr, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


@pytest.mark.parametrize("spare_pages", [0, 1, 3])
def test_disk_full_during_renewal_keeps_old_files(
        spare_pages: int, tmp_path: Path, pebble: Pebble,
        tmpfs: Callable[..., Path]) -> None:
    disk = tmpfs("disk", "2m")
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle,
                          {"clinic": standalone_site(NAMES, pebble.http_port)})
    text = config.read_text().replace(str(tmp_path / "state"), str(disk / "state"))
    config.write_text(text.replace(str(tmp_path / "live"), str(disk / "live")))
    live = disk / "live"
    provision(config, check=0)
    old_serial = check_live(live, "clinic")
    before = snapshot(live, "clinic")
    versions = disk / "state" / "sites" / "clinic" / "versions"
    versions_before = sorted(os.listdir(versions))

    filler = fill(disk)
    if spare_pages:  # leave a few pages: the write fails part way through a new version
        os.truncate(filler, filler.stat().st_size - spare_pages * 4096)
    summary = provision(config, "--force", check=1)
    error = summary["sites"][0]["error"]
    assert error["class"] == "StorageError", error
    assert "the disk is full" in error["message"], error
    assert "previous files are unchanged" in error["message"]
    if spare_pages:  # the failure hit inside the new version, after its key was written
        assert "/versions/." in error["message"], error
    assert "Free some disk space" in error["hint"]
    # Old files intact: the same version is live, byte for byte, and still a matching pair.
    assert snapshot(live, "clinic") == before
    assert check_live(live, "clinic") == old_serial
    # Nothing half written is left behind: no new version, no temp directory.
    assert sorted(os.listdir(versions)) == versions_before
    assert not [n for n in os.listdir(disk / "state" / "sites" / "clinic")
                if n.endswith(".tmp")]
    failed = [e for e in read_events(tmp_path) if e["kind"] == "failed"]
    assert failed and "disk is full" in failed[-1]["message"]

    filler.unlink()  # space again: the next run completes by itself
    renewed = provision(config, "--force", check=0)["sites"][0]
    assert renewed["status"] == "renewed"
    assert check_live(live, "clinic") != old_serial


def test_live_directory_out_of_inodes_keeps_old_link(
        tmp_path: Path, pebble: Pebble, tmpfs: Callable[..., Path]) -> None:
    live = tmpfs("live", "1m", inodes=16)
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle,
                          {"clinic": standalone_site(NAMES, pebble.http_port)})
    config.write_text(config.read_text().replace(str(tmp_path / "live"), str(live)))
    provision(config, check=0)
    old_serial = check_live(live, "clinic")
    before = snapshot(live, "clinic")

    made = fill_inodes(live)
    summary = provision(config, "--force", check=1)
    error = summary["sites"][0]["error"]
    assert error["class"] == "StorageError", error
    assert "the disk is full" in error["message"] and str(live) in error["message"], error
    assert snapshot(live, "clinic") == before
    assert check_live(live, "clinic") == old_serial
    assert not [n for n in os.listdir(live) if n.startswith(".")]  # no stray temp link

    for path in made:
        path.unlink()
    assert provision(config, "--force", check=0)["sites"][0]["status"] == "renewed"
    assert check_live(live, "clinic") != old_serial
