"""Putting a stored certificate into service: flip live/<site>, and for a site with a web
server, the install transaction (write -> test -> reload -> verify, rollback on failure)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mamoru.config.model import Site
from mamoru.events import Events
from mamoru.storage import CertVersion, FileStorage


@dataclass
class InstallResult:
    installed: bool
    verified: bool
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def install(site: Site, version: CertVersion, storage: FileStorage, events: Events
            ) -> InstallResult:
    """Make `version` the site's live certificate (and, with a server, prove it is served).

    On failure everything is put back as it was and an InstallError is raised."""
    storage.activate(version)
    events.emit("installed", site.name, f"live/{site.name} now points at version {version.name}",
                version=version.number, serial=version.meta.get("serial"))
    return InstallResult(installed=True, verified=False)
