"""http-01 by webroot: write the answer where the web server already serves files."""

from __future__ import annotations

import contextlib
import os

from mamoru.challenges.base import TOKEN, ChallengeTask
from mamoru.errors import ChallengeFailed, StorageError
from mamoru.storage.atomic import write_file


class WebrootSolver:
    challenge_type = "http-01"

    def __init__(self, webroot: str) -> None:
        self.directory = os.path.join(webroot, ".well-known", "acme-challenge")

    def _path(self, task: ChallengeTask) -> str:
        # The token comes from the CA; make sure it can only name a file in our directory.
        if not TOKEN.match(task.token):
            raise ChallengeFailed(f"the CA sent an unusable challenge token for {task.identifier}")
        return os.path.join(self.directory, task.token)

    def present(self, task: ChallengeTask) -> None:
        path = self._path(task)
        try:
            os.makedirs(self.directory, mode=0o755, exist_ok=True)
            # The web server reads this file, often as an unprivileged user: 0644.
            write_file(path, task.key_authorization.encode("ascii"), mode=0o644, sync_dir=False)
        except (OSError, StorageError) as error:
            raise ChallengeFailed(
                f"cannot write the challenge file {path}: {error}",
                hint="Check challenge.webroot exists and mamoru may write into it.",
            ) from None

    def cleanup(self, task: ChallengeTask) -> None:
        if TOKEN.match(task.token):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.directory, task.token))
