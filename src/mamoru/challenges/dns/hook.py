"""dns-01 through the user's own programs: one for `present`, one for `cleanup`.

For DNS providers no built-in solver knows. Each command is an argv list (never a shell
string), run once per record with the values in its environment:

    MAMORU_DOMAIN      the name being validated, without a wildcard's "*." (clinic.example)
    MAMORU_IDENTIFIER  the identifier as ordered (*.clinic.example)
    MAMORU_RECORD      the record name (_acme-challenge.clinic.example)
    MAMORU_VALUE       the TXT value to add (present) or remove (cleanup)
    CERTBOT_DOMAIN, CERTBOT_VALIDATION   the same, so certbot manual hooks work unchanged

`present` must ADD the value (apex and wildcard share a record name); `cleanup` must remove
only that value. A command that fails or runs past its timeout fails the challenge, with its
exit status and the end of its output in the error.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence

from mamoru.challenges.dns.base import CHALLENGE_TYPE, DnsFailed, DnsTask

log = logging.getLogger(__name__)
OUTPUT_LIMIT = 2000  # characters of a command's output kept in the error


def environment(task: DnsTask) -> dict[str, str]:
    domain = task.identifier[2:] if task.identifier.startswith("*.") else task.identifier
    return {
        "MAMORU_DOMAIN": domain,
        "MAMORU_IDENTIFIER": task.identifier,
        "MAMORU_RECORD": task.record_name,
        "MAMORU_VALUE": task.value,
        "CERTBOT_DOMAIN": domain,
        "CERTBOT_VALIDATION": task.value,
    }


class HookSolver:
    """Runs `present` / `cleanup` argv lists per record. Implements DnsSolver only: pair it
    with propagation's check (the issuance does) to wait for the records to be visible."""

    challenge_type = CHALLENGE_TYPE

    def __init__(self, present: Sequence[str], cleanup: Sequence[str] = (), *,
                 timeout: float = 60.0, env: Mapping[str, str] | None = None) -> None:
        if not present or isinstance(present, str):
            raise ValueError("hook.present must be a non-empty argv list")
        self.present_argv = list(present)
        self.cleanup_argv = list(cleanup)
        self.timeout = timeout
        self.env = dict(env or {})

    def present(self, tasks: Sequence[DnsTask]) -> None:
        for task in tasks:
            self._run(self.present_argv, task, "present")

    def cleanup(self, tasks: Sequence[DnsTask]) -> list[DnsTask]:
        failed = []
        for task in tasks:
            if not self.cleanup_argv:
                continue
            try:
                self._run(self.cleanup_argv, task, "cleanup")
            except DnsFailed as error:
                log.warning("dns-01 cleanup: %s", error)
                failed.append(task)
        return failed

    def _run(self, argv: list[str], task: DnsTask, step: str) -> None:
        env = {**os.environ, **self.env, **environment(task)}
        what = f"the dns-01 {step} hook {argv[0]} for {task.record_name}"
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
        except OSError as error:
            raise DnsFailed(f"cannot run {what}: {error.strerror}",
                            hint=f"Check challenge.hook.{step}: the first item must be an "
                            "executable program (argv list, no shell).") from None
        try:
            output, _ = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            output, _ = proc.communicate()
            raise DnsFailed(f"{what} did not finish within {self.timeout:g} s; output:\n"
                            f"{_tail(output)}",
                            hint="Make the hook finish sooner or raise challenge.hook.timeout."
                            ) from None
        except BaseException:  # Ctrl-C: do not leave the hook running
            _kill_group(proc)
            raise
        if proc.returncode != 0:
            raise DnsFailed(f"{what} failed with exit status {proc.returncode}; output:\n"
                            f"{_tail(output)}",
                            hint="Run the hook by hand with the MAMORU_* variables set to see "
                            "why it fails.")
        log.debug("dns-01 %s hook for %s done", step, task.record_name)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


def _tail(output: bytes | None) -> str:
    text = (output or b"").decode("utf-8", "replace").strip()
    if len(text) > OUTPUT_LIMIT:
        text = "…" + text[-OUTPUT_LIMIT:]
    return text or "(no output)"
