"""The alerts' de-duplication record on disk: `state/alerts.json`, shared under a lock by the
daemon, one-shot commands and restarts, so no alert goes out twice.

Its shape (the keys are stable; vendors' tools may read them):

    {"sites": {"<site>": {"<problem>": {"since": ISO, "last_seen": ISO,
                                        "sent": {"<channel>": ISO of the last send}}}}}

A problem is listed while it is open; a site with no open problem is dropped. Which problems
are open and when to remind is decided in rules.py; this module only keeps the record.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from mamoru.observe.sinks import SinkState

log = logging.getLogger(__name__)

Record = dict[str, Any]  # the whole file, as read


def site_entries(data: Record, site: str) -> dict[str, Any]:
    """The open problems of `site` in `data` (created empty when missing)."""
    entries: dict[str, Any] = data.setdefault("sites", {}).setdefault(site, {})
    return entries


def drop_if_empty(data: Record, site: str) -> None:
    """Forget `site` when none of its problems is open any more."""
    sites = data.get("sites") or {}
    if not sites.get(site):
        sites.pop(site, None)


class AlertRecord:
    """`state/alerts.json` under `state_dir`: read-modify-write under its lock."""

    def __init__(self, state_dir: str) -> None:
        self.file = SinkState(os.path.join(state_dir, "alerts.json"))
        self._cache: Record = {}
        self._cache_key: tuple[int, int, int] | None = None

    @property
    def path(self) -> str:
        return self.file.path

    def update(self, change: Callable[[Record], Any]) -> Any:
        """Run `change(data)` under the lock and save; returns its result."""
        return self.file.update(change)

    def has_open(self, site: str, problems: set[str]) -> bool:
        """Is any of `problems` open for `site`? (Read without the lock: a hint that saves the
        locked write for the healthy sites' events; the caller re-checks under the lock.)"""
        try:
            info = os.stat(self.file.path)
        except OSError:
            return False
        key = (info.st_ino, info.st_mtime_ns, info.st_size)
        if self._cache_key != key:
            self._cache, self._cache_key = self.file.read(), key
        sites = self._cache.get("sites") or {}
        open_ = sites.get(site) if isinstance(sites, dict) else None
        return isinstance(open_, dict) and bool(problems & set(open_))

    def roll_back(self, site: str, problem: str, channel: str, stamp: str | None,
                  previous: str | None) -> None:
        """Undo the send stamp `stamp` of `problem` on `channel` (its delivery failed), so the
        alert goes out when the problem is next seen. A newer stamp is left alone."""

        def undo(data: Record) -> None:
            entry = (data.get("sites") or {}).get(site, {}).get(problem)
            if entry and entry.get("sent", {}).get(channel) == stamp:
                if previous is None:
                    entry["sent"].pop(channel, None)
                else:
                    entry["sent"][channel] = previous

        try:
            self.file.update(undo)
        except Exception as error:
            log.warning("could not update %s: %s", self.file.path, error)
