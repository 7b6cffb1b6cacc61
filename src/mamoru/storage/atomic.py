"""Crash-safe file writes: temp file in the same directory, fsync, rename, fsync the directory.

A reader (a web server, another mamoru) sees the old file or the new one, never a half-written
one, even across a kill -9 or a power cut. Files are created with their final mode through
`os.open`, so a private key is never readable by others, not even for an instant.
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Any

from mamoru.errors import StorageError


def _describe(error: OSError, path: str) -> StorageError:
    if error.errno == errno.ENOSPC:
        return StorageError(
            f"the disk is full: could not write {path}; the previous files are unchanged",
            hint="Free some disk space; mamoru retries by itself.",
        )
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError(
            f"permission denied writing {path} ({error.strerror})",
            hint="Run mamoru as root, or give its user write access to the state and live "
            "directories (with systemd: ReadWritePaths=).",
        )
    return StorageError(f"could not write {path}: {error.strerror}")


def temp_tag() -> str:
    """Eight random hex digits that keep concurrent writers' temp names apart (os.urandom:
    the `secrets` module would bring hmac and OpenSSL's hashlib into every process)."""
    return os.urandom(4).hex()


_SYNCFS: list[object] = []  # [libc's syncfs] once looked up, [None] when there is none


def sync_filesystem(path: str) -> bool:
    """Make everything written so far on the filesystem holding `path` durable, with one
    syncfs(2): a whole version's files and their directory in one flush of the disk's cache,
    where a file-by-file fsync(2) asks for one flush each (on a virtual machine each flush is
    an exit to the host: about a tenth of a many-site provision's CPU went to them). It also
    writes out what other programs left unwritten on that filesystem, which the disk would
    write within seconds anyway.

    Returns False, having done nothing durable, where there is no syncfs (not Linux, no
    ctypes) or a sandbox refuses it (EPERM, ENOSYS): the caller fsyncs file by file then.
    Raises OSError when the filesystem reports a write error."""
    if not _SYNCFS:
        try:
            import ctypes

            _SYNCFS.append(ctypes.CDLL(None, use_errno=True).syncfs)
        except (ImportError, OSError, AttributeError):
            _SYNCFS.append(None)
    syncfs: Any = _SYNCFS[0]
    if syncfs is None:
        return False
    import ctypes

    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if syncfs(fd) == 0:
            return True
        code = ctypes.get_errno()
    finally:
        os.close(fd)
    if code in (errno.EPERM, errno.ENOSYS, errno.EACCES):
        _SYNCFS[0] = None  # refused here: file by file from now on
        return False
    raise OSError(code, os.strerror(code), path)


def fsync_file(path: str, flags: int = 0) -> None:
    """fsync(2) a file already written (a read-only descriptor is enough on Linux)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """fsync(2) a directory: the names created, renamed or removed in it are durable."""
    fsync_file(path, os.O_DIRECTORY)


def ensure_dir(path: str, mode: int = 0o700, gid: int | None = None) -> None:
    """Create `path` and every missing parent with exactly `mode` (and group `gid`), whatever
    the umask; an existing directory keeps its mode. (os.makedirs would give the parents it
    creates 0777 minus the umask: state/accounts world-readable under umask 0.)"""
    try:
        missing = []
        head = os.path.abspath(path)
        while not os.path.isdir(head) and os.path.dirname(head) != head:
            missing.append(head)
            head = os.path.dirname(head)
        for directory in reversed(missing):
            try:
                os.mkdir(directory, 0o700)  # private until its group and mode are set
            except FileExistsError:
                if not os.path.isdir(directory):
                    raise
                continue  # another mamoru made it just now
            if gid is not None:
                os.chown(directory, -1, gid)
            os.chmod(directory, mode)
        if gid is not None:
            st = os.stat(path)
            if st.st_gid != gid:
                os.chown(path, -1, gid)
                os.chmod(path, mode)
    except OSError as error:
        raise _describe(error, path) from error


def write_file(path: str, data: bytes, mode: int = 0o644, gid: int | None = None,
               sync_dir: bool = True, sync: bool = True) -> None:
    """Atomically replace `path` with `data`. The file is created 0600, then given group
    `gid` and then exactly `mode`, all before its first byte: a key is never readable by
    anyone else, not even root's group for an instant. `sync=False` skips the fsync of the
    data: other processes see the whole new file or the old one, but a power cut may bring
    the old one back (for state whose loss is harmless)."""
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{temp_tag()}.tmp")
    try:
        _create(tmp, data, mode, gid, sync)
        os.replace(tmp, path)
        if sync_dir:
            fsync_dir(directory)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _describe(error, path) from error


def write_new(path: str, data: bytes, mode: int = 0o644, gid: int | None = None, *,
              sync: bool = True) -> None:
    """Create `path` (which must not exist) with `data`, its mode and group set as write_file
    sets them, fsynced unless `sync` is False (the caller makes it durable another way). For
    files in a directory nobody else sees yet (a version being written): that directory's
    own rename is what publishes them, so they need no temp name. A failure removes what was
    created."""
    try:
        _create(path, data, mode, gid, sync)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise _describe(error, path) from error


def _create(path: str, data: bytes, mode: int, gid: int | None, sync: bool) -> None:
    """Create `path` exclusively, 0600 from the start, then group and mode, then the data."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        if gid is not None:
            os.fchown(fd, -1, gid)
        os.fchmod(fd, mode)  # exactly `mode`, whatever the umask
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def replace_symlink(link: str, target: str) -> None:
    """Point `link` at `target` atomically (symlink a temp name, then rename(2) over `link`)."""
    directory = os.path.dirname(link) or "."
    tmp = os.path.join(directory, f".{os.path.basename(link)}.{temp_tag()}.tmp")
    try:
        os.symlink(target, tmp)
        os.replace(tmp, link)
        fsync_dir(directory)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _describe(error, link) from error
