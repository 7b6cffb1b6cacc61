"""The files mamoru generates for a web server, and the rule that it writes only its own.

Every generated file starts with the HEADER_MARK line, lives in the directory the user named
(`server.conf_dir`) under a `mamoru-<site>` name, and is replaced atomically. A file there without
the header is the user's, and mamoru refuses to touch it. Before writing, each file's previous
bytes and mode are kept (a `Deployment`), so a failed install can put them back or remove what it
created. Also here: the quoting and indenting of the generated text, shared by nginx and Apache.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from mamoru.config.model import Site
from mamoru.errors import InstallError, StorageError
from mamoru.storage.atomic import write_file

# The first line of every file mamoru generates; a file without it is never overwritten.
HEADER_MARK = "# mamoru-generated"


class InstallRefused(InstallError):
    """mamoru will not install as configured (a file it does not own is in the way, the conf
    directory is missing, a listen address clashes). A person must act; retrying cannot help."""

    retryable = False


# --- the text of a generated file -------------------------------------------------------------


def header(site: Site, what: str, use: str = "") -> str:
    """The header block of a generated file: the mark line, then what the file is for."""
    return (f"{HEADER_MARK} for site {site.name}: {what}.\n"
            + (f"# {use}\n" if use else "")
            + "# Do not edit: mamoru rewrites this file at every install and renewal. To change\n"
            "# it, change the site's server: settings in mamoru's config, then run\n"
            "# `mamoru provision`.\n")


def quote(value: str) -> str:
    """A double-quoted string argument for nginx and Apache configs (paths may hold spaces)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def indent(lines: Sequence[str], depth: int = 1) -> str:
    """`lines` as text, each indented by `depth` levels of four spaces (blank lines stay empty)."""
    pad = "    " * depth
    return "".join(f"{pad}{line}\n" if line else "\n" for line in lines)


# --- the names mamoru owns in server.conf_dir (the same for every server type) ----------------


def _owned(site: Site, suffix: str) -> str:
    assert site.server.conf_dir is not None  # the loader requires it for nginx and apache
    return os.path.join(site.server.conf_dir, f"mamoru-{site.name}{suffix}")


def site_file(site: Site) -> str:
    """Site mode: the whole generated server config."""
    return _owned(site, ".conf")


def tls_file(site: Site) -> str:
    """Include mode: the TLS directives (.inc keeps it out of *.conf globs)."""
    return _owned(site, "-tls.inc")


def redirect_file(site: Site) -> str:
    """Include mode: the HTTP->HTTPS redirect snippet."""
    return _owned(site, "-redirect.inc")


# --- writing and putting back -----------------------------------------------------------------


@dataclass(frozen=True)
class FileSnapshot:
    """A file as it was before deploy: its bytes and mode, or None when it did not exist."""

    path: str
    previous: bytes | None
    mode: int | None


@dataclass(frozen=True)
class IncludeLine:
    """A line the user's own config needs (include mode): `line` includes `path` for `purpose`
    ("tls": the HTTPS server block; "redirect": the plain-HTTP one), `where` says where."""

    path: str
    line: str
    where: str
    purpose: str

    def __str__(self) -> str:
        return f"`{self.line}` {self.where}"


@dataclass
class Deployment:
    """What one deploy changed, so `restore` can put it back, and what the user must do
    (`includes`: the exact lines the user's own config needs, in include mode)."""

    site: str
    files: list[str] = field(default_factory=list)
    snapshots: list[FileSnapshot] = field(default_factory=list)
    includes: list[IncludeLine] = field(default_factory=list)


def is_mamoru_file(path: str) -> bool:
    """True when `path` exists and starts with mamoru's header mark."""
    try:
        with open(path, "rb") as handle:
            first = handle.readline(200)
    except OSError:
        return False
    return first.decode("utf-8", "replace").startswith(HEADER_MARK)


def snapshot(path: str) -> FileSnapshot:
    """`path` as it is now (its bytes and mode), to put back later."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
            mode = os.fstat(handle.fileno()).st_mode & 0o7777
    except FileNotFoundError:
        return FileSnapshot(path, None, None)
    except OSError as error:
        raise StorageError(f"cannot read {path}: {error.strerror}") from None
    return FileSnapshot(path, data, mode)


def write_owned(files: dict[str, str], site: str) -> Deployment:
    """Write every file of `files` (path -> text) atomically, all or nothing.

    Refuses (InstallRefused) before writing anything when a path holds a file that does not
    start with the header mark, or when its directory does not exist. Generated files are 0644:
    they hold paths and directives, never a key, and the server's workers may need to read
    them."""
    for path in files:
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            raise InstallRefused(
                f"the directory {directory} (server.conf_dir) does not exist",
                hint="Create it, or set server.conf_dir to the directory your web server "
                     "reads site configs from.")
        if os.path.lexists(path) and not is_mamoru_file(path):
            raise InstallRefused(
                f"{path} exists and was not written by mamoru (it lacks the "
                f"'{HEADER_MARK}' first line); mamoru never overwrites a file it did not create",
                hint="Move that file away (or rename it) and run `mamoru provision` again.")
    deployment = Deployment(site)
    try:
        for path, text in files.items():
            deployment.snapshots.append(snapshot(path))
            write_file(path, text.encode("utf-8"), 0o644)
            deployment.files.append(path)
    except BaseException:
        restore(deployment)
        raise
    return deployment


def restore(deployment: Deployment) -> list[str]:
    """Put every snapshotted file back as it was (remove it when it did not exist). Returns a
    description of each problem; never raises for one file, so the others are still restored."""
    problems = []
    for shot in reversed(deployment.snapshots):
        try:
            if shot.previous is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(shot.path)
            else:
                write_file(shot.path, shot.previous, shot.mode if shot.mode is not None else 0o644)
        except (OSError, StorageError) as error:
            problems.append(f"could not restore {shot.path}: {error}")
    return problems
