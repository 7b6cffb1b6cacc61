"""`mamoru status`: one row per configured site, read from local state only (never the CA).

For each site: its names, the live certificate's serial, issuer and expiry (date and days
left), the next renewal (time and why: ARI window, lifetime rule or backoff), the last attempt
and its outcome or error, and whether the certificate is installed and verified as served.

A site is *in danger* when its last attempt failed (or was interrupted), when it has no
certificate, or when less than 1/6 of its certificate's lifetime is left (15 days of a 90-day
certificate, a day of a 6-day one): by then a healthy site has renewed long ago. `exit_code`
is non-zero when any site is in danger, so `mamoru status` works as a monitoring check.

Speed: a thousand sites are a thousand readlink(2) and two small JSON reads each; nothing is
parsed from certificates (meta.json holds what status shows).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from mamoru.clock import parse_time
from mamoru.config.model import Settings, Site
from mamoru.i18n import N_, _, ngettext
from mamoru.observe.danger import danger_threshold
from mamoru.observe.events import iso, scrub
from mamoru.observe.messages import plural
from mamoru.storage import CertVersion, FileStorage
from mamoru.storage.sitestate import SiteState


@dataclass(frozen=True)
class SiteStatus:
    """What `mamoru status` knows about one site (all times aware, UTC)."""

    site: str
    names: list[str]
    serial: str | None = None
    issuer: str | None = None
    not_before: datetime | None = None
    not_after: datetime | None = None
    next_renewal: datetime | None = None
    why: str | None = None
    last_attempt: dict[str, Any] | None = None
    last_success: datetime | None = None
    failures: int = 0  # consecutive failed attempts
    installed: bool = False
    verified: bool | None = None  # None: nothing to verify (no web server configured)
    ari: dict[str, Any] | None = None
    danger: list[str] = field(default_factory=list)
    # The same reasons in the reader's language, for the table (the JSON keeps `danger` English).
    danger_said: list[str] = field(default_factory=list)
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def days_left(self) -> float | None:
        if self.not_after is None:
            return None
        return (self.not_after - self.now).total_seconds() / 86400

    @property
    def ok(self) -> bool:
        return not self.danger

    def to_json(self) -> dict[str, Any]:
        last = dict(self.last_attempt) if self.last_attempt else None
        return {
            "site": self.site,
            "names": self.names,
            "serial": self.serial,
            "issuer": self.issuer,
            "not_before": _iso(self.not_before),
            "not_after": _iso(self.not_after),
            "days_left": round(self.days_left, 2) if self.days_left is not None else None,
            "next_renewal": _iso(self.next_renewal),
            "why": self.why,
            "last_attempt": last,
            "last_success": _iso(self.last_success),
            "consecutive_failures": self.failures,
            "installed": self.installed,
            "verified": self.verified,
            "ari": self.ari,
            "ok": self.ok,
            "danger": self.danger,
        }


def _iso(when: datetime | None) -> str | None:
    return iso(when) if when else None


def site_status(site: Site, storage: FileStorage, now: datetime, *,
                version: CertVersion | None = None,
                state: SiteState | None = None) -> SiteStatus:
    """The status of one site from its live version and state.json (read unless given)."""
    if version is None:
        version = storage.live(site.name)
    if state is None:
        state = storage.load_state(site.name)
    meta = version.meta if version else {}
    not_before = parse_time(meta.get("not_before"))
    not_after = parse_time(meta.get("not_after"))
    failures = state.attempts
    # a CA detail may quote the challenge URL with its token
    last = scrub(state.last_attempt.to_json()) if state.last_attempt is not None else None

    next_renewal, why = _next_renewal(site, state, failures, not_before, not_after, now)
    installed = version is not None
    verified: bool | None = None
    record = state.installed
    if site.server.type != "none" and installed:
        verified = bool(record is not None and record.serial == meta.get("serial")
                        and record.verified)
    ari = None
    if state.ari is not None:
        window = state.ari.to_json()
        ari = {k: window.get(k) for k in ("start", "end", "retry_after", "explanation_url")}

    danger: list[str] = []
    said: list[str] = []

    def reason(english: str, words: str, **values: object) -> None:
        danger.append(english.format(**values))
        said.append(words.format(**values))

    if last is not None and _went_wrong(last):
        reason("last attempt {outcome}: {error}", _("last attempt {outcome}: {error}"),
               outcome=last.get("outcome"), error=last.get("error_class") or "error")
    if version is None:
        reason("no certificate", _("no certificate"))
    elif state.revoked is not None and state.revoked.serial == meta.get("serial"):
        # browsers may refuse it
        reason("the live certificate was revoked", _("the live certificate was revoked"))
    if version is not None and not_after is not None and not_before is not None:
        left = not_after - now
        if left <= timedelta(0):
            reason("certificate expired", _("certificate expired"))
        elif left < danger_threshold(not_after - not_before):
            reason("{left} left, under 1/6 of its lifetime",
                   _("{left} left, under 1/6 of its lifetime"), left=_span(left))
    return SiteStatus(
        site=site.name, names=list(meta.get("names") or site.domains),
        serial=meta.get("serial"), issuer=meta.get("issuer"),
        not_before=not_before, not_after=not_after,
        next_renewal=next_renewal, why=why, last_attempt=last,
        last_success=state.last_success, failures=failures,
        installed=installed, verified=verified, ari=ari, danger=danger, danger_said=said,
        now=now)


def _went_wrong(last: dict[str, Any] | None) -> bool:
    """The last attempt did not end well: "failed", or "interrupted" (the process died)."""
    return last is not None and last.get("outcome") not in (None, "ok")


def _next_renewal(site: Site, state: SiteState, failures: int,
                  not_before: datetime | None, not_after: datetime | None, now: datetime
                  ) -> tuple[datetime | None, str | None]:
    """When the next attempt is planned and why, as the schedule recorded it."""
    retry = state.next_attempt
    if failures and retry is not None:
        return retry, f"backoff: retry after {plural(failures, 'failed attempt')}"
    if state.next_due is not None:
        return state.next_due, state.why or ""
    if not_before is None or not_after is None:
        return now, N_("no certificate yet")
    # No schedule recorded (a certificate put in place by hand): the renewal policy itself,
    # unjittered, for a certificate that is what the config asks for.
    from mamoru.renewal.policy import CertFacts, Wanted, decide

    names = frozenset(site.domains)
    cert = CertFacts(names=names, key=None, profile=None, not_before=not_before,
                     not_after=not_after)
    decision = decide(Wanted(names=names, key=site.key, profile=None), cert, now, jitter=0.0)
    return decision.at, decision.why


def collect(settings: Settings, now: datetime | None = None,
            storage: FileStorage | None = None) -> list[SiteStatus]:
    """Every configured site's status, in config order."""
    now = now or datetime.now(UTC)
    storage = storage or FileStorage(settings.paths.state, settings.paths.live)
    return [site_status(site, storage, now) for site in settings.sites]


def exit_code(rows: list[SiteStatus]) -> int:
    """0 when every site is fine, 1 when any is in danger."""
    return 1 if any(row.danger for row in rows) else 0


def danger_summary(rows: list[SiteStatus]) -> str:
    """One line naming every site in danger and why ('' when none is)."""
    bad = [f"{row.site} ({_('; ').join(row.danger_said or row.danger)})" for row in rows
           if row.danger]
    if not bad:
        return ""
    return ngettext("{n} site in danger: {sites}", "{n} sites in danger: {sites}",
                    len(bad)).format(n=len(bad), sites=_(", ").join(bad))


def to_json(rows: list[SiteStatus]) -> dict[str, Any]:
    return {"time": iso(rows[0].now if rows else datetime.now(UTC)),
            "ok": not any(r.danger for r in rows),
            "in_danger": [r.site for r in rows if r.danger],
            "sites": [r.to_json() for r in rows]}


# --- the table for people -----------------------------------------------------------------------


def _span(left: timedelta) -> str:
    seconds = left.total_seconds()
    if seconds < 0:
        return "expired"
    if seconds < 86400:
        return f"{seconds / 3600:.0f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"
    return f"{seconds / 86400:.0f} d" if seconds >= 10 * 86400 else f"{seconds / 86400:.1f} d"


def _short_issuer(issuer: str | None) -> str:
    if not issuer:
        return "-"
    for part in issuer.split(","):  # RFC 4514: CN=...,O=...
        if part.startswith("CN="):
            return part[3:]
    return issuer


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _row(row: SiteStatus) -> list[str]:
    names = row.names[0] + (f" +{len(row.names) - 1}" if len(row.names) > 1 else "") \
        if row.names else "-"
    if row.not_after is not None:
        expires = f"{row.not_after:%Y-%m-%d} ({_span(row.not_after - row.now)})"
    else:
        expires = "-"
    if row.next_renewal is not None:
        when = _("now") if row.next_renewal <= row.now else f"{row.next_renewal:%Y-%m-%d %H:%M}"
        renewal = f"{when} ({_(row.why)})" if row.why else when
    else:
        renewal = "-"
    last = row.last_attempt
    if last:
        when_last = parse_time(last.get("time"))
        stamp = f"{when_last:%Y-%m-%d %H:%M}" if when_last else "?"
        outcome = last.get("outcome") or "?"
        if _went_wrong(last):
            outcome = f"{outcome}: {last.get('error_class') or 'error'}"
        attempt = f"{stamp} {outcome}"
    else:
        attempt = "-"
    if not row.installed:
        served = _("no")
    elif row.verified is None:
        served = _("installed")
    else:
        served = _("verified") if row.verified else _("installed, not verified")
    state = _("DANGER") if row.danger else _("ok")
    return [row.site, names, _cut(row.serial or "-", 12), _cut(_short_issuer(row.issuer), 24),
            expires, _cut(renewal, 60), _cut(attempt, 44), served, state]


HEADER = [N_("SITE"), N_("NAMES"), N_("SERIAL"), N_("ISSUER"), N_("EXPIRES"),
          N_("NEXT RENEWAL"), N_("LAST ATTEMPT"), N_("SERVED"), N_("STATE")]


def _cells(width: int, text: str) -> str:
    """`text` padded to `width` terminal columns (a Japanese character takes two)."""
    return text + " " * max(0, width - _columns(text))


def _columns(text: str) -> int:
    if text.isascii():  # nearly every cell: one column a character, no table look-up
        return len(text)
    return sum(2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in text)


def render_table(rows: list[SiteStatus]) -> str:
    """A plain-text table (times UTC), then the reasons and last errors of sites in danger."""
    cells = [[_(h) for h in HEADER]] + [_row(r) for r in rows]
    widths = [max(_columns(line[i]) for line in cells) for i in range(len(HEADER))]
    lines = ["  ".join(_cells(w, c) for c, w in zip(line, widths, strict=True)).rstrip()
             for line in cells]
    troubled = [r for r in rows if r.danger]
    if troubled:
        lines.append("")
        for row in troubled:
            lines.append(f"{row.site}: {_('; ').join(row.danger_said or row.danger)}")
            last = row.last_attempt or {}
            if _went_wrong(last):
                said = last.get("detail") or last.get("message")
                if said:
                    lines.append(f"  {' '.join(str(said).split())[:400]}")
    return "\n".join(lines)
