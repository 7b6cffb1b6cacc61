"""Certificate lineages on the local filesystem.

    state/sites/<site>/versions/0007/{privkey,cert,chain,fullchain}.pem + meta.json
    state/sites/<site>/state.json      renewal bookkeeping (next check, attempts, ARI window)
    state/sites/<site>/lock            flock(2) held while a run works on the site
    live/<site> -> ../state/sites/<site>/versions/0007

A version is written whole into a temp directory, fsynced, then renamed into place, so a
version directory either is complete or does not exist. Going live is one rename(2) of a
symlink: a web server reading live/<site>/ sees the old key and certificate pair or the new
pair, never one of each. Keys are 0600 (0640 with a key group) from the moment they exist.
"""

from __future__ import annotations

import fcntl
import grp
import json
import os
import re
import stat
import threading
from datetime import datetime
from typing import Any

from mamoru.clock import Clock, utcnow
from mamoru.errors import LockBusy, StorageError
from mamoru.storage.atomic import (
    _describe,
    ensure_dir,
    fsync_dir,
    fsync_file,
    replace_symlink,
    sync_filesystem,
    temp_tag,
    write_file,
    write_new,
)
from mamoru.storage.lineage import CertVersion, cert_meta, split_chain
from mamoru.storage.sitestate import SiteState

_VERSION = re.compile(r"\d{4,}\Z")
_READ = 65536
KEEP_VERSIONS = 5


class SiteLock:
    """An exclusive flock(2) on a site; released by close() or by the process dying."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> SiteLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FileStorage:
    """The filesystem implementation of the Storage seam.

    Methods may run concurrently for different sites; for one site, callers hold `lock(site)`.
    Every method raises StorageError (with a plain-words message) on I/O failure.
    """

    def __init__(self, state_dir: str, live_dir: str, key_group: str | None = None,
                 clock: Clock = utcnow) -> None:
        self.clock = clock  # stamps stored_at: the App's clock, so tests can move time
        self.state_dir = state_dir
        self.live_dir = live_dir
        # Site names are checked names (config/names.py: no "/"), so a site's paths are these
        # prefixes plus its name; made once, not joined anew at every look (status reads a
        # thousand sites at every call).
        self._sites = os.path.join(state_dir, "sites", "")
        self._live = os.path.join(live_dir, "")
        self.gid = grp.getgrnam(key_group).gr_gid if key_group else None
        self.dir_mode = 0o750 if self.gid is not None else 0o700
        self.key_mode = 0o640 if self.gid is not None else 0o600

    # -- paths ---------------------------------------------------------------------------------

    def site_dir(self, site: str) -> str:
        return self._sites + site

    def versions_dir(self, site: str) -> str:
        return self._sites + site + "/versions"

    def live_path(self, site: str) -> str:
        return self._live + site

    def _prepare(self, site: str) -> None:
        if self.gid is None and os.path.isdir(self.versions_dir(site)):
            return  # the site's directories are there (an existing one keeps its mode)
        # The top directory stays root's (systemd's StateDirectory= resets its owner at every
        # start); with a key group it is 0711 so the group can reach sites/ below it. With a
        # key group every level is looked at: ensure_dir gives an existing one the group.
        ensure_dir(self.state_dir, 0o711 if self.gid is not None else 0o700)
        ensure_dir(os.path.join(self.state_dir, "sites"), self.dir_mode, self.gid)
        ensure_dir(self.site_dir(site), self.dir_mode, self.gid)
        ensure_dir(self.versions_dir(site), self.dir_mode, self.gid)

    # -- locking -------------------------------------------------------------------------------

    def lock(self, site: str, timeout: float = 0.0) -> SiteLock:
        """Hold the site's lock. Waits up to `timeout` seconds without polling (a blocking
        flock(2) on a helper thread), then raises LockBusy."""
        self._prepare(site)
        path = os.path.join(self.site_dir(site), "lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return SiteLock(fd)
        except BlockingIOError:
            pass
        if timeout > 0 and _wait_for_flock(fd, timeout):
            return SiteLock(fd)
        raise LockBusy(f"site {site} is being worked on by another mamoru process")

    # -- versions ------------------------------------------------------------------------------

    def _numbers(self, site: str) -> list[int]:
        try:
            names = os.listdir(self.versions_dir(site))
        except FileNotFoundError:
            return []
        return sorted(int(n) for n in names if _VERSION.match(n))

    def store(self, site: str, key_pem: bytes, chain_pem: bytes, meta: dict[str, Any]
              ) -> CertVersion:
        """Write a new, complete version (not yet live). Returns it."""
        self._prepare(site)
        leaf, chain = split_chain(chain_pem)
        numbers = self._numbers(site)
        number = (numbers[-1] + 1) if numbers else 1
        versions = self.versions_dir(site)
        tmp = os.path.join(versions, f".{number:04d}.{temp_tag()}.tmp")
        final = os.path.join(versions, f"{number:04d}")
        meta = {**cert_meta(leaf), **meta, "version": number,
                "stored_at": self.clock().isoformat()}
        try:
            os.mkdir(tmp, self.dir_mode)
            if self.gid is not None:
                os.chown(tmp, -1, self.gid)
                os.chmod(tmp, self.dir_mode)
            # The directory is new and private to this call until the rename below: each file
            # is written into it directly (no temp name of its own), then all of them and the
            # directory are made durable (one syncfs, else an fsync each), so the rename
            # publishes only whole files.
            files = [(tmp + "/privkey.pem", key_pem, self.key_mode),
                     (tmp + "/cert.pem", leaf, 0o644), (tmp + "/chain.pem", chain, 0o644),
                     (tmp + "/fullchain.pem", leaf + chain, 0o644),
                     (tmp + "/meta.json", json.dumps(meta, indent=2, sort_keys=True).encode(),
                      0o644)]
            for path, data, mode in files:
                write_new(path, data, mode, self.gid, sync=False)
            if not sync_filesystem(tmp):
                for path, _, _ in files:
                    fsync_file(path)
                fsync_dir(tmp)
            os.rename(tmp, final)
            fsync_dir(versions)
        except StorageError:
            _rmtree(tmp, ignore_errors=True)
            raise
        except OSError as error:
            _rmtree(tmp, ignore_errors=True)
            raise _describe(error, final) from error
        return CertVersion(site, number, final, meta)

    def load_version(self, site: str, number: int) -> CertVersion | None:
        path = f"{self.versions_dir(site)}/{number:04d}"
        try:
            meta = read_json(path + "/meta.json")
            _check_meta(meta)
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, OSError):
            # A damaged meta.json: rebuild it from the certificate, which is the truth.
            try:
                with open(os.path.join(path, "cert.pem"), "rb") as handle:
                    meta = cert_meta(handle.read(), rebuilt=True)
            except (OSError, ValueError):
                return None
        return CertVersion(site, number, path, meta)

    def live(self, site: str) -> CertVersion | None:
        """The version live/<site> points at, or None."""
        try:
            target = os.readlink(self.live_path(site))
        except OSError:
            return None
        name = os.path.basename(target.rstrip("/"))
        if not _VERSION.match(name):
            return None
        return self.load_version(site, int(name))

    def activate(self, version: CertVersion) -> CertVersion | None:
        """Point live/<site> at `version` atomically. Returns the version it pointed at before."""
        previous = self.live(version.site)
        ensure_dir(self.live_dir, 0o755)
        self.check_live_path(version.site)
        link = self.live_path(version.site)
        target = os.path.relpath(version.path, os.path.dirname(link))
        replace_symlink(link, target)
        return previous

    def check_live_path(self, site: str) -> None:
        """Raise StorageError when live/<site> exists but is not a symlink, so it could never be
        flipped. The pipeline asks before ordering: no certificate is ordered in vain, again
        and again, for a site that cannot go live."""
        link = self.live_path(site)
        try:
            mode = os.lstat(link).st_mode
        except (OSError, ValueError):  # as os.path.lexists: nothing there to be in the way
            return
        if not stat.S_ISLNK(mode):
            raise StorageError(f"{link} exists and is not a symlink mamoru made; move it away",
                               hint="mamoru manages live/<site> as one symlink; move the file "
                               "or directory there elsewhere and run mamoru again.")

    def deactivate(self, site: str) -> None:
        """Remove live/<site> (used to roll back a site's very first install)."""
        link = self.live_path(site)
        if os.path.islink(link):
            os.unlink(link)
            fsync_dir(self.live_dir)

    def prune(self, site: str, keep: int = KEEP_VERSIONS) -> None:
        """Delete old versions, never the live one; stale temp directories too."""
        versions = self.versions_dir(site)
        try:
            names = os.listdir(versions)
        except FileNotFoundError:
            return
        numbers = sorted(int(n) for n in names if _VERSION.match(n))
        stale = [n for n in names if n.startswith(".") and n.endswith(".tmp")]
        if len(numbers) <= keep and not stale:
            return  # nothing to remove (most runs): no need to look at the live link
        live = self.live(site)
        for number in numbers[:-keep]:
            if live is not None and number == live.number:
                continue
            _rmtree(f"{versions}/{number:04d}", ignore_errors=True)
        for name in stale:
            _rmtree(f"{versions}/{name}", ignore_errors=True)

    # -- per-site state --------------------------------------------------------------------------

    def load_state(self, site: str) -> SiteState:
        """The site's renewal state (an empty one when there is none or it is unreadable:
        a broken file must never stop renewal)."""
        try:
            data = read_json(self.site_dir(site) + "/state.json")
        except (OSError, ValueError):
            return SiteState()
        return SiteState.from_json(data)

    def save_state(self, site: str, state: SiteState, *, durable: bool = True) -> None:
        self._prepare(site)
        write_file(self.site_dir(site) + "/state.json",
                   json.dumps(state.to_json(), indent=2, sort_keys=True).encode(), 0o600,
                   sync=durable, sync_dir=durable)


def _wait_for_flock(fd: int, timeout: float) -> bool:
    """Block in flock(2) on a helper thread for up to `timeout` seconds. True: `fd` now holds
    the lock. False: given up; `fd` is closed then (by the helper once its flock returns, so a
    lock it takes after we gave up is released at once, never held by nobody's SiteLock)."""
    state = {"waiting": True, "locked": False}
    guard = threading.Lock()
    done = threading.Event()

    def take() -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            locked = True
        except OSError:
            locked = False
        with guard:
            if state["waiting"]:
                state["locked"] = locked
                done.set()
                return
        os.close(fd)  # the waiter gave up: let go at once

    threading.Thread(target=take, name="site lock", daemon=True).start()
    done.wait(timeout)
    with guard:
        state["waiting"] = False
        if done.is_set() and state["locked"]:
            return True
        if done.is_set():  # flock failed: nobody else will close it
            os.close(fd)
    return False


def _check_meta(meta: Any) -> None:
    """Raise ValueError/TypeError/KeyError unless `meta` holds what renewal reads, well typed."""
    if not isinstance(meta, dict):
        raise ValueError("not an object")
    for key in ("not_before", "not_after"):
        if datetime.fromisoformat(meta[key]).tzinfo is None:
            raise ValueError(f"{key} has no time zone")
    names = meta.get("names", [])
    if not isinstance(meta.get("serial"), str) or not isinstance(names, list) or not all(
            isinstance(name, str) for name in names):
        raise ValueError("serial or names damaged")


def _rmtree(path: str, ignore_errors: bool = True) -> None:
    """shutil.rmtree, imported when something is removed (shutil brings bz2 and lzma with it:
    a few milliseconds of every command that only reads)."""
    import shutil

    shutil.rmtree(path, ignore_errors=ignore_errors)


def read_json(path: str) -> Any:
    """The JSON document in the file at `path` (one open, one read: a thousand sites' small
    files are read by `mamoru status` at every call). Raises OSError or ValueError."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = [os.read(fd, _READ)]
        # A regular file's read comes back short only at its end (os.read retries EINTR).
        while len(chunks[-1]) == _READ:
            chunks.append(os.read(fd, _READ))
    finally:
        os.close(fd)
    return json.loads(b"".join(chunks).decode("utf-8"))
