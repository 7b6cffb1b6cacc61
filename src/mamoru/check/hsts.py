"""The Strict-Transport-Security header (RFC 6797): parsed, and judged (finding ``hsts``)."""

from __future__ import annotations

from mamoru.check.report import ONE_DAY, Finding
from mamoru.i18n import _, ngettext


def parse_hsts(value: str) -> dict[str, object]:
    """Parse a Strict-Transport-Security header value (RFC 6797).

    Returns ``{"max_age": int | None, "include_subdomains": bool, "preload": bool}``;
    ``max_age`` is None when the directive is missing or not a number (browsers then ignore
    the header).
    """
    max_age: int | None = None
    include_subdomains = False
    preload = False
    for directive in value.split(";"):
        name, _, arg = directive.strip().partition("=")
        name = name.strip().lower()
        arg = arg.strip().strip('"')
        if name == "max-age":
            max_age = int(arg) if arg.isdigit() else None
        elif name == "includesubdomains":
            include_subdomains = True
        elif name == "preload":
            preload = True
    return {"max_age": max_age, "include_subdomains": include_subdomains, "preload": preload}


def hsts_finding(value: str | None) -> Finding:
    """``hsts``: the Strict-Transport-Security header ``value`` (None: absent)."""
    fix_add = _(
        "Add the header to the HTTPS site, e.g. nginx: add_header "
        'Strict-Transport-Security "max-age=31536000" always; Apache: Header always '
        'set Strict-Transport-Security "max-age=31536000".'
    )
    if value is None:
        return Finding(
            "hsts",
            "warning",
            _("The site does not tell browsers to always use HTTPS (no "
              "Strict-Transport-Security header), so a patient on a hostile Wi-Fi can be sent "
              "to a fake http:// copy."),
            fix_add,
            {"header": None},
        )
    details: dict[str, object] = {"header": value, **parse_hsts(value)}
    max_age = details["max_age"]
    if not isinstance(max_age, int):
        return Finding(
            "hsts",
            "warning",
            _("The Strict-Transport-Security header has no valid max-age, so browsers ignore "
              "it."),
            fix_add,
            details,
        )
    if max_age < ONE_DAY:
        return Finding(
            "hsts",
            "warning",
            _("Strict-Transport-Security is set, but for only {seconds} seconds (less than a "
              "day), so it protects almost nothing.").format(seconds=max_age),
            _("Raise max-age to at least 31536000 (one year) once HTTPS works reliably."),
            details,
        )
    return Finding(
        "hsts",
        "ok",
        ngettext("Browsers are told to use HTTPS for {n} day (max-age={seconds}).",
                 "Browsers are told to use HTTPS for {n} days (max-age={seconds}).",
                 max_age // ONE_DAY).format(n=max_age // ONE_DAY, seconds=max_age),
        details=details,
    )
