"""The report of ``mamoru check``: findings, verdicts, the table, the JSON and the exit code.

A check of one URL (:func:`mamoru.check.url.check_url`) returns a :class:`TargetReport`: a list
of :class:`Finding` objects, one per aspect checked, each with a stable id (``"cert.expiry"``),
a status (``"ok"``, ``"warning"`` or ``"problem"``), a message a clinic's sysadmin can read
without knowing TLS internals, and a suggested fix.

What is checked, by id (and the module that decides it):

``https.reachable`` (https)
    A TLS connection can be made and the page answers an HTTP request.
``tls.version`` (https)
    The negotiated protocol is TLS 1.2 or newer.
``cert.chain`` (chain)
    The served chain verifies against the system trust store (or ``ca_bundle``); on failure
    the reason is named: expired, not yet valid, self-signed, missing intermediate, unknown
    issuer.
``cert.names`` (certificate)
    The host name is among the certificate's subjectAltName entries (browser wildcard rules).
``cert.expiry`` (certificate)
    Time left: warning under 1/3 of the lifetime, problem under 1/6 or expired.
``cert.matches-stored`` (certificate)
    Only with ``expected_cert_pem``: the server serves the certificate mamoru last installed.
``http.redirect`` (redirect)
    ``http://host/path`` permanently redirects (301/308) to ``https://host/path``.
``http.acme-challenge`` (redirect)
    ``http://host/.well-known/acme-challenge/<random>`` is not sent to another host, so
    HTTP-01 validation can reach the files mamoru publishes.
``hsts`` (hsts)
    The HTTPS response carries ``Strict-Transport-Security`` with a useful max-age.
``mixed-content`` (mixed_content)
    The HTML page does not load scripts, styles, frames, images... over ``http://``.
``browser`` (browser; only with ``--browser`` or ``check.browser``)
    What a real headless Chromium showed after typing ``http://host/``: the lock, a full-page
    certificate error and its name, blocked/broken mixed content (what scripts insert after
    load too), a warning at Send for an ``http://`` form; whether HSTS was stored.

Checks that cannot run (because the site is unreachable, say) are left out of the report; the
finding that stopped them explains why.
"""

from __future__ import annotations

import datetime as dt
import re
import textwrap
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from mamoru.i18n import _, ngettext

Status = Literal["ok", "warning", "problem"]

_RANK: dict[str, int] = {"ok": 0, "warning": 1, "problem": 2}

CHECK_IDS: tuple[str, ...] = (
    "https.reachable",
    "tls.version",
    "cert.chain",
    "cert.names",
    "cert.expiry",
    "cert.matches-stored",
    "http.redirect",
    "http.acme-challenge",
    "hsts",
    "mixed-content",
    "browser",
)
"""Every check id a report can hold, in report order."""

ONE_DAY = 86_400
"""Seconds in a day, for expiry and HSTS arithmetic."""


@dataclass(frozen=True)
class Finding:
    """The outcome of one check.

    ``check`` is a stable id from :data:`CHECK_IDS`; ``status`` is ``"ok"``, ``"warning"`` or
    ``"problem"``; ``message`` says what was seen in plain words; ``fix`` says what to do next
    and is empty when the status is ok; ``details`` holds JSON-serialisable facts (numbers,
    strings, lists, dicts) for scripts and support.
    """

    check: str
    status: Status
    message: str
    fix: str = ""
    # Excluded from hashing because dicts are unhashable; equality still compares it.
    details: dict[str, object] = field(default_factory=dict, hash=False)


@dataclass
class TargetReport:
    """All findings for one checked URL, in the order of :data:`CHECK_IDS`."""

    url: str
    host: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def worst(self) -> Status:
        """The most severe status among the findings (``"ok"`` when there are none)."""
        worst: Status = "ok"
        for finding in self.findings:
            if _RANK[finding.status] > _RANK[worst]:
                worst = finding.status
        return worst

    def get(self, check: str) -> Finding | None:
        """The finding with id ``check``, or None when that check did not run."""
        for finding in self.findings:
            if finding.check == check:
                return finding
        return None


def plural(n: int, word: str) -> str:
    """``1 day``, ``2 days``: a count and its noun, for messages."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


_MARKS: dict[str, str] = {"ok": "✓", "warning": "!", "problem": "✗"}


# Ideographic full stop and comma, fullwidth comma and full stop, closing brackets.
_NO_LINE_START = frozenset("\u3002\u3001\uff0c\uff0e\uff09\u300d\u300f")
# Fullwidth opening parenthesis and corner brackets.
_NO_LINE_END = frozenset("\uff08\u300c\u300e")


def _wide(char: str) -> bool:
    return unicodedata.east_asian_width(char) in ("W", "F")


def _width(text: str) -> int:
    return sum(2 if _wide(c) else 1 for c in text)


def wrap(text: str, width: int, first: str, rest: str) -> list[str]:
    """`text` in lines of at most `width` terminal columns, the first starting with `first`,
    the others with `rest`. Breaks at spaces and between wide (Japanese) characters, never
    inside a run of other characters, so host names, URLs and commands stay copyable."""
    if not any(_wide(c) for c in text):
        return textwrap.wrap(text, width=width, initial_indent=first, subsequent_indent=rest,
                             break_long_words=False, break_on_hyphens=False) or [first.rstrip()]
    # Tokens: a wide character alone, a run of spaces, or a run of anything else.
    tokens = re.findall(r"[\u1100-\uffff]| +|[^ \u1100-\uffff]+", text)
    lines: list[str] = []
    line = first
    for token in tokens:
        if token.isspace():
            if line.strip():
                line += " "
            continue
        # Japanese line-breaking rules: no closing mark starts a line, no opening one ends it.
        if (_width(line) + _width(token) > width and line not in (first, rest)
                and token not in _NO_LINE_START and line[-1] not in _NO_LINE_END):
            lines.append(line.rstrip())
            line = rest
        line += token
    lines.append(line.rstrip())
    return lines


def render_table(reports: Sequence[TargetReport], *, width: int = 100) -> str:
    """A compact human-readable table: per target a header line, then one row per finding
    with a mark (✓ ok, ! warning, ✗ problem), the check id and the message, and the fix on
    an indented line below when there is one. Ends with a newline."""
    id_width = max((len(c) for c in CHECK_IDS), default=0) + 2
    indent = " " * (4 + id_width)
    lines: list[str] = []
    for report in reports:
        counts = {s: sum(1 for f in report.findings if f.status == s) for s in _MARKS}
        said = []
        if counts["problem"]:
            said.append(ngettext("{n} problem", "{n} problems", counts["problem"]).format(
                n=counts["problem"]))
        if counts["warning"]:
            said.append(ngettext("{n} warning", "{n} warnings", counts["warning"]).format(
                n=counts["warning"]))
        summary = _(", ").join(said) or _("all good")
        lines.append(f"{report.url}  [{summary}]")
        for finding in report.findings:
            head = f"  {_MARKS[finding.status]} {finding.check:<{id_width}}"
            # Never split inside a word: header names and URLs must stay copyable.
            lines.extend(wrap(finding.message, width, head, indent))
            if finding.fix:
                lines.extend(wrap(_("Fix: {fix}").format(fix=finding.fix), width, indent,
                                  indent))
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def to_json(reports: Sequence[TargetReport]) -> dict[str, object]:
    """The reports as a JSON-ready dict with stable keys::

    {"worst": status, "targets": [{"url", "host", "worst",
      "findings": [{"check", "status", "message", "fix", "details"}]}]}
    """
    worst: Status = "ok"
    targets: list[dict[str, object]] = []
    for report in reports:
        if _RANK[report.worst] > _RANK[worst]:
            worst = report.worst
        targets.append(
            {
                "url": report.url,
                "host": report.host,
                "worst": report.worst,
                "findings": [
                    {
                        "check": f.check,
                        "status": f.status,
                        "message": f.message,
                        "fix": f.fix,
                        "details": _jsonable(f.details),
                    }
                    for f in report.findings
                ],
            }
        )
    return {"worst": worst, "targets": targets}


def _jsonable(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return str(value)


def exit_code(reports: Sequence[TargetReport], strict: bool) -> int:
    """2 if any finding is a problem; 1 if ``strict`` and any is a warning; else 0."""
    statuses = {f.status for r in reports for f in r.findings}
    if "problem" in statuses:
        return 2
    if strict and "warning" in statuses:
        return 1
    return 0
