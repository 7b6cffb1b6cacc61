"""http-01 by webroot: write the answer where the web server already serves files.

The web server reads the answer as its own user (nginx's and Apache's workers run as
`www-data`), not as mamoru's. So every directory mamoru creates on the way (the webroot if it
is missing, `.well-known`, `acme-challenge`) gets exactly 0755 and the answer exactly 0644,
whatever the umask: `mamoru.service` runs with `UMask=0077`, and hardening guides give root a
umask of 077, under which a plain `os.makedirs(mode=0o755)` makes 0700 directories and the CA
gets 403. The process umask is never changed to get there (other threads create keys
meanwhile): each directory is made, then given its mode.

Directories that already exist are left exactly as they are: mamoru changes the mode of no
directory it did not create. When one of them is not searchable by other users, present()
logs a warning naming it, as a web server running as another user cannot read the answer.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading

from mamoru.challenges.base import TOKEN, ChallengeTask
from mamoru.errors import ChallengeFailed, StorageError
from mamoru.storage.atomic import write_file

log = logging.getLogger(__name__)

DIRECTORY_MODE = 0o755  # the web server's user traverses and lists nothing else
ANSWER_MODE = 0o644  # the web server's user reads the answer


def make_directories(path: str, mode: int) -> list[str]:
    """Create `path` and each missing parent with exactly `mode`, whatever the umask; an
    existing directory (or a symlink to one) is left as it is. Returns the directories this
    call created, top first. Raises OSError.

    Each directory is created private (mkdir 0700) below a descriptor of its parent and given
    `mode` with fchmod(2) on a descriptor opened without following a symlink: if someone who
    may write to the webroot swaps a directory mamoru just made for a symlink, mamoru refuses
    instead of changing the mode of whatever the link points at."""
    path = os.path.abspath(path)
    missing: list[str] = []
    head = path
    while not os.path.isdir(head):
        parent = os.path.dirname(head)
        if parent == head:
            break
        missing.append(os.path.basename(head))
        head = parent
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    created: list[str] = []
    current = head
    fd = os.open(head, flags)
    try:
        for name in reversed(missing):
            current = os.path.join(current, name)
            try:
                os.mkdir(name, 0o700, dir_fd=fd)
            except FileExistsError:
                made = False  # another order made it just now: leave it as it is
                child = os.open(name, flags, dir_fd=fd)
            else:
                made = True
                child = os.open(name, flags | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
            if made:
                if os.fstat(fd).st_uid != os.geteuid():
                    raise OSError(errno.EPERM, "replaced by another user's directory while "
                                  "mamoru created it", current)
                os.fchmod(fd, mode)
                created.append(current)
    finally:
        os.close(fd)
    return created


def not_searchable_by_others(directories: list[str]) -> list[str]:
    """Those of `directories` that other users cannot enter (no o+x): a web server running as
    another user (and not in the directory's group) cannot read files below them."""
    closed = []
    for directory in directories:
        with contextlib.suppress(OSError):
            if not os.stat(directory).st_mode & stat.S_IXOTH:
                closed.append(directory)
    return closed


class WebrootSolver:
    challenge_type = "http-01"

    def __init__(self, webroot: str) -> None:
        self.webroot = os.path.abspath(webroot)
        self.directory = os.path.join(self.webroot, ".well-known", "acme-challenge")
        self._lock = threading.Lock()
        self._written: set[str] = set()  # answer files this solver wrote, not yet removed
        self._warned = False

    def _path(self, task: ChallengeTask) -> str:
        # The token comes from the CA; make sure it can only name a file in our directory.
        if not TOKEN.match(task.token):
            raise ChallengeFailed(f"the CA sent an unusable challenge token for {task.identifier}")
        return os.path.join(self.directory, task.token)

    def present(self, task: ChallengeTask) -> None:
        path = self._path(task)
        try:
            created = make_directories(self.directory, DIRECTORY_MODE)
            # The web server reads this file, often as an unprivileged user: exactly 0644.
            write_file(path, task.key_authorization.encode("ascii"), mode=ANSWER_MODE,
                       sync_dir=False)
        except (OSError, StorageError) as error:
            raise ChallengeFailed(
                f"cannot write the challenge file {path}: {error}",
                hint="Check challenge.webroot exists and mamoru may write into it.",
            ) from None
        with self._lock:
            self._written.add(path)
            warn, self._warned = not self._warned, True
        if warn:
            self._warn_if_closed(created)

    def _warn_if_closed(self, created: list[str]) -> None:
        existing = [d for d in (self.webroot, os.path.dirname(self.directory), self.directory)
                    if d not in created]
        closed = not_searchable_by_others(existing)
        if closed:
            log.warning(
                "webroot: %s not searchable by other users (no o+x): a web server running as "
                "another user (www-data) gets 403 for the challenge answer and the CA cannot "
                "validate; mamoru leaves existing directories as they are: run chmod o+x on %s "
                "if the web server's user does not get in through the group",
                " and ".join(closed) + (" is" if len(closed) == 1 else " are"),
                " ".join(closed))

    def cleanup(self, task: ChallengeTask) -> None:
        """Remove the answer file present() wrote for `task`, nothing else. The directories
        stay (0755, empty): removing them could pull them from under a concurrent order for
        another site that answers from the same webroot."""
        if not TOKEN.match(task.token):
            return
        path = os.path.join(self.directory, task.token)
        with self._lock:
            if path not in self._written:
                return
            self._written.discard(path)
        with contextlib.suppress(OSError):
            os.unlink(path)
