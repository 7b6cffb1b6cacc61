"""The config cache (src/mamoru/config/cache.py): a config read once is not read again while
nothing it was made from has changed, and anything that did change, or any cache that is not
beyond doubt this user's, means reading the file as always."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers import write_config

from mamoru.config import cache, load_config
from mamoru.config import schema as schema_module
from mamoru.config.model import Settings
from mamoru.errors import ConfigError

SITES = {"clinic": {"domains": ["clinic.example"], "challenge": {"webroot": "/var/www/acme"}}}


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("MAMORU_CACHE_DIR", str(folder))
    return folder


def not_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, reading a config for real fails the test."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the config was read and validated again")

    monkeypatch.setattr(schema_module, "build", refuse)


def test_a_second_read_uses_the_kept_settings(tmp_path: Path, cache_dir: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path, "https://ca.test/directory", None, SITES)
    first = load_config(str(config), cached=True)
    files = os.listdir(cache_dir)
    assert len(files) == 1
    assert oct(os.stat(cache_dir / files[0]).st_mode & 0o777) == "0o600"
    assert oct(os.stat(cache_dir).st_mode & 0o777) == "0o700"
    not_parsed(monkeypatch)
    assert load_config(str(config), cached=True) == first
    with pytest.raises(AssertionError, match="read and validated again"):
        load_config(str(config))  # without `cached` (check-config), the file is read


def test_a_changed_config_is_read_again(tmp_path: Path, cache_dir: Path) -> None:
    config = write_config(tmp_path, "https://ca.test/directory", None, SITES)
    load_config(str(config), cached=True)
    text = config.read_text().replace("clinic.example", "dental.example")
    config.write_text(text)
    assert load_config(str(config), cached=True).sites[0].domains == ("dental.example",)
    config.write_text(text.replace("domains:", "domainz:"))
    with pytest.raises(ConfigError, match="domainz"):
        load_config(str(config), cached=True)  # a broken config is never served from cache


def test_a_secret_rewritten_in_place_is_read_again(tmp_path: Path, cache_dir: Path) -> None:
    """Same size, same inode, same modification time: only its content tells."""
    secret = tmp_path / "eab.key"
    secret.write_text("a" * 40)
    secret.chmod(0o600)
    config = write_config(tmp_path, "https://ca.test/directory", None, SITES,
                          acme={"eab": {"kid": "k1", "hmac_key_file": str(secret)}})
    first = load_config(str(config), cached=True)
    assert first.acme.eab is not None and first.acme.eab.hmac_key.reveal() == "a" * 40
    stamp = os.stat(secret)
    with open(secret, "r+") as handle:
        handle.write("b" * 40)
    os.utime(secret, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    again = load_config(str(config), cached=True)
    assert again.acme.eab is not None and again.acme.eab.hmac_key.reveal() == "b" * 40


def test_a_removed_ca_bundle_is_reported(tmp_path: Path, cache_dir: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    config = write_config(tmp_path, "https://ca.test/directory", str(bundle), SITES)
    load_config(str(config), cached=True)
    bundle.unlink()
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(config), cached=True)


def test_a_config_opened_to_others_warns_again(tmp_path: Path, cache_dir: Path) -> None:
    config = write_config(tmp_path, "https://ca.test/directory", None, SITES,
                          acme={"eab": {"kid": "k1", "hmac_key": "c2VjcmV0"}})
    assert load_config(str(config), cached=True).warnings == ()
    config.chmod(0o644)
    assert any("readable by every user" in w for w in load_config(str(config),
                                                                    cached=True).warnings)


def test_no_cache_when_switched_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAMORU_CACHE_DIR", "")
    assert cache.directory() is None
    config = write_config(tmp_path, "https://ca.test/directory", None, SITES)
    load_config(str(config), cached=True)
    not_parsed(monkeypatch)
    with pytest.raises(AssertionError):
        load_config(str(config), cached=True)


def test_where_the_cache_is(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MAMORU_CACHE_DIR", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert cache.directory() == "/var/cache/mamoru"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.directory() == str(tmp_path / "xdg" / "mamoru")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.directory() == str(tmp_path / "home" / ".cache" / "mamoru")


@pytest.mark.parametrize("spoil", ["directory-open-to-others", "file-open-to-others",
                                   "file-of-another-user", "file-is-a-link"])
def test_a_cache_that_is_not_beyond_doubt_ours_is_not_used(
        spoil: str, tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path, "https://ca.test/directory", None, SITES)
    load_config(str(config), cached=True)
    (kept,) = list(cache_dir.iterdir())
    if spoil == "directory-open-to-others":
        cache_dir.chmod(0o777)
    elif spoil == "file-open-to-others":
        kept.chmod(0o644)
    elif spoil == "file-of-another-user":
        os.chown(kept, 65534, -1)  # nobody
    else:
        kept.rename(cache_dir / "elsewhere")
        kept.symlink_to(cache_dir / "elsewhere")
    not_parsed(monkeypatch)
    with pytest.raises(AssertionError, match="read and validated again"):
        load_config(str(config), cached=True)


def test_a_cache_holding_anything_but_settings_runs_nothing(
        tmp_path: Path, cache_dir: Path) -> None:
    """A cache file whose header matches but whose body would call a function: refused by
    the unpickler (a miss), the function never runs, and the config is read again."""
    config = write_config(tmp_path, "https://ca.test/directory", None, SITES)
    load_config(str(config), cached=True)
    (kept,) = list(cache_dir.iterdir())
    blob = kept.read_bytes()
    header_end = blob.index(b"\n", len(b"mamoru config cache\n"))
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    evil = pickle.dumps(Payload(), protocol=pickle.HIGHEST_PROTOCOL)
    kept.write_bytes(blob[:header_end + 1] + evil)
    settings = load_config(str(config), cached=True)
    assert isinstance(settings, Settings)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):
        cache.SettingsUnpickler(io.BytesIO(evil)).load()


def test_the_key_covers_every_loader_module() -> None:
    """A change in any of the loader's source files (a development tree) is a miss."""
    config_dir = Path(cache.__file__).parent
    key = cache._key("/etc/mamoru/config.yaml", b"", os.stat(cache.__file__))
    listed = {entry[0] for entry in key[-1]}
    assert {p.name for p in config_dir.glob("*.py")} <= listed
    assert {"errors.py", "netaddr.py", "clock.py"} <= listed


def test_check_config_reads_the_file_and_status_the_cache(tmp_path: Path,
                                                          cache_dir: Path) -> None:
    config = write_config(tmp_path, "https://ca.test/directory", None, SITES)
    env = {**os.environ, "MAMORU_CACHE_DIR": str(cache_dir)}
    probe = ("import sys\nimport mamoru.config.load as L\nseen = []\norig = L._validate\n"
             "def spy(*a, **k):\n    seen.append(1)\n    return orig(*a, **k)\n"
             "L._validate = spy\nfrom mamoru.cli import main\n"
             "code = main(sys.argv[1:])\nprint(len(seen), code, file=sys.stderr)")

    def validations(*argv: str) -> str:
        done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True,
                              text=True, env=env, timeout=60)
        return done.stderr.strip().splitlines()[-1]

    assert validations("-c", str(config), "status") == "1 1"  # read, kept (no certificate: 1)
    assert validations("-c", str(config), "status") == "0 1"  # the kept Settings
    assert validations("-c", str(config), "check-config") == "1 0"  # always reads the file
