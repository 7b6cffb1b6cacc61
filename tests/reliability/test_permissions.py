"""Secrets on disk and in the config: keys are 0600 (0640 with a key group) from the instant they
exist, traced at the system-call level with strace; state directories are 0700 (0750 with the
group); a config holding a secret that others can read is warned about; a standalone
responder on a public address needs an explicit `standalone_public: true`.
"""

from __future__ import annotations

import grp
import os
import re
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import run_mamoru, write_config
from tests.reliability.checks import check_live
from tests.reliability.conftest import standalone_site
from tests.servers.pebble import Pebble

STRACE = "/usr/bin/strace"
KEY_GROUP = "nogroup"  # present on every Debian system
# A key is created under a temp name beside its final name (the account key), or under its own
# name inside a version directory that is itself still a temp name (a site's key).
KEY_FILES = re.compile(r"/\.(privkey\.pem|key\.pem)\.[0-9a-f]+\.tmp$"
                       r"|/versions/\.\d{4,}\.[0-9a-f]+\.tmp/privkey\.pem$")
SYSCALL = re.compile(r"^(?P<pid>\d+) +(?P<call>\w+)\((?P<args>.*)\) += (?P<ret>-?\d+)")


@dataclass
class Call:
    pid: int
    name: str
    args: str
    ret: int


def strace_provision(tmp_path: Path, config: Path, umask: int) -> list[Call]:
    """Run `mamoru provision` under strace (file-creating and mode-changing calls, every
    thread); returns the completed calls in order."""
    assert os.access(STRACE, os.X_OK), "strace is missing: apt-get install strace (CI does)"
    trace = tmp_path / "strace.txt"
    # -s 0: the trace shows no written bytes (it would otherwise hold the start of the key).
    command = [STRACE, "-f", "-qq", "-s", "0", "-o", str(trace), "-e",
               "trace=openat,open,creat,mkdir,mkdirat,chmod,fchmod,fchmodat,fchown,chown,"
               "fchownat,write,rename,renameat,renameat2,symlink,symlinkat",
               sys.executable, "-m", "mamoru.cli", "provision", "-c", str(config)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                            preexec_fn=lambda: os.umask(umask))
    assert result.returncode == 0, result.stderr
    calls = []
    for line in trace.read_text().splitlines():
        match = SYSCALL.match(line)
        if match:
            calls.append(Call(int(match["pid"]), match["call"], match["args"],
                              int(match["ret"])))
    return calls


def key_creations(calls: list[Call]) -> list[tuple[Call, list[Call]]]:
    """Each creation of a key's temp file, with the calls made on its descriptor until the
    first write (what happens while it is still empty and before anyone could read a byte)."""
    out = []
    for index, call in enumerate(calls):
        if call.name not in ("openat", "open", "creat") or "O_CREAT" not in call.args:
            continue
        path = call.args.split('"')[1]
        if not KEY_FILES.search(path):
            continue
        before_write = []
        for later in calls[index + 1:]:
            if later.pid != call.pid or not later.args.startswith(f"{call.ret},"):
                continue
            if later.name == "write":
                break
            before_write.append(later)
        out.append((call, before_write))
    return out


@pytest.mark.e2e
@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_keys_are_private_from_the_first_system_call(umask: int, tmp_path: Path,
                                                     pebble: Pebble) -> None:
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle,
                          {"clinic": standalone_site(["clinic.example"], pebble.http_port)})
    calls = strace_provision(tmp_path, config, umask)
    created = key_creations(calls)
    names = sorted(c.args.split('"')[1].rsplit("/", 1)[1].lstrip(".").split(".")[0]
                   for c, _ in created)
    assert names == ["key", "privkey"], names  # the account key and the site key
    for call, before_write in created:
        assert call.args.endswith(", 0600"), call  # created 0600, not chmod-ed there later
        for later in before_write:
            if later.name == "fchmod":
                assert later.args.endswith(", 0600"), later
    # The result on disk does not depend on the umask.
    check_live(tmp_path / "live", "clinic")
    assert_state_modes(tmp_path / "state", dir_mode=0o700, key_mode=0o600, gid=None)


@pytest.mark.e2e
def test_key_group_is_set_before_the_key_is_opened_up(tmp_path: Path, pebble: Pebble) -> None:
    gid = grp.getgrnam(KEY_GROUP).gr_gid
    config = write_config(tmp_path, pebble.directory_url, pebble.ca_bundle,
                          {"clinic": standalone_site(["clinic.example"], pebble.http_port)},
                          extra={})
    text = config.read_text().replace("paths:\n", f"paths:\n  key_group: {KEY_GROUP}\n")
    config.write_text(text)
    calls = strace_provision(tmp_path, config, 0o022)
    created = key_creations(calls)
    site_keys = [(c, later) for c, later in created if "privkey" in c.args]
    assert len(site_keys) == 1
    call, before_write = site_keys[0]
    assert call.args.endswith(", 0600"), call
    steps = [(later.name, later.args.split(", ")[-1]) for later in before_write]
    # The group is given first, then the mode opened to the group: never 0640 with root's group.
    assert steps.index(("fchown", str(gid))) < steps.index(("fchmod", "0640")), steps
    check_live(tmp_path / "live", "clinic")
    assert_state_modes(tmp_path / "state", dir_mode=0o750, key_mode=0o640, gid=gid)


def assert_state_modes(state: Path, *, dir_mode: int, key_mode: int, gid: int | None) -> None:
    """The state directory is 0700 (0711 with a key group: root's, traversable, so the group
    reaches sites/); accounts/ and below 0700 (only mamoru needs the account key); sites/ and
    below `dir_mode` with group `gid`. Site keys `key_mode`; the account key, state.json,
    account.json and lock files 0600; nothing is writable by others."""
    top = os.stat(state)
    assert stat.S_IMODE(top.st_mode) == (0o711 if gid is not None else 0o700), oct(top.st_mode)
    seen_dirs = 0
    for directory, _dirs, files in os.walk(state):
        info = os.stat(directory)
        relative = os.path.relpath(directory, state)
        if relative.startswith("accounts"):
            assert stat.S_IMODE(info.st_mode) == 0o700, (directory, oct(info.st_mode))
        elif relative.startswith("sites"):
            assert stat.S_IMODE(info.st_mode) == dir_mode, (directory, oct(info.st_mode))
            if gid is not None:
                assert info.st_gid == gid, directory
        seen_dirs += 1
        for name in files:
            path = Path(directory) / name
            mode = stat.S_IMODE(path.stat().st_mode)
            if name == "privkey.pem":
                assert mode == key_mode, (path, oct(mode))
                if gid is not None:
                    assert path.stat().st_gid == gid
            elif name in ("key.pem", "state.json", "account.json", "lock"):
                assert mode == 0o600, (path, oct(mode))
            else:
                assert mode & 0o022 == 0, (path, oct(mode))
    assert seen_dirs >= 7  # state, accounts/<ca>/<id>, sites/<site>/versions/<n>


def warnings_of(config: Path) -> str:
    return run_mamoru("check-config", "-c", str(config), check=0).stderr


SECRET = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"


def test_a_config_holding_a_secret_readable_by_others_is_warned_about(tmp_path: Path) -> None:
    inline = write_config(tmp_path, "https://ca.example/dir", None, {
        "clinic": {"domains": ["clinic.example"], "challenge": {"webroot": "/var/www"}}},
        acme={"eab": {"kid": "kid-1", "hmac_key": SECRET}})
    inline.chmod(0o600)
    assert "readable by every user" not in warnings_of(inline)
    inline.chmod(0o644)
    out = warnings_of(inline)
    assert f"{inline}:" in out and "warning: acme.eab.hmac_key: this config holds a secret" \
        in out and "chmod 600" in out, out
    assert SECRET not in out

    key_file = tmp_path / "eab.key"
    key_file.write_text(SECRET + "\n")
    in_file = write_config(tmp_path, "https://ca.example/dir", None, {
        "clinic": {"domains": ["clinic.example"], "challenge": {"webroot": "/var/www"}}},
        acme={"eab": {"kid": "kid-1", "hmac_key_file": str(key_file)}}, name="c2.yaml")
    key_file.chmod(0o600)
    assert "readable by every user" not in warnings_of(in_file)
    key_file.chmod(0o644)
    out = warnings_of(in_file)
    assert f"{key_file} holds a secret and is readable by every user" in out, out
    assert SECRET not in out


@pytest.mark.parametrize("address,public,ok", [
    ("127.0.0.1:8080", False, True), ("127.0.0.2:80", False, True),
    ("localhost:80", False, True), ("[::1]:80", False, True), ("8080", False, True),
    ("0.0.0.0:80", False, False), ("[::]:80", False, False), ("192.0.2.10:80", False, False),
    ("example.net:80", False, False),
    ("0.0.0.0:80", True, True), ("192.0.2.10:80", True, True),
])
def test_standalone_on_a_public_address_needs_standalone_public(
        address: str, public: bool, ok: bool, tmp_path: Path) -> None:
    challenge: dict[str, object] = {"standalone": address}
    if public:
        challenge["standalone_public"] = True
    config = write_config(tmp_path, "https://ca.example/dir", None, {
        "clinic": {"domains": ["clinic.example"], "challenge": challenge}})
    result = run_mamoru("check-config", "-c", str(config), check=0 if ok else 2)
    if not ok:
        assert "sites.clinic.challenge.standalone:" in result.stderr
        assert "not a loopback address" in result.stderr
        assert "standalone_public: true" in result.stderr
