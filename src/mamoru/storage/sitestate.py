"""A site's renewal state: what the last attempts did and when to look at the site next.

`SiteState` is frozen; every change is a pure transition that returns a new state:

    skipped      a check found the site not due (and so not failing any more)
    started      an attempt is about to order (a marker: if the process dies before the
                 attempt's end is recorded, the next start counts it as failed)
    succeeded    a certificate was put in service; the failure count starts over
    failed       the attempt failed; the next attempt is `next_attempt` (renewal/backoff.py)
    cancelled    stopped on request, or a dry run: neither a success nor a failure
    interrupted  a `started` marker found by the next process: a failure of its own kind
    with_ari     the CA's renewal window (RFC 9773) for the live certificate, cached
    with_revoked mamoru revoked the live certificate: due at once, shown as danger

On disk it is `state/sites/<site>/state.json`, with the same keys as `to_json` writes (vendors'
tools read them). Reading is forgiving: a field with a damaged value is dropped, never fatal
(a broken file must not stop renewal), and keys this version does not know are kept as they
were. Imports only clock and errors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mamoru.clock import parse_time

# What the failure record keeps of an error's fields (the CA's problem document).
ERROR_FIELDS = ("problem_type", "detail", "status")
MESSAGE_MAX = 2000
UNKNOWN_TIME = datetime.min.replace(tzinfo=UTC)  # a marker whose time is unreadable


@dataclass(frozen=True)
class Attempt:
    """The end of the last attempt: ok, failed or interrupted."""

    time: datetime
    outcome: str
    serial: str | None = None
    error_class: str | None = None
    message: str | None = None
    retryable: bool | None = None
    problem: dict[str, Any] = field(default_factory=dict)  # problem_type, detail, status

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"time": self.time.isoformat(), "outcome": self.outcome}
        for key in ("serial", "error_class", "message", "retryable"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        out.update(self.problem)
        return out

    @classmethod
    def from_json(cls, data: Any) -> Attempt | None:
        if not isinstance(data, dict):
            return None
        when = parse_time(data.get("time"))
        if when is None:
            return None
        retryable = data.get("retryable")
        return cls(time=when, outcome=str(data.get("outcome") or "?"),
                   serial=_text(data.get("serial")), error_class=_text(data.get("error_class")),
                   message=_text(data.get("message")),
                   retryable=retryable if isinstance(retryable, bool) else None,
                   problem={k: data[k] for k in ERROR_FIELDS if data.get(k) is not None})


@dataclass(frozen=True)
class Installed:
    """The certificate last put in service and the install settings it was put there with."""

    time: datetime | None
    serial: str | None
    verified: bool | None = None
    config: str | None = None  # renewal.due.install_fingerprint at that time

    def to_json(self) -> dict[str, Any]:
        return {"time": _iso(self.time), "serial": self.serial,
                "verified": self.verified, "config": self.config}

    @classmethod
    def from_json(cls, data: Any) -> Installed | None:
        if not isinstance(data, dict):
            return None
        verified = data.get("verified")
        return cls(time=parse_time(data.get("time")), serial=_text(data.get("serial")),
                   verified=verified if isinstance(verified, bool) else None,
                   config=_text(data.get("config")))


@dataclass(frozen=True)
class AriWindow:
    """The CA's suggested renewal window for certificate `serial`, valid until `retry_after`;
    `pick` (0..1) is the moment chosen inside it, kept so re-checks do not re-roll it."""

    serial: str | None
    start: datetime
    end: datetime
    retry_after: datetime
    explanation_url: str | None = None
    pick: float = 0.5

    def to_json(self) -> dict[str, Any]:
        return {"serial": self.serial, "start": self.start.isoformat(),
                "end": self.end.isoformat(), "retry_after": self.retry_after.isoformat(),
                "explanation_url": self.explanation_url, "pick": self.pick}

    @classmethod
    def from_json(cls, data: Any) -> AriWindow | None:
        if not isinstance(data, dict):
            return None
        start, end = parse_time(data.get("start")), parse_time(data.get("end"))
        retry_after = parse_time(data.get("retry_after"))
        pick = data.get("pick")
        if (start is None or end is None or retry_after is None
                or not isinstance(pick, int | float) or isinstance(pick, bool)
                or not 0 <= pick <= 1):
            return None
        return cls(serial=_text(data.get("serial")), start=start, end=end,
                   retry_after=retry_after, explanation_url=_text(data.get("explanation_url")),
                   pick=float(pick))


@dataclass(frozen=True)
class Revoked:
    """A certificate mamoru revoked at the CA (it must not stay in service)."""

    serial: str
    time: datetime
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"serial": self.serial, "time": self.time.isoformat(), "reason": self.reason}

    @classmethod
    def from_json(cls, data: Any) -> Revoked | None:
        if not isinstance(data, dict) or not isinstance(data.get("serial"), str):
            return None
        return cls(data["serial"], parse_time(data.get("time")) or UNKNOWN_TIME,
                   str(data.get("reason") or "unspecified"))


@dataclass(frozen=True)
class InFlight:
    since: datetime
    pid: int | None = None


@dataclass(frozen=True)
class SiteState:
    attempts: int = 0  # consecutive failed attempts (0: not failing)
    next_attempt: datetime | None = None  # while failing: when to try again
    next_check: datetime | None = None  # when to look at the site again
    next_due: datetime | None = None  # the planned renewal time
    why: str | None = None  # why next_due (plain words)
    last_success: datetime | None = None
    last_attempt: Attempt | None = None
    installed: Installed | None = None
    ari: AriWindow | None = None
    in_flight: InFlight | None = None
    site_config: str | None = None  # renewal.due.fingerprint of the site's settings
    revoked: Revoked | None = None  # the last certificate revoked (its serial)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # keys we do not know

    # -- queries ---------------------------------------------------------------------------

    @property
    def failing(self) -> bool:
        return self.attempts > 0

    def next_run(self) -> datetime | None:
        """When to look at the site next: the next attempt while failing, else the next
        check; None when neither is known."""
        if self.failing and self.next_attempt is not None:
            return self.next_attempt
        return self.next_check

    def backoff_until(self, now: datetime) -> datetime | None:
        """The next attempt while backing off after failures and it is still to come."""
        if self.failing and self.next_attempt is not None and self.next_attempt > now:
            return self.next_attempt
        return None

    def planned(self) -> tuple[datetime | None, bool]:
        """(next renewal or retry time, failing?), for status lines."""
        return (self.next_attempt if self.failing else self.next_due), self.failing

    @property
    def ari_retry_after(self) -> datetime | None:
        return self.ari.retry_after if self.ari is not None else None

    def ari_for(self, serial: str | None, now: datetime) -> AriWindow | None:
        """The cached window when it belongs to `serial` and its Retry-After is still ahead."""
        if self.ari is not None and self.ari.serial == serial and self.ari.retry_after > now:
            return self.ari
        return None

    # -- transitions -----------------------------------------------------------------------

    def skipped(self, *, due_at: datetime, next_check: datetime, why: str,
                site_config: str) -> SiteState:
        """A check found the site not due: its certificate is good and served, so whatever
        failed before is over (the failure count and its retry time go; the last attempt
        stays as history)."""
        return dataclasses.replace(self, attempts=0, next_attempt=None, next_due=due_at,
                                   next_check=next_check, why=why, site_config=site_config)

    def started(self, now: datetime, pid: int) -> SiteState:
        return dataclasses.replace(self, in_flight=InFlight(now, pid))

    def succeeded(self, *, now: datetime, serial: str, verified: bool | None,
                  install_config: str, due_at: datetime, next_check: datetime, why: str,
                  site_config: str) -> SiteState:
        return dataclasses.replace(
            self, attempts=0, next_attempt=None, last_success=now,
            last_attempt=Attempt(now, "ok", serial=serial),
            installed=Installed(now, serial, verified, install_config), ari=None,
            in_flight=None, next_due=due_at, next_check=next_check, why=why,
            site_config=site_config)

    def failed(self, *, now: datetime, next_attempt: datetime, error_class: str,
               message: str, retryable: bool, problem: dict[str, Any], site_config: str,
               outcome: str = "failed") -> SiteState:
        """Attempt number `attempts + 1` failed; `next_attempt` from renewal/backoff.py."""
        return dataclasses.replace(
            self, attempts=self.attempts + 1, next_attempt=next_attempt,
            next_check=next_attempt, in_flight=None, site_config=site_config,
            last_attempt=Attempt(now, outcome, error_class=error_class,
                                 message=message[:MESSAGE_MAX], retryable=retryable,
                                 problem={k: v for k, v in problem.items()
                                          if k in ERROR_FIELDS and v is not None}))

    def cancelled(self) -> SiteState:
        return dataclasses.replace(self, in_flight=None)

    def interrupted(self, *, now: datetime, next_attempt: datetime, message: str,
                    site_config: str) -> SiteState:
        return self.failed(now=now, next_attempt=next_attempt, error_class="Interrupted",
                           message=message, retryable=True, problem={},
                           site_config=site_config, outcome="interrupted")

    def with_ari(self, window: AriWindow) -> SiteState:
        return dataclasses.replace(self, ari=window)

    def with_revoked(self, serial: str, now: datetime, reason: str) -> SiteState:
        """The certificate `serial` was revoked: the next check finds the site due at once."""
        return dataclasses.replace(self, revoked=Revoked(serial, now, reason), ari=None)

    def is_revoked(self, serial: str | None) -> bool:
        return self.revoked is not None and serial is not None and self.revoked.serial == serial

    # -- on disk ---------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out.update(attempts=self.attempts, next_attempt=_iso(self.next_attempt),
                   next_check=_iso(self.next_check), next_due=_iso(self.next_due),
                   why=self.why, last_success=_iso(self.last_success),
                   site_config=self.site_config)
        for key in ("last_attempt", "installed", "ari", "revoked"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value.to_json()
        if self.in_flight is not None:
            out["in_flight"] = {"since": self.in_flight.since.isoformat(),
                                "pid": self.in_flight.pid}
        return {k: v for k, v in out.items() if v is not None or k == "next_attempt"}

    @classmethod
    def from_json(cls, data: Any) -> SiteState:
        if not isinstance(data, dict):
            return cls()
        attempts = data.get("attempts")
        in_flight = None
        marker = data.get("in_flight")
        if isinstance(marker, dict):
            pid = marker.get("pid")
            # A marker whose time is unreadable still marks an interrupted attempt.
            in_flight = InFlight(parse_time(marker.get("since")) or UNKNOWN_TIME,
                                 pid if type(pid) is int else None)
        return cls(
            attempts=attempts if type(attempts) is int and attempts >= 0 else 0,
            next_attempt=parse_time(data.get("next_attempt")),
            next_check=parse_time(data.get("next_check")),
            next_due=parse_time(data.get("next_due")),
            why=_text(data.get("why")),
            last_success=parse_time(data.get("last_success")),
            last_attempt=Attempt.from_json(data.get("last_attempt")),
            installed=Installed.from_json(data.get("installed")),
            ari=AriWindow.from_json(data.get("ari")),
            in_flight=in_flight,
            site_config=_text(data.get("site_config")),
            revoked=Revoked.from_json(data.get("revoked")),
            extra={k: v for k, v in data.items() if k not in _KNOWN},
        )


_KNOWN = frozenset(f.name for f in dataclasses.fields(SiteState)) - {"extra"}


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when is not None else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
