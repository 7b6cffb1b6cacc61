"""The dns-01 seam: the plain-value task, the batch solver protocol, and the separate
"wait until visible" capability.

A dns-01 solver is handed every task of one order at once (apex and wildcard need two TXT
values at the same name together, and one propagation wait covers the whole order). It sees
plain values only: the identifier as ordered, the record name and the TXT value.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from mamoru.errors import ChallengeFailed
from mamoru.storage.atomic import write_file

log = logging.getLogger(__name__)

CHALLENGE_TYPE = "dns-01"
LABEL = "_acme-challenge"  # RFC 8555 §8.4


def txt_value(key_authorization: str) -> str:
    """The TXT value for a key authorization: base64url(SHA-256(key_authorization)), no
    padding (RFC 8555 §8.4)."""
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def record_name(identifier: str) -> str:
    """`_acme-challenge.<name>` for an identifier; a wildcard's `*.` is dropped (RFC 8555
    §8.4: `*.clinic.example` is validated at `_acme-challenge.clinic.example`)."""
    name = identifier.strip().rstrip(".").lower()
    if name.startswith("*."):
        name = name[2:]
    return f"{LABEL}.{name}"


@dataclass(frozen=True)
class DnsTask:
    """One dns-01 challenge as plain values. `record_name` has no trailing dot."""

    identifier: str
    record_name: str
    value: str

    @classmethod
    def for_key_authorization(cls, identifier: str, key_authorization: str) -> DnsTask:
        return cls(identifier, record_name(identifier), txt_value(key_authorization))


class DnsFailed(ChallengeFailed):
    """A dns-01 record could not be published, removed or seen. Retried later like any
    challenge failure; the message says which server and what to change."""

    hint = ("Check the dns-01 settings of this site (server, key, zone); "
            "`mamoru check-dns SITE` tries an update without ordering a certificate.")


@runtime_checkable
class DnsSolver(Protocol):
    """Publishes and removes the TXT records of one order, as a batch."""

    challenge_type: str  # "dns-01"

    def present(self, tasks: Sequence[DnsTask]) -> None:
        """Add every task's value at its record name, keeping the values already there.
        Raises DnsFailed; what was added before the failure is still removed by cleanup()."""

    def cleanup(self, tasks: Sequence[DnsTask]) -> list[DnsTask]:
        """Remove these values (and only them: other values at the name stay), whether or not
        this instance presented them: a value never added is simply absent. Never raises;
        safe after a failed or partial present() and when called twice. Returns the tasks
        whose value could not be removed (already logged)."""


@runtime_checkable
class Waiter(Protocol):
    """Optional capability: block until the CA can see what present() published."""

    def wait(self, tasks: Sequence[DnsTask], timeout: float, *, gone: bool = False) -> None:
        """Return once every value is visible everywhere it must be (with `gone`: once no
        value is visible anywhere any more); raises DnsFailed naming what is still missing
        (or left) where, after `timeout` seconds."""


class Journal:
    """The dns-01 values published and not yet removed, in a 0600 JSON file, so that values a
    killed mamoru (SIGKILL, power loss) left in the zone are removed by the next run."""

    def __init__(self, path: str) -> None:
        self.path = path

    def pending(self) -> list[DnsTask]:
        try:
            with open(self.path, encoding="utf-8") as handle:
                entries = json.load(handle)
        except FileNotFoundError:
            return []
        except (OSError, ValueError):
            log.warning("dns-01 journal %s is unreadable; starting a new one", self.path)
            return []
        return [DnsTask(str(e["identifier"]), str(e["record_name"]), str(e["value"]))
                for e in entries if isinstance(e, dict)]

    def _write(self, tasks: list[DnsTask]) -> None:
        if not tasks:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            return
        data = json.dumps([dataclasses.asdict(task) for task in tasks], indent=1)
        write_file(self.path, data.encode("utf-8"), mode=0o600)

    def add(self, tasks: Sequence[DnsTask]) -> None:
        known = self.pending()
        self._write(known + [task for task in tasks if task not in known])

    def remove(self, tasks: Sequence[DnsTask]) -> None:
        self._write([task for task in self.pending() if task not in tasks])


def publish(solver: DnsSolver, waiter: Waiter | None, tasks: Sequence[DnsTask],
            timeout: float, cleanup: contextlib.ExitStack,
            journal: Journal | None = None) -> None:
    """Publish every record of one order and wait once until all are visible.

    The cleanup is registered on `cleanup` *before* present() runs, so the values are removed
    after a success, a failure, a timeout or Ctrl-C, whenever that stack closes. With a
    `journal`, values an earlier, killed run left behind are removed first, and this order's
    values are noted before they are sent and forgotten once removed."""
    if journal is not None:
        leftovers = [task for task in journal.pending() if task not in tasks]
        if leftovers:
            log.info("dns-01: removing %d record value(s) an interrupted run left behind",
                     len(leftovers))
            failed = solver.cleanup(leftovers)
            journal.remove([task for task in leftovers if task not in failed])
    if not tasks:
        return
    tasks = list(tasks)

    def remove() -> None:
        failed = solver.cleanup(tasks)
        if journal is not None:
            journal.remove([task for task in tasks if task not in failed])

    if journal is not None:
        journal.add(tasks)
    cleanup.callback(remove)
    solver.present(tasks)
    if waiter is not None:
        waiter.wait(tasks, timeout)
