"""A config that has not changed is not read again: its validated `Settings` are kept.

Reading and validating the config (YAML with its line marks, the schema, every name checked)
is a third of what `mamoru status` does for a vendor with a thousand sites, and with the YAML
and schema modules' imports about 15 ms of every `mamoru provision SITE` that a vendor's
script runs once per site. So the `Settings` of a config that was read without a problem are
kept in a cache file, and used as long as nothing they were made from has changed:

- the config file: its bytes (SHA-256), the path it was given as, its mode and owner (the
  warning about a secret others can read depends on them);
- every other file the loader looked at (a CA bundle, a secret or credentials file,
  /etc/group for paths.key_group): its mode, owner, size, inode and modification time, or
  that it was missing (`Problems.observe` records each before the loader reads it);
- mamoru's version, the loader's own source files (size and modification time: an edit in a
  development tree), Python's version and the host name (the fleet's default clinic name).

Anything different, or a cache that cannot be read for any reason: the config is read and
validated as always, and the cache replaced. A config with problems is never kept, so every
problem is reported every time. `mamoru check-config` always reads the file.

Where: `$MAMORU_CACHE_DIR` (empty: no cache); else /var/cache/mamoru for root
(mamoru.service's CacheDirectory=), else `$XDG_CACHE_HOME/mamoru` (~/.cache/mamoru). One file
per config path. It holds the secrets the config holds, so it is used only from a directory
owned by this user that nobody else may write, only when the file is owned by this user and
nobody else may read or write it (0600), and it is loaded by an unpickler that can make the
config model's classes and nothing else. Writing it is best effort: a read-only or full disk
only costs the next command the reading.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import stat
import sys
from typing import Any, ClassVar

from mamoru import __version__
from mamoru.config import defaults as D
from mamoru.config.model import Settings

FORMAT = 1
_MAGIC = b"mamoru config cache\n"
_MAX_BYTES = 64 * 1024 * 1024
_SECRET_BYTES = 64 * 1024  # config/secrets.py reads no more of a secret file
# The modules outside config/ that the loader runs (config/ itself is listed as it is).
_ALSO = ("errors.py", "netaddr.py", "clock.py", "__init__.py")

Signature = list[int | str] | None


def directory() -> str | None:
    """Where cache files go, or None when the cache is switched off ($MAMORU_CACHE_DIR='')."""
    chosen = os.environ.get(D.CACHE_ENV)
    if chosen is not None:
        return chosen or None
    if os.geteuid() == 0:
        return D.CACHE_DIR
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mamoru")


def file_signature(path: str, *, content: bool = False) -> Signature:
    """What says a file changed: [mode, owner, size, inode, mtime in ns], or None if missing;
    with `content`, [mode, owner, SHA-256 of its first 64 KiB] instead (a secret rewritten
    in place within one clock tick keeps its size, inode and mtime)."""
    try:
        info = os.stat(path)
        if not content:
            return [info.st_mode, info.st_uid, info.st_size, info.st_ino, info.st_mtime_ns]
        digest = ""
        if stat.S_ISREG(info.st_mode):  # never opens a FIFO or a device
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as handle:
                digest = hashlib.sha256(handle.read(_SECRET_BYTES + 1)).hexdigest()
    except (OSError, ValueError):
        return None
    return [info.st_mode, info.st_uid, digest]


def read(path: str, data: bytes, info: os.stat_result) -> Settings | None:
    """The kept Settings of the config at `path` (whose bytes are `data` and stat `info`), or
    None when there are none still valid. Never raises."""
    try:
        folder = directory()
        if folder is None or not _private_directory(folder):
            return None
        blob = _read_private(os.path.join(folder, _name(path)))
        if blob is None or not blob.startswith(_MAGIC):
            return None
        end = blob.index(b"\n", len(_MAGIC))
        header = json.loads(blob[len(_MAGIC):end])
        if not isinstance(header, dict) or header.get("key") != _key(path, data, info):
            return None
        files = header.get("files")
        if not isinstance(files, dict) or any(
                # a signature of three is a content one (file_signature)
                file_signature(file, content=len(signature or ()) == 3) != signature
                for file, signature in files.items()):
            return None
        settings = SettingsUnpickler(io.BytesIO(blob[end + 1:])).load()
    except Exception:  # a damaged, foreign or old cache is a miss, never an error
        return None
    return settings if isinstance(settings, Settings) else None


def write(path: str, data: bytes, info: os.stat_result, settings: Settings,
          files: dict[str, Signature]) -> None:
    """Keep `settings` for the config at `path` (its bytes `data`, stat `info`), valid while
    `files` keep the signatures recorded when the loader looked at them. Never raises."""
    try:
        folder = directory()
        if folder is None:
            return
        os.makedirs(folder, mode=0o700, exist_ok=True)
        if not _private_directory(folder):
            return
        header = json.dumps({"key": _key(path, data, info), "files": files}).encode()
        body = pickle.dumps(settings, protocol=pickle.HIGHEST_PROTOCOL)
        final = os.path.join(folder, _name(path))
        temp = f"{final}.{os.urandom(4).hex()}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(_MAGIC + header + b"\n" + body)
            os.replace(temp, final)  # a cache: no fsync (a torn file is a miss)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
    except Exception:  # read-only, full, foreign: the next command reads the config again
        return


def _name(path: str) -> str:
    """The cache file of the config at `path` (its absolute path, hashed)."""
    return "config-" + hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:32]


def _key(path: str, data: bytes, info: os.stat_result) -> list[Any]:
    here = os.path.dirname(os.path.abspath(__file__))
    parent = os.path.dirname(here)
    code = [[name, *(file_signature(os.path.join(here, name)) or [])[2:]]
            for name in sorted(os.listdir(here)) if name.endswith(".py")]
    code += [[name, *(file_signature(os.path.join(parent, name)) or [])[2:]] for name in _ALSO]
    return [FORMAT, __version__, sys.version, os.uname().nodename, path,
            hashlib.sha256(data).hexdigest(), info.st_mode, info.st_uid, code]


def _private_directory(folder: str) -> bool:
    """The directory is this user's and nobody else may write it (not a link to elsewhere)."""
    info = os.lstat(folder)
    return (stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid()
            and not info.st_mode & 0o022)


def _read_private(file: str) -> bytes | None:
    """The file's bytes if it is a regular file of this user's that nobody else may read or
    write; None otherwise (missing, a link, someone else's, too large)."""
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if (not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid()
                or info.st_mode & 0o077 or info.st_size > _MAX_BYTES):
            return None
        return handle.read(_MAX_BYTES + 1)


class SettingsUnpickler(pickle.Unpickler):
    """Makes what a `Settings` is made of (the config model's classes, config problems,
    datetimes) and nothing else: whatever the bytes say, unpickling cannot import a module or
    call a function of anyone's choosing."""

    _PLAIN: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        ("datetime", name) for name in ("datetime", "timezone", "timedelta", "date"))

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._PLAIN or (module, name) == ("mamoru.errors",
                                                                "ConfigProblem"):
            return super().find_class(module, name)
        if module == "mamoru.config.model":
            found = super().find_class(module, name)
            if isinstance(found, type) and found.__module__ == module:  # its classes only
                return found
        raise pickle.UnpicklingError(f"not part of a config: {module}.{name}")
