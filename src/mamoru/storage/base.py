"""The Storage seam: what App, the pipeline and the installers depend on. `FileStorage`
(filesystem.py) is the implementation on disk; a shared one (PostgreSQL, for a cluster) would
implement the same protocol. The docstrings are the contract.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol

from mamoru.storage.lineage import CertVersion
from mamoru.storage.sitestate import SiteState


class Storage(Protocol):
    """Certificate versions per site, the one live version of each, per-site state and a
    per-site lock. Every write is all or nothing; readers never see half a version."""

    def lock(self, site: str, timeout: float = 0.0) -> AbstractContextManager[object]:
        """Hold the site exclusively (across processes) until the context ends. Waits up to
        `timeout` seconds without spinning; raises LockBusy when another holder keeps it."""

    def store(self, site: str, key_pem: bytes, chain_pem: bytes, meta: dict[str, Any]
              ) -> CertVersion:
        """Write a new version whole (key 0600 from its first byte); not yet live."""

    def load_version(self, site: str, number: int) -> CertVersion | None:
        """One stored version, or None when it is missing or damaged."""

    def live(self, site: str) -> CertVersion | None:
        """The version in service, or None."""

    def activate(self, version: CertVersion) -> CertVersion | None:
        """Make `version` live in one atomic step; returns the version that was live."""

    def deactivate(self, site: str) -> None:
        """Take the site's live link away (a rollback of a first install)."""

    def check_live_path(self, site: str) -> None:
        """Raise StorageError when the live path exists but is not ours to flip."""

    def live_path(self, site: str) -> str:
        """Where the web server reads the site's live files (a directory path)."""

    def prune(self, site: str, keep: int = ...) -> None:
        """Remove old versions, keeping the newest `keep` and the live one."""

    def load_state(self, site: str) -> SiteState:
        """The site's renewal state (an empty SiteState when there is none or it is damaged)."""

    def save_state(self, site: str, state: SiteState, *, durable: bool = True) -> None:
        """Replace the site's renewal state atomically. `durable=False` (the in-flight marker
        before an order): readers see the new state at once and it outlives the process
        (kill -9), but a power cut right after may bring the previous state back, which costs
        only the marker's purpose (one interrupted attempt not counted)."""
